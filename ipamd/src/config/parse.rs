//! Parse functions for single environment values. Each returns the reason a value is rejected;
//! the caller ([`super::Reader`]) wraps it with the variable name and the raw value, so every
//! startup error names both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// Go's `strconv.ParseBool`, which the reference uses for every boolean knob.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(
            "not a boolean (accepted: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)"
                .into(),
        ),
    }
}

/// A decimal integer as Go's `strconv.Atoi` reads it (optional sign, digits, no spaces).
pub fn parse_int(value: &str) -> Result<i64, String> {
    value
        .parse::<i64>()
        .map_err(|_| "not an integer".to_owned())
}

/// A non-negative integer that fits in `u32`.
pub fn parse_non_negative(value: &str) -> Result<u32, String> {
    let n = parse_int(value)?;
    if n < 0 {
        return Err("must not be negative".into());
    }
    u32::try_from(n).map_err(|_| format!("must be at most {}", u32::MAX))
}

/// Smallest and largest IPv4 MTU the reference accepts for ENIs and pods.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9001;

/// An IPv4 MTU in 576..=9001.
pub fn parse_mtu(value: &str) -> Result<u32, String> {
    let n = parse_int(value)?;
    match u32::try_from(n) {
        Ok(mtu) if MTU_RANGE.contains(&mtu) => Ok(mtu),
        _ => Err(format!(
            "MTU must be between {} and {}",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        )),
    }
}

/// A comma-separated list of IPv4 CIDRs (`10.0.0.0/16,192.168.0.0/24`). Blank items, such as a
/// trailing comma, are skipped; anything else that is not an IPv4 CIDR is an error.
pub fn parse_cidr_list(value: &str) -> Result<Vec<Ipv4Net>, String> {
    let mut out = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let net: Ipv4Net = item
            .parse()
            .map_err(|_| format!("{item:?} is not an IPv4 CIDR (expected a.b.c.d/n)"))?;
        out.push(net);
    }
    Ok(out)
}

/// Host veth prefix: 1..=4 characters (14-char veth names must fit IFNAMSIZ), and not a prefix
/// that collides with the node's own interfaces (`eth`, `lo`, `vlan`), as the reference checks.
pub fn parse_veth_prefix(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.chars().count() > 4 {
        return Err("must be at most 4 characters".into());
    }
    if matches!(value, "eth" | "lo" | "vlan") {
        return Err("eth, lo and vlan are reserved for the node's own interfaces".into());
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(
            "only ASCII letters, digits, '-', '_' and '.' are allowed in an interface name".into(),
        );
    }
    Ok(value.to_owned())
}

/// Log levels the reference accepts, mapped to `tracing` levels (FATAL logs as ERROR).
pub fn parse_log_level(value: &str) -> Result<tracing::Level, String> {
    match value.to_ascii_uppercase().as_str() {
        "TRACE" => Ok(tracing::Level::TRACE),
        "DEBUG" => Ok(tracing::Level::DEBUG),
        "INFO" => Ok(tracing::Level::INFO),
        "WARN" | "WARNING" => Ok(tracing::Level::WARN),
        "ERROR" | "FATAL" | "PANIC" => Ok(tracing::Level::ERROR),
        _ => Err("not a log level (accepted: DEBUG, INFO, WARN, ERROR, FATAL)".into()),
    }
}

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDestination {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to; parent directories are created.
    File(PathBuf),
}

impl std::fmt::Display for LogDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::Stderr => f.write_str("stderr"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The rule for log file paths (ipamd's own and the plugin's): absolute, without `..`
/// components, not a directory. A relative path would depend on the working directory of
/// whoever opens it (the plugin runs in the runtime's), and `..` lets a value that looks like
/// it stays under `/var/log/aws-routed-eni` climb anywhere (`.../../../etc/x`). The plugin
/// applies the same rule to the conflist's `pluginLogFile`.
pub fn check_log_path(path: &str) -> Result<(), String> {
    let p = std::path::Path::new(path);
    if !p.is_absolute() {
        return Err("is not an absolute path".into());
    }
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err("contains a \"..\" component; give the path without it".into());
    }
    if path.ends_with('/') || p.is_dir() {
        return Err("is a directory, not a file path".into());
    }
    Ok(())
}

