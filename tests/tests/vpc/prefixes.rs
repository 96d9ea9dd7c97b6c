//! Prefix delegation (`ENABLE_PREFIX_DELEGATION=true`) on the simulated VPC: moto with the
//! launcher's prefix extension delegates aligned /28s, instance metadata lists them under
//! `ipv4-prefix`, the VPC router delivers every address of a prefix to its ENI. A fresh
//! m5.large-type node keeps one prefix warm, serves its max pods (110) from prefixes within the
//! instance's address slots, and gives prefixes back to the warm target when the pods go; pods
//! on prefixes of primary and secondary ENIs of two nodes reach each other, the nodes and the
//! internet (SNAT to the node's address).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use harness::probe::ping_matrix;
use harness::vpc::{EniState, INTERNET_HOST};
use harness::{Pod, VpcFabric, VpcNode};
use test_support::netns::Netns;

use crate::snat::internet_peer;
use crate::{add_pod_retrying, check, ec2_node, enis, fabric, node, ok, pod, wait_for};

fn pd_node(vpc: &VpcFabric, name: &str, instance_type: &str, warm_prefixes: &str) -> VpcNode {
    node(
        vpc,
        ec2_node(name, instance_type)
            .env("ENABLE_PREFIX_DELEGATION", "true")
            .env("WARM_PREFIX_TARGET", warm_prefixes),
    )
}

/// (ENI id, device, prefixes, secondary addresses) of the node's ENIs in moto.
fn shape(node: &VpcNode) -> Vec<(String, u32, usize, usize)> {
    enis(node)
        .iter()
        .map(|e| {
            (
                e.id.clone(),
                e.device_index().unwrap_or(0),
                e.ipv4_prefixes.len(),
                e.secondary_ips().len(),
            )
        })
        .collect()
}

fn prefix_count(node: &VpcNode) -> usize {
    enis(node).iter().map(|e| e.ipv4_prefixes.len()).sum()
}

/// The ENI whose delegated prefix holds `ip` in moto; the router must route `ip` to it.
fn assert_prefix_address(vpc: &VpcFabric, node: &VpcNode, ip: Ipv4Addr) -> EniState {
    let eni = enis(node)
        .into_iter()
        .find(|e| e.ipv4_prefixes.iter().any(|p| p.contains(&ip)));
    check!(
        node,
        eni.is_some(),
        "pod address {ip} is in no prefix of {} in moto: {:?}",
        node.instance_id(),
        shape(node)
    );
    let eni = eni.unwrap();
    crate::assert_routed(vpc, node, ip, &eni);
    eni
}

/// Every ENI of the node within m5.large's / t3.small's slots: IPv4 per ENI − 1.
fn assert_slots_within(node: &VpcNode, slots: usize) {
    for (id, _, prefixes, secondary) in shape(node) {
        check!(
            node,
            prefixes + secondary <= slots,
            "{id} uses {} of its {slots} address slots ({prefixes} prefixes, {secondary} IPs)",
            prefixes + secondary
        );
    }
}

fn add_pods(vpc: &VpcFabric, node: &VpcNode, prefix: &str, n: usize) -> Vec<(Pod, Ipv4Addr, u32)> {
    (0..n)
        .map(|k| {
            let p = pod("default", &format!("{prefix}-{k}"));
            let (_, ip) = add_pod_retrying(node, &p, Duration::from_secs(90));
            let eni = assert_prefix_address(vpc, node, ip);
            (p, ip, eni.device_index().unwrap_or(0))
        })
        .collect()
}

