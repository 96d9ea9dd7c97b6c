//! The pool manager against the stateful fake EC2 (which enforces limits and can throttle),
//! instance metadata and links answered from the fake's live state, the real datastore and
//! state, and a manual clock for what the reference times (30 s shrink gate, 1 minute ENI age,
//! 60 s reconcile grace, 30 s cooldown). The manager's own waits (cycle, polling, EC2 backoff)
//! are shortened to milliseconds so the tests run in real time, quickly.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

use super::{ManagerConfig, NodeInfo, PoolManager, Timings};
use crate::checkpoint::NullCheckpointer;
use crate::cloud::ec2::{CLUSTER_NAME_TAG, Ec2ErrorKind, INSTANCE_ID_TAG, NO_MANAGE_TAG, Tags};
use crate::cloud::ec2_client::{Ec2Client, RetryPolicy};
use crate::cloud::metadata::{self, fetch_instance};
use crate::datastore::{Datastore, IpamKey, ManualClock, PodMetadata};
use crate::pool::policy::Targets;
use crate::pool::reconcile;
use crate::pool::situation::PoolSituation;
use crate::state::{IpamError, IpamState, Phase};
use crate::testing::fake_ec2::FakeEc2;
use crate::testing::fake_ec2::views::{FakeEc2Imds, FakeHost, HostOp};

type Manager = PoolManager<Ec2Client<FakeEc2>, FakeEc2Imds, FakeHost>;

struct World {
    ec2: FakeEc2,
    instance: String,
    state: Arc<IpamState>,
    clock: Arc<ManualClock>,
    host: FakeHost,
    client: Arc<Ec2Client<FakeEc2>>,
    registry: Registry,
    pods: u32,
}

fn targets(warm_eni: u32, warm_ip: u32, minimum_ip: u32) -> Targets {
    Targets::new(warm_eni, warm_ip, minimum_ip)
}

fn config(t: Targets) -> ManagerConfig {
    ManagerConfig {
        targets: t,
        max_eni: None,
        eni_mtu: 9001,
        extra_tags: Tags::new(),
        subnet_discovery: true,
        cluster_name: None,
        manage_untagged_eni: true,
        prefix_delegation: false,
        custom_network: None,
        timings: Timings {
            cycle: Duration::from_millis(50),
            min_gap: Duration::from_millis(200),
            attach_wait: Duration::from_millis(500),
            subnet_full_backoff: Duration::from_millis(300),
            detach_wait: Duration::from_millis(500),
            poll_start: Duration::from_millis(5),
            poll_cap: Duration::from_millis(50),
            ..Timings::default()
        },
    }
}

/// EC2 backoff in milliseconds instead of seconds (same shape: 5 attempts, doubling, capped).
const FAST_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    base: Duration::from_millis(20),
    cap: Duration::from_millis(200),
};

/// Starts a manager the way the daemon does: discover, build the pool from metadata (minus
/// unmanaged ENIs), ready.
async fn start_with(
    ec2: FakeEc2,
    instance: &str,
    cfg: ManagerConfig,
    cooldown: Duration,
) -> (World, Manager) {
    start_with_node(ec2, instance, cfg, cooldown, None).await
}

/// [`start_with`], the manager reading its Kubernetes Node through `node`.
async fn start_with_node(
    ec2: FakeEc2,
    instance: &str,
    cfg: ManagerConfig,
    cooldown: Duration,
    node_check: Option<super::NodeCheck>,
) -> (World, Manager) {
    let imds = ec2.imds(instance);
    let host = ec2.host(instance);
    let md = fetch_instance(&imds).await.unwrap();
    let clock = Arc::new(ManualClock::new());
    let mut registry = Registry::default();
    let client = Arc::new(Ec2Client::new(ec2.clone(), &mut registry).with_retry(FAST_RETRY));
    let state = Arc::new(IpamState::new(
        Datastore::new(cooldown, clock.clone(), ""),
        Arc::new(NullCheckpointer),
    ));
    let node = NodeInfo::from_metadata(&md).unwrap();
    let situation = Arc::new(PoolSituation::new(cfg.targets, client.health()));
    let metrics = crate::metrics::IpamdMetrics::new(&mut registry);
    let mut m = PoolManager::new(
        cfg,
        node,
        client.clone(),
        Arc::new(imds),
        host.clone(),
        state.clone(),
        clock.clone(),
        situation.clone(),
        client.health(),
    )
    .with_metrics(metrics);
    if let Some(check) = node_check {
        m = m.with_node(check);
    }
    m.discover(&md.enis).await;
    let unmanaged = m.unmanaged().clone();
    let managed: Vec<_> = md
        .enis
        .iter()
        .filter(|e| !unmanaged.contains(&e.id))
        .collect();
    m.note_enis(managed.iter().copied());
    state
        .with_datastore(|ds| {
            ds.set_capacity_note(situation);
            for e in &managed {
                reconcile::add_eni(ds, e).unwrap();
            }
        })
        .await;
    state.set_phase(Phase::Ready);
    let w = World {
        ec2,
        instance: instance.to_owned(),
        state,
        clock,
        host,
        client,
        registry,
        pods: 0,
    };
    (w, m)
}

async fn start(instance_type: &str, t: Targets) -> (World, Manager) {
    start_new(instance_type, config(t), Duration::ZERO).await
}

/// [`start_with`] on a new instance of `instance_type` in a new [`FakeEc2`].
async fn start_new(
    instance_type: &str,
    cfg: ManagerConfig,
    cooldown: Duration,
) -> (World, Manager) {
    let ec2 = FakeEc2::new();
    let instance = ec2.launch(instance_type);
    start_with(ec2, &instance, cfg, cooldown).await
}

fn key(n: u32) -> IpamKey {
    IpamKey {
        network_name: "aws-cni".into(),
        container_id: format!("pod-{n}"),
        if_name: "eth0".into(),
    }
}

impl World {
    async fn add_pod(&mut self) -> Result<Ipv4Addr, IpamError> {
        self.pods += 1;
        self.state
            .add(&key(self.pods), PodMetadata::default())
            .await
            .map(|a| a.ipv4().unwrap())
    }

    /// A burst: `pods` new pods (named, as kubelet's are) ask for addresses at once,
    /// `concurrency` at a time, while the manager runs its cycles as in the daemon and every
    /// AddNetwork may wait `wait` for the pool to grow. Returns each pod's answer, in order.
    async fn burst(
        &mut self,
        m: &mut Manager,
        pods: u32,
        concurrency: usize,
        wait: Duration,
    ) -> Vec<Result<Ipv4Addr, IpamError>> {
        self.state.set_add_wait(wait);
        let first = self.pods + 1;
        self.pods += pods;
        let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let asks = (first..first + pods).map(|n| {
            let (state, gate) = (Arc::clone(&self.state), Arc::clone(&gate));
            async move {
                let _turn = gate.acquire().await.unwrap();
                let pod = PodMetadata {
                    namespace: "default".into(),
                    name: format!("pod-{n}"),
                    interfaces_count: 1,
                };
                state.add(&key(n), pod).await.map(|a| a.ipv4().unwrap())
            }
        });
        let all = futures::future::join_all(asks);
        tokio::select! {
            () = m.run(self.state.pool_wanted()) => unreachable!("the manager runs forever"),
            answers = all => answers,
        }
    }

