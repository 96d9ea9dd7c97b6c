//! Kernel tests of `ipamd::node_network` in throwaway namespaces, on both iptables backends
//! (the node's default `iptables`, nf_tables on Debian 12, and `iptables-legacy`): the
//! reference's SNAT/connmark/NodePort rules, rules 1024 and 1535 and rp_filter are programmed,
//! a second pass changes nothing, stale and duplicated rules ipamd owns are removed, rules it
//! does not own (kube-proxy's) stay, and the external-SNAT settings take everything away.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use common::{add_rules, add_veth};
use ipamd::config::parse::RandomizeSnat;
use ipamd::node_network::host::HostNetwork;
use ipamd::node_network::iptables::Iptables;
use ipamd::node_network::{NodeNetwork, NodeNetworkSettings, PrimaryEni, ReconcileReport};
use test_support::netns::Netns;
use test_support::prereqs::require_root;

const ETH0_MAC: &str = "02:00:0a:00:00:0a";
const BACKENDS: [&str; 2] = ["iptables", "iptables-legacy"];

fn facts() -> PrimaryEni {
    PrimaryEni {
        primary_mac: ETH0_MAC.parse().unwrap(),
        primary_eni: "eni-a".into(),
        primary_ip: Ipv4Addr::new(10, 0, 0, 10),
        vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
    }
}

/// A node whose eth0 (the primary ENI, rp_filter=1 as EC2 AMIs set it) is a veth into a peer.
fn node() -> (Netns, Netns) {
    require_root().unwrap();
    let node = Netns::new("node").unwrap();
    let vpc = Netns::new("vpc").unwrap();
    add_veth(&node, "eth0", ETH0_MAC, &vpc, "v0");
    node.ip(&["addr", "add", "10.0.0.10/24", "dev", "eth0"])
        .unwrap();
    node.ip(&["link", "set", "eth0", "up"]).unwrap();
    exec(
        &node,
        "sysctl",
        &["-q", "-w", "net.ipv4.conf.eth0.rp_filter=1"],
    );
    (node, vpc)
}

fn exec(ns: &Netns, program: &str, args: &[&str]) -> String {
    ns.exec_checked(program, args).unwrap()
}

/// `<backend>-save` of a table without comments and counters.
fn save(ns: &Netns, backend: &str, table: &str) -> Vec<String> {
    exec(ns, &format!("{backend}-save"), &["-t", table])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => l[..i].to_owned(),
            _ => l.to_owned(),
        })
        .collect()
}

fn restore(ns: &Netns, backend: &str, batch: &str) {
    let mut child = ns
        .command(format!("{backend}-restore"))
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), batch.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(
        child.wait().unwrap().success(),
        "{backend}-restore of {batch}"
    );
}

fn rp_filter(ns: &Netns) -> String {
    exec(ns, "sysctl", &["-n", "net.ipv4.conf.eth0.rp_filter"])
        .trim()
        .to_owned()
}

fn reconcile(
    ns: &Netns,
    backend: &str,
    s: NodeNetworkSettings,
    f: PrimaryEni,
) -> Result<ReconcileReport, String> {
    let backend = backend.to_owned();
    ns.block_on_in(move || async move {
        let host = HostNetwork::connect().map_err(|e| e.to_string())?;
        NodeNetwork::with_iptables(s, host, Iptables::with_command(&backend))
            .reconcile(&f)
            .await
            .map_err(|e| e.to_string())
    })
    .unwrap()
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| *l == line).count()
}

const SNAT_JUMP: &str =
    "-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0";

