//! The targets evaluated on one run. Each target has a stable key and the number it is
//! judged on, so a later run can tell which of its figures were measured the same way before
//! (module [`super::compare`]): a target whose method changes gets a new key.

use super::BenchResults;
use super::figures::{Op, concurrencies, criterion_of, cycle_stats, floor_stats, op_row};
use super::format::{f2, mib, ratio_text};
use super::plugins::Flavor;
use super::stats::{median_ns, ratio};

/// One of the targets, evaluated.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    /// Stable identifier (same method, same key), for the comparison with other runs.
    pub key: String,
    /// The target as the issue words it (with how it is measured where that matters).
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// The figure the verdict is based on (a ratio to ptp, ms, MiB or operations per second).
    pub value: Option<f64>,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured in this run.
    pub met: Option<bool>,
    /// For a miss: by how much, and what bounds it.
    pub note: String,
}

/// A miss in percent: one decimal below 10 %, none above.
pub(super) fn by(pct: f64) -> String {
    if pct < 10.0 {
        format!("{pct:.1}")
    } else {
        format!("{pct:.0}")
    }
}

pub(super) fn miss_note(r: Option<f64>, limit: f64, bound: impl FnOnce() -> String) -> String {
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

fn ms_or_dash(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), f2)
}

/// The latency and cycle targets.
fn plugin_targets(res: &BenchResults, out: &mut Vec<Target>) {
    let version_ms = res.exec_floors.ours_version.median_ms;
    let floor = floor_stats(res);
    for conc in concurrencies(&res.rounds) {
        let ours_add = op_row(&res.rounds, Flavor::Ours, conc, Op::Add).summary;
        let ptp_add = op_row(&res.rounds, Flavor::Ptp, conc, Op::Add).summary;
        let ours_del = op_row(&res.rounds, Flavor::Ours, conc, Op::DelNetns).summary;
        let ptp_del = op_row(&res.rounds, Flavor::Ptp, conc, Op::DelNetns).summary;
        if let (Some(o), Some(p)) = (ours_add, ptp_add) {
            let r = ratio(o.median_ms, p.median_ms);
            let bound = ratio(version_ms + res.kernel_floor.add_total_ms, p.median_ms);
            out.push(Target {
                key: format!("add_median_c{conc}"),
                target: format!("ADD median ≤ 0.4 × ptp+host-local (C={conc})"),
                measured: format!(
                    "{} ({} vs {} ms)",
                    ratio_text(r),
                    f2(o.median_ms),
                    f2(p.median_ms)
                ),
                value: r,
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
                key: format!("add_p99_c{conc}"),
                target: format!("ADD p99 ≤ 0.5 × ptp+host-local (C={conc})"),
                measured: format!(
                    "{} ({} vs {} ms)",
                    ratio_text(r99),
                    f2(o.p99_ms),
                    f2(p.p99_ms)
                ),
                value: r99,
                met: r99.map(|r| r <= 0.5),
                note: miss_note(r99, 0.5, || {
                    format!(
                        "the kernel floor exec'd per pod has p99 {} ms",
                        ms_or_dash(floor.add.map(|f| f.p99_ms))
                    )
                }),
            });
        }
        if let (Some(o), Some(p)) = (ours_del, ptp_del) {
            let r = ratio(o.median_ms, p.median_ms);
            out.push(Target {
                key: format!("del_netns_median_c{conc}"),
                target: format!(
                    "DEL median ≤ 0.5 × ptp, counted as DEL + netns removal until the host veth is gone (C={conc})"
                ),
                measured: format!(
                    "{} ({} vs {} ms)",
                    ratio_text(r),
                    f2(o.median_ms),
                    f2(p.median_ms)
                ),
                value: r,
                met: r.map(|r| r <= 0.5),
                note: miss_note(r, 0.5, || {
                    format!(
                        "the kernel floor's DEL + netns removal, exec'd per pod one at a time, takes {} ms = {} ptp's here; the rest is exec and the DelNetwork round trip",
                        ms_or_dash(floor.del_netns.map(|f| f.median_ms)),
                        ratio_text(floor.del_netns.and_then(|f| ratio(f.median_ms, p.median_ms)))
                    )
                }),
            });
        }
    }
    let ours = cycle_stats(res, Flavor::Ours);
    let ptp = cycle_stats(res, Flavor::Ptp);
    if ptp.pods_per_s > 0.0 {
        let r = ratio(ours.pods_per_s, ptp.pods_per_s);
        let conc = res.cycles.first().map_or(0, |c| c.concurrency);
        out.push(Target {
            key: format!("cycles_netns_c{conc}"),
            target: format!(
                "ADD+DEL cycle throughput at C={conc} ≥ 2 × ptp (a cycle: netns made, ADD, DEL, netns removed, host veth gone)"
            ),
            measured: format!(
                "{} ({} vs {} pods/s)",
                ratio_text(r),
                f2(ours.pods_per_s),
                f2(ptp.pods_per_s)
            ),
            value: r,
            met: r.map(|r| r >= 2.0),
            note: match r {
                Some(r) if r < 2.0 => format!(
                    "missed by {} %; cycle median {} vs {} ms, of which ADD spawn → DEL reap {} vs {} ms",
                    by((1.0 - r / 2.0) * 100.0),
                    ms_or_dash(ours.cycle.map(|c| c.median_ms)),
                    ms_or_dash(ptp.cycle.map(|c| c.median_ms)),
                    ms_or_dash(ours.add_del.map(|c| c.median_ms)),
                    ms_or_dash(ptp.add_del.map(|c| c.median_ms)),
                ),
                _ => String::new(),
            },
        });
    }
}

