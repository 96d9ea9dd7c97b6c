//! Per-pod ADD and DEL latency and ADD+DEL cycle throughput, measured as bench-ptp.sh does: for
//! every round, fresh namespaces (not timed), one warm-up ADD+DEL (not timed), N ADDs with C in
//! flight, each timed from spawn to reap, then N DELs with the ADD result as `prevResult`, each
//! followed in the same worker by the removal of its pod's namespace as a runtime does it and
//! a wait until the pod's host-side veth is gone (see [`super::teardown`] for where that clock
//! stops and why). A cycle is the whole life of one pod's network: namespace made, ADD, DEL,
//! namespace removed, host veth gone. Once the kernel has freed what went with the round's
//! namespaces, the node is checked for leftovers.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::BenchError;
use super::exec::{ExecOutcome, enter_netns, exec_timed, monotonic_ns};
use super::plugins::{Flavor, Plugin, host_veth, result_address};
use super::pods::{BenchPod, PodSet};
use super::stats::{CpuSnapshot, Summary};
use super::teardown::{LinkWatch, finish_pod};

/// Where calls run and what counts as "our" CPU.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The simulated node's namespace: the plugins' host namespace.
    pub node_netns: PathBuf,
    /// The node's name for `ip -n`.
    pub node_name: String,
    /// ipamd's pid (its CPU is part of the measured work, not foreign).
    pub ipamd_pid: Option<i32>,
    /// CPUs of the machine.
    pub cpus: usize,
}

/// Runs jobs `0..n` on `conc` threads that entered `netns`, returning each job's result in
/// order and the wall time from the moment every worker was ready to the last job's end.
pub fn parallel<T: Send>(
    netns: &Path,
    conc: usize,
    n: usize,
    job: impl Fn(usize) -> T + Sync,
) -> Result<(Vec<T>, u64), BenchError> {
    let conc = conc.clamp(1, n.max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(n));
    let ready = Barrier::new(conc + 1);
    let entered: Mutex<Vec<BenchError>> = Mutex::new(Vec::new());
    let mut t0 = 0;
    std::thread::scope(|s| {
        for _ in 0..conc {
            s.spawn(|| {
                let ok = match enter_netns(netns) {
                    Ok(()) => true,
                    Err(e) => {
                        entered
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(e);
                        false
                    }
                };
                ready.wait();
                if !ok {
                    return;
                }
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    mine.push((i, job(i)));
                }
                results
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(mine);
            });
        }
        ready.wait();
        t0 = monotonic_ns();
    });
    let wall = monotonic_ns().saturating_sub(t0);
    if let Some(e) = entered
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .into_iter()
        .next()
    {
        return Err(e);
    }
    let mut results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    if results.len() != n {
        return Err(BenchError::Invalid(format!(
            "{} of {n} jobs ran (a worker thread died)",
            results.len()
        )));
    }
    results.sort_by_key(|(i, _)| *i);
    Ok((results.into_iter().map(|(_, r)| r).collect(), wall))
}

/// Samples of one operation over a round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpSamples {
    /// Spawn → reap of every call, ns.
    pub latencies_ns: Vec<u64>,
    /// Wall time of the whole phase, ns.
    pub wall_ns: u64,
    /// What failed (container id, exit status, output excerpt).
    pub failures: Vec<String>,
}

impl OpSamples {
    fn record(&mut self, pod: &BenchPod, out: &Result<ExecOutcome, BenchError>, ok: bool) {
        match out {
            Ok(o) => {
                self.latencies_ns.push(o.latency_ns());
                if !ok {
                    self.failures.push(format!(
                        "{} exit {}: {}",
                        &pod.container_id[..12],
                        o.status,
                        o.output_excerpt(300)
                    ));
                }
            }
            Err(e) => self
                .failures
                .push(format!("{}: {e}", &pod.container_id[..12])),
        }
    }

    /// Latency summary.
    pub fn summary(&self) -> Option<Summary> {
        Summary::from_ns(&self.latencies_ns)
    }

    /// Calls per second over the phase's wall time.
    pub fn per_second(&self) -> f64 {
        per_second(self.latencies_ns.len(), self.wall_ns)
    }
}

/// `n / wall`.
pub fn per_second(n: usize, wall_ns: u64) -> f64 {
    if wall_ns == 0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let v = n as f64 * 1e9 / wall_ns as f64;
    v
}

