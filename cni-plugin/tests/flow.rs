//! The plugin binary end to end against a fake ipamd that speaks the real gRPC contract: ADD,
//! CHECK, DEL, GC and STATUS, with the kernel state read back after each step.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use common::fake_ipamd::FakeIpamd;
use common::{
    LINK_GONE_TIMEOUT, assert_no_addresses, cni_env, conf, exec_plugin, has_tentative_v6, pings,
    pings6, pod_rules, routes_to, silent6, v6_addresses_of, v6_routes_added,
};
use serde_json::{Value, json};
use test_support::netns::Netns;

fn args(name: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=infra-{name};K8S_POD_UID=uid-{name}"
    )
}

/// The CNI environment of `verb` for pod `name`'s eth0 in the namespace at `netns`.
fn pod_env(verb: &str, cid: &str, netns: &Path, name: &str) -> HashMap<&'static str, String> {
    cni_env(verb, cid, "eth0", Some(netns), &args(name))
}

/// The host veth of pod `name` in namespace `default`.
fn host_veth(name: &str) -> String {
    aws_cni::pod_network::host_veth_name("eni", "default", name)
}

/// The node's IPv6 address in an IPv6 cluster (on the host namespace's `lo`).
const NODE_V6: &str = "2600:1f14:abc:de00::10";

struct Node {
    host: Netns,
    ipamd: FakeIpamd,
    log: tempfile::TempDir,
}

impl Node {
    fn new(pool: &[(IpAddr, i32)]) -> Self {
        let host = Netns::new("host").unwrap();
        host.ip(&["addr", "add", "10.0.0.10/32", "dev", "lo"])
            .unwrap();
        let ipamd = FakeIpamd::start(pool);
        ipamd.with(|s| s.host_ns = Some(host.name().to_owned()));
        Self {
            host,
            ipamd,
            log: tempfile::tempdir().unwrap(),
        }
    }

    /// A node of an IPv6 cluster: the host namespace also holds the node's IPv6 address and
    /// forwards IPv6 (as `ipamd install-cni` sets it); ipamd hands out /128s.
    fn v6(pool: &[(IpAddr, i32)]) -> Self {
        let node = Self::new(pool);
        node.host
            .ip(&["-6", "addr", "add", &format!("{NODE_V6}/128"), "dev", "lo"])
            .unwrap();
        node.host
            .sysctl("net.ipv6.conf.all.forwarding", "1")
            .unwrap();
        node
    }

    fn conf(&self, version: &str) -> Value {
        let log = self.log.path().join("plugin.log").display().to_string();
        conf(version, &self.ipamd.socket_str(), &log)
    }

    fn exec(&self, env: &HashMap<&str, String>, stdin: &Value) -> common::PluginRun {
        exec_plugin(&self.host, env, stdin.to_string().as_bytes())
    }

    /// The config of `version` with ipamd's socket pointing where nothing listens.
    fn conf_without_ipamd(&self, version: &str) -> Value {
        let mut c = self.conf(version);
        c["ipamdSocket"] = json!(self.log.path().join("absent.sock"));
        c
    }

    fn add(&self, version: &str, cid: &str, pod: &Netns, name: &str) -> common::PluginRun {
        self.exec(&pod_env("ADD", cid, &pod.path(), name), &self.conf(version))
    }

    /// ADDs pod `name`, which must succeed, and returns the result.
    fn add_ok(&self, version: &str, cid: &str, pod: &Netns, name: &str) -> Value {
        let r = self.add(version, cid, pod, name);
        r.assert_ok();
        r.json()
    }

    /// ADDs pod `name`, which must succeed, and returns its host veth.
    fn attach(&self, version: &str, cid: &str, pod: &Netns, name: &str) -> String {
        self.add_ok(version, cid, pod, name);
        host_veth(name)
    }

    fn with_prev(&self, version: &str, prev: &Value) -> Value {
        let mut c = self.conf(version);
        c["prevResult"] = prev.clone();
        c
    }
}

