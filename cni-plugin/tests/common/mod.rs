//! What the plugin's tests share besides the namespaces of `test_support`: exec'ing the plugin
//! binary inside a namespace with a CNI environment and config, reading its answer, the pod
//! rules and reachability checks, and a fake ipamd serving the real gRPC contract on a Unix
//! socket.
#![allow(clippy::unwrap_used, dead_code, missing_debug_implementations)]

pub mod fake_ipamd;

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use test_support::netns::Netns;
use vpc_cni_contract::dataplane::{FROM_POD_RULE_PRIORITY, TO_POD_RULE_PRIORITY};

/// How long a veth pair may outlive its namespace: the kernel frees a namespace's veth pairs in
/// its cleanup workqueue, shortly after the namespace is removed.
pub const LINK_GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// `-4` or `-6`: the `ip` option of `addr`'s family (an address or a prefix).
pub fn family_flag(addr: &str) -> &'static str {
    if addr.contains(':') { "-6" } else { "-4" }
}

/// The rules naming `ip` as `to` or `from` at the pod priorities (to the pod, from the pod), in
/// its family's rule table.
pub fn pod_rules(ns: &Netns, ip: IpAddr) -> Vec<Value> {
    let ip = ip.to_string();
    ns.ip_json(&[family_flag(&ip), "rule", "show"])
        .unwrap()
        .into_iter()
        .filter(|r| {
            let prio = r["priority"].as_u64().unwrap_or(0);
            (prio == u64::from(TO_POD_RULE_PRIORITY) || prio == u64::from(FROM_POD_RULE_PRIORITY))
                && (r["dst"] == ip.as_str() || r["src"] == ip.as_str())
        })
        .collect()
}

/// The routes of every table in `ns` whose destination is `dst` (an address of either family),
/// but the kernel's own (`local` table).
pub fn routes_to(ns: &Netns, dst: &str) -> Vec<Value> {
    routes_all(ns, family_flag(dst))
        .into_iter()
        .filter(|r| r["dst"] == dst)
        .collect()
}

/// Every route of the family `flag` (`-4`, `-6`) in every table but the kernel's own (the
/// `local` table, broadcast, local and multicast routes): what a data plane added. IPv6 also
/// keeps the kernel's `fe80::/64` of each interface with IPv6 on; see [`v6_routes_added`].
pub fn routes_all(ns: &Netns, flag: &str) -> Vec<Value> {
    ns.ip_json(&[flag, "route", "show", "table", "all"])
        .unwrap()
        .into_iter()
        .filter(|r| {
            r["table"] != "local"
                && r["type"] != "broadcast"
                && r["type"] != "local"
                && r["type"] != "multicast"
        })
        .collect()
}

/// The IPv6 routes a data plane added: [`routes_all`] without the `fe80::/64` the kernel adds
/// for every interface with IPv6 on.
pub fn v6_routes_added(ns: &Netns) -> Vec<Value> {
    routes_all(ns, "-6")
        .into_iter()
        .filter(|r| !(r["dst"] == "fe80::/64" && r["protocol"] == "kernel"))
        .collect()
}

/// The global (not link-local) IPv6 addresses of `ifname` as `addr/len`, with their flags
/// (`tentative`, `dadfailed`, ...) as `ip` shows them.
pub fn v6_addresses_of(ns: &Netns, ifname: &str) -> Vec<(String, Vec<String>)> {
    ns.ip_json(&["-6", "addr", "show", "dev", ifname])
        .unwrap_or_default()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] != "link")
        .map(|a| {
            let flags = ["tentative", "dadfailed", "optimistic", "deprecated"]
                .iter()
                .filter(|f| a[**f].as_bool() == Some(true))
                .map(|f| (*f).to_string())
                .collect();
            (
                format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or_default(),
                    a["prefixlen"]
                ),
                flags,
            )
        })
        .collect()
}

/// Whether any IPv6 address of `ifname` (link-local ones included) is still tentative.
pub fn has_tentative_v6(ns: &Netns, ifname: &str) -> bool {
    ns.ip_json(&["-6", "addr", "show", "dev", ifname])
        .unwrap_or_default()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .any(|a| a["tentative"].as_bool() == Some(true) || a["dadfailed"].as_bool() == Some(true))
}

