//! `vpcsim vpc-demo --ipv6`: an EKS IPv6 cluster on the VPC simulator. moto plays EC2 in a
//! dual-stack VPC (an Amazon-provided /56, a /64 per subnet); two m5.large instances run as
//! nodes set up as aws-node sets a node up in an IPv6 cluster: `ipamd install-cni` copies the
//! image's plugins and sets the IPv6 sysctls, then ipamd (`ENABLE_IPv6=true`,
//! `ENABLE_IPv4=false`, `ENABLE_PREFIX_DELEGATION=true`) takes a /80 for the primary ENI from
//! EC2 and writes the conflist chaining aws-cni, egress-cni and portmap. Pods are added through
//! libcni with that conflist, in each node's mount namespace (whose `/run/cni/v6pd` holds
//! egress-cni's leases). The demo prints each pod's /128 and egress IPv4, an IPv6 connectivity
//! matrix, what the internet sees (the pod's own IPv6 address; the node's IPv4 address for the
//! pod's IPv4 traffic), then deletes every pod through libcni, shows nothing is left and tears
//! everything down. The model is the end-to-end test `tests/vpc/ipv6_pods.rs`.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use harness::cni::result_address;
use harness::node::{CONFLIST_NAME, NETWORK_NAME, NodeRoot};
use harness::probe::tcp_round_trip;
use harness::vpc::ipv6::{self, EGRESS_IFNAME, EGRESS_RANGE, EGRESS_RUN_DIR};
use harness::vpc::{EC2_ENDPOINT_ADDR, EC2_ENDPOINT_PORT, INTERNET_HOST, INTERNET_HOST_V6};
use harness::{CniClient, FabricOptions, NodeSpec, Pod, VpcFabric, VpcNode};
use ipnet::{Ipv4Net, Ipv6Net};
use test_support::netns::Netns;

use crate::vpc_demo::{bail_panic, print_matrix};

/// Pods per node: all on the node's /80, no second ENI needed.
const PODS_PER_NODE: usize = 12;
const NODES: [&str; 2] = ["node-a", "node-b"];
const APPS: [&str; 4] = ["web", "api", "cache", "db"];
/// The plugin chain ipamd's conflist has in an IPv6 cluster (`ENABLE_V4_EGRESS` defaults to
/// true there).
const CHAIN: [&str; 3] = ["aws-cni", "egress-cni", "portmap"];
/// The machine's directory the nodes' roots mount over; created (and removed) by them when
/// missing.
const RUN_CNI: &str = "/run/cni";

/// A pod of the demo: its sandbox, its /128 on eth0 and its egress address on `v4if0`.
struct V6Pod {
    node: usize,
    pod: Pod,
    ip: Ipv6Addr,
    v4: Ipv4Addr,
    took: Duration,
}

impl V6Pod {
    fn ns(&self) -> anyhow::Result<&Netns> {
        Ok(self.pod.ns()?)
    }
}

/// ADD through libcni with the node's conflist, as a runtime does; the result's one address is
/// a /128 of the node's `prefix` on eth0, and egress-cni put an address of its range on
/// `v4if0`.
fn add_pod(
    node: &VpcNode,
    client: &CniClient<'_>,
    prefix: Ipv6Net,
    index: usize,
    name: &str,
) -> anyhow::Result<V6Pod> {
    let pod = Pod::new("default", name)?;
    let started = Instant::now();
    let out = client.add(NETWORK_NAME, &pod)?;
    let took = started.elapsed();
    if !out.success() {
        bail!(
            "ADD of {name} through libcni failed: {}\n{}",
            out.describe(),
            node.diag()
        );
    }
    let result = out.json.clone().unwrap_or_default();
    let ip = result_address(&result, "eth0")
        .and_then(|a| a.parse::<Ipv6Net>().ok())
        .filter(|n| n.prefix_len() == 128 && prefix.contains(&n.addr()))
        .with_context(|| {
            format!("ADD of {name}: no /128 of the node's {prefix} on eth0 in the result {result}")
        })?
        .addr();
    let range: Ipv4Net = EGRESS_RANGE.parse()?;
    let v4 = ipv6::egress_ipv4(&pod)?
        .filter(|n| range.contains(&n.addr()))
        .with_context(|| format!("{name}: no address of {EGRESS_RANGE} on {EGRESS_IFNAME}"))?
        .addr();
    Ok(V6Pod {
        node: index,
        pod,
        ip,
        v4,
        took,
    })
}

