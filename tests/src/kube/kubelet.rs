//! A real kubelet on a simulated node: kubelet → the node's containerd (CRI) → go-cni →
//! `aws-cni`, registered with a [`ControlPlane`] as `system:node:<name>`.
//!
//! It runs in the node's network namespace and the node's mount namespace (its [`NodeRoot`],
//! shared with the node's containerd), with its own root dir, pod-log dir and config. Two things
//! keep it from changing the machine it shares with the other nodes:
//! - kernel settings: kubelet wants `vm.overcommit_memory=1`, `kernel.panic=10` and
//!   `kernel.panic_on_oops=1`, machine-wide sysctls (not per network namespace). It runs with
//!   `protectKernelDefaults: true` (it only reads them, never writes) and, in the node's mount
//!   namespace, those three files of `/proc/sys` are covered by files holding the values it wants
//!   ([`kernel_default_binds`]); the machine's own are untouched;
//! - cgroups: its `cgroupRoot` is the node's containerd's cgroup parent, so every pod it starts
//!   lives under that subtree, which the containerd harness kills and removes at teardown.
//!
//! The machine is cgroup v1 (hybrid): `failCgroupV1: false`. Swap is allowed
//! (`failSwapOn: false`); eviction and image GC thresholds are set so the shared disk never
//! makes it evict or delete images.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::{ControlPlane, KubeError, io_err, kube_bin, spawn_logged};
use crate::cri::Containerd;
use crate::node::{Bind, NodeRoot};
use test_support::cleanup;
use test_support::netns::tail;

