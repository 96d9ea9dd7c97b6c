//! `ipamd`: the node daemon and its operator subcommands. Each subcommand parses its input,
//! calls the library and maps the outcome to an exit code:
//!
//! - `ipamd` / `ipamd run`: the daemon (configuration from the environment);
//! - `ipamd probe [-addr=unix:///...] [-service=...] [-connect-timeout=5s] [-rpc-timeout=5s]`:
//!   the readiness/liveness probe (`grpc-health-probe` flags and exit codes);
//! - `ipamd status [--addr ADDR]`: the node's pool at a glance, from the introspection endpoint;
//! - `ipamd install-cni [--from DIR]`: the init container's work (install the plugin, sysctls).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ipamd::checkpoint::FileCheckpointer;
use ipamd::cloud::ec2_client::Ec2Client;
use ipamd::cloud::ec2_sdk::SdkEc2;
use ipamd::cloud::imds::SdkImds;
use ipamd::config::parse::parse_bind_address;
use ipamd::config::{
    AWS_VPC_K8S_CNI_IPAMD_SOCKET, Config, Env, INTROSPECTION_BIND_ADDRESS, ProcessEnv,
    ProvisioningMode,
};
use ipamd::daemon::Daemon;
use ipamd::install::{self, InstallConfig};
use prometheus_client::registry::Registry;

const USAGE: &str = "usage: ipamd [run | probe | status | install-cni | help | version]

  ipamd [run]         run the node daemon. Configuration comes from the environment
                      (ENABLE_IMDS_ONLY_MODE, AWS_VPC_K8S_CNI_IPAMD_SOCKET, HOST_CNI_CONFDIR_PATH,
                      WARM_ENI_TARGET, IP_COOLDOWN_PERIOD, MY_NODE_NAME, ...: the same variables
                      and defaults as aws/amazon-vpc-cni-k8s).
  ipamd probe [-addr=unix:///var/run/aws-node/ipamd.sock] [-service=NAME]
              [-connect-timeout=1s] [-rpc-timeout=1s]
                      gRPC health check of a running ipamd, as grpc-health-probe: exit 0 when
                      SERVING, 1 bad arguments, 2 cannot connect, 3 RPC failed, 4 not serving.
                      Without -addr: AWS_VPC_K8S_CNI_IPAMD_SOCKET or /var/run/aws-node/ipamd.sock.
  ipamd status [--addr 127.0.0.1:61679 | --addr unix:/path]
                      print the node's pool (ENIs, IPs total/assigned/cooling, limits, last
                      EC2 error) from the introspection endpoint (default:
                      INTROSPECTION_BIND_ADDRESS or 127.0.0.1:61679).
  ipamd install-cni [--from DIR]
                      init container: copy the plugin binaries in DIR (default: cni/bin next to
                      this executable) into HOST_CNI_BIN_PATH (default /host/opt/cni/bin)
                      atomically, and set net.ipv4.conf.<primary ENI>.rp_filter=2 and
                      net.ipv4.tcp_early_demux (0 when DISABLE_TCP_EARLY_DEMUX=true, else 1).";

