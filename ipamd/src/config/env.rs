//! Where configuration values come from: the process environment in production, a `HashMap` in
//! tests (linkerd's `env.rs` pattern), so every parse path is unit-testable without touching the
//! real environment.

use std::collections::HashMap;
use std::ffi::OsString;

use super::error::ConfigError;

/// A source of environment variables.
pub trait Env {
    /// The value of `name`, `None` when it is not set.
    ///
    /// # Errors
    /// [`ConfigError::NotUnicode`] when the value is set but is not valid UTF-8.
    fn var(&self, name: &'static str) -> Result<Option<String>, ConfigError>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match std::env::var_os(name) {
            None => Ok(None),
            Some(value) => os_to_string(name, value).map(Some),
        }
    }
}

fn os_to_string(name: &'static str, value: OsString) -> Result<String, ConfigError> {
    value.into_string().map_err(|raw| ConfigError::NotUnicode {
        var: name,
        value: raw.to_string_lossy().into_owned(),
    })
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(self.get(name).cloned())
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(self.get(name).map(|v| (*v).to_owned()))
    }
}
