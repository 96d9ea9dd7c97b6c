//! Test support: throwaway network namespaces (deleted on drop), `ip -j` readers, running the
//! library inside a namespace on a dedicated thread, exec'ing the plugin binary inside a
//! namespace, and a fake ipamd serving the real gRPC contract on a Unix socket.
#![allow(clippy::unwrap_used, dead_code, missing_debug_implementations)]

pub mod fake_ipamd;

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace made for one test; deleted on drop (also when the test panics).
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(role: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("acni-{}-{n}-{role}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name} failed");
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip -n <ns> <args>` and asserts success.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {:?}: {}",
            self.name,
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ip -n <ns> -j <args>` and parses the JSON (empty output = empty list).
    pub fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .arg("-j")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -j {:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Vec::new();
        }
        match serde_json::from_str::<Value>(&text).unwrap() {
            Value::Array(a) => a,
            other => vec![other],
        }
    }

    pub fn links(&self) -> Vec<Value> {
        self.ip_json(&["link", "show"])
    }

    pub fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
    }

    pub fn link_names(&self) -> Vec<String> {
        self.links()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// `ip -4 route show table all` entries (local/broadcast tables excluded).
    pub fn routes(&self) -> Vec<Value> {
        self.ip_json(&["-4", "route", "show", "table", "all"])
            .into_iter()
            .filter(|r| r["table"] != "local" && r["type"] != "broadcast" && r["type"] != "local")
            .collect()
    }

    pub fn rules(&self) -> Vec<Value> {
        self.ip_json(&["-4", "rule", "show"])
    }

    /// Rules naming `ip` as `to` or `from` at priority 512/1536.
    pub fn pod_rules(&self, ip: Ipv4Addr) -> Vec<Value> {
        let ip = ip.to_string();
        self.rules()
            .into_iter()
            .filter(|r| {
                let prio = r["priority"].as_u64().unwrap_or(0);
                (prio == 512 || prio == 1536)
                    && (r["dst"] == ip.as_str() || r["src"] == ip.as_str())
            })
            .collect()
    }

    /// The IPv4 addresses of `dev` as `ip/prefix`.
    pub fn addresses(&self, dev: &str) -> Vec<String> {
        self.ip_json(&["-4", "addr", "show", "dev", dev])
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect()
    }

    /// Waits up to 10 s for the link `name` to disappear (the kernel frees a namespace's veth
    /// pairs in its cleanup workqueue, shortly after the namespace is removed).
    pub fn wait_link_gone(&self, name: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.link(name).is_some() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }

    pub fn neighbours(&self) -> Vec<Value> {
        self.ip_json(&["-4", "neigh", "show"])
    }

    /// `ping -c 1 -W 2 <ip>` from inside the namespace.
    pub fn ping(&self, ip: &str) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", &self.name, "ping", "-c", "1", "-W", "2", ip,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a fresh thread that entered `ns` (setns is per thread), inside a current-thread
/// tokio runtime, and returns its value.
pub fn in_netns<T: Send + 'static>(ns: &TestNetns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A current-thread runtime for library calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
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

    pub fn assert_ok(&self) {
        assert!(
            self.success,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
    }
}

/// Execs the plugin binary inside `host` (`ip netns exec`), with exactly `env` (plus PATH).
pub fn exec_plugin(host: &TestNetns, env: &HashMap<&str, String>, stdin: &[u8]) -> PluginRun {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &host.name, env!("CARGO_BIN_EXE_aws-cni")])
        .env_clear()
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
    netns: Option<&str>,
    args: &str,
) -> HashMap<&'a str, String> {
    let mut env = HashMap::new();
    env.insert("CNI_COMMAND", command.to_string());
    env.insert("CNI_CONTAINERID", container_id.to_string());
    env.insert("CNI_IFNAME", ifname.to_string());
    if let Some(n) = netns {
        env.insert("CNI_NETNS", n.to_string());
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