    /// Adds `n` pods, each of which must get an address.
    async fn add_pods(&mut self, n: u32) {
        for _ in 0..n {
            self.add_pod().await.unwrap();
        }
    }

    /// The ids of every ENI in EC2, attached or not.
    fn eni_ids(&self) -> BTreeSet<String> {
        self.ec2.all_enis().into_iter().map(|e| e.id).collect()
    }

    /// Asks for one more pod's address, which must be refused with a message containing
    /// every one of `says`.
    async fn assert_pod_refused(&mut self, says: &[&str]) {
        let err = self.add_pod().await.unwrap_err().to_string();
        for part in says {
            assert!(err.contains(part), "{part:?} missing from: {err}");
        }
    }

    async fn del_pod(&self, n: u32) {
        self.state.del(&key(n)).await.unwrap().unwrap();
    }

    /// (ENIs, addresses) in the pool.
    async fn pool(&self) -> (usize, usize) {
        let s = self.state.with_datastore(Datastore::stats).await;
        (s.enis, s.total)
    }

    /// (ENIs attached, secondary addresses on them) as EC2 sees it.
    fn ec2_shape(&self) -> (usize, usize) {
        let enis = self.ec2.attached(&self.instance);
        (enis.len(), enis.iter().map(|e| e.ips.len() - 1).sum())
    }

    /// Every attached ENI within the instance type's limits (t3.small: 3 ENIs, 4 addresses).
    fn assert_within(&self, max_enis: usize, ipv4_per_eni: usize) {
        let enis = self.ec2.attached(&self.instance);
        assert!(enis.len() <= max_enis, "{} ENIs attached", enis.len());
        for e in enis {
            assert!(
                e.ips.len() <= ipv4_per_eni,
                "{} holds {} addresses",
                e.id,
                e.ips.len()
            );
        }
    }

    /// The pool's addresses, which must be exactly EC2's secondary addresses of the managed ENIs.
    async fn assert_pool_matches_ec2(&self, unmanaged: &BTreeSet<String>) {
        let mut pool: Vec<(String, Ipv4Addr)> = self
            .state
            .with_datastore(|ds| {
                ds.enis()
                    .into_iter()
                    .flat_map(|v| {
                        ds.eni_addresses(&v.spec.id)
                            .into_iter()
                            .map(move |(ip, _)| (v.spec.id.clone(), ip))
                    })
                    .collect()
            })
            .await;
        pool.sort();
        let mut ec2: Vec<(String, Ipv4Addr)> = self
            .ec2
            .attached(&self.instance)
            .into_iter()
            .filter(|e| !unmanaged.contains(&e.id))
            .flat_map(|e| {
                e.ips[1..]
                    .iter()
                    .map(move |ip| (e.id.clone(), *ip))
                    .collect::<Vec<_>>()
            })
            .collect();
        ec2.sort();
        assert_eq!(pool, ec2, "the pool and EC2 disagree");
    }
}

#[tokio::test]
async fn t3_small_warm_eni_target_reaches_the_reference_numbers() {
    let (mut w, mut m) = start("t3.small", targets(1, 0, 0)).await;
    let r = m.grow().await;
    assert_eq!((r.ips_added, r.enis_added), (3, 0));
    assert_eq!(w.pool().await, (1, 3), "1 ENI with 3 IPs at start");
    assert_eq!(w.ec2.calls("CreateNetworkInterface"), 0);
    for _ in 0..5 {
        w.add_pod().await.unwrap();
        m.cycle().await;
        w.assert_within(3, 4);
    }
    assert_eq!(w.pool().await, (3, 9), "5 pods: 3 ENIs, 9 IPs");
    assert_eq!(w.ec2_shape(), (3, 9));
    w.assert_pool_matches_ec2(&BTreeSet::new()).await;
    // New ENIs: the node's subnet and security groups, description, tags, DeleteOnTermination.
    for eni in &w.ec2.attached(&w.instance)[1..] {
        assert_eq!(eni.description, format!("aws-K8S-{}", w.instance));
        assert_eq!(eni.tags.get(INSTANCE_ID_TAG), Some(&w.instance));
        assert!(eni.tags.contains_key(crate::cloud::ec2::CREATED_AT_TAG));
        assert!(eni.delete_on_termination());
    }
    assert_eq!(
        w.host.ops(),
        w.ec2.attached(&w.instance)[1..]
            .iter()
            .map(|e| HostOp::Setup(e.id.clone()))
            .collect::<Vec<_>>(),
        "every new ENI is brought up on the node"
    );
    // Devices 1 and 2, route tables 2 and 3.
    let devices: Vec<u32> = w
        .state
        .with_datastore(|ds| ds.enis().iter().map(|e| e.spec.device_number).collect())
        .await;
    assert_eq!(devices, vec![0, 1, 2]);
}

