//! Prefix delegation in the pool manager, against the fake EC2 (which delegates aligned /28s
//! within the instance type's address slots): growth by prefixes up to max pods, shrinking
//! back to the warm target, the /32 fallback on a fragmented subnet, and Xen instances that
//! keep secondary IPs.

use super::*;

fn pd_targets(warm_prefix: u32, warm_ip: u32, minimum_ip: u32) -> Targets {
    Targets {
        warm_prefix,
        ..targets(1, warm_ip, minimum_ip)
    }
}

async fn start_pd(instance_type: &str, t: Targets) -> (World, Manager) {
    let mut cfg = config(t);
    cfg.prefix_delegation = true;
    cfg.timings.decrease_interval = Duration::from_secs(30);
    start_new(instance_type, cfg, Duration::ZERO).await
}

impl World {
    /// (ENIs attached, prefixes on them, secondary addresses on them) as EC2 sees it.
    fn ec2_prefix_shape(&self) -> (usize, usize, usize) {
        let enis = self.ec2.attached(&self.instance);
        (
            enis.len(),
            enis.iter().map(|e| e.prefixes.len()).sum(),
            enis.iter().map(|e| e.ips.len() - 1).sum(),
        )
    }

    /// The pool's prefixes, which must be exactly EC2's prefixes of the attached ENIs.
    pub(super) async fn assert_prefixes_match_ec2(&self) {
        let mut pool: Vec<(String, ipnet::Ipv4Net)> = self
            .state
            .with_datastore(|ds| {
                ds.enis()
                    .into_iter()
                    .flat_map(|v| {
                        v.prefixes
                            .into_iter()
                            .map(move |p| (v.spec.id.clone(), p.prefix))
                    })
                    .collect()
            })
            .await;
        pool.sort();
        let mut ec2: Vec<(String, ipnet::Ipv4Net)> = self
            .ec2
            .attached(&self.instance)
            .into_iter()
            .flat_map(|e| {
                e.prefixes
                    .iter()
                    .map(|p| (e.id.clone(), *p))
                    .collect::<Vec<_>>()
            })
            .collect();
        ec2.sort();
        assert_eq!(pool, ec2, "the pool and EC2 disagree on prefixes");
    }

    /// Adds `n` pods one at a time, a manager cycle after each, and checks after every cycle
    /// that no ENI uses more than `slots` address slots.
    pub(super) async fn add_pods_cycling(&mut self, m: &mut Manager, n: u32, slots: usize) {
        for _ in 0..n {
            self.add_pod().await.unwrap();
            m.cycle().await;
            self.assert_slots_within(3, slots);
        }
    }

    /// Every attached ENI uses at most `slots` address slots (secondary addresses + prefixes).
    fn assert_slots_within(&self, max_enis: usize, slots: usize) {
        let enis = self.ec2.attached(&self.instance);
        assert!(enis.len() <= max_enis, "{} ENIs attached", enis.len());
        for e in enis {
            let used = e.ips.len() - 1 + e.prefixes.len();
            assert!(used <= slots, "{} uses {used} slots", e.id);
        }
    }
}

#[tokio::test]
async fn m5_large_serves_110_pods_from_prefixes_of_the_primary_eni() {
    let (mut w, mut m) = start_pd("m5.large", pd_targets(1, 0, 0)).await;
    m.grow().await;
    assert_eq!(w.pool().await, (1, 16), "one warm prefix at start");
    assert_eq!(w.ec2_prefix_shape(), (1, 1, 0));
    w.add_pods_cycling(&mut m, 110, 9).await;
    // 110 pods on 7 prefixes (112 addresses): at max pods the pool stops growing.
    assert_eq!(w.ec2_prefix_shape(), (1, 7, 0));
    assert_eq!(w.pool().await, (1, 112));
    assert_eq!(w.ec2.calls("CreateNetworkInterface"), 0);
    w.assert_prefixes_match_ec2().await;
    let unique: BTreeSet<Ipv4Addr> = w
        .state
        .with_datastore(|ds| {
            ds.assignments()
                .into_iter()
                .map(|a| a.ipv4().unwrap())
                .collect()
        })
        .await;
    assert_eq!(unique.len(), 110, "no address twice");
    // The two spare addresses go, then the node is at max pods.
    w.add_pods(2).await;
    m.cycle().await;
    w.assert_pod_refused(&["max pods", "110"]).await;
    assert_eq!(w.ec2_prefix_shape(), (1, 7, 0));
}

#[tokio::test]
async fn deleting_pods_gives_prefixes_back_down_to_the_warm_target() {
    let (mut w, mut m) = start_pd("m5.large", pd_targets(1, 0, 0)).await;
    m.grow().await;
    w.add_pods_cycling(&mut m, 40, 9).await;
    assert_eq!(
        w.ec2_prefix_shape(),
        (1, 4, 0),
        "40 pods: 4 prefixes, one free"
    );
    for n in 1..=40 {
        w.del_pod(n).await;
    }
    w.clock.advance(Duration::from_secs(31));
    m.cycle().await;
    assert_eq!(
        w.ec2_prefix_shape(),
        (1, 1, 0),
        "one free prefix stays warm"
    );
    assert_eq!(w.pool().await, (1, 16));
    w.assert_prefixes_match_ec2().await;
    assert!(w.ec2.calls("UnassignPrivateIpAddresses") >= 1);
}

