//! `cnibench`: the benchmark of issue 6, as a library the `cnibench` binary (`make bench`) and
//! the smoke test (`make test`, tiny N) drive.
//!
//! One run, on one simulated node (instance-metadata mode, a warm pool, `IP_COOLDOWN_PERIOD=0`,
//! ipamd's checkpoint on tmpfs as `/var/run` is on a real node):
//! 1. per-pod ADD and DEL latency of `aws-cni` and of Debian's `ptp` + `host-local`, exec'd the
//!    way a runtime does, at every concurrency, rounds of the two plugins alternating so machine
//!    noise hits both; DEL + netns removal (DEL, then the pod's namespace removed as a runtime
//!    does, until its host veth is gone: the same work for a plugin that deletes the veth in
//!    DEL and one that leaves it to the removal, see [`teardown`]); ADD+DEL cycle throughput,
//!    a cycle being a pod's whole network life; the kernel floor exec'd the same way;
//! 2. the per-phase breakdown of ADD and DEL, exec floors, the kernel floor in one process;
//! 3. ipamd: AddNetwork/DelNetwork service time under concurrent clients (checkpoint on tmpfs
//!    and on disk), start-up-to-ready with a checkpoint of many pods, resident memory;
//! 4. IPv6 pods' ADD and DEL latency and phases, aws-cni against ptp + host-local again, on a
//!    second node whose ipamd runs in IPv6 mode (module [`ipv6`]);
//! 5. the cold-node bursts on the simulated VPC;
//! 6. binary sizes, peak RSS per ADD, the image estimate; criterion's datastore results.
//!
//! Every plugin call runs with the simulated node's namespace as its host namespace; nothing
//! touches the machine's root namespace. Timings are reported, never asserted.

// Items of the private modules below are pub(crate): the binary and the smoke test see the public
// modules and the types the results carry, nothing else.
#![warn(unreachable_pub)]

mod artifacts;
pub mod burst;
pub mod compare;
mod daemon;
mod exec;
mod figures;
mod format;
pub mod ipv6;
pub mod latency;
mod phases;
pub mod plugins;
mod pods;
pub mod report;
mod stats;
mod targets;
pub mod teardown;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use serde::Serialize;

use self::artifacts::{CriterionResult, FileSize, ImageEstimate, Machine};
use self::daemon::{LoadResult, Memory, StartupResult};
use self::latency::{Ctx, CycleRound, Round, RssRound};
use self::phases::{ExecFloors, KernelFloor, PhaseTable};
use self::plugins::Plugin;
use harness::node::{NodeOptions, SimNode, SimNodeError};
use test_support::metadata::{InterfaceDescription, NodeDescription};
use test_support::netns::CommandError;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The simulated node failed.
    #[error(transparent)]
    Node(#[from] SimNodeError),
    /// A namespace command failed.
    #[error(transparent)]
    Exec(#[from] CommandError),
    /// A program under test or a tool is missing.
    #[error(transparent)]
    Prereq(#[from] test_support::prereqs::PrereqError),
    /// A program could not be run.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file or system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command.
        command: String,
        /// Its stderr.
        detail: String,
    },
    /// Something the benchmark needs is missing.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        /// What.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// A plugin call that must succeed (warm-up, floors) failed.
    #[error("{what} failed: {detail}")]
    Plugin {
        /// The call.
        what: String,
        /// Its output.
        detail: String,
    },
    /// A gRPC call to ipamd failed.
    #[error("ipamd {what}: {detail}")]
    Grpc {
        /// The call.
        what: String,
        /// The status or transport error.
        detail: String,
    },
    /// A bad setting or an inconsistent result.
    #[error("{0}")]
    Invalid(String),
    /// A signal arrived; the harness is tearing down.
    #[error("interrupted")]
    Interrupted,
}

/// What to run and how much.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Pods per round (the issue: 200).
    pub pods: usize,
    /// Concurrencies of the latency rounds (the issue: 1, 2, 8).
    pub concurrency: Vec<usize>,
    /// Repetitions of every round (alternating the plugins' order).
    pub reps: usize,
    /// Concurrency of the ADD+DEL cycle throughput rounds (the issue: 8).
    pub cycle_concurrency: usize,
    /// The `aws-cni` binary under test (the static musl release build for `make bench`).
    pub plugin: PathBuf,
    /// The `kernel-floor` program.
    pub floor: PathBuf,
    /// The `peak-rss` helper (peak RSS per call).
    pub peak_rss: PathBuf,
    /// Pods of the peak-RSS rounds.
    pub rss_pods: usize,
    /// Where Debian's `ptp` and `host-local` are.
    pub ptp_dir: PathBuf,
    /// Calls per exec floor.
    pub exec_floor_reps: usize,
    /// Concurrent gRPC clients of the ipamd load (the issue: 8).
    pub load_clients: usize,
    /// Timed AddNetwork+DelNetwork pairs per client.
    pub load_iterations: usize,
    /// Also run the load with the checkpoint on disk.
    pub disk_checkpoint: bool,
    /// Pods in the start-up checkpoint (the issue: 250).
    pub startup_pods: usize,
    /// ipamd starts measured per checkpoint.
    pub startup_reps: usize,
    /// How long ipamd's CPU use is watched while idle after a start (0: not measured).
    pub idle_window: Duration,
    /// criterion's output directory (`target/criterion`), when `cargo bench` ran.
    pub criterion_dir: Option<PathBuf>,
    /// The glibc build of `aws-cni`, for the size table.
    pub glibc_plugin: Option<PathBuf>,
    /// The Dockerfile whose final stage is the image.
    pub dockerfile: PathBuf,
    /// The command line to quote in the report.
    pub command: String,
    /// Print progress on stderr.
    pub progress: bool,
    /// The cold-node bursts (prefix delegation and secondary IPs); `None`: not run.
    pub burst: Option<burst::BurstConfig>,
    /// IPv6 pods' latency; `None`: not run.
    pub ipv6: Option<ipv6::Ipv6Config>,
}

