//! containerd's CRI on a simulated node, the way kubelet drives the plugin on EKS: kubelet →
//! containerd's CRI plugin → go-cni/libcni → `aws-cni` with the conflist ipamd wrote. The test
//! plays kubelet with `crictl` (cri-tools, built by `make deps` into `target/go/bin`).
//!
//! [`Containerd`] runs Debian's containerd (1.6) inside the node's network namespace (entered
//! with `nsenter --net`: `ip netns exec` remounts `/sys` and hides the cgroup mounts runc needs)
//! with a private configuration: its own `root`, `state`, gRPC socket, `opt` dir and runc root in
//! a temp dir; the CNI `conf_dir` is ipamd's `net.d`; the CNI `bin_dir` is a private directory
//! with `loopback` and `portmap` (Debian's) and `aws-cni`, which there is a small recorder that
//! writes down each call (CNI_* environment, stdin, stdout, exit code) and execs the real
//! plugin, so the tests can see exactly what containerd sent. Every pod gets a cgroup parent of
//! its own containerd (`/vcni-<pid>-<n>`), so teardown finds every process it started.
//!
//! Teardown (drop, also after a failed test): stop and remove every sandbox through CRI, stop
//! containerd, kill what is left in its cgroups and its shims, delete the pod namespaces it made
//! (`/run/netns/cni-*`, known from the recorded calls), unmount what is left under its
//! directory, remove its cgroups and go-cni's cache entries of its sandboxes
//! (`/var/lib/cni/results`, which containerd 1.6 does not let us move), and the directories
//! shared by every containerd (`/var/lib/cni`, `/run/containerd/s`) when the harness created
//! them and they are empty.

mod image;
mod teardown;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use image::PAUSE_IMAGE;
use serde_json::{Value, json};

use crate::node::{NodeHost, NodeRoot};
use test_support::cleanup;
use test_support::netns::tail;
use test_support::netns::{CommandError, default_path, run};
use test_support::prereqs::{self, PrereqError};

/// Env var naming the crictl binary (default: `target/go/bin/crictl`, built by `make deps`).
pub(crate) const CRICTL_BIN_ENV: &str = "CRICTL_BIN";

/// `conf_dir` of an EKS node (containerd's default), a path of the node's [`NodeRoot`].
pub const NODE_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// `bin_dir` of an EKS node (containerd's default).
pub const NODE_CNI_BIN_DIR: &str = "/opt/cni/bin";

/// The containerd namespace of the CRI plugin.
pub(crate) const K8S_NAMESPACE: &str = "k8s.io";

/// Errors of running containerd and talking CRI to it.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// containerd, ctr, crictl or another tool is missing.
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    /// A command could not be run.
    #[error(transparent)]
    Exec(#[from] CommandError),
    /// A file of the private setup could not be used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The pause image could not be built.
    #[error("pause image: {0}")]
    Image(String),
    /// containerd did not come up.
    #[error("containerd did not start: {reason}\n===== containerd log =====\n{log}")]
    Start {
        /// Why.
        reason: String,
        /// The end of its log.
        log: String,
    },
    /// A crictl or ctr command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line (without the private config path).
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// crictl printed something unusable.
    #[error("`{command}` printed {what}: {stdout}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong.
        what: String,
        /// What it printed.
        stdout: String,
    },
    /// Waiting for a condition timed out.
    #[error("{0}")]
    Timeout(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CriError {
    let context = context.into();
    move |source| CriError::Io { context, source }
}

/// The crictl binary: `$CRICTL_BIN`, else `<target>/go/bin/crictl`.
pub(crate) fn crictl_bin() -> Result<PathBuf, PrereqError> {
    let path = std::env::var_os(CRICTL_BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| prereqs::target_dir().join("go/bin/crictl"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(PrereqError::Missing {
            what: "crictl (the CRI client)",
            path,
            hint: format!(
                "run `make deps` (builds cri-tools' crictl pinned by tests/crictl/go.mod), or point {CRICTL_BIN_ENV} at one"
            ),
        })
    }
}

/// What kubelet would put in a pod's `PodSandboxConfig` (the parts these tests vary).
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Kubernetes namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// Pod name (`K8S_POD_NAME`).
    pub name: String,
    /// Pod UID (`K8S_POD_UID`).
    pub uid: String,
    /// `hostPort` mappings: (container port, host port), TCP.
    pub host_ports: Vec<(u16, u16)>,
}

impl PodSpec {
    /// A pod without port mappings; its UID is derived from its name.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: format!("uid-{namespace}-{name}"),
            host_ports: Vec::new(),
        }
    }

    /// Adds a TCP `hostPort` mapping.
    pub fn host_port(mut self, container_port: u16, host_port: u16) -> Self {
        self.host_ports.push((container_port, host_port));
        self
    }

    /// The host veth name the plugin derives (`eni` + `sha1("<ns>.<name>")[:11]`).
    pub fn host_veth(&self) -> String {
        crate::cni::host_veth_name("eni", &self.namespace, &self.name)
    }
}

