//! Subnet discovery, the subnet report and `MANAGE_UNTAGGED_ENI` in the pool manager, against
//! the fake EC2 with several subnets.

use super::*;
use crate::pool::subnets::ROLE_CNI_TAG;
use crate::testing::fake_ec2::SUBNET_ID;

const ZONE: &str = crate::testing::fake_ec2::AVAILABILITY_ZONE;

/// An extra subnet: id, CIDR, zone, tags.
type ExtraSubnet<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A t3.small whose own subnet has room for `node_room` more addresses, with the extra subnets
/// given, and the manager started with `cfg`.
async fn node_with_subnets(
    node_room: usize,
    subnets: &[ExtraSubnet<'_>],
    cfg: ManagerConfig,
) -> (World, Manager) {
    let ec2 = FakeEc2::new();
    for (id, cidr, zone, tags) in subnets {
        ec2.add_subnet(id, cidr, zone, tags);
    }
    let instance = ec2.launch("t3.small");
    ec2.set_subnet_capacity(node_room);
    start_with(ec2, &instance, cfg, Duration::ZERO).await
}

fn subnet_of(w: &World, eni: &str) -> String {
    w.ec2.eni(eni).unwrap().subnet_id
}

#[tokio::test]
async fn new_enis_go_to_the_tagged_subnet_with_room_when_the_node_subnet_is_nearly_full() {
    let tagged: &[(&str, &str)] = &[(ROLE_CNI_TAG, "1")];
    let (mut w, mut m) = node_with_subnets(
        3,
        &[
            ("subnet-pods", "10.0.4.0/24", ZONE, tagged),
            ("subnet-other-zone", "10.0.8.0/22", "us-west-2b", tagged),
        ],
        config(targets(1, 0, 0)),
    )
    .await;
    // The primary ENI fills from the node's subnet (3 left): the warm pool fits.
    m.grow().await;
    assert_eq!(w.pool().await, (1, 3));
    for _ in 0..5 {
        w.add_pod().await.unwrap();
        m.cycle().await;
    }
    let enis = w.ec2.attached(&w.instance);
    assert_eq!(enis.len(), 3, "t3.small: 3 ENIs for 5 pods and a warm ENI");
    for e in &enis[1..] {
        assert_eq!(subnet_of(&w, &e.id), "subnet-pods", "{e:?}");
        let cidr: ipnet::Ipv4Net = "10.0.4.0/24".parse().unwrap();
        assert!(e.ips.iter().all(|ip| cidr.contains(ip)), "{e:?}");
        assert_eq!(e.tags.get(INSTANCE_ID_TAG), Some(&w.instance));
    }
    // Brought up with that subnet's prefix and gateway (10.0.4.1), not the node's.
    let up = w.host.brought_up();
    assert_eq!(up.len(), 2);
    for eni in &up {
        assert_eq!(eni.subnet, "10.0.4.0/24".parse::<ipnet::Ipv4Net>().unwrap());
        assert_eq!(eni.gateway(), Ipv4Addr::new(10, 0, 4, 1));
    }
    // Pods got addresses of the tagged subnet once the primary ENI's were taken.
    w.assert_pool_matches_ec2(&BTreeSet::new()).await;
    let node = w.state.node_report();
    let ids: Vec<&str> = node.subnets.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["subnet-pods", SUBNET_ID],
        "candidates, most free first"
    );
}

#[tokio::test]
async fn a_subnet_out_of_addresses_passes_the_eni_to_the_next_candidate_at_once() {
    let (w, mut m) = node_with_subnets(
        100,
        &[("subnet-small", "10.0.4.0/28", ZONE, &[(ROLE_CNI_TAG, "1")])],
        config(targets(0, 5, 0)),
    )
    .await;
    // The node's subnet shows the most free addresses but EC2 refuses the ENI there.
    w.ec2
        .fail_next("CreateNetworkInterface", Ec2ErrorKind::SubnetFull, 1);
    let r = m.grow().await;
    assert_eq!((r.enis_added, r.ips_added), (1, 5), "{r:?}");
    assert_eq!(w.ec2.calls("CreateNetworkInterface"), 2);
    let second = &w.ec2.attached(&w.instance)[1];
    assert_eq!(subnet_of(&w, &second.id), "subnet-small");
}

#[tokio::test]
async fn excluded_and_other_clusters_subnets_are_never_used() {
    let mut cfg = config(targets(1, 0, 0));
    cfg.cluster_name = Some("prod".into());
    let (mut w, mut m) = node_with_subnets(
        3,
        &[
            ("subnet-off", "10.0.4.0/22", ZONE, &[(ROLE_CNI_TAG, "0")]),
            (
                "subnet-dev",
                "10.0.8.0/22",
                ZONE,
                &[
                    (ROLE_CNI_TAG, "1"),
                    ("cni.networking.k8s.aws/cluster/dev", "owned"),
                ],
            ),
            ("subnet-untagged", "10.0.12.0/22", ZONE, &[]),
        ],
        cfg,
    )
    .await;
    m.grow().await;
    for _ in 0..6 {
        let _ = w.add_pod().await;
        m.cycle().await;
    }
    let enis = w.ec2.attached(&w.instance);
    assert_eq!(
        enis.len(),
        1,
        "no subnet but the full node subnet may take ENIs"
    );
    for e in w.ec2.all_enis() {
        assert_eq!(e.subnet_id, SUBNET_ID, "{e:?}");
    }
    w.assert_pod_refused(&["EC2 cannot add addresses: subnet subnet-0fake has no free addresses"])
        .await;
}

