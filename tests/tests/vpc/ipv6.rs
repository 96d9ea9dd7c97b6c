//! The VPC simulator in IPv6 (issue 15): an IPv6 VPC (Amazon-provided /56, a /64 per subnet)
//! whose router delivers every IPv6 address and /80 prefix moto shows on an ENI to that ENI,
//! keeps EC2's source/destination check, and reaches an IPv6 internet host without NAT. Nodes
//! run without ipamd; each /80 is used as the CNI would use it: an address of it sits in a small
//! namespace behind the node (a pod), the node forwards.

use std::net::{IpAddr, Ipv6Addr};

use harness::vpc::router::router_link_name;
use harness::vpc::{EniState, INTERNET_HOST_V6, ROUTER_LINK_LOCAL};
use harness::{FabricOptions, NodeSpec, VpcFabric, VpcNode};
use ipnet::Ipv6Net;
use serde_json::Value;
use test_support::netns::Netns;

use crate::{check, fabric_with, node, ok};

/// A namespace behind a node holding one IPv6 address, wired as the CNI wires an IPv6 pod: its
/// `/128` on `eth0`, default route via `fe80::1` (a permanent neighbour, the host veth's MAC),
/// and on the node a `/128` route to the host veth; the node forwards IPv6.
struct PodV6 {
    ns: Netns,
    ip: Ipv6Addr,
}

impl PodV6 {
    fn behind(node: &VpcNode, ip: Ipv6Addr, host_veth: &str) -> Self {
        let ns = ok(node, Netns::new("v6pod"));
        let host = node.ns();
        ok(node, host.sysctl("net.ipv6.conf.all.forwarding", "1"));
        ok(
            node,
            host.ip(&[
                "link",
                "add",
                host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ]),
        );
        ok(
            node,
            host.sysctl(&format!("net.ipv6.conf.{host_veth}.accept_dad"), "0"),
        );
        ok(node, ns.sysctl("net.ipv6.conf.eth0.accept_dad", "0"));
        ok(node, host.ip(&["link", "set", host_veth, "up"]));
        ok(
            node,
            ns.ip(&["addr", "add", &format!("{ip}/128"), "dev", "eth0", "nodad"]),
        );
        ok(node, ns.ip(&["link", "set", "eth0", "up"]));
        let host_mac = mac_of(node, host, host_veth);
        let pod_mac = mac_of(node, &ns, "eth0");
        let gw = ROUTER_LINK_LOCAL.to_string();
        for args in [
            vec![
                "neigh",
                "replace",
                &gw,
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
            vec!["-6", "route", "add", "default", "via", &gw, "dev", "eth0"],
        ] {
            ok(node, ns.ip(&args));
        }
        let ip_text = ip.to_string();
        ok(
            node,
            host.ip(&[
                "neigh",
                "replace",
                &ip_text,
                "lladdr",
                &pod_mac,
                "dev",
                host_veth,
                "nud",
                "permanent",
            ]),
        );
        ok(
            node,
            host.ip(&["-6", "route", "add", &format!("{ip}/128"), "dev", host_veth]),
        );
        Self { ns, ip }
    }
}

fn mac_of(node: &VpcNode, ns: &Netns, link: &str) -> String {
    let link = ok(node, ns.link(link)).unwrap_or_default();
    link["address"].as_str().unwrap_or_default().to_owned()
}

/// An IPv6 VPC.
fn ipv6_fabric() -> VpcFabric {
    fabric_with(FabricOptions::default().with_ipv6())
}

/// A node without ipamd in an IPv6 VPC.
fn bare_node(vpc: &VpcFabric, name: &str) -> VpcNode {
    node(vpc, NodeSpec::new(name, "m5.large").without_ipamd())
}

/// The node's primary ENI in moto now.
pub(crate) fn primary_eni(vpc: &VpcFabric, node: &VpcNode) -> EniState {
    ok(node, vpc.ec2().eni(&node.instance().primary_eni)).unwrap()
}

/// The router's IPv6 routes (main table).
fn router_routes_v6(vpc: &VpcFabric, node: &VpcNode) -> Vec<Value> {
    ok(node, vpc.sync());
    ok(
        node,
        vpc.router()
            .ip_json(&["-6", "route", "show", "table", "main"]),
    )
}

/// The router's route to `dst` (`2001:…::5` for a /128, `…::/80` for a prefix), if any.
fn router_route(vpc: &VpcFabric, node: &VpcNode, dst: &str) -> Option<Value> {
    router_routes_v6(vpc, node)
        .into_iter()
        .find(|r| r["dst"] == dst)
}

/// The router routes `ip` to `eni`'s link as a `/128` with a permanent neighbour (ENI MAC).
fn assert_address_routed(vpc: &VpcFabric, node: &VpcNode, ip: Ipv6Addr, eni: &EniState) {
    let link = router_link_name(&eni.id);
    let route = router_route(vpc, node, &ip.to_string());
    check!(
        node,
        route.as_ref().is_some_and(|r| r["dev"] == link.as_str()),
        "the router does not route {ip} to {link} ({}): {route:?}",
        eni.id
    );
    let neighbours = ok(
        node,
        vpc.router().ip_json(&["-6", "neigh", "show", "dev", &link]),
    );
    check!(
        node,
        neighbours
            .iter()
            .any(|n| n["dst"] == ip.to_string().as_str()
                && n["lladdr"] == eni.mac.as_str()
                && n["state"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s == "PERMANENT"))),
        "no permanent neighbour {ip} -> {} on {link}: {neighbours:?}",
        eni.mac
    );
}

