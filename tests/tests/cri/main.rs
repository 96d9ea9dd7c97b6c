//! kubelet's path to the plugin, for real: containerd's CRI plugin (Debian's containerd 1.6)
//! runs on a simulated node with the conflist ipamd wrote, and the tests drive it as kubelet
//! does, through CRI with crictl: RunPodSandbox, StopPodSandbox, RemovePodSandbox, containers
//! with hostPort mappings. Nodes run in IMDS-only mode (`imds`) and in EC2 mode on the moto VPC
//! (`ec2`). Every test has its own node and containerd, removed afterwards even when it fails.
//!
//! They must run as root with containerd and crictl installed (`make deps`) and fail (never
//! skip) when something is missing.

mod ec2;
mod imds;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use harness::cri::{CniCall, Containerd, PodSpec};
use harness::node::NodeHost;

/// Panics with `msg`, the node's logs and containerd's log and calls.
pub fn fail(node: &NodeHost, ctd: &Containerd, msg: String) -> ! {
    panic!("{msg}\n{}\n{}", node.diag(), ctd.diag())
}

/// Asserts `cond`; on failure prints the message and every log.
#[macro_export]
macro_rules! check {
    ($node:expr, $ctd:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            $crate::fail(&$node, &$ctd, format!($($arg)+));
        }
    };
}

/// Unwraps `r`, printing every log on error.
pub fn ok<T, E: std::fmt::Display>(node: &NodeHost, ctd: &Containerd, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => fail(node, ctd, e.to_string()),
    }
}

/// Starts containerd on `node`, panicking with the node's logs on error.
pub fn containerd(node: &NodeHost) -> Containerd {
    Containerd::start(node)
        .unwrap_or_else(|e| panic!("cannot start containerd: {e}\n{}", node.diag()))
}

/// What ipamd's checkpoint says sandbox `id` holds.
pub fn checkpointed_ip(node: &NodeHost, ctd: &Containerd, id: &str) -> Option<Ipv4Addr> {
    let cp = ok(node, ctd, node.checkpoint());
    cp["allocations"].as_array().and_then(|a| {
        a.iter()
            .find(|al| al["containerID"] == id)
            .and_then(|al| al["ipv4"].as_str()?.parse().ok())
    })
}

/// Asserts a running sandbox is networked as kubelet and operators see it: the runtime reports
/// the address ipamd assigned to this sandbox (checkpoint), the host veth is named from
/// `K8S_POD_NAMESPACE.K8S_POD_NAME` and routes the address, and containerd's ADD carried the
/// pod's identity in CNI_ARGS. Returns the address.
pub fn assert_sandbox_networked(
    node: &NodeHost,
    ctd: &Containerd,
    spec: &PodSpec,
    id: &str,
) -> Ipv4Addr {
    let ip = ok(node, ctd, ctd.pod_ip(id));
    let assigned = checkpointed_ip(node, ctd, id);
    check!(
        node,
        ctd,
        assigned == Some(ip),
        "the runtime reports {ip} for {}/{}, ipamd's checkpoint has {assigned:?} for sandbox {id}",
        spec.namespace,
        spec.name
    );
    let veth = spec.host_veth();
    let routes = ok(node, ctd, node.routes_to(ip));
    check!(
        node,
        ctd,
        routes.iter().any(|r| r["dev"] == veth.as_str()),
        "no route to {ip} via {veth} (named from {}.{}): {routes:?}",
        spec.namespace,
        spec.name
    );
    let adds: Vec<CniCall> = ctd
        .cni_calls_for(id)
        .into_iter()
        .filter(|c| c.command() == "ADD")
        .collect();
    check!(
        node,
        ctd,
        adds.len() == 1,
        "want one ADD for {id}, got {adds:?}"
    );
    let args = adds[0].arg_map();
    let want = [
        ("K8S_POD_NAMESPACE", spec.namespace.as_str()),
        ("K8S_POD_NAME", spec.name.as_str()),
        ("K8S_POD_UID", spec.uid.as_str()),
        ("K8S_POD_INFRA_CONTAINER_ID", id),
        ("IgnoreUnknown", "1"),
    ];
    for (k, v) in want {
        check!(
            node,
            ctd,
            args.get(k).map(String::as_str) == Some(v),
            "CNI_ARGS {:?} lacks {k}={v}",
            adds[0].args()
        );
    }
    check!(
        node,
        ctd,
        adds[0].succeeded() && adds[0].env.get("CNI_IFNAME").map(String::as_str) == Some("eth0"),
        "ADD: {:?}",
        adds[0]
    );
    ip
}

