//! Campaign 2, EC2 faults: ipamd in EC2 mode talks to moto through the fault-injecting proxy
//! (`harness::faults::FaultProxy`), which answers chosen calls with throttling bursts, 500s,
//! answers held beyond the SDK's timeout (the call ran, the answer came too late) and reset
//! connections; and the VPC simulator hides an attachment from instance metadata forever.
//!
//! While that goes on: pods keep being served from the pool, ipamd's EC2 call rate under
//! sustained throttling stays bounded (the proxy's own counters), moto never shows more ENIs or
//! addresses than the instance type allows nor two ENIs at one device index, every ENI ipamd
//! created ends up attached and in use or deleted (a half-created one is not left behind), the
//! pool converges on moto's state once EC2 heals, and `/metrics` counts the errors.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harness::faults::{Fault, FaultProxy, FaultRule};
use harness::vpc::{EC2_ENDPOINT_ADDR, EC2_ENDPOINT_PORT, Ec2, tags};
use harness::{FabricOptions, NodeSpec, Pod, VpcFabric, VpcNode};
use serde_json::Value;

use crate::{check, ok, pod, wait_for};

/// What moto showed for one instance while a campaign ran.
#[derive(Debug, Default, Clone)]
pub struct MotoWatch {
    /// Samples taken.
    pub samples: u64,
    /// Most ENIs attached at once.
    pub max_enis: usize,
    /// Most private addresses on one ENI.
    pub max_ips_per_eni: usize,
    /// Problems seen (two ENIs at one device index).
    pub violations: Vec<String>,
    /// Every ENI ever seen that ipamd created for the instance (its instance-id tag).
    pub created: BTreeSet<String>,
}

/// A thread sampling moto every 150 ms for one node's instance until [`MotoWatcher::finish`].
pub struct MotoWatcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<MotoWatch>,
}

impl MotoWatcher {
    /// Starts watching `node`'s instance in `vpc`.
    pub fn start(vpc: &VpcFabric, node: &VpcNode) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = watch_moto(
            vpc.ec2().clone(),
            vpc.vpc_id().to_owned(),
            node.instance_id().to_owned(),
            Arc::clone(&stop),
        );
        Self { stop, thread }
    }

    /// Stops sampling; what it saw.
    pub fn finish(self) -> MotoWatch {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .unwrap_or_else(|_| panic!("the moto watcher panicked"))
    }
}