#[tokio::test]
async fn warm_ip_targets_count_in_whole_prefixes() {
    // WARM_IP_TARGET=5, MINIMUM_IP_TARGET=30: 2 prefixes at start.
    let (mut w, mut m) = start_pd("m5.large", pd_targets(1, 5, 30)).await;
    m.grow().await;
    assert_eq!(w.ec2_prefix_shape(), (1, 2, 0));
    w.add_pods(28).await;
    m.cycle().await;
    // 28 assigned + 5 warm = 33 > 32: a third prefix.
    assert_eq!(w.ec2_prefix_shape(), (1, 3, 0));
}

#[tokio::test]
async fn a_fragmented_subnet_falls_back_to_secondary_ips_and_pods_still_start() {
    let (mut w, mut m) = start_pd("m5.large", pd_targets(1, 0, 0)).await;
    w.ec2
        .fail_next("AssignPrivateIpAddresses", Ec2ErrorKind::NoFreePrefix, 1);
    m.grow().await;
    // One prefix (16 addresses) was wanted; the primary ENI has 9 free slots: 9 /32s. Still
    // short of 16 available addresses, the pool then gets a prefix on a new ENI (EC2 had one
    // again).
    assert_eq!(w.ec2_prefix_shape(), (2, 1, 9));
    assert_eq!(w.pool().await, (2, 9 + 16));
    assert_eq!(w.ec2.attached(&w.instance)[0].ips.len(), 1 + 9);
    // Prefix addresses go first, even on a higher ENI; the fallback /32s serve after them.
    let ip = w.add_pod().await.unwrap();
    assert!(
        w.ec2.attached(&w.instance)[1].prefixes[0].contains(&ip),
        "{ip}"
    );
    let text = crate::metrics::encode(&w.registry).unwrap();
    assert!(text.contains("awscni_prefix_fallback_ips 9"), "{text}");
}

#[tokio::test]
async fn a_new_eni_comes_with_prefixes_when_the_primary_is_full() {
    // t3.small: 3 slots per ENI, max pods 110 with prefixes.
    let (mut w, mut m) = start_pd("t3.small", pd_targets(1, 0, 0)).await;
    m.grow().await;
    w.add_pods_cycling(&mut m, 48, 3).await;
    // 48 pods fill the primary's 3 prefixes; the warm prefix is on a new ENI.
    assert_eq!(w.ec2_prefix_shape(), (2, 4, 0));
    assert_eq!(w.ec2.calls("CreateNetworkInterface"), 1);
    let new = &w.ec2.attached(&w.instance)[1];
    assert_eq!(
        (new.ips.len(), new.prefixes.len()),
        (1, 1),
        "created with one prefix"
    );
    w.assert_prefixes_match_ec2().await;
}

#[tokio::test]
async fn xen_instances_keep_secondary_ips_with_prefix_delegation_asked_for() {
    let (w, mut m) = start_pd("c4.large", pd_targets(1, 0, 0)).await;
    m.grow().await;
    assert_eq!(
        w.ec2_prefix_shape(),
        (1, 0, 9),
        "WARM_ENI_TARGET=1: a whole ENI of /32s"
    );
    let limits = m.situation.limits().unwrap();
    assert!(!limits.prefix_delegation);
    assert_eq!(limits.max_pods, 29);
}

#[tokio::test]
async fn a_burst_of_110_pods_on_a_cold_node_waits_for_prefixes_and_takes_few_ec2_calls() {
    let (mut w, mut m) = start_pd("m5.large", pd_targets(1, 0, 0)).await;
    m.grow().await;
    assert_eq!(w.ec2_prefix_shape(), (1, 1, 0), "cold: one warm prefix");
    let answers = w.burst(&mut m, 110, 16, Duration::from_secs(20)).await;
    let ips: BTreeSet<Ipv4Addr> = answers
        .into_iter()
        .map(|a| a.expect("every pod of the burst gets an address"))
        .collect();
    assert_eq!(ips.len(), 110, "no address twice");
    assert_eq!(w.ec2_prefix_shape(), (1, 7, 0), "7 prefixes, no new ENI");
    // Without the waiting pods counted, each cycle adds one prefix: 7 calls. With them, the
    // growth follows the burst.
    let calls = w.ec2.calls("AssignPrivateIpAddresses");
    assert!(calls <= 4, "{calls} AssignPrivateIpAddresses calls");
    w.assert_prefixes_match_ec2().await;
    // At max pods nothing more can come: the next pod is refused at once, not after the wait.
    let refused = w.burst(&mut m, 3, 3, Duration::from_secs(30)).await;
    assert!(refused.iter().any(Result::is_err), "{refused:?}");
    for err in refused.into_iter().filter_map(Result::err) {
        assert!(err.to_string().contains("max pods"), "{err}");
    }
}