/// The MAC of link `name` in `ns`, which must exist.
fn mac_of(ns: &Netns, name: &str) -> String {
    let link = ns.link(name).unwrap();
    let link = link.unwrap_or_else(|| panic!("no link {name}"));
    link["address"].as_str().unwrap().to_string()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn add_check_del_cycle_against_ipamd() {
    let node = Node::new(&[(ip("10.0.2.20"), 2)]);
    let pod = Netns::new("pod").unwrap();
    let result = node.add_ok("1.0.0", "cid-a", &pod, "web-0");
    let veth = host_veth("web-0");
    let host_mac = mac_of(&node.host, &veth);
    let pod_mac = mac_of(&pod, "eth0");
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": veth, "mac": host_mac},
                           {"name": "eth0", "mac": pod_mac, "sandbox": pod.path()}],
            "ips": [{"address": "10.0.2.20/32", "interface": 1, "gateway": "169.254.1.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {}
        })
    );
    // ipamd got the pod's identity.
    let req = node.ipamd.with(|s| s.add_requests[0].clone());
    assert_eq!(req.k8s_pod_name, "web-0");
    assert_eq!(req.k8s_pod_namespace, "default");
    assert_eq!(req.k8s_pod_infra_container_id, "infra-web-0");
    assert_eq!(req.container_id, "cid-a");
    assert_eq!(req.if_name, "eth0");
    assert_eq!(req.network_name, "aws-cni");
    assert_eq!(req.netns, pod.path());
    assert_eq!(req.client_version, env!("CARGO_PKG_VERSION"));

    let rules = pod_rules(&node.host, ip("10.0.2.20"));
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(pings(&node.host, "10.0.2.20"), "node -> pod");
    assert!(pings(&pod, "10.0.0.10"), "pod -> node");

    // CHECK passes and prints nothing.
    let check_env = pod_env("CHECK", "cid-a", &pod.path(), "web-0");
    let r = node.exec(&check_env, &node.with_prev("1.0.0", &result));
    r.assert_ok();
    assert_eq!(r.stdout, "");

    // Tampering is reported with what differs.
    pod.ip(&["route", "del", "default"]).unwrap();
    let r = node.exec(&check_env, &node.with_prev("1.0.0", &result));
    r.assert_error(100, "default route via 169.254.1.1");

    // DEL removes the pod's routing state and its address, and released the address only
    // after the rules were gone; the veth pair is left to the removal of the namespace.
    let del_env = pod_env("DEL", "cid-a", &pod.path(), "web-0");
    let r = node.exec(&del_env, &node.with_prev("1.0.0", &result));
    r.assert_ok();
    assert!(pod_rules(&node.host, ip("10.0.2.20")).is_empty());
    assert!(routes_to(&node.host, "10.0.2.20").is_empty());
    assert_eq!(
        node.host.link(&veth).unwrap().map(|l| l["address"].clone()),
        Some(json!(host_mac)),
        "the host veth stays until the namespace goes"
    );
    assert_eq!(
        pod.link("eth0").unwrap().map(|l| l["address"].clone()),
        Some(json!(pod_mac))
    );
    assert_no_addresses(&pod, "eth0");
    assert!(!pings(&node.host, "10.0.2.20"), "node -> deleted pod");
    node.ipamd.with(|s| {
        assert_eq!(s.rules_at_release, vec![(ip("10.0.2.20"), 0)]);
        assert_eq!(s.del_requests[0].reason, "PodDeleted");
        assert_eq!(s.del_requests[0].k8s_pod_uid, "uid-web-0");
        assert!(s.assigned.is_empty());
    });

    // DEL again: success. CHECK after DEL: ipamd no longer knows the pod.
    node.exec(&del_env, &node.with_prev("1.0.0", &result))
        .assert_ok();
    let r = node.exec(&check_env, &node.with_prev("1.0.0", &result));
    assert_eq!(r.code(), 101, "{}", r.stdout);

    // The runtime removes the namespace: the kernel frees the pair; a DEL after that succeeds.
    let path = pod.path();
    drop(pod);
    assert!(
        node.host.wait_link_gone(&veth, LINK_GONE_TIMEOUT).unwrap(),
        "veth outlived its namespace"
    );
    let del_env = pod_env("DEL", "cid-a", &path, "web-0");
    node.exec(&del_env, &node.with_prev("1.0.0", &result))
        .assert_ok();
    assert_eq!(node.ipamd.with(|s| s.del_requests.len()), 3);
}

#[test]
fn results_follow_the_request_version() {
    let node = Node::new(&[(ip("10.0.2.30"), 254), (ip("10.0.2.31"), 254)]);
    let pod_a = Netns::new("pod").unwrap();
    let pod_b = Netns::new("pod").unwrap();
    let j = node.add_ok("0.4.0", "cid-a", &pod_a, "a");
    let j_a = j.clone();
    assert_eq!(j["cniVersion"], "0.4.0");
    assert_eq!(j["ips"][0]["version"], "4");
    assert!(j["interfaces"][0].get("mtu").is_none());
    // Primary-ENI address: only the 512 rule.
    assert_eq!(pod_rules(&node.host, ip("10.0.2.30")).len(), 1);

    let j = node.add_ok("1.1.0", "cid-b", &pod_b, "b");
    assert_eq!(j["cniVersion"], "1.1.0");
    assert_eq!(j["interfaces"][0]["mtu"], 9001);
    assert_eq!(j["interfaces"][1]["mtu"], 9001);
    assert!(j["ips"][0].get("version").is_none());

    // A 0.4.0 cached result drives CHECK and DEL as well.
    let prev = j_a.clone();
    let check_env = pod_env("CHECK", "cid-a", &pod_a.path(), "a");
    node.exec(&check_env, &node.with_prev("0.4.0", &prev))
        .assert_ok();

    // A repeated ADD while eth0 exists is refused before ipamd is asked.
    let refused_as_eth0_exists = |cid: &str| {
        let again = node.add("0.4.0", cid, &pod_a, "a");
        again.assert_error(121, "eth0 already exists");
        assert_eq!(node.ipamd.with(|s| s.add_requests.len()), 2);
    };
    refused_as_eth0_exists("cid-a");

    let del_env = pod_env("DEL", "cid-a", &pod_a.path(), "a");
    node.exec(&del_env, &node.with_prev("0.4.0", &prev))
        .assert_ok();
    assert!(pod_rules(&node.host, ip("10.0.2.30")).is_empty());
    assert_no_addresses(&pod_a, "eth0");

    // A namespace that outlives its DEL (`podman network disconnect`) keeps its eth0, so an
    // ADD of the same interface there is refused, as the spec and the reference have it.
    refused_as_eth0_exists("cid-a2");
}

