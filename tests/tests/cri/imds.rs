//! CRI on a node in IMDS-only mode (the metadata file's addresses): the conflist makes the
//! network ready without a reload error, a sandbox's lifecycle with containerd's ADD and two
//! DELs, 20 sandboxes at once, exhaustion, ipamd killed during churn, and a hostPort.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::cri::{Containerd, PodSpec};
use harness::node::NodeHost;
use harness::{NodeOptions, SimNode, standard_node};

use crate::{
    assert_sandbox_gone, assert_sandbox_networked, assert_two_dels, check, checkpointed_ip,
    containerd, fail, ok, wait_until,
};

fn start_node(options: NodeOptions) -> SimNode {
    SimNode::start(options).unwrap_or_else(|e| panic!("cannot start the simulated node: {e}"))
}

/// Runs, checks, stops and removes one sandbox; returns its address.
fn sandbox_round_trip(node: &NodeHost, ctd: &Containerd, spec: &PodSpec) -> Ipv4Addr {
    let id = ok(node, ctd, ctd.run_pod(spec));
    let ip = assert_sandbox_networked(node, ctd, spec, &id);
    ok(node, ctd, ctd.stop_pod(&id));
    ok(node, ctd, ctd.remove_pod(&id));
    assert_two_dels(node, ctd, &id);
    assert_sandbox_gone(node, ctd, spec, &id, ip);
    ip
}

/// containerd starts before ipamd: the network is not ready until the conflist exists, then it
/// is, and containerd's log has no failed reload (ipamd's write leaves no temporary file in the
/// watched conf dir). ipamd killed and started again rewrites the conflist: still none.
#[test]
fn network_ready_follows_the_conflist_without_a_reload_error() {
    let mut node = start_node(NodeOptions::new(standard_node(&[3])).without_ipamd());
    let ctd = containerd(&node);
    let (ready, why) = ok(&node, &ctd, ctd.network_ready());
    check!(
        node,
        ctd,
        !ready,
        "NetworkReady before any conflist ({why})"
    );
    node.start_ipamd()
        .unwrap_or_else(|e| fail(&node, &ctd, e.to_string()));
    ok(&node, &ctd, ctd.wait_network_ready(Duration::from_secs(10)));
    // A crashed ipamd leaves its conflist; the new one rewrites it on start.
    let killed = node.kill_ipamd();
    ok(&node, &ctd, killed);
    let mut ipamd = ok(&node, &ctd, node.spawn_ipamd_process(&[]));
    let before = std::fs::metadata(node.conflist_path())
        .and_then(|m| m.modified())
        .ok();
    check!(
        node,
        ctd,
        wait_until(Duration::from_secs(30), || {
            std::fs::metadata(node.conflist_path())
                .and_then(|m| m.modified())
                .ok()
                != before
        }),
        "the restarted ipamd did not rewrite the conflist"
    );
    ok(&node, &ctd, ctd.wait_network_ready(Duration::from_secs(10)));
    sandbox_round_trip(&node, &ctd, &PodSpec::new("default", "after-restart"));
    let errors = ctd.cni_reload_errors();
    check!(
        node,
        ctd,
        errors.is_empty(),
        "containerd failed to reload the CNI configuration:\n{}",
        errors.join("\n")
    );
    let leftovers: Vec<String> = std::fs::read_dir(node.conflist_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != harness::node::CONFLIST_NAME)
        .collect();
    check!(node, ctd, leftovers.is_empty(), "net.d holds {leftovers:?}");
    ipamd.kill();
}

