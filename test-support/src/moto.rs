//! moto's EC2 server as a child process inside a test's namespace. The launcher
//! (`moto_server.py` and the `prefix_delegation.py`, `ipv6_prefixes.py` and `ec2_latency.py` it
//! imports, embedded here and written into the caller's directory) runs moto unmodified except
//! where moto 5.2 differs from EC2 in ways the tests depend on, or lacks an EC2 feature ipamd uses
//! (see their docstrings and docs/moto-ec2-extensions.md). The interpreter is the pinned one of
//! [`prereqs::python_with_moto`]. Killed on drop.
//!
//! For benchmarks, [`MotoServer::start_with`] can make moto answer in EC2's time
//! ([`Ec2Latency`]) and log every EC2 call, which [`ec2_calls`] counts by action.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::netns::{CommandError, Netns, NetnsProcess, tail};
use crate::prereqs::{self, PrereqError};

/// The launcher's files: its name in the directory and its source.
const LAUNCHER: [(&str, &str); 4] = [
    ("moto_server.py", include_str!("moto_server.py")),
    ("prefix_delegation.py", include_str!("prefix_delegation.py")),
    ("ipv6_prefixes.py", include_str!("ipv6_prefixes.py")),
    ("ec2_latency.py", include_str!("ec2_latency.py")),
];
/// How long moto may take to listen (importing moto takes 1–2 s, more on a loaded machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(45);

/// Errors of starting moto.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    /// No Python with the pinned moto.
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    /// The process could not be started in the namespace.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The launcher could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The launcher's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// moto died or did not answer in time.
    #[error("moto: {reason}\n===== moto log =====\n{log}")]
    NotUp {
        /// What went wrong.
        reason: String,
        /// moto's log tail.
        log: String,
    },
}

/// EC2's response times for moto to play (`ec2_latency.py`): each EC2 call from one of `clients`
/// waits its action's delay before moto serves it; concurrent calls wait together, as on EC2.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ec2Latency {
    /// Delay by EC2 Action name (`AssignPrivateIpAddresses`, …; `*` is `default`'s key).
    pub per_action: BTreeMap<String, Duration>,
    /// Delay of every action not in `per_action`.
    pub default: Duration,
    /// The clients whose calls wait; empty: every client.
    pub clients: Vec<Ipv4Net>,
}

impl Ec2Latency {
    /// The launcher's variables: `VCNI_EC2_LATENCY` (JSON, seconds) and, when `clients` is not
    /// empty, `VCNI_EC2_LATENCY_CLIENTS`.
    fn env(&self) -> Vec<(String, String)> {
        let mut delays: serde_json::Map<String, serde_json::Value> = self
            .per_action
            .iter()
            .map(|(action, delay)| (action.clone(), delay.as_secs_f64().into()))
            .collect();
        delays.insert("*".to_owned(), self.default.as_secs_f64().into());
        let mut env = vec![(
            "VCNI_EC2_LATENCY".to_owned(),
            serde_json::Value::Object(delays).to_string(),
        )];
        if !self.clients.is_empty() {
            let clients: Vec<String> = self.clients.iter().map(Ipv4Net::to_string).collect();
            env.push(("VCNI_EC2_LATENCY_CLIENTS".to_owned(), clients.join(",")));
        }
        env
    }
}

/// What [`MotoServer::start_with`] adds to plain moto; the default adds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MotoOptions {
    /// EC2's response times; `None`: moto's own (about a millisecond).
    pub latency: Option<Ec2Latency>,
    /// Log every EC2 call in moto's log (`VCNI_EC2_CALL_LOG=1`), for [`ec2_calls`].
    pub call_log: bool,
}

impl MotoOptions {
    fn env(&self) -> Vec<(String, String)> {
        let mut env = self
            .latency
            .as_ref()
            .map(Ec2Latency::env)
            .unwrap_or_default();
        if self.call_log {
            env.push(("VCNI_EC2_CALL_LOG".to_owned(), "1".to_owned()));
        }
        env
    }
}

/// One line of the EC2 call log:
/// `vcni-ec2-call action=<Action> client=<address> delay_ms=<n> status=<HTTP status>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Call {
    /// The EC2 Action.
    pub action: String,
    /// The caller's address.
    pub client: IpAddr,
    /// How long the call waited before moto served it.
    pub delay: Duration,
    /// The HTTP status of the answer (EC2's errors are 4xx/5xx).
    pub status: u16,
}

impl Ec2Call {
    /// First word of a call log line.
    pub const TAG: &str = "vcni-ec2-call";