/// The router routes `prefix` to `eni`'s link via a link-local next hop whose permanent
/// neighbour entry is the ENI's MAC (no neighbour discovery for the /80's addresses).
fn assert_prefix_routed(vpc: &VpcFabric, node: &VpcNode, prefix: Ipv6Net, eni: &EniState) {
    let link = router_link_name(&eni.id);
    let route = router_route(vpc, node, &prefix.to_string());
    let hop = route
        .as_ref()
        .filter(|r| r["dev"] == link.as_str())
        .and_then(|r| r["gateway"].as_str())
        .and_then(|g| g.parse::<Ipv6Addr>().ok());
    check!(
        node,
        hop.is_some_and(|h| h.is_unicast_link_local()),
        "the router does not route {prefix} via a link-local on {link}: {route:?}"
    );
    let neighbours = ok(
        node,
        vpc.router().ip_json(&["-6", "neigh", "show", "dev", &link]),
    );
    let hop = hop.unwrap().to_string();
    check!(
        node,
        neighbours.iter().any(|n| n["dst"] == hop.as_str()
            && n["lladdr"] == eni.mac.as_str()
            && n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s == "PERMANENT"))),
        "the next hop {hop} of {prefix} is not a permanent neighbour -> {} on {link}: {neighbours:?}",
        eni.mac
    );
}

/// Pings `dst` from `ns`; whether replies came back, and ping's output.
fn ping(node: &VpcNode, ns: &Netns, dst: Ipv6Addr) -> (bool, String) {
    let out = ok(node, ns.ping(IpAddr::V6(dst)));
    (out.ok, out.output)
}

/// Adds a rule to the internet namespace's raw PREROUTING that counts echo requests from
/// `src` (no target: it only counts), tagged `tag`.
pub(crate) fn count_echo_requests_from(node: &VpcNode, vpc: &VpcFabric, src: Ipv6Addr, tag: &str) {
    ok(
        node,
        vpc.internet().exec_checked(
            "ip6tables",
            &[
                "-w",
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-s",
                &src.to_string(),
                "-p",
                "ipv6-icmp",
                "--icmpv6-type",
                "echo-request",
                "-m",
                "comment",
                "--comment",
                tag,
            ],
        ),
    );
}

/// Packets counted by the raw-table rule of `ns` whose text contains `needle`.
pub(crate) fn raw_rule_packets(node: &VpcNode, ns: &Netns, needle: &str) -> u64 {
    let out = ok(
        node,
        ns.exec_checked("ip6tables-save", &["-c", "-t", "raw"]),
    );
    let line = out.lines().find(|l| l.contains(needle));
    check!(
        node,
        line.is_some(),
        "no raw rule with {needle:?} in {}: {out}",
        ns.name()
    );
    line.and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_default()
}

