//! The plugin's error type and its mapping to CNI error codes and the spec's error JSON.
//!
//! Codes 1-99 are the spec's. The plugin's own codes (>= 100):
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 100  | CHECK: the pod's data plane differs from what ADD made (message names each difference) |
//! | 101  | CHECK: ipamd has no assignment for the attachment, or a different address |
//! | 110  | ipamd answered with a non-transient error (e.g. INVALID_ARGUMENT, INTERNAL) or an unusable reply |
//! | 120  | a kernel (netlink) operation of ADD failed; everything made was rolled back and the IP returned |
//! | 121  | ADD: `CNI_IFNAME` already exists in the container's network namespace |
//! | 130  | DEL or GC: some teardown steps failed (every failure is listed; the others were still done) |
//! | 140  | a network namespace could not be opened or entered for a reason other than "does not exist" |
//!
//! Verbs a request's `cniVersion` does not define get code 1 (incompatible CNI version): CHECK
//! before 0.4.0 (the reference `skel` answers "config version does not allow CHECK" with code
//! 1; libcni does not even exec the plugin for it) and GC and STATUS before 1.1.0 (as `skel`
//! does). The verb is valid, the version is not. ADD and DEL are served for every announced
//! version, 0.3.0 and 0.3.1 included.

use serde::Serialize;

use super::version::CniVersion;

/// Everything that can make a CNI invocation fail, with the context needed to tell the user why.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// Code 1: the config's `cniVersion` is unknown, missing, or too old for the verb.
    #[error("incompatible CNI version: {reason}")]
    IncompatibleVersion {
        /// What is wrong, naming the version.
        reason: String,
    },
    /// Code 3: the container's network namespace does not exist.
    #[error("network namespace {netns} does not exist: {reason}")]
    NetnsNotFound {
        /// The `CNI_NETNS` path.
        netns: String,
        /// The OS error.
        reason: String,
    },
    /// Code 4: a `CNI_*` environment variable is missing or invalid.
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv {
        /// The variable's name.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Code 5: reading the request failed.
    #[error("I/O error reading {what}: {reason}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// The failure.
        reason: String,
    },
    /// Code 6: the request is not decodable (bad JSON, wrong JSON type for a known key).
    #[error("failed to decode {what}: {reason}")]
    Decode {
        /// What could not be decoded (e.g. `network config`, `key "mtu"`).
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// Code 7: the config decodes but a value is not acceptable.
    #[error("invalid network config key {key:?}: {reason}")]
    InvalidConfig {
        /// The offending key.
        key: &'static str,
        /// Why its value is refused.
        reason: String,
    },
    /// Code 11: try again later (ipamd unreachable, not ready, or out of addresses).
    #[error("{msg}")]
    TryAgainLater {
        /// What failed, with ipamd's own message when there is one.
        msg: String,
    },
    /// Code 50: STATUS found the plugin unable to serve ADD now.
    #[error("{msg}")]
    Unavailable {
        /// Why, with ipamd's message when there is one.
        msg: String,
    },
    /// Code 100: CHECK found the data plane different from what ADD made.
    #[error("CHECK failed: {}", differences.join("; "))]
    CheckDataPlane {
        /// One entry per difference, each naming the object.
        differences: Vec<String>,
    },
    /// Code 101: CHECK found ipamd disagreeing with the cached result.
    #[error("CHECK failed: {msg}")]
    CheckIpam {
        /// What ipamd said or has.
        msg: String,
    },
    /// Code 110: ipamd failed in a way retrying will not fix.
    #[error("{msg}")]
    Ipamd {
        /// What failed, with ipamd's message.
        msg: String,
    },
    /// Code 120: a kernel operation of ADD failed (after rollback).
    #[error("{msg}")]
    Setup {
        /// The failed step and the kernel's error, plus rollback failures if any.
        msg: String,
    },
    /// Code 121: `CNI_IFNAME` already exists in the container.
    #[error("interface {ifname} already exists in network namespace {netns}")]
    InterfaceExists {
        /// The interface name.
        ifname: String,
        /// The `CNI_NETNS` path.
        netns: String,
    },
    /// Code 130: some teardown steps failed.
    #[error("{} teardown step(s) failed: {}", errors.len(), errors.join("; "))]
    Teardown {
        /// One entry per failed step.
        errors: Vec<String>,
    },
    /// Code 140: a network namespace could not be used.
    #[error("network namespace {netns}: {reason}")]
    Netns {
        /// The namespace path.
        netns: String,
        /// The failure.
        reason: String,
    },
}

