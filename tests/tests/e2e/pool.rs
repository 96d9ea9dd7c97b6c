//! The address pool under load and at its end: parallel ADDs, exhaustion, cooldown.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use harness::{NodeOptions, standard_node};

use crate::{assert_pod_network, check, ok, pod, pod_ip, start, start_node};

#[test]
fn eight_parallel_adds_get_eight_distinct_addresses() {
    let node = start_node(standard_node(&[4, 4]));
    let pods: Vec<_> = (0..8).map(|i| pod("load", &format!("burst-{i}"))).collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(|| node.add_pod(p, "1.0.0")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = Vec::new();
    for (p, r) in pods.iter().zip(results) {
        let result = ok(&node, r);
        let ip = pod_ip(&node, &result);
        assert_pod_network(&node, p, ip);
        ips.push(ip);
    }
    let distinct: BTreeSet<Ipv4Addr> = ips.iter().copied().collect();
    check!(
        node,
        distinct.len() == 8,
        "parallel ADDs shared addresses: {ips:?}"
    );
    let all: BTreeSet<Ipv4Addr> = node.description().all_secondary_ips().into_iter().collect();
    check!(
        node,
        distinct == all,
        "8 pods must use the 8 secondary IPs: {ips:?}"
    );
    let checkpoint = ok(&node, node.checkpoint_ips());
    check!(
        node,
        checkpoint == distinct,
        "checkpoint lists {checkpoint:?}, want exactly {distinct:?}"
    );
    let cp = ok(&node, node.checkpoint());
    check!(
        node,
        cp["version"] == "vpc-cni-ipam/1",
        "checkpoint version: {cp}"
    );
    for p in &pods {
        let allocations = cp["allocations"].as_array().cloned().unwrap_or_default();
        check!(
            node,
            allocations
                .iter()
                .any(|a| a["containerID"] == p.container_id.as_str()
                    && a["ifName"] == "eth0"
                    && a["networkName"] == "aws-cni"
                    && a["metadata"]["k8sPodName"] == p.name.as_str()
                    && a["metadata"]["k8sPodNamespace"] == "load"),
            "checkpoint lacks pod {}: {cp}",
            p.name
        );
    }
    let status = ok(&node, node.pool_status());
    check!(
        node,
        status.assigned_i_ps == 8 && status.assignable_i_ps == 0,
        "{status:?}"
    );
}

#[test]
fn an_exhausted_pool_fails_add_with_code_11_and_leaves_nothing() {
    let node = start_node(standard_node(&[2]));
    let a = pod("default", "full-a");
    let b = pod("default", "full-b");
    let ra = ok(&node, node.add_pod(&a, "1.0.0"));
    let ip_a = pod_ip(&node, &ra);
    ok(&node, node.add_pod(&b, "1.0.0"));
    let before = ok(&node, node.host_state());

    let c = pod("default", "full-c");
    let out = ok(&node, node.cni("ADD", &c, "1.0.0", None));
    check!(
        node,
        !out.success() && out.error_code() == Some(11),
        "ADD on an exhausted pool must fail with 11: {}",
        out.describe()
    );
    let why = out.error_text();
    check!(
        node,
        why.contains('2') && why.to_lowercase().contains("assigned"),
        "the error must say how many IPs and that they are assigned: {}",
        out.describe()
    );
    let after = ok(&node, node.host_state());
    if let Some(diff) = before.diff(&after) {
        panic!("a failed ADD left state behind:\n{diff}\n{}", node.diag());
    }
    let pod_links = ok(&node, c.ns().unwrap().link_names());
    check!(
        node,
        pod_links == vec!["lo".to_owned()],
        "failed ADD left {pod_links:?} in the pod"
    );
    check!(
        node,
        ok(&node, node.pool_status()).assigned_i_ps == 2,
        "assigned count changed"
    );

    // With IP_COOLDOWN_PERIOD=0 a released address is assignable at once.
    ok(&node, node.del_pod(&a, "1.0.0", Some(&ra)));
    let rc = ok(&node, node.add_pod(&c, "1.0.0"));
    let ip_c = pod_ip(&node, &rc);
    check!(
        node,
        ip_c == ip_a,
        "the only free address {ip_a} was not reused at once (got {ip_c})"
    );
    assert_pod_network(&node, &c, ip_c);
}

#[test]
fn cooldown_keeps_a_released_address_out_of_use_for_the_period() {
    const COOLDOWN: Duration = Duration::from_secs(4);
    let node = start(NodeOptions::new(standard_node(&[1])).cooldown_seconds(COOLDOWN.as_secs()));
    let a = pod("default", "cool-a");
    let ra = ok(&node, node.add_pod(&a, "1.0.0"));
    let ip = pod_ip(&node, &ra);
    ok(&node, node.del_pod(&a, "1.0.0", Some(&ra)));
    let released = Instant::now();

    let b = pod("default", "cool-b");
    let out = ok(&node, node.cni("ADD", &b, "1.0.0", None));
    check!(
        node,
        !out.success() && out.error_code() == Some(11),
        "ADD during cooldown must fail with 11: {}",
        out.describe()
    );
    check!(
        node,
        out.error_text().to_lowercase().contains("cooldown"),
        "the error must mention the cooldown: {}",
        out.describe()
    );
    let status = ok(&node, node.pool_status());
    check!(
        node,
        status.cooldown_i_ps == 1 && status.assignable_i_ps == 0,
        "{status:?}"
    );

    // Retry as a runtime would; success must not come before the period ends.
    let deadline = released + COOLDOWN + Duration::from_secs(10);
    let rb = loop {
        let out = ok(&node, node.cni("ADD", &b, "1.0.0", None));
        if out.success() {
            check!(
                node,
                released.elapsed() >= COOLDOWN,
                "{ip} was reused {:?} after release, before the {COOLDOWN:?} cooldown",
                released.elapsed()
            );
            break out.json.unwrap_or_default();
        }
        check!(
            node,
            Instant::now() < deadline,
            "{ip} still not reusable {:?} after release: {}",
            released.elapsed(),
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let ip_b = pod_ip(&node, &rb);
    check!(node, ip_b == ip, "got {ip_b}, the only address is {ip}");
    assert_pod_network(&node, &b, ip_b);
}
