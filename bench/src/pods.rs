//! Pod sandboxes for the benchmark: fresh network namespaces, named like every harness namespace
//! (`vcni-<pid>-<n>-<role>`) and registered for the harness's signal cleanup, so an interrupted
//! run leaves nothing behind. Made in one `ip -batch` (untimed, before a latency round), or one
//! at a time in process the way runtimes make them (inside a timed cycle); removed one at a time
//! in process the way runtimes remove them after DEL (timed), and whatever is left in one
//! `ip -batch` when the [`PodSet`] is dropped.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use rand::Rng;

use super::BenchError;
use test_support::cleanup;

/// Counter of the benchmark's namespace names; starts far from the harness's own counter.
static NEXT: AtomicU64 = AtomicU64::new(1_000_000);

/// One pod of a round: its sandbox and the identity a kubelet would pass.
#[derive(Debug, Clone)]
pub struct BenchPod {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `CNI_CONTAINERID` (64 hex characters, as runtimes make them).
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
}

impl BenchPod {
    /// `CNI_ARGS` as the kubelet's CRI sends it (both plugins get the same).
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.namespace, self.name, self.container_id
        )
    }
}

/// Runs `ip [-n ns] -force -batch -` with `lines` on stdin.
pub(crate) fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), BenchError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let what = format!(
        "ip{} -batch ({} lines, first: {})",
        netns.map(|n| format!(" -n {n}")).unwrap_or_default(),
        lines.len(),
        lines[0]
    );
    let mut child = cmd.spawn().map_err(|source| BenchError::Spawn {
        program: "ip".into(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut text = lines.join("\n");
        text.push('\n');
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| BenchError::Io {
                context: format!("writing to {what}"),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| BenchError::Io {
        context: format!("waiting for {what}"),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Command {
            command: what,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Network namespaces made together and deleted together.
#[derive(Debug)]
pub(crate) struct PodSet {
    names: Vec<String>,
}

impl PodSet {
    /// Creates `count` namespaces whose names end in `-<role>`.
    pub(crate) fn create(count: usize, role: &str) -> Result<Self, BenchError> {
        let set = Self::reserve(count, role)?;
        let lines: Vec<String> = set.names.iter().map(|n| format!("netns add {n}")).collect();
        ip_batch(None, &lines)?;
        Ok(set)
    }

    /// Names and registers `count` namespaces without making them ([`PodSet::create_one`]
    /// makes each). `/run/netns` must exist: any earlier `ip netns add` made it.
    pub(crate) fn reserve(count: usize, role: &str) -> Result<Self, BenchError> {
        cleanup::install_signal_cleanup();
        cleanup::reap_stale_namespaces();
        let pid = std::process::id();
        let names: Vec<String> = (0..count)
            .map(|_| {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                format!("{}-{pid}-{n}-{role}", cleanup::NETNS_PREFIX)
            })
            .collect();
        for n in &names {
            cleanup::register_netns(n);
        }
        // From here on, dropping the set removes whatever the batch managed to create.
        let set = Self { names };
        if cleanup::interrupted() {
            return Err(BenchError::Interrupted);
        }
        Ok(set)
    }

    /// Makes namespace `i` as runtimes do (containerd's `netns.NewNetNS`): a thread unshares
    /// its network namespace and bind-mounts it on `/run/netns/<name>`, then ends.
    pub(crate) fn create_one(&self, i: usize) -> Result<(), BenchError> {
        let path = self.path(i);
        let io = |what: &str, source: std::io::Error| BenchError::Io {
            context: format!("cannot {what} {}", path.display()),
            source,
        };
        // Mode 0 and O_EXCL, as `ip netns add` makes the mount point.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
            .map_err(|e| io("create", e))?;
        let mounted = std::thread::scope(|s| {
            s.spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET)?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
            })
            .join()
        });
        match mounted {
            Ok(Ok(())) => Ok(()),
            outcome => {
                let _ = std::fs::remove_file(&path);
                Err(match outcome {
                    Ok(Err(e)) => io("make a network namespace on", e.into()),
                    _ => BenchError::Invalid(format!(
                        "the thread making {} panicked",
                        path.display()
                    )),
                })
            }
        }
    }

    /// Removes namespace `i` as runtimes do after DEL (containerd's `netns.Remove`, CRI-O's
    /// `UnmountNamespace`): lazy unmount of the bind mount, then unlink. The kernel tears the
    /// namespace down once nothing else holds it, asynchronously.
    pub(crate) fn remove(&self, i: usize) -> Result<(), BenchError> {
        let path = self.path(i);
        umount2(&path, MntFlags::MNT_DETACH).map_err(|e| BenchError::Io {
            context: format!("cannot unmount {}", path.display()),
            source: e.into(),
        })?;
        std::fs::remove_file(&path).map_err(|source| BenchError::Io {
            context: format!("cannot remove {}", path.display()),
            source,
        })
    }

    /// How many namespaces.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// The name of namespace `i`.
    pub(crate) fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The bind-mount path of namespace `i` (`CNI_NETNS`).
    pub(crate) fn path(&self, i: usize) -> PathBuf {
        Path::new("/run/netns").join(&self.names[i])
    }

    /// Pods over these namespaces, named `<prefix>-<i>` in Kubernetes namespace `namespace`.
    pub(crate) fn pods(&self, namespace: &str, prefix: &str) -> Vec<BenchPod> {
        let mut rng = rand::rng();
        (0..self.names.len())
            .map(|i| {
                let id: [u8; 32] = rng.random();
                BenchPod {
                    namespace: namespace.to_owned(),
                    name: format!("{prefix}-{i}"),
                    container_id: hex::encode(id),
                    netns: self.path(i),
                }
            })
            .collect()
    }
}

impl Drop for PodSet {
    fn drop(&mut self) {
        let existing: Vec<&String> = self
            .names
            .iter()
            .filter(|n| Path::new("/run/netns").join(n).exists())
            .collect();
        let lines: Vec<String> = existing.iter().map(|n| format!("netns del {n}")).collect();
        if ip_batch(None, &lines).is_err() {
            // The batch stops at the first failure; fall back to one at a time.
            for n in &existing {
                cleanup::delete_netns_by_name(n);
            }
        }
        for n in &self.names {
            cleanup::unregister_netns(n);
        }
    }
}
