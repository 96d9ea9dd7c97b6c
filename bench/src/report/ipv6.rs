//! The report's IPv6 parts: the *IPv6 pods* table of section 1 (both plugins on IPv6 pods,
//! their ratio next to the IPv4 rounds' ratio), the row of the run table, and the IPv6 phases
//! next to the IPv4 ones in section 2.

use std::fmt::Write as _;

use crate::format::{f2, fine_ratio_text};
use crate::ipv6::{IPV6_MODE, Ipv6Results};
use crate::phases::PhaseTable;
use crate::plugins::Flavor;

/// The IPv6 rounds' sizes, for the run table.
pub(super) fn rounds_row(w: &mut String, v6: &Ipv6Results) {
    let _ = writeln!(
        w,
        "| IPv6 rounds | {} pods per round; concurrency {}; {} repetition(s); {} s of this run (section 1, *IPv6 pods*) |",
        v6.pods,
        list(&v6.concurrency),
        v6.reps,
        f2(v6.wall_s)
    );
}

fn list(v: &[usize]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(s: Option<crate::stats::Summary>, f: fn(&crate::stats::Summary) -> f64) -> String {
    s.as_ref().map_or_else(|| "–".into(), |s| f2(f(s)))
}

/// The *IPv6 pods* part of section 1.
pub(super) fn latency_table(w: &mut String, v6: &Ipv6Results) {
    let _ = writeln!(w, "### IPv6 pods\n");
    let settings: Vec<String> = IPV6_MODE
        .iter()
        .filter(|(k, _)| *k != "ENABLE_V4_EGRESS")
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect();
    let add_other = v6
        .rounds
        .iter()
        .map(|r| r.add_other_cpu_pct)
        .fold(0.0, f64::max);
    let _ = writeln!(
        w,
        "A second simulated node, set up as an IPv6 node is: `ipamd install-cni` with `ENABLE_IPv6=true` (which turns IPv6 forwarding on in the node's namespace, as aws-node's init container does), then ipamd in IPv6 mode ({}, instance-metadata-only), handing out /128s of the primary ENI's /80 `{}` read from instance metadata. `ENABLE_V4_EGRESS=false`, so the conflist is aws-cni alone, as in the IPv4 rounds (an IPv6 cluster chains egress-cni after it by default; not measured here). The baseline is ptp + host-local with the range `{}` and a default route `::/0`, exec'd the same way in the same node. {} pods per round at concurrency {}, {} repetition(s), the two plugins' order alternating, each round as the IPv4 ones (fresh namespaces, an untimed warm-up, *DEL + netns removal* likewise); the section, node set-up and the IPv6 timing round of section 2 included, took {} s of this run. other% during the ADD phases: at most {add_other:.1} %{}.\n",
        settings.join(", "),
        v6.pod_prefix,
        v6.ptp_subnet,
        v6.pods,
        list(&v6.concurrency),
        v6.reps,
        f2(v6.wall_s),
        if add_other > 5.0 {
            " — the machine was not quiet; figures are noisier than they would be"
        } else {
            ""
        }
    );
    let _ = writeln!(
        w,
        "**Duplicate address detection.** aws-cni turns it off on the pod's veth pair (`accept_dad=0` on both ends, since the /128 is unique by construction; docs/ipv6.md), while ptp waits for the kernel's detection to settle the pod's addresses (1–2 s) on every IPv6 ADD, so ptp's ADD figures are mostly that wait.\n"
    );
    let _ = writeln!(
        w,
        "| C | op | aws-cni median | p95 | p99 | {ptp} median | p95 | p99 | **ours/ptp median** | ours/ptp p99 | IPv4 ours/ptp median | fail |",
        ptp = Flavor::Ptp.label()
    );
    let _ = writeln!(
        w,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for f in &v6.figures {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} |",
            f.concurrency,
            f.op,
            ms(f.ours, |s| s.median_ms),
            ms(f.ours, |s| s.p95_ms),
            ms(f.ours, |s| s.p99_ms),
            ms(f.ptp, |s| s.median_ms),
            ms(f.ptp, |s| s.p95_ms),
            ms(f.ptp, |s| s.p99_ms),
            fine_ratio_text(f.ratio_median),
            fine_ratio_text(f.ratio_p99),
            fine_ratio_text(f.ipv4_ratio_median),
            f.failures
        );
    }
    let _ = writeln!(w);
}

