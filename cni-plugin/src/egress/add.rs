//! ADD: allocate, wire `v4if0`, SNAT, and pass the chain's result on. Every step after the IPAM
//! allocation is undone if a later one fails (the veth, which takes its routes and the host end
//! with it; the SNAT chain and jump), and the address is released with IPAM DEL.

use ipnet::Ipv4Net;
use nix::errno::Errno;
use serde_json::Value;
use tracing::{debug, error, info};

use super::config::{EgressConf, Mode};
use super::error::EgressError;
use super::ipam::Allocation;
use super::link::{Links, RouteSpec};
use super::result::{self, MadeInterface};
use super::snat::{Iptables, SnatError, SnatSpec};
use super::{Request, V4_IFNAME, netlink_error, netns_error};
use crate::cni::error::CniError;
use crate::netlink::{Netlink, NetlinkError, format_mac};
use crate::netns::Netns;
use crate::pod_network::random_mac;

/// The host's IPv4 forwarding switch (per network namespace: the plugin's own, the node's).
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Attempts at a free random host veth name (containernetworking/plugins' `makeVeth`).
const VETH_NAME_ATTEMPTS: u32 = 10;

/// What ADD has made so far, for rollback.
#[derive(Debug, Default)]
struct Made {
    veth: bool,
    snat: bool,
}

/// The namespaces and connections ADD works with.
struct Wiring<'a> {
    host_ns: Netns,
    host: Links,
    pod: Links,
    netns_path: &'a str,
    mtu: u32,
}

pub(super) async fn add(req: &Request<'_>) -> Result<Value, EgressError> {
    let conf = req.conf;
    let version = conf.base.cni_version;
    let prev = conf.prev_result.as_ref().ok_or(CniError::InvalidConfig {
        key: "prevResult",
        reason: "missing; egress-cni is a chained plugin and runs after aws-cni, whose result it passes on".into(),
    })?;
    let node_ip = match conf.mode()? {
        Mode::Disabled => {
            debug!("egress-cni is disabled; passing prevResult through");
            return Ok(result::render(prev, version, &[]));
        }
        Mode::V6Unsupported { node_ip } => return Err(EgressConf::v6_unsupported(&node_ip)),
        Mode::V4 { node_ip } => node_ip,
    };
    let netns_path = req
        .attachment
        .netns
        .as_deref()
        .ok_or(CniError::InvalidEnv {
            var: crate::cni::env::CNI_NETNS,
            reason: "not set (required for ADD)".into(),
        })?;
    let (chain, comment) = req.snat_names()?;
    let ipam = req.ipam()?;

    // Everything that can be checked without allocating comes first: a failure here leaves
    // nothing to undo.
    let host_ns = Netns::current().map_err(|e| netns_error(e, "/proc/thread-self/ns/net"))?;
    let pod_ns = Netns::open(netns_path).map_err(|e| netns_error(e, netns_path))?;
    let host = Links::current().map_err(|e| netlink_error(e, "host"))?;
    let pod = Links::in_netns(&pod_ns).map_err(|e| netlink_error(e, netns_path))?;
    if pod
        .nl
        .link_by_name(V4_IFNAME)
        .await
        .map_err(|e| netlink_error(e, netns_path))?
        .is_some()
    {
        return Err(CniError::InterfaceExists {
            ifname: V4_IFNAME.into(),
            netns: netns_path.into(),
        }
        .into());
    }
    let wiring = Wiring {
        host_ns,
        host,
        pod,
        netns_path,
        mtu: conf.base.mtu,
    };

    let alloc = match ipam.add(req.stdin).await {
        Ok(a) => a,
        // The plugin answered with an error: it allocated nothing.
        Err(e @ EgressError::IpamPlugin { .. }) => return Err(e),
        // Anything else (a killed or garbled plugin) may have allocated: release.
        Err(e) => {
            let note = match ipam.del(req.stdin).await {
                Ok(()) => "IPAM DEL done".to_string(),
                Err(d) => format!("rollback: {d}"),
            };
            return Err(e.with_note(&note));
        }
    };
    info!(address = %alloc.address, gateway = %alloc.gateway, "IPAM allocated");

    let ipt = Iptables::default();
    let spec = SnatSpec {
        chain,
        comment,
        pod_ip: alloc.address.addr(),
        node_ip,
        randomize: conf.randomize_snat,
    };
    let mut made = Made::default();
    match setup(&wiring, &alloc, &ipt, &spec, &mut made).await {
        Ok(interfaces) => {
            info!(host_veth = %interfaces[0].name, chain = %spec.chain, "IPv4 egress set up");
            Ok(result::render(prev, version, &interfaces))
        }
        Err(e) => {
            let mut failures = Vec::new();
            if made.snat
                && let Err(d) = ipt.delete(&spec.chain).await
            {
                failures.push(format!("SNAT chain {}: {d}", spec.chain));
            }
            if made.veth
                && let Err(d) = delete_v4if0(&wiring.pod.nl).await
            {
                failures.push(d.to_string());
            }
            if let Err(d) = ipam.del(req.stdin).await {
                failures.push(d.to_string());
            }
            let note = if failures.is_empty() {
                "everything made was rolled back and the address released".to_string()
            } else {
                error!(?failures, "rollback incomplete");
                format!("rollback incomplete: {}", failures.join("; "))
            };
            Err(e.with_note(&note))
        }
    }
}