    /// The call a log line records; `None` for any other line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.trim_end().split(' ');
        if words.next()? != Self::TAG {
            return None;
        }
        let mut field = |name: &str| words.next()?.strip_prefix(name)?.strip_prefix('=');
        let action = field("action")?.to_owned();
        let client = field("client")?.parse().ok()?;
        let delay = Duration::from_millis(field("delay_ms")?.parse().ok()?);
        let status = field("status")?.parse().ok()?;
        (!action.is_empty()).then_some(Self {
            action,
            client,
            delay,
            status,
        })
    }

    /// Whether EC2 answered with an error.
    pub fn is_error(&self) -> bool {
        self.status >= 400
    }

    fn comes_from(&self, clients: &[Ipv4Net]) -> bool {
        match self.client {
            IpAddr::V4(addr) => clients.iter().any(|net| net.contains(&addr)),
            IpAddr::V6(_) => false,
        }
    }
}

/// How often one EC2 action was called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ec2CallCount {
    /// Calls.
    pub calls: u64,
    /// Calls answered with an error (HTTP status >= 400).
    pub errors: u64,
}

/// The EC2 calls moto's log `log` records (started with [`MotoOptions::call_log`]), counted by
/// action; with `clients`, only calls from inside one of those CIDRs.
pub fn ec2_calls(
    log: &Path,
    clients: Option<&[Ipv4Net]>,
) -> std::io::Result<BTreeMap<String, Ec2CallCount>> {
    let bytes = std::fs::read(log)?;
    Ok(count_calls(&String::from_utf8_lossy(&bytes), clients))
}

fn count_calls(log: &str, clients: Option<&[Ipv4Net]>) -> BTreeMap<String, Ec2CallCount> {
    let mut counts: BTreeMap<String, Ec2CallCount> = BTreeMap::new();
    for call in log.lines().filter_map(Ec2Call::parse) {
        if clients.is_some_and(|clients| !call.comes_from(clients)) {
            continue;
        }
        let count = counts.entry(call.action.clone()).or_default();
        count.calls += 1;
        count.errors += u64::from(call.is_error());
    }
    counts
}

/// A running moto server.
#[derive(Debug)]
pub struct MotoServer {
    process: NetnsProcess,
    listen: SocketAddrV4,
    log: PathBuf,
}

/// Writes the launcher's files into `dir` and returns the path of the script to run.
pub fn write_launcher(dir: &Path) -> Result<PathBuf, MotoError> {
    for (name, source) in LAUNCHER {
        let path = dir.join(name);
        std::fs::write(&path, source).map_err(|source| MotoError::Write { path, source })?;
    }
    Ok(dir.join(LAUNCHER[0].0))
}

/// Runs `source`, a Python unittest file of checks against the launcher (it gets the launcher's
/// directory as its argument), as `file_name` next to the launcher in a temporary directory,
/// with the pinned moto's Python. Returns unittest's report when every check ran and passed;
/// otherwise an error with the report (a skipped check counts as not run).
pub fn run_launcher_checks(file_name: &str, source: &str) -> Result<String, String> {
    let python = prereqs::python_with_moto().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    write_launcher(dir.path()).map_err(|e| e.to_string())?;
    let tests = dir.path().join(file_name);
    std::fs::write(&tests, source).map_err(|e| format!("cannot write {file_name}: {e}"))?;
    let out = std::process::Command::new(&python)
        .arg(&tests)
        .arg(dir.path())
        .env("HOME", dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("{file_name} failed:\n{report}"));
    }
    // "OK (skipped=N)" would mean a check did not run.
    if !report.trim_end().ends_with("\nOK") {
        return Err(format!("not every check of {file_name} ran:\n{report}"));
    }
    Ok(report)
}

impl MotoServer {
    /// Starts moto in `ns` on `listen`, writing its launcher and log into `dir`, and waits
    /// until it accepts connections there.
    pub fn start(ns: &Netns, listen: SocketAddrV4, dir: &Path) -> Result<Self, MotoError> {
        Self::start_with(ns, listen, dir, &MotoOptions::default())
    }

    /// [`MotoServer::start`] with EC2's response times and the call log as `options` asks.
    pub fn start_with(
        ns: &Netns,
        listen: SocketAddrV4,
        dir: &Path,
        options: &MotoOptions,
    ) -> Result<Self, MotoError> {
        let python = prereqs::python_with_moto()?;
        let launcher = write_launcher(dir)?;
        let log = dir.join("moto.log");
        let launcher_arg = launcher.to_string_lossy().into_owned();
        let (host, port) = (listen.ip().to_string(), listen.port().to_string());
        let mut env = vec![
            ("HOME".to_owned(), dir.to_string_lossy().into_owned()),
            ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
            ("PYTHONDONTWRITEBYTECODE".to_owned(), "1".to_owned()),
        ];
        env.extend(options.env());
        let process = NetnsProcess::spawn(ns, &python, &[&launcher_arg, &host, &port], &env, &log)?;
        let mut server = Self {
            process,
            listen,
            log,
        };
        server.wait_listening(ns)?;
        Ok(server)
    }

