//! What ipamd does to the VPC over time, on the reference's timers (so these tests take a minute
//! or two each and are kept few; they run in parallel): the pool shrinks back to its target
//! and the extra ENI is freed after pods leave, addresses changed outside ipamd are adopted or
//! dropped, and this node's leaked ENIs are deleted while others' and unmanaged ones are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use harness::probe::unreachable_from;
use harness::vpc::router::router_link_name;
use harness::vpc::{EniRequest, EniState, INTERNET_HOST, VpcNode, tags};
use test_support::imds::rfc3339_utc;

use crate::{
    add_pod_retrying, assert_vpc_address, check, ec2_node, eni_and_ip_counts, enis, fabric, node,
    ok, pod, show_enis, wait_for,
};

#[test]
fn after_pods_leave_the_pool_shrinks_to_warm_ip_target_and_frees_the_extra_eni() {
    let vpc = fabric();
    // WARM_IP_TARGET=1: one free IP is kept, whatever the pods. 5 pods need 6 IPs: 2 ENIs.
    let n = node(
        &vpc,
        ec2_node("shrink", "t3.small").env("WARM_IP_TARGET", "1"),
    );
    let mut pods = Vec::new();
    for i in 0..5 {
        let p = pod("default", &format!("shrink-{i}"));
        let (result, ip) = add_pod_retrying(&n, &p, Duration::from_secs(60));
        pods.push((p, result, ip));
    }
    let grown = enis(&n);
    check!(
        n,
        grown.len() == 2,
        "5 pods + 1 warm IP on a t3.small need 2 ENIs: {}",
        show_enis(&n)
    );
    let extra: EniState = grown
        .iter()
        .find(|e| e.device_index() != Some(0))
        .cloned()
        .unwrap();
    let extra_link = router_link_name(&extra.id);
    for (p, result, _) in &pods {
        ok(&n, n.del_pod(p, "1.0.0", Some(result)));
    }

    // The reference decreases at most every 30 s and frees an ENI only once it is a minute
    // old and holds no pod or cooling IP: back to the primary ENI with 1 warm IP.
    wait_for(
        &n,
        "1 ENI with 1 secondary IP in moto (shrunk to WARM_IP_TARGET, extra ENI freed)",
        Duration::from_secs(150),
        || (eni_and_ip_counts(&n) == (1, 1)).then_some(()),
        || show_enis(&n),
    );
    // Freed means deleted in EC2 (detach, then delete), not left `available` to leak. The
    // instance stops listing the ENI at the detach, so its delete may still be on its way.
    wait_for(
        &n,
        &format!("the freed ENI {} deleted in moto", extra.id),
        Duration::from_secs(15),
        || ok(&n, vpc.ec2().eni(&extra.id)).is_none().then_some(()),
        || format!("{:?}", vpc.ec2().eni(&extra.id)),
    );
    ok(&n, vpc.sync());
    check!(
        n,
        ok(&n, n.ns().link("eth1")).is_none(),
        "the freed ENI's link is still on the node"
    );
    let rules = ok(&n, n.ns().rules());
    let extra_primary = extra.primary_ip().unwrap().to_string();
    check!(
        n,
        !rules.iter().any(|r| r["src"] == extra_primary.as_str()),
        "rules for the freed ENI's address {extra_primary} remain: {rules:?}"
    );
    let routes = ok(&n, vpc.router().routes("main"));
    check!(
        n,
        !routes.iter().any(|r| r["dev"] == extra_link.as_str()),
        "the router still routes to the freed ENI: {routes:?}"
    );
    let status = ok(&n, n.pool_status());
    check!(
        n,
        status.total_i_ps == 1 && status.assigned_i_ps == 0,
        "ipamd's pool after the shrink: {status:?}"
    );
}

/// ipamd's datastore for the ENI `eni_id` (introspection).
fn datastore(node: &VpcNode, eni_id: &str) -> BTreeSet<Ipv4Addr> {
    ok(node, node.datastore_ips())
        .remove(eni_id)
        .unwrap_or_default()
}

