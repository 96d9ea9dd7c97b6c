//! Subnet discovery on the simulated VPC (moto): a VPC with subnets in two Availability Zones,
//! tagged as an operator tags them. New ENIs go only into the subnets the reference's rules
//! allow (the node's own, and those tagged `kubernetes.io/role/cni` not `0` in the node's zone
//! and, with `CLUSTER_NAME`, not reserved for another cluster), the pods on them are first-class
//! VPC citizens (routed by the VPC, reaching pods, nodes and the internet); with discovery off
//! the node's subnet is all there is and a full one is named in the pod's error; a subnet with
//! fewer free addresses than one more node takes shows in `awscni_subnet_low_ips` and ipamd's
//! log; `MANAGE_UNTAGGED_ENI=false` leaves someone else's ENI alone.
//!
//! Every outcome is read from moto (ENIs, subnets' `AvailableIpAddressCount`), the kernel
//! (addresses, route tables, pings, what a server sees) or ipamd's metrics endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harness::probe::{ping_matrix, tcp_round_trip};
use harness::vpc::{Ec2, EniState, SubnetInfo, SubnetSpec, tags};
use harness::{FabricOptions, Pod, VpcFabric, VpcNode};
use test_support::netns::Netns;

use crate::{
    add_pod_retrying, assert_vpc_address, check, ec2_node, fabric_with, node, ok, pod, show_enis,
    wait_for,
};

/// The nodes' subnet of the discovery tests: 59 usable addresses.
const NODE_SUBNET: &str = "10.0.0.0/26";
/// Tagged `kubernetes.io/role/cni=1`, same zone: 59 usable addresses.
const TAGGED: &str = "10.0.1.0/26";
/// Tagged `kubernetes.io/role/cni=0`, same zone: 123 usable addresses.
const EXCLUDED: &str = "10.0.2.0/25";
/// Tagged `kubernetes.io/role/cni=1` and for the cluster `dev`, same zone: 251 usable.
const OTHER_CLUSTER: &str = "10.0.4.0/24";
/// Tagged `kubernetes.io/role/cni=1` in the other zone: 1019 usable.
const OTHER_ZONE: &str = "10.0.8.0/22";
/// The nodes' zone and the other one.
const ZONE: &str = "us-west-2a";
const OTHER: &str = "us-west-2b";

fn net(cidr: &str) -> ipnet::Ipv4Net {
    cidr.parse().unwrap()
}

/// The VPC of the discovery tests: the nodes' subnet `node_subnet` and the four others.
fn discovery_vpc(node_subnet: &str) -> VpcFabric {
    let cluster_tag = format!("{}dev", tags::CLUSTER_PREFIX);
    fabric_with(
        FabricOptions::default()
            .subnet(net(node_subnet))
            .with_subnet(SubnetSpec::new(net(TAGGED)).tag(tags::ROLE_CNI, "1"))
            .with_subnet(SubnetSpec::new(net(EXCLUDED)).tag(tags::ROLE_CNI, "0"))
            .with_subnet(
                SubnetSpec::new(net(OTHER_CLUSTER))
                    .tag(tags::ROLE_CNI, "1")
                    .tag(&cluster_tag, "1"),
            )
            .with_subnet(
                SubnetSpec::new(net(OTHER_ZONE))
                    .zone(OTHER)
                    .tag(tags::ROLE_CNI, "1"),
            ),
    )
}

/// The subnet `cidr` of the VPC.
fn subnet(vpc: &VpcFabric, cidr: &str) -> SubnetInfo {
    vpc.subnet_with_cidr(net(cidr))
        .unwrap_or_else(|e| panic!("{e}\n{}", vpc.diag()))
}

/// Samples moto every 200 ms and records every ENI seen in a subnet of `forbidden`; stopped
/// (and joined) by [`ForbiddenWatch::finish`] or on drop.
struct ForbiddenWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, BTreeSet<String>)>>,
}

