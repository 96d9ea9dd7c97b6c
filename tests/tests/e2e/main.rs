//! End-to-end tests: real ipamd, real plugin, real libcni, real kernel, on simulated nodes
//! (network namespaces) with the IMDS emulator. Each test builds its own node and tears it down;
//! tests run in parallel, so every name, port and directory is unique. They must run as root and
//! fail (never skip) when a prerequisite is missing.
#![allow(clippy::unwrap_used)]

mod bad_inputs;
mod chained;
mod direct;
mod enis;
mod fabric;
mod ipamd_lifecycle;
mod ipv6;
mod libcni;
mod pool;
mod restart;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use harness::{NodeOptions, Pod, SimNode};
use serde_json::Value;
use test_support::metadata::NodeDescription;
use vpc_cni_contract::dataplane::POD_GATEWAY;

pub use harness::check;
pub use harness::node::ok;

/// Unwraps the result of a node operation that needs `&mut` (its errors carry the logs).
pub fn must<T>(r: Result<T, harness::SimNodeError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Starts a node (and ipamd, unless the options say otherwise), panicking with logs on error.
pub fn start(options: NodeOptions) -> SimNode {
    match SimNode::start(options) {
        Ok(node) => node,
        Err(e) => panic!("cannot start the simulated node: {e}"),
    }
}

/// Starts a node with `desc` and default options.
pub fn start_node(desc: NodeDescription) -> SimNode {
    start(NodeOptions::new(desc))
}

/// Creates a pod sandbox.
pub fn pod(namespace: &str, name: &str) -> Pod {
    Pod::new(namespace, name).unwrap()
}

/// The pod's address from an ADD result, checked to be a `/32` of a secondary address.
pub fn pod_ip(node: &SimNode, result: &Value) -> Ipv4Addr {
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    let ip = harness::cni::result_ip(result);
    check!(
        node,
        address.ends_with("/32") && ip.is_some(),
        "ADD result has no ip/32 address: {result}"
    );
    let ip = ip.unwrap();
    check!(
        node,
        node.description().all_secondary_ips().contains(&ip),
        "pod address {ip} is not one of the metadata's secondary IPs {:?}",
        node.description().all_secondary_ips()
    );
    check!(
        node,
        !node.description().eni_primary_ips().contains(&ip),
        "pod address {ip} is an ENI primary address"
    );
    ip
}

/// The route table of the ENI owning `ip` (254 for the primary ENI).
pub fn table_of(node: &SimNode, ip: Ipv4Addr) -> u32 {
    node.description()
        .owner_of_secondary(ip)
        .map(|e| e.route_table())
        .unwrap_or_else(|| panic!("{ip} belongs to no ENI"))
}

/// Asserts the full data plane of a pod as ADD must leave it (design.md §1).
pub fn assert_pod_network(node: &SimNode, pod: &Pod, ip: Ipv4Addr) {
    let pod_ns = pod.ns().unwrap();
    let veth = pod.host_veth("eni");
    // Pod side: eth0 with ip/32, the two routes, the permanent neighbour.
    let addrs = ok(node, pod_ns.addresses_of(&pod.ifname));
    check!(
        node,
        addrs == vec![format!("{ip}/32")],
        "pod eth0 addresses {addrs:?}, want [{ip}/32]"
    );
    let routes = ok(node, pod_ns.routes("main"));
    let gw = POD_GATEWAY.to_string();
    check!(
        node,
        routes
            .iter()
            .any(|r| r["dst"] == gw.as_str() && r["dev"] == "eth0" && r["scope"] == "link"),
        "pod lacks `169.254.1.1 dev eth0 scope link`: {routes:?}"
    );
    check!(
        node,
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == gw.as_str() && r["dev"] == "eth0"),
        "pod lacks `default via 169.254.1.1 dev eth0`: {routes:?}"
    );
    let host_link = ok(node, node.ns().link(&veth));
    check!(
        node,
        host_link.is_some(),
        "host veth {veth} is missing; node links: {:?}",
        node.ns().link_names()
    );
    let host_link = host_link.unwrap();
    let host_mac = host_link["address"].as_str().unwrap_or_default().to_owned();
    let neigh = ok(node, pod_ns.neighbours());
    check!(
        node,
        neigh.iter().any(|n| n["dst"] == gw.as_str()
            && n["lladdr"] == host_mac.as_str()
            && n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))),
        "pod lacks permanent neighbour 169.254.1.1 -> {host_mac}: {neigh:?}"
    );
    // Host side: /32 route via the veth, rule 512, and rule 1536 only for secondary-ENI IPs.
    let routes = ok(node, node.routes_to(ip));
    check!(
        node,
        routes
            .iter()
            .any(|r| r["dev"] == veth.as_str() && r["scope"] == "link"),
        "host lacks `{ip} dev {veth} scope link`: {routes:?}"
    );
    let rules = ok(node, node.rules_for(ip));
    check!(
        node,
        rules.iter().any(|r| r["priority"] == 512
            && r["dst"] == ip.to_string().as_str()
            && r["table"] == "main"),
        "host lacks rule 512 `to {ip} lookup main`: {rules:?}"
    );
    let table = table_of(node, ip);
    let from_rules: Vec<&Value> = rules.iter().filter(|r| r["priority"] == 1536).collect();
    if table == 254 {
        check!(
            node,
            from_rules.is_empty(),
            "{ip} is on the primary ENI but has 1536 rules: {from_rules:?}"
        );
    } else {
        check!(
            node,
            from_rules.len() == 1
                && from_rules[0]["src"] == ip.to_string().as_str()
                && from_rules[0]["table"] == table.to_string().as_str(),
            "{ip} is on a secondary ENI: want exactly `1536: from {ip} lookup {table}`, got {from_rules:?}"
        );
    }
}

