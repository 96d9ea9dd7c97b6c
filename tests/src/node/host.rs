//! What every simulated node has, whatever plays its VPC: a node namespace, a private state
//! directory, ipamd running inside the namespace, and the helpers that drive the plugin and
//! inspect the node the way a runtime and an operator would. [`crate::node::SimNode`] (one
//! node, metadata from a file) and [`crate::vpc::VpcNode`] (instances of a moto-backed VPC)
//! both deref to a [`NodeHost`].

use std::fs;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::cni::{CniOutcome, CniRequest, PluginRunError, Pod};
use crate::http::HttpExchangeError;
use test_support::cleanup;
use test_support::imds::ImdsServerError;
use test_support::ipamd_client::IpamdClientError;
use test_support::metadata::NodeFileError;
use test_support::netns::{CommandError, Netns, NetnsProcess, tail};
use test_support::prereqs::{self, PrereqError};

/// Name of the conflist ipamd writes when ready.
pub const CONFLIST_NAME: &str = "10-aws.conflist";
/// The network name in that conflist.
pub const NETWORK_NAME: &str = "aws-cni";
/// Env var that keeps node state directories (logs, checkpoint) after the test, for debugging.
pub(crate) const KEEP_DIRS_ENV: &str = "VCNI_KEEP_DIRS";