#[test]
fn exhausted_or_unready_ipamd_is_code_11_with_its_message_and_leaves_nothing() {
    let node = Node::new(&[]);
    let pod = Netns::new("pod").unwrap();
    let links = node.host.link_names().unwrap();
    let r = node.add("1.0.0", "cid-a", &pod, "web-0");
    r.assert_error(11, "no assignable IP address");
    assert!(r.msg().contains("limit"), "{}", r.msg());
    assert_eq!(node.host.link_names().unwrap(), links);
    assert_eq!(pod.link_names().unwrap(), vec!["lo".to_string()]);

    node.ipamd.with(|s| {
        s.ready = false;
        s.free.push((ip("10.0.2.40"), 2));
    });
    let r = node.add("1.0.0", "cid-a", &pod, "web-0");
    r.assert_error(11, "starting");
    assert_eq!(node.host.link_names().unwrap(), links);
}

#[test]
fn failed_setup_returns_the_address() {
    let node = Node::new(&[(ip("10.0.2.50"), 2)]);
    node.ipamd.with(|s| s.pod_vlan_id = 7);
    let pod = Netns::new("pod").unwrap();
    let r = node.add("1.0.0", "cid-a", &pod, "web-0");
    r.assert_error(110, "VLAN 7");
    node.ipamd.with(|s| {
        assert_eq!(s.del_requests.len(), 1);
        assert_eq!(s.del_requests[0].reason, "SetupNSFailed");
        assert!(s.assigned.is_empty());
        assert_eq!(s.free, vec![(ip("10.0.2.50"), 2)]);
    });
    assert_eq!(pod.link_names().unwrap(), vec!["lo".to_string()]);
    assert!(pod_rules(&node.host, ip("10.0.2.50")).is_empty());
}

#[test]
fn del_without_prev_result_asks_ipamd() {
    let node = Node::new(&[(ip("10.0.2.60"), 3)]);
    let pod = Netns::new("pod").unwrap();
    node.add_ok("1.0.0", "cid-a", &pod, "web-0");
    assert_eq!(pod_rules(&node.host, ip("10.0.2.60")).len(), 2);
    let del_env = pod_env("DEL", "cid-a", &pod.path(), "web-0");
    node.exec(&del_env, &node.conf("1.0.0")).assert_ok();
    assert!(pod_rules(&node.host, ip("10.0.2.60")).is_empty());
    assert!(routes_to(&node.host, "10.0.2.60").is_empty());
    assert_no_addresses(&pod, "eth0");
    let veth = host_veth("web-0");
    assert!(
        node.host.link(&veth).unwrap().is_some(),
        "the veth goes with the netns"
    );
    node.ipamd
        .with(|s| assert_eq!(s.rules_at_release, vec![(ip("10.0.2.60"), 0)]));
    drop(pod);
    assert!(
        node.host.wait_link_gone(&veth, LINK_GONE_TIMEOUT).unwrap(),
        "veth outlived its namespace"
    );
}

#[test]
fn gc_releases_attachments_not_in_the_valid_list() {
    let node = Node::new(&[(ip("10.0.2.70"), 2), (ip("10.0.2.71"), 2)]);
    let keep = Netns::new("pod").unwrap();
    let gone = Netns::new("pod").unwrap();
    let kept = node.add_ok("1.1.0", "cid-keep", &keep, "keep");
    let gone_veth = node.attach("1.1.0", "cid-gone", &gone, "gone");

    let mut c = node.conf("1.1.0");
    c["cni.dev/valid-attachments"] = json!([{"containerID": "cid-keep", "ifname": "eth0"}]);
    let env = HashMap::from([
        ("CNI_COMMAND", "GC".to_string()),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
    ]);
    let r = node.exec(&env, &c);
    r.assert_ok();
    assert_eq!(r.stdout, "");
    assert!(node.host.link(&gone_veth).unwrap().is_none());
    assert!(pod_rules(&node.host, ip("10.0.2.71")).is_empty());
    assert!(routes_to(&node.host, "10.0.2.71").is_empty());
    node.ipamd
        .with(|s| assert_eq!(s.free, vec![(ip("10.0.2.71"), 2)]));

    // The valid attachment is intact.
    let check_env = pod_env("CHECK", "cid-keep", &keep.path(), "keep");
    node.exec(&check_env, &node.with_prev("1.1.0", &kept))
        .assert_ok();

    // GC without the list is refused rather than releasing everything.
    let r = node.exec(&env, &node.conf("1.1.0"));
    r.assert_error(7, "cni.dev/valid-attachments");
}

