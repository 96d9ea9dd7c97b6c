//! ipamd killed with SIGKILL while pods hold addresses, then restarted: assignments survive via
//! the checkpoint, and a pod whose host veth vanished meanwhile is dropped with its rules (by
//! the orphan sweep, since its allocation is younger than the restore's grace).

use std::collections::BTreeSet;

use harness::standard_node;
use serde_json::Value;

use crate::{assert_pod_network, check, must, ok, pod, pod_ip, start_node, table_of};

#[test]
fn kill_9_and_restart_keeps_every_assignment() {
    let mut node = start_node(standard_node(&[3, 3]));
    let pods: Vec<_> = (0..4)
        .map(|i| pod("default", &format!("crash-{i}")))
        .collect();
    let mut results: Vec<Value> = Vec::new();
    let mut ips = Vec::new();
    for p in &pods {
        let r = ok(&node, node.add_pod(p, "1.0.0"));
        ips.push(pod_ip(&node, &r));
        results.push(r);
    }
    // The victim: a pod on the secondary ENI if any (it has both a 512 and a 1536 rule).
    let victim = (0..pods.len())
        .rev()
        .find(|&i| table_of(&node, ips[i]) != 254)
        .unwrap_or(pods.len() - 1);
    let survivors: Vec<usize> = (0..pods.len()).filter(|&i| i != victim).collect();

    must(node.kill_ipamd());
    // While ipamd is down the runtime removes the victim's sandbox: its veth disappears.
    let veth = pods[victim].host_veth("eni");
    ok(&node, node.ns().ip(&["link", "del", &veth]));
    must(node.start_ipamd());

    for &i in &survivors {
        check!(
            node,
            ok(&node, node.ipamd_assignment(&pods[i])) == Some(ips[i]),
            "pod {} lost {} across the restart",
            pods[i].name,
            ips[i]
        );
        assert_pod_network(&node, &pods[i], ips[i]);
        let out = ok(
            &node,
            node.cni("CHECK", &pods[i], "1.0.0", Some(&results[i])),
        );
        check!(
            node,
            out.success(),
            "CHECK after restart: {}",
            out.describe()
        );
    }
    let kept: BTreeSet<_> = survivors.iter().map(|&i| ips[i]).collect();
    // The victim's allocation is seconds old: the restore keeps it (its ADD might still be
    // creating the veth) and the orphan sweep releases it once it is older than the grace.
    let deadline = std::time::Instant::now()
        + ipamd::restore::ORPHAN_GRACE
        + ipamd::restore::SWEEP_INTERVAL
        + std::time::Duration::from_secs(5);
    while ok(&node, node.ipamd_assignment(&pods[victim])).is_some()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let checkpoint = ok(&node, node.checkpoint_ips());
    check!(
        node,
        checkpoint == kept,
        "checkpoint after restart lists {checkpoint:?}, want {kept:?}"
    );
    check!(
        node,
        ok(&node, node.ipamd_assignment(&pods[victim])).is_none(),
        "the allocation of {} (veth gone) was kept",
        ips[victim]
    );
    let rules = ok(&node, node.rules_for(ips[victim]));
    check!(
        node,
        rules.is_empty(),
        "rules of the dropped allocation {} remain: {rules:?}",
        ips[victim]
    );
    let status = ok(&node, node.pool_status());
    check!(
        node,
        status.assigned_i_ps == 3,
        "want 3 assigned after restart: {status:?}"
    );

    // New pods get addresses nobody holds.
    let newcomer = pod("default", "crash-new");
    let r = ok(&node, node.add_pod(&newcomer, "1.0.0"));
    let ip = pod_ip(&node, &r);
    check!(
        node,
        !kept.contains(&ip),
        "new pod got {ip}, which a kept pod holds"
    );
    assert_pod_network(&node, &newcomer, ip);
}
