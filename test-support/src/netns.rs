//! Network namespaces owned by a test, and processes running inside them.
//!
//! [`Netns`] creates `vcni-<pid>-<counter>-<role>` with `ip netns add` and deletes it on drop
//! (also during a panic's unwinding), after killing whatever still runs inside; the names let
//! [`crate::cleanup`] find namespaces left by a killed test process. What is inside is read with
//! `ip -j` (module [`crate::ip`]), the same view an operator gets. [`NetnsProcess`] is a
//! long-running child started under `ip netns exec`, killed on drop. [`Netns::run_in`] runs a
//! closure on a fresh thread that entered the namespace (setns is per thread), e.g. to open a
//! listening socket there that can then be served from anywhere, or to call a library that
//! works on "the current namespace".

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cleanup;

/// Errors of the commands a test runs (`ip`, programs inside a namespace) and of the namespaces
/// and processes it owns.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A command could not be started at all.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr (trimmed).
        stderr: String,
    },
    /// `ip -j` printed something that is not JSON.
    #[error("`{command}` printed invalid JSON ({source}): {stdout}")]
    Json {
        /// The command line.
        command: String,
        /// The parse error.
        source: serde_json::Error,
        /// What it printed.
        stdout: String,
    },
    /// The namespace could not be entered.
    #[error("cannot enter network namespace {name}: {reason}")]
    Enter {
        /// The namespace name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A signal could not be delivered to a child process.
    #[error("cannot send {signal} to `{process}`: {errno}")]
    Signal {
        /// The child's command line.
        process: String,
        /// The signal.
        signal: Signal,
        /// Why.
        errno: nix::errno::Errno,
    },
    /// A termination signal arrived; nothing more is created.
    #[error("not creating {what}: the tests are shutting down after a signal")]
    ShuttingDown {
        /// What was about to be created.
        what: String,
    },
    /// The namespace is gone (deleted on purpose, e.g. to test DEL without it).
    #[error("network namespace {name} was deleted")]
    Deleted {
        /// The namespace path or name.
        name: String,
    },
    /// `ip netns del` failed.
    #[error("cannot delete network namespace {name} (see stderr)")]
    Delete {
        /// The namespace name.
        name: String,
    },
    /// A log file for a child process could not be opened.
    #[error("cannot open log file {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Standard search path handed to children whose environment is cleared.
pub fn default_path() -> String {
    std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion and returns its output, whatever its exit status.
pub fn run(cmd: &mut Command) -> Result<Output, CommandError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            command: describe(cmd),
            source,
        })
}