/// Errors of building or driving a simulated node.
#[derive(Debug, thiserror::Error)]
pub enum SimNodeError {
    /// Namespace or command failure.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A program under test or a tool is missing.
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    /// The node description is unusable.
    #[error(transparent)]
    NodeFile(#[from] NodeFileError),
    /// The IMDS emulator did not start.
    #[error(transparent)]
    Imds(#[from] ImdsServerError),
    /// Running the plugin failed.
    #[error(transparent)]
    PluginRun(#[from] PluginRunError),
    /// Asking ipamd failed.
    #[error("{source}\n{diag}")]
    Client {
        /// The client error.
        source: IpamdClientError,
        /// Logs.
        diag: String,
    },
    /// A file of the node's state directory could not be used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// ipamd exited while it should be running.
    #[error("ipamd exited ({status}) before becoming ready\n{diag}")]
    IpamdExited {
        /// How it exited.
        status: String,
        /// Its logs.
        diag: String,
    },
    /// ipamd did not write its conflist in time.
    #[error("ipamd did not write {conflist} within {timeout:?}\n{diag}")]
    NotReady {
        /// The conflist path waited for.
        conflist: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// Its logs.
        diag: String,
    },
    /// ipamd is not running (stopped or killed) for an operation that needs it.
    #[error("ipamd is not running")]
    IpamdNotRunning,
    /// The conflist ipamd wrote is not what the contract says.
    #[error("conflist {path} is unusable: {reason}")]
    Conflist {
        /// The conflist.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An HTTP exchange with the node (introspection) failed.
    #[error(transparent)]
    Http(#[from] HttpExchangeError),
    /// ipamd's introspection endpoint answered something unusable.
    #[error("introspection {path}: {reason}")]
    Introspection {
        /// The path asked.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The simulated VPC around the node failed (moto, the hypervisor, the router).
    #[error("simulated VPC: {0}")]
    Vpc(String),
    /// A plugin call that had to succeed failed.
    #[error("{what} failed:\n{outcome}\n{diag}")]
    PluginFailed {
        /// What was attempted.
        what: String,
        /// The plugin's output.
        outcome: String,
        /// Logs.
        diag: String,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SimNodeError {
    let context = context.into();
    move |source| SimNodeError::Io { context, source }
}

pub(crate) enum StateDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.path())
    }
}

impl StateDir {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Kept(p) => p,
        }
    }

    /// A fresh `vcni-<what>-*` temp dir, kept after the run when `VCNI_KEEP_DIRS` is set,
    /// else removed on drop (and on a termination signal).
    pub(crate) fn create(what: &str) -> Result<Self, SimNodeError> {
        let temp = tempfile::Builder::new()
            .prefix(&format!("vcni-{what}-"))
            .tempdir()
            .map_err(io_err(format!(
                "cannot create a state directory for {what}"
            )))?;
        Ok(if std::env::var_os(KEEP_DIRS_ENV).is_some() {
            StateDir::Kept(temp.keep())
        } else {
            cleanup::register_dir(temp.path());
            StateDir::Temp(temp)
        })
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if let StateDir::Temp(t) = self {
            cleanup::unregister_dir(t.path());
        }
    }
}

/// Extra failure context from whatever surrounds the node (the simulated VPC's state).
pub type DiagFn = Arc<dyn Fn() -> String + Send + Sync>;

/// How ipamd runs on a node: the environment every node shares is built by [`NodeHost`];
/// this adds the mode (endpoints, credentials, IMDS-only) and the test's knobs.
#[derive(Clone)]
pub struct HostSettings {
    /// `MY_NODE_NAME`.
    pub node_name: String,
    /// `AWS_REGION`.
    pub region: String,
    /// `IP_COOLDOWN_PERIOD` (a string so invalid values can be tested).
    pub cooldown: String,
    /// The mode's environment (e.g. `ENABLE_IMDS_ONLY_MODE`, `AWS_ENDPOINT_URL_EC2`).
    pub mode_env: Vec<(String, String)>,
    /// The test's overrides, applied last.
    pub overrides: Vec<(String, String)>,
    /// How long to wait for ipamd's conflist.
    pub ready_timeout: Duration,
    /// Extra context for failure messages.
    pub diag: Option<DiagFn>,
}

impl std::fmt::Debug for HostSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSettings")
            .field("node_name", &self.node_name)
            .field("region", &self.region)
            .field("cooldown", &self.cooldown)
            .field("mode_env", &self.mode_env)
            .field("overrides", &self.overrides)
            .field("ready_timeout", &self.ready_timeout)
            .finish_non_exhaustive()
    }
}

/// A node's namespace, state directory and ipamd. Dropping it kills ipamd, then deletes the
/// namespace and the directory.
#[derive(Debug)]
pub struct NodeHost {
    ipamd: Option<NetnsProcess>,
    ns: Netns,
    dir: StateDir,
    settings: HostSettings,
    ipamd_bin: PathBuf,
    /// The `aws-cni` binary plugin calls exec.
    plugin: PathBuf,
    cni_path: String,
}

impl NodeHost {
    /// Prepares a node in `ns` (its state directory with `net.d`); ipamd is not started.
    pub fn new(ns: Netns, settings: HostSettings) -> Result<Self, SimNodeError> {
        prereqs::require_node_prerequisites()?;
        let ipamd_bin = prereqs::ipamd()?;
        let cni_path = prereqs::cni_path()?;
        let plugin = prereqs::aws_cni()?;
        let dir = StateDir::create("node")?;
        let host = Self {
            ipamd: None,
            ns,
            dir,
            settings,
            ipamd_bin,
            plugin,
            cni_path,
        };
        fs::create_dir_all(host.conflist_dir()).map_err(io_err("cannot create net.d"))?;
        Ok(host)
    }

    /// The node's namespace (where ipamd, the plugin and the host veths live).
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The node's state directory (socket, checkpoint, net.d, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How ipamd runs here.
    pub fn settings(&self) -> &HostSettings {
        &self.settings
    }

    /// Adds or replaces one ipamd environment variable for the next start.
    pub fn set_ipamd_env(&mut self, key: &str, value: &str) {
        self.settings.overrides.retain(|(k, _)| k != key);
        self.settings
            .overrides
            .push((key.to_owned(), value.to_owned()));
    }

    /// Sets one variable of the mode's environment (e.g. the IMDS endpoint once it is known).
    pub(crate) fn set_mode_env(&mut self, key: &str, value: &str) {
        self.settings.mode_env.retain(|(k, _)| k != key);
        self.settings
            .mode_env
            .push((key.to_owned(), value.to_owned()));
    }

    /// Kills ipamd (SIGKILL) if it runs; used on teardown.
    pub(crate) fn kill_ipamd_if_running(&mut self) {
        if let Some(mut p) = self.ipamd.take() {
            p.kill();
        }
    }

    /// ipamd's `HOST_CNI_CONFDIR_PATH`.
    pub fn conflist_dir(&self) -> PathBuf {
        self.dir().join("net.d")
    }

