//! Deployment tests (issue 5): metrics and introspection of a running ipamd on a simulated node,
//! the `ipamd probe` readiness check and the conflist install flow, `ipamd install-cni`, the
//! manifests in `conf/` (Kubernetes schemas, kustomize, what they promise vs what the code
//! reads and calls), the Dockerfile (hadolint, the CI build target, the image layout), and the
//! upstream plugins the image ships next to `aws-cni`.
//!
//! Node tests run inside namespaces the harness creates and deletes; they must run as root and
//! fail (never skip) when a tool is missing.
#![allow(clippy::unwrap_used)]

mod ec2;
mod image;
mod install;
mod manifests;
mod metrics;
mod plugins;
mod readiness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use harness::{NodeOptions, SimNode};
use test_support::netns::Netns;

/// Starts a node (and ipamd, unless the options say otherwise), panicking with logs on error.
pub fn start(options: NodeOptions) -> SimNode {
    SimNode::start(options).unwrap_or_else(|e| panic!("cannot start the simulated node: {e}"))
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    test_support::prereqs::workspace_dir()
}

/// A file of the workspace, read to a string.
pub fn read(rel: &str) -> String {
    let path = workspace().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl HttpAnswer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET over HTTP/1.0 from inside `ns` (the socket is created on a thread that entered it).
pub fn http_get_in(ns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<HttpAnswer> {
    let path = path.to_owned();
    ns.run_in(move || -> std::io::Result<HttpAnswer> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(HttpAnswer {
            status,
            headers,
            body: body.to_owned(),
        })
    })
    .unwrap_or_else(|e| panic!("cannot enter {}: {e}", ns.name()))
}

/// Runs `ipamd <args>` inside `ns` with exactly `env` (plus PATH).
pub fn ipamd_in(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = test_support::prereqs::ipamd().unwrap();
    let mut cmd = ns.command(&bin);
    cmd.args(args)
        .env_clear()
        .env("PATH", test_support::netns::default_path())
        .envs(env.iter().copied());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {} {args:?}: {e}", bin.display()))
}

/// Runs a tool that must exist, failing with an install hint when it does not.
pub fn tool(program: &str, hint: &str, args: &[&str], cwd: &Path) -> Output {
    test_support::prereqs::require_tool(program, hint).unwrap_or_else(|e| panic!("{e}"));
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// stdout + stderr of `out`, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A tool `make deps` installs from PyPI into the project's venv (`kubernetes-validate`,
/// `hadolint`); panics naming the fix when it is missing.
pub fn pip_tool(name: &str, package: &str) -> PathBuf {
    test_support::prereqs::venv_tool(name, package).unwrap_or_else(|e| panic!("{e}"))
}

/// YAML documents as JSON values (PyYAML of the project's venv: kubernetes-validate depends
/// on it).
pub fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    let python = pip_tool("python3", "kubernetes-validate");
    let mut child = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} (make deps): {e}", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cannot parse YAML (is PyYAML installed? make deps): {}",
        describe(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
