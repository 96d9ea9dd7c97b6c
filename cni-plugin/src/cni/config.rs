//! The request on stdin: reading it (bounded), decoding it, and validating the plugin's keys
//! (docs/contracts.md, "Plugin configuration"). Unknown keys are ignored.

use std::io::Read;
use std::path::PathBuf;

use serde_json::{Map, Value};
use tracing::level_filters::LevelFilter;

use super::error::CniError;
use super::result::PrevResult;
use super::version::CniVersion;

/// Largest request accepted on stdin.
pub const MAX_STDIN_BYTES: usize = 1 << 20;
/// Default `vethPrefix`.
pub const DEFAULT_VETH_PREFIX: &str = "eni";
/// Longest `vethPrefix` (prefix + 11 hex chars must fit in 15).
pub const MAX_VETH_PREFIX_LEN: usize = 4;
/// Default pod MTU.
pub const DEFAULT_MTU: u32 = 9001;
/// Smallest accepted MTU (IPv4 minimum datagram size).
pub const MIN_MTU: u32 = 576;
/// Largest accepted MTU (EC2 jumbo frames).
pub const MAX_MTU: u32 = 9001;
/// Default `pluginLogFile`.
pub const DEFAULT_LOG_FILE: &str = "/var/log/aws-routed-eni/plugin.log";
/// Default `ipamdSocket`.
pub const DEFAULT_IPAMD_SOCKET: &str = "/var/run/aws-node/ipamd.sock";
/// GC's list of attachments to keep (libcni >= 1.2 sends both keys).
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The spec-v1.1.0 tag's name for the same list.
pub const ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// Reads the whole request from `input`, refusing more than [`MAX_STDIN_BYTES`].
pub fn read_request(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::with_capacity(4096);
    let limit = u64::try_from(MAX_STDIN_BYTES).unwrap_or(u64::MAX) + 1;
    input
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::Io {
            what: "stdin",
            reason: e.to_string(),
        })?;
    if buf.len() > MAX_STDIN_BYTES {
        return Err(CniError::Io {
            what: "stdin",
            reason: format!("the request is larger than {MAX_STDIN_BYTES} bytes"),
        });
    }
    Ok(buf)
}

/// Security-groups-for-pods enforcing mode (`podSGEnforcingMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgEnforcingMode {
    /// `strict` (the default).
    Strict,
    /// `standard`.
    Standard,
}

/// Where the plugin logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// `pluginLogFile: "stderr"`.
    Stderr,
    /// A file path (parent directories are created).
    File(PathBuf),
}

/// One entry of GC's valid-attachments list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcAttachment {
    /// `containerID`.
    pub container_id: String,
    /// `ifname`.
    pub ifname: String,
}

/// The validated plugin configuration of one request.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: CniVersion,
    /// `name` (the network name; ipamd's key part).
    pub name: Option<String>,
    /// `vethPrefix`.
    pub veth_prefix: String,
    /// `mtu`.
    pub mtu: u32,
    /// `pluginLogFile`.
    pub log_target: LogTarget,
    /// `pluginLogLevel`.
    pub log_level: LevelFilter,
    /// `podSGEnforcingMode`.
    pub pod_sg_enforcing_mode: SgEnforcingMode,
    /// `ipamdSocket`.
    pub ipamd_socket: PathBuf,
    /// `prevResult`, parsed loosely.
    pub prev_result: Option<PrevResult>,
    /// The union of `cni.dev/valid-attachments` and `cni.dev/attachments`; `None` if neither key
    /// is present.
    pub valid_attachments: Option<Vec<GcAttachment>>,
}