/// Deletes `v4if0` (and so its host peer and both ends' routes); `Ok(false)` if it is gone.
pub(super) async fn delete_v4if0(pod: &Netlink) -> Result<bool, NetlinkError> {
    match pod.link_by_name(V4_IFNAME).await? {
        Some(link) => pod.del_link(link.index, V4_IFNAME).await,
        None => Ok(false),
    }
}

async fn setup(
    w: &Wiring<'_>,
    alloc: &Allocation,
    ipt: &Iptables,
    spec: &SnatSpec,
    made: &mut Made,
) -> Result<Vec<MadeInterface>, EgressError> {
    let kernel = |e: NetlinkError| EgressError::from(netlink_error(e, w.netns_path));
    enable_ip_forwarding().map_err(|e| CniError::Setup {
        msg: format!("cannot enable IPv4 forwarding ({IP_FORWARD}): {e}"),
    })?;

    let (host_name, host_mac, pod_mac) = create_veth(w, made).await?;
    debug!(host_veth = %host_name, "veth created");
    let pod_ip = alloc.address.addr();
    let gateway = alloc.gateway;

    let pod_link = w
        .pod
        .nl
        .link_by_name(V4_IFNAME)
        .await
        .map_err(kernel)?
        .ok_or_else(|| CniError::Setup {
            msg: format!("{V4_IFNAME} vanished from {} after creation", w.netns_path),
        })?;
    configure_pod(&w.pod, pod_link.index, alloc)
        .await
        .map_err(kernel)?;

    let host_link = w
        .host
        .nl
        .link_by_name(&host_name)
        .await
        .map_err(kernel)?
        .ok_or_else(|| CniError::Setup {
            msg: format!("host veth {host_name} vanished after creation"),
        })?;
    w.host
        .nl
        .set_up(host_link.index, &host_name)
        .await
        .map_err(kernel)?;
    // The reference's choice over ptp's: the gateway is link scope on the host end, and the
    // route to the pod is link scope too.
    w.host
        .add_address(host_link.index, gateway, 32, true, false)
        .await
        .map_err(kernel)?;
    w.host
        .add_route_with_retry(&RouteSpec {
            dst: Ipv4Net::from(pod_ip),
            oif: host_link.index,
            gw: None,
            src: None,
            link_scope: true,
        })
        .await
        .map_err(kernel)?;

    made.snat = true;
    if let Err(e) = ipt.add(spec).await {
        // Without the program nothing of the chain can exist (nor be removed).
        made.snat = !matches!(e, SnatError::NotFound { .. });
        return Err(CniError::Setup {
            msg: format!("SNAT for {pod_ip}: {e}"),
        }
        .into());
    }

    Ok(vec![
        MadeInterface {
            name: host_name,
            mac: format_mac(&host_mac),
            sandbox: None,
            mtu: w.mtu,
        },
        MadeInterface {
            name: V4_IFNAME.into(),
            mac: format_mac(&pod_mac),
            sandbox: Some(w.netns_path.to_string()),
            mtu: w.mtu,
        },
    ])
}

