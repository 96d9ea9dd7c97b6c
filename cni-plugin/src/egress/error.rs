//! egress-cni's errors: the plugin's [`CniError`] codes, plus what only a plugin that delegates
//! to IPAM and refuses a mode can say.
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 2    | the IPv6-egress mode (an IPv6 `nodeIP`) is not available in this build |
//! | the IPAM plugin's | the IPAM plugin answered with a CNI error: its code, message and details are passed on |
//! | 150  | the IPAM plugin could not be found or run, timed out, or answered with something unusable |
//!
//! Everything else keeps the codes of [`CniError`] (120 for a failed kernel or iptables step of
//! ADD, after rollback; 130 for DEL's collected failures; 100 for CHECK's differences).

use serde_json::{Value, json};

use crate::cni::error::CniError;
use crate::cni::version::CniVersion;

/// Code of [`EgressError::IpamExec`].
pub const IPAM_EXEC_CODE: u32 = 150;

/// Everything that can make an egress-cni invocation fail.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// An error with one of the plugin's usual codes.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// The IPAM plugin answered with a CNI error.
    #[error("IPAM plugin {plugin} {verb} failed: {msg}")]
    IpamPlugin {
        /// `ipam.type`.
        plugin: String,
        /// The delegated verb.
        verb: &'static str,
        /// Its error code.
        code: u32,
        /// Its message, plus what this plugin adds (rollback notes).
        msg: String,
        /// Its details.
        details: String,
    },
    /// The IPAM plugin could not be used.
    #[error("IPAM plugin {plugin} {verb}: {reason}")]
    IpamExec {
        /// `ipam.type`.
        plugin: String,
        /// The delegated verb.
        verb: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Code 2: a config value asks for something this build does not have.
    #[error("unsupported value {value:?} of network config key {key:?}: {reason}")]
    Unsupported {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
        /// Why, and what to do.
        reason: String,
    },
}

impl EgressError {
    /// The CNI error code.
    pub fn cni_code(&self) -> u32 {
        match self {
            Self::Cni(e) => e.cni_code(),
            Self::IpamPlugin { code, .. } => *code,
            Self::IpamExec { .. } => IPAM_EXEC_CODE,
            Self::Unsupported { .. } => 2,
        }
    }

    /// Adds a note (what rollback could not undo) to the message of errors that carry one.
    pub fn with_note(mut self, note: &str) -> Self {
        match &mut self {
            Self::Cni(CniError::Setup { msg }) | Self::IpamPlugin { msg, .. } => {
                msg.push_str("; ");
                msg.push_str(note);
            }
            Self::IpamExec { reason, .. } => {
                reason.push_str("; ");
                reason.push_str(note);
            }
            _ => {}
        }
        self
    }

    /// The spec's error object, stamped with `version`.
    pub fn to_reply(&self, version: CniVersion) -> Value {
        let details = match self {
            Self::Cni(e) => e.summary().to_string(),
            Self::IpamPlugin { details, .. } if !details.is_empty() => details.clone(),
            Self::IpamPlugin { .. } | Self::IpamExec { .. } => "IPAM plugin failed".into(),
            Self::Unsupported { .. } => "Unsupported field in network configuration".into(),
        };
        json!({
            "cniVersion": version.as_str(),
            "code": self.cni_code(),
            "msg": self.to_string(),
            "details": details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_errors_keep_the_delegates_code() {
        let e = EgressError::IpamPlugin {
            plugin: "host-local".into(),
            verb: "ADD",
            code: 11,
            msg: "no IP addresses available".into(),
            details: String::new(),
        }
        .with_note("rollback: none needed");
        let r = e.to_reply(CniVersion::V1_0_0);
        assert_eq!(r["code"], 11);
        assert_eq!(
            r["msg"],
            "IPAM plugin host-local ADD failed: no IP addresses available; rollback: none needed"
        );
        assert_eq!(r["details"], "IPAM plugin failed");
        assert_eq!(r.as_object().map(|o| o.len()), Some(4));
    }

    #[test]
    fn codes() {
        let exec = EgressError::IpamExec {
            plugin: "host-local".into(),
            verb: "DEL",
            reason: "not found".into(),
        };
        assert_eq!(exec.cni_code(), IPAM_EXEC_CODE);
        let cni: EgressError = CniError::Setup { msg: "x".into() }.into();
        assert_eq!(cni.cni_code(), 120);
        assert_eq!(cni.with_note("y").to_string(), "x; y");
    }
}