/// One CNI call containerd made, as the recorder in the bin dir wrote it down.
#[derive(Debug, Clone)]
pub struct CniCall {
    /// The recorder's file stem (nanosecond time and pid: sorts in call order).
    pub key: String,
    /// The `CNI_*` environment.
    pub env: BTreeMap<String, String>,
    /// The network configuration on stdin, parsed (`Null` if not JSON).
    pub stdin: Value,
    /// What the plugin printed.
    pub stdout: String,
    /// The plugin's exit code (`None` while it runs).
    pub exit_code: Option<i32>,
}

impl CniCall {
    /// `CNI_COMMAND`.
    pub fn command(&self) -> &str {
        self.env.get("CNI_COMMAND").map_or("", String::as_str)
    }

    /// `CNI_CONTAINERID`.
    pub fn container_id(&self) -> &str {
        self.env.get("CNI_CONTAINERID").map_or("", String::as_str)
    }

    /// `CNI_NETNS` (empty when containerd sent it empty).
    pub fn netns(&self) -> &str {
        self.env.get("CNI_NETNS").map_or("", String::as_str)
    }

    /// `CNI_ARGS` as sent.
    pub fn args(&self) -> &str {
        self.env.get("CNI_ARGS").map_or("", String::as_str)
    }

    /// `CNI_ARGS` as key/value pairs.
    pub fn arg_map(&self) -> BTreeMap<String, String> {
        self.args()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Whether the plugin exited 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The CNI plugins and configuration a [`Containerd`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniLayout {
    /// The harness's: `conf_dir` is the node's ipamd's `net.d`, `bin_dir` a private directory
    /// with `loopback`, `portmap` and the recorder in front of `aws-cni` (see the module docs).
    Recorded,
    /// An EKS node's: `/etc/cni/net.d` and `/opt/cni/bin` of the node's [`NodeRoot`], empty until
    /// the aws-node DaemonSet's init container installs the plugins and its ipamd writes the
    /// conflist. No call is recorded.
    Node,
}

/// One containerd with its CRI plugin, running in a node's network namespace. Dropping it
/// removes every sandbox and everything containerd made (see the module docs).
#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    cgroup_parent: String,
    conf_dir: PathBuf,
    bin_dir: PathBuf,
    layout: CniLayout,
    crictl: PathBuf,
    started: Instant,
}

impl Containerd {
    /// Starts containerd in `node`'s namespace with `node`'s `net.d` as CNI conf dir, waits
    /// until its CRI answers, and imports the pause image.
    pub fn start(node: &NodeHost) -> Result<Self, CriError> {
        Self::launch(node, None, CniLayout::Recorded)
    }

    /// Starts containerd in `node`'s namespace and `root`'s mount namespace (where kubelet and
    /// the node's other processes run) with the CNI `layout`, waits until its CRI answers, and
    /// imports the pause image.
    pub fn start_in(node: &NodeHost, root: &NodeRoot, layout: CniLayout) -> Result<Self, CriError> {
        Self::launch(node, Some(root), layout)
    }

    fn launch(
        node: &NodeHost,
        root: Option<&NodeRoot>,
        layout: CniLayout,
    ) -> Result<Self, CriError> {
        prereqs::require_root()?;
        for (tool, package) in [
            ("containerd", "containerd"),
            ("containerd-shim-runc-v2", "containerd"),
            ("ctr", "containerd"),
            ("runc", "runc"),
            ("nsenter", "util-linux"),
        ] {
            prereqs::require_tool(tool, &format!("apt-get install {package} (make deps)"))?;
        }
        let crictl = crictl_bin()?;
        let plugin = prereqs::aws_cni()?;
        for p in ["loopback", "portmap"] {
            let path = Path::new(prereqs::SYSTEM_CNI_DIR).join(p);
            if layout == CniLayout::Recorded && !path.is_file() {
                return Err(PrereqError::MissingTool {
                    tool: path.display().to_string(),
                    hint: "apt-get install containernetworking-plugins (make deps)".into(),
                }
                .into());
            }
        }
        teardown::note_shared_dirs();
        let dir = tempfile::Builder::new()
            .prefix("vcni-containerd-")
            .tempdir()
            .map_err(io_err("cannot create containerd's private directory"))?;
        cleanup::register_dir(dir.path());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let (conf_dir, bin_dir) = match layout {
            CniLayout::Recorded => (node.conflist_dir(), dir.path().join("cni-bin")),
            CniLayout::Node => (
                PathBuf::from(NODE_CNI_CONF_DIR),
                PathBuf::from(NODE_CNI_BIN_DIR),
            ),
        };
        let mut ctd = Self {
            dir,
            child: None,
            cgroup_parent: format!("/vcni-{}-{n}", std::process::id()),
            conf_dir,
            bin_dir,
            layout,
            crictl,
            started: Instant::now(),
        };
        teardown::enter();
        ctd.write_setup(&plugin)?;
        ctd.spawn(node, root)?;
        ctd.wait_ready(Duration::from_secs(30))?;
        ctd.import_pause_image()?;
        Ok(ctd)
    }

    /// The private directory (config, state, logs, recorded calls).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's gRPC socket (CRI and containerd's own API).
    pub fn socket(&self) -> PathBuf {
        self.dir().join("containerd.sock")
    }

    /// containerd's log (debug level).
    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir().join("containerd.log")
    }

    /// The CNI bin dir containerd uses (a path of its mount namespace).
    pub fn bin_dir(&self) -> PathBuf {
        self.bin_dir.clone()
    }

    /// The CNI conf dir containerd watches (a path of its mount namespace).
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// Where its CNI plugins and configuration come from.
    pub fn layout(&self) -> CniLayout {
        self.layout
    }

    /// Where the recorder writes the calls.
    pub(crate) fn calls_dir(&self) -> PathBuf {
        self.dir().join("cni-calls")
    }

    /// The cgroup parent of every pod of this containerd.
    pub(crate) fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    fn write_setup(&self, plugin: &Path) -> Result<(), CriError> {
        let d = self.dir();
        for sub in ["root", "state", "opt", "runc", "logs", "pods", "image"] {
            fs::create_dir_all(d.join(sub)).map_err(io_err(format!("cannot create {sub}")))?;
        }
        let bin = self.bin_dir();
        if self.layout == CniLayout::Recorded {
            self.write_recorder(plugin)?;
        }
        let p = |s: &str| d.join(s).display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
# Snapshotters this setup never uses (and that probe the host's filesystems).
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  # This VM refuses to lower oom_score_adj: without this every RunPodSandbox fails in runc
  # ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = p("root"),
            state = p("state"),
            sock = self.socket().display(),
            opt = p("opt"),
            image = PAUSE_IMAGE,
            runc = p("runc"),
            bin = bin.display(),
            conf = self.conf_dir.display(),
        );
        fs::write(d.join("config.toml"), config).map_err(io_err("cannot write config.toml"))?;
        let crictl_conf = format!(
            "runtime-endpoint: unix://{sock}\nimage-endpoint: unix://{sock}\ntimeout: 60\n",
            sock = self.socket().display()
        );
        fs::write(d.join("crictl.yaml"), crictl_conf).map_err(io_err("cannot write crictl.yaml"))
    }

