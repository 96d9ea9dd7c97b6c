//! Campaign 4, plugin faults: ipamd down (ADD code 11 without hanging, DEL cleans the host from
//! prevResult, STATUS code 50), the pod's netns deleted between ADD and DEL, the host veth
//! deleted by hand, ADD repeated for the same container, two ADDs for one pod name in different
//! containers, and the plugin killed (SIGKILL) between any two steps of ADD or DEL, followed by
//! the DEL a runtime sends: nothing is left and the address goes back to the pool.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use harness::cni::result_ip;
use harness::faults::exec_plugin_aborting_at;
use harness::{CniRequest, NodeOptions, Pod, SimNode, standard_node};
use serde_json::Value;

use crate::{check, must, ok, plumbing, pod, start, wait_for, with_prev};

fn node() -> SimNode {
    start(NodeOptions::new(standard_node(&[4, 4])))
}

fn conf(node: &SimNode, version: &str) -> Value {
    ok(node, node.plugin_config(version, None))
}

fn run(node: &SimNode, command: &str, config: &Value, p: &Pod) -> harness::CniOutcome {
    ok(
        node,
        node.exec_plugin(&CniRequest::for_pod(command, config, p)),
    )
}

fn add(node: &SimNode, p: &Pod) -> (Value, Ipv4Addr) {
    let out = run(node, "ADD", &conf(node, "1.0.0"), p);
    check!(node, out.success(), "ADD of {}: {}", p.name, out.describe());
    let result = out.json.unwrap_or_default();
    let ip = result_ip(&result).unwrap_or_else(|| panic!("no IP in {result}"));
    (result, ip)
}

/// What a DEL (or a failed ADD) must leave, then what the runtime's removal of the sandbox
/// must leave. First: no rule or route of `ip`, and the pod's namespace, while it exists,
/// holds at most `lo` and an `eth0` without an address (DEL leaves the veth pair to the
/// namespace's removal). Then the namespace is removed, as runtimes do after DEL, and nothing of
/// the pod remains: its host veth goes with the namespace (the kernel frees the pair in its
/// namespace cleanup, asynchronously).
fn assert_gone(node: &SimNode, p: &mut Pod, ip: Option<Ipv4Addr>, what: &str) {
    let veth = p.host_veth("eni");
    let unrouted = |when: &str| {
        if let Some(ip) = ip {
            let rules = ok(node, node.rules_for(ip));
            check!(
                node,
                rules.is_empty(),
                "{what}: rules of {ip} remain {when}: {rules:?}"
            );
            let routes = ok(node, node.routes_to(ip));
            check!(
                node,
                routes.is_empty(),
                "{what}: routes to {ip} remain {when}: {routes:?}"
            );
        }
    };
    unrouted("after DEL");
    if let Some(ns) = p.netns() {
        let links = ok(node, ns.link_names());
        check!(
            node,
            links.iter().all(|l| l == "lo" || *l == p.ifname),
            "{what}: the pod namespace holds {links:?}"
        );
        if links.contains(&p.ifname) {
            let addrs = ok(node, ns.addresses_of(&p.ifname));
            check!(
                node,
                addrs.is_empty(),
                "{what}: the pod's {} still holds {addrs:?}",
                p.ifname
            );
        }
    }
    must(p.delete_netns());
    check!(
        node,
        wait_for(Duration::from_secs(10), || ok(node, node.ns().link(&veth))
            .is_none()),
        "{what}: host veth {veth} remains 10 s after the pod's namespace was removed"
    );
    unrouted("after the namespace was removed");
}

/// ipamd no longer assigns anything to `p` (waiting up to `within` for the orphan sweep).
fn assert_released(node: &SimNode, p: &Pod, within: Duration, what: &str) {
    let released = wait_for(within, || ok(node, node.ipamd_assignment(p)).is_none());
    check!(
        node,
        released,
        "{what}: ipamd still assigns {:?} to {}",
        ok(node, node.ipamd_assignment(p)),
        p.name
    );
}