#[test]
fn prefix_delegation_serves_max_pods_from_prefixes_and_gives_them_back() {
    let vpc = fabric();
    let a = pd_node(&vpc, "node-pd-a", "m5.large", "1");
    // A fresh node: one warm prefix on the primary ENI, nothing else.
    wait_for(
        &a,
        "one warm prefix on the primary ENI",
        Duration::from_secs(60),
        || (prefix_count(&a) == 1).then_some(()),
        || format!("{:?}", shape(&a)),
    );
    check!(
        &a,
        shape(&a).iter().all(|(_, _, _, secondary)| *secondary == 0),
        "secondary IPs next to prefixes: {:?}",
        shape(&a)
    );
    // 110 pods (max pods of an m5.large with prefixes): all from prefixes of the primary ENI
    // (9 slots = 144 addresses), within the instance's slots at every step.
    let pods = add_pods(&vpc, &a, "pd", 110);
    assert_slots_within(&a, 9);
    let addresses: BTreeSet<Ipv4Addr> = pods.iter().map(|(_, ip, _)| *ip).collect();
    assert_eq!(addresses.len(), 110, "an address was given twice");
    let s = shape(&a);
    check!(
        &a,
        s.len() == 1 && s[0].2 == 7,
        "110 pods + a warm prefix's worth, capped at max pods: 7 prefixes on one ENI: {s:?}"
    );
    // The pool holds 112 addresses: two more pods fit, the next is told about max pods.
    let extra = add_pods(&vpc, &a, "extra", 2);
    let over = pod("default", "over");
    let out = ok(&a, a.cni("ADD", &over, "1.0.0", None));
    check!(
        &a,
        !out.success() && out.describe().contains("max pods"),
        "the pod beyond max pods: {}",
        out.describe()
    );
    // Pods reach the internet as the node.
    let peer = internet_peer(&vpc, pods[0].0.ns().unwrap()).unwrap();
    check!(
        &a,
        peer == IpAddr::from(a.primary_ip()),
        "a prefix pod reached {INTERNET_HOST} as {peer}, not as the node"
    );
    // Every pod goes: prefixes go back to EC2 down to the warm target (one shrink per 30 s).
    for (p, _, _) in &pods {
        let out = ok(&a, a.cni("DEL", p, "1.0.0", None));
        check!(&a, out.success(), "DEL: {}", out.describe());
    }
    for (p, _, _) in &extra {
        let out = ok(&a, a.cni("DEL", p, "1.0.0", None));
        check!(&a, out.success(), "DEL: {}", out.describe());
    }
    wait_for(
        &a,
        "prefixes given back down to WARM_PREFIX_TARGET=1",
        Duration::from_secs(100),
        || (prefix_count(&a) == 1).then_some(()),
        || format!("{:?}", shape(&a)),
    );
}

#[test]
fn pods_on_prefixes_of_primary_and_secondary_enis_of_two_nodes_reach_each_other() {
    let vpc = fabric();
    // t3.small: 3 slots per ENI; WARM_PREFIX_TARGET=4 puts 3 prefixes on the primary ENI and
    // one on a second ENI at start.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| pd_node(&vpc, "node-pd-a", "t3.small", "4"));
        let b = s.spawn(|| pd_node(&vpc, "node-pd-b", "m5.large", "1"));
        (a.join().unwrap(), b.join().unwrap())
    });
    wait_for(
        &a,
        "4 warm prefixes on two ENIs",
        Duration::from_secs(90),
        || (shape(&a).iter().map(|e| e.2).collect::<Vec<_>>() == [3, 1]).then_some(()),
        || format!("{:?}", shape(&a)),
    );
    // 49 pods: the 49th is on the second ENI's prefix.
    let pods_a = add_pods(&vpc, &a, "a", 49);
    assert_slots_within(&a, 3);
    let devices: BTreeSet<u32> = pods_a.iter().map(|(_, _, d)| *d).collect();
    check!(
        &a,
        devices.contains(&0) && devices.iter().any(|d| *d > 0),
        "pods of {} on ENI devices {devices:?}",
        a.instance_id()
    );
    let pods_b = add_pods(&vpc, &b, "b", 2);
    let chosen: Vec<&(Pod, Ipv4Addr, u32)> = [&pods_a[0], &pods_a[48], &pods_b[0], &pods_b[1]]
        .into_iter()
        .collect();
    let mut destinations: Vec<IpAddr> = chosen.iter().map(|(_, ip, _)| IpAddr::from(*ip)).collect();
    destinations.push(IpAddr::from(a.primary_ip()));
    destinations.push(IpAddr::from(b.primary_ip()));
    let sources: Vec<(String, &Netns, Vec<IpAddr>)> = chosen
        .iter()
        .map(|(p, ip, d)| {
            (
                format!("{} ({ip}, eth{d})", p.name),
                p.ns().unwrap(),
                vec![IpAddr::from(*ip)],
            )
        })
        .collect();
    let failures = ping_matrix(&sources, &destinations, 4).unwrap();
    assert!(
        failures.is_empty(),
        "pings failed (source, destination): {failures:?}\n{}\n{}",
        a.diag(),
        vpc.diag()
    );
}