/// Decodes the request as a JSON object, refusing NUL bytes with a clear message.
pub fn decode_object(bytes: &[u8]) -> Result<Map<String, Value>, CniError> {
    if let Some(pos) = bytes.iter().position(|b| *b == 0) {
        return Err(CniError::Decode {
            what: "network config".into(),
            reason: format!("stdin contains a NUL byte at offset {pos}"),
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::Decode {
            what: "network config".into(),
            reason: "stdin is empty".into(),
        });
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(CniError::Decode {
            what: "network config".into(),
            reason: format!("expected a JSON object, got {}", json_type(&other)),
        }),
        Err(e) => Err(CniError::Decode {
            what: "network config".into(),
            reason: e.to_string(),
        }),
    }
}

/// The version replies to a request are written in: the request's when it can be read, else
/// the latest.
pub fn request_version(stdin: &Result<Vec<u8>, super::error::CniError>) -> CniVersion {
    stdin
        .as_ref()
        .ok()
        .and_then(|b| peek_version(b))
        .and_then(|v| CniVersion::parse(&v))
        .unwrap_or(CniVersion::LATEST)
}

/// The request's `cniVersion` if it can be read at all (used for VERSION and to stamp errors).
pub fn peek_version(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    serde_json::from_slice::<Peek>(bytes)
        .ok()
        .and_then(|p| p.cni_version)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(key: &str, expected: &str, got: &Value) -> CniError {
    CniError::Decode {
        what: format!("key {key:?}"),
        reason: format!("expected {expected}, got {}", json_type(got)),
    }
}

/// A string-valued key; `null` counts as absent.
fn opt_str<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, CniError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(key, "a string", other)),
    }
}

impl NetConf {
    /// Decodes and validates a request for the attachment verbs, GC and STATUS.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let map = decode_object(bytes)?;

        let cni_version = match opt_str(&map, "cniVersion")? {
            None => {
                return Err(CniError::IncompatibleVersion {
                    reason: "the network config has no cniVersion".into(),
                });
            }
            Some(v) => CniVersion::parse(v).ok_or_else(|| CniError::IncompatibleVersion {
                reason: format!(
                    "cniVersion {v:?} is not supported (supported: {})",
                    super::version::SUPPORTED_VERSIONS.join(", ")
                ),
            })?,
        };

        let name = opt_str(&map, "name")?.map(str::to_string);
        if let Some(n) = &name {
            validate_network_name(n)?;
        }

        let veth_prefix = opt_str(&map, "vethPrefix")?
            .unwrap_or(DEFAULT_VETH_PREFIX)
            .to_string();
        validate_veth_prefix(&veth_prefix)?;

        let mtu = match map.get("mtu") {
            None | Some(Value::Null) => DEFAULT_MTU,
            Some(Value::String(s)) => parse_mtu_str(s)?,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) => check_mtu(v, &n.to_string())?,
                None => {
                    return Err(CniError::InvalidConfig {
                        key: "mtu",
                        reason: format!("{n} is not a positive whole number"),
                    });
                }
            },
            Some(other) => return Err(wrong_type("mtu", "a string or a number", other)),
        };

        let log_target = match opt_str(&map, "pluginLogFile")? {
            None | Some("") => LogTarget::File(PathBuf::from(DEFAULT_LOG_FILE)),
            Some(s) => parse_log_file(s)?,
        };

        let log_level = match opt_str(&map, "pluginLogLevel")? {
            None | Some("") => LevelFilter::DEBUG,
            Some(s) => parse_log_level(s)?,
        };

        let pod_sg_enforcing_mode = match opt_str(&map, "podSGEnforcingMode")? {
            None | Some("") | Some("strict") => SgEnforcingMode::Strict,
            Some("standard") => SgEnforcingMode::Standard,
            Some(other) => {
                return Err(CniError::InvalidConfig {
                    key: "podSGEnforcingMode",
                    reason: format!("{other:?} is neither \"strict\" nor \"standard\""),
                });
            }
        };

        let ipamd_socket = match opt_str(&map, "ipamdSocket")? {
            None | Some("") => PathBuf::from(DEFAULT_IPAMD_SOCKET),
            Some(s) if !s.starts_with('/') => {
                return Err(CniError::InvalidConfig {
                    key: "ipamdSocket",
                    reason: format!("{s:?} is not an absolute path"),
                });
            }
            Some(s) => PathBuf::from(s),
        };

        let prev_result = match map.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(PrevResult::from_value(v)),
            Some(other) => return Err(wrong_type("prevResult", "an object", other)),
        };

        let mut valid_attachments: Option<Vec<GcAttachment>> = None;
        for key in [VALID_ATTACHMENTS_KEY, ATTACHMENTS_KEY] {
            if let Some(list) = parse_attachments(&map, key)? {
                let all = valid_attachments.get_or_insert_with(Vec::new);
                for a in list {
                    if !all.contains(&a) {
                        all.push(a);
                    }
                }
            }
        }

        Ok(Self {
            cni_version,
            name,
            veth_prefix,
            mtu,
            log_target,
            log_level,
            pod_sg_enforcing_mode,
            ipamd_socket,
            prev_result,
            valid_attachments,
        })
    }

    /// The network name, required by the verbs that talk about attachments.
    pub fn network_name(&self) -> Result<&str, CniError> {
        self.name.as_deref().ok_or(CniError::InvalidConfig {
            key: "name",
            reason: "missing; the network name is part of the attachment's key".into(),
        })
    }
}

