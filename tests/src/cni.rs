//! Driving the plugin the way a runtime does: `CNI_*` environment, the network configuration
//! on stdin, the result or the spec's error JSON on stdout. Also the pod identity (namespace,
//! name, container id, netns) and the host veth name the plugin must derive from it.

use std::ffi::OsStr;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use serde_json::Value;

use test_support::netns::{CommandError, Netns};

/// Errors of running the plugin or the libcni front end.
#[derive(Debug, thiserror::Error)]
pub enum PluginRunError {
    /// The program could not be started or fed.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The pod's namespace could not be made.
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The host-side veth name of a pod, as the contract defines it.
pub use vpc_cni_contract::dataplane::host_veth_name;

/// One invocation of a CNI plugin (or of libcni's front end) and what it printed.
#[derive(Debug, Clone)]
pub struct CniOutcome {
    /// The command line, for messages.
    pub command: String,
    /// Exit code (`None` if killed by a signal).
    pub status: Option<i32>,
    /// stdout as text.
    pub stdout: String,
    /// stderr as text.
    pub stderr: String,
    /// stdout parsed as JSON, if it is JSON.
    pub json: Option<Value>,
}

impl CniOutcome {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The CNI error code from the error JSON on stdout.
    pub fn error_code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    /// The error message (`msg` and `details`) from the error JSON on stdout.
    pub fn error_text(&self) -> String {
        let Some(json) = &self.json else {
            return String::new();
        };
        format!(
            "{} {}",
            json.get("msg").and_then(Value::as_str).unwrap_or(""),
            json.get("details").and_then(Value::as_str).unwrap_or("")
        )
    }

    /// A readable dump of the invocation for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// The first IPv4 address of the result (`ips[0].address` without the prefix length).
    pub fn result_ip(&self) -> Option<Ipv4Addr> {
        result_ip(self.json.as_ref()?)
    }
}

/// The first IPv4 address of a CNI result (`ips[0].address` without the prefix length).
pub fn result_ip(result: &Value) -> Option<Ipv4Addr> {
    let addr = result.get("ips")?.get(0)?.get("address")?.as_str()?;
    addr.split('/').next()?.parse().ok()
}

/// The address (`a/len`) of a CNI result's `ips` on the interface called `ifname`.
pub fn result_address(result: &Value, ifname: &str) -> Option<String> {
    let interfaces = result["interfaces"].as_array()?;
    result["ips"].as_array()?.iter().find_map(|ip| {
        let index = usize::try_from(ip["interface"].as_u64()?).ok()?;
        (interfaces.get(index)?["name"] == ifname)
            .then(|| ip["address"].as_str().map(str::to_owned))?
    })
}

/// Runs `cmd` with `stdin` and collects a [`CniOutcome`].
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Result<CniOutcome, PluginRunError> {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&a.to_string_lossy());
    }
    let spawn_err = |source| PluginRunError::Spawn {
        program: line.clone(),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that rejects its input early may close stdin first: that is its answer,
        // not a harness failure.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(stdout.trim()).ok();
    Ok(CniOutcome {
        command: line,
        status: out.status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    })
}

/// The environment and stdin of one plugin call. Fields left `None` are not set at all (to
/// test missing variables).
#[derive(Debug, Clone, Default)]
pub struct CniRequest {
    /// `CNI_COMMAND`.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
    /// `CNI_PATH` (the node fills in its default when `None`).
    pub path: Option<String>,
    /// The network configuration on stdin.
    pub stdin: Vec<u8>,
}

impl CniRequest {
    /// A request for `command` with `config` on stdin and nothing else set.
    pub fn new(command: &str, config: &Value) -> Self {
        Self {
            command: Some(command.to_owned()),
            stdin: config.to_string().into_bytes(),
            ..Self::default()
        }
    }

    /// A request for `command` on `pod` (container id, netns, `eth0`, CNI_ARGS).
    pub fn for_pod(command: &str, config: &Value, pod: &Pod) -> Self {
        Self {
            command: Some(command.to_owned()),
            container_id: Some(pod.container_id.clone()),
            netns: Some(pod.netns_path.clone()),
            ifname: Some(pod.ifname.clone()),
            args: Some(pod.cni_args()),
            path: None,
            stdin: config.to_string().into_bytes(),
        }
    }