#[tokio::test]
async fn a_burst_on_a_cold_node_waits_for_the_new_enis_and_stops_at_the_limit() {
    // m5.large-type: 3 ENIs × 9 pod addresses. Cold with WARM_ENI_TARGET=1: the primary's 9
    // addresses are the warm ENI's worth.
    let (mut w, mut m) = start("m5.large", targets(1, 0, 0)).await;
    m.grow().await;
    assert_eq!(w.pool().await, (1, 9));
    let answers = w.burst(&mut m, 27, 16, Duration::from_secs(20)).await;
    let ips: BTreeSet<Ipv4Addr> = answers
        .into_iter()
        .map(|a| a.expect("every pod of the burst gets an address"))
        .collect();
    assert_eq!(ips.len(), 27);
    assert_eq!(w.pool().await, (3, 27));
    // The ENI × IP limit: pods beyond it are refused at once, not after the 30 s wait.
    let started = std::time::Instant::now();
    let refused = w.burst(&mut m, 2, 2, Duration::from_secs(30)).await;
    assert!(refused.iter().all(Result::is_err), "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn warm_ip_and_minimum_ip_targets_give_five_ips_on_two_enis() {
    let (w, mut m) = start("t3.small", targets(1, 2, 5)).await;
    m.grow().await;
    assert_eq!(w.pool().await, (2, 5));
    assert_eq!(w.ec2_shape(), (2, 5));
    // One assign (3 on the primary), one create with the remaining 2 in the same call.
    assert_eq!(w.ec2.calls("AssignPrivateIpAddresses"), 1);
    assert_eq!(w.ec2.calls("CreateNetworkInterface"), 1);
    m.cycle().await;
    assert_eq!(w.pool().await, (2, 5), "settled");
}

#[tokio::test]
async fn limits_are_never_exceeded_even_when_asked_for_more() {
    let (mut w, mut m) = start("t3.small", targets(0, 0, 50)).await;
    m.grow().await;
    assert_eq!(w.pool().await, (3, 9));
    for _ in 0..12 {
        let _ = w.add_pod().await;
        m.cycle().await;
        w.assert_within(3, 4);
    }
    assert_eq!(w.ec2_shape(), (3, 9));
    assert_eq!(
        w.ec2.calls("AttachNetworkInterface"),
        2,
        "ipamd never even tries a 4th ENI"
    );
    assert_eq!(w.client.metrics().errors("AssignPrivateIpAddresses"), 0);
    w.assert_pod_refused(&["limit of 3 ENIs x 3 IPs = 9 pod IPs (t3.small"])
        .await;
}

#[tokio::test]
async fn max_eni_caps_growth() {
    let mut cfg = config(targets(1, 0, 0));
    cfg.max_eni = Some(2);
    let (mut w, mut m) = start_new("m5.large", cfg, Duration::ZERO).await;
    m.grow().await;
    for _ in 0..20 {
        let _ = w.add_pod().await;
        m.cycle().await;
    }
    assert_eq!(w.ec2_shape(), (2, 18), "MAX_ENI=2 on m5.large: 2 ENIs x 9");
    w.assert_pod_refused(&["MAX_ENI=2"]).await;
}

#[tokio::test]
async fn existing_enis_are_filled_before_any_is_created() {
    let ec2 = FakeEc2::new();
    let instance = ec2.launch("m5.large");
    // An ENI attached (by an earlier ipamd) with one secondary address.
    let eni = ec2.create_detached(&format!("aws-K8S-{instance}"), &[]);
    ec2.assign_out_of_band(&eni, 1);
    {
        use crate::cloud::ec2::Ec2Api;
        ec2.attach_network_interface(&eni, &instance, 1)
            .await
            .unwrap();
    }
    let (w, mut m) = start_with(ec2, &instance, config(targets(0, 15, 0)), Duration::ZERO).await;
    assert_eq!(w.pool().await, (2, 1));
    m.grow().await;
    assert_eq!(
        w.pool().await,
        (2, 15),
        "9 on the primary + 6 more on the second ENI"
    );
    assert_eq!(w.ec2.calls("CreateNetworkInterface"), 0);
    assert_eq!(w.ec2.calls("AssignPrivateIpAddresses"), 2);
}

#[tokio::test]
async fn failed_attach_deletes_the_new_eni() {
    let (w, mut m) = start("t3.small", targets(0, 5, 0)).await;
    w.ec2
        .fail_next("AttachNetworkInterface", Ec2ErrorKind::EniLimitExceeded, 1);
    let r = m.grow().await;
    assert!(r.failed);
    assert_eq!(w.ec2.calls("CreateNetworkInterface"), 1);
    assert_eq!(w.ec2.calls("DeleteNetworkInterface"), 1);
    assert_eq!(w.ec2.all_enis().len(), 1, "only the primary ENI is left");
    assert_eq!(w.pool().await, (1, 3));
    // Next cycle succeeds.
    m.cycle().await;
    assert_eq!(w.pool().await, (2, 5));
}

#[tokio::test]
async fn throttling_keeps_the_call_rate_bounded_and_pods_keep_getting_ips() {
    let (mut w, mut m) = start("t3.small", targets(1, 0, 0)).await;
    m.grow().await;
    assert_eq!(w.pool().await, (1, 3));
    w.ec2.fail_always("*", Ec2ErrorKind::Throttled);
    let wake = w.state.pool_wanted();
    let before = w.ec2.calls("*");
    let t0 = tokio::time::Instant::now();
    // Pods keep coming (each exhaustion nudges the manager) while EC2 throttles everything.
    let pods = async {
        let mut served = 0;
        let mut refused = Vec::new();
        for _ in 0..60 {
            match w.add_pod().await {
                Ok(_) => served += 1,
                Err(e) => refused.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (served, refused)
    };
    let (served, refused) = tokio::select! {
        r = pods => r,
        () = async { m.run(wake).await } => unreachable!(),
    };
    let window = t0.elapsed();
    assert_eq!(served, 3, "the pool's 3 IPs were served while EC2 failed");
    let last = refused.last().unwrap();
    assert!(
        last.contains("EC2 is throttling ipamd") && last.contains("RequestLimitExceeded"),
        "{last}"
    );
    let times = w.ec2.call_times("*");
    let calls = times.len() - before;
    // Throttled answers in a row push every call of the client back by a doubling backoff
    // (here 20 ms doubling to a 200 ms cap; 250 ms to 10 s in production), with equal jitter:
    // once the streak reaches the cap, calls are at least cap/2 = 100 ms apart, however many
    // cycles the 57 exhausted assignments asked for.
    let steady = &times[before + 5..];
    let min_gap = steady.windows(2).map(|p| p[1] - p[0]).min().unwrap();
    assert!(calls >= 5, "{calls} calls: the manager kept trying");
    assert!(
        min_gap >= Duration::from_millis(99),
        "{calls} EC2 calls in {window:?}; closest two in steady state {min_gap:?} apart"
    );
    assert!(
        calls <= 35,
        "{calls} EC2 calls in {window:?} under throttling"
    );
    let m_total: u64 = [
        "DescribeInstances",
        "AssignPrivateIpAddresses",
        "DescribeNetworkInterfaces",
        "DescribeInstanceTypes",
        "DescribeSubnets",
        "CreateTags",
    ]
    .iter()
    .map(|api| w.client.metrics().requests(api))
    .sum();
    assert_eq!(
        m_total,
        u64::try_from(w.ec2.calls("*")).unwrap(),
        "every attempt is counted in awscni_ec2api_req_count"
    );
    assert_eq!(
        w.client.metrics().errors("AssignPrivateIpAddresses"),
        u64::try_from(w.ec2.calls("AssignPrivateIpAddresses")).unwrap() - 1,
        "every throttled attempt is counted in awscni_ec2api_error_count"
    );
    // EC2 recovers: the pool grows at the next cycle.
    w.ec2.heal();
    m.cycle().await;
    assert!(w.pool().await.1 > 3);
}

#[tokio::test]
async fn eni_is_freed_only_when_empty_cool_old_and_not_needed() {
    let mut cfg = config(targets(0, 2, 0));
    cfg.timings.decrease_interval = Duration::from_secs(30);
    let (mut w, mut m) = start_new("t3.small", cfg, Duration::from_secs(30)).await;
    m.grow().await;
    for _ in 0..5 {
        w.add_pod().await.unwrap();
        m.cycle().await;
    }
    assert_eq!(w.pool().await, (3, 7));
    for n in 1..=5 {
        w.del_pod(n).await;
    }
    // The 2 never-used IPs go back to EC2; the 5 cooling ones stay (never given back while
    // cooling), and so do the ENIs holding them.
    m.cycle().await;
    assert_eq!(w.pool().await, (3, 5));
    assert_eq!(w.ec2_shape(), (3, 5));
    m.cycle().await;
    assert_eq!(w.pool().await, (3, 5), "at most one shrink per 30 s");
    w.clock.advance(Duration::from_secs(31));
    // Out of cooldown: 3 more go, from the highest ENIs; the emptied ENIs are 31 s old: kept.
    m.cycle().await;
    assert_eq!(w.pool().await, (3, 2));
    assert_eq!(w.ec2_shape(), (3, 2));
    assert_eq!(
        w.ec2.calls("DetachNetworkInterface"),
        0,
        "younger than a minute"
    );
    w.clock.advance(Duration::from_secs(30));
    m.cycle().await;
    m.cycle().await;
    assert_eq!(
        w.pool().await,
        (1, 2),
        "one ENI per cycle, never the primary"
    );
    assert_eq!(w.ec2_shape(), (1, 2));
    assert_eq!(w.ec2.all_enis().len(), 1, "freed ENIs are deleted in EC2");
    assert_eq!(w.ec2.calls("DetachNetworkInterface"), 2);
    let teardowns = w
        .host
        .ops()
        .iter()
        .filter(|o| matches!(o, HostOp::Teardown(_)))
        .count();
    assert_eq!(teardowns, 2);
    w.assert_pool_matches_ec2(&BTreeSet::new()).await;
}

#[tokio::test]
async fn eni_with_a_pod_is_never_freed() {
    let (mut w, mut m) = start("t3.small", targets(0, 1, 0)).await;
    m.grow().await;
    let mut ips = Vec::new();
    for _ in 0..4 {
        ips.push(w.add_pod().await.unwrap());
        m.cycle().await;
    }
    // Pods 1..3 on the primary, pod 4 on the second ENI.
    for n in 1..=3 {
        w.del_pod(n).await;
    }
    w.clock.advance(Duration::from_secs(3600));
    for _ in 0..4 {
        m.cycle().await;
        w.clock.advance(Duration::from_secs(31));
    }
    assert_eq!(w.pool().await.0, 2, "the second ENI holds pod 4");
    assert_eq!(w.ec2.calls("DetachNetworkInterface"), 0);
}

async fn pool_has(state: &IpamState, eni: &str, ip: Ipv4Addr) -> bool {
    state
        .with_datastore(|ds| ds.eni_addresses(eni).iter().any(|(a, _)| *a == ip))
        .await
}

#[tokio::test]
async fn reconcile_adopts_and_drops_out_of_band_changes() {
    let (mut w, mut m) = start("m5.large", targets(0, 3, 0)).await;
    m.grow().await;
    assert_eq!(w.pool().await, (1, 3));
    let primary = w.ec2.primary_eni(&w.instance).id;
    let enis = w.ec2.attached(&w.instance).len();
    let held = w.add_pod().await.unwrap();

    // Assigned outside ipamd: adopted.
    let extra = w.ec2.assign_out_of_band(&primary, 1)[0];
    m.reconcile().await;
    assert!(pool_has(&w.state, &primary, extra).await, "{extra} adopted");

    // Unassigned outside ipamd: a free one is dropped, the pod's one is kept.
    let free = w
        .state
        .with_datastore(|ds| {
            ds.eni_addresses(&primary)
                .iter()
                .find(|(ip, k)| k.is_none() && *ip != extra)
                .unwrap()
                .0
        })
        .await;
    w.ec2.unassign_out_of_band(&primary, free);
    w.ec2.unassign_out_of_band(&primary, held);
    m.reconcile().await;
    assert!(!pool_has(&w.state, &primary, free).await, "{free} dropped");
    assert!(
        pool_has(&w.state, &primary, held).await,
        "{held} kept: a pod holds it"
    );
    assert_eq!(w.ec2.attached(&w.instance).len(), enis);
    let text = crate::metrics::encode(&w.registry).unwrap();
    for line in [
        "awscni_reconcile_count{fn=\"eniDataStorePoolReconcileAdd\"} 1",
        "awscni_reconcile_count{fn=\"eniIPPoolReconcileDel\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn addresses_ipamd_released_are_not_readopted_within_the_grace() {
    let (w, mut m) = start("m5.large", targets(0, 2, 0)).await;
    m.grow().await;
    assert_eq!(w.pool().await, (1, 2));
    let primary = w.ec2.primary_eni(&w.instance).id;
    let on_eni = |w: &World| -> BTreeSet<Ipv4Addr> {
        w.ec2.eni(&primary).unwrap().ips[1..]
            .iter()
            .copied()
            .collect()
    };
    // Two more appear outside ipamd: adopted, then (beyond WARM_IP_TARGET) given back.
    w.ec2.assign_out_of_band(&primary, 2);
    m.reconcile().await;
    assert_eq!(w.pool().await, (1, 4));
    let before = on_eni(&w);
    assert_eq!(m.shrink().await, 2);
    let released: Vec<Ipv4Addr> = before.difference(&on_eni(&w)).copied().collect();
    assert_eq!(released.len(), 2);
    assert_eq!(w.pool().await, (1, 2));

    // EC2's answers lag: it shows a released address again. Not re-adopted within 60 s...
    w.ec2.assign_ip_out_of_band(&primary, released[0]);
    m.reconcile().await;
    w.clock.advance(Duration::from_secs(59));
    m.reconcile().await;
    assert!(!pool_has(&w.state, &primary, released[0]).await);
    assert_eq!(w.pool().await, (1, 2));
    // ...after that EC2's word counts.
    w.clock.advance(Duration::from_secs(2));
    m.reconcile().await;
    assert!(pool_has(&w.state, &primary, released[0]).await);
    assert_eq!(w.pool().await, (1, 3));
}

#[tokio::test]
async fn new_eni_that_never_becomes_usable_is_removed_and_a_fresh_one_is_used_later() {
    let (w, mut m) = start("t3.small", targets(0, 5, 0)).await;
    let before = w.eni_ids();
    w.ec2.hide_new_links(true);
    let t0 = tokio::time::Instant::now();
    let r = m.grow().await;
    assert!(r.failed);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "waited the bounded attach wait: {waited:?}"
    );
    assert_eq!(w.ec2_shape().0, 1, "the unusable ENI was detached");
    let after = w.eni_ids();
    assert_eq!(after, before, "and deleted: no half-created ENI is left");
    assert_eq!(w.pool().await, (1, 3), "the pool is what it was");
    w.ec2.hide_new_links(false);
    m.cycle().await;
    assert_eq!(w.pool().await, (2, 5), "a fresh ENI was created and used");
    w.assert_pool_matches_ec2(&BTreeSet::new()).await;
}

#[tokio::test]
async fn an_assignment_that_may_have_run_is_read_back_before_assigning_again() {
    let (w, mut m) = start("t3.small", targets(0, 2, 0)).await;
    let primary = w.ec2.primary_eni(&w.instance).id;
    // EC2 runs the next assignment but the answer is lost (a timeout after the fact).
    let ran = w.ec2.assign_out_of_band(&primary, 2);
    w.ec2
        .fail_next("AssignPrivateIpAddresses", Ec2ErrorKind::Timeout, 1);
    let r = m.grow().await;
    assert!(r.failed);
    // Before assigning to that ENI again ipamd reads it back: the two addresses join the pool
    // and nothing more is asked for, so the ENI stays within its limit.
    let calls = w.ec2.calls("AssignPrivateIpAddresses");
    m.grow().await;
    assert_eq!(w.ec2.calls("AssignPrivateIpAddresses"), calls);
    for ip in ran {
        assert!(pool_has(&w.state, &primary, ip).await, "{ip} not adopted");
    }
    w.assert_within(3, 4);
    w.assert_pool_matches_ec2(&BTreeSet::new()).await;
}

#[tokio::test]
async fn a_half_created_eni_whose_removal_failed_is_removed_by_a_later_cycle() {
    let (w, mut m) = start("t3.small", targets(0, 5, 0)).await;
    let before = w.eni_ids();
    w.ec2
        .fail_next("AttachNetworkInterface", Ec2ErrorKind::Server, 1);
    w.ec2
        .fail_next("DeleteNetworkInterface", Ec2ErrorKind::Server, 50);
    assert!(m.grow().await.failed);
    let left: Vec<String> = w.eni_ids().difference(&before).cloned().collect();
    assert_eq!(
        left.len(),
        1,
        "the delete failed, so the ENI is still there"
    );
    w.ec2.heal();
    m.cycle().await;
    assert!(w.ec2.eni(&left[0]).is_none(), "the next cycle removed it");
    assert_eq!(w.pool().await, (2, 5), "and grew with a fresh ENI");
    w.assert_pool_matches_ec2(&BTreeSet::new()).await;
}

#[tokio::test]
async fn an_attach_that_failed_after_all_is_undone() {
    let (w, mut m) = start("t3.small", targets(0, 5, 0)).await;
    let before = w.eni_ids();
    // The attach answers with a timeout (it may have run): the new ENI must not stay behind.
    w.ec2
        .fail_next("AttachNetworkInterface", Ec2ErrorKind::Timeout, 1);
    let r = m.grow().await;
    assert!(r.failed);
    let after = w.eni_ids();
    assert_eq!(after, before, "the half-created ENI was deleted");
    assert_eq!(w.ec2_shape().0, 1);
    m.cycle().await;
    assert_eq!(w.pool().await, (2, 5));
    w.assert_pool_matches_ec2(&BTreeSet::new()).await;
}

#[tokio::test]
async fn no_manage_enis_are_left_alone_and_count_against_the_limit() {
    let ec2 = FakeEc2::new();
    let instance = ec2.launch("t3.small");
    let eni = ec2.create_detached("someone else's", &[(NO_MANAGE_TAG, "true")]);
    ec2.assign_out_of_band(&eni, 2);
    {
        use crate::cloud::ec2::Ec2Api;
        ec2.attach_network_interface(&eni, &instance, 1)
            .await
            .unwrap();
    }
    let (mut w, mut m) = start_with(ec2, &instance, config(targets(0, 0, 9)), Duration::ZERO).await;
    assert_eq!(m.unmanaged().iter().collect::<Vec<_>>(), vec![&eni]);
    m.grow().await;
    for _ in 0..8 {
        let _ = w.add_pod().await;
        m.cycle().await;
    }
    assert_eq!(w.pool().await, (2, 6), "3 ENIs allowed, one is unmanaged");
    assert_eq!(w.ec2.attached(&w.instance).len(), 3);
    let untouched = w.ec2.eni(&eni).unwrap();
    assert_eq!(untouched.ips.len(), 3);
    assert!(
        !untouched.tags.contains_key(INSTANCE_ID_TAG),
        "never tagged"
    );
    w.assert_pool_matches_ec2(&m.unmanaged().clone()).await;
    w.assert_pod_refused(&["limit of 3 ENIs", "no_manage"])
        .await;
}

#[tokio::test]
async fn managed_enis_get_missing_tags() {
    let mut cfg = config(targets(1, 0, 0));
    cfg.extra_tags
        .insert(CLUSTER_NAME_TAG.into(), "prod".into());
    cfg.extra_tags.insert("team".into(), "net".into());
    let (w, _m) = start_new("t3.small", cfg, Duration::ZERO).await;
    let tags = w.ec2.primary_eni(&w.instance).tags;
    assert_eq!(tags.get(INSTANCE_ID_TAG), Some(&w.instance));
    assert_eq!(tags.get(CLUSTER_NAME_TAG).map(String::as_str), Some("prod"));
    assert_eq!(tags.get("team").map(String::as_str), Some("net"));
    assert_eq!(w.ec2.calls("CreateTags"), 1);
}

#[tokio::test]
async fn exhaustion_messages_say_why() {
    // Subnet out of addresses.
    let (mut w, mut m) = start("t3.small", targets(1, 0, 0)).await;
    m.grow().await;
    w.ec2.set_subnet_capacity(0);
    w.add_pods(3).await;
    m.cycle().await;
    let err = w.add_pod().await.unwrap_err().to_string();
    assert!(
        err.starts_with("no assignable IP: all 3 IPs on 1 ENI are assigned; EC2 cannot add addresses: subnet subnet-0fake has no free addresses")
            && err.contains("InsufficientFreeAddressesInSubnet"),
        "{err}"
    );

    // EC2 failing with 5xx.
    let (mut w, mut m) = start("t3.small", targets(1, 0, 0)).await;
    m.grow().await;
    w.ec2.fail_always("*", Ec2ErrorKind::Server);
    w.add_pods(3).await;
    m.cycle().await;
    w.assert_pod_refused(&["EC2 is failing", "InternalError"])
        .await;

    // Only cooling IPs.
    let (mut w, mut m) = start_new(
        "t3.small",
        config(targets(0, 3, 0)),
        Duration::from_secs(30),
    )
    .await;
    m.grow().await;
    w.add_pods(3).await;
    for n in 1..=3 {
        w.del_pod(n).await;
    }
    w.assert_pod_refused(&[
        "3 of 3 IPs are in cooldown",
        "first becomes assignable in 30 s",
    ])
    .await;

    // Still growing (EC2 fine, the manager has not run yet).
    let (mut w, _m) = start("t3.small", targets(1, 0, 0)).await;
    w.assert_pod_refused(&["the pool is growing"]).await;
}

#[tokio::test]
async fn a_full_subnet_holds_growth_back_for_the_back_off() {
    let (mut w, mut m) = start("t3.small", targets(1, 0, 0)).await;
    w.ec2.set_subnet_capacity(3);
    m.grow().await;
    assert_eq!(w.pool().await, (1, 3));
    w.add_pod().await.unwrap();
    let r = m.grow().await;
    assert!(r.failed, "the new ENI does not fit the subnet");
    let calls = w.ec2.calls("CreateNetworkInterface");
    for _ in 0..3 {
        let r = m.grow().await;
        assert!(r.subnet_backoff);
    }
    assert_eq!(
        w.ec2.calls("CreateNetworkInterface"),
        calls,
        "no new attempt during the back-off"
    );
    w.clock.advance(Duration::from_millis(350));
    w.ec2.set_subnet_capacity(10);
    let r = m.grow().await;
    assert_eq!(
        (r.enis_added, r.ips_added),
        (1, 3),
        "tried again after the back-off"
    );
    assert!(w.client.health().subnet_full().is_none());
}

#[tokio::test]
async fn an_exhausted_assignment_wakes_the_manager_at_once() {
    let mut cfg = config(targets(0, 0, 0));
    cfg.timings.cycle = Duration::from_secs(3600);
    let (mut w, mut m) = start_new("t3.small", cfg, Duration::ZERO).await;
    let wake = w.state.pool_wanted();
    let state = w.state.clone();
    let run = async { m.run(wake).await };
    let t0 = tokio::time::Instant::now();
    let test = async {
        assert!(w.add_pod().await.is_err(), "empty pool");
        for _ in 0..100 {
            if state.with_datastore(Datastore::stats).await.total > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        () = test => {}
        () = run => unreachable!(),
    }
    assert!(tokio::time::Instant::now() - t0 < Duration::from_secs(2));
    assert_eq!(w.pool().await, (1, 3));
}

#[tokio::test]
async fn ec2_down_at_start_leaves_the_pool_to_metadata_and_recovers() {
    let ec2 = FakeEc2::new();
    let instance = ec2.launch("t3.small");
    let eni = ec2.primary_eni(&instance).id;
    ec2.assign_out_of_band(&eni, 2);
    ec2.fail_always("*", Ec2ErrorKind::Transport);
    let (mut w, mut m) = start_with(ec2, &instance, config(targets(1, 0, 0)), Duration::ZERO).await;
    let r = m.grow().await;
    assert_eq!(r.ips_added, 0);
    assert_eq!(w.pool().await, (1, 2), "what metadata shows");
    w.add_pod().await.unwrap();
    w.ec2.heal();
    m.cycle().await;
    assert_eq!(
        w.pool().await,
        (2, 6),
        "limits from the built-in table meanwhile; the pool grows once EC2 answers"
    );
    let md_ips = metadata::fetch_enis(&w.ec2.imds(&w.instance), w.ec2.primary_eni(&w.instance).mac)
        .await
        .unwrap()[0]
        .secondary_ips
        .len();
    assert_eq!(md_ips, 3);
}

/// The manager's configuration as the daemon builds it ([`ManagerConfig::from_config`]) from
/// `pairs` (and `MY_NODE_NAME`), with this module's fast timings.
fn config_from_env(pairs: &[(&str, &str)]) -> ManagerConfig {
    let mut env: std::collections::HashMap<&str, &str> = pairs.iter().copied().collect();
    env.insert(crate::config::MY_NODE_NAME, "node-1");
    let from_env = ManagerConfig::from_config(&crate::config::Config::from_env(&env).unwrap());
    ManagerConfig {
        timings: config(targets(1, 0, 0)).timings,
        ..from_env
    }
}

/// `ADDITIONAL_ENI_TAGS` and `CLUSTER_NAME`, read from the environment, tag the ENIs ipamd
/// creates and the primary ENI it manages, next to the instance id; keys containing
/// `k8s.amazonaws.com` are ipamd's and are dropped from `ADDITIONAL_ENI_TAGS`.
#[tokio::test]
async fn additional_eni_tags_and_cluster_name_tag_every_managed_eni() {
    use crate::cloud::ec2::{ENI_OWNER_TAG, ENI_OWNER_VALUE};
    use crate::config::{ADDITIONAL_ENI_TAGS, CLUSTER_NAME};
    let cfg = config_from_env(&[
        (
            ADDITIONAL_ENI_TAGS,
            r#"{"team":"net","k8s.amazonaws.com/mine":"x"}"#,
        ),
        (CLUSTER_NAME, "prod"),
    ]);
    let (mut w, mut m) = start_new("t3.small", cfg, Duration::ZERO).await;
    m.grow().await;
    for _ in 0..3 {
        w.add_pod().await.unwrap();
        m.cycle().await;
    }
    let enis = w.ec2.attached(&w.instance);
    assert!(enis.len() >= 2, "3 pods need a second ENI: {}", enis.len());
    for eni in &enis {
        let tag = |k: &str| eni.tags.get(k).map(String::as_str);
        assert_eq!(tag("team"), Some("net"), "{}: {:?}", eni.id, eni.tags);
        assert_eq!(tag(CLUSTER_NAME_TAG), Some("prod"), "{}", eni.id);
        assert_eq!(tag(ENI_OWNER_TAG), Some(ENI_OWNER_VALUE), "{}", eni.id);
        assert_eq!(
            tag(INSTANCE_ID_TAG),
            Some(w.instance.as_str()),
            "{}",
            eni.id
        );
        assert_eq!(tag("k8s.amazonaws.com/mine"), None, "{}", eni.id);
    }
}

/// Without the Kubernetes API no Node can be read: ENIs are managed with either value of
/// `AWS_MANAGE_ENIS_NON_SCHEDULABLE`, as the reference does when it cannot read its Node.
#[tokio::test]
async fn without_the_api_enis_are_managed_whatever_aws_manage_enis_non_schedulable_says() {
    use crate::config::AWS_MANAGE_ENIS_NON_SCHEDULABLE;
    for value in ["false", "true"] {
        let cfg = config_from_env(&[(AWS_MANAGE_ENIS_NON_SCHEDULABLE, value)]);
        let (mut w, mut m) = start_new("t3.small", cfg, Duration::ZERO).await;
        m.grow().await;
        assert_eq!(w.pool().await, (1, 3), "{value}: the primary ENI filled");
        w.add_pod().await.unwrap();
        m.cycle().await;
        assert_eq!(w.ec2_shape(), (2, 6), "{value}: a second ENI created");
        for n in 1..=w.pods {
            w.del_pod(n).await;
        }
        w.clock.advance(Duration::from_secs(120));
        m.cycle().await;
        assert_eq!(w.ec2_shape(), (1, 3), "{value}: the spare ENI freed");
    }
}

/// A Kubernetes Node whose facts the test changes, and the cluster's ENIConfigs; counts the
/// Node's reads, fails them while `down`, records the Node's Events.
#[derive(Debug, Default)]
struct FakeNode {
    facts: std::sync::Mutex<crate::k8s::NodeFacts>,
    reads: std::sync::atomic::AtomicU32,
    down: std::sync::atomic::AtomicBool,
    eni_configs:
        std::sync::Mutex<std::collections::BTreeMap<String, crate::k8s::eniconfig::EniConfigSpec>>,
    events: std::sync::Mutex<Vec<String>>,
}

impl FakeNode {
    fn cordon(&self, on: bool) {
        self.facts.lock().unwrap().unschedulable = on;
    }

    fn reads(&self) -> u32 {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl crate::k8s::NodeApi for FakeNode {
    fn node<'a>(&'a self, name: &'a str) -> crate::k8s::ApiFuture<'a, crate::k8s::NodeFacts> {
        Box::pin(async move {
            assert_eq!(name, "node-1");
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::k8s::KubeError::Config(
                    "API server unreachable".into(),
                ));
            }
            Ok(self.facts.lock().unwrap().clone())
        })
    }

    fn eni_config<'a>(
        &'a self,
        name: &'a str,
    ) -> crate::k8s::ApiFuture<'a, Option<crate::k8s::eniconfig::EniConfigSpec>> {
        Box::pin(async move { Ok(self.eni_configs.lock().unwrap().get(name).cloned()) })
    }

    fn warn_node<'a>(
        &'a self,
        warning: &'a crate::k8s::PodWarning,
    ) -> crate::k8s::ApiFuture<'a, ()> {
        Box::pin(async move {
            self.events.lock().unwrap().push(format!(
                "{} {}: {}",
                warning.node, warning.reason, warning.message
            ));
            Ok(())
        })
    }
}

