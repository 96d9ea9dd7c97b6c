//! CNI specification versions: which ones the plugin announces and serves, and which verbs and
//! result fields each version defines.
//!
//! 0.3.0 and 0.3.1 are served for ADD and DEL, as the reference's `skel` (`version.All`) does:
//! their result has the same shape as 0.4.0's (`ips[].version` required, `interface` an index),
//! CHECK does not exist before 0.4.0, and runtimes send no cached result (`prevResult`) on DEL
//! before 0.4.0 (libcni reads its cache for DEL only for lists of 0.4.0 or newer).

use std::fmt;

/// The versions `VERSION` announces in `supportedVersions`, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI specification version this plugin knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0: ADD and DEL only; results carry `ips[].version`; DEL gets no `prevResult`.
    V0_3_0,
    /// 0.3.1: as 0.3.0 (the result format did not change).
    V0_3_1,
    /// 0.4.0: adds CHECK and the cached result on DEL; results carry `ips[].version`.
    V0_4_0,
    /// 1.0.0.
    V1_0_0,
    /// 1.1.0: adds GC, STATUS and `interfaces[].mtu`.
    V1_1_0,
}

impl CniVersion {
    /// The newest version this plugin implements.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// Parses an exact version string such as `"1.0.0"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "0.3.0" => Some(Self::V0_3_0),
            "0.3.1" => Some(Self::V0_3_1),
            "0.4.0" => Some(Self::V0_4_0),
            "1.0.0" => Some(Self::V1_0_0),
            "1.1.0" => Some(Self::V1_1_0),
            _ => None,
        }
    }

    /// The version as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// Whether the CHECK verb exists in this version (0.4.0 and newer).
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// Whether runtimes pass the cached ADD result as `prevResult` on DEL (0.4.0 and newer).
    /// Before that, DEL learns the pod's address from ipamd or from the pod itself.
    pub fn del_has_prev_result(self) -> bool {
        self >= Self::V0_4_0
    }

    /// Whether the GC and STATUS verbs exist in this version (1.1.0 and newer).
    pub fn has_gc_and_status(self) -> bool {
        self >= Self::V1_1_0
    }

    /// Whether results of this version carry `ips[].version` (required before 1.0.0).
    pub fn ip_has_version_field(self) -> bool {
        self < Self::V1_0_0
    }

    /// Whether results of this version may carry `interfaces[].mtu`.
    pub fn interface_has_mtu(self) -> bool {
        self >= Self::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body `VERSION` prints: `cniVersion` echoes the request's version when the plugin knows it,
/// else the newest version, so a runtime can still negotiate.
pub fn version_reply(requested: Option<&str>) -> serde_json::Value {
    let version = requested
        .and_then(CniVersion::parse)
        .unwrap_or(CniVersion::LATEST);
    serde_json::json!({
        "cniVersion": version.as_str(),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_announced_version_parses_and_round_trips() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(CniVersion::parse(v).map(CniVersion::as_str), Some(v));
        }
        assert_eq!(CniVersion::parse("0.2.0"), None);
        assert_eq!(CniVersion::parse("1.0"), None);
        assert_eq!(CniVersion::parse(""), None);
    }

    #[test]
    fn verbs_and_fields_follow_the_spec_versions() {
        assert!(!CniVersion::V0_3_0.has_check());
        assert!(!CniVersion::V0_3_1.has_check());
        assert!(CniVersion::V0_4_0.has_check());
        assert!(!CniVersion::V0_3_1.del_has_prev_result());
        assert!(CniVersion::V0_4_0.del_has_prev_result());
        assert!(CniVersion::V0_3_0.ip_has_version_field());
        assert!(CniVersion::V0_3_1.ip_has_version_field());
        assert!(!CniVersion::V0_3_1.interface_has_mtu());
        assert!(!CniVersion::V0_3_1.has_gc_and_status());
        assert!(!CniVersion::V1_0_0.has_gc_and_status());
        assert!(CniVersion::V1_1_0.has_gc_and_status());
        assert!(CniVersion::V0_4_0.ip_has_version_field());
        assert!(!CniVersion::V1_0_0.ip_has_version_field());
        assert!(!CniVersion::V1_0_0.interface_has_mtu());
        assert!(CniVersion::V1_1_0.interface_has_mtu());
    }

    #[test]
    fn version_reply_echoes_known_versions_and_falls_back_to_latest() {
        let r = version_reply(Some("0.4.0"));
        assert_eq!(r["cniVersion"], "0.4.0");
        assert_eq!(
            r["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(version_reply(Some("0.3.0"))["cniVersion"], "0.3.0");
        assert_eq!(version_reply(Some("0.3.1"))["cniVersion"], "0.3.1");
        assert_eq!(version_reply(Some("9.9.9"))["cniVersion"], "1.1.0");
        assert_eq!(version_reply(None)["cniVersion"], "1.1.0");
    }
}