    /// Replaces stdin with raw bytes (malformed input tests).
    pub fn raw_stdin(mut self, bytes: &[u8]) -> Self {
        self.stdin = bytes.to_vec();
        self
    }

    /// The `CNI_*` variables to set.
    pub fn env(&self, default_path: &str) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                env.push((k.to_owned(), v.clone()));
            }
        };
        put("CNI_COMMAND", &self.command);
        put("CNI_CONTAINERID", &self.container_id);
        put("CNI_NETNS", &self.netns);
        put("CNI_IFNAME", &self.ifname);
        put("CNI_ARGS", &self.args);
        env.push((
            "CNI_PATH".to_owned(),
            self.path.clone().unwrap_or_else(|| default_path.to_owned()),
        ));
        env
    }

    /// Runs `plugin` inside `host` (the node's namespace, where runtimes exec plugins) with a
    /// clean environment.
    pub fn run_in(
        &self,
        host: &Netns,
        plugin: impl AsRef<OsStr>,
        default_path: &str,
    ) -> Result<CniOutcome, PluginRunError> {
        let mut cmd = host.command(plugin);
        cmd.env_clear()
            .env("PATH", test_support::netns::default_path())
            .envs(self.env(default_path));
        run_with_stdin(&mut cmd, &self.stdin)
    }
}

static POD_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A pod sandbox: a network namespace plus the identity a kubelet would pass.
#[derive(Debug)]
pub struct Pod {
    /// Kubernetes namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// Pod name (`K8S_POD_NAME`).
    pub name: String,
    /// Sandbox id (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub container_id: String,
    /// Interface to create (`CNI_IFNAME`).
    pub ifname: String,
    /// `CNI_NETNS` (kept after the namespace is deleted).
    pub netns_path: String,
    netns: Option<Netns>,
}

impl Pod {
    /// Creates the pod's namespace; the container id is 64 random hex chars, as runtimes use.
    pub fn new(namespace: &str, name: &str) -> Result<Self, PluginRunError> {
        let n = POD_COUNTER.fetch_add(1, Ordering::Relaxed);
        let netns = Netns::new(&format!("pod{n}"))?;
        let bytes: [u8; 32] = rand::rng().random();
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            container_id: hex::encode(bytes),
            ifname: "eth0".to_owned(),
            netns_path: netns.path().to_string_lossy().into_owned(),
            netns: Some(netns),
        })
    }

    /// `CNI_ARGS` as the kubelet's CRI sends it.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.namespace, self.name, self.container_id
        )
    }

    /// The host veth name the plugin must use with `prefix`.
    pub fn host_veth(&self, prefix: &str) -> String {
        host_veth_name(prefix, &self.namespace, &self.name)
    }

    /// The pod's namespace; `None` after [`Pod::delete_netns`].
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    /// The pod's namespace, or an error saying it was deleted.
    pub fn ns(&self) -> Result<&Netns, CommandError> {
        self.netns.as_ref().ok_or_else(|| CommandError::Deleted {
            name: self.netns_path.clone(),
        })
    }

    /// Deletes the pod's namespace now (the runtime tore the sandbox down).
    pub fn delete_netns(&mut self) -> Result<(), CommandError> {
        match self.netns.take() {
            Some(mut ns) => ns.delete(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_name_matches_the_reference_scheme() {
        // printf 'default.nginx' | sha1sum -> c440f455693b69cdd48a37aa5ecd78038f50413d
        assert_eq!(host_veth_name("eni", "default", "nginx"), "enic440f455693");
        assert_eq!(
            host_veth_name("cali", "default", "nginx"),
            "calic440f455693"
        );
    }

    #[test]
    fn request_env_leaves_unset_fields_out() {
        let req = CniRequest::new("ADD", &serde_json::json!({}));
        let env = req.env("/opt/cni/bin");
        assert_eq!(
            env,
            vec![
                ("CNI_COMMAND".to_owned(), "ADD".to_owned()),
                ("CNI_PATH".to_owned(), "/opt/cni/bin".to_owned())
            ]
        );
    }
}
