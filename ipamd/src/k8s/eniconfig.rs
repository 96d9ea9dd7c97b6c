//! The ENIConfig custom resource of custom networking (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`):
//! which ENIConfig a node uses ([`node_eniconfig_name`]), reading it ([`get`]), checking it
//! ([`EniConfigSpec::validate`]) and the security groups a new ENI gets from it
//! ([`EniConfigSpec::groups_for_new_eni`]).
//!
//! The resource is the reference's (`pkg/apis/crd/v1alpha1`, defined for clusters by
//! `conf/eniconfig-crd.yaml`), and the choice of name follows its `pkg/eniconfig`. The reference
//! reads the ENIConfig again before each ENI it creates, so an edited ENIConfig applies to the
//! next ENI and never moves existing ones; callers are expected to do the same.

use std::collections::BTreeMap;
use std::fmt;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use super::KubeError;

/// API group of the ENIConfig resource.
pub const ENICONFIG_GROUP: &str = "crd.k8s.amazonaws.com";
/// API version of the ENIConfig resource.
pub const ENICONFIG_VERSION: &str = "v1alpha1";
/// Plural (URL) name of the ENIConfig resource.
pub const ENICONFIG_PLURAL: &str = "eniconfigs";
/// Kind of the ENIConfig resource.
pub const ENICONFIG_KIND: &str = "ENIConfig";

/// Node label that names the node's ENIConfig ahead of the configured annotation and label: set
/// by whatever manages ENIConfigs out of band (the kubelet's `--node-labels`, a provisioner).
pub const EXTERNAL_ENICONFIG_LABEL: &str = "vpc.amazonaws.com/externalEniConfig";

/// The ENIConfig a node uses when nothing on the node names one. The reference also treats a
/// node whose ENIConfig is called this as having no node-specific ENIConfig (it then does not
/// advertise custom networking in the node's CNINode).
pub const DEFAULT_ENICONFIG_NAME: &str = "default";

/// The `spec` of an ENIConfig: where a node's secondary ENIs go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EniConfigSpec {
    /// ID of the subnet of the secondary ENIs (`subnet-…`). Missing reads as empty, which
    /// [`EniConfigSpec::validate`] refuses with a message instead of a parse error.
    #[serde(default)]
    pub subnet: String,
    /// IDs of their security groups (`sg-…`); empty (or absent, or null) means the primary ENI's.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub security_groups: Vec<String>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Where a node's ENIConfig name came from, for logs and Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EniConfigSource {
    /// The node label [`EXTERNAL_ENICONFIG_LABEL`].
    ExternalLabel,
    /// The node annotation with this key (`ENI_CONFIG_ANNOTATION_DEF`).
    Annotation(String),
    /// The node label with this key (`ENI_CONFIG_LABEL_DEF`).
    Label(String),
    /// Nothing on the node: [`DEFAULT_ENICONFIG_NAME`].
    Default,
}

impl fmt::Display for EniConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExternalLabel => write!(f, "node label {EXTERNAL_ENICONFIG_LABEL}"),
            Self::Annotation(key) => write!(f, "node annotation {key}"),
            Self::Label(key) => write!(f, "node label {key}"),
            Self::Default => write!(
                f,
                "the fallback name {DEFAULT_ENICONFIG_NAME:?} (no ENIConfig annotation or label on the node)"
            ),
        }
    }
}

/// The ENIConfig a node uses, and what named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEniConfig {
    /// The ENIConfig's name.
    pub name: String,
    /// What named it.
    pub source: EniConfigSource,
}

