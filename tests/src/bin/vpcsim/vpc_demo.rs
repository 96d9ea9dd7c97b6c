//! `vpcsim vpc-demo`: the issue-4 shape on the VPC simulator. moto plays EC2 in the simulated
//! internet, a VPC with one subnet gets two m5.large instances run as nodes with ipamd in EC2
//! mode, pods are added through aws-cni on both until some sit on ENIs ipamd attached, and the
//! demo prints where each pod landed, a connectivity matrix and the source address a server in
//! the internet sees for pods on each ENI (SNAT to the node's primary IP), then tears everything
//! down. With `--prefix-delegation` ipamd runs with `ENABLE_PREFIX_DELEGATION=true` (and
//! `WARM_PREFIX_TARGET=1`): the pods get addresses of /28 prefixes, which the ENI listing shows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use harness::probe::{ping_matrix, tcp_round_trip};
use harness::vpc::{EC2_ENDPOINT_ADDR, EC2_ENDPOINT_PORT, IMDS_ADDR, INTERNET_HOST};
use harness::{FabricOptions, NodeSpec, Pod, VpcFabric, VpcNode};
use serde_json::Value;
use test_support::netns::Netns;

/// Pods per node: m5.large has 9 pod IPs per ENI, so the last ones need a second ENI.
const PODS_PER_NODE: usize = 12;
const NODES: [&str; 2] = ["node-a", "node-b"];
const APPS: [&str; 4] = ["web", "api", "cache", "db"];

struct DemoPod {
    node: usize,
    pod: Pod,
    result: Value,
    ip: Ipv4Addr,
    device: u32,
    eni: String,
}

impl DemoPod {
    fn group(&self) -> String {
        format!("{}/eth{}", NODES[self.node], self.device)
    }
}

