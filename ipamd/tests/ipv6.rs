//! ipamd in IPv6 mode (instance-metadata-only) in a throwaway node namespace: pods get /128s of
//! the primary ENI's /80, the replies carry the VPC's IPv6 CIDRs, the checkpoint holds `ipv6`
//! allocations in the reference's layout, a restart keeps them, no IPv4 SNAT is programmed, and
//! a node without a prefix is not ready with a message that says how to give it one.
//!
//! The settings the reference refuses with IPv6 (dual stack, no prefix delegation, a Xen
//! instance type) stop the binary at start-up saying what to change. Pods end to end in IPv6
//! (the plugin, egress-cni, EC2 mode): `tests/tests/vpc/ipv6_pods.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv6Addr;
use std::time::Duration;

use common::world;
use ipamd::rpc::{AddNetworkRequest, CheckNetworkRequest, DelNetworkRequest, PoolStatusRequest};
use ipnet::Ipv6Net;
use test_support::ipamd_client::client;

const VPC_V6: &str = "2600:1f14:d00:ab00::/56";
const SUBNET_V6: &str = "2600:1f14:d00:ab00::/64";
const PREFIX: &str = "2600:1f14:d00:ab00:4a6b::/80";

/// What ENABLE_IPv6=true needs besides it (IPv6 only, prefixes; no egress-cni here).
const IPV6_MODE: [(&str, &str); 4] = [
    ("ENABLE_IPv6", "true"),
    ("ENABLE_IPv4", "false"),
    ("ENABLE_PREFIX_DELEGATION", "true"),
    ("ENABLE_V4_EGRESS", "false"),
];

/// The ipamd binary in IPv6 mode in the world's node namespace (killed on drop), with
/// `IP_COOLDOWN_PERIOD=cooldown`.
fn start(w: &common::World, cooldown: &str) -> common::daemon::Ipamd {
    let mut env = IPV6_MODE.to_vec();
    env.push(("IP_COOLDOWN_PERIOD", cooldown));
    common::daemon::Ipamd::start(&w.node, &w.paths, &w.imds.endpoint(), &env)
}

/// Waits for the conflist, written once ipamd is ready.
fn wait_ready(w: &common::World) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !w.paths.conflist().exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "ipamd not ready after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn add_req(container: &str, name: &str) -> AddNetworkRequest {
    AddNetworkRequest {
        client_version: "test".into(),
        k8s_pod_name: name.into(),
        k8s_pod_namespace: "default".into(),
        container_id: container.into(),
        if_name: "eth0".into(),
        network_name: "aws-cni".into(),
        netns: "/run/netns/x".into(),
        ..AddNetworkRequest::default()
    }
}

fn key_req(container: &str) -> CheckNetworkRequest {
    CheckNetworkRequest {
        container_id: container.into(),
        if_name: "eth0".into(),
        network_name: "aws-cni".into(),
        ..CheckNetworkRequest::default()
    }
}

/// The world's node with an IPv6 VPC, subnet and (unless `prefix` is false) the /80.
fn v6_world(prefix: bool) -> common::World {
    let w = world();
    w.edit_metadata(|d| {
        d.vpc_ipv6_cidr_blocks = vec![VPC_V6.parse().unwrap()];
        let primary = &mut d.interfaces[0];
        primary.subnet_ipv6_cidr_blocks = vec![SUBNET_V6.parse().unwrap()];
        primary.ipv6s = vec!["2600:1f14:d00:ab00::10".parse().unwrap()];
        if prefix {
            primary.ipv6_prefixes = vec![PREFIX.parse().unwrap()];
        }
    });
    w
}

