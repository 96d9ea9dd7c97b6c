//! ipamd's log: `AWS_VPC_K8S_CNI_LOG_FILE` (`stdout`, `stderr` or a file, parent directories
//! created) at `AWS_VPC_K8S_CNI_LOGLEVEL`. Chatty transport crates are held at WARN so DEBUG shows
//! ipamd's own decisions.

use std::fs::OpenOptions;
use std::sync::Mutex;

use thiserror::Error;
use tracing::Level;
use tracing_subscriber::EnvFilter;

use crate::config::parse::LogDestination;
use crate::config::{AWS_VPC_K8S_CNI_LOG_FILE, Config};

/// The log could not be opened.
#[derive(Debug, Error)]
pub enum LoggingError {
    /// The file (or its directory) could not be created.
    #[error("cannot open log file {path} ({AWS_VPC_K8S_CNI_LOG_FILE}): {source}")]
    Open {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A global subscriber is already installed.
    #[error("logging is already initialized: {0}")]
    Init(String),
}

/// Target prefixes held at WARN (directives match targets by prefix).
const QUIET_CRATES: [&str; 9] = [
    "h2",
    "hyper",
    "tower",
    "tonic",
    "rustls",
    "aws_",
    "netlink_proto",
    "netlink_sys",
    "mio",
];

/// The filter: `level` for ipamd, at most WARN for transport crates.
pub fn filter(level: Level) -> EnvFilter {
    let quiet = if level > Level::WARN {
        Level::WARN
    } else {
        level
    };
    let mut directives = level.to_string().to_lowercase();
    for c in QUIET_CRATES {
        directives.push_str(&format!(",{c}={}", quiet.to_string().to_lowercase()));
    }
    EnvFilter::new(directives)
}

/// Installs the global subscriber.
///
/// # Errors
/// The log file could not be opened, or a subscriber exists.
pub fn init(config: &Config) -> Result<(), LoggingError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(config.log_level))
        .with_target(true);
    let result = match &config.log_destination {
        LogDestination::Stdout => builder.with_writer(std::io::stdout).try_init(),
        LogDestination::Stderr => builder.with_writer(std::io::stderr).try_init(),
        LogDestination::File(path) => {
            let open_err = |source| LoggingError::Open {
                path: path.display().to_string(),
                source,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(open_err)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(open_err)?;
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .try_init()
        }
    };
    result.map_err(|e| LoggingError::Init(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_crates_never_log_below_warn() {
        let f = filter(Level::DEBUG).to_string();
        assert!(f.split(',').any(|d| d == "debug"), "{f}");
        assert!(f.contains("h2=warn") && f.contains("aws_=warn"), "{f}");
        let f = filter(Level::ERROR).to_string();
        assert!(f.contains("h2=error"), "{f}");
    }
}
