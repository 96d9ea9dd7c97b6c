//! Kernel tests of the pod data plane (library level): each test builds a "host" namespace
//! standing for the node and a "pod" namespace, runs the library on a thread that entered the
//! host namespace, and reads the result back with `ip -j`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aws_cni::netlink::{Netlink, format_mac};
use aws_cni::netns::Netns;
use aws_cni::pod_network::{
    self, HostVethRef, PodNetworkError, PodSpec, SetupOutcome, host_veth_name,
};
use common::{
    LINK_GONE_TIMEOUT, assert_no_addresses, has_tentative_v6, pings, pings6, pod_rules, routes_to,
    silent6, v6_addresses_of, v6_routes_added,
};
use serde_json::Value;
use test_support::netns::Netns as TestNetns;

const HOST_ADDR: &str = "10.200.0.1";
/// The node's IPv6 address (on `lo` of the host namespace, as [`HOST_ADDR`]).
const HOST_ADDR_V6: &str = "2600:1f14:abc:de00::10";

#[derive(Clone)]
struct Pod {
    ip: IpAddr,
    table: u32,
    veth: String,
    ifname: String,
}

impl Pod {
    fn new(ip: impl Into<IpAddr>, table: u32, name: &str) -> Self {
        Self {
            ip: ip.into(),
            table,
            veth: host_veth_name("eni", "default", name),
            ifname: "eth0".into(),
        }
    }

    fn spec(&self) -> PodSpec<'_> {
        PodSpec {
            ip: self.ip,
            route_table: self.table,
            host_veth: &self.veth,
            ifname: &self.ifname,
            mtu: 9001,
        }
    }
}

fn node() -> (TestNetns, TestNetns) {
    let host = TestNetns::new("host").unwrap();
    let pod = TestNetns::new("pod").unwrap();
    host.ip(&["addr", "add", &format!("{HOST_ADDR}/32"), "dev", "lo"])
        .unwrap();
    (host, pod)
}

/// Netlink connections in the calling thread's namespace (the host) and in the pod namespace
/// at `pod_path`.
fn connections(pod_path: &Path) -> (Netlink, Netlink) {
    let pod_ns = Netns::open(pod_path).unwrap();
    (
        Netlink::current().unwrap(),
        Netlink::in_netns(&pod_ns).unwrap(),
    )
}

/// A node with one pod set up: the host and pod namespaces, the pod, and what setup made.
fn node_with_pod(ip: [u8; 4], table: u32, name: &str) -> (TestNetns, TestNetns, Pod, SetupOutcome) {
    let (host, pod_ns) = node();
    let pod = Pod::new(ip, table, name);
    let out = setup(&host, &pod_ns, &pod).unwrap();
    (host, pod_ns, pod, out)
}

/// Sets up another pod of the node (table 2) in a namespace of its own.
fn another_pod(host: &TestNetns, ip: [u8; 4], name: &str) -> (TestNetns, Pod) {
    let ns = TestNetns::new("pod2").unwrap();
    let pod = Pod::new(ip, 2, name);
    setup(host, &ns, &pod).unwrap();
    (ns, pod)
}

fn setup(host: &TestNetns, pod_ns: &TestNetns, pod: &Pod) -> Result<SetupOutcome, PodNetworkError> {
    let (path, pod) = (pod_ns.path(), pod.clone());
    host.block_on_in(move || async move {
        let host_ns = Netns::current().unwrap();
        let pod_ns = Netns::open(&path).unwrap();
        let (h, p) = connections(&path);
        pod_network::setup(&h, &host_ns, &p, &pod_ns, &pod.spec()).await
    })
    .unwrap()
}

fn check(host: &TestNetns, pod_ns: &TestNetns, pod: &Pod) -> Vec<String> {
    let (path, pod) = (pod_ns.path(), pod.clone());
    host.block_on_in(move || async move {
        let (h, p) = connections(&path);
        pod_network::check(&h, &p, &pod.spec()).await.unwrap()
    })
    .unwrap()
}

/// Asserts that CHECK finds the pod's data plane as setup made it.
fn assert_checks(host: &TestNetns, pod_ns: &TestNetns, pod: &Pod) {
    let diffs = check(host, pod_ns, pod);
    assert!(diffs.is_empty(), "pod {} is not intact: {diffs:?}", pod.ip);
}

/// DEL's teardown: host side, then the pod side when the namespace still exists.
fn teardown(host: &TestNetns, pod_path: Option<PathBuf>, pod: &Pod) -> Vec<String> {
    teardown_with_mac(host, pod_path, pod, None)
}

