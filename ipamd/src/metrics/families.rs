//! The metric families ipamd itself owns (the EC2 client registers its own): pool gauges,
//! request and reconcile counters, and the start-up duration, with the reference's names,
//! help texts, types and labels (vpc-cni.md §3.10, `utils/prometheusmetrics`).
//!
//! The pool gauges are set from the datastore at scrape time ([`IpamdMetrics::observe_pool`]),
//! so they are always what the pool is, never a count that drifted.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::exposition::Counter;
use crate::datastore::{Datastore, Stats};
use crate::state::{NodeLimits, SubnetReport};

/// The Go client's default histogram buckets, which the reference's start-up histogram uses.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `fn` label of `awscni_ipamd_error_count` and `awscni_reconcile_count`: the reference's
/// function name (`eniReconcileAdd`, `nodeInit`, ...). Encoded by hand because `fn` is a Rust
/// keyword and cannot be a derived field name.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct FnLabel(pub String);

impl FnLabel {
    /// The label for `name`.
    pub fn new(name: &str) -> Self {
        Self(name.to_owned())
    }
}

impl EncodeLabelSet for FnLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("fn", self.0.as_str()).encode(encoder.encode_label())
    }
}

/// `reason` label of `awscni_del_ip_req_count` (`PodDeleted`, `SetupNSFailed`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The plugin's `Reason`.
    pub reason: String,
}

/// `eni` label of `awscni_assigned_ip_per_eni`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EniLabel {
    /// ENI id.
    pub eni: String,
}

/// `cidr` label of `awscni_assigned_ip_per_cidr`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CidrLabel {
    /// `a.b.c.d/32` for a secondary IP, `a.b.c.d/28` for a delegated prefix.
    pub cidr: String,
}

/// `subnet_id` label of the subnet gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubnetLabel {
    /// `subnet-…`.
    pub subnet_id: String,
}

/// Labels of `awscni_ipamd_startup_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartupLabels {
    /// `true` or `false`.
    pub success: String,
    /// `true` when start-up needed the Kubernetes API server (never, in this build).
    pub with_api_server: String,
    /// Empty on success.
    pub failure_reason: String,
}

/// How start-up ended, for `awscni_ipamd_startup_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupOutcome {
    /// Ready to serve CNI requests.
    Ready,
    /// Gave up; the text is the label value (a short reason, e.g. `checkpoint`).
    Failed(String),
}

/// A gauge that is only exposed once it has a value (e.g. `awscni_eni_max`, which is unknown
/// in instance-metadata-only mode: no series is better than a false 0).
#[derive(Debug, Clone, Default)]
pub struct OptionalGauge {
    value: std::sync::Arc<std::sync::Mutex<Option<i64>>>,
}

impl OptionalGauge {
    /// Sets or clears the value.
    pub fn set(&self, v: Option<i64>) {
        *self
            .value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = v;
    }

    /// The value.
    pub fn get(&self) -> Option<i64> {
        *self
            .value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TypedMetric for OptionalGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for OptionalGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.get() {
            Some(v) => encoder.encode_gauge(&v),
            None => Ok(()),
        }
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }

    fn is_empty(&self) -> bool {
        self.get().is_none()
    }
}

fn histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// What the pool gauges show, read from the datastore under its lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Counts.
    pub stats: Stats,
    /// (ENI id, assigned IPs).
    pub per_eni: Vec<(String, usize)>,
    /// (`ip/32`, 1 if assigned else 0) for every secondary IP; (`prefix/28`, assigned
    /// addresses) for every prefix, as in the reference.
    pub per_cidr: Vec<(String, usize)>,
    /// Delegated prefixes in the pool.
    pub prefixes: usize,
    /// Instance limits, when known.
    pub limits: Option<NodeLimits>,
}

