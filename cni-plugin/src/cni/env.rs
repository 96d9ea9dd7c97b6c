//! The `CNI_*` environment of one invocation: the verb, the container's identity, and the
//! `CNI_ARGS` key/value list, validated per verb before anything else happens.

use super::error::CniError;

/// `CNI_COMMAND`.
pub const CNI_COMMAND: &str = "CNI_COMMAND";
/// `CNI_CONTAINERID`.
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
/// `CNI_NETNS`.
pub const CNI_NETNS: &str = "CNI_NETNS";
/// `CNI_IFNAME`.
pub const CNI_IFNAME: &str = "CNI_IFNAME";
/// `CNI_ARGS`.
pub const CNI_ARGS: &str = "CNI_ARGS";

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// The verb of an invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Release resources of attachments not in a valid list (1.1.0).
    Gc,
    /// Report whether ADD can be served now (1.1.0).
    Status,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ADD" => Some(Self::Add),
            "DEL" => Some(Self::Del),
            "CHECK" => Some(Self::Check),
            "VERSION" => Some(Self::Version),
            "GC" => Some(Self::Gc),
            "STATUS" => Some(Self::Status),
            _ => None,
        }
    }

    /// The verb as spelled in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Gc => "GC",
            Self::Status => "STATUS",
        }
    }

    /// Whether the verb concerns one attachment (and so needs container ID and ifname).
    pub fn is_attachment_verb(self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }
}

/// The validated environment of an attachment verb (ADD, DEL, CHECK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS`; `None` when unset or empty (allowed on DEL only).
    pub netns: Option<String>,
    /// The parsed `CNI_ARGS`.
    pub args: CniArgs,
}

/// The validated environment of one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    /// The verb.
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub attachment: Option<Attachment>,
}

impl CniEnv {
    /// Reads and validates the environment through `get` (the process environment in `main`,
    /// a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let raw = get(CNI_COMMAND).ok_or(CniError::InvalidEnv {
            var: CNI_COMMAND,
            reason: "not set".into(),
        })?;
        let command = Command::parse(&raw).ok_or_else(|| CniError::InvalidEnv {
            var: CNI_COMMAND,
            reason: format!(
                "unknown command {raw:?} (expected ADD, DEL, CHECK, VERSION, GC or STATUS)"
            ),
        })?;
        if !command.is_attachment_verb() {
            return Ok(Self {
                command,
                attachment: None,
            });
        }
        let container_id = get(CNI_CONTAINERID).unwrap_or_default();
        validate_container_id(&container_id)?;
        let ifname = get(CNI_IFNAME).unwrap_or_default();
        validate_ifname(&ifname)?;
        let netns = get(CNI_NETNS).filter(|s| !s.is_empty());
        if netns.is_none() && command != Command::Del {
            return Err(CniError::InvalidEnv {
                var: CNI_NETNS,
                reason: format!("not set (required for {})", command.as_str()),
            });
        }
        let args = CniArgs::parse(&get(CNI_ARGS).unwrap_or_default())?;
        Ok(Self {
            command,
            attachment: Some(Attachment {
                container_id,
                ifname,
                netns,
                args,
            }),
        })
    }
}

/// Checks `CNI_CONTAINERID` against the spec's `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let invalid = |reason: String| CniError::InvalidEnv {
        var: CNI_CONTAINERID,
        reason,
    };
    let mut chars = id.chars();
    match chars.next() {
        None => return Err(invalid("not set or empty".into())),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(invalid(format!("{id:?} must start with a letter or digit")));
        }
        Some(_) => {}
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(invalid(format!(
            "{id:?} contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"
        )));
    }
    Ok(())
}

/// Checks `CNI_IFNAME`: 1..=15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let invalid = |reason: String| CniError::InvalidEnv {
        var: CNI_IFNAME,
        reason,
    };
    if name.is_empty() {
        return Err(invalid("not set or empty".into()));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(invalid(format!(
            "{name:?} is {} bytes long; interface names have at most {MAX_IFNAME_LEN}",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(invalid(format!("{name:?} is not a valid interface name")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!(
            "{name:?} contains {c:?}, which interface names cannot hold"
        )));
    }
    Ok(())
}

/// `CNI_ARGS` (`K=V;K2=V2`), reduced to the keys the plugin uses; unknown keys are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub pod_uid: Option<String>,
}

impl CniArgs {
    /// Parses `CNI_ARGS`. Empty pairs (a trailing `;`) are skipped; a pair without `=` is an error.
    pub fn parse(raw: &str) -> Result<Self, CniError> {
        let mut args = Self::default();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| CniError::InvalidEnv {
                var: CNI_ARGS,
                reason: format!("{pair:?} is not of the form KEY=VALUE"),
            })?;
            let slot = match key {
                "K8S_POD_NAME" => &mut args.pod_name,
                "K8S_POD_NAMESPACE" => &mut args.pod_namespace,
                "K8S_POD_INFRA_CONTAINER_ID" => &mut args.infra_container_id,
                "K8S_POD_UID" => &mut args.pod_uid,
                _ => continue,
            };
            validate_arg(key, value)?;
            *slot = Some(value.to_string()).filter(|v| !v.is_empty());
        }
        Ok(args)
    }
}

