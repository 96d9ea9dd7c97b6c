//! `ipamd`: reads its configuration from the environment, sets up logging, runs the daemon until
//! SIGTERM/SIGINT, and maps the outcome to an exit code. Subcommands get their own words later
//! (e.g. `ipamd probe`); today only `ipamd` (run), `--help` and `--version` exist.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use ipamd::checkpoint::FileCheckpointer;
use ipamd::cloud::imds::SdkImds;
use ipamd::config::{Config, ProcessEnv};
use ipamd::daemon::Daemon;

const USAGE: &str = "usage: ipamd [--help | --version]

Runs the node daemon of the Rust AWS VPC CNI. Configuration comes from the environment
(ENABLE_IMDS_ONLY_MODE, AWS_VPC_K8S_CNI_IPAMD_SOCKET, AWS_VPC_K8S_CNI_BACKING_STORE,
HOST_CNI_CONFDIR_PATH, AWS_VPC_K8S_CNI_LOG_FILE, IP_COOLDOWN_PERIOD, MY_NODE_NAME, ...;
the same variables and defaults as aws/amazon-vpc-cni-k8s).";

enum Command {
    Run,
    Help,
    Version,
}

fn parse_args() -> Result<Command, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["run"] => Ok(Command::Run),
        ["-h" | "--help" | "help"] => Ok(Command::Help),
        ["-V" | "--version" | "version"] => Ok(Command::Version),
        other => Err(format!("unknown arguments {other:?}")),
    }
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(Command::Run) => {}
        Ok(Command::Help) => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            eprintln!("ipamd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ipamd: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    // Configuration errors stop start-up before anything is bound or written.
    let config = match Config::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ipamd: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipamd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
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
    tracing::info!(
        "not in this build yet (settings are validated, without effect): EC2 provisioning and warm-pool targets, SNAT/connmark rules, metrics (:61678), introspection (:61679)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if let Some(dir) = config
        .backing_store
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the checkpoint directory {}", dir.display()))?;
    }
    runtime.block_on(async {
        let checkpointer = Arc::new(FileCheckpointer::new(config.backing_store.clone()));
        let daemon = Daemon::new(config, SdkImds::from_env(), checkpointer);
        let shutdown = shutdown_signal()?;
        daemon.run(shutdown).await.map_err(anyhow::Error::from)
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