#[test]
fn status_reports_whether_add_can_be_served() {
    let node = Node::new(&[(ip("10.0.2.80"), 2)]);
    let env = HashMap::from([("CNI_COMMAND", "STATUS".to_string())]);
    let r = node.exec(&env, &node.conf("1.1.0"));
    r.assert_ok();
    assert_eq!(r.stdout, "");

    let pod = Netns::new("pod").unwrap();
    node.add_ok("1.1.0", "cid-a", &pod, "web-0");
    let r = node.exec(&env, &node.conf("1.1.0"));
    r.assert_error(50, "no assignable IP address (1 total, 1 assigned");

    node.ipamd.with(|s| s.ready = false);
    let r = node.exec(&env, &node.conf("1.1.0"));
    r.assert_error(50, "not ready");
}

/// Asserts the data plane ADD made for `ip` (design.md §1): pod address, routes and gateway
/// neighbour, host route and rules. Returns the host veth's MAC.
fn assert_attached(node: &Node, pod: &Netns, veth: &str, ip: IpAddr, table: u32) -> String {
    let host_mac = mac_of(&node.host, veth);
    assert_eq!(pod.addresses_of("eth0").unwrap(), vec![format!("{ip}/32")]);
    let routes = pod.routes_all().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "169.254.1.1" && r["dev"] == "eth0" && r["scope"] == "link"),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1"),
        "{routes:?}"
    );
    let neigh = pod.neighbours().unwrap();
    assert!(
        neigh.iter().any(|n| n["dst"] == "169.254.1.1"
            && n["lladdr"] == host_mac.as_str()
            && n["state"].to_string().contains("PERMANENT")),
        "{neigh:?}"
    );
    let ip_s = ip.to_string();
    let host_routes = routes_to(&node.host, &ip_s);
    assert!(
        host_routes
            .iter()
            .any(|r| r["dev"] == veth && r["scope"] == "link"),
        "{host_routes:?}"
    );
    let rules = pod_rules(&node.host, ip);
    assert!(
        rules
            .iter()
            .any(|r| r["priority"] == 512 && r["dst"] == ip_s.as_str() && r["table"] == "main"),
        "{rules:?}"
    );
    assert!(
        rules.iter().any(|r| r["priority"] == 1536
            && r["src"] == ip_s.as_str()
            && r["table"] == table.to_string().as_str()),
        "{rules:?}"
    );
    assert_eq!(rules.len(), 2, "{rules:?}");
    host_mac
}

/// Asserts DEL left the host neither routing `ip` nor holding its rules, and the pod's eth0
/// without the address.
fn assert_detached(node: &Node, pod: &Netns, ip: IpAddr) {
    assert!(
        pod_rules(&node.host, ip).is_empty(),
        "{:?}",
        pod_rules(&node.host, ip)
    );
    let routes = routes_to(&node.host, &ip.to_string());
    assert!(routes.is_empty(), "{routes:?}");
    assert_no_addresses(pod, "eth0");
}

