//! Reliability campaigns (issue 7): crashes, faults and bad input, with nothing lost and nothing
//! leaked. Each campaign is a test sized to run in a few minutes at most; `make soak` runs the
//! same tests with bigger numbers (`VCNI_SOAK=1`). Every campaign prints one `campaign ...` line
//! on stderr with its counts (operations, kills, faults injected, inputs tried) and its seed
//! (`VCNI_SEED=<n>` replays a run's random choices).
//!
//! Like every end-to-end test here they run as root, in namespaces they create and delete, and
//! fail (never skip) when a prerequisite is missing.
#![allow(clippy::unwrap_used)]

mod bad_input;
mod crash;
mod ec2_faults;
mod imds_faults;
mod plugin_faults;
mod security;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use harness::node::NodeHost;
use harness::{NodeOptions, Pod, SimNode};
use serde_json::Value;

pub use harness::check;
pub use harness::node::ok;

/// Unwraps a result whose error already carries the logs.
pub fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Starts a simulated node, panicking with the reason.
pub fn start(options: NodeOptions) -> SimNode {
    SimNode::start(options).unwrap_or_else(|e| panic!("cannot start the simulated node: {e}"))
}

/// Creates a pod sandbox.
pub fn pod(namespace: &str, name: &str) -> Pod {
    Pod::new(namespace, name).unwrap_or_else(|e| panic!("cannot create pod {name}: {e}"))
}

/// `base` (a plugin config) with `prevResult`.
pub fn with_prev(base: &Value, prev: &Value) -> Value {
    let mut c = base.clone();
    c["prevResult"] = prev.clone();
    c
}

/// The pod-related state of a node: host veths (links with `prefix`), rule 512 destinations,
/// rule 1536 sources with their tables, and main-table /32 routes to host veths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPlumbing {
    /// Host veth names.
    pub veths: BTreeSet<String>,
    /// `to <ip> lookup main` (priority 512).
    pub to_rules: BTreeSet<Ipv4Addr>,
    /// `from <ip> lookup <table>` (priority 1536).
    pub from_rules: BTreeMap<Ipv4Addr, String>,
    /// `<ip> dev <veth>` routes in main.
    pub routes: BTreeMap<Ipv4Addr, String>,
}

fn addr_of(v: &Value) -> Option<Ipv4Addr> {
    v.as_str()?.trim_end_matches("/32").parse().ok()
}

/// Reads [`PodPlumbing`] off the node.
pub fn plumbing(node: &NodeHost, prefix: &str) -> PodPlumbing {
    let mut p = PodPlumbing {
        veths: ok(node, node.ns().link_names())
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect(),
        ..PodPlumbing::default()
    };
    for r in ok(node, node.ns().rules()) {
        match r["priority"].as_u64() {
            Some(512) => {
                if let Some(ip) = addr_of(&r["dst"]) {
                    p.to_rules.insert(ip);
                }
            }
            Some(1536) => {
                if let Some(ip) = addr_of(&r["src"]) {
                    p.from_rules
                        .insert(ip, r["table"].as_str().unwrap_or("?").to_owned());
                }
            }
            _ => {}
        }
    }
    for r in ok(node, node.ns().routes("main")) {
        if let (Some(ip), Some(dev)) = (addr_of(&r["dst"]), r["dev"].as_str())
            && dev.starts_with(prefix)
        {
            p.routes.insert(ip, dev.to_owned());
        }
    }
    p
}

/// ipamd's assignments as introspection's `/v1/pods` lists them: container ID → IP.
pub fn datastore_pods(node: &NodeHost) -> BTreeMap<String, Ipv4Addr> {
    let pods = ok(node, node.introspect("/v1/pods"));
    pods.as_array()
        .unwrap_or_else(|| panic!("/v1/pods is not an array: {pods}\n{}", node.diag()))
        .iter()
        .map(|p| {
            (
                p["IPAMKey"]["containerID"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["IP"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("/v1/pods entry without IP: {p}\n{}", node.diag())),
            )
        })
        .collect()
}

/// The checkpoint's allocations: container ID → IP.
pub fn checkpoint_pods(node: &NodeHost) -> BTreeMap<String, Ipv4Addr> {
    let cp = ok(node, node.checkpoint());
    cp["allocations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|al| {
                    Some((
                        al["containerID"].as_str()?.to_owned(),
                        al["ipv4"].as_str()?.parse().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `timeout` for `cond`, polling every 100 ms; returns whether it held.
pub fn wait_for(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
