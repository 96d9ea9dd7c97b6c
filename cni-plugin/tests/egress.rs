//! egress-cni against the real kernel, iptables and Debian's host-local: each test builds a
//! "host" namespace standing for the node (the plugin binary runs there, as a runtime runs it in
//! the node's namespace), a "pod" namespace, and an "internet" namespace behind the host
//! (203.0.113.1, reachable from the host via 10.20.0.1, with no route back to the pods' egress
//! range), and reads the outcome with `ip`, `iptables-save` and sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_cni::egress::snat::{chain_name, comment};
use common::{LINK_GONE_TIMEOUT, PluginRun, cni_env};
use serde_json::{Value, json};
use test_support::netns::Netns;

const NODE_IP: &str = "10.20.0.10";
const INTERNET_HOST: &str = "203.0.113.1";
const GATEWAY: &str = "169.254.172.1";
const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
const NETWORK: &str = "aws-cni";
const IP: &str = "/usr/sbin/ip";

/// The node, its pod, the internet behind it, and host-local's data directory.
struct Node {
    host: Netns,
    pod: Netns,
    internet: Netns,
    dir: tempfile::TempDir,
}

fn require_host_local() {
    assert!(
        Path::new(HOST_LOCAL).is_file(),
        "{HOST_LOCAL} is missing: egress-cni's tests use Debian's host-local as IPAM; run `apt-get install containernetworking-plugins`"
    );
}

fn node() -> Node {
    require_host_local();
    let host = Netns::new("eg-host").unwrap();
    let pod = Netns::new("eg-pod").unwrap();
    let internet = Netns::new("eg-inet").unwrap();
    host.ip(&[
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "wan0",
        "netns",
        internet.name(),
    ])
    .unwrap();
    host.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "uplink"])
        .unwrap();
    host.ip(&["link", "set", "uplink", "up"]).unwrap();
    host.ip(&["route", "add", "203.0.113.0/24", "via", "10.20.0.1"])
        .unwrap();
    internet
        .ip(&["addr", "add", "10.20.0.1/24", "dev", "wan0"])
        .unwrap();
    internet.ip(&["link", "set", "wan0", "up"]).unwrap();
    internet
        .ip(&["addr", "add", &format!("{INTERNET_HOST}/32"), "dev", "lo"])
        .unwrap();
    Node {
        host,
        pod,
        internet,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Node {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("egress.log")
    }

    /// The prevResult aws-cni hands on for an IPv6 pod.
    fn prev_result(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "eni1a2b3c4d5e6", "mac": "02:00:00:00:00:01"},
                {"name": "eth0", "mac": "02:00:00:00:00:02",
                 "sandbox": self.pod.path().display().to_string()}
            ],
            "ips": [{"address": "2001:db8:1::2/128", "interface": 1}],
            "routes": [{"dst": "::/0", "gw": "fe80::1"}],
            "dns": {}
        })
    }

    /// The conflist entry ipamd writes in IPv6 mode, as libcni hands it over.
    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "egress-cni",
            "mtu": "9001",
            "enabled": "true",
            "randomizeSNAT": "prng",
            "nodeIP": NODE_IP,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "169.254.172.0/22"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.data_dir().display().to_string()
            },
            "pluginLogFile": self.log().display().to_string(),
            "pluginLogLevel": "DEBUG",
            "prevResult": self.prev_result()
        })
    }

    /// Runs egress-cni in the host namespace with `conf` on stdin.
    fn run(&self, command: &str, cid: &str, conf: &Value) -> PluginRun {
        self.run_with_path(command, cid, conf, "/usr/sbin:/usr/bin:/sbin:/bin")
    }

    fn run_with_path(&self, command: &str, cid: &str, conf: &Value, path: &str) -> PluginRun {
        let mut env: HashMap<&str, String> =
            cni_env(command, cid, "eth0", Some(&self.pod.path()), "");
        env.insert("CNI_PATH", "/usr/lib/cni".into());
        // `ip netns exec` by absolute path: the child's PATH is the one under test, and Command
        // looks the program up in it.
        let mut cmd = Command::new(IP);
        cmd.args([
            "netns",
            "exec",
            self.host.name(),
            env!("CARGO_BIN_EXE_egress-cni"),
        ])
        .env_clear()
        .env("PATH", path)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes());
        let out = child.wait_with_output().unwrap();
        PluginRun {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn nat(&self) -> String {
        self.host
            .exec_checked("iptables-save", &["-t", "nat"])
            .unwrap()
    }

    /// The nat rules (as `iptables-save` prints them) that name `chain`.
    fn rules_of(&self, chain: &str) -> Vec<String> {
        self.nat()
            .lines()
            .filter(|l| l.contains(chain))
            .map(str::to_owned)
            .collect()
    }

    /// The addresses host-local holds (one file per address in `<dataDir>/<network>`).
    fn allocations(&self) -> Vec<String> {
        let dir = self.data_dir().join(NETWORK);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    fn log_tail(&self) -> String {
        test_support::netns::tail(&self.log(), 40)
    }

    /// Routes of `ns` as `ip -4 route` lines with single spaces.
    fn route_lines(ns: &Netns) -> Vec<String> {
        ns.ip(&["-4", "route", "show"])
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }
}

/// Opens a TCP listener on `INTERNET_HOST` inside the internet namespace, connects to it from
/// the pod, and returns the peer address the listener saw.
fn peer_seen_from_the_internet(n: &Node, port: u16) -> SocketAddr {
    let listener = n
        .internet
        .run_in(move || TcpListener::bind((INTERNET_HOST, port)))
        .unwrap()
        .unwrap();
    let target: SocketAddr = format!("{INTERNET_HOST}:{port}").parse().unwrap();
    let sent = n
        .pod
        .run_in(move || -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
            s.write_all(b"hello")
        })
        .unwrap();
    sent.unwrap_or_else(|e| panic!("the pod cannot reach {target}: {e}"));
    let (mut conn, peer) = listener.accept().unwrap();
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    peer
}