/// `stdout`, `stderr` or an absolute file path (ipamd's own log; see [`check_log_path`]).
pub fn parse_log_destination(value: &str) -> Result<LogDestination, String> {
    match value {
        "" => Err("must not be empty (use stdout, stderr or a file path)".into()),
        "stdout" => Ok(LogDestination::Stdout),
        "stderr" => Ok(LogDestination::Stderr),
        path => {
            check_log_path(path)
                .map_err(|e| format!("{e} (use stdout, stderr or an absolute file path)"))?;
            Ok(LogDestination::File(PathBuf::from(path)))
        }
    }
}

/// The plugin's log file: `stderr` or an absolute file path (see [`check_log_path`]). `stdout`
/// is refused because the plugin's stdout carries the CNI result.
pub fn parse_plugin_log_file(value: &str) -> Result<String, String> {
    match value {
        "stdout" => Err("the plugin cannot log to stdout, which carries the CNI result (use stderr or a file path)".into()),
        "" => Err("must not be empty (use stderr or a file path)".into()),
        "stderr" => Ok(value.to_owned()),
        path => {
            check_log_path(path).map_err(|e| format!("{e} (use stderr or an absolute file path)"))?;
            Ok(path.to_owned())
        }
    }
}

/// The plugin's log level; kept as written (it is copied into the conflist) once validated.
pub fn parse_plugin_log_level(value: &str) -> Result<String, String> {
    parse_log_level(value).map(|_| value.to_owned())
}

/// Connmark bit: decimal or `0x` hex (Go's `strconv.ParseInt(s, 0, 64)`), non-zero, 32 bits.
pub fn parse_connmark(value: &str) -> Result<u32, String> {
    let parsed = if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16)
    } else if let Some(oct) = value.strip_prefix('0').filter(|rest| !rest.is_empty()) {
        u64::from_str_radix(oct, 8)
    } else {
        value.parse::<u64>()
    };
    let mark = parsed.map_err(|_| "not an integer (decimal, 0x-hex or 0-octal)".to_owned())?;
    if mark == 0 {
        return Err("must not be 0".into());
    }
    u32::try_from(mark).map_err(|_| "must fit in 32 bits".to_owned())
}

/// Tags for managed ENIs: a JSON object of string values. Keys containing `k8s.amazonaws.com`
/// are reserved for ipamd's own tags and are dropped (returned second, so the caller can warn).
pub fn parse_eni_tags(value: &str) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let parsed: BTreeMap<String, String> = serde_json::from_str(value)
        .map_err(|e| format!("not a JSON object of string values: {e}"))?;
    let mut tags = BTreeMap::new();
    let mut dropped = Vec::new();
    for (k, v) in parsed {
        if k.is_empty() {
            return Err("tag keys must not be empty".into());
        }
        if k.contains("k8s.amazonaws.com") {
            dropped.push(k);
        } else {
            tags.insert(k, v);
        }
    }
    Ok((tags, dropped))
}

/// SNAT port randomization (`AWS_VPC_K8S_CNI_RANDOMIZESNAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomizeSnat {
    /// `--random-fully` (falls back to `--random` where unsupported).
    Prng,
    /// `--random`.
    HashRandom,
    /// No randomization flag.
    None,
}

impl RandomizeSnat {
    /// The setting's value (`prng`, `hashrandom`, `none`), as egress-cni's conflist entry
    /// carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prng => "prng",
            Self::HashRandom => "hashrandom",
            Self::None => "none",
        }
    }
}

/// `prng`, `hashrandom` or `none`.
pub fn parse_randomize_snat(value: &str) -> Result<RandomizeSnat, String> {
    match value {
        "prng" => Ok(RandomizeSnat::Prng),
        "hashrandom" => Ok(RandomizeSnat::HashRandom),
        "none" => Ok(RandomizeSnat::None),
        _ => Err("accepted values: prng, hashrandom, none".into()),
    }
}

/// `POD_SECURITY_GROUP_ENFORCING_MODE`: `strict` or `standard`.
pub fn parse_sg_mode(value: &str) -> Result<String, String> {
    match value {
        "strict" | "standard" => Ok(value.to_owned()),
        _ => Err("accepted values: strict, standard".into()),
    }
}

/// Longest path a Unix socket address can hold (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// An absolute path for a Unix socket.
pub fn parse_socket_path(value: &str) -> Result<PathBuf, String> {
    if !value.starts_with('/') {
        return Err("must be an absolute path".into());
    }
    if value.ends_with('/') {
        return Err("is a directory, not a socket path".into());
    }
    if value.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "is {} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
            value.len()
        ));
    }
    Ok(PathBuf::from(value))
}