/// One latency round: N ADDs then N DELs of one plugin at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Repetition index.
    pub rep: usize,
    /// Which plugin (or the kernel floor program, see `program`).
    pub flavor: Flavor,
    /// What ran (`aws-cni`, `ptp+host-local`, `kernel-floor`).
    pub program: String,
    /// Calls in flight.
    pub concurrency: usize,
    /// ADD samples.
    pub add: OpSamples,
    /// DEL samples (spawn → reap). Their `wall_ns` is 0: each DEL is followed by its pod's
    /// namespace removal in the same phase, whose wall time is `del_netns`'s.
    pub del: OpSamples,
    /// DEL + netns removal of every pod whose DEL succeeded: DEL's spawn → the later of the
    /// removal's return and the host veth's deletion (see [`super::teardown`]).
    pub del_netns: OpSamples,
    /// Of that, the removal call of every pod (unmount + unlink), ns.
    pub netns_removal_ns: Vec<u64>,
    /// Of that, from the removal's return until the host veth was gone (0 when it was gone
    /// already), ns.
    pub veth_wait_ns: Vec<u64>,
    /// Pods whose host veth was still on the node when their namespace's removal began (DEL
    /// left it to the removal).
    pub veths_left_by_del: usize,
    /// CPU used by other processes during the whole round (ADD, DEL and the namespaces'
    /// removal), % of all CPUs.
    pub other_cpu_pct: f64,
    /// The same over the ADD phase alone, where neither plugin leaves work to kernel workers:
    /// the machine's noise.
    pub add_other_cpu_pct: f64,
    /// The same over the DEL phase (DELs and the namespaces' removal), which includes the
    /// kernel workers tearing the removed namespaces down.
    pub del_other_cpu_pct: f64,
    /// Links and rules left on the node after the round (once its pod namespaces were removed
    /// and the kernel freed what went with them) that were not there before.
    pub leaked_links: Vec<String>,
}

impl Round {
    /// Every failure of the round.
    pub fn failures(&self) -> usize {
        self.add.failures.len()
            + self.del.failures.len()
            + self.del_netns.failures.len()
            + self.leaked_links.len()
    }
}

/// A round plus the raw outcomes, for the phase analysis.
#[derive(Debug)]
pub struct RoundOutput {
    /// The summary data.
    pub round: Round,
    /// The pods, in call order.
    pub pods: Vec<BenchPod>,
    /// ADD outcomes by pod.
    pub adds: Vec<Option<ExecOutcome>>,
    /// DEL outcomes by pod.
    pub dels: Vec<Option<ExecOutcome>>,
}

fn node_ip_json(ctx: &Ctx, args: &[&str]) -> Result<Vec<Value>, BenchError> {
    let out = test_support::netns::run_checked(
        std::process::Command::new("ip")
            .args(["-n", &ctx.node_name, "-j"])
            .args(args),
    )?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&out).map_err(|e| {
        BenchError::Invalid(format!(
            "ip -j {} printed invalid JSON: {e}",
            args.join(" ")
        ))
    })
}

/// The node's links and policy rules of both families (IPv6 pods have their rule 512 in the
/// IPv6 family), as comparable strings.
fn node_state(ctx: &Ctx) -> Result<Vec<String>, BenchError> {
    let mut state: Vec<String> = node_ip_json(ctx, &["link", "show"])?
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(|n| format!("link {n}")))
        .collect();
    for family in ["-4", "-6"] {
        state.extend(
            node_ip_json(ctx, &[family, "rule", "show"])?
                .iter()
                .map(|r| format!("rule {family} {r}")),
        );
    }
    Ok(state)
}

/// Removes the round's pod namespaces, as a runtime does after DEL, and waits (up to 10 s)
/// for the kernel to free what went with them: aws-cni's DEL leaves the veth pair to the
/// namespace's removal, which the kernel completes asynchronously. Returns the links and rules
/// then on the node that were not there before the round (not timed).
fn remove_pods(ctx: &Ctx, set: PodSet, before: &[String]) -> Result<Vec<String>, BenchError> {
    drop(set);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = node_state(ctx)?
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect();
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lets asynchronous kernel cleanup of deleted namespaces finish before the next measurement:
/// at least 300 ms, then until a 100 ms window sees the machine less than 5 % busy (at most
/// 5 s). Namespace removal hands the teardown of what was in them (for aws-cni, the pod's veth
/// pair) to kernel workers; without waiting for them, that work would land in the next round.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(300));
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let window = Duration::from_millis(100);
    let hz = super::stats::clock_ticks_per_second();
    // Ticks the whole machine has in one window; 5 % of them.
    let quiet = u64::try_from(cpus).unwrap_or(1) * hz / 10 / 20;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let t0 = super::stats::proc_stat_busy_ticks();
        std::thread::sleep(window);
        if super::stats::proc_stat_busy_ticks().saturating_sub(t0) <= quiet {
            return;
        }
    }
}

