//! One pod's data plane: setup (ADD), teardown (DEL, GC, ADD rollback) and verification (CHECK).
//!
//! Pod side: `<ip>/32` on `CNI_IFNAME`, `169.254.1.1/32 scope link`, `default via 169.254.1.1
//! onlink`, and a PERMANENT neighbour `169.254.1.1 -> <host veth MAC>`. Host side: `<ip>/32 dev
//! <host veth> scope link` in main, rule 512 `to <ip> lookup main`, and rule 1536 `from <ip>
//! lookup <table>` when the address belongs to a secondary ENI (table != 254). Names, priorities
//! and tables are the reference's (design.md §1), shared with ipamd through the contract crate
//! ([`vpc_cni_contract::dataplane`]).
//!
//! An IPv6 pod (IPv6 clusters, docs/ipv6.md) gets the same through the same code, as the
//! reference's driver builds it: `<ip>/128`, gateway `fe80::1` (a `/128` route on the link, the
//! default route through it without `onlink`, a PERMANENT neighbour), IPv6 enabled on the pod's
//! interface and `lo`, and the wait for duplicate address detection; on the host the `/128`
//! route and rule 512 in the IPv6 rule table. Every host veth gets the reference's IPv6
//! hardening before it comes up ([`crate::sysctl::HOST_VETH_IPV6`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rtnetlink::packet_route::address::AddressFlags;
use rtnetlink::packet_route::route::RouteScope;
pub use vpc_cni_contract::dataplane::host_veth_name;
use vpc_cni_contract::dataplane::{
    self, FROM_POD_RULE_PRIORITY, MAIN_TABLE, TO_POD_RULE_PRIORITY, pod_gateway,
};

use crate::netlink::{Family, Link, Netlink, NetlinkError, Route, format_mac};
use crate::netns::Netns;
use crate::sysctl::{self, SysctlError};
use crate::timing;

/// How long ADD waits for an IPv6 pod's addresses to leave duplicate address detection (the
/// reference's `v6DADTimeout`).
pub const DAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How often it looks (the reference's `WAIT_INTERVAL`).
pub const DAD_POLL_INTERVAL: Duration = Duration::from_millis(50);

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
    /// An IPv6 sysctl of the veth pair could not be written; what was made was rolled back.
    #[error("{source}{}", rollback_note(rollback))]
    Sysctl {
        /// The failed write.
        source: SysctlError,
        /// Rollback steps that failed too.
        rollback: Vec<String>,
    },
    /// The pod's IPv6 addresses were still tentative (duplicate address detection running) when
    /// the wait ended; what was made was rolled back.
    #[error(
        "IPv6 addresses {} on {ifname} were still tentative (duplicate address detection) after {timeout:?}{}",
        list(addresses),
        rollback_note(rollback)
    )]
    DadTimeout {
        /// The pod's interface.
        ifname: String,
        /// The addresses still tentative.
        addresses: Vec<IpAddr>,
        /// How long the wait was.
        timeout: Duration,
        /// Rollback steps that failed too.
        rollback: Vec<String>,
    },
    /// Duplicate address detection found another holder of the pod's address on the link; what
    /// was made was rolled back.
    #[error(
        "duplicate address detection failed for {address} on {ifname}: another node on the link holds it{}",
        rollback_note(rollback)
    )]
    DadFailed {
        /// The pod's interface.
        ifname: String,
        /// The duplicate address.
        address: IpAddr,
        /// Rollback steps that failed too.
        rollback: Vec<String>,
    },
}