/// The network name must satisfy the same rule as container IDs (what libcni enforces).
fn validate_network_name(name: &str) -> Result<(), CniError> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidConfig {
            key: "name",
            reason: format!(
                "{name:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
            ),
        })
    }
}

/// Prefixes of the node's own interfaces: a host veth named after one of them could be taken
/// for (or collide with) an ENI, a VLAN or loopback. ipamd refuses the same ones for
/// `AWS_VPC_K8S_CNI_VETHPREFIX`.
pub const RESERVED_VETH_PREFIXES: [&str; 3] = ["eth", "lo", "vlan"];

/// `vethPrefix`: 1..=4 of `[A-Za-z0-9_.-]` (the rule ipamd applies to
/// `AWS_VPC_K8S_CNI_VETHPREFIX`, so every conflist ipamd writes is one the plugin accepts), and
/// none of [`RESERVED_VETH_PREFIXES`].
fn validate_veth_prefix(prefix: &str) -> Result<(), CniError> {
    let invalid = |reason: String| CniError::InvalidConfig {
        key: "vethPrefix",
        reason,
    };
    if prefix.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(invalid(format!(
            "{prefix:?} contains {c:?}; only ASCII letters, digits, '_', '.' and '-' can start a host interface name"
        )));
    }
    if prefix.len() > MAX_VETH_PREFIX_LEN {
        return Err(invalid(format!(
            "{prefix:?} is longer than {MAX_VETH_PREFIX_LEN} characters"
        )));
    }
    if RESERVED_VETH_PREFIXES.contains(&prefix) {
        return Err(invalid(format!(
            "{prefix:?} is reserved for the node's own interfaces ({})",
            RESERVED_VETH_PREFIXES.join(", ")
        )));
    }
    Ok(())
}

/// `pluginLogFile`: `stderr`, or an absolute file path without `..` components that is not a
/// directory. `stdout` is refused (it carries the CNI result); a relative path would depend on
/// the runtime's working directory, and `..` would let a config written for one directory
/// climb out of it (`/var/log/aws-routed-eni/../../etc/x`). ipamd applies the same rule to
/// `AWS_VPC_K8S_PLUGIN_LOG_FILE`.
pub fn parse_log_file(value: &str) -> Result<LogTarget, CniError> {
    let invalid = |reason: String| CniError::InvalidConfig {
        key: "pluginLogFile",
        reason,
    };
    if value.eq_ignore_ascii_case("stderr") {
        return Ok(LogTarget::Stderr);
    }
    if value.eq_ignore_ascii_case("stdout") {
        return Err(invalid(
            "\"stdout\" is refused: stdout carries the CNI result (use stderr or an absolute file path)"
                .into(),
        ));
    }
    if value.contains('\0') {
        return Err(invalid(format!("{value:?} contains a NUL byte")));
    }
    let path = std::path::Path::new(value);
    if !path.is_absolute() {
        return Err(invalid(format!(
            "{value:?} is not an absolute path (use stderr or an absolute file path)"
        )));
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(invalid(format!(
            "{value:?} contains a \"..\" component; give the log file's path without it"
        )));
    }
    if value.ends_with('/') || path.is_dir() {
        return Err(invalid(format!(
            "{value:?} is a directory, not a file path"
        )));
    }
    Ok(LogTarget::File(path.to_path_buf()))
}

fn parse_mtu_str(s: &str) -> Result<u32, CniError> {
    let v: u64 = s.trim().parse().map_err(|_| CniError::InvalidConfig {
        key: "mtu",
        reason: format!("{s:?} is not a whole number"),
    })?;
    check_mtu(v, s)
}

fn check_mtu(v: u64, shown: &str) -> Result<u32, CniError> {
    match u32::try_from(v) {
        Ok(m) if (MIN_MTU..=MAX_MTU).contains(&m) => Ok(m),
        _ => Err(CniError::InvalidConfig {
            key: "mtu",
            reason: format!("{shown} is outside {MIN_MTU}..={MAX_MTU}"),
        }),
    }
}

