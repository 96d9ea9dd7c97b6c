//! Driving the plugin through real libcni: the Go front end `cniclient`
//! (`tests/libcni-client/main.go`), run inside the node's namespace because libcni execs the
//! plugin in its own namespace, and the plugin must run in the node's, never the root one.
//!
//! The front end lives in `<target>/go/cniclient` (override `CNICLIENT_BIN`); it is built there
//! with Debian's libcni sources if it is missing or older than its source.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::cni::{CniOutcome, Pod, run_with_stdin};
use crate::node::{NodeHost, NodeRoot, SimNodeError};
use test_support::prereqs::{self, PrereqError};

/// Env var overriding the path of the libcni front end.
pub(crate) const CNICLIENT_BIN_ENV: &str = "CNICLIENT_BIN";
/// Where Debian's golang-github-appc-cni-dev installs libcni (GOPATH layout).
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// libcni driven against one node, with its own result cache directory.
#[derive(Debug)]
pub struct CniClient<'a> {
    node: &'a NodeHost,
    binary: PathBuf,
    confdir: PathBuf,
    cache_dir: PathBuf,
    cap_args: Option<String>,
    root: Option<&'a NodeRoot>,
}

impl<'a> CniClient<'a> {
    /// A client reading conflists from ipamd's `net.d` and caching results under the node's
    /// state directory.
    pub fn new(node: &'a NodeHost) -> Result<Self, SimNodeError> {
        let cache_dir = node.dir().join("cni-cache");
        std::fs::create_dir_all(&cache_dir).map_err(|source| SimNodeError::Io {
            context: format!("cannot create {}", cache_dir.display()),
            source,
        })?;
        Ok(Self {
            node,
            binary: binary()?,
            confdir: node.conflist_dir(),
            cache_dir,
            cap_args: None,
            root: None,
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

    /// Runs libcni (and so the plugins) in `root`'s mount namespace: the node's host paths
    /// (e.g. egress-cni's host-local `dataDir` under `/run/cni`) are the node's own.
    pub fn in_root(mut self, root: &'a NodeRoot) -> Self {
        self.root = Some(root);
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
    ) -> Result<CniOutcome, SimNodeError> {
        let mut cmd = match self.root {
            Some(root) => root.command(&self.binary),
            None => self.node.ns().command(&self.binary),
        };
        cmd.arg(verb).arg(network);
        cmd.env_clear()
            .env("PATH", test_support::netns::default_path())
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
    pub fn add(&self, network: &str, pod: &Pod) -> Result<CniOutcome, SimNodeError> {
        self.run("add", network, Some(pod))
    }

    /// `check`.
    pub fn check(&self, network: &str, pod: &Pod) -> Result<CniOutcome, SimNodeError> {
        self.run("check", network, Some(pod))
    }

    /// `del`.
    pub fn del(&self, network: &str, pod: &Pod) -> Result<CniOutcome, SimNodeError> {
        self.run("del", network, Some(pod))
    }

    /// `cached`: libcni's cached ADD result of the pod.
    pub fn cached(&self, network: &str, pod: &Pod) -> Result<CniOutcome, SimNodeError> {
        self.run("cached", network, Some(pod))
    }

    /// `validate`: VERSION of every plugin against the list's version.
    pub fn validate(&self, network: &str) -> Result<CniOutcome, SimNodeError> {
        self.run("validate", network, None)
    }
}

/// The source of the libcni front end.
fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("libcni-client/main.go")
}

/// The libcni front end, built on first use (or when its source is newer than the binary).
fn binary() -> Result<PathBuf, PrereqError> {
    if let Some(path) = std::env::var_os(CNICLIENT_BIN_ENV).map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(PrereqError::Missing {
                what: "cniclient",
                path,
                hint: format!("{CNICLIENT_BIN_ENV} points at a file that does not exist"),
            })
        };
    }
    static BUILD: Mutex<()> = Mutex::new(());
    let _serialized = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = prereqs::target_dir().join("go").join("cniclient");
    let source = source();
    let stale = match (out.metadata(), source.metadata()) {
        (Ok(bin), Ok(src)) => match (bin.modified(), src.modified()) {
            (Ok(b), Ok(s)) => s > b,
            _ => false,
        },
        (Err(_), _) => true,
        (Ok(_), Err(_)) => false,
    };
    if stale {
        build(&source, &out)?;
    }
    Ok(out)
}

/// Builds the libcni front end offline against Debian's libcni (GOPATH mode).
fn build(source: &Path, out: &Path) -> Result<(), PrereqError> {
    prereqs::require_tool("go", "apt-get install golang-go")?;
    if !Path::new(DEBIAN_GOPATH)
        .join("src/github.com/containernetworking/cni/libcni")
        .is_dir()
    {
        return Err(PrereqError::MissingTool {
            tool: "libcni sources".into(),
            hint: "apt-get install golang-github-appc-cni-dev".into(),
        });
    }
    let dir = source.parent().unwrap_or(Path::new("."));
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| go_build_error(format!("cannot create {}: {e}", parent.display())))?;
    let tmp = parent.join(format!(".cniclient.{}", std::process::id()));
    let gocache = prereqs::target_dir().join("go").join("cache");
    let result = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg("main.go")
        .current_dir(dir)
        .env("GO111MODULE", "off")
        .env("GOPATH", DEBIAN_GOPATH)
        .env("GOFLAGS", "")
        .env("GOCACHE", &gocache)
        .output()
        .map_err(|e| go_build_error(format!("cannot run go: {e}")))?;
    if !result.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(go_build_error(
            String::from_utf8_lossy(&result.stderr).trim().to_owned(),
        ));
    }
    std::fs::rename(&tmp, out)
        .map_err(|e| go_build_error(format!("cannot move the binary into place: {e}")))
}

fn go_build_error(reason: String) -> PrereqError {
    PrereqError::Build {
        what: "cniclient (tests/libcni-client)",
        reason,
    }
}