#[test]
fn the_references_rules_are_programmed_once_on_both_backends() {
    for backend in BACKENDS {
        let (node, _vpc) = node();
        let report = reconcile(&node, backend, NodeNetworkSettings::default(), facts()).unwrap();
        assert_eq!(report.primary_link, "eth0");
        assert_eq!(report.rp_filter_was.as_deref(), Some("1"), "{backend}");
        assert!(report.unstable.is_empty(), "{backend}: {report:?}");

        let nat = save(&node, backend, "nat");
        let expected_nat = [
            ":AWS-CONNMARK-CHAIN-0 -",
            ":AWS-SNAT-CHAIN-0 -",
            "-A PREROUTING -i eni+ -m comment --comment \"AWS, outbound connections\" -j AWS-CONNMARK-CHAIN-0",
            "-A PREROUTING -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80",
            SNAT_JUMP,
            "-A AWS-CONNMARK-CHAIN-0 -m comment --comment \"AWS CONNMARK CHAIN\" -m addrtype --dst-type LOCAL -j RETURN",
            "-A AWS-CONNMARK-CHAIN-0 -d 10.0.0.0/16 -m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN",
            "-A AWS-CONNMARK-CHAIN-0 -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --set-xmark 0x80/0x80",
            "-A AWS-SNAT-CHAIN-0 -d 10.0.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN",
            "-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.0.10 --random-fully",
        ];
        for line in expected_nat {
            assert_eq!(count(&nat, line), 1, "{backend}: {line}\n{nat:#?}");
        }
        let rule_lines = nat.iter().filter(|l| l.starts_with("-A")).count();
        assert_eq!(rule_lines, 8, "{backend}: {nat:#?}");

        let mangle = save(&node, backend, "mangle");
        for line in [
            "-A PREROUTING -i eth0 -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80",
            "-A PREROUTING -i eni+ -m comment --comment \"AWS, primary ENI\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80",
            "-A PREROUTING -i vlan+ -m comment --comment \"AWS, primary ENI\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80",
        ] {
            assert_eq!(count(&mangle, line), 1, "{backend}: {line}\n{mangle:#?}");
        }

        let r = node.rule_lines().unwrap();
        assert_eq!(
            count(&r, "1024: from all fwmark 0x80/0x80 lookup main"),
            1,
            "{r:?}"
        );
        assert_eq!(rp_filter(&node), "2");

        // A second pass finds nothing to do and changes nothing.
        let again = reconcile(&node, backend, NodeNetworkSettings::default(), facts()).unwrap();
        assert!(again.is_empty(), "{backend}: second pass changed {again}");
        assert_eq!(save(&node, backend, "nat"), nat);
        assert_eq!(save(&node, backend, "mangle"), mangle);
        assert_eq!(node.rule_lines().unwrap(), r);
    }
}

#[test]
fn stale_and_duplicated_rules_go_and_foreign_rules_stay() {
    for backend in BACKENDS {
        let (node, _vpc) = node();
        reconcile(&node, backend, NodeNetworkSettings::default(), facts()).unwrap();
        let clean_nat = save(&node, backend, "nat");
        let clean_mangle = save(&node, backend, "mangle");

        // What an old ipamd, a VPC CIDR that went away and kube-proxy leave behind.
        restore(
            &node,
            backend,
            &format!(
                "*nat\n:KUBE-POSTROUTING - [0:0]\n:AWS-SNAT-CHAIN-1 - [0:0]\n\
                 -I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
                 -A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n\
                 -A PREROUTING -d 10.0.0.10/32 -p tcp -m tcp --dport 30080 -j DNAT --to-destination 10.0.0.20:8080\n\
                 {}\n\
                 -A AWS-SNAT-CHAIN-0 -d 10.99.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN\n\
                 -A AWS-SNAT-CHAIN-1 -d 10.98.0.0/16 -j RETURN\n\
                 -I AWS-SNAT-CHAIN-0 1 -j AWS-SNAT-CHAIN-1\n\
                 COMMIT\n\
                 *mangle\n\
                 -A PREROUTING -i eni+ -m comment --comment \"AWS, primary ENI\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80\n\
                 -A PREROUTING -i eth0 -j MARK --set-xmark 0x1/0x1\n\
                 COMMIT\n",
                SNAT_JUMP
            ),
        );
        add_rules(
            &node,
            &[
                "to 192.0.2.0/24 lookup main priority 1535",
                "fwmark 0x40/0x40 lookup main priority 1024",
                "to 192.0.2.0/24 lookup 100 priority 1535",
            ],
        );

        let s = NodeNetworkSettings {
            external_service_cidrs: vec!["198.51.100.0/24".parse().unwrap()],
            ..NodeNetworkSettings::default()
        };
        let report = reconcile(&node, backend, s.clone(), facts()).unwrap();
        assert!(!report.is_empty());

        let nat = save(&node, backend, "nat");
        let foreign = [
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
            "-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE",
            "-A PREROUTING -d 10.0.0.10/32 -p tcp -m tcp --dport 30080 -j DNAT --to-destination 10.0.0.20:8080",
        ];
        for line in foreign {
            assert_eq!(
                count(&nat, line),
                1,
                "{backend}: kube-proxy's {line} must stay\n{nat:#?}"
            );
        }
        let ours: Vec<String> = nat
            .iter()
            .filter(|l| !foreign.contains(&l.as_str()) && *l != ":KUBE-POSTROUTING -")
            .cloned()
            .collect();
        assert_eq!(ours, clean_nat, "{backend}: stale rules left in nat");
        let mangle = save(&node, backend, "mangle");
        let foreign_mark = "-A PREROUTING -i eth0 -j MARK --set-xmark 0x1/0x1";
        assert_eq!(count(&mangle, foreign_mark), 1, "{mangle:#?}");
        let ours: Vec<String> = mangle
            .iter()
            .filter(|l| *l != foreign_mark)
            .cloned()
            .collect();
        assert_eq!(ours, clean_mangle, "{backend}: mangle");

        let r = node.rule_lines().unwrap();
        let at =
            |prio: &str| -> Vec<&String> { r.iter().filter(|l| l.starts_with(prio)).collect() };
        assert_eq!(
            at("1024:"),
            vec!["1024: from all fwmark 0x80/0x80 lookup main"],
            "{r:?}"
        );
        assert_eq!(
            at("1535:"),
            vec![
                "1535: from all to 192.0.2.0/24 lookup 100",
                "1535: from all to 198.51.100.0/24 lookup main"
            ],
            "{r:?}"
        );
        assert!(reconcile(&node, backend, s, facts()).unwrap().is_empty());
    }
}