/// Two nodes of an IPv6 VPC: each gets its ENI's first IPv6 address on eth0 with a default
/// route via the router's fe80::1 and no on-link /64; nodes reach each other over IPv6, and so
/// do addresses of the /80 prefixes moto delegated to their ENIs (behind the nodes, routed by
/// the router to the owning ENI without neighbour discovery). A prefix address reaches
/// 2001:db8::1, which sees it as the source (no NAT) and answers it. A source the sending ENI
/// does not own (another node's prefix) is dropped by the router's source/destination check
/// and never reaches the internet.
#[test]
fn ipv6_vpc_delivers_addresses_and_prefixes_across_nodes_and_to_the_internet() {
    let vpc = ipv6_fabric();
    let blocks = vpc.ipv6_cidrs();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].prefix_len(), 56, "{blocks:?}");
    let subnet_block = vpc.subnet().ipv6_cidrs.first().copied();
    assert_eq!(
        subnet_block,
        blocks[0].subnets(64).unwrap().next(),
        "the nodes' subnet is the VPC's first /64"
    );
    let subnet_block = subnet_block.unwrap();
    let (a, b) = std::thread::scope(|s| {
        let ha = s.spawn(|| bare_node(&vpc, "v6-a"));
        let hb = s.spawn(|| bare_node(&vpc, "v6-b"));
        (ha.join().unwrap(), hb.join().unwrap())
    });

    // The node side: its ENI's first IPv6 address, as a /128, the default via fe80::1.
    for n in [&a, &b] {
        let eni = primary_eni(&vpc, n);
        let ip = n.primary_ipv6();
        check!(
            n,
            ip.is_some() && ip == eni.ipv6_addresses.first().copied(),
            "node {} has IPv6 {ip:?}, its primary ENI {:?}",
            n.instance_id(),
            eni.ipv6_addresses
        );
        let ip = ip.unwrap();
        check!(
            n,
            subnet_block.contains(&ip),
            "{ip} is not in {subnet_block}"
        );
        assert_eq!(
            n.metadata().and_then(|m| m.ipv6()),
            Some(ip),
            "instance metadata's ipv6"
        );
        let addrs = ok(n, n.ns().ip(&["-6", "addr", "show", "dev", "eth0"]));
        check!(
            n,
            addrs.contains(&format!("{ip}/128")),
            "eth0 lacks {ip}/128: {addrs}"
        );
        let routes = ok(n, n.ns().ip_json(&["-6", "route", "show"]));
        check!(
            n,
            routes.iter().any(|r| r["dst"] == "default"
                && r["gateway"] == ROUTER_LINK_LOCAL.to_string().as_str()
                && r["dev"] == "eth0"),
            "no default route via fe80::1 on eth0: {routes:?}"
        );
        check!(
            n,
            !routes
                .iter()
                .any(|r| r["dst"] == subnet_block.to_string().as_str()),
            "the subnet {subnet_block} is on-link on the node: {routes:?}"
        );
        assert_address_routed(&vpc, n, ip, &eni);
    }
    let (a_ip, b_ip) = (a.primary_ipv6().unwrap(), b.primary_ipv6().unwrap());
    for (from, to) in [(&a, b_ip), (&b, a_ip)] {
        let (reached, output) = ping(from, from.ns(), to);
        check!(
            from,
            reached,
            "{} cannot ping {to} over the VPC: {output}",
            from.instance_id()
        );
    }

    // One /80 per node, an address of it behind the node.
    let mut pods = Vec::new();
    for (n, veth) in [(&a, "v6pa"), (&b, "v6pb")] {
        let eni_id = n.instance().primary_eni.clone();
        let prefixes = ok(n, vpc.ec2().assign_ipv6_prefixes(&eni_id, 1));
        assert_eq!(prefixes.len(), 1, "{prefixes:?}");
        let prefix = prefixes[0];
        check!(
            n,
            prefix.prefix_len() == 80 && subnet_block.contains(&prefix),
            "moto delegated {prefix}, not a /80 of {subnet_block}"
        );
        let eni = primary_eni(&vpc, n);
        assert_eq!(eni.ipv6_prefixes, [prefix]);
        assert_prefix_routed(&vpc, n, prefix, &eni);
        let ip = prefix.hosts().nth(0x10).unwrap();
        pods.push((PodV6::behind(n, ip, veth), prefix));
    }
    let (pa, pb) = (&pods[0].0, &pods[1].0);
    for (n, from, to) in [
        (&a, pa, pb.ip),
        (&b, pb, pa.ip),
        (&a, pa, b_ip),
        (&b, pb, a_ip),
    ] {
        let (reached, output) = ping(n, &from.ns, to);
        check!(
            n,
            reached,
            "{} (behind {}) cannot ping {to}: {output}",
            from.ip,
            n.instance_id()
        );
    }

    // The internet sees the prefix address itself, and answers it.
    count_echo_requests_from(&a, &vpc, pa.ip, "vcni-seen-pod");
    let (reached, output) = ping(&a, &pa.ns, INTERNET_HOST_V6);
    check!(
        a,
        reached,
        "{} cannot ping {INTERNET_HOST_V6}: {output}",
        pa.ip
    );
    let seen = raw_rule_packets(&a, vpc.internet(), "vcni-seen-pod");
    check!(
        a,
        seen >= 1,
        "the internet host saw no echo request from {}",
        pa.ip
    );

    // Spoofing: an address of b's prefix sent out of a's ENI.
    let spoofed = pods[1].1.hosts().nth(0x20).unwrap();
    let spoofer = PodV6::behind(&a, spoofed, "v6ps");
    count_echo_requests_from(&a, &vpc, spoofed, "vcni-seen-spoofed");
    let dropped_before = raw_rule_packets(&a, vpc.router(), "rpfilter");
    for dst in [INTERNET_HOST_V6, b_ip] {
        let (reached, output) = ping(&a, &spoofer.ns, dst);
        check!(
            a,
            !reached,
            "{spoofed} (b's prefix) sent through a's ENI reached {dst}: {output}"
        );
    }
    let dropped = raw_rule_packets(&a, vpc.router(), "rpfilter") - dropped_before;
    check!(
        a,
        dropped >= 2,
        "the router's source/destination check dropped {dropped} packets from {spoofed}"
    );
    assert_eq!(
        raw_rule_packets(&a, vpc.internet(), "vcni-seen-spoofed"),
        0,
        "a spoofed packet reached the internet"
    );
    // The same address behind its own node goes through.
    let (reached, output) = ping(&b, &pb.ns, INTERNET_HOST_V6);
    check!(b, reached, "{} cannot ping the internet: {output}", pb.ip);
}