async fn start_with_fake_node(
    instance_type: &str,
    cfg: ManagerConfig,
    manage_when_unschedulable: bool,
    node: &Arc<FakeNode>,
) -> (World, Manager) {
    let ec2 = FakeEc2::new();
    let instance = ec2.launch(instance_type);
    let check = super::NodeCheck::new(
        Arc::clone(node) as Arc<dyn crate::k8s::NodeApi>,
        "node-1".into(),
        manage_when_unschedulable,
    );
    start_with_node(ec2, &instance, cfg, Duration::ZERO, Some(check)).await
}

/// `AWS_MANAGE_ENIS_NON_SCHEDULABLE=false` (the default) with the Node readable: a cordoned
/// node neither grows its pool nor frees ENIs, and says why; uncordoned, both resume. A Node
/// that cannot be read counts as schedulable (the reference's choice).
#[tokio::test]
async fn a_cordoned_node_neither_grows_nor_frees_enis_until_uncordoned() {
    let node = Arc::new(FakeNode::default());
    let (mut w, mut m) =
        start_with_fake_node("t3.small", config(targets(1, 0, 0)), false, &node).await;
    m.grow().await;
    assert_eq!(w.pool().await, (1, 3));
    node.cordon(true);
    w.add_pods(3).await;
    let r = m.cycle().await;
    assert!(r.unschedulable && r.ips_added == 0, "{r:?}");
    assert_eq!(w.ec2_shape(), (1, 3), "no ENI while cordoned");
    assert!(w.state.node_report().unschedulable);
    w.assert_pod_refused(&[
        "cordoned",
        "AWS_MANAGE_ENIS_NON_SCHEDULABLE=false",
        "kubectl uncordon",
    ])
    .await;
    // The Node is read only when the pool would change.
    let reads = node.reads();
    node.cordon(false);
    m.cycle().await;
    assert!(node.reads() > reads);
    assert_eq!(w.ec2_shape(), (3, 9), "uncordoned: the pool grows");
    assert!(!w.state.node_report().unschedulable);
    // Empty again (pod 4 was refused), and old enough: freeing the spare ENIs waits for the
    // uncordon too.
    for n in 1..=3 {
        w.del_pod(n).await;
    }
    w.clock.advance(Duration::from_secs(120));
    node.cordon(true);
    m.cycle().await;
    m.cycle().await;
    assert_eq!(w.ec2_shape(), (3, 9), "no ENI freed while cordoned");
    node.cordon(false);
    m.cycle().await;
    m.cycle().await;
    assert_eq!(w.ec2_shape(), (1, 3), "uncordoned: the spare ENIs freed");
    // The API down: managed as schedulable.
    node.down.store(true, std::sync::atomic::Ordering::SeqCst);
    node.cordon(true);
    w.add_pods(3).await;
    m.cycle().await;
    assert_eq!(
        w.ec2_shape(),
        (3, 9),
        "an unreadable Node counts as schedulable"
    );
}

