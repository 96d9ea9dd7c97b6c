//! The simulated VPC itself, with ipamd only where it is needed to put pods on the fabric:
//! nodes built from moto's instances, the hypervisor following attachments and addresses, the
//! IMDS emulator answering per caller from moto's state, and pods of two nodes reaching each
//! other through the router (IMDS-only ipamd on ENIs the test provisions in moto).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use harness::http::imds_get;
use harness::probe::{ping_matrix, tcp_round_trip};
use harness::vpc::router::router_link_name;
use harness::vpc::{EniRequest, IMDS_ADDR, INTERNET_HOST, VpcNode};
use harness::{NodeSpec, Pod, VpcFabric};
use test_support::imds::INSTANCE_PROFILE_ROLE;

use crate::{assert_vpc_address, check, fabric, node, ok, pod};

fn imds(node: &VpcNode, path: &str) -> String {
    let reply = ok(
        node,
        imds_get(node.ns(), SocketAddr::from((IMDS_ADDR, 80)), path),
    );
    check!(
        node,
        reply.status == 200,
        "IMDS {path} answered {}: {}",
        reply.status,
        reply.body
    );
    reply.body
}

fn router_routes(vpc: &VpcFabric) -> BTreeMap<String, String> {
    vpc.router()
        .routes("main")
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["dst"].as_str()?.to_owned(), r["dev"].as_str()?.to_owned())))
        .collect()
}