/// RunPodSandbox gets an address from ipamd on a veth named from the pod; StopPodSandbox's DEL
/// (namespace, prevResult) releases it; RemovePodSandbox's DEL (no namespace) succeeds too, and
/// nothing is left.
#[test]
fn sandbox_run_stop_remove_through_cri() {
    let node = start_node(NodeOptions::new(standard_node(&[3])));
    let ctd = containerd(&node);
    ok(&node, &ctd, ctd.wait_network_ready(Duration::from_secs(10)));
    let spec = PodSpec::new("team-a", "web-0");
    let id = ok(&node, &ctd, ctd.run_pod(&spec));
    let ip = assert_sandbox_networked(&node, &ctd, &spec, &id);
    check!(
        node,
        ctd,
        node.description().all_secondary_ips().contains(&ip),
        "{ip} is not a secondary address of the node's metadata"
    );
    let pod_ns = ok(&node, &ctd, ctd.pod_netns(&id));
    check!(
        node,
        ctd,
        pod_ns.exists(),
        "the sandbox namespace {} is missing",
        pod_ns.display()
    );

    ok(&node, &ctd, ctd.stop_pod(&id));
    // Stopped: the address is back in ipamd and unrouted, the sandbox still listed.
    check!(
        node,
        ctd,
        checkpointed_ip(&node, &ctd, &id).is_none()
            && ok(&node, &ctd, node.routes_to(ip)).is_empty(),
        "StopPodSandbox left {ip} assigned or routed"
    );
    ok(&node, &ctd, ctd.remove_pod(&id));
    assert_two_dels(&node, &ctd, &id);
    assert_sandbox_gone(&node, &ctd, &spec, &id, ip);
    check!(
        node,
        ctd,
        ok(&node, &ctd, node.pool_status()).assigned_i_ps == 0,
        "ipamd still counts assignments"
    );
    let errors = ctd.cni_reload_errors();
    check!(node, ctd, errors.is_empty(), "reload errors: {errors:?}");
}

/// 20 RunPodSandbox calls at once each get a distinct address of the node, then 20 stops and
/// removals at once leave nothing.
#[test]
fn twenty_sandboxes_at_once() {
    let node = start_node(NodeOptions::new(standard_node(&[9, 9, 9])));
    let ctd = containerd(&node);
    ok(&node, &ctd, ctd.wait_network_ready(Duration::from_secs(10)));
    let specs: Vec<PodSpec> = (0..20)
        .map(|i| PodSpec::new("burst", &format!("pod-{i}")))
        .collect();
    let started = Instant::now();
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| s.spawn(|| ctd.run_pod(spec)))
            .collect();
        handles
            .into_iter()
            .map(|h| ok(&node, &ctd, h.join().unwrap()))
            .collect()
    });
    let run_time = started.elapsed();
    let ips: Vec<Ipv4Addr> = specs
        .iter()
        .zip(&ids)
        .map(|(spec, id)| assert_sandbox_networked(&node, &ctd, spec, id))
        .collect();
    let distinct: BTreeSet<Ipv4Addr> = ips.iter().copied().collect();
    check!(
        node,
        ctd,
        distinct.len() == 20,
        "addresses given twice: {ips:?}"
    );
    let secondaries = node.description().all_secondary_ips();
    check!(
        node,
        ctd,
        distinct.iter().all(|ip| secondaries.contains(ip)),
        "addresses outside the node's: {ips:?}"
    );
    let started = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(|| ctd.stop_pod(id).and_then(|()| ctd.remove_pod(id))))
            .collect();
        for h in handles {
            ok(&node, &ctd, h.join().unwrap());
        }
    });
    eprintln!(
        "20 sandboxes: run {run_time:?}, stop+remove {:?}",
        started.elapsed()
    );
    for ((spec, id), ip) in specs.iter().zip(&ids).zip(&ips) {
        assert_two_dels(&node, &ctd, id);
        assert_sandbox_gone(&node, &ctd, spec, id, *ip);
    }
    check!(
        node,
        ctd,
        ok(&node, &ctd, node.pool_status()).assigned_i_ps == 0,
        "ipamd still counts assignments"
    );
}