#[test]
fn add_and_del_with_0_3_0_and_0_3_1_configs() {
    let node = Node::new(&[(ip("10.0.2.90"), 2), (ip("10.0.2.91"), 3)]);
    for (version, addr, table, name) in [
        ("0.3.0", ip("10.0.2.90"), 2, "web-30"),
        ("0.3.1", ip("10.0.2.91"), 3, "web-31"),
    ] {
        let pod = Netns::new("pod").unwrap();
        let cid = format!("cid-{name}");
        let result = node.add_ok(version, &cid, &pod, name);
        let veth = host_veth(name);
        let host_mac = assert_attached(&node, &pod, &veth, addr, table);
        let pod_mac = mac_of(&pod, "eth0");
        // The 0.3.x result: ips[].version "4", interface indices, no interface MTU.
        assert_eq!(
            result,
            json!({
                "cniVersion": version,
                "interfaces": [{"name": veth, "mac": host_mac},
                               {"name": "eth0", "mac": pod_mac, "sandbox": pod.path()}],
                "ips": [{"version": "4", "address": format!("{addr}/32"), "interface": 1,
                         "gateway": "169.254.1.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            }),
            "{version}"
        );
        assert!(
            pings(&node.host, &addr.to_string()),
            "{version}: node -> pod"
        );
        assert!(pings(&pod, "10.0.0.10"), "{version}: pod -> node");

        // CHECK does not exist before 0.4.0: code 1 with skel's words, nothing touched.
        let check_env = pod_env("CHECK", &cid, &pod.path(), name);
        let c = node.exec(&check_env, &node.with_prev(version, &result));
        assert_eq!(c.code(), 1, "{version}: {}", c.stdout);
        assert!(
            c.msg().contains("config version does not allow CHECK"),
            "{}",
            c.msg()
        );
        assert_eq!(c.json()["cniVersion"], version);
        assert_attached(&node, &pod, &veth, addr, table);

        // DEL without prevResult (0.3.x runtimes have none): ipamd names the address, the
        // pod's routing state and address go, and the address is released only after that.
        let del_env = pod_env("DEL", &cid, &pod.path(), name);
        let d = node.exec(&del_env, &node.conf(version));
        d.assert_ok();
        assert_eq!(d.stdout, "", "DEL prints nothing");
        assert_detached(&node, &pod, addr);
        assert!(!pings(&node.host, &addr.to_string()), "node -> deleted pod");
        node.ipamd.with(|s| {
            let last = s.del_requests.last().unwrap();
            assert_eq!(
                (last.container_id.as_str(), last.reason.as_str()),
                (cid.as_str(), "PodDeleted")
            );
            assert_eq!(s.rules_at_release.last(), Some(&(addr, 0)));
            assert!(s.free.contains(&(addr, i32::try_from(table).unwrap())));
        });
        // A repeated DEL succeeds; the namespace's removal frees the pair.
        node.exec(&del_env, &node.conf(version)).assert_ok();
        drop(pod);
        assert!(
            node.host.wait_link_gone(&veth, LINK_GONE_TIMEOUT).unwrap(),
            "veth outlived its namespace"
        );
        assert!(pod_rules(&node.host, addr).is_empty());
    }
    node.ipamd.with(|s| assert!(s.assigned.is_empty()));
}

#[test]
fn del_0_3_1_without_ipamd_cleans_up_from_the_pod_interface() {
    let node = Node::new(&[(ip("10.0.2.92"), 2), (ip("10.0.2.93"), 2)]);
    let pod = Netns::new("pod").unwrap();
    let neighbour = Netns::new("pod").unwrap();
    let veth = node.attach("0.3.1", "cid-a", &pod, "web-0");
    let other_veth = node.attach("0.3.1", "cid-b", &neighbour, "web-1");
    assert_attached(&node, &pod, &veth, ip("10.0.2.92"), 2);

    // ipamd unreachable, no prevResult: the pod's eth0 names the address and its gateway
    // neighbour the host veth's MAC; the host's routing state and the pod's address go.
    let unreachable = node.conf_without_ipamd("0.3.1");
    let del_env = pod_env("DEL", "cid-a", &pod.path(), "web-0");
    let d = node.exec(&del_env, &unreachable);
    d.assert_ok();
    assert_eq!(d.stdout, "");
    assert_detached(&node, &pod, ip("10.0.2.92"));
    assert!(
        node.host.link(&veth).unwrap().is_some(),
        "the veth goes with the netns"
    );
    // ipamd was not told; it still holds the address (its orphan sweep or a later DEL frees it).
    node.ipamd.with(|s| {
        assert!(s.del_requests.is_empty());
        assert_eq!(s.assigned.len(), 2);
    });
    // The other pod is untouched.
    assert_attached(&node, &neighbour, &other_veth, ip("10.0.2.93"), 2);
    assert!(pings(&node.host, "10.0.2.93"));

    // Again without ipamd: nothing left to find, success.
    node.exec(&del_env, &unreachable).assert_ok();
    // Once ipamd answers, a repeated DEL releases the address.
    node.exec(&del_env, &node.conf("0.3.1")).assert_ok();
    node.ipamd.with(|s| {
        assert_eq!(s.rules_at_release, vec![(ip("10.0.2.92"), 0)]);
        assert_eq!(s.assigned.len(), 1);
    });
    drop(pod);
    assert!(node.host.wait_link_gone(&veth, LINK_GONE_TIMEOUT).unwrap());
    assert_attached(&node, &neighbour, &other_veth, ip("10.0.2.93"), 2);
}

#[test]
fn late_0_3_1_del_of_an_old_sandbox_without_ipamd_keeps_the_new_sandbox() {
    let node = Node::new(&[(ip("10.0.2.94"), 2), (ip("10.0.2.95"), 2)]);
    let old_ns = Netns::new("old").unwrap();
    let new_ns = Netns::new("new").unwrap();
    // web-0 re-created: the new sandbox's ADD replaces the old sandbox's host veth of the same
    // name, which takes the old pod's eth0 and host route with it; the old rules stay.
    node.attach("0.3.1", "cid-old", &old_ns, "web-0");
    let veth = node.attach("0.3.1", "cid-new", &new_ns, "web-0");
    assert!(old_ns.link("eth0").unwrap().is_none());
    assert_attached(&node, &new_ns, &veth, ip("10.0.2.95"), 2);

    // The old sandbox's DEL, without prevResult and without ipamd: its namespace no longer has
    // eth0, so nothing names its address; the veth of the pod's name is the new sandbox's and
    // is left alone, with its route and rules.
    let unreachable = node.conf_without_ipamd("0.3.1");
    let old_del = pod_env("DEL", "cid-old", &old_ns.path(), "web-0");
    node.exec(&old_del, &unreachable).assert_ok();
    assert_attached(&node, &new_ns, &veth, ip("10.0.2.95"), 2);
    assert!(pings(&node.host, "10.0.2.95"));
    // The same DEL with the namespace gone too.
    let gone_del = pod_env("DEL", "cid-old", Path::new(""), "web-0");
    node.exec(&gone_del, &unreachable).assert_ok();
    assert_attached(&node, &new_ns, &veth, ip("10.0.2.95"), 2);
    // What it could not find (the old address's rules) goes once ipamd answers the DEL.
    assert_eq!(pod_rules(&node.host, ip("10.0.2.94")).len(), 2);
    node.exec(&old_del, &node.conf("0.3.1")).assert_ok();
    assert!(pod_rules(&node.host, ip("10.0.2.94")).is_empty());
    node.ipamd
        .with(|s| assert_eq!(s.rules_at_release, vec![(ip("10.0.2.94"), 0)]));
    assert_attached(&node, &new_ns, &veth, ip("10.0.2.95"), 2);
    assert!(pings(&node.host, "10.0.2.95"));
}

/// Asserts the data plane ADD made for the IPv6 pod address `addr` (docs/ipv6.md): the settled
/// /128 on eth0, `fe80::1` as gateway with its PERMANENT neighbour, and on the host the /128
/// route to the veth and rule 512 only (table main). Returns the host veth's MAC.
fn assert_attached_v6(node: &Node, pod: &Netns, veth: &str, addr: &str) -> String {
    let host_mac = mac_of(&node.host, veth);
    assert_eq!(
        v6_addresses_of(pod, "eth0"),
        vec![(format!("{addr}/128"), Vec::<String>::new())]
    );
    assert!(
        !has_tentative_v6(pod, "eth0"),
        "ADD returned before DAD ended"
    );
    let routes = v6_routes_added(pod);
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "fe80::1" && r["dev"] == "eth0"),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "fe80::1" && r["dev"] == "eth0"),
        "{routes:?}"
    );
    let neigh = pod.ip_json(&["-6", "neigh", "show"]).unwrap();
    assert!(
        neigh.iter().any(|n| n["dst"] == "fe80::1"
            && n["lladdr"] == host_mac.as_str()
            && n["state"].to_string().contains("PERMANENT")),
        "{neigh:?}"
    );
    let host_routes = routes_to(&node.host, addr);
    assert!(
        host_routes.iter().any(|r| r["dev"] == veth),
        "{host_routes:?}"
    );
    let rules = pod_rules(&node.host, ip(addr));
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(
        rules[0]["priority"] == 512 && rules[0]["dst"] == addr && rules[0]["table"] == "main",
        "{rules:?}"
    );
    host_mac
}

/// Asserts DEL left the host neither routing the IPv6 `addr` nor holding its rule, and the
/// pod's eth0 without it.
fn assert_detached_v6(node: &Node, pod: &Netns, addr: &str) {
    assert!(pod_rules(&node.host, ip(addr)).is_empty());
    let routes = routes_to(&node.host, addr);
    assert!(routes.is_empty(), "{routes:?}");
    let left = v6_addresses_of(pod, "eth0");
    assert!(left.is_empty(), "the pod keeps {left:?}");
}

#[test]
fn ipv6_add_check_del_cycle_against_ipamd() {
    let addr = "2600:1f14:abc:de01:9f3c::20";
    let node = Node::v6(&[(ip(addr), 254)]);
    let pod = Netns::new("pod").unwrap();
    let result = node.add_ok("1.0.0", "cid-a", &pod, "web-0");
    let veth = host_veth("web-0");
    let host_mac = assert_attached_v6(&node, &pod, &veth, addr);
    let pod_mac = mac_of(&pod, "eth0");
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": veth, "mac": host_mac},
                           {"name": "eth0", "mac": pod_mac, "sandbox": pod.path()}],
            "ips": [{"address": format!("{addr}/128"), "interface": 1, "gateway": "fe80::1"}],
            "routes": [{"dst": "::/0", "gw": "fe80::1"}],
            "dns": {}
        })
    );
    assert!(pings6(&node.host, addr), "node -> pod");
    assert!(pings6(&pod, NODE_V6), "pod -> node");
    assert_eq!(
        node.host
            .sysctl_get(&format!("net.ipv6.conf.{veth}.accept_ra"))
            .unwrap(),
        "0",
        "the host veth takes no router advertisement from the pod"
    );

    let check_env = pod_env("CHECK", "cid-a", &pod.path(), "web-0");
    let r = node.exec(&check_env, &node.with_prev("1.0.0", &result));
    r.assert_ok();
    assert_eq!(r.stdout, "");

    // The pod's address removed: CHECK names it, with the code of any data-plane difference.
    pod.ip(&["-6", "addr", "del", &format!("{addr}/128"), "dev", "eth0"])
        .unwrap();
    let r = node.exec(&check_env, &node.with_prev("1.0.0", &result));
    r.assert_error(100, &format!("address {addr}/128 is missing on eth0"));

    // DEL: the host's route and rule go before ipamd is told.
    let del_env = pod_env("DEL", "cid-a", &pod.path(), "web-0");
    node.exec(&del_env, &node.with_prev("1.0.0", &result))
        .assert_ok();
    assert_detached_v6(&node, &pod, addr);
    assert!(silent6(&node.host, addr), "node -> deleted pod");
    node.ipamd.with(|s| {
        assert_eq!(s.rules_at_release, vec![(ip(addr), 0)]);
        assert_eq!(s.del_requests[0].reason, "PodDeleted");
        assert!(s.assigned.is_empty());
    });
    node.exec(&del_env, &node.with_prev("1.0.0", &result))
        .assert_ok();
    let r = node.exec(&check_env, &node.with_prev("1.0.0", &result));
    assert_eq!(r.code(), 101, "{}", r.stdout);
    drop(pod);
    assert!(node.host.wait_link_gone(&veth, LINK_GONE_TIMEOUT).unwrap());
}