fn parse_log_level(s: &str) -> Result<LevelFilter, CniError> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Ok(LevelFilter::TRACE),
        "debug" => Ok(LevelFilter::DEBUG),
        "info" => Ok(LevelFilter::INFO),
        "warn" | "warning" => Ok(LevelFilter::WARN),
        // The reference's zap levels above error all log errors only.
        "error" | "dpanic" | "panic" | "fatal" => Ok(LevelFilter::ERROR),
        "off" | "none" => Ok(LevelFilter::OFF),
        _ => Err(CniError::InvalidConfig {
            key: "pluginLogLevel",
            reason: format!("{s:?} is not one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL, OFF"),
        }),
    }
}

fn parse_attachments(
    map: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<Vec<GcAttachment>>, CniError> {
    let list = match map.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(other) => return Err(wrong_type(key, "an array", other)),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(wrong_type(&format!("{key}[{i}]"), "an object", item));
        };
        let field = |name: &str| -> Result<String, CniError> {
            match obj.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(Value::String(_)) | None | Some(Value::Null) => Err(CniError::InvalidConfig {
                    key,
                    reason: format!("entry {i} has no {name:?}"),
                }),
                Some(other) => Err(wrong_type(&format!("{key}[{i}].{name}"), "a string", other)),
            }
        };
        out.push(GcAttachment {
            container_id: field("containerID")?,
            ifname: field("ifname")?,
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    fn code(s: &str) -> u32 {
        match parse(s) {
            Ok(_) => 0,
            Err(e) => e.cni_code(),
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"aws-cni","type":"aws-cni"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.name.as_deref(), Some("aws-cni"));
        assert_eq!(c.veth_prefix, "eni");
        assert_eq!(c.mtu, 9001);
        assert_eq!(c.log_target, LogTarget::File(DEFAULT_LOG_FILE.into()));
        assert_eq!(c.log_level, LevelFilter::DEBUG);
        assert_eq!(c.pod_sg_enforcing_mode, SgEnforcingMode::Strict);
        assert_eq!(c.ipamd_socket, PathBuf::from(DEFAULT_IPAMD_SOCKET));
        assert!(c.prev_result.is_none());
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn the_written_conflist_entry_parses() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"aws-cni","type":"aws-cni","vethPrefix":"eni",
                "mtu":"9001","podSGEnforcingMode":"strict",
                "pluginLogFile":"/var/log/aws-routed-eni/plugin.log","pluginLogLevel":"DEBUG",
                "ipamdSocket":"/tmp/x/ipamd.sock","capabilities":{"io.kubernetes.cri.pod-annotations":true},
                "runtimeConfig":{},"args":{"cni":{}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.ipamd_socket, PathBuf::from("/tmp/x/ipamd.sock"));
    }

    #[test]
    fn mtu_accepts_strings_and_numbers_in_range() {
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","mtu":1500}"#)
                .map(|c| c.mtu)
                .ok(),
            Some(1500)
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","mtu":"576"}"#)
                .map(|c| c.mtu)
                .ok(),
            Some(576)
        );
        assert_eq!(code(r#"{"cniVersion":"1.0.0","mtu":100}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","mtu":"9002"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","mtu":"abc"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","mtu":-1}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","mtu":1500.5}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","mtu":true}"#), 6);
    }

    #[test]
    fn veth_prefix_rules() {
        assert_eq!(code(r#"{"cniVersion":"1.0.0","vethPrefix":"abcd"}"#), 0);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","vethPrefix":"toolong"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","vethPrefix":""}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","vethPrefix":"a/b"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","vethPrefix":5}"#), 6);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","vethPrefix":"a.b"}"#), 0);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","vethPrefix":"c_-1"}"#), 0);
        for reserved in ["eth", "lo", "vlan"] {
            let conf = format!(r#"{{"cniVersion":"1.0.0","vethPrefix":"{reserved}"}}"#);
            match parse(&conf) {
                Err(CniError::InvalidConfig { key, reason }) => {
                    assert_eq!(key, "vethPrefix");
                    assert!(reason.contains("reserved"), "{reason}");
                }
                other => panic!("{reserved}: {other:?}"),
            }
        }
        assert_eq!(code(r#"{"cniVersion":"1.0.0","vethPrefix":"é"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","vethPrefix":"a b"}"#), 7);
    }

    #[test]
    fn plugin_log_file_must_be_an_absolute_file_path_without_dotdot() {
        let target = |s: &str| {
            parse(&format!(
                r#"{{"cniVersion":"1.0.0","pluginLogFile":{}}}"#,
                serde_json::Value::from(s)
            ))
            .map(|c| c.log_target)
        };
        assert_eq!(
            target("/var/log/aws-routed-eni/plugin.log").ok(),
            Some(LogTarget::File("/var/log/aws-routed-eni/plugin.log".into()))
        );
        assert_eq!(target("STDERR").ok(), Some(LogTarget::Stderr));
        for (bad, why) in [
            ("plugin.log", "absolute"),
            ("./plugin.log", "absolute"),
            ("../../etc/x", "absolute"),
            ("/var/log/aws-routed-eni/../../etc/x", "\"..\""),
            ("/var/log/..", "\"..\""),
            ("/var/log/aws-routed-eni/", "directory"),
            ("/tmp", "directory"),
            ("/var/log/a\u{0}b", "NUL"),
            ("stdout", "stdout"),
        ] {
            match target(bad) {
                Err(CniError::InvalidConfig {
                    key: "pluginLogFile",
                    reason,
                }) => {
                    assert!(reason.contains(why), "{bad}: {reason}")
                }
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn configs_of_0_3_x_parse_with_their_prev_result() {
        for v in ["0.3.0", "0.3.1"] {
            let c = parse(&format!(
                r#"{{"cniVersion":"{v}","name":"aws-cni","type":"aws-cni","prevResult":
                   {{"cniVersion":"{v}","interfaces":[{{"name":"eni0123456789a"}},
                     {{"name":"eth0","sandbox":"/run/netns/p"}}],
                     "ips":[{{"version":"4","address":"10.0.2.20/32","interface":1}}]}}}}"#
            ))
            .unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(c.cni_version.as_str(), v);
            let prev = c
                .prev_result
                .unwrap_or_else(|| panic!("{v}: no prevResult"));
            assert_eq!(
                prev.pod_ips("eth0"),
                vec![std::net::IpAddr::from([10, 0, 2, 20])]
            );
        }
    }

    #[test]
    fn version_errors_are_code_1() {
        assert_eq!(code(r#"{"name":"x"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"0.2.0"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"9.9.9"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":1}"#), 6);
    }

    #[test]
    fn undecodable_input_is_code_6() {
        assert_eq!(code(""), 6);
        assert_eq!(code("{"), 6);
        assert_eq!(code("[]"), 6);
        assert_eq!(code("{\"cniVersion\":\"1.0.0\"}\0"), 6);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","prevResult":"x"}"#), 6);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":7}"#), 6);
        match parse("{\"a\":1}\0") {
            Err(CniError::Decode { reason, .. }) => {
                assert!(reason.contains("NUL byte at offset 7"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_invalid_values_are_code_7() {
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","pluginLogFile":"stdout"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","podSGEnforcingMode":"loose"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","pluginLogLevel":"chatty"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","ipamdSocket":"rel/path"}"#),
            7
        );
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"bad name"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"a\u0000b"}"#), 7);
    }

    #[test]
    fn log_target_and_level() {
        let c = parse(r#"{"cniVersion":"1.0.0","pluginLogFile":"stderr","pluginLogLevel":"info"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.log_target, LogTarget::Stderr);
        assert_eq!(c.log_level, LevelFilter::INFO);
    }

    #[test]
    fn gc_attachment_lists_are_merged() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n",
               "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
               "cni.dev/attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth0"}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let list = c.valid_attachments.unwrap_or_default();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].container_id, "b");
        assert_eq!(
            code(r#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"a"}]}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":{}}"#),
            6
        );
        let empty = parse(r#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[]}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(empty.valid_attachments, Some(vec![]));
    }

    #[test]
    fn stdin_is_bounded() {
        let big = vec![b' '; MAX_STDIN_BYTES + 1];
        assert!(matches!(read_request(&big[..]), Err(CniError::Io { .. })));
        let ok = vec![b' '; MAX_STDIN_BYTES];
        assert_eq!(
            read_request(&ok[..]).map(|v| v.len()).ok(),
            Some(MAX_STDIN_BYTES)
        );
    }

    #[test]
    fn peek_version_reads_what_it_can() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(peek_version(b"garbage"), None);
    }
}