impl BenchConfig {
    /// The sizes.
    pub fn full(plugin: PathBuf, floor: PathBuf, peak_rss: PathBuf) -> Self {
        Self {
            pods: 200,
            peak_rss,
            rss_pods: 50,
            concurrency: vec![1, 2, 8],
            reps: 3,
            cycle_concurrency: 8,
            plugin,
            floor,
            ptp_dir: PathBuf::from(test_support::prereqs::SYSTEM_CNI_DIR),
            exec_floor_reps: 300,
            load_clients: 8,
            load_iterations: 500,
            disk_checkpoint: true,
            startup_pods: 250,
            startup_reps: 5,
            idle_window: Duration::from_secs(30),
            criterion_dir: None,
            glibc_plugin: None,
            dockerfile: test_support::prereqs::workspace_dir().join("Dockerfile"),
            command: "make bench".into(),
            progress: true,
            burst: Some(burst::BurstConfig::default()),
            ipv6: Some(ipv6::Ipv6Config::default()),
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Invalid(m));
        if self.pods == 0 || self.reps == 0 || self.concurrency.is_empty() {
            return bad("pods, reps and the concurrency list must not be empty or 0".into());
        }
        if let Some(c) = self
            .concurrency
            .iter()
            .chain([&self.cycle_concurrency, &self.load_clients])
            .find(|&&c| c == 0 || c > 256)
        {
            return bad(format!("concurrency {c} is out of range 1..=256"));
        }
        if let Some(b) = &self.burst
            && (b.prefix_pods == 0
                || b.secondary_pods == 0
                || b.concurrency == 0
                || b.reps == 0
                || b.prefix_pods > 110
                || b.secondary_pods > 27)
        {
            return bad(format!(
                "burst sizes {}/{} at concurrency {}, {} runs, are out of range (1..=110 pods with prefixes, 1..=27 with secondary IPs: an m5.large's pod addresses; at least one run)",
                b.prefix_pods, b.secondary_pods, b.concurrency, b.reps
            ));
        }
        if let Some(v6) = &self.ipv6 {
            let pods = v6.pods(self.pods);
            let concs = v6.concurrency(&self.concurrency);
            if pods == 0 || pods > 1_000 || v6.reps == 0 || concs.is_empty() {
                return bad(format!(
                    "IPv6 rounds of {pods} pods, {} runs, at concurrency {concs:?} are out of range (1..=1000 pods, at least one run and one concurrency)",
                    v6.reps
                ));
            }
            if let Some(c) = concs.iter().find(|&&c| c == 0 || c > 256) {
                return bad(format!("IPv6 concurrency {c} is out of range 1..=256"));
            }
        }
        if self.exec_floor_reps == 0
            || self.load_iterations == 0
            || self.startup_reps == 0
            || self.rss_pods == 0
        {
            return bad(
                "exec floor reps, load iterations, start-up reps and RSS pods must be ≥ 1".into(),
            );
        }
        for (what, p) in [
            ("aws-cni", &self.plugin),
            ("kernel-floor", &self.floor),
            ("peak-rss", &self.peak_rss),
        ] {
            if !p.is_file() {
                return Err(BenchError::Missing {
                    what: what.into(),
                    path: p.clone(),
                    hint: "make bench builds both (cargo build --release --target x86_64-unknown-linux-musl -p aws-cni --bin aws-cni --example kernel-floor --example peak-rss)".into(),
                });
            }
        }
        Ok(())
    }
}

