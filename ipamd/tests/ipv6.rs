//! ipamd in IPv6 mode (instance-metadata-only) in a throwaway node namespace: pods get /128s of
//! the primary ENI's /80, the replies carry the VPC's IPv6 CIDRs, the checkpoint holds `ipv6`
//! allocations in the reference's layout, a restart keeps them, no IPv4 SNAT is programmed, and
//! a node without a prefix is not ready with a message that says how to give it one.
//!
//! The binary refuses `ENABLE_IPv6=true` until the plugin builds IPv6 pod networking (the
//! refusal is checked too), so the daemon runs in this process, in the node's namespace, with
//! the configuration the binary would read plus IPv6 mode.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv6Addr;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use common::world;
use ipamd::checkpoint::FileCheckpointer;
use ipamd::cloud::imds::SdkImds;
use ipamd::config::Config;
use ipamd::daemon::Daemon;
use ipamd::rpc::{AddNetworkRequest, CheckNetworkRequest, DelNetworkRequest, PoolStatusRequest};
use ipnet::Ipv6Net;
use test_support::ipamd_client::client;

const VPC_V6: &str = "2600:1f14:d00:ab00::/56";
const SUBNET_V6: &str = "2600:1f14:d00:ab00::/64";
const PREFIX: &str = "2600:1f14:d00:ab00:4a6b::/80";

/// What ENABLE_IPv6=true needs besides it (IPv6 only, prefixes, no IPv4 egress yet).
const IPV6_MODE: [(&str, &str); 4] = [
    ("ENABLE_IPv6", "true"),
    ("ENABLE_IPv4", "false"),
    ("ENABLE_PREFIX_DELEGATION", "true"),
    ("ENABLE_V4_EGRESS", "false"),
];

/// ipamd running in this process inside the node's namespace; stopped (drained) on drop.
struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// The configuration `common::daemon::command` gives the binary, with `cooldown`, in IPv6
    /// mode.
    fn start(w: &common::World, cooldown: &str) -> Self {
        let paths = &w.paths;
        let env: HashMap<&str, String> = HashMap::from([
            ("ENABLE_IMDS_ONLY_MODE", "true".to_owned()),
            ("AWS_VPC_K8S_CNI_IPAMD_SOCKET", path(&paths.socket())),
            ("AWS_VPC_K8S_CNI_BACKING_STORE", path(&paths.checkpoint())),
            ("HOST_CNI_CONFDIR_PATH", path(&paths.confdir())),
            ("MY_NODE_NAME", "node-1".to_owned()),
            ("IP_COOLDOWN_PERIOD", cooldown.to_owned()),
            ("ENABLE_PREFIX_DELEGATION", "true".to_owned()),
            ("ENABLE_V4_EGRESS", "false".to_owned()),
        ]);
        let env: HashMap<&str, &str> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut config = Config::from_env(&env).unwrap();
        config.features.ipv4 = false;
        config.features.ipv6 = true;
        std::fs::create_dir_all(paths.socket().parent().unwrap()).unwrap();
        let imds = SdkImds::new(
            aws_config::imds::Client::builder()
                .endpoint(w.imds.endpoint())
                .unwrap()
                .build(),
        );
        let checkpointer = Arc::new(FileCheckpointer::new(paths.checkpoint()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ns = std::fs::File::open(w.node.path()).unwrap();
        let thread = std::thread::spawn(move || {
            // Threads the runtime starts from here inherit the namespace.
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    Daemon::new(config, imds, checkpointer)
                        .run(async {
                            let _ = stopped.await;
                        })
                        .await
                        .unwrap();
                });
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
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
    let ipamd = InProcess::start(&w, "30");
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
    let ipamd = InProcess::start(&w, "30");
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

#[test]
fn the_binary_refuses_ipv6_mode_until_the_plugin_builds_ipv6_pods() {
    let w = v6_world(true);
    let out = common::daemon::command(&w.node, &w.paths, &w.imds.endpoint(), &IPV6_MODE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unsupported ENABLE_IPv6=\"true\"")
            && stderr.contains("not yet proven end to end"),
        "{stderr}"
    );
    assert!(!w.paths.socket().exists() && !w.paths.conflist().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_eni_without_a_prefix_keeps_ipamd_not_ready_saying_how_to_add_one() {
    let w = v6_world(false);
    let ipamd = InProcess::start(&w, "0");
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
