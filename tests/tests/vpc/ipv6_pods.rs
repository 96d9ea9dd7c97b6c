//! IPv6 pods end to end on the simulated VPC (issue 15): two EC2-mode nodes with the settings
//! of an EKS IPv6 cluster (`ENABLE_IPv6=true`, `ENABLE_IPv4=false`,
//! `ENABLE_PREFIX_DELEGATION=true`), set up as aws-node sets a node up. `ipamd install-cni`
//! copies the image's plugins (aws-cni, egress-cni, host-local, ...) into the node's
//! `opt/cni/bin` and sets the IPv6 sysctls; ipamd then takes a /80 for the primary ENI through
//! EC2 (moto) and writes the conflist chaining egress-cni (`ENABLE_V4_EGRESS`, true by default
//! in IPv6 mode). libcni runs that conflist for every pod, with the installed plugins, in the
//! node's own mount namespace (whose `/run/cni` holds egress-cni's host-local leases, as a
//! node's does).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use harness::cni::result_address;
use harness::node::NETWORK_NAME;
use harness::probe::ping_matrix;
use harness::vpc::INTERNET_HOST_V6;
use harness::vpc::ipv6::{self, EGRESS_RANGE};
use harness::{CniClient, FabricOptions, Pod, VpcFabric, VpcNode};
use ipnet::{Ipv4Net, Ipv6Net};
use test_support::netns::Netns;

use crate::ipv6::{count_echo_requests_from, primary_eni, raw_rule_packets};
use crate::snat::internet_peer;
use crate::{check, ec2_node, fabric_with, node, ok, pod};

/// Pods per node (50 in all).
const PODS_PER_NODE: usize = 25;

/// A node of an IPv6 cluster, its plugins installed from `image` by install-cni.
fn ipv6_node(vpc: &VpcFabric, name: &str, image: &Path) -> VpcNode {
    node(vpc, ipv6::cluster_spec(ec2_node(name, "m5.large"), image))
}

/// One pod: its sandbox, IPv6 address (eth0) and egress IPv4 address (v4if0).
struct V6Pod {
    pod: Pod,
    ip: Ipv6Addr,
    v4: Ipv4Addr,
}

impl V6Pod {
    fn ns(&self) -> &Netns {
        self.pod.ns().unwrap()
    }
}

/// ADD through libcni with the node's conflist: the result (egress-cni passes aws-cni's on,
/// adding its two interfaces but no address, as the reference's does, so the runtime reports
/// the IPv6 address only) gives the pod a /128 of `prefix` on eth0; `v4if0` in the pod holds
/// an address of the egress range.
fn add(node: &VpcNode, client: &CniClient<'_>, prefix: Ipv6Net, name: &str) -> V6Pod {
    let pod = pod("default", name);
    let out = ok(node, client.add(NETWORK_NAME, &pod));
    check!(node, out.success(), "ADD of {name}: {}", out.describe());
    let result = out.json.clone().unwrap_or_default();
    let ips = result["ips"].as_array().map_or(0, Vec::len);
    let v6 = result_address(&result, "eth0").and_then(|a| a.parse::<Ipv6Net>().ok());
    check!(
        node,
        ips == 1 && v6.is_some_and(|n| n.prefix_len() == 128 && prefix.contains(&n.addr())),
        "{name}: the result's one address must be a /128 of the node's {prefix} on eth0: {result}"
    );
    let names: Vec<&str> = result["interfaces"]
        .as_array()
        .map(|i| i.iter().filter_map(|i| i["name"].as_str()).collect())
        .unwrap_or_default();
    check!(
        node,
        names.len() == 4 && names[1] == "eth0" && names[3] == "v4if0",
        "{name}: interfaces {names:?}"
    );
    let v4 = ok(node, ipv6::egress_ipv4(&pod));
    let range: Ipv4Net = EGRESS_RANGE.parse().unwrap();
    check!(
        node,
        v4.is_some_and(|n| range.contains(&n.addr())),
        "{name}: v4if0's address {v4:?} is not in {EGRESS_RANGE}"
    );
    V6Pod {
        pod,
        ip: v6.unwrap().addr(),
        v4: v4.unwrap().addr(),
    }
}