/// Why a node has no usable ENIConfig.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EniConfigError {
    /// The annotation or label naming the ENIConfig is there but empty.
    #[error(
        "{origin} is empty: set it to the name of an ENIConfig (kubectl get eniconfigs), or remove it"
    )]
    EmptyName {
        /// The annotation or label.
        origin: EniConfigSource,
    },
    /// The annotation or label holds something no ENIConfig can be called.
    #[error(
        "{origin} is {name:?}, which cannot name an ENIConfig ({reason}): set it to the name of an ENIConfig (kubectl get eniconfigs)"
    )]
    BadName {
        /// The annotation or label.
        origin: EniConfigSource,
        /// Its value.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The ENIConfig's subnet is not a subnet ID.
    #[error(
        "ENIConfig {eniconfig}: spec.subnet {subnet:?} is not a subnet ID: set it to the ID of a subnet (subnet-0123456789abcdef0) in the node's availability zone (kubectl edit eniconfig {eniconfig})"
    )]
    BadSubnet {
        /// The ENIConfig.
        eniconfig: String,
        /// Its `spec.subnet`.
        subnet: String,
    },
    /// One of the ENIConfig's security groups is not a security group ID.
    #[error(
        "ENIConfig {eniconfig}: spec.securityGroups[{index}] {group:?} is not a security group ID: list IDs (sg-0123456789abcdef0), not names, or leave the list empty to use the primary ENI's groups (kubectl edit eniconfig {eniconfig})"
    )]
    BadSecurityGroup {
        /// The ENIConfig.
        eniconfig: String,
        /// Position in `spec.securityGroups`.
        index: usize,
        /// The entry.
        group: String,
    },
}

/// The name of the node's ENIConfig, from its labels and annotations, with the reference's
/// precedence: label [`EXTERNAL_ENICONFIG_LABEL`], then the annotation `annotation_key`
/// (`ENI_CONFIG_ANNOTATION_DEF`), then the label `label_key` (`ENI_CONFIG_LABEL_DEF`), then
/// [`DEFAULT_ENICONFIG_NAME`]. A value is used as it is: with `ENI_CONFIG_LABEL_DEF` set to
/// `topology.kubernetes.io/zone` a node in `us-west-2a` uses the ENIConfig named `us-west-2a`.
///
/// The first key present wins even when its value is unusable, as in the reference (where the
/// lookup of that name then fails).
///
/// # Errors
/// The winning annotation or label is empty ([`EniConfigError::EmptyName`]) or is not a
/// possible object name ([`EniConfigError::BadName`]).
pub fn node_eniconfig_name(
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    annotation_key: &str,
    label_key: &str,
) -> Result<NodeEniConfig, EniConfigError> {
    let (name, origin) = if let Some(v) = labels.get(EXTERNAL_ENICONFIG_LABEL) {
        (v.as_str(), EniConfigSource::ExternalLabel)
    } else if let Some(v) = annotations.get(annotation_key) {
        (
            v.as_str(),
            EniConfigSource::Annotation(annotation_key.to_owned()),
        )
    } else if let Some(v) = labels.get(label_key) {
        (v.as_str(), EniConfigSource::Label(label_key.to_owned()))
    } else {
        (DEFAULT_ENICONFIG_NAME, EniConfigSource::Default)
    };
    if name.is_empty() {
        return Err(EniConfigError::EmptyName { origin });
    }
    if let Err(reason) = check_object_name(name) {
        return Err(EniConfigError::BadName {
            origin,
            name: name.to_owned(),
            reason,
        });
    }
    Ok(NodeEniConfig {
        name: name.to_owned(),
        source: origin,
    })
}

/// Custom resources are named by DNS subdomains (RFC 1123): anything else cannot exist, and a
/// `/` would change the URL of the read.
fn check_object_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if !name.chars().all(allowed) {
        return Err("only lowercase letters, digits, '-' and '.' are allowed");
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Err("it must start and end with a lowercase letter or a digit");
    }
    Ok(())
}

/// Whether `id` is `prefix` followed by lowercase hex digits, the shape of EC2 resource IDs.
fn is_ec2_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

impl EniConfigSpec {
    /// Checks the spec of the ENIConfig `eniconfig` before an ENI is created from it, so that a
    /// typo is reported against the ENIConfig rather than as an EC2 error.
    ///
    /// # Errors
    /// `subnet` is not a subnet ID, or an entry of `securityGroups` is not a security group ID
    /// (the first one found).
    pub fn validate(&self, eniconfig: &str) -> Result<(), EniConfigError> {
        if !is_ec2_id(&self.subnet, "subnet-") {
            return Err(EniConfigError::BadSubnet {
                eniconfig: eniconfig.to_owned(),
                subnet: self.subnet.clone(),
            });
        }
        if let Some((index, group)) = self
            .security_groups
            .iter()
            .enumerate()
            .find(|(_, g)| !is_ec2_id(g, "sg-"))
        {
            return Err(EniConfigError::BadSecurityGroup {
                eniconfig: eniconfig.to_owned(),
                index,
                group: group.clone(),
            });
        }
        Ok(())
    }