/// ipamd's targets: service time, datastore, start-up, memory.
fn ipamd_targets(res: &BenchResults, out: &mut Vec<Target>) {
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
            key: format!("ipamd_add_p99_{}_clients", l.clients),
            target: format!(
                "ipamd AddNetwork p99 ≤ 1 ms with {} concurrent clients (checkpoint on tmpfs)",
                l.clients
            ),
            measured: format!("{} ms (p50 {} ms)", f2(l.add.p99_ms), f2(l.add.median_ms)),
            value: Some(l.add.p99_ms),
            met: Some(l.add.p99_ms <= 1.0),
            note: if l.add.p99_ms > 1.0 {
                format!(
                    "missed by {} %: every answer waits for a checkpoint write covering its change (group commit, outside the pool lock); one client alone sees p50 {} ms, and the {} clients and ipamd share {} CPUs",
                    by((l.add.p99_ms - 1.0) * 100.0),
                    ms_or_dash(single),
                    l.clients,
                    res.machine.cpus
                )
            } else {
                String::new()
            },
        });
    }
    let c10k = criterion_of(res, "datastore/assign_release/10000");
    out.push(Target {
        key: "assign_release_10k".into(),
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
        value: c10k.map(super::artifacts::CriterionResult::per_second),
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
            key: format!("ipamd_ready_{}_pods", s.pods),
            target: format!("ipamd ready ≤ 1 s with {} restored pods", s.pods),
            measured: format!(
                "{} ms median of {} starts ({} restored)",
                f2(s.summary.median_ms),
                s.summary.n,
                s.restored
            ),
            value: Some(s.summary.median_ms),
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
    memory_targets(res, out);
}

fn memory_targets(res: &BenchResults, out: &mut Vec<Target>) {
    let with_pods: Vec<_> = res
        .ipamd_memory
        .iter()
        .filter(|(what, _)| what.contains("pods assigned") || what.contains("restored"))
        .collect();
    if let Some((what, m)) = with_pods.iter().max_by_key(|(_, m)| m.rss_kib) {
        let pods = res.startups.iter().map(|s| s.pods).max().unwrap_or(0);
        out.push(Target {
            key: format!("ipamd_rss_{pods}_pods"),
            target: format!("ipamd RSS ≤ 20 MiB with {pods} pods"),
            measured: format!("{} MiB VmRSS ({what})", f2(mib(m.rss_kib))),
            value: Some(mib(m.rss_kib)),
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
                            "; the same number of pods assigned at run time: {} MiB ({} MiB heap), so the excess is what start-up leaves in the allocator",
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
            key: "plugin_peak_rss_add".into(),
            target: "aws-cni peak RSS ≤ 6 MiB per ADD".into(),
            measured: format!(
                "{} MiB max, {} MiB median over {} ADDs",
                f2(mib(*max)),
                f2(mib(median_ns(&rss))),
                rss.len()
            ),
            value: Some(mib(*max)),
            met: Some(mib(*max) <= 6.0),
            note: if mib(*max) > 6.0 {
                format!("missed by {} %", by((mib(*max) / 6.0 - 1.0) * 100.0))
            } else {
                String::new()
            },
        });
    }
}

/// Evaluates the targets on this run.
pub(crate) fn targets(res: &BenchResults) -> Vec<Target> {
    let mut out = Vec::new();
    plugin_targets(res, &mut out);
    ipamd_targets(res, &mut out);
    burst_targets(res, &mut out);
    out
}

/// The cold-node burst with prefix delegation: at most one ENI attach and 8 address calls for
/// its pods, time to all within 1.5× its floor.
fn burst_targets(res: &BenchResults, out: &mut Vec<Target>) {
    let Some(b) = res
        .bursts
        .iter()
        .find(|b| b.mode == crate::burst::BurstMode::Prefixes)
    else {
        return;
    };
    let attaches = b.calls("AttachNetworkInterface");
    let address = b.address_calls();
    out.push(Target {
        key: "burst_pd_ec2_calls".into(),
        target: format!(
            "cold-node burst with prefixes ({} pods): ≤ 1 ENI attach and ≤ 8 address calls",
            b.pods
        ),
        measured: format!(
            "{attaches} attaches, {address} address calls (AssignPrivateIpAddresses + CreateNetworkInterface)"
        ),
        value: Some(address as f64),
        met: Some(attaches <= 1 && address <= 8),
        note: String::new(),
    });
    let r = b.ratio();
    out.push(Target {
        key: "burst_pd_floor_ratio_median".into(),
        target: "cold-node burst with prefixes: time to all ≤ 1.5 × its floor (median run)".into(),
        measured: format!(
            "{}× ({} vs {} ms)",
            f2(r),
            f2(b.time_to_all_ms),
            f2(b.floor_ms())
        ),
        value: Some(r),
        met: Some(r <= 1.5),
        note: miss_note(Some(r), 1.5, || {
            format!(
                "floor: the burst on a full pool {} ms + the EC2 calls {} ms",
                f2(b.warm_ms),
                f2(b.ec2_floor_ms)
            )
        }),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miss_notes_say_by_how_much() {
        assert_eq!(miss_note(Some(0.3), 0.4, || "x".into()), "");
        let n = miss_note(Some(0.6), 0.5, || "floor".into());
        assert!(n.starts_with("missed by 20 %"), "{n}");
        assert!(n.ends_with("floor"), "{n}");
    }
}
