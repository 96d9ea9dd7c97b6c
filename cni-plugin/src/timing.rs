//! Phase timing of one invocation: where the time of an ADD or DEL goes (config parsing, the
//! ipamd round trip, each netlink step), so optimisations are chosen from data.
//!
//! Marks are always recorded (one `clock_gettime` and a push per phase, ~15 per ADD, well under
//! a microsecond in total). At `pluginLogLevel` DEBUG the durations end up as one `phases` event
//! in the plugin log; with `AWS_CNI_TIMING=<absolute path>` one JSON line per invocation is
//! appended to that file as well (the benchmark driver `cnibench` reads it):
//!
//! ```json
//! {"command":"ADD","container_id":"…","ok":true,"t_main_ns":123,"t_end_ns":456,
//!  "vm_hwm_kib":2345,"phases":[["stdin",1200],["env_config",5300],…,["print",2100]]}
//! ```
//!
//! Times are CLOCK_MONOTONIC nanoseconds (the clock every process of the machine shares), so a
//! driver that notes the clock before spawning the plugin and after reaping it can tell
//! exec/startup (`t_main_ns - spawn`) and exit (`reaped - t_end_ns`) apart from the work.
//! Each phase's duration runs from the previous mark (or `t_main_ns`) to its own mark.
//! `vm_hwm_kib` is the process's peak resident set so far (`VmHWM`), read when the line is made.
//!
//! The recorder is per thread: the plugin runs on one thread (a current-thread runtime), and
//! tests that call the library from several threads do not mix their marks.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

/// Env var naming a file that gets one JSON line of phase durations per invocation.
pub const TIMING_ENV: &str = "AWS_CNI_TIMING";

/// Test-only env var: `AWS_CNI_TEST_ABORT_AT=<phase>` makes the plugin SIGKILL itself right
/// after the mark of that phase (a crash of the plugin between two steps). Honoured only by
/// builds with the `test-hooks` feature *and* debug assertions: no release build carries it.
pub const ABORT_AT_ENV: &str = "AWS_CNI_TEST_ABORT_AT";

/// Whether this build honours [`ABORT_AT_ENV`].
pub const ABORT_HOOK_COMPILED: bool = cfg!(all(feature = "test-hooks", debug_assertions));

/// Phases of one invocation, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phases {
    /// CLOCK_MONOTONIC at the start of `main`, in nanoseconds.
    pub t_main_ns: u64,
    /// `(phase, nanoseconds since the previous mark)`.
    pub phases: Vec<(&'static str, u64)>,
    /// CLOCK_MONOTONIC at the last mark.
    pub t_end_ns: u64,
}

thread_local! {
    static RECORDER: RefCell<Phases> = const {
        RefCell::new(Phases { t_main_ns: 0, phases: Vec::new(), t_end_ns: 0 })
    };
}

/// CLOCK_MONOTONIC now, in nanoseconds (the same clock `std::time::Instant` reads).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux, so
    // the call cannot fail (and on failure `ts` stays zero, which only spoils a measurement).
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Starts a fresh recording (first thing in `main`).
pub fn start() {
    let now = monotonic_ns();
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        r.t_main_ns = now;
        r.t_end_ns = now;
        r.phases.clear();
        r.phases.reserve(24);
    });
}

/// Ends phase `name` now. Without [`start`] on this thread the first phase is measured from
/// the first mark's predecessor being "now" (duration 0), which keeps library callers harmless.
pub fn mark(name: &'static str) {
    let now = monotonic_ns();
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        if r.t_main_ns == 0 {
            r.t_main_ns = now;
            r.t_end_ns = now;
        }
        let since = now.saturating_sub(r.t_end_ns);
        r.phases.push((name, since));
        r.t_end_ns = now;
    });
    #[cfg(all(feature = "test-hooks", debug_assertions))]
    abort_hook(name);
}

/// SIGKILLs the process when [`ABORT_AT_ENV`] names `phase`: no destructor, rollback or flush
/// runs, exactly as when the runtime or the OOM killer kills the plugin there.
#[cfg(all(feature = "test-hooks", debug_assertions))]
fn abort_hook(phase: &str) {
    if std::env::var_os(ABORT_AT_ENV).is_some_and(|v| v == phase) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// The phases recorded so far on this thread.
pub fn snapshot() -> Phases {
    RECORDER.with(|r| r.borrow().clone())
}

/// `name=µs` pairs for the log: `stdin=12 env_config=40 …`.
pub fn summary(p: &Phases) -> String {
    let mut s = String::with_capacity(p.phases.len() * 20);
    for (i, (name, ns)) in p.phases.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{name}={}", ns / 1_000);
    }
    s
}