/// Adds a pod the way kubelet does: retried while ipamd answers "no IP yet" (code 11).
fn add_pod(node: &VpcNode, pod: &Pod) -> anyhow::Result<(Value, Ipv4Addr, Duration)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    loop {
        let out = node.cni("ADD", pod, "1.0.0", None)?;
        if out.success() {
            let result = out.json.clone().unwrap_or_default();
            let ip = harness::cni::result_ip(&result)
                .with_context(|| format!("ADD of {} returned no address", pod.name))?;
            return Ok((result, ip, started.elapsed()));
        }
        if out.error_code() != Some(11) || Instant::now() >= deadline {
            bail!(
                "ADD of {} failed: {}\n{}",
                pod.name,
                out.describe(),
                node.diag()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn run(prefix_delegation: bool) -> anyhow::Result<()> {
    test_support::prereqs::require_root().context("vpcsim vpc-demo creates network namespaces")?;
    let started = Instant::now();
    say!("vpcsim vpc-demo: a simulated VPC on moto, two nodes, pods through aws-cni");
    say!("  (no AWS account; nothing changes outside the namespaces the demo creates)\n");

    say!(
        "[1/5] starting moto (the EC2 API) in the simulated internet, the VPC router, the hypervisor and IMDS"
    );
    let vpc = VpcFabric::start(FabricOptions::default())?;
    say!(
        "      VPC {} {}, subnet {} {} ({}), security group {}",
        vpc.vpc_id(),
        vpc.options().vpc_cidr,
        vpc.subnet().id,
        vpc.subnet().cidr,
        vpc.subnet().availability_zone,
        vpc.security_group()
    );
    say!(
        "      EC2 endpoint http://{EC2_ENDPOINT_ADDR}:{EC2_ENDPOINT_PORT} (moto), IMDS http://{IMDS_ADDR} (answers per instance from moto)"
    );
    say!(
        "      subnet router {} and the internet {}/24 behind it; ready in {:.1} s",
        vpc.subnet().gateway(),
        INTERNET_HOST,
        started.elapsed().as_secs_f64()
    );

    let mode = if prefix_delegation {
        "ENABLE_PREFIX_DELEGATION=true, WARM_PREFIX_TARGET=1"
    } else {
        "WARM_ENI_TARGET=1"
    };
    say!("\n[2/5] running two m5.large instances as nodes, ipamd in EC2 mode on each ({mode})");
    let t = Instant::now();
    let nodes: Vec<VpcNode> = std::thread::scope(|s| {
        let handles: Vec<_> = NODES
            .iter()
            .map(|name| {
                let vpc = &vpc;
                s.spawn(move || {
                    let mut spec = NodeSpec::new(name, "m5.large");
                    if prefix_delegation {
                        spec = spec
                            .env("ENABLE_PREFIX_DELEGATION", "true")
                            .env("WARM_PREFIX_TARGET", "1");
                    }
                    vpc.add_node(spec).map_err(anyhow::Error::from)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail_panic()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    for (name, n) in NODES.iter().zip(&nodes) {
        let enis = n.enis()?;
        let ips: usize = enis.iter().map(|e| e.secondary_ips().len()).sum();
        let prefixes: usize = enis.iter().map(|e| e.ipv4_prefixes.len()).sum();
        say!(
            "      {name}: {} eth0 {} ({}), ipamd ready: {} ENI, {ips} warm IPs and {prefixes} prefixes in EC2",
            n.instance_id(),
            n.primary_ip(),
            n.instance().mac,
            enis.len()
        );
    }
    say!("      both ready in {:.1} s", t.elapsed().as_secs_f64());

    say!(
        "\n[3/5] adding {PODS_PER_NODE} pods per node through aws-cni (CNI ADD by exec, retried like kubelet while ipamd grows the pool)"
    );
    let t = Instant::now();
    let per_node: Vec<Vec<DemoPod>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                s.spawn(move || -> anyhow::Result<Vec<DemoPod>> {
                    let mut pods = Vec::new();
                    for k in 0..PODS_PER_NODE {
                        let name = format!("{}-{}", APPS[k % APPS.len()], k / APPS.len());
                        let pod = Pod::new("default", &format!("{}-{name}", &NODES[i][5..]))?;
                        let (result, ip, _) = add_pod(n, &pod)?;
                        let eni = n
                            .eni_holding(ip)?
                            .with_context(|| format!("{ip} is on no ENI of {}", n.instance_id()))?;
                        pods.push(DemoPod {
                            node: i,
                            pod,
                            result,
                            ip,
                            device: eni.device_index().unwrap_or(0),
                            eni: eni.id,
                        });
                    }
                    Ok(pods)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail_panic()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let pods: Vec<DemoPod> = per_node.into_iter().flatten().collect();
    say!(
        "      {} pods in {:.1} s",
        pods.len(),
        t.elapsed().as_secs_f64()
    );
    say!(
        "\n  {:<16} {:<8} {:<30} {}",
        "POD",
        "NODE",
        "ENI (device)",
        "VPC ADDRESS"
    );
    for p in &pods {
        say!(
            "  {:<16} {:<8} {:<30} {}/32",
            p.pod.name,
            NODES[p.node],
            format!("{} (eth{})", p.eni, p.device),
            p.ip
        );
    }
    say!("\n  ENIs in EC2 (moto) now:");
    for (name, n) in NODES.iter().zip(&nodes) {
        for eni in n.enis()? {
            let tag = eni
                .tags
                .get(harness::vpc::tags::INSTANCE_ID)
                .map(|_| format!(", {}", eni.description))
                .unwrap_or_default();
            let prefixes = if eni.ipv4_prefixes.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = eni.ipv4_prefixes.iter().map(ToString::to_string).collect();
                format!(", prefixes {}", list.join(" "))
            };
            say!(
                "    {name} eth{} {} {} {} secondary IPs{prefixes}{tag}",
                eni.device_index().unwrap_or(0),
                eni.id,
                eni.mac,
                eni.secondary_ips().len()
            );
        }
    }

    say!(
        "\n[4/5] connectivity matrix: ICMP from every pod (rows, by node and ENI) to every pod, node and the internet"
    );
    let failures = matrix(&nodes, &pods)?;
    // A pod on an ENI ipamd attached; with prefixes the 12 pods fit on the primary ENI's
    // prefixes, and the last pod of the node is taken.
    let pick = |node: usize| {
        pods.iter()
            .find(|p| p.node == node && p.device > 0)
            .or_else(|| {
                prefix_delegation
                    .then(|| pods.iter().rev().find(|p| p.node == node))
                    .flatten()
            })
            .with_context(|| format!("no pod of {} on a secondary ENI", NODES[node]))
    };
    let client = pick(0)?;
    let server = pick(1)?;
    let peer = tcp_round_trip(server.pod.ns()?, server.ip, client.pod.ns()?)?;
    say!(
        "      TCP {} ({}, {}) -> {} ({}, {}): echoed; the server saw {} (the pod's own VPC address)",
        client.pod.name,
        client.ip,
        client.group(),
        server.pod.name,
        server.ip,
        server.group(),
        peer.ip()
    );
    let mut failures = failures;
    for (i, name) in NODES.iter().enumerate() {
        let node_ip = nodes[i].primary_ip();
        for secondary in [false, true] {
            let Some(p) = pods
                .iter()
                .find(|p| p.node == i && (p.device > 0) == secondary)
            else {
                continue;
            };
            let seen = tcp_round_trip(vpc.internet(), INTERNET_HOST, p.pod.ns()?)?.ip();
            let verdict = if seen == IpAddr::from(node_ip) {
                format!("SNAT to {name}'s primary IP")
            } else {
                failures += 1;
                format!("FAIL: expected {name}'s primary IP {node_ip}")
            };
            say!(
                "      pod -> internet: {} ({}, {}) -> {INTERNET_HOST}: the server saw {seen} ({verdict})",
                p.pod.name,
                p.ip,
                p.group()
            );
        }
    }

    say!(
        "\n[5/5] tearing down: CNI DEL of every pod, then ipamd, the nodes, moto and the namespaces"
    );
    for p in &pods {
        nodes[p.node].del_pod(&p.pod, "1.0.0", Some(&p.result))?;
    }
    let mut namespaces = vec![vpc.router().path(), vpc.internet().path()];
    namespaces.extend(nodes.iter().map(|n| n.ns().path()));
    namespaces.extend(
        pods.iter()
            .map(|p| std::path::PathBuf::from(&p.pod.netns_path)),
    );
    let dirs: Vec<std::path::PathBuf> = nodes
        .iter()
        .map(|n| n.dir().to_owned())
        .chain(std::iter::once(vpc.dir().to_owned()))
        .collect();
    drop(pods);
    drop(nodes);
    drop(vpc);
    let left = crate::still_there(namespaces.iter().chain(&dirs));
    crate::finish(left, started, "namespaces, moto and state", failures)
}

/// The error of a demo thread that panicked.
pub(crate) fn bail_panic<T>() -> anyhow::Result<T> {
    bail!("a demo thread panicked")
}

/// Pings every destination from every pod, prints the matrix by group, returns the failures.
fn matrix(nodes: &[VpcNode], pods: &[DemoPod]) -> anyhow::Result<usize> {
    let sources: Vec<(String, &Netns, IpAddr)> = pods
        .iter()
        .map(|p| Ok((p.group(), p.pod.ns()?, IpAddr::from(p.ip))))
        .collect::<anyhow::Result<_>>()?;
    let mut hosts: Vec<(IpAddr, String)> = NODES
        .iter()
        .zip(nodes)
        .map(|(name, n)| (n.primary_ip().into(), format!("{name} host")))
        .collect();
    hosts.push((INTERNET_HOST.into(), "internet".into()));
    print_matrix(&sources, &hosts)
}

/// Pings every pod address of `sources` (`(group, namespace, the pod's address)`) and every
/// address of `hosts` (`(address, column label)`) from every source, prints the matrix (rows
/// and the first columns: the pod groups, sorted; then the hosts in order) and returns the
/// number of failed probes. Shared by the IPv4 and the IPv6 demo.
pub(crate) fn print_matrix(
    sources: &[(String, &Netns, IpAddr)],
    hosts: &[(IpAddr, String)],
) -> anyhow::Result<usize> {
    let mut group_of: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut columns: Vec<String> = Vec::new();
    for (group, _, ip) in sources {
        group_of.insert(*ip, group.clone());
        if !columns.contains(group) {
            columns.push(group.clone());
        }
    }
    columns.sort();
    for (ip, label) in hosts {
        group_of.insert(*ip, label.clone());
        columns.push(label.clone());
    }
    let destinations: Vec<IpAddr> = group_of.keys().copied().collect();
    let probes: Vec<(String, &Netns, Vec<IpAddr>)> = sources
        .iter()
        .map(|(group, ns, ip)| (group.clone(), *ns, vec![*ip]))
        .collect();
    let failed = ping_matrix(&probes, &destinations, 8)?;

    let mut total: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (group, _, ip) in sources {
        for d in &destinations {
            if d != ip {
                *total
                    .entry((group.clone(), group_of[d].clone()))
                    .or_default() += 1;
            }
        }
    }
    let mut bad: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (src, dst) in &failed {
        *bad.entry((src.clone(), group_of[dst].clone())).or_default() += 1;
    }
    let mut header = format!("      {:<14}", "from \\ to");
    for c in &columns {
        let _ = write!(header, " {c:>12}");
    }
    say!("{header}");
    let mut rows: Vec<String> = sources.iter().map(|(group, _, _)| group.clone()).collect();
    rows.sort();
    rows.dedup();
    for r in &rows {
        let mut line = format!("      {r:<14}");
        for c in &columns {
            let key = (r.clone(), c.clone());
            let n = total.get(&key).copied().unwrap_or(0);
            let f = bad.get(&key).copied().unwrap_or(0);
            let cell = if n == 0 {
                "-".to_owned()
            } else if f == 0 {
                format!("ok {n}/{n}")
            } else {
                format!("FAIL {}/{n}", n - f)
            };
            let _ = write!(line, " {cell:>12}");
        }
        say!("{line}");
    }
    for (src, dst) in &failed {
        say!("      FAIL {src} -> {dst}");
    }
    Ok(failed.len())
}