/// Asserts what DEL leaves (docs/contracts.md): the node neither routes the pod's address nor
/// has its rules, and the pod's interface, while its namespace exists, no longer holds the
/// address. The veth pair itself stays until the runtime removes the namespace.
pub fn assert_pod_unrouted(node: &SimNode, pod: &Pod, ip: Ipv4Addr) {
    let routes = ok(node, node.routes_to(ip));
    check!(
        node,
        routes.is_empty(),
        "routes to {ip} remain after DEL: {routes:?}"
    );
    let rules = ok(node, node.rules_for(ip));
    check!(
        node,
        rules.is_empty(),
        "rules for {ip} remain after DEL: {rules:?}"
    );
    if let Some(ns) = pod.netns() {
        let addrs = ok(node, ns.addresses_of(&pod.ifname));
        check!(
            node,
            addrs.is_empty(),
            "the pod's {} still holds {addrs:?} after DEL",
            pod.ifname
        );
    }
}

/// Asserts nothing of the pod remains on the node once its namespace is removed (or GC
/// released it): no veth (the kernel frees the pair with the namespace, shortly after), no
/// route, no rule.
pub fn assert_pod_gone(node: &SimNode, pod: &Pod, ip: Ipv4Addr) {
    let veth = pod.host_veth("eni");
    check!(
        node,
        ok(
            node,
            node.ns()
                .wait_link_gone(&veth, std::time::Duration::from_secs(10))
        ),
        "host veth {veth} still exists 10 s after its namespace was removed"
    );
    let routes = ok(node, node.routes_to(ip));
    check!(node, routes.is_empty(), "routes to {ip} remain: {routes:?}");
    let rules = ok(node, node.rules_for(ip));
    check!(node, rules.is_empty(), "rules for {ip} remain: {rules:?}");
}

/// The set of addresses of several results.
pub fn ip_set(ips: &[Ipv4Addr]) -> BTreeSet<Ipv4Addr> {
    ips.iter().copied().collect()
}