/// DEL's teardown with the host veth's MAC from the cached result.
fn teardown_with_mac(
    host: &TestNetns,
    pod_path: Option<PathBuf>,
    pod: &Pod,
    host_mac: Option<[u8; 6]>,
) -> Vec<String> {
    let pod = pod.clone();
    host.block_on_in(move || async move {
        let h = Netlink::current().unwrap();
        let veths = [HostVethRef {
            name: pod.veth,
            mac: host_mac,
        }];
        let mut errors = pod_network::teardown_host(&h, &[pod.ip], &veths).await;
        if let Some(path) = pod_path
            && let Ok(ns) = Netns::open(&path)
        {
            let p = Netlink::in_netns(&ns).unwrap();
            errors.extend(pod_network::teardown_pod(&p, &pod.ifname, &[pod.ip], None).await);
        }
        errors
    })
    .unwrap()
}

fn has_flag(v: &Value, flag: &str) -> bool {
    v["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

/// No veth, route or rule of the pod is left on the host.
fn assert_host_clean(host: &TestNetns, pod: &Pod) {
    assert!(
        host.link(&pod.veth).unwrap().is_none(),
        "host veth {} still exists",
        pod.veth
    );
    assert_host_unrouted(host, pod);
}

/// The host neither routes the pod's address nor has its rules (its veth may remain).
fn assert_host_unrouted(host: &TestNetns, pod: &Pod) {
    let routes = routes_to(host, &pod.ip.to_string());
    assert!(routes.is_empty(), "host routes left: {routes:?}");
    assert!(
        pod_rules(host, pod.ip).is_empty(),
        "rules left: {:?}",
        pod_rules(host, pod.ip)
    );
}

#[test]
fn setup_builds_the_reference_data_plane_and_traffic_flows() {
    let (host, pod_ns, pod, out) = node_with_pod([10, 200, 0, 5], 2, "web-0");
    let host_mac = format_mac(&out.host_mac);
    let container_mac = format_mac(&out.container_mac);
    assert_eq!(out.host_mac[0] & 0x03, 0x02, "host MAC is local unicast");

    // Pod side.
    let eth0 = pod_ns.link("eth0").unwrap().expect("eth0 in pod");
    assert!(has_flag(&eth0, "UP"), "{eth0}");
    assert_eq!(eth0["mtu"], 9001);
    assert_eq!(eth0["address"], container_mac.as_str());
    let addrs = pod_ns
        .ip_json(&["-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    let info = addrs[0]["addr_info"].as_array().unwrap();
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0]["local"], "10.200.0.5");
    assert_eq!(info[0]["prefixlen"], 32);
    let routes = pod_ns.routes_all().unwrap();
    assert!(
        routes.iter().any(|r| r["dst"] == "default"
            && r["gateway"] == "169.254.1.1"
            && r["dev"] == "eth0"
            && has_flag(r, "onlink")),
        "default route: {routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "169.254.1.1" && r["dev"] == "eth0" && r["scope"] == "link"),
        "gateway route: {routes:?}"
    );
    assert_eq!(routes.len(), 2, "pod routes: {routes:?}");
    let neigh = pod_ns.neighbours().unwrap();
    assert!(
        neigh.iter().any(|n| n["dst"] == "169.254.1.1"
            && n["dev"] == "eth0"
            && n["lladdr"] == host_mac.as_str()
            && n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))),
        "neighbour: {neigh:?}"
    );

    // Host side.
    let veth = host.link(&pod.veth).unwrap().expect("host veth");
    assert!(has_flag(&veth, "UP"), "{veth}");
    assert_eq!(veth["mtu"], 9001);
    assert_eq!(veth["address"], host_mac.as_str());
    assert_eq!(pod.veth, "eni0d7763386da");
    // The reference's IPv6 hardening of every host veth, whatever the pod's family.
    assert_host_veth_hardened(&host, &pod.veth);
    let host_routes = host.routes_all().unwrap();
    assert!(
        host_routes.iter().any(|r| r["dst"] == "10.200.0.5"
            && r["dev"] == pod.veth.as_str()
            && r["scope"] == "link"),
        "host route: {host_routes:?}"
    );
    let rules = pod_rules(&host, pod.ip);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(
        rules
            .iter()
            .any(|r| r["priority"] == 512 && r["dst"] == "10.200.0.5" && r["table"] == "main"),
        "{rules:?}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r["priority"] == 1536 && r["src"] == "10.200.0.5" && r["table"] == "2"),
        "{rules:?}"
    );

    assert!(pings(&host, "10.200.0.5"), "host -> pod ping");
    assert!(pings(&pod_ns, HOST_ADDR), "pod -> host ping");
}

#[test]
fn primary_eni_address_gets_no_from_rule() {
    let (host, pod_ns, pod, _) = node_with_pod([10, 200, 0, 6], 254, "web-1");
    let rules = pod_rules(&host, pod.ip);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["priority"], 512);
    assert_checks(&host, &pod_ns, &pod);
}

