//! moto's EC2 server as a child process inside the simulated `internet` namespace, listening on
//! the address the VPC uses as its EC2 endpoint. The launcher (`moto_server.py`, embedded here
//! and written into the fabric's state directory) runs moto unmodified except where moto 5.2
//! differs from EC2 in ways the simulated VPC depends on (see its docstring). Killed on drop.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::VpcError;
use super::ec2::Ec2;
use crate::bins;
use crate::netns::{Netns, NetnsProcess};
use crate::node::tail;

/// The launcher's source.
pub const LAUNCHER: &str = include_str!("moto_server.py");
/// How long moto may take to answer its first request (importing moto takes 1–2 s).
const START_TIMEOUT: Duration = Duration::from_secs(45);

/// A running moto server.
#[derive(Debug)]
pub struct MotoServer {
    process: NetnsProcess,
    listen: SocketAddrV4,
    log: PathBuf,
}

impl MotoServer {
    /// Starts moto in `ns` on `listen`, writing its launcher and log into `dir`, and waits
    /// until `ec2` (a client for that address) gets an answer.
    pub fn start(
        ns: &Netns,
        listen: SocketAddrV4,
        dir: &Path,
        ec2: &Ec2,
    ) -> Result<Self, VpcError> {
        let python = bins::python_with_moto()?;
        let launcher = dir.join("moto_server.py");
        std::fs::write(&launcher, LAUNCHER).map_err(|source| VpcError::Io {
            context: format!("cannot write {}", launcher.display()),
            source,
        })?;
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
        server.wait_until_up(ec2)?;
        Ok(server)
    }

    fn wait_until_up(&mut self, ec2: &Ec2) -> Result<(), VpcError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.process.try_wait() {
                return Err(VpcError::Moto {
                    reason: format!(
                        "moto exited ({}) before answering",
                        NetnsProcess::describe_status(status)
                    ),
                    log: self.log_tail(40),
                });
            }
            match ec2.wait_until_up(Duration::from_millis(200)) {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() >= deadline => {
                    return Err(VpcError::Moto {
                        reason: format!(
                            "moto did not answer on {} within {START_TIMEOUT:?}: {err}",
                            self.listen
                        ),
                        log: self.log_tail(40),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Where moto listens.
    pub fn listen(&self) -> SocketAddrV4 {
        self.listen
    }

    /// moto's log file (its request log and any traceback).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of moto's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.process.try_wait().is_none()
    }
}
