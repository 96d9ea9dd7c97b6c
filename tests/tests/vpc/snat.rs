//! Node networking on the simulated VPC (issue 4): traffic from pods to the world beyond the VPC
//! (a TCP server in the `internet` namespace, 203.0.113.1) is SNATed to the node's primary IP,
//! from pods on the primary ENI and on secondary ENIs alike; with
//! `AWS_VPC_K8S_CNI_EXTERNALSNAT=true` or an excluded CIDR the server sees the pod's own VPC
//! address (the internet routes the VPC back through the router). NodePort-style connections
//! arriving on the primary ENI and DNATed to a pod on a secondary ENI get their replies out of
//! the primary ENI (the connmark path), proven by interface counters and by a node without
//! NodePort support whose replies leave through the pod's ENI and die at the VPC router. A
//! restarted ipamd neither duplicates its rules nor keeps stale ones, the 30 s reconcile puts
//! back what was deleted, and a node whose pods are all gone and whose ipamd stopped holds no
//! pod route, rule or veth.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use harness::probe::tcp_round_trip;
use harness::vpc::INTERNET_HOST;
use harness::{Pod, VpcFabric, VpcNode};
use serde_json::Value;
use test_support::netns::Netns;

use crate::{add_pod_retrying, assert_vpc_address, check, ec2_node, fabric, node, ok, pod};

/// A pod added through the plugin, with where it landed.
pub struct Placed {
    /// The sandbox.
    pub pod: Pod,
    /// The ADD result (prevResult of the DEL).
    pub result: Value,
    /// Its VPC address.
    pub ip: Ipv4Addr,
    /// Device index of the ENI holding the address.
    pub device: u32,
}

/// Adds `count` pods named `<prefix>-<k>` on `node`.
pub fn add_pods(vpc: &VpcFabric, node: &VpcNode, prefix: &str, count: usize) -> Vec<Placed> {
    (0..count)
        .map(|k| {
            let p = pod("default", &format!("{prefix}-{k}"));
            let (result, ip) = add_pod_retrying(node, &p, Duration::from_secs(90));
            let eni = assert_vpc_address(vpc, node, ip);
            Placed {
                pod: p,
                result,
                ip,
                device: eni.device_index().unwrap_or(0),
            }
        })
        .collect()
}

/// The address a TCP server on 203.0.113.1 in the internet namespace sees for a connection
/// from `client`.
pub fn internet_peer(vpc: &VpcFabric, client: &Netns) -> Result<IpAddr, String> {
    tcp_round_trip(vpc.internet(), INTERNET_HOST, client)
        .map(|peer| peer.ip())
        .map_err(|e| e.to_string())
}

/// `iptables-save` of the node without comment lines and counters, table by table.
fn iptables_save(node: &VpcNode) -> Vec<String> {
    let out = ok(node, node.ns().exec_checked("iptables-save", &[]));
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => l[..i].to_owned(),
            _ => l.to_owned(),
        })
        .collect()
}