fn json_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Peak resident set of this process since it was exec'd (`VmHWM` of /proc/self/status), KiB.
/// Unlike `ru_maxrss` it does not count the memory image the process had before `exec`.
pub fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The JSON line for `p` (with the newline).
pub fn to_json(
    p: &Phases,
    command: &str,
    container_id: &str,
    ok: bool,
    vm_hwm_kib: Option<u64>,
) -> String {
    let mut s = String::with_capacity(128 + p.phases.len() * 24);
    s.push_str("{\"command\":\"");
    json_escape(&mut s, command);
    s.push_str("\",\"container_id\":\"");
    json_escape(&mut s, container_id);
    let _ = write!(
        s,
        "\",\"ok\":{ok},\"t_main_ns\":{},\"t_end_ns\":{},",
        p.t_main_ns, p.t_end_ns
    );
    if let Some(kib) = vm_hwm_kib {
        let _ = write!(s, "\"vm_hwm_kib\":{kib},");
    }
    s.push_str("\"phases\":[");
    for (i, (name, ns)) in p.phases.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "[\"{name}\",{ns}]");
    }
    s.push_str("]}\n");
    s
}

/// Appends one JSON line to `path` with a single `write` (O_APPEND: lines of concurrent
/// invocations never interleave). Errors are returned for the caller to ignore or log; timing
/// must never fail a CNI operation.
pub fn append(path: &Path, line: &str) -> std::io::Result<()> {
    if !path.is_absolute() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{TIMING_ENV} must be an absolute file path, got {}",
                path.display()
            ),
        ));
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn marks_measure_consecutive_phases() {
        start();
        let t0 = snapshot().t_main_ns;
        std::thread::sleep(std::time::Duration::from_millis(2));
        mark("a");
        mark("b");
        let p = snapshot();
        assert_eq!(p.phases.len(), 2);
        assert_eq!(p.phases[0].0, "a");
        assert!(p.phases[0].1 >= 2_000_000, "{p:?}");
        assert!(p.phases[1].1 < p.phases[0].1, "{p:?}");
        let total: u64 = p.phases.iter().map(|(_, ns)| ns).sum();
        assert_eq!(p.t_end_ns - t0, total);
    }

    #[test]
    fn json_line_is_valid_json_with_every_phase() {
        let p = Phases {
            t_main_ns: 10,
            phases: vec![("stdin", 5), ("print", 7)],
            t_end_ns: 22,
        };
        let line = to_json(&p, "ADD", "c\"1", true, Some(1234));
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["command"], "ADD");
        assert_eq!(v["container_id"], "c\"1");
        assert_eq!(v["ok"], true);
        assert_eq!(v["t_main_ns"], 10);
        assert_eq!(v["t_end_ns"], 22);
        assert_eq!(v["vm_hwm_kib"], 1234);
        let without = to_json(&p, "DEL", "c", false, None);
        let w: serde_json::Value = serde_json::from_str(without.trim()).unwrap();
        assert!(w.get("vm_hwm_kib").is_none());
        assert!(vm_hwm_kib().unwrap() > 0);
        assert_eq!(v["phases"][1][0], "print");
        assert_eq!(v["phases"][1][1], 7);
        assert_eq!(summary(&p), "stdin=0 print=0");
    }

    #[test]
    fn relative_timing_path_is_refused() {
        let e = append(Path::new("timing.jsonl"), "{}\n").err().unwrap();
        assert!(e.to_string().contains(TIMING_ENV), "{e}");
    }

    #[test]
    fn monotonic_clock_matches_instant() {
        // The Instant brackets the two clock reads, so the clock's interval can never exceed
        // it, however long the scheduler stalls this thread.
        let i = std::time::Instant::now();
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(1));
        let b = monotonic_ns();
        let el = u64::try_from(i.elapsed().as_nanos()).unwrap();
        assert!(b > a && b - a >= 1_000_000 && b - a <= el, "{a} {b} {el}");
    }
}
