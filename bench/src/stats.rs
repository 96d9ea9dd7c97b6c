//! Order statistics of latency samples, the way bench-ptp.sh computes them: the median is the
//! mean of the two middle samples for an even count, percentiles are nearest-rank
//! (`sorted[ceil(p/100 · n) − 1]`). Also the CPU accounting that tells whether a round was
//! disturbed by other work on the machine.

use serde::Serialize;

/// Summary of one set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub median_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Smallest sample.
    pub min_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

impl Summary {
    /// Summarises samples given in nanoseconds; `None` when there are none.
    pub fn from_ns(samples: &[u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let ms = |ns: u64| ns_to_ms(ns);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            ms(sorted[n / 2])
        } else {
            (ms(sorted[n / 2 - 1]) + ms(sorted[n / 2])) / 2.0
        };
        let sum: f64 = sorted.iter().map(|&v| ms(v)).sum();
        Some(Self {
            n,
            median_ms: median,
            p95_ms: ms(nearest_rank(&sorted, 95.0)),
            p99_ms: ms(nearest_rank(&sorted, 99.0)),
            max_ms: ms(sorted[n - 1]),
            min_ms: ms(sorted[0]),
            mean_ms: sum / count_f64(n),
        })
    }
}

/// Nanoseconds as fractional milliseconds.
pub(crate) fn ns_to_ms(ns: u64) -> f64 {
    // Latencies are far below 2^53 ns (104 days), where f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    let v = ns as f64;
    v / 1e6
}

/// A count as f64 (counts here are far below 2^53).
pub(crate) fn count_f64(n: usize) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let v = n as f64;
    v
}

/// The nearest-rank percentile of sorted samples (`p` in 0..=100).
pub(crate) fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = count_f64(sorted.len());
    let rank = (p / 100.0 * n).ceil();
    // rank is in 0..=n, so the cast is in range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let idx = (rank as usize).saturating_sub(1).min(sorted.len() - 1);
    sorted[idx]
}

/// The median of nanosecond samples, in nanoseconds (0 when empty).
pub(crate) fn median_ns(samples: &[u64]) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        s[n / 2 - 1] / 2 + s[n / 2] / 2 + (s[n / 2 - 1] % 2 + s[n / 2] % 2) / 2
    }
}

/// `ours / theirs`, or `None` when the baseline is zero.
pub(crate) fn ratio(ours: f64, theirs: f64) -> Option<f64> {
    if theirs > 0.0 && ours.is_finite() {
        Some(ours / theirs)
    } else {
        None
    }
}

/// CPU time consumed machine-wide and by the driver's own process tree, to tell how much
/// of the machine other work took during a measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSnapshot {
    busy_ticks: u64,
    own_us: u64,
    excluded_ticks: u64,
}

pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

pub(crate) fn proc_stat_busy_ticks() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = text.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum()
}

fn rusage_us(who: libc::c_int) -> u64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage; `who` is RUSAGE_SELF or RUSAGE_CHILDREN.
    if unsafe { libc::getrusage(who, &raw mut u) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// utime + stime of a process, in clock ticks (0 when it is gone).
pub(crate) fn process_cpu_ticks(pid: i32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may contain spaces; fields after ')' are fixed.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ... utime is field 14 of the line, i.e. index 11 here; stime 12.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

impl CpuSnapshot {
    /// Now; `excluded` are processes outside the driver's tree whose CPU is part of the work
    /// measured (ipamd).
    pub(crate) fn take(excluded: &[i32]) -> Self {
        Self {
            busy_ticks: proc_stat_busy_ticks(),
            own_us: rusage_us(libc::RUSAGE_SELF) + rusage_us(libc::RUSAGE_CHILDREN),
            excluded_ticks: excluded.iter().map(|&p| process_cpu_ticks(p)).sum(),
        }
    }

    /// CPU used by anything else between `self` and `later`, as a percentage of all CPUs over
    /// `wall_ns` (0 when nothing else ran). Kernel work done on the driver's behalf in
    /// workqueues (e.g. freeing a deleted veth) also lands here.
    pub(crate) fn foreign_pct(&self, later: &CpuSnapshot, wall_ns: u64, cpus: usize) -> f64 {
        let tick = clock_ticks_per_second();
        let to_us = |ticks: u64| ticks.saturating_mul(1_000_000) / tick;
        let busy = to_us(later.busy_ticks.saturating_sub(self.busy_ticks));
        let own = later.own_us.saturating_sub(self.own_us)
            + to_us(later.excluded_ticks.saturating_sub(self.excluded_ticks));
        let foreign_us = busy.saturating_sub(own);
        let capacity_us = (wall_ns / 1_000).saturating_mul(u64::try_from(cpus).unwrap_or(1));
        if capacity_us == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let pct = 100.0 * foreign_us as f64 / capacity_us as f64;
        (pct * 10.0).round() / 10.0
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn summary_matches_bench_ptp_definitions() {
        // 1..=100 ms
        let samples: Vec<u64> = (1..=100).map(|ms| ms * 1_000_000).collect();
        let s = Summary::from_ns(&samples).unwrap();
        assert_eq!(s.n, 100);
        assert_eq!(s.median_ms, 50.5);
        assert_eq!(s.p95_ms, 95.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.mean_ms, 50.5);
        let odd = Summary::from_ns(&[3_000_000, 1_000_000, 2_000_000]).unwrap();
        assert_eq!(odd.median_ms, 2.0);
        assert_eq!(odd.p99_ms, 3.0);
        assert!(Summary::from_ns(&[]).is_none());
    }

    #[test]
    fn median_ns_rounds_like_the_mean_of_the_middle_pair() {
        assert_eq!(median_ns(&[1, 3]), 2);
        assert_eq!(median_ns(&[5, 1, 9]), 5);
        assert_eq!(median_ns(&[]), 0);
    }

    #[test]
    fn ratio_refuses_a_zero_baseline() {
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
    }

    #[test]
    fn own_process_cpu_is_readable() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let before = CpuSnapshot::take(&[pid]);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let after = CpuSnapshot::take(&[pid]);
        assert!(before.foreign_pct(&after, 1_000_000_000, 2) >= 0.0);
        assert_eq!(process_cpu_ticks(-1), 0);
    }
}
