//! One pod's data plane: setup (ADD), teardown (DEL, GC, ADD rollback) and verification (CHECK).
//!
//! Pod side: `<ip>/32` on `CNI_IFNAME`, `169.254.1.1/32 scope link`, `default via 169.254.1.1
//! onlink`, and a PERMANENT neighbour `169.254.1.1 -> <host veth MAC>`. Host side: `<ip>/32 dev
//! <host veth> scope link` in main, rule 512 `to <ip> lookup main`, and rule 1536 `from <ip>
//! lookup <table>` when the address belongs to a secondary ENI (table != 254). Names, priorities
//! and tables are the reference's (design.md §1), shared with ipamd through the contract crate
//! ([`vpc_cni_contract::dataplane`]).

use std::net::Ipv4Addr;

use rtnetlink::packet_route::route::RouteScope;
pub use vpc_cni_contract::dataplane::host_veth_name;
use vpc_cni_contract::dataplane::{
    self, FROM_POD_RULE_PRIORITY, MAIN_TABLE, POD_GATEWAY, TO_POD_RULE_PRIORITY,
};

use crate::netlink::{Link, Netlink, NetlinkError, format_mac};
use crate::netns::Netns;
use crate::timing;

/// Failures of setup, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// `CNI_IFNAME` already exists in the pod.
    #[error("interface {ifname} already exists in the pod network namespace")]
    InterfaceExists {
        /// The name.
        ifname: String,
    },
    /// A kernel operation failed; what was made was rolled back (failures of the rollback are
    /// listed).
    #[error("{source}{}", rollback_note(rollback))]
    Kernel {
        /// The failed operation.
        source: NetlinkError,
        /// Rollback steps that failed too.
        rollback: Vec<String>,
    },
    /// A host interface that is not a veth already has the pod's host veth name.
    #[error(
        "host interface {name} exists and is not a veth; it is not replaced (does vethPrefix collide with the node's interface names?)"
    )]
    NameTaken {
        /// The name.
        name: String,
    },
    /// A link just created could not be found again.
    #[error("link {name} vanished right after it was created")]
    Vanished {
        /// The name.
        name: String,
    },
}

fn rollback_note(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(" (rollback also failed: {})", errors.join("; "))
    }
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// What setup needs to know.
#[derive(Clone, Debug)]
pub struct PodSpec<'a> {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Host route table of the address's ENI (254 = main).
    pub route_table: u32,
    /// Host end of the veth.
    pub host_veth: &'a str,
    /// Container end (`CNI_IFNAME`).
    pub ifname: &'a str,
    /// MTU of both ends.
    pub mtu: u32,
}

/// What setup made that the result reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupOutcome {
    /// MAC of the host end.
    pub host_mac: [u8; 6],
    /// MAC of the container end.
    pub container_mac: [u8; 6],
}