/// Every figure of one run (also written as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    /// When (UTC).
    pub date: String,
    /// The command quoted in the report.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Pods per round.
    pub pods: usize,
    /// Repetitions.
    pub reps: usize,
    /// Binaries measured.
    pub binaries: Vec<FileSize>,
    /// Latency rounds of both plugins.
    pub rounds: Vec<Round>,
    /// Cycle throughput rounds.
    pub cycles: Vec<CycleRound>,
    /// The kernel floor exec'd per pod, one round per repetition.
    pub floor_rounds: Vec<Round>,
    /// ADD and DEL phase breakdowns.
    pub phases: Vec<PhaseTable>,
    /// Peak RSS per call of both plugins.
    pub rss: Vec<RssRound>,
    /// Exec floors.
    pub exec_floors: ExecFloors,
    /// The kernel floor in one process.
    pub kernel_floor: KernelFloor,
    /// ipamd service time under load.
    pub loads: Vec<LoadResult>,
    /// ipamd start-up.
    pub startups: Vec<StartupResult>,
    /// ipamd memory, by situation.
    pub ipamd_memory: Vec<(String, Memory)>,
    /// criterion's datastore results.
    pub criterion: Vec<CriterionResult>,
    /// Why criterion results are absent, if they are.
    pub criterion_note: Option<String>,
    /// The image estimate, when a Dockerfile exists.
    pub image: Option<ImageEstimate>,
    /// The cold-node bursts.
    pub bursts: Vec<burst::BurstResult>,
    /// IPv6 pods' latency and phases (absent from the results of runs that did not measure it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<ipv6::Ipv6Results>,
    /// The targets evaluated on this run (what the next run compares itself with).
    pub targets: Vec<targets::Target>,
}

impl BenchResults {
    /// Failed calls and leftovers over all rounds.
    pub fn failures(&self) -> usize {
        self.rounds.iter().map(Round::failures).sum::<usize>()
            + self.floor_rounds.iter().map(Round::failures).sum::<usize>()
            + self.cycles.iter().map(|c| c.failures.len()).sum::<usize>()
            + self.rss.iter().map(|r| r.failures.len()).sum::<usize>()
            + self.bursts.iter().map(|b| b.unserved).sum::<usize>()
            + self.ipv6.as_ref().map_or(0, ipv6::Ipv6Results::failures)
    }
}

/// Addresses per ENI of the benchmark node (the per-interface limit of the largest types).
const IPS_PER_ENI: usize = 49;

/// A node whose pool holds at least `ips` secondary addresses: ENI d has primary 10.0.d.4 and
/// secondaries from 10.0.d.10 in subnet 10.0.0.0/20.
pub fn bench_node(ips: usize) -> NodeDescription {
    let enis = ips.div_ceil(IPS_PER_ENI).clamp(2, 15);
    let mut d = harness::node::standard_node(&[1]);
    d.instance_type = "m5.24xlarge".into();
    let subnet = Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 20).unwrap_or_default();
    d.interfaces = (0..enis)
        .map(|i| {
            let dev = u8::try_from(i).unwrap_or(u8::MAX);
            let mut ips = vec![Ipv4Addr::new(10, 0, dev, 4)];
            ips.extend(
                (0..IPS_PER_ENI)
                    .map(|k| Ipv4Addr::new(10, 0, dev, 10 + u8::try_from(k).unwrap_or(0))),
            );
            InterfaceDescription {
                mac: format!("02:00:0a:00:{dev:02x}:04"),
                interface_id: format!("eni-0b1c2d3e4f5a6{dev:04x}"),
                device_number: u32::from(dev),
                network_card: 0,
                subnet_id: "subnet-0a1b2c3d".into(),
                subnet_ipv4_cidr_block: subnet,
                security_group_ids: vec!["sg-0a1b2c3d".into()],
                local_ipv4s: ips,
                ipv4_prefixes: Vec::new(),
                ipv6s: Vec::new(),
                ipv6_prefixes: Vec::new(),
                subnet_ipv6_cidr_blocks: Vec::new(),
            }
        })
        .collect();
    d
}

