//! [`NodeRoot`]: the host paths of one simulated node. On EKS, containerd, kubelet and the
//! aws-node pod share the node's filesystem: `/opt/cni/bin`, `/etc/cni/net.d`,
//! `/var/run/aws-node`, `/var/log/aws-routed-eni`, `/run/xtables.lock`, ... Several simulated
//! nodes share this machine, so each gets a mount namespace of its own in which those paths are
//! bind mounts of per-node directories; the machine's own paths are never written.
//!
//! A holder process (`sleep`, in the node's network namespace) keeps the mount namespace alive;
//! [`NodeRoot::command`] runs a program in both namespaces (`nsenter --net --mount`), so every
//! process of the node (containerd with its shims, runc and the CNI plugins it runs, kubelet,
//! kube-proxy) sees the same files, and hostPath volumes resolve to the node's directories. The
//! namespace's mounts are private: nothing made in it (pod network namespaces, kubelet's volume
//! mounts) shows outside, and all of it goes when its last process exits.
//!
//! A bind mount needs its mount point; mount points missing on the machine are created when the
//! first root of this process needs them and removed (only if still empty) when the last goes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{SimNodeError, io_err};
use test_support::cleanup;
use test_support::netns::{Netns, tail};

/// One bind mount of a node's root: `source` (a file or directory that exists) over `target`.
#[derive(Debug, Clone)]
pub struct Bind {
    /// What is mounted.
    pub source: PathBuf,
    /// Where, in the node's mount namespace.
    pub target: PathBuf,
}

impl Bind {
    /// `source` over `target`.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            target: target.into(),
        }
    }
}

/// The node's private mount namespace. Dropping it kills the holder: the namespace goes once the
/// processes started in it are gone (drop it after them).
#[derive(Debug)]
pub struct NodeRoot {
    holder: Option<Child>,
    netns: PathBuf,
    dir: tempfile::TempDir,
}

/// Mount points this process created on the machine, and how many roots use them.
static MOUNT_POINTS: Mutex<(usize, Vec<PathBuf>)> = Mutex::new((0, Vec::new()));

impl NodeRoot {
    /// Creates the mount namespace of a node whose network namespace is `ns`, with `binds`
    /// (sources must exist; a file source needs a file target).
    pub fn create(ns: &Netns, binds: &[Bind]) -> Result<Self, SimNodeError> {
        Self::create_with(ns, binds, "private")
    }

    /// [`NodeRoot::create`], but the node's mounts follow the machine's (propagation `slave`):
    /// a network namespace a test creates later under `/run/netns` shows in the node too, so
    /// a runtime on the node (libcni through `cniclient`) can hand it to plugins, while the
    /// node's own bind mounts still never show outside.
    pub fn create_following(ns: &Netns, binds: &[Bind]) -> Result<Self, SimNodeError> {
        Self::create_with(ns, binds, "slave")
    }

    fn create_with(ns: &Netns, binds: &[Bind], propagation: &str) -> Result<Self, SimNodeError> {
        let dir = tempfile::Builder::new()
            .prefix("vcni-noderoot-")
            .tempdir()
            .map_err(io_err("cannot create the node root's directory"))?;
        cleanup::register_dir(dir.path());
        for b in binds {
            if !b.source.exists() {
                return Err(io_err(format!("bind source {}", b.source.display()))(
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
        }
        enter_mount_points(binds)?;
        let ready = dir.path().join("ready");
        let mut script = String::from("set -e\n");
        for b in binds {
            script.push_str(&format!(
                "mount --bind '{}' '{}'\n",
                b.source.display(),
                b.target.display()
            ));
        }
        script.push_str(&format!(
            "touch '{}'\nexec sleep infinity\n",
            ready.display()
        ));
        let log = dir.path().join("holder.log");
        let out = fs::File::create(&log).map_err(io_err("cannot create the holder's log"))?;
        let err = out.try_clone().map_err(io_err("cannot clone the log"))?;
        let mut cmd = ns.nsenter_command("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            propagation,
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        let spawned = cmd.spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                leave_mount_points();
                return Err(io_err("cannot start the node root's holder")(e));
            }
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            cleanup::register_pid(pid);
        }
        let mut root = Self {
            holder: Some(child),
            netns: ns.path().to_owned(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            let exited = root
                .holder
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                return Err(SimNodeError::Io {
                    context: format!(
                        "the node's mount namespace was not set up ({}): {}",
                        exited.map_or_else(|| "timed out".to_owned(), |s| s.to_string()),
                        tail(&log, 10)
                    ),
                    source: std::io::Error::other("node root"),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(root)
    }

    /// A scratch directory of this root (for bind sources), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `Command` running `program` in the node's network and mount namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let pid = self.holder.as_ref().map_or(0, Child::id);
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg(format!("--mount=/proc/{pid}/ns/mnt"))
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Drop for NodeRoot {
    fn drop(&mut self) {
        if let Some(mut child) = self.holder.take() {
            let _ = child.kill();
            let _ = child.wait();
            if let Ok(pid) = i32::try_from(child.id()) {
                cleanup::unregister_pid(pid);
            }
        }
        cleanup::unregister_dir(self.dir.path());
        leave_mount_points();
    }
}

/// Creates the targets of `binds` missing on the machine (remembered for removal) and counts
/// one more user.
fn enter_mount_points(binds: &[Bind]) -> Result<(), SimNodeError> {
    let mut points = MOUNT_POINTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    points.0 += 1;
    for b in binds {
        if let Err(e) = create_mount_point(&b.target, b.source.is_dir(), &mut points.1) {
            drop(points);
            leave_mount_points();
            return Err(io_err(format!(
                "cannot create the mount point {}",
                b.target.display()
            ))(e));
        }
    }
    Ok(())
}

/// Creates `target` (a directory or an empty file) and its missing parents, recording each
/// path created in `created`, parents first.
fn create_mount_point(target: &Path, dir: bool, created: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if target.exists() {
        return Ok(());
    }
    if let Some(parent) = target.parent() {
        create_mount_point(parent, true, created)?;
    }
    if dir {
        fs::create_dir(target)?;
    } else {
        fs::File::create(target)?;
    }
    created.push(target.to_owned());
    Ok(())
}

/// One user fewer; the last removes the mount points it created, if still empty.
fn leave_mount_points() {
    let mut points = MOUNT_POINTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    points.0 = points.0.saturating_sub(1);
    if points.0 > 0 {
        return;
    }
    for p in points.1.drain(..).rev() {
        if p.is_dir() {
            let _ = fs::remove_dir(&p);
        } else if fs::metadata(&p).is_ok_and(|m| m.len() == 0) {
            let _ = fs::remove_file(&p);
        }
    }
}
