//! `GET /metrics` on `:61678` (all addresses, as the reference: the DaemonSet is hostNetwork and
//! Prometheus scrapes the node), `DISABLE_METRICS=true` turns it off. The pool gauges are read
//! from the datastore on every scrape, then the whole registry is encoded.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::registry::Registry;

use super::exposition::{CONTENT_TYPE, encode};
use super::families::{IpamdMetrics, PoolSnapshot};
use crate::state::IpamState;

/// The reference's metrics port.
pub const METRICS_PORT: u16 = 61678;

/// Where `/metrics` listens: every IPv4 address of the node, port 61678.
pub const METRICS_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), METRICS_PORT);

/// Everything a scrape reads.
#[derive(Debug, Clone)]
pub struct Scrape {
    registry: Arc<Registry>,
    metrics: IpamdMetrics,
    state: Arc<IpamState>,
    // One scrape at a time: the pool gauges are reset and refilled before encoding.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Scrape {
    /// Serves `registry`, refreshing `metrics`' pool gauges from `state` first.
    pub fn new(registry: Arc<Registry>, metrics: IpamdMetrics, state: Arc<IpamState>) -> Self {
        Self {
            registry,
            metrics,
            state,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The exposition text, as of now.
    ///
    /// # Errors
    /// A metric could not be encoded.
    pub async fn render(&self) -> Result<String, std::fmt::Error> {
        let _one_at_a_time = self.lock.lock().await;
        let limits = self.state.node_report().limits;
        let snapshot = self
            .state
            .with_datastore(|ds| PoolSnapshot::capture(ds, limits))
            .await;
        self.metrics.observe_pool(&snapshot);
        encode(&self.registry)
    }
}

/// The `/metrics` router.
pub fn router(scrape: Scrape) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let scrape = scrape.clone();
            async move {
                match scrape.render().await {
                    Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode metrics");
                        (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
                            .into_response()
                    }
                }
            }
        }),
    )
}