#[test]
fn reconcile_drops_an_ip_unassigned_out_of_band_and_adopts_one_assigned_out_of_band() {
    let vpc = fabric();
    // WARM_ENI_TARGET=0 without IP targets: the pool grows only when nothing is free and never
    // shrinks IPs, so whatever changes is the reconcile's doing. The primary ENI gets 3 IPs.
    let n = node(
        &vpc,
        ec2_node("reconcile", "t3.small").env("WARM_ENI_TARGET", "0"),
    );
    let primary = n.instance().primary_eni.clone();
    let initial = wait_for(
        &n,
        "3 secondary IPs on the primary ENI",
        Duration::from_secs(30),
        || {
            let ips = ok(&n, n.secondary_ips())
                .remove(&primary)
                .unwrap_or_default();
            (ips.len() == 3 && datastore(&n, &primary).len() == 3).then_some(ips)
        },
        || {
            format!(
                "moto: {}; ipamd: {:?}",
                show_enis(&n),
                n.datastore_ips().ok()
            )
        },
    );

    // Someone unassigns a free IP in EC2: ipamd must stop offering it.
    let dropped = initial[2];
    ok(&n, vpc.ec2().unassign_private_ips(&primary, &[dropped]));
    let kept: BTreeSet<Ipv4Addr> = initial[..2].iter().copied().collect();
    wait_for(
        &n,
        &format!("ipamd to drop {dropped} (unassigned out of band)"),
        Duration::from_secs(120),
        || (datastore(&n, &primary) == kept).then_some(()),
        || format!("ipamd has {:?}", datastore(&n, &primary)),
    );

    // Someone assigns an IP in EC2: ipamd must adopt it.
    let adopted = Ipv4Addr::new(10, 0, 0, 200);
    ok(&n, vpc.ec2().assign_specific_ips(&primary, &[adopted]));
    let mut want = kept.clone();
    want.insert(adopted);
    wait_for(
        &n,
        &format!("ipamd to adopt {adopted} (assigned out of band)"),
        Duration::from_secs(120),
        || (datastore(&n, &primary) == want).then_some(()),
        || format!("ipamd has {:?}", datastore(&n, &primary)),
    );

    // The three pods get exactly the two kept IPs and the adopted one, never the dropped one,
    // and the adopted address carries traffic.
    let mut got = BTreeSet::new();
    let mut adopted_pod = None;
    for i in 0..3 {
        let p = pod("default", &format!("reconcile-{i}"));
        let (_, ip) = add_pod_retrying(&n, &p, Duration::from_secs(30));
        got.insert(ip);
        if ip == adopted {
            adopted_pod = Some(p);
        }
    }
    check!(n, got == want, "pods got {got:?}, the pool is {want:?}");
    assert_vpc_address(&vpc, &n, adopted);
    let p = adopted_pod.unwrap();
    let unreachable = unreachable_from(
        p.ns().unwrap(),
        &[
            IpAddr::from(n.primary_ip()),
            vpc.subnet().gateway().into(),
            INTERNET_HOST.into(),
        ],
    )
    .unwrap();
    check!(
        n,
        unreachable.is_empty(),
        "the pod on the adopted IP cannot reach {unreachable:?}"
    );
}

#[test]
fn leaked_enis_of_this_node_are_deleted_and_others_are_kept() {
    let vpc = fabric();
    let n = node(&vpc, ec2_node("leaks", "t3.small").without_ipamd());
    let id = n.instance_id().to_owned();
    let now = SystemTime::now();
    let old = rfc3339_utc(now - Duration::from_secs(10 * 60));
    let young = rfc3339_utc(now - Duration::from_secs(60));
    let ours = format!("{}{id}", tags::DESCRIPTION_PREFIX);
    let tagged = |instance: &str, created: &str| -> BTreeMap<String, String> {
        BTreeMap::from([
            (tags::INSTANCE_ID.to_owned(), instance.to_owned()),
            (tags::CREATED_AT.to_owned(), created.to_owned()),
        ])
    };
    let mut no_manage = tagged(&id, &old);
    no_manage.insert(tags::NO_MANAGE.to_owned(), "true".to_owned());
    let other = "i-0123456789abcdef0";
    let cases: Vec<(&str, String, BTreeMap<String, String>, bool)> = vec![
        (
            "leaked (this node, available, 10 min old)",
            ours.clone(),
            tagged(&id, &old),
            true,
        ),
        ("untagged", ours.clone(), BTreeMap::new(), false),
        ("no_manage=true", ours.clone(), no_manage, false),
        (
            "another node's",
            format!("{}{other}", tags::DESCRIPTION_PREFIX),
            tagged(other, &old),
            false,
        ),
        (
            "younger than 5 minutes",
            ours.clone(),
            tagged(&id, &young),
            false,
        ),
    ];
    let mut created = Vec::new();
    for (what, description, tags, deleted) in cases {
        let eni = ok(
            &n,
            vpc.ec2().create_eni(&EniRequest {
                subnet_id: vpc.subnet().id.clone(),
                security_groups: vec![vpc.security_group().to_owned()],
                description,
                tags,
                ..EniRequest::default()
            }),
        );
        created.push((what, eni.id, deleted));
    }

    let mut n = n;
    if let Err(e) = n.start_ipamd() {
        panic!("ipamd did not start: {e}");
    }
    let (leaked_what, leaked_id, _) = created.iter().find(|c| c.2).cloned().unwrap();
    wait_for(
        &n,
        &format!("ipamd to delete the {leaked_what} ENI {leaked_id}"),
        Duration::from_secs(120),
        || ok(&n, vpc.ec2().eni(&leaked_id)).is_none().then_some(()),
        || format!("{:?}", vpc.enis().ok().map(|e| e.len())),
    );
    for (what, eni_id, deleted) in &created {
        if *deleted {
            continue;
        }
        let eni = ok(&n, vpc.ec2().eni(eni_id));
        check!(
            n,
            eni.as_ref().is_some_and(|e| e.status == "available"),
            "the {what} ENI {eni_id} must be left alone, moto shows {eni:?}"
        );
    }
    // The node's own ENIs are untouched.
    check!(
        n,
        enis(&n).first().map(|e| e.id.as_str()) == Some(n.instance().primary_eni.as_str()),
        "the primary ENI changed: {}",
        show_enis(&n)
    );
}