#[test]
fn ipv6_results_of_0_3_1_and_0_4_0_carry_version_6() {
    let a31 = "2600:1f14:abc:de01:9f3c::31";
    let a40 = "2600:1f14:abc:de01:9f3c::40";
    let node = Node::v6(&[(ip(a31), 254), (ip(a40), 254)]);
    for (version, addr, name, with_prev) in [
        ("0.3.1", a31, "web-31", false),
        ("0.4.0", a40, "web-40", true),
    ] {
        let pod = Netns::new("pod").unwrap();
        let cid = format!("cid-{name}");
        let result = node.add_ok(version, &cid, &pod, name);
        let veth = host_veth(name);
        let host_mac = assert_attached_v6(&node, &pod, &veth, addr);
        assert_eq!(
            result,
            json!({
                "cniVersion": version,
                "interfaces": [{"name": veth, "mac": host_mac},
                               {"name": "eth0", "mac": mac_of(&pod, "eth0"), "sandbox": pod.path()}],
                "ips": [{"version": "6", "address": format!("{addr}/128"), "interface": 1,
                         "gateway": "fe80::1"}],
                "routes": [{"dst": "::/0", "gw": "fe80::1"}],
                "dns": {}
            }),
            "{version}"
        );
        assert!(pings6(&node.host, addr), "{version}: node -> pod");
        if with_prev {
            let check_env = pod_env("CHECK", &cid, &pod.path(), name);
            node.exec(&check_env, &node.with_prev(version, &result))
                .assert_ok();
        }
        // 0.3.1 DEL has no prevResult: ipamd names the address.
        let conf = if with_prev {
            node.with_prev(version, &result)
        } else {
            node.conf(version)
        };
        let del_env = pod_env("DEL", &cid, &pod.path(), name);
        node.exec(&del_env, &conf).assert_ok();
        assert_detached_v6(&node, &pod, addr);
        node.ipamd
            .with(|s| assert_eq!(s.rules_at_release.last(), Some(&(ip(addr), 0))));
    }
}