/// `AWS_MANAGE_ENIS_NON_SCHEDULABLE=true`: the Node's cordon is not even read.
#[tokio::test]
async fn with_manage_enis_non_schedulable_a_cordon_changes_nothing() {
    let node = Arc::new(FakeNode::default());
    node.cordon(true);
    let (mut w, mut m) =
        start_with_fake_node("t3.small", config(targets(1, 0, 0)), true, &node).await;
    let reads = node.reads();
    m.grow().await;
    w.add_pods(3).await;
    m.cycle().await;
    assert_eq!(w.ec2_shape(), (2, 6));
    assert_eq!(node.reads(), reads, "no cordon check");
}

/// Max pods is the Node's capacity when the Node says (the reference with the API), else the
/// instance type's formula; the ENI x IP limit holds either way.
#[tokio::test]
async fn max_pods_comes_from_the_nodes_capacity() {
    let node = Arc::new(FakeNode::default());
    node.facts.lock().unwrap().max_pods = Some(4);
    let (mut w, mut m) =
        start_with_fake_node("t3.small", config(targets(1, 0, 0)), false, &node).await;
    let limits = m.situation().limits().unwrap();
    assert_eq!((limits.max_pods, limits.max_pods_from_node), (4, true));
    assert_eq!(w.state.node_report().limits.unwrap().max_pods, 4);
    m.grow().await;
    w.add_pods(3).await;
    m.cycle().await;
    // 4 max pods: the pool stops at 4 addresses, not at the formula's 11.
    w.add_pod().await.unwrap();
    m.cycle().await;
    assert_eq!(w.ec2_shape(), (2, 4));
    w.assert_pod_refused(&["max pods' worth of IPs (4, the Node's capacity"])
        .await;
    // Without a number in the Node, the formula.
    let node = Arc::new(FakeNode::default());
    let (_, m) = start_with_fake_node("t3.small", config(targets(1, 0, 0)), false, &node).await;
    let limits = m.situation().limits().unwrap();
    assert_eq!((limits.max_pods, limits.max_pods_from_node), (11, false));
}

