//! What the pool manager needs from the node's network namespace: whether an ENI's link is
//! there yet, and bringing a secondary ENI up and down. [`HostNetwork`] is the real one (its
//! netlink work is proven against the kernel in `tests/host_network.rs`); the unit tests of the
//! manager use the EC2 fake's view of the instance's links.

use std::future::Future;

use crate::mac::MacAddr;
use crate::node_network::host::{HostNetwork, HostNetworkError, SecondaryEni};

/// The node's links, as the pool manager uses them.
pub trait EniHost: Send + Sync + 'static {
    /// Whether a link with this MAC exists.
    fn has_link(&self, mac: MacAddr)
    -> impl Future<Output = Result<bool, HostNetworkError>> + Send;

    /// Brings up a secondary ENI (MTU, address, route table, rule 32765).
    fn setup_secondary_eni(
        &self,
        eni: &SecondaryEni,
    ) -> impl Future<Output = Result<(), HostNetworkError>> + Send;

    /// Removes what [`EniHost::setup_secondary_eni`] added, before the ENI is detached.
    fn teardown_secondary_eni(
        &self,
        eni: &SecondaryEni,
    ) -> impl Future<Output = Result<(), HostNetworkError>> + Send;
}

impl EniHost for HostNetwork {
    async fn has_link(&self, mac: MacAddr) -> Result<bool, HostNetworkError> {
        Ok(self.link_by_mac(mac).await?.is_some())
    }

    async fn setup_secondary_eni(&self, eni: &SecondaryEni) -> Result<(), HostNetworkError> {
        HostNetwork::setup_secondary_eni(self, eni)
            .await
            .map(|_| ())
    }

    async fn teardown_secondary_eni(&self, eni: &SecondaryEni) -> Result<(), HostNetworkError> {
        HostNetwork::teardown_secondary_eni(self, eni).await
    }
}
