//! EC2's limits (moto does not enforce them, ipamd must) are never exceeded in moto, even when
//! more pods are asked for than fit; and the errors a user sees when no IP is left say why: the
//! node's limit, IPs cooling down, a full subnet, EC2 failing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::vpc::{Ec2, tags};
use harness::{FabricOptions, Pod, VpcNode};

use crate::{
    add_pod_retrying, check, ec2_node, eni_and_ip_counts, fabric, fabric_with, node, ok, pod,
    show_enis,
};

/// The largest (ENIs attached, private addresses on one ENI) seen per instance.
type Peaks = BTreeMap<String, (usize, usize)>;

/// Samples moto every 100 ms until stopped, recording each instance's peaks.
fn watch_limits(
    ec2: Ec2,
    instances: Vec<String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Peaks> {
    std::thread::spawn(move || {
        let mut peaks = Peaks::new();
        while !stop.load(Ordering::SeqCst) {
            for id in &instances {
                if let Ok(enis) = ec2.instance_enis(id) {
                    let per_eni = enis.iter().map(|e| e.private_ips.len()).max().unwrap_or(0);
                    let peak = peaks.entry(id.clone()).or_insert((0, 0));
                    peak.0 = peak.0.max(enis.len());
                    peak.1 = peak.1.max(per_eni);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        peaks
    })
}

/// Adds `fit` pods (retrying while the pool grows), then asks for `extra` more: each must fail
/// with code 11 and a message naming the limit. Returns the last error message.
fn fill_beyond_the_limit(node: &VpcNode, prefix: &str, fit: usize, extra: usize) -> String {
    let mut pods: Vec<Pod> = Vec::new();
    for i in 0..fit {
        let p = pod("default", &format!("{prefix}-{i}"));
        add_pod_retrying(node, &p, Duration::from_secs(60));
        pods.push(p);
    }
    let mut last = String::new();
    for i in 0..extra {
        let p = pod("default", &format!("{prefix}-over-{i}"));
        // While ipamd still believes it can grow it may say so; at the limit it must say that.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = ok(node, node.cni("ADD", &p, "1.0.0", None));
            check!(
                node,
                !out.success(),
                "pod {} got an address beyond the instance's limit: {}\nmoto: {}",
                p.name,
                out.stdout,
                show_enis(node)
            );
            check!(node, out.error_code() == Some(11), "{}", out.describe());
            last = out.error_text();
            if last.contains("limit") {
                break;
            }
            check!(
                node,
                Instant::now() < deadline,
                "at the limit the error must say `limit`: {}",
                out.describe()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    last
}

#[test]
fn limits_hold_in_moto_and_the_exhaustion_error_names_the_limit() {
    let vpc = fabric();
    // t3.small: 3 ENIs x 4 addresses (3 for pods each) = 9 pod IPs; MAX_ENI=2 caps it at 6.
    let a = node(&vpc, ec2_node("limit-a", "t3.small"));
    let b = node(&vpc, ec2_node("limit-b", "t3.small").env("MAX_ENI", "2"));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = watch_limits(
        vpc.ec2().clone(),
        vec![a.instance_id().to_owned(), b.instance_id().to_owned()],
        Arc::clone(&stop),
    );
    let (msg_a, msg_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| fill_beyond_the_limit(&a, "la", 9, 3));
        let tb = s.spawn(|| fill_beyond_the_limit(&b, "lb", 6, 2));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    // Let the pool manager run a few more cycles at the limit.
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::SeqCst);
    let peaks = monitor.join().unwrap();

    for (n, max_enis, pod_ips, msg) in [(&a, 3, 9, &msg_a), (&b, 2, 6, &msg_b)] {
        let (peak_enis, peak_per_eni) = peaks.get(n.instance_id()).copied().unwrap_or_default();
        check!(
            n,
            peak_enis <= max_enis && peak_per_eni <= 4,
            "moto saw {peak_enis} ENIs (limit {max_enis}) and {peak_per_eni} addresses on one ENI (limit 4)"
        );
        let counts = eni_and_ip_counts(n);
        check!(
            n,
            counts == (max_enis, pod_ips),
            "at the limit moto must show {max_enis} ENIs / {pod_ips} IPs, shows {counts:?}: {}",
            show_enis(n)
        );
        let status = ok(n, n.pool_status());
        check!(
            n,
            status.assigned_i_ps == u32::try_from(pod_ips).unwrap() && status.assignable_i_ps == 0,
            "{status:?}"
        );
        // ipamd's metrics agree with EC2's state and count the refused ADDs.
        let metric = |name: &str| ok(n, n.metric(name)).unwrap_or(-1.0);
        let refused = if max_enis == 3 { 3.0 } else { 2.0 };
        check!(
            n,
            metric("awscni_no_available_ip_addresses") >= refused
                && metric("awscni_eni_allocated") == max_enis as f64
                && metric("awscni_total_ip_addresses") == pod_ips as f64
                && metric("awscni_assigned_ip_addresses") == pod_ips as f64
                && metric("awscni_ec2api_req_count") > 0.0,
            "metrics disagree with moto ({max_enis} ENIs, {pod_ips} IPs, >= {refused} refused ADDs): {:?}",
            n.metrics().ok().map(|m| m
                .into_iter()
                .filter(|(s, _)| s.starts_with("awscni_"))
                .collect::<Vec<_>>())
        );
        for number in [max_enis.to_string(), "3".to_owned(), pod_ips.to_string()] {
            check!(
                n,
                msg.contains(&number),
                "the exhaustion message must give the numbers ({max_enis} ENIs x 3 IPs = {pod_ips}): {msg}"
            );
        }
    }
}

#[test]
fn cooling_down_ips_are_named_as_the_reason_and_become_usable_after_the_period() {
    const COOLDOWN: Duration = Duration::from_secs(5);
    let vpc = fabric();
    // One ENI (MAX_ENI=1) of 3 pod IPs: the pool cannot grow past them.
    let n = node(
        &vpc,
        ec2_node("cooldown", "t3.small")
            .env("MAX_ENI", "1")
            .cooldown_seconds(COOLDOWN.as_secs()),
    );
    let mut pods = Vec::new();
    for i in 0..3 {
        let p = pod("default", &format!("cool-{i}"));
        let (result, ip) = add_pod_retrying(&n, &p, Duration::from_secs(60));
        pods.push((p, result, ip));
    }
    let (gone, result, released_ip) = pods.remove(0);
    ok(&n, n.del_pod(&gone, "1.0.0", Some(&result)));
    let released = Instant::now();

    let next = pod("default", "cool-next");
    let out = ok(&n, n.cni("ADD", &next, "1.0.0", None));
    check!(
        n,
        !out.success() && out.error_code() == Some(11),
        "ADD while the only free IP cools down must fail with 11: {}",
        out.describe()
    );
    let why = out.error_text().to_lowercase();
    check!(
        n,
        why.contains("cooldown") || why.contains("cooling"),
        "the error must say the free IP is cooling down: {}",
        out.describe()
    );
    let (_, ip) = add_pod_retrying(&n, &next, COOLDOWN + Duration::from_secs(20));
    check!(
        n,
        released.elapsed() >= COOLDOWN,
        "{released_ip} was reused {:?} after release, before the {COOLDOWN:?} cooldown",
        released.elapsed()
    );
    check!(
        n,
        ip == released_ip,
        "the only free address is {released_ip}, the pod got {ip}"
    );
    check!(
        n,
        eni_and_ip_counts(&n) == (1, 3),
        "MAX_ENI=1 must keep one ENI: {}",
        show_enis(&n)
    );
}

/// Adds pods until one fails (or `max` succeeded); returns the failed ADD's error text.
fn add_until_exhausted(node: &VpcNode, prefix: &str, max: usize) -> (usize, String) {
    for i in 0..max {
        let p = pod("default", &format!("{prefix}-{i}"));
        let t = Instant::now();
        let out = ok(node, node.cni("ADD", &p, "1.0.0", None));
        if !out.success() {
            check!(node, out.error_code() == Some(11), "{}", out.describe());
            return (i, out.error_text());
        }
        check!(
            node,
            t.elapsed() < Duration::from_secs(3),
            "ADD of {} took {:?} although the pool had a free IP",
            p.name,
            t.elapsed()
        );
    }
    (max, String::new())
}

#[test]
fn a_full_subnet_is_named_as_the_reason_and_nothing_is_left_half_made() {
    // A /28 has 11 usable addresses: the instance takes one, ipamd's first 9 IPs leave one, so
    // the second ENI (1 + 9 addresses) cannot be created.
    let vpc = fabric_with(FabricOptions::default().subnet("10.0.0.0/28".parse().unwrap()));
    let n = node(&vpc, ec2_node("subnet-full", "m5.large"));
    let (added, msg) = add_until_exhausted(&n, "full", 12);
    check!(
        n,
        added == 9,
        "9 pods fit the primary ENI, {added} were added"
    );
    // ipamd may first say the pool is growing; once EC2 refused, it must name the subnet.
    let p = pod("default", "full-next");
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut why = msg;
    while !why.contains(&vpc.subnet().id) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let out = ok(&n, n.cni("ADD", &p, "1.0.0", None));
        check!(
            n,
            !out.success() && out.error_code() == Some(11),
            "{}",
            out.describe()
        );
        why = out.error_text();
    }
    check!(
        n,
        why.contains(&vpc.subnet().id) && why.to_lowercase().contains("subnet"),
        "the error must name the full subnet {}: {why}",
        vpc.subnet().id
    );
    check!(
        n,
        eni_and_ip_counts(&n) == (1, 9),
        "moto must still show 1 ENI with 9 IPs: {}",
        show_enis(&n)
    );
    let stray: Vec<_> = ok(&n, vpc.enis())
        .into_iter()
        .filter(|e| e.attachment.is_none())
        .collect();
    check!(n, stray.is_empty(), "a failed ENI creation left {stray:?}");
}

#[test]
fn ec2_failing_is_named_as_the_reason_and_the_pool_grows_once_it_answers() {
    let vpc = fabric();
    let n = node(&vpc, ec2_node("ec2-down", "m5.large"));
    ok(&n, vpc.set_ec2_reachable(false));
    // The pool's 9 warm IPs serve pods without EC2.
    let (added, msg) = add_until_exhausted(&n, "down", 12);
    check!(
        n,
        added == 9,
        "the 9 warm IPs must serve pods while EC2 is down, {added} did"
    );
    let p = pod("default", "down-next");
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut why = msg;
    while !why.to_lowercase().contains("ec2") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let out = ok(&n, n.cni("ADD", &p, "1.0.0", None));
        check!(
            n,
            !out.success() && out.error_code() == Some(11),
            "{}",
            out.describe()
        );
        why = out.error_text();
    }
    check!(
        n,
        why.to_lowercase().contains("ec2"),
        "the error must say EC2 is failing: {why}"
    );
    check!(n, eni_and_ip_counts(&n) == (1, 9), "{}", show_enis(&n));
    ok(&n, vpc.set_ec2_reachable(true));
    let (_, ip) = add_pod_retrying(&n, &p, Duration::from_secs(60));
    let eni = ok(&n, n.eni_holding(ip)).unwrap();
    check!(
        n,
        eni.device_index() == Some(1)
            && eni.tags.get(tags::INSTANCE_ID).map(String::as_str) == Some(n.instance_id()),
        "the pod's IP {ip} must come from the ENI ipamd attached once EC2 answered: {eni:?}"
    );
}