/// Longest value of a pod identity key (a Kubernetes object name, a DNS subdomain, is at most
/// 253 characters; namespaces, UIDs and sandbox IDs are shorter).
pub const MAX_ARG_VALUE_LEN: usize = 253;

/// The pod identity values end up in ipamd's checkpoint, its logs and the host veth's name:
/// anything longer than a Kubernetes name or carrying control characters is refused.
fn validate_arg(key: &str, value: &str) -> Result<(), CniError> {
    let invalid = |reason: String| CniError::InvalidEnv {
        var: CNI_ARGS,
        reason,
    };
    if value.len() > MAX_ARG_VALUE_LEN {
        return Err(invalid(format!(
            "{key} is {} bytes long; at most {MAX_ARG_VALUE_LEN} are accepted",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(format!(
            "{key}={value:?} contains the control character {c:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    fn invalid_var(r: Result<CniEnv, CniError>) -> &'static str {
        match r {
            Err(CniError::InvalidEnv { var, .. }) => var,
            other => panic!("expected InvalidEnv, got {other:?}"),
        }
    }

    /// `validate` accepts every value of `good` and refuses every value of `bad`.
    fn assert_accepts(
        validate: impl Fn(&str) -> Result<(), CniError>,
        good: &[&str],
        bad: &[&str],
    ) {
        for v in good {
            assert!(validate(v).is_ok(), "{v:?} refused");
        }
        for v in bad {
            assert!(validate(v).is_err(), "{v:?} accepted");
        }
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/run/netns/x"),
    ];

    #[test]
    fn add_with_all_vars_parses() {
        let e = env(&ADD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.command, Command::Add);
        let a = e.attachment.unwrap_or_else(|| panic!("attachment"));
        assert_eq!(a.container_id, "abc123");
        assert_eq!(a.ifname, "eth0");
        assert_eq!(a.netns.as_deref(), Some("/run/netns/x"));
    }

    #[test]
    fn missing_or_unknown_command_is_code_4() {
        assert_eq!(invalid_var(env(&[])), CNI_COMMAND);
        assert_eq!(invalid_var(env(&[("CNI_COMMAND", "GET")])), CNI_COMMAND);
    }

    #[test]
    fn version_gc_status_need_no_container_vars() {
        for c in ["VERSION", "GC", "STATUS"] {
            let e = env(&[("CNI_COMMAND", c)]).unwrap_or_else(|e| panic!("{e}"));
            assert!(e.attachment.is_none());
        }
    }

    #[test]
    fn missing_netns_is_an_error_on_add_and_check_but_not_del() {
        for c in ["ADD", "CHECK"] {
            let r = env(&[
                ("CNI_COMMAND", c),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
            ]);
            assert_eq!(invalid_var(r), CNI_NETNS);
        }
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.attachment.and_then(|a| a.netns), None);
    }

    #[test]
    fn container_id_rules() {
        assert_accepts(
            validate_container_id,
            &["a", "0a_b.c-d"],
            &["", "-abc", "_abc", "ab/c", "ab c"],
        );
        let r = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
        ]);
        assert_eq!(invalid_var(r), CNI_CONTAINERID);
    }

    #[test]
    fn ifname_rules() {
        assert_accepts(
            validate_ifname,
            &["eth0", "a23456789012345"],
            &[
                "a234567890123456",
                "",
                ".",
                "..",
                "a/b",
                "a:b",
                "a b",
                "a\tb",
            ],
        );
    }

    #[test]
    fn cni_args_ignore_unknown_keys_and_keep_pod_identity() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=cid;K8S_POD_UID=u-1;",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.infra_container_id.as_deref(), Some("cid"));
        assert_eq!(a.pod_uid.as_deref(), Some("u-1"));
        assert_eq!(CniArgs::parse("").unwrap_or_default(), CniArgs::default());
        assert!(matches!(
            CniArgs::parse("K8S_POD_NAME"),
            Err(CniError::InvalidEnv { var: CNI_ARGS, .. })
        ));
        let long = format!("K8S_POD_NAME={}", "a".repeat(MAX_ARG_VALUE_LEN + 1));
        match CniArgs::parse(&long) {
            Err(CniError::InvalidEnv {
                var: CNI_ARGS,
                reason,
            }) => {
                assert!(
                    reason.contains("K8S_POD_NAME") && reason.contains("254"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(CniArgs::parse(&format!("K8S_POD_NAME={}", "a".repeat(253))).is_ok());
        assert!(CniArgs::parse("K8S_POD_NAMESPACE=a\nb").is_err());
        // Unknown keys are not looked at.
        assert!(CniArgs::parse(&format!("OTHER={}", "x\t".repeat(500))).is_ok());
    }
}