/// A non-empty path of a file ipamd writes (checkpoint).
pub fn parse_file_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.ends_with('/') {
        return Err("is a directory, not a file path".into());
    }
    Ok(PathBuf::from(value))
}

/// A non-empty directory path.
pub fn parse_dir_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(PathBuf::from(value))
}

/// Where introspection listens: `host:port` or `unix:<absolute path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddress {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// `INTROSPECTION_BIND_ADDRESS`.
pub fn parse_bind_address(value: &str) -> Result<BindAddress, String> {
    if let Some(path) = value.strip_prefix("unix:") {
        return parse_socket_path(path).map(BindAddress::Unix);
    }
    value
        .parse::<SocketAddr>()
        .map(BindAddress::Tcp)
        .map_err(|_| "expected host:port (e.g. 127.0.0.1:61679) or unix:<absolute path>".into())
}

/// An `http://` or `https://` URL with a host (`AWS_EC2_ENDPOINT`, `CLUSTER_ENDPOINT`).
pub fn parse_url(value: &str) -> Result<String, String> {
    let uri: http::Uri = value.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("the URL must start with http:// or https://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(value.to_owned())
}

/// A Kubernetes label or annotation key (`prefix/name`), checked loosely: non-empty, no spaces.
pub fn parse_k8s_key(value: &str) -> Result<String, String> {
    if value.is_empty() || value.chars().any(char::is_whitespace) {
        return Err("must be a non-empty label/annotation key without spaces".into());
    }
    Ok(value.to_owned())
}

/// Any non-empty string.
pub fn parse_non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn bool_accepts_exactly_what_go_parsebool_accepts() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["yes", "no", "tRuE", " true", "2", "on"] {
            assert!(parse_bool(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn int_parsing_rejects_garbage_and_spaces() {
        assert_eq!(parse_int("-3"), Ok(-3));
        assert_eq!(parse_int("42"), Ok(42));
        assert!(parse_int("4 2").is_err());
        assert!(parse_int("1.5").is_err());
        assert!(parse_int("").is_err());
        assert_eq!(parse_non_negative("0"), Ok(0));
        assert!(parse_non_negative("-1").unwrap_err().contains("negative"));
    }

    #[test]
    fn mtu_range_is_576_to_9001() {
        assert_eq!(parse_mtu("576"), Ok(576));
        assert_eq!(parse_mtu("9001"), Ok(9001));
        assert!(
            parse_mtu("575")
                .unwrap_err()
                .contains("between 576 and 9001")
        );
        assert!(parse_mtu("70000").is_err());
        assert!(parse_mtu("-1500").is_err());
        assert!(parse_mtu("jumbo").is_err());
    }

    #[test]
    fn cidr_lists_parse_and_name_the_bad_item() {
        let nets = parse_cidr_list("10.0.0.0/16, 192.168.1.0/24,").unwrap();
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[1].to_string(), "192.168.1.0/24");
        assert!(parse_cidr_list("").unwrap().is_empty());
        let err = parse_cidr_list("10.0.0.0/16,10.1.0.0/33").unwrap_err();
        assert!(err.contains("10.1.0.0/33"), "{err}");
        assert!(parse_cidr_list("fd00::/8").is_err());
        assert!(parse_cidr_list("10.0.0.1").is_err());
    }

    #[test]
    fn veth_prefix_rules() {
        assert_eq!(parse_veth_prefix("eni").unwrap(), "eni");
        assert_eq!(parse_veth_prefix("cali").unwrap(), "cali");
        assert!(
            parse_veth_prefix("toolong")
                .unwrap_err()
                .contains("4 characters")
        );
        for reserved in ["eth", "lo", "vlan"] {
            assert!(
                parse_veth_prefix(reserved)
                    .unwrap_err()
                    .contains("reserved")
            );
        }
        assert!(parse_veth_prefix("").is_err());
        assert!(parse_veth_prefix("a/b").is_err());
    }

    #[test]
    fn log_levels_and_destinations() {
        assert_eq!(parse_log_level("debug"), Ok(tracing::Level::DEBUG));
        assert_eq!(parse_log_level("FATAL"), Ok(tracing::Level::ERROR));
        assert_eq!(parse_log_level("Warn"), Ok(tracing::Level::WARN));
        assert!(parse_log_level("loud").is_err());
        assert_eq!(parse_log_destination("stdout"), Ok(LogDestination::Stdout));
        assert_eq!(parse_log_destination("stderr"), Ok(LogDestination::Stderr));
        assert_eq!(
            parse_log_destination("/var/log/x.log"),
            Ok(LogDestination::File("/var/log/x.log".into()))
        );
        assert!(parse_log_destination("/var/log/").is_err());
        for bad in [
            "ipamd.log",
            "../../etc/x",
            "/var/log/aws-routed-eni/../../etc/x",
            "/tmp",
        ] {
            assert!(parse_log_destination(bad).is_err(), "{bad}");
            assert!(parse_plugin_log_file(bad).is_err(), "{bad}");
        }
        assert!(
            parse_plugin_log_file("/var/log/aws-routed-eni/../../etc/x")
                .unwrap_err()
                .contains("\"..\"")
        );
        assert!(
            parse_plugin_log_file("plugin.log")
                .unwrap_err()
                .contains("absolute")
        );
        assert_eq!(
            parse_plugin_log_file("/var/log/aws-routed-eni/plugin.log").unwrap(),
            "/var/log/aws-routed-eni/plugin.log"
        );
        assert!(
            parse_plugin_log_file("stdout")
                .unwrap_err()
                .contains("stdout")
        );
        assert_eq!(parse_plugin_log_file("stderr").unwrap(), "stderr");
        assert_eq!(parse_plugin_log_level("INFO").unwrap(), "INFO");
        assert!(parse_plugin_log_level("chatty").is_err());
    }

    #[test]
    fn connmark_accepts_hex_decimal_and_octal() {
        assert_eq!(parse_connmark("0x80"), Ok(0x80));
        assert_eq!(parse_connmark("128"), Ok(128));
        assert_eq!(parse_connmark("0200"), Ok(128));
        assert!(parse_connmark("0").is_err());
        assert!(parse_connmark("0x1ffffffff").is_err());
        assert!(parse_connmark("mark").is_err());
    }

    #[test]
    fn eni_tags_drop_reserved_keys() {
        let (tags, dropped) =
            parse_eni_tags(r#"{"team":"net","node.k8s.amazonaws.com/x":"y"}"#).unwrap();
        assert_eq!(tags.get("team").map(String::as_str), Some("net"));
        assert_eq!(dropped, vec!["node.k8s.amazonaws.com/x".to_owned()]);
        assert!(parse_eni_tags("{}").unwrap().0.is_empty());
        assert!(parse_eni_tags(r#"{"a":1}"#).is_err());
        assert!(parse_eni_tags("[1]").is_err());
        assert!(parse_eni_tags("{not json").unwrap_err().contains("JSON"));
    }

    #[test]
    fn enumerations() {
        assert_eq!(parse_randomize_snat("prng"), Ok(RandomizeSnat::Prng));
        assert_eq!(
            parse_randomize_snat("hashrandom"),
            Ok(RandomizeSnat::HashRandom)
        );
        assert_eq!(parse_randomize_snat("none"), Ok(RandomizeSnat::None));
        assert!(parse_randomize_snat("random").is_err());
        assert_eq!(parse_sg_mode("standard").unwrap(), "standard");
        assert!(parse_sg_mode("loose").is_err());
    }

    #[test]
    fn paths_and_addresses() {
        assert!(parse_socket_path("relative.sock").is_err());
        assert!(
            parse_socket_path(&format!("/{}", "a".repeat(200)))
                .unwrap_err()
                .contains("at most 107")
        );
        assert_eq!(
            parse_socket_path("/run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            parse_bind_address("127.0.0.1:61679"),
            Ok(BindAddress::Tcp("127.0.0.1:61679".parse().unwrap()))
        );
        assert_eq!(
            parse_bind_address("unix:/run/i.sock"),
            Ok(BindAddress::Unix("/run/i.sock".into()))
        );
        assert!(parse_bind_address("localhost").is_err());
        assert!(parse_file_path("").is_err());
        assert!(parse_file_path("/var/run/aws-node/").is_err());
        assert!(parse_dir_path("").is_err());
    }

    #[test]
    fn urls_need_scheme_and_host() {
        assert!(parse_url("https://ec2.us-west-2.amazonaws.com").is_ok());
        assert!(parse_url("http://127.0.0.1:5000").is_ok());
        assert!(parse_url("ec2.amazonaws.com").is_err());
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("not a url").is_err());
    }
}
