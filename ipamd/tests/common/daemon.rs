//! Running the real `ipamd` binary inside a node namespace (its gRPC client is
//! `test_support::ipamd_client`).

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::netns::Netns;

/// Files of one ipamd instance.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run").join("ipamd.sock")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("run").join("ipam.json")
    }
    pub fn confdir(&self) -> PathBuf {
        self.dir.join("net.d")
    }
    pub fn conflist(&self) -> PathBuf {
        self.confdir().join("10-aws.conflist")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log").join("ipamd.log")
    }
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// An ipamd process, killed on drop.
#[derive(Debug)]
pub struct Ipamd {
    pub child: Child,
    pub paths: Paths,
}

pub fn command(ns: &Netns, paths: &Paths, imds_endpoint: &str, extra: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_ipamd")])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("ENABLE_IMDS_ONLY_MODE", "true")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_endpoint)
        .env("AWS_VPC_K8S_CNI_IPAMD_SOCKET", paths.socket())
        .env("AWS_VPC_K8S_CNI_BACKING_STORE", paths.checkpoint())
        .env("HOST_CNI_CONFDIR_PATH", paths.confdir())
        .env("AWS_VPC_K8S_CNI_LOG_FILE", paths.log())
        .env(
            "AWS_VPC_K8S_PLUGIN_LOG_FILE",
            paths.dir.join("log").join("plugin.log"),
        )
        .env("MY_NODE_NAME", "node-1")
        .env("AWS_REGION", "us-west-2")
        .env("IP_COOLDOWN_PERIOD", "0");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

impl Ipamd {
    pub fn start(ns: &Netns, paths: &Paths, imds_endpoint: &str, extra: &[(&str, &str)]) -> Self {
        let child = command(ns, paths, imds_endpoint, extra).spawn().unwrap();
        Self {
            child,
            paths: paths.clone(),
        }
    }

    /// Waits for the conflist (written only once ready).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.paths.conflist().exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "ipamd exited with {status} before it was ready; log:\n{}",
                    self.paths.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ipamd not ready after {timeout:?}; log:\n{}",
                self.paths.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ipamd did not exit; log:\n{}",
                self.paths.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ipamd {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
