//! Driving the plugin through real libcni: the Go front end `cniclient`
//! (`tests/libcni-client/main.go`), run inside the node's namespace because libcni execs the
//! plugin in its own namespace, and the plugin must run in the node's, never the root one.

use std::path::{Path, PathBuf};

use crate::bins;
use crate::cni::{CniOutcome, Pod, run_with_stdin};
use crate::node::{NodeError, SimNode};

/// libcni driven against one node, with its own result cache directory.
#[derive(Debug)]
pub struct CniClient<'a> {
    node: &'a SimNode,
    binary: PathBuf,
    confdir: PathBuf,
    cache_dir: PathBuf,
    cap_args: Option<String>,
}

impl<'a> CniClient<'a> {
    /// A client reading conflists from ipamd's `net.d` and caching results under the node's
    /// state directory.
    pub fn new(node: &'a SimNode) -> Result<Self, NodeError> {
        let cache_dir = node.dir().join("cni-cache");
        std::fs::create_dir_all(&cache_dir).map_err(|source| NodeError::Io {
            context: format!("cannot create {}", cache_dir.display()),
            source,
        })?;
        Ok(Self {
            node,
            binary: bins::cniclient()?,
            confdir: node.conflist_dir(),
            cache_dir,
            cap_args: None,
        })
    }

    /// Reads conflists from `dir` instead (e.g. a 0.4.0 copy of ipamd's conflist).
    pub fn with_confdir(mut self, dir: &Path) -> Self {
        self.confdir = dir.to_owned();
        self
    }

    /// Passes `caps` (a JSON object, e.g. `{"bandwidth":{...}}`) as the runtime's capability
    /// arguments (`CAP_ARGS`); libcni hands each to the plugins that declare it.
    pub fn with_cap_args(mut self, caps: &serde_json::Value) -> Self {
        self.cap_args = Some(caps.to_string());
        self
    }

    /// libcni's result cache directory (`CNI_CACHE_DIR`).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Runs `cniclient <verb> <network> [netns containerID ifname]` with the pod's `CNI_ARGS`.
    pub fn run(
        &self,
        verb: &str,
        network: &str,
        pod: Option<&Pod>,
    ) -> Result<CniOutcome, NodeError> {
        let mut cmd = self.node.ns().command(&self.binary);
        cmd.arg(verb).arg(network);
        cmd.env_clear()
            .env("PATH", crate::netns::default_path())
            .env("NETCONFPATH", &self.confdir)
            .env("CNI_PATH", self.node.cni_path())
            .env("CNI_CACHE_DIR", &self.cache_dir);
        if let Some(caps) = &self.cap_args {
            cmd.env("CAP_ARGS", caps);
        }
        if let Some(pod) = pod {
            cmd.arg(&pod.netns_path)
                .arg(&pod.container_id)
                .arg(&pod.ifname)
                .env("CNI_ARGS", pod.cni_args());
        }
        Ok(run_with_stdin(&mut cmd, b"")?)
    }

    /// `add`.
    pub fn add(&self, network: &str, pod: &Pod) -> Result<CniOutcome, NodeError> {
        self.run("add", network, Some(pod))
    }

    /// `check`.
    pub fn check(&self, network: &str, pod: &Pod) -> Result<CniOutcome, NodeError> {
        self.run("check", network, Some(pod))
    }

    /// `del`.
    pub fn del(&self, network: &str, pod: &Pod) -> Result<CniOutcome, NodeError> {
        self.run("del", network, Some(pod))
    }

    /// `cached`: libcni's cached ADD result of the pod.
    pub fn cached(&self, network: &str, pod: &Pod) -> Result<CniOutcome, NodeError> {
        self.run("cached", network, Some(pod))
    }

    /// `validate`: VERSION of every plugin against the list's version.
    pub fn validate(&self, network: &str) -> Result<CniOutcome, NodeError> {
        self.run("validate", network, None)
    }
}
