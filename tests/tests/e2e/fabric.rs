//! The simulated node itself matches its description before ipamd touches it: the harness's
//! own contract with every other test.

use std::net::{Ipv4Addr, TcpStream};

use harness::{NodeOptions, standard_node};

use crate::{check, ok, start};

#[test]
fn simulated_node_matches_its_description() {
    let mut node = start(NodeOptions::new(standard_node(&[2, 2])).without_ipamd());
    let ns = node.ns();
    // eth0: the primary ENI as the node OS configured it.
    let eth0 = ok(&node, ns.link("eth0")).unwrap();
    assert_eq!(eth0["address"], "02:00:0a:00:00:0a");
    assert_eq!(eth0["operstate"], "UP");
    assert_eq!(ok(&node, ns.addresses_of("eth0")), vec!["10.0.0.10/24"]);
    let routes = ok(&node, ns.routes("main"));
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "10.0.0.1" && r["dev"] == "eth0"),
        "{routes:?}"
    );
    assert_eq!(ok(&node, ns.sysctl_get("net.ipv4.ip_forward")), "1");
    // eth1: created with the ENI's MAC, left down and unaddressed for ipamd.
    let eth1 = ok(&node, ns.link("eth1")).unwrap();
    assert_eq!(eth1["address"], "02:00:0a:00:00:14");
    let flags: Vec<&str> = eth1["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(!flags.contains(&"UP"), "eth1 must start down: {flags:?}");
    assert!(ok(&node, ns.addresses_of("eth1")).is_empty());
    // The VPC router: the subnet gateway on its bridge, every ENI address as a neighbour.
    assert_eq!(
        ok(&node, node.vpc().addresses_of("br0")),
        vec!["10.0.0.1/24"]
    );
    let neigh = ok(&node, node.vpc().neighbours());
    for (ip, mac) in [
        ("10.0.0.11", "02:00:0a:00:00:0a"),
        ("10.0.0.21", "02:00:0a:00:00:14"),
    ] {
        assert!(
            neigh.iter().any(|n| n["dst"] == ip && n["lladdr"] == mac),
            "router does not map {ip} to {mac}: {neigh:?}"
        );
    }
    let ping = ok(&node, node.ping(ns, Ipv4Addr::new(10, 0, 0, 1)));
    check!(
        node,
        ping.ok,
        "node cannot reach its VPC gateway: {}",
        ping.output
    );
    // The IMDS emulator listens on the node's own loopback.
    let endpoint = node
        .imds_endpoint()
        .trim_start_matches("http://")
        .to_owned();
    let reachable = ok(
        &node,
        ns.run_in(move || TcpStream::connect(endpoint).is_ok()),
    );
    assert!(reachable, "IMDS emulator unreachable inside the node");
    // Addresses assigned later are learnt by the router; removed ones are forgotten.
    let updated = node.update_description(|d| {
        let eth1 = d.interface_by_device_mut(1).unwrap();
        eth1.local_ipv4s
            .retain(|ip| *ip != Ipv4Addr::new(10, 0, 0, 22));
        eth1.local_ipv4s.push(Ipv4Addr::new(10, 0, 0, 29));
    });
    ok(&node, updated);
    let neigh = ok(&node, node.vpc().neighbours());
    assert!(neigh.iter().any(|n| n["dst"] == "10.0.0.29"), "{neigh:?}");
    assert!(!neigh.iter().any(|n| n["dst"] == "10.0.0.22"), "{neigh:?}");
    // Teardown removes both namespaces.
    let (node_ns, vpc_ns) = (node.ns().path(), node.vpc().path());
    drop(node);
    assert!(!node_ns.exists() && !vpc_ns.exists());
}
