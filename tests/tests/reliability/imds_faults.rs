//! Campaign 3, instance metadata faults: IMDS unreachable at start-up (ipamd says why, retries,
//! stays not ready: the probe fails, no conflist, ADD refused with code 11; ready once IMDS is
//! back), and unreachable, slow or stale later (pods keep being served from the pool; no
//! address a pod holds, nor one EC2 still holds, is dropped because metadata lagged).
//!
//! On a simulated node the fault proxy sits between ipamd and the IMDS emulator (both on the
//! node's loopback); in the VPC simulator the hypervisor delays what metadata shows.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use harness::faults::{Fault, FaultProxy, FaultRule};
use harness::{
    CniRequest, FabricOptions, NodeOptions, NodeSpec, SimNode, VpcFabric, standard_node,
};

use crate::{check, ok, pod, start, wait_for};

/// The proxy on the node's loopback in front of its IMDS emulator.
fn imds_proxy(node: &SimNode) -> FaultProxy {
    let upstream: SocketAddr = node
        .imds_endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("emulator endpoint {}: {e}", node.imds_endpoint()));
    FaultProxy::start(node.ns(), SocketAddr::from(([127, 0, 0, 1], 0)), upstream)
        .unwrap_or_else(|e| panic!("cannot start the IMDS fault proxy: {e}"))
}

/// `ipamd probe` against the node's socket: its exit code.
fn probe(node: &SimNode) -> Option<i32> {
    let bin = test_support::prereqs::ipamd().unwrap_or_else(|e| panic!("{e}"));
    let addr = format!("-addr=unix://{}", node.socket_path().display());
    let out = ok(
        node,
        node.ns().exec(&bin.to_string_lossy(), &["probe", &addr]),
    );
    out.status.code()
}

/// Sum of the series of `name` with `label`; 0 while `/metrics` does not answer yet.
fn metric_with(node: &SimNode, name: &str, label: &str) -> f64 {
    node.metrics()
        .unwrap_or_default()
        .into_iter()
        .filter(|(s, _)| s.split('{').next() == Some(name) && s.contains(label))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn imds_unreachable_at_startup_keeps_ipamd_not_ready_until_it_answers() {
    let mut node = start(NodeOptions::new(standard_node(&[3, 3])).without_ipamd());
    let proxy = imds_proxy(&node);
    proxy.set_down(true);
    let endpoint = proxy.endpoint();
    node.set_ipamd_env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint);
    let mut ipamd = ok(&node, node.spawn_ipamd_process(&[]));
    let spawned = Instant::now();

    // Not ready while IMDS is unreachable: it retries, says why, and serves nothing.
    let retried = wait_for(Duration::from_secs(20), || {
        metric_with(&node, "awscni_ipamd_error_count", "nodeInit") >= 3.0
    });
    check!(
        node,
        retried,
        "ipamd did not retry reading instance metadata 3 times"
    );
    check!(
        node,
        ipamd.try_wait().is_none(),
        "ipamd exited while IMDS was unreachable"
    );
    check!(
        node,
        !node.conflist_path().exists(),
        "ipamd wrote the conflist without instance metadata"
    );
    check!(
        node,
        probe(&node) == Some(4),
        "the probe must say NOT_SERVING (4)"
    );
    let status = ok(&node, node.pool_status());
    check!(
        node,
        !status.ready && status.message.contains("instance metadata"),
        "PoolStatus while IMDS is unreachable: {status:?}"
    );
    let p = pod("imds", "early");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "aws-cni", "type": "aws-cni",
        "ipamdSocket": node.socket_path().display().to_string(),
        "pluginLogFile": node.plugin_log_path().display().to_string(),
    });
    let before = ok(&node, node.host_state());
    let out = ok(
        &node,
        node.exec_plugin(&CniRequest::for_pod("ADD", &conf, &p)),
    );
    check!(
        node,
        out.error_code() == Some(11) && out.error_text().contains("not ready"),
        "ADD before ready: {}",
        out.describe()
    );
    check!(
        node,
        before.diff(&ok(&node, node.host_state())).is_none(),
        "the refused ADD changed the node"
    );
    let log = std::fs::read_to_string(node.ipamd_log_path()).unwrap_or_default();
    check!(
        node,
        log.contains("cannot read instance metadata") && log.matches("retry_in").count() >= 2,
        "ipamd's log does not say that it cannot read instance metadata and retries"
    );

    // IMDS answers again: ipamd becomes ready by itself (backoff at most 10 s).
    proxy.set_down(false);
    let back = Instant::now();
    let ready = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(node.conflist_path())
            .is_ok_and(|t| serde_json::from_str::<serde_json::Value>(&t).is_ok())
    });
    check!(
        node,
        ready,
        "ipamd did not become ready after IMDS came back"
    );
    let recovered = back.elapsed();
    check!(
        node,
        probe(&node) == Some(0),
        "the probe must say SERVING (0)"
    );
    let out = ok(
        &node,
        node.exec_plugin(&CniRequest::for_pod("ADD", &conf, &p)),
    );
    check!(node, out.success(), "ADD once ready: {}", out.describe());
    let resets = proxy.stats().faults.get("reset").copied().unwrap_or(0);
    eprintln!(
        "campaign imds-faults/startup: {resets} IMDS requests reset over {:?}; ready {recovered:?} after IMDS came back",
        back.duration_since(spawned)
    );
    drop(ipamd);
}