/// What the DEL phase of a round measured.
struct DelPhase {
    outcomes: Vec<Result<ExecOutcome, BenchError>>,
    del: OpSamples,
    del_netns: OpSamples,
    netns_removal_ns: Vec<u64>,
    veth_wait_ns: Vec<u64>,
    veths_left_by_del: usize,
    wall_ns: u64,
}

/// The DEL phase: for every pod, `del(i)` (timed spawn → reap), then, in the same worker, the
/// removal of its namespace and the wait until its host veth `veths[i]` is gone; `conc` pods
/// at a time.
fn del_phase(
    ctx: &Ctx,
    set: &PodSet,
    pods: &[BenchPod],
    veths: &[Option<String>],
    conc: usize,
    del: impl Fn(usize) -> Result<ExecOutcome, BenchError> + Sync,
) -> Result<DelPhase, BenchError> {
    let watch = LinkWatch::start(&ctx.node_netns)?;
    let (outs, wall_ns) = parallel(&ctx.node_netns, conc, pods.len(), |i| {
        let out = del(i);
        let end = finish_pod(set, i, veths[i].as_deref(), &watch);
        (out, end)
    })?;
    drop(watch);
    let mut phase = DelPhase {
        outcomes: Vec::with_capacity(outs.len()),
        del: OpSamples::default(),
        del_netns: OpSamples {
            wall_ns,
            ..OpSamples::default()
        },
        netns_removal_ns: Vec::new(),
        veth_wait_ns: Vec::new(),
        veths_left_by_del: 0,
        wall_ns,
    };
    for ((pod, veth), (out, end)) in pods.iter().zip(veths).zip(outs) {
        let ok = out.as_ref().is_ok_and(ExecOutcome::success);
        phase.del.record(pod, &out, ok);
        match (&out, end) {
            (Ok(o), Ok(t)) if ok => {
                phase
                    .del_netns
                    .latencies_ns
                    .push(t.end_ns().saturating_sub(o.t_spawn_ns));
                phase.netns_removal_ns.push(t.removal_ns());
                phase.veth_wait_ns.push(t.veth_wait_ns());
                phase.veths_left_by_del += usize::from(t.veth_left_by_del);
            }
            // A pod without a host veth had no ADD result: its failure is counted there.
            (_, Err(e)) if veth.is_some() => phase
                .del_netns
                .failures
                .push(format!("{}: {e}", &pod.container_id[..12])),
            _ => {}
        }
        phase.outcomes.push(out);
    }
    Ok(phase)
}

/// One warm-up ADD+DEL in its own namespace (not timed): page cache, ipamd's first requests.
fn warm_up(ctx: &Ctx, plugin: &Plugin, conf: &Value, round_id: usize) -> Result<(), BenchError> {
    let before = node_state(ctx)?;
    let set = PodSet::create(1, "bw")?;
    let pod = set.pods("bench", &format!("w{round_id}")).remove(0);
    let (outs, _) = parallel(&ctx.node_netns, 1, 1, |_| {
        let add = plugin.call("ADD", &pod, conf, None, &[])?;
        let prev: Option<Value> = serde_json::from_slice(&add.stdout).ok();
        if !add.success() {
            return Err(BenchError::Plugin {
                what: format!("warm-up ADD of {}", plugin.flavor.label()),
                detail: add.output_excerpt(2000),
            });
        }
        let del = plugin.call("DEL", &pod, conf, prev.as_ref(), &[])?;
        if !del.success() {
            return Err(BenchError::Plugin {
                what: format!("warm-up DEL of {}", plugin.flavor.label()),
                detail: del.output_excerpt(2000),
            });
        }
        Ok(())
    })?;
    outs.into_iter().collect::<Result<Vec<()>, _>>()?;
    // Its namespace goes now, so the kernel's cleanup of it does not overlap the round.
    let left = remove_pods(ctx, set, &before)?;
    settle();
    if left.is_empty() {
        Ok(())
    } else {
        Err(BenchError::Invalid(format!(
            "the warm-up pod of {} left {left:?} on the node",
            plugin.flavor.label()
        )))
    }
}

