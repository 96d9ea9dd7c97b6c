//! The configuration error: which variable, which value, why, and what to do.

use thiserror::Error;

/// A configuration error; its message names the variable and, when there is one, the value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid {var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// The raw value.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A required variable is missing.
    #[error("{var} is not set: {reason}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// Why it is needed.
        reason: String,
    },
    /// The value is not UTF-8.
    #[error("invalid {var}={value:?}: not valid UTF-8")]
    NotUnicode {
        /// The variable.
        var: &'static str,
        /// The value, lossily decoded.
        value: String,
    },
    /// A value this build does not support (yet).
    #[error("unsupported {var}={value:?}: {reason}")]
    Unsupported {
        /// The variable.
        var: &'static str,
        /// The raw value.
        value: String,
        /// What is not supported and what to do instead.
        reason: String,
    },
}