/// The node's /80 in moto: the one IPv6 prefix of its primary ENI.
fn node_prefix(vpc: &VpcFabric, node: &VpcNode) -> anyhow::Result<(Ipv6Net, String)> {
    let eni_id = &node.instance().primary_eni;
    let eni = vpc
        .ec2()
        .eni(eni_id)?
        .with_context(|| format!("moto does not know the primary ENI {eni_id}"))?;
    match eni.ipv6_prefixes.as_slice() {
        [prefix] if prefix.prefix_len() == 80 => Ok((*prefix, eni.id)),
        other => bail!(
            "the primary ENI {eni_id} of {} has IPv6 prefixes {other:?} in moto; ipamd assigns one /80",
            node.instance_id()
        ),
    }
}

/// The plugin types of the node's conflist, in order.
fn plugin_chain(node: &VpcNode) -> anyhow::Result<Vec<String>> {
    Ok(node.conflist()?["plugins"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|e| e["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Runs the demo; fails on the first error (everything built so far is torn down on the way
/// out), or at the end if a connectivity check failed or something was left behind.
pub fn run() -> anyhow::Result<()> {
    test_support::prereqs::require_root()
        .context("vpcsim vpc-demo --ipv6 creates network namespaces")?;
    let started = Instant::now();
    let run_cni_existed = Path::new(RUN_CNI).exists();
    say!(
        "vpcsim vpc-demo --ipv6: an IPv6 cluster on a simulated VPC, two nodes, pods through libcni"
    );
    say!("  (no AWS account; nothing changes outside the namespaces the demo creates)\n");

    say!(
        "[1/6] starting moto (the EC2 API) in the simulated internet, a dual-stack VPC, its router, the hypervisor and IMDS"
    );
    let vpc = VpcFabric::start(FabricOptions::default().with_ipv6())?;
    let show = |nets: &[Ipv6Net]| {
        nets.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    say!(
        "      VPC {} {} + {} (Amazon-provided), subnet {} {} + {} ({})",
        vpc.vpc_id(),
        vpc.options().vpc_cidr,
        show(&vpc.ipv6_cidrs()),
        vpc.subnet().id,
        vpc.subnet().cidr,
        show(&vpc.subnet().ipv6_cidrs),
        vpc.subnet().availability_zone,
    );
    say!(
        "      EC2 endpoint http://{EC2_ENDPOINT_ADDR}:{EC2_ENDPOINT_PORT} (moto); the internet behind the router: {INTERNET_HOST} and {INTERNET_HOST_V6} (IPv6, no NAT)"
    );
    say!("      ready in {:.1} s", started.elapsed().as_secs_f64());

    say!(
        "\n[2/6] running two m5.large instances as nodes of an IPv6 cluster: install-cni, then ipamd in EC2 mode"
    );
    say!("      (ENABLE_IPv6=true, ENABLE_IPv4=false, ENABLE_PREFIX_DELEGATION=true)");
    let image = tempfile::Builder::new()
        .prefix("vcni-demo-plugins-")
        .tempdir()
        .context("cannot create the plugins' staging directory")?;
    test_support::cleanup::register_dir(image.path());
    test_support::prereqs::stage_plugins(image.path(), &ipamd::install::SHIPPED_PLUGINS)?;
    say!(
        "      the image's plugins, staged as in /app/cni/bin: {}",
        ipamd::install::SHIPPED_PLUGINS.join(" ")
    );
    let t = Instant::now();
    let nodes: Vec<VpcNode> = std::thread::scope(|s| {
        let handles: Vec<_> = NODES
            .iter()
            .map(|name| {
                let (vpc, image) = (&vpc, image.path());
                s.spawn(move || {
                    vpc.add_node(ipv6::cluster_spec(NodeSpec::new(name, "m5.large"), image))
                        .map_err(anyhow::Error::from)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail_panic()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let mut prefixes = Vec::new();
    for (name, n) in NODES.iter().zip(&nodes) {
        let (prefix, eni) = node_prefix(&vpc, n)?;
        let v6 = n
            .primary_ipv6()
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "no IPv6".into());
        say!(
            "      {name}: {} eth0 {} {v6}, ipamd ready: /80 {prefix} on {eni} (moto)",
            n.instance_id(),
            n.primary_ip(),
        );
        let chain = plugin_chain(n)?;
        if chain != CHAIN {
            bail!(
                "{name}'s conflist chains {chain:?}, an IPv6 cluster's chains {CHAIN:?}\n{}",
                n.diag()
            );
        }
        say!(
            "              {CONFLIST_NAME}: {} (plugins from {}/opt/cni/bin)",
            chain.join(" -> "),
            n.dir().display()
        );
        prefixes.push(prefix);
    }
    if prefixes[0] == prefixes[1] {
        bail!("both nodes got {}", prefixes[0]);
    }
    say!("      both ready in {:.1} s", t.elapsed().as_secs_f64());
    test_support::cleanup::unregister_dir(image.path());
    drop(image);

    say!(
        "\n[3/6] adding {PODS_PER_NODE} pods per node through libcni with ipamd's conflist (each node's own {EGRESS_RUN_DIR})"
    );
    let roots: Vec<NodeRoot> = nodes
        .iter()
        .map(|n| ipv6::node_root(n))
        .collect::<Result<_, _>>()?;
    let clients: Vec<CniClient<'_>> = nodes
        .iter()
        .zip(&roots)
        .map(|(n, root)| Ok(CniClient::new(n)?.in_root(root)))
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    let per_node: Vec<Vec<V6Pod>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .zip(&clients)
            .zip(&prefixes)
            .enumerate()
            .map(|(i, ((n, client), prefix))| {
                s.spawn(move || -> anyhow::Result<Vec<V6Pod>> {
                    (0..PODS_PER_NODE)
                        .map(|k| {
                            let app = format!("{}-{}", APPS[k % APPS.len()], k / APPS.len());
                            let name = format!("{}-{app}", &NODES[i][5..]);
                            add_pod(n, client, *prefix, i, &name)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail_panic()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let mut pods: Vec<V6Pod> = per_node.into_iter().flatten().collect();
    say!(
        "      {} pods in {:.1} s",
        pods.len(),
        t.elapsed().as_secs_f64()
    );
    let v6: BTreeSet<Ipv6Addr> = pods.iter().map(|p| p.ip).collect();
    if v6.len() != pods.len() {
        bail!("an IPv6 address was given to two pods");
    }
    for (i, name) in NODES.iter().enumerate() {
        let v4: BTreeSet<Ipv4Addr> = pods.iter().filter(|p| p.node == i).map(|p| p.v4).collect();
        if v4.len() != PODS_PER_NODE {
            bail!("an egress IPv4 address was given to two pods of {name}");
        }
    }
    say!(
        "\n  {:<12} {:<8} {:<42} {:<20} {}",
        "POD",
        "NODE",
        "IPv6 (eth0, the node's /80)",
        "EGRESS IPv4 (v4if0)",
        "ADD"
    );
    for p in &pods {
        say!(
            "  {:<12} {:<8} {:<42} {:<20} {:.1} ms",
            p.pod.name,
            NODES[p.node],
            format!("{}/128", p.ip),
            format!("{}/22", p.v4),
            p.took.as_secs_f64() * 1e3
        );
    }

    say!(
        "\n[4/6] connectivity matrix over IPv6: ICMPv6 from every pod (rows, by node) to every pod, both nodes and {INTERNET_HOST_V6}"
    );
    let sources: Vec<(String, &Netns, IpAddr)> = pods
        .iter()
        .map(|p| Ok((format!("{} pods", NODES[p.node]), p.ns()?, IpAddr::V6(p.ip))))
        .collect::<anyhow::Result<_>>()?;
    let mut hosts: Vec<(IpAddr, String)> = Vec::new();
    for (name, n) in NODES.iter().zip(&nodes) {
        let ip = n
            .primary_ipv6()
            .with_context(|| format!("{name} has no IPv6 address"))?;
        hosts.push((IpAddr::V6(ip), format!("{name} host")));
    }
    hosts.push((IpAddr::V6(INTERNET_HOST_V6), "internet".into()));
    let mut failures = print_matrix(&sources, &hosts)?;
    let client = pods
        .iter()
        .find(|p| p.node == 0)
        .context("no pod on node-a")?;
    let server = pods
        .iter()
        .rfind(|p| p.node == 1)
        .context("no pod on node-b")?;
    let peer = tcp_round_trip(server.ns()?, server.ip, client.ns()?)?.ip();
    let verdict = if peer == IpAddr::V6(client.ip) {
        "the pod's own address".to_owned()
    } else {
        failures += 1;
        format!("FAIL: expected {}", client.ip)
    };
    say!(
        "      TCP {} ({}) -> {} ({}): echoed; the server saw {peer} ({verdict})",
        client.pod.name,
        client.ip,
        server.pod.name,
        server.ip
    );

    say!(
        "\n[5/6] the internet: IPv6 with the pod's own address, IPv4 through egress-cni as the node"
    );
    for (i, name) in NODES.iter().enumerate() {
        let p = pods
            .iter()
            .find(|p| p.node == i)
            .with_context(|| format!("no pod on {name}"))?;
        let seen = tcp_round_trip(vpc.internet(), INTERNET_HOST_V6, p.ns()?)?.ip();
        let verdict = if seen == IpAddr::V6(p.ip) {
            "the pod's own address, no NAT".to_owned()
        } else {
            failures += 1;
            format!("FAIL: expected the pod's {}", p.ip)
        };
        say!(
            "      {} ({name}) -> [{INTERNET_HOST_V6}]: the server saw {seen} ({verdict})",
            p.pod.name
        );
        let node_ip = nodes[i].primary_ip();
        let seen = tcp_round_trip(vpc.internet(), INTERNET_HOST, p.ns()?)?.ip();
        let verdict = if seen == IpAddr::V4(node_ip) {
            format!("SNAT to {name}'s IPv4 address")
        } else {
            failures += 1;
            format!("FAIL: expected {name}'s {node_ip}")
        };
        say!(
            "      {} ({name}, {} on {EGRESS_IFNAME}) -> {INTERNET_HOST}: the server saw {seen} ({verdict})",
            p.pod.name,
            p.v4
        );
    }

    say!(
        "\n[6/6] tearing down: CNI DEL of every pod through libcni, then ipamd, the nodes, moto and the namespaces"
    );
    let t = Instant::now();
    for p in &mut pods {
        let out = clients[p.node].del(NETWORK_NAME, &p.pod)?;
        if !out.success() {
            bail!(
                "DEL of {} through libcni failed: {}\n{}",
                p.pod.name,
                out.describe(),
                nodes[p.node].diag()
            );
        }
        // As a runtime does after DEL: the sandbox goes, and the pod's veth pair with it.
        p.pod.delete_netns()?;
    }
    say!(
        "      {} DELs in {:.1} s",
        pods.len(),
        t.elapsed().as_secs_f64()
    );
    let mut left = Vec::new();
    for (name, n) in NODES.iter().zip(&nodes) {
        let held = n.checkpoint_ipv6s()?;
        let leases = ipv6::egress_leases(n);
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::host_veths(n)? > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let veths = crate::host_veths(n)?;
        say!(
            "      {name}: checkpoint holds {} IPv6 addresses, egress-cni holds {} leases, host veths left: {veths}",
            held.len(),
            leases.len()
        );
        if !held.is_empty() {
            left.push(format!("{name}'s checkpoint holds {held:?}"));
        }
        if !leases.is_empty() {
            left.push(format!("{name}'s egress leases {leases:?}"));
        }
        if veths > 0 {
            left.push(format!("{veths} host veths on {name}"));
        }
    }
    if !left.is_empty() {
        bail!("DEL left {}", left.join("; "));
    }

    let mut namespaces = vec![vpc.router().path(), vpc.internet().path()];
    namespaces.extend(nodes.iter().map(|n| n.ns().path()));
    namespaces.extend(pods.iter().map(|p| PathBuf::from(&p.pod.netns_path)));
    let dirs: Vec<PathBuf> = nodes
        .iter()
        .map(|n| n.dir().to_owned())
        .chain(std::iter::once(vpc.dir().to_owned()))
        .collect();
    drop(pods);
    drop(clients);
    drop(roots);
    drop(nodes);
    drop(vpc);
    let mut left = crate::still_there(namespaces.iter().chain(&dirs));
    if !run_cni_existed && Path::new(RUN_CNI).exists() {
        left.push(RUN_CNI.to_owned());
    }
    crate::finish(
        left,
        started,
        &format!("namespaces, moto, state and the nodes' {EGRESS_RUN_DIR} mounts"),
        failures,
    )
}