#[test]
fn check_passes_then_names_a_removed_route_and_neighbour() {
    let (host, pod_ns, pod, _) = node_with_pod([10, 200, 0, 7], 3, "web-2");
    assert_checks(&host, &pod_ns, &pod);

    pod_ns.ip(&["route", "del", "default"]).unwrap();
    let diffs = check(&host, &pod_ns, &pod);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(
        diffs[0].contains("default route via 169.254.1.1"),
        "{diffs:?}"
    );

    pod_ns
        .ip(&["neigh", "del", "169.254.1.1", "dev", "eth0"])
        .unwrap();
    host.ip(&["rule", "del", "priority", "1536", "from", "10.200.0.7"])
        .unwrap();
    let diffs = check(&host, &pod_ns, &pod);
    assert_eq!(diffs.len(), 3, "{diffs:?}");
    assert!(
        diffs.iter().any(|d| d.contains("neighbour 169.254.1.1")),
        "{diffs:?}"
    );
    assert!(
        diffs
            .iter()
            .any(|d| d.contains("rule 1536 `from 10.200.0.7 lookup 3`")),
        "{diffs:?}"
    );

    host.ip(&["link", "set", &pod.veth, "down"]).unwrap();
    let diffs = check(&host, &pod_ns, &pod);
    assert!(
        diffs
            .iter()
            .any(|d| d.contains(&format!("host veth {} is down", pod.veth))),
        "{diffs:?}"
    );
}

#[test]
fn teardown_removes_routing_state_leaves_the_link_and_netns_removal_frees_the_pair() {
    let (host, pod_ns, pod, out) = node_with_pod([10, 200, 0, 8], 2, "web-3");
    let (other_ns, other) = another_pod(&host, [10, 200, 0, 9], "web-4");

    assert!(teardown(&host, Some(pod_ns.path()), &pod).is_empty());
    // No routing state of the pod is left on the host...
    assert_host_unrouted(&host, &pod);
    assert!(
        !pings(&host, "10.200.0.8"),
        "the host still reaches the pod"
    );
    // ...but the veth pair stays for the runtime's removal of the namespace: the host end (the
    // same link, not a new one) and eth0, which no longer holds the address, so the sandbox
    // cannot use an address ipamd may give to another pod; its routes went with it.
    let veth = host
        .link(&pod.veth)
        .unwrap()
        .expect("host veth stays until the netns goes");
    assert_eq!(veth["address"], format_mac(&out.host_mac).as_str());
    let eth0 = pod_ns
        .link("eth0")
        .unwrap()
        .expect("pod eth0 stays until the netns goes");
    assert_eq!(eth0["address"], format_mac(&out.container_mac).as_str());
    assert_no_addresses(&pod_ns, "eth0");
    assert!(
        pod_ns.routes_all().unwrap().is_empty(),
        "{:?}",
        pod_ns.routes_all().unwrap()
    );
    assert!(
        !pings(&pod_ns, HOST_ADDR),
        "the old sandbox still reaches the node"
    );
    // The neighbour pod is untouched.
    assert_eq!(pod_rules(&host, other.ip).len(), 2);
    assert_checks(&host, &other_ns, &other);
    assert!(pings(&host, "10.200.0.9"));

    // A second DEL finds nothing and still succeeds.
    assert!(teardown(&host, Some(pod_ns.path()), &pod).is_empty());
    assert_host_unrouted(&host, &pod);

    // The runtime removes the namespace: the kernel frees the pair, nothing of the pod remains.
    let path = pod_ns.path();
    drop(pod_ns);
    assert!(
        host.wait_link_gone(&pod.veth, LINK_GONE_TIMEOUT).unwrap(),
        "veth outlived its namespace"
    );
    assert_host_clean(&host, &pod);
    // DEL after the namespace is gone still succeeds.
    assert!(teardown(&host, Some(path), &pod).is_empty());
    assert_checks(&host, &other_ns, &other);
}

#[test]
fn teardown_after_the_pod_netns_is_gone_cleans_host_rules() {
    let (host, pod_ns, pod, _) = node_with_pod([10, 200, 0, 10], 2, "web-5");
    let path = pod_ns.path();
    drop(pod_ns);
    // The kernel removes the veth pair (and so the host route) with the namespace, in its
    // cleanup workqueue, shortly after the last reference is gone...
    assert!(
        host.wait_link_gone(&pod.veth, LINK_GONE_TIMEOUT).unwrap(),
        "veth outlived its namespace"
    );
    // ...but the rules stay until DEL removes them.
    assert_eq!(pod_rules(&host, pod.ip).len(), 2);
    assert!(teardown(&host, Some(path), &pod).is_empty());
    assert_host_clean(&host, &pod);
}

#[test]
fn existing_ifname_is_refused_without_touching_the_host() {
    let (host, pod_ns) = node();
    pod_ns
        .ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ])
        .unwrap();
    let pod = Pod::new([10, 200, 0, 11], 2, "web-6");
    let before = host.link_names().unwrap();
    match setup(&host, &pod_ns, &pod) {
        Err(PodNetworkError::InterfaceExists { ifname }) => assert_eq!(ifname, "eth0"),
        other => panic!("expected InterfaceExists, got {other:?}"),
    }
    assert_eq!(host.link_names().unwrap(), before);
    assert!(pod_rules(&host, pod.ip).is_empty());
    assert!(
        pod_ns.link("eth0").unwrap().is_some(),
        "the existing eth0 is left alone"
    );
}