impl ForbiddenWatch {
    fn start(vpc: &VpcFabric, forbidden: &[&SubnetInfo]) -> Self {
        let ec2: Ec2 = vpc.ec2().clone();
        let vpc_id = vpc.vpc_id().to_owned();
        let forbidden: BTreeMap<String, String> = forbidden
            .iter()
            .map(|s| (s.id.clone(), s.cidr.to_string()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let mut samples = 0u64;
            while !flag.load(Ordering::SeqCst) {
                if let Ok(enis) = ec2.vpc_enis(&vpc_id) {
                    samples += 1;
                    for e in enis {
                        if let Some(cidr) = forbidden.get(&e.subnet_id) {
                            seen.insert(format!(
                                "{} ({:?}, {}) in {} {cidr}",
                                e.id, e.attachment, e.description, e.subnet_id
                            ));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (samples, seen)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns how many samples were taken and the ENIs seen.
    fn finish(mut self) -> (u64, BTreeSet<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for ForbiddenWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until ipamd's pre-scaling put its 9 warm addresses on the primary ENI of an m5.large
/// (in moto), so the test knows what the node's subnet holds.
fn wait_prescaled(n: &VpcNode) {
    wait_for(
        n,
        "ipamd's 9 warm addresses on the primary ENI",
        Duration::from_secs(60),
        || {
            let enis = ok(n, n.enis());
            (enis.len() == 1 && enis[0].secondary_ips().len() == 9).then_some(())
        },
        || show_enis(n),
    );
}

/// The value of series `name{subnet_id="<subnet>"}` on the node's metrics endpoint.
fn subnet_metric(n: &VpcNode, name: &str, subnet: &str) -> Option<f64> {
    let label = format!("subnet_id=\"{subnet}\"");
    ok(n, n.metrics())
        .into_iter()
        .find(|(series, _)| {
            series.split('{').next() == Some(name)
                && series
                    .split_once('{')
                    .is_some_and(|(_, labels)| labels.contains(&label))
        })
        .map(|(_, v)| v)
}

/// The node's `awscni_subnet_*` series, for messages.
fn subnet_series(n: &VpcNode) -> Vec<(String, f64)> {
    n.metrics()
        .map(|m| {
            m.into_iter()
                .filter(|(s, _)| s.starts_with("awscni_subnet_"))
                .collect()
        })
        .unwrap_or_default()
}

/// A subnet's `AvailableIpAddressCount` in moto now.
fn available(vpc: &VpcFabric, s: &SubnetInfo) -> u32 {
    vpc.subnet_state(&s.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", vpc.diag()))
        .available_ips
}

/// A pod with where it landed.
struct Placed {
    pod: Pod,
    ip: Ipv4Addr,
    eni: EniState,
}

fn place(vpc: &VpcFabric, n: &VpcNode, name: &str) -> Placed {
    let p = pod("default", name);
    let (_, ip) = add_pod_retrying(n, &p, Duration::from_secs(90));
    let eni = assert_vpc_address(vpc, n, ip);
    Placed { pod: p, ip, eni }
}

#[test]
fn new_enis_go_to_the_tagged_subnet_of_the_zone_and_their_pods_reach_everything() {
    let vpc = discovery_vpc(NODE_SUBNET);
    let node_subnet = vpc.subnet().clone();
    let tagged = subnet(&vpc, TAGGED);
    let excluded = subnet(&vpc, EXCLUDED);
    let other_cluster = subnet(&vpc, OTHER_CLUSTER);
    let other_zone = subnet(&vpc, OTHER_ZONE);
    assert_eq!(other_zone.availability_zone, OTHER);
    assert_eq!(tagged.availability_zone, ZONE);
    let watch = ForbiddenWatch::start(&vpc, &[&excluded, &other_cluster, &other_zone]);

    let spec = |name: &str| ec2_node(name, "m5.large").env("CLUSTER_NAME", "prod");
    let (a, b) = std::thread::scope(|s| {
        let ta = s.spawn(|| node(&vpc, spec("disc-a")));
        let tb = s.spawn(|| node(&vpc, spec("disc-b")));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    wait_prescaled(&a);
    wait_prescaled(&b);
    // The nodes' subnet keeps 3 free addresses: not even one more ENI of 1 + 9 fits there.
    ok(&a, vpc.fill_subnet(&node_subnet.id, 3));

    // One pod on node b (its primary ENI), then 12 on node a: the 10th and later need an ENI
    // of node a beyond the primary (the warm ENI ipamd attaches once the first pod runs).
    let far = place(&vpc, &b, "disc-far");
    check!(
        b,
        far.eni.device_index() == Some(0),
        "the first pod of node b must sit on its primary ENI: {:?}",
        far.eni
    );
    let placed: Vec<Placed> = (0..12)
        .map(|k| place(&vpc, &a, &format!("disc-{k}")))
        .collect();
    let on_new: Vec<&Placed> = placed
        .iter()
        .filter(|p| p.eni.device_index() != Some(0))
        .collect();
    check!(
        a,
        on_new.len() >= 3,
        "12 pods on an m5.large need a second ENI for 3 of them; on non-primary ENIs: {}",
        on_new.len()
    );

    // Every ENI ipamd created, on either node, is in the tagged subnet of the zone, with the
    // primary ENI's security groups; pods on them have its addresses.
    for n in [&a, &b] {
        let enis = ok(n, n.enis());
        let primary = enis.iter().find(|e| e.device_index() == Some(0)).unwrap();
        check!(
            n,
            primary.subnet_id == node_subnet.id,
            "primary ENI not in the nodes' subnet: {primary:?}"
        );
        for e in enis.iter().filter(|e| e.device_index() != Some(0)) {
            check!(
                n,
                e.subnet_id == tagged.id
                    && e.security_groups == primary.security_groups
                    && e.tags.get(tags::INSTANCE_ID).map(String::as_str) == Some(n.instance_id()),
                "ENI {} of {} must be in the tagged subnet {} ({TAGGED}) with the primary ENI's security groups {:?} and ipamd's tags: {e:?}",
                e.id,
                n.instance_id(),
                tagged.id,
                primary.security_groups
            );
        }
    }
    for p in &on_new {
        check!(
            a,
            p.eni.subnet_id == tagged.id && tagged.cidr.contains(&p.ip),
            "pod {} on {} has {} ({}), not an address of the tagged subnet {TAGGED}",
            p.pod.name,
            p.eni.id,
            p.ip,
            p.eni.subnet_id
        );
    }

    // The kernel: the new ENI carries its primary address with the tagged subnet's prefix, its
    // route table (device + 1) goes out via the tagged subnet's router, and instance metadata
    // shows the ENI's own subnet.
    let new_eni = &on_new[0].eni;
    let device = new_eni.device_index().unwrap();
    let ifname = format!("eth{device}");
    let addrs = ok(&a, a.ns().addresses_of(&ifname));
    let want = format!(
        "{}/{}",
        new_eni.primary_ip().unwrap(),
        tagged.cidr.prefix_len()
    );
    check!(
        a,
        addrs.contains(&want),
        "{ifname} must carry {want}: {addrs:?}"
    );
    let table = (device + 1).to_string();
    let routes = ok(&a, a.ns().routes(&table));
    let gateway = tagged.gateway().to_string();
    check!(
        a,
        routes.iter().any(|r| r["dst"] == "default"
            && r["gateway"] == gateway.as_str()
            && r["dev"] == ifname.as_str()),
        "table {table} must route default via {gateway} dev {ifname}: {routes:?}"
    );
    let md = a.metadata().unwrap();
    let shown = md
        .interfaces
        .iter()
        .find(|i| i.interface_id == new_eni.id)
        .unwrap_or_else(|| panic!("metadata lacks {}: {md:?}", new_eni.id));
    assert_eq!(
        (shown.subnet_id.as_str(), shown.subnet_ipv4_cidr_block),
        (tagged.id.as_str(), tagged.cidr)
    );

    // Pods on the tagged subnet's ENIs reach the pod on node b, both nodes and the internet
    // host; the pod on node b reaches them.
    let destinations: Vec<IpAddr> = vec![
        far.ip.into(),
        a.primary_ip().into(),
        b.primary_ip().into(),
        harness::vpc::INTERNET_HOST.into(),
    ];
    let sources: Vec<(String, &Netns, Vec<IpAddr>)> = on_new
        .iter()
        .map(|p| {
            (
                format!("{} ({})", p.pod.name, p.ip),
                p.pod.ns().unwrap(),
                vec![IpAddr::from(p.ip)],
            )
        })
        .chain(std::iter::once((
            format!("{} ({})", far.pod.name, far.ip),
            far.pod.ns().unwrap(),
            vec![IpAddr::from(far.ip)],
        )))
        .collect();
    let mut all = destinations.clone();
    all.extend(on_new.iter().map(|p| IpAddr::from(p.ip)));
    let failures = ok(&a, ping_matrix(&sources, &all, 4));
    check!(
        a,
        failures.is_empty(),
        "pings failed (source, destination): {failures:?}\n{}",
        b.diag()
    );
    for p in &on_new {
        // Inside the VPC the pod keeps its own address.
        let peer = ok(
            &a,
            tcp_round_trip(far.pod.ns().unwrap(), far.ip, p.pod.ns().unwrap()),
        );
        check!(
            a,
            peer.ip() == IpAddr::from(p.ip),
            "the pod on node b saw {peer} for a connection from {} ({})",
            p.pod.name,
            p.ip
        );
        // Beyond the VPC it leaves as its node's primary IP.
        let seen = crate::snat::internet_peer(&vpc, p.pod.ns().unwrap())
            .unwrap_or_else(|e| panic!("{e}\n{}", a.diag()));
        check!(
            a,
            seen == IpAddr::from(a.primary_ip()),
            "pod {} ({}) reached the internet as {seen}, not as node a's primary IP {}",
            p.pod.name,
            p.ip,
            a.primary_ip()
        );
    }

    // The excluded subnet, the other cluster's and the other zone's never held an ENI: none
    // was seen there, and moto shows all their addresses free.
    let (samples, seen) = watch.finish();
    check!(
        a,
        samples > 0 && seen.is_empty(),
        "ENIs seen in subnets ipamd must not use ({samples} samples): {seen:#?}"
    );
    for s in [&excluded, &other_cluster, &other_zone] {
        check!(
            a,
            available(&vpc, s) == s.usable_ips(),
            "subnet {} ({}) must keep all {} addresses free, moto shows {}",
            s.id,
            s.cidr,
            s.usable_ips(),
            available(&vpc, s)
        );
    }
}

#[test]
fn without_discovery_enis_stay_in_the_node_subnet_and_a_full_one_is_named() {
    // 27 usable addresses in the nodes' subnet; the tagged subnet next to it must stay unused.
    let vpc = discovery_vpc("10.0.0.0/27");
    let node_subnet = vpc.subnet().clone();
    let tagged = subnet(&vpc, TAGGED);
    let watch = ForbiddenWatch::start(&vpc, &[&tagged]);
    let n = node(
        &vpc,
        ec2_node("nodisc", "m5.large").env("ENABLE_SUBNET_DISCOVERY", "false"),
    );
    wait_prescaled(&n);
    // Exactly one more ENI (1 + 9 addresses) fits the nodes' subnet.
    ok(&n, vpc.fill_subnet(&node_subnet.id, 10));

    let mut pods: Vec<(Pod, Ipv4Addr)> = Vec::new();
    let mut refused = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while refused.is_none() {
        let p = pod("default", &format!("nodisc-{}", pods.len()));
        loop {
            let out = ok(&n, n.cni("ADD", &p, "1.0.0", None));
            if out.success() {
                let result = out.json.clone().unwrap_or_default();
                let ip = harness::cni::result_ip(&result);
                check!(n, ip.is_some(), "ADD result without address: {result}");
                pods.push((p, ip.unwrap()));
                break;
            }
            check!(n, out.error_code() == Some(11), "{}", out.describe());
            if out.error_text().contains(&node_subnet.id) {
                refused = Some(out.error_text());
                break;
            }
            check!(
                n,
                Instant::now() < deadline,
                "no ADD was refused naming the full subnet {} within 120 s ({} pods added): {}",
                node_subnet.id,
                pods.len(),
                out.describe()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        check!(
            n,
            pods.len() <= 18,
            "an m5.large with 2 ENIs of 9 pod addresses got {} pods",
            pods.len()
        );
    }
    let why = refused.unwrap();
    check!(
        n,
        why.contains(&format!("subnet {} has no free addresses", node_subnet.id)),
        "the error must say the nodes' subnet {} has no free addresses: {why}",
        node_subnet.id
    );
    check!(
        n,
        pods.len() == 18,
        "18 pods (2 ENIs x 9) fit before the subnet ran out, {} did",
        pods.len()
    );

    let enis = ok(&n, n.enis());
    check!(
        n,
        enis.len() == 2 && enis.iter().all(|e| e.subnet_id == node_subnet.id),
        "both ENIs must be in the nodes' subnet {}: {enis:?}",
        node_subnet.id
    );
    for (p, ip) in &pods {
        check!(
            n,
            node_subnet.cidr.contains(ip),
            "pod {} got {ip}, outside the nodes' subnet {}",
            p.name,
            node_subnet.cidr
        );
    }
    check!(
        n,
        available(&vpc, &node_subnet) == 0,
        "the nodes' subnet must be full in moto, shows {} free",
        available(&vpc, &node_subnet)
    );
    let (samples, seen) = watch.finish();
    check!(
        n,
        samples > 0 && seen.is_empty() && available(&vpc, &tagged) == tagged.usable_ips(),
        "with ENABLE_SUBNET_DISCOVERY=false the tagged subnet must stay unused ({samples} samples; seen {seen:#?}; {} free of {})",
        available(&vpc, &tagged),
        tagged.usable_ips()
    );
}

#[test]
fn a_subnet_short_of_one_more_node_is_flagged_low_in_metrics_and_the_log() {
    // The node runs in a /27 of its own (not the VPC's first subnet, which is untagged and so
    // no candidate for it): 27 usable; 15 left before the node starts: the instance takes 1 and
    // ipamd's warm pool 9, leaving 5, fewer than the 10 one more m5.large takes (9 warm IPs +
    // its primary address).
    let vpc = fabric_with(
        FabricOptions::default()
            .with_subnet(SubnetSpec::new(net("10.0.16.0/27")))
            .with_subnet(SubnetSpec::new(net(TAGGED)).tag(tags::ROLE_CNI, "1"))
            .with_subnet(SubnetSpec::new(net(EXCLUDED)).tag(tags::ROLE_CNI, "0")),
    );
    let first = vpc.subnet().clone();
    let node_subnet = subnet(&vpc, "10.0.16.0/27");
    let tagged = subnet(&vpc, TAGGED);
    let excluded = subnet(&vpc, EXCLUDED);
    vpc.fill_subnet(&node_subnet.id, 15)
        .unwrap_or_else(|e| panic!("{e}\n{}", vpc.diag()));
    let n = node(&vpc, ec2_node("low", "m5.large").in_subnet(&node_subnet));
    check!(
        n,
        n.subnet().id == node_subnet.id
            && node_subnet.cidr.contains(&n.primary_ip())
            && ok(&n, n.ns().addresses_of("eth0")) == vec![format!("{}/27", n.primary_ip())],
        "the node must run in {} ({}): primary IP {}",
        node_subnet.id,
        node_subnet.cidr,
        n.primary_ip()
    );
    wait_prescaled(&n);
    check!(
        n,
        available(&vpc, &node_subnet) == 5,
        "the nodes' subnet must have 5 free addresses after pre-scaling, moto shows {}",
        available(&vpc, &node_subnet)
    );

    wait_for(
        &n,
        "awscni_subnet_low_ips 1 for the nodes' subnet (5 free) and 0 for the tagged one",
        Duration::from_secs(30),
        || {
            let node_low = subnet_metric(&n, "awscni_subnet_low_ips", &node_subnet.id);
            let node_free = subnet_metric(&n, "awscni_subnet_available_ips", &node_subnet.id);
            let tagged_low = subnet_metric(&n, "awscni_subnet_low_ips", &tagged.id);
            let tagged_free = subnet_metric(&n, "awscni_subnet_available_ips", &tagged.id);
            (node_low == Some(1.0)
                && node_free == Some(5.0)
                && tagged_low == Some(0.0)
                && tagged_free == Some(f64::from(tagged.usable_ips())))
            .then_some(())
        },
        || format!("{:?}", subnet_series(&n)),
    );
    // Only candidate subnets are reported: not the one tagged kubernetes.io/role/cni=0, nor
    // the untagged subnet that is not the node's.
    let series = subnet_series(&n);
    for (s, why) in [
        (&excluded, "tagged 0"),
        (&first, "untagged, not the node's"),
    ] {
        check!(
            n,
            !series.iter().any(|(name, _)| name.contains(&s.id)),
            "subnet {} ({why}) must not be reported: {series:?}",
            s.id
        );
    }

    let log = std::fs::read_to_string(n.ipamd_log_path()).unwrap_or_default();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("subnet is running out of addresses"))
        .collect();
    check!(
        n,
        warnings
            .iter()
            .any(|l| l.contains("WARN") && l.contains(&node_subnet.id)),
        "ipamd's log must warn that {} is running out of addresses: {warnings:#?}",
        node_subnet.id
    );
    check!(
        n,
        !warnings.iter().any(|l| l.contains(&tagged.id)),
        "the tagged subnet {} has room and must not be warned about: {warnings:#?}",
        tagged.id
    );
}

#[test]
fn unmanaged_untagged_eni_is_never_used_nor_tagged() {
    let vpc = fabric_with(FabricOptions::default());
    // t3.small: 3 ENIs of 4 addresses. The untagged ENI (device 1, 1 + 2 addresses) takes one
    // slot, so ipamd has the primary ENI and one of its own: 6 pod addresses.
    let n = node(
        &vpc,
        ec2_node("unmanaged", "t3.small")
            .env("MANAGE_UNTAGGED_ENI", "false")
            .with_attached_enis(&[2]),
    );
    let foreign = ok(&n, n.enis())
        .into_iter()
        .find(|e| e.device_index() == Some(1))
        .unwrap_or_else(|| panic!("no ENI at device 1: {}", show_enis(&n)));
    check!(
        n,
        foreign.private_ips.len() == 3 && !foreign.tags.contains_key(tags::INSTANCE_ID),
        "the pre-attached ENI must hold 3 addresses and no instance_id tag: {foreign:?}"
    );
    let foreign_ips: BTreeSet<Ipv4Addr> = foreign.private_ips.iter().copied().collect();

    let mut pods: Vec<(Pod, Ipv4Addr)> = Vec::new();
    for k in 0..6 {
        let p = pod("default", &format!("unmanaged-{k}"));
        let (_, ip) = add_pod_retrying(&n, &p, Duration::from_secs(60));
        check!(
            n,
            !foreign_ips.contains(&ip),
            "pod {} got {ip}, an address of the unmanaged ENI {}",
            p.name,
            foreign.id
        );
        pods.push((p, ip));
    }
    // The node is exhausted: a further ADD fails until ipamd names its limit.
    let extra = pod("default", "unmanaged-extra");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ok(&n, n.cni("ADD", &extra, "1.0.0", None));
        check!(
            n,
            !out.success(),
            "a 7th pod got an address: {}\nmoto: {}",
            out.stdout,
            show_enis(&n)
        );
        check!(n, out.error_code() == Some(11), "{}", out.describe());
        if out.error_text().contains("limit") {
            break;
        }
        check!(
            n,
            Instant::now() < deadline,
            "at the ENI limit the error must say `limit`: {}",
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let after = ok(&n, vpc.ec2().eni(&foreign.id)).unwrap();
    check!(
        n,
        after.private_ips == foreign.private_ips
            && after.tags == foreign.tags
            && after.attached_to(n.instance_id())
            && after.device_index() == Some(1),
        "the unmanaged ENI must stay attached at device 1 with its addresses and without tags: before {foreign:?}, after {after:?}"
    );
    let datastore = ok(&n, n.datastore_ips());
    check!(
        n,
        !datastore.contains_key(&foreign.id)
            && datastore.values().all(|ips| ips.is_disjoint(&foreign_ips)),
        "ipamd's datastore must not hold the unmanaged ENI or its addresses: {datastore:?}"
    );
    let enis = ok(&n, n.enis());
    check!(
        n,
        enis.len() == 3
            && enis
                .iter()
                .filter(|e| e.id != foreign.id && e.device_index() != Some(0))
                .all(|e| e.tags.get(tags::INSTANCE_ID).map(String::as_str)
                    == Some(n.instance_id())),
        "the node must have its primary ENI, the unmanaged one and one ENI of ipamd's: {}",
        show_enis(&n)
    );
}

#[test]
fn a_subnet_added_and_tagged_at_run_time_takes_new_enis_once_the_node_subnet_is_full() {
    // The nodes' subnet (27 usable) is full once ipamd's warm pool is in; nothing else is
    // tagged. The operator adds a subnet, tags it, and pods get addresses again without any
    // restart, once ipamd re-reads the subnets (they are cached for 30 s).
    let vpc = fabric_with(FabricOptions::default().subnet(net("10.0.0.0/27")));
    let node_subnet = vpc.subnet().clone();
    let n = node(&vpc, ec2_node("runtime", "m5.large"));
    wait_prescaled(&n);
    ok(&n, vpc.fill_subnet(&node_subnet.id, 0));
    let added = ok(&n, vpc.add_subnet(&SubnetSpec::new(net(TAGGED))));

    let pods: Vec<Placed> = (0..9)
        .map(|k| place(&vpc, &n, &format!("runtime-{k}")))
        .collect();
    check!(
        n,
        pods.iter().all(|p| p.eni.device_index() == Some(0)),
        "the 9 warm addresses are on the primary ENI"
    );
    // The 10th pod: refused, naming the full subnet, while the added subnet is untagged.
    let tenth = pod("default", "runtime-9");
    let deadline = Instant::now() + Duration::from_secs(45);
    let why = loop {
        let out = ok(&n, n.cni("ADD", &tenth, "1.0.0", None));
        check!(
            n,
            !out.success() && out.error_code() == Some(11),
            "no subnet has room, the ADD must fail with 11: {}",
            out.describe()
        );
        let text = out.error_text();
        if text.contains(&node_subnet.id) {
            break text;
        }
        check!(
            n,
            Instant::now() < deadline,
            "the error must name the full subnet {}: {text}",
            node_subnet.id
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    check!(
        n,
        why.contains("has no free addresses") && why.contains(tags::ROLE_CNI),
        "the error must say the subnet is full and how to add one: {why}"
    );
    check!(
        n,
        available(&vpc, &added) == added.usable_ips(),
        "the untagged subnet must not be used: {}",
        show_enis(&n)
    );

    ok(&n, vpc.tag_subnet(&added.id, tags::ROLE_CNI, "1"));
    ok(&n, vpc.tag_subnet(&added.id, "team", "pods"));
    ok(&n, vpc.untag_subnet(&added.id, "team"));
    let state = ok(&n, vpc.subnet_state(&added.id));
    check!(
        n,
        state.tag(tags::ROLE_CNI) == Some("1") && state.tag("team").is_none(),
        "moto must show the subnet tagged kubernetes.io/role/cni=1 only: {:?}",
        state.tags
    );
    let tagged_at = Instant::now();
    let (_, ip) = add_pod_retrying(&n, &tenth, Duration::from_secs(90));
    let waited = tagged_at.elapsed();
    let eni = assert_vpc_address(&vpc, &n, ip);
    check!(
        n,
        eni.subnet_id == added.id && added.cidr.contains(&ip) && eni.device_index() == Some(1),
        "the 10th pod must get an address of the subnet tagged at run time ({}): {ip} on {eni:?}",
        added.cidr
    );
    // The subnet added at run time is routed: its router answers, the pod reaches the node and
    // leaves the VPC as the node's primary IP.
    let failures = ok(
        &n,
        ping_matrix(
            &[(
                "runtime-9".to_owned(),
                tenth.ns().unwrap(),
                vec![IpAddr::from(ip)],
            )],
            &[
                added.gateway().into(),
                n.primary_ip().into(),
                pods[0].ip.into(),
                harness::vpc::INTERNET_HOST.into(),
            ],
            1,
        ),
    );
    check!(n, failures.is_empty(), "unreachable: {failures:?}");
    let seen = crate::snat::internet_peer(&vpc, tenth.ns().unwrap())
        .unwrap_or_else(|e| panic!("{e}\n{}", n.diag()));
    check!(
        n,
        seen == IpAddr::from(n.primary_ip()),
        "the pod reached the internet as {seen}, not as the node"
    );
    eprintln!("the subnet tagged at run time took the 10th pod after {waited:?}");
}