/// With every address taken, RunPodSandbox fails with the plugin's error, containerd's DEL
/// follows the failed ADD at once, and nothing of the failed sandbox is left; once a pod goes,
/// the next sandbox runs.
#[test]
fn exhaustion_fails_run_pod_sandbox_with_the_cni_error_and_leaves_nothing() {
    let node = start_node(NodeOptions::new(standard_node(&[2])));
    let ctd = containerd(&node);
    ok(&node, &ctd, ctd.wait_network_ready(Duration::from_secs(10)));
    let specs: Vec<PodSpec> = (0..2)
        .map(|i| PodSpec::new("full", &format!("pod-{i}")))
        .collect();
    let ids: Vec<String> = specs
        .iter()
        .map(|s| ok(&node, &ctd, ctd.run_pod(s)))
        .collect();
    let before = ok(&node, &ctd, node.host_state());

    let extra = PodSpec::new("full", "one-too-many");
    let err = match ctd.run_pod(&extra) {
        Ok(id) => fail(
            &node,
            &ctd,
            format!("a third sandbox ran ({id}) on a node with two addresses"),
        ),
        Err(e) => e.to_string(),
    };
    check!(
        node,
        ctd,
        err.contains("failed to setup network for sandbox") && err.contains("aws-cni"),
        "RunPodSandbox's error does not carry the plugin's: {err}"
    );
    let calls: Vec<_> = ctd
        .cni_calls()
        .into_iter()
        .filter(|c| c.arg_map().get("K8S_POD_NAME").map(String::as_str) == Some("one-too-many"))
        .collect();
    let commands: Vec<&str> = calls.iter().map(|c| c.command()).collect();
    check!(
        node,
        ctd,
        commands == ["ADD", "DEL"],
        "calls for the failed sandbox: {calls:?}"
    );
    let add_out: serde_json::Value = serde_json::from_str(&calls[0].stdout).unwrap_or_default();
    check!(
        node,
        ctd,
        !calls[0].succeeded() && add_out["code"].as_u64().is_some() && calls[1].succeeded(),
        "want a failed ADD with a CNI error, then a successful DEL: {calls:?}"
    );
    check!(
        node,
        ctd,
        calls[1].netns() == calls[0].netns() && !calls[1].netns().is_empty(),
        "the DEL after the failed ADD has CNI_NETNS {:?}, the ADD {:?}",
        calls[1].netns(),
        calls[0].netns()
    );
    let msg = add_out["msg"].as_str().unwrap_or_default();
    check!(
        node,
        ctd,
        err.contains(msg),
        "RunPodSandbox's error lacks the plugin's message {msg:?}: {err}"
    );
    let after = ok(&node, &ctd, node.host_state());
    if let Some(diff) = before.diff(&after) {
        fail(
            &node,
            &ctd,
            format!("the failed sandbox left something on the node:\n{diff}"),
        );
    }
    check!(
        node,
        ctd,
        !std::path::Path::new(calls[0].netns()).exists(),
        "the failed sandbox's namespace {} is still there",
        calls[0].netns()
    );
    check!(
        node,
        ctd,
        ok(&node, &ctd, ctd.pod_ids()).len() == 2,
        "the runtime lists the failed sandbox"
    );
    check!(
        node,
        ctd,
        ok(&node, &ctd, node.pool_status()).assigned_i_ps == 2,
        "ipamd's assignments changed"
    );

    // A pod goes; the next sandbox runs.
    ok(&node, &ctd, ctd.stop_pod(&ids[0]));
    ok(&node, &ctd, ctd.remove_pod(&ids[0]));
    sandbox_round_trip(&node, &ctd, &PodSpec::new("full", "next"));
}

