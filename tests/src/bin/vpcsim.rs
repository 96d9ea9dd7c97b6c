//! The demos of the simulator. `vpcsim vpc-demo` ([`vpc_demo`]): a moto-backed VPC with two
//! nodes in EC2 mode (what `make demo` runs); `vpcsim vpc-demo --ipv6` ([`vpc_demo_ipv6`]): the
//! same as an IPv6 cluster (`make demo-ipv6`). `vpcsim demo`: builds one simulated EC2 node with
//! two ENIs from a metadata file (network namespaces, a VPC router, the IMDS emulator), starts
//! ipamd on it, adds three pods through the aws-cni plugin exactly as a container runtime would
//! (CNI ADD by exec), prints where each pod landed, proves the data path with pings, and tears
//! everything down. Both tear down also on Ctrl-C or error, must run as root, and change nothing
//! outside the namespaces they create.

use std::fmt::Write as _;
use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, bail};
use harness::node::CONFLIST_NAME;
use harness::{NodeOptions, Pod, SimNode, standard_node};
use serde_json::Value;

const USAGE: &str = "usage: vpcsim demo | vpcsim vpc-demo [--prefix-delegation | --ipv6] | vpcsim k8s-demo\n\n\
  vpc-demo  a simulated VPC on moto: two m5.large nodes with ipamd in EC2 mode, 12 pods each\n\
            through aws-cni (some on ENIs ipamd attaches), where they landed, a connectivity\n\
            matrix, teardown (needs root and moto); --prefix-delegation: ipamd with\n\
            ENABLE_PREFIX_DELEGATION=true, pods on /28 prefixes; --ipv6: an IPv6 cluster\n\
            (install-cni, then ipamd with ENABLE_IPv6=true), pods through libcni with\n\
            aws-cni and egress-cni: each pod's /128 of the node's /80 and egress IPv4, an\n\
            IPv6 matrix, what the IPv6 and IPv4 internet see, DEL leaving nothing\n\
  k8s-demo  the VPC with a real Kubernetes control plane and two nodes running kubelet,\n\
            containerd and kube-proxy (make kube-bins), aws-node deployed from conf/ with\n\
            kubectl apply -k (make node-image): 30 pods through aws-cni,\n\
            where they landed, pings across nodes, ClusterIP and NodePort (needs root)\n\
  demo      one simulated node (2 ENIs from a metadata file), ipamd in IMDS-only mode, 3 pods\n\
            through aws-cni, their VPC addresses, pings, teardown (needs root)";

/// Writes one line to stdout (the demo's output is its purpose); silent once a signal started
/// the teardown, so the interrupted run does not print misleading failures.
macro_rules! say {
    ($($arg:tt)*) => {{
        if !test_support::cleanup::interrupted() {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, $($arg)*);
            let _ = out.flush();
        }
    }};
}

#[path = "vpcsim/k8s_demo.rs"]
mod k8s_demo;
#[path = "vpcsim/vpc_demo.rs"]
mod vpc_demo;
#[path = "vpcsim/vpc_demo_ipv6.rs"]
mod vpc_demo_ipv6;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("demo") if args.len() == 1 => match demo() {
            Ok(()) => 0,
            Err(_) if test_support::cleanup::interrupted() => 130,
            Err(err) => {
                eprintln!("\nvpcsim demo failed: {err:#}");
                1
            }
        },
        Some("vpc-demo") if args.len() <= 2 => {
            let run = match args.get(1).map(String::as_str) {
                None => Some(vpc_demo::run(false)),
                Some("--prefix-delegation") => Some(vpc_demo::run(true)),
                Some("--ipv6") => Some(vpc_demo_ipv6::run()),
                Some(_) => None,
            };
            match run {
                Some(Ok(())) => 0,
                Some(Err(_)) if test_support::cleanup::interrupted() => 130,
                Some(Err(err)) => {
                    eprintln!("\nvpcsim {} failed: {err:#}", args.join(" "));
                    1
                }
                None => {
                    eprintln!("{USAGE}");
                    2
                }
            }
        }
        Some("k8s-demo") if args.len() == 1 => match k8s_demo::run() {
            Ok(()) => 0,
            Err(_) if test_support::cleanup::interrupted() => 130,
            Err(err) => {
                eprintln!("\nvpcsim k8s-demo failed: {err:#}");
                1
            }
        },
        Some("-h" | "--help" | "help") => {
            say!("{USAGE}");
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    #[allow(clippy::exit)] // The process's exit status is the demo's result.
    std::process::exit(code);
}