    /// The security groups of an ENI created from this spec: its own, or when it lists none
    /// the primary ENI's (`primary_eni_groups`, which the reference passes sorted), as the
    /// reference does (with a warning, which the caller logs when this returns
    /// `primary_eni_groups`).
    pub fn groups_for_new_eni<'a>(&'a self, primary_eni_groups: &'a [String]) -> &'a [String] {
        if self.security_groups.is_empty() {
            primary_eni_groups
        } else {
            &self.security_groups
        }
    }
}

/// The ENIConfig resource, for [`Api`] over [`DynamicObject`].
fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(ENICONFIG_GROUP, ENICONFIG_VERSION, ENICONFIG_KIND),
        ENICONFIG_PLURAL,
    )
}

/// The spec of a fetched ENIConfig object; an object without `spec` reads as an empty one.
fn spec_of(object: &DynamicObject) -> Result<EniConfigSpec, serde_json::Error> {
    match object.data.get("spec") {
        None | Some(serde_json::Value::Null) => Ok(EniConfigSpec::default()),
        Some(spec) => EniConfigSpec::deserialize(spec),
    }
}

/// Reads the ENIConfig `name` (cluster-scoped). `Ok(None)` when there is none by that name (or
/// when the ENIConfig resource is not defined in the cluster). The spec is returned unchecked:
/// see [`EniConfigSpec::validate`].
///
/// # Errors
/// The API server refused or did not answer, or the object's spec is not an ENIConfig spec.
pub async fn get(client: &kube::Client, name: &str) -> Result<Option<EniConfigSpec>, KubeError> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource());
    let what = || format!("reading ENIConfig {name}");
    // The caller marks this call's permission (`permission!` in client.rs).
    let Some(object) = api.get_opt(name).await.map_err(|source| KubeError::Api {
        what: what(),
        source,
    })?
    else {
        return Ok(None);
    };
    spec_of(&object).map(Some).map_err(|e| KubeError::Api {
        what: what(),
        source: kube::Error::SerdeError(e),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{Config, ENABLE_IMDS_ONLY_MODE, MY_NODE_NAME};

    /// The configured keys when neither variable is set (ipamd's configuration owns them).
    fn default_keys() -> (String, String) {
        let env = HashMap::from([(ENABLE_IMDS_ONLY_MODE, "true"), (MY_NODE_NAME, "node-1")]);
        let k = Config::from_env(&env).unwrap().kubernetes;
        (k.eni_config_annotation, k.eni_config_label)
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn pick(
        annotations: &[(&str, &str)],
        labels: &[(&str, &str)],
    ) -> Result<NodeEniConfig, EniConfigError> {
        let (a, l) = default_keys();
        node_eniconfig_name(&map(annotations), &map(labels), &a, &l)
    }

    const KEY: &str = "k8s.amazonaws.com/eniConfig";

    #[test]
    fn default_keys_are_the_references() {
        assert_eq!(default_keys(), (KEY.to_owned(), KEY.to_owned()));
    }

    /// `ENI_CONFIG_ANNOTATION_DEF` and `ENI_CONFIG_LABEL_DEF` set the keys the node is read
    /// with: the annotation's first, then the label's.
    #[test]
    fn eni_config_annotation_def_and_label_def_choose_the_keys() {
        use crate::config::{ENI_CONFIG_ANNOTATION_DEF, ENI_CONFIG_LABEL_DEF};
        let env = HashMap::from([
            (ENABLE_IMDS_ONLY_MODE, "true"),
            (MY_NODE_NAME, "node-1"),
            (ENI_CONFIG_ANNOTATION_DEF, "example.com/eni"),
            (ENI_CONFIG_LABEL_DEF, "topology.kubernetes.io/zone"),
        ]);
        let k = Config::from_env(&env).unwrap().kubernetes;
        let labels = map(&[
            (KEY, "default-key"),
            ("topology.kubernetes.io/zone", "us-west-2a"),
        ]);
        let by_label = node_eniconfig_name(
            &BTreeMap::new(),
            &labels,
            &k.eni_config_annotation,
            &k.eni_config_label,
        )
        .unwrap();
        assert_eq!(by_label.name, "us-west-2a");
        let annotations = map(&[("example.com/eni", "pods-b")]);
        let by_annotation = node_eniconfig_name(
            &annotations,
            &labels,
            &k.eni_config_annotation,
            &k.eni_config_label,
        )
        .unwrap();
        assert_eq!(by_annotation.name, "pods-b");
    }

    #[test]
    fn annotation_beats_label() {
        let n = pick(&[(KEY, "from-annotation")], &[(KEY, "from-label")]).unwrap();
        assert_eq!(n.name, "from-annotation");
        assert_eq!(n.source, EniConfigSource::Annotation(KEY.into()));
    }

    #[test]
    fn label_is_used_without_annotation() {
        let n = pick(&[("other", "x")], &[(KEY, "from-label")]).unwrap();
        assert_eq!(n.name, "from-label");
        assert_eq!(n.source, EniConfigSource::Label(KEY.into()));
        assert_eq!(n.source.to_string(), format!("node label {KEY}"));
    }

    #[test]
    fn node_without_either_uses_default() {
        let n = pick(&[], &[("topology.kubernetes.io/zone", "us-west-2a")]).unwrap();
        assert_eq!(n.name, "default");
        assert_eq!(n.source, EniConfigSource::Default);
        assert!(n.source.to_string().contains("\"default\""));
    }

    #[test]
    fn external_label_beats_annotation_and_label() {
        let n = pick(
            &[(KEY, "from-annotation")],
            &[(EXTERNAL_ENICONFIG_LABEL, "managed"), (KEY, "from-label")],
        )
        .unwrap();
        assert_eq!(n.name, "managed");
        assert_eq!(n.source, EniConfigSource::ExternalLabel);
    }

    #[test]
    fn external_key_as_annotation_is_ignored() {
        let n = pick(&[(EXTERNAL_ENICONFIG_LABEL, "managed")], &[]).unwrap();
        assert_eq!(n.name, "default");
    }

    #[test]
    fn zone_label_names_one_eniconfig_per_zone() {
        let labels = map(&[
            (KEY, "ignored"),
            ("topology.kubernetes.io/zone", "us-west-2a"),
        ]);
        let n = node_eniconfig_name(
            &BTreeMap::new(),
            &labels,
            "example.com/eni",
            "topology.kubernetes.io/zone",
        )
        .unwrap();
        assert_eq!(n.name, "us-west-2a");
        assert_eq!(
            n.source,
            EniConfigSource::Label("topology.kubernetes.io/zone".into())
        );
    }

    #[test]
    fn custom_annotation_key_is_read_and_default_key_ignored() {
        let annotations = map(&[(KEY, "old"), ("example.com/eni", "custom")]);
        let n =
            node_eniconfig_name(&annotations, &BTreeMap::new(), "example.com/eni", KEY).unwrap();
        assert_eq!(n.name, "custom");
        assert_eq!(n.source.to_string(), "node annotation example.com/eni");
    }

    #[test]
    fn empty_annotation_is_refused_not_skipped() {
        let err = pick(&[(KEY, "")], &[(KEY, "from-label")]).unwrap_err();
        assert_eq!(
            err,
            EniConfigError::EmptyName {
                origin: EniConfigSource::Annotation(KEY.into())
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "node annotation {KEY} is empty: set it to the name of an ENIConfig (kubectl get eniconfigs), or remove it"
            )
        );
    }

    #[test]
    fn empty_label_is_refused() {
        let err = pick(&[], &[(KEY, "")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("node label {KEY} is empty"))
        );
    }

    #[test]
    fn name_that_no_object_can_have_is_refused() {
        for (value, reason) in [
            ("Us-West-2a", "only lowercase"),
            ("a/b", "only lowercase"),
            ("-az1", "start and end"),
        ] {
            let err = pick(&[(KEY, value)], &[]).unwrap_err().to_string();
            assert!(err.contains(&format!("{value:?}")), "{err}");
            assert!(err.contains(reason), "{err}");
        }
        assert!(pick(&[(KEY, &"a".repeat(254))], &[]).is_err());
        assert!(pick(&[(KEY, "az1.custom-net")], &[]).is_ok());
    }

    fn spec(subnet: &str, groups: &[&str]) -> EniConfigSpec {
        EniConfigSpec {
            subnet: subnet.into(),
            security_groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    #[test]
    fn valid_spec_passes() {
        spec(
            "subnet-0123456789abcdef0",
            &["sg-0a1b2c3d", "sg-0123456789abcdef0"],
        )
        .validate("az1")
        .unwrap();
        spec("subnet-0a1b2c3d", &[]).validate("az1").unwrap();
    }

    #[test]
    fn bad_subnet_is_named_with_the_fix() {
        for subnet in ["", "subnet-", "10.0.0.0/24", "subnet-XYZ", "sg-0a1b2c3d"] {
            let err = spec(subnet, &[]).validate("az1").unwrap_err();
            assert_eq!(
                err,
                EniConfigError::BadSubnet {
                    eniconfig: "az1".into(),
                    subnet: subnet.into()
                }
            );
        }
        let msg = spec("10.0.0.0/24", &[])
            .validate("az1")
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "ENIConfig az1: spec.subnet \"10.0.0.0/24\" is not a subnet ID: set it to the ID of a subnet (subnet-0123456789abcdef0) in the node's availability zone (kubectl edit eniconfig az1)"
        );
    }

    #[test]
    fn bad_security_group_is_named_by_position() {
        let err = spec("subnet-0a1b2c3d", &["sg-0a1b2c3d", "default", "sg-"])
            .validate("az1")
            .unwrap_err();
        assert_eq!(
            err,
            EniConfigError::BadSecurityGroup {
                eniconfig: "az1".into(),
                index: 1,
                group: "default".into()
            }
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "ENIConfig az1: spec.securityGroups[1] \"default\" is not a security group ID: list IDs"
            ),
            "{msg}"
        );
        assert!(msg.contains("primary ENI's groups"), "{msg}");
    }

    #[test]
    fn empty_groups_fall_back_to_primary_eni_groups() {
        let primary = vec!["sg-0000000a".to_owned(), "sg-0000000b".to_owned()];
        assert_eq!(
            spec("subnet-0a1b2c3d", &[]).groups_for_new_eni(&primary),
            primary.as_slice()
        );
        let own = spec("subnet-0a1b2c3d", &["sg-0000000c"]);
        assert_eq!(own.groups_for_new_eni(&primary), ["sg-0000000c".to_owned()]);
    }

    fn object(json: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn fetched_object_deserialises_into_spec() {
        let o = object(serde_json::json!({
            "apiVersion": "crd.k8s.amazonaws.com/v1alpha1",
            "kind": "ENIConfig",
            "metadata": {"name": "us-west-2a", "resourceVersion": "123", "uid": "u-1"},
            "spec": {
                "securityGroups": ["sg-0a1b2c3d", "sg-0123456789abcdef0"],
                "subnet": "subnet-0123456789abcdef0"
            }
        }));
        assert_eq!(o.metadata.name.as_deref(), Some("us-west-2a"));
        assert_eq!(
            spec_of(&o).unwrap(),
            spec(
                "subnet-0123456789abcdef0",
                &["sg-0a1b2c3d", "sg-0123456789abcdef0"]
            )
        );
    }

    #[test]
    fn missing_or_null_groups_read_as_empty() {
        for spec_json in [
            serde_json::json!({"subnet": "subnet-0a1b2c3d"}),
            serde_json::json!({"subnet": "subnet-0a1b2c3d", "securityGroups": null}),
        ] {
            let o = object(serde_json::json!({"metadata": {"name": "x"}, "spec": spec_json}));
            assert_eq!(spec_of(&o).unwrap(), spec("subnet-0a1b2c3d", &[]));
        }
    }

    #[test]
    fn object_without_spec_fails_validation_not_parsing() {
        let o = object(serde_json::json!({"metadata": {"name": "x"}}));
        let s = spec_of(&o).unwrap();
        assert!(matches!(
            s.validate("x"),
            Err(EniConfigError::BadSubnet { .. })
        ));
    }

    #[test]
    fn spec_of_wrong_type_is_an_error() {
        let o = object(serde_json::json!({"metadata": {"name": "x"}, "spec": {"subnet": 7}}));
        assert!(spec_of(&o).is_err());
    }

    // A kube client spawns its request buffer, so it needs a runtime.
    #[tokio::test]
    async fn api_resource_is_cluster_scoped_eniconfigs() {
        let r = api_resource();
        assert_eq!(r.api_version, "crd.k8s.amazonaws.com/v1alpha1");
        assert_eq!(r.plural, "eniconfigs");
        assert_eq!(r.kind, "ENIConfig");
        let api: Api<DynamicObject> = Api::all_with(
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap()))
                .unwrap(),
            &r,
        );
        assert_eq!(
            api.resource_url(),
            "/apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs"
        );
    }

    /// `path = value` for every scalar of a block-style YAML document (list items are entered
    /// like mappings, block scalars skipped): enough for the CRD, with no YAML parser in ipamd.
    fn yaml_scalars(doc: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack: Vec<(usize, String)> = Vec::new();
        let mut block_indent: Option<usize> = None;
        for line in doc.lines() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
                continue;
            }
            let mut indent = line.len() - trimmed.len();
            if let Some(b) = block_indent {
                if indent > b {
                    continue;
                }
                block_indent = None;
            }
            let mut item = trimmed;
            if let Some(rest) = item.strip_prefix("- ") {
                indent += 2;
                item = rest;
            }
            let Some((key, value)) = item.split_once(':') else {
                let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
                out.push((path.join("."), item.to_owned()));
                continue;
            };
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            stack.push((indent, key.to_owned()));
            let value = value.trim();
            if value.starts_with('|') || value.starts_with('>') {
                block_indent = Some(indent);
            } else if !value.is_empty() {
                let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
                out.push((path.join("."), value.to_owned()));
            }
        }
        out
    }

    #[test]
    fn crd_manifest_defines_the_resource_read_here() {
        let doc = include_str!("../../../conf/eniconfig-crd.yaml");
        let scalars = yaml_scalars(doc);
        let get = |path: &str| -> Vec<&str> {
            scalars
                .iter()
                .filter(|(p, _)| p == path)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("apiVersion"), ["apiextensions.k8s.io/v1"]);
        assert_eq!(get("kind"), ["CustomResourceDefinition"]);
        assert_eq!(
            get("metadata.name"),
            [format!("{ENICONFIG_PLURAL}.{ENICONFIG_GROUP}")]
        );
        assert_eq!(get("spec.group"), [ENICONFIG_GROUP]);
        assert_eq!(get("spec.scope"), ["Cluster"]);
        assert_eq!(get("spec.names.kind"), [ENICONFIG_KIND]);
        assert_eq!(get("spec.names.plural"), [ENICONFIG_PLURAL]);
        assert_eq!(get("spec.versions.name"), [ENICONFIG_VERSION]);
        assert_eq!(get("spec.versions.served"), ["true"]);
        assert_eq!(get("spec.versions.storage"), ["true"]);
        let fields = "spec.versions.schema.openAPIV3Schema.properties.spec";
        assert_eq!(get(&format!("{fields}.type")), ["object"]);
        assert_eq!(get(&format!("{fields}.required")), ["subnet"]);
        assert_eq!(get(&format!("{fields}.properties.subnet.type")), ["string"]);
        assert_eq!(
            get(&format!("{fields}.properties.securityGroups.type")),
            ["array"]
        );
        assert_eq!(
            get(&format!("{fields}.properties.securityGroups.items.type")),
            ["string"]
        );
        // The spec's JSON names are the schema's.
        let json = serde_json::to_value(spec("subnet-0a1b2c3d", &["sg-0a1b2c3d"])).unwrap();
        let mut keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["securityGroups", "subnet"]);
    }
}