/// Runs one latency round of `plugin` (`extra_env` goes to every call, e.g. the timing file).
pub fn run_round(
    ctx: &Ctx,
    plugin: &Plugin,
    round_id: usize,
    rep: usize,
    conc: usize,
    n: usize,
    extra_env: &[(String, String)],
) -> Result<RoundOutput, BenchError> {
    let conf = plugin.conf_for_round(round_id);
    let before = node_state(ctx)?;
    let set = PodSet::create(n, "bp")?;
    let pods = set.pods("bench", &format!("r{round_id}"));
    warm_up(ctx, plugin, &conf, round_id)?;

    let cpu0 = CpuSnapshot::take(&ctx.ipamd_pid.into_iter().collect::<Vec<_>>());
    let (adds, add_wall) = parallel(&ctx.node_netns, conc, n, |i| {
        plugin.call("ADD", &pods[i], &conf, None, extra_env)
    })?;
    let mut add = OpSamples {
        wall_ns: add_wall,
        ..OpSamples::default()
    };
    let mut results: Vec<Option<Value>> = Vec::with_capacity(n);
    for (pod, out) in pods.iter().zip(&adds) {
        let result = out
            .as_ref()
            .ok()
            .filter(|o| o.success())
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
            .filter(|v| result_address(v).is_some());
        add.record(pod, out, result.is_some());
        results.push(result);
    }
    let cpu_added = CpuSnapshot::take(&ctx.ipamd_pid.into_iter().collect::<Vec<_>>());
    let veths: Vec<Option<String>> = results
        .iter()
        .map(|r| r.as_ref().and_then(host_veth).map(str::to_owned))
        .collect();
    let phase = del_phase(ctx, &set, &pods, &veths, conc, |i| {
        plugin.call("DEL", &pods[i], &conf, results[i].as_ref(), extra_env)
    })?;
    let cpu1 = CpuSnapshot::take(&ctx.ipamd_pid.into_iter().collect::<Vec<_>>());
    let leaked_links = remove_pods(ctx, set, &before)?;
    settle();
    Ok(RoundOutput {
        round: Round {
            rep,
            flavor: plugin.flavor,
            program: plugin.flavor.label().to_owned(),
            concurrency: conc,
            other_cpu_pct: cpu0.foreign_pct(&cpu1, add_wall + phase.wall_ns, ctx.cpus),
            add_other_cpu_pct: cpu0.foreign_pct(&cpu_added, add_wall, ctx.cpus),
            del_other_cpu_pct: cpu_added.foreign_pct(&cpu1, phase.wall_ns, ctx.cpus),
            add,
            del: phase.del,
            del_netns: phase.del_netns,
            netns_removal_ns: phase.netns_removal_ns,
            veth_wait_ns: phase.veth_wait_ns,
            veths_left_by_del: phase.veths_left_by_del,
            leaked_links,
        },
        pods,
        adds: adds.into_iter().map(Result::ok).collect(),
        dels: phase.outcomes.into_iter().map(Result::ok).collect(),
    })
}

/// ADD+DEL cycles: each worker runs whole pod lifecycles (namespace made, ADD, DEL, namespace
/// removed, host veth gone), N pods in all.
#[derive(Debug, Clone, Serialize)]
pub struct CycleRound {
    /// Repetition index.
    pub rep: usize,
    /// Which plugin.
    pub flavor: Flavor,
    /// Cycles in flight.
    pub concurrency: usize,
    /// Every pod's cycle, ns: from the start of its namespace's creation to the end point of
    /// its teardown (the later of the removal's return and the host veth's deletion).
    pub cycle_ns: Vec<u64>,
    /// Of that, ADD's spawn → DEL's reap, ns.
    pub add_del_ns: Vec<u64>,
    /// Wall time of all N cycles, ns.
    pub wall_ns: u64,
    /// Failures.
    pub failures: Vec<String>,
    /// CPU used by other processes, % of all CPUs.
    pub other_cpu_pct: f64,
}

impl CycleRound {
    /// Pods per second (N / wall).
    pub fn pods_per_second(&self) -> f64 {
        per_second(self.cycle_ns.len(), self.wall_ns)
    }
}