/// Asserts nothing of a removed sandbox is left: no host veth, route or rule of its address, no
/// assignment in ipamd's checkpoint, its network namespace gone, unknown to the runtime.
pub fn assert_sandbox_gone(
    node: &NodeHost,
    ctd: &Containerd,
    spec: &PodSpec,
    id: &str,
    ip: Ipv4Addr,
) {
    let veth = spec.host_veth();
    check!(
        node,
        ctd,
        ok(
            node,
            ctd,
            node.ns().wait_link_gone(&veth, Duration::from_secs(10))
        ),
        "host veth {veth} of {}/{} is still there",
        spec.namespace,
        spec.name
    );
    let routes = ok(node, ctd, node.routes_to(ip));
    let rules = ok(node, ctd, node.rules_for(ip));
    check!(
        node,
        ctd,
        routes.is_empty() && rules.is_empty(),
        "routes {routes:?} or rules {rules:?} of {ip} remain"
    );
    check!(
        node,
        ctd,
        checkpointed_ip(node, ctd, id).is_none(),
        "ipamd still has an assignment for sandbox {id}"
    );
    let netns: BTreeSet<String> = ctd
        .cni_calls_for(id)
        .iter()
        .map(|c| c.netns().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    for n in &netns {
        check!(
            node,
            ctd,
            !std::path::Path::new(n).exists(),
            "the sandbox's namespace {n} still exists"
        );
    }
    let ids = ok(node, ctd, ctd.pod_ids());
    check!(
        node,
        ctd,
        !ids.iter().any(|i| i == id),
        "the runtime still lists {id}"
    );
}

/// Asserts containerd's two DELs of a stopped and removed sandbox, as docs/contracts.md says:
/// StopPodSandbox's with the namespace and the ADD's result as prevResult, RemovePodSandbox's
/// with an empty `CNI_NETNS`; both succeed.
pub fn assert_two_dels(node: &NodeHost, ctd: &Containerd, id: &str) {
    let calls = ctd.cni_calls_for(id);
    let commands: Vec<&str> = calls.iter().map(CniCall::command).collect();
    check!(
        node,
        ctd,
        commands == ["ADD", "DEL", "DEL"],
        "calls for {id}: {commands:?}"
    );
    let (add, stop, remove) = (&calls[0], &calls[1], &calls[2]);
    check!(
        node,
        ctd,
        stop.succeeded() && remove.succeeded(),
        "a DEL failed: {stop:?} {remove:?}"
    );
    check!(
        node,
        ctd,
        stop.netns() == add.netns() && !stop.netns().is_empty(),
        "StopPodSandbox's DEL netns {:?}, ADD's {:?}",
        stop.netns(),
        add.netns()
    );
    let added: serde_json::Value = serde_json::from_str(&add.stdout).unwrap_or_default();
    check!(
        node,
        ctd,
        stop.stdin["prevResult"]["ips"] == added["ips"] && added["ips"].is_array(),
        "StopPodSandbox's DEL prevResult {} is not the ADD result {added}",
        stop.stdin["prevResult"]
    );
    check!(
        node,
        ctd,
        remove.netns().is_empty(),
        "RemovePodSandbox's DEL has CNI_NETNS {:?}",
        remove.netns()
    );
    check!(
        node,
        ctd,
        // The same pairs, in any order (containerd builds CNI_ARGS from a Go map).
        stop.arg_map() == add.arg_map() && remove.arg_map() == add.arg_map(),
        "CNI_ARGS differ between ADD and DELs"
    );
}

/// Waits until `f` holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