#[test]
fn stale_host_veth_of_the_same_pod_name_is_replaced() {
    let (host, pod_ns) = node();
    let pod = Pod::new([10, 200, 0, 12], 2, "web-7");
    // A leftover of an earlier pod with the same name.
    host.ip(&[
        "link", "add", &pod.veth, "type", "veth", "peer", "name", "stale0",
    ])
    .unwrap();
    let out = setup(&host, &pod_ns, &pod).unwrap();
    assert!(host.link("stale0").unwrap().is_none(), "stale pair removed");
    let veth = host.link(&pod.veth).unwrap().unwrap();
    assert_eq!(veth["address"], format_mac(&out.host_mac).as_str());
    assert_checks(&host, &pod_ns, &pod);
    assert!(pings(&host, "10.200.0.12"));
}

#[test]
fn gc_teardown_removes_rules_route_and_the_veth_the_route_points_at() {
    let (host, _pod_ns, pod, _) = node_with_pod([10, 200, 0, 13], 2, "web-8");
    let (keep_ns, keep) = another_pod(&host, [10, 200, 0, 14], "web-9");
    let ip = pod.ip;
    let errors = host
        .block_on_in(move || async move {
            let h = Netlink::current().unwrap();
            pod_network::teardown_released(&h, &[ip]).await
        })
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_host_clean(&host, &pod);
    assert_checks(&host, &keep_ns, &keep);
}

/// What DEL reads from the pod when it has neither prevResult nor ipamd's answer.
fn read_pod_side(pod_ns: &TestNetns, ifname: &str) -> Option<pod_network::PodSide> {
    let (path, ifname) = (pod_ns.path(), ifname.to_string());
    pod_ns
        .block_on_in(move || async move {
            let ns = Netns::open(&path).unwrap();
            let p = Netlink::in_netns(&ns).unwrap();
            pod_network::read_pod_side(&p, &ifname).await.unwrap()
        })
        .unwrap()
}

#[test]
fn the_pod_interface_names_its_address_and_host_veth_for_a_del_without_prev_result() {
    let (host, pod_ns, pod, out) = node_with_pod([10, 200, 0, 30], 3, "web-30");

    let side = read_pod_side(&pod_ns, "eth0").expect("eth0 exists");
    assert_eq!(
        side,
        pod_network::PodSide {
            ips: vec![pod.ip],
            mac: Some(out.container_mac),
            host_veth_mac: Some(out.host_mac),
        }
    );
    assert_eq!(read_pod_side(&pod_ns, "eth1"), None);

    // DEL from what the pod said: the host veth is matched by the MAC the pod's gateway
    // neighbour names, and everything of the pod's routing goes.
    let errors = teardown_with_mac(&host, Some(pod_ns.path()), &pod, side.host_veth_mac);
    assert!(errors.is_empty(), "{errors:?}");
    assert_host_unrouted(&host, &pod);
    let again = read_pod_side(&pod_ns, "eth0").expect("eth0 stays until the netns goes");
    assert!(
        again.ips.is_empty(),
        "a repeated DEL must find no address left in the pod: {again:?}"
    );
}

/// A node with an old and a new sandbox of pod web-0 (so one host veth name) at `old_ip` and
/// `new_ip` (table 2), nothing set up yet: the host, then each sandbox's namespace and pod.
fn recreated_pod(
    old_ip: [u8; 4],
    new_ip: [u8; 4],
) -> (TestNetns, (TestNetns, Pod), (TestNetns, Pod)) {
    let (host, old_ns) = node();
    let new_ns = TestNetns::new("new").unwrap();
    (
        host,
        (old_ns, Pod::new(old_ip, 2, "web-0")),
        (new_ns, Pod::new(new_ip, 2, "web-0")),
    )
}

#[test]
fn late_del_of_an_old_sandbox_keeps_the_new_pod_of_the_same_name() {
    // web-0 was re-created: the old sandbox (10.200.0.15) lost its namespace, the new one
    // (10.200.0.16) has the same pod name, hence the same host veth name.
    let (host, (old_ns, old), (new_ns, new)) = recreated_pod([10, 200, 0, 15], [10, 200, 0, 16]);
    setup(&host, &old_ns, &old).unwrap();
    drop(old_ns);
    setup(&host, &new_ns, &new).unwrap();

    // The old sandbox's DEL arrives late, with its cached result.
    let errors = teardown(&host, None, &old);
    assert!(errors.is_empty(), "{errors:?}");

    assert!(
        pod_rules(&host, old.ip).is_empty(),
        "old pod's rules must go: {:?}",
        pod_rules(&host, old.ip)
    );
    assert_checks(&host, &new_ns, &new);
    assert!(pings(&host, "10.200.0.16"));
}

