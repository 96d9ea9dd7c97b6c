//! BENCHMARKS.md from one run's [`BenchResults`]: every figure with a peer next to the peer
//! measured in the same run and their ratio, the targets with met/missed (and, when
//! missed, by how much and what bounds it), the comparison with the previous run's results
//! (read from its JSON), and the method. Every figure printed was measured in this run or read
//! from the previous run's results; none is kept in the source.

use std::fmt::Write as _;

use super::BenchResults;
use super::artifacts::CriterionResult;
use super::latency::{OpSamples, Round};
use super::plugins::Flavor;
use super::stats::{Summary, median_ns, ns_to_ms, ratio};
use super::targets::{Previous, comparison_markdown, targets};

/// A path relative to the workspace when it is inside it (reports are read in the repository).
pub(super) fn shown(path: &std::path::Path) -> String {
    let ws = test_support::prereqs::workspace_dir();
    path.strip_prefix(&ws).unwrap_or(path).display().to_string()
}

/// A duration given in ns, in the unit that keeps it readable.
fn duration_text(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 10_000_000.0 {
        format!("{} µs", f2(ns / 1e3))
    } else {
        format!("{} ms", f2(ns / 1e6))
    }
}

/// A rate per second with an SI prefix.
fn rate_text(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k", per_s / 1e3)
    } else {
        f2(per_s)
    }
}

/// A size in bytes, in KiB below 1 MiB.
fn size_text(bytes: u64) -> String {
    // `mib` takes KiB.
    if bytes < 1024 * 1024 {
        format!("{} KiB", f2(mib(bytes)))
    } else {
        format!("{} MiB", f2(mib(bytes / 1024)))
    }
}

pub(super) fn mib(kib: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let v = kib as f64 / 1024.0;
    v
}

pub(super) fn f2(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(super) fn ratio_text(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

/// Pooled samples of one plugin, concurrency and verb over all repetitions.
fn pooled<'a>(
    rounds: &'a [Round],
    flavor: Flavor,
    conc: usize,
    pick: impl Fn(&'a Round) -> &'a OpSamples,
) -> (Vec<u64>, Vec<&'a OpSamples>) {
    let mut all = Vec::new();
    let mut per_rep = Vec::new();
    for r in rounds
        .iter()
        .filter(|r| r.flavor == flavor && r.concurrency == conc)
    {
        let s = pick(r);
        all.extend_from_slice(&s.latencies_ns);
        per_rep.push(s);
    }
    (all, per_rep)
}

/// The operations of a latency round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// ADD.
    Add,
    /// DEL alone (spawn → reap).
    Del,
    /// DEL + netns removal, until the host veth is gone.
    DelNetns,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::DelNetns => "DEL + netns removal",
        }
    }

    fn samples(self, r: &Round) -> &OpSamples {
        match self {
            Self::Add => &r.add,
            Self::Del => &r.del,
            Self::DelNetns => &r.del_netns,
        }
    }
}

pub(super) struct OpRow {
    pub(super) summary: Option<Summary>,
    per_rep_medians: Vec<f64>,
    /// 0 when the operation's wall time is not its own (DEL, see [`Round::del`]).
    ops_per_s: f64,
    failures: usize,
}

pub(super) fn op_row(rounds: &[Round], flavor: Flavor, conc: usize, op: Op) -> OpRow {
    let (all, per_rep) = pooled(rounds, flavor, conc, |r| op.samples(r));
    let ops: f64 = if per_rep.is_empty() {
        0.0
    } else {
        per_rep.iter().map(|s| s.per_second()).sum::<f64>() / super::stats::count_f64(per_rep.len())
    };
    OpRow {
        summary: Summary::from_ns(&all),
        per_rep_medians: per_rep
            .iter()
            .map(|s| ns_to_ms(median_ns(&s.latencies_ns)))
            .collect(),
        ops_per_s: ops,
        failures: per_rep.iter().map(|s| s.failures.len()).sum(),
    }
}

/// A rate, or a dash when it was not measured (0).
fn rate_or_dash(v: f64) -> String {
    if v > 0.0 { f2(v) } else { "–".into() }
}

/// The largest other% of one plugin's rounds at one concurrency, over the phase of `op`.
fn other_pct(rounds: &[Round], flavor: Flavor, conc: usize, op: Op) -> f64 {
    rounds
        .iter()
        .filter(|r| r.flavor == flavor && r.concurrency == conc)
        .map(|r| {
            if op == Op::Add {
                r.add_other_cpu_pct
            } else {
                r.del_other_cpu_pct
            }
        })
        .fold(0.0, f64::max)
}

pub(super) fn concurrencies(rounds: &[Round]) -> Vec<usize> {
    let mut c: Vec<usize> = rounds.iter().map(|r| r.concurrency).collect();
    c.sort_unstable();
    c.dedup();
    c
}