    /// The recorder in front of `aws-cni`, with `loopback` and `portmap`, in the private bin dir.
    fn write_recorder(&self, plugin: &Path) -> Result<(), CriError> {
        let bin = self.bin_dir();
        let calls = self.calls_dir();
        fs::create_dir_all(&bin).map_err(io_err("cannot create the CNI bin dir"))?;
        fs::create_dir_all(&calls).map_err(io_err("cannot create the calls dir"))?;
        for p in ["loopback", "portmap"] {
            std::os::unix::fs::symlink(Path::new(prereqs::SYSTEM_CNI_DIR).join(p), bin.join(p))
                .map_err(io_err(format!("cannot link {p}")))?;
        }
        // The recorder: writes the call down, runs the real plugin on the same stdin, and
        // passes its stdout and exit code back to containerd unchanged.
        let recorder = format!(
            "#!/bin/sh\n\
             # Written by the test harness (tests/src/cri): records one CNI call, then runs aws-cni.\n\
             f={calls}/$(date +%s%N)-$$\n\
             env | grep '^CNI_' | sort > \"$f.env\"\n\
             cat > \"$f.stdin\"\n\
             {plugin} < \"$f.stdin\" > \"$f.stdout\"\n\
             rc=$?\n\
             echo $rc > \"$f.rc\"\n\
             cat \"$f.stdout\"\n\
             exit $rc\n",
            calls = calls.display(),
            plugin = plugin.display(),
        );
        let wrapper = bin.join("aws-cni");
        fs::write(&wrapper, recorder).map_err(io_err("cannot write the recorder"))?;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
            .map_err(io_err("cannot make the recorder executable"))?;
        Ok(())
    }