/// `a`'s names in order, each name only in `b` inserted after the name `b` has before it (so
/// a phase of one family lands where it runs).
pub(super) fn merge_order(a: &[&str], b: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = a.iter().map(|s| (*s).to_owned()).collect();
    for (i, name) in b.iter().enumerate() {
        if out.iter().any(|o| o == name) {
            continue;
        }
        let at = i
            .checked_sub(1)
            .and_then(|p| out.iter().position(|o| o == b[p]))
            .map_or(0, |p| p + 1);
        out.insert(at, (*name).to_owned());
    }
    out
}

fn table_of<'a>(tables: &'a [PhaseTable], command: &str) -> Option<&'a PhaseTable> {
    tables.iter().find(|t| t.command == command)
}

/// Section 2's IPv6 part: aws-cni's phases on IPv6 pods next to those on IPv4 pods (`v4`).
pub(super) fn phase_table(w: &mut String, v4: &[PhaseTable], v6: &Ipv6Results) {
    let _ = writeln!(w, "### IPv6 pods: where the time goes\n");
    let _ = writeln!(
        w,
        "One more aws-cni round on the IPv6 node at concurrency 1 with `AWS_CNI_TIMING=<file>`, {} pods; medians in µs next to the IPv4 timing round's above; – where a phase runs for one family only (`pod_sysctls`, `pod_dad`: IPv6).\n",
        v6.pods
    );
    for command in ["ADD", "DEL"] {
        phase_rows(w, command, table_of(v4, command), v6);
    }
}

