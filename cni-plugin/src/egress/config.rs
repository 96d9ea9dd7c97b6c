//! egress-cni's network config: the keys it shares with `aws-cni` (`cniVersion`, `name`, `mtu`,
//! `pluginLogFile`, `pluginLogLevel`, `prevResult`) are read by [`NetConf::parse`]; its own keys
//! (`enabled`, `randomizeSNAT`, `nodeIP`, `ipam`) here. Which egress the pod gets follows the
//! family of `nodeIP`, as in the reference (`cmd/egress-cni-plugin/main.go`): IPv4 → IPv4 egress
//! for an IPv6 pod, IPv6 → IPv6 egress for an IPv4 pod (not built).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::error::EgressError;
use crate::cni::config::{LogTarget, NetConf, decode_object};
use crate::cni::error::CniError;

/// Where egress-cni logs when the config names no `pluginLogFile` (the file ipamd's
/// `AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE` defaults to).
pub const DEFAULT_EGRESS_V4_LOG_FILE: &str = "/var/log/aws-routed-eni/egress-v4-plugin.log";

/// `randomizeSNAT`: how the SNAT rule picks source ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandomizeSnat {
    /// `none`: no port randomisation flag.
    None,
    /// `hashrandom`: `--random`.
    HashRandom,
    /// `prng` (the default): `--random-fully`, or `--random` when iptables lacks it.
    Prng,
}

/// What the config asks egress-cni to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `enabled` is not `"true"`: pass `prevResult` through, touch nothing.
    Disabled,
    /// IPv4 egress for an IPv6 pod (IPv6 clusters, `ENABLE_V4_EGRESS`), SNAT to this address.
    V4 {
        /// `nodeIP`.
        node_ip: Ipv4Addr,
    },
    /// IPv6 egress for an IPv4 pod (IPv4 clusters, `ENABLE_V6_EGRESS`): not in this build.
    V6Unsupported {
        /// `nodeIP` as written.
        node_ip: String,
    },
}

/// The validated config of one egress-cni request.
#[derive(Clone, Debug)]
pub struct EgressConf {
    /// The keys shared with `aws-cni`, validated the same way.
    pub base: NetConf,
    /// `enabled` == `"true"`.
    pub enabled: bool,
    /// `randomizeSNAT`.
    pub randomize_snat: RandomizeSnat,
    /// `nodeIP`, parsed.
    pub node_ip: Option<IpAddr>,
    /// `ipam.type` (required when enabled).
    pub ipam_type: Option<String>,
    /// `prevResult` exactly as received.
    pub prev_result: Option<Value>,
}

fn opt_str<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, CniError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(CniError::Decode {
            what: format!("key {key:?}"),
            reason: "expected a string".into(),
        }),
    }
}

impl EgressConf {
    /// Decodes and validates a request.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let map = decode_object(bytes)?;
        let mut base = NetConf::parse(bytes)?;
        if opt_str(&map, "pluginLogFile")?.is_none_or(str::is_empty) {
            base.log_target = LogTarget::File(PathBuf::from(DEFAULT_EGRESS_V4_LOG_FILE));
        }

        // The reference compares the string with "true": anything else leaves the plugin off.
        let enabled = opt_str(&map, "enabled")? == Some("true");

        let randomize_snat = match opt_str(&map, "randomizeSNAT")? {
            None | Some("") | Some("prng") => RandomizeSnat::Prng,
            Some("hashrandom") => RandomizeSnat::HashRandom,
            Some("none") => RandomizeSnat::None,
            Some(other) => {
                return Err(CniError::InvalidConfig {
                    key: "randomizeSNAT",
                    reason: format!("{other:?} is not one of \"prng\", \"hashrandom\", \"none\""),
                });
            }
        };

        let node_ip = match opt_str(&map, "nodeIP")? {
            None | Some("") => None,
            Some(s) => Some(s.parse::<IpAddr>().map_err(|_| CniError::InvalidConfig {
                key: "nodeIP",
                reason: format!("{s:?} is not an IP address"),
            })?),
        };

