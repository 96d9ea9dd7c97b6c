//! The kernel side of the simulated VPC: the `vpc` router namespace, the `internet` namespace
//! behind it, and the per-ENI links and routes the hypervisor watcher keeps in step with moto.
//!
//! ```text
//!  node ns                       vpc ns (router)                         internet ns
//!  eth0 (primary ENI MAC) ─veth─ vr<eni> ─┐  lo: <subnet>.1, 169.254.169.254
//!  eth1 (ENI MAC, down)  ─veth─ vr<eni> ─┤  forwarding, proxy_arp, rp_filter=1
//!                                         └─ inet 203.0.113.254/24 ─veth─ vpc0 203.0.113.1/24
//!                                              2001:db8::fe/64 (IPv6)     2001:db8::1/64 (IPv6)
//!                                                                         lo 203.0.113.10 (EC2)
//! ```
//! For every private address moto shows on an attached ENI the router has `ip/32 dev vr<eni>`
//! and a permanent neighbour `ip -> ENI MAC`: the VPC delivers to the ENI that owns an address,
//! it never ARPs for it. The router answers nodes' ARP for every other VPC address (proxy ARP)
//! and for the subnet routers (its own addresses), and strict reverse-path filtering plays EC2's
//! source/destination check (a packet must leave the node through the ENI that owns its source).
//! The internet namespace forwards nothing and translates nothing; it routes the VPC back
//! through the router. Nothing here touches the machine's root namespace.
//!
//! In an IPv6 VPC ([`build`] with `ipv6`, then [`route_vpc_ipv6`] once EC2 picked the VPC's
//! /56) the router also forwards IPv6, the same way:
//! - every `vr<eni>` link has the fixed link-local [`ROUTER_LINK_LOCAL`] (`fe80::1`), the
//!   address AWS's VPC router answers on; nodes route everything through it;
//! - every IPv6 address moto shows on an attached ENI is `ip/128 dev vr<eni>` with a permanent
//!   neighbour `ip -> ENI MAC`;
//! - every delegated IPv6 /80 is `prefix via <ENI link-local> dev vr<eni>`, the next hop being
//!   the EUI-64 link-local of the ENI's MAC with a permanent neighbour `-> ENI MAC`: the whole
//!   /80 reaches the ENI without neighbour discovery, as EC2 delivers a prefix (the node never
//!   answers for its pods' addresses);
//! - the VPC's /56 is `unreachable` (an address no ENI holds fails at the router instead of
//!   bouncing to the internet and back), the default route goes to the internet's
//!   [`INTERNET_HOST_V6`] (`2001:db8::1`), which routes the /56 back via `2001:db8::fe`;
//! - EC2's source/destination check is ip6tables' `rpfilter` match in the router's raw
//!   PREROUTING for packets coming from ENIs (`-i vr+`): IPv6 has no `rp_filter` sysctl;
//! - no NAT anywhere, and duplicate address detection is off in the router (its addresses are
//!   usable at once; EC2 hands out unique addresses).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use ipnet::{Ipv4Net, Ipv6Net};

use super::model::VpcSnapshot;
use test_support::netns::{CommandError, Netns};

/// The router's link into the internet namespace.
pub(crate) const ROUTER_INTERNET_LINK: &str = "inet";
/// The internet namespace's link to the router.
pub(crate) const INTERNET_LINK: &str = "vpc0";
/// The router's address on the internet side.
pub(crate) const ROUTER_INTERNET_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// The internet namespace's own address (what a pod pings to test egress).
pub const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The internet side's prefix.
pub(crate) const INTERNET_PREFIX: u8 = 24;
/// The router's IPv6 address on the internet side (IPv6 VPCs).
pub(crate) const ROUTER_INTERNET_ADDR_V6: Ipv6Addr =
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
/// The internet namespace's own IPv6 address (IPv6 VPCs; documentation range, RFC 3849).
pub const INTERNET_HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The internet side's IPv6 prefix length.
pub(crate) const INTERNET_PREFIX_V6: u8 = 64;
/// The router's link-local address on every ENI link (IPv6 VPCs): nodes' default gateway.
pub const ROUTER_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Address of the EC2 endpoint (moto) in the internet namespace.
pub const EC2_ENDPOINT_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Port of the EC2 endpoint.
pub const EC2_ENDPOINT_PORT: u16 = 80;