#[test]
fn imds_unreachable_slow_or_stale_later_keeps_serving_and_drops_no_held_address() {
    let mut node = start(NodeOptions::new(standard_node(&[3, 3])).without_ipamd());
    let proxy = imds_proxy(&node);
    node.set_ipamd_env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &proxy.endpoint());
    node.start_ipamd()
        .unwrap_or_else(|e| panic!("ipamd did not start through the proxy: {e}"));
    let mut pods = Vec::new();
    for i in 0..3 {
        let p = pod("imds", &format!("held-{i}"));
        let r = ok(&node, node.add_pod(&p, "1.0.0"));
        let ip = harness::cni::result_ip(&r).unwrap();
        pods.push((p, r, ip));
    }
    let total = ok(&node, node.pool_status()).total_i_ps;

    // Unreachable: reconciles fail (counted), pods keep coming and going, nothing is dropped.
    proxy.set_down(true);
    let failed_before = metric_with(&node, "awscni_ipamd_error_count", "reconcileFailedGetENIs");
    let noticed = wait_for(Duration::from_secs(20), || {
        metric_with(&node, "awscni_ipamd_error_count", "reconcileFailedGetENIs") > failed_before
    });
    check!(
        node,
        noticed,
        "no reconcile failed while IMDS was unreachable"
    );
    let p = pod("imds", "while-down");
    let r = ok(&node, node.add_pod(&p, "1.0.0"));
    let ip = harness::cni::result_ip(&r).unwrap();
    ok(&node, node.del_pod(&p, "1.0.0", Some(&r)));
    check!(
        node,
        !pods.iter().any(|(_, _, held)| *held == ip),
        "a pod got {ip}, which another pod holds"
    );
    // Slow answers (held 3 s each) instead: the same.
    proxy.set_down(false);
    proxy.add_rule(FaultRule::always(Fault::SlowAnswer(Duration::from_secs(3))));
    let p = pod("imds", "while-slow");
    let started = Instant::now();
    let r = ok(&node, node.add_pod(&p, "1.0.0"));
    let slow_add = started.elapsed();
    ok(&node, node.del_pod(&p, "1.0.0", Some(&r)));
    proxy.clear_rules();
    check!(
        node,
        ok(&node, node.pool_status()).total_i_ps == total,
        "the pool changed while IMDS was unreachable or slow"
    );

    // Stale: metadata stops listing the held addresses and one free address (a lagging view).
    // The held ones stay assigned; the free one leaves the pool (metadata is the truth in this
    // mode) and comes back when metadata shows it again.
    let held: BTreeSet<Ipv4Addr> = pods.iter().map(|(_, _, ip)| *ip).collect();
    let free: Ipv4Addr = node
        .description()
        .all_secondary_ips()
        .into_iter()
        .find(|ip| !held.contains(ip))
        .unwrap();
    let hidden: BTreeSet<Ipv4Addr> = held.iter().copied().chain([free]).collect();
    let full = node.description().clone();
    let edited = node.update_description(|d| {
        for eni in &mut d.interfaces {
            let primary = eni.local_ipv4s[0];
            eni.local_ipv4s
                .retain(|ip| *ip == primary || !hidden.contains(ip));
        }
    });
    ok(&node, edited);
    let free_dropped = wait_for(Duration::from_secs(20), || {
        !ok(&node, node.datastore_ips())
            .values()
            .any(|ips| ips.contains(&free))
    });
    check!(
        node,
        free_dropped,
        "the free address metadata stopped listing stayed in the pool"
    );
    for (p, r, ip) in &pods {
        check!(
            node,
            ok(&node, node.ipamd_assignment(p)) == Some(*ip),
            "pod {} lost {ip} while metadata did not list it",
            p.name
        );
        let out = ok(&node, node.cni("CHECK", p, "1.0.0", Some(r)));
        check!(
            node,
            out.success(),
            "CHECK of {}: {}",
            p.name,
            out.describe()
        );
    }
    let restored = node.update_description(|d| *d = full.clone());
    ok(&node, restored);
    let back = wait_for(Duration::from_secs(20), || {
        ok(&node, node.pool_status()).total_i_ps == total
    });
    check!(
        node,
        back,
        "the pool did not grow back when metadata listed the addresses again"
    );
    eprintln!(
        "campaign imds-faults/later: unreachable ({} resets), slow (3 s per answer; ADD took {slow_add:?}), stale ({} addresses unlisted): pods served, no held address dropped",
        proxy.stats().faults.get("reset").copied().unwrap_or(0),
        hidden.len()
    );
}

