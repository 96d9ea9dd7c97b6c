//! The cold-node burst (issue 13): a burst of pods created at once onto an m5.large-type node
//! that just became ready, once with prefix delegation and once with secondary IPs, on the
//! simulated VPC (moto as EC2, the project's instance metadata), with EC2 and instance metadata
//! answering after the delays of a latency model taken from the reference's own logs
//! ([`LATENCY_MODEL`], [`METADATA_LAG`]).
//!
//! - The node: ipamd in EC2 mode with the reference manifest's defaults (`WARM_ENI_TARGET=1`,
//!   with prefix delegation `WARM_PREFIX_TARGET=1`); `t0` is when it is ready (its conflist is
//!   written: kubelet marks the node Ready and the scheduler sends pods).
//! - The pods: created at `t0`, `concurrency` sandboxes at a time, each a new network namespace
//!   and an `aws-cni` ADD exec'd as containerd does. A failed ADD is handled as kubelet and
//!   containerd do: DEL of the sandbox, its namespace removed, and the pod tried again with a
//!   new sandbox after kubelet's pod-worker back-off (10 s, jittered by up to 50 %).
//! - Time to all: from `t0` until the last pod has its address.
//! - The floor: the same burst on a node whose pool already holds every address it needs
//!   (instance-metadata-only mode on addresses provisioned beforehand: no EC2 call), plus the
//!   modelled latencies of the fewest EC2 calls that take the cold node's pool to the burst's
//!   size, one after the other (prefixes: one AssignPrivateIpAddresses per ENI with free slots;
//!   secondary IPs: the same, then per new ENI CreateNetworkInterface with its addresses,
//!   AttachNetworkInterface and the delay until metadata shows it).
//! - EC2 calls by type: moto's call log, calls from the node only, before `t0` (start-up) and
//!   from `t0` until the last address (the burst).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::vpc::{Ec2CallCount, Ec2Latency, FabricOptions, NodeSpec, VpcFabric, VpcNode};
use harness::{CniOutcome, Pod};
use ipnet::Ipv4Net;
use rand::Rng;
use serde::Serialize;

use super::BenchError;

/// EC2 response times by action, with where each comes from. Actions not listed take
/// [`OTHER_CALLS`].
pub const LATENCY_MODEL: &[(&str, Duration, &str)] = &[
    (
        "AssignPrivateIpAddresses",
        Duration::from_millis(500),
        "aws/amazon-vpc-cni-k8s#648: assigning the IPs at node start adds 400–600 ms",
    ),
    (
        "CreateNetworkInterface",
        Duration::from_millis(400),
        "aws/amazon-vpc-cni-k8s#1967: \"Creating ENI\" 18:09:06.467, the ENI created by the next line at 06.882",
    ),
    (
        "AttachNetworkInterface",
        Duration::from_millis(1_400),
        "aws/amazon-vpc-cni-k8s#1872: ENI created 22:44:04.191, attached with its IPs at 06.001 (1.8 s) less the create",
    ),
    (
        "UnassignPrivateIpAddresses",
        Duration::from_millis(300),
        "assumed (not on the burst's path)",
    ),
];
/// Every other EC2 call (Describe*, CreateTags, ...): assumed.
pub const OTHER_CALLS: Duration = Duration::from_millis(150);
/// How long instance metadata lags behind EC2 (a new ENI, new addresses):
/// aws/amazon-vpc-cni-k8s#1872, where the new ENI and then its addresses were still missing from
/// metadata at 4 retries over 0.76 s after the attach.
pub const METADATA_LAG: Duration = Duration::from_millis(800);
/// Where [`METADATA_LAG`] comes from, for the report.
pub const METADATA_LAG_SOURCE: &str = "aws/amazon-vpc-cni-k8s#1872: the new ENI, then its IPs, still missing from metadata 0.76 s after the attach";
/// kubelet's pod-worker back-off after a failed sync (`backOffPeriod`, jitter factor 0.5).
pub const KUBELET_BACKOFF: Duration = Duration::from_secs(10);
/// A burst that has not finished after this fails the run.
const BURST_DEADLINE: Duration = Duration::from_secs(180);
/// The instance type of the issue.
pub const INSTANCE_TYPE: &str = "m5.large";