fn in_prefix(n: u128) -> String {
    let p: Ipv6Net = PREFIX.parse().unwrap();
    Ipv6Addr::from(u128::from(p.network()) + n).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_mode_hands_out_the_primary_enis_prefix_and_keeps_it_across_a_restart() {
    let w = v6_world(true);
    let ipamd = start(&w, "30");
    wait_ready(&w);
    let mut c = client(&w.paths.socket()).await.unwrap();

    let mut got = Vec::new();
    for i in 0..3 {
        let r = c
            .add_network(add_req(&format!("c{i}"), &format!("pod-{i}")))
            .await
            .unwrap()
            .into_inner();
        assert!(r.success);
        let a = &r.ip_allocation_metadata[0];
        assert_eq!(a.i_pv4_addr, "", "no IPv4 address in IPv6 mode");
        assert_eq!((a.device_number, a.route_table_id), (0, 254));
        assert_eq!(r.vp_cv6_cid_rs, vec![VPC_V6.to_owned()]);
        assert!(r.vp_cv4_cid_rs.is_empty(), "{:?}", r.vp_cv4_cid_rs);
        assert_eq!(r.eniid, "eni-0000000000000000a");
        got.push(a.i_pv6_addr.clone());
    }
    // The lowest addresses of the /80, its first one skipped (the /64's anycast address when
    // EC2 delegates the /64's first /80).
    assert_eq!(got, vec![in_prefix(1), in_prefix(2), in_prefix(3)]);

    // The checkpoint has them as the reference writes IPv6 allocations: ipv6, no ipv4.
    let cp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.paths.checkpoint()).unwrap()).unwrap();
    let allocations = cp["allocations"].as_array().unwrap();
    assert_eq!(allocations.len(), 3, "{cp}");
    for (entry, ip) in allocations.iter().zip(&got) {
        assert_eq!(entry["ipv6"], ip.as_str(), "{cp}");
        assert!(entry.get("ipv4").is_none(), "{cp}");
    }

    // Pool status counts the prefix (2^48 - 1 usable addresses, shown clamped to the
    // contract's uint32).
    let status = c
        .pool_status(PoolStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.assigned_i_ps, 3, "{status:?}");
    assert_eq!(status.total_i_ps, u32::MAX, "{status:?}");
    assert!(status.ready && status.message.is_empty(), "{status:?}");

    // No IPv4 SNAT or connmark in IPv6 mode, and no rule 1024.
    let nat = w
        .node
        .exec_checked("iptables", &["-t", "nat", "-S"])
        .unwrap();
    assert!(!nat.contains("AWS-SNAT-CHAIN"), "{nat}");
    let rules = w.node.rule_lines().unwrap();
    assert!(!rules.iter().any(|r| r.starts_with("1024:")), "{rules:?}");

    // A released address cools down; the next pod gets a never-used one.
    c.del_network(DelNetworkRequest {
        container_id: "c1".into(),
        if_name: "eth0".into(),
        network_name: "aws-cni".into(),
        reason: "PodDeleted".into(),
        ..DelNetworkRequest::default()
    })
    .await
    .unwrap();
    let r = c
        .add_network(add_req("c3", "pod-3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ip_allocation_metadata[0].i_pv6_addr, in_prefix(4));

    // Restart: the allocations come back from the checkpoint (they are younger than the orphan
    // grace, so they are kept although no veth exists here).
    drop(c);
    drop(ipamd);
    // wait_ready waits for the conflist ipamd writes once ready.
    std::fs::remove_file(w.paths.conflist()).unwrap();
    let ipamd = start(&w, "30");
    wait_ready(&w);
    let mut c = client(&w.paths.socket()).await.unwrap();
    for (cid, ip) in [
        ("c0", in_prefix(1)),
        ("c2", in_prefix(3)),
        ("c3", in_prefix(4)),
    ] {
        let r = c.check_network(key_req(cid)).await.unwrap().into_inner();
        assert_eq!(r.ip_allocation_metadata[0].i_pv6_addr, ip, "{cid}");
    }
    let r = c
        .add_network(add_req("c4", "pod-4"))
        .await
        .unwrap()
        .into_inner();
    let fresh = &r.ip_allocation_metadata[0].i_pv6_addr;
    assert!(
        ![in_prefix(1), in_prefix(3), in_prefix(4)].contains(fresh),
        "{fresh} is held by a restored pod"
    );
    drop(c);
    drop(ipamd);
}

/// Settings the reference refuses with IPv6 are refused by the binary at start-up, naming
/// what to change, before it binds its socket or writes a conflist: dual stack, IPv6 without
/// prefix delegation, and a Xen instance type (no prefixes on its ENIs).
#[test]
fn the_binary_refuses_bad_ipv6_settings_saying_what_to_change() {
    let w = v6_world(true);
    let run = |extra: &[(&str, &str)]| {
        let out = common::daemon::command(&w.node, &w.paths, &w.imds.endpoint(), extra)
            .output()
            .unwrap();
        assert!(!w.paths.socket().exists() && !w.paths.conflist().exists());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[("ENABLE_IPv6", "true")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("unsupported ENABLE_IPv6=\"true\"")
            && stderr.contains("dual-stack")
            && stderr.contains("set ENABLE_IPv4=false"),
        "{stderr}"
    );
    let (code, stderr) = run(&[("ENABLE_IPv6", "true"), ("ENABLE_IPv4", "false")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("set ENABLE_PREFIX_DELEGATION=true"),
        "{stderr}"
    );
    w.edit_metadata(|d| d.instance_type = "m4.large".into());
    let (code, stderr) = run(&IPV6_MODE);
    let log = w.paths.log_tail();
    assert!(code.is_some_and(|c| c != 0), "{stderr}\n{log}");
    assert!(
        [&stderr, &log]
            .iter()
            .any(|t| t.contains("m4.large") && t.contains("Nitro") && t.contains("ENABLE_IPv6")),
        "{stderr}\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_eni_without_a_prefix_keeps_ipamd_not_ready_saying_how_to_add_one() {
    let w = v6_world(false);
    let ipamd = start(&w, "0");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let message = loop {
        if let Ok(mut c) = client(&w.paths.socket()).await
            && let Ok(s) = c.pool_status(PoolStatusRequest::default()).await
        {
            let s = s.into_inner();
            assert!(!s.ready, "ready without a prefix: {s:?}");
            if s.message.contains("IPv6 prefix") {
                break s.message;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no message about the missing prefix"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        message.contains("eni-0000000000000000a")
            && message.contains("assign-ipv6-addresses")
            && message.contains("--ipv6-prefix-count 1"),
        "{message}"
    );
    // Once metadata lists one, start-up goes on by itself.
    w.edit_metadata(|d| d.interfaces[0].ipv6_prefixes = vec![PREFIX.parse().unwrap()]);
    wait_ready(&w);
    let mut c = client(&w.paths.socket()).await.unwrap();
    let r = c
        .add_network(add_req("c0", "pod-0"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ip_allocation_metadata[0].i_pv6_addr, in_prefix(1));
    drop(c);
    drop(ipamd);
}
