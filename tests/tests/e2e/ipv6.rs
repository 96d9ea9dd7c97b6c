//! One node of an IPv6 cluster in instance-metadata-only mode (issue 15): metadata lists a /80
//! on the primary ENI, `ipamd install-cni` sets the node's IPv6 sysctls and installs the
//! plugins, ipamd serves /128s of the /80, and the plugin (run as a runtime runs it) builds
//! the reference's IPv6 data plane. The node reaches its pods and the pods each other over
//! IPv6; DEL leaves the node as it was.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use harness::{NodeOptions, Pod, SimNode, standard_node};
use ipnet::Ipv6Net;
use serde_json::Value;
use test_support::metadata::NodeDescription;

use crate::{check, must, ok, pod, start};

const VPC_V6: &str = "2600:1f14:d00:ab00::/56";
const SUBNET_V6: &str = "2600:1f14:d00:ab00::/64";
const NODE_V6: &str = "2600:1f14:d00:ab00::10";
const PREFIX: &str = "2600:1f14:d00:ab00:4a6b::/80";

/// An m5.large whose primary ENI has an IPv6 address and the /80, in an IPv6 VPC.
fn ipv6_description() -> NodeDescription {
    let mut d = standard_node(&[0]);
    d.vpc_ipv6_cidr_blocks = vec![VPC_V6.parse().unwrap()];
    let eth0 = &mut d.interfaces[0];
    eth0.subnet_ipv6_cidr_blocks = vec![SUBNET_V6.parse().unwrap()];
    eth0.ipv6s = vec![NODE_V6.parse().unwrap()];
    eth0.ipv6_prefixes = vec![PREFIX.parse().unwrap()];
    d
}

/// The node's IPv6 routes (not the kernel's `local` table) and rules, and its links.
fn v6_host_side(node: &SimNode) -> BTreeSet<String> {
    let ns = node.ns();
    let mut state: BTreeSet<String> = ok(node, ns.link_names()).into_iter().collect();
    for args in [
        &["-6", "route", "show", "table", "all"][..],
        &["-6", "rule", "show"][..],
    ] {
        state.extend(
            ok(node, ns.ip_json(args))
                .into_iter()
                .filter(|r| r["table"] != "local")
                .map(|r| r.to_string()),
        );
    }
    state
}

/// Whether `list` (`ip -j` output) has an entry whose fields all equal `want`'s.
fn has(list: &[Value], want: &[(&str, &str)]) -> bool {
    list.iter()
        .any(|e| want.iter().all(|(k, v)| e[*k].as_str() == Some(*v)))
}

/// The pod's IPv6 data plane, as the reference builds it, read back from the kernel.
fn assert_v6_pod(node: &SimNode, pod: &Pod, ip: Ipv6Addr) {
    let ns = pod.ns().unwrap();
    let addrs: Vec<(String, bool)> = ok(node, ns.ip_json(&["-6", "addr", "show", "dev", "eth0"]))
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            (
                format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]),
                a["tentative"].as_bool() == Some(true),
            )
        })
        .collect();
    let global: Vec<&(String, bool)> = addrs
        .iter()
        .filter(|(a, _)| !a.starts_with("fe80"))
        .collect();
    check!(
        node,
        global == [&(format!("{ip}/128"), false)],
        "{}: eth0 has {addrs:?}, not {ip}/128 usable",
        pod.name
    );
    let routes = ok(node, ns.ip_json(&["-6", "route", "show"]));
    check!(
        node,
        has(
            &routes,
            &[("dst", "default"), ("gateway", "fe80::1"), ("dev", "eth0")]
        ) && has(&routes, &[("dst", "fe80::1"), ("dev", "eth0")]),
        "{}: routes {routes:?}",
        pod.name
    );
    let veth = pod.host_veth("eni");
    let veth_mac = ok(node, node.ns().link(&veth))
        .and_then(|l| l["address"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let neigh = ok(node, ns.ip_json(&["-6", "neigh", "show", "dev", "eth0"]));
    check!(
        node,
        neigh.iter().any(|n| n["dst"] == "fe80::1"
            && n["lladdr"] == veth_mac.as_str()
            && n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))),
        "{}: no permanent fe80::1 -> {veth_mac}: {neigh:?}",
        pod.name
    );
    let host_routes = ok(
        node,
        node.ns().ip_json(&["-6", "route", "show", &ip.to_string()]),
    );
    check!(
        node,
        has(&host_routes, &[("dst", &ip.to_string()), ("dev", &veth)]),
        "{}: the node routes {ip} by {host_routes:?}, not to {veth}",
        pod.name
    );
    let rules = ok(node, node.ns().ip(&["-6", "rule", "show"]));
    check!(
        node,
        rules
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")
                == format!("512: from all to {ip} lookup main")),
        "{}: no rule 512 to {ip}: {rules}",
        pod.name
    );
}

