//! moto's EC2 server as a child process inside a test's namespace. The launcher
//! (`moto_server.py` and the `prefix_delegation.py` it imports, embedded here and written into
//! the caller's directory) runs moto unmodified except where moto 5.2 differs from EC2 in ways
//! the tests depend on, or lacks an EC2 feature ipamd uses (see their docstrings and
//! docs/moto-ec2-extensions.md). The interpreter is the pinned one of
//! [`prereqs::python_with_moto`]. Killed on drop.

use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netns::{CommandError, Netns, NetnsProcess, tail};
use crate::prereqs::{self, PrereqError};

/// The launcher's files: its name in the directory and its source.
const LAUNCHER: [(&str, &str); 2] = [
    ("moto_server.py", include_str!("moto_server.py")),
    ("prefix_delegation.py", include_str!("prefix_delegation.py")),
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

impl MotoServer {
    /// Starts moto in `ns` on `listen`, writing its launcher and log into `dir`, and waits
    /// until it accepts connections there.
    pub fn start(ns: &Netns, listen: SocketAddrV4, dir: &Path) -> Result<Self, MotoError> {
        let python = prereqs::python_with_moto()?;
        let launcher = write_launcher(dir)?;
        let log = dir.join("moto.log");
        let launcher_arg = launcher.to_string_lossy().into_owned();
        let (host, port) = (listen.ip().to_string(), listen.port().to_string());
        let env = vec![
            ("HOME".to_owned(), dir.to_string_lossy().into_owned()),
            ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
            ("PYTHONDONTWRITEBYTECODE".to_owned(), "1".to_owned()),
        ];
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