mod prefixes;
mod subnets;

/// The node label naming the ENIConfig in the custom networking tests (both keys' default).
const ENICONFIG_KEY: &str = "k8s.amazonaws.com/eniConfig";

/// A manager with custom networking on `instance` of `ec2` (which gets the subnet
/// `subnet-0a0b0c0d`, 10.0.4.0/24, in the node's zone), the Node labelled for the ENIConfig
/// `pods-a`.
async fn start_custom(
    ec2: FakeEc2,
    instance: &str,
    mut cfg: ManagerConfig,
    node: &Arc<FakeNode>,
) -> (World, Manager) {
    ec2.add_subnet(
        "subnet-0a0b0c0d",
        "10.0.4.0/24",
        crate::testing::fake_ec2::AVAILABILITY_ZONE,
        &[],
    );
    node.facts
        .lock()
        .unwrap()
        .labels
        .insert(ENICONFIG_KEY.into(), "pods-a".into());
    cfg.custom_network = Some(super::EniConfigKeys {
        annotation: ENICONFIG_KEY.into(),
        label: ENICONFIG_KEY.into(),
    });
    let check = super::NodeCheck::new(
        Arc::clone(node) as Arc<dyn crate::k8s::NodeApi>,
        "node-1".into(),
        false,
    );
    start_with_node(ec2, instance, cfg, Duration::ZERO, Some(check)).await
}