fn medians_text(v: &[f64]) -> String {
    v.iter().map(|m| f2(*m)).collect::<Vec<_>>().join(" / ")
}

pub(super) fn criterion_of<'a>(res: &'a BenchResults, id: &str) -> Option<&'a CriterionResult> {
    res.criterion.iter().find(|c| c.id == id)
}

pub(super) fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// One plugin's cycle rounds, pooled.
pub(super) struct CycleStats {
    /// Median over the repetitions of N / wall.
    pub(super) pods_per_s: f64,
    per_rep: Vec<f64>,
    /// Whole cycles.
    pub(super) cycle: Option<Summary>,
    /// Their ADD spawn → DEL reap part.
    pub(super) add_del: Option<Summary>,
    failures: usize,
}

pub(super) fn cycle_stats(res: &BenchResults, flavor: Flavor) -> CycleStats {
    let rs: Vec<_> = res.cycles.iter().filter(|c| c.flavor == flavor).collect();
    let per_rep: Vec<f64> = rs.iter().map(|c| c.pods_per_second()).collect();
    let mut sorted = per_rep.clone();
    sorted.sort_by(f64::total_cmp);
    let med = if sorted.is_empty() {
        0.0
    } else if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let all: Vec<u64> = rs.iter().flat_map(|c| c.cycle_ns.iter().copied()).collect();
    let add_del: Vec<u64> = rs
        .iter()
        .flat_map(|c| c.add_del_ns.iter().copied())
        .collect();
    CycleStats {
        pods_per_s: med,
        per_rep,
        cycle: Summary::from_ns(&all),
        add_del: Summary::from_ns(&add_del),
        failures: rs.iter().map(|c| c.failures.len()).sum(),
    }
}

/// The kernel floor exec'd per pod, pooled over its rounds.
#[derive(Debug, Clone, Copy)]
pub(super) struct FloorStats {
    pub(super) add: Option<Summary>,
    pub(super) del: Option<Summary>,
    pub(super) del_netns: Option<Summary>,
}

pub(super) fn floor_stats(res: &BenchResults) -> FloorStats {
    let pool = |op: Op| {
        let v: Vec<u64> = res
            .floor_rounds
            .iter()
            .flat_map(|r| op.samples(r).latencies_ns.iter().copied())
            .collect();
        Summary::from_ns(&v)
    };
    FloorStats {
        add: pool(Op::Add),
        del: pool(Op::Del),
        del_netns: pool(Op::DelNetns),
    }
}

/// Medians of a teardown's parts over one plugin's rounds at one concurrency: (removal call ms,
/// veth gone after the removal ms, pods whose veth DEL left, pods).
fn teardown_parts(rounds: &[Round], flavor: Flavor, conc: usize) -> (f64, f64, usize, usize) {
    let rs: Vec<&Round> = rounds
        .iter()
        .filter(|r| r.flavor == flavor && r.concurrency == conc)
        .collect();
    let removal: Vec<u64> = rs
        .iter()
        .flat_map(|r| r.netns_removal_ns.iter().copied())
        .collect();
    let wait: Vec<u64> = rs
        .iter()
        .flat_map(|r| r.veth_wait_ns.iter().copied())
        .collect();
    (
        ns_to_ms(median_ns(&removal)),
        ns_to_ms(median_ns(&wait)),
        rs.iter().map(|r| r.veths_left_by_del).sum(),
        removal.len(),
    )
}

/// Where this run's results went and what to compare them with.
#[derive(Debug, Clone)]
pub struct ReportInputs {
    /// The JSON this run's results are written to, if any.
    pub json: Option<std::path::PathBuf>,
    /// The previous run's results.
    pub previous: Previous,
}

