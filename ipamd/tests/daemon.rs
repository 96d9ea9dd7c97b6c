//! The real `ipamd` binary in a throwaway node namespace, against a small IMDSv2 server running
//! inside that namespace: start-up and readiness, secondary ENI bring-up, the gRPC contract,
//! exhaustion, metadata following, restart with checkpoint restore, shutdown, config errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::daemon::command;
use common::world;
use ipamd::rpc::{
    AddNetworkRequest, CheckNetworkRequest, DelNetworkRequest, GarbageCollectRequest,
    PoolStatusRequest,
};
use nix::sys::signal::Signal;
use test_support::ipamd_client::{channel, client};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn add_req(container: &str, ns: &str, name: &str) -> AddNetworkRequest {
    AddNetworkRequest {
        client_version: "test".into(),
        k8s_pod_name: name.into(),
        k8s_pod_namespace: ns.into(),
        container_id: container.into(),
        if_name: "eth0".into(),
        network_name: "aws-cni".into(),
        netns: "/run/netns/x".into(),
        ..AddNetworkRequest::default()
    }
}

fn del_req(container: &str) -> DelNetworkRequest {
    DelNetworkRequest {
        container_id: container.into(),
        if_name: "eth0".into(),
        network_name: "aws-cni".into(),
        reason: "PodDeleted".into(),
        ..DelNetworkRequest::default()
    }
}

fn check_req(container: &str) -> CheckNetworkRequest {
    CheckNetworkRequest {
        container_id: container.into(),
        if_name: "eth0".into(),
        network_name: "aws-cni".into(),
        ..CheckNetworkRequest::default()
    }
}