#[test]
fn two_ipv6_pods_on_one_node_ping_each_other() {
    let (a, b) = ("2600:1f14:abc:de01:9f3c::a", "2600:1f14:abc:de01:9f3c::b");
    let node = Node::v6(&[(ip(a), 254), (ip(b), 254)]);
    let pod_a = Netns::new("pod").unwrap();
    let pod_b = Netns::new("pod").unwrap();
    node.add_ok("1.0.0", "cid-a", &pod_a, "web-a");
    node.add_ok("1.0.0", "cid-b", &pod_b, "web-b");
    assert!(pings6(&pod_a, b), "a -> b");
    assert!(pings6(&pod_b, a), "b -> a");
}

#[test]
fn ipv6_del_without_ipamd_cleans_up_from_prev_result_or_the_pod() {
    let (a, b, c) = (
        "2600:1f14:abc:de01:9f3c::50",
        "2600:1f14:abc:de01:9f3c::51",
        "2600:1f14:abc:de01:9f3c::52",
    );
    let node = Node::v6(&[(ip(a), 254), (ip(b), 254), (ip(c), 254)]);
    let pod_a = Netns::new("pod").unwrap();
    let pod_b = Netns::new("pod").unwrap();
    let pod_c = Netns::new("pod").unwrap();
    let result_a = node.add_ok("1.0.0", "cid-a", &pod_a, "web-a");
    node.add_ok("0.3.1", "cid-b", &pod_b, "web-b");
    let veth_c = node.attach("1.0.0", "cid-c", &pod_c, "web-c");

    // ipamd unreachable: the cached result names the address.
    let mut conf = node.conf_without_ipamd("1.0.0");
    conf["prevResult"] = result_a;
    node.exec(&pod_env("DEL", "cid-a", &pod_a.path(), "web-a"), &conf)
        .assert_ok();
    assert_detached_v6(&node, &pod_a, a);
    // Neither prevResult (0.3.1) nor ipamd: the pod's eth0 names it.
    node.exec(
        &pod_env("DEL", "cid-b", &pod_b.path(), "web-b"),
        &node.conf_without_ipamd("0.3.1"),
    )
    .assert_ok();
    assert_detached_v6(&node, &pod_b, b);
    // ipamd was not told; the third pod is untouched.
    node.ipamd.with(|s| {
        assert!(s.del_requests.is_empty());
        assert_eq!(s.assigned.len(), 3);
    });
    assert_attached_v6(&node, &pod_c, &veth_c, c);
    assert!(pings6(&node.host, c));
}