#[test]
fn repeated_del_after_the_address_went_to_a_new_sandbox_of_the_same_pod_keeps_it() {
    // web-0's old sandbox had 10.200.0.17; it was deleted (its namespace is gone) and the
    // address went to the pod's new sandbox, whose host veth has the same name.
    let (host, (old_ns, old), (new_ns, new)) = recreated_pod([10, 200, 0, 17], [10, 200, 0, 17]);
    let old_out = setup(&host, &old_ns, &old).unwrap();
    assert!(teardown(&host, Some(old_ns.path()), &old).is_empty());
    drop(old_ns);
    assert!(host.wait_link_gone(&old.veth, LINK_GONE_TIMEOUT).unwrap());
    let new_out = setup(&host, &new_ns, &new).unwrap();
    assert_ne!(old_out.host_mac, new_out.host_mac);

    // The old sandbox's DEL comes again, with its cached result (host veth name and MAC).
    let errors = teardown_with_mac(&host, None, &old, Some(old_out.host_mac));
    assert!(errors.is_empty(), "{errors:?}");
    assert_checks(&host, &new_ns, &new);
    assert!(pings(&host, "10.200.0.17"));

    // Its own DEL (its MAC) does remove the routing state.
    let errors = teardown_with_mac(&host, Some(new_ns.path()), &new, Some(new_out.host_mac));
    assert!(errors.is_empty(), "{errors:?}");
    assert_host_unrouted(&host, &new);
}

/// `pod_network::delete_rules_for` of `ip`, run in `host`; returns its errors.
fn delete_rules_for(host: &TestNetns, ip: &'static str) -> Vec<String> {
    host.block_on_in(move || async move {
        let h = Netlink::current().unwrap();
        pod_network::delete_rules_for(&h, &[ip.parse().unwrap()]).await
    })
    .unwrap()
}

#[test]
fn rules_are_deleted_by_value_in_every_table_and_others_stay() {
    let (host, _pod_ns) = node();
    let ip = "10.200.0.40";
    // The pod's rules, a duplicate in another table (an old layout), and rules that only look
    // alike: another address, another priority, and a 512 rule that also has a `from`.
    for args in [
        vec!["add", "to", ip, "lookup", "main", "priority", "512"],
        vec!["add", "from", ip, "lookup", "2", "priority", "1536"],
        vec!["add", "from", ip, "lookup", "3", "priority", "1536"],
        vec![
            "add",
            "to",
            "10.200.0.41",
            "lookup",
            "main",
            "priority",
            "512",
        ],
        vec![
            "add",
            "from",
            "10.200.0.41",
            "lookup",
            "2",
            "priority",
            "1536",
        ],
        vec!["add", "from", ip, "lookup", "2", "priority", "1537"],
    ] {
        let mut a = vec!["rule"];
        a.extend(args);
        host.ip(&a).unwrap();
    }
    let errors = delete_rules_for(&host, ip);
    assert!(errors.is_empty(), "{errors:?}");
    let left: Vec<(u64, String)> = host
        .ip_json(&["-4", "rule", "show"])
        .unwrap()
        .iter()
        .filter(|r| {
            r["priority"]
                .as_u64()
                .is_some_and(|p| (512..32766).contains(&p))
        })
        .map(|r| (r["priority"].as_u64().unwrap(), r.to_string()))
        .collect();
    assert_eq!(left.len(), 3, "{left:#?}");
    assert!(
        left.iter()
            .any(|(p, r)| *p == 512 && r.contains("10.200.0.41"))
    );
    assert!(
        left.iter()
            .any(|(p, r)| *p == 1536 && r.contains("10.200.0.41"))
    );
    assert!(left.iter().any(|(p, r)| *p == 1537 && r.contains(ip)));
    // Nothing left to delete is not an error.
    let again = delete_rules_for(&host, ip);
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn a_node_link_with_the_veth_name_is_never_replaced() {
    let (host, pod_ns) = node();
    let pod = Pod::new([10, 200, 0, 42], 2, "web-42");
    // Not a veth (this kernel has no dummy links; a bridge will do).
    host.ip(&["link", "add", &pod.veth, "type", "bridge"])
        .unwrap();
    match setup(&host, &pod_ns, &pod) {
        Err(PodNetworkError::NameTaken { name }) => assert_eq!(name, pod.veth),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    assert!(
        host.link(&pod.veth).unwrap().is_some(),
        "the node's link stays"
    );
    assert!(
        pod_ns.link("eth0").unwrap().is_none(),
        "nothing made in the pod"
    );
    assert!(pod_rules(&host, pod.ip).is_empty());
}

/// The host end's IPv6 sysctls as the reference sets them before it comes up: no router
/// advertisements from the pod, redirects accepted, no forwarding on the link.
fn assert_host_veth_hardened(host: &TestNetns, veth: &str) {
    for (key, want) in [
        ("accept_ra", "0"),
        ("accept_redirects", "1"),
        ("forwarding", "0"),
    ] {
        let k = format!("net.ipv6.conf.{veth}.{key}");
        assert_eq!(host.sysctl_get(&k).unwrap(), want, "{k}");
    }
}

/// A node for IPv6 pods: the host namespace holds the node's IPv6 address and forwards IPv6 (as
/// `ipamd install-cni` sets it); the pod namespace comes with IPv6 off on its interfaces, which
/// the plugin must turn on for the pod's interface and `lo`.
fn v6_node() -> (TestNetns, TestNetns) {
    let (host, pod) = node();
    host.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{HOST_ADDR_V6}/128"),
        "dev",
        "lo",
    ])
    .unwrap();
    host.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    v6_off(&pod);
    (host, pod)
}