/// Whether `dst` (IPv6) answers `ping -6` from inside `ns`. The first echo may wait for the
/// host end's own link-local address to finish duplicate address detection (the kernel sends
/// no neighbour solicitation from a tentative source), so a few rounds are allowed.
pub fn pings6(ns: &Netns, dst: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    loop {
        let out = ns
            .exec("ping", &["-6", "-n", "-c", "1", "-W", "1", dst])
            .unwrap();
        if out.status.success() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
    }
}

/// Whether `dst` (IPv6) stays silent to `ping -6` from inside `ns` (two probes, 1 s each).
pub fn silent6(ns: &Netns, dst: &str) -> bool {
    !ns.exec(
        "ping",
        &["-6", "-n", "-c", "2", "-i", "0.2", "-W", "1", dst],
    )
    .unwrap()
    .status
    .success()
}

/// Asserts that `ifname` in `ns` holds no address.
pub fn assert_no_addresses(ns: &Netns, ifname: &str) {
    let addrs = ns.addresses_of(ifname).unwrap();
    assert!(addrs.is_empty(), "{ifname} still holds {addrs:?}");
}

/// Runs `ip <line>` in `ns`, the line split at whitespace (for fixtures whose arguments hold
/// none).
pub fn ip(ns: &Netns, line: &str) {
    let args: Vec<&str> = line.split_whitespace().collect();
    if let Err(e) = ns.ip(&args) {
        panic!("ip {line}: {e}");
    }
}

/// Whether `dst` answers a ping from inside `ns`.
pub fn pings(ns: &Netns, dst: &str) -> bool {
    ns.ping(dst.parse().unwrap()).unwrap().ok
}

/// What one plugin exec returned.
#[derive(Debug)]
pub struct PluginRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The CNI error code (asserting failure and a well-formed error object).
    pub fn code(&self) -> u64 {
        assert!(
            !self.success,
            "expected failure, got success: {}",
            self.stdout
        );
        let j = self.json();
        for k in ["cniVersion", "code", "msg", "details"] {
            assert!(j.get(k).is_some(), "error JSON lacks {k}: {j}");
        }
        j["code"].as_u64().unwrap()
    }

    pub fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or_default().to_string()
    }

    /// Asserts a failure with CNI error `code` whose message contains `needle`.
    pub fn assert_error(&self, code: u64, needle: &str) {
        assert_eq!(self.code(), code, "{}", self.stdout);
        let msg = self.msg();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }

    pub fn assert_ok(&self) {
        assert!(
            self.success,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
    }
}

/// Execs the plugin binary inside `host` (`ip netns exec`), with exactly `env` (plus PATH).
pub fn exec_plugin(host: &Netns, env: &HashMap<&str, String>, stdin: &[u8]) -> PluginRun {
    let mut cmd = host.command(env!("CARGO_BIN_EXE_aws-cni"));
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    {
        let mut si = child.stdin.take().unwrap();
        // The plugin may exit before reading everything (e.g. env errors): ignore EPIPE.
        let _ = si.write_all(stdin);
    }
    let out = child.wait_with_output().unwrap();
    PluginRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The CNI environment of an attachment verb.
pub fn cni_env<'a>(
    command: &str,
    container_id: &str,
    ifname: &str,
    netns: Option<&Path>,
    args: &str,
) -> HashMap<&'a str, String> {
    let mut env = HashMap::new();
    env.insert("CNI_COMMAND", command.to_string());
    env.insert("CNI_CONTAINERID", container_id.to_string());
    env.insert("CNI_IFNAME", ifname.to_string());
    if let Some(n) = netns {
        env.insert("CNI_NETNS", n.display().to_string());
    }
    env.insert("CNI_ARGS", args.to_string());
    env.insert("CNI_PATH", "/opt/cni/bin".to_string());
    env
}

/// A plugin config entry with the plugin log going to `log` (never the machine's /var/log).
pub fn conf(version: &str, socket: &str, log: &str) -> Value {
    serde_json::json!({
        "cniVersion": version,
        "name": "aws-cni",
        "type": "aws-cni",
        "vethPrefix": "eni",
        "mtu": "9001",
        "podSGEnforcingMode": "strict",
        "pluginLogFile": log,
        "pluginLogLevel": "DEBUG",
        "ipamdSocket": socket,
    })
}