/// Sandboxes come and go in 4 workers (each keeping up to two) while ipamd is killed (SIGKILL)
/// and started again (its conflist stays, as on a node): RunPodSandbox fails while it is down
/// and works again after; no address is ever held by two live sandboxes, live sandboxes keep
/// theirs across the restart, and once everything is removed ipamd holds nothing and the node
/// has no pod left.
#[test]
fn ipamd_killed_during_churn_gives_no_address_twice_and_leaks_none() {
    let mut node = start_node(NodeOptions::new(standard_node(&[9, 9])));
    let ctd = containerd(&node);
    ok(&node, &ctd, ctd.wait_network_ready(Duration::from_secs(10)));
    let baseline = ok(&node, &ctd, node.host_state());
    // Live sandboxes: id -> (spec, address). A new address must not be in here.
    let live: Mutex<BTreeMap<String, (PodSpec, Ipv4Addr)>> = Mutex::new(BTreeMap::new());
    let failures = Mutex::new(Vec::<String>::new());
    let conflicts = Mutex::new(Vec::<String>::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let round = |worker: usize, n: usize| {
        let spec = PodSpec::new("churn", &format!("w{worker}-{n}"));
        match ctd.run_pod(&spec) {
            Ok(id) => match ctd.pod_ip(&id) {
                Ok(ip) => {
                    let mut live = live.lock().unwrap();
                    if let Some((other, (s, _))) = live.iter().find(|(_, (_, i))| *i == ip) {
                        conflicts.lock().unwrap().push(format!(
                            "{ip} given to {} while {} ({other}) holds it",
                            spec.name, s.name
                        ));
                    }
                    live.insert(id, (spec, ip));
                }
                Err(e) => failures.lock().unwrap().push(e.to_string()),
            },
            Err(e) => failures.lock().unwrap().push(e.to_string()),
        }
    };
    let remove_one = |worker: usize| {
        let victim = {
            let live = live.lock().unwrap();
            live.iter()
                .find(|(_, (s, _))| s.name.starts_with(&format!("w{worker}-")))
                .map(|(id, _)| id.clone())
        };
        // Each worker keeps up to two sandboxes: some live across the kill, the pool never
        // runs dry.
        if live
            .lock()
            .unwrap()
            .values()
            .filter(|(s, _)| s.name.starts_with(&format!("w{worker}-")))
            .count()
            <= 2
        {
            return;
        }
        if let Some(id) = victim {
            // Out of the live set before StopPodSandbox: its DEL gives the address back, and
            // another worker's sandbox may get it before this one is removed.
            let entry = live.lock().unwrap().remove(&id);
            if let Err(e) = ctd.stop_pod(&id).and_then(|()| ctd.remove_pod(&id)) {
                failures.lock().unwrap().push(e.to_string());
                if let Some(entry) = entry {
                    live.lock().unwrap().insert(id, entry);
                }
            }
        }
    };
    std::thread::scope(|s| {
        for worker in 0..4 {
            let (round, remove_one, stop) = (&round, &remove_one, &stop);
            s.spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    round(worker, n);
                    n += 1;
                    remove_one(worker);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(4));
        let killed = node.kill_ipamd();
        ok(&node, &ctd, killed);
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let survivors_before: BTreeMap<String, Ipv4Addr> = live
        .lock()
        .unwrap()
        .iter()
        .map(|(id, (_, ip))| (id.clone(), *ip))
        .collect();
    let down_failures = failures.lock().unwrap().len();
    // The node's conflist stays; the new ipamd restores its assignments from the checkpoint
    // and rewrites the conflist once it serves.
    let before = std::fs::metadata(node.conflist_path())
        .and_then(|m| m.modified())
        .ok();
    let mut ipamd = ok(&node, &ctd, node.spawn_ipamd_process(&[]));
    check!(
        node,
        ctd,
        wait_until(Duration::from_secs(30), || {
            std::fs::metadata(node.conflist_path())
                .and_then(|m| m.modified())
                .ok()
                != before
        }),
        "the restarted ipamd did not become ready (no conflist rewrite)"
    );
    for (id, ip) in &survivors_before {
        check!(
            node,
            ctd,
            checkpointed_ip(&node, &ctd, id) == Some(*ip),
            "sandbox {id} lost {ip} across the restart"
        );
    }
    // Churn again with the new ipamd, then remove everything.
    stop.store(false, std::sync::atomic::Ordering::SeqCst);
    let failures_before_restart = failures.lock().unwrap().len();
    std::thread::scope(|s| {
        for worker in 0..4 {
            let (round, remove_one) = (&round, &remove_one);
            s.spawn(move || {
                for n in 100..106 {
                    round(worker, n);
                    remove_one(worker);
                }
            });
        }
    });
    let new_failures: Vec<String> = failures.lock().unwrap()[failures_before_restart..].to_vec();
    check!(
        node,
        ctd,
        new_failures.is_empty(),
        "CRI calls failed after ipamd came back: {new_failures:#?}"
    );
    let conflicts = conflicts.lock().unwrap().clone();
    check!(
        node,
        ctd,
        conflicts.is_empty(),
        "addresses given twice: {conflicts:#?}"
    );
    let all: Vec<(String, (PodSpec, Ipv4Addr))> = std::mem::take(&mut *live.lock().unwrap())
        .into_iter()
        .collect();
    for (id, (spec, ip)) in &all {
        check!(
            node,
            ctd,
            checkpointed_ip(&node, &ctd, id) == Some(*ip),
            "live sandbox {} ({ip}) is not in ipamd's checkpoint",
            spec.name
        );
        ok(&node, &ctd, ctd.stop_pod(id));
        ok(&node, &ctd, ctd.remove_pod(id));
    }
    // Sandboxes that failed while ipamd was down were cleaned by containerd; an ADD that ipamd
    // saw just before the kill is released by its sweep of assignments without a veth.
    let released = wait_until(
        ipamd::restore::ORPHAN_GRACE + ipamd::restore::SWEEP_INTERVAL + Duration::from_secs(10),
        || node.pool_status().is_ok_and(|s| s.assigned_i_ps == 0),
    );
    check!(
        node,
        ctd,
        released,
        "ipamd still holds addresses after every sandbox went: {:?}, checkpoint {:?}",
        node.pool_status(),
        node.checkpoint_ips()
    );
    // A removed sandbox's host veth goes when the kernel destroys its network namespace,
    // which it does asynchronously (seconds on a loaded machine): give it 10 s.
    let mut after = ok(&node, &ctd, node.host_state());
    let deadline = Instant::now() + Duration::from_secs(10);
    while baseline.diff(&after).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = ok(&node, &ctd, node.host_state());
    }
    if let Some(diff) = baseline.diff(&after) {
        fail(
            &node,
            &ctd,
            format!("the churn left something on the node:\n{diff}"),
        );
    }
    check!(
        node,
        ctd,
        ok(&node, &ctd, ctd.pod_ids()).is_empty(),
        "sandboxes remain"
    );
    let errors = ctd.cni_reload_errors();
    check!(node, ctd, errors.is_empty(), "reload errors: {errors:?}");
    eprintln!(
        "churn: {} sandboxes lived across the kill, {down_failures} CRI calls failed around it",
        survivors_before.len()
    );
    ipamd.kill();
}

/// A pod's `hostPort` (portmap in the conflist, fed by containerd's portMappings capability):
/// a connection to the node's address and host port from the VPC reaches a listener in a
/// container of the sandbox.
#[test]
fn host_port_reaches_a_listener_in_the_pod() {
    let node = start_node(NodeOptions::new(standard_node(&[3])));
    let ctd = containerd(&node);
    ok(&node, &ctd, ctd.wait_network_ready(Duration::from_secs(10)));
    let spec = PodSpec::new("web", "echo").host_port(8080, 30080);
    let id = ok(&node, &ctd, ctd.run_pod(&spec));
    let ip = assert_sandbox_networked(&node, &ctd, &spec, &id);
    ok(
        &node,
        &ctd,
        ctd.run_container(
            &id,
            &spec,
            "echo",
            &[
                "/bin/busybox",
                "nc",
                "-ll",
                "-p",
                "8080",
                "-e",
                "/bin/busybox",
                "echo",
                "hello-from-pod",
            ],
        ),
    );
    let node_ip = node.description().local_ipv4().unwrap();
    let target = SocketAddr::from((node_ip, 30080));
    let mut last = String::new();
    let reached = wait_until(Duration::from_secs(10), || {
        let got = node.vpc().run_in(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        });
        last = format!("{got:?}");
        matches!(got, Ok(Ok(ref text)) if text.trim() == "hello-from-pod")
    });
    check!(
        node,
        ctd,
        reached,
        "{target} (hostPort of pod {ip}:8080) answered {last}"
    );
    ok(&node, &ctd, ctd.stop_pod(&id));
    ok(&node, &ctd, ctd.remove_pod(&id));
    assert_sandbox_gone(&node, &ctd, &spec, &id, ip);
    // portmap's DEL removed its DNAT rules with the sandbox.
    let nat = ok(
        &node,
        &ctd,
        node.ns().exec_checked("iptables", &["-t", "nat", "-S"]),
    );
    check!(
        node,
        ctd,
        !nat.contains("30080"),
        "DNAT of 30080 remains:\n{nat}"
    );
}