/// One cycle's figures: (whole cycle, ADD spawn → DEL reap), ns.
fn one_cycle(
    set: &PodSet,
    i: usize,
    pod: &BenchPod,
    plugin: &Plugin,
    conf: &Value,
    watch: &LinkWatch,
) -> Result<(u64, u64), BenchError> {
    let t0 = monotonic_ns();
    set.create_one(i)?;
    // Whatever fails from here on, the namespace is removed in this cycle.
    let add = plugin.call("ADD", pod, conf, None, &[]);
    let prev = add.as_ref().ok().and_then(|a| {
        serde_json::from_slice::<Value>(&a.stdout)
            .ok()
            .filter(|v| a.success() && result_address(v).is_some())
    });
    let del = plugin.call("DEL", pod, conf, prev.as_ref(), &[]);
    let veth = prev.as_ref().and_then(host_veth);
    let end = finish_pod(set, i, veth, watch);
    let add = add?;
    if prev.is_none() {
        return Err(BenchError::Plugin {
            what: format!("ADD of {}", &pod.container_id[..12]),
            detail: add.output_excerpt(300),
        });
    }
    let del = del?;
    if !del.success() {
        return Err(BenchError::Plugin {
            what: format!("DEL of {}", &pod.container_id[..12]),
            detail: del.output_excerpt(300),
        });
    }
    let end = end.map_err(|detail| BenchError::Plugin {
        what: format!("teardown of {}", &pod.container_id[..12]),
        detail,
    })?;
    Ok((
        end.end_ns().saturating_sub(t0),
        del.t_reaped_ns.saturating_sub(add.t_spawn_ns),
    ))
}

