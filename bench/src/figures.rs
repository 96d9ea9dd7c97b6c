//! The figures the report and the targets are computed from: one run's samples pooled by
//! plugin, concurrency and operation, the cycle and kernel-floor rounds, the parts of a
//! teardown.

use super::BenchResults;
use super::artifacts::CriterionResult;
use super::latency::{OpSamples, Round};
use super::plugins::Flavor;
use super::stats::{Summary, median_ns, ns_to_ms};

/// Pooled samples of one plugin, concurrency and verb over all repetitions.
pub(super) fn pooled<'a>(
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
    /// The row label.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::DelNetns => "DEL + netns removal",
        }
    }

    /// This operation's samples in a round.
    pub(super) fn samples(self, r: &Round) -> &OpSamples {
        match self {
            Self::Add => &r.add,
            Self::Del => &r.del,
            Self::DelNetns => &r.del_netns,
        }
    }
}

/// One plugin's figures for one operation at one concurrency, pooled over the repetitions.
pub(super) struct OpRow {
    /// Latency over every sample.
    pub(super) summary: Option<Summary>,
    /// The median of each repetition, ms.
    pub(super) per_rep_medians: Vec<f64>,
    /// 0 when the operation's wall time is not its own (DEL, see [`Round::del`]).
    pub(super) ops_per_s: f64,
    /// Failed calls.
    pub(super) failures: usize,
}

/// [`OpRow`] of `flavor`'s `op` at `conc`.
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

/// The largest other% of one plugin's rounds at one concurrency, over the phase of `op`.
pub(super) fn other_pct(rounds: &[Round], flavor: Flavor, conc: usize, op: Op) -> f64 {
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

/// The concurrencies the rounds ran at, ascending.
pub(super) fn concurrencies(rounds: &[Round]) -> Vec<usize> {
    let mut c: Vec<usize> = rounds.iter().map(|r| r.concurrency).collect();
    c.sort_unstable();
    c.dedup();
    c
}

/// The criterion result with this id.
pub(super) fn criterion_of<'a>(res: &'a BenchResults, id: &str) -> Option<&'a CriterionResult> {
    res.criterion.iter().find(|c| c.id == id)
}

/// One plugin's cycle rounds, pooled.
pub(super) struct CycleStats {
    /// Median over the repetitions of N / wall.
    pub(super) pods_per_s: f64,
    /// pods/s of each repetition.
    pub(super) per_rep: Vec<f64>,
    /// Whole cycles.
    pub(super) cycle: Option<Summary>,
    /// Their ADD spawn → DEL reap part.
    pub(super) add_del: Option<Summary>,
    /// Failed cycles.
    pub(super) failures: usize,
}

/// [`CycleStats`] of `flavor`.
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
    /// ADD.
    pub(super) add: Option<Summary>,
    /// DEL alone.
    pub(super) del: Option<Summary>,
    /// DEL + netns removal.
    pub(super) del_netns: Option<Summary>,
}

/// [`FloorStats`] of the run.
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
pub(super) fn teardown_parts(
    rounds: &[Round],
    flavor: Flavor,
    conc: usize,
) -> (f64, f64, usize, usize) {
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