/// The two bursts' sizes.
#[derive(Debug, Clone, Copy)]
pub struct BurstConfig {
    /// Pods with prefix delegation (m5.large's max pods: 110).
    pub prefix_pods: usize,
    /// Pods with secondary IPs (m5.large: 3 ENIs × 9 = 27 pod addresses; its max pods, 29,
    /// counts two host-network pods that take none).
    pub secondary_pods: usize,
    /// Sandboxes created at once.
    pub concurrency: usize,
    /// Bursts per mode, each on new nodes; the report shows the median run.
    pub reps: usize,
}

impl Default for BurstConfig {
    fn default() -> Self {
        Self {
            prefix_pods: 110,
            secondary_pods: 27,
            concurrency: 16,
            reps: 3,
        }
    }
}

/// How the node gets its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BurstMode {
    /// `ENABLE_PREFIX_DELEGATION=true`.
    Prefixes,
    /// Secondary IPs.
    SecondaryIps,
}

impl BurstMode {
    /// For the report.
    pub fn label(self) -> &'static str {
        match self {
            Self::Prefixes => "prefix delegation",
            Self::SecondaryIps => "secondary IPs",
        }
    }

    /// Addresses per slot.
    fn per_slot(self) -> usize {
        match self {
            Self::Prefixes => 16,
            Self::SecondaryIps => 1,
        }
    }
}

/// EC2 calls of one action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Calls {
    /// How many.
    pub calls: u64,
    /// How many EC2 answered with an error.
    pub errors: u64,
}

/// One burst's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BurstResult {
    /// The mode.
    pub mode: BurstMode,
    /// Pods in the burst.
    pub pods: usize,
    /// Sandboxes at once.
    pub concurrency: usize,
    /// Pod addresses the cold node had at `t0`.
    pub cold_pool: usize,
    /// Time from `t0` until every pod had its address (ms): the median run's.
    pub time_to_all_ms: f64,
    /// The same burst on a node that already had every address (ms): the median run's.
    pub warm_ms: f64,
    /// Time to all of every run (ms), in run order.
    pub time_samples_ms: Vec<f64>,
    /// The warm burst of every run (ms), in run order.
    pub warm_samples_ms: Vec<f64>,
    /// The modelled latencies of the fewest EC2 calls from the cold pool to the burst (ms),
    /// and those calls.
    pub ec2_floor_ms: f64,
    /// The calls [`BurstResult::ec2_floor_ms`] adds up.
    pub floor_calls: Vec<String>,
    /// Pods whose first ADD failed and that kubelet tried again.
    pub retries: usize,
    /// Pods that never got an address (must be none).
    pub unserved: usize,
    /// Distinct addresses handed out (must equal `pods`).
    pub distinct_addresses: usize,
    /// EC2 calls of the node before `t0`.
    pub startup_calls: BTreeMap<String, Calls>,
    /// EC2 calls of the node from `t0` until the last address.
    pub burst_calls: BTreeMap<String, Calls>,
    /// ENIs attached and addresses slots used at the end (prefixes or secondary IPs).
    pub enis: usize,
    /// Prefixes on the node's ENIs at the end.
    pub prefixes: usize,
}

impl BurstResult {
    /// `warm + EC2 floor` (ms).
    pub fn floor_ms(&self) -> f64 {
        self.warm_ms + self.ec2_floor_ms
    }

    /// Time to all ÷ floor.
    pub fn ratio(&self) -> f64 {
        if self.floor_ms() > 0.0 {
            self.time_to_all_ms / self.floor_ms()
        } else {
            0.0
        }
    }

    /// Calls of `action` over start-up and burst.
    pub fn calls(&self, action: &str) -> u64 {
        [&self.startup_calls, &self.burst_calls]
            .iter()
            .filter_map(|m| m.get(action))
            .map(|c| c.calls)
            .sum()
    }

    /// Calls that ask EC2 for addresses (AssignPrivateIpAddresses, CreateNetworkInterface).
    pub fn address_calls(&self) -> u64 {
        self.calls("AssignPrivateIpAddresses") + self.calls("CreateNetworkInterface")
    }
}

/// The fabric's latency settings of the model.
fn latency() -> Ec2Latency {
    Ec2Latency {
        per_action: LATENCY_MODEL
            .iter()
            .map(|(a, d, _)| ((*a).to_owned(), *d))
            .collect(),
        default: OTHER_CALLS,
        clients: Vec::new(),
    }
}