    fn spawn(&mut self, node: &NodeHost, root: Option<&NodeRoot>) -> Result<(), CriError> {
        let log = fs::File::create(self.log_path()).map_err(io_err("cannot create the log"))?;
        let log2 = log.try_clone().map_err(io_err("cannot clone the log"))?;
        let mut cmd = match root {
            Some(root) => root.command("containerd"),
            None => node.ns().nsenter_command("containerd"),
        };
        cmd.arg("--config")
            .arg(self.dir().join("config.toml"))
            .env_clear()
            .env("PATH", default_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(io_err("cannot start containerd"))?;
        if let Ok(pid) = i32::try_from(child.id()) {
            cleanup::register_pid(pid);
        }
        self.child = Some(child);
        self.started = Instant::now();
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), CriError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(CriError::Start {
                    reason: format!("containerd exited ({status})"),
                    log: tail(&self.log_path(), 40),
                });
            }
            if self.socket().exists() && self.info().is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CriError::Start {
                    reason: format!("its CRI did not answer within {timeout:?}"),
                    log: tail(&self.log_path(), 40),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn import_pause_image(&self) -> Result<(), CriError> {
        let archive = image::write_pause_archive(&self.dir().join("image"))?;
        self.import_image(&archive, None)
    }

    /// Imports the OCI archive `archive` into the CRI's image store (`ctr images import`,
    /// native snapshotter); `base_name` names images whose archive gives only a tag (podman's
    /// `save --format oci-archive`): they become `<base_name>:<tag>`.
    pub fn import_image(&self, archive: &Path, base_name: Option<&str>) -> Result<(), CriError> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args([
            "-n",
            K8S_NAMESPACE,
            "images",
            "import",
            "--snapshotter",
            "native",
        ]);
        if let Some(base) = base_name {
            cmd.args(["--base-name", base]);
        }
        let out = run(cmd.arg(archive))?;
        if !out.status.success() {
            return Err(CriError::Command {
                command: format!("ctr images import {}", archive.display()),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Gives the image `from` the further name `to` (`ctr images tag`), as a push of the same
    /// image under a new tag would.
    pub fn tag_image(&self, from: &str, to: &str) -> Result<(), CriError> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args([
            "-n",
            K8S_NAMESPACE,
            "images",
            "tag",
            from,
            to,
        ]);
        let out = run(&mut cmd)?;
        if !out.status.success() {
            return Err(CriError::Command {
                command: format!("ctr images tag {from} {to}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// A crictl command with this containerd's endpoints.
    pub(crate) fn crictl_command(&self) -> Command {
        let mut cmd = Command::new(&self.crictl);
        cmd.arg("--config").arg(self.dir().join("crictl.yaml"));
        cmd
    }

    /// Runs `crictl <args>` and returns its output, whatever its status.
    pub fn crictl(&self, args: &[&str]) -> Result<Output, CriError> {
        Ok(run(self.crictl_command().args(args))?)
    }

    /// Runs `crictl <args>`; fails unless it exits 0; returns stdout.
    pub(crate) fn crictl_ok(&self, args: &[&str]) -> Result<String, CriError> {
        let out = self.crictl(args)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(CriError::Command {
                command: format!("crictl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    fn crictl_json(&self, args: &[&str]) -> Result<Value, CriError> {
        let text = self.crictl_ok(args)?;
        serde_json::from_str(&text).map_err(|e| CriError::Output {
            command: format!("crictl {}", args.join(" ")),
            what: format!("no JSON ({e})"),
            stdout: text,
        })
    }

    /// `crictl info`: the runtime's status and config.
    pub fn info(&self) -> Result<Value, CriError> {
        self.crictl_json(&["info", "-o", "json"])
    }

    /// The `NetworkReady` condition: (status, reason and message).
    pub fn network_ready(&self) -> Result<(bool, String), CriError> {
        let info = self.info()?;
        let cond = info["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "NetworkReady"))
            .cloned()
            .unwrap_or_default();
        Ok((
            cond["status"].as_bool().unwrap_or(false),
            format!(
                "{} {}",
                cond["reason"].as_str().unwrap_or(""),
                cond["message"].as_str().unwrap_or("")
            ),
        ))
    }

    /// Waits until `NetworkReady` is true (containerd loaded the conflist).
    pub fn wait_network_ready(&self, timeout: Duration) -> Result<(), CriError> {
        let deadline = Instant::now() + timeout;
        loop {
            let (ready, why) = self.network_ready()?;
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CriError::Timeout(format!(
                    "NetworkReady still false after {timeout:?}: {why}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pod_config_path(&self, spec: &PodSpec) -> PathBuf {
        self.dir()
            .join("pods")
            .join(format!("{}_{}.json", spec.namespace, spec.name))
    }

    /// The `PodSandboxConfig` kubelet would send for `spec`, written for crictl.
    fn write_pod_config(&self, spec: &PodSpec) -> Result<PathBuf, CriError> {
        let logs = self
            .dir()
            .join("logs")
            .join(format!("{}_{}", spec.namespace, spec.name));
        fs::create_dir_all(&logs).map_err(io_err("cannot create the pod's log dir"))?;
        let ports: Vec<Value> = spec
            .host_ports
            .iter()
            .map(|(container, host)| {
                json!({"protocol": 0, "container_port": container, "host_port": host})
            })
            .collect();
        let config = json!({
            "metadata": {
                "name": spec.name,
                "namespace": spec.namespace,
                "uid": spec.uid,
                "attempt": 0,
            },
            "hostname": spec.name,
            "log_directory": logs,
            "port_mappings": ports,
            "linux": {"cgroup_parent": self.cgroup_parent},
        });
        let path = self.pod_config_path(spec);
        fs::write(&path, config.to_string()).map_err(io_err("cannot write the pod config"))?;
        Ok(path)
    }

    /// RunPodSandbox: the sandbox id, or the runtime's error (`CriError::Command` with crictl's
    /// stderr, which carries containerd's and the plugin's messages).
    pub fn run_pod(&self, spec: &PodSpec) -> Result<String, CriError> {
        let config = self.write_pod_config(spec)?;
        let out = self.crictl_ok(&["runp", &config.to_string_lossy()])?;
        let id = out.trim().to_owned();
        if id.len() != 64 {
            return Err(CriError::Output {
                command: "crictl runp".into(),
                what: "no sandbox id".into(),
                stdout: out,
            });
        }
        Ok(id)
    }

    /// StopPodSandbox (CNI DEL with the pod's namespace).
    pub fn stop_pod(&self, id: &str) -> Result<(), CriError> {
        self.crictl_ok(&["stopp", id]).map(|_| ())
    }

    /// RemovePodSandbox (CNI DEL again, without a namespace).
    pub fn remove_pod(&self, id: &str) -> Result<(), CriError> {
        self.crictl_ok(&["rmp", id]).map(|_| ())
    }

    /// PodSandboxStatus with its verbose info.
    pub(crate) fn inspect_pod(&self, id: &str) -> Result<Value, CriError> {
        self.crictl_json(&["inspectp", "-o", "json", id])
    }

    /// The sandbox's IPv4 address as the runtime reports it (`status.network.ip`).
    pub fn pod_ip(&self, id: &str) -> Result<Ipv4Addr, CriError> {
        let status = self.inspect_pod(id)?;
        let ip = status["status"]["network"]["ip"]
            .as_str()
            .unwrap_or_default();
        ip.parse().map_err(|_| CriError::Output {
            command: format!("crictl inspectp {id}"),
            what: "no IPv4 address in status.network.ip".into(),
            stdout: status["status"].to_string(),
        })
    }

    /// The sandbox's network namespace path (from its OCI spec).
    pub fn pod_netns(&self, id: &str) -> Result<PathBuf, CriError> {
        let status = self.inspect_pod(id)?;
        status["info"]["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from)
            .ok_or_else(|| CriError::Output {
                command: format!("crictl inspectp {id}"),
                what: "no network namespace path".into(),
                stdout: status["info"]["runtimeSpec"]["linux"].to_string(),
            })
    }

    /// Ids of every sandbox containerd knows (ready or not).
    pub fn pod_ids(&self) -> Result<Vec<String>, CriError> {
        let text = self.crictl_ok(&["pods", "-q"])?;
        Ok(text
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// CreateContainer + StartContainer of `PAUSE_IMAGE` running `command` in sandbox `pod_id`
    /// (created from `spec`); returns the container id.
    pub fn run_container(
        &self,
        pod_id: &str,
        spec: &PodSpec,
        name: &str,
        command: &[&str],
    ) -> Result<String, CriError> {
        let config = json!({
            "metadata": {"name": name},
            "image": {"image": PAUSE_IMAGE},
            "command": command,
            "log_path": format!("{name}.log"),
            "linux": {},
        });
        let path = self
            .dir()
            .join("pods")
            .join(format!("{}_{}_{name}.json", spec.namespace, spec.name));
        fs::write(&path, config.to_string())
            .map_err(io_err("cannot write the container config"))?;
        let pod_config = self.pod_config_path(spec);
        let id = self
            .crictl_ok(&[
                "create",
                pod_id,
                &path.to_string_lossy(),
                &pod_config.to_string_lossy(),
            ])?
            .trim()
            .to_owned();
        self.crictl_ok(&["start", &id])?;
        Ok(id)
    }

    /// Every CNI call recorded so far, in call order.
    pub fn cni_calls(&self) -> Vec<CniCall> {
        let Ok(entries) = fs::read_dir(self.calls_dir()) else {
            return Vec::new();
        };
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".env") {
                keys.insert(stem.to_owned());
            }
        }
        let dir = self.calls_dir();
        let read = |key: &str, ext: &str| fs::read_to_string(dir.join(format!("{key}.{ext}")));
        let mut calls: Vec<CniCall> = keys
            .into_iter()
            .map(|key| {
                let env = read(&key, "env")
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                CniCall {
                    stdin: serde_json::from_str(&read(&key, "stdin").unwrap_or_default())
                        .unwrap_or(Value::Null),
                    stdout: read(&key, "stdout").unwrap_or_default(),
                    exit_code: read(&key, "rc").ok().and_then(|s| s.trim().parse().ok()),
                    env,
                    key,
                }
            })
            .collect();
        // date +%s%N has a fixed width until 2286, so names sort in time order.
        calls.sort_by(|a, b| a.key.cmp(&b.key));
        calls
    }

    /// The recorded calls for sandbox `id`.
    pub fn cni_calls_for(&self, id: &str) -> Vec<CniCall> {
        self.cni_calls()
            .into_iter()
            .filter(|c| c.container_id() == id)
            .collect()
    }

    /// containerd's log lines at level error.
    pub(crate) fn log_errors(&self) -> Vec<String> {
        fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("level=error"))
            .map(str::to_owned)
            .collect()
    }

    /// containerd's log lines about reloading the CNI configuration that failed (the runtime
    /// saw no usable conflist after a change in the conf dir). The one at start-up, before
    /// ipamd wrote anything ("failed to load cni during init"), is not among them.
    pub fn cni_reload_errors(&self) -> Vec<String> {
        self.log_errors()
            .into_iter()
            .filter(|l| l.contains("failed to reload cni configuration"))
            .collect()
    }

    /// The end of containerd's log and the recorded calls, for failure messages.
    pub fn diag(&self) -> String {
        let calls: Vec<String> = self
            .cni_calls()
            .iter()
            .rev()
            .take(20)
            .rev()
            .map(|c| {
                format!(
                    "{} {} netns={:?} rc={:?} args={} out={}",
                    c.command(),
                    &c.container_id().get(..12).unwrap_or(c.container_id()),
                    c.netns(),
                    c.exit_code,
                    c.args(),
                    c.stdout.trim()
                )
            })
            .collect();
        format!(
            "===== containerd log ({}) =====\n{}\n===== last CNI calls =====\n{}",
            self.log_path().display(),
            tail(&self.log_path(), 40),
            calls.join("\n")
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        teardown::run(self);
    }
}
