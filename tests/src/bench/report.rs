//! BENCHMARKS.md from one run's [`BenchResults`]: every figure with a peer next to the peer
//! measured in the same run and their ratio, the issue's targets with met/missed (and, when
//! missed, by how much and what bounds it), and the method.

use std::fmt::Write as _;

use super::BenchResults;
use super::artifacts::CriterionResult;
use super::latency::{OpSamples, Round};
use super::plugins::Flavor;
use super::stats::{Summary, median_ns, ns_to_ms, ratio};

/// A path relative to the workspace when it is inside it (reports are read in the repository).
fn shown(path: &std::path::Path) -> String {
    let ws = crate::bins::workspace_dir();
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

/// One of the issue's targets, evaluated.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    /// The target as the issue words it.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured in this run.
    pub met: Option<bool>,
    /// For a miss: by how much, and what bounds it.
    pub note: String,
}

fn mib(kib: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let v = kib as f64 / 1024.0;
    v
}

fn f2(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio_text(r: Option<f64>) -> String {
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

struct OpRow {
    summary: Option<Summary>,
    per_rep_medians: Vec<f64>,
    ops_per_s: f64,
    failures: usize,
}

fn op_row(rounds: &[Round], flavor: Flavor, conc: usize, add: bool) -> OpRow {
    let (all, per_rep) = pooled(rounds, flavor, conc, |r| if add { &r.add } else { &r.del });
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

fn other_pct(rounds: &[Round], flavor: Flavor, conc: usize) -> f64 {
    rounds
        .iter()
        .filter(|r| r.flavor == flavor && r.concurrency == conc)
        .map(|r| r.other_cpu_pct)
        .fold(0.0, f64::max)
}

fn concurrencies(rounds: &[Round]) -> Vec<usize> {
    let mut c: Vec<usize> = rounds.iter().map(|r| r.concurrency).collect();
    c.sort_unstable();
    c.dedup();
    c
}

fn medians_text(v: &[f64]) -> String {
    v.iter().map(|m| f2(*m)).collect::<Vec<_>>().join(" / ")
}

fn criterion_of<'a>(res: &'a BenchResults, id: &str) -> Option<&'a CriterionResult> {
    res.criterion.iter().find(|c| c.id == id)
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn cycle_stats(res: &BenchResults, flavor: Flavor) -> (f64, Vec<f64>, Option<Summary>, usize) {
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
    let fails = rs.iter().map(|c| c.failures.len()).sum();
    (med, per_rep, Summary::from_ns(&all), fails)
}

fn floor_add_del(res: &BenchResults) -> (Option<Summary>, Option<Summary>) {
    let adds: Vec<u64> = res
        .floor_rounds
        .iter()
        .flat_map(|r| r.add.latencies_ns.iter().copied())
        .collect();
    let dels: Vec<u64> = res
        .floor_rounds
        .iter()
        .flat_map(|r| r.del.latencies_ns.iter().copied())
        .collect();
    (Summary::from_ns(&adds), Summary::from_ns(&dels))
}

/// Evaluates the issue's targets.
pub fn targets(res: &BenchResults) -> Vec<Target> {
    let mut out = Vec::new();
    let version_ms = res.exec_floors.ours_version.median_ms;
    let (floor_add, floor_del) = floor_add_del(res);
    for conc in concurrencies(&res.rounds) {
        let ours_add = op_row(&res.rounds, Flavor::Ours, conc, true).summary;
        let ptp_add = op_row(&res.rounds, Flavor::Ptp, conc, true).summary;
        let ours_del = op_row(&res.rounds, Flavor::Ours, conc, false).summary;
        let ptp_del = op_row(&res.rounds, Flavor::Ptp, conc, false).summary;
        if let (Some(o), Some(p)) = (ours_add, ptp_add) {
            let r = ratio(o.median_ms, p.median_ms);
            let bound = ratio(version_ms + res.kernel_floor.add_total_ms, p.median_ms);
            out.push(Target {
                target: format!("ADD median ≤ 0.4 × ptp+host-local (C={conc})"),
                measured: format!(
                    "{} ({} vs {} ms)",
                    ratio_text(r),
                    f2(o.median_ms),
                    f2(p.median_ms)
                ),
                met: r.map(|r| r <= 0.4),
                note: miss_note(r, 0.4, || {
                    format!(
                        "floor: exec of the binary {} ms + the kernel's netlink work {} ms = {} ptp",
                        f2(version_ms),
                        f2(res.kernel_floor.add_total_ms),
                        ratio_text(bound)
                    )
                }),
            });
            let r99 = ratio(o.p99_ms, p.p99_ms);
            out.push(Target {
                target: format!("ADD p99 ≤ 0.5 × ptp+host-local (C={conc})"),
                measured: format!(
                    "{} ({} vs {} ms)",
                    ratio_text(r99),
                    f2(o.p99_ms),
                    f2(p.p99_ms)
                ),
                met: r99.map(|r| r <= 0.5),
                note: miss_note(r99, 0.5, || {
                    format!(
                        "the kernel floor exec'd per pod has p99 {} ms",
                        floor_add.map_or_else(|| "–".into(), |f| f2(f.p99_ms))
                    )
                }),
            });
        }
        if let (Some(o), Some(p)) = (ours_del, ptp_del) {
            let r = ratio(o.median_ms, p.median_ms);
            out.push(Target {
                target: format!("DEL median ≤ 0.5 × ptp (C={conc})"),
                measured: format!(
                    "{} ({} vs {} ms)",
                    ratio_text(r),
                    f2(o.median_ms),
                    f2(p.median_ms)
                ),
                met: r.map(|r| r <= 0.5),
                note: miss_note(r, 0.5, || {
                    format!(
                        "the kernel floor's DEL exec'd per pod takes {} ms = {} ptp; the rest is exec and the DelNetwork round trip",
                        floor_del.map_or_else(|| "–".into(), |f| f2(f.median_ms)),
                        ratio_text(floor_del.and_then(|f| ratio(f.median_ms, p.median_ms)))
                    )
                }),
            });
        }
    }
    let (ours_c, _, ours_cycle, _) = cycle_stats(res, Flavor::Ours);
    let (ptp_c, _, _, _) = cycle_stats(res, Flavor::Ptp);
    if ptp_c > 0.0 {
        let r = ratio(ours_c, ptp_c);
        let conc = res.cycles.first().map_or(0, |c| c.concurrency);
        let add_at = op_row(&res.rounds, Flavor::Ours, conc, true).summary;
        let del_at = op_row(&res.rounds, Flavor::Ours, conc, false).summary;
        out.push(Target {
            target: format!("ADD+DEL cycle throughput at C={conc} ≥ 2 × ptp"),
            measured: format!(
                "{} ({} vs {} pods/s)",
                ratio_text(r),
                f2(ours_c),
                f2(ptp_c)
            ),
            met: r.map(|r| r >= 2.0),
            note: match r {
                Some(r) if r < 2.0 => format!(
                    "missed by {} %; our cycle median {} ms, ADD median {} ms and DEL median {} ms at this concurrency",
                    by((1.0 - r / 2.0) * 100.0),
                    ours_cycle.map_or_else(|| "–".into(), |c| f2(c.median_ms)),
                    add_at.map_or_else(|| "–".into(), |a| f2(a.median_ms)),
                    del_at.map_or_else(|| "–".into(), |d| f2(d.median_ms))
                ),
                _ => String::new(),
            },
        });
    }
    let single = res
        .loads
        .iter()
        .find(|l| l.checkpoint == "tmpfs" && l.clients == 1)
        .map(|l| l.add.median_ms);
    if let Some(l) = res
        .loads
        .iter()
        .find(|l| l.checkpoint == "tmpfs" && l.clients >= 8)
    {
        out.push(Target {
            target: format!(
                "ipamd AddNetwork p99 ≤ 1 ms with {} concurrent clients (checkpoint on tmpfs)",
                l.clients
            ),
            measured: format!("{} ms (p50 {} ms)", f2(l.add.p99_ms), f2(l.add.median_ms)),
            met: Some(l.add.p99_ms <= 1.0),
            note: if l.add.p99_ms > 1.0 {
                format!(
                    "missed by {} %: every answer waits for a checkpoint write covering its change (group commit, outside the pool lock); one client alone sees p50 {} ms, and on 2 cores the 8 clients and ipamd share the CPUs",
                    by((l.add.p99_ms - 1.0) * 100.0),
                    single.map_or_else(|| "–".into(), f2)
                )
            } else {
                String::new()
            },
        });
    }
    let c10k = criterion_of(res, "datastore/assign_release/10000");
    out.push(Target {
        target: "≥ 1 M assign+release per second at 10k addresses".into(),
        measured: c10k.map_or_else(
            || "not run".into(),
            |c| {
                format!(
                    "{:.2} M/s ({} ns per pair)",
                    c.per_second() / 1e6,
                    f2(c.median_ns)
                )
            },
        ),
        met: c10k.map(|c| c.per_second() >= 1e6),
        note: match c10k {
            Some(c) if c.per_second() < 1e6 => {
                format!("missed by {} %", by((1.0 - c.per_second() / 1e6) * 100.0))
            }
            _ => String::new(),
        },
    });
    if let Some(s) = res.startups.iter().rfind(|s| s.pods > 0) {
        out.push(Target {
            target: format!("ipamd ready ≤ 1 s with {} restored pods", s.pods),
            measured: format!(
                "{} ms median of {} starts ({} restored)",
                f2(s.summary.median_ms),
                s.summary.n,
                s.restored
            ),
            met: Some(s.summary.median_ms <= 1_000.0 && s.restored as usize == s.pods),
            note: if s.summary.median_ms > 1_000.0 {
                format!(
                    "missed by {} %",
                    by((s.summary.median_ms / 1_000.0 - 1.0) * 100.0)
                )
            } else if s.restored as usize != s.pods {
                format!("only {} of {} pods were restored", s.restored, s.pods)
            } else {
                String::new()
            },
        });
    }
    let with_pods: Vec<_> = res
        .ipamd_memory
        .iter()
        .filter(|(what, _)| what.contains("pods assigned") || what.contains("restored"))
        .collect();
    if let Some((what, m)) = with_pods.iter().max_by_key(|(_, m)| m.rss_kib) {
        out.push(Target {
            target: format!(
                "ipamd RSS ≤ 20 MiB with {} pods",
                res.startups.iter().map(|s| s.pods).max().unwrap_or(0)
            ),
            measured: format!("{} MiB VmRSS ({what})", f2(mib(m.rss_kib))),
            met: Some(mib(m.rss_kib) <= 20.0),
            note: if mib(m.rss_kib) > 20.0 {
                let idle = res.ipamd_memory.first().map(|(_, i)| i);
                let assigned = res
                    .ipamd_memory
                    .iter()
                    .find(|(w, _)| w.contains("pods assigned"))
                    .map(|(_, a)| a);
                format!(
                    "missed by {} %: {} MiB heap and other private memory + {} MiB of the binary's pages in use ({} threads){}{}",
                    by((mib(m.rss_kib) / 20.0 - 1.0) * 100.0),
                    f2(mib(m.anon_kib)),
                    f2(mib(m.file_kib)),
                    m.threads,
                    idle.map_or_else(String::new, |i| format!(
                        "; idle with 0 pods: {} MiB ({} MiB heap)",
                        f2(mib(i.rss_kib)),
                        f2(mib(i.anon_kib))
                    )),
                    assigned
                        .filter(|a| a.rss_kib < m.rss_kib)
                        .map_or_else(String::new, |a| format!(
                            "; the same number of pods assigned at run time: {} MiB ({} MiB heap), so the excess is what start-up leaves in the allocator (see Notes)",
                            f2(mib(a.rss_kib)),
                            f2(mib(a.anon_kib))
                        ))
                )
            } else {
                String::new()
            },
        });
    }
    let rss: Vec<u64> = res
        .rss
        .iter()
        .filter(|r| r.flavor == Flavor::Ours)
        .flat_map(|r| r.add_kib.iter().copied())
        .collect();
    if let Some(max) = rss.iter().max() {
        out.push(Target {
            target: "aws-cni peak RSS ≤ 6 MiB per ADD".into(),
            measured: format!(
                "{} MiB max, {} MiB median over {} ADDs",
                f2(mib(*max)),
                f2(mib(median_ns(&rss))),
                rss.len()
            ),
            met: Some(mib(*max) <= 6.0),
            note: if mib(*max) > 6.0 {
                format!("missed by {} %", by((mib(*max) / 6.0 - 1.0) * 100.0))
            } else {
                String::new()
            },
        });
    }
    out
}

/// A miss in percent: one decimal below 10 %, none above.
fn by(pct: f64) -> String {
    if pct < 10.0 {
        format!("{pct:.1}")
    } else {
        format!("{pct:.0}")
    }
}

fn miss_note(r: Option<f64>, limit: f64, bound: impl FnOnce() -> String) -> String {
    match r {
        Some(r) if r > limit => format!(
            "missed by {} % ({:.2}× vs ≤ {limit}×); {}",
            by((r / limit - 1.0) * 100.0),
            r,
            bound()
        ),
        _ => String::new(),
    }
}

/// The Markdown report.
pub fn markdown(res: &BenchResults) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `{}` on {}. Every figure that has a peer was measured in the same run, next to it, and the ratio is ours / theirs (lower is better for latency, higher for throughput). The raw samples are in the JSON written next to this run (`target/bench/results.json`).\n",
        res.command, res.date
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
    let max_other_of = |flavor: Flavor| {
        res.rounds
            .iter()
            .filter(|r| r.flavor == flavor)
            .map(|r| r.other_cpu_pct)
            .chain(
                res.cycles
                    .iter()
                    .filter(|c| c.flavor == flavor)
                    .map(|c| c.other_cpu_pct),
            )
            .fold(0.0, f64::max)
    };
    // ptp's rounds leave no deferred kernel work of ours: their other% is the machine's noise.
    let max_other = max_other_of(Flavor::Ptp);
    let ours_other = max_other_of(Flavor::Ours);
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
        "| Noise | CPU used by other processes during a round (other%): at most {max_other:.1} % of the machine in ptp's rounds{}; at most {ours_other:.1} % in aws-cni's, which includes the kernel workers finishing what its own calls started (memory of deleted addresses, routes and rules freed after an RCU grace period) |",
        if max_other > 5.0 {
            " — the machine was not quiet; figures are noisier than they would be"
        } else {
            ""
        }
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
    for t in targets(res) {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            t.target,
            t.measured,
            verdict(t.met),
            t.note
        );
    }

    // 1. Latency.
    let _ = writeln!(w, "\n## 1. Per-pod ADD and DEL latency\n");
    let _ = writeln!(
        w,
        "Each call is timed from spawn to reap, in the simulated node's network namespace, with the `CNI_*` environment and stdin a runtime gives (CNI 1.0.0, kubelet's `CNI_ARGS`); DEL carries the ADD result as `prevResult`. Fresh pod namespaces are made before each round and one untimed warm-up ADD+DEL runs first. aws-cni uses the conflist ipamd wrote (its defaults: `pluginLogLevel` DEBUG to a log file) and a warm pool; ptp uses bench-ptp.sh's config. Milliseconds; *per rep* lists the median of each repetition.\n"
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
        for add in [true, false] {
            let op = if add { "ADD" } else { "DEL" };
            let mut rows = Vec::new();
            for flavor in [Flavor::Ours, Flavor::Ptp] {
                let row = op_row(&res.rounds, flavor, conc, add);
                if let Some(sm) = row.summary {
                    let _ = writeln!(
                        w,
                        "| {} | {op} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        flavor.label(),
                        f2(sm.median_ms),
                        f2(sm.p95_ms),
                        f2(sm.p99_ms),
                        f2(sm.max_ms),
                        f2(row.ops_per_s),
                        medians_text(&row.per_rep_medians),
                        row.failures,
                        other_pct(&res.rounds, flavor, conc)
                    );
                }
                rows.push(row);
            }
            if let (Some(o), Some(p)) = (rows[0].summary, rows[1].summary) {
                let _ = writeln!(
                    w,
                    "| **ours/ptp** | {op} | **{}** | {} | **{}** | {} | {} | | | |",
                    ratio_text(ratio(o.median_ms, p.median_ms)),
                    ratio_text(ratio(o.p95_ms, p.p95_ms)),
                    ratio_text(ratio(o.p99_ms, p.p99_ms)),
                    ratio_text(ratio(o.max_ms, p.max_ms)),
                    ratio_text(ratio(rows[0].ops_per_s, rows[1].ops_per_s)),
                );
            }
        }
        let _ = writeln!(w);
    }
    let (ours_c, ours_per, ours_cs, ours_f) = cycle_stats(res, Flavor::Ours);
    let (ptp_c, ptp_per, ptp_cs, ptp_f) = cycle_stats(res, Flavor::Ptp);
    if !res.cycles.is_empty() {
        let conc = res.cycles[0].concurrency;
        let _ = writeln!(w, "### ADD+DEL cycle throughput, concurrency {conc}\n");
        let _ = writeln!(
            w,
            "Each worker adds a pod and deletes it again; pods/s = {} / wall time of the round (median of the repetitions).\n",
            res.pods
        );
        let _ = writeln!(
            w,
            "| plugin | pods/s | per rep | cycle median ms | cycle p99 ms | fail |"
        );
        let _ = writeln!(w, "| --- | ---: | --- | ---: | ---: | ---: |");
        for (label, c, per, cs, f) in [
            (Flavor::Ours.label(), ours_c, &ours_per, ours_cs, ours_f),
            (Flavor::Ptp.label(), ptp_c, &ptp_per, ptp_cs, ptp_f),
        ] {
            let _ = writeln!(
                w,
                "| {label} | {} | {} | {} | {} | {f} |",
                f2(c),
                medians_text(per),
                cs.map_or_else(|| "–".into(), |s| f2(s.median_ms)),
                cs.map_or_else(|| "–".into(), |s| f2(s.p99_ms)),
            );
        }
        let _ = writeln!(
            w,
            "| **ours/ptp** | **{}** | | {} | {} | |\n",
            ratio_text(ratio(ours_c, ptp_c)),
            ratio_text(
                ours_cs
                    .zip(ptp_cs)
                    .and_then(|(o, p)| ratio(o.median_ms, p.median_ms))
            ),
            ratio_text(
                ours_cs
                    .zip(ptp_cs)
                    .and_then(|(o, p)| ratio(o.p99_ms, p.p99_ms))
            ),
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
    let (fa, fd) = floor_add_del(res);
    if let (Some(fa), Some(fd)) = (fa, fd) {
        let oa = op_row(&res.rounds, Flavor::Ours, 1, true).summary;
        let od = op_row(&res.rounds, Flavor::Ours, 1, false).summary;
        let pa = op_row(&res.rounds, Flavor::Ptp, 1, true).summary;
        let pd = op_row(&res.rounds, Flavor::Ptp, 1, false).summary;
        let _ = writeln!(
            w,
            "The same program exec'd per pod like a plugin (concurrency 1, {} pods × {} repetitions), next to the plugins at concurrency 1:\n",
            res.pods, res.reps
        );
        let _ = writeln!(
            w,
            "| program | ADD median | ADD p99 | DEL median | DEL p99 |"
        );
        let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: |");
        let _ = writeln!(
            w,
            "| kernel-floor | {} | {} | {} | {} |",
            f2(fa.median_ms),
            f2(fa.p99_ms),
            f2(fd.median_ms),
            f2(fd.p99_ms)
        );
        for (label, a, d) in [
            (Flavor::Ours.label(), oa, od),
            (Flavor::Ptp.label(), pa, pd),
        ] {
            if let (Some(a), Some(d)) = (a, d) {
                let _ = writeln!(
                    w,
                    "| {label} | {} ({} floor) | {} | {} ({} floor) | {} |",
                    f2(a.median_ms),
                    ratio_text(ratio(a.median_ms, fa.median_ms)),
                    f2(a.p99_ms),
                    f2(d.median_ms),
                    ratio_text(ratio(d.median_ms, fd.median_ms)),
                    f2(d.p99_ms)
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

    let _ = writeln!(w, "\n## Optimisations chosen from these measurements\n");
    let _ = writeln!(w, "{}", HISTORY.trim());
    let _ = writeln!(w, "\n## Notes\n");
    let _ = writeln!(w, "{}", NOTES.trim());
    s
}

/// What earlier runs of this benchmark led to (before/after figures of those runs, each
/// measured against ptp in its own run).
const HISTORY: &str = r"
- **ADD: no dump of every host link.** The first breakdown showed `host_links_dump` (a dump of all host links, to find a stale veth of the pod's name and to keep the new MAC unique among them) taking 6.1 ms of a 10.6 ms median ADD with 200 pods on the node, 58 %, and growing with the pods. It is now one lookup by name (43 µs); the MAC only has to differ from its peer's, since every veth is its own link. Two runs of N = 200 on the same machine while other work ran on it (so compare the ratios to ptp, measured in each run), before → after: ADD median at concurrency 1 10.1 → 3.95 ms (1.02× → 0.35× ptp), at concurrency 8 41.4 → 14.8 ms (0.62× → 0.20× ptp), p99 at concurrency 8 114 → 30.8 ms.
- **DEL: rules deleted by value.** A pod's rules 512 and 1536 are deleted by priority and address in any table (the kernel matches a delete on the attributes it carries), instead of being searched in a dump of every rule, which grows by two per pod.
- **Static musl plugin.** `make bench` measures the binary the image ships, built for `x86_64-unknown-linux-musl`; the exec floor table compares it with the glibc build in the same run.
- **DEL leaves the veth to the namespace's removal, as the reference does.** DEL used to delete the pod's veth pair, which the kernel does synchronously (unregistering a netdevice waits for RCU grace periods: 16–24 ms, in steps of the kernel's tick), most of either plugin's DEL. It now removes the host route, rules 512/1536 and the pod's address, releases the IP and leaves the pair to the runtime's removal of the pod's namespace, which the kernel cleans up asynchronously (docs/contracts.md, section DEL). Previous full run (3aff616) → this one: DEL median at concurrency 1 24.0 ms (1.01× ptp) → see the DEL rows above; ADD+DEL cycle throughput at concurrency 8 1.55× → see the cycle table.
- **Checkpoint group commit.** ipamd used to re-encode every assignment and write the checkpoint under the pool lock for each change: 234 µs per change at 250 addresses, 6.2 ms at 10k, 144 ms at 100k, and concurrent requests queued behind each other's writes (AddNetwork p99 with 8 clients 0.90–1.00 ms over three runs). A change is now recorded under the lock in O(1); one writer encodes only the changed allocations and writes outside the lock, and every request its write covers is answered together (`ipamd/src/journal.rs`). In-memory service path (`ipam_state/add_del`, one add + del pair): see the criterion table (one-off run after the change: 51 µs at 250, 123 µs at 10k, 1.77 ms at 100k).
- **ipamd's start-up memory.** Start-up read every host link with all its attributes (statistics included) into memory at once to find the pods' veths, and glibc kept the freed heap: 19.1 / 22.8 / 22.7 MiB VmRSS with 250 restored pods over three runs (7–11 MiB of it heap). Link dumps now ask the kernel to skip statistics and keep only name, index, MAC, MTU and flags as each message arrives, and ipamd calls `malloc_trim(0)` once ready. One-off trial before → after on the same machine: 19.5 → 14.3 MiB VmRSS (heap 7.5 → 2.5 MiB), start-up unchanged (≈ 51 ms with 250 pods).
";

/// Method notes and known limits, appended to every report.
const NOTES: &str = r"
- **Where it runs.** A simulated EC2 node (network namespaces, the project's IMDS emulator, ipamd in instance-metadata-only mode with a warm pool and `IP_COOLDOWN_PERIOD=0`, its checkpoint on tmpfs as `/var/run` is on a real node). Both plugins are exec'd by worker threads that entered the node's namespace, so the node is their host namespace; nothing runs in or changes the machine's root namespace. ptp's IPAM store is on tmpfs too.
- **Alternation.** In every repetition the two plugins run back to back at each concurrency, in alternating order, so machine noise hits both; other% is the CPU other processes (and kernel workers, e.g. those finishing namespace deletions) used during the round.
- **DEL.** ptp deletes the pod's veth pair in DEL (synchronous in the kernel: 16–24 ms, in steps of the kernel's tick); aws-cni, like the reference, removes the host route, the rules and the pod's address and leaves the pair to the runtime, which removes the pod's namespace right after DEL. For both plugins the driver removes the pod namespaces after the round's DELs, untimed (a runtime does not wait for the kernel's namespace cleanup either), waits for the kernel to free what went with them and checks that nothing of the pods is left on the node. With aws-cni the pair's deletion thus moves from DEL into the kernel's asynchronous namespace cleanup, which batches the RCU waits of many namespaces; that CPU is not in DEL's latency, and the driver lets it finish between rounds.
- **Static plugin.** A static musl binary starts without the dynamic loader (no shared-library lookup, mapping and relocation), which is most of the exec cost a glibc build pays; it is also what the image ships.
- **ipamd's memory.** The binary's own pages in use (RssFile, ≈ 11–12 MiB of a 16 MiB binary) are the larger, fixed share of ipamd's RSS; the heap is 2–3 MiB idle or with 250 pods. Start-up's peak (VmHWM) stays higher than what is resident afterwards: the link dump of a node with hundreds of pod veths is parsed before it is reduced to names, and `malloc_trim` returns that memory once ipamd is ready.
- **Timing instrumentation.** The plugin always records its phase marks (a `clock_gettime` per phase); it writes them only at `pluginLogLevel` DEBUG (one `phases` line) or with `AWS_CNI_TIMING=<absolute path>` (one JSON line per call, used for section 2 only).
- **Run-to-run variation.** Before the changes listed above, three full runs on this machine (2026-11-26, other% ≤ 4 % in each) gave ipamd AddNetwork p99 with 8 clients 0.90 / 0.98 / 1.00 ms, ipamd RSS with 250 restored pods 22.8 / 22.7 / 19.1 MiB and ADD+DEL cycle throughput 1.65 / 1.48 / 1.55 × ptp; ADD ratios (0.30–0.33 × ptp at every concurrency) were stable. After them, three full runs (2026-11-26, ptp's other% ≤ 4.4 %): AddNetwork p99 with 8 clients 0.41 / 0.45 / 0.55 ms, RSS with 250 restored pods 14.5 / 14.7 / 14.6 MiB, cycle throughput 3.96 / 3.84 / 3.59 × ptp, DEL median 0.07 × ptp at concurrency 1 in each, ADD 0.28–0.33 ×. Compare ratios, not absolute times, between runs.
";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn miss_notes_say_by_how_much() {
        assert_eq!(miss_note(Some(0.3), 0.4, || "x".into()), "");
        let n = miss_note(Some(0.6), 0.5, || "floor".into());
        assert!(n.starts_with("missed by 20 %"), "{n}");
        assert!(n.ends_with("floor"), "{n}");
    }

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
