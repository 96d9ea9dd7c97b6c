//! Throwaway network namespaces for ipamd's kernel tests. Every namespace is named
//! `ipamdt-<pid>-<n>-<role>` and deleted on drop, also when the test fails.

#![allow(dead_code, clippy::unwrap_used, clippy::print_stdout)]

pub mod daemon;
pub mod imds;

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace created with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        let name = format!(
            "ipamdt-{}-{}-{role}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> <args>`, panicking with stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip -j -n <ns> <args>` parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        let out = run("ip", &full);
        if out.trim().is_empty() {
            return serde_json::Value::Array(Vec::new());
        }
        serde_json::from_str(&out).unwrap()
    }

    /// Runs an async closure on a fresh thread that entered this namespace, with its own
    /// current-thread runtime (setns is per thread; the test's threads are never moved).
    pub fn run<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let path = self.path();
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(f())
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Tests need root (namespaces, netlink); fail loudly otherwise.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these kernel tests create network namespaces and must run as root"
    );
}

/// A veth whose `node` end (named `ifname`, with `mac`) is in `node` and whose peer is in `peer`.
pub fn add_veth(node: &Netns, ifname: &str, mac: &str, peer: &Netns, peer_name: &str) {
    node.ip(&[
        "link", "add", ifname, "address", mac, "type", "veth", "peer", "name", peer_name, "netns",
        &peer.name,
    ]);
    peer.ip(&["link", "set", peer_name, "up"]);
}