    /// The conflist ipamd writes when ready.
    pub fn conflist_path(&self) -> PathBuf {
        self.conflist_dir().join(CONFLIST_NAME)
    }

    /// ipamd's gRPC socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir().join("ipamd.sock")
    }

    /// ipamd's checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir().join("ipam.json")
    }

    /// ipamd's log file.
    pub fn ipamd_log_path(&self) -> PathBuf {
        self.dir().join("ipamd.log")
    }

    /// ipamd's stdout and stderr.
    pub fn ipamd_output_path(&self) -> PathBuf {
        self.dir().join("ipamd.out")
    }

    /// The plugin's log file (`pluginLogFile` of the written conflist).
    pub fn plugin_log_path(&self) -> PathBuf {
        self.dir().join("plugin.log")
    }

    /// `CNI_PATH` for plugin calls: aws-cni's directory, then /usr/lib/cni; after
    /// [`NodeHost::install_cni`], the directory it installed into.
    pub fn cni_path(&self) -> &str {
        &self.cni_path
    }

    /// The environment ipamd runs with (before `extra`).
    pub fn ipamd_env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let d = |p: PathBuf| p.to_string_lossy().into_owned();
        let mut env: Vec<(String, String)> = vec![
            ("AWS_VPC_K8S_CNI_IPAMD_SOCKET".into(), d(self.socket_path())),
            (
                "AWS_VPC_K8S_CNI_BACKING_STORE".into(),
                d(self.checkpoint_path()),
            ),
            ("HOST_CNI_CONFDIR_PATH".into(), d(self.conflist_dir())),
            ("AWS_VPC_K8S_CNI_LOG_FILE".into(), d(self.ipamd_log_path())),
            ("AWS_VPC_K8S_CNI_LOGLEVEL".into(), "DEBUG".into()),
            (
                "AWS_VPC_K8S_PLUGIN_LOG_FILE".into(),
                d(self.plugin_log_path()),
            ),
            ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL".into(), "DEBUG".into()),
            ("MY_NODE_NAME".into(), self.settings.node_name.clone()),
            ("AWS_REGION".into(), self.settings.region.clone()),
            ("IP_COOLDOWN_PERIOD".into(), self.settings.cooldown.clone()),
            // No ~/.aws of the machine's user is ever read.
            ("HOME".into(), d(self.dir().to_owned())),
            ("RUST_BACKTRACE".into(), "1".into()),
        ];
        let overrides = self
            .settings
            .mode_env
            .iter()
            .chain(self.settings.overrides.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
        for (k, v) in overrides {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        env
    }

    /// Runs `ipamd install-cni` in the node's namespace as the aws-node init container does,
    /// with ipamd's environment (so `ENABLE_IPv6` etc. mean the same): copies every plugin of
    /// `image_plugins` (a directory staged like the image's `/app/cni/bin`) into the node's
    /// `opt/cni/bin` and sets the node's sysctls. Plugin calls use that directory as `CNI_PATH`
    /// afterwards, as a runtime on the node does.
    ///
    /// # Errors
    /// install-cni failed (its output is in the error).
    pub fn install_cni(&mut self, image_plugins: &Path) -> Result<(), SimNodeError> {
        let bin_dir = self.dir().join("opt").join("cni").join("bin");
        let bin_dir_s = bin_dir.to_string_lossy().into_owned();
        let env = self.ipamd_env(&[("HOST_CNI_BIN_PATH", &bin_dir_s)]);
        let mut cmd = self.ns.command(&self.ipamd_bin);
        cmd.arg("install-cni")
            .arg("--from")
            .arg(image_plugins)
            .env_clear()
            .env("PATH", test_support::netns::default_path())
            .envs(env);
        let out = cmd
            .output()
            .map_err(io_err("cannot run ipamd install-cni"))?;
        if !out.status.success() {
            return Err(SimNodeError::PluginFailed {
                what: "ipamd install-cni".into(),
                outcome: format!("{}\n{}", out.status, String::from_utf8_lossy(&out.stderr)),
                diag: self.diag(),
            });
        }
        self.plugin = bin_dir.join("aws-cni");
        self.cni_path = bin_dir_s;
        Ok(())
    }

    /// Starts ipamd with `extra` environment without waiting for readiness (config-error
    /// tests); the returned process is owned by the caller.
    pub fn spawn_ipamd_process(
        &self,
        extra: &[(&str, &str)],
    ) -> Result<NetnsProcess, SimNodeError> {
        let env = self.ipamd_env(extra);
        let bin = self.ipamd_bin.to_string_lossy().into_owned();
        Ok(NetnsProcess::spawn(
            &self.ns,
            Path::new(&bin),
            &[],
            &env,
            &self.ipamd_output_path(),
        )?)
    }

    /// Starts ipamd and waits until it wrote its conflist (a fresh one: any previous conflist
    /// is removed first, since ipamd rewrites it on every start).
    pub fn start_ipamd(&mut self) -> Result<(), SimNodeError> {
        if self.ipamd_running() {
            return Ok(());
        }
        match fs::remove_file(self.conflist_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove the old conflist")(e)),
        }
        let process = self.spawn_ipamd_process(&[])?;
        self.ipamd = Some(process);
        self.wait_ready(self.settings.ready_timeout)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), SimNodeError> {
        let deadline = Instant::now() + timeout;
        let conflist = self.conflist_path();
        loop {
            if let Ok(text) = fs::read_to_string(&conflist)
                && serde_json::from_str::<Value>(&text).is_ok()
            {
                return Ok(());
            }
            let exited = self.ipamd.as_mut().and_then(NetnsProcess::try_wait);
            if let Some(status) = exited {
                self.ipamd = None;
                return Err(SimNodeError::IpamdExited {
                    status: NetnsProcess::describe_status(status),
                    diag: self.diag(),
                });
            }
            if Instant::now() >= deadline {
                return Err(SimNodeError::NotReady {
                    conflist,
                    timeout,
                    diag: self.diag(),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether ipamd is running.
    pub(crate) fn ipamd_running(&mut self) -> bool {
        match self.ipamd.as_mut() {
            Some(p) => p.try_wait().is_none(),
            None => false,
        }
    }

    /// ipamd's pid.
    pub fn ipamd_pid(&self) -> Option<i32> {
        self.ipamd.as_ref().map(NetnsProcess::pid)
    }

    /// Sends SIGTERM and waits up to `timeout` for ipamd to exit; returns its exit status.
    pub fn stop_ipamd(&mut self, timeout: Duration) -> Result<ExitStatus, SimNodeError> {
        let mut process = self.ipamd.take().ok_or(SimNodeError::IpamdNotRunning)?;
        process.signal(Signal::SIGTERM)?;
        match process.wait_timeout(timeout) {
            Some(status) => Ok(status),
            None => {
                let diag = self.diag();
                process.kill();
                Err(SimNodeError::IpamdExited {
                    status: format!("still running {timeout:?} after SIGTERM (killed)"),
                    diag,
                })
            }
        }
    }

    /// `kill -9` of ipamd (no chance to clean up, like a node crash or OOM kill).
    pub fn kill_ipamd(&mut self) -> Result<(), SimNodeError> {
        let mut process = self.ipamd.take().ok_or(SimNodeError::IpamdNotRunning)?;
        process.kill();
        Ok(())
    }

    /// SIGTERM, wait, start again and wait for readiness.
    pub fn restart_ipamd(&mut self) -> Result<(), SimNodeError> {
        if self.ipamd_running() {
            self.stop_ipamd(Duration::from_secs(15))?;
        }
        self.start_ipamd()
    }

    /// The conflist ipamd wrote.
    pub fn conflist(&self) -> Result<Value, SimNodeError> {
        let path = self.conflist_path();
        let text =
            fs::read_to_string(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| SimNodeError::Conflist {
            path,
            reason: e.to_string(),
        })
    }

    /// What a runtime puts on the plugin's stdin: the conflist's `aws-cni` entry with the
    /// list's `name` and the given `cniVersion`, plus `prevResult` when given.
    pub fn plugin_config(
        &self,
        cni_version: &str,
        prev_result: Option<&Value>,
    ) -> Result<Value, SimNodeError> {
        let list = self.conflist()?;
        let path = self.conflist_path();
        let entry = list["plugins"]
            .as_array()
            .and_then(|p| p.iter().find(|e| e["type"] == "aws-cni"))
            .cloned()
            .ok_or_else(|| SimNodeError::Conflist {
                path: path.clone(),
                reason: "no plugin of type aws-cni".into(),
            })?;
        let Value::Object(mut conf) = entry else {
            return Err(SimNodeError::Conflist {
                path,
                reason: "the aws-cni entry is not an object".into(),
            });
        };
        conf.insert("cniVersion".into(), Value::from(cni_version));
        conf.insert("name".into(), list["name"].clone());
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        Ok(Value::Object(conf))
    }

    /// Execs the plugin inside the node namespace, as a runtime on the node would (the one
    /// install-cni installed, once it ran).
    pub fn exec_plugin(&self, request: &CniRequest) -> Result<CniOutcome, SimNodeError> {
        Ok(request.run_in(&self.ns, &self.plugin, &self.cni_path)?)
    }

    /// Direct-exec `command` for `pod` with the written conflist at `cni_version`.
    pub fn cni(
        &self,
        command: &str,
        pod: &Pod,
        cni_version: &str,
        prev_result: Option<&Value>,
    ) -> Result<CniOutcome, SimNodeError> {
        let config = self.plugin_config(cni_version, prev_result)?;
        self.exec_plugin(&CniRequest::for_pod(command, &config, pod))
    }

    /// ADD that must succeed; returns the result JSON.
    pub fn add_pod(&self, pod: &Pod, cni_version: &str) -> Result<Value, SimNodeError> {
        let out = self.cni("ADD", pod, cni_version, None)?;
        match (&out.json, out.success()) {
            (Some(result), true) => Ok(result.clone()),
            _ => Err(SimNodeError::PluginFailed {
                what: format!("ADD of pod {}/{}", pod.namespace, pod.name),
                outcome: out.describe(),
                diag: self.diag(),
            }),
        }
    }

    /// DEL that must succeed (with the ADD result as prevResult, as runtimes send it).
    pub fn del_pod(
        &self,
        pod: &Pod,
        cni_version: &str,
        prev_result: Option<&Value>,
    ) -> Result<(), SimNodeError> {
        let out = self.cni("DEL", pod, cni_version, prev_result)?;
        if out.success() {
            Ok(())
        } else {
            Err(SimNodeError::PluginFailed {
                what: format!("DEL of pod {}/{}", pod.namespace, pod.name),
                outcome: out.describe(),
                diag: self.diag(),
            })
        }
    }

    /// ipamd's log, its stdout/stderr and the plugin log (tails), for failure messages.
    pub fn diag(&self) -> String {
        let mut out = format!(
            "===== ipamd log ({}) =====\n{}\n===== ipamd stdout/stderr =====\n{}\n===== plugin log =====\n{}",
            self.ipamd_log_path().display(),
            tail(&self.ipamd_log_path(), 60),
            tail(&self.ipamd_output_path(), 30),
            tail(&self.plugin_log_path(), 40)
        );
        if let Some(extra) = &self.settings.diag {
            out.push('\n');
            out.push_str(&extra());
        }
        for warning in prereqs::staleness_warnings() {
            out.push_str("\n===== WARNING: stale binary: ");
            out.push_str(&warning);
        }
        out
    }
}

/// Unwraps `r` for a test, panicking with the error and the node's logs ([`NodeHost::diag`]).
pub fn ok<T, E: std::fmt::Display>(node: &NodeHost, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}\n{}", node.diag()),
    }
}

/// Asserts `$cond` in a test; on failure panics with the message and `$node.diag()` (the
/// node's ipamd and plugin logs, and the VPC's state for a node of a simulated VPC).
#[macro_export]
macro_rules! check {
    ($node:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            panic!("{}\n{}", format!($($arg)+), $node.diag());
        }
    };
}

impl Drop for NodeHost {
    fn drop(&mut self) {
        self.kill_ipamd_if_running();
        // The namespace and the state directory go with the remaining fields.
    }
}
