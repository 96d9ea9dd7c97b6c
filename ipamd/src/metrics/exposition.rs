//! The counter type that keeps the reference's metric names ([`Counter`]: no `_total` suffix)
//! and the text exposition of a registry ([`encode`]), which types those counters `counter`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// `Content-Type` of the exposition: the Prometheus text format 0.0.4, as the reference's Go
/// client serves it.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A monotonic counter exposed under exactly the name it is registered with (no `_total`
/// suffix) and with `# TYPE <name> counter`, like the reference's Go counters.
///
/// Register it with `Registry::register` (alone or inside a
/// `prometheus_client::metrics::family::Family`) and serve the registry with [`encode`].
/// Clones share the value.
///
/// How: prometheus-client appends `_total` to anything of type `Counter`, so this type
/// declares itself `Unknown` to the encoder (no suffix is added, the encoder writes `untyped`)
/// and [`encode`] writes `counter` in its `# TYPE` line. Nothing else in prometheus-client is
/// `Unknown`, so the rewrite touches only these families.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    value: Arc<AtomicU64>,
}

impl Counter {
    /// Adds one; returns the value before.
    pub fn inc(&self) -> u64 {
        self.value.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds `n`; returns the value before.
    pub fn inc_by(&self, n: u64) -> u64 {
        self.value.fetch_add(n, Ordering::Relaxed)
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // `encode_gauge` writes `<name>{labels} <value>` with no suffix in both text encoders.
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The registry as Prometheus text 0.0.4 ([`CONTENT_TYPE`]), with every [`Counter`] family
/// typed `counter` under its registered name.
///
/// # Errors
/// A metric failed to encode (prometheus-client reports only `std::fmt::Error`).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut raw = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut raw, registry)?;
    let mut out = String::with_capacity(raw.len());
    for line in raw.split_inclusive('\n') {
        match line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" untyped\n"))
        {
            Some(name) => {
                out.push_str("# TYPE ");
                out.push_str(name);
                out.push_str(" counter\n");
            }
            None => out.push_str(line),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Reason {
        reason: String,
    }

    #[test]
    fn counters_keep_the_reference_name_and_type() {
        let mut registry = Registry::default();
        let adds = Counter::default();
        registry.register(
            "awscni_add_ip_req_count",
            "The number of add IP address requests",
            adds.clone(),
        );
        let dels = Family::<Reason, Counter>::default();
        registry.register(
            "awscni_del_ip_req_count",
            "The number of delete IP address requests",
            dels.clone(),
        );
        let enis = Gauge::<i64>::default();
        registry.register(
            "awscni_eni_allocated",
            "The number of ENIs allocated",
            enis.clone(),
        );
        adds.inc();
        adds.inc_by(2);
        dels.get_or_create(&Reason {
            reason: "PodDeleted".into(),
        })
        .inc();
        enis.set(2);
        assert_eq!(adds.get(), 3);
        assert_eq!(
            encode(&registry).unwrap(),
            "# HELP awscni_add_ip_req_count The number of add IP address requests.\n\
             # TYPE awscni_add_ip_req_count counter\n\
             awscni_add_ip_req_count 3\n\
             # HELP awscni_del_ip_req_count The number of delete IP address requests.\n\
             # TYPE awscni_del_ip_req_count counter\n\
             awscni_del_ip_req_count{reason=\"PodDeleted\"} 1\n\
             # HELP awscni_eni_allocated The number of ENIs allocated.\n\
             # TYPE awscni_eni_allocated gauge\n\
             awscni_eni_allocated 2\n"
        );
    }

    #[test]
    fn clones_share_the_value() {
        let a = Counter::default();
        let b = a.clone();
        a.inc();
        b.inc_by(4);
        assert_eq!(a.get(), 5);
    }

    #[test]
    fn library_counters_keep_their_suffix() {
        // A prometheus-client counter is left alone: only this module's Counter loses `_total`.
        let mut registry = Registry::default();
        let c = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register(
            "awscni_connmark_reconcile",
            "Connmark reconciles",
            c.clone(),
        );
        c.inc();
        let text = encode(&registry).unwrap();
        assert!(
            text.contains("# TYPE awscni_connmark_reconcile_total counter\n")
                && text.contains("awscni_connmark_reconcile_total 1\n"),
            "{text}"
        );
    }
}