/// Turns IPv6 off for `lo` and every interface created from now on in `ns`.
fn v6_off(ns: &TestNetns) {
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    ns.sysctl("net.ipv6.conf.lo.disable_ipv6", "1").unwrap();
}

fn v6(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An IPv6 pod as ipamd's IPv6 mode assigns it: a /128 of the primary ENI's /80, table main.
fn v6_pod(ip: &str, name: &str) -> Pod {
    Pod::new(v6(ip), 254, name)
}

#[test]
fn ipv6_setup_builds_the_reference_data_plane_and_traffic_flows() {
    let (host, pod_ns) = v6_node();
    let pod = v6_pod("2600:1f14:abc:de01:9f3c::5", "web-v6");
    let out = setup(&host, &pod_ns, &pod).unwrap();
    let host_mac = format_mac(&out.host_mac);
    let ip = pod.ip.to_string();

    // Pod side: the /128, usable at once (duplicate address detection is off on eth0, so
    // nothing is tentative, the link-local address neither), on an interface with IPv6 turned
    // on, like the pod's lo.
    let eth0 = pod_ns.link("eth0").unwrap().expect("eth0 in pod");
    assert!(has_flag(&eth0, "UP"), "{eth0}");
    assert_eq!(eth0["mtu"], 9001);
    assert_eq!(eth0["address"], format_mac(&out.container_mac).as_str());
    assert_eq!(
        v6_addresses_of(&pod_ns, "eth0"),
        vec![(format!("{ip}/128"), Vec::<String>::new())]
    );
    assert!(
        !has_tentative_v6(&pod_ns, "eth0"),
        "{:?}",
        pod_ns.ip_json(&["-6", "addr", "show", "dev", "eth0"])
    );
    // No IPv4 address on an IPv6 pod.
    assert_no_addresses(&pod_ns, "eth0");
    for key in [
        "net.ipv6.conf.eth0.disable_ipv6",
        "net.ipv6.conf.lo.disable_ipv6",
        "net.ipv6.conf.eth0.accept_dad",
    ] {
        assert_eq!(pod_ns.sysctl_get(key).unwrap(), "0", "{key}");
    }
    // Routes: fe80::1/128 on the link and the default through it (no `onlink`), nothing else
    // but what the kernel adds for the addresses.
    let routes = v6_routes_added(&pod_ns)
        .into_iter()
        .filter(|r| r["protocol"] != "kernel")
        .collect::<Vec<_>>();
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "fe80::1" && r["dev"] == "eth0" && r.get("gateway").is_none()),
        "{routes:?}"
    );
    assert!(
        routes.iter().any(|r| r["dst"] == "default"
            && r["gateway"] == "fe80::1"
            && r["dev"] == "eth0"
            && !has_flag(r, "onlink")),
        "{routes:?}"
    );
    assert!(
        common::routes_all(&pod_ns, "-4").is_empty(),
        "no IPv4 route in an IPv6 pod"
    );
    let neigh = pod_ns.ip_json(&["-6", "neigh", "show"]).unwrap();
    assert!(
        neigh.iter().any(|n| n["dst"] == "fe80::1"
            && n["dev"] == "eth0"
            && n["lladdr"] == host_mac.as_str()
            && n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))),
        "neighbour: {neigh:?}"
    );

    // Host side: the veth, hardened; the /128 to it in main; rule 512 in the IPv6 rule table
    // and no 1536 rule (table main).
    let veth = host.link(&pod.veth).unwrap().expect("host veth");
    assert!(has_flag(&veth, "UP"), "{veth}");
    assert_eq!(veth["mtu"], 9001);
    assert_eq!(veth["address"], host_mac.as_str());
    assert_host_veth_hardened(&host, &pod.veth);
    assert_eq!(
        host.sysctl_get(&format!("net.ipv6.conf.{}.accept_dad", pod.veth))
            .unwrap(),
        "0",
        "no duplicate address detection on an IPv6 pod's host end"
    );
    let host_routes = routes_to(&host, &ip);
    assert_eq!(host_routes.len(), 1, "{host_routes:?}");
    assert_eq!(host_routes[0]["dev"], pod.veth.as_str());
    assert!(host_routes[0].get("gateway").is_none(), "{host_routes:?}");
    let rules = pod_rules(&host, pod.ip);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["priority"], 512);
    assert_eq!(rules[0]["dst"], ip.as_str());
    assert_eq!(rules[0]["table"], "main");
    assert!(
        host.rule_lines().unwrap().iter().all(|l| !l.contains(&ip)),
        "nothing of the pod in the IPv4 rules"
    );

    assert!(pings6(&host, &ip), "host -> pod ping -6");
    assert!(pings6(&pod_ns, HOST_ADDR_V6), "pod -> host ping -6");
    assert_checks(&host, &pod_ns, &pod);
}

