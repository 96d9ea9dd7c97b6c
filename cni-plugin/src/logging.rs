//! Plugin logging: `tracing` to `pluginLogFile` (parent directories created) or stderr, never
//! stdout, which carries the CNI result.

use std::fs::{self, OpenOptions};
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;

use crate::cni::config::LogTarget;

/// Installs the process-wide subscriber. A log file that cannot be opened falls back to stderr
/// (logging must never fail the CNI operation). Calling it twice keeps the first subscriber.
pub fn init(target: &LogTarget, level: LevelFilter) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
    let result = match target {
        LogTarget::Stderr => tracing::subscriber::set_global_default(
            builder
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .finish(),
        ),
        LogTarget::File(path) => {
            if let Some(dir) = path.parent() {
                // Best effort: the open below reports the real problem.
                let _ = fs::create_dir_all(dir);
            }
            match OpenOptions::new().create(true).append(true).open(path) {
                Ok(file) => tracing::subscriber::set_global_default(
                    builder
                        .with_writer(Mutex::new(file))
                        .with_ansi(false)
                        .finish(),
                ),
                Err(e) => {
                    let r = tracing::subscriber::set_global_default(
                        builder
                            .with_writer(std::io::stderr)
                            .with_ansi(false)
                            .finish(),
                    );
                    tracing::warn!(path = %path.display(), error = %e, "cannot open pluginLogFile; logging to stderr");
                    r
                }
            }
        }
    };
    // Already installed (tests calling the library twice): keep the first one.
    let _ = result;
}