#[test]
fn external_snat_removes_the_chains_and_node_port_off_removes_the_rest() {
    let backend = "iptables";
    let (node, _vpc) = node();
    let excluded = NodeNetworkSettings {
        exclude_snat_cidrs: vec!["203.0.113.0/24".parse().unwrap()],
        randomize_snat: RandomizeSnat::HashRandom,
        ..NodeNetworkSettings::default()
    };
    reconcile(&node, backend, excluded, facts()).unwrap();
    let nat = save(&node, backend, "nat");
    assert_eq!(
        count(
            &nat,
            "-A AWS-SNAT-CHAIN-0 -d 203.0.113.0/24 -m comment --comment \"AWS SNAT CHAIN EXCLUSION\" -j RETURN"
        ),
        1,
        "{nat:#?}"
    );
    assert_eq!(
        count(
            &nat,
            "-A AWS-CONNMARK-CHAIN-0 -d 203.0.113.0/24 -m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN"
        ),
        1,
        "{nat:#?}"
    );
    assert!(
        nat.iter()
            .any(|l| l.ends_with("--to-source 10.0.0.10 --random"))
    );

    let external = NodeNetworkSettings {
        external_snat: true,
        ..NodeNetworkSettings::default()
    };
    reconcile(&node, backend, external.clone(), facts()).unwrap();
    let nat = save(&node, backend, "nat");
    assert!(
        !nat.iter().any(|l| l.contains("AWS")),
        "external SNAT leaves no AWS rule or chain in nat: {nat:#?}"
    );
    assert_eq!(
        save(&node, backend, "mangle")
            .iter()
            .filter(|l| l.contains("AWS"))
            .count(),
        3
    );
    assert!(
        node.rule_lines()
            .unwrap()
            .contains(&"1024: from all fwmark 0x80/0x80 lookup main".to_owned())
    );

    let nothing = NodeNetworkSettings {
        node_port_support: false,
        ..external
    };
    reconcile(&node, backend, nothing.clone(), facts()).unwrap();
    assert!(
        !save(&node, backend, "mangle")
            .iter()
            .any(|l| l.contains("AWS"))
    );
    assert!(
        !node
            .rule_lines()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("1024:")),
        "{:?}",
        node.rule_lines().unwrap()
    );

    // Nothing wanted: a node without iptables is fine then, and only then.
    reconcile(&node, "iptables-missing", nothing, facts()).unwrap();
    let err = reconcile(
        &node,
        "iptables-missing",
        NodeNetworkSettings::default(),
        facts(),
    )
    .unwrap_err();
    assert!(
        err.contains("iptables-missing") && err.contains("not found on PATH"),
        "{err}"
    );
}