async fn health(socket: &std::path::Path, service: &str) -> i32 {
    let mut h = HealthClient::new(channel(socket).await.unwrap());
    h.check(HealthCheckRequest {
        service: service.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_contract_end_to_end() {
    let w = world();
    let mut ipamd = w.start(&[]);
    ipamd.wait_ready(Duration::from_secs(30));
    let socket = w.paths.socket();

    // Socket, health, conflist.
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    for service in ["", "grpc.health.v1.aws-node"] {
        assert_eq!(
            health(&socket, service).await,
            SERVING,
            "health {service:?}"
        );
    }
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.paths.conflist()).unwrap()).unwrap();
    assert_eq!(conflist["cniVersion"], "1.0.0");
    assert_eq!(
        conflist["plugins"][0]["ipamdSocket"],
        socket.display().to_string()
    );
    assert_eq!(conflist["plugins"][0]["mtu"], "9001");
    assert_eq!(conflist["plugins"][1]["type"], "portmap");

    // eth1 is up with its address, table 2 and rule 32765.
    let addrs = w
        .node
        .ip(&["-4", "-o", "addr", "show", "dev", "eth1"])
        .unwrap();
    assert!(addrs.contains("inet 10.0.0.20/24"), "{addrs}");
    let table2 = w.node.ip(&["-4", "route", "show", "table", "2"]).unwrap();
    assert!(table2.contains("default via 10.0.0.1 dev eth1"), "{table2}");
    assert!(
        w.node
            .rule_lines()
            .unwrap()
            .contains(&"32765: from 10.0.0.20 lookup 2".to_owned())
    );

    // Assignment packs the primary ENI first, never hands out ENI primary IPs.
    let mut c = client(&socket).await.unwrap();
    let mut got = Vec::new();
    for i in 0..4 {
        let r = c
            .add_network(add_req(&format!("c{i}"), "default", &format!("pod-{i}")))
            .await
            .unwrap()
            .into_inner();
        assert!(r.success);
        assert_eq!(r.vp_cv4_cid_rs, vec!["10.0.0.0/16".to_owned()]);
        let a = &r.ip_allocation_metadata[0];
        got.push((
            a.i_pv4_addr.clone(),
            a.device_number,
            a.route_table_id,
            r.eniid.clone(),
        ));
    }
    assert_eq!(
        got,
        vec![
            ("10.0.0.11".into(), 0, 254, "eni-0000000000000000a".into()),
            ("10.0.0.12".into(), 0, 254, "eni-0000000000000000a".into()),
            ("10.0.0.21".into(), 1, 2, "eni-0000000000000000b".into()),
            ("10.0.0.22".into(), 1, 2, "eni-0000000000000000b".into()),
        ]
    );
    // Repeated ADD: same IP.
    let again = c
        .add_network(add_req("c2", "default", "pod-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.ip_allocation_metadata[0].i_pv4_addr, "10.0.0.21");

    // Exhausted: RESOURCE_EXHAUSTED with the reason.
    let err = c
        .add_network(add_req("c9", "default", "pod-9"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message()
            .starts_with("no assignable IP: all 4 IPs on 2 ENIs are assigned")
            && err.message().contains("limit"),
        "{}",
        err.message()
    );
    let st = c
        .pool_status(PoolStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.ready);
    assert_eq!(
        (
            st.total_i_ps,
            st.assigned_i_ps,
            st.cooldown_i_ps,
            st.assignable_i_ps
        ),
        (4, 4, 0, 0)
    );
    assert_eq!(st.message, err.message());

    // The checkpoint lists exactly the assignments.
    let cp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.paths.checkpoint()).unwrap()).unwrap();
    assert_eq!(cp["version"], "vpc-cni-ipam/1");
    let mut ips: Vec<&str> = cp["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ipv4"].as_str().unwrap())
        .collect();
    ips.sort_unstable();
    assert_eq!(
        ips,
        vec!["10.0.0.11", "10.0.0.12", "10.0.0.21", "10.0.0.22"]
    );
    assert_eq!(
        cp["allocations"][0]["metadata"]["k8sPodNamespace"],
        "default"
    );

    // CheckNetwork, DelNetwork (twice), GC.
    let chk = c.check_network(check_req("c3")).await.unwrap().into_inner();
    assert_eq!(chk.ip_allocation_metadata[0].i_pv4_addr, "10.0.0.22");
    assert_eq!(
        c.check_network(check_req("nope")).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let del = c.del_network(del_req("c0")).await.unwrap().into_inner();
    assert_eq!(del.ip_allocation_metadata[0].i_pv4_addr, "10.0.0.11");
    let del = c.del_network(del_req("c0")).await.unwrap().into_inner();
    assert!(del.success && del.ip_allocation_metadata.is_empty());
    let bad = c
        .add_network(add_req("", "default", "x"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("ContainerID"), "{}", bad.message());
    let gc = c
        .garbage_collect(GarbageCollectRequest {
            network_name: "aws-cni".into(),
            valid_attachments: vec![ipamd::rpc::Attachment {
                container_id: "c1".into(),
                if_name: "eth0".into(),
            }],
            ..GarbageCollectRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut released: Vec<String> = gc.released.iter().map(|r| r.i_pv4_addr.clone()).collect();
    released.sort();
    assert_eq!(
        released,
        vec!["10.0.0.21".to_owned(), "10.0.0.22".to_owned()]
    );

    // A secondary IP that appears in metadata is adopted.
    w.edit_metadata(|d| {
        d.interfaces[1]
            .local_ipv4s
            .push("10.0.0.23".parse().unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = c
            .pool_status(PoolStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if st.total_i_ps == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new IP not adopted; log:\n{}",
            w.paths.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM: exit 0, socket removed.
    drop(c);
    ipamd.signal(Signal::SIGTERM);
    let status = ipamd.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}; log:\n{}", w.paths.log_tail());
    assert!(!socket.exists(), "socket must be removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_metadata_is_readable() {
    let w = world();
    w.imds.set_unavailable(true);
    let mut ipamd = w.start(&[]);
    let socket = w.paths.socket();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "socket not bound; log:\n{}",
            w.paths.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health(&socket, "").await, NOT_SERVING);
    let mut c = client(&socket).await.unwrap();
    let err = c
        .add_network(add_req("c0", "default", "p"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("not ready"), "{}", err.message());
    let st = c
        .pool_status(PoolStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!st.ready);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!w.paths.conflist().exists(), "no conflist before ready");
    let st = c
        .pool_status(PoolStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.message.contains("instance metadata"), "{}", st.message);

    w.imds.set_unavailable(false);
    ipamd.wait_ready(Duration::from_secs(30));
    assert_eq!(health(&socket, "").await, SERVING);
    let r = c
        .add_network(add_req("c0", "default", "p"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ip_allocation_metadata[0].i_pv4_addr, "10.0.0.11");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_live_pods_and_drops_pods_whose_veth_is_gone() {
    let w = world();
    let mut ipamd = w.start(&[]);
    ipamd.wait_ready(Duration::from_secs(30));
    let mut c = client(&w.paths.socket()).await.unwrap();
    let mut ips = Vec::new();
    for (cid, name) in [("live", "web-0"), ("gone", "web-1"), ("live2", "web-2")] {
        let r = c
            .add_network(add_req(cid, "default", name))
            .await
            .unwrap()
            .into_inner();
        ips.push(r.ip_allocation_metadata[0].i_pv4_addr.clone());
    }
    // What the plugin would have made: host veths for the live pods, rules for all.
    for name in ["web-0", "web-2"] {
        let veth = format!(
            "eni{}",
            vpc_cni_contract::dataplane::veth_suffix("default", name)
        );
        w.node
            .ip(&[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                &format!("p{}", &veth[3..12]),
            ])
            .unwrap();
    }
    for ip in &ips {
        w.node
            .ip(&["rule", "add", "to", ip, "lookup", "main", "priority", "512"])
            .unwrap();
        w.node
            .ip(&["rule", "add", "from", ip, "lookup", "2", "priority", "1536"])
            .unwrap();
    }
    drop(c);
    ipamd.signal(Signal::SIGKILL);
    ipamd.wait_exit(Duration::from_secs(5));
    drop(ipamd);
    std::fs::remove_file(w.paths.conflist()).unwrap();

    let mut ipamd = w.start(&[]);
    ipamd.wait_ready(Duration::from_secs(30));
    let mut c = client(&w.paths.socket()).await.unwrap();
    let live = c
        .check_network(check_req("live"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.ip_allocation_metadata[0].i_pv4_addr, ips[0]);
    let live2 = c
        .check_network(check_req("live2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live2.ip_allocation_metadata[0].i_pv4_addr, ips[2]);
    // "gone" was assigned seconds ago: the restore keeps it (its ADD might still be creating the
    // veth) and the orphan sweep releases it, rules first, once it is older than the grace.
    let deadline = std::time::Instant::now()
        + ipamd::restore::ORPHAN_GRACE
        + ipamd::restore::SWEEP_INTERVAL
        + Duration::from_secs(5);
    loop {
        match c.check_network(check_req("gone")).await {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::NotFound);
                break;
            }
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the allocation of the pod whose veth is gone was never released"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let rules = w.node.rule_lines().unwrap();
    assert!(
        !rules.iter().any(|r| r.contains(&ips[1])),
        "the dropped pod's rules must be gone: {rules:?}"
    );
    assert!(
        rules.contains(&format!("512: from all to {} lookup main", ips[0])),
        "{rules:?}"
    );
    let cp = std::fs::read_to_string(w.paths.checkpoint()).unwrap();
    assert!(
        cp.contains(&ips[0]) && !cp.contains(&format!("\"{}\"", ips[1])),
        "{cp}"
    );
    // New ADDs get other IPs (the dropped one is free again).
    let n = c
        .add_network(add_req("new", "default", "web-9"))
        .await
        .unwrap()
        .into_inner();
    let new_ip = &n.ip_allocation_metadata[0].i_pv4_addr;
    assert_ne!(new_ip, &ips[0]);
    assert_ne!(new_ip, &ips[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_quickly_naming_the_variable() {
    let w = world();
    for (var, value) in [
        ("IP_COOLDOWN_PERIOD", "-3"),
        ("AWS_VPC_ENI_MTU", "70000"),
        ("WARM_IP_TARGET", "-2"),
        ("ENABLE_IMDS_ONLY_MODE", "maybe"),
    ] {
        let start = Instant::now();
        let out = command(&w.node, &w.paths, &w.imds.endpoint(), &[(var, value)])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(var) && stderr.contains(value),
            "{var}={value}: {stderr}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            !w.paths.socket().exists(),
            "no socket may be bound on a config error"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_checkpoint_stops_startup_naming_the_file() {
    let w = world();
    std::fs::create_dir_all(w.paths.checkpoint().parent().unwrap()).unwrap();
    for (content, expect) in [
        (
            r#"{"version":"vpc-cni-ipam/2","allocations":[]}"#,
            "vpc-cni-ipam/2",
        ),
        (
            r#"{"version":"vpc-cni-ipam/1","allocations":[{"netw"#,
            "not valid checkpoint JSON",
        ),
    ] {
        std::fs::write(w.paths.checkpoint(), content).unwrap();
        let mut ipamd = w.start(&[]);
        let status = ipamd.wait_exit(Duration::from_secs(20));
        assert!(!status.success());
        let mut stderr = String::new();
        std::io::Read::read_to_string(ipamd.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(
            stderr.contains(expect) && stderr.contains(&w.paths.checkpoint().display().to_string()),
            "{stderr}"
        );
        assert!(
            !w.paths.socket().exists(),
            "socket removed after a failed start"
        );
        assert!(!w.paths.conflist().exists(), "never ready, so no conflist");
        assert_eq!(
            std::fs::read_to_string(w.paths.checkpoint()).unwrap(),
            content,
            "the file is left for the operator"
        );
    }
}
