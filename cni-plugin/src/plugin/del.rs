//! DEL: find what the pod was given (the cached result, else ipamd, else the pod's own
//! interface), remove the host's routing state of it and the address from the pod, and only
//! then release the address to ipamd. The veth pair stays for the runtime's removal of the
//! namespace (docs/contracts.md, DEL). Every step carries on after a failure and reports them all.

use std::net::IpAddr;

use tracing::{debug, info, warn};
use vpc_cni_contract::dataplane::host_veth_name;

use super::{
    allocated_addresses, check_request, current_netns, del_request, netlink_error, pod_identity,
};
use crate::cni::config::NetConf;
use crate::cni::env::Attachment;
use crate::cni::error::CniError;
use crate::ipamd_client::{IpamdClient, REASON_POD_DELETED};
use crate::netlink::{Netlink, parse_mac};
use crate::netns::Netns;
use crate::pod_network::{self, HostVethRef};
use crate::timing;

/// What DEL tears down: the pod's addresses, its host veth(s) with their MACs when known (the
/// ownership check), and the container interface's MAC.
#[derive(Debug, Default)]
struct Targets {
    ips: Vec<IpAddr>,
    veths: Vec<HostVethRef>,
    container_mac: Option<[u8; 6]>,
}

pub(super) async fn del(conf: &NetConf, a: &Attachment) -> Result<(), CniError> {
    let network = conf.network_name()?;
    let (pod_namespace, pod_name) = pod_identity(a);
    let mut t = from_prev_result(conf, a, &pod_namespace, &pod_name);
    let host_ns = current_netns()?;
    let pod_ns = open_pod_netns(a, &host_ns);
    timing::mark("netns_open");
    let mut ipamd = match IpamdClient::connect(&conf.ipamd_socket).await {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "ipamd unreachable; cleaning up from prevResult only");
            None
        }
    };
    timing::mark("ipamd_connect");
    if t.ips.is_empty()
        && let Some(client) = ipamd.as_mut()
    {
        t.ips = addresses_from_ipamd(client, network, a).await;
    }
    let mut errors = Vec::new();
    let mut pod_nl = None;
    if t.ips.is_empty()
        && let Some(ns) = &pod_ns
    {
        if !conf.cni_version.del_has_prev_result() {
            debug!(version = %conf.cni_version, "no prevResult on DEL in this version");
        }
        pod_nl = read_pod_side(ns, &a.ifname, &mut t, &mut errors).await;
    }
    info!(ips = ?t.ips, veths = ?t.veths, "tearing down");
    errors.extend(teardown(a, &t, pod_ns.as_ref(), pod_nl).await?);

    // Release only once the host no longer routes the address and the pod no longer holds it:
    // a pod that gets it next (IP_COOLDOWN_PERIOD=0) must never have its fresh rules removed
    // by this DEL, nor share the address with this sandbox.
    if !errors.is_empty() {
        errors
            .push("the address was not released to ipamd because the pod's cleanup failed".into());
    } else if let Some(client) = ipamd.as_mut() {
        let request = del_request(network, a, &pod_namespace, &pod_name, REASON_POD_DELETED);
        if let Err(e) = release(client, request, &t.ips).await {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::Teardown { errors })
    }
}

/// The host veth named from the pod, and what the cached ADD result says.
fn from_prev_result(
    conf: &NetConf,
    a: &Attachment,
    pod_namespace: &str,
    pod_name: &str,
) -> Targets {
    let mut t = Targets {
        veths: vec![HostVethRef {
            name: host_veth_name(&conf.veth_prefix, pod_namespace, pod_name),
            mac: None,
        }],
        ..Targets::default()
    };
    let Some(prev) = &conf.prev_result else {
        return t;
    };
    t.ips = prev.pod_ips(&a.ifname);
    t.container_mac = prev
        .container_interface(&a.ifname)
        .and_then(|i| i.mac.as_deref())
        .and_then(parse_mac);
    for i in prev.host_interfaces() {
        if !i.name.starts_with(&conf.veth_prefix) {
            continue;
        }
        let mac = i.mac.as_deref().and_then(parse_mac);
        match t.veths.iter_mut().find(|v| v.name == i.name) {
            Some(v) => v.mac = v.mac.or(mac),
            None => t.veths.push(HostVethRef {
                name: i.name.clone(),
                mac,
            }),
        }
    }
    t
}