#[test]
fn ipamd_down_add_is_code_11_at_once_del_cleans_from_prev_result_status_is_50() {
    let mut node = node();
    let mut pods: Vec<Pod> = (0..5)
        .map(|i| pod("faults", &format!("down-{i}")))
        .collect();
    let added: Vec<(Value, Ipv4Addr)> = pods.iter().map(|p| add(&node, p)).collect();
    // A pod on the secondary ENI has both rules (512 and 1536) to clean.
    let table = |ip: Ipv4Addr| {
        node.description()
            .owner_of_secondary(ip)
            .map(|e| e.route_table())
    };
    let victim = (0..pods.len())
        .find(|&i| table(added[i].1) != Some(254))
        .unwrap_or(0);
    let (result, ip) = added[victim].clone();
    check!(
        node,
        !ok(&node, node.rules_for(ip)).is_empty(),
        "the pod's rules are missing before the test"
    );
    let conf10 = conf(&node, "1.0.0");
    let conf11 = conf(&node, "1.1.0");
    must(node.kill_ipamd());

    // ADD: code 11, quickly, leaving nothing.
    let mut newcomer = pod("faults", "down-new");
    let before = ok(&node, node.host_state());
    let started = Instant::now();
    let out = run(&node, "ADD", &conf10, &newcomer);
    let took = started.elapsed();
    check!(
        node,
        out.error_code() == Some(11) && out.error_text().contains("ipamd"),
        "ADD with ipamd down: {}",
        out.describe()
    );
    check!(
        node,
        took < Duration::from_secs(10),
        "ADD with ipamd down took {took:?}"
    );
    assert_gone(&node, &mut newcomer, None, "ADD with ipamd down");
    check!(
        node,
        before.diff(&ok(&node, node.host_state())).is_none(),
        "ADD with ipamd down changed the node"
    );

    // STATUS: code 50.
    let status = ok(&node, node.exec_plugin(&CniRequest::new("STATUS", &conf11)));
    check!(
        node,
        status.error_code() == Some(50),
        "STATUS with ipamd down: {}",
        status.describe()
    );

    // DEL with prevResult cleans the host side: route, rules 512 and 1536 (the veth goes with
    // the namespace).
    let started = Instant::now();
    let out = run(&node, "DEL", &with_prev(&conf10, &result), &pods[victim]);
    let del_took = started.elapsed();
    check!(
        node,
        out.success(),
        "DEL with ipamd down: {}",
        out.describe()
    );
    assert_gone(&node, &mut pods[victim], Some(ip), "DEL with ipamd down");
    // The other pods are untouched (CHECK needs ipamd; their veth, route and rule 512 show it).
    for (i, p) in pods.iter().enumerate().filter(|(i, _)| *i != victim) {
        let ip = added[i].1;
        check!(
            node,
            ok(&node, node.ns().link(&p.host_veth("eni"))).is_some()
                && !ok(&node, node.routes_to(ip)).is_empty()
                && ok(&node, node.rules_for(ip))
                    .iter()
                    .any(|r| r["priority"] == 512),
            "the DEL of {} with ipamd down touched pod {} ({ip})",
            pods[victim].name,
            p.name
        );
    }

    // Back up: the deleted pod's address is released (by the restore, or by the sweep once its
    // allocation is older than the grace), the others are kept.
    must(node.start_ipamd());
    assert_released(
        &node,
        &pods[victim],
        ipamd::restore::ORPHAN_GRACE + ipamd::restore::SWEEP_INTERVAL + Duration::from_secs(5),
        "the pod deleted while ipamd was down",
    );
    for (i, p) in pods.iter().enumerate().filter(|(i, _)| *i != victim) {
        check!(
            node,
            ok(&node, node.ipamd_assignment(p)) == Some(added[i].1),
            "pod {} lost its address across the restart",
            p.name
        );
    }
    let st = ok(&node, node.pool_status());
    check!(
        node,
        st.assigned_i_ps == 4,
        "assigned after the restart: {st:?}"
    );
    eprintln!(
        "campaign plugin-faults/ipamd-down: ADD failed in {took:?} (code 11), DEL with prevResult in {del_took:?}, STATUS code 50"
    );
}

#[test]
fn del_after_the_netns_was_deleted_cleans_up_and_releases() {
    let node = node();
    let mut p = pod("faults", "netns-gone");
    let (result, ip) = add(&node, &p);
    must(p.delete_netns());
    for attempt in 0..2 {
        // DEL must also succeed when repeated.
        let out = run(&node, "DEL", &with_prev(&conf(&node, "1.0.0"), &result), &p);
        check!(
            node,
            out.success(),
            "DEL {attempt} without the netns: {}",
            out.describe()
        );
    }
    assert_gone(&node, &mut p, Some(ip), "DEL without the netns");
    assert_released(&node, &p, Duration::ZERO, "DEL without the netns");
}

#[test]
fn veth_deleted_by_hand_fails_check_and_del_still_cleans_up() {
    let node = node();
    let mut p = pod("faults", "veth-gone");
    let (result, ip) = add(&node, &p);
    let veth = p.host_veth("eni");
    ok(&node, node.ns().ip(&["link", "del", &veth]));
    let conf = with_prev(&conf(&node, "1.0.0"), &result);
    let out = run(&node, "CHECK", &conf, &p);
    check!(
        node,
        out.error_code() == Some(100) && out.error_text().contains(&veth),
        "CHECK after the veth was deleted must name it: {}",
        out.describe()
    );
    let out = run(&node, "DEL", &conf, &p);
    check!(
        node,
        out.success(),
        "DEL after the veth was deleted: {}",
        out.describe()
    );
    assert_gone(&node, &mut p, Some(ip), "DEL after the veth was deleted");
    assert_released(&node, &p, Duration::ZERO, "DEL after the veth was deleted");
}