#[test]
fn imds_only_prefix_delegation_uses_the_prefixes_metadata_lists() {
    let vpc = fabric();
    // Two /28s delegated in moto to the primary ENI; ipamd (ENABLE_IMDS_ONLY_MODE=true,
    // ENABLE_PREFIX_DELEGATION=true) makes no EC2 call: metadata's ipv4-prefix is the pool.
    let n = node(
        &vpc,
        harness::NodeSpec::new("imds-pd", "m5.large").imds_only_prefixes(2),
    );
    let delegated: Vec<ipnet::Ipv4Net> = enis(&n)
        .iter()
        .flat_map(|e| e.ipv4_prefixes.clone())
        .collect();
    assert_eq!(delegated.len(), 2, "{:?}", shape(&n));
    let pods = add_pods(&vpc, &n, "imds", 32);
    let addresses: BTreeSet<Ipv4Addr> = pods.iter().map(|(_, ip, _)| *ip).collect();
    assert_eq!(addresses.len(), 32);
    check!(
        &n,
        addresses
            .iter()
            .all(|ip| delegated.iter().any(|p| p.contains(ip))),
        "addresses outside the delegated prefixes: {addresses:?}"
    );
    let over = pod("default", "imds-over");
    let out = ok(&n, n.cni("ADD", &over, "1.0.0", None));
    check!(
        &n,
        !out.success() && out.describe().contains("instance-metadata-only"),
        "the 33rd pod: {}",
        out.describe()
    );
    check!(
        &n,
        prefix_count(&n) == 2,
        "ipamd changed EC2: {:?}",
        shape(&n)
    );
    // Pods of the metadata's prefixes reach each other and the node.
    let sources: Vec<(String, &Netns, Vec<IpAddr>)> = [&pods[0], &pods[31]]
        .iter()
        .map(|(p, ip, _)| (p.name.clone(), p.ns().unwrap(), vec![IpAddr::from(*ip)]))
        .collect();
    let destinations = [
        IpAddr::from(pods[0].1),
        IpAddr::from(pods[31].1),
        IpAddr::from(n.primary_ip()),
    ];
    let failures = ping_matrix(&sources, &destinations, 2).unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", n.diag());
}

/// Adds `n` pods that must get secondary /32 addresses (not prefix ones).
fn add_secondary_pods(
    vpc: &VpcFabric,
    node: &VpcNode,
    prefix: &str,
    n: usize,
) -> Vec<(Pod, Ipv4Addr)> {
    (0..n)
        .map(|k| {
            let p = pod("default", &format!("{prefix}-{k}"));
            let (_, ip) = add_pod_retrying(node, &p, Duration::from_secs(90));
            crate::assert_vpc_address(vpc, node, ip);
            (p, ip)
        })
        .collect()
}

/// Every pod still holds its address in ipamd (CheckNetwork), and no address is held twice.
fn assert_still_held(node: &VpcNode, pods: &[(&Pod, Ipv4Addr)]) {
    for (p, ip) in pods {
        let held = ok(node, node.ipamd_assignment(p));
        check!(
            node,
            held == Some(*ip),
            "{} held {ip} before the switch and {held:?} after",
            p.name
        );
    }
    let distinct: BTreeSet<Ipv4Addr> = pods.iter().map(|(_, ip)| *ip).collect();
    check!(
        node,
        distinct.len() == pods.len(),
        "an address is held twice: {pods:?}"
    );
}