/// Runs one cycle round of `plugin`.
pub fn run_cycles(
    ctx: &Ctx,
    plugin: &Plugin,
    round_id: usize,
    rep: usize,
    conc: usize,
    n: usize,
) -> Result<CycleRound, BenchError> {
    let conf = plugin.conf_for_round(round_id);
    let before = node_state(ctx)?;
    // Named now, made inside each cycle.
    let set = PodSet::reserve(n, "bc")?;
    let pods = set.pods("bench", &format!("c{round_id}"));
    warm_up(ctx, plugin, &conf, round_id)?;
    let watch = LinkWatch::start(&ctx.node_netns)?;
    let cpu0 = CpuSnapshot::take(&ctx.ipamd_pid.into_iter().collect::<Vec<_>>());
    let (outs, wall) = parallel(&ctx.node_netns, conc, n, |i| {
        one_cycle(&set, i, &pods[i], plugin, &conf, &watch)
    })?;
    let cpu1 = CpuSnapshot::take(&ctx.ipamd_pid.into_iter().collect::<Vec<_>>());
    drop(watch);
    let mut cycle_ns = Vec::with_capacity(n);
    let mut add_del_ns = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for out in outs {
        match out {
            Ok((cycle, add_del)) => {
                cycle_ns.push(cycle);
                add_del_ns.push(add_del);
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    failures.extend(
        remove_pods(ctx, set, &before)?
            .into_iter()
            .map(|l| format!("{l} left on the node")),
    );
    settle();
    Ok(CycleRound {
        rep,
        flavor: plugin.flavor,
        concurrency: conc,
        cycle_ns,
        add_del_ns,
        wall_ns: wall,
        failures,
        other_cpu_pct: cpu0.foreign_pct(&cpu1, wall, ctx.cpus),
    })
}

/// The kernel floor exec'd per pod like a plugin (`kernel-floor add|del`), one at a time.
pub fn run_floor_round(
    ctx: &Ctx,
    floor: &Path,
    rep: usize,
    n: usize,
    ip_base: Ipv4Addr,
    table: u32,
) -> Result<Round, BenchError> {
    let before = node_state(ctx)?;
    let set = PodSet::create(n, "bf")?;
    let pods = set.pods("bench", &format!("f{rep}"));
    let env = vec![(
        "PATH".to_owned(),
        "/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    )];
    let args = |i: usize| {
        let n = u32::try_from(i).unwrap_or(0);
        (
            Ipv4Addr::from(u32::from(ip_base).wrapping_add(n)).to_string(),
            format!("flr{n:011x}"),
        )
    };
    let call = |cmd: &str, i: usize| {
        let (ip, veth) = args(i);
        let netns = pods[i].netns.display().to_string();
        let table = table.to_string();
        exec_timed(floor, &[cmd, &netns, &ip, &veth, &table], &env, b"")
    };
    let cpu0 = CpuSnapshot::take(&[]);
    let (adds, add_wall) = parallel(&ctx.node_netns, 1, n, |i| call("add", i))?;
    let cpu_added = CpuSnapshot::take(&[]);
    let mut add = OpSamples {
        wall_ns: add_wall,
        ..OpSamples::default()
    };
    let mut veths = Vec::with_capacity(n);
    for (i, (pod, a)) in pods.iter().zip(&adds).enumerate() {
        let ok = a.as_ref().is_ok_and(ExecOutcome::success);
        add.record(pod, a, ok);
        veths.push(ok.then(|| args(i).1));
    }
    let phase = del_phase(ctx, &set, &pods, &veths, 1, |i| call("del", i))?;
    let cpu1 = CpuSnapshot::take(&[]);
    let leaked_links = remove_pods(ctx, set, &before)?;
    settle();
    Ok(Round {
        rep,
        flavor: Flavor::Floor,
        program: "kernel-floor".into(),
        concurrency: 1,
        other_cpu_pct: cpu0.foreign_pct(&cpu1, add_wall + phase.wall_ns, ctx.cpus),
        add_other_cpu_pct: cpu0.foreign_pct(&cpu_added, add_wall, ctx.cpus),
        del_other_cpu_pct: cpu_added.foreign_pct(&cpu1, phase.wall_ns, ctx.cpus),
        add,
        del: phase.del,
        del_netns: phase.del_netns,
        netns_removal_ns: phase.netns_removal_ns,
        veth_wait_ns: phase.veth_wait_ns,
        veths_left_by_del: phase.veths_left_by_del,
        leaked_links,
    })
}

/// Peak RSS of each call, measured through the `peak-rss` helper (see
/// cni-plugin/examples/peak_rss.rs for why not `ru_maxrss` of the driver's own children).
#[derive(Debug, Clone, Serialize)]
pub struct RssRound {
    /// Which plugin.
    pub flavor: Flavor,
    /// Peak RSS of every ADD (for ptp: with the host-local it ran), KiB.
    pub add_kib: Vec<u64>,
    /// Peak RSS of every DEL, KiB.
    pub del_kib: Vec<u64>,
    /// Failures.
    pub failures: Vec<String>,
}

fn peak_rss_of(out: &Result<ExecOutcome, BenchError>) -> Result<u64, String> {
    let o = out.as_ref().map_err(ToString::to_string)?;
    let text = String::from_utf8_lossy(&o.stderr);
    let kib = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak-rss-kib="))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("peak-rss printed no figure: {}", o.output_excerpt(300)))?;
    if o.success() {
        Ok(kib)
    } else {
        Err(format!("exit {}: {}", o.status, o.output_excerpt(300)))
    }
}

/// ADD then DEL of `n` pods, one at a time, each call run through `helper` to measure its peak
/// RSS (not timed: the helper adds an exec).
pub fn run_rss_round(
    ctx: &Ctx,
    plugin: &Plugin,
    helper: &Path,
    round_id: usize,
    n: usize,
) -> Result<RssRound, BenchError> {
    let conf = plugin.conf_for_round(round_id);
    let before = node_state(ctx)?;
    let set = PodSet::create(n, "br")?;
    let pods = set.pods("bench", &format!("m{round_id}"));
    let (outs, _) = parallel(&ctx.node_netns, 1, n, |i| {
        let add = plugin.call_via(Some(helper), "ADD", &pods[i], &conf, None, &[]);
        let prev = add
            .as_ref()
            .ok()
            .filter(|o| o.success())
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok());
        let del = plugin.call_via(Some(helper), "DEL", &pods[i], &conf, prev.as_ref(), &[]);
        (peak_rss_of(&add), peak_rss_of(&del))
    })?;
    let mut round = RssRound {
        flavor: plugin.flavor,
        add_kib: Vec::new(),
        del_kib: Vec::new(),
        failures: Vec::new(),
    };
    for (add, del) in outs {
        match add {
            Ok(k) => round.add_kib.push(k),
            Err(e) => round.failures.push(format!("ADD: {e}")),
        }
        match del {
            Ok(k) => round.del_kib.push(k),
            Err(e) => round.failures.push(format!("DEL: {e}")),
        }
    }
    round.failures.extend(
        remove_pods(ctx, set, &before)?
            .into_iter()
            .map(|l| format!("{l} left on the node")),
    );
    settle();
    Ok(round)
}