#[test]
fn repeated_add_for_one_container_is_refused_and_changes_nothing() {
    let node = node();
    let p = pod("faults", "twice");
    let (result, ip) = add(&node, &p);
    let before = ok(&node, node.host_state());
    let assigned = ok(&node, node.pool_status()).assigned_i_ps;
    let out = run(&node, "ADD", &conf(&node, "1.0.0"), &p);
    check!(
        node,
        out.error_code() == Some(121) && out.error_text().contains("eth0"),
        "second ADD for the same container: {}",
        out.describe()
    );
    check!(
        node,
        before.diff(&ok(&node, node.host_state())).is_none(),
        "the repeated ADD changed the node"
    );
    check!(
        node,
        ok(&node, node.pool_status()).assigned_i_ps == assigned
            && ok(&node, node.ipamd_assignment(&p)) == Some(ip),
        "the repeated ADD changed ipamd's assignments"
    );
    let out = run(
        &node,
        "CHECK",
        &with_prev(&conf(&node, "1.0.0"), &result),
        &p,
    );
    check!(
        node,
        out.success(),
        "CHECK after the repeated ADD: {}",
        out.describe()
    );
}

#[test]
fn two_adds_for_one_pod_name_in_different_containers_and_the_late_del_of_the_first() {
    let node = node();
    // Same Kubernetes pod (namespace and name, so the same host veth name), two sandboxes: the
    // kubelet re-created the sandbox, and the old one's DEL comes late.
    let mut first = pod("faults", "recreated");
    let mut second = pod("faults", "recreated");
    let (first_result, first_ip) = add(&node, &first);
    let (second_result, second_ip) = add(&node, &second);
    check!(node, first_ip != second_ip, "both sandboxes got {first_ip}");
    let conf = conf(&node, "1.0.0");
    let out = run(&node, "CHECK", &with_prev(&conf, &second_result), &second);
    check!(
        node,
        out.success(),
        "CHECK of the second sandbox: {}",
        out.describe()
    );
    // The first sandbox lost its host veth to the second (same name): its CHECK says so.
    let out = run(&node, "CHECK", &with_prev(&conf, &first_result), &first);
    check!(
        node,
        out.error_code() == Some(100),
        "CHECK of the first sandbox: {}",
        out.describe()
    );

    must(first.delete_netns());
    let out = run(&node, "DEL", &with_prev(&conf, &first_result), &first);
    check!(
        node,
        out.success(),
        "late DEL of the first sandbox: {}",
        out.describe()
    );
    // The first one's address and rules are gone, the second pod is intact.
    check!(
        node,
        ok(&node, node.rules_for(first_ip)).is_empty()
            && ok(&node, node.routes_to(first_ip)).is_empty(),
        "rules or routes of the first sandbox's {first_ip} remain"
    );
    assert_released(
        &node,
        &first,
        Duration::ZERO,
        "late DEL of the first sandbox",
    );
    let out = run(&node, "CHECK", &with_prev(&conf, &second_result), &second);
    check!(
        node,
        out.success(),
        "the late DEL of the first sandbox broke the second: {}",
        out.describe()
    );
    check!(
        node,
        ok(&node, node.ipamd_assignment(&second)) == Some(second_ip),
        "the second sandbox lost its address"
    );

    // The first sandbox's address goes to a new pod; the runtime then repeats the first
    // sandbox's DEL (DEL must be idempotent, and kubelets do retry): the new pod's rules stay.
    let mut others = Vec::new();
    let mut third = None;
    for i in 0..8 {
        let p = pod("faults", &format!("reuser-{i}"));
        let (result, ip) = add(&node, &p);
        if ip == first_ip {
            third = Some((p, result));
            break;
        }
        others.push(p);
    }
    let (third, third_result) = third.unwrap_or_else(|| {
        panic!(
            "no new pod got {first_ip}
{}",
            node.diag()
        )
    });
    let out = run(&node, "DEL", &with_prev(&conf, &first_result), &first);
    check!(
        node,
        out.success(),
        "repeated late DEL of the first sandbox: {}",
        out.describe()
    );
    let out = run(&node, "CHECK", &with_prev(&conf, &third_result), &third);
    check!(
        node,
        out.success(),
        "the repeated DEL of the first sandbox removed the rules of {first_ip}, which pod {} holds now: {}",
        third.name,
        out.describe()
    );
    let out = run(&node, "DEL", &with_prev(&conf, &second_result), &second);
    check!(
        node,
        out.success(),
        "DEL of the second sandbox: {}",
        out.describe()
    );
    assert_gone(
        &node,
        &mut second,
        Some(second_ip),
        "DEL of the second sandbox",
    );
    drop(others);
}