/// Today's date and time (UTC) as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

/// Removes a directory of the benchmark on drop.
struct OwnedDir(PathBuf);

impl Drop for OwnedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        test_support::cleanup::unregister_dir(&self.0);
    }
}

fn say(config: &BenchConfig, msg: &str) {
    if config.progress {
        eprintln!("cnibench: {msg}");
    }
}

/// Runs the whole benchmark.
pub fn run(config: &BenchConfig) -> Result<BenchResults, BenchError> {
    config.validate()?;
    test_support::prereqs::require_node_prerequisites()?;
    let machine = artifacts::machine();
    let date = utc_now();
    let tmp = OwnedDir(daemon::tmpfs_dir());
    std::fs::create_dir_all(&tmp.0).map_err(|source| BenchError::Io {
        context: format!("cannot create {}", tmp.0.display()),
        source,
    })?;
    test_support::cleanup::register_dir(&tmp.0);
    let checkpoint = tmp.0.join("ipam.json");
    let ipamd_bin = test_support::prereqs::ipamd()?;

    let ips = (config.pods + 1)
        .max(config.startup_pods)
        .max(config.load_clients * 2);
    say(
        config,
        &format!("starting a simulated node with ≥ {ips} warm IPs"),
    );
    let mut node = SimNode::start(
        NodeOptions::new(bench_node(ips))
            .cooldown_seconds(0)
            .ipamd_env(
                "AWS_VPC_K8S_CNI_BACKING_STORE",
                &checkpoint.display().to_string(),
            ),
    )?;
    let ctx = |node: &SimNode| Ctx {
        node_netns: node.ns().path(),
        node_name: node.ns().name().to_owned(),
        ipamd_pid: node.ipamd_pid(),
        cpus: machine.cpus,
    };
    let mut ipamd_memory = Vec::new();
    std::thread::sleep(Duration::from_secs(1));
    if let Some(pid) = node.ipamd_pid() {
        ipamd_memory.push((
            "idle, just started (0 pods)".to_owned(),
            daemon::memory(pid)?,
        ));
    }

    let cni_version = "1.0.0";
    let ours = Plugin::ours(
        &config.plugin,
        node.plugin_config(cni_version, None)?,
        &tmp.0,
    );
    let ptp = Plugin::ptp(&config.ptp_dir, cni_version, &tmp.0)?;

    // 1. Latency, alternating the order of the plugins from round to round.
    let mut rounds = Vec::new();
    let mut cycles = Vec::new();
    let mut floor_rounds = Vec::new();
    let mut round_id = 0;
    for rep in 0..config.reps {
        for (ci, &conc) in config.concurrency.iter().enumerate() {
            let order = if (rep + ci) % 2 == 0 {
                [&ours, &ptp]
            } else {
                [&ptp, &ours]
            };
            for plugin in order {
                round_id += 1;
                say(
                    config,
                    &format!(
                        "rep {}/{} C={conc} {}: {} ADD + {} DEL",
                        rep + 1,
                        config.reps,
                        plugin.flavor.label(),
                        config.pods,
                        config.pods
                    ),
                );
                let out =
                    latency::run_round(&ctx(&node), plugin, round_id, rep, conc, config.pods, &[])?;
                rounds.push(out.round);
            }
        }
        let order = if rep % 2 == 0 {
            [&ours, &ptp]
        } else {
            [&ptp, &ours]
        };
        for plugin in order {
            round_id += 1;
            say(
                config,
                &format!(
                    "rep {}/{} cycles C={} {}",
                    rep + 1,
                    config.reps,
                    config.cycle_concurrency,
                    plugin.flavor.label()
                ),
            );
            cycles.push(latency::run_cycles(
                &ctx(&node),
                plugin,
                round_id,
                rep,
                config.cycle_concurrency,
                config.pods,
            )?);
        }
        say(
            config,
            &format!("rep {}/{} kernel floor", rep + 1, config.reps),
        );
        floor_rounds.push(latency::run_floor_round(
            &ctx(&node),
            &config.floor,
            rep,
            config.pods,
            Ipv4Addr::new(10, 232, 0, 1),
            2,
        )?);
    }
    if let Some(pid) = node.ipamd_pid() {
        ipamd_memory.push((
            format!("idle after {} ADD+DEL", round_id * config.pods),
            daemon::memory(pid)?,
        ));
    }

    // 2. Where the time goes.
    say(config, "phase breakdown (AWS_CNI_TIMING)");
    let timing_file = tmp.0.join("timing.jsonl");
    round_id += 1;
    let timed = latency::run_round(
        &ctx(&node),
        &ours,
        round_id,
        0,
        1,
        config.pods,
        &[(
            aws_cni::timing::TIMING_ENV.to_owned(),
            timing_file.display().to_string(),
        )],
    )?;
    let phase_tables = phases::breakdown(&timed, &timing_file)?;
    if timed.round.failures() > 0 {
        rounds.push(timed.round);
    }
    let mut rss = Vec::new();
    for plugin in [&ours, &ptp] {
        round_id += 1;
        say(
            config,
            &format!("peak RSS per call, {}", plugin.flavor.label()),
        );
        rss.push(latency::run_rss_round(
            &ctx(&node),
            plugin,
            &config.peak_rss,
            round_id,
            config.rss_pods,
        )?);
    }
    say(config, "exec floors");
    let glibc = config
        .glibc_plugin
        .as_ref()
        .filter(|p| p.is_file())
        .map(|p| Plugin::ours(p, serde_json::Value::Null, &tmp.0));
    let exec_floors = phases::exec_floors(
        &ctx(&node),
        &ours,
        glibc.as_ref(),
        &ptp,
        cni_version,
        config.exec_floor_reps,
    )?;
    say(config, "kernel floor (one process)");
    let kernel_floor = phases::kernel_floor_in_process(
        &ctx(&node),
        &config.floor,
        config.pods,
        Ipv4Addr::new(10, 233, 0, 1),
        2,
    )?;

    // 3. ipamd.
    let mut loads = Vec::new();
    for clients in [config.load_clients, 1] {
        say(
            config,
            &format!("ipamd gRPC load, {clients} client(s), checkpoint on tmpfs"),
        );
        loads.push(daemon::grpc_load(
            &node.socket_path(),
            "tmpfs",
            clients,
            20,
            config.load_iterations,
        )?);
    }
    if config.disk_checkpoint {
        say(config, "ipamd gRPC load, checkpoint on disk");
        let disk = OwnedDir(disk_dir());
        std::fs::create_dir_all(&disk.0).map_err(|source| BenchError::Io {
            context: format!("cannot create {}", disk.0.display()),
            source,
        })?;
        test_support::cleanup::register_dir(&disk.0);
        loads.push(daemon::load_with_checkpoint_at(
            &mut node,
            &ipamd_bin,
            &disk.0.join("ipam.json"),
            config.load_clients,
            20,
            config.load_iterations,
        )?);
    }
    say(
        config,
        &format!("ipamd memory with {} pods", config.startup_pods),
    );
    let held = daemon::hold_pods(&node.socket_path(), config.startup_pods)?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(pid) = node.ipamd_pid() {
        ipamd_memory.push((
            format!("{} pods assigned through AddNetwork", config.startup_pods),
            daemon::memory(pid)?,
        ));
    }
    daemon::release_pods(&node.socket_path(), &held)?;
    let mut startups = Vec::new();
    for pods in [0, config.startup_pods] {
        say(
            config,
            &format!("ipamd start-up with {pods} pods in the checkpoint"),
        );
        startups.push(daemon::startup(
            &mut node,
            &ipamd_bin,
            &checkpoint,
            pods,
            config.startup_reps,
            config.idle_window,
        )?);
    }
    if let Some(s) = startups.last() {
        ipamd_memory.push((
            format!("{} pods restored from the checkpoint", s.pods),
            s.memory,
        ));
    }
    drop(node);

    // 4. IPv6 pods, on a node of their own.
    let ipv6 = match &config.ipv6 {
        Some(v6) => Some(ipv6::run(
            config,
            v6,
            &tmp.0,
            machine.cpus,
            &mut round_id,
            &rounds,
            &|m| say(config, m),
        )?),
        None => None,
    };

    // 5. The cold-node bursts, on the simulated VPC.
    let bursts = match &config.burst {
        Some(b) => burst::run(b, &|m| say(config, m))?,
        None => Vec::new(),
    };

    // 6. Sizes, criterion, image.
    let mut binaries = Vec::new();
    let ws = test_support::prereqs::workspace_dir();
    for (what, p) in [
        ("aws-cni (benchmarked build)", Some(config.plugin.clone())),
        ("aws-cni (glibc build)", config.glibc_plugin.clone()),
        ("ipamd", Some(ipamd_bin.clone())),
        ("kernel-floor", Some(config.floor.clone())),
        ("peak-rss", Some(config.peak_rss.clone())),
        ("ptp (Debian)", Some(config.ptp_dir.join("ptp"))),
        (
            "host-local (Debian)",
            Some(config.ptp_dir.join("host-local")),
        ),
    ] {
        if let Some(s) = p.and_then(|p| artifacts::file_size(what, &p)) {
            binaries.push(s);
        }
    }
    let (criterion, criterion_note) = match &config.criterion_dir {
        Some(dir) => (
            artifacts::criterion_results(dir, &["datastore/", "ipam_state/"])?,
            None,
        ),
        None => (
            Vec::new(),
            Some("criterion was not run (cargo bench -p ipamd --bench datastore; make bench runs it)".to_owned()),
        ),
    };
    let image = artifacts::image_estimate(
        &config.dockerfile,
        &[
            config.plugin.clone(),
            ipamd_bin,
            ws.join("target/release/aws-cni"),
        ],
    );

    let mut results = BenchResults {
        date,
        command: config.command.clone(),
        machine,
        pods: config.pods,
        reps: config.reps,
        binaries,
        rounds,
        cycles,
        floor_rounds,
        phases: phase_tables,
        rss,
        exec_floors,
        kernel_floor,
        loads,
        startups,
        ipamd_memory,
        criterion,
        criterion_note,
        image,
        bursts,
        ipv6,
        targets: Vec::new(),
    };
    results.targets = targets::targets(&results);
    Ok(results)
}

