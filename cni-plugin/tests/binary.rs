//! The plugin binary's error table and its behaviour without ipamd, exec'd inside throwaway
//! namespaces exactly as a runtime would run it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{assert_no_addresses, cni_env, conf, exec_plugin, ip, pod_rules, routes_to};
use serde_json::json;
use test_support::netns::Netns;

const ARGS: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=cid1";

struct Fixture {
    host: Netns,
    pod: Netns,
    log: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            host: Netns::new("host").unwrap(),
            pod: Netns::new("pod").unwrap(),
            log: tempfile::tempdir().unwrap(),
        }
    }

    fn log_path(&self) -> String {
        self.log.path().join("plugin.log").display().to_string()
    }

    fn conf(&self, version: &str) -> serde_json::Value {
        let socket = self.log.path().join("absent.sock").display().to_string();
        conf(version, &socket, &self.log_path())
    }

    fn run(&self, env: &HashMap<&str, String>, stdin: &serde_json::Value) -> common::PluginRun {
        exec_plugin(&self.host, env, stdin.to_string().as_bytes())
    }

    fn add_env(&self) -> HashMap<&'static str, String> {
        cni_env("ADD", "cid1", "eth0", Some(&self.pod.path()), ARGS)
    }

    /// What an ADD of web-0 at 10.0.2.20 (route table 2) made: the veth pair (the host end
    /// with MAC 02:00:00:00:00:01, eth0 with 02:00:00:00:00:02, both up), eth0's address, the
    /// host route and both rules. Returns the host veth's name.
    fn attached_pod(&self) -> String {
        let veth = aws_cni::pod_network::host_veth_name("eni", "default", "web-0");
        let pod = self.pod.name();
        for line in [
            format!("link add {veth} type veth peer name eth0 netns {pod}"),
            format!("link set {veth} address 02:00:00:00:00:01 up"),
        ] {
            ip(&self.host, &line);
        }
        for line in [
            "link set eth0 address 02:00:00:00:00:02 up",
            "addr add 10.0.2.20/32 dev eth0",
        ] {
            ip(&self.pod, line);
        }
        for line in [
            format!("route add 10.0.2.20/32 dev {veth} scope link"),
            "rule add to 10.0.2.20 lookup main priority 512".into(),
            "rule add from 10.0.2.20 lookup 2 priority 1536".into(),
        ] {
            ip(&self.host, &line);
        }
        veth
    }
}