/// Creates `v4if0` in the pod (up) with its peer `veth<8 hex>` in the host namespace, retrying
/// another random name while the kernel says one exists and the host has a link of that name.
async fn create_veth(
    w: &Wiring<'_>,
    made: &mut Made,
) -> Result<(String, [u8; 6], [u8; 6]), EgressError> {
    let kernel = |e: NetlinkError| EgressError::from(netlink_error(e, w.netns_path));
    for _ in 0..VETH_NAME_ATTEMPTS {
        let host_name = format!("veth{}", hex8(rand::random()));
        let (host_mac, pod_mac) = (random_mac(), random_mac());
        match w
            .pod
            .nl
            .create_veth(V4_IFNAME, pod_mac, &host_name, host_mac, &w.host_ns, w.mtu)
            .await
        {
            Ok(()) => {
                made.veth = true;
                return Ok((host_name, host_mac, pod_mac));
            }
            Err(e) if e.errno() == Some(Errno::EEXIST) => {
                if w.host
                    .nl
                    .link_by_name(&host_name)
                    .await
                    .map_err(kernel)?
                    .is_some()
                {
                    continue;
                }
                return Err(CniError::InterfaceExists {
                    ifname: V4_IFNAME.into(),
                    netns: w.netns_path.into(),
                }
                .into());
            }
            Err(e) => return Err(kernel(e)),
        }
    }
    Err(CniError::Setup {
        msg: format!("no free host veth name after {VETH_NAME_ATTEMPTS} random attempts"),
    }
    .into())
}

/// The pod end: the address without its subnet route, then the gateway as a link route and the
/// subnet and the IPAM routes via it. This is the state the reference reaches with
/// `ipam.ConfigureIface` and its route rewrite ("force all traffic to ARP via the gateway
/// except for GW itself"), built directly instead of adding and deleting the subnet route.
async fn configure_pod(pod: &Links, index: u32, alloc: &Allocation) -> Result<(), NetlinkError> {
    let ip = alloc.address.addr();
    let gw = alloc.gateway;
    let subnet = alloc.address.trunc();
    pod.add_address(index, ip, alloc.address.prefix_len(), false, true)
        .await?;
    pod.add_route(&RouteSpec {
        dst: Ipv4Net::from(gw),
        oif: index,
        gw: None,
        src: Some(ip),
        link_scope: true,
    })
    .await?;
    pod.add_route(&RouteSpec {
        dst: subnet,
        oif: index,
        gw: Some(gw),
        src: Some(ip),
        link_scope: false,
    })
    .await?;
    for r in alloc.routes.iter().filter(|r| r.dst != subnet) {
        pod.add_route(&RouteSpec {
            dst: r.dst,
            oif: index,
            gw: Some(r.gw.unwrap_or(gw)),
            src: None,
            link_scope: false,
        })
        .await?;
    }
    Ok(())
}

/// Turns IPv4 forwarding on in the calling thread's namespace (the node's) if it is off. It is
/// never turned back off: other pods rely on it.
fn enable_ip_forwarding() -> std::io::Result<()> {
    if std::fs::read_to_string(IP_FORWARD)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, "1")
}

fn hex8(bytes: [u8; 4]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_the_references_shape() {
        let name = format!("veth{}", hex8([0xde, 0xad, 0x00, 0x0f]));
        assert_eq!(name, "vethdead000f");
        assert!(name.len() <= 15);
    }
}