/// Where the "checkpoint on disk" variant keeps it: /var/tmp, which distributions keep on disk
/// (the report labels it by what statfs says).
pub fn disk_dir() -> PathBuf {
    PathBuf::from(format!("/var/tmp/vcni-bench-{}", std::process::id()))
}

/// Whether `path` is on a tmpfs (for the report).
pub fn on_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_node_has_the_pool_it_promises_and_is_valid() {
        for want in [5, 201, 250, 700] {
            let d = bench_node(want);
            d.validate().unwrap();
            assert!(d.all_secondary_ips().len() >= want.min(15 * IPS_PER_ENI));
        }
        assert_eq!(bench_node(250).interfaces.len(), 6);
    }

    #[test]
    fn utc_now_is_shaped_like_a_date() {
        let s = utc_now();
        assert_eq!(s.len(), "2026-11-26 04:10 UTC".len(), "{s}");
        assert!(s.starts_with("20"), "{s}");
    }

    #[test]
    fn config_validation_names_the_problem() {
        let mut c = BenchConfig::full(
            "/nonexistent/aws-cni".into(),
            "/bin/true".into(),
            "/bin/true".into(),
        );
        let e = c.validate().err().unwrap().to_string();
        assert!(e.contains("/nonexistent/aws-cni"), "{e}");
        c.plugin = "/bin/true".into();
        c.concurrency = vec![0];
        let e = c.validate().err().unwrap().to_string();
        assert!(e.contains("concurrency 0"), "{e}");
        c.concurrency = vec![1, 8];
        c.ipv6 = Some(ipv6::Ipv6Config {
            concurrency: Some(vec![1, 300]),
            ..ipv6::Ipv6Config::default()
        });
        let e = c.validate().err().unwrap().to_string();
        assert!(e.contains("IPv6 concurrency 300"), "{e}");
        c.ipv6 = Some(ipv6::Ipv6Config {
            reps: 0,
            ..ipv6::Ipv6Config::default()
        });
        let e = c.validate().err().unwrap().to_string();
        assert!(e.contains("IPv6 rounds of 40 pods, 0 runs"), "{e}");
    }
}