#[test]
fn switching_modes_with_live_pods_keeps_every_address_and_gives_none_twice() {
    let vpc = fabric();
    let mut n = node(&vpc, ec2_node("node-switch", "m5.large"));
    let secondary = add_secondary_pods(&vpc, &n, "sec", 5);

    // Secondary IPs -> prefixes: the pods keep their /32s, new pods get prefix addresses.
    n.set_ipamd_env("ENABLE_PREFIX_DELEGATION", "true");
    n.set_ipamd_env("WARM_PREFIX_TARGET", "1");
    let restarted = n.restart_ipamd();
    ok(&n, restarted);
    let prefixed = add_pods(&vpc, &n, "pd", 5);
    let mut live: Vec<(&Pod, Ipv4Addr)> = secondary.iter().map(|(p, ip)| (p, *ip)).collect();
    live.extend(prefixed.iter().map(|(p, ip, _)| (p, *ip)));
    assert_still_held(&n, &live);

    // Prefixes -> secondary IPs: every pod keeps its address, new pods get /32s.
    n.set_ipamd_env("ENABLE_PREFIX_DELEGATION", "false");
    let restarted = n.restart_ipamd();
    ok(&n, restarted);
    let back = add_secondary_pods(&vpc, &n, "back", 3);
    live.extend(back.iter().map(|(p, ip)| (p, *ip)));
    assert_still_held(&n, &live);

    // One pod of each kind, before and after the switches, reaches the others and the node.
    let chosen = [&live[0], &live[5], &live[10]];
    let sources: Vec<(String, &Netns, Vec<IpAddr>)> = chosen
        .iter()
        .map(|(p, ip)| (p.name.clone(), p.ns().unwrap(), vec![IpAddr::from(*ip)]))
        .collect();
    let mut destinations: Vec<IpAddr> = chosen.iter().map(|(_, ip)| IpAddr::from(*ip)).collect();
    destinations.push(IpAddr::from(n.primary_ip()));
    let failures = ping_matrix(&sources, &destinations, 3).unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", n.diag());
}

#[test]
fn a_fragmented_subnet_falls_back_to_secondary_ips_and_pods_start() {
    let subnet: ipnet::Ipv4Net = "10.0.0.0/26".parse().unwrap();
    let vpc = crate::fabric_with(harness::FabricOptions::default().subnet(subnet));
    // Someone's ENI pins one address in each /28 of the node subnet: 50 addresses stay free,
    // no aligned /28 does.
    let ec2 = vpc.ec2();
    let filler = ec2
        .create_eni(&harness::vpc::EniRequest {
            subnet_id: vpc.subnet().id.clone(),
            security_groups: vec![vpc.security_group().to_owned()],
            secondary_ips: 0,
            private_ip: None,
            description: "someone else's".into(),
            tags: Default::default(),
        })
        .unwrap();
    let pins: Vec<Ipv4Addr> = [25, 41, 57]
        .into_iter()
        .map(|k| Ipv4Addr::new(10, 0, 0, k))
        .collect();
    ec2.assign_specific_ips(&filler.id, &pins).unwrap();
    let n = pd_node(&vpc, "node-frag", "m5.large", "1");
    let pods = add_secondary_pods(&vpc, &n, "frag", 3);
    check!(
        &n,
        prefix_count(&n) == 0,
        "a prefix in a fragmented subnet: {:?}",
        shape(&n)
    );
    let fallback = ok(&n, n.metric("awscni_prefix_fallback_ips")).unwrap_or(0.0);
    check!(
        &n,
        fallback >= 3.0,
        "awscni_prefix_fallback_ips = {fallback}"
    );
    let log = std::fs::read_to_string(n.ipamd_log_path()).unwrap_or_default();
    check!(
        &n,
        log.contains("InsufficientCidrBlocks") && log.contains("subnet CIDR reservation"),
        "ipamd's log does not say why and what to do"
    );
    let sources: Vec<(String, &Netns, Vec<IpAddr>)> = pods
        .iter()
        .map(|(p, ip)| (p.name.clone(), p.ns().unwrap(), vec![IpAddr::from(*ip)]))
        .collect();
    let mut destinations: Vec<IpAddr> = pods.iter().map(|(_, ip)| IpAddr::from(*ip)).collect();
    destinations.push(IpAddr::from(n.primary_ip()));
    let failures = ping_matrix(&sources, &destinations, 3).unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", n.diag());
}