#[test]
fn two_ipv6_pods_on_one_node_reach_each_other() {
    let (host, a_ns) = v6_node();
    let b_ns = TestNetns::new("pod2").unwrap();
    v6_off(&b_ns);
    let a = v6_pod("2600:1f14:abc:de01:9f3c::a", "web-a");
    let b = v6_pod("2600:1f14:abc:de01:9f3c::b", "web-b");
    setup(&host, &a_ns, &a).unwrap();
    setup(&host, &b_ns, &b).unwrap();
    assert!(pings6(&a_ns, &b.ip.to_string()), "a -> b");
    assert!(pings6(&b_ns, &a.ip.to_string()), "b -> a");
    assert_checks(&host, &a_ns, &a);
    assert_checks(&host, &b_ns, &b);
}

#[test]
fn ipv6_check_names_a_removed_address_route_and_neighbour() {
    let (host, pod_ns) = v6_node();
    let pod = v6_pod("2600:1f14:abc:de01:9f3c::7", "web-v6c");
    setup(&host, &pod_ns, &pod).unwrap();
    assert_checks(&host, &pod_ns, &pod);

    let ip = pod.ip.to_string();
    pod_ns
        .ip(&["-6", "addr", "del", &format!("{ip}/128"), "dev", "eth0"])
        .unwrap();
    let diffs = check(&host, &pod_ns, &pod);
    assert_eq!(
        diffs,
        vec![format!("address {ip}/128 is missing on eth0")],
        "{diffs:?}"
    );

    pod_ns.ip(&["-6", "route", "del", "default"]).unwrap();
    pod_ns
        .ip(&["-6", "neigh", "del", "fe80::1", "dev", "eth0"])
        .unwrap();
    host.ip(&["-6", "rule", "del", "priority", "512", "to", &ip])
        .unwrap();
    host.ip(&["-6", "route", "del", &ip]).unwrap();
    let diffs = check(&host, &pod_ns, &pod);
    for want in [
        format!("host route {ip}/128 dev {} scope link is missing", pod.veth),
        format!("rule 512 `to {ip} lookup main` is missing"),
        "pod default route via fe80::1 dev eth0 is missing".to_string(),
        "neighbour fe80::1 on eth0 is missing".to_string(),
    ] {
        assert!(diffs.contains(&want), "{want:?} not in {diffs:?}");
    }
}

#[test]
fn ipv6_teardown_leaves_nothing_of_the_pod_on_the_host() {
    let (host, pod_ns) = v6_node();
    let pod = v6_pod("2600:1f14:abc:de01:9f3c::8", "web-v6d");
    let other_ns = TestNetns::new("pod2").unwrap();
    let other = v6_pod("2600:1f14:abc:de01:9f3c::9", "web-v6e");
    let out = setup(&host, &pod_ns, &pod).unwrap();
    setup(&host, &other_ns, &other).unwrap();
    let ip = pod.ip.to_string();

    let errors = teardown_with_mac(&host, Some(pod_ns.path()), &pod, Some(out.host_mac));
    assert!(errors.is_empty(), "{errors:?}");
    assert_host_unrouted(&host, &pod);
    assert!(
        v6_addresses_of(&pod_ns, "eth0").is_empty(),
        "the pod keeps {:?}",
        v6_addresses_of(&pod_ns, "eth0")
    );
    assert!(silent6(&host, &ip), "the host still reaches the pod");
    // The neighbour pod is untouched.
    assert_eq!(pod_rules(&host, other.ip).len(), 1);
    assert_checks(&host, &other_ns, &other);
    assert!(pings6(&host, &other.ip.to_string()));

    // Again: nothing left, no error. The namespace's removal frees the pair.
    assert!(teardown(&host, Some(pod_ns.path()), &pod).is_empty());
    drop(pod_ns);
    assert!(host.wait_link_gone(&pod.veth, LINK_GONE_TIMEOUT).unwrap());
    assert_host_clean(&host, &pod);
}

#[test]
fn ipv6_gc_teardown_removes_the_rule_route_and_veth() {
    let (host, _pod_ns) = v6_node();
    let pod = v6_pod("2600:1f14:abc:de01:9f3c::c", "web-v6f");
    setup(&host, &_pod_ns, &pod).unwrap();
    let ip = pod.ip;
    let errors = host
        .block_on_in(move || async move {
            let h = Netlink::current().unwrap();
            pod_network::teardown_released(&h, &[ip]).await
        })
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_host_clean(&host, &pod);
}

