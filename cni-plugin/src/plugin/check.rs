//! CHECK (the pod's data plane against the cached result and ipamd's assignment) and STATUS
//! (whether ipamd can serve an ADD now).

use tracing::debug;
use vpc_cni_contract::dataplane::host_veth_name;

use super::{
    allocation_from, check_request, current_netns, ipamd_error, netlink_error, open_pod_netns,
    pod_identity,
};
use crate::cni::config::NetConf;
use crate::cni::env::{Attachment, CNI_NETNS};
use crate::cni::error::CniError;
use crate::ipamd_client::IpamdClient;
use crate::netlink::Netlink;
use crate::pod_network::{self, PodSpec};

pub(super) async fn check(conf: &NetConf, a: &Attachment) -> Result<(), CniError> {
    let network = conf.network_name()?;
    let prev = conf.prev_result.as_ref().ok_or(CniError::InvalidConfig {
        key: "prevResult",
        reason: "CHECK needs the cached ADD result".into(),
    })?;
    let ip = *prev
        .pod_ips(&a.ifname)
        .first()
        .ok_or_else(|| CniError::InvalidConfig {
            key: "prevResult",
            reason: format!("has no address for interface {}", a.ifname),
        })?;
    let netns_path = a.netns.as_deref().ok_or(CniError::InvalidEnv {
        var: CNI_NETNS,
        reason: "not set (required for CHECK)".into(),
    })?;
    let host_ns = current_netns()?;
    let pod_ns = open_pod_netns(netns_path, &host_ns)?;

    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket)
        .await
        .map_err(ipamd_error)?;
    let reply = match ipamd.check_network(check_request(network, a)).await {
        Ok(r) => r,
        Err(e) if e.is_not_found() => {
            return Err(CniError::CheckIpam {
                msg: format!(
                    "ipamd has no assignment for ({network}, {}, {}); the cached result has {ip}",
                    a.container_id, a.ifname
                ),
            });
        }
        Err(e) => return Err(ipamd_error(e)),
    };
    let alloc = allocation_from(&reply.ip_allocation_metadata, "CheckNetwork")?;
    if alloc.ip != ip {
        return Err(CniError::CheckIpam {
            msg: format!("ipamd assigned {} but the cached result has {ip}", alloc.ip),
        });
    }

    let (pod_namespace, pod_name) = pod_identity(a);
    let host_veth = host_veth_name(&conf.veth_prefix, &pod_namespace, &pod_name);
    let host = Netlink::current().map_err(netlink_error)?;
    let pod = Netlink::in_netns(&pod_ns).map_err(netlink_error)?;
    let spec = PodSpec {
        ip,
        route_table: alloc.route_table,
        host_veth: &host_veth,
        ifname: &a.ifname,
        mtu: conf.mtu,
    };
    let differences = pod_network::check(&host, &pod, &spec)
        .await
        .map_err(netlink_error)?;
    if differences.is_empty() {
        Ok(())
    } else {
        Err(CniError::CheckDataPlane { differences })
    }
}

pub(super) async fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |msg: String| CniError::Unavailable { msg };
    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let s = ipamd
        .pool_status()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if !s.ready {
        return Err(unavailable(format!(
            "ipamd is not ready{}",
            if s.message.is_empty() {
                String::new()
            } else {
                format!(": {}", s.message)
            }
        )));
    }
    if s.assignable_i_ps == 0 {
        return Err(unavailable(format!(
            "no assignable IP address ({} total, {} assigned, {} cooling down){}",
            s.total_i_ps,
            s.assigned_i_ps,
            s.cooldown_i_ps,
            if s.message.is_empty() {
                String::new()
            } else {
                format!(": {}", s.message)
            }
        )));
    }
    debug!(
        assignable = s.assignable_i_ps,
        total = s.total_i_ps,
        "ready"
    );
    Ok(())
}
