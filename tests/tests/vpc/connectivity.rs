//! Pod connectivity across nodes of one VPC (issue 4): pods sit on primary and secondary ENIs
//! that ipamd provisioned through EC2, and every pod reaches every other pod and every node
//! over the VPC router, ICMP and TCP, with its own VPC address (no translation inside the
//! VPC). [`Cluster`] builds the shape once so SNAT and connmark tests (traffic leaving the VPC
//! through the internet namespace) can be added next to these.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use harness::probe::{ping_matrix, tcp_round_trip};
use harness::{Pod, VpcFabric, VpcNode};
use test_support::netns::Netns;

use crate::{add_pod_retrying, assert_vpc_address, check, ec2_node, fabric, node, ok, pod};

/// A pod of the cluster: where it runs, its sandbox, its address, its ENI's device index.
pub struct ClusterPod {
    /// Index of its node in [`Cluster::nodes`].
    pub node: usize,
    /// The sandbox.
    pub pod: Pod,
    /// Its VPC address.
    pub ip: Ipv4Addr,
    /// Device index of the ENI holding the address.
    pub device: u32,
}

/// A VPC with `nodes` nodes in EC2 mode and pods added through the plugin on each.
pub struct Cluster {
    /// Pods, node by node.
    pub pods: Vec<ClusterPod>,
    /// The nodes.
    pub nodes: Vec<VpcNode>,
    /// The VPC.
    pub vpc: VpcFabric,
}

impl Cluster {
    /// Starts `nodes` nodes of `instance_type` with ipamd's defaults (WARM_ENI_TARGET=1) and
    /// adds `pods_per_node` pods on each (nodes in parallel, retrying while pools grow).
    pub fn start(nodes: usize, instance_type: &str, pods_per_node: usize) -> Self {
        let vpc = fabric();
        let nodes: Vec<VpcNode> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..nodes)
                .map(|i| {
                    let vpc = &vpc;
                    s.spawn(move || node(vpc, ec2_node(&format!("node-{i}"), instance_type)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let pods: Vec<ClusterPod> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let vpc = &vpc;
                    s.spawn(move || {
                        (0..pods_per_node)
                            .map(|k| {
                                let p = pod("default", &format!("n{i}-pod-{k}"));
                                let (_, ip) = add_pod_retrying(n, &p, Duration::from_secs(90));
                                let eni = assert_vpc_address(vpc, n, ip);
                                ClusterPod {
                                    node: i,
                                    pod: p,
                                    ip,
                                    device: eni.device_index().unwrap_or(0),
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        Self { pods, nodes, vpc }
    }

    /// Logs of every node and the VPC, for failure messages.
    pub fn diag(&self) -> String {
        let mut out: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("########## {} ##########\n{}", n.instance_id(), n.diag()))
            .collect();
        out.push(self.vpc.diag());
        out.join("\n")
    }
}

#[test]
fn three_nodes_with_twelve_pods_each_reach_every_pod_and_node_over_icmp_and_tcp() {
    // m5.large: 9 pod IPs per ENI, so 12 pods per node need the primary and a secondary ENI.
    let cluster = Cluster::start(3, "m5.large", 12);
    for (i, n) in cluster.nodes.iter().enumerate() {
        let devices: BTreeSet<u32> = cluster
            .pods
            .iter()
            .filter(|p| p.node == i)
            .map(|p| p.device)
            .collect();
        check!(
            n,
            devices.contains(&0) && devices.iter().any(|d| *d > 0),
            "pods of {} must sit on the primary and on secondary ENIs: devices {devices:?}",
            n.instance_id()
        );
        check!(
            n,
            ok(n, n.pool_status()).assigned_i_ps == 12,
            "ipamd does not count 12 pods"
        );
    }
    let addresses: BTreeSet<Ipv4Addr> = cluster.pods.iter().map(|p| p.ip).collect();
    assert_eq!(addresses.len(), 36, "pods share addresses");

    let mut destinations: Vec<IpAddr> = cluster.pods.iter().map(|p| IpAddr::from(p.ip)).collect();
    destinations.extend(cluster.nodes.iter().map(|n| IpAddr::from(n.primary_ip())));
    let sources: Vec<(String, &Netns, Vec<IpAddr>)> = cluster
        .pods
        .iter()
        .map(|p| {
            (
                format!("node-{}/{} ({}, eth{})", p.node, p.pod.name, p.ip, p.device),
                p.pod.ns().unwrap(),
                vec![IpAddr::from(p.ip)],
            )
        })
        .collect();
    let failures = ping_matrix(&sources, &destinations, 8).unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} pings failed (source, destination): {failures:?}\n{}",
        failures.len(),
        sources.len() * (destinations.len() - 1),
        cluster.diag()
    );

    // TCP across nodes, for each pair of (primary, secondary) ENI placements.
    let pick = |node: usize, secondary: bool| {
        cluster
            .pods
            .iter()
            .find(|p| p.node == node && (p.device > 0) == secondary)
            .unwrap()
    };
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        for (cs, ss) in [(false, false), (false, true), (true, false), (true, true)] {
            let (client, server) = (pick(from, cs), pick(to, ss));
            let peer = tcp_round_trip(
                server.pod.ns().unwrap(),
                server.ip,
                client.pod.ns().unwrap(),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diag()));
            assert_eq!(
                peer.ip(),
                IpAddr::from(client.ip),
                "node-{to} saw {peer} for a connection from {} inside the VPC",
                client.ip
            );
        }
    }

    // Beyond the VPC every pod, on the primary or a secondary ENI, leaves as its node's
    // primary IP (SNAT; tests/vpc/snat.rs covers EXTERNALSNAT and excluded CIDRs).
    for p in &cluster.pods {
        let node_ip = IpAddr::from(cluster.nodes[p.node].primary_ip());
        let peer = crate::snat::internet_peer(&cluster.vpc, p.pod.ns().unwrap())
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diag()));
        assert_eq!(
            peer, node_ip,
            "node-{}/{} ({}, eth{}) reached the internet as {peer}, not as its node",
            p.node, p.pod.name, p.ip, p.device
        );
    }
}