/// The hypervisor keeps the router's IPv6 routes in step with moto: an IPv6 address or a /80
/// assigned to an ENI gets its route (and is reachable), and once unassigned in moto the route
/// goes and the address is unreachable again; IPv4 keeps working alongside.
#[test]
fn ipv6_routes_follow_moto_as_addresses_and_prefixes_come_and_go() {
    let vpc = ipv6_fabric();
    let a = bare_node(&vpc, "v6-watch-a");
    let b = bare_node(&vpc, "v6-watch-b");
    let eni_id = b.instance().primary_eni.clone();

    // A second address of b's ENI, on b's eth0.
    let added = ok(&b, vpc.ec2().assign_ipv6_addresses(&eni_id, 1));
    assert_eq!(added.len(), 1, "{added:?}");
    let extra = added[0];
    assert_address_routed(&vpc, &b, extra, &primary_eni(&vpc, &b));
    ok(
        &b,
        b.ns().ip(&[
            "addr",
            "add",
            &format!("{extra}/128"),
            "dev",
            "eth0",
            "nodad",
        ]),
    );
    let (reached, output) = ping(&a, a.ns(), extra);
    check!(a, reached, "cannot ping {extra} on b: {output}");

    // A /80 of b's ENI, an address of it behind b.
    let prefix = ok(&b, vpc.ec2().assign_ipv6_prefixes(&eni_id, 1))[0];
    assert_prefix_routed(&vpc, &b, prefix, &primary_eni(&vpc, &b));
    let pod = PodV6::behind(&b, prefix.hosts().nth(7).unwrap(), "v6pw");
    let (reached, output) = ping(&a, a.ns(), pod.ip);
    check!(a, reached, "cannot ping {} behind b: {output}", pod.ip);

    // Unassigned in moto: the routes go, the addresses are unreachable.
    ok(&b, vpc.ec2().unassign_ipv6_prefixes(&eni_id, &[prefix]));
    ok(&b, vpc.ec2().unassign_ipv6_addresses(&eni_id, &[extra]));
    for dst in [prefix.to_string(), extra.to_string()] {
        let route = router_route(&vpc, &b, &dst);
        check!(
            b,
            route.is_none(),
            "the router still routes {dst} after moto unassigned it: {route:?}"
        );
    }
    for dst in [pod.ip, extra] {
        let (reached, output) = ping(&a, a.ns(), dst);
        check!(
            a,
            !reached,
            "{dst} is still reachable after moto unassigned it: {output}"
        );
    }
    let link = router_link_name(&eni_id);
    let neighbours = ok(
        &b,
        vpc.router().ip_json(&["-6", "neigh", "show", "dev", &link]),
    );
    check!(
        b,
        !neighbours
            .iter()
            .any(|n| n["dst"] == extra.to_string().as_str()),
        "the router keeps a neighbour for {extra}: {neighbours:?}"
    );

    // Node addresses stay routed, IPv4 too.
    let (reached, output) = ping(&a, a.ns(), b.primary_ipv6().unwrap());
    check!(a, reached, "cannot ping b's IPv6 address: {output}");
    let out = ok(&a, a.ns().ping(IpAddr::V4(b.primary_ip())));
    check!(a, out.ok, "cannot ping b's IPv4 address: {}", out.output);
}
