//! Plugin logging: `tracing` to `pluginLogFile` (parent directories created) or stderr, never
//! stdout, which carries the CNI result. The configured level applies to the plugin's own
//! events; the gRPC and netlink libraries only log warnings and errors (their debug output is
//! per-frame noise).

use std::fs::{self, OpenOptions};
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

use crate::cni::config::LogTarget;

/// Installs the process-wide subscriber. A log file that cannot be opened falls back to stderr
/// (logging must never fail the CNI operation). Calling it twice keeps the first subscriber.
pub fn init(target: &LogTarget, level: LevelFilter) {
    let filter = Targets::new()
        .with_default(LevelFilter::WARN.min(level))
        .with_target(env!("CARGO_CRATE_NAME"), level);
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter);
    let (result, open_error) = match target {
        LogTarget::Stderr => (
            tracing::subscriber::set_global_default(
                registry.with(layer.with_writer(std::io::stderr)),
            ),
            None,
        ),
        LogTarget::File(path) => {
            if let Some(dir) = path.parent() {
                // Best effort: the open below reports the real problem.
                let _ = fs::create_dir_all(dir);
            }
            match OpenOptions::new().create(true).append(true).open(path) {
                Ok(file) => (
                    tracing::subscriber::set_global_default(
                        registry.with(layer.with_writer(Mutex::new(file))),
                    ),
                    None,
                ),
                Err(e) => (
                    tracing::subscriber::set_global_default(
                        registry.with(layer.with_writer(std::io::stderr)),
                    ),
                    Some((path, e)),
                ),
            }
        }
    };
    if let Some((path, e)) = open_error {
        tracing::warn!(path = %path.display(), error = %e, "cannot open pluginLogFile; logging to stderr");
    }
    // An error here means a subscriber is already installed (a test calling the library twice):
    // the first one stays.
    let _ = result;
}
