//! Reading each section of [`Config`] from an [`Env`]: defaults, parsing, and the variable's
//! name and value in every error.

use std::collections::BTreeMap;
use std::time::Duration;

use super::env::Env;
use super::error::ConfigError;
use super::parse::{self, RandomizeSnat};
use super::types::{
    CloudConfig, Features, KubernetesConfig, NodeNetworkConfig, PluginConfig, PoolTargets,
    ProvisioningMode,
};
use super::vars::*;

/// Reads variables from an [`Env`] and wraps parse failures with the variable's name and value.
pub(super) struct Reader<'a, E: Env + ?Sized> {
    env: &'a E,
}

impl<E: Env + ?Sized> Reader<'_, E> {
    /// The raw value; an empty string counts as unset, as in the reference.
    pub(super) fn raw(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(self.env.var(var)?.filter(|v| !v.is_empty()))
    }

    pub(super) fn parse<T>(
        &self,
        var: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(var)? {
            None => Ok(None),
            Some(value) => parse(&value)
                .map(Some)
                .map_err(|reason| ConfigError::Invalid { var, value, reason }),
        }
    }

    pub(super) fn or<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        Ok(self.parse(var, parse)?.unwrap_or(default))
    }

    pub(super) fn bool(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        self.or(var, default, parse::parse_bool)
    }

    pub(super) fn string(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        self.raw(var)
    }
}

impl<'a, E: Env + ?Sized> Reader<'a, E> {
    /// A reader over `env`.
    pub(super) fn new(env: &'a E) -> Self {
        Self { env }
    }
}

