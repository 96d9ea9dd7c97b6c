//! ipamd's Prometheus metrics: the counter type that keeps the reference's names and the text
//! exposition of the daemon's one registry ([`Counter`], [`encode`]), the pool/request/start-up
//! families ([`IpamdMetrics`]), and the `/metrics` route ([`server`], served by [`crate::http`]).
//!
//! Every component registers its own families into the daemon's single
//! `prometheus_client::registry::Registry`, passed by `&mut` to its constructor
//! (conventions.md #11). Counters that must keep the reference's exact name
//! (`awscni_add_ip_req_count`, `awscni_ec2api_req_count`, ...) use [`Counter`] from here, never
//! `prometheus_client::metrics::counter::Counter`: prometheus-client's encoders append `_total`
//! to every counter name, which would break the dashboards and `cni-metrics-helper` that read
//! the reference's names. The exposition is produced by [`encode`], which is the only place that
//! turns a registry into text.

mod exposition;
pub mod families;
pub mod server;

pub use exposition::{CONTENT_TYPE, Counter, encode};
pub use families::{IpamdMetrics, StartupOutcome};