#[test]
fn version_lists_every_supported_version() {
    let f = Fixture::new();
    let env = HashMap::from([("CNI_COMMAND", "VERSION".to_string())]);
    let r = f.run(&env, &json!({"cniVersion": "1.0.0"}));
    r.assert_ok();
    assert_eq!(
        r.json(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    // libcni's VERSION probe also sets dummy values; they do not matter.
    let env = HashMap::from([
        ("CNI_COMMAND", "VERSION".to_string()),
        ("CNI_NETNS", "dummy".to_string()),
        ("CNI_IFNAME", "dummy".to_string()),
    ]);
    let r = f.run(&env, &json!({"cniVersion": "0.4.0"}));
    r.assert_ok();
    assert_eq!(r.json()["cniVersion"], "0.4.0");
}

#[test]
fn malformed_json_is_code_6() {
    let f = Fixture::new();
    let r = exec_plugin(&f.host, &f.add_env(), b"{\"cniVersion\": \"1.0.0\",");
    assert_eq!(r.code(), 6, "{}", r.stdout);
    let r = exec_plugin(&f.host, &f.add_env(), b"{\"cniVersion\":\"1.0.0\"}\0");
    r.assert_error(6, "NUL byte");
    let mut c = f.conf("1.0.0");
    c["mtu"] = json!(true);
    let r = f.run(&f.add_env(), &c);
    r.assert_error(6, "\"mtu\"");
}

#[test]
fn unknown_cni_version_is_code_1() {
    let f = Fixture::new();
    let r = f.run(&f.add_env(), &f.conf("9.9.9"));
    r.assert_error(1, "9.9.9");
    // GC and STATUS do not exist before 1.1.0.
    let env = HashMap::from([("CNI_COMMAND", "STATUS".to_string())]);
    let r = f.run(&env, &f.conf("1.0.0"));
    r.assert_error(1, "STATUS");
    // CHECK does not exist before 0.4.0 (skel's answer, in the request's version).
    for v in ["0.3.0", "0.3.1"] {
        let env = cni_env("CHECK", "cid1", "eth0", Some(&f.pod.path()), ARGS);
        let r = f.run(&env, &f.conf(v));
        assert_eq!(r.code(), 1, "{v}");
        assert!(
            r.msg().contains("config version does not allow CHECK"),
            "{}",
            r.msg()
        );
        assert_eq!(r.json()["cniVersion"], v);
        let env = HashMap::from([("CNI_COMMAND", "GC".to_string())]);
        assert_eq!(f.run(&env, &f.conf(v)).code(), 1, "GC {v}");
    }
}

#[test]
fn add_0_3_x_without_ipamd_is_code_11_in_its_version() {
    let f = Fixture::new();
    for v in ["0.3.0", "0.3.1"] {
        let r = f.run(&f.add_env(), &f.conf(v));
        assert_eq!(r.code(), 11, "{v}: {}", r.stdout);
        assert_eq!(r.json()["cniVersion"], v);
        assert_eq!(f.pod.link_names().unwrap(), vec!["lo".to_string()]);
    }
}

#[test]
fn del_0_3_1_without_ipamd_keeps_a_host_veth_the_pod_does_not_point_at() {
    let f = Fixture::new();
    // A pair of the pod's host veth name whose pod end's gateway neighbour names another MAC
    // than the host end's: the host side is not this sandbox's to remove.
    f.attached_pod();
    ip(
        &f.pod,
        "neigh replace 169.254.1.1 lladdr 02:00:00:00:00:09 dev eth0 nud permanent",
    );
    let env = cni_env("DEL", "cid1", "eth0", Some(&f.pod.path()), ARGS);
    let r = f.run(&env, &f.conf("0.3.1"));
    r.assert_ok();
    assert_eq!(r.stdout, "");
    assert_eq!(pod_rules(&f.host, "10.0.2.20".parse().unwrap()).len(), 2);
    assert!(!routes_to(&f.host, "10.0.2.20").is_empty());
    // The pod's own interface is this sandbox's: its address goes.
    assert_no_addresses(&f.pod, "eth0");
}

#[test]
fn missing_or_invalid_environment_is_code_4() {
    let f = Fixture::new();
    let c = f.conf("1.0.0");

    // (variable, its value or None to unset it, what the message names)
    for (var, value, needle) in [
        ("CNI_NETNS", None, "CNI_NETNS"),
        ("CNI_CONTAINERID", None, "CNI_CONTAINERID"),
        ("CNI_IFNAME", Some("a234567890123456"), "CNI_IFNAME"),
        ("CNI_COMMAND", None, "CNI_COMMAND"),
        // A path that exists but is no network namespace.
        (
            "CNI_NETNS",
            Some("/proc/self/ns/mnt"),
            "not a network namespace",
        ),
        // The plugin's own namespace is never a pod's.
        (
            "CNI_NETNS",
            Some("/proc/self/ns/net"),
            "plugin's own network namespace",
        ),
    ] {
        let mut env = f.add_env();
        match value {
            Some(v) => env.insert(var, v.to_string()),
            None => env.remove(var),
        };
        let r = f.run(&env, &c);
        assert_eq!(r.code(), 4, "{var}={value:?}");
        assert!(r.msg().contains(needle), "{var}={value:?}: {}", r.msg());
    }
    assert_eq!(f.host.link_names().unwrap(), vec!["lo".to_string()]);
}

#[test]
fn netns_path_that_does_not_exist_is_code_3() {
    let f = Fixture::new();
    let mut env = f.add_env();
    env.insert("CNI_NETNS", "/run/netns/acni-does-not-exist".into());
    let r = f.run(&env, &f.conf("1.0.0"));
    r.assert_error(3, "/run/netns/acni-does-not-exist");
}

#[test]
fn invalid_config_values_are_code_7() {
    let f = Fixture::new();
    for (key, value, needle) in [
        ("vethPrefix", json!("toolong"), "vethPrefix"),
        ("mtu", json!(100), "mtu"),
        ("mtu", json!("70000"), "mtu"),
        ("pluginLogFile", json!("stdout"), "pluginLogFile"),
        ("podSGEnforcingMode", json!("loose"), "podSGEnforcingMode"),
    ] {
        let mut c = f.conf("1.0.0");
        c[key] = value;
        let r = f.run(&f.add_env(), &c);
        assert_eq!(r.code(), 7, "{key}: {}", r.stdout);
        assert!(r.msg().contains(needle), "{}", r.msg());
    }
}

#[test]
fn add_without_ipamd_is_code_11_and_leaves_nothing() {
    let f = Fixture::new();
    let host_links = f.host.link_names().unwrap();
    let r = f.run(&f.add_env(), &f.conf("1.0.0"));
    r.assert_error(11, "ipamd");
    assert!(r.msg().contains("absent.sock"), "{}", r.msg());
    assert_eq!(f.host.link_names().unwrap(), host_links);
    assert_eq!(f.pod.link_names().unwrap(), vec!["lo".to_string()]);
    assert!(
        f.host
            .rules()
            .unwrap()
            .iter()
            .all(|r| r["priority"] != 512 && r["priority"] != 1536)
    );
    // Logs went to the configured file, not stdout.
    let log = std::fs::read_to_string(f.log_path()).unwrap();
    assert!(log.contains("code=11"), "{log}");
}

#[test]
fn del_without_ipamd_cleans_up_from_prev_result() {
    let f = Fixture::new();
    // What an earlier ADD left, plus another pod's rule that must stay.
    let veth = f.attached_pod();
    ip(&f.host, "rule add to 10.0.2.21 lookup main priority 512");

    let mut c = f.conf("1.0.0");
    c["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": veth, "mac": "02:00:00:00:00:01"},
                       {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": f.pod.path()}],
        "ips": [{"address": "10.0.2.20/32", "interface": 1, "gateway": "169.254.1.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
        "dns": {}
    });
    let env = cni_env("DEL", "cid1", "eth0", Some(&f.pod.path()), ARGS);
    let r = f.run(&env, &c);
    r.assert_ok();
    assert_eq!(r.stdout, "", "DEL prints nothing");
    // The pod's routing state and address are gone; the pair waits for the netns removal.
    assert!(f.host.link(&veth).unwrap().is_some());
    assert!(f.pod.link("eth0").unwrap().is_some());
    assert_no_addresses(&f.pod, "eth0");
    assert!(pod_rules(&f.host, "10.0.2.20".parse().unwrap()).is_empty());
    assert_eq!(
        pod_rules(&f.host, "10.0.2.21".parse().unwrap()).len(),
        1,
        "other pod's rule kept"
    );
    assert!(routes_to(&f.host, "10.0.2.20").is_empty());

    // Again, and with the netns gone and CNI_NETNS empty: still success.
    let r = f.run(&env, &c);
    r.assert_ok();
    let env = cni_env("DEL", "cid1", "eth0", Some(Path::new("")), ARGS);
    let r = f.run(&env, &c);
    r.assert_ok();
    // DEL without prevResult and without ipamd: nothing to find, still success.
    let r = f.run(&env, &f.conf("1.0.0"));
    r.assert_ok();
}

#[test]
fn status_without_ipamd_is_code_50() {
    let f = Fixture::new();
    let env = HashMap::from([("CNI_COMMAND", "STATUS".to_string())]);
    let r = f.run(&env, &f.conf("1.1.0"));
    r.assert_error(50, "absent.sock");
}

#[test]
fn check_without_prev_result_is_refused() {
    let f = Fixture::new();
    let env = cni_env("CHECK", "cid1", "eth0", Some(&f.pod.path()), ARGS);
    let r = f.run(&env, &f.conf("1.0.0"));
    r.assert_error(7, "prevResult");
}

#[test]
fn oversized_stdin_is_refused() {
    let f = Fixture::new();
    let big = vec![b' '; (1 << 20) + 10];
    let r = exec_plugin(&f.host, &f.add_env(), &big);
    r.assert_error(5, "larger than");
}

#[test]
fn check_and_gc_without_ipamd_are_code_11() {
    let f = Fixture::new();
    let mut c = f.conf("1.1.0");
    c["prevResult"] = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eni0d7763386da", "mac": "02:00:00:00:00:01"},
                       {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": f.pod.path()}],
        "ips": [{"address": "10.0.2.20/32", "interface": 1, "gateway": "169.254.1.1"}],
    });
    let env = cni_env("CHECK", "cid1", "eth0", Some(&f.pod.path()), ARGS);
    let r = f.run(&env, &c);
    r.assert_error(11, "cannot connect to ipamd");

    let mut c = f.conf("1.1.0");
    c["cni.dev/valid-attachments"] = json!([]);
    let env = HashMap::from([("CNI_COMMAND", "GC".to_string())]);
    let r = f.run(&env, &c);
    r.assert_error(11, "cannot connect to ipamd");
}
