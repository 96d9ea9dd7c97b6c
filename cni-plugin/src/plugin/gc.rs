//! GC (CNI 1.1.0): ipamd releases every assignment of the network that is not in the runtime's
//! list of valid attachments; the plugin removes the host's routing state of what was released.

use tracing::info;

use super::{allocated_addresses, ipamd_error, netlink_error};
use crate::cni::config::{GcAttachment, NetConf, VALID_ATTACHMENTS_KEY};
use crate::cni::error::CniError;
use crate::ipamd_client::{IpamdClient, rpc};
use crate::netlink::Netlink;
use crate::pod_network;

pub(super) async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let network = conf.network_name()?;
    let valid: &[GcAttachment] =
        conf.valid_attachments
            .as_deref()
            .ok_or(CniError::InvalidConfig {
                key: VALID_ATTACHMENTS_KEY,
                reason: "GC needs the list of valid attachments".into(),
            })?;
    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket)
        .await
        .map_err(ipamd_error)?;
    let reply = ipamd
        .garbage_collect(rpc::GarbageCollectRequest {
            client_version: env!("CARGO_PKG_VERSION").to_string(),
            network_name: network.to_string(),
            valid_attachments: valid
                .iter()
                .map(|v| rpc::Attachment {
                    container_id: v.container_id.clone(),
                    if_name: v.ifname.clone(),
                })
                .collect(),
        })
        .await
        .map_err(ipamd_error)?;
    let mut errors = Vec::new();
    let ips = allocated_addresses(&reply.released, |e| {
        errors.push(format!("ipamd released {e}"));
    });
    info!(released = ?ips, kept = valid.len(), "garbage collected");
    let host = Netlink::current().map_err(netlink_error)?;
    errors.extend(pod_network::teardown_released(&host, &ips).await);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::Teardown { errors })
    }
}