impl CniError {
    /// The CNI error code reported for this error.
    pub fn cni_code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion { .. } => 1,
            Self::NetnsNotFound { .. } => 3,
            Self::InvalidEnv { .. } => 4,
            Self::Io { .. } => 5,
            Self::Decode { .. } => 6,
            Self::InvalidConfig { .. } => 7,
            Self::TryAgainLater { .. } => 11,
            Self::Unavailable { .. } => 50,
            Self::CheckDataPlane { .. } => 100,
            Self::CheckIpam { .. } => 101,
            Self::Ipamd { .. } => 110,
            Self::Setup { .. } => 120,
            Self::InterfaceExists { .. } => 121,
            Self::Teardown { .. } => 130,
            Self::Netns { .. } => 140,
        }
    }

    /// The short, stable summary of the error class (the spec's `msg` examples are of this kind).
    pub fn summary(&self) -> &'static str {
        match self {
            Self::IncompatibleVersion { .. } => "Incompatible CNI version",
            Self::NetnsNotFound { .. } => "Container network namespace does not exist",
            Self::InvalidEnv { .. } => "Invalid environment variables",
            Self::Io { .. } => "I/O failure",
            Self::Decode { .. } => "Failed to decode content",
            Self::InvalidConfig { .. } => "Invalid network config",
            Self::TryAgainLater { .. } => "Try again later",
            Self::Unavailable { .. } => "Plugin unavailable",
            Self::CheckDataPlane { .. } => "Pod network differs from ADD result",
            Self::CheckIpam { .. } => "ipamd does not hold the pod's address",
            Self::Ipamd { .. } => "ipamd request failed",
            Self::Setup { .. } => "Pod network setup failed",
            Self::InterfaceExists { .. } => "Interface already exists",
            Self::Teardown { .. } => "Pod network teardown incomplete",
            Self::Netns { .. } => "Network namespace error",
        }
    }

    /// The spec's error object for this error, stamped with `version` (the request's version
    /// when it was known, else the newest).
    pub fn to_reply(&self, version: CniVersion) -> ErrorReply {
        ErrorReply {
            cni_version: version.as_str(),
            code: self.cni_code(),
            // libcni prints `msg` (and `details` after a "; "), so `msg` carries the full,
            // specific text and `details` the class of error.
            msg: self.to_string(),
            details: self.summary(),
        }
    }
}

/// The error JSON printed on stdout: `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Serialize)]
pub struct ErrorReply {
    /// The version the reply is written in.
    #[serde(rename = "cniVersion")]
    pub cni_version: &'static str,
    /// The CNI error code.
    pub code: u32,
    /// The specific message, naming what is wrong.
    pub msg: String,
    /// The error class.
    pub details: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec_table() {
        let cases: Vec<(CniError, u32)> = vec![
            (CniError::IncompatibleVersion { reason: "x".into() }, 1),
            (
                CniError::NetnsNotFound {
                    netns: "/x".into(),
                    reason: "y".into(),
                },
                3,
            ),
            (
                CniError::InvalidEnv {
                    var: "CNI_IFNAME",
                    reason: "y".into(),
                },
                4,
            ),
            (
                CniError::Io {
                    what: "stdin",
                    reason: "y".into(),
                },
                5,
            ),
            (
                CniError::Decode {
                    what: "network config".into(),
                    reason: "y".into(),
                },
                6,
            ),
            (
                CniError::InvalidConfig {
                    key: "mtu",
                    reason: "y".into(),
                },
                7,
            ),
            (CniError::TryAgainLater { msg: "y".into() }, 11),
            (CniError::Unavailable { msg: "y".into() }, 50),
            (
                CniError::CheckDataPlane {
                    differences: vec!["a".into()],
                },
                100,
            ),
            (
                CniError::Teardown {
                    errors: vec!["a".into()],
                },
                130,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.cni_code(), code, "{err}");
        }
    }

    #[test]
    fn reply_json_has_the_four_spec_fields() {
        let err = CniError::InvalidConfig {
            key: "vethPrefix",
            reason: "\"toolong\" is longer than 4 characters".into(),
        };
        let json = serde_json::to_value(err.to_reply(CniVersion::V1_0_0)).unwrap_or_default();
        assert_eq!(json["cniVersion"], "1.0.0");
        assert_eq!(json["code"], 7);
        assert_eq!(
            json["msg"],
            "invalid network config key \"vethPrefix\": \"toolong\" is longer than 4 characters"
        );
        assert_eq!(json["details"], "Invalid network config");
        assert_eq!(json.as_object().map(|o| o.len()), Some(4));
    }

    #[test]
    fn check_message_lists_every_difference() {
        let err = CniError::CheckDataPlane {
            differences: vec!["no default route".into(), "neighbour missing".into()],
        };
        assert_eq!(
            err.to_string(),
            "CHECK failed: no default route; neighbour missing"
        );
    }
}