impl<E: Env + ?Sized> Reader<'_, E> {
    /// `ENABLE_IMDS_ONLY_MODE` and `DISABLE_NETWORK_RESOURCE_PROVISIONING`.
    pub(super) fn provisioning(&self) -> Result<ProvisioningMode, ConfigError> {
        let imds_only = self.bool(ENABLE_IMDS_ONLY_MODE, false)?;
        let provisioning_disabled = self.bool(DISABLE_NETWORK_RESOURCE_PROVISIONING, false)?;
        Ok(match (imds_only, provisioning_disabled) {
            (true, _) => ProvisioningMode::ImdsOnly,
            (false, true) => ProvisioningMode::ProvisioningDisabled,
            (false, false) => ProvisioningMode::Ec2,
        })
    }

    /// The warm-pool targets and `MAX_ENI` (values ≤ 0 mean no cap, as in the reference).
    pub(super) fn pool(&self) -> Result<PoolTargets, ConfigError> {
        let max_eni = self.or(MAX_ENI, -1, parse::parse_int)?;
        let max_eni = if max_eni >= 1 {
            Some(u32::try_from(max_eni).map_err(|_| ConfigError::Invalid {
                var: MAX_ENI,
                value: max_eni.to_string(),
                reason: format!("must be at most {}", u32::MAX),
            })?)
        } else {
            None
        };
        Ok(PoolTargets {
            warm_eni_target: self.or(WARM_ENI_TARGET, 1, parse::parse_non_negative)?,
            warm_ip_target: self.or(WARM_IP_TARGET, 0, parse::parse_non_negative)?,
            minimum_ip_target: self.or(MINIMUM_IP_TARGET, 0, parse::parse_non_negative)?,
            warm_prefix_target: self.or(WARM_PREFIX_TARGET, 0, parse::parse_non_negative)?,
            max_eni,
        })
    }

    /// SNAT, connmark and rules.
    pub(super) fn node_network(&self) -> Result<NodeNetworkConfig, ConfigError> {
        Ok(NodeNetworkConfig {
            eni_mtu: self.eni_mtu()?,
            external_snat: self.bool(AWS_VPC_K8S_CNI_EXTERNALSNAT, false)?,
            exclude_snat_cidrs: self.or(
                AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS,
                Vec::new(),
                parse::parse_cidr_list,
            )?,
            external_service_cidrs: self.or(
                AWS_EXTERNAL_SERVICE_CIDRS,
                Vec::new(),
                parse::parse_cidr_list,
            )?,
            randomize_snat: self.or(
                AWS_VPC_K8S_CNI_RANDOMIZESNAT,
                RandomizeSnat::Prng,
                parse::parse_randomize_snat,
            )?,
            connmark: self.or(AWS_VPC_K8S_CNI_CONNMARK, 0x80, parse::parse_connmark)?,
            node_port_support: self.bool(AWS_VPC_CNI_NODE_PORT_SUPPORT, true)?,
        })
    }

    fn eni_mtu(&self) -> Result<u32, ConfigError> {
        self.or(AWS_VPC_ENI_MTU, 9001, parse::parse_mtu)
    }

    /// What the conflist tells the plugin (and chains).
    pub(super) fn plugin(&self) -> Result<PluginConfig, ConfigError> {
        Ok(PluginConfig {
            veth_prefix: self.or(
                AWS_VPC_K8S_CNI_VETHPREFIX,
                "eni".into(),
                parse::parse_veth_prefix,
            )?,
            pod_mtu: self.or(POD_MTU, self.eni_mtu()?, parse::parse_mtu)?,
            log_file: self.or(
                AWS_VPC_K8S_PLUGIN_LOG_FILE,
                "/var/log/aws-routed-eni/plugin.log".into(),
                parse::parse_plugin_log_file,
            )?,
            log_level: self.or(
                AWS_VPC_K8S_PLUGIN_LOG_LEVEL,
                "DEBUG".into(),
                parse::parse_plugin_log_level,
            )?,
            pod_sg_enforcing_mode: self.or(
                POD_SECURITY_GROUP_ENFORCING_MODE,
                "strict".into(),
                parse::parse_sg_mode,
            )?,
            disable_pod_v6: self.bool(DISABLE_POD_V6, false)?,
            bandwidth_plugin: self.bool(ENABLE_BANDWIDTH_PLUGIN, false)?,
            v4_egress: self.bool(ENABLE_V4_EGRESS, true)?,
            egress_v4_log_file: self.or(
                AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE,
                "/var/log/aws-routed-eni/egress-v4-plugin.log".into(),
                parse::parse_plugin_log_file,
            )?,
        })
    }

    /// The node and cluster names, and the ENIConfig keys.
    pub(super) fn kubernetes(&self) -> Result<KubernetesConfig, ConfigError> {
        let node_name = self.raw(MY_NODE_NAME)?.ok_or(ConfigError::Missing {
            var: MY_NODE_NAME,
            reason: "ipamd needs its node's name (set it from the downward API spec.nodeName)"
                .into(),
        })?;
        Ok(KubernetesConfig {
            node_name,
            pod_name: self.string(MY_POD_NAME)?,
            cluster_name: self.parse(CLUSTER_NAME, parse::parse_non_empty)?,
            eni_config_annotation: self.or(
                ENI_CONFIG_ANNOTATION_DEF,
                "k8s.amazonaws.com/eniConfig".into(),
                parse::parse_k8s_key,
            )?,
            eni_config_label: self.or(
                ENI_CONFIG_LABEL_DEF,
                "k8s.amazonaws.com/eniConfig".into(),
                parse::parse_k8s_key,
            )?,
            annotate_pod_ip: self.bool(ANNOTATE_POD_IP, false)?,
            cluster_endpoint: self.parse(CLUSTER_ENDPOINT, parse::parse_url)?,
            // Settled by `Config::from_env` once the mode is known.
            cordon_check_asked: false,
            custom_network: false,
        })
    }

    /// EC2's knobs; dropped tag keys and a raised `HTTP_TIMEOUT` become `warnings`.
    pub(super) fn cloud(&self, warnings: &mut Vec<String>) -> Result<CloudConfig, ConfigError> {
        let (additional_eni_tags, dropped) = self.or(
            ADDITIONAL_ENI_TAGS,
            (BTreeMap::new(), Vec::new()),
            parse::parse_eni_tags,
        )?;
        for key in dropped {
            warnings.push(format!(
                "{ADDITIONAL_ENI_TAGS}: tag key {key:?} is ignored (keys containing k8s.amazonaws.com are reserved for ipamd)"
            ));
        }
        let http_timeout_secs = self.or(HTTP_TIMEOUT, 10, |v| {
            let secs = parse::parse_non_negative(v)?;
            if secs == 0 {
                return Err("must be at least 1 second".into());
            }
            Ok(secs)
        })?;
        let http_timeout_secs = if http_timeout_secs < 10 {
            warnings.push(format!(
                "{HTTP_TIMEOUT}={http_timeout_secs} is below the minimum of 10 seconds; using 10"
            ));
            10
        } else {
            http_timeout_secs
        };
        Ok(CloudConfig {
            ec2_endpoint: self.parse(AWS_EC2_ENDPOINT, parse::parse_url)?,
            http_timeout: Duration::from_secs(u64::from(http_timeout_secs)),
            additional_eni_tags,
            manage_untagged_eni: self.bool(MANAGE_UNTAGGED_ENI, true)?,
            manage_enis_non_schedulable: self.bool(AWS_MANAGE_ENIS_NON_SCHEDULABLE, false)?,
            disable_leaked_eni_cleanup: self.bool(DISABLE_LEAKED_ENI_CLEANUP, false)?,
            enable_subnet_discovery: self.bool(ENABLE_SUBNET_DISCOVERY, true)?,
            vpc_cni_version: self.string(VPC_CNI_VERSION)?,
        })
    }

    /// The feature switches (most of them refused by `checks`).
    pub(super) fn features(&self) -> Result<Features, ConfigError> {
        Ok(Features {
            ipv4: self.bool(ENABLE_IPV4, true)?,
            ipv6: self.bool(ENABLE_IPV6, false)?,
            prefix_delegation: self.bool(ENABLE_PREFIX_DELEGATION, false)?,
            custom_network: self.bool(AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG, false)?,
            pod_eni: self.bool(ENABLE_POD_ENI, false)?,
            multi_nic: self.bool(ENABLE_MULTI_NIC, false)?,
            v6_egress: self.bool(ENABLE_V6_EGRESS, false)?,
        })
    }
}