#[test]
fn the_ipv6_pod_interface_names_its_address_and_host_veth_for_a_del_without_prev_result() {
    let (host, pod_ns) = v6_node();
    let pod = v6_pod("2600:1f14:abc:de01:9f3c::d", "web-v6g");
    let out = setup(&host, &pod_ns, &pod).unwrap();
    let side = read_pod_side(&pod_ns, "eth0").expect("eth0 exists");
    // The /128 only: the kernel's fe80:: of eth0 is not the pod's address.
    assert_eq!(
        side,
        pod_network::PodSide {
            ips: vec![pod.ip],
            mac: Some(out.container_mac),
            host_veth_mac: Some(out.host_mac),
        }
    );
    let errors = teardown_with_mac(&host, Some(pod_ns.path()), &pod, side.host_veth_mac);
    assert!(errors.is_empty(), "{errors:?}");
    assert_host_unrouted(&host, &pod);
    assert!(read_pod_side(&pod_ns, "eth0").unwrap().ips.is_empty());
}

#[test]
fn ipv6_rules_are_deleted_by_value_and_ipv4_ones_stay() {
    let (host, _pod_ns) = node();
    let ip = "2600:1f14:abc:de01:9f3c::e";
    for args in [
        vec![
            "-6", "rule", "add", "to", ip, "lookup", "main", "priority", "512",
        ],
        vec![
            "-6", "rule", "add", "from", ip, "lookup", "2", "priority", "1536",
        ],
        vec![
            "-6", "rule", "add", "from", ip, "lookup", "3", "priority", "1536",
        ],
        vec![
            "-6", "rule", "add", "from", ip, "lookup", "2", "priority", "1537",
        ],
        vec![
            "-4",
            "rule",
            "add",
            "to",
            "10.200.0.43",
            "lookup",
            "main",
            "priority",
            "512",
        ],
    ] {
        host.ip(&args).unwrap();
    }
    let errors = delete_rules_for(&host, ip);
    assert!(errors.is_empty(), "{errors:?}");
    let left: Vec<String> = host
        .ip(&["-6", "rule", "show"])
        .unwrap()
        .lines()
        .filter(|l| l.contains(ip))
        .map(str::to_owned)
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("1537:"), "{left:?}");
    assert_eq!(pod_rules(&host, "10.200.0.43".parse().unwrap()).len(), 1);
}

/// `pod_network::wait_until_addresses_settle` on `eth0` of `ns` with a short timeout.
fn settle(ns: &TestNetns, timeout_ms: u64) -> (Result<(), PodNetworkError>, std::time::Duration) {
    let path = ns.path();
    ns.block_on_in(move || async move {
        let pod_ns = Netns::open(&path).unwrap();
        let p = Netlink::in_netns(&pod_ns).unwrap();
        let idx = p.link_by_name("eth0").await.unwrap().unwrap().index;
        let start = std::time::Instant::now();
        let res = pod_network::wait_until_addresses_settle(
            &p,
            idx,
            "eth0",
            std::time::Duration::from_millis(timeout_ms),
            pod_network::DAD_POLL_INTERVAL,
        )
        .await;
        (res, start.elapsed())
    })
    .unwrap()
}

#[test]
fn the_dad_wait_times_out_naming_the_tentative_addresses() {
    let (_host, pod_ns) = node();
    // The peer stays down: no carrier, so duplicate address detection never completes.
    pod_ns
        .ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ])
        .unwrap();
    pod_ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod_ns
        .ip(&["-6", "addr", "add", "2600:1f14::1/128", "dev", "eth0"])
        .unwrap();
    let (res, took) = settle(&pod_ns, 300);
    match res {
        Err(e @ PodNetworkError::DadTimeout { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("2600:1f14::1")
                    && msg.contains("on eth0")
                    && msg.contains("tentative")
                    && msg.contains("300ms"),
                "{msg}"
            );
        }
        other => panic!("expected DadTimeout, got {other:?}"),
    }
    assert!(took >= std::time::Duration::from_millis(300), "{took:?}");
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_duplicate_address_ends_the_dad_wait_at_once() {
    let (_host, pod_ns) = node();
    for line in [
        "link add eth0 type veth peer name peer0",
        "link set peer0 up",
        "-6 addr add 2600:1f14::2/128 dev peer0 nodad",
        "link set eth0 up",
        "-6 addr add 2600:1f14::2/128 dev eth0",
    ] {
        common::ip(&pod_ns, line);
    }
    let (res, took) = settle(&pod_ns, 5000);
    match res {
        Err(e @ PodNetworkError::DadFailed { .. }) => {
            assert!(e.to_string().contains("2600:1f14::2 on eth0"), "{e}");
        }
        other => panic!("expected DadFailed, got {other:?}"),
    }
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}
