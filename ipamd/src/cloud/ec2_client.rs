//! [`Ec2Client`]: wraps any [`Ec2Api`] so that every request is counted and timed under the
//! reference's metric names, transient failures are retried with jittered exponential backoff,
//! and the outcome is remembered for the user-facing exhaustion messages ([`Ec2Health`]).
//!
//! Retries are ours, not the SDK's (which [`super::ec2_sdk::SdkEc2`] switches off), so every
//! attempt shows in the metrics and the call rate stays bounded:
//! - throttling (`RequestLimitExceeded`), 5xx, timeouts and transport failures are retried up to
//!   [`RetryPolicy::max_attempts`] times, waiting `d/2 + rand(0..=d/2)` with `d` doubling from
//!   [`RetryPolicy::base`] up to [`RetryPolicy::cap`];
//! - a throttled answer also closes a gate shared by every call of this client, for a backoff
//!   that grows with the number of throttled answers in a row (whatever call they came from) and
//!   resets on the first success: concurrent callers slow down together, and under sustained
//!   throttling the whole client settles at about one request per `cap/2..cap`;
//! - calls that must not run twice (`AssignPrivateIpAddresses` with a count,
//!   `AttachNetworkInterface`) are retried only after throttling, when EC2 did not execute them;
//!   `CreateNetworkInterface` carries a client token and is retried like a read.
//!
//! Metrics (vpc-cni.md §3.10): `awscni_ec2api_req_count{fn}`, `awscni_ec2api_error_count{fn}`,
//! `awscni_aws_api_error_count{api,error}` (counters, exact names), and
//! `awscni_aws_api_latency_ms{api,error,status}`. The reference's latency metric is a summary;
//! prometheus-client has no summary type, so it is a histogram here (same labels, `_sum` and
//! `_count` as the summary's, plus `_bucket{le}` in milliseconds).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::Rng;

use super::ec2::{
    CreateEni, Ec2Api, Ec2Error, Ec2ErrorKind, Filter, Instance, InstanceTypeLimits,
    NetworkInterface, Subnet, Tags,
};
use crate::metrics::Counter;

/// Latency buckets in milliseconds: 5 ms to ~41 s.
const LATENCY_BUCKETS_MS: [f64; 14] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20000.0, 30000.0,
    41000.0,
];