fn main() -> ExitCode {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        None => ("run", &[][..]),
        Some((c, rest)) => (c.as_str(), rest),
    };
    match command {
        "run" if rest.is_empty() => run_daemon(started),
        "probe" => probe(rest),
        "status" => status(rest),
        "install-cni" => install_cni(rest),
        "-h" | "--help" | "help" if rest.is_empty() => {
            eprintln!("{USAGE}");
            ExitCode::SUCCESS
        }
        "-V" | "--version" | "version" if rest.is_empty() => {
            eprintln!("ipamd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("ipamd: unknown arguments {args:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn print_stdout(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipamd: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(args: &[String]) -> ExitCode {
    let socket = ProcessEnv
        .var(AWS_VPC_K8S_CNI_IPAMD_SOCKET)
        .ok()
        .flatten()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| ipamd::probe::DEFAULT_SOCKET.to_owned());
    let opts = match ipamd::probe::parse_args(args, PathBuf::from(socket)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let runtime = match current_thread_runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(ipamd::probe::probe(&opts)) {
        Ok(()) => print_stdout("status: SERVING\n"),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn status(args: &[String]) -> ExitCode {
    let raw = match args {
        [] => ProcessEnv
            .var(INTROSPECTION_BIND_ADDRESS)
            .ok()
            .flatten()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "127.0.0.1:61679".to_owned()),
        [flag, value] if flag == "--addr" || flag == "-addr" => value.clone(),
        [one] if one.starts_with("--addr=") => one["--addr=".len()..].to_owned(),
        _ => {
            eprintln!("ipamd status: unknown arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let addr = match parse_bind_address(&raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ipamd status: invalid address {raw:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let result = current_thread_runtime()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(ipamd::introspect::status::status(&addr))
                .map_err(anyhow::Error::from)
        });
    match result {
        Ok(text) => print_stdout(&text),
        Err(e) => {
            eprintln!("ipamd status: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn install_cni(args: &[String]) -> ExitCode {
    let source = match args {
        [] => install::default_source_dir().context("cannot find the plugins shipped with ipamd"),
        [flag, dir] if flag == "--from" => Ok(PathBuf::from(dir)),
        _ => {
            eprintln!("ipamd install-cni: unknown arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match source.and_then(|s| run_install(&s)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipamd install-cni: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_install(source: &std::path::Path) -> anyhow::Result<()> {
    let config = InstallConfig::from_env(&ProcessEnv).context("configuration error")?;
    for done in install::install_binaries(source, &config.bin_dir)? {
        eprintln!(
            "ipamd install-cni: {} {} ({} bytes)",
            if done.unchanged {
                "unchanged"
            } else {
                "installed"
            },
            done.path.display(),
            done.bytes
        );
    }
    let runtime = current_thread_runtime().context("cannot start the async runtime")?;
    let set = runtime.block_on(install::set_node_sysctls(&config, &SdkImds::from_env()))?;
    for (key, value) in &set.written {
        eprintln!("ipamd install-cni: {key}={value}");
    }
    Ok(())
}

fn run_daemon(started: Instant) -> ExitCode {
    // Configuration errors stop start-up before anything is bound or written.
    let config = match Config::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ipamd: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(config, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipamd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, started: Instant) -> anyhow::Result<()> {
    ipamd::logging::init(&config).context("cannot set up logging")?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        mode = ?config.provisioning,
        node = %config.kubernetes.node_name,
        "ipamd starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // With the service account; a setting that needs the API without one fails here,
        // before anything is bound or written.
        let kube = ipamd::k8s::client_for(&config.kubernetes)?.map(|client| {
            tracing::info!(server = client.server(), "Kubernetes client ready");
            ipamd::k8s::KubeApis::of(client)
        });
        if let Some(dir) = config
            .backing_store
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create the checkpoint directory {}", dir.display())
            })?;
        }
        let checkpointer = Arc::new(FileCheckpointer::new(config.backing_store.clone()));
        let shutdown = shutdown_signal()?;
        if config.provisioning == ProvisioningMode::Ec2 {
            // The one registry: the EC2 client registers its families, the daemon its own.
            let mut registry = Registry::default();
            let ec2 = Ec2Client::new(SdkEc2::new(&config.cloud), &mut registry)
                .with_pod_name(config.kubernetes.pod_name.clone());
            Daemon::with_ec2(config, SdkImds::from_env(), ec2, checkpointer)
                .with_registry(registry)
                .with_start_time(started)
                .with_kube(kube.clone())
                .run(shutdown)
                .await
                .map_err(anyhow::Error::from)
        } else {
            Daemon::new(config, SdkImds::from_env(), checkpointer)
                .with_start_time(started)
                .with_kube(kube)
                .run(shutdown)
                .await
                .map_err(anyhow::Error::from)
        }
    })
}

/// Resolves at the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