/// Three pods on an IPv6 node in metadata-only mode: /128s of the metadata's /80 (never its
/// first address), the reference's data plane on both sides, pings node↔pod and pod↔pod,
/// the checkpoint's `ipv6` entries and introspection's `IPv6Cidrs`; after DEL the node's links,
/// IPv6 routes and rules are as before the first pod and the checkpoint is empty.
#[test]
fn imds_only_ipv6_node_serves_its_prefix_with_the_references_data_plane() {
    let mut node = start(
        NodeOptions::new(ipv6_description())
            .without_ipamd()
            .ipamd_env("ENABLE_IPv6", "true")
            .ipamd_env("ENABLE_IPv4", "false")
            .ipamd_env("ENABLE_PREFIX_DELEGATION", "true"),
    );
    // The node OS's address (DHCPv6 on EC2).
    ok(
        &node,
        node.ns().ip(&[
            "-6",
            "addr",
            "add",
            &format!("{NODE_V6}/128"),
            "dev",
            "eth0",
            "nodad",
        ]),
    );
    let image = tempfile::tempdir().unwrap();
    test_support::prereqs::stage_plugins(image.path(), &ipamd::install::SHIPPED_PLUGINS)
        .unwrap_or_else(|e| panic!("{e}"));
    must(node.install_cni(image.path()));
    check!(
        node,
        ok(&node, node.ns().sysctl_get("net.ipv6.conf.all.forwarding")) == "1",
        "install-cni did not turn IPv6 forwarding on"
    );
    must(node.start_ipamd());
    let before = v6_host_side(&node);

    let prefix: Ipv6Net = PREFIX.parse().unwrap();
    let pods: Vec<(Pod, Ipv6Addr)> = (0..3)
        .map(|k| {
            let p = pod("default", &format!("v6-{k}"));
            let result = ok(&node, node.add_pod(&p, "1.0.0"));
            let address = result["ips"][0]["address"].as_str().unwrap_or_default();
            let net: Option<Ipv6Net> = address.parse().ok();
            check!(
                node,
                net.is_some_and(|n| n.prefix_len() == 128 && prefix.contains(&n.addr()))
                    && net.is_some_and(|n| n.addr() != prefix.network())
                    && result["ips"][0]["gateway"] == "fe80::1",
                "ADD result {result}"
            );
            let ip = net.unwrap().addr();
            assert_v6_pod(&node, &p, ip);
            (p, ip)
        })
        .collect();
    let ips: BTreeSet<Ipv6Addr> = pods.iter().map(|(_, ip)| *ip).collect();
    check!(node, ips.len() == 3, "an address was given twice: {ips:?}");

    let node_v6: Ipv6Addr = NODE_V6.parse().unwrap();
    for (p, ip) in &pods {
        let out = ok(&node, node.ns().ping(IpAddr::V6(*ip)));
        check!(node, out.ok, "the node cannot ping {ip}: {}", out.output);
        let out = ok(&node, p.ns().unwrap().ping(IpAddr::V6(node_v6)));
        check!(node, out.ok, "{ip} cannot ping the node: {}", out.output);
    }
    let out = ok(&node, pods[0].0.ns().unwrap().ping(IpAddr::V6(pods[2].1)));
    check!(node, out.ok, "pod to pod over IPv6: {}", out.output);

    let checkpoint: BTreeSet<Ipv6Addr> = ok(&node, node.checkpoint())["allocations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["ipv6"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    check!(node, checkpoint == ips, "checkpoint {checkpoint:?}");
    let enis = ok(&node, node.introspect("/v1/enis"));
    check!(
        node,
        enis.to_string().contains("IPv6Cidrs") && enis.to_string().contains(PREFIX),
        "introspection does not show the /80: {enis}"
    );

    for (p, _) in &pods {
        ok(&node, node.del_pod(p, "1.0.0", None));
    }
    drop(pods);
    let mut after = v6_host_side(&node);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while after != before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        after = v6_host_side(&node);
    }
    check!(
        node,
        after == before,
        "left on the node: {:?}; gone: {:?}",
        after.difference(&before).collect::<Vec<_>>(),
        before.difference(&after).collect::<Vec<_>>()
    );
    let left = ok(&node, node.checkpoint())["allocations"].clone();
    check!(
        node,
        left.as_array().is_some_and(Vec::is_empty),
        "checkpoint {left}"
    );
}