/// Runs `cmd` and returns its stdout, or an error naming the command and its stderr.
pub fn run_checked(cmd: &mut Command) -> Result<String, CommandError> {
    let out = run(cmd)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CommandError::Failed {
            command: describe(cmd),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// A network namespace created by a test and deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    /// Creates `vcni-<pid>-<n>-<role>`. `role` should be short and say what it is (`node`,
    /// `vpc`, `pod-a`).
    pub fn new(role: &str) -> Result<Self, CommandError> {
        cleanup::reap_stale_namespaces();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-{}-{n}-{role}",
            cleanup::NETNS_PREFIX,
            std::process::id()
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        cleanup::register_netns(&name);
        let ns = Self {
            name,
            deleted: false,
        };
        if cleanup::interrupted() {
            // Dropping `ns` deletes it again.
            return Err(CommandError::ShuttingDown {
                what: format!("network namespace {}", ns.name),
            });
        }
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip -n`, `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mount path, what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Whether the namespace still exists.
    pub fn exists(&self) -> bool {
        !self.deleted && self.path().exists()
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// A `Command` that runs `program` in this network namespace only, via `nsenter --net`.
    /// Unlike `ip netns exec` it keeps the caller's mount namespace and `/sys` (with its cgroup
    /// mounts), which container runtimes need.
    pub fn nsenter_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `program args` inside the namespace and returns its output (any exit status).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output, CommandError> {
        run(self.command(program).args(args))
    }

    /// Runs `program args` inside the namespace; fails unless it exits 0.
    pub fn exec_checked(&self, program: &str, args: &[&str]) -> Result<String, CommandError> {
        run_checked(self.command(program).args(args))
    }

    /// Sets a sysctl of this namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), CommandError> {
        self.exec_checked("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Reads a sysctl of this namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String, CommandError> {
        self.exec_checked("sysctl", &["-n", key])
            .map(|s| s.trim().to_owned())
    }

    /// Pings `dst` from inside the namespace (3 probes, 0.2 s apart, 1 s deadline per reply).
    pub fn ping(&self, dst: IpAddr) -> Result<PingOutcome, CommandError> {
        let out = self.exec(
            "ping",
            &["-n", "-c", "3", "-i", "0.2", "-W", "1", &dst.to_string()],
        )?;
        Ok(PingOutcome {
            ok: out.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }

    /// Runs `f` on a new thread that entered this namespace, and returns its result. Sockets
    /// created by `f` stay in the namespace when used from other threads. A panic in `f` (a
    /// failed assertion) goes on in the caller.
    pub fn run_in<F, R>(&self, f: F) -> Result<R, CommandError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = File::open(self.path()).map_err(|e| CommandError::Enter {
            name: self.name.clone(),
            reason: e.to_string(),
        })?;
        let name = self.name.clone();
        let handle = std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                // The thread ends after `f`, so it never needs to switch back.
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
                Ok::<R, String>(f())
            })
            .map_err(|e| CommandError::Enter {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        match handle.join() {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(reason)) => Err(CommandError::Enter { name, reason }),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Runs the future `f` builds on a new thread that entered this namespace, on a
    /// current-thread tokio runtime of its own (what a library working on "the current
    /// namespace" needs: netlink sockets, a gRPC client to a Unix socket opened from there).
    pub fn block_on_in<F, Fut, R>(&self, f: F) -> Result<R, CommandError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = R>,
        R: Send + 'static,
    {
        let name = self.name.clone();
        self.run_in(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(f()))
        })?
        .map_err(|e| CommandError::Enter {
            name,
            reason: format!("cannot build a tokio runtime: {e}"),
        })
    }

    /// Deletes the namespace now (e.g. to test DEL after the netns is gone).
    pub fn delete(&mut self) -> Result<(), CommandError> {
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        cleanup::unregister_netns(&self.name);
        if cleanup::delete_netns_by_name(&self.name) {
            Ok(())
        } else {
            Err(CommandError::Delete {
                name: self.name.clone(),
            })
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            self.deleted = true;
            cleanup::unregister_netns(&self.name);
            cleanup::delete_netns_by_name(&self.name);
        }
    }
}

/// Result of [`Netns::ping`].
#[derive(Debug, Clone)]
pub struct PingOutcome {
    /// Whether replies came back (ping exit 0).
    pub ok: bool,
    /// ping's output, for assertion messages.
    pub output: String,
}

/// A long-running process started inside a namespace with `ip netns exec` (which execs the
/// program, so the child's pid is the program's). Killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct NetnsProcess {
    child: Child,
    label: String,
    status: Option<ExitStatus>,
}

impl NetnsProcess {
    /// Starts `program args` in `netns` with exactly `env` (plus PATH), stdout and stderr
    /// appended to `output_log`.
    pub fn spawn(
        netns: &Netns,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        output_log: &Path,
    ) -> Result<Self, CommandError> {
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(output_log)
                .map_err(|source| CommandError::Log {
                    path: output_log.to_owned(),
                    source,
                })
        };
        let (out, err) = (open_log()?, open_log()?);
        let mut cmd = netns.command(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", default_path())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let label = describe(&cmd);
        let child = cmd.spawn().map_err(|source| CommandError::Spawn {
            command: label.clone(),
            source,
        })?;
        if let Ok(pid) = i32::try_from(child.id()) {
            cleanup::register_pid(pid);
        }
        let process = Self {
            child,
            label,
            status: None,
        };
        if cleanup::interrupted() {
            // Dropping `process` kills it.
            return Err(CommandError::ShuttingDown {
                what: process.label.clone(),
            });
        }
        Ok(process)
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// The command line it was started with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends `signal` (no-op if it already exited).
    pub fn signal(&mut self, signal: Signal) -> Result<(), CommandError> {
        if self.try_wait().is_some() {
            return Ok(());
        }
        match kill(Pid::from_raw(self.pid()), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(errno) => Err(CommandError::Signal {
                process: self.label.clone(),
                signal,
                errno,
            }),
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exited(status);
        }
        self.status
    }

    fn exited(&mut self, status: ExitStatus) {
        self.status = Some(status);
        cleanup::unregister_pid(self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap; returns the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Some(status);
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => {
                self.exited(status);
                Some(status)
            }
            Err(_) => None,
        }
    }

    /// A readable description of an exit status (`exit 0`, `signal 9`).
    pub fn describe_status(status: ExitStatus) -> String {
        match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => format!("{status}"),
        }
    }
}

impl Drop for NetnsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a text file (at most 64 KiB read), or a note that it is missing.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("({} does not exist)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