#[test]
fn ipv6_gc_releases_attachments_not_in_the_valid_list() {
    let (keep_ip, gone_ip) = ("2600:1f14:abc:de01:9f3c::70", "2600:1f14:abc:de01:9f3c::71");
    let node = Node::v6(&[(ip(keep_ip), 254), (ip(gone_ip), 254)]);
    let keep = Netns::new("pod").unwrap();
    let gone = Netns::new("pod").unwrap();
    let kept = node.add_ok("1.1.0", "cid-keep", &keep, "keep");
    let gone_veth = node.attach("1.1.0", "cid-gone", &gone, "gone");
    let mut c = node.conf("1.1.0");
    c["cni.dev/valid-attachments"] = json!([{"containerID": "cid-keep", "ifname": "eth0"}]);
    let env = HashMap::from([
        ("CNI_COMMAND", "GC".to_string()),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
    ]);
    node.exec(&env, &c).assert_ok();
    assert!(node.host.link(&gone_veth).unwrap().is_none());
    assert!(pod_rules(&node.host, ip(gone_ip)).is_empty());
    assert!(routes_to(&node.host, gone_ip).is_empty());
    node.ipamd
        .with(|s| assert_eq!(s.free, vec![(ip(gone_ip), 254)]));
    let check_env = pod_env("CHECK", "cid-keep", &keep.path(), "keep");
    node.exec(&check_env, &node.with_prev("1.1.0", &kept))
        .assert_ok();
}

#[test]
fn a_failed_ipv6_setup_rolls_back_and_returns_the_address() {
    let addr = "2600:1f14:abc:de01:9f3c::60";
    let node = Node::v6(&[(ip(addr), 254)]);
    // A host whose new links come with IPv6 off: the route to the pod's host veth is refused
    // (EACCES, "IPv6 is disabled on nexthop device") after the pod side was built.
    node.host
        .sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    let pod = Netns::new("pod").unwrap();
    let links = node.host.link_names().unwrap();
    let r = node.add("1.0.0", "cid-a", &pod, "web-0");
    r.assert_error(120, &format!("add route {addr}/128"));
    // Nothing of the pod is left: no veth (host or pod end), route or rule; the address is back.
    assert_eq!(node.host.link_names().unwrap(), links);
    assert_eq!(pod.link_names().unwrap(), vec!["lo".to_string()]);
    assert!(pod_rules(&node.host, ip(addr)).is_empty());
    assert!(routes_to(&node.host, addr).is_empty());
    node.ipamd.with(|s| {
        assert_eq!(s.del_requests.len(), 1);
        assert_eq!(s.del_requests[0].reason, "SetupNSFailed");
        assert!(s.assigned.is_empty());
        assert_eq!(s.free, vec![(ip(addr), 254)]);
    });
}

/// An edit of AddNetwork's allocation by the fake ipamd.
type Mangle = fn(&mut common::fake_ipamd::rpc::IpAllocationMetadata);

#[test]
fn dual_stack_or_empty_replies_are_refused_and_the_address_returned() {
    let addr = "2600:1f14:abc:de01:9f3c::61";
    let node = Node::v6(&[(ip(addr), 254)]);
    let pod = Netns::new("pod").unwrap();
    let links = node.host.link_names().unwrap();
    let cases: [(Mangle, &str); 2] = [
        (
            |m| m.i_pv4_addr = "10.0.2.99".into(),
            "dual-stack pods are not supported",
        ),
        (
            |m| m.i_pv6_addr.clear(),
            "no address (neither IPv4 nor IPv6)",
        ),
    ];
    for (i, (mangle, needle)) in cases.into_iter().enumerate() {
        node.ipamd.with(|s| s.mangle_add_reply = Some(mangle));
        let r = node.add("1.0.0", "cid-a", &pod, "web-0");
        r.assert_error(110, needle);
        assert_eq!(node.host.link_names().unwrap(), links);
        assert_eq!(pod.link_names().unwrap(), vec!["lo".to_string()]);
        node.ipamd.with(|s| {
            assert_eq!(s.del_requests.len(), i + 1);
            assert_eq!(s.del_requests[i].reason, "SetupNSFailed");
            assert!(s.assigned.is_empty());
        });
    }
}