        let ipam_type = match map.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(ipam)) => match ipam.get("type") {
                Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
                _ => {
                    return Err(CniError::InvalidConfig {
                        key: "ipam",
                        reason: "has no \"type\" naming the IPAM plugin".into(),
                    });
                }
            },
            Some(_) => {
                return Err(CniError::Decode {
                    what: "key \"ipam\"".into(),
                    reason: "expected an object".into(),
                });
            }
        };
        if let Some(t) = &ipam_type
            && (t.contains('/') || t == "." || t == "..")
        {
            return Err(CniError::InvalidConfig {
                key: "ipam",
                reason: format!("type {t:?} is not a plugin name"),
            });
        }
        if enabled && ipam_type.is_none() {
            return Err(CniError::InvalidConfig {
                key: "ipam",
                reason:
                    "missing; egress-cni takes its pod address from an IPAM plugin (host-local)"
                        .into(),
            });
        }

        Ok(Self {
            base,
            enabled,
            randomize_snat,
            node_ip,
            ipam_type,
            prev_result: map.get("prevResult").filter(|v| v.is_object()).cloned(),
        })
    }

    /// The egress the config asks for (the reference decides by the family of `nodeIP`).
    pub fn mode(&self) -> Result<Mode, EgressError> {
        if !self.enabled {
            return Ok(Mode::Disabled);
        }
        match self.node_ip {
            Some(IpAddr::V4(node_ip)) => Ok(Mode::V4 { node_ip }),
            Some(IpAddr::V6(ip)) => Ok(Mode::V6Unsupported {
                node_ip: ip.to_string(),
            }),
            None => Err(CniError::InvalidConfig {
                key: "nodeIP",
                reason: "missing; the pod's egress traffic is SNATed to the node's address".into(),
            }
            .into()),
        }
    }

    /// The error for the IPv6-egress mode, which this build does not have.
    pub fn v6_unsupported(node_ip: &str) -> EgressError {
        EgressError::Unsupported {
            key: "nodeIP",
            value: node_ip.to_string(),
            reason: "an IPv6 nodeIP asks for IPv6 egress for IPv4 pods (ENABLE_V6_EGRESS), which is not available in this build; set ENABLE_V6_EGRESS=false".into(),
        }
    }

    /// The network name (part of the SNAT chain's name and of host-local's key).
    pub fn network_name(&self) -> Result<&str, CniError> {
        self.base.network_name()
    }

    /// The `ipam.type`, required by every verb that delegates.
    pub fn ipam_type(&self) -> Result<&str, CniError> {
        self.ipam_type.as_deref().ok_or(CniError::InvalidConfig {
            key: "ipam",
            reason: "missing".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"cniVersion":"1.0.0","name":"aws-cni","type":"egress-cni","mtu":"9001",
        "enabled":"true","randomizeSNAT":"prng","nodeIP":"10.0.0.10",
        "ipam":{"type":"host-local","ranges":[[{"subnet":"169.254.172.0/22"}]],
                "routes":[{"dst":"0.0.0.0/0"}],"dataDir":"/run/cni/v6pd/egress-v4-ipam"},
        "pluginLogFile":"/var/log/aws-routed-eni/egress-v4-plugin.log","pluginLogLevel":"DEBUG",
        "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"2001:db8::2/128","interface":1}]}}"#;

    fn parse(s: &str) -> EgressConf {
        EgressConf::parse(s.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn with(key: &str, value: Value) -> String {
        let mut v: Value = serde_json::from_str(FULL).unwrap_or_default();
        match value {
            Value::Null => {
                v.as_object_mut().map(|o| o.remove(key));
            }
            other => v[key] = other,
        }
        v.to_string()
    }

    fn code(s: &str) -> u32 {
        EgressConf::parse(s.as_bytes()).map_or_else(|e| e.cni_code(), |_| 0)
    }

    #[test]
    fn the_conflist_entry_ipamd_writes_parses_to_v4_egress() {
        let c = parse(FULL);
        assert!(c.enabled);
        assert_eq!(c.randomize_snat, RandomizeSnat::Prng);
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(c.base.mtu, 9001);
        assert!(c.prev_result.is_some());
        assert_eq!(
            c.mode().ok(),
            Some(Mode::V4 {
                node_ip: Ipv4Addr::new(10, 0, 0, 10)
            })
        );
    }

    #[test]
    fn anything_but_the_string_true_disables() {
        for v in [
            Value::from("false"),
            Value::from(""),
            Value::from("TRUE"),
            Value::Null,
        ] {
            let c = parse(&with("enabled", v.clone()));
            assert!(!c.enabled, "{v:?}");
            assert_eq!(c.mode().ok(), Some(Mode::Disabled));
        }
        assert_eq!(code(&with("enabled", Value::Bool(true))), 6);
    }

    #[test]
    fn randomize_snat_values() {
        let r = |v: &str| parse(&with("randomizeSNAT", Value::from(v))).randomize_snat;
        assert_eq!(r("hashrandom"), RandomizeSnat::HashRandom);
        assert_eq!(r("none"), RandomizeSnat::None);
        assert_eq!(r(""), RandomizeSnat::Prng);
        assert_eq!(code(&with("randomizeSNAT", Value::from("fully"))), 7);
    }

    #[test]
    fn node_ip_family_picks_the_mode() {
        let v6 = parse(&with("nodeIP", Value::from("2001:db8::10")));
        assert!(matches!(v6.mode(), Ok(Mode::V6Unsupported { .. })));
        let e = EgressConf::v6_unsupported("2001:db8::10");
        assert_eq!(e.cni_code(), 2);
        assert!(e.to_string().contains("2001:db8::10"), "{e}");
        let missing = parse(&with("nodeIP", Value::Null));
        assert_eq!(missing.mode().map_err(|e| e.cni_code()).err(), Some(7));
        assert_eq!(code(&with("nodeIP", Value::from("node"))), 7);
    }

    #[test]
    fn ipam_is_required_when_enabled_only() {
        assert_eq!(code(&with("ipam", Value::Null)), 7);
        assert_eq!(code(&with("ipam", serde_json::json!({"type": "../x"}))), 7);
        assert_eq!(code(&with("ipam", Value::from("host-local"))), 6);
        let off = with("ipam", Value::Null);
        let mut v: Value = serde_json::from_str(&off).unwrap_or_default();
        v["enabled"] = Value::from("false");
        assert_eq!(code(&v.to_string()), 0);
    }

    #[test]
    fn log_file_defaults_to_the_egress_log() {
        let c = parse(&with("pluginLogFile", Value::Null));
        assert_eq!(
            c.base.log_target,
            LogTarget::File(PathBuf::from(DEFAULT_EGRESS_V4_LOG_FILE))
        );
        assert_eq!(code(&with("pluginLogFile", Value::from("stdout"))), 7);
    }
}