/// Builds the pod's data plane. `host` and `pod` are connections in the host and pod
/// namespaces; `host_ns` is the host namespace (the veth peer is created directly in it).
/// On failure everything made here is removed again before the error is returned.
pub async fn setup(
    host: &Netlink,
    host_ns: &Netns,
    pod: &Netlink,
    spec: &PodSpec<'_>,
) -> Result<SetupOutcome, PodNetworkError> {
    if pod
        .link_by_name(spec.ifname)
        .await
        .map_err(kernel)?
        .is_some()
    {
        return Err(PodNetworkError::InterfaceExists {
            ifname: spec.ifname.to_string(),
        });
    }
    timing::mark("ifname_recheck");

    // One lookup by name, not a dump of every host link: a dump grows with the pods on the
    // node (≈ 1.5 KiB per link) and was the one ADD step whose cost did (BENCHMARKS.md).
    if let Some(existing) = host.link_by_name(spec.host_veth).await.map_err(kernel)? {
        if !existing.is_veth {
            // Never delete a node interface that merely has the pod's veth name.
            return Err(PodNetworkError::NameTaken {
                name: existing.name.clone(),
            });
        }
        // A pod re-created under the same name: its old veth goes (as the reference does).
        tracing::info!(veth = %existing.name, "deleting stale host veth of a previous pod");
        host.del_link(existing.index, &existing.name)
            .await
            .map_err(kernel)?;
    }
    // A pre-set MAC keeps systemd-udev's MACAddressPolicy=persistent from rewriting it after
    // the neighbour entry was written (reference PR #3354). The MACs are random locally
    // administered addresses (46 random bits); each veth is its own link, so the host end's
    // MAC only has to differ from its peer's, not from every other link's (the reference's
    // uniqueness loop against all host links bought nothing for a dump per ADD).
    let host_mac = random_mac();
    let mut container_mac = random_mac();
    while container_mac == host_mac {
        container_mac = random_mac();
    }
    timing::mark("host_veth_check");

    pod.create_veth(
        spec.ifname,
        container_mac,
        spec.host_veth,
        host_mac,
        host_ns,
        spec.mtu,
    )
    .await
    .map_err(kernel)?;
    timing::mark("veth_create");
    tracing::debug!(veth = spec.host_veth, mac = %format_mac(&host_mac), "veth pair created");

    match configure(host, pod, spec, host_mac).await {
        Ok(()) => Ok(SetupOutcome {
            host_mac,
            container_mac,
        }),
        Err(e) => {
            let mut rollback = Vec::new();
            if let Err(err) = delete_veth_by_name(host, spec.host_veth).await {
                rollback.push(err.to_string());
            }
            // The veth took the host route with it; the rules must go explicitly.
            rollback.extend(delete_rules_for(host, &[spec.ip]).await);
            match e {
                PodNetworkError::Kernel { source, .. } => {
                    Err(PodNetworkError::Kernel { source, rollback })
                }
                other => Err(other),
            }
        }
    }
}

/// The link `name` setup just created, which must still be there.
async fn created_link(nl: &Netlink, name: &str) -> Result<Link, PodNetworkError> {
    nl.link_by_name(name)
        .await
        .map_err(kernel)?
        .ok_or_else(|| PodNetworkError::Vanished {
            name: name.to_string(),
        })
}

async fn configure(
    host: &Netlink,
    pod: &Netlink,
    spec: &PodSpec<'_>,
    host_mac: [u8; 6],
) -> Result<(), PodNetworkError> {
    let host_link = created_link(host, spec.host_veth).await?;
    host.set_up(host_link.index, spec.host_veth)
        .await
        .map_err(kernel)?;
    timing::mark("host_veth_up");
    let idx = created_link(pod, spec.ifname).await?.index;
    timing::mark("pod_link_lookup");

    pod.add_address(idx, spec.ifname, spec.ip, 32)
        .await
        .map_err(kernel)?;
    timing::mark("pod_addr");
    pod.replace_link_route(POD_GATEWAY, 32, idx, MAIN_TABLE)
        .await
        .map_err(kernel)?;
    pod.replace_default_route(POD_GATEWAY, idx)
        .await
        .map_err(kernel)?;
    timing::mark("pod_routes");
    pod.replace_permanent_neighbour(idx, POD_GATEWAY, host_mac)
        .await
        .map_err(kernel)?;
    timing::mark("pod_neigh");
    tracing::debug!(ip = %spec.ip, "pod side configured");

    host.replace_link_route(spec.ip, 32, host_link.index, MAIN_TABLE)
        .await
        .map_err(kernel)?;
    timing::mark("host_route");
    host.add_rule(dataplane::to_pod_rule(spec.ip))
        .await
        .map_err(kernel)?;
    if spec.route_table != MAIN_TABLE {
        host.add_rule(dataplane::from_pod_rule(spec.ip, spec.route_table))
            .await
            .map_err(kernel)?;
    }
    timing::mark("host_rules");
    Ok(())
}

fn kernel(source: NetlinkError) -> PodNetworkError {
    PodNetworkError::Kernel {
        source,
        rollback: Vec::new(),
    }
}

async fn delete_veth_by_name(host: &Netlink, name: &str) -> Result<bool, NetlinkError> {
    match host.link_by_name(name).await? {
        Some(link) => host.del_link(link.index, name).await,
        None => Ok(false),
    }
}