fn modelled(action: &str) -> Duration {
    LATENCY_MODEL
        .iter()
        .find(|(a, _, _)| *a == action)
        .map_or(OTHER_CALLS, |(_, d, _)| *d)
}

fn vpc_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Invalid(format!("simulated VPC: {e}"))
}

/// Runs both bursts on one simulated VPC (prefix delegation first).
///
/// # Errors
/// The VPC or a node failed, or a burst did not finish.
pub fn run(config: &BurstConfig, say: &dyn Fn(&str)) -> Result<Vec<BurstResult>, BenchError> {
    let mut options = FabricOptions::default()
        .subnet(Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 20).map_err(vpc_err)?);
    options.ec2_latency = Some(latency());
    options.ec2_call_log = true;
    let vpc = VpcFabric::start(options).map_err(vpc_err)?;
    let mut out = Vec::new();
    for (mode, pods) in [
        (BurstMode::Prefixes, config.prefix_pods),
        (BurstMode::SecondaryIps, config.secondary_pods),
    ] {
        say(&format!(
            "cold-node burst, {}: {pods} pods, {} at once",
            mode.label(),
            config.concurrency
        ));
        let mut runs = (0..config.reps.max(1))
            .map(|rep| one_mode(&vpc, mode, pods, config.concurrency, rep))
            .collect::<Result<Vec<_>, _>>()?;
        let (times, warms): (Vec<f64>, Vec<f64>) =
            runs.iter().map(|r| (r.time_to_all_ms, r.warm_ms)).unzip();
        let warm_median = median(&warms);
        // The median run by time to all (its calls and shape), with every run's figures.
        runs.sort_by(|a, b| a.time_to_all_ms.total_cmp(&b.time_to_all_ms));
        let mut median_run = runs.swap_remove(runs.len() / 2);
        median_run.warm_ms = warm_median;
        median_run.time_samples_ms = times;
        median_run.warm_samples_ms = warms;
        out.push(median_run);
    }
    Ok(out)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn one_mode(
    vpc: &VpcFabric,
    mode: BurstMode,
    pods: usize,
    concurrency: usize,
    rep: usize,
) -> Result<BurstResult, BenchError> {
    // The floor's first part: every address there beforehand, no EC2 call.
    let slots = pods.div_ceil(mode.per_slot());
    let warm_spec = match mode {
        BurstMode::Prefixes => NodeSpec::new(&format!("burst-warm-pd-{rep}"), INSTANCE_TYPE)
            .imds_only_prefixes(u32::try_from(slots).unwrap_or(u32::MAX)),
        BurstMode::SecondaryIps => {
            let per_eni = 9;
            let enis: Vec<u32> = (per_eni..slots)
                .step_by(per_eni)
                .map(|done| u32::try_from((slots - done).min(per_eni)).unwrap_or(0))
                .collect();
            NodeSpec::new(&format!("burst-warm-{rep}"), INSTANCE_TYPE)
                .imds_only(u32::try_from(slots.min(per_eni)).unwrap_or(0), &enis)
        }
    };
    let warm = {
        let node = vpc.add_node(warm_spec).map_err(vpc_err)?;
        let served = burst(&node, mode, "warm", pods, concurrency)?;
        if served.unserved > 0 {
            return Err(BenchError::Invalid(format!(
                "{} pods of the warm {} burst got no address: {}",
                served.unserved,
                mode.label(),
                served.last_error
            )));
        }
        served
    };

    let mut spec = NodeSpec::new(
        &match mode {
            BurstMode::Prefixes => format!("burst-pd-{rep}"),
            BurstMode::SecondaryIps => format!("burst-{rep}"),
        },
        INSTANCE_TYPE,
    )
    .env("WARM_ENI_TARGET", "1");
    if mode == BurstMode::Prefixes {
        spec = spec
            .env("ENABLE_PREFIX_DELEGATION", "true")
            .env("WARM_PREFIX_TARGET", "1");
    }
    let before = vpc.ec2_calls().map_err(vpc_err)?;
    let node = vpc.add_node(spec).map_err(vpc_err)?;
    // t0: ready.
    let cold_pool = node.pool_status().map_err(vpc_err)?.total_i_ps;
    let cold_pool = usize::try_from(cold_pool).unwrap_or(0);
    let at_t0 = vpc.ec2_calls().map_err(vpc_err)?;
    // (ENI, address slots in use) at t0.
    let enis_at_t0: Vec<(String, usize)> = node
        .enis()
        .map_err(vpc_err)?
        .into_iter()
        .map(|e| {
            let used = e.secondary_ips().len() + e.ipv4_prefixes.len();
            (e.id, used)
        })
        .collect();
    vpc.set_imds_lag(METADATA_LAG);
    let served = burst(&node, mode, "cold", pods, concurrency);
    let after = vpc.ec2_calls().map_err(vpc_err);
    vpc.set_imds_lag(Duration::ZERO);
    let (served, after) = (served?, after?);
    let enis = node.enis().map_err(vpc_err)?;
    let (ec2_floor, floor_calls) = ec2_floor(mode, pods, cold_pool, &enis_at_t0);
    Ok(BurstResult {
        mode,
        pods,
        concurrency,
        cold_pool,
        time_to_all_ms: ms(served.time_to_all),
        warm_ms: ms(warm.time_to_all),
        time_samples_ms: Vec::new(),
        warm_samples_ms: Vec::new(),
        ec2_floor_ms: ms(ec2_floor),
        floor_calls,
        retries: served.retries,
        unserved: served.unserved,
        distinct_addresses: served.distinct,
        startup_calls: diff(&at_t0, &before),
        burst_calls: diff(&after, &at_t0),
        enis: enis.len(),
        prefixes: enis.iter().map(|e| e.ipv4_prefixes.len()).sum(),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn diff(
    now: &BTreeMap<String, Ec2CallCount>,
    then: &BTreeMap<String, Ec2CallCount>,
) -> BTreeMap<String, Calls> {
    now.iter()
        .filter_map(|(action, c)| {
            let old = then.get(action).copied().unwrap_or_default();
            let calls = c.calls.saturating_sub(old.calls);
            (calls > 0).then(|| {
                (
                    action.clone(),
                    Calls {
                        calls,
                        errors: c.errors.saturating_sub(old.errors),
                    },
                )
            })
        })
        .collect()
}

/// The fewest EC2 calls from `cold_pool` addresses to `pods`, in sequence, and their modelled
/// latencies: the free slots of the ENIs there at `t0` first (one AssignPrivateIpAddresses per
/// ENI), then new ENIs (CreateNetworkInterface with the addresses, AttachNetworkInterface, the
/// metadata lag).
pub fn ec2_floor(
    mode: BurstMode,
    pods: usize,
    cold_pool: usize,
    enis: &[(String, usize)],
) -> (Duration, Vec<String>) {
    const SLOTS_PER_ENI: usize = 9;
    const MAX_ENIS: usize = 3;
    let mut needed = pods.saturating_sub(cold_pool).div_ceil(mode.per_slot());
    let mut total = Duration::ZERO;
    let mut calls = Vec::new();
    for (id, used) in enis {
        if needed == 0 {
            break;
        }
        let room = SLOTS_PER_ENI.saturating_sub(*used).min(needed);
        if room > 0 {
            needed -= room;
            total += modelled("AssignPrivateIpAddresses");
            calls.push(format!("AssignPrivateIpAddresses ({room} on {id})"));
        }
    }
    let mut new_enis = 0;
    while needed > 0 && enis.len() + new_enis < MAX_ENIS {
        let n = needed.min(SLOTS_PER_ENI);
        needed -= n;
        new_enis += 1;
        total +=
            modelled("CreateNetworkInterface") + modelled("AttachNetworkInterface") + METADATA_LAG;
        calls.push(format!(
            "CreateNetworkInterface ({n}) + AttachNetworkInterface + metadata lag"
        ));
    }
    (total, calls)
}

/// What one burst gave.
struct Served {
    time_to_all: Duration,
    retries: usize,
    unserved: usize,
    distinct: usize,
    last_error: String,
}

/// One pod of the burst: its name, the try it is at and when it may be tried.
struct Pending {
    index: usize,
    attempt: usize,
    not_before: Instant,
}

/// Runs the burst: `pods` pods created now, `concurrency` sandboxes at a time, failed ADDs
/// tried again after kubelet's back-off. Every pod is deleted afterwards (not timed).
fn burst(
    node: &VpcNode,
    mode: BurstMode,
    tag: &str,
    pods: usize,
    concurrency: usize,
) -> Result<Served, BenchError> {
    let t0 = Instant::now();
    let queue = Mutex::new(
        (0..pods)
            .map(|index| Pending {
                index,
                attempt: 0,
                not_before: t0,
            })
            .collect::<Vec<_>>(),
    );
    let done: Mutex<Vec<(Pod, Ipv4Addr, Duration)>> = Mutex::new(Vec::new());
    let retries = Mutex::new(0usize);
    let last_error = Mutex::new(String::new());
    let failures = Mutex::new(Vec::<BenchError>::new());
    let prefix = match mode {
        BurstMode::Prefixes => "pd",
        BurstMode::SecondaryIps => "ip",
    };
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                loop {
                    let next = {
                        let mut q = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if q.is_empty() {
                            return;
                        }
                        let now = Instant::now();
                        q.iter()
                            .position(|p| p.not_before <= now)
                            .map(|i| q.swap_remove(i))
                    };
                    let Some(mut p) = next else {
                        if t0.elapsed() > BURST_DEADLINE {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let name = format!("{prefix}-{tag}-{}", p.index);
                    let outcome = Pod::new("burst", &name)
                        .map_err(|e| BenchError::Invalid(format!("pod {name}: {e}")))
                        .and_then(|pod| {
                            let out = node
                                .cni("ADD", &pod, "1.0.0", None)
                                .map_err(|e| BenchError::Invalid(e.to_string()))?;
                            Ok((pod, out))
                        });
                    match outcome {
                        Ok((pod, out)) if out.success() => {
                            if let Some(ip) = out.result_ip() {
                                lock(&done).push((pod, ip, t0.elapsed()));
                            } else {
                                lock(&failures).push(BenchError::Invalid(format!(
                                    "ADD of {name} answered no address: {}",
                                    out.describe()
                                )));
                            }
                        }
                        Ok((pod, out)) => {
                            // As containerd: DEL of the failed sandbox, its namespace removed;
                            // kubelet tries the pod again after its back-off.
                            let _ = node.cni("DEL", &pod, "1.0.0", None);
                            drop(pod);
                            *lock(&last_error) = describe(&out);
                            *lock(&retries) += 1;
                            p.attempt += 1;
                            let jitter = rand::rng().random_range(0.0..0.5);
                            p.not_before = Instant::now() + KUBELET_BACKOFF.mul_f64(1.0 + jitter);
                            if t0.elapsed() < BURST_DEADLINE {
                                lock(&queue).push(p);
                            }
                        }
                        Err(e) => lock(&failures).push(e),
                    }
                }
            });
        }
    });
    if let Some(e) = lock(&failures).pop() {
        return Err(e);
    }
    let done = done
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let time_to_all = done.iter().map(|(_, _, at)| *at).max().unwrap_or_default();
    let distinct = done
        .iter()
        .map(|(_, ip, _)| *ip)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let served = Served {
        time_to_all,
        retries: *lock(&retries),
        unserved: pods - done.len(),
        distinct,
        last_error: lock(&last_error).clone(),
    };
    for (pod, _, _) in &done {
        node.cni("DEL", pod, "1.0.0", None)
            .map_err(|e| BenchError::Invalid(e.to_string()))?;
    }
    Ok(served)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn describe(out: &CniOutcome) -> String {
    out.json
        .as_ref()
        .and_then(|j| j.get("msg"))
        .and_then(|m| m.as_str())
        .map_or_else(|| out.describe(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_modelled_call_has_a_source_and_the_floor_follows_the_model() {
        for (action, d, source) in LATENCY_MODEL {
            assert!(!source.is_empty() && *d > Duration::ZERO, "{action}");
        }
        // Prefixes: 110 pods, 16 cold on the primary (one prefix): 6 more on it, one call.
        let primary = |used: usize| vec![("eni-1".to_owned(), used)];
        let (d, calls) = ec2_floor(BurstMode::Prefixes, 110, 16, &primary(1));
        assert_eq!(d, Duration::from_millis(500), "{calls:?}");
        // Secondary IPs: 27 pods, the primary's 9 cold: two new ENIs.
        let (d, calls) = ec2_floor(BurstMode::SecondaryIps, 27, 9, &primary(9));
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(d, 2 * (Duration::from_millis(1_800) + METADATA_LAG));
    }
}
