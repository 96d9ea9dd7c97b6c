//! The kernel side of the simulated VPC: the `vpc` router namespace, the `internet` namespace
//! behind it, and the per-ENI links and routes the hypervisor watcher keeps in step with moto.
//!
//! ```text
//!  node ns                       vpc ns (router)                         internet ns
//!  eth0 (primary ENI MAC) ─veth─ vr<eni> ─┐  lo: <subnet>.1, 169.254.169.254
//!  eth1 (ENI MAC, down)  ─veth─ vr<eni> ─┤  forwarding, proxy_arp, rp_filter=1
//!                                         └─ inet 203.0.113.254/24 ─veth─ vpc0 203.0.113.1/24
//!                                                                         lo 203.0.113.10 (EC2)
//! ```
//! For every private address moto shows on an attached ENI the router has `ip/32 dev vr<eni>`
//! and a permanent neighbour `ip -> ENI MAC`: the VPC delivers to the ENI that owns an address,
//! it never ARPs for it. The router answers nodes' ARP for every other VPC address (proxy ARP)
//! and for the subnet routers (its own addresses), and strict reverse-path filtering plays EC2's
//! source/destination check (a packet must leave the node through the ENI that owns its source).
//! The internet namespace forwards nothing and translates nothing; it routes the VPC back
//! through the router. Nothing here touches the machine's root namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

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
pub fn build(
    router: &Netns,
    internet: &Netns,
    vpc_cidrs: &[Ipv4Net],
    subnet_gateways: &[Ipv4Addr],
) -> Result<(), CommandError> {
    // Defaults first: links created later (one per ENI) inherit them.
    router.exec_checked(
        "sysctl",
        &[
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=1",
            "net.ipv4.conf.default.rp_filter=1",
            "net.ipv4.conf.default.proxy_arp=1",
        ],
    )?;
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
    ip_batch(router.name(), &lines)?;

    let mut lines = vec![
        format!("addr add {INTERNET_HOST}/{INTERNET_PREFIX} dev {INTERNET_LINK}"),
        format!("link set {INTERNET_LINK} up"),
        format!("addr add {EC2_ENDPOINT_ADDR}/32 dev lo"),
    ];
    for cidr in vpc_cidrs {
        lines.push(format!("route add {cidr} via {ROUTER_INTERNET_ADDR}"));
    }
    ip_batch(internet.name(), &lines)
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
}

/// What the router namespace holds for ENIs, and how to bring it in step with a snapshot.
#[derive(Debug, Default)]
pub(crate) struct RouterState {
    links: BTreeMap<String, Link>,
    /// The kernel may differ from `links` (a batch failed): re-read it before the next diff.
    dirty: bool,
}

impl RouterState {
    /// Makes the router match `snapshot` for the nodes in `nodes` (instance id → node namespace
    /// name): one link per attached ENI (node end named `eth<device>` with the ENI's MAC, left
    /// down), and the `/32` routes and neighbours of its private addresses and of every address
    /// of its delegated prefixes. ENIs of other instances, and detached ones, have no link.
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
            self.links.insert(
                name.clone(),
                Link {
                    ips: BTreeSet::new(),
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

    /// Re-reads the ENI links and their `/32` routes from the kernel (after a failed batch, or
    /// when a node namespace vanished and took its links with it).
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
        let mut orphans = Vec::new();
        self.links.retain(|name, _| present.contains(name));
        for name in &present {
            match self.links.get_mut(name) {
                Some(link) => link.ips = routed.remove(name).unwrap_or_default(),
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
}
