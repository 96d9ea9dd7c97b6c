//! Spec 1.1.0 corners no real client here reaches (libcni 1.1 stops at 1.0.0): the plugin is
//! exec'd directly, as a runtime would, for ADD results with `mtu`, STATUS and GC.

use std::time::Duration;

use harness::{CniRequest, standard_node};
use serde_json::{Value, json};

use crate::{assert_pod_gone, assert_pod_network, check, must, ok, pod, pod_ip, start_node};

fn status(node: &harness::SimNode) -> harness::CniOutcome {
    let conf = ok(node, node.plugin_config("1.1.0", None));
    ok(node, node.exec_plugin(&CniRequest::new("STATUS", &conf)))
}

#[test]
fn add_1_1_0_reports_mtu_and_status_follows_the_pool() {
    let mut node = start_node(standard_node(&[2]));
    let out = status(&node);
    check!(
        node,
        out.success() && out.stdout.trim().is_empty(),
        "STATUS with free IPs must exit 0 silently: {}",
        out.describe()
    );

    let first = pod("default", "mtu-0");
    let result = ok(&node, node.add_pod(&first, "1.1.0"));
    check!(node, result["cniVersion"] == "1.1.0", "result {result}");
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    check!(
        node,
        ifaces.len() >= 2 && ifaces.iter().all(|i| i["mtu"] == 9001),
        "1.1.0 interfaces must carry mtu 9001: {ifaces:?}"
    );
    let ip = pod_ip(&node, &result);
    assert_pod_network(&node, &first, ip);
    let eth0 = ok(&node, first.ns().unwrap().link("eth0")).unwrap();
    check!(node, eth0["mtu"] == 9001, "pod eth0 mtu: {eth0}");

    // Pool exhausted: STATUS says unavailable (50) and why.
    let second = pod("default", "mtu-1");
    let second_result = ok(&node, node.add_pod(&second, "1.1.0"));
    let out = status(&node);
    check!(
        node,
        !out.success() && out.error_code() == Some(50),
        "STATUS with an exhausted pool must fail with 50: {}",
        out.describe()
    );
    check!(
        node,
        !out.error_text().trim().is_empty(),
        "STATUS 50 must say why: {}",
        out.describe()
    );
    // A release makes it available again (cooldown 0).
    ok(&node, node.del_pod(&second, "1.1.0", Some(&second_result)));
    let out = status(&node);
    check!(
        node,
        out.success(),
        "STATUS after a release: {}",
        out.describe()
    );

    // ipamd down: STATUS 50.
    must(node.stop_ipamd(Duration::from_secs(15)));
    let out = status(&node);
    check!(
        node,
        !out.success() && out.error_code() == Some(50),
        "STATUS with ipamd stopped must fail with 50: {}",
        out.describe()
    );
}

#[test]
fn gc_releases_every_attachment_not_listed_as_valid() {
    let node = start_node(standard_node(&[4]));
    let pods: Vec<_> = (0..3).map(|i| pod("default", &format!("gc-{i}"))).collect();
    let mut ips = Vec::new();
    for p in &pods {
        let result = ok(&node, node.add_pod(p, "1.1.0"));
        ips.push(pod_ip(&node, &result));
    }
    let mut conf = ok(&node, node.plugin_config("1.1.0", None));
    let valid = json!([{ "containerID": pods[0].container_id, "ifname": "eth0" }]);
    conf["cni.dev/valid-attachments"] = valid.clone();
    conf["cni.dev/attachments"] = valid;
    let out = ok(&node, node.exec_plugin(&CniRequest::new("GC", &conf)));
    check!(
        node,
        out.success() && out.stdout.trim().is_empty(),
        "GC must succeed silently: {}",
        out.describe()
    );

    // The listed attachment is untouched.
    assert_pod_network(&node, &pods[0], ips[0]);
    check!(
        node,
        ok(&node, node.ipamd_assignment(&pods[0])) == Some(ips[0]),
        "GC released the valid attachment"
    );
    // The others are released: IPs back in the pool, rules, routes and veths gone.
    for i in 1..3 {
        assert_pod_gone(&node, &pods[i], ips[i]);
        check!(
            node,
            ok(&node, node.ipamd_assignment(&pods[i])).is_none(),
            "GC kept {}",
            ips[i]
        );
    }
    let status = ok(&node, node.pool_status());
    check!(
        node,
        status.assigned_i_ps == 1 && status.assignable_i_ps == 3,
        "after GC want 1 assigned, 3 assignable: {status:?}"
    );
    let kept = ok(&node, node.checkpoint_ips());
    check!(
        node,
        kept.len() == 1 && kept.contains(&ips[0]),
        "checkpoint after GC lists {kept:?}, want only {}",
        ips[0]
    );
    // The released addresses are handed out again.
    let again = pod("default", "gc-again");
    let result: Value = ok(&node, node.add_pod(&again, "1.1.0"));
    let ip = pod_ip(&node, &result);
    check!(
        node,
        ip != ips[0],
        "GC'd pool gave out the kept address {ip}"
    );
}
