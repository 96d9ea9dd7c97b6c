//! Kernel tests of `ipamd::node_network::host` in throwaway namespaces: secondary ENI bring-up,
//! idempotency, primary MTU, pod-rule deletion.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use common::{add_rules, add_veth};
use ipamd::node_network::host::{HostNetwork, SecondaryEni};
use serde_json::Value;
use test_support::netns::Netns;
use test_support::prereqs::require_root;

const ETH1_MAC: &str = "02:00:0a:00:00:0b";

fn eth1() -> SecondaryEni {
    SecondaryEni {
        id: "eni-b".into(),
        mac: ETH1_MAC.parse().unwrap(),
        device_number: 1,
        primary_ip: Ipv4Addr::new(10, 0, 0, 20),
        subnet: "10.0.0.0/24".parse().unwrap(),
        mtu: 9001,
    }
}

/// A node with eth0 (primary, 10.0.0.10/24, up) and eth1 (secondary ENI, down, no address),
/// both veths into a `vpc` namespace.
fn node() -> (Netns, Netns) {
    require_root().unwrap();
    let node = Netns::new("node").unwrap();
    let vpc = Netns::new("vpc").unwrap();
    add_veth(&node, "eth0", "02:00:0a:00:00:0a", &vpc, "v0");
    add_veth(&node, "eth1", ETH1_MAC, &vpc, "v1");
    node.ip(&["addr", "add", "10.0.0.10/24", "dev", "eth0"])
        .unwrap();
    node.ip(&["link", "set", "eth0", "up"]).unwrap();
    (node, vpc)
}

fn link(ns: &Netns, name: &str) -> Value {
    ns.ip_json(&["link", "show", "dev", name]).unwrap()[0].clone()
}