#[test]
fn stale_metadata_in_ec2_mode_drops_no_address_ec2_holds() {
    let vpc = VpcFabric::start(FabricOptions::default())
        .unwrap_or_else(|e| panic!("cannot start the simulated VPC: {e}"));
    let node = vpc
        .add_node(
            NodeSpec::new("lagging", "t3.medium")
                .env("WARM_IP_TARGET", "2")
                .env("MINIMUM_IP_TARGET", "2"),
        )
        .unwrap_or_else(|e| panic!("cannot start the node: {e}\n{}", vpc.diag()));
    // Metadata lags EC2 by 8 s from now on: every address ipamd adds is missing from metadata
    // for a while, and reconciles see the difference.
    vpc.set_imds_lag(Duration::from_secs(8));
    let mut samples: Vec<BTreeSet<Ipv4Addr>> = Vec::new();
    let mut dropped: Vec<Ipv4Addr> = Vec::new();
    let mut pods = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..12 {
        let p = pod("lag", &format!("p{i}"));
        loop {
            let now: BTreeSet<Ipv4Addr> = ok(&node, node.datastore_ips())
                .into_values()
                .flatten()
                .collect();
            if let Some(prev) = samples.last() {
                for ip in prev.difference(&now) {
                    // Leaving the pool is fine only when EC2 no longer holds it either.
                    if ok(&node, node.eni_holding(*ip)).is_some() {
                        dropped.push(*ip);
                    }
                }
            }
            samples.push(now);
            let out = ok(&node, node.cni("ADD", &p, "1.0.0", None));
            if out.success() {
                pods.push((p, out.json.unwrap_or_default()));
                break;
            }
            check!(
                node,
                out.error_code() == Some(11) && Instant::now() < deadline,
                "ADD of pod {i} while metadata lags: {}",
                out.describe()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    check!(
        node,
        dropped.is_empty(),
        "addresses EC2 still holds left ipamd's pool while metadata lagged: {dropped:?}"
    );
    for (p, r) in &pods {
        let out = ok(&node, node.cni("CHECK", p, "1.0.0", Some(r)));
        check!(
            node,
            out.success(),
            "CHECK of {}: {}",
            p.name,
            out.describe()
        );
    }
    eprintln!(
        "campaign imds-faults/ec2-lag: 12 pods added with metadata 8 s behind EC2 over {} pool samples; no address EC2 holds left the pool",
        samples.len()
    );
}