fn watch_moto(
    ec2: Ec2,
    vpc_id: String,
    instance: String,
    stop: Arc<AtomicBool>,
) -> JoinHandle<MotoWatch> {
    std::thread::spawn(move || {
        let mut w = MotoWatch::default();
        while !stop.load(Ordering::SeqCst) {
            if let Ok(enis) = ec2.vpc_enis(&vpc_id) {
                w.samples += 1;
                let attached: Vec<_> = enis.iter().filter(|e| e.attached_to(&instance)).collect();
                w.max_enis = w.max_enis.max(attached.len());
                let mut devices = BTreeMap::new();
                for e in &attached {
                    w.max_ips_per_eni = w.max_ips_per_eni.max(e.private_ips.len());
                    if let Some(other) = devices.insert(e.device_index(), e.id.clone())
                        && w.violations.len() < 10
                    {
                        w.violations.push(format!(
                            "{} and {other} both at device {:?}",
                            e.id,
                            e.device_index()
                        ));
                    }
                }
                for e in &enis {
                    if e.tags.get(tags::INSTANCE_ID).map(String::as_str) == Some(instance.as_str())
                        && e.attachment.as_ref().is_none_or(|a| a.device_index != 0)
                    {
                        w.created.insert(e.id.clone());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        w
    })
}

fn fabric() -> VpcFabric {
    VpcFabric::start(FabricOptions::default())
        .unwrap_or_else(|e| panic!("cannot start the simulated VPC: {e}"))
}

/// The proxy in the internet namespace, in front of moto.
fn ec2_proxy(vpc: &VpcFabric) -> FaultProxy {
    let listen = SocketAddr::from((EC2_ENDPOINT_ADDR, 0));
    let upstream = SocketAddr::from((EC2_ENDPOINT_ADDR, EC2_ENDPOINT_PORT));
    FaultProxy::start(vpc.internet(), listen, upstream)
        .unwrap_or_else(|e| panic!("cannot start the EC2 fault proxy: {e}"))
}

fn node(vpc: &VpcFabric, spec: NodeSpec) -> VpcNode {
    let name = spec.name.clone();
    vpc.add_node(spec)
        .unwrap_or_else(|e| panic!("cannot start node {name}: {e}\n{}", vpc.diag()))
}

/// ADD retried every 500 ms while it fails with code 11 (as a kubelet does), up to `timeout`.
fn add_retrying(node: &VpcNode, p: &Pod, timeout: Duration) -> (Value, Ipv4Addr) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = ok(node, node.cni("ADD", p, "1.0.0", None));
        if out.success() {
            let result = out.json.clone().unwrap_or_default();
            let ip = harness::cni::result_ip(&result)
                .unwrap_or_else(|| panic!("ADD result without address: {result}"));
            return (result, ip);
        }
        check!(
            node,
            out.error_code() == Some(11) && Instant::now() < deadline,
            "ADD of {} did not succeed within {timeout:?}: {}",
            p.name,
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sum of the series of `name` whose labels contain `label` (e.g. `error="InternalError"`).
fn metric_with(node: &VpcNode, name: &str, label: &str) -> f64 {
    ok(node, node.metrics())
        .into_iter()
        .filter(|(s, _)| s.split('{').next() == Some(name) && s.contains(label))
        .map(|(_, v)| v)
        .sum()
}

/// ipamd's datastore equals moto: the same ENIs attached, the same secondary addresses.
fn assert_pool_matches_moto(node: &VpcNode) {
    let converged = wait_for(Duration::from_secs(60), || {
        let moto: BTreeMap<String, BTreeSet<Ipv4Addr>> = ok(node, node.enis())
            .into_iter()
            .map(|e| (e.id.clone(), e.secondary_ips().iter().copied().collect()))
            .collect();
        ok(node, node.datastore_ips()) == moto
    });
    check!(
        node,
        converged,
        "ipamd's pool never matched moto\n  pool: {:?}\n  moto: {:?}",
        ok(node, node.datastore_ips()),
        ok(node, node.secondary_ips())
    );
}

/// Every ENI ipamd created for the instance is attached to it, or gone: none is left behind
/// `available` (or attached but unknown to the pool, which [`assert_pool_matches_moto`] sees).
fn assert_no_half_created_eni(vpc: &VpcFabric, node: &VpcNode, created: &BTreeSet<String>) {
    let clean = wait_for(Duration::from_secs(60), || {
        created.iter().all(|id| match vpc.ec2().eni(id) {
            Ok(None) => true,
            Ok(Some(e)) => e.attached_to(node.instance_id()),
            Err(_) => false,
        })
    });
    let state: Vec<String> = created
        .iter()
        .map(|id| match vpc.ec2().eni(id) {
            Ok(Some(e)) => format!("{id}: {} {:?}", e.status, e.attachment),
            Ok(None) => format!("{id}: deleted"),
            Err(e) => format!("{id}: {e}"),
        })
        .collect();
    check!(
        node,
        clean,
        "ENIs ipamd created were left behind: {state:?}"
    );
}

/// ADDs new pods until one is refused (code 11): the served ones go to `served`, the refused
/// one is returned.
fn next_pending(node: &VpcNode, from_pool: &mut usize, served: &mut Vec<Pod>) -> Pod {
    loop {
        let p = pod("ec2", &format!("throttled-{from_pool}-{}", served.len()));
        let out = ok(node, node.cni("ADD", &p, "1.0.0", None));
        if !out.success() {
            check!(node, out.error_code() == Some(11), "{}", out.describe());
            return p;
        }
        *from_pool += 1;
        served.push(p);
        check!(
            node,
            *from_pool <= 8,
            "the pool never ran out while EC2 throttled"
        );
    }
}

#[test]
fn ec2_throttling_errors_slow_answers_and_resets_keep_pods_served_and_converge() {
    let vpc = fabric();
    let proxy = ec2_proxy(&vpc);
    // t3.medium: 3 ENIs x 6 addresses (5 pod IPs each).
    let node = node(
        &vpc,
        NodeSpec::new("ec2-faults", "t3.medium")
            .env("AWS_ENDPOINT_URL_EC2", &proxy.endpoint())
            .env("WARM_IP_TARGET", "2")
            .env("MINIMUM_IP_TARGET", "2"),
    );
    let watcher = MotoWatcher::start(&vpc, &node);

    // Bursts: the calls of the next growth steps are throttled, fail with 500, are reset, and
    // an AssignPrivateIpAddresses and a DescribeNetworkInterfaces run but answer too late.
    let hold = Duration::from_secs(12);
    proxy.add_rule(FaultRule::action(
        "AssignPrivateIpAddresses",
        Fault::SlowAnswer(hold),
        1,
    ));
    proxy.add_rule(FaultRule::action(
        "CreateNetworkInterface",
        Fault::InternalError,
        2,
    ));
    proxy.add_rule(FaultRule::any(Fault::Throttle, 8));
    proxy.add_rule(FaultRule::any(Fault::InternalError, 4));
    proxy.add_rule(FaultRule::any(Fault::Reset, 4));
    proxy.add_rule(FaultRule::action(
        "DescribeNetworkInterfaces",
        Fault::SlowAnswer(hold),
        1,
    ));
    let mut pods: Vec<(Pod, Ipv4Addr)> = Vec::new();
    for i in 0..9 {
        let p = pod("ec2", &format!("burst-{i}"));
        let (_, ip) = add_retrying(&node, &p, Duration::from_secs(150));
        pods.push((p, ip));
    }
    let bursts = proxy.stats();

    // Sustained throttling: pods keep coming from the pool, the call rate is bounded.
    let has_free = wait_for(Duration::from_secs(60), || {
        ok(&node, node.pool_status()).assignable_i_ps >= 1
    });
    check!(
        node,
        has_free,
        "the pool never had a free address before the throttling"
    );
    proxy.add_rule(FaultRule::always(Fault::Throttle));
    let window_start = Instant::now();
    // Pods keep getting addresses from the pool while every EC2 call is throttled...
    let mut from_pool = 0;
    // Pods served meanwhile live on (a dropped sandbox would be a pod gone without a DEL).
    let mut served: Vec<Pod> = Vec::new();
    let mut pending = next_pending(&node, &mut from_pool, &mut served);
    check!(
        node,
        from_pool >= 1,
        "no pod was served from the pool while EC2 throttled"
    );
    // ...and beyond the pool they are refused with code 11 saying EC2 throttles, while ipamd
    // keeps asking EC2 at a bounded rate.
    let mut refusal = String::new();
    let throttle_for = Duration::from_secs(harness::faults::scale(40, 180));
    while window_start.elapsed() < throttle_for {
        let out = ok(&node, node.cni("ADD", &pending, "1.0.0", None));
        if out.success() {
            // An address EC2 handed out just before the throttling started reached the pool
            // (a call already in flight): that pod is served, the next one waits.
            from_pool += 1;
            let next = next_pending(&node, &mut from_pool, &mut served);
            served.push(std::mem::replace(&mut pending, next));
            continue;
        }
        check!(
            node,
            out.error_code() == Some(11),
            "ADD beyond the pool while every EC2 call is throttled: {}",
            out.describe()
        );
        refusal = out.error_text();
        std::thread::sleep(Duration::from_secs(1));
    }
    let window = window_start.elapsed();
    let during = proxy.stats();
    let throttled_calls = during.requests_between(window_start, window_start + window);
    check!(
        node,
        refusal.contains("throttl"),
        "the refusal does not say EC2 is throttling: {refusal}"
    );
    check!(
        node,
        throttled_calls as u64 <= 10 + window.as_secs() / 2,
        "ipamd made {throttled_calls} EC2 calls in {window:?} of sustained throttling"
    );

    // EC2 heals: the pending pod gets its address, and the pool matches moto.
    proxy.clear_rules();
    let healed = Instant::now();
    let (_, pending_ip) = add_retrying(&node, &pending, Duration::from_secs(90));
    let converge = healed.elapsed();
    pods.push((pending, pending_ip));
    assert_pool_matches_moto(&node);
    let watch = watcher.finish();
    assert_no_half_created_eni(&vpc, &node, &watch.created);
    check!(
        node,
        watch.violations.is_empty() && watch.max_enis <= 3 && watch.max_ips_per_eni <= 6,
        "moto showed more than t3.medium allows or a shared device index: {watch:?}"
    );
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|(_, ip)| *ip).collect();
    check!(
        node,
        ips.len() == pods.len(),
        "two pods share an address: {pods:?}"
    );

    // The metrics count what the proxy injected (every injected fault is one failed attempt).
    // Every call on the wire is one the IAM policy grants (conf/iam-policy.json holds exactly
    // ipamd::cloud::ec2::EC2_ACTIONS; security.rs checks that).
    let stats = proxy.stats();
    let unlisted: Vec<&String> = stats
        .requests
        .keys()
        .filter(|a| !ipamd::cloud::ec2::EC2_ACTIONS.contains(&format!("ec2:{a}").as_str()))
        .collect();
    check!(
        node,
        unlisted.is_empty(),
        "ipamd called EC2 actions the IAM policy does not grant: {unlisted:?}"
    );
    // Throttles, 500s and late answers each fail one attempt ipamd makes and counts. (A reset
    // connection can be retried inside the HTTP client when it was a reused idle one, so
    // resets are reported, not required to match.)
    let stats = proxy.stats();
    let kind = |k: &str| stats.faults.get(k).copied().unwrap_or(0);
    let visible = kind("throttle") + kind("internal_error") + kind("slow_answer");
    let errors = ok(&node, node.metric("awscni_ec2api_error_count")).unwrap_or(0.0);
    let throttle_metric = metric_with(&node, "awscni_aws_api_error_count", "RequestLimitExceeded");
    let server_metric = metric_with(&node, "awscni_aws_api_error_count", "InternalError");
    let requests = ok(&node, node.metric("awscni_ec2api_req_count")).unwrap_or(0.0);
    let proxied: u64 = stats.requests.values().sum();
    check!(
        node,
        errors >= visible as f64
            && throttle_metric >= kind("throttle") as f64
            && server_metric >= kind("internal_error") as f64,
        "metrics undercount the errors: awscni_ec2api_error_count={errors}, RequestLimitExceeded={throttle_metric}, InternalError={server_metric}; the proxy injected {:?}",
        stats.faults
    );
    eprintln!(
        "campaign ec2-faults: {} pods served; faults injected {:?} (bursts: {}); sustained throttling: {throttled_calls} EC2 calls in {window:?} (max {} in any 10 s); converged {converge:?} after EC2 healed; ipamd counted {requests} requests / {errors} errors (proxy saw {proxied}); moto peaks {} ENIs, {} addresses/ENI over {} samples",
        pods.len() + from_pool,
        stats.faults,
        bursts.total_faults(),
        during.max_requests_in(Duration::from_secs(10)),
        watch.max_enis,
        watch.max_ips_per_eni,
        watch.samples
    );
}

#[test]
fn half_created_enis_are_removed_and_the_pool_converges() {
    let vpc = fabric();
    let proxy = ec2_proxy(&vpc);
    // t3.small: 3 ENIs x 4 addresses (3 pod IPs each); growth beyond the primary ENI needs ENIs.
    let node = node(
        &vpc,
        NodeSpec::new("half-made", "t3.small")
            .env("AWS_ENDPOINT_URL_EC2", &proxy.endpoint())
            .env("WARM_ENI_TARGET", "0")
            .env("WARM_IP_TARGET", "1"),
    );
    let watcher = MotoWatcher::start(&vpc, &node);
    // The first new ENI (ipamd creates it as soon as the primary's addresses are taken, for
    // WARM_IP_TARGET): its attach runs but answers after the SDK's timeout; then one whose
    // attach fails with a 500 (not run). Both are removed; a third attach succeeds.
    proxy.add_rule(FaultRule::action(
        "AttachNetworkInterface",
        Fault::SlowAnswer(Duration::from_secs(12)),
        1,
    ));
    proxy.add_rule(FaultRule::action(
        "AttachNetworkInterface",
        Fault::InternalError,
        1,
    ));
    let mut pods = Vec::new();
    for i in 0..3 {
        let p = pod("eni", &format!("primary-{i}"));
        let (_, ip) = add_retrying(&node, &p, Duration::from_secs(60));
        pods.push((p, ip));
    }
    let p = pod("eni", "second-eni");
    let (_, ip) = add_retrying(&node, &p, Duration::from_secs(120));
    pods.push((p, ip));
    check!(
        node,
        proxy.stats().count("AttachNetworkInterface") >= 3,
        "ipamd attached fewer than 3 times: {:?}",
        proxy.stats().requests
    );

    // From now on a newly attached ENI never shows in instance metadata: after the attach wait
    // it is detached and deleted; once metadata shows attachments again a fresh ENI serves.
    let before_hidden: BTreeSet<String> =
        ok(&node, node.enis()).into_iter().map(|e| e.id).collect();
    vpc.hypervisor().hide_new_enis(node.instance_id());
    // The second ENI (visible: attached before) takes 3 pods; the next one needs a third ENI.
    while pods.len() < 6 {
        let p = pod("eni", &format!("fill-{}", pods.len()));
        let (_, ip) = add_retrying(&node, &p, Duration::from_secs(60));
        pods.push((p, ip));
    }
    let blocked = pod("eni", "third-eni");
    let out = ok(&node, node.cni("ADD", &blocked, "1.0.0", None));
    check!(
        node,
        out.error_code() == Some(11),
        "ADD while the new ENI is invisible: {}",
        out.describe()
    );
    // Wait until ipamd attached an ENI metadata does not show, then until it is gone again.
    let hidden = crate::wait_for(Duration::from_secs(30), || {
        ok(&node, node.enis())
            .iter()
            .any(|e| !before_hidden.contains(&e.id))
    });
    check!(node, hidden, "ipamd did not attach a third ENI");
    let hidden_id = ok(&node, node.enis())
        .into_iter()
        .map(|e| e.id)
        .find(|id| !before_hidden.contains(id))
        .unwrap_or_default();
    let removed = crate::wait_for(Duration::from_secs(120), || {
        matches!(vpc.ec2().eni(&hidden_id), Ok(None))
    });
    check!(
        node,
        removed,
        "the ENI instance metadata never showed ({hidden_id}) is still there: {:?}",
        vpc.ec2().eni(&hidden_id)
    );
    let wait_failures = metric_with(
        &node,
        "awscni_ipamd_error_count",
        "increaseIPPoolwaitENIAttachedFailed",
    );
    check!(
        node,
        wait_failures >= 1.0,
        "awscni_ipamd_error_count{{fn=increaseIPPoolwaitENIAttachedFailed}} is {wait_failures}"
    );
    vpc.hypervisor().show_all_enis(node.instance_id());
    let (_, ip) = add_retrying(&node, &blocked, Duration::from_secs(120));
    pods.push((blocked, ip));

    assert_pool_matches_moto(&node);
    let watch = watcher.finish();
    assert_no_half_created_eni(&vpc, &node, &watch.created);
    check!(
        node,
        watch.violations.is_empty() && watch.max_enis <= 3 && watch.max_ips_per_eni <= 4,
        "moto showed more than t3.small allows or a shared device index: {watch:?}"
    );
    let in_use = ok(&node, node.enis()).len();
    let stats = proxy.stats();
    eprintln!(
        "campaign ec2-faults/half-created: {} ENIs created by ipamd, {} in use at the end, the rest deleted; faults injected {:?} plus 1 attachment hidden from metadata; {} pods served",
        watch.created.len(),
        in_use - 1,
        stats.faults,
        pods.len()
    );
}