#[test]
fn missing_primary_link_or_vpc_cidrs_are_errors_naming_them() {
    let (node, _vpc) = node();
    let mut f = facts();
    f.primary_mac = "02:00:0a:00:00:99".parse().unwrap();
    let err = reconcile(&node, "iptables", NodeNetworkSettings::default(), f).unwrap_err();
    assert!(
        err.contains("02:00:0a:00:00:99") && err.contains("eni-a"),
        "{err}"
    );

    let mut f = facts();
    f.vpc_cidrs.clear();
    let err = reconcile(&node, "iptables", NodeNetworkSettings::default(), f).unwrap_err();
    assert!(
        err.contains("no VPC CIDR") && err.contains("eni-a"),
        "{err}"
    );
    // Nothing was programmed.
    assert!(
        !save(&node, "iptables", "nat")
            .iter()
            .any(|l| l.contains("AWS"))
    );
}

/// ipamd joins the backend kube-proxy uses: a node whose rules live in iptables-legacy gets its
/// AWS chains there too, and a fresh node (nothing anywhere) gets nft.
#[test]
fn the_backend_the_node_already_uses_is_detected() {
    let (fresh, _vpc) = node();
    let chosen = fresh
        .block_on_in(|| async { Iptables::detect().await.command_name().to_owned() })
        .unwrap();
    assert_eq!(chosen, "iptables-nft", "an empty node defaults to nft");

    let (legacy_node, _vpc2) = node();
    restore(
        &legacy_node,
        "iptables-legacy",
        "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n",
    );
    let chosen = legacy_node
        .block_on_in(|| async { Iptables::detect().await.command_name().to_owned() })
        .unwrap();
    assert_eq!(chosen, "iptables-legacy", "kubelet's hint is in legacy");
    let report = legacy_node
        .block_on_in(|| async {
            let host = HostNetwork::connect().map_err(|e| e.to_string())?;
            NodeNetwork::with_iptables(
                NodeNetworkSettings::default(),
                host,
                Iptables::detect().await,
            )
            .reconcile(&facts())
            .await
            .map_err(|e| e.to_string())
        })
        .unwrap()
        .unwrap();
    assert_eq!(report.primary_link, "eth0");
    assert_eq!(
        count(&save(&legacy_node, "iptables-legacy", "nat"), SNAT_JUMP),
        1,
        "the SNAT chain went to legacy"
    );
    assert_eq!(
        count(&save(&legacy_node, "iptables-nft", "nat"), SNAT_JUMP),
        0,
        "and not to nft"
    );
}

#[test]
fn ipv6_mode_removes_snat_and_rejects_new_connections_to_the_egress_range_first() {
    const REJECT: &str = "-A FORWARD -d 169.254.172.0/22 -m conntrack --ctstate NEW -m comment --comment \"Block Node Local Pod access via IPv4\" -j REJECT --reject-with icmp-port-unreachable";
    for backend in BACKENDS {
        let (node, _vpc) = node();
        // An IPv4 life first (its SNAT, connmark and rule 1024), and a foreign FORWARD rule.
        reconcile(&node, backend, NodeNetworkSettings::default(), facts()).unwrap();
        restore(
            &node,
            backend,
            "*filter\n-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j ACCEPT\nCOMMIT\n",
        );
        let v6 = NodeNetworkSettings {
            ipv6: true,
            ..NodeNetworkSettings::default()
        };
        let report = reconcile(&node, backend, v6.clone(), facts()).unwrap();
        assert!(report.unstable.is_empty(), "{backend}: {report:?}");

        let nat = save(&node, backend, "nat");
        assert!(
            !nat.iter().any(|l| l.contains("AWS")),
            "{backend}: IPv6 mode keeps ipamd's nat rules: {nat:#?}"
        );
        let mangle = save(&node, backend, "mangle");
        assert!(!mangle.iter().any(|l| l.contains("AWS")), "{mangle:#?}");
        let filter = save(&node, backend, "filter");
        let forward: Vec<&String> = filter
            .iter()
            .filter(|l| l.starts_with("-A FORWARD"))
            .collect();
        assert_eq!(forward.len(), 2, "{backend}: {filter:#?}");
        assert_eq!(
            forward[0], REJECT,
            "{backend}: the reject goes first: {filter:#?}"
        );
        let r = node.rule_lines().unwrap();
        assert!(
            !r.iter().any(|l| l.starts_with("1024:")),
            "{backend}: {r:?}"
        );

        let again = reconcile(&node, backend, v6, facts()).unwrap();
        assert!(again.is_empty(), "{backend}: second pass changed {again}");
        assert_eq!(save(&node, backend, "filter"), filter);
    }
}