#[tokio::test]
async fn discovery_off_uses_the_node_subnet_and_names_it_when_full() {
    let mut cfg = config(targets(1, 0, 0));
    cfg.subnet_discovery = false;
    let (mut w, mut m) = node_with_subnets(
        3,
        &[("subnet-pods", "10.0.4.0/22", ZONE, &[(ROLE_CNI_TAG, "1")])],
        cfg,
    )
    .await;
    m.grow().await;
    w.add_pods(3).await;
    m.cycle().await;
    assert_eq!(w.ec2.attached(&w.instance).len(), 1);
    assert!(w.ec2.all_enis().iter().all(|e| e.subnet_id == SUBNET_ID));
    w.assert_pod_refused(&[
        "subnet subnet-0fake has no free addresses",
        "ENABLE_SUBNET_DISCOVERY=true",
    ])
    .await;
}

#[tokio::test]
async fn describe_subnets_refused_falls_back_to_the_node_subnet() {
    let (mut w, mut m) = node_with_subnets(
        100,
        &[("subnet-pods", "10.0.4.0/22", ZONE, &[(ROLE_CNI_TAG, "1")])],
        config(targets(1, 0, 0)),
    )
    .await;
    w.ec2
        .fail_always("DescribeSubnets", Ec2ErrorKind::Unauthorized);
    m.grow().await;
    for _ in 0..2 {
        w.add_pod().await.unwrap();
        m.cycle().await;
    }
    assert_eq!(w.ec2.attached(&w.instance).len(), 2);
    assert!(w.ec2.all_enis().iter().all(|e| e.subnet_id == SUBNET_ID));
}