#[test]
fn add_gives_the_ipv6_pod_snated_ipv4_egress_and_del_removes_it() {
    let n = node();
    let cid = "c0ffee01";
    let chain = chain_name(NETWORK, cid);
    let comment = comment(NETWORK, cid);

    let add = n.run("ADD", cid, &n.conf());
    add.assert_ok();
    let result = add.json();

    // The result: prevResult's addresses, routes and DNS untouched, the two interfaces appended.
    let prev = n.prev_result();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["ips"], prev["ips"], "{result}");
    assert_eq!(result["routes"], prev["routes"]);
    assert_eq!(result["dns"], prev["dns"]);
    let interfaces = result["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 4, "{result}");
    assert_eq!(&interfaces[..2], prev["interfaces"].as_array().unwrap());
    let host_veth = interfaces[2]["name"].as_str().unwrap().to_string();
    assert!(
        host_veth.starts_with("veth") && host_veth.len() == 12,
        "{host_veth}"
    );
    assert!(interfaces[2].get("sandbox").is_none());
    assert_eq!(interfaces[3]["name"], "v4if0");
    assert_eq!(
        interfaces[3]["sandbox"],
        n.pod.path().display().to_string().as_str()
    );

    // The pod: v4if0 with a node-local address, its gateway on-link and every route via it.
    let addrs = n.pod.addresses_of("v4if0").unwrap();
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    let pod_ip = addrs[0].strip_suffix("/22").unwrap().to_string();
    assert!(pod_ip.starts_with("169.254.172."), "{pod_ip}");
    let link = n.pod.link("v4if0").unwrap().unwrap();
    assert_eq!(link["mtu"], 9001);
    assert_eq!(
        link["address"],
        interfaces[3]["mac"].as_str().unwrap(),
        "result MAC"
    );
    let mut routes = Node::route_lines(&n.pod);
    routes.sort();
    let mut want = vec![
        format!("default via {GATEWAY} dev v4if0"),
        format!("169.254.172.0/22 via {GATEWAY} dev v4if0 src {pod_ip}"),
        format!("{GATEWAY} dev v4if0 scope link src {pod_ip}"),
    ];
    want.sort();
    assert_eq!(routes, want);

    // The host: the veth end holds the gateway (link scope) and the pod's /32 routes to it.
    let host_addrs: Vec<Value> = n
        .host
        .addresses()
        .unwrap()
        .into_iter()
        .filter(|l| l["ifname"] == host_veth.as_str())
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(host_addrs.len(), 1, "{host_addrs:?}");
    assert_eq!(host_addrs[0]["local"], GATEWAY);
    assert_eq!(host_addrs[0]["prefixlen"], 32);
    assert_eq!(host_addrs[0]["scope"], "link");
    assert!(
        Node::route_lines(&n.host).contains(&format!("{pod_ip} dev {host_veth} scope link")),
        "{:?}",
        Node::route_lines(&n.host)
    );
    assert_eq!(n.host.sysctl_get("net.ipv4.ip_forward").unwrap(), "1");

    // The SNAT chain, as iptables-save shows it.
    let rules = n.rules_of(&chain);
    let c = format!("-m comment --comment \"{}\"", comment.replace('"', "\\\""));
    for line in [
        format!(":{chain} - [0:0]"),
        format!("-A POSTROUTING -s {pod_ip}/32 {c} -j {chain}"),
        format!("-A {chain} -d 224.0.0.0/4 {c} -j ACCEPT"),
        format!("-A {chain} {c} -j SNAT --to-source {NODE_IP} --random-fully"),
    ] {
        assert!(rules.contains(&line), "{line:?} not in {rules:#?}");
    }
    assert_eq!(rules.len(), 4, "{rules:#?}");

    // Traffic: the gateway answers, and the internet sees the pod's packets from the node.
    assert!(
        common::pings(&n.pod, GATEWAY),
        "the pod cannot ping its gateway"
    );
    let peer = peer_seen_from_the_internet(&n, 18080);
    assert_eq!(
        peer.ip().to_string(),
        NODE_IP,
        "the pod's packets were not SNATed"
    );

    assert_eq!(n.allocations(), vec![pod_ip.clone()]);
    let log = std::fs::read_to_string(n.log()).unwrap_or_default();
    assert!(log.contains("IPv4 egress set up"), "plugin log: {log}");

    // CHECK agrees with what ADD made.
    n.run("CHECK", cid, &n.conf()).assert_ok();

    // DEL: chain, jump, veth pair and the host-local lease are gone; a second DEL succeeds.
    let del = n.run("DEL", cid, &n.conf());
    del.assert_ok();
    assert!(del.stdout.trim().is_empty(), "{}", del.stdout);
    assert!(n.rules_of(&chain).is_empty(), "{:#?}", n.rules_of(&chain));
    assert!(n.pod.link("v4if0").unwrap().is_none());
    assert!(
        n.host
            .wait_link_gone(&host_veth, LINK_GONE_TIMEOUT)
            .unwrap()
    );
    assert!(
        !Node::route_lines(&n.host)
            .iter()
            .any(|r| r.contains(&pod_ip))
    );
    assert!(n.allocations().is_empty(), "{:?}", n.allocations());
    n.run("DEL", cid, &n.conf()).assert_ok();
    let again = n.run("CHECK", cid, &n.conf());
    assert!(!again.success, "CHECK after DEL succeeded");
}