/// The Markdown report.
pub fn markdown(res: &BenchResults, inputs: &ReportInputs) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `{}` on {}. Every figure that has a peer was measured in the same run, next to it, and the ratio is ours / theirs (lower is better for latency, higher for throughput). {}\n",
        res.command,
        res.date,
        inputs.json.as_ref().map_or_else(
            || "The raw samples were not kept (no `--json`).".to_owned(),
            |j| format!(
                "The raw samples and the evaluated targets are in `{}`; the next run compares itself with them.",
                shown(j)
            )
        )
    );
    let m = &res.machine;
    let bin = |what: &str| res.binaries.iter().find(|b| b.what.starts_with(what));
    let plugin_desc = bin("aws-cni (benchmarked").map_or_else(
        || "–".into(),
        |b| {
            format!(
                "`{}`, {} MiB, {}",
                shown(&b.path),
                f2(mib(b.bytes / 1024)),
                match b.static_binary {
                    Some(true) => "statically linked",
                    Some(false) => "dynamically linked",
                    None => "not an ELF",
                }
            )
        },
    );
    // The ADD phases leave no work to kernel workers for either plugin: their other% is the
    // machine's noise. The DEL phases include the teardown of the removed namespaces.
    let max_of = |flavor: Flavor, pick: fn(&Round) -> f64| {
        res.rounds
            .iter()
            .filter(|r| r.flavor == flavor)
            .map(pick)
            .fold(0.0, f64::max)
    };
    let max_other = max_of(Flavor::Ptp, |r| r.add_other_cpu_pct)
        .max(max_of(Flavor::Ours, |r| r.add_other_cpu_pct));
    let del_other = (
        max_of(Flavor::Ours, |r| r.del_other_cpu_pct),
        max_of(Flavor::Ptp, |r| r.del_other_cpu_pct),
    );
    let _ = writeln!(w, "| | |\n| --- | --- |");
    let _ = writeln!(
        w,
        "| Machine | {} CPUs ({}), {} GiB, Linux {} |",
        m.cpus, m.cpu_model, m.memory_gib, m.kernel
    );
    let _ = writeln!(w, "| Toolchain | {} |", m.rustc);
    let _ = writeln!(w, "| aws-cni under test | {plugin_desc} |");
    let _ = writeln!(
        w,
        "| Baseline | Debian's `ptp` + `host-local` (containernetworking-plugins), exec'd the same way |"
    );
    let _ = writeln!(
        w,
        "| Rounds | {} pods per round; concurrency {}; {} repetition(s), the two plugins' order alternating from round to round |",
        res.pods,
        concurrencies(&res.rounds)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        res.reps
    );
    let _ = writeln!(
        w,
        "| Noise | CPU used by other processes (other%) during the ADD phases, where neither plugin leaves work to kernel workers: at most {max_other:.1} % of the machine{}. During the DEL phases, which include the kernel's teardown of the removed pod namespaces: at most {:.1} % in aws-cni's rounds, {:.1} % in ptp's |",
        if max_other > 5.0 {
            " — the machine was not quiet; figures are noisier than they would be"
        } else {
            ""
        },
        del_other.0,
        del_other.1
    );
    let failures = res.failures();
    if failures > 0 {
        let _ = writeln!(
            w,
            "| **Failures** | {failures} failed calls or leftovers (see the fail columns) |"
        );
    }

    // Targets.
    let _ = writeln!(w, "\n## Targets (reported, not gated)\n");
    let _ = writeln!(
        w,
        "| target | measured | verdict | if missed: by how much, what bounds it |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- |");
    let evaluated = if res.targets.is_empty() {
        targets(res)
    } else {
        res.targets.clone()
    };
    for t in evaluated {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            t.target,
            t.measured,
            verdict(t.met),
            t.note
        );
    }
    let _ = write!(w, "{}", comparison_markdown(res, &inputs.previous));

    // 1. Latency.
    let _ = writeln!(w, "\n## 1. Per-pod ADD and DEL latency\n");
    let _ = writeln!(
        w,
        "Each call is timed from spawn to reap, in the simulated node's network namespace, with the `CNI_*` environment and stdin a runtime gives (CNI 1.0.0, kubelet's `CNI_ARGS`); DEL carries the ADD result as `prevResult`. Fresh pod namespaces are made before each round and one untimed warm-up ADD+DEL runs first. aws-cni uses the conflist ipamd wrote (its defaults: `pluginLogLevel` DEBUG to a log file) and a warm pool; ptp uses bench-ptp.sh's config. Milliseconds; *per rep* lists the median of each repetition.\n\nA bare DEL does different work for the two plugins: ptp deletes the pod's veth pair in DEL, aws-cni (like the reference) leaves it to the runtime's removal of the pod's namespace. *DEL + netns removal* charges both with the same work: right after its DEL, in the same worker, each pod's namespace is removed the way runtimes do it (unmount, unlink), and the clock, started at DEL's spawn, stops at the later of the removal's return and the moment the pod's host-side veth is gone from the node (Notes: *DEL and the namespace's removal*). Its ops/s is pods / wall time of the DEL phase; a bare DEL has no ops/s of its own, since every DEL is followed by its pod's removal in that phase. other% is over the ADD phase for ADD rows and over the DEL phase for DEL rows.\n"
    );
    for conc in concurrencies(&res.rounds) {
        let _ = writeln!(w, "### Concurrency {conc}\n");
        let _ = writeln!(
            w,
            "| plugin | op | median | p95 | p99 | max | ops/s | per rep | fail | other% |"
        );
        let _ = writeln!(
            w,
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
        );
        for op in [Op::Add, Op::Del, Op::DelNetns] {
            let label = op.label();
            let mut rows = Vec::new();
            for flavor in [Flavor::Ours, Flavor::Ptp] {
                let row = op_row(&res.rounds, flavor, conc, op);
                if let Some(sm) = row.summary {
                    let _ = writeln!(
                        w,
                        "| {} | {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        flavor.label(),
                        f2(sm.median_ms),
                        f2(sm.p95_ms),
                        f2(sm.p99_ms),
                        f2(sm.max_ms),
                        rate_or_dash(row.ops_per_s),
                        medians_text(&row.per_rep_medians),
                        row.failures,
                        other_pct(&res.rounds, flavor, conc, op)
                    );
                }
                rows.push(row);
            }
            if let (Some(o), Some(p)) = (rows[0].summary, rows[1].summary) {
                let _ = writeln!(
                    w,
                    "| **ours/ptp** | {label} | **{}** | {} | **{}** | {} | {} | | | |",
                    ratio_text(ratio(o.median_ms, p.median_ms)),
                    ratio_text(ratio(o.p95_ms, p.p95_ms)),
                    ratio_text(ratio(o.p99_ms, p.p99_ms)),
                    ratio_text(ratio(o.max_ms, p.max_ms)),
                    ratio_text(ratio(rows[0].ops_per_s, rows[1].ops_per_s)),
                );
            }
        }
        let parts: Vec<String> = [Flavor::Ours, Flavor::Ptp]
            .iter()
            .map(|&flavor| {
                let (removal, wait, left, n) = teardown_parts(&res.rounds, flavor, conc);
                format!(
                    "{}: removal call {} ms, host veth gone {} ms after it, veth left by DEL for {left} of {n} pods",
                    flavor.label(),
                    f2(removal),
                    f2(wait)
                )
            })
            .collect();
        let _ = writeln!(
            w,
            "\nParts of DEL + netns removal (medians) — {}.",
            parts.join("; ")
        );
        let _ = writeln!(w);
    }
    let ours_cy = cycle_stats(res, Flavor::Ours);
    let ptp_cy = cycle_stats(res, Flavor::Ptp);
    if !res.cycles.is_empty() {
        let conc = res.cycles[0].concurrency;
        let _ = writeln!(w, "### ADD+DEL cycle throughput, concurrency {conc}\n");
        let _ = writeln!(
            w,
            "Each worker runs whole pod lifecycles: it makes the pod's namespace the way runtimes do (a thread unshares a network namespace and bind-mounts it under /run/netns), ADD, DEL with the ADD result, removes the namespace and waits until the pod's host veth is gone, as in *DEL + netns removal*. A cycle is timed from the namespace's creation to that end point; pods/s = {} / wall time of the round (median of the repetitions). *ADD → DEL* is the part from ADD's spawn to DEL's reap.\n",
            res.pods
        );
        let _ = writeln!(
            w,
            "| plugin | pods/s | per rep | cycle median ms | cycle p99 ms | ADD → DEL median ms | fail |"
        );
        let _ = writeln!(w, "| --- | ---: | --- | ---: | ---: | ---: | ---: |");
        let dash = |v: Option<f64>| v.map_or_else(|| "–".into(), f2);
        for (label, c) in [
            (Flavor::Ours.label(), &ours_cy),
            (Flavor::Ptp.label(), &ptp_cy),
        ] {
            let _ = writeln!(
                w,
                "| {label} | {} | {} | {} | {} | {} | {} |",
                f2(c.pods_per_s),
                medians_text(&c.per_rep),
                dash(c.cycle.map(|s| s.median_ms)),
                dash(c.cycle.map(|s| s.p99_ms)),
                dash(c.add_del.map(|s| s.median_ms)),
                c.failures
            );
        }
        let both = |f: fn(&Summary) -> f64, a: Option<Summary>, b: Option<Summary>| {
            ratio_text(a.zip(b).and_then(|(o, p)| ratio(f(&o), f(&p))))
        };
        let _ = writeln!(
            w,
            "| **ours/ptp** | **{}** | | {} | {} | {} | |\n",
            ratio_text(ratio(ours_cy.pods_per_s, ptp_cy.pods_per_s)),
            both(|s| s.median_ms, ours_cy.cycle, ptp_cy.cycle),
            both(|s| s.p99_ms, ours_cy.cycle, ptp_cy.cycle),
            both(|s| s.median_ms, ours_cy.add_del, ptp_cy.add_del),
        );
    }

    // 2. Where the time goes.
    let _ = writeln!(w, "## 2. Where the time goes\n");
    let _ = writeln!(
        w,
        "One more aws-cni round at concurrency 1 with `AWS_CNI_TIMING=<file>`: the plugin appends its phase marks (CLOCK_MONOTONIC) to the file; `exec_startup` (spawn → `main`) and `exit_reap` (last mark → reaped) come from the driver's clock. Medians of {} calls in µs; the phases' medians need not add up to the median total.\n",
        res.phases.first().map_or(0, |p| p.n)
    );
    for t in &res.phases {
        let _ = writeln!(
            w,
            "### {} — median total {} ms, of which {} ms inside `main`\n",
            t.command,
            f2(t.total_median_ms),
            f2(t.in_process_median_ms)
        );
        let _ = writeln!(w, "| phase | median µs | p95 µs | share of median total |");
        let _ = writeln!(w, "| --- | ---: | ---: | ---: |");
        for p in &t.phases {
            let share = if t.total_median_ms > 0.0 {
                100.0 * p.median_us / 1_000.0 / t.total_median_ms
            } else {
                0.0
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {share:.0} % |",
                p.name,
                f2(p.median_us),
                f2(p.p95_us)
            );
        }
        let _ = writeln!(w);
    }
    let ef = &res.exec_floors;
    let _ = writeln!(w, "### Exec floors (spawn → reap, one at a time)\n");
    let _ = writeln!(w, "| program | median ms | p95 ms | p99 ms |");
    let _ = writeln!(w, "| --- | ---: | ---: | ---: |");
    let mut floors = vec![
        ("`/bin/true`", ef.bin_true),
        (
            "aws-cni `CNI_COMMAND=VERSION` (static musl, benchmarked)",
            ef.ours_version,
        ),
        ("ptp `CNI_COMMAND=VERSION`", ef.ptp_version),
    ];
    if let Some(g) = ef.ours_glibc_version {
        floors.push(("aws-cni `CNI_COMMAND=VERSION` (glibc, dynamic)", g));
    }
    if let Some(ip) = ef.ip_netns_exec_true {
        floors.push((
            "`ip netns exec <node> /bin/true` (not how runtimes exec)",
            ip,
        ));
    }
    for (what, sm) in floors {
        let _ = writeln!(
            w,
            "| {what} | {} | {} | {} |",
            f2(sm.median_ms),
            f2(sm.p95_ms),
            f2(sm.p99_ms)
        );
    }
    let _ = writeln!(
        w,
        "| **aws-cni / ptp VERSION** | **{}** | | |\n",
        ratio_text(ratio(ef.ours_version.median_ms, ef.ptp_version.median_ms))
    );
    let kf = &res.kernel_floor;
    let _ = writeln!(
        w,
        "### Kernel floor\n\n`kernel-floor` (cni-plugin/examples/kernel_floor.rs) does the same netlink operations for one pod and nothing else (no config, no ipamd, no logging, two index lookups). In one process over {} pods, per operation (µs):\n",
        kf.n
    );
    let _ = writeln!(w, "| ADD operation | median µs | p95 µs |");
    let _ = writeln!(w, "| --- | ---: | ---: |");
    for (name, med, p95) in &kf.add {
        let _ = writeln!(w, "| {name} | {} | {} |", f2(*med), f2(*p95));
    }
    let _ = writeln!(
        w,
        "| **ADD total (sum of medians)** | **{} ms** | |",
        f2(kf.add_total_ms)
    );
    for (name, med, p95) in &kf.del {
        let _ = writeln!(w, "| DEL: {name} | {} | {} |", f2(*med), f2(*p95));
    }
    let _ = writeln!(
        w,
        "| **DEL total (sum of medians)** | **{} ms** | |\n",
        f2(kf.del_total_ms)
    );
    let floor = floor_stats(res);
    if let (Some(fa), Some(fd), Some(fdn)) = (floor.add, floor.del, floor.del_netns) {
        let row = |flavor: Flavor, op: Op| op_row(&res.rounds, flavor, 1, op).summary;
        let _ = writeln!(
            w,
            "The same program exec'd per pod like a plugin (concurrency 1, {} pods × {} repetitions), next to the plugins at concurrency 1. Like aws-cni's, its DEL leaves the veth pair to the namespace's removal.\n",
            res.pods, res.reps
        );
        let _ = writeln!(
            w,
            "| program | ADD median | ADD p99 | DEL median | DEL p99 | DEL + netns removal median | DEL + netns removal p99 |"
        );
        let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        let _ = writeln!(
            w,
            "| kernel-floor | {} | {} | {} | {} | {} | {} |",
            f2(fa.median_ms),
            f2(fa.p99_ms),
            f2(fd.median_ms),
            f2(fd.p99_ms),
            f2(fdn.median_ms),
            f2(fdn.p99_ms)
        );
        for flavor in [Flavor::Ours, Flavor::Ptp] {
            if let (Some(a), Some(d), Some(dn)) = (
                row(flavor, Op::Add),
                row(flavor, Op::Del),
                row(flavor, Op::DelNetns),
            ) {
                let _ = writeln!(
                    w,
                    "| {} | {} ({} floor) | {} | {} ({} floor) | {} | {} ({} floor) | {} |",
                    flavor.label(),
                    f2(a.median_ms),
                    ratio_text(ratio(a.median_ms, fa.median_ms)),
                    f2(a.p99_ms),
                    f2(d.median_ms),
                    ratio_text(ratio(d.median_ms, fd.median_ms)),
                    f2(d.p99_ms),
                    f2(dn.median_ms),
                    ratio_text(ratio(dn.median_ms, fdn.median_ms)),
                    f2(dn.p99_ms)
                );
            }
        }
        let _ = writeln!(w);
    }

    // 3. ipamd.
    let _ = writeln!(w, "## 3. ipamd\n");
    let _ = writeln!(
        w,
        "### AddNetwork / DelNetwork service time\n\nClient-side latency of gRPC calls on the node's socket, each client on its own connection, AddNetwork then DelNetwork of its own keys, after 20 untimed pairs. A call is answered once its change is in the checkpoint: group commits written outside the pool lock (temp file, fsync, rename, fsync of the directory), one write covering every change made while the previous one ran.\n"
    );
    let _ = writeln!(
        w,
        "| checkpoint on | clients | Add p50 ms | Add p99 ms | Del p50 ms | Del p99 ms | requests/s |"
    );
    let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for l in &res.loads {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            l.checkpoint,
            l.clients,
            f2(l.add.median_ms),
            f2(l.add.p99_ms),
            f2(l.del.median_ms),
            f2(l.del.p99_ms),
            f2(l.requests_per_second)
        );
    }
    let _ = writeln!(
        w,
        "\n### Datastore (criterion, `ipamd/benches/datastore.rs`)\n"
    );
    if res.criterion.is_empty() {
        let _ = writeln!(
            w,
            "{}\n",
            res.criterion_note.as_deref().unwrap_or("no results")
        );
    } else {
        let _ = writeln!(
            w,
            "One iteration = assign one address and release it, the pool holding N addresses of which half are assigned, `IP_COOLDOWN_PERIOD=0`. `datastore/*` is the bare datastore; `ipam_state/*` adds the pool lock, the group commit (encoding of the changed allocation, assembly of the file outside the lock) and the hand-off of the write (to a checkpointer that stores nothing).\n"
        );
        let _ = writeln!(w, "| benchmark | median time per pair | pairs per second |");
        let _ = writeln!(w, "| --- | ---: | ---: |");
        let mut sorted: Vec<&CriterionResult> = res.criterion.iter().collect();
        let size = |c: &CriterionResult| {
            c.id.rsplit('/')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        sorted.sort_by(|a, b| {
            let group = |c: &CriterionResult| c.id.split('/').next().unwrap_or("").to_owned();
            group(a).cmp(&group(b)).then(size(a).cmp(&size(b)))
        });
        for c in sorted {
            let _ = writeln!(
                w,
                "| {} | {} | {} |",
                c.id,
                duration_text(c.median_ns),
                rate_text(c.per_second())
            );
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(
        w,
        "### Start-up to ready\n\nFrom spawning ipamd (straight into the node namespace) to the conflist being written (health SERVING comes just before it), instance metadata served by the emulator on the node's loopback. With pods, the checkpoint lists them and their host veths exist, so all are restored.\n"
    );
    let _ = writeln!(
        w,
        "| pods in the checkpoint | median ms | min ms | max ms | starts | restored |"
    );
    let _ = writeln!(w, "| ---: | ---: | ---: | ---: | ---: | ---: |");
    for st in &res.startups {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            st.pods,
            f2(st.summary.median_ms),
            f2(st.summary.min_ms),
            f2(st.summary.max_ms),
            st.summary.n,
            st.restored
        );
    }
    if let Some((st, idle)) = res
        .startups
        .iter()
        .rev()
        .find_map(|st| st.idle_cpu.map(|i| (st, i)))
    {
        let _ = writeln!(
            w,
            "\n### CPU while idle\n\nipamd with {} restored pods and no requests, watched for {} s after its first start (its orphan sweep and pool reconcile run every 5 s, the node-network reconcile every 30 s): {} ms of CPU, {} % of one core.",
            st.pods,
            f2(idle.window_s),
            f2(idle.cpu_ms),
            f2(idle.percent_of_core())
        );
    }
    let _ = writeln!(w, "\n### Resident memory\n");
    let _ = writeln!(
        w,
        "| ipamd | VmRSS MiB | of which heap etc. (RssAnon) | of which the binary (RssFile) | VmHWM (peak) MiB | threads |"
    );
    let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (what, mem) in &res.ipamd_memory {
        let _ = writeln!(
            w,
            "| {what} | {} | {} | {} | {} | {} |",
            f2(mib(mem.rss_kib)),
            f2(mib(mem.anon_kib)),
            f2(mib(mem.file_kib)),
            f2(mib(mem.hwm_kib)),
            mem.threads
        );
    }

    // 4. Binary and memory.
    let _ = writeln!(w, "\n## 4. Binary size and memory\n");
    let _ = writeln!(w, "| binary | size MiB | linking | path |");
    let _ = writeln!(w, "| --- | ---: | --- | --- |");
    for b in &res.binaries {
        let _ = writeln!(
            w,
            "| {} | {} | {} | `{}` |",
            b.what,
            f2(mib(b.bytes / 1024)),
            match b.static_binary {
                Some(true) => "static",
                Some(false) => "dynamic",
                None => "–",
            },
            shown(&b.path)
        );
    }
    let size_of = |prefix: &str| {
        res.binaries
            .iter()
            .find(|b| b.what.starts_with(prefix))
            .map(|b| b.bytes)
    };
    if let (Some(ours), Some(ptp), Some(hl)) = (
        size_of("aws-cni (benchmarked"),
        size_of("ptp"),
        size_of("host-local"),
    ) {
        #[allow(clippy::cast_precision_loss)]
        let r = ratio(ours as f64, (ptp + hl) as f64);
        let _ = writeln!(
            w,
            "| **aws-cni / (ptp + host-local)** | **{}** | | what a runtime execs per ADD |",
            ratio_text(r)
        );
    }
    let rss_of = |flavor: Flavor, add: bool| -> Vec<u64> {
        res.rss
            .iter()
            .filter(|r| r.flavor == flavor)
            .flat_map(|r| {
                if add {
                    r.add_kib.iter()
                } else {
                    r.del_kib.iter()
                }
                .copied()
            })
            .collect()
    };
    if !res.rss.is_empty() {
        let _ = writeln!(
            w,
            "\nPeak RSS per call, {} pods one at a time, each call run through `peak-rss` (a small static helper that forks the plugin and reads its `ru_maxrss`; the driver's own `ru_maxrss` of a child would include the driver's memory image from before `exec`). For ptp it includes the host-local it runs.\n",
            res.rss.first().map_or(0, |r| r.add_kib.len())
        );
        let _ = writeln!(
            w,
            "| plugin | ADD median MiB | ADD max MiB | DEL median MiB | DEL max MiB |"
        );
        let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: |");
        let mut meds = Vec::new();
        for flavor in [Flavor::Ours, Flavor::Ptp] {
            let (a, d) = (rss_of(flavor, true), rss_of(flavor, false));
            let row = (
                mib(median_ns(&a)),
                mib(a.iter().copied().max().unwrap_or(0)),
                mib(median_ns(&d)),
                mib(d.iter().copied().max().unwrap_or(0)),
            );
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                flavor.label(),
                f2(row.0),
                f2(row.1),
                f2(row.2),
                f2(row.3)
            );
            meds.push(row);
        }
        if let [o, p] = meds.as_slice() {
            let _ = writeln!(
                w,
                "| **ours/ptp** | **{}** | {} | **{}** | {} |",
                ratio_text(ratio(o.0, p.0)),
                ratio_text(ratio(o.1, p.1)),
                ratio_text(ratio(o.2, p.2)),
                ratio_text(ratio(o.3, p.3))
            );
        }
        if let Some(t) = res.phases.iter().find(|t| t.command == "ADD")
            && let Some((med, max)) = t.vm_hwm_kib
        {
            let _ = writeln!(
                w,
                "\nCross-check: aws-cni's own `VmHWM` at the end of ADD (timing round): median {} MiB, max {} MiB.",
                f2(mib(med)),
                f2(mib(max))
            );
        }
    }
    let _ = writeln!(w, "\n### ipamd image\n");
    match &res.image {
        Some(img) => {
            let _ = writeln!(
                w,
                "No Docker engine runs on the benchmark machine, so the image is estimated from the final stage of `{}`: base `{}` plus the files it copies in, measured here: **{} MiB**{}.\n",
                shown(&img.dockerfile),
                img.base,
                f2(mib(img.bytes / 1024)),
                if img.base == "scratch" {
                    " (the base is empty)".to_owned()
                } else {
                    format!(" + the compressed size of `{}` (not pulled here)", img.base)
                }
            );
            for f in &img.files {
                let _ = writeln!(w, "- `{}`: {}", f.what, size_text(f.bytes));
            }
            if !img.unresolved.is_empty() {
                let _ = writeln!(
                    w,
                    "- not found locally (not counted): {}",
                    img.unresolved.join(", ")
                );
            }
        }
        None => {
            let _ = writeln!(
                w,
                "There is no Dockerfile yet; the image figure awaits it. The binaries it will carry are in the table above."
            );
        }
    }

    let _ = writeln!(w, "\n## Notes\n");
    let _ = writeln!(w, "{}", notes(res).trim_end());
    s
}