/// Custom networking wins over subnet discovery (a tagged subnet with more room is not used),
/// and with prefix delegation the ENIConfig subnet's ENIs take /28 prefixes; the primary ENI
/// gets none.
#[tokio::test]
async fn custom_networking_wins_over_subnet_discovery_and_takes_prefixes() {
    let node = Arc::new(FakeNode::default());
    node.eni_configs.lock().unwrap().insert(
        "pods-a".into(),
        crate::k8s::eniconfig::EniConfigSpec {
            subnet: "subnet-0a0b0c0d".into(),
            security_groups: Vec::new(),
        },
    );
    let ec2 = FakeEc2::new();
    ec2.add_subnet(
        "subnet-0e0e0e0e",
        "10.0.8.0/22",
        crate::testing::fake_ec2::AVAILABILITY_ZONE,
        &[(crate::pool::subnets::ROLE_CNI_TAG, "1")],
    );
    let instance = ec2.launch("m5.large");
    let mut cfg = config(Targets {
        warm_prefix: 1,
        ..targets(0, 0, 0)
    });
    cfg.subnet_discovery = true;
    cfg.prefix_delegation = true;
    let (mut w, mut m) = start_custom(ec2, &instance, cfg, &node).await;
    m.cycle().await;
    let cidr: ipnet::Ipv4Net = "10.0.4.0/24".parse().unwrap();
    let mut ips = Vec::new();
    for _ in 0..20 {
        ips.push(w.add_pod().await.unwrap());
        m.cycle().await;
    }
    assert!(ips.iter().all(|ip| cidr.contains(ip)), "{ips:?}");
    let enis = w.ec2.attached(&w.instance);
    assert!(enis.len() >= 2, "{enis:?}");
    assert!(
        enis[0].prefixes.is_empty() && enis[0].ips.len() == 1,
        "the primary ENI: {:?}",
        enis[0]
    );
    for e in &enis[1..] {
        assert_eq!(e.subnet_id, "subnet-0a0b0c0d", "{e:?}");
        assert!(!e.prefixes.is_empty(), "{e:?}");
        assert!(
            e.prefixes.iter().all(|p| cidr.contains(&p.network())),
            "{e:?}"
        );
        // No groups in the ENIConfig: the primary ENI's.
        assert_eq!(e.security_groups, enis[0].security_groups, "{e:?}");
    }
}