    fn wait_listening(&mut self, ns: &Netns) -> Result<(), MotoError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::V4(self.listen);
        loop {
            if let Some(status) = self.process.try_wait() {
                return Err(self.not_up(format!(
                    "moto exited ({}) before listening",
                    NetnsProcess::describe_status(status)
                )));
            }
            if ns
                .run_in(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)))?
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.not_up(format!(
                    "moto did not listen on {} within {START_TIMEOUT:?}",
                    self.listen
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A [`MotoError::NotUp`] with `reason` and the log's tail.
    pub fn not_up(&self, reason: String) -> MotoError {
        MotoError::NotUp {
            reason,
            log: self.log_tail(40),
        }
    }

    /// Where moto listens.
    pub fn listen(&self) -> SocketAddrV4 {
        self.listen
    }

    /// The endpoint URL for an EC2 client (`http://<listen>`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// moto's log file (its request log and any traceback).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of moto's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_the_launchers_variables() {
        assert!(MotoOptions::default().env().is_empty());
        let options = MotoOptions {
            latency: Some(Ec2Latency {
                per_action: BTreeMap::from([(
                    "AssignPrivateIpAddresses".to_owned(),
                    Duration::from_millis(250),
                )]),
                default: Duration::from_millis(100),
                clients: vec![
                    "10.0.0.0/16".parse().unwrap(),
                    "10.1.0.0/16".parse().unwrap(),
                ],
            }),
            call_log: true,
        };
        let env: BTreeMap<String, String> = options.env().into_iter().collect();
        let delays: serde_json::Value = serde_json::from_str(&env["VCNI_EC2_LATENCY"]).unwrap();
        assert_eq!(
            delays,
            serde_json::json!({"AssignPrivateIpAddresses": 0.25, "*": 0.1})
        );
        assert_eq!(env["VCNI_EC2_LATENCY_CLIENTS"], "10.0.0.0/16,10.1.0.0/16");
        assert_eq!(env["VCNI_EC2_CALL_LOG"], "1");
        let every_client = Ec2Latency::default().env();
        assert_eq!(every_client.len(), 1, "{every_client:?}");
    }

    #[test]
    fn the_call_log_is_counted_by_action() {
        let log = "\
 * Running on http://203.0.113.10:80
vcni-ec2-call action=DescribeInstances client=10.0.0.5 delay_ms=250 status=200
10.0.0.5 - - [05/Dec/2026 11:18:13] \"POST / HTTP/1.1\" 200 -
vcni-ec2-call action=AssignPrivateIpAddresses client=10.0.0.5 delay_ms=300 status=400
vcni-ec2-call action=AssignPrivateIpAddresses client=10.0.1.9 delay_ms=300 status=200
vcni-ec2-call action=DescribeVpcs client=203.0.113.10 delay_ms=0 status=200
vcni-ec2-call action=CreateTags client=10.0.0.5 delay_ms=oops status=200
vcni-ec2-call action=CreateTags client=10.0.0.5
";
        let call = Ec2Call::parse(
            "vcni-ec2-call action=AssignPrivateIpAddresses client=10.0.0.5 delay_ms=300 status=400",
        )
        .unwrap();
        assert_eq!(call.action, "AssignPrivateIpAddresses");
        assert_eq!(call.client, IpAddr::from([10, 0, 0, 5]));
        assert_eq!(call.delay, Duration::from_millis(300));
        assert!(call.is_error());
        let count = |calls, errors| Ec2CallCount { calls, errors };
        assert_eq!(
            count_calls(log, None),
            BTreeMap::from([
                ("AssignPrivateIpAddresses".to_owned(), count(2, 1)),
                ("DescribeInstances".to_owned(), count(1, 0)),
                ("DescribeVpcs".to_owned(), count(1, 0)),
            ])
        );
        let vpc: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        let from_vpc = count_calls(log, Some(&[vpc]));
        assert_eq!(from_vpc.len(), 2, "{from_vpc:?}");
        assert_eq!(from_vpc["AssignPrivateIpAddresses"], count(2, 1));
        let one_subnet: Ipv4Net = "10.0.1.0/24".parse().unwrap();
        assert_eq!(
            count_calls(log, Some(&[one_subnet])),
            BTreeMap::from([("AssignPrivateIpAddresses".to_owned(), count(1, 0))])
        );
    }
}