/// Method notes, with the figures they quote taken from this run.
fn notes(res: &BenchResults) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "- **Where it runs.** A simulated EC2 node (network namespaces, the project's IMDS emulator, ipamd in instance-metadata-only mode with a warm pool and `IP_COOLDOWN_PERIOD=0`, its checkpoint on tmpfs as `/var/run` is on a real node). Both plugins are exec'd by worker threads that entered the node's namespace, so the node is their host namespace; nothing runs in or changes the machine's root namespace. ptp's IPAM store is on tmpfs too."
    );
    let _ = writeln!(
        w,
        "- **Alternation.** In every repetition the two plugins run back to back at each concurrency, in alternating order, so machine noise hits both; other% is the CPU other processes (and kernel workers, e.g. those tearing removed namespaces down) used during a phase."
    );
    let _ = writeln!(
        w,
        "- **DEL and the namespace's removal.** ptp deletes the pod's veth pair in DEL (the kernel unregisters the pair synchronously, waiting for RCU grace periods); aws-cni, like the reference, removes the host route, the rules 512/1536 and the pod's address and leaves the pair to the runtime, which removes the pod's namespace right after DEL; the kernel then tears the namespace down in its `netns` workqueue, deleting the pair. So that both are charged the same work, every pod's DEL is followed, in the same worker, by the removal of its namespace as containerd and CRI-O do it (in process: `umount2(MNT_DETACH)` of the bind mount, then unlink), and *DEL + netns removal* runs from DEL's spawn to the later of (a) the removal's return and (b) the host-side veth being gone from the node. (b) is the kernel's RTM_DELLINK notification for that veth, received by a thread on a netlink socket in the node's namespace subscribed to link events from before the first DEL (the kernel sends it after it has unlisted the device, so if anything it comes later than the moment `ip link` stops showing the veth); when the veth is already gone as the removal begins (looked up by name just before; ptp's case), (a) ends the clock. The same rule applies to the kernel floor and to the cycles. What the kernel does after the veth is gone (freeing the namespace after further RCU grace periods) is in neither plugin's figure; it lands in the DEL phase's other%, and the driver waits for the machine to go quiet before the next round."
    );
    let _ = writeln!(
        w,
        "- **Static plugin.** `make bench` measures the binary the image ships, built for `x86_64-unknown-linux-musl`; it starts without the dynamic loader (no shared-library lookup, mapping and relocation). The exec floor table compares it with the glibc build in the same run."
    );
    let mem = &res.ipamd_memory;
    if !mem.is_empty() {
        let range = |f: fn(&super::daemon::Memory) -> u64| {
            let lo = mem.iter().map(|(_, m)| f(m)).min().unwrap_or(0);
            let hi = mem.iter().map(|(_, m)| f(m)).max().unwrap_or(0);
            if f2(mib(lo)) == f2(mib(hi)) {
                f2(mib(lo))
            } else {
                format!("{}–{}", f2(mib(lo)), f2(mib(hi)))
            }
        };
        let binary = res
            .binaries
            .iter()
            .find(|b| b.what == "ipamd")
            .map_or_else(String::new, |b| {
                format!(" of a {} MiB binary", f2(mib(b.bytes / 1024)))
            });
        let _ = write!(
            w,
            "- **ipamd's memory.** Over the situations of the memory table, the binary's own pages in use (RssFile) are {} MiB{binary} and the heap and other private memory (RssAnon) {} MiB.",
            range(|m| m.file_kib),
            range(|m| m.anon_kib)
        );
        if let Some((what, m)) = mem
            .iter()
            .find(|(w, m)| w.contains("restored") && m.hwm_kib > m.rss_kib)
        {
            let _ = write!(
                w,
                " After a start ({what}) the peak (VmHWM, {} MiB) stays above what is resident ({} MiB): the link dump of a node with many pod veths is parsed before it is reduced to names, and `malloc_trim` returns that memory once ipamd is ready.",
                f2(mib(m.hwm_kib)),
                f2(mib(m.rss_kib))
            );
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(
        w,
        "- **Timing instrumentation.** The plugin always records its phase marks (a `clock_gettime` per phase); it writes them only at `pluginLogLevel` DEBUG (one `phases` line) or with `AWS_CNI_TIMING=<absolute path>` (one JSON line per call, used for section 2 only)."
    );
    let _ = writeln!(
        w,
        "- **Between runs.** Figures of other runs appear only in *Compared with the previous run*, read from that run's JSON; a target whose method changed has a new key and is not compared with the old figure. Compare ratios, not absolute times, and runs on a quiet machine."
    );
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn units_stay_readable() {
        assert_eq!(duration_text(522.4), "522 ns");
        assert_eq!(duration_text(209_144.0), "209 µs");
        assert_eq!(duration_text(248_986_264.0), "249 ms");
        assert_eq!(rate_text(1_910_000.0), "1.91 M");
        assert_eq!(rate_text(4_780.0), "4.8 k");
        assert_eq!(rate_text(98.6), "98.6");
        assert_eq!(size_text(2048), "2.00 KiB");
        assert_eq!(size_text(3 * 1024 * 1024), "3.00 MiB");
    }

    #[test]
    fn number_formatting_keeps_three_significant_digits() {
        assert_eq!(f2(1.23456), "1.23");
        assert_eq!(f2(23.456), "23.5");
        assert_eq!(f2(234.56), "235");
        assert_eq!(ratio_text(Some(0.256)), "0.26×");
        assert_eq!(ratio_text(None), "–");
    }
}