struct DemoPod {
    pod: Pod,
    result: Value,
    ip: Ipv4Addr,
}

fn ping_summary(output: &str) -> String {
    let received = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| {
            let mut parts = l.split(',').map(str::trim);
            let sent = parts.next()?.split_whitespace().next()?;
            let recv = parts.next()?.split_whitespace().next()?;
            Some(format!("{recv}/{sent} replies"))
        })
        .unwrap_or_default();
    let rtt = output
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .map(|avg| format!(", avg {avg} ms"))
        .unwrap_or_default();
    format!("{received}{rtt}")
}

fn demo() -> anyhow::Result<()> {
    test_support::prereqs::require_root().context("vpcsim demo creates network namespaces")?;
    let description = standard_node(&[2, 2]);
    say!(
        "vpcsim demo: one simulated EC2 node in network namespaces (no AWS; nothing outside them)\n"
    );
    say!(
        "  instance {} ({}, {})   VPC {} {}",
        description.instance_id,
        description.instance_type,
        description.availability_zone,
        description.vpc_id,
        description
            .vpc_ipv4_cidr_blocks
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    say!(
        "  {:<22} {:<6} {:<18} {:<11} {}",
        "ENI",
        "LINK",
        "MAC",
        "PRIMARY",
        "SECONDARY IPs (the pod pool)"
    );
    for eni in &description.interfaces {
        let secondary: Vec<String> = eni
            .secondary_ips()
            .iter()
            .map(ToString::to_string)
            .collect();
        say!(
            "  {:<22} eth{:<3} {:<18} {:<11} {}",
            eni.interface_id,
            eni.device_number,
            eni.mac,
            eni.primary_ip().map(|i| i.to_string()).unwrap_or_default(),
            secondary.join(" ")
        );
    }
    say!("");

    let started = Instant::now();
    say!("[1/4] building the VPC router and the node, starting the IMDS emulator and ipamd ...");
    let node = SimNode::start(NodeOptions::new(description))?;
    let status = node.pool_status()?;
    say!(
        "      ipamd ready after {:.1} s: brought up eth1, wrote {} (pool: {} IPs, {} assignable)",
        started.elapsed().as_secs_f64(),
        CONFLIST_NAME,
        status.total_i_ps,
        status.assignable_i_ps
    );
    say!(
        "      IMDS emulator: {} inside the node",
        node.imds_endpoint()
    );

    say!("\n[2/4] adding 3 pods through aws-cni (CNI ADD by exec, as a container runtime does)");
    let mut pods = Vec::new();
    for name in ["frontend", "backend", "cache"] {
        let pod = Pod::new("default", name)?;
        let t = Instant::now();
        let result = node
            .add_pod(&pod, "1.0.0")
            .with_context(|| format!("ADD of default/{name}"))?;
        let Some(ip) = harness::cni::result_ip(&result) else {
            bail!("ADD of default/{name} returned no address: {result}");
        };
        say!(
            "      ADD default/{name:<9} -> {ip} in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        pods.push(DemoPod { pod, result, ip });
    }

    say!(
        "\n  {:<18} {:<16} {:<24} {}",
        "POD",
        "HOST VETH",
        "ENI",
        "VPC ADDRESS"
    );
    for p in &pods {
        let eni = node
            .description()
            .owner_of_secondary(p.ip)
            .map(|e| format!("eth{} ({})", e.device_number, e.interface_id))
            .unwrap_or_else(|| "?".into());
        say!(
            "  {:<18} {:<16} {:<30} {}/32",
            format!("default/{}", p.pod.name),
            p.pod.host_veth("eni"),
            eni,
            p.ip
        );
    }
    let mut rules = String::new();
    for rule in node.ns().rules()? {
        let prio = rule["priority"].as_u64().unwrap_or(0);
        if [512, 1536, 32765].contains(&prio) {
            let selector = match (rule["src"].as_str(), rule["dst"].as_str()) {
                (Some("all") | None, Some(dst)) => format!("to {dst}"),
                (Some(src), _) => format!("from {src}"),
                _ => String::new(),
            };
            let table = rule["table"].as_str().unwrap_or("?");
            let _ = writeln!(rules, "      {prio:>5}: {selector:<20} lookup {table}");
        }
    }
    say!("\n  node policy routing (ip rule): to-pod 512, from-secondary-ENI-pod 1536, ENI 32765");
    say!("{}", rules.trim_end_matches('\n'));

    say!("\n[3/4] data path");
    let node_ip = node
        .description()
        .local_ipv4()
        .context("the node has no primary address")?;
    let gateway = node
        .description()
        .primary_interface()
        .map(|e| e.gateway())
        .context("the node has no primary ENI")?;
    let checks = [
        (
            0usize,
            pods[2].ip,
            format!("{} (pod on another ENI)", pods[2].pod.name),
        ),
        (0, pods[1].ip, pods[1].pod.name.clone()),
        (2, node_ip, "node eth0".to_owned()),
        (2, gateway, "VPC router, via the pod's own ENI".to_owned()),
    ];
    let mut failures = 0;
    for (from, to, label) in checks {
        let ns = pods[from].pod.ns()?;
        let ping = node.ping(ns, to)?;
        let verdict = if ping.ok { "ok  " } else { "FAIL" };
        if !ping.ok {
            failures += 1;
        }
        say!(
            "      {verdict} ping {:<9} -> {:<15} {label:<36} {}",
            pods[from].pod.name,
            to,
            ping_summary(&ping.output)
        );
    }

    say!("\n[4/4] tearing down: CNI DEL of every pod, then ipamd, emulator and namespaces");
    let mut routed = 0;
    for p in &pods {
        node.del_pod(&p.pod, "1.0.0", Some(&p.result))
            .with_context(|| format!("DEL of default/{}", p.pod.name))?;
        routed += node.routes_to(p.ip)?.len() + node.rules_for(p.ip)?.len();
    }
    let status = node.pool_status()?;
    say!(
        "      after DEL: {} of {} IPs assigned; pod routes and rules left: {routed}",
        status.assigned_i_ps,
        status.total_i_ps,
    );
    // As a runtime does after DEL: the pods' namespaces go, and their veth pairs with them.
    drop(pods);
    let veths = || host_veths(&node);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while veths()? > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    say!(
        "      after the pods' namespaces were removed: host veths left: {}",
        veths()?
    );
    let namespaces = [node.ns().path(), node.vpc().path()];
    let state_dir = node.dir().to_owned();
    drop(node);
    let left = still_there(namespaces.iter().chain(std::iter::once(&state_dir)));
    finish(left, started, "namespaces and state", failures)
}

/// The host veths of the node's pods (named with the conflist's `eni` prefix).
fn host_veths(node: &harness::node::NodeHost) -> anyhow::Result<usize> {
    Ok(node
        .ns()
        .link_names()?
        .iter()
        .filter(|n| n.starts_with("eni"))
        .count())
}

/// The paths of `paths` that still exist, for [`finish`].
fn still_there<'a, P: AsRef<std::path::Path> + 'a>(
    paths: impl IntoIterator<Item = &'a P>,
) -> Vec<String> {
    paths
        .into_iter()
        .map(AsRef::as_ref)
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect()
}

/// A demo's last words: fails if teardown `left` something or a connectivity check failed,
/// else says how long it took and what was `removed`.
fn finish(
    left: Vec<String>,
    started: Instant,
    removed: &str,
    failures: usize,
) -> anyhow::Result<()> {
    if !left.is_empty() {
        bail!("teardown left {}", left.join(", "));
    }
    say!(
        "      done in {:.1} s; {removed} removed",
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        bail!("{failures} connectivity check(s) failed");
    }
    Ok(())
}