fn link_is_up(node: &VpcNode, ifname: &str) -> Option<bool> {
    let link = ok(node, node.ns().link(ifname))?;
    Some(
        link["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
    )
}

#[test]
fn hypervisor_follows_moto_and_imds_answers_each_instance_from_moto() {
    let vpc = fabric();
    let a = node(&vpc, NodeSpec::new("fabric-a", "t3.small").without_ipamd());
    let b = node(&vpc, NodeSpec::new("fabric-b", "m5.large").without_ipamd());

    // eth0 is the primary ENI, configured as the node OS does.
    let eth0 = ok(&a, a.ns().link("eth0")).unwrap();
    assert_eq!(eth0["address"], a.instance().mac.as_str());
    assert_eq!(eth0["mtu"], 9001);
    assert_eq!(
        ok(&a, a.ns().addresses_of("eth0")),
        vec![format!("{}/24", a.primary_ip())]
    );
    assert_eq!(ok(&a, a.ns().sysctl_get("net.ipv4.ip_forward")), "1");
    let gateway = vpc.subnet().gateway();
    assert_eq!(gateway, Ipv4Addr::new(10, 0, 0, 1));
    for (from, to, what) in [
        (&a, IpAddr::from(gateway), "the subnet router"),
        (&a, IpAddr::from(b.primary_ip()), "the other node"),
        (&b, IpAddr::from(a.primary_ip()), "the other node"),
        (&a, IpAddr::from(INTERNET_HOST), "the internet"),
    ] {
        let ping = ok(from, from.ns().ping(to));
        check!(
            from,
            ping.ok,
            "node cannot reach {what} {to}: {}",
            ping.output
        );
    }

    // Instance metadata answers for the instance that asks, from moto's state.
    for n in [&a, &b] {
        assert_eq!(imds(n, "/latest/meta-data/instance-id"), n.instance_id());
        assert_eq!(
            imds(n, "/latest/meta-data/local-ipv4"),
            n.primary_ip().to_string()
        );
        assert_eq!(imds(n, "/latest/meta-data/mac"), n.instance().mac);
        assert_eq!(
            imds(n, "/latest/meta-data/network/interfaces/macs/"),
            format!("{}/", n.instance().mac)
        );
        let mac = &n.instance().mac;
        assert_eq!(
            imds(
                n,
                &format!("/latest/meta-data/network/interfaces/macs/{mac}/subnet-ipv4-cidr-block")
            ),
            "10.0.0.0/24"
        );
        assert_eq!(
            imds(
                n,
                &format!("/latest/meta-data/network/interfaces/macs/{mac}/security-group-ids")
            ),
            vpc.security_group()
        );
    }
    assert_eq!(imds(&a, "/latest/meta-data/instance-type"), "t3.small");
    assert_eq!(imds(&b, "/latest/meta-data/instance-type"), "m5.large");
    let doc: serde_json::Value =
        serde_json::from_str(&imds(&a, "/latest/dynamic/instance-identity/document")).unwrap();
    assert_eq!(doc["region"], "us-west-2");
    assert_eq!(doc["instanceId"], a.instance_id());
    assert_eq!(
        imds(&a, "/latest/meta-data/iam/security-credentials/"),
        INSTANCE_PROFILE_ROLE
    );
    let creds: serde_json::Value = serde_json::from_str(&imds(
        &a,
        &format!("/latest/meta-data/iam/security-credentials/{INSTANCE_PROFILE_ROLE}"),
    ))
    .unwrap();
    assert_eq!(creds["Code"], "Success");

    // The router routes each primary address to its ENI.
    let routes = router_routes(&vpc);
    for n in [&a, &b] {
        assert_eq!(
            routes.get(&n.primary_ip().to_string()),
            Some(&router_link_name(&n.instance().primary_eni)),
            "{routes:?}"
        );
    }

    // An ENI attached in moto appears in the node (MAC, down), in IMDS and in the router.
    let eni = ok(
        &a,
        vpc.ec2().create_eni(&EniRequest {
            subnet_id: vpc.subnet().id.clone(),
            security_groups: vec![vpc.security_group().to_owned()],
            secondary_ips: 2,
            description: "fabric test".into(),
            ..EniRequest::default()
        }),
    );
    let attachment = ok(&a, vpc.ec2().attach_eni(&eni.id, a.instance_id(), 1));
    ok(&a, vpc.sync());
    let eth1 = ok(&a, a.ns().link("eth1"));
    check!(
        a,
        eth1.is_some(),
        "eth1 did not appear after the attachment"
    );
    assert_eq!(eth1.unwrap()["address"], eni.mac.as_str());
    assert_eq!(
        link_is_up(&a, "eth1"),
        Some(false),
        "ipamd brings ENIs up, not the fabric"
    );
    let macs = imds(&a, "/latest/meta-data/network/interfaces/macs/");
    assert_eq!(macs, format!("{}/\n{}/", a.instance().mac, eni.mac));
    let local = imds(
        &a,
        &format!(
            "/latest/meta-data/network/interfaces/macs/{}/local-ipv4s",
            eni.mac
        ),
    );
    let listed: Vec<String> = eni.private_ips.iter().map(ToString::to_string).collect();
    assert_eq!(local, listed.join("\n"));
    assert_eq!(
        imds(
            &a,
            &format!(
                "/latest/meta-data/network/interfaces/macs/{}/device-number",
                eni.mac
            )
        ),
        "1"
    );
    let routes = router_routes(&vpc);
    let link = router_link_name(&eni.id);
    for ip in &eni.private_ips {
        assert_eq!(routes.get(&ip.to_string()), Some(&link), "{routes:?}");
    }
    let neigh = ok(&a, vpc.router().neighbours());
    check!(
        a,
        eni.private_ips.iter().all(
            |ip| neigh.iter().any(|n| n["dst"] == ip.to_string().as_str()
                && n["lladdr"] == eni.mac.as_str()
                && n["dev"] == link.as_str())
        ),
        "the router does not deliver {:?} to {}: {neigh:?}",
        eni.private_ips,
        eni.mac
    );

    // Addresses assigned and unassigned out of band are routed and unrouted.
    let added = ok(&a, vpc.ec2().assign_private_ips(&eni.id, 1));
    assert_eq!(added.len(), 1);
    ok(&a, vpc.sync());
    assert_eq!(router_routes(&vpc).get(&added[0].to_string()), Some(&link));
    ok(&a, vpc.ec2().unassign_private_ips(&eni.id, &added));
    ok(&a, vpc.sync());
    assert!(!router_routes(&vpc).contains_key(&added[0].to_string()));

    // With an IMDS lag, metadata shows moto's state of `lag` ago: the router follows moto at
    // once, metadata only after the lag.
    vpc.set_imds_lag(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(2500));
    let lagging = ok(&a, vpc.ec2().assign_private_ips(&eni.id, 1))[0];
    let assigned = Instant::now();
    ok(&a, vpc.sync());
    assert_eq!(router_routes(&vpc).get(&lagging.to_string()), Some(&link));
    let path = format!(
        "/latest/meta-data/network/interfaces/macs/{}/local-ipv4s",
        eni.mac
    );
    let early = imds(&a, &path);
    check!(
        a,
        !early.lines().any(|l| l == lagging.to_string())
            || assigned.elapsed() >= Duration::from_secs(2),
        "IMDS showed {lagging} before the 2 s lag: {early}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    check!(
        a,
        imds(&a, &path).lines().any(|l| l == lagging.to_string()),
        "IMDS still does not show {lagging} after the lag"
    );
    vpc.set_imds_lag(Duration::ZERO);

    // Detaching removes the link, the routes and the metadata.
    ok(&a, vpc.ec2().detach_eni(&attachment));
    ok(&a, vpc.sync());
    check!(
        a,
        ok(&a, a.ns().link("eth1")).is_none(),
        "eth1 is still there after the detachment"
    );
    let routes = router_routes(&vpc);
    check!(
        a,
        !routes.values().any(|dev| *dev == link),
        "routes to the detached ENI remain: {routes:?}"
    );
    assert_eq!(
        imds(&a, "/latest/meta-data/network/interfaces/macs/"),
        format!("{}/", a.instance().mac)
    );

    // A node that goes away takes its links and routes with it.
    let (b_ns, b_ip) = (b.ns().path(), b.primary_ip());
    drop(b);
    assert!(!b_ns.exists());
    assert!(!router_routes(&vpc).contains_key(&b_ip.to_string()));
    let (vpc_ns, inet_ns) = (vpc.router().path(), vpc.internet().path());
    drop(a);
    drop(vpc);
    assert!(!vpc_ns.exists() && !inet_ns.exists());
}

/// IPv6 in moto reaches instance metadata through the hypervisor: an IPv4-only VPC shows no
/// IPv6 path (404, unlisted); once the VPC has an Amazon-provided /56, the node's subnet a /64
/// of it and the primary ENI two addresses, IMDS shows `ipv6`, `ipv6s`,
/// `subnet-ipv6-cidr-blocks` and `vpc-ipv6-cidr-blocks` as EC2 does, and still no
/// `ipv6-prefix` (none is delegated).
#[test]
fn ipv6_blocks_and_addresses_in_moto_reach_instance_metadata() {
    const FIELDS: [&str; 4] = [
        "ipv6s",
        "ipv6-prefix",
        "subnet-ipv6-cidr-blocks",
        "vpc-ipv6-cidr-blocks",
    ];
    let vpc = fabric();
    let a = node(&vpc, NodeSpec::new("fabric-v6", "t3.small").without_ipamd());
    let dir = format!(
        "/latest/meta-data/network/interfaces/macs/{}/",
        a.instance().mac
    );
    let status = |path: &str| {
        ok(
            &a,
            imds_get(a.ns(), SocketAddr::from((IMDS_ADDR, 80)), path),
        )
        .status
    };
    assert_eq!(status("/latest/meta-data/ipv6"), 404);
    let index = imds(&a, &dir);
    for field in FIELDS {
        assert_eq!(status(&format!("{dir}{field}")), 404, "{field}");
        assert!(!index.lines().any(|l| l == field), "{field} in {index}");
    }

    let vpc_blocks = ok(&a, vpc.ec2().associate_vpc_ipv6_cidr(vpc.vpc_id()));
    assert_eq!(vpc_blocks.len(), 1, "{vpc_blocks:?}");
    let subnet_block = vpc_blocks[0].subnets(64).unwrap().next().unwrap();
    ok(
        &a,
        vpc.ec2()
            .associate_subnet_ipv6_cidr(&vpc.subnet().id, subnet_block),
    );
    ok(&a, vpc.hypervisor().refresh_ipv6_cidrs());
    let primary = a.instance().primary_eni.clone();
    let added = ok(&a, vpc.ec2().assign_ipv6_addresses(&primary, 2));
    assert_eq!(added.len(), 2, "{added:?}");
    ok(&a, vpc.sync());
    let eni = ok(&a, vpc.ec2().eni(&primary)).unwrap();
    assert_eq!(eni.ipv6_addresses.len(), 2, "{eni:?}");
    check!(
        a,
        eni.ipv6_addresses
            .iter()
            .all(|ip| subnet_block.contains(ip)),
        "moto's addresses {:?} are not in {subnet_block}",
        eni.ipv6_addresses
    );
    assert_eq!(
        imds(&a, "/latest/meta-data/ipv6"),
        eni.ipv6_addresses[0].to_string()
    );
    let listed: Vec<String> = eni.ipv6_addresses.iter().map(ToString::to_string).collect();
    assert_eq!(imds(&a, &format!("{dir}ipv6s")), listed.join("\n"));
    assert_eq!(
        imds(&a, &format!("{dir}subnet-ipv6-cidr-blocks")),
        subnet_block.to_string()
    );
    assert_eq!(
        imds(&a, &format!("{dir}vpc-ipv6-cidr-blocks")),
        vpc_blocks[0].to_string()
    );
    assert_eq!(status(&format!("{dir}ipv6-prefix")), 404);
    let index = imds(&a, &dir);
    for field in ["ipv6s", "subnet-ipv6-cidr-blocks", "vpc-ipv6-cidr-blocks"] {
        assert!(index.lines().any(|l| l == field), "{field} not in {index}");
    }
    assert!(!index.lines().any(|l| l == "ipv6-prefix"), "{index}");
    assert!(imds(&a, "/latest/meta-data/").lines().any(|l| l == "ipv6"));
    // The IPv4 view is unchanged.
    assert_eq!(
        imds(&a, "/latest/meta-data/local-ipv4"),
        a.primary_ip().to_string()
    );
    let v4: Vec<String> = eni.private_ips.iter().map(ToString::to_string).collect();
    assert_eq!(imds(&a, &format!("{dir}local-ipv4s")), v4.join("\n"));
}

/// Pods of one node, with their addresses.
struct NodePods {
    pods: Vec<(Pod, Ipv4Addr)>,
}

/// Adds `count` pods to `node` (no retries: the pool is fixed in IMDS-only mode) and checks
/// that each address is the node's in moto and routed to its ENI by the router.
fn add_pods(vpc: &VpcFabric, node: &VpcNode, prefix: &str, count: usize) -> NodePods {
    let mut pods = Vec::new();
    for i in 0..count {
        let p = pod("default", &format!("{prefix}-{i}"));
        let result = ok(node, node.add_pod(&p, "1.0.0"));
        let ip = harness::cni::result_ip(&result).unwrap();
        assert_vpc_address(vpc, node, ip);
        pods.push((p, ip));
    }
    NodePods { pods }
}

#[test]
fn imds_only_pods_on_two_nodes_reach_each_other_through_the_router() {
    let vpc = fabric();
    let spec = |name: &str| NodeSpec::new(name, "m5.large").imds_only(3, &[3]);
    let a = node(&vpc, spec("imds-a"));
    let b = node(&vpc, spec("imds-b"));
    // ipamd brought the pre-attached ENI up.
    for n in [&a, &b] {
        check!(
            n,
            link_is_up(n, "eth1") == Some(true),
            "ipamd did not bring eth1 up"
        );
    }
    let pods_a = add_pods(&vpc, &a, "a", 6);
    let pods_b = add_pods(&vpc, &b, "b", 6);
    for (n, pods) in [(&a, &pods_a), (&b, &pods_b)] {
        let on_eth1 = pods
            .pods
            .iter()
            .filter(|(_, ip)| {
                ok(n, n.eni_holding(*ip))
                    .and_then(|e| e.device_index())
                    .is_some_and(|d| d == 1)
            })
            .count();
        check!(
            n,
            on_eth1 == 3,
            "3 of the 6 pods must sit on eth1, {on_eth1} do"
        );
    }

    let all: Vec<(&VpcNode, &Pod, Ipv4Addr)> = pods_a
        .pods
        .iter()
        .map(|(p, ip)| (&a, p, *ip))
        .chain(pods_b.pods.iter().map(|(p, ip)| (&b, p, *ip)))
        .collect();
    let mut destinations: Vec<IpAddr> = all.iter().map(|(_, _, ip)| IpAddr::from(*ip)).collect();
    destinations.push(a.primary_ip().into());
    destinations.push(b.primary_ip().into());
    let sources: Vec<(String, &test_support::netns::Netns, Vec<IpAddr>)> = all
        .iter()
        .map(|(n, p, ip)| {
            (
                format!("{}:{}({ip})", n.instance_id(), p.name),
                p.ns().unwrap(),
                vec![IpAddr::from(*ip)],
            )
        })
        .collect();
    let failures = ping_matrix(&sources, &destinations, 6).unwrap();
    check!(
        a,
        failures.is_empty(),
        "unreachable (source, destination): {failures:?}\n{}",
        b.diag()
    );

    // TCP across nodes, between pods on secondary ENIs and on primary ENIs: the server sees the
    // client pod's own address (no translation inside the VPC).
    for (client, server) in [
        (&pods_a.pods[0], &pods_b.pods[5]),
        (&pods_b.pods[4], &pods_a.pods[1]),
    ] {
        let peer = tcp_round_trip(server.0.ns().unwrap(), server.1, client.0.ns().unwrap())
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.diag(), b.diag()));
        assert_eq!(peer.ip(), IpAddr::from(client.1), "the server saw {peer}");
    }
}