impl PoolSnapshot {
    /// Reads the datastore (expiring finished cooldowns first).
    pub fn capture(ds: &mut Datastore, limits: Option<NodeLimits>) -> Self {
        let stats = ds.stats();
        let enis = ds.enis();
        let mut per_eni = Vec::with_capacity(enis.len());
        let mut per_cidr = Vec::with_capacity(stats.total);
        let mut prefixes = 0;
        for eni in enis {
            for (ip, holder) in ds.eni_secondary_addresses(&eni.spec.id) {
                per_cidr.push((format!("{ip}/32"), usize::from(holder.is_some())));
            }
            for p in &eni.prefixes {
                per_cidr.push((p.prefix.to_string(), p.assigned));
            }
            prefixes += eni.prefixes.len();
            per_eni.push((eni.spec.id, eni.assigned));
        }
        Self {
            stats,
            per_eni,
            per_cidr,
            prefixes,
            limits,
        }
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// ipamd's own metric families, registered into the daemon's registry. Clones share the
/// values, so each component keeps the handles it updates.
#[derive(Debug, Clone)]
pub struct IpamdMetrics {
    /// `awscni_add_ip_req_count`: AddNetwork requests.
    pub add_ip_req: Counter,
    /// `awscni_del_ip_req_count{reason}`: DelNetwork requests.
    pub del_ip_req: Family<ReasonLabel, Counter>,
    /// `awscni_no_available_ip_addresses`: assignments that failed for want of an address.
    pub no_available_ip: Counter,
    /// `awscni_reconcile_count{fn}`: ENIs/IPs added or removed by reconciling with metadata.
    pub reconcile: Family<FnLabel, Counter>,
    /// `awscni_ipamd_error_count{fn}`: errors, by where they happened.
    pub ipamd_errors: Family<FnLabel, Counter>,
    /// `awscni_force_removed_ips`: IPs removed while a pod held them.
    pub force_removed_ips: Counter,
    /// `awscni_force_removed_enis`: ENIs removed while pods held addresses on them.
    pub force_removed_enis: Counter,
    /// `awscni_prefix_fallback_ips` (ours): secondary IPs asked for instead of prefixes.
    pub prefix_fallback_ips: Counter,
    /// `awscni_ipamd_startup_duration_seconds{success,with_api_server,failure_reason}`.
    pub startup_duration: Family<StartupLabels, Histogram, fn() -> Histogram>,
    eni_allocated: Gauge,
    total_ips: Gauge,
    total_prefixes: Gauge,
    assigned_ips: Gauge,
    eni_max: OptionalGauge,
    ip_max: OptionalGauge,
    assigned_per_eni: Family<EniLabel, Gauge>,
    assigned_per_cidr: Family<CidrLabel, Gauge>,
    subnet_available: Family<SubnetLabel, Gauge>,
    subnet_low: Family<SubnetLabel, Gauge>,
}

impl IpamdMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            add_ip_req: Counter::default(),
            del_ip_req: Family::default(),
            no_available_ip: Counter::default(),
            reconcile: Family::default(),
            ipamd_errors: Family::default(),
            force_removed_ips: Counter::default(),
            force_removed_enis: Counter::default(),
            prefix_fallback_ips: Counter::default(),
            startup_duration: Family::new_with_constructor(histogram),
            eni_allocated: Gauge::default(),
            total_ips: Gauge::default(),
            total_prefixes: Gauge::default(),
            assigned_ips: Gauge::default(),
            eni_max: OptionalGauge::default(),
            ip_max: OptionalGauge::default(),
            assigned_per_eni: Family::default(),
            assigned_per_cidr: Family::default(),
            subnet_available: Family::default(),
            subnet_low: Family::default(),
        };
        registry.register(
            "awscni_ipamd_error_count",
            "The number of errors encountered in ipamd",
            m.ipamd_errors.clone(),
        );
        registry.register(
            "awscni_eni_max",
            "The maximum number of ENIs that can be attached to the instance, accounting for unmanaged ENIs",
            m.eni_max.clone(),
        );
        registry.register(
            "awscni_ip_max",
            "The maximum number of IP addresses that can be allocated to the instance",
            m.ip_max.clone(),
        );
        registry.register(
            "awscni_reconcile_count",
            "The number of times ipamd reconciles on ENIs and IP/Prefix addresses",
            m.reconcile.clone(),
        );
        registry.register(
            "awscni_add_ip_req_count",
            "The number of add IP address requests",
            m.add_ip_req.clone(),
        );
        registry.register(
            "awscni_del_ip_req_count",
            "The number of delete IP address requests",
            m.del_ip_req.clone(),
        );
        registry.register(
            "awscni_eni_allocated",
            "The number of ENIs allocated",
            m.eni_allocated.clone(),
        );
        registry.register(
            "awscni_total_ip_addresses",
            "The total number of IP addresses",
            m.total_ips.clone(),
        );
        registry.register(
            "awscni_assigned_ip_addresses",
            "The number of IP addresses assigned to pods",
            m.assigned_ips.clone(),
        );
        registry.register(
            "awscni_force_removed_enis",
            "The number of ENIs force removed while they had assigned pods",
            m.force_removed_enis.clone(),
        );
        registry.register(
            "awscni_force_removed_ips",
            "The number of IPs force removed while they had assigned pods",
            m.force_removed_ips.clone(),
        );
        registry.register(
            "awscni_total_ipv4_prefixes",
            "The total number of IPv4 prefixes",
            m.total_prefixes.clone(),
        );
        registry.register(
            "awscni_prefix_fallback_ips",
            "Secondary IPs ipamd asked EC2 for instead of prefixes because the subnet had no free aligned /28 (InsufficientCidrBlocks)",
            m.prefix_fallback_ips.clone(),
        );
        registry.register(
            "awscni_assigned_ip_per_cidr",
            "The total number of IP addresses assigned per cidr",
            m.assigned_per_cidr.clone(),
        );
        registry.register(
            "awscni_no_available_ip_addresses",
            "The number of pod IP assignments that fail due to no available IP addresses",
            m.no_available_ip.clone(),
        );
        registry.register(
            "awscni_assigned_ip_per_eni",
            "The number of allocated ips partitioned by eni",
            m.assigned_per_eni.clone(),
        );
        registry.register(
            "awscni_subnet_available_ips",
            "Free addresses (AvailableIpAddressCount) of each subnet new ENIs may go into",
            m.subnet_available.clone(),
        );
        registry.register(
            "awscni_subnet_low_ips",
            "1 when a subnet new ENIs may go into has fewer free addresses than one more node of this instance type takes for its warm pool",
            m.subnet_low.clone(),
        );
        registry.register(
            "awscni_ipamd_startup_duration_seconds",
            "The duration of IPAMD startup from process start to ready to serve CNI requests",
            m.startup_duration.clone(),
        );
        m
    }

    /// Counts one error at `site` (`awscni_ipamd_error_count{fn=site}`).
    pub fn error(&self, site: &str) {
        self.ipamd_errors.get_or_create(&FnLabel::new(site)).inc();
    }

    /// Counts `n` secondary IPs asked for instead of prefixes (a fragmented subnet).
    pub fn prefix_fallback(&self, n: u32) {
        self.prefix_fallback_ips.inc_by(u64::from(n));
    }

    /// Adds `n` to `awscni_reconcile_count{fn=site}` (no series is created for 0).
    pub fn reconciled(&self, site: &str, n: usize) {
        if n > 0 {
            self.reconcile
                .get_or_create(&FnLabel::new(site))
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    /// Counts one DelNetwork request with the plugin's reason (empty reasons as `PodDeleted`,
    /// the reference plugin's default).
    pub fn del_request(&self, reason: &str) {
        let reason = if reason.is_empty() {
            "PodDeleted"
        } else {
            reason
        };
        self.del_ip_req
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records how long start-up took, once.
    pub fn startup(&self, took: Duration, outcome: &StartupOutcome) {
        let (success, reason) = match outcome {
            StartupOutcome::Ready => ("true", String::new()),
            StartupOutcome::Failed(r) => ("false", r.clone()),
        };
        self.startup_duration
            .get_or_create(&StartupLabels {
                success: success.into(),
                with_api_server: "false".into(),
                failure_reason: reason,
            })
            .observe(took.as_secs_f64());
    }

    /// Sets the subnet gauges to `subnets` (subnets no longer candidates lose their series).
    pub fn observe_subnets(&self, subnets: &[SubnetReport]) {
        self.subnet_available.clear();
        self.subnet_low.clear();
        for s in subnets {
            let label = SubnetLabel {
                subnet_id: s.id.clone(),
            };
            self.subnet_available
                .get_or_create(&label)
                .set(i64::from(s.available_ips));
            self.subnet_low.get_or_create(&label).set(i64::from(s.low));
        }
    }

    /// Sets the pool gauges to `snapshot`.
    pub fn observe_pool(&self, snapshot: &PoolSnapshot) {
        self.eni_allocated.set(gauge_value(snapshot.stats.enis));
        self.total_ips.set(gauge_value(snapshot.stats.total));
        self.total_prefixes.set(gauge_value(snapshot.prefixes));
        self.assigned_ips.set(gauge_value(snapshot.stats.assigned));
        self.eni_max
            .set(snapshot.limits.map(|l| i64::from(l.max_enis)));
        self.ip_max.set(
            snapshot
                .limits
                .map(|l| i64::from(l.max_enis) * i64::from(l.ips_per_eni)),
        );
        self.assigned_per_eni.clear();
        for (eni, n) in &snapshot.per_eni {
            self.assigned_per_eni
                .get_or_create(&EniLabel { eni: eni.clone() })
                .set(gauge_value(*n));
        }
        self.assigned_per_cidr.clear();
        for (cidr, n) in &snapshot.per_cidr {
            self.assigned_per_cidr
                .get_or_create(&CidrLabel { cidr: cidr.clone() })
                .set(gauge_value(*n));
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::datastore::PodMetadata;
    use crate::metrics::exposition::encode;
    use crate::testing::pools::{key, two_enis};

    fn lines(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn pool_gauges_follow_the_datastore() {
        let mut registry = Registry::default();
        let m = IpamdMetrics::new(&mut registry);
        let mut ds = two_enis();
        ds.assign(&key("a"), PodMetadata::default()).unwrap();
        ds.assign(&key("b"), PodMetadata::default()).unwrap();
        ds.assign(&key("c"), PodMetadata::default()).unwrap();
        ds.release(&key("b")).unwrap();
        m.observe_pool(&PoolSnapshot::capture(&mut ds, None));
        let text = encode(&registry).unwrap();
        assert_eq!(
            lines(&text, "awscni_eni_allocated "),
            ["awscni_eni_allocated 2"]
        );
        assert_eq!(
            lines(&text, "awscni_total_ip_addresses "),
            ["awscni_total_ip_addresses 4"]
        );
        assert_eq!(
            lines(&text, "awscni_assigned_ip_addresses "),
            ["awscni_assigned_ip_addresses 2"]
        );
        let mut per_eni = lines(&text, "awscni_assigned_ip_per_eni{");
        per_eni.sort();
        assert_eq!(
            per_eni,
            [
                "awscni_assigned_ip_per_eni{eni=\"eni-a\"} 1",
                "awscni_assigned_ip_per_eni{eni=\"eni-b\"} 1"
            ]
        );
        let mut per_cidr = lines(&text, "awscni_assigned_ip_per_cidr{");
        per_cidr.sort();
        assert_eq!(
            per_cidr,
            [
                "awscni_assigned_ip_per_cidr{cidr=\"10.0.0.11/32\"} 1",
                "awscni_assigned_ip_per_cidr{cidr=\"10.0.0.12/32\"} 0",
                "awscni_assigned_ip_per_cidr{cidr=\"10.0.0.21/32\"} 1",
                "awscni_assigned_ip_per_cidr{cidr=\"10.0.0.22/32\"} 0"
            ]
        );
        assert!(
            !text.contains("awscni_eni_max"),
            "unknown limits are not exposed:\n{text}"
        );
        assert!(!text.contains("awscni_ip_max"), "{text}");

        // An ENI that vanished loses its series; limits appear once known.
        ds.release(&key("c")).unwrap();
        ds.remove_eni("eni-b").unwrap();
        let limits = NodeLimits {
            max_enis: 3,
            ips_per_eni: 9,
            max_pods: 29,
        };
        m.observe_pool(&PoolSnapshot::capture(&mut ds, Some(limits)));
        let text = encode(&registry).unwrap();
        assert_eq!(lines(&text, "awscni_eni_max "), ["awscni_eni_max 3"]);
        assert_eq!(lines(&text, "awscni_ip_max "), ["awscni_ip_max 27"]);
        assert!(text.contains("# TYPE awscni_eni_max gauge\n"), "{text}");
        assert_eq!(
            lines(&text, "awscni_assigned_ip_addresses "),
            ["awscni_assigned_ip_addresses 1"]
        );
        assert_eq!(
            lines(&text, "awscni_assigned_ip_per_eni{"),
            ["awscni_assigned_ip_per_eni{eni=\"eni-a\"} 1"]
        );
        assert_eq!(lines(&text, "awscni_assigned_ip_per_cidr{").len(), 2);
    }

    #[test]
    fn counters_and_startup_histogram_use_the_reference_labels() {
        let mut registry = Registry::default();
        let m = IpamdMetrics::new(&mut registry);
        m.add_ip_req.inc();
        m.del_request("");
        m.del_request("SetupNSFailed");
        m.del_request("PodDeleted");
        m.no_available_ip.inc();
        m.reconciled("eniDataStorePoolReconcileAdd", 2);
        m.reconciled("eniIPPoolReconcileDel", 0);
        m.error("nodeInit");
        m.startup(Duration::from_millis(300), &StartupOutcome::Ready);
        let text = encode(&registry).unwrap();
        for want in [
            "# TYPE awscni_add_ip_req_count counter",
            "awscni_add_ip_req_count 1",
            "awscni_del_ip_req_count{reason=\"PodDeleted\"} 2",
            "awscni_del_ip_req_count{reason=\"SetupNSFailed\"} 1",
            "awscni_no_available_ip_addresses 1",
            "awscni_reconcile_count{fn=\"eniDataStorePoolReconcileAdd\"} 2",
            "awscni_ipamd_error_count{fn=\"nodeInit\"} 1",
            "awscni_force_removed_ips 0",
            "awscni_force_removed_enis 0",
            "# TYPE awscni_ipamd_startup_duration_seconds histogram",
            "awscni_ipamd_startup_duration_seconds_bucket{success=\"true\",with_api_server=\"false\",failure_reason=\"\",le=\"0.25\"} 0",
            "awscni_ipamd_startup_duration_seconds_bucket{success=\"true\",with_api_server=\"false\",failure_reason=\"\",le=\"0.5\"} 1",
            "awscni_ipamd_startup_duration_seconds_count{success=\"true\",with_api_server=\"false\",failure_reason=\"\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
        assert!(!text.contains("eniIPPoolReconcileDel"), "{text}");
        assert!(
            !text.contains("_total ") && !text.contains("_total{"),
            "no counter gets the _total suffix:\n{text}"
        );
    }
}
