//! The upstream plugins ipamd's conflist chains after aws-cni, driven by real libcni with the
//! conflist ipamd itself wrote: `tuning` for `DISABLE_POD_V6=true` (IPv6 off inside the pod's
//! namespace) and `bandwidth` for `ENABLE_BANDWIDTH_PLUGIN=true` (the runtime's `bandwidth`
//! capability shapes the host veth). The plugins are Debian's containernetworking-plugins in
//! `/usr/lib/cni` (on the node's `CNI_PATH` after aws-cni's directory).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use harness::node::NETWORK_NAME;
use harness::{CniClient, NodeOptions, Pod, SimNode, standard_node};
use serde_json::{Value, json};
use test_support::netns::Netns;

use crate::{assert_pod_network, assert_pod_unrouted, check, ok, pod, pod_ip, start};

/// The IPv6 sysctls `DISABLE_POD_V6` turns on, as `/proc/sys` paths.
const V6_SYSCTLS: [&str; 3] = [
    "/proc/sys/net/ipv6/conf/all/disable_ipv6",
    "/proc/sys/net/ipv6/conf/default/disable_ipv6",
    "/proc/sys/net/ipv6/conf/lo/disable_ipv6",
];

/// Rates in bits per second and bursts in bits, as the kubelet passes them; bursts are well
/// above the veth MTU (9001) so pings pass the shapers.
const INGRESS_RATE: u64 = 1_000_000;
const INGRESS_BURST: u64 = 800_000;
const EGRESS_RATE: u64 = 2_000_000;
const EGRESS_BURST: u64 = 1_600_000;

fn bandwidth_caps() -> Value {
    json!({"bandwidth": {
        "ingressRate": INGRESS_RATE, "ingressBurst": INGRESS_BURST,
        "egressRate": EGRESS_RATE, "egressBurst": EGRESS_BURST}})
}