/// The pod's namespace when it can still be used (absent, unusable or the plugin's own: the
/// host side is cleaned alone).
fn open_pod_netns(a: &Attachment, host_ns: &Netns) -> Option<Netns> {
    let path = a.netns.as_deref()?;
    match Netns::open(path) {
        Ok(ns) if ns.same_as(host_ns).unwrap_or(true) => {
            warn!(
                netns = path,
                "CNI_NETNS is the plugin's own namespace; pod side skipped"
            );
            None
        }
        Ok(ns) => Some(ns),
        Err(e) => {
            info!(netns = path, error = %e, "pod namespace unusable; only the host side is cleaned");
            None
        }
    }
}

/// The addresses ipamd holds for the attachment (`CheckNetwork`), when the cached result named
/// none.
async fn addresses_from_ipamd(
    client: &mut IpamdClient,
    network: &str,
    a: &Attachment,
) -> Vec<IpAddr> {
    let ips = match client.check_network(check_request(network, a)).await {
        Ok(reply) => allocated_addresses(&reply.ip_allocation_metadata, |e| {
            warn!("CheckNetwork returned {e}; skipped");
        }),
        Err(e) if e.is_not_found() => {
            debug!("ipamd has no assignment for this attachment");
            Vec::new()
        }
        Err(e) => {
            warn!(error = %e, "CheckNetwork failed; tearing down by name only");
            Vec::new()
        }
    };
    timing::mark("check_network_rpc");
    ips
}

/// Neither a cached result (runtimes send none on DEL before 0.4.0) nor ipamd named the
/// address: the pod's own interface does, and its gateway neighbour gives the host veth's MAC,
/// which keeps the ownership check prevResult's MAC gives (docs/contracts.md, DEL). Without the
/// namespace nothing of this sandbox can be told apart: its veth pair and host route went with
/// the namespace, and a veth of the pod's name is a later sandbox's. Returns the pod's netlink
/// socket for the teardown.
async fn read_pod_side(
    ns: &Netns,
    ifname: &str,
    t: &mut Targets,
    errors: &mut Vec<String>,
) -> Option<Netlink> {
    let pod = match Netlink::in_netns(ns) {
        Ok(pod) => pod,
        Err(e) => {
            info!(error = %e, "pod namespace not enterable; pod side skipped");
            timing::mark("pod_side_read");
            return None;
        }
    };
    match pod_network::read_pod_side(&pod, ifname).await {
        Ok(Some(side)) => {
            info!(ips = ?side.ips, "addresses taken from the pod's interface");
            t.ips = side.ips;
            t.container_mac = side.mac;
            if let (Some(mac), Some(v)) = (side.host_veth_mac, t.veths.first_mut()) {
                v.mac = Some(mac);
            }
        }
        Ok(None) => debug!("the pod has no such interface; nothing of it is left"),
        Err(e) => errors.push(format!("reading {ifname} in the pod namespace: {e}")),
    }
    timing::mark("pod_side_read");
    Some(pod)
}

/// The host's routing state of the pod first, then its addresses in the pod. Returns what
/// failed; only the host's netlink socket itself failing is an error of its own.
async fn teardown(
    a: &Attachment,
    t: &Targets,
    pod_ns: Option<&Netns>,
    pod_nl: Option<Netlink>,
) -> Result<Vec<String>, CniError> {
    let host = Netlink::current().map_err(netlink_error)?;
    timing::mark("netlink_open");
    let mut errors = pod_network::teardown_host(&host, &t.ips, &t.veths).await;
    if let Some(ns) = pod_ns
        && !t.ips.is_empty()
    {
        let pod = match pod_nl {
            Some(p) => Ok(p),
            None => Netlink::in_netns(ns),
        };
        match pod {
            Ok(pod) => errors
                .extend(pod_network::teardown_pod(&pod, &a.ifname, &t.ips, t.container_mac).await),
            Err(e) => info!(error = %e, "pod namespace not enterable; pod side skipped"),
        }
        timing::mark("pod_addr_del");
    }
    Ok(errors)
}

/// `DelNetwork`: ipamd releases the address. ipamd gone meanwhile is not an error (it reclaims
/// the address when it next reconciles).
async fn release(
    client: &mut IpamdClient,
    request: crate::ipamd_client::rpc::DelNetworkRequest,
    torn_down: &[IpAddr],
) -> Result<(), String> {
    match client.del_network(request).await {
        Ok(reply) => {
            timing::mark("del_network_rpc");
            let released = allocated_addresses(&reply.ip_allocation_metadata, |e| {
                warn!("DelNetwork returned {e}");
            });
            info!(?released, "released");
            for ip in released.iter().filter(|ip| !torn_down.contains(ip)) {
                warn!(%ip, "ipamd released an address the cached result did not name");
            }
            Ok(())
        }
        Err(e) if e.is_unreachable() => {
            warn!(error = %e, "ipamd unreachable; it reclaims the address when it next reconciles");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}
