//! Running a program the way a container runtime runs a CNI plugin, and timing it: spawn with a
//! clean environment, the request on stdin, stdout and stderr collected, then `wait4` for the
//! exit status. The latency is CLOCK_MONOTONIC from just before the
//! spawn to just after the reap (what bench-ptp.sh measures as "spawn → exit").
//!
//! Children start in the network namespace of the calling thread: the driver's worker threads
//! [`enter_netns`] the simulated node first, so plugins run there without `ip netns exec` (which
//! would add a mount namespace and a remount of /sys to every call).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

use super::BenchError;

/// CLOCK_MONOTONIC now, in nanoseconds (the clock the plugin's phase marks use).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC exists on every Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Moves the calling thread into the network namespace at `path` for the rest of its life
/// (worker threads of the driver; they end after their batch of calls).
pub(crate) fn enter_netns(path: &Path) -> Result<(), BenchError> {
    let file = File::open(path).map_err(|source| BenchError::Io {
        context: format!("cannot open network namespace {}", path.display()),
        source,
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| BenchError::Io {
        context: format!("cannot enter network namespace {}", path.display()),
        source: e.into(),
    })
}

/// What one timed execution produced.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    /// CLOCK_MONOTONIC just before the spawn.
    pub t_spawn_ns: u64,
    /// CLOCK_MONOTONIC just after the reap.
    pub t_reaped_ns: u64,
    /// Exit code, or 128 + signal number when killed by a signal.
    pub status: i32,
    /// stdout.
    pub stdout: Vec<u8>,
    /// stderr.
    pub stderr: Vec<u8>,
}

impl ExecOutcome {
    /// Spawn → reap, in nanoseconds.
    pub fn latency_ns(&self) -> u64 {
        self.t_reaped_ns.saturating_sub(self.t_spawn_ns)
    }

    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// stdout or, when empty, stderr, trimmed to `max` bytes (for error messages).
    pub fn output_excerpt(&self, max: usize) -> String {
        let raw = if self.stdout.iter().all(u8::is_ascii_whitespace) {
            &self.stderr
        } else {
            &self.stdout
        };
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        match text.char_indices().nth(max) {
            Some((i, _)) => format!("{}…", &text[..i]),
            None => text.to_owned(),
        }
    }
}

/// Spawns `program args` with exactly `env`, writes `stdin`, collects both outputs and reaps
/// the child with `wait4`.
pub(crate) fn exec_timed(
    program: &Path,
    args: &[&str],
    env: &[(String, String)],
    stdin: &[u8],
) -> Result<ExecOutcome, BenchError> {
    let spawn_err = |source| BenchError::Spawn {
        program: program.display().to_string(),
        source,
    };
    let t_spawn_ns = monotonic_ns();
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let pid = child.id();
    if let Some(mut input) = child.stdin.take() {
        // A small request fits the pipe buffer; a program that exits without reading it closes
        // the pipe, which is its answer, not a driver failure.
        match input.write_all(stdin) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
            Err(e) => return Err(spawn_err(e)),
        }
    }
    let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
        (Some(out), Some(err)) => read_both(out, err).map_err(spawn_err)?,
        _ => (Vec::new(), Vec::new()),
    };
    let status = wait4(pid).map_err(spawn_err)?;
    let t_reaped_ns = monotonic_ns();
    // `child` was reaped by wait4 above; dropping the handle neither waits nor kills.
    drop(child);
    Ok(ExecOutcome {
        t_spawn_ns,
        t_reaped_ns,
        status,
        stdout,
        stderr,
    })
}

/// Reads two pipes to EOF without letting either fill up (poll on both).
fn read_both(
    mut out: impl Read + AsRawFd,
    mut err: impl Read + AsRawFd,
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut bufs = (Vec::with_capacity(2048), Vec::new());
    let mut open = [true, true];
    let mut chunk = [0u8; 8192];
    while open[0] || open[1] {
        let mut fds = [
            libc::pollfd {
                fd: if open[0] { out.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if open[1] { err.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs that outlives the call; negative
        // fds are ignored by poll(2).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (i, fd) in fds.iter().enumerate() {
            if !open[i] || fd.revents == 0 {
                continue;
            }
            let read = if i == 0 {
                out.read(&mut chunk)
            } else {
                err.read(&mut chunk)
            };
            match read {
                Ok(0) => open[i] = false,
                Ok(k) => {
                    let buf = if i == 0 { &mut bufs.0 } else { &mut bufs.1 };
                    buf.extend_from_slice(&chunk[..k]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(bufs)
}

/// Reaps `pid`; returns its exit code, or 128 + the signal that killed it. (Its `ru_maxrss`
/// is not used: it includes the memory image the child had before `exec`, which for a child
/// spawned by the driver is the driver's; `peak-rss` measures plugins instead.)
fn wait4(pid: u32) -> std::io::Result<i32> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::other(format!("pid {pid} out of range")))?;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is valid, writable and outlives the call; a null rusage pointer is
        // allowed; `pid` is our own unreaped child.
        let r = unsafe { libc::wait4(pid, &raw mut status, 0, std::ptr::null_mut()) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            255
        };
        return Ok(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_collects_output_and_status() {
        let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
        let out = exec_timed(
            Path::new("/bin/sh"),
            &["-c", "cat; echo err >&2; exit 3"],
            &env,
            b"hello",
        )
        .unwrap();
        assert_eq!(out.status, 3);
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, b"err\n");
        assert!(out.t_reaped_ns > out.t_spawn_ns);
        assert_eq!(out.output_excerpt(3), "hel…");
    }

    #[test]
    fn large_stderr_does_not_deadlock() {
        let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
        let out = exec_timed(
            Path::new("/bin/sh"),
            &["-c", "head -c 300000 /dev/zero >&2; echo done"],
            &env,
            b"",
        )
        .unwrap();
        assert!(out.success());
        assert_eq!(out.stderr.len(), 300_000);
        assert_eq!(out.stdout, b"done\n");
    }

    #[test]
    fn missing_program_names_it() {
        let e = exec_timed(Path::new("/nonexistent/plugin"), &[], &[], b"")
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/plugin"), "{e}");
    }
}