/// ADD's steps, in order, after which the plugin is killed.
const ADD_PHASES: [&str; 13] = [
    "ipamd_connect",
    "add_network_rpc",
    "ifname_recheck",
    "veth_create",
    "host_veth_up",
    "pod_link_lookup",
    "pod_addr",
    "pod_routes",
    "pod_neigh",
    "host_route",
    "host_rules",
    "result_render",
    "print",
];

/// DEL's steps after which the plugin is killed.
const DEL_PHASES: [&str; 5] = [
    "ipamd_connect",
    "host_links_routes",
    "host_rules_del",
    "pod_addr_del",
    "del_network_rpc",
];

#[test]
fn plugin_killed_between_any_two_steps_then_del_leaves_nothing() {
    const {
        assert!(
            aws_cni::timing::ABORT_HOOK_COMPILED,
            "the plugin library was built without its test hook (feature test-hooks, debug build)"
        );
    }
    let node = node();
    let conf = conf(&node, "1.0.0");
    let clean = ok(&node, node.host_state());
    let base = ok(&node, node.pool_status()).assigned_i_ps;
    let mut kills = 0;
    for (i, phase) in ADD_PHASES.iter().enumerate() {
        // Half the runtimes tear the sandbox down before the DEL.
        let mut p = pod("faults", &format!("killed-add-{i}"));
        let out = ok(
            &node,
            exec_plugin_aborting_at(&node, &CniRequest::for_pod("ADD", &conf, &p), phase),
        );
        check!(
            node,
            out.status.is_none(),
            "ADD aborted at {phase} was not killed: {}",
            out.describe()
        );
        kills += 1;
        let ip = ok(&node, node.ipamd_assignment(&p));
        if i % 2 == 1 {
            must(p.delete_netns());
        }
        // The runtime has no result of the killed ADD: DEL without prevResult.
        let out = run(&node, "DEL", &conf, &p);
        check!(
            node,
            out.success(),
            "DEL after ADD died at {phase}: {}",
            out.describe()
        );
        assert_gone(
            &node,
            &mut p,
            ip,
            &format!("ADD killed at {phase}, then DEL"),
        );
        assert_released(&node, &p, Duration::ZERO, &format!("ADD killed at {phase}"));
        let now = ok(&node, node.host_state());
        if let Some(diff) = clean.diff(&now) {
            panic!(
                "ADD killed at {phase}, then DEL, changed the node:\n{diff}\n{}",
                node.diag()
            );
        }
        let _ = p.delete_netns();
    }
    for (i, phase) in DEL_PHASES.iter().enumerate() {
        let mut p = pod("faults", &format!("killed-del-{i}"));
        let (result, ip) = add(&node, &p);
        let del_conf = with_prev(&conf, &result);
        let out = ok(
            &node,
            exec_plugin_aborting_at(&node, &CniRequest::for_pod("DEL", &del_conf, &p), phase),
        );
        check!(
            node,
            out.status.is_none(),
            "DEL aborted at {phase} was not killed: {}",
            out.describe()
        );
        kills += 1;
        // The runtime retries the DEL.
        let out = run(&node, "DEL", &del_conf, &p);
        check!(
            node,
            out.success(),
            "DEL after DEL died at {phase}: {}",
            out.describe()
        );
        assert_gone(
            &node,
            &mut p,
            Some(ip),
            &format!("DEL killed at {phase}, then DEL"),
        );
        assert_released(&node, &p, Duration::ZERO, &format!("DEL killed at {phase}"));
    }
    let now = ok(&node, node.host_state());
    if let Some(diff) = clean.diff(&now) {
        panic!(
            "the killed plugins left something:\n{diff}\n{}",
            node.diag()
        );
    }
    check!(
        node,
        plumbing(&node, "eni") == crate::PodPlumbing::default(),
        "pod plumbing remains"
    );
    check!(
        node,
        ok(&node, node.pool_status()).assigned_i_ps == base,
        "addresses remain assigned after the killed plugins' DELs"
    );
    eprintln!(
        "campaign plugin-faults/killed-plugin: {kills} plugin processes killed ({} ADD steps, {} DEL steps), each followed by DEL: nothing left",
        ADD_PHASES.len(),
        DEL_PHASES.len()
    );
}