#[test]
fn disabled_passes_prev_result_through_untouched() {
    let n = node();
    let mut conf = n.conf();
    conf["enabled"] = json!("false");
    let add = n.run("ADD", "c0ffee02", &conf);
    add.assert_ok();
    assert_eq!(add.json(), n.prev_result());
    assert!(n.pod.link("v4if0").unwrap().is_none());
    assert_eq!(n.host.link_names().unwrap(), ["lo", "uplink"]);
    assert!(!n.nat().contains("CNI-E4-"), "{}", n.nat());
    assert!(n.allocations().is_empty());
    n.run("DEL", "c0ffee02", &conf).assert_ok();

    // Older configs get prevResult in their own version.
    conf["cniVersion"] = json!("0.4.0");
    let old = n.run("ADD", "c0ffee02", &conf).json();
    assert_eq!(old["cniVersion"], "0.4.0");
    assert_eq!(old["ips"][0]["version"], "6");
}

#[test]
fn missing_prev_result_is_an_invalid_config() {
    let n = node();
    let mut conf = n.conf();
    conf.as_object_mut().unwrap().remove("prevResult");
    let add = n.run("ADD", "c0ffee03", &conf);
    add.assert_error(7, "prevResult");
    assert!(n.allocations().is_empty());
    assert!(n.pod.link("v4if0").unwrap().is_none());
}

