//! Fault injection for the reliability campaigns (tests/tests/reliability): an ipamd that a
//! campaign starts and kills with SIGKILL at moments of its choosing while pods keep coming, a
//! sampler that reads the checkpoint file thousands of times meanwhile (it must parse every
//! time, kills during writes included), the plugin run with the test-only abort hook, and the
//! scale knob of the campaigns. The fault-injecting HTTP proxy (EC2, IMDS) is
//! [`FaultProxy`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cni::{CniOutcome, CniRequest};
use crate::node::{NodeHost, SimNodeError};
use test_support::netns::NetnsProcess;

pub use crate::faults_proxy::{Fault, FaultProxy, FaultRule, Match, ProxyError, ProxyStats};

/// Env var that switches the campaigns to their soak sizes (`make soak`).
pub(crate) const SOAK_ENV: &str = "VCNI_SOAK";
/// Env var fixing the campaigns' random seed (printed by every campaign).
pub(crate) const SEED_ENV: &str = "VCNI_SEED";

/// Whether the campaigns run at soak size.
pub fn soak() -> bool {
    std::env::var_os(SOAK_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `quick` normally, `soak` under `make soak`.
pub fn scale<T>(quick: T, soak_size: T) -> T {
    if soak() { soak_size } else { quick }
}

/// The seed of a campaign: `VCNI_SEED` when set, else a fresh random one.
pub fn seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// An ipamd on a node that the campaign starts, kills and restarts itself (the node was built
/// without one). Dropping it kills the running process.
#[derive(Debug)]
pub struct IpamdSupervisor<'a> {
    node: &'a NodeHost,
    process: Option<NetnsProcess>,
    /// Processes started.
    pub starts: u32,
    /// SIGKILLs delivered to a running ipamd.
    pub kills: u32,
    /// Time from spawn to ready of every start.
    pub ready_times: Vec<Duration>,
}

impl<'a> IpamdSupervisor<'a> {
    /// A supervisor for `node`'s ipamd (nothing started yet).
    pub fn new(node: &'a NodeHost) -> Self {
        Self {
            node,
            process: None,
            starts: 0,
            kills: 0,
            ready_times: Vec::new(),
        }
    }

    /// Starts ipamd and waits until it wrote a fresh conflist (the old one is removed first).
    pub fn start(&mut self, timeout: Duration) -> Result<Duration, SimNodeError> {
        if self.running() {
            return Ok(Duration::ZERO);
        }
        match fs::remove_file(self.node.conflist_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SimNodeError::Io {
                    context: "cannot remove the old conflist".into(),
                    source,
                });
            }
        }
        let started = Instant::now();
        self.process = Some(self.node.spawn_ipamd_process(&[])?);
        self.starts += 1;
        let conflist = self.node.conflist_path();
        loop {
            if let Ok(text) = fs::read_to_string(&conflist)
                && serde_json::from_str::<Value>(&text).is_ok()
            {
                let took = started.elapsed();
                self.ready_times.push(took);
                return Ok(took);
            }
            if let Some(status) = self.process.as_mut().and_then(NetnsProcess::try_wait) {
                self.process = None;
                return Err(SimNodeError::IpamdExited {
                    status: NetnsProcess::describe_status(status),
                    diag: self.node.diag(),
                });
            }
            if started.elapsed() > timeout {
                return Err(SimNodeError::NotReady {
                    conflist,
                    timeout,
                    diag: self.node.diag(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (no chance to clean up: a crash, an OOM kill) and reap.
    pub fn kill(&mut self) -> Result<(), SimNodeError> {
        let mut process = self.process.take().ok_or(SimNodeError::IpamdNotRunning)?;
        process.kill();
        self.kills += 1;
        Ok(())
    }

    /// Whether ipamd runs.
    pub fn running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.try_wait().is_none())
    }

    /// The running ipamd's pid.
    pub fn pid(&self) -> Option<i32> {
        self.process.as_ref().map(NetnsProcess::pid)
    }
}

/// What a [`CheckpointSampler`] saw.
#[derive(Debug, Clone, Default)]
pub struct SamplerReport {
    /// Reads of an existing file.
    pub reads: u64,
    /// Reads that parsed as a `vpc-cni-ipam/1` checkpoint.
    pub parsed: u64,
    /// Reads that did not (with the content, at most 10 kept).
    pub failures: Vec<String>,
    /// Times the file did not exist.
    pub missing: u64,
}

/// Reads and parses the checkpoint file in a loop on its own thread until stopped.
#[derive(Debug)]
pub struct CheckpointSampler {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<SamplerReport>>,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

/// Whether `text` is a checkpoint as ipamd writes it: `{"version":"vpc-cni-ipam/1",
/// "allocations":[{..."ipv4"...}]}`. Returns the reason when not.
pub(crate) fn check_checkpoint_text(text: &str) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if v["version"] != "vpc-cni-ipam/1" {
        return Err(format!("version is {}", v["version"]));
    }
    let allocations = v["allocations"]
        .as_array()
        .ok_or_else(|| "allocations is not an array".to_owned())?;
    for a in allocations {
        if a["ipv4"]
            .as_str()
            .and_then(|s| s.parse::<std::net::Ipv4Addr>().ok())
            .is_none()
            || a["containerID"].as_str().is_none_or(str::is_empty)
        {
            return Err(format!("allocation without IPv4 address or container: {a}"));
        }
    }
    Ok(allocations.clone())
}

impl CheckpointSampler {
    /// Starts sampling `path` every `every`.
    pub fn start(path: &Path, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(SamplerReport::default()));
        let (s, r, p) = (Arc::clone(&stop), Arc::clone(&report), path.to_owned());
        let thread = std::thread::Builder::new()
            .name("checkpoint-sampler".into())
            .spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    Self::sample_into(&p, &r);
                    std::thread::sleep(every);
                }
            })
            .ok();
        Self {
            stop,
            report,
            path: path.to_owned(),
            thread,
        }
    }

    fn sample_into(path: &Path, report: &Mutex<SamplerReport>) {
        let read = fs::read_to_string(path);
        let mut r = report.lock().unwrap_or_else(PoisonError::into_inner);
        match read {
            Ok(text) => {
                r.reads += 1;
                match check_checkpoint_text(&text) {
                    Ok(_) => r.parsed += 1,
                    Err(why) => {
                        if r.failures.len() < 10 {
                            r.failures.push(format!("{why}: {text:?}"));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => r.missing += 1,
            Err(e) => {
                if r.failures.len() < 10 {
                    r.failures.push(format!("cannot read: {e}"));
                }
            }
        }
    }

    /// One extra sample now (e.g. right after a kill).
    pub fn sample_now(&self) {
        Self::sample_into(&self.path, &self.report);
    }

    /// Stops sampling and returns what was seen.
    pub fn finish(mut self) -> SamplerReport {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for CheckpointSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Files in the checkpoint's directory that look like ipamd's temp files
/// (`.ipam.json.tmp-<pid>-<n>`): what a write killed between create and rename leaves.
pub fn checkpoint_temp_files(checkpoint: &Path) -> Vec<String> {
    let Some(dir) = checkpoint.parent() else {
        return Vec::new();
    };
    let Some(name) = checkpoint
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return Vec::new();
    };
    let prefix = format!(".{name}.tmp-");
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the plugin on `node` with the test-only hook that makes it SIGKILL itself right after
/// phase `phase` (`aws_cni::timing::ABORT_AT_ENV`). The outcome's status is `None` when the
/// plugin died there.
pub fn exec_plugin_aborting_at(
    node: &NodeHost,
    request: &CniRequest,
    phase: &str,
) -> Result<CniOutcome, SimNodeError> {
    let plugin = test_support::prereqs::aws_cni()?;
    let mut cmd = node.ns().command(&plugin);
    cmd.env_clear()
        .env("PATH", test_support::netns::default_path())
        .envs(request.env(node.cni_path()))
        .env(aws_cni::timing::ABORT_AT_ENV, phase);
    Ok(crate::cni::run_with_stdin(&mut cmd, &request.stdin)?)
}