fn ipv4_addrs(ns: &Netns, dev: &str) -> Vec<String> {
    ns.ip_json(&["-4", "addr", "show", "dev", dev]).unwrap()[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// Asserts that every one of `wanted` is among `lines`.
fn assert_has_lines(lines: &[String], wanted: &[&str]) {
    for line in wanted {
        assert!(
            lines.iter().any(|l| l == line),
            "{line:?} missing from {lines:?}"
        );
    }
}

fn routes(ns: &Netns, table: &str) -> Vec<String> {
    ns.ip(&["-4", "route", "show", "table", table])
        .unwrap()
        .lines()
        .map(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace(" proto static", "")
        })
        .collect()
}

/// Addresses, MTUs and admin state per link, every route of every table, every rule (link
/// carrier state is left out: it follows the peer, not ipamd).
fn snapshot(ns: &Netns) -> (Vec<String>, String, String) {
    let links = ns
        .ip_json(&["-4", "addr"])
        .unwrap()
        .iter()
        .map(|l| {
            let up = l["flags"].as_array().unwrap().iter().any(|f| f == "UP");
            format!(
                "{} mtu={} up={up} addrs={}",
                l["ifname"], l["mtu"], l["addr_info"]
            )
        })
        .collect();
    (
        links,
        ns.ip(&["-4", "route", "show", "table", "all"]).unwrap(),
        ns.ip(&["-4", "rule"]).unwrap(),
    )
}

fn setup(ns: &Netns, eni: SecondaryEni) -> Result<(), String> {
    ns.block_on_in(move || async move {
        let host = HostNetwork::connect().map_err(|e| e.to_string())?;
        host.setup_secondary_eni(&eni)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .unwrap()
}

#[test]
fn secondary_eni_bring_up_sets_address_table_rule_mtu_and_up() {
    let (node, _vpc) = node();
    // Something stale on the link that the bring-up must replace.
    node.ip(&["addr", "add", "10.0.0.99/24", "dev", "eth1"])
        .unwrap();

    setup(&node, eth1()).unwrap();

    let l = link(&node, "eth1");
    assert_eq!(l["mtu"], 9001);
    assert!(
        l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "eth1 must be up: {l}"
    );
    assert_eq!(ipv4_addrs(&node, "eth1"), vec!["10.0.0.20/24".to_owned()]);
    let table2 = routes(&node, "2");
    assert_has_lines(
        &table2,
        &[
            "default via 10.0.0.1 dev eth1",
            "10.0.0.1 dev eth1 scope link",
        ],
    );
    assert_eq!(table2.len(), 2, "{table2:?}");
    let main = routes(&node, "main");
    assert!(
        !main.iter().any(|r| r.starts_with("10.0.0.0/24 dev eth1")),
        "the kernel's subnet route via eth1 must be gone from main: {main:?}"
    );
    assert!(
        main.iter().any(|r| r.starts_with("10.0.0.0/24 dev eth0")),
        "the primary ENI's subnet route stays: {main:?}"
    );
    let rules = node.rule_lines().unwrap();
    assert_has_lines(&rules, &["32765: from 10.0.0.20 lookup 2"]);
    assert_eq!(
        rules.iter().filter(|r| r.starts_with("32765:")).count(),
        1,
        "{rules:?}"
    );
}

#[test]
fn secondary_eni_bring_up_twice_changes_nothing() {
    let (node, _vpc) = node();
    setup(&node, eth1()).unwrap();
    let first = snapshot(&node);
    setup(&node, eth1()).unwrap();
    assert_eq!(snapshot(&node), first);
}

#[test]
fn stale_eni_rule_with_another_table_is_replaced() {
    let (node, _vpc) = node();
    add_rules(&node, &["from 10.0.0.20 lookup 7 priority 32765"]);
    setup(&node, eth1()).unwrap();
    let rules = node.rule_lines().unwrap();
    let eni_rules: Vec<_> = rules.iter().filter(|r| r.starts_with("32765:")).collect();
    assert_eq!(
        eni_rules,
        vec!["32765: from 10.0.0.20 lookup 2"],
        "{rules:?}"
    );
}

#[test]
fn missing_link_is_an_error_naming_the_mac_and_eni() {
    let (node, _vpc) = node();
    let mut eni = eth1();
    eni.mac = "02:00:0a:00:00:99".parse().unwrap();
    let err = setup(&node, eni).unwrap_err();
    assert!(
        err.contains("02:00:0a:00:00:99") && err.contains("eni-b"),
        "{err}"
    );
}

#[test]
fn primary_eni_gets_only_its_mtu() {
    let (node, _vpc) = node();
    let before_routes = routes(&node, "all");
    let before_rules = node.rule_lines().unwrap();
    let name = node
        .block_on_in(|| async {
            let host = HostNetwork::connect().unwrap();
            host.set_primary_mtu("02:00:0a:00:00:0a".parse().unwrap(), "eni-a", 1500)
                .await
                .unwrap()
                .name
        })
        .unwrap();
    assert_eq!(name, "eth0");
    assert_eq!(link(&node, "eth0")["mtu"], 1500);
    assert_eq!(routes(&node, "all"), before_routes);
    assert_eq!(node.rule_lines().unwrap(), before_rules);
}

#[test]
fn pod_rules_are_deleted_and_others_kept() {
    let (node, _vpc) = node();
    add_rules(
        &node,
        &[
            "to 10.0.0.50 lookup main priority 512",
            "from 10.0.0.50 lookup 2 priority 1536",
            "from 10.0.0.50 lookup 3 priority 1536",
            "to 10.0.0.51 lookup main priority 512",
            "from 10.0.0.51 lookup 2 priority 1536",
        ],
    );
    let ip = Ipv4Addr::new(10, 0, 0, 50);
    let (deleted, again) = node
        .block_on_in(move || async move {
            let host = HostNetwork::connect().unwrap();
            let deleted = host.delete_pod_rules(ip.into()).await.unwrap();
            let again = host.delete_pod_rules(ip.into()).await.unwrap();
            (deleted, again)
        })
        .unwrap();
    assert_eq!((deleted, again), (3, 0));
    let rules = node.rule_lines().unwrap();
    assert!(!rules.iter().any(|r| r.contains("10.0.0.50")), "{rules:?}");
    assert_has_lines(
        &rules,
        &[
            "512: from all to 10.0.0.51 lookup main",
            "1536: from 10.0.0.51 lookup 2",
        ],
    );
}

#[test]
fn links_are_listed_with_names_and_macs() {
    let (node, _vpc) = node();
    let links = node
        .block_on_in(|| async { HostNetwork::connect().unwrap().links().await.unwrap() })
        .unwrap();
    let eth1 = links.iter().find(|l| l.name == "eth1").unwrap();
    assert_eq!(eth1.mac.unwrap().to_string(), ETH1_MAC);
    assert!(links.iter().any(|l| l.name == "lo"));
}
