//! End-to-end tests on the simulated VPC (moto + router + hypervisor + IMDS emulator): the
//! fabric itself, ipamd's EC2 provisioning against moto (issue 3) and pod connectivity across
//! nodes (issue 4). Every test builds its own VPC (its own moto, router and namespaces) and
//! tears it down, so tests run in parallel; the slow ones (pool shrink, reconcile, leaked ENI
//! cleanup) wait on the reference's timers and are kept few. `subnets` covers subnet discovery
//! (several subnets, tags, `CLUSTER_NAME`), the low-address report and unmanaged ENIs;
//! `prefixes` prefix delegation (moto's prefix extension, max pods, prefixes given back).
//! `ipv6` the simulator in IPv6 (addresses and /80 prefixes routed to their ENIs, the
//! source/destination check, the IPv6 internet host); `ipv6_pods` IPv6 pods end to end (ipamd
//! in IPv6 mode, aws-cni and egress-cni installed by install-cni and chained by libcni).
//!
//! They must run as root with moto installed and fail (never skip) when something is missing.
#![allow(clippy::unwrap_used)]

mod connectivity;
mod fabric;
mod ipv6;
mod ipv6_pods;
mod limits;
mod maintenance;
mod prefixes;
mod snat;
mod subnets;
mod warm_pool;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use harness::vpc::{EniState, IpamdMode};
use harness::{FabricOptions, NodeSpec, Pod, VpcFabric, VpcNode};
use serde_json::Value;

pub use harness::check;
pub use harness::node::ok;

/// Starts a VPC with default options.
pub fn fabric() -> VpcFabric {
    fabric_with(FabricOptions::default())
}

/// Starts a VPC.
pub fn fabric_with(options: FabricOptions) -> VpcFabric {
    VpcFabric::start(options).unwrap_or_else(|e| panic!("cannot start the simulated VPC: {e}"))
}

/// Adds a node, panicking with the logs on error.
pub fn node(vpc: &VpcFabric, spec: NodeSpec) -> VpcNode {
    let name = spec.name.clone();
    vpc.add_node(spec)
        .unwrap_or_else(|e| panic!("cannot start node {name}: {e}\n{}", vpc.diag()))
}

/// Creates a pod sandbox.
pub fn pod(namespace: &str, name: &str) -> Pod {
    Pod::new(namespace, name).unwrap()
}

/// ADD as a kubelet does it: retried (every 500 ms) while ipamd answers "no IP" (CNI code 11)
/// and grows the pool, until `timeout`. Returns the result and the pod's address.
pub fn add_pod_retrying(node: &VpcNode, pod: &Pod, timeout: Duration) -> (Value, Ipv4Addr) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = ok(node, node.cni("ADD", pod, "1.0.0", None));
        if out.success() {
            let result = out.json.clone().unwrap_or_default();
            let ip = harness::cni::result_ip(&result);
            check!(node, ip.is_some(), "ADD result without address: {result}");
            return (result, ip.unwrap());
        }
        check!(
            node,
            out.error_code() == Some(11) && Instant::now() < deadline,
            "ADD of {}/{} did not succeed within {timeout:?}: {}",
            pod.namespace,
            pod.name,
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Polls `probe` every 250 ms until it returns `Some`, or fails after `timeout` with `what`
/// and the last value `show` describes.
pub fn wait_for<T>(
    node: &VpcNode,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
    show: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last seen: {}\n{}",
                show(),
                node.diag()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The instance's ENIs in moto right now.
pub fn enis(node: &VpcNode) -> Vec<EniState> {
    ok(node, node.enis())
}

/// (ENIs attached, secondary addresses in total) in moto right now.
pub fn eni_and_ip_counts(node: &VpcNode) -> (usize, usize) {
    let enis = enis(node);
    let ips = enis.iter().map(|e| e.secondary_ips().len()).sum();
    (enis.len(), ips)
}

/// Readable ENI list for messages.
pub fn show_enis(node: &VpcNode) -> String {
    match node.enis() {
        Ok(enis) => enis
            .iter()
            .map(|e| {
                format!(
                    "eth{} {} {:?}",
                    e.device_index().unwrap_or(0),
                    e.id,
                    e.secondary_ips()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("(cannot read moto: {e})"),
    }
}

/// The address must be a secondary address of one of the node's ENIs in moto, and routed by the
/// VPC router to that ENI.
pub fn assert_vpc_address(vpc: &VpcFabric, node: &VpcNode, ip: Ipv4Addr) -> EniState {
    let eni = ok(node, node.eni_holding(ip));
    check!(
        node,
        eni.as_ref()
            .is_some_and(|e| e.secondary_ips().contains(&ip)),
        "pod address {ip} is not a secondary address of an ENI of {} in moto: {}",
        node.instance_id(),
        show_enis(node)
    );
    let eni = eni.unwrap();
    assert_routed(vpc, node, ip, &eni);
    eni
}

/// The VPC router (once in step with moto) routes `ip` to `eni`'s link.
pub fn assert_routed(vpc: &VpcFabric, node: &VpcNode, ip: Ipv4Addr, eni: &EniState) {
    ok(node, vpc.sync());
    let routes = ok(node, vpc.router().routes("main"));
    let link = harness::vpc::router::router_link_name(&eni.id);
    check!(
        node,
        routes
            .iter()
            .any(|r| r["dst"] == ip.to_string().as_str() && r["dev"] == link.as_str()),
        "the VPC router does not route {ip} to {} ({link}): {routes:?}",
        eni.id
    );
}

/// A node spec in EC2 mode.
pub fn ec2_node(name: &str, instance_type: &str) -> NodeSpec {
    let spec = NodeSpec::new(name, instance_type);
    assert_eq!(spec.mode, IpamdMode::Ec2);
    spec
}

/// Distinct values.
pub fn set<T: Ord + Copy>(items: &[T]) -> BTreeSet<T> {
    items.iter().copied().collect()
}