/// The plugin types of the conflist ipamd wrote, in order.
fn chain(node: &SimNode) -> Vec<String> {
    let conflist = ok(node, node.conflist());
    conflist["plugins"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| p["type"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of each of [`V6_SYSCTLS`] read from `/proc/sys` inside `ns`.
fn v6_sysctls(node: &SimNode, ns: &Netns) -> Vec<String> {
    V6_SYSCTLS
        .iter()
        .map(|path| ok(node, ns.exec_checked("cat", &[path])).trim().to_owned())
        .collect()
}

/// The IPv6 addresses in `ns`, as `ifname address`.
fn v6_addresses(node: &SimNode, ns: &Netns) -> Vec<String> {
    ok(node, ns.ip_json(&["-6", "addr", "show"]))
        .iter()
        .flat_map(|link| {
            let name = link["ifname"].as_str().unwrap_or_default().to_owned();
            link["addr_info"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |a| format!("{name} {}", a["local"].as_str().unwrap_or_default()))
        })
        .collect()
}

/// `tc -j <args>` in the node's namespace (`-s` for statistics).
fn tc(node: &SimNode, args: &[&str]) -> Vec<Value> {
    let out = ok(node, node.ns().exec_checked("tc", args));
    if out.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("tc {args:?}: {e}: {out}"))
}

fn qdiscs(node: &SimNode, dev: &str) -> Vec<Value> {
    tc(node, &["-s", "-j", "qdisc", "show", "dev", dev])
}

/// ADDs `p` through libcni and checks the result and aws-cni's data plane.
fn add(node: &SimNode, client: &CniClient<'_>, p: &Pod) -> (Value, Ipv4Addr) {
    let out = ok(node, client.add(NETWORK_NAME, p));
    check!(node, out.success(), "libcni ADD: {}", out.describe());
    let result = out.json.clone().unwrap_or_default();
    let ip = pod_ip(node, &result);
    assert_pod_network(node, p, ip);
    (result, ip)
}

/// DELs `p` through libcni and checks what aws-cni's DEL leaves.
fn del(node: &SimNode, client: &CniClient<'_>, p: &Pod, ip: Ipv4Addr) {
    let out = ok(node, client.del(NETWORK_NAME, p));
    check!(node, out.success(), "libcni DEL: {}", out.describe());
    assert_pod_unrouted(node, p, ip);
    check!(
        node,
        ok(node, node.ipamd_assignment(p)).is_none(),
        "ipamd still holds {ip} after DEL"
    );
}

/// Without either variable: the written chain is aws-cni + portmap only, the pod keeps the
/// kernel's IPv6 defaults, and the `bandwidth` capability the runtime offers reaches no plugin
/// (nothing declares it), so the host veth has no shaping.
#[test]
fn default_chain_leaves_pod_ipv6_and_host_qdiscs_alone() {
    let node = start(NodeOptions::new(standard_node(&[2])));
    check!(
        node,
        chain(&node) == ["aws-cni", "portmap"],
        "default chain {:?}",
        chain(&node)
    );
    let client = ok(&node, CniClient::new(&node)).with_cap_args(&bandwidth_caps());
    let p = pod("default", "plain-0");
    let (_, ip) = add(&node, &client, &p);
    let pod_ns = p.ns().unwrap();
    let values = v6_sysctls(&node, pod_ns);
    check!(
        node,
        values == ["0", "0", "0"],
        "without DISABLE_POD_V6 the pod's {V6_SYSCTLS:?} must be the kernel default 0, got {values:?}"
    );
    // IPv6 really is on: eth0 gets its link-local address once up (DAD may still run).
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut v6 = v6_addresses(&node, pod_ns);
    while !v6.iter().any(|a| a.starts_with("eth0 fe80:")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        v6 = v6_addresses(&node, pod_ns);
    }
    check!(
        node,
        v6.iter().any(|a| a.starts_with("eth0 fe80:")),
        "the pod's eth0 has no IPv6 link-local address with IPv6 on: {v6:?}"
    );
    let veth = p.host_veth("eni");
    let q = qdiscs(&node, &veth);
    check!(
        node,
        !q.iter()
            .any(|q| q["kind"] == "tbf" || q["kind"] == "ingress"),
        "no shaping expected on {veth} without ENABLE_BANDWIDTH_PLUGIN: {q:?}"
    );
    del(&node, &client, &p, ip);
}

/// `DISABLE_POD_V6=true`: ipamd chains `tuning`, which turns IPv6 off inside the pod's
/// namespace (and only there); CHECK (tuning compares the sysctls) and DEL pass.
#[test]
fn disable_pod_v6_turns_ipv6_off_in_the_pod() {
    let node = start(NodeOptions::new(standard_node(&[2])).ipamd_env("DISABLE_POD_V6", "true"));
    check!(
        node,
        chain(&node) == ["aws-cni", "portmap", "tuning"],
        "chain with DISABLE_POD_V6 {:?}",
        chain(&node)
    );
    let conflist = ok(&node, node.conflist());
    check!(
        node,
        conflist["plugins"][2]
            == json!({"type": "tuning", "sysctl": {
                "net.ipv6.conf.all.disable_ipv6": "1",
                "net.ipv6.conf.default.disable_ipv6": "1",
                "net.ipv6.conf.lo.disable_ipv6": "1"}}),
        "tuning entry {}",
        conflist["plugins"][2]
    );
    let node_before = v6_sysctls(&node, node.ns());
    let client = ok(&node, CniClient::new(&node));
    let p = pod("default", "nov6-0");
    let (_, ip) = add(&node, &client, &p);
    let pod_ns = p.ns().unwrap();
    let values = v6_sysctls(&node, pod_ns);
    check!(
        node,
        values == ["1", "1", "1"],
        "with DISABLE_POD_V6 the pod's {V6_SYSCTLS:?} must be 1, got {values:?}"
    );
    let v6 = v6_addresses(&node, pod_ns);
    check!(
        node,
        v6.is_empty(),
        "the pod still has IPv6 addresses with IPv6 off: {v6:?}"
    );
    let node_after = v6_sysctls(&node, node.ns());
    check!(
        node,
        node_after == node_before,
        "tuning changed the node's namespace: {node_before:?} -> {node_after:?}"
    );
    let ping = ok(&node, node.ping(pod_ns, Ipv4Addr::new(10, 0, 0, 10)));
    check!(
        node,
        ping.ok,
        "IPv4 from the pod must still work: {}",
        ping.output
    );
    let out = ok(&node, client.check(NETWORK_NAME, &p));
    check!(node, out.success(), "libcni CHECK: {}", out.describe());
    del(&node, &client, &p, ip);
}

/// `ENABLE_BANDWIDTH_PLUGIN=true`: ipamd chains `bandwidth`; an ADD with the runtime's
/// `bandwidth` capability puts a tbf on the host veth (traffic to the pod) and redirects the
/// veth's ingress (traffic from the pod) through an ifb device with its own tbf; the pod's
/// traffic passes both; CHECK passes; DEL removes the ifb device. A pod whose runtime passes
/// no rates gets no shaping.
#[test]
fn bandwidth_plugin_shapes_the_host_veth() {
    let node =
        start(NodeOptions::new(standard_node(&[2])).ipamd_env("ENABLE_BANDWIDTH_PLUGIN", "true"));
    check!(
        node,
        chain(&node) == ["aws-cni", "portmap", "bandwidth"],
        "chain with ENABLE_BANDWIDTH_PLUGIN {:?}",
        chain(&node)
    );
    let client = ok(&node, CniClient::new(&node)).with_cap_args(&bandwidth_caps());
    let validate = ok(&node, client.validate(NETWORK_NAME));
    check!(
        node,
        validate.success(),
        "validate: {}",
        validate.describe()
    );
    let caps = validate.json.clone().unwrap_or_default()["capabilities"].clone();
    check!(
        node,
        caps.as_array()
            .is_some_and(|c| c.iter().any(|x| x == "bandwidth")),
        "the list must declare the bandwidth capability: {caps}"
    );

    let p = pod("default", "shaped-0");
    let (result, ip) = add(&node, &client, &p);
    let veth = p.host_veth("eni");

    // The bandwidth plugin appends the ifb device it made to the result (a host interface).
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let ifb: Vec<String> = ifaces
        .iter()
        .filter_map(|i| i["name"].as_str())
        .filter(|n| n.starts_with("bwp"))
        .map(str::to_owned)
        .collect();
    check!(
        node,
        ifb.len() == 1,
        "the ADD result must list one ifb device (bwp…) after the bandwidth plugin: {ifaces:?}"
    );
    let ifb = &ifb[0];
    let link = ok(
        &node,
        node.ns().ip_json(&["-d", "link", "show", "dev", ifb]),
    );
    check!(
        node,
        link.first()
            .is_some_and(|l| l["linkinfo"]["info_kind"] == "ifb"),
        "{ifb} is not an ifb device in the node's namespace: {link:?}"
    );

    // Traffic to the pod: tbf at the root of the host veth with the ingress rate.
    let on_veth = qdiscs(&node, &veth);
    let tbf = on_veth.iter().find(|q| q["kind"] == "tbf");
    check!(
        node,
        tbf.is_some_and(|q| q["root"] == true
            && q["options"]["rate"] == INGRESS_RATE / 8
            && burst_close(&q["options"]["burst"], INGRESS_BURST / 8)),
        "{veth} needs a root tbf rate {} B/s burst ~{} B: {on_veth:?}",
        INGRESS_RATE / 8,
        INGRESS_BURST / 8
    );
    // Traffic from the pod: the veth's ingress qdisc redirects everything to the ifb device,
    // whose root tbf has the egress rate.
    check!(
        node,
        on_veth
            .iter()
            .any(|q| q["kind"] == "ingress" && q["handle"] == "ffff:"),
        "{veth} needs an ingress qdisc ffff: for egress shaping: {on_veth:?}"
    );
    let filters = tc(&node, &["-j", "filter", "show", "dev", &veth, "ingress"]);
    check!(
        node,
        filters.iter().any(|f| f["options"]["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["kind"] == "mirred"
                && a["mirred_action"] == "redirect"
                && a["to_dev"] == ifb.as_str()))),
        "{veth}'s ingress needs a mirred redirect to {ifb}: {filters:?}"
    );
    let on_ifb = qdiscs(&node, ifb);
    check!(
        node,
        on_ifb.iter().any(|q| q["kind"] == "tbf"
            && q["root"] == true
            && q["options"]["rate"] == EGRESS_RATE / 8
            && burst_close(&q["options"]["burst"], EGRESS_BURST / 8)),
        "{ifb} needs a root tbf rate {} B/s burst ~{} B: {on_ifb:?}",
        EGRESS_RATE / 8,
        EGRESS_BURST / 8
    );

    // The pod's traffic flows through both shapers.
    let sent = |node: &SimNode, dev: &str| -> u64 {
        qdiscs(node, dev)
            .iter()
            .find(|q| q["kind"] == "tbf")
            .and_then(|q| q["packets"].as_u64())
            .unwrap_or(0)
    };
    let (veth_before, ifb_before) = (sent(&node, &veth), sent(&node, ifb));
    let pod_ns = p.ns().unwrap();
    let ping = ok(&node, node.ping(pod_ns, Ipv4Addr::new(10, 0, 0, 10)));
    check!(
        node,
        ping.ok,
        "ping from the shaped pod failed: {}",
        ping.output
    );
    let (veth_after, ifb_after) = (sent(&node, &veth), sent(&node, ifb));
    check!(
        node,
        veth_after >= veth_before + 3 && ifb_after >= ifb_before + 3,
        "the pings did not pass the shapers: {veth} tbf {veth_before} -> {veth_after}, \
         {ifb} tbf {ifb_before} -> {ifb_after}"
    );

    // CHECK: the bandwidth plugin compares the qdiscs with the runtime's rates.
    let out = ok(&node, client.check(NETWORK_NAME, &p));
    check!(node, out.success(), "libcni CHECK: {}", out.describe());

    // A pod without rates: the plugin passes the result through and shapes nothing.
    let plain_client = ok(&node, CniClient::new(&node));
    let q = pod("default", "unshaped-0");
    let (plain_result, plain_ip) = add(&node, &plain_client, &q);
    let plain_veth = q.host_veth("eni");
    let on_plain = qdiscs(&node, &plain_veth);
    check!(
        node,
        !on_plain
            .iter()
            .any(|q| q["kind"] == "tbf" || q["kind"] == "ingress"),
        "{plain_veth} is shaped without rates: {on_plain:?}"
    );
    check!(
        node,
        !plain_result.to_string().contains("\"bwp"),
        "no ifb device expected without rates: {plain_result}"
    );
    del(&node, &plain_client, &q, plain_ip);

    // DEL: the bandwidth plugin removes the ifb device; aws-cni its routing state.
    del(&node, &client, &p, ip);
    check!(
        node,
        ok(&node, node.ns().link(ifb)).is_none(),
        "the ifb device {ifb} outlived DEL"
    );
    let again = ok(&node, client.del(NETWORK_NAME, &p));
    check!(node, again.success(), "second DEL: {}", again.describe());
}

/// tc reports a tbf's burst from its buffer in scheduler ticks: allow 2 % rounding.
fn burst_close(got: &Value, want: u64) -> bool {
    got.as_u64().is_some_and(|b| b.abs_diff(want) * 50 <= want)
}
