//! Last-resort cleanup of what the tests created: a process-wide registry of their network
//! namespaces, child processes and state directories, emptied on SIGINT/SIGTERM/SIGHUP (Ctrl-C
//! during `make demo` or `make test`), and a reaper for namespaces left behind by test
//! processes that died without running their destructors (SIGKILL, OOM).
//!
//! Normal teardown is done by the owners' `Drop`; this module only covers abnormal exits. It
//! touches nothing but namespaces named `vcni-<pid>-<n>-...` and the processes inside them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, OnceLock, PoisonError};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Prefix of every network namespace the tests create.
pub const NETNS_PREFIX: &str = "vcni";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether a termination signal arrived and `cleanup_all` is tearing everything down; new
/// resources must not be created any more (their creators check this after registering).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[derive(Debug, Default)]
struct Registry {
    netns: BTreeSet<String>,
    pids: BTreeSet<i32>,
    dirs: BTreeSet<PathBuf>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = registry().lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut guard)
}

/// Registers a namespace to delete if the process is interrupted.
pub fn register_netns(name: &str) {
    with_registry(|r| r.netns.insert(name.to_owned()));
}

/// Forgets a namespace registered with [`register_netns`].
pub fn unregister_netns(name: &str) {
    with_registry(|r| r.netns.remove(name));
}

/// Registers a child process to kill if the process is interrupted.
pub fn register_pid(pid: i32) {
    with_registry(|r| r.pids.insert(pid));
}

/// Forgets a child registered with [`register_pid`] (it was reaped).
pub fn unregister_pid(pid: i32) {
    with_registry(|r| r.pids.remove(&pid));
}

/// Registers a directory to remove if the process is interrupted.
pub fn register_dir(dir: &Path) {
    with_registry(|r| r.dirs.insert(dir.to_owned()));
}

/// Forgets a directory registered with [`register_dir`].
pub fn unregister_dir(dir: &Path) {
    with_registry(|r| r.dirs.remove(dir));
}

/// Kills every registered child, deletes every registered namespace (after killing what still
/// runs inside) and removes registered directories. Errors are reported on stderr and skipped.
fn cleanup_all() {
    // Set before emptying the registry: anything registered afterwards sees the flag and
    // removes itself.
    INTERRUPTED.store(true, Ordering::SeqCst);
    let (pids, netns, dirs) = with_registry(|r| {
        (
            std::mem::take(&mut r.pids),
            std::mem::take(&mut r.netns),
            std::mem::take(&mut r.dirs),
        )
    });
    for pid in pids {
        // ESRCH: already gone, which is what we want.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for name in netns {
        delete_netns_by_name(&name);
    }
    for dir in dirs {
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("vcni cleanup: cannot remove {}: {err}", dir.display());
        }
    }
}

/// Kills the processes inside namespace `name` and deletes it; whether it is gone. Used by the
/// `Drop` of [`crate::netns::Netns`] and by the reaper; errors go to stderr (nothing else can
/// be done).
pub fn delete_netns_by_name(name: &str) -> bool {
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Already gone is fine (a test deleted it on purpose).
            if !Path::new("/run/netns").join(name).exists() {
                return true;
            }
            eprintln!(
                "vcni cleanup: ip netns del {name} failed: {}",
                stderr.trim()
            );
            false
        }
        Err(err) => {
            eprintln!("vcni cleanup: cannot run ip netns del {name}: {err}");
            false
        }
    }
}

/// The pid encoded in a test namespace name `vcni-<pid>-<n>-<role>`.
fn owner_pid(netns_name: &str) -> Option<i32> {
    let rest = netns_name.strip_prefix(NETNS_PREFIX)?.strip_prefix('-')?;
    let (pid, rest) = rest.split_once('-')?;
    let (counter, _role) = rest.split_once('-')?;
    counter.parse::<u64>().ok()?;
    pid.parse::<i32>().ok().filter(|p| *p > 0)
}

/// Deletes test namespaces whose owning process no longer exists (left by a killed run),
/// killing what still runs inside them. Runs once per process.
pub fn reap_stale_namespaces() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if Path::new("/proc").join(pid.to_string()).exists() {
                continue;
            }
            if delete_netns_by_name(&name) {
                tracing::warn!(netns = %name, pid, "removed a namespace left by a dead test process");
            }
        }
    });
}

/// Installs (once) handlers for SIGINT, SIGTERM and SIGHUP that run `cleanup_all` and exit
/// with 128 + signal number, so an interrupted demo or test run leaves nothing behind.
pub fn install_signal_cleanup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<bool>();
        let spawned = std::thread::Builder::new()
            .name("vcni-signals".into())
            .spawn(move || signal_thread(ready_tx));
        match spawned {
            Ok(_) => {
                if ready_rx.recv() != Ok(true) {
                    eprintln!("vcni: signal cleanup is not installed");
                }
            }
            Err(err) => eprintln!("vcni: cannot start the signal thread: {err}"),
        }
    });
}

fn signal_thread(ready: std::sync::mpsc::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => {
            let _ = ready.send(false);
            return;
        }
    };
    let code = runtime.block_on(async move {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = ready.send(false);
            return None;
        };
        let _ = ready.send(true);
        let signo = tokio::select! {
            _ = int.recv() => 2,
            _ = term.recv() => 15,
            _ = hup.recv() => 1,
        };
        Some(128 + signo)
    });
    if let Some(code) = code {
        eprintln!("vcni: interrupted, removing namespaces and processes");
        cleanup_all();
        #[allow(clippy::exit)] // Exiting after cleanup is the point of this handler thread.
        std::process::exit(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_test_namespace_names() {
        assert_eq!(owner_pid("vcni-1234-7-node"), Some(1234));
        assert_eq!(owner_pid("vcni-1234-7-pod-a"), Some(1234));
        assert_eq!(owner_pid("vcni-x-7-node"), None);
        assert_eq!(owner_pid("acni-1234-7-host"), None);
        assert_eq!(owner_pid("vcni-1234"), None);
        assert_eq!(owner_pid("vcni-1234-x-node"), None);
    }
}