/// Removes every priority-512 rule `to <ip>` and every priority-1536 rule `from <ip>` (whatever
/// their table) for the given addresses. Returns the failures (already-gone rules are not
/// failures).
///
/// The rules are deleted by value, as the reference does, rather than found in a dump of every
/// rule: a dump grows with the pods on the node (two rules each).
pub async fn delete_rules_for(host: &Netlink, ips: &[Ipv4Addr]) -> Vec<String> {
    let mut errors = Vec::new();
    for &ip in ips {
        for selector in dataplane::pod_rules(ip) {
            if let Err(e) = host.del_rules_matching(selector).await {
                errors.push(e.to_string());
            }
        }
    }
    errors
}

/// A host veth DEL may clean up after: its name and, when the cached result recorded it, its
/// MAC (every ADD gives its veth a fresh random MAC, so the MAC tells the veth of this sandbox
/// from that of a later sandbox of the same pod, which has the same name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVethRef {
    /// The link name.
    pub name: String,
    /// The MAC ADD gave it, when known.
    pub mac: Option<[u8; 6]>,
}

/// Host-side teardown for DEL: for each of the pod's addresses its `/32` route in main and its
/// rules 512/1536. Returns every failure; missing objects are fine.
///
/// The veth itself stays: the runtime removes the pod's network namespace right after DEL and
/// the kernel frees the pair with it, in its batched namespace cleanup, as with the reference
/// (vpc-cni.md §2.3 step 5). Deleting it here would cost DEL the kernel's synchronous
/// unregistration (RCU grace periods, ~16 ms) for nothing.
///
/// A route is only removed when it leads to one of the pod's host veths (by name and, when
/// the cached result has it, MAC) or to no link at all; an address routed to another link
/// belongs to another pod by now (a DEL repeated after the address was released and reused, or
/// a late DEL of an old sandbox of a pod re-created under the same name), and its route and
/// rules are that pod's and are kept.
pub async fn teardown_host(host: &Netlink, ips: &[Ipv4Addr], veths: &[HostVethRef]) -> Vec<String> {
    let mut errors = Vec::new();
    if ips.is_empty() {
        timing::mark("host_rules_del");
        return errors;
    }
    let mut ours: Vec<Link> = Vec::new();
    for v in veths {
        match host.link_by_name(&v.name).await {
            Ok(Some(l)) if v.mac.is_none_or(|m| l.mac == Some(m)) => {
                if !ours.iter().any(|o| o.index == l.index) {
                    ours.push(l);
                }
            }
            Ok(Some(l)) => {
                tracing::info!(veth = %l.name, "host veth has another MAC than the cached result: it belongs to a later sandbox of the pod and is left alone");
            }
            Ok(None) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    // Addresses routed to a link that is not this pod's: another pod holds them by now. Their
    // rules are that pod's.
    let mut foreign: Vec<Ipv4Addr> = Vec::new();
    let routes = match host.routes().await {
        Ok(routes) => routes,
        Err(e) => {
            // Without the routes the rules' owner is unknown: none is touched, the DEL fails
            // and the runtime retries it.
            errors.push(e.to_string());
            return errors;
        }
    };
    for r in routes
        .iter()
        .filter(|r| r.table == MAIN_TABLE && r.prefix_len == 32)
    {
        let Some(dst) = r.dst.filter(|d| ips.contains(d)) else {
            continue;
        };
        let mine = r.oif.is_none_or(|oif| ours.iter().any(|l| l.index == oif));
        if mine {
            if let Err(e) = host.del_route(r).await {
                errors.push(e.to_string());
            }
        } else {
            tracing::warn!(ip = %dst, oif = ?r.oif, "the address routes to another link (another pod holds it now); its route and rules are kept");
            foreign.push(dst);
        }
    }
    timing::mark("host_links_routes");
    let mine: Vec<Ipv4Addr> = ips
        .iter()
        .copied()
        .filter(|ip| !foreign.contains(ip))
        .collect();
    errors.extend(delete_rules_for(host, &mine).await);
    timing::mark("host_rules_del");
    errors
}

/// Host-side teardown for GC: for each address, its rules, its /32 route in main, and the veth
/// that route points at. Returns every failure.
pub async fn teardown_released(host: &Netlink, ips: &[Ipv4Addr]) -> Vec<String> {
    let mut errors = delete_rules_for(host, ips).await;
    if ips.is_empty() {
        return errors;
    }
    let (routes, links) = match (host.routes().await, host.links().await) {
        (Ok(r), Ok(l)) => (r, l),
        (Err(e), _) | (_, Err(e)) => {
            errors.push(e.to_string());
            return errors;
        }
    };
    for r in routes.iter().filter(|r| {
        r.table == MAIN_TABLE && r.prefix_len == 32 && r.dst.is_some_and(|d| ips.contains(&d))
    }) {
        let veth = r
            .oif
            .and_then(|oif| links.iter().find(|l| l.index == oif && l.is_veth));
        match veth {
            // Deleting the veth removes the route with it.
            Some(l) => {
                if let Err(e) = host.del_link(l.index, &l.name).await {
                    errors.push(e.to_string());
                }
            }
            None => {
                if let Err(e) = host.del_route(r).await {
                    errors.push(e.to_string());
                }
            }
        }
    }
    errors
}

/// What the pod's own interface says about the attachment: what DEL works from when neither a
/// cached result (0.3.x runtimes send none) nor ipamd names the pod's address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSide {
    /// The `/32` IPv4 addresses on `CNI_IFNAME` (link-local ones excluded: ADD never puts one
    /// there).
    pub ips: Vec<Ipv4Addr>,
    /// The interface's MAC.
    pub mac: Option<[u8; 6]>,
    /// The lladdr of the PERMANENT neighbour 169.254.1.1 on it: ADD sets it to the host veth's
    /// MAC, so it identifies this sandbox's host veth among same-named ones as prevResult's MAC
    /// would.
    pub host_veth_mac: Option<[u8; 6]>,
}

/// Reads [`PodSide`] from `ifname` in the pod namespace; `Ok(None)` when there is no such
/// interface (nothing of this sandbox is left in it: the veth pair goes as one).
pub async fn read_pod_side(pod: &Netlink, ifname: &str) -> Result<Option<PodSide>, NetlinkError> {
    let Some(link) = pod.link_by_name(ifname).await? else {
        return Ok(None);
    };
    let ips = pod
        .addresses(link.index)
        .await?
        .into_iter()
        .filter(|(ip, len)| *len == 32 && !ip.is_link_local())
        .map(|(ip, _)| ip)
        .collect();
    let host_veth_mac = pod
        .neighbours()
        .await?
        .into_iter()
        .find(|n| n.ifindex == link.index && n.ip == POD_GATEWAY && n.permanent)
        .and_then(|n| n.mac);
    Ok(Some(PodSide {
        ips,
        mac: link.mac,
        host_veth_mac,
    }))
}

/// Pod-side teardown for DEL: removes the pod's addresses from `ifname` and leaves the
/// interface (it goes with the namespace, which the runtime removes after DEL). With its
/// addresses gone the kernel also drops the interface's routes and neighbours, so a sandbox
/// whose namespace outlives the DEL (`podman network disconnect`) can no longer use an address
/// ipamd may give to another pod. `mac` is the interface's MAC from the cached result: an
/// interface of that name with another MAC was made by someone else and is left alone.
pub async fn teardown_pod(
    pod: &Netlink,
    ifname: &str,
    ips: &[Ipv4Addr],
    mac: Option<[u8; 6]>,
) -> Vec<String> {
    if ips.is_empty() {
        return Vec::new();
    }
    let link = match pod.link_by_name(ifname).await {
        Ok(Some(l)) => l,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![e.to_string()],
    };
    if mac.is_some_and(|m| link.mac != Some(m)) {
        tracing::info!(%ifname, "the pod's interface has another MAC than the cached result; left alone");
        return Vec::new();
    }
    let mut errors = Vec::new();
    for &ip in ips {
        if let Err(e) = pod.del_address(link.index, ifname, ip, 32).await {
            errors.push(e.to_string());
        }
    }
    errors
}

/// Verifies the data plane ADD made. Returns the list of differences (empty = all good); an
/// `Err` means the state could not be read at all.
pub async fn check(
    host: &Netlink,
    pod: &Netlink,
    spec: &PodSpec<'_>,
) -> Result<Vec<String>, NetlinkError> {
    let mut diffs = Vec::new();
    let ip = spec.ip;

    // Host side.
    let host_link = host.link_by_name(spec.host_veth).await?;
    match &host_link {
        None => diffs.push(format!("host veth {} does not exist", spec.host_veth)),
        Some(l) if !l.up => diffs.push(format!("host veth {} is down", spec.host_veth)),
        Some(_) => {}
    }
    let host_routes = host.routes().await?;
    let has_host_route = host_routes.iter().any(|r| {
        r.table == MAIN_TABLE
            && r.dst == Some(ip)
            && r.prefix_len == 32
            && r.scope == RouteScope::Link
            && host_link.as_ref().is_some_and(|l| r.oif == Some(l.index))
    });
    if !has_host_route {
        diffs.push(format!(
            "host route {ip}/32 dev {} scope link is missing",
            spec.host_veth
        ));
    }
    let rules = host.rules().await?;
    let has_rule = |prio: u32, src: Option<Ipv4Addr>, dst: Option<Ipv4Addr>, table: u32| {
        rules.iter().any(|r| {
            r.priority == prio
                && r.table == table
                && r.src.map(|(a, _)| a) == src
                && r.dst.map(|(a, _)| a) == dst
        })
    };
    if !has_rule(TO_POD_RULE_PRIORITY, None, Some(ip), MAIN_TABLE) {
        diffs.push(format!(
            "rule {TO_POD_RULE_PRIORITY} `to {ip} lookup main` is missing"
        ));
    }
    if spec.route_table != MAIN_TABLE
        && !has_rule(FROM_POD_RULE_PRIORITY, Some(ip), None, spec.route_table)
    {
        diffs.push(format!(
            "rule {FROM_POD_RULE_PRIORITY} `from {ip} lookup {}` is missing",
            spec.route_table
        ));
    }

    // Pod side.
    let Some(pod_link) = pod.link_by_name(spec.ifname).await? else {
        diffs.push(format!(
            "interface {} does not exist in the pod",
            spec.ifname
        ));
        return Ok(diffs);
    };
    if !pod_link.up {
        diffs.push(format!("interface {} is down", spec.ifname));
    }
    let addrs = pod.addresses(pod_link.index).await?;
    if !addrs.contains(&(ip, 32)) {
        diffs.push(format!("address {ip}/32 is missing on {}", spec.ifname));
    }
    let pod_routes = pod.routes().await?;
    let idx = pod_link.index;
    if !pod_routes.iter().any(|r| {
        r.table == MAIN_TABLE
            && r.dst == Some(POD_GATEWAY)
            && r.prefix_len == 32
            && r.scope == RouteScope::Link
            && r.oif == Some(idx)
    }) {
        diffs.push(format!(
            "pod route {POD_GATEWAY}/32 dev {} scope link is missing",
            spec.ifname
        ));
    }
    if !pod_routes.iter().any(|r| {
        r.table == MAIN_TABLE
            && r.prefix_len == 0
            && r.gateway == Some(POD_GATEWAY)
            && r.oif == Some(idx)
    }) {
        diffs.push(format!(
            "pod default route via {POD_GATEWAY} dev {} is missing",
            spec.ifname
        ));
    }
    let neigh = pod
        .neighbours()
        .await?
        .into_iter()
        .find(|n| n.ifindex == idx && n.ip == POD_GATEWAY);
    let host_mac = host_link.as_ref().and_then(|l| l.mac);
    match neigh {
        None => diffs.push(format!(
            "neighbour {POD_GATEWAY} on {} is missing",
            spec.ifname
        )),
        Some(n) => {
            if !n.permanent {
                diffs.push(format!("neighbour {POD_GATEWAY} is not PERMANENT"));
            }
            if let (Some(want), Some(got)) = (host_mac, n.mac)
                && want != got
            {
                diffs.push(format!(
                    "neighbour {POD_GATEWAY} has lladdr {} but host veth {} has {}",
                    format_mac(&got),
                    spec.host_veth,
                    format_mac(&want)
                ));
            }
        }
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..64 {
            let m = random_mac();
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
    }
}