fn phase_rows(w: &mut String, command: &str, v4: Option<&PhaseTable>, v6: &Ipv6Results) {
    let Some(t6) = table_of(&v6.phases, command) else {
        return;
    };
    let names = |t: Option<&PhaseTable>| -> Vec<String> {
        t.map(|t| t.phases.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default()
    };
    let (n4, n6) = (names(v4), names(Some(t6)));
    let order = merge_order(
        &n4.iter().map(String::as_str).collect::<Vec<_>>(),
        &n6.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let median = |t: Option<&PhaseTable>, name: &str| {
        t.and_then(|t| t.phases.iter().find(|p| p.name == name))
            .map_or_else(|| "–".to_owned(), |p| f2(p.median_us))
    };
    let _ = writeln!(w, "| {command} phase | IPv4 median µs | IPv6 median µs |");
    let _ = writeln!(w, "| --- | ---: | ---: |");
    for name in &order {
        let _ = writeln!(
            w,
            "| {name} | {} | {} |",
            median(v4, name),
            median(Some(t6), name)
        );
    }
    let _ = writeln!(
        w,
        "| **total, spawn → reap (ms)** | **{}** | **{}** |\n",
        v4.map_or_else(|| "–".to_owned(), |t| f2(t.total_median_ms)),
        f2(t6.total_median_ms)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv6::Ipv6Figure;
    use crate::phases::PhaseStat;
    use crate::stats::Summary;

    fn phases(command: &str, names: &[(&str, f64)], total_ms: f64) -> PhaseTable {
        PhaseTable {
            command: command.into(),
            n: 3,
            phases: names
                .iter()
                .map(|(name, us)| PhaseStat {
                    name: (*name).into(),
                    median_us: *us,
                    p95_us: *us,
                    n: 3,
                })
                .collect(),
            total_median_ms: total_ms,
            in_process_median_ms: total_ms,
            vm_hwm_kib: None,
        }
    }

    fn results() -> Ipv6Results {
        let ms = |v: f64| Summary {
            n: 40,
            median_ms: v,
            p95_ms: v * 1.5,
            p99_ms: v * 2.0,
            max_ms: v * 2.0,
            min_ms: v,
            mean_ms: v,
        };
        Ipv6Results {
            pods: 40,
            reps: 1,
            concurrency: vec![1, 8],
            pod_prefix: "2001:db8:1000:0:4a6b::/80".into(),
            ptp_subnet: "2001:db8:231::/64".into(),
            rounds: Vec::new(),
            phases: vec![phases(
                "ADD",
                &[("exec_startup", 300.0), ("pod_dad", 12.5), ("print", 20.0)],
                3.1,
            )],
            figures: vec![Ipv6Figure {
                concurrency: 1,
                op: "ADD".into(),
                ours: Some(ms(3.0)),
                ptp: Some(ms(1500.0)),
                ratio_median: Some(0.002),
                ratio_p99: Some(0.002),
                ipv4_ratio_median: None,
                failures: 0,
            }],
            wall_s: 95.4,
        }
    }

    #[test]
    fn the_ipv6_table_shows_both_plugins_their_ratio_and_the_ipv4_one() {
        let mut w = String::new();
        latency_table(&mut w, &results());
        assert!(w.starts_with("### IPv6 pods\n"), "{w}");
        for part in [
            "`ENABLE_IPv6=true`, `ENABLE_IPv4=false`, `ENABLE_PREFIX_DELEGATION=true`",
            "`ENABLE_V4_EGRESS=false`, so the conflist is aws-cni alone",
            "`2001:db8:1000:0:4a6b::/80`",
            "`2001:db8:231::/64`",
            "40 pods per round at concurrency 1, 8, 1 repetition(s)",
            "took 95.4 s of this run",
            "`accept_dad=0`",
            "| 1 | ADD | 3.00 | 4.50 | 6.00 | 1500 | 2250 | 3000 | **0.0020×** | 0.0020× | – | 0 |",
        ] {
            assert!(w.contains(part), "lacks {part:?}:\n{w}");
        }
        let mut row = String::new();
        rounds_row(&mut row, &results());
        assert!(
            row.contains("| IPv6 rounds | 40 pods per round; concurrency 1, 8;"),
            "{row}"
        );
    }

    #[test]
    fn ipv6_phases_sit_next_to_the_ipv4_ones() {
        let v4 = [phases(
            "ADD",
            &[("exec_startup", 290.0), ("print", 19.0)],
            2.4,
        )];
        let mut w = String::new();
        phase_table(&mut w, &v4, &results());
        for row in [
            "| exec_startup | 290 | 300 |",
            "| pod_dad | – | 12.5 |",
            "| print | 19.0 | 20.0 |",
            "| **total, spawn → reap (ms)** | **2.40** | **3.10** |",
        ] {
            assert!(w.contains(row), "lacks {row:?}:\n{w}");
        }
        // No DEL table on either side: no DEL rows.
        assert!(!w.contains("| DEL phase |"), "{w}");
    }

    #[test]
    fn phases_of_one_family_land_where_they_run() {
        let v4 = [
            "exec_startup",
            "veth_create",
            "host_veth_up",
            "pod_addr",
            "print",
        ];
        let v6 = [
            "exec_startup",
            "veth_create",
            "pod_sysctls",
            "host_veth_up",
            "pod_addr",
            "pod_dad",
            "print",
        ];
        assert_eq!(
            merge_order(&v4, &v6),
            [
                "exec_startup",
                "veth_create",
                "pod_sysctls",
                "host_veth_up",
                "pod_addr",
                "pod_dad",
                "print"
            ]
        );
        // A phase first in the other family goes first; nothing is lost or doubled.
        assert_eq!(merge_order(&["b"], &["a", "b"]), ["a", "b"]);
        assert_eq!(merge_order(&[], &["a", "b"]), ["a", "b"]);
        assert_eq!(merge_order(&["a", "b"], &[]), ["a", "b"]);
    }
}