/// Custom networking (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`): ENIs go into the ENIConfig's subnet with its groups, the primary ENI's
/// addresses never go to pods, and a missing ENIConfig holds the pool back (situation, one Node
/// Event per 5 minutes) until it is created.
#[tokio::test]
async fn custom_networking_puts_enis_in_the_eniconfig_subnet_and_waits_for_a_missing_one() {
    let node = Arc::new(FakeNode::default());
    let ec2 = FakeEc2::new();
    let instance = ec2.launch("t3.small");
    // Addresses on the primary ENI from before custom networking: given back, never to pods.
    let primary = ec2.primary_eni(&instance).id;
    let old = ec2.assign_out_of_band(&primary, 2);
    let (mut w, mut m) = start_custom(ec2, &instance, config(targets(1, 0, 0)), &node).await;
    // t3.small with custom networking: 2 ENIs x 3 IPs for pods, max pods 2 x 3 + 2.
    let limits = m.situation().limits().unwrap();
    assert_eq!((limits.max_pods, limits.pod_ip_capacity()), (8, 6));

    // No ENIConfig "pods-a" yet: no ENI, the reason everywhere.
    let r = m.cycle().await;
    assert!(r.subnet_backoff && r.enis_added == 0, "{r:?}");
    assert_eq!(w.ec2.attached(&w.instance).len(), 1);
    assert_eq!(
        w.ec2.primary_eni(&w.instance).ips.len(),
        1,
        "the primary ENI's old addresses {old:?} were given back"
    );
    let says = [
        "custom networking: ENIConfig \"pods-a\" (named by node label k8s.amazonaws.com/eniConfig) does not exist",
        "ipamd creates no ENI for pods",
    ];
    w.assert_pod_refused(&says).await;
    let events = node.events.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].starts_with("node-1 ENIConfigNotUsable: aws-node on node-1 creates no ENI for pods: ENIConfig \"pods-a\""),
        "{events:?}"
    );
    m.cycle().await;
    assert_eq!(
        node.events.lock().unwrap().len(),
        1,
        "one Event per 5 minutes"
    );
    w.clock.advance(Duration::from_secs(301));
    m.cycle().await;
    assert_eq!(node.events.lock().unwrap().len(), 2);

    // A bad ENIConfig is named with what to fix.
    node.eni_configs.lock().unwrap().insert(
        "pods-a".into(),
        crate::k8s::eniconfig::EniConfigSpec {
            subnet: "subnet-0fff".into(),
            security_groups: vec!["sg-0123".into()],
        },
    );
    w.clock.advance(Duration::from_secs(5));
    m.cycle().await;
    w.assert_pod_refused(&["subnet-0fff is not a subnet of the node's VPC"])
        .await;

    // Fixed: the next cycle creates the ENI there, with the ENIConfig's groups.
    node.eni_configs.lock().unwrap().insert(
        "pods-a".into(),
        crate::k8s::eniconfig::EniConfigSpec {
            subnet: "subnet-0a0b0c0d".into(),
            security_groups: vec!["sg-0123".into()],
        },
    );
    m.cycle().await;
    let mut ips = Vec::new();
    for _ in 0..4 {
        ips.push(w.add_pod().await.unwrap());
        m.cycle().await;
    }
    let enis = w.ec2.attached(&w.instance);
    assert_eq!(enis.len(), 3, "{enis:?}");
    let cidr: ipnet::Ipv4Net = "10.0.4.0/24".parse().unwrap();
    for e in &enis[1..] {
        assert_eq!(e.subnet_id, "subnet-0a0b0c0d", "{e:?}");
        assert_eq!(e.security_groups, vec!["sg-0123".to_owned()]);
        assert!(e.ips.iter().all(|ip| cidr.contains(ip)), "{e:?}");
    }
    assert_eq!(enis[0].ips.len(), 1, "nothing added to the primary ENI");
    assert!(ips.iter().all(|ip| cidr.contains(ip)), "{ips:?}");
    // Full: the limit says the primary ENI is not used.
    w.add_pods(2).await;
    m.cycle().await;
    w.assert_pod_refused(&[
        "at its limit of 2 ENIs x 3 IPs = 6 pod IPs (t3.small; custom networking: the primary ENI's addresses are not used for pods",
    ])
    .await;
}
