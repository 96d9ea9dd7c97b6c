//! Removing everything a [`Containerd`] made, also after a failed test: its sandboxes (through
//! CRI first, then by force), the daemon, its shims and pod processes, the pod namespaces, the
//! mounts under its directory, its cgroups, go-cni's cache entries, and the machine-wide
//! directories containerd and libcni create when the harness was the one to create them.
//! Errors are reported on stderr and skipped: teardown carries on.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Containerd;
use test_support::cleanup;

/// go-cni's result cache (containerd 1.6 has no setting to move it).
const LIBCNI_CACHE: &str = "/var/lib/cni";
/// Where the runc shims put their sockets (a constant of containerd 1.6's shim code).
const SHIM_SOCKETS: &str = "/run/containerd";
/// The cgroup filesystem root.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Machine-wide directories that did not exist before the first containerd of this process.
fn created_by_us() -> &'static Vec<PathBuf> {
    static CREATED: OnceLock<Vec<PathBuf>> = OnceLock::new();
    CREATED.get_or_init(|| {
        [
            format!("{LIBCNI_CACHE}/results"),
            LIBCNI_CACHE.to_owned(),
            format!("{SHIM_SOCKETS}/s"),
            SHIM_SOCKETS.to_owned(),
        ]
        .into_iter()
        .map(PathBuf::from)
        .filter(|p| !p.exists())
        .collect()
    })
}

/// Notes which shared directories exist before any containerd starts.
pub(super) fn note_shared_dirs() {
    created_by_us();
}

/// Containerds alive in this process: the shared directories are removed only when the last one
/// goes (another may be about to create a shim socket or a cache entry there).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

pub(super) fn enter() {
    ACTIVE.fetch_add(1, Ordering::SeqCst);
}

fn warn(what: &str, detail: impl std::fmt::Display) {
    eprintln!("vcni containerd teardown: {what}: {detail}");
}

pub(super) fn run(ctd: &mut Containerd) {
    let mut netns: BTreeSet<PathBuf> = BTreeSet::new();
    let running = ctd
        .child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
    if running {
        // Sandboxes still there after a failed test: remember their namespaces, then let CRI
        // stop and remove them (DEL through the plugin, as kubelet's cleanup would).
        if let Ok(ids) = ctd.pod_ids() {
            for id in &ids {
                if let Ok(path) = ctd.pod_netns(id) {
                    netns.insert(path);
                }
            }
            if !ids.is_empty()
                && let Err(e) = ctd.crictl_ok(&["rmp", "--force", "--all"])
            {
                warn("removing the sandboxes", e);
            }
        }
    }
    stop_daemon(ctd);
    kill_leftovers(ctd);
    // Every namespace containerd handed to the plugin (failed sandboxes included).
    for call in ctd.cni_calls() {
        if !call.netns().is_empty() {
            netns.insert(PathBuf::from(call.netns()));
        }
    }
    for path in netns {
        if path.exists()
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            cleanup::delete_netns_by_name(name);
        }
    }
    unmount_under(ctd.dir());
    remove_cgroups(ctd.cgroup_parent());
    remove_cache_entries(ctd);
    cleanup::unregister_dir(ctd.dir());
    if ACTIVE.fetch_sub(1, Ordering::SeqCst) == 1 {
        for dir in created_by_us() {
            // remove_dir refuses non-empty directories: nothing of anyone else's is lost.
            let _ = fs::remove_dir(dir);
        }
    }
}

fn stop_daemon(ctd: &mut Containerd) {
    let Some(mut child) = ctd.child.take() else {
        return;
    };
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    if matches!(child.try_wait(), Ok(None)) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            warn("containerd ignored SIGTERM for 10 s", "killed");
            let _ = child.kill();
        }
    }
    let _ = child.wait();
    cleanup::unregister_pid(pid);
}

/// Pids of every process in the cgroup subtree `parent` of every hierarchy.
fn cgroup_pids(parent: &str) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    for dir in cgroup_dirs(parent) {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
            if let Ok(entries) = fs::read_dir(&d) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
    }
    pids
}

/// `parent` in each mounted hierarchy: `/sys/fs/cgroup/<parent>` (cgroup v2) and
/// `/sys/fs/cgroup/<controller>/<parent>` (v1), those that exist.
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    let mut dirs = vec![Path::new(CGROUP_ROOT).join(rel)];
    if let Ok(entries) = fs::read_dir(CGROUP_ROOT) {
        dirs.extend(entries.flatten().map(|e| e.path().join(rel)));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Shims serving this containerd (their command line names its socket) and every process in
/// its pods' cgroups: SIGKILL, by pid.
fn kill_leftovers(ctd: &Containerd) {
    let socket = ctd.socket();
    let mut pids = cgroup_pids(ctd.cgroup_parent());
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
            if is_shim && args.iter().any(|a| *a == socket.as_os_str().as_bytes()) {
                pids.insert(pid);
            }
        }
    }
    for pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    // Give the kernel a moment to reap them before the cgroups are removed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cgroup_pids(ctd.cgroup_parent()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lazily unmounts every mount point under `dir` (sandbox rootfs, shm), deepest first.
fn unmount_under(dir: &Path) {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            warn(&format!("cannot unmount {}", p.display()), e);
        }
    }
}

/// Removes the cgroup subtree `parent` in every hierarchy, deepest first.
fn remove_cgroups(parent: &str) {
    for dir in cgroup_dirs(parent) {
        let mut all = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&d) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            all.push(d);
        }
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in all {
            if let Err(e) = fs::remove_dir(&d)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn(&format!("cannot remove cgroup {}", d.display()), e);
            }
        }
    }
}

/// go-cni's cached results of this containerd's sandboxes (`<network>-<id>-<ifname>`); DEL
/// removes them, so only a failed test leaves some.
fn remove_cache_entries(ctd: &Containerd) {
    let ids: BTreeSet<String> = ctd
        .cni_calls()
        .iter()
        .map(|c| c.container_id().to_owned())
        .filter(|id| id.len() == 64)
        .collect();
    let results = Path::new(LIBCNI_CACHE).join("results");
    let Ok(entries) = fs::read_dir(&results) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ids.iter().any(|id| name.contains(id.as_str())) {
            let _ = fs::remove_file(e.path());
        }
    }
}