impl PodNetworkError {
    /// The error with `errors` as the failures of the rollback that followed it.
    fn with_rollback(self, errors: Vec<String>) -> Self {
        match self {
            Self::Kernel { source, .. } => Self::Kernel {
                source,
                rollback: errors,
            },
            Self::Sysctl { source, .. } => Self::Sysctl {
                source,
                rollback: errors,
            },
            Self::DadTimeout {
                ifname,
                addresses,
                timeout,
                ..
            } => Self::DadTimeout {
                ifname,
                addresses,
                timeout,
                rollback: errors,
            },
            Self::DadFailed {
                ifname, address, ..
            } => Self::DadFailed {
                ifname,
                address,
                rollback: errors,
            },
            other => other,
        }
    }
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
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
    /// The pod's address: IPv4, or IPv6 in an IPv6 cluster.
    pub ip: IpAddr,
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
/// namespaces `host_ns` and `pod_ns` (the veth peer is created directly in the host's; an IPv6
/// pod's sysctls are written inside the pod's). On failure everything made here is removed
/// again before the error is returned.
pub async fn setup(
    host: &Netlink,
    host_ns: &Netns,
    pod: &Netlink,
    pod_ns: &Netns,
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

    match configure(host, pod, pod_ns, spec, host_mac).await {
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
            Err(e.with_rollback(rollback))
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
    pod_ns: &Netns,
    spec: &PodSpec<'_>,
    host_mac: [u8; 6],
) -> Result<(), PodNetworkError> {
    let family = Family::of(spec.ip);
    let len = family.host_prefix_len();
    let gateway = pod_gateway(family);
    let host_link = created_link(host, spec.host_veth).await?;
    if family == Family::V6 {
        // The address, routes and neighbour below need IPv6 on (EACCES otherwise); detection
        // of duplicates goes off before the link has carrier (the host end comes up below).
        sysctl::enable_ipv6_in_pod(pod_ns, spec.ifname).map_err(sysctl_failed)?;
        timing::mark("pod_sysctls");
    }
    // Before the host end comes up: it must never take a router advertisement from the pod.
    sysctl::harden_host_veth(spec.host_veth, family == Family::V6).map_err(sysctl_failed)?;
    host.set_up(host_link.index, spec.host_veth)
        .await
        .map_err(kernel)?;
    timing::mark("host_veth_up");
    let idx = created_link(pod, spec.ifname).await?.index;
    timing::mark("pod_link_lookup");

    pod.add_address(idx, spec.ifname, spec.ip, len)
        .await
        .map_err(kernel)?;
    timing::mark("pod_addr");
    pod.replace_link_route(gateway, len, idx, MAIN_TABLE)
        .await
        .map_err(kernel)?;
    // 169.254.1.1 is on no subnet of eth0, hence `onlink`; a link-local IPv6 gateway needs no
    // flag (the reference adds none).
    pod.replace_default_route(gateway, idx, family == Family::V4)
        .await
        .map_err(kernel)?;
    timing::mark("pod_routes");
    pod.replace_permanent_neighbour(idx, gateway, host_mac)
        .await
        .map_err(kernel)?;
    timing::mark("pod_neigh");
    if family == Family::V6 {
        // A tentative address cannot be used yet (bind fails, packets from it are dropped):
        // the pod would start without a working address. With detection off (above) nothing
        // is tentative and this returns at once; it stays as the reference's guard.
        wait_until_addresses_settle(pod, idx, spec.ifname, DAD_TIMEOUT, DAD_POLL_INTERVAL).await?;
        timing::mark("pod_dad");
    }
    tracing::debug!(ip = %spec.ip, "pod side configured");

    host.replace_link_route(spec.ip, len, host_link.index, MAIN_TABLE)
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

fn sysctl_failed(source: SysctlError) -> PodNetworkError {
    PodNetworkError::Sysctl {
        source,
        rollback: Vec::new(),
    }
}

/// Waits until no IPv6 address of the link `index` (`ifname`) in the pod is tentative, looking
/// after 1 ms, then twice as long each time up to every `interval`, for up to `timeout` (the
/// reference's `WaitForAddressesToBeStable`, which looks every `interval`). An
/// address whose detection failed ends the wait at once: it never becomes usable.
///
/// # Errors
/// [`PodNetworkError::DadTimeout`] naming the addresses still tentative,
/// [`PodNetworkError::DadFailed`] naming the duplicate, or the address dump failing.
pub async fn wait_until_addresses_settle(
    pod: &Netlink,
    index: u32,
    ifname: &str,
    timeout: Duration,
    interval: Duration,
) -> Result<(), PodNetworkError> {
    let deadline = Instant::now() + timeout;
    // Detection is off on a pod's link, so an address is tentative only until the kernel's
    // address work runs (well under a millisecond): look again soon, then every `interval`.
    let mut pause = Duration::from_millis(1).min(interval);
    loop {
        let addrs = pod
            .address_states(index, Some(Family::V6))
            .await
            .map_err(kernel)?;
        if let Some((address, _, _)) = addrs
            .iter()
            .find(|(_, _, f)| f.contains(AddressFlags::Dadfailed))
        {
            return Err(PodNetworkError::DadFailed {
                ifname: ifname.to_string(),
                address: *address,
                rollback: Vec::new(),
            });
        }
        let tentative: Vec<IpAddr> = addrs
            .iter()
            .filter(|(_, _, f)| f.contains(AddressFlags::Tentative))
            .map(|(ip, _, _)| *ip)
            .collect();
        if tentative.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PodNetworkError::DadTimeout {
                ifname: ifname.to_string(),
                addresses: tentative,
                timeout,
                rollback: Vec::new(),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(interval);
    }
}

async fn delete_veth_by_name(host: &Netlink, name: &str) -> Result<bool, NetlinkError> {
    match host.link_by_name(name).await? {
        Some(link) => host.del_link(link.index, name).await,
        None => Ok(false),
    }
}

/// Removes every priority-512 rule `to <ip>` and every priority-1536 rule `from <ip>` (whatever
/// their table) for the given addresses, each in its family's rule table. Returns the failures
/// (already-gone rules are not failures).
///
/// The rules are deleted by value, as the reference does, rather than found in a dump of every
/// rule: a dump grows with the pods on the node (two rules each).
pub async fn delete_rules_for(host: &Netlink, ips: &[IpAddr]) -> Vec<String> {
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

/// Host-side teardown for DEL: for each of the pod's addresses its `/32` (`/128`) route in main
/// and its rules 512/1536. Returns every failure; missing objects are fine.
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
pub async fn teardown_host(host: &Netlink, ips: &[IpAddr], veths: &[HostVethRef]) -> Vec<String> {
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
    let mut foreign: Vec<IpAddr> = Vec::new();
    let routes = match host_routes_of(host, ips).await {
        Ok(routes) => routes,
        Err(e) => {
            // Without the routes the rules' owner is unknown: none is touched, the DEL fails
            // and the runtime retries it.
            errors.push(e.to_string());
            return errors;
        }
    };
    for r in routes.iter().filter(|r| is_host_route(r)) {
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
    let mine: Vec<IpAddr> = ips
        .iter()
        .copied()
        .filter(|ip| !foreign.contains(ip))
        .collect();
    errors.extend(delete_rules_for(host, &mine).await);
    timing::mark("host_rules_del");
    errors
}

/// The families of `ips`, IPv4 first, each once.
fn families(ips: &[IpAddr]) -> Vec<Family> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| ips.iter().any(|ip| Family::of(*ip) == *f))
        .collect()
}

/// The routes of the families of `ips` (one dump per family present: an IPv4 pod's DEL dumps
/// IPv4 routes only).
async fn host_routes_of(host: &Netlink, ips: &[IpAddr]) -> Result<Vec<Route>, NetlinkError> {
    let mut routes = Vec::new();
    for family in families(ips) {
        routes.extend(host.routes(family).await?);
    }
    Ok(routes)
}

/// A host route of one address (`/32` or `/128`) in main, as ADD makes them.
fn is_host_route(r: &Route) -> bool {
    r.table == MAIN_TABLE && r.prefix_len == r.family().host_prefix_len()
}

/// Host-side teardown for GC: for each address, its rules, its /32 (/128) route in main, and
/// the veth that route points at. Returns every failure.
pub async fn teardown_released(host: &Netlink, ips: &[IpAddr]) -> Vec<String> {
    let mut errors = delete_rules_for(host, ips).await;
    if ips.is_empty() {
        return errors;
    }
    let (routes, links) = match (host_routes_of(host, ips).await, host.links().await) {
        (Ok(r), Ok(l)) => (r, l),
        (Err(e), _) | (_, Err(e)) => {
            errors.push(e.to_string());
            return errors;
        }
    };
    for r in routes
        .iter()
        .filter(|r| is_host_route(r) && r.dst.is_some_and(|d| ips.contains(&d)))
    {
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
    /// The `/32` IPv4 and `/128` IPv6 addresses on `CNI_IFNAME` (link-local ones excluded: ADD
    /// never puts one there; the kernel gives an IPv6 interface its own `fe80::`).
    pub ips: Vec<IpAddr>,
    /// The interface's MAC.
    pub mac: Option<[u8; 6]>,
    /// The lladdr of the PERMANENT neighbour 169.254.1.1 (`fe80::1`) on it: ADD sets it to the
    /// host veth's MAC, so it identifies this sandbox's host veth among same-named ones as
    /// prevResult's MAC would.
    pub host_veth_mac: Option<[u8; 6]>,
}

/// Whether `ip` is link-local (169.254.0.0/16, fe80::/10).
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Reads [`PodSide`] from `ifname` in the pod namespace; `Ok(None)` when there is no such
/// interface (nothing of this sandbox is left in it: the veth pair goes as one).
pub async fn read_pod_side(pod: &Netlink, ifname: &str) -> Result<Option<PodSide>, NetlinkError> {
    let Some(link) = pod.link_by_name(ifname).await? else {
        return Ok(None);
    };
    let ips: Vec<IpAddr> = pod
        .addresses(link.index, None)
        .await?
        .into_iter()
        .filter(|(ip, len)| *len == Family::of(*ip).host_prefix_len() && !is_link_local(*ip))
        .map(|(ip, _)| ip)
        .collect();
    // The gateway of the pod's family (an IPv4 pod's DEL keeps dumping IPv4 neighbours only).
    let family = if !ips.is_empty() && ips.iter().all(|ip| ip.is_ipv6()) {
        Family::V6
    } else {
        Family::V4
    };
    let gateway = pod_gateway(family);
    let host_veth_mac = pod
        .neighbours(Some(family))
        .await?
        .into_iter()
        .find(|n| n.ifindex == link.index && n.ip == gateway && n.permanent)
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
    ips: &[IpAddr],
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
        let len = Family::of(ip).host_prefix_len();
        if let Err(e) = pod.del_address(link.index, ifname, ip, len).await {
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
    let family = Family::of(ip);
    let len = family.host_prefix_len();
    let gateway = pod_gateway(family);
    // The kernel keeps no scope for IPv6 routes (it reads them back as `universe`).
    let scoped = |r: &Route| family == Family::V6 || r.scope == RouteScope::Link;

    // Host side.
    let host_link = host.link_by_name(spec.host_veth).await?;
    match &host_link {
        None => diffs.push(format!("host veth {} does not exist", spec.host_veth)),
        Some(l) if !l.up => diffs.push(format!("host veth {} is down", spec.host_veth)),
        Some(_) => {}
    }
    let host_routes = host.routes(family).await?;
    let has_host_route = host_routes.iter().any(|r| {
        r.table == MAIN_TABLE
            && r.dst == Some(ip)
            && r.prefix_len == len
            && scoped(r)
            && host_link.as_ref().is_some_and(|l| r.oif == Some(l.index))
    });
    if !has_host_route {
        diffs.push(format!(
            "host route {ip}/{len} dev {} scope link is missing",
            spec.host_veth
        ));
    }
    let rules = host.rules(family).await?;
    let has_rule = |prio: u32, src: Option<IpAddr>, dst: Option<IpAddr>, table: u32| {
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
    let addrs = pod.addresses(pod_link.index, Some(family)).await?;
    if !addrs.contains(&(ip, len)) {
        diffs.push(format!("address {ip}/{len} is missing on {}", spec.ifname));
    }
    let pod_routes = pod.routes(family).await?;
    let idx = pod_link.index;
    if !pod_routes.iter().any(|r| {
        r.table == MAIN_TABLE
            && r.dst == Some(gateway)
            && r.prefix_len == len
            && scoped(r)
            && r.oif == Some(idx)
    }) {
        diffs.push(format!(
            "pod route {gateway}/{len} dev {} scope link is missing",
            spec.ifname
        ));
    }
    if !pod_routes.iter().any(|r| {
        r.table == MAIN_TABLE
            && r.prefix_len == 0
            && r.gateway == Some(gateway)
            && r.oif == Some(idx)
    }) {
        diffs.push(format!(
            "pod default route via {gateway} dev {} is missing",
            spec.ifname
        ));
    }
    let neigh = pod
        .neighbours(Some(family))
        .await?
        .into_iter()
        .find(|n| n.ifindex == idx && n.ip == gateway);
    let host_mac = host_link.as_ref().and_then(|l| l.mac);
    match neigh {
        None => diffs.push(format!("neighbour {gateway} on {} is missing", spec.ifname)),
        Some(n) => {
            if !n.permanent {
                diffs.push(format!("neighbour {gateway} is not PERMANENT"));
            }
            if let (Some(want), Some(got)) = (host_mac, n.mac)
                && want != got
            {
                diffs.push(format!(
                    "neighbour {gateway} has lladdr {} but host veth {} has {}",
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
    fn families_are_listed_once_ipv4_first() {
        let v4: IpAddr = "10.0.0.5".parse().unwrap_or(IpAddr::from([0; 4]));
        let v6: IpAddr = "2600:1f14::5".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(families(&[]), Vec::<Family>::new());
        assert_eq!(families(&[v4, v4]), vec![Family::V4]);
        assert_eq!(families(&[v6]), vec![Family::V6]);
        assert_eq!(families(&[v6, v4]), vec![Family::V4, Family::V6]);
    }

    #[test]
    fn link_local_addresses_of_both_families_are_told_apart() {
        for (ip, want) in [
            ("169.254.1.1", true),
            ("10.0.0.5", false),
            ("fe80::1", true),
            ("fe80::a8c1:abff:fe12:3456", true),
            ("2600:1f14::5", false),
            ("fd00::5", false),
        ] {
            let parsed: IpAddr = ip.parse().unwrap_or(IpAddr::from([0; 4]));
            assert_eq!(is_link_local(parsed), want, "{ip}");
        }
    }

    #[test]
    fn setup_errors_name_what_failed_and_keep_rollback_failures() {
        let v6: IpAddr = "2600:1f14::5".parse().unwrap_or(IpAddr::from([0; 4]));
        let e = PodNetworkError::DadTimeout {
            ifname: "eth0".into(),
            addresses: vec![v6],
            timeout: DAD_TIMEOUT,
            rollback: Vec::new(),
        }
        .with_rollback(vec!["delete link eni1: busy".into()]);
        assert_eq!(
            e.to_string(),
            "IPv6 addresses 2600:1f14::5 on eth0 were still tentative (duplicate address detection) after 10s (rollback also failed: delete link eni1: busy)"
        );
        let e = PodNetworkError::DadFailed {
            ifname: "eth0".into(),
            address: v6,
            rollback: Vec::new(),
        };
        assert_eq!(
            e.to_string(),
            "duplicate address detection failed for 2600:1f14::5 on eth0: another node on the link holds it"
        );
    }

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..64 {
            let m = random_mac();
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
    }
}
