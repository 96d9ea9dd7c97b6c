//! The warm pool reaches the reference's numbers (`docs/eni-and-ip-target.md`, vpc-cni.md §3.3)
//! in moto, and pods on the ENIs ipamd creates get VPC addresses that carry traffic.

use std::net::IpAddr;
use std::time::Duration;

use harness::probe::{ping_matrix, unreachable_from};
use harness::vpc::tags;
use harness::vpc::{INTERNET_HOST, VpcNode};

use crate::{
    add_pod_retrying, assert_vpc_address, check, ec2_node, eni_and_ip_counts, enis, fabric, node,
    ok, pod, show_enis, wait_for,
};

/// One pool cycle and then some: the pool manager acts every few seconds.
const SETTLE: Duration = Duration::from_secs(8);

/// Waits until moto shows `want` = (ENIs, secondary IPs) for the node, then checks it stays so
/// for [`SETTLE`] (no overshoot).
fn assert_pool_settles_at(node: &VpcNode, want: (usize, usize), timeout: Duration, why: &str) {
    wait_for(
        node,
        &format!(
            "{why}: {} ENIs with {} secondary IPs in moto",
            want.0, want.1
        ),
        timeout,
        || (eni_and_ip_counts(node) == want).then_some(()),
        || show_enis(node),
    );
    std::thread::sleep(SETTLE);
    let now = eni_and_ip_counts(node);
    check!(
        node,
        now == want,
        "{why}: the pool moved from {want:?} to {now:?} (ENIs, IPs): {}",
        show_enis(node)
    );
}

#[test]
fn warm_eni_target_on_t3_small_gives_1_eni_at_start_and_3_enis_9_ips_with_5_pods() {
    let vpc = fabric();
    let n = node(
        &vpc,
        ec2_node("warm-eni", "t3.small").env("WARM_ENI_TARGET", "1"),
    );
    // t3.small: 3 ENIs x 4 addresses, 3 usable per ENI. One ENI's worth free = 3 IPs.
    assert_pool_settles_at(&n, (1, 3), Duration::from_secs(30), "at start");
    let status = ok(&n, n.pool_status());
    check!(n, status.total_i_ps == 3, "ipamd's pool: {status:?}");

    let mut pods = Vec::new();
    for i in 0..5 {
        let p = pod("default", &format!("warm-{i}"));
        let (_, ip) = add_pod_retrying(&n, &p, Duration::from_secs(60));
        pods.push((p, ip));
    }
    // 5 assigned; 2 ENIs would leave 1 free (< 3), so a third ENI: 9 IPs, 4 free.
    assert_pool_settles_at(&n, (3, 9), Duration::from_secs(60), "with 5 pods");

    // The ENIs ipamd made are EC2's kind: tagged, described, in the node's subnet and groups.
    let all = enis(&n);
    for eni in all.iter().filter(|e| e.device_index() != Some(0)) {
        check!(
            n,
            eni.description == format!("{}{}", tags::DESCRIPTION_PREFIX, n.instance_id())
                && eni.tags.get(tags::INSTANCE_ID).map(String::as_str) == Some(n.instance_id())
                && eni.tags.contains_key(tags::CREATED_AT)
                && eni.subnet_id == n.subnet().id
                && eni.security_groups == vec![vpc.security_group().to_owned()],
            "ENI {} is not described, tagged, placed as the reference does: {eni:?}",
            eni.id
        );
    }
    let devices: Vec<u32> = all.iter().filter_map(|e| e.device_index()).collect();
    check!(n, devices == vec![0, 1, 2], "device indexes {devices:?}");
    let meta = n.metadata().unwrap();
    check!(
        n,
        meta.interfaces.len() == 3,
        "IMDS shows {:?}",
        meta.interfaces
    );

    // Pods on the new ENIs have VPC addresses of those ENIs, and traffic flows: pod <-> pod
    // across ENIs, pod -> node, pod -> the subnet router, pod -> the internet.
    let mut on_new_enis = 0;
    for (_, ip) in &pods {
        let eni = assert_vpc_address(&vpc, &n, *ip);
        if eni.device_index() != Some(0) {
            on_new_enis += 1;
        }
    }
    check!(
        n,
        on_new_enis >= 2,
        "3 IPs on the primary ENI cannot hold 5 pods, yet only {on_new_enis} are elsewhere"
    );
    for dev in ["eth1", "eth2"] {
        let link = ok(&n, n.ns().link(dev));
        check!(
            n,
            link.as_ref().is_some_and(|l| l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP"))),
            "{dev} is not up: {link:?}"
        );
    }
    let mut destinations: Vec<IpAddr> = pods.iter().map(|(_, ip)| IpAddr::from(*ip)).collect();
    destinations.push(n.primary_ip().into());
    destinations.push(vpc.subnet().gateway().into());
    destinations.push(INTERNET_HOST.into());
    let sources: Vec<(String, &test_support::netns::Netns, Vec<IpAddr>)> = pods
        .iter()
        .map(|(p, ip)| {
            (
                format!("{}({ip})", p.name),
                p.ns().unwrap(),
                vec![(*ip).into()],
            )
        })
        .collect();
    let failures = ping_matrix(&sources, &destinations, 5).unwrap();
    check!(
        n,
        failures.is_empty(),
        "unreachable (source, destination): {failures:?}"
    );
    let from_node = unreachable_from(n.ns(), &destinations[..5]).unwrap();
    check!(
        n,
        from_node.is_empty(),
        "the node cannot reach pods {from_node:?}"
    );
}

#[test]
fn warm_ip_2_minimum_ip_5_on_t3_small_gives_5_ips_on_2_enis_without_pods() {
    let vpc = fabric();
    let n = node(
        &vpc,
        ec2_node("warm-ip", "t3.small")
            .env("WARM_IP_TARGET", "2")
            .env("MINIMUM_IP_TARGET", "5"),
    );
    // MINIMUM_IP_TARGET wins over WARM_IP_TARGET with no pods: 5 IPs, which needs 2 ENIs.
    assert_pool_settles_at(&n, (2, 5), Duration::from_secs(45), "no pods");
    let status = ok(&n, n.pool_status());
    check!(
        n,
        status.total_i_ps == 5 && status.assigned_i_ps == 0,
        "ipamd's pool: {status:?}"
    );
    let all = enis(&n);
    check!(
        n,
        all.iter().all(|e| e.private_ips.len() <= 4),
        "an ENI exceeds t3.small's 4 addresses: {}",
        show_enis(&n)
    );
}