/// The kernel settings kubelet checks, with the values it wants (`setupKernelTunables`).
const KERNEL_DEFAULTS: [(&str, &str); 3] = [
    ("vm/overcommit_memory", "1"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
];

/// A running kubelet. Killed on drop (before its containerd goes: declare it after the
/// [`Containerd`]).
#[derive(Debug)]
pub struct Kubelet {
    name: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Kubelet {
    /// Starts kubelet in the node's `root` (its primary address `node_ip`) as node `name`, with
    /// `containerd` as its runtime, registering with `cp`. The root must carry
    /// [`kernel_default_binds`].
    pub fn start(
        cp: &ControlPlane,
        root: &NodeRoot,
        node_ip: Ipv4Addr,
        name: &str,
        containerd: &Containerd,
        max_pods: u32,
    ) -> Result<Self, KubeError> {
        let kubelet = kube_bin("kubelet")?;
        let dir = tempfile::Builder::new()
            .prefix("vcni-kubelet-")
            .tempdir()
            .map_err(io_err("cannot create kubelet's directory"))?;
        cleanup::register_dir(dir.path());
        let d = dir.path();
        for sub in ["root", "pod-logs"] {
            fs::create_dir_all(d.join(sub)).map_err(io_err(format!("cannot create {sub}")))?;
        }
        make_cgroup_root(containerd.cgroup_parent())?;
        let kubeconfig = cp.node_kubeconfig(name)?;
        let serving = cp.kubelet_serving_cert(name, node_ip)?;
        let config = d.join("config.yaml");
        fs::write(
            &config,
            kubelet_config(
                cp,
                node_ip,
                containerd,
                &d.join("pod-logs"),
                &serving,
                max_pods,
            ),
        )
        .map_err(io_err("cannot write kubelet's config"))?;
        let mut cmd = root.command(&kubelet);
        cmd.arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--root-dir={}", d.join("root").display()))
            .arg(format!("--hostname-override={name}"))
            .arg(format!("--node-ip={node_ip}"))
            .arg("--v=2")
            .env("HOME", d);
        let child = spawn_logged(cmd, &d.join("kubelet.log"), "kubelet")?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            dir,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// kubelet's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("kubelet.log")
    }

    /// The last `lines` lines of kubelet's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// Waits until the Node object exists and is Ready (which needs the runtime's network,
    /// that is ipamd's conflist); fails early when kubelet exited.
    pub fn wait_ready(
        &mut self,
        cp: &ControlPlane,
        ns: &test_support::netns::Netns,
        timeout: Duration,
    ) -> Result<(), KubeError> {
        self.wait_node(cp, ns, timeout, "Ready", |s| s.starts_with("True"))
            .map(drop)
    }

    /// The Node's Ready condition as `<status> <message>` (empty before it registered).
    pub fn ready_condition(
        &self,
        cp: &ControlPlane,
        ns: &test_support::netns::Netns,
    ) -> Result<String, KubeError> {
        cp.kubectl_ok(ns, &["get", "node", &self.name, "-o", READY_JSONPATH])
    }

    /// Waits until the Node object exists (registered, Ready or not) and returns its Ready
    /// condition as `<status> <message>`; fails early when kubelet exited.
    pub fn wait_registered(
        &mut self,
        cp: &ControlPlane,
        ns: &test_support::netns::Netns,
        timeout: Duration,
    ) -> Result<String, KubeError> {
        self.wait_node(cp, ns, timeout, "registered", |s| {
            s.starts_with("True") || s.starts_with("False") || s.starts_with("Unknown")
        })
    }

    fn wait_node(
        &mut self,
        cp: &ControlPlane,
        ns: &test_support::netns::Netns,
        timeout: Duration,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) -> Result<String, KubeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(KubeError::NotUp {
                    what: format!("kubelet of {} exited ({status})", self.name),
                    logs: self.log_tail(40),
                });
            }
            let last = match self.ready_condition(cp, ns) {
                Ok(s) if done(&s) => return Ok(s),
                Ok(s) => s,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(KubeError::NotUp {
                    what: format!(
                        "node {} not {what} within {timeout:?}; last: {last}",
                        self.name
                    ),
                    logs: self.log_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The binds of a node's root that show kubelet the kernel settings it wants (files written in
/// `dir`, mounted over the three files of `/proc/sys`).
pub fn kernel_default_binds(dir: &Path) -> Result<Vec<Bind>, KubeError> {
    KERNEL_DEFAULTS
        .iter()
        .map(|(key, value)| {
            let file = dir.join(key.replace('/', "."));
            fs::write(&file, format!("{value}\n"))
                .map_err(io_err(format!("cannot write {}", file.display())))?;
            Ok(Bind::new(file, Path::new("/proc/sys").join(key)))
        })
        .collect()
}

/// kubectl's output format for a Node's Ready condition: `<status> <message>`.
const READY_JSONPATH: &str = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"Ready\")].message}";

/// Creates `root` in every cgroup hierarchy (kubelet wants its `cgroupRoot` to exist in each),
/// with the parent's CPUs and memory nodes where the hierarchy is cpuset's. The containerd
/// harness removes the subtree at teardown.
fn make_cgroup_root(root: &str) -> Result<(), KubeError> {
    let rel = root.trim_start_matches('/');
    let hierarchies =
        fs::read_dir("/sys/fs/cgroup").map_err(io_err("cannot list /sys/fs/cgroup"))?;
    for h in hierarchies.flatten() {
        let base = h.path();
        if !base.join("cgroup.procs").exists() {
            continue;
        }
        let dir = base.join(rel);
        fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = fs::read_to_string(base.join(file)) {
                fs::write(dir.join(file), value.trim())
                    .map_err(io_err(format!("cannot write {file} of {}", dir.display())))?;
            }
        }
    }
    Ok(())
}

/// kubelet's `KubeletConfiguration`.
fn kubelet_config(
    cp: &ControlPlane,
    node_ip: Ipv4Addr,
    containerd: &Containerd,
    pod_logs: &Path,
    serving: &super::ClientCert,
    max_pods: u32,
) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
address: {node_ip}
port: 10250
readOnlyPort: 0
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
maxPods: {max_pods}
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: true
oomScoreAdj: 0
podLogsDir: {pod_logs}
clusterDomain: cluster.local
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
"#,
        ca = cp.ca_cert().display(),
        socket = containerd.socket().display(),
        cgroup_root = containerd.cgroup_parent(),
        pod_logs = pod_logs.display(),
        cert = serving.cert.display(),
        key = serving.key.display(),
    )
}
