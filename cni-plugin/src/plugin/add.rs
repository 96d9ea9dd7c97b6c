//! ADD: check the pod's namespace and interface name, ask ipamd for an address, build the pod's
//! data plane, render the result; any failure after the address was assigned gives it back.

use serde_json::Value;
use tracing::{debug, info, warn};
use vpc_cni_contract::dataplane::{host_veth_name, pod_gateway};

use super::{
    Allocation, allocation_from, current_netns, del_request, ipamd_error, netlink_error,
    open_pod_netns, pod_identity,
};
use crate::cni::config::NetConf;
use crate::cni::env::{Attachment, CNI_NETNS};
use crate::cni::error::CniError;
use crate::cni::result::AddResult;
use crate::ipamd_client::{IpamdClient, REASON_SETUP_FAILED, rpc};
use crate::netlink::{Family, Netlink, format_mac};
use crate::netns::Netns;
use crate::pod_network::{self, PodNetworkError, PodSpec};
use crate::timing;

/// Who the pod is, and where its interface goes.
struct Pod<'a> {
    network: &'a str,
    attachment: &'a Attachment,
    netns_path: &'a str,
    namespace: String,
    name: String,
    host_veth: String,
}

/// The namespaces and netlink sockets ADD works with.
struct Handles {
    host_ns: Netns,
    host: Netlink,
    pod_ns: Netns,
    pod: Netlink,
}

pub(super) async fn add(conf: &NetConf, a: &Attachment) -> Result<Value, CniError> {
    let network = conf.network_name()?;
    let netns_path = a.netns.as_deref().ok_or(CniError::InvalidEnv {
        var: CNI_NETNS,
        reason: "not set (required for ADD)".into(),
    })?;
    let (namespace, name) = pod_identity(a);
    let host_veth = host_veth_name(&conf.veth_prefix, &namespace, &name);
    let pod = Pod {
        network,
        attachment: a,
        netns_path,
        namespace,
        name,
        host_veth,
    };
    let handles = open(&pod).await?;
    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket)
        .await
        .map_err(ipamd_error)?;
    timing::mark("ipamd_connect");
    debug!("connected to ipamd");
    let alloc = request_address(&mut ipamd, &pod).await?;
    match setup(conf, &pod, &handles, &alloc).await {
        Ok(rendered) => Ok(rendered),
        Err(err) => Err(release_after_failure(&mut ipamd, &pod, err).await),
    }
}

/// Opens the namespaces and their netlink sockets, and fails before an address is taken when
/// the pod already has the interface.
async fn open(pod: &Pod<'_>) -> Result<Handles, CniError> {
    let host_ns = current_netns()?;
    let pod_ns = open_pod_netns(pod.netns_path, &host_ns)?;
    timing::mark("netns_open");
    let host = Netlink::current().map_err(netlink_error)?;
    let pod_nl = Netlink::in_netns(&pod_ns).map_err(netlink_error)?;
    timing::mark("netlink_open");
    let ifname = &pod.attachment.ifname;
    if pod_nl
        .link_by_name(ifname)
        .await
        .map_err(netlink_error)?
        .is_some()
    {
        return Err(CniError::InterfaceExists {
            ifname: ifname.clone(),
            netns: pod.netns_path.to_string(),
        });
    }
    timing::mark("ifname_check");
    debug!("validated; asking ipamd for an address");
    Ok(Handles {
        host_ns,
        host,
        pod_ns,
        pod: pod_nl,
    })
}

/// `AddNetwork`, and the address it assigned; an answer this plugin cannot use gives the
/// address back.
async fn request_address(ipamd: &mut IpamdClient, pod: &Pod<'_>) -> Result<Allocation, CniError> {
    let a = pod.attachment;
    let reply = ipamd
        .add_network(rpc::AddNetworkRequest {
            client_version: env!("CARGO_PKG_VERSION").to_string(),
            k8s_pod_name: pod.name.clone(),
            k8s_pod_namespace: pod.namespace.clone(),
            k8s_pod_infra_container_id: a.args.infra_container_id.clone().unwrap_or_default(),
            container_id: a.container_id.clone(),
            if_name: a.ifname.clone(),
            network_name: pod.network.to_string(),
            netns: pod.netns_path.to_string(),
            requires_multi_nic_attachment: false,
        })
        .await
        .map_err(ipamd_error)?;
    timing::mark("add_network_rpc");
    debug!(?reply, "AddNetwork reply");
    let usable = allocation_from(&reply.ip_allocation_metadata, "AddNetwork").and_then(|alloc| {
        if reply.pod_vlan_id == 0 {
            Ok(alloc)
        } else {
            Err(CniError::Ipamd {
                msg: format!(
                    "ipamd assigned a branch ENI (VLAN {}); security groups for pods are not supported by this plugin",
                    reply.pod_vlan_id
                ),
            })
        }
    });
    match usable {
        Ok(alloc) => {
            info!(ip = %alloc.ip, table = alloc.route_table, eni = %reply.eniid, veth = %pod.host_veth, "address assigned");
            Ok(alloc)
        }
        Err(err) => Err(release_after_failure(ipamd, pod, err).await),
    }
}

/// Builds the pod's data plane for the address and renders the result.
async fn setup(
    conf: &NetConf,
    pod: &Pod<'_>,
    h: &Handles,
    alloc: &Allocation,
) -> Result<Value, CniError> {
    let ifname = &pod.attachment.ifname;
    let spec = PodSpec {
        ip: alloc.ip,
        route_table: alloc.route_table,
        host_veth: &pod.host_veth,
        ifname,
        mtu: conf.mtu,
    };
    let outcome = pod_network::setup(&h.host, &h.host_ns, &h.pod, &h.pod_ns, &spec)
        .await
        .map_err(|e| match e {
            PodNetworkError::InterfaceExists { ifname } => CniError::InterfaceExists {
                ifname,
                netns: pod.netns_path.to_string(),
            },
            other => CniError::Setup {
                msg: format!("setting up {} for {}: {other}", pod.host_veth, alloc.ip),
            },
        })?;
    let result = AddResult {
        host_veth: pod.host_veth.clone(),
        host_mac: format_mac(&outcome.host_mac),
        ifname: ifname.clone(),
        container_mac: format_mac(&outcome.container_mac),
        netns: pod.netns_path.to_string(),
        mtu: conf.mtu,
        ip: alloc.ip,
        gateway: pod_gateway(Family::of(alloc.ip)),
    };
    let rendered = result.render(conf.cni_version, conf.prev_result.as_ref());
    timing::mark("result_render");
    Ok(rendered)
}

/// Gives the address back after a failed ADD; a failed release is added to the error text.
async fn release_after_failure(ipamd: &mut IpamdClient, pod: &Pod<'_>, err: CniError) -> CniError {
    warn!(error = %err, "ADD failed; returning the address to ipamd");
    let request = del_request(
        pod.network,
        pod.attachment,
        &pod.namespace,
        &pod.name,
        REASON_SETUP_FAILED,
    );
    match ipamd.del_network(request).await {
        Ok(_) => err,
        Err(rel) => {
            warn!(error = %rel, "releasing the address after a failed ADD failed");
            match err {
                CniError::Setup { msg } => CniError::Setup {
                    msg: format!("{msg} (releasing the address failed too: {rel})"),
                },
                other => other,
            }
        }
    }
}