#[tokio::test]
async fn the_low_address_warning_follows_the_threshold() {
    // t3.small, WARM_ENI_TARGET=1: one more node takes 3 + 1 = 4 addresses.
    let mut cfg = config(targets(1, 0, 0));
    cfg.timings.subnet_report = Duration::ZERO;
    cfg.timings.subnet_ttl = Duration::ZERO;
    let (w, mut m) = node_with_subnets(
        10,
        &[("subnet-pods", "10.0.4.0/28", ZONE, &[(ROLE_CNI_TAG, "1")])],
        cfg,
    )
    .await;
    m.cycle().await;
    let low = |w: &World| -> Vec<(String, u32, bool)> {
        w.state
            .node_report()
            .subnets
            .iter()
            .map(|s| (s.id.clone(), s.available_ips, s.low))
            .collect()
    };
    // The node's subnet: 10 - 3 (primary's pool) = 7 free; subnet-pods: 16 - 5 = 11.
    assert_eq!(
        low(&w),
        [
            ("subnet-pods".to_owned(), 11, false),
            (SUBNET_ID.to_owned(), 7, false)
        ]
    );
    assert!(
        w.state
            .node_report()
            .subnets
            .iter()
            .all(|s| s.one_node_takes == 4)
    );
    w.ec2.set_subnet_capacity(3);
    m.cycle().await;
    assert_eq!(
        low(&w),
        [
            ("subnet-pods".to_owned(), 11, false),
            (SUBNET_ID.to_owned(), 3, true)
        ]
    );
    let text = crate::metrics::encode(&w.registry).unwrap();
    assert!(
        text.contains(r#"awscni_subnet_low_ips{subnet_id="subnet-0fake"} 1"#)
            && text.contains(r#"awscni_subnet_available_ips{subnet_id="subnet-pods"} 11"#),
        "{text}"
    );
}

#[tokio::test]
async fn untagged_enis_are_left_alone_with_manage_untagged_eni_false() {
    let ec2 = FakeEc2::new();
    let instance = ec2.launch("t3.small");
    // Attached by someone else, with addresses and no instance_id tag.
    let foreign = ec2.create_detached("attached by hand", &[]);
    ec2.assign_out_of_band(&foreign, 2);
    // One ipamd created before (tagged with this instance).
    let ours = ec2.create_detached(
        &format!("aws-K8S-{instance}"),
        &[(INSTANCE_ID_TAG, instance.as_str())],
    );
    ec2.assign_out_of_band(&ours, 1);
    {
        use crate::cloud::ec2::Ec2Api;
        ec2.attach_network_interface(&foreign, &instance, 1)
            .await
            .unwrap();
        ec2.attach_network_interface(&ours, &instance, 2)
            .await
            .unwrap();
    }
    let mut cfg = config(targets(0, 6, 0));
    cfg.manage_untagged_eni = false;
    let (mut w, mut m) = start_with(ec2, &instance, cfg, Duration::ZERO).await;
    assert_eq!(m.unmanaged().iter().collect::<Vec<_>>(), [&foreign]);
    for _ in 0..5 {
        let _ = w.add_pod().await;
        m.cycle().await;
    }
    let foreign_ips = w.ec2.eni(&foreign).unwrap().ips;
    let assigned: Vec<Ipv4Addr> = w
        .state
        .with_datastore(|ds| ds.assignments())
        .await
        .into_iter()
        .map(|a| a.ipv4().unwrap())
        .collect();
    assert!(!assigned.is_empty());
    assert!(
        assigned.iter().all(|ip| !foreign_ips.contains(ip)),
        "{assigned:?} vs {foreign_ips:?}"
    );
    assert!(
        !w.ec2
            .eni(&foreign)
            .unwrap()
            .tags
            .contains_key(INSTANCE_ID_TAG),
        "ipamd never tags an ENI it does not manage"
    );
    assert_eq!(
        w.ec2.eni(&foreign).unwrap().ips.len(),
        3,
        "its addresses untouched"
    );
    let pool_enis: Vec<String> = w
        .state
        .with_datastore(|ds| ds.enis())
        .await
        .into_iter()
        .map(|v| v.spec.id)
        .collect();
    assert!(!pool_enis.contains(&foreign), "{pool_enis:?}");
    assert!(pool_enis.contains(&ours), "{pool_enis:?}");
}

#[tokio::test]
async fn enis_of_a_subnet_excluded_later_serve_no_new_pod_and_leave_when_empty() {
    let tagged: &[(&str, &str)] = &[(ROLE_CNI_TAG, "1")];
    let mut cfg = config(targets(1, 0, 0));
    cfg.timings.subnet_report = Duration::ZERO;
    cfg.timings.min_eni_age = Duration::ZERO;
    let (mut w, mut m) = node_with_subnets(
        3,
        &[
            ("subnet-a", "10.0.4.0/24", ZONE, tagged),
            ("subnet-b", "10.0.5.0/26", ZONE, tagged),
        ],
        cfg,
    )
    .await;
    m.prescale().await;
    for _ in 0..4 {
        w.add_pod().await.unwrap();
        m.cycle().await;
    }
    // Pods 1-3 on the primary ENI, pod 4 on an ENI in subnet-a (most free addresses).
    let second = w.ec2.attached(&w.instance)[1].id.clone();
    assert_eq!(subnet_of(&w, &second), "subnet-a");
    // The operator excludes subnet-a.
    w.ec2.tag_subnet("subnet-a", ROLE_CNI_TAG, "0");
    m.cycle().await;
    let view = w.state.with_datastore(|ds| ds.eni(&second)).await.unwrap();
    assert!(view.excluded);
    assert_eq!(
        (view.total, view.assigned),
        (1, 1),
        "only pod 4's address is left"
    );
    assert_eq!(
        w.ec2.eni(&second).unwrap().ips.len(),
        2,
        "the free ones went back to EC2"
    );
    // New pods get addresses elsewhere (a new ENI in subnet-b), never in subnet-a.
    let a: ipnet::Ipv4Net = "10.0.4.0/24".parse().unwrap();
    for _ in 0..3 {
        let ip = w.add_pod().await.unwrap();
        assert!(!a.contains(&ip), "{ip}");
        m.cycle().await;
    }
    assert!(
        w.ec2
            .attached(&w.instance)
            .iter()
            .any(|e| e.subnet_id == "subnet-b")
    );
    // Pod 4 leaves: its ENI is freed at once (cooldown 0 in this world).
    w.del_pod(4).await;
    m.cycle().await;
    assert!(
        w.ec2.eni(&second).is_none(),
        "the excluded subnet's ENI is deleted"
    );
}

#[tokio::test]
async fn with_prefixes_new_enis_prefer_a_subnet_that_still_has_an_aligned_28() {
    let tagged: &[(&str, &str)] = &[(ROLE_CNI_TAG, "1")];
    let mut cfg = config(Targets {
        warm_prefix: 1,
        ..targets(1, 0, 0)
    });
    cfg.prefix_delegation = true;
    // "subnet-pods" has the most free addresses (tried first) but no free aligned /28.
    let (mut w, mut m) =
        node_with_subnets(1000, &[("subnet-pods", "10.0.4.0/22", ZONE, tagged)], cfg).await;
    w.ec2.fragment_subnet("subnet-pods");
    m.grow().await;
    // t3.small: 3 prefixes per ENI. 100 pods: two new ENIs.
    w.add_pods_cycling(&mut m, 100, 3).await;
    let enis = w.ec2.attached(&w.instance);
    assert_eq!(enis.len(), 3);
    for e in &enis[1..] {
        assert_eq!(subnet_of(&w, &e.id), SUBNET_ID, "{e:?}");
        assert!(!e.prefixes.is_empty(), "{e:?}");
    }
    // The fragmented subnet was tried once; the second ENI went to the node's subnet at once.
    assert_eq!(w.ec2.calls("CreateNetworkInterface"), 3);
    w.assert_prefixes_match_ec2().await;
}