/// What a pod leaves on a node's host side: links, IPv6 routes and rules (not the kernel's
/// `local` table), and the nat table.
fn host_side(node: &VpcNode) -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
    let ns = node.ns();
    let mut state: BTreeSet<String> = ok(node, ns.link_names()).into_iter().collect();
    state.extend(
        ok(node, ns.ip_json(&["-6", "route", "show", "table", "all"]))
            .into_iter()
            .filter(|r| r["table"] != "local")
            .map(|r| format!("route {r}")),
    );
    let rules: BTreeSet<String> = ok(node, ns.ip_json(&["-6", "rule", "show"]))
        .into_iter()
        .map(|r| r.to_string())
        .collect();
    let nat = ok(node, ns.exec_checked("iptables-save", &["-t", "nat"]))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => l[..i].to_owned(),
            _ => l.to_owned(),
        })
        .collect();
    (state, rules, nat)
}

/// The IPv6 addresses of the node's checkpoint.
fn checkpoint_v6(node: &VpcNode) -> BTreeSet<Ipv6Addr> {
    ok(node, node.checkpoint_ipv6s())
}

/// The node as aws-node left it: install-cni's plugins and sysctls, one /80 on the primary
/// ENI (none before: ipamd asked EC2 for it), a conflist chaining egress-cni with the node's
/// IPv4 address. Returns the /80.
fn assert_node_ready(vpc: &VpcFabric, node: &VpcNode) -> Ipv6Net {
    let installed = node.dir().join("opt").join("cni").join("bin");
    for plugin in ipamd::install::SHIPPED_PLUGINS {
        check!(
            node,
            installed.join(plugin).is_file(),
            "install-cni did not install {plugin} in {}",
            installed.display()
        );
    }
    check!(
        node,
        node.cni_path() == installed.to_string_lossy(),
        "plugins do not run from the installed directory: CNI_PATH={}",
        node.cni_path()
    );
    for (key, value) in [
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.all.disable_ipv6", "0"),
        ("net.ipv6.conf.eth0.accept_ra", "2"),
    ] {
        let got = ok(node, node.ns().sysctl_get(key));
        check!(node, got == value, "{key}={got}, install-cni sets {value}");
    }
    let eni = primary_eni(vpc, node);
    check!(
        node,
        eni.ipv6_prefixes.len() == 1 && eni.ipv6_prefixes[0].prefix_len() == 80,
        "the primary ENI {} has IPv6 prefixes {:?} in moto, ipamd assigns one /80",
        eni.id,
        eni.ipv6_prefixes
    );
    let conflist = ok(node, node.conflist());
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .map(|p| p.iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    check!(
        node,
        types == ["aws-cni", "egress-cni", "portmap"],
        "the IPv6 conflist chains {types:?}: {conflist}"
    );
    let egress = &conflist["plugins"][1];
    check!(
        node,
        egress["nodeIP"] == node.primary_ip().to_string().as_str()
            && egress["ipam"]["dataDir"] == "/run/cni/v6pd/egress-v4-ipam",
        "egress-cni's entry: {egress}"
    );
    eni.ipv6_prefixes[0]
}

/// The pods of one node, added in their own thread per node.
fn add_pods(node: &VpcNode, client: &CniClient<'_>, prefix: Ipv6Net, tag: &str) -> Vec<V6Pod> {
    (0..PODS_PER_NODE)
        .map(|k| add(node, client, prefix, &format!("{tag}-{k}")))
        .collect()
}

/// Two nodes of an IPv6 cluster with 25 pods each: every pod gets its own /128 of its node's
/// /80 and an egress IPv4; pods reach each other across nodes and the nodes over IPv6, the
/// IPv6 internet with their own address and the IPv4 internet as their node's IPv4 address.
/// CHECK detects an address removed from a pod. ipamd killed (-9) and started again keeps
/// every allocation and hands a new pod a fresh address. DEL of every pod leaves the nodes'
/// host side (links, IPv6 routes and rules, nat table), the checkpoint and the egress leases
/// as they were before the first pod.
#[test]
fn ipv6_pods_on_two_nodes_reach_each_other_and_both_internets_and_leave_nothing() {
    let vpc = fabric_with(FabricOptions::default().with_ipv6());
    let image = tempfile::tempdir().unwrap();
    test_support::prereqs::stage_plugins(image.path(), &ipamd::install::SHIPPED_PLUGINS)
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| ipv6_node(&vpc, "v6-node-a", image.path()));
        let b = s.spawn(|| ipv6_node(&vpc, "v6-node-b", image.path()));
        (a.join().unwrap(), b.join().unwrap())
    });
    let prefix_a = assert_node_ready(&vpc, &a);
    let prefix_b = assert_node_ready(&vpc, &b);
    check!(&a, prefix_a != prefix_b, "both nodes got {prefix_a}");
    let before_a = host_side(&a);
    let before_b = host_side(&b);
    let root_a = ok(&a, ipv6::node_root(&a));
    let root_b = ok(&b, ipv6::node_root(&b));

    let (mut pods_a, mut pods_b) = {
        let client_a = ok(&a, CniClient::new(&a)).in_root(&root_a);
        let client_b = ok(&b, CniClient::new(&b)).in_root(&root_b);
        std::thread::scope(|s| {
            let ha = s.spawn(|| add_pods(&a, &client_a, prefix_a, "a"));
            let hb = s.spawn(|| add_pods(&b, &client_b, prefix_b, "b"));
            (ha.join().unwrap(), hb.join().unwrap())
        })
    };
    let all: Vec<&V6Pod> = pods_a.iter().chain(&pods_b).collect();
    let v6: BTreeSet<Ipv6Addr> = all.iter().map(|p| p.ip).collect();
    check!(
        &a,
        v6.len() == 2 * PODS_PER_NODE,
        "an IPv6 address was given twice"
    );
    for (n, pods) in [(&a, &pods_a), (&b, &pods_b)] {
        let v4: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.v4).collect();
        check!(
            n,
            v4.len() == pods.len(),
            "an egress IPv4 was given twice on a node"
        );
        let held = checkpoint_v6(n);
        let want: BTreeSet<Ipv6Addr> = pods.iter().map(|p| p.ip).collect();
        check!(n, held == want, "checkpoint {held:?}, pods {want:?}");
    }

    // IPv6 across nodes, to every pod and both nodes.
    let mut destinations: Vec<IpAddr> = v6.iter().copied().map(IpAddr::V6).collect();
    for n in [&a, &b] {
        destinations.push(IpAddr::V6(n.primary_ipv6().unwrap()));
    }
    let chosen = [
        &pods_a[0],
        &pods_a[PODS_PER_NODE - 1],
        &pods_b[0],
        &pods_b[PODS_PER_NODE - 1],
    ];
    let sources: Vec<(String, &Netns, Vec<IpAddr>)> = chosen
        .iter()
        .map(|p| {
            (
                format!("{} ({})", p.pod.name, p.ip),
                p.ns(),
                vec![IpAddr::V6(p.ip)],
            )
        })
        .collect();
    let failures = ok(&a, ping_matrix(&sources, &destinations, 4));
    check!(
        &a,
        failures.is_empty(),
        "unreachable over IPv6 (source, destination): {failures:?}"
    );

    // The IPv6 internet sees the pod's own address; the IPv4 internet sees the node's.
    for (n, p, tag) in [
        (&a, &pods_a[3], "vcni-pod-a"),
        (&b, &pods_b[4], "vcni-pod-b"),
    ] {
        count_echo_requests_from(n, &vpc, p.ip, tag);
        let out = ok(n, p.ns().ping(IpAddr::V6(INTERNET_HOST_V6)));
        check!(
            n,
            out.ok,
            "{} cannot ping {INTERNET_HOST_V6}: {}",
            p.ip,
            out.output
        );
        let seen = raw_rule_packets(n, vpc.internet(), tag);
        check!(n, seen >= 1, "{INTERNET_HOST_V6} saw nothing from {}", p.ip);
        let peer = ok(n, internet_peer(&vpc, p.ns()));
        check!(
            n,
            peer == IpAddr::V4(n.primary_ip()),
            "{} reached the IPv4 internet as {peer}, not as its node {}",
            p.pod.name,
            n.primary_ip()
        );
    }

    // CHECK passes, then fails once the pod's address is gone.
    {
        let client_a = ok(&a, CniClient::new(&a)).in_root(&root_a);
        let victim = &pods_a[1];
        let out = ok(&a, client_a.check(NETWORK_NAME, &victim.pod));
        check!(
            &a,
            out.success(),
            "CHECK of an intact pod: {}",
            out.describe()
        );
        let addr = format!("{}/128", victim.ip);
        ok(
            &a,
            victim.ns().ip(&["-6", "addr", "del", &addr, "dev", "eth0"]),
        );
        let out = ok(&a, client_a.check(NETWORK_NAME, &victim.pod));
        check!(
            &a,
            !out.success() && out.describe().contains(&victim.ip.to_string()),
            "CHECK after removing {addr} from eth0: {}",
            out.describe()
        );
    }

    // ipamd killed and started again: every allocation is back; a new pod gets a fresh address.
    let held = checkpoint_v6(&a);
    let restarted = a.kill_ipamd().and_then(|()| a.start_ipamd());
    ok(&a, restarted);
    check!(
        &a,
        checkpoint_v6(&a) == held,
        "the checkpoint changed over the restart"
    );
    {
        let client_a = ok(&a, CniClient::new(&a)).in_root(&root_a);
        let out = ok(&a, client_a.check(NETWORK_NAME, &pods_a[2].pod));
        check!(
            &a,
            out.success(),
            "CHECK after the restart: {}",
            out.describe()
        );
        let fresh = add(&a, &client_a, prefix_a, "a-after-restart");
        check!(
            &a,
            !v6.contains(&fresh.ip),
            "{} is held by a pod from before the restart",
            fresh.ip
        );
        pods_a.push(fresh);
    }

    // DEL of every pod, then the sandboxes go: nothing is left.
    for (n, root, pods, before) in [
        (&a, &root_a, &mut pods_a, &before_a),
        (&b, &root_b, &mut pods_b, &before_b),
    ] {
        let client = ok(n, CniClient::new(n)).in_root(root);
        for p in pods.iter_mut() {
            let out = ok(n, client.del(NETWORK_NAME, &p.pod));
            check!(
                n,
                out.success(),
                "DEL of {}: {}",
                p.pod.name,
                out.describe()
            );
            ok(n, p.pod.delete_netns());
        }
        check!(
            n,
            checkpoint_v6(n).is_empty(),
            "the checkpoint still holds {:?}",
            checkpoint_v6(n)
        );
        let leases = ipv6::egress_leases(n);
        check!(n, leases.is_empty(), "egress leases left: {leases:?}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut after = host_side(n);
        while after != *before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            after = host_side(n);
        }
        check!(
            n,
            after == *before,
            "the host side changed: links/routes now {:?} (was {:?}); rules now {:?} (was {:?}); nat now {:?} (was {:?})",
            after.0.difference(&before.0).collect::<Vec<_>>(),
            before.0.difference(&after.0).collect::<Vec<_>>(),
            after.1.difference(&before.1).collect::<Vec<_>>(),
            before.1.difference(&after.1).collect::<Vec<_>>(),
            after.2,
            before.2
        );
    }
    drop(root_a);
    drop(root_b);
}