/// The EC2 endpoint URL nodes use (`AWS_ENDPOINT_URL_EC2`).
pub fn ec2_endpoint() -> String {
    format!("http://{EC2_ENDPOINT_ADDR}:{EC2_ENDPOINT_PORT}")
}
/// The instance metadata service's address, served by the router.
pub const IMDS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// MTU of ENIs (jumbo frames inside a VPC).
pub(crate) const ENI_MTU: u32 = 9001;
/// Prefix of the router-side names of ENI links.
pub(crate) const ROUTER_LINK_PREFIX: &str = "vr";

/// Router-side link name of an ENI: `vr` + the last 12 characters of its id.
pub fn router_link_name(eni_id: &str) -> String {
    let tail: String = eni_id
        .chars()
        .rev()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{ROUTER_LINK_PREFIX}{tail}")
}

/// Runs `ip -n <ns> -force -batch -` with `lines`; fails naming every failed line.
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<(), CommandError> {
    if lines.is_empty() {
        return Ok(());
    }
    let command = format!("ip -n {ns} -force -batch -");
    let mut child = Command::new("ip")
        .args(["-n", ns, "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut text = lines.join("\n");
        text.push('\n');
        // ip reads everything before it exits; a write error shows up as its exit status.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CommandError::Failed {
            command: format!("{command} <<< {lines:?}"),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Builds the router and the internet namespace: addresses, sysctls, the link between them.
/// With `ipv6`, also their IPv6 side but for the VPC's own routes ([`route_vpc_ipv6`]):
/// forwarding, the internet link's addresses, the router's default route and the
/// source/destination check.
pub fn build(
    router: &Netns,
    internet: &Netns,
    vpc_cidrs: &[Ipv4Net],
    subnet_gateways: &[Ipv4Addr],
    ipv6: bool,
) -> Result<(), CommandError> {
    // Defaults first: links created later (one per ENI) inherit them.
    let mut sysctls = vec![
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.default.rp_filter=1",
        "net.ipv4.conf.default.proxy_arp=1",
    ];
    if ipv6 {
        sysctls.extend(IPV6_ROUTER_SYSCTLS);
    }
    router.exec_checked("sysctl", &sysctls)?;
    if ipv6 {
        internet.exec_checked("sysctl", &IPV6_HOST_SYSCTLS)?;
    }
    let mut lines = vec![format!(
        "link add {ROUTER_INTERNET_LINK} type veth peer name {INTERNET_LINK} netns {}",
        internet.name()
    )];
    lines.push(format!(
        "addr add {ROUTER_INTERNET_ADDR}/{INTERNET_PREFIX} dev {ROUTER_INTERNET_LINK}"
    ));
    lines.push(format!("link set {ROUTER_INTERNET_LINK} up"));
    lines.push(format!("addr add {IMDS_ADDR}/32 dev lo"));
    for gw in subnet_gateways {
        lines.push(format!("addr add {gw}/32 dev lo"));
    }
    if ipv6 {
        lines.push(format!(
            "addr add {ROUTER_INTERNET_ADDR_V6}/{INTERNET_PREFIX_V6} dev {ROUTER_INTERNET_LINK} nodad"
        ));
        lines.push(format!(
            "route add default via {INTERNET_HOST_V6} dev {ROUTER_INTERNET_LINK}"
        ));
    }
    ip_batch(router.name(), &lines)?;
    if ipv6 {
        // EC2's source/destination check: a packet from an ENI must carry a source address the
        // router routes back through that same ENI (its addresses' /128s, its prefixes' /80s).
        // Link-local sources are looked up on the incoming link, `::` (duplicate address
        // detection) always passes.
        router.exec_checked(
            "ip6tables",
            &[
                "-w",
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-i",
                &format!("{ROUTER_LINK_PREFIX}+"),
                "-m",
                "rpfilter",
                "--invert",
                "-j",
                "DROP",
            ],
        )?;
    }

    let mut lines = vec![
        format!("addr add {INTERNET_HOST}/{INTERNET_PREFIX} dev {INTERNET_LINK}"),
        format!("link set {INTERNET_LINK} up"),
        format!("addr add {EC2_ENDPOINT_ADDR}/32 dev lo"),
    ];
    for cidr in vpc_cidrs {
        lines.push(format!("route add {cidr} via {ROUTER_INTERNET_ADDR}"));
    }
    if ipv6 {
        lines.push(format!(
            "addr add {INTERNET_HOST_V6}/{INTERNET_PREFIX_V6} dev {INTERNET_LINK} nodad"
        ));
    }
    ip_batch(internet.name(), &lines)
}

/// Sysctls of an IPv6 VPC's router: forwarding, and no duplicate address detection (the links'
/// addresses, `fe80::1` above all, are usable the moment they are added).
const IPV6_ROUTER_SYSCTLS: [&str; 5] = [
    "net.ipv6.conf.all.disable_ipv6=0",
    "net.ipv6.conf.default.disable_ipv6=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    // `all` carries the value to `default` and to every link.
    "net.ipv6.conf.all.forwarding=1",
];

/// Sysctls of the internet namespace in an IPv6 VPC: a host with IPv6, addresses usable at once.
const IPV6_HOST_SYSCTLS: [&str; 6] = [
    "-q",
    "-w",
    "net.ipv6.conf.all.disable_ipv6=0",
    "net.ipv6.conf.default.disable_ipv6=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
];

/// Routes the VPC's IPv6 blocks: the internet sends them back through the router, and the
/// router answers "unreachable" for an address of them no ENI holds (more specific `/128` and
/// `/80` routes to ENIs win), instead of sending it to the internet.
pub(crate) fn route_vpc_ipv6(
    router: &Netns,
    internet: &Netns,
    vpc_ipv6_cidrs: &[Ipv6Net],
) -> Result<(), CommandError> {
    let unreachable: Vec<String> = vpc_ipv6_cidrs
        .iter()
        .map(|cidr| format!("route replace unreachable {cidr}"))
        .collect();
    ip_batch(router.name(), &unreachable)?;
    let back: Vec<String> = vpc_ipv6_cidrs
        .iter()
        .map(|cidr| {
            format!("route replace {cidr} via {ROUTER_INTERNET_ADDR_V6} dev {INTERNET_LINK}")
        })
        .collect();
    ip_batch(internet.name(), &back)
}

/// The EUI-64 link-local address of `mac` (RFC 4291 appendix A), what a node's kernel gives the
/// ENI's link: the router's next hop for the ENI's IPv6 prefixes.
pub(crate) fn eui64_link_local(mac: &str) -> Option<Ipv6Addr> {
    let octets: Vec<u8> = mac
        .split(':')
        .map(|o| u8::from_str_radix(o, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let [a, b, c, d, e, f] = <[u8; 6]>::try_from(octets).ok()?;
    Some(Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        a ^ 0x02,
        b,
        c,
        0xff,
        0xfe,
        d,
        e,
        f,
    ]))
}

/// Adds a subnet router address (`.1`) to the router.
pub(crate) fn add_gateway(router: &Netns, gateway: Ipv4Addr) -> Result<(), CommandError> {
    router.ip(&["addr", "replace", &format!("{gateway}/32"), "dev", "lo"])?;
    Ok(())
}

/// An ENI link as the router has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    eni_id: String,
    attachment_id: String,
    node_ns: String,
    device: u32,
    mac: String,
    ips: BTreeSet<Ipv4Addr>,
    /// IPv6 addresses routed as `/128`s (IPv6 VPCs only).
    ipv6s: BTreeSet<Ipv6Addr>,
    /// IPv6 prefixes routed via the ENI's link-local (IPv6 VPCs only).
    ipv6_prefixes: BTreeSet<Ipv6Net>,
}

/// What the router namespace holds for ENIs, and how to bring it in step with a snapshot.
#[derive(Debug, Default)]
pub(crate) struct RouterState {
    links: BTreeMap<String, Link>,
    /// The kernel may differ from `links` (a batch failed): re-read it before the next diff.
    dirty: bool,
    /// The VPC routes IPv6 (its ENIs' IPv6 addresses and prefixes).
    ipv6: bool,
}

impl RouterState {
    /// A router that routes IPv4, and IPv6 too with `ipv6` (an IPv6 VPC).
    pub(crate) fn new(ipv6: bool) -> Self {
        Self {
            ipv6,
            ..Self::default()
        }
    }

    /// Makes the router match `snapshot` for the nodes in `nodes` (instance id → node namespace
    /// name): one link per attached ENI (node end named `eth<device>` with the ENI's MAC, left
    /// down), and the `/32` routes and neighbours of its private addresses and of every address
    /// of its delegated prefixes. ENIs of other instances, and detached ones, have no link. In
    /// an IPv6 VPC also the `/128` routes and neighbours of its IPv6 addresses and the routes
    /// of its IPv6 prefixes (module docs).
    pub(crate) fn apply(
        &mut self,
        router: &Netns,
        snapshot: &VpcSnapshot,
        nodes: &BTreeMap<String, String>,
    ) -> Result<(), CommandError> {
        if self.dirty {
            self.reread(router)?;
        }
        let mut desired: BTreeMap<String, Link> = BTreeMap::new();
        for eni in snapshot.enis.values() {
            let Some(attachment) = &eni.attachment else {
                continue;
            };
            let Some(node_ns) = nodes.get(&attachment.instance_id) else {
                continue;
            };
            desired.insert(
                router_link_name(&eni.id),
                Link {
                    eni_id: eni.id.clone(),
                    attachment_id: attachment.attachment_id.clone(),
                    node_ns: node_ns.clone(),
                    device: attachment.device_index,
                    mac: eni.mac.clone(),
                    // A delegated prefix is routed address by address, like the ENI's own
                    // addresses: the fabric delivers each of its 16 addresses to the ENI.
                    ips: eni.all_addresses().collect(),
                    ipv6s: if self.ipv6 {
                        eni.ipv6_addresses.iter().copied().collect()
                    } else {
                        BTreeSet::new()
                    },
                    ipv6_prefixes: if self.ipv6 {
                        eni.ipv6_prefixes.iter().map(Ipv6Net::trunc).collect()
                    } else {
                        BTreeSet::new()
                    },
                },
            );
        }

        let mut links = Vec::new();
        let stale: Vec<String> = self
            .links
            .iter()
            .filter(|(name, cur)| {
                desired.get(*name).is_none_or(|d| {
                    d.attachment_id != cur.attachment_id
                        || d.node_ns != cur.node_ns
                        || d.mac != cur.mac
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            links.push(format!("link del {name}"));
            self.links.remove(&name);
        }
        for (name, d) in &desired {
            if self.links.contains_key(name) {
                continue;
            }
            links.push(format!(
                "link add {name} mtu {ENI_MTU} type veth peer name eth{} address {} mtu {ENI_MTU} netns {}",
                d.device, d.mac, d.node_ns
            ));
            links.push(format!("link set {name} up"));
            if self.ipv6 {
                links.push(format!("addr add {ROUTER_LINK_LOCAL}/64 dev {name} nodad"));
            }
            self.links.insert(
                name.clone(),
                Link {
                    ips: BTreeSet::new(),
                    ipv6s: BTreeSet::new(),
                    ipv6_prefixes: BTreeSet::new(),
                    ..d.clone()
                },
            );
        }
        self.run(router, &links)?;

        let mut routes = Vec::new();
        for (name, d) in &desired {
            let Some(cur) = self.links.get_mut(name) else {
                continue;
            };
            for ip in cur.ips.difference(&d.ips) {
                routes.push(format!("route del {ip}/32 dev {name}"));
                routes.push(format!("neigh del {ip} dev {name}"));
            }
            for ip in d.ips.difference(&cur.ips) {
                routes.push(format!("route replace {ip}/32 dev {name}"));
                routes.push(format!(
                    "neigh replace {ip} lladdr {} dev {name} nud permanent",
                    d.mac
                ));
            }
            cur.ips.clone_from(&d.ips);
            for ip in cur.ipv6s.difference(&d.ipv6s) {
                routes.push(format!("route del {ip}/128 dev {name}"));
                routes.push(format!("neigh del {ip} dev {name}"));
            }
            for ip in d.ipv6s.difference(&cur.ipv6s) {
                routes.push(format!("route replace {ip}/128 dev {name}"));
                routes.push(format!(
                    "neigh replace {ip} lladdr {} dev {name} nud permanent",
                    d.mac
                ));
            }
            cur.ipv6s.clone_from(&d.ipv6s);
            for prefix in cur.ipv6_prefixes.difference(&d.ipv6_prefixes) {
                routes.push(format!("route del {prefix} dev {name}"));
            }
            let added: Vec<&Ipv6Net> = d.ipv6_prefixes.difference(&cur.ipv6_prefixes).collect();
            if !added.is_empty() {
                // `ip link add` took this MAC already, so it parses; the next hop is never
                // solicited: its permanent entry is the ENI's MAC.
                let hop = eui64_link_local(&d.mac).unwrap_or(Ipv6Addr::UNSPECIFIED);
                routes.push(format!(
                    "neigh replace {hop} lladdr {} dev {name} nud permanent",
                    d.mac
                ));
                for prefix in added {
                    routes.push(format!("route replace {prefix} via {hop} dev {name}"));
                }
            }
            cur.ipv6_prefixes.clone_from(&d.ipv6_prefixes);
        }
        self.run(router, &routes)
    }

    fn run(&mut self, router: &Netns, lines: &[String]) -> Result<(), CommandError> {
        let result = ip_batch(router.name(), lines);
        if result.is_err() {
            self.dirty = true;
        }
        result
    }

    /// Re-reads the ENI links and their `/32` routes (and IPv6 `/128` and prefix routes) from
    /// the kernel (after a failed batch, or when a node namespace vanished and took its links
    /// with it).
    fn reread(&mut self, router: &Netns) -> Result<(), CommandError> {
        let ns = router;
        let present: BTreeSet<String> = ns
            .link_names()?
            .into_iter()
            .filter(|n| n.starts_with(ROUTER_LINK_PREFIX))
            .collect();
        let mut routed: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        for route in ns.routes("main")? {
            let (Some(dst), Some(dev)) = (route["dst"].as_str(), route["dev"].as_str()) else {
                continue;
            };
            if let Ok(ip) = dst.trim_end_matches("/32").parse::<Ipv4Addr>() {
                routed.entry(dev.to_owned()).or_default().insert(ip);
            }
        }
        let mut routed6: BTreeMap<String, BTreeSet<Ipv6Addr>> = BTreeMap::new();
        let mut prefixes6: BTreeMap<String, BTreeSet<Ipv6Net>> = BTreeMap::new();
        if self.ipv6 {
            for route in ns.ip_json(&["-6", "route", "show", "table", "main"])? {
                let (Some(dst), Some(dev)) = (route["dst"].as_str(), route["dev"].as_str()) else {
                    continue;
                };
                if !dev.starts_with(ROUTER_LINK_PREFIX) {
                    continue;
                }
                if let Ok(ip) = dst.trim_end_matches("/128").parse::<Ipv6Addr>() {
                    routed6.entry(dev.to_owned()).or_default().insert(ip);
                } else if let Ok(prefix) = dst.parse::<Ipv6Net>()
                    && route["gateway"].is_string()
                {
                    prefixes6.entry(dev.to_owned()).or_default().insert(prefix);
                }
            }
        }
        let mut orphans = Vec::new();
        self.links.retain(|name, _| present.contains(name));
        for name in &present {
            match self.links.get_mut(name) {
                Some(link) => {
                    link.ips = routed.remove(name).unwrap_or_default();
                    link.ipv6s = routed6.remove(name).unwrap_or_default();
                    link.ipv6_prefixes = prefixes6.remove(name).unwrap_or_default();
                }
                None => orphans.push(format!("link del {name}")),
            }
        }
        self.dirty = false;
        self.run(router, &orphans)
    }

    /// Forgets everything (the router namespace is being deleted).
    pub(crate) fn clear(&mut self) {
        self.links.clear();
    }

    /// ENI ids that currently have a link, with their node namespace and device.
    pub(crate) fn links(&self) -> Vec<(String, String, u32)> {
        self.links
            .values()
            .map(|l| (l.eni_id.clone(), l.node_ns.clone(), l.device))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_link_names_fit_ifnamsiz_and_differ_per_eni() {
        let a = router_link_name("eni-bb820a1f1b66e08e5");
        let b = router_link_name("eni-74792bd52776b2b7c");
        assert_eq!(a, "vra1f1b66e08e5");
        assert!(a.len() <= 15 && b.len() <= 15);
        assert_ne!(a, b);
    }

    #[test]
    fn prefixes_are_routed_via_the_enis_eui64_link_local() {
        assert_eq!(
            eui64_link_local("02:1a:2b:3c:4d:5e"),
            Some("fe80::1a:2bff:fe3c:4d5e".parse().unwrap())
        );
        assert_eq!(
            eui64_link_local("0c:00:00:00:00:01"),
            Some("fe80::e00:ff:fe00:1".parse().unwrap())
        );
        assert_eq!(eui64_link_local("02:00:00:00:00"), None);
        assert_eq!(eui64_link_local("not a mac"), None);
    }
}
