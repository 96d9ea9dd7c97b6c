//! `peak-rss <program> [args…]`: runs the program with this process's stdin, stdout, stderr and
//! environment, then appends `peak-rss-kib=<n>` (the program's peak resident set, including any
//! children it waited for) as the last line of stderr and exits with the program's status.
//!
//! Why a helper: `ru_maxrss` of a process also counts the memory image it had before `exec`,
//! and a child spawned by a large process (the benchmark driver) starts out sharing the
//! driver's. Started from this small static program instead, a plugin's `ru_maxrss` is its own
//! peak (this helper's few hundred KiB are the floor of the figure).

use std::io::Write;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: peak-rss <program> [args…]");
        return ExitCode::from(2);
    };
    let child = match Command::new(&program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peak-rss: cannot run {}: {e}", program.to_string_lossy());
            return ExitCode::from(127);
        }
    };
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        eprintln!("peak-rss: pid out of range");
        return ExitCode::from(127);
    };
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable and outlive the call; `pid` is our
        // own unreaped child.
        let r = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
        if r >= 0 {
            break;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            eprintln!(
                "peak-rss: wait4 failed: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::from(127);
        }
    }
    let _ = writeln!(std::io::stderr(), "peak-rss-kib={}", usage.ru_maxrss);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}