/// How transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// Backoff before the first retry (before jitter).
    pub base: Duration,
    /// Longest backoff.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 250 ms doubling up to 10 s: a call gives up after about 20 s of failures.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (0-based): `d/2 + rand(0..=d/2)` where
    /// `d = min(cap, base × 2^retry)`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let d = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.min(20)))
            .min(self.cap);
        let half = d / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnName {
    r#fn: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    api: String,
    error: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiErrorLabels {
    api: String,
    error: String,
}

type HistogramFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

/// The EC2 metric families, registered once into the daemon's registry.
#[derive(Debug, Clone)]
pub struct Ec2Metrics {
    requests: Family<FnName, Counter>,
    errors: Family<FnName, Counter>,
    api_errors: Family<ApiErrorLabels, Counter>,
    latency: HistogramFamily,
}

impl Ec2Metrics {
    /// Registers the families into `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            errors: Family::default(),
            api_errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "awscni_ec2api_req_count",
            "The number of requests made to EC2 APIs by worker",
            m.requests.clone(),
        );
        registry.register(
            "awscni_ec2api_error_count",
            "The number of failed EC2 APIs requests",
            m.errors.clone(),
        );
        registry.register(
            "awscni_aws_api_error_count",
            "The number of times AWS API returns an error",
            m.api_errors.clone(),
        );
        registry.register(
            "awscni_aws_api_latency_ms",
            "AWS API call latency in ms",
            m.latency.clone(),
        );
        m
    }

    /// Requests made to `api` (every attempt counts).
    pub fn requests(&self, api: &str) -> u64 {
        self.requests
            .get_or_create(&FnName { r#fn: api.into() })
            .get()
    }

    /// Failed requests to `api`.
    pub fn errors(&self, api: &str) -> u64 {
        self.errors
            .get_or_create(&FnName { r#fn: api.into() })
            .get()
    }

    fn record(&self, api: &'static str, elapsed: Duration, outcome: Result<(), &Ec2Error>) {
        self.requests
            .get_or_create(&FnName { r#fn: api.into() })
            .inc();
        let (error, status) = match outcome {
            Ok(()) => ("false", "200".to_owned()),
            Err(e) => {
                self.errors
                    .get_or_create(&FnName { r#fn: api.into() })
                    .inc();
                self.api_errors
                    .get_or_create(&ApiErrorLabels {
                        api: api.into(),
                        error: e.code.clone(),
                    })
                    .inc();
                (
                    "true",
                    e.status.map_or_else(|| "0".to_owned(), |s| s.to_string()),
                )
            }
        };
        self.latency
            .get_or_create(&LatencyLabels {
                api: api.into(),
                error: error.into(),
                status,
            })
            .observe(elapsed.as_secs_f64() * 1000.0);
    }
}

/// A failure worth telling users about, with when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Failure {
    /// The error.
    pub error: Ec2Error,
    /// When.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct HealthInner {
    last_success: Option<Instant>,
    last_error: Option<Ec2Failure>,
    subnet_full: Option<Ec2Failure>,
}

/// What the last EC2 calls said, for exhaustion messages and logs.
#[derive(Debug, Default)]
pub struct Ec2Health {
    inner: Mutex<HealthInner>,
}

impl Ec2Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn success(&self, api: &'static str) {
        let mut h = self.lock();
        h.last_success = Some(Instant::now());
        if matches!(api, "AssignPrivateIpAddresses" | "CreateNetworkInterface") {
            h.subnet_full = None;
        }
    }

    fn failure(&self, error: &Ec2Error) {
        let mut h = self.lock();
        let failure = Ec2Failure {
            error: error.clone(),
            at: Instant::now(),
        };
        if error.kind == Ec2ErrorKind::SubnetFull {
            h.subnet_full = Some(failure.clone());
        }
        // NotFound answers are expected (deleting what is gone) and say nothing about EC2's health.
        if error.kind != Ec2ErrorKind::NotFound {
            h.last_error = Some(failure);
        }
    }

    /// The last error, when no call has succeeded since: EC2 is failing or throttling.
    pub fn failing(&self) -> Option<Ec2Failure> {
        let h = self.lock();
        let err = h.last_error.clone()?;
        match h.last_success {
            Some(ok) if ok > err.at => None,
            _ => Some(err),
        }
    }

    /// The last `InsufficientFreeAddressesInSubnet`, until an address is added again.
    pub fn subnet_full(&self) -> Option<Ec2Failure> {
        self.lock().subnet_full.clone()
    }

    /// The last error of any kind.
    pub fn last_error(&self) -> Option<Ec2Failure> {
        self.lock().last_error.clone()
    }
}

/// An [`Ec2Api`] that counts, times and retries another.
#[derive(Debug)]
pub struct Ec2Client<E> {
    inner: E,
    metrics: Ec2Metrics,
    retry: RetryPolicy,
    gate: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    throttle_streak: std::sync::atomic::AtomicU32,
    health: Arc<Ec2Health>,
    /// `MY_POD_NAME`: the aws-node pod the reference posts its `MissingIAMPermissions` Events on.
    pod_name: Option<String>,
    /// APIs whose missing permission was already reported.
    unauthorized: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
}

impl<E: Ec2Api> Ec2Client<E> {
    /// Wraps `inner`, registering the EC2 metric families into `registry`.
    pub fn new(inner: E, registry: &mut Registry) -> Self {
        Self {
            inner,
            metrics: Ec2Metrics::new(registry),
            retry: RetryPolicy::default(),
            gate: tokio::sync::Mutex::new(None),
            throttle_streak: std::sync::atomic::AtomicU32::new(0),
            health: Arc::new(Ec2Health::default()),
            pod_name: None,
            unauthorized: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    /// Names the aws-node pod (`MY_POD_NAME`) in the `MissingIAMPermissions` warning, the
    /// reference's Kubernetes Event on that pod (this build logs it; Events need the API).
    #[must_use]
    pub fn with_pod_name(mut self, pod_name: Option<String>) -> Self {
        self.pod_name = pod_name;
        self
    }

    /// The reference's `MissingIAMPermissions` Event, as a warning, once per API.
    fn report_missing_permission(&self, api: &'static str, error: &Ec2Error) {
        let first = self
            .unauthorized
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(api);
        if first {
            tracing::warn!(
                reason = "MissingIAMPermissions",
                pod = self.pod_name.as_deref().unwrap_or("(MY_POD_NAME not set)"),
                api,
                error = %error,
                "Unauthorized operation: failed to call ec2:{api} due to missing permissions; attach the policy in conf/iam-policy.json (or AmazonEKS_CNI_Policy) to the node's role or to aws-node's IRSA role"
            );
        }
    }

    /// Uses another retry policy (tests).
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The metric families (tests and logs).
    pub fn metrics(&self) -> &Ec2Metrics {
        &self.metrics
    }

    /// What the last calls said.
    pub fn health(&self) -> Arc<Ec2Health> {
        Arc::clone(&self.health)
    }

    /// The wrapped implementation.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    async fn wait_gate(&self) {
        let until = *self.gate.lock().await;
        if let Some(until) = until
            && until > tokio::time::Instant::now()
        {
            tokio::time::sleep_until(until).await;
        }
    }

    async fn close_gate(&self, pause: Duration) {
        let until = tokio::time::Instant::now() + pause;
        let mut gate = self.gate.lock().await;
        if gate.is_none_or(|g| g < until) {
            *gate = Some(until);
        }
    }

    /// Runs one API call with metrics and retries. `idempotent` calls are retried after any
    /// transient failure, the others only after throttling.
    async fn call<T, F, Fut>(
        &self,
        api: &'static str,
        idempotent: bool,
        mut f: F,
    ) -> Result<T, Ec2Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Ec2Error>>,
    {
        let mut retry = 0;
        loop {
            self.wait_gate().await;
            let start = Instant::now();
            let result = f().await;
            let elapsed = start.elapsed();
            match result {
                Ok(v) => {
                    self.metrics.record(api, elapsed, Ok(()));
                    self.health.success(api);
                    self.throttle_streak
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => {
                    self.metrics.record(api, elapsed, Err(&e));
                    self.health.failure(&e);
                    if e.kind == Ec2ErrorKind::Unauthorized {
                        self.report_missing_permission(api, &e);
                    }
                    let throttle_pause = (e.kind == Ec2ErrorKind::Throttled).then(|| {
                        let streak = self
                            .throttle_streak
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.retry.backoff(streak.max(retry))
                    });
                    if let Some(pause) = throttle_pause {
                        self.close_gate(pause).await;
                    }
                    let retryable = if idempotent {
                        e.is_transient()
                    } else {
                        e.not_executed()
                    };
                    if !retryable || retry + 1 >= self.retry.max_attempts {
                        if e.kind != Ec2ErrorKind::NotFound {
                            tracing::debug!(api, attempts = retry + 1, error = %e, "EC2 call failed");
                        }
                        return Err(e);
                    }
                    let pause = throttle_pause.unwrap_or_else(|| self.retry.backoff(retry));
                    tracing::info!(api, attempt = retry + 1, retry_in = ?pause, error = %e, "EC2 call failed; retrying");
                    if throttle_pause.is_none() {
                        tokio::time::sleep(pause).await;
                    }
                    retry += 1;
                }
            }
        }
    }
}

impl<E: Ec2Api> Ec2Api for Ec2Client<E> {
    async fn describe_instance_types(
        &self,
        instance_types: &[String],
    ) -> Result<Vec<InstanceTypeLimits>, Ec2Error> {
        self.call("DescribeInstanceTypes", true, || {
            self.inner.describe_instance_types(instance_types)
        })
        .await
    }

    async fn describe_network_interfaces(
        &self,
        eni_ids: &[String],
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        self.call("DescribeNetworkInterfaces", true, || {
            self.inner.describe_network_interfaces(eni_ids)
        })
        .await
    }

    async fn describe_network_interfaces_filtered(
        &self,
        filters: &[Filter],
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        self.call("DescribeNetworkInterfaces", true, || {
            self.inner.describe_network_interfaces_filtered(filters)
        })
        .await
    }

    async fn describe_subnets(&self, filters: &[Filter]) -> Result<Vec<Subnet>, Ec2Error> {
        self.call("DescribeSubnets", true, || {
            self.inner.describe_subnets(filters)
        })
        .await
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Instance, Ec2Error> {
        self.call("DescribeInstances", true, || {
            self.inner.describe_instance(instance_id)
        })
        .await
    }

    async fn create_network_interface(
        &self,
        request: &CreateEni,
    ) -> Result<NetworkInterface, Ec2Error> {
        self.call("CreateNetworkInterface", true, || {
            self.inner.create_network_interface(request)
        })
        .await
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        self.call("AttachNetworkInterface", false, || {
            self.inner
                .attach_network_interface(eni_id, instance_id, device_index)
        })
        .await
    }

    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        self.call("ModifyNetworkInterfaceAttribute", true, || {
            self.inner.set_delete_on_termination(eni_id, attachment_id)
        })
        .await
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        self.call("DetachNetworkInterface", true, || {
            self.inner.detach_network_interface(attachment_id)
        })
        .await
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        self.call("DeleteNetworkInterface", true, || {
            self.inner.delete_network_interface(eni_id)
        })
        .await
    }

    async fn assign_private_ip_addresses(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        self.call("AssignPrivateIpAddresses", false, || {
            self.inner.assign_private_ip_addresses(eni_id, count)
        })
        .await
    }

    async fn unassign_private_ip_addresses(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> Result<(), Ec2Error> {
        self.call("UnassignPrivateIpAddresses", true, || {
            self.inner.unassign_private_ip_addresses(eni_id, ips)
        })
        .await
    }

    async fn assign_ipv4_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv4Net>, Ec2Error> {
        self.call("AssignPrivateIpAddresses", false, || {
            self.inner.assign_ipv4_prefixes(eni_id, count)
        })
        .await
    }

    async fn assign_ipv6_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv6Net>, Ec2Error> {
        self.call("AssignIpv6Addresses", false, || {
            self.inner.assign_ipv6_prefixes(eni_id, count)
        })
        .await
    }

    async fn unassign_ipv4_prefixes(
        &self,
        eni_id: &str,
        prefixes: &[Ipv4Net],
    ) -> Result<(), Ec2Error> {
        self.call("UnassignPrivateIpAddresses", true, || {
            self.inner.unassign_ipv4_prefixes(eni_id, prefixes)
        })
        .await
    }

    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<(), Ec2Error> {
        self.call("CreateTags", true, || {
            self.inner.create_tags(resource_ids, tags)
        })
        .await
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::testing::fake_ec2::FakeEc2;

    const FAST: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(40),
    };

    fn client() -> (FakeEc2, Ec2Client<FakeEc2>, Registry) {
        let ec2 = FakeEc2::new();
        let mut registry = Registry::default();
        let c = Ec2Client::new(ec2.clone(), &mut registry).with_retry(FAST);
        (ec2, c, registry)
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let p = RetryPolicy::default();
        for _ in 0..50 {
            let b0 = p.backoff(0);
            assert!(
                b0 >= Duration::from_millis(125) && b0 <= Duration::from_millis(250),
                "{b0:?}"
            );
            let b3 = p.backoff(3);
            assert!(
                b3 >= Duration::from_secs(1) && b3 <= Duration::from_secs(2),
                "{b3:?}"
            );
            let b9 = p.backoff(9);
            assert!(
                b9 >= Duration::from_secs(5) && b9 <= Duration::from_secs(10),
                "{b9:?}"
            );
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_every_attempt_counted() {
        let (ec2, c, registry) = client();
        let i = ec2.launch("t3.small");
        ec2.fail_next("DescribeInstances", Ec2ErrorKind::Server, 2);
        assert_eq!(c.describe_instance(&i).await.unwrap().id, i);
        assert_eq!(ec2.calls("DescribeInstances"), 3);
        assert_eq!(c.metrics().requests("DescribeInstances"), 3);
        assert_eq!(c.metrics().errors("DescribeInstances"), 2);
        assert!(
            c.health().failing().is_none(),
            "a success came after the errors"
        );

        // Gives up after max_attempts.
        ec2.fail_always("DescribeInstances", Ec2ErrorKind::Timeout);
        let e = c.describe_instance(&i).await.unwrap_err();
        assert_eq!(e.kind, Ec2ErrorKind::Timeout);
        assert_eq!(ec2.calls("DescribeInstances"), 3 + 4);
        assert_eq!(c.health().failing().unwrap().error, e);
        ec2.heal();

        let text = crate::metrics::encode(&registry).unwrap();
        for line in [
            "# TYPE awscni_ec2api_req_count counter",
            "awscni_ec2api_req_count{fn=\"DescribeInstances\"} 7",
            "awscni_ec2api_error_count{fn=\"DescribeInstances\"} 6",
            "awscni_aws_api_error_count{api=\"DescribeInstances\",error=\"InternalError\"} 2",
            "awscni_aws_api_error_count{api=\"DescribeInstances\",error=\"Timeout\"} 4",
            "awscni_aws_api_latency_ms_count{api=\"DescribeInstances\",error=\"false\",status=\"200\"} 1",
            "awscni_aws_api_latency_ms_count{api=\"DescribeInstances\",error=\"true\",status=\"500\"} 2",
            "# TYPE awscni_aws_api_latency_ms histogram",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("_total"), "{text}");
    }

    #[tokio::test]
    async fn non_idempotent_calls_are_retried_only_when_throttled() {
        let (ec2, c, _r) = client();
        let i = ec2.launch("m5.large");
        let eni = ec2.primary_eni(&i).id;
        ec2.fail_next("AssignPrivateIpAddresses", Ec2ErrorKind::Server, 1);
        let e = c.assign_private_ip_addresses(&eni, 2).await.unwrap_err();
        assert_eq!(e.kind, Ec2ErrorKind::Server);
        assert_eq!(
            ec2.calls("AssignPrivateIpAddresses"),
            1,
            "a 5xx may have assigned: no retry"
        );
        ec2.fail_next("AssignPrivateIpAddresses", Ec2ErrorKind::Throttled, 2);
        assert_eq!(
            c.assign_private_ip_addresses(&eni, 2).await.unwrap().len(),
            2
        );
        assert_eq!(ec2.calls("AssignPrivateIpAddresses"), 4);
        // Errors that a retry cannot fix are returned at once.
        let e = c.assign_private_ip_addresses(&eni, 9).await.unwrap_err();
        assert_eq!(e.kind, Ec2ErrorKind::IpLimitExceeded);
        assert_eq!(ec2.calls("AssignPrivateIpAddresses"), 5);
    }

    #[tokio::test]
    async fn throttling_slows_every_caller_down_together() {
        let (ec2, c, _r) = client();
        let i = ec2.launch("t3.small");
        ec2.fail_always("*", Ec2ErrorKind::Throttled);
        let c = Arc::new(c);
        let t0 = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = Arc::clone(&c);
            let i = i.clone();
            tasks.push(tokio::spawn(async move { c.describe_instance(&i).await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap_err().kind, Ec2ErrorKind::Throttled);
        }
        assert_eq!(ec2.calls("*"), 8 * 4, "bounded attempts per call");
        // The shared gate: after the first throttled answers, callers wait for the gate that
        // the growing streak keeps closing, instead of each retrying on its own schedule.
        let times = ec2.call_times("*");
        assert!(
            t0.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t0.elapsed()
        );
        let bursts = times
            .windows(2)
            .filter(|p| p[1] - p[0] >= Duration::from_millis(5))
            .count();
        assert!(
            bursts >= 3,
            "calls come in gated bursts, not a continuous stream: {times:?}"
        );
        assert!(c.health().failing().unwrap().error.kind == Ec2ErrorKind::Throttled);
    }
}