/// `ip rule` of the node, whitespace-normalised.
fn ip_rules(node: &VpcNode) -> Vec<String> {
    ok(node, node.ns().ip(&["-4", "rule", "show"]))
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The node's rules of the pods and of node networking (512, 1024, 1535, 1536); not the ENI
/// rules 32765, which follow the warm pool.
fn pod_and_node_rules(node: &VpcNode) -> Vec<String> {
    ip_rules(node)
        .into_iter()
        .filter(|r| {
            ["512:", "1024:", "1535:", "1536:"]
                .iter()
                .any(|p| r.starts_with(p))
        })
        .collect()
}

fn iptables(node: &VpcNode, args: &[&str]) {
    ok(node, node.ns().exec_checked("iptables", args));
}

/// TX packets of a node link (`ip -s link`).
fn tx_packets(node: &VpcNode, link: &str) -> u64 {
    let links = ok(
        node,
        node.ns().ip_json(&["-s", "link", "show", "dev", link]),
    );
    links
        .first()
        .and_then(|l| l["stats64"]["tx"]["packets"].as_u64())
        .unwrap_or_else(|| panic!("no TX counter for {link}: {links:?}"))
}

/// Pods of the node on device 0 and on a secondary ENI must both exist.
fn assert_both_placements(node: &VpcNode, pods: &[Placed]) {
    let devices: Vec<u32> = pods.iter().map(|p| p.device).collect();
    check!(
        node,
        devices.contains(&0) && devices.iter().any(|d| *d > 0),
        "pods of {} must sit on the primary and on a secondary ENI: devices {devices:?}",
        node.instance_id()
    );
}

#[test]
fn pods_reach_the_internet_as_the_node_ip_unless_external_snat_or_excluded() {
    let vpc = fabric();
    let specs = [
        ec2_node("snat", "t3.small"),
        ec2_node("external", "t3.small").env("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
        ec2_node("excluded", "t3.small")
            .env("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "203.0.113.0/24"),
    ];
    let mut nodes: Vec<VpcNode> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .into_iter()
            .map(|spec| {
                let vpc = &vpc;
                s.spawn(move || node(vpc, spec))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // t3.small: 3 pod IPs per ENI, so 5 pods need the primary and a secondary ENI.
    let pods: Vec<Vec<Placed>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let vpc = &vpc;
                s.spawn(move || add_pods(vpc, n, &format!("egress{i}"), 5))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for ((n, placed), snat) in nodes.iter().zip(&pods).zip([true, false, false]) {
        assert_both_placements(n, placed);
        for p in placed {
            let peer = internet_peer(&vpc, p.pod.ns().unwrap())
                .unwrap_or_else(|e| panic!("{e}\n{}", n.diag()));
            let want = if snat {
                IpAddr::from(n.primary_ip())
            } else {
                IpAddr::from(p.ip)
            };
            check!(
                n,
                peer == want,
                "{}: pod {} ({}, eth{}) reached the internet as {peer}, expected {want} ({})",
                n.settings().node_name,
                p.pod.name,
                p.ip,
                p.device,
                if snat {
                    "SNAT to the node's primary IP"
                } else {
                    "its own VPC address"
                }
            );
        }
    }

    // What each node's iptables holds.
    let [snat_rules, external_rules, excluded_rules] = [0, 1, 2].map(|i| iptables_save(&nodes[i]));
    let snat_to = format!(
        "-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source {} --random-fully",
        nodes[0].primary_ip()
    );
    check!(
        nodes[0],
        snat_rules.iter().filter(|l| **l == snat_to).count() == 1,
        "no single SNAT rule to the primary IP: {snat_rules:#?}"
    );
    check!(
        nodes[1],
        !external_rules
            .iter()
            .any(|l| l.contains("AWS-SNAT-CHAIN") || l.contains("AWS-CONNMARK-CHAIN")),
        "EXTERNALSNAT=true leaves no SNAT or connmark chain: {external_rules:#?}"
    );
    check!(
        nodes[2],
        excluded_rules.iter().any(|l| l
            == "-A AWS-SNAT-CHAIN-0 -d 203.0.113.0/24 -m comment --comment \"AWS SNAT CHAIN EXCLUSION\" -j RETURN"),
        "no exclusion rule: {excluded_rules:#?}"
    );

    // Inside the VPC nothing is translated, SNAT on or not: a pod of the SNAT node on a
    // secondary ENI talks to a pod of the external-SNAT node with its own address.
    let client = pods[0].iter().find(|p| p.device > 0).unwrap();
    let server = &pods[1][0];
    let peer = tcp_round_trip(
        server.pod.ns().unwrap(),
        server.ip,
        client.pod.ns().unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[0].diag()));
    assert_eq!(
        peer.ip(),
        IpAddr::from(client.ip),
        "VPC traffic must not be SNATed"
    );

    // Teardown: every pod deleted and its sandbox removed (as runtimes do), ipamd stopped: no
    // pod route, rule or veth is left.
    for (n, mut placed) in nodes.iter_mut().zip(pods) {
        for p in &mut placed {
            ok(n, n.del_pod(&p.pod, "1.0.0", Some(&p.result)));
            ok(n, p.pod.delete_netns());
        }
        let stopped = n.stop_ipamd(Duration::from_secs(15));
        let status = ok(n, stopped);
        check!(n, status.success(), "ipamd exited with {status} on SIGTERM");
        assert_no_pod_leftovers(n, &placed);
    }
}

/// No veth, `/32` route or rule 512/1536 of any pod is left on the node (the veths go with the
/// pods' namespaces, in the kernel's asynchronous namespace cleanup: waited for up to 10 s).
fn assert_no_pod_leftovers(node: &VpcNode, pods: &[Placed]) {
    let veths = || -> Vec<String> {
        ok(node, node.ns().link_names())
            .into_iter()
            .filter(|l| l.starts_with("eni"))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !veths().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let veths = veths();
    check!(node, veths.is_empty(), "host veths left: {veths:?}");
    let rules = ip_rules(node);
    let pod_rules: Vec<&String> = rules
        .iter()
        .filter(|r| r.starts_with("512:") || r.starts_with("1536:"))
        .collect();
    check!(node, pod_rules.is_empty(), "pod rules left: {pod_rules:?}");
    for p in pods {
        let routes = ok(node, node.routes_to(p.ip));
        check!(
            node,
            routes.is_empty(),
            "route to {} left: {routes:?}",
            p.ip
        );
    }
}

/// Accepts one connection on `listener`, echoes `rounds` lines, returns the peer it saw.
fn echo_server(
    listener: TcpListener,
    rounds: usize,
) -> std::thread::JoinHandle<Option<SocketAddr>> {
    std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut buf = [0u8; 64];
        for _ in 0..rounds {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            stream.write_all(&buf[..n]).ok()?;
        }
        Some(peer)
    })
}

/// From `client`, connects to `addr` (within `connect_timeout`) and exchanges `rounds` lines.
fn echo_client(
    client: &Netns,
    addr: SocketAddr,
    rounds: usize,
    connect_timeout: Duration,
) -> Result<(), String> {
    client
        .run_in(move || -> std::io::Result<()> {
            let mut stream = TcpStream::connect_timeout(&addr, connect_timeout)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            for k in 0..rounds {
                let line = format!("round {k}\n");
                stream.write_all(line.as_bytes())?;
                let mut buf = [0u8; 64];
                let n = stream.read(&mut buf)?;
                if buf[..n] != *line.as_bytes() {
                    return Err(std::io::Error::other(format!(
                        "echo returned {:?}",
                        String::from_utf8_lossy(&buf[..n])
                    )));
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{addr}: {e}"))
}

const NODE_PORT: u16 = 30080;
const POD_PORT: u16 = 8080;
const ROUNDS: usize = 20;

/// A node (eth0 `rp_filter=1`, as EC2 AMIs boot) with a pod on a secondary ENI, and a
/// kube-proxy-style DNAT `<node ip>:30080 -> <pod>:8080` in its nat PREROUTING.
fn node_port_node(vpc: &VpcFabric, name: &str, node_port: bool) -> (VpcNode, Vec<Placed>) {
    let mut spec = ec2_node(name, "t3.small").without_ipamd();
    if !node_port {
        spec = spec.env("AWS_VPC_CNI_NODE_PORT_SUPPORT", "false");
    }
    let mut n = node(vpc, spec);
    ok(&n, n.ns().sysctl("net.ipv4.conf.eth0.rp_filter", "1"));
    let started = n.start_ipamd();
    ok(&n, started);
    check!(
        n,
        ok(&n, n.ns().sysctl_get("net.ipv4.conf.eth0.rp_filter")) == "2",
        "ipamd must set rp_filter=2 on the primary ENI"
    );
    let pods = add_pods(vpc, &n, &format!("{name}-pod"), 5);
    let target = pods.iter().find(|p| p.device > 0).map(|p| p.ip);
    check!(n, target.is_some(), "no pod on a secondary ENI");
    let to = format!("{}:{POD_PORT}", target.unwrap());
    let dst = format!("{}/32", n.primary_ip());
    let port = NODE_PORT.to_string();
    iptables(
        &n,
        &[
            "-t",
            "nat",
            "-I",
            "PREROUTING",
            "1",
            "-d",
            &dst,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ],
    );
    (n, pods)
}

#[test]
fn node_port_replies_from_a_secondary_eni_pod_leave_through_the_primary_eni() {
    let vpc = fabric();
    let ((on, on_pods), (off, off_pods)) = std::thread::scope(|s| {
        let a = s.spawn(|| node_port_node(&vpc, "nodeport", true));
        let b = s.spawn(|| node_port_node(&vpc, "no-nodeport", false));
        (a.join().unwrap(), b.join().unwrap())
    });

    for (n, pods, works) in [(&on, &on_pods, true), (&off, &off_pods, false)] {
        let target = pods.iter().find(|p| p.device > 0).unwrap();
        let secondary = format!("eth{}", target.device);
        let ip = target.ip;
        let pod_ns = target.pod.ns().unwrap();
        let listener = ok(n, pod_ns.run_in(move || TcpListener::bind((ip, POD_PORT))));
        let listener = ok(n, listener);
        let server = echo_server(listener, ROUNDS);
        let (eth0_before, ethn_before) = (tx_packets(n, "eth0"), tx_packets(n, &secondary));
        let addr = SocketAddr::from((n.primary_ip(), NODE_PORT));
        let outcome = echo_client(vpc.internet(), addr, ROUNDS, Duration::from_secs(3));
        let (eth0_sent, ethn_sent) = (
            tx_packets(n, "eth0") - eth0_before,
            tx_packets(n, &secondary) - ethn_before,
        );
        if works {
            check!(
                n,
                outcome.is_ok(),
                "NodePort connection from the internet to {addr} failed: {outcome:?}"
            );
            let peer = server.join().unwrap();
            check!(
                n,
                peer.map(|p| p.ip()) == Some(IpAddr::from(INTERNET_HOST)),
                "the pod saw {peer:?}, expected the client {INTERNET_HOST}"
            );
            check!(
                n,
                eth0_sent >= ROUNDS as u64 && ethn_sent < 3,
                "the pod's {ROUNDS} replies must leave through eth0 (sent {eth0_sent}), not {secondary} (sent {ethn_sent})"
            );
        } else {
            check!(
                n,
                outcome.is_err(),
                "without NodePort support the replies take the pod's ENI and the VPC drops them, yet the connection worked"
            );
            check!(
                n,
                ethn_sent >= 1,
                "the refused replies must have left through {secondary} (sent {ethn_sent}; eth0 sent {eth0_sent})"
            );
            // The handshake never completed: unblock the server's accept from the pod itself.
            let _ = pod_ns.run_in(move || {
                TcpStream::connect_timeout(
                    &SocketAddr::from((ip, POD_PORT)),
                    Duration::from_secs(1),
                )
            });
            check!(
                n,
                server
                    .join()
                    .unwrap()
                    .is_none_or(|p| p.ip() == IpAddr::from(ip)),
                "the pod accepted the NodePort connection although its replies could not return"
            );
        }
    }
}

#[test]
fn restarted_ipamd_neither_duplicates_nor_keeps_stale_rules_and_repairs_deleted_ones() {
    let vpc = fabric();
    let mut n = node(
        &vpc,
        ec2_node("restart", "t3.small").env("AWS_EXTERNAL_SERVICE_CIDRS", "198.51.100.0/24"),
    );
    let pods = add_pods(&vpc, &n, "restart", 2);
    let before = iptables_save(&n);
    let rules_before = pod_and_node_rules(&n);
    let once = |lines: &[String], what: &str| lines.iter().filter(|l| *l == what).count() == 1;
    check!(
        n,
        once(&rules_before, "1024: from all fwmark 0x80/0x80 lookup main")
            && once(
                &rules_before,
                "1535: from all to 198.51.100.0/24 lookup main"
            ),
        "rules 1024 and 1535 once each: {rules_before:#?}"
    );
    check!(
        n,
        before.iter().filter(|l| l.starts_with(":AWS-")).count() == 2,
        "the two AWS chains: {before:#?}"
    );

    let restarted = n.restart_ipamd();
    ok(&n, restarted);
    let after = iptables_save(&n);
    check!(
        n,
        after == before,
        "a restart changed iptables:\nbefore {before:#?}\nafter {after:#?}"
    );
    check!(
        n,
        pod_and_node_rules(&n) == rules_before,
        "a restart changed the rules"
    );

    // Stale and foreign state: an old VPC CIDR in the SNAT chain, a duplicated jump, an old
    // external-service rule, and kube-proxy's chain that must stay.
    let stale =
        "-A AWS-SNAT-CHAIN-0 -d 10.99.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN";
    iptables(
        &n,
        &[
            "-t",
            "nat",
            "-I",
            "AWS-SNAT-CHAIN-0",
            "1",
            "-d",
            "10.99.0.0/16",
            "-m",
            "comment",
            "--comment",
            "AWS SNAT CHAIN",
            "-j",
            "RETURN",
        ],
    );
    iptables(
        &n,
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "AWS SNAT CHAIN",
            "-j",
            "AWS-SNAT-CHAIN-0",
        ],
    );
    iptables(&n, &["-t", "nat", "-N", "KUBE-POSTROUTING"]);
    iptables(
        &n,
        &[
            "-t",
            "nat",
            "-I",
            "POSTROUTING",
            "1",
            "-m",
            "comment",
            "--comment",
            "kubernetes postrouting rules",
            "-j",
            "KUBE-POSTROUTING",
        ],
    );
    ok(
        &n,
        n.ns().ip(&[
            "rule",
            "add",
            "to",
            "192.0.2.0/24",
            "lookup",
            "main",
            "priority",
            "1535",
        ]),
    );
    check!(
        n,
        iptables_save(&n).contains(&stale.to_owned()),
        "stale rule not injected"
    );

    let restarted = n.restart_ipamd();
    ok(&n, restarted);
    let cleaned = iptables_save(&n);
    let kube = [
        ":KUBE-POSTROUTING -",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
    ];
    for line in kube {
        check!(
            n,
            cleaned.iter().filter(|l| *l == line).count() == 1,
            "kube-proxy's {line} must stay: {cleaned:#?}"
        );
    }
    let ours: Vec<String> = cleaned
        .iter()
        .filter(|l| !kube.contains(&l.as_str()))
        .cloned()
        .collect();
    check!(
        n,
        ours == before,
        "stale or duplicated rules survived the restart:\nbefore {before:#?}\nafter {cleaned:#?}"
    );
    check!(
        n,
        pod_and_node_rules(&n) == rules_before,
        "stale rule 1535 survived: {:#?}",
        pod_and_node_rules(&n)
    );

    // The periodic reconcile (every 30 s) puts back what someone deleted.
    iptables(
        &n,
        &[
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "AWS SNAT CHAIN",
            "-j",
            "AWS-SNAT-CHAIN-0",
        ],
    );
    ok(&n, n.ns().ip(&["rule", "del", "priority", "1024"]));
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let now: Vec<String> = iptables_save(&n)
            .into_iter()
            .filter(|l| !kube.contains(&l.as_str()))
            .collect();
        if now == before && pod_and_node_rules(&n) == rules_before {
            break;
        }
        check!(
            n,
            Instant::now() < deadline,
            "the SNAT jump and rule 1024 were not restored within 45 s: {now:#?} {:#?}",
            pod_and_node_rules(&n)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // And the pods still leave as the node.
    for p in &pods {
        let peer = internet_peer(&vpc, p.pod.ns().unwrap())
            .unwrap_or_else(|e| panic!("{e}\n{}", n.diag()));
        check!(
            n,
            peer == IpAddr::from(n.primary_ip()),
            "after the restarts {} left as {peer}",
            p.ip
        );
    }
}