#[test]
fn a_failure_after_ipam_add_rolls_back_and_releases_the_address() {
    let n = node();
    let cid = "c0ffee04";
    // No iptables on PATH: the SNAT step, the last one, fails after the address, the veth and
    // the routes were made.
    let empty = n.dir.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let add = n.run_with_path("ADD", cid, &n.conf(), empty.to_str().unwrap());
    add.assert_error(120, "iptables");
    assert!(
        add.msg().contains("rolled back and the address released"),
        "{}",
        add.msg()
    );
    assert!(
        n.allocations().is_empty(),
        "address kept: {:?}\n{}",
        n.allocations(),
        n.log_tail()
    );
    assert!(n.pod.link("v4if0").unwrap().is_none());
    let gone = n
        .host
        .link_names()
        .unwrap()
        .iter()
        .all(|l| !l.starts_with("veth"));
    assert!(gone, "{:?}", n.host.link_names().unwrap());
    assert!(
        !Node::route_lines(&n.host)
            .iter()
            .any(|r| r.starts_with("169.254.172."))
    );
    assert!(!n.nat().contains("CNI-E4-"), "{}", n.nat());

    // The same pod then comes up normally, with the released address.
    n.run("ADD", cid, &n.conf()).assert_ok();
    n.run("DEL", cid, &n.conf()).assert_ok();
}

#[test]
fn a_failing_snat_step_removes_the_partial_chain() {
    let n = node();
    let cid = "c0ffee09";
    // An iptables that refuses the last rule (the POSTROUTING jump): the chain and its two rules
    // exist by then and must go with the rollback.
    let bin = n.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let wrapper = bin.join("iptables");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ncase \"$*\" in *\"-A POSTROUTING\"*) echo injected >&2; exit 4;; esac\nexec /usr/sbin/iptables \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let add = n.run_with_path("ADD", cid, &n.conf(), bin.to_str().unwrap());
    add.assert_error(120, "injected");
    assert!(
        add.msg().contains("rolled back and the address released"),
        "{}",
        add.msg()
    );
    assert!(!n.nat().contains("CNI-E4-"), "{}", n.nat());
    assert!(n.allocations().is_empty());
    assert!(n.pod.link("v4if0").unwrap().is_none());
}

#[test]
fn an_existing_v4if0_fails_add_before_anything_is_allocated() {
    let n = node();
    n.pod
        .ip(&[
            "link", "add", "v4if0", "type", "veth", "peer", "name", "other0",
        ])
        .unwrap();
    let add = n.run("ADD", "c0ffee05", &n.conf());
    add.assert_error(121, "v4if0");
    assert!(n.allocations().is_empty());
    assert!(
        n.pod.link("v4if0").unwrap().is_some(),
        "the pod's own link was removed"
    );
    assert_eq!(n.host.link_names().unwrap(), ["lo", "uplink"]);
}

#[test]
fn an_ipv6_node_ip_is_refused_as_not_built() {
    let n = node();
    let mut conf = n.conf();
    conf["nodeIP"] = json!("2001:db8::10");
    let add = n.run("ADD", "c0ffee06", &conf);
    add.assert_error(2, "not available in this build");
    assert!(n.allocations().is_empty());
    n.run("DEL", "c0ffee06", &conf).assert_ok();
}

#[test]
fn del_succeeds_when_the_pod_netns_is_gone() {
    let mut n = node();
    let cid = "c0ffee07";
    n.run("ADD", cid, &n.conf()).assert_ok();
    assert_eq!(n.allocations().len(), 1);
    n.pod.delete().unwrap();
    n.run("DEL", cid, &n.conf()).assert_ok();
    assert!(n.rules_of(&chain_name(NETWORK, cid)).is_empty());
    assert!(n.allocations().is_empty());
    n.run("DEL", cid, &n.conf()).assert_ok();
}

#[test]
fn check_reports_a_missing_snat_jump() {
    let n = node();
    let cid = "c0ffee08";
    n.run("ADD", cid, &n.conf()).assert_ok();
    let chain = chain_name(NETWORK, cid);
    n.host
        .exec_checked("iptables", &["-t", "nat", "-F", "POSTROUTING"])
        .unwrap();
    let check = n.run("CHECK", cid, &n.conf());
    check.assert_error(100, &chain);
    n.run("DEL", cid, &n.conf()).assert_ok();
    assert!(n.rules_of(&chain).is_empty());
}
