//! What the configuration as a whole may not be: features this build does not have yet, and
//! settings whose reference semantics need a part it lacks, are refused naming the value and
//! what to do; settings that have no effect here, as in the reference, are still validated.

use super::env::Env;
use super::error::ConfigError;
use super::parse;
use super::read::Reader;
use super::types::{Config, ProvisioningMode};
use super::vars::*;

impl Config {
    /// Settings whose reference semantics need a part this build does not have (the Kubernetes
    /// API, the network policy agent, EC2 reads in the metadata-only modes): refused, naming
    /// the value and what to do, rather than accepted and ignored.
    pub(super) fn refuse_what_needs_missing_parts<E: Env + ?Sized>(
        &self,
        r: &Reader<'_, E>,
    ) -> Result<(), ConfigError> {
        let refuse = |var: &'static str, value: String, reason: &str| ConfigError::Unsupported {
            var,
            value,
            reason: reason.to_owned(),
        };
        if let Some(mode) = r.raw(NETWORK_POLICY_ENFORCING_MODE)? {
            return Err(refuse(
                NETWORK_POLICY_ENFORCING_MODE,
                mode,
                "with this setting the reference's plugin calls the network policy agent (aws-eks-nodeagent, /var/run/aws-node/npa.sock) on every pod ADD and DEL, and the agent enforces the mode; this build does not call the agent yet, so no policy would be enforced: unset NETWORK_POLICY_ENFORCING_MODE (and remove the aws-eks-nodeagent container), or keep the reference's aws-node where network policies are needed",
            ));
        }
        if !self.cloud.manage_untagged_eni && self.provisioning != ProvisioningMode::Ec2 {
            let mode = match self.provisioning {
                ProvisioningMode::ImdsOnly => ENABLE_IMDS_ONLY_MODE,
                _ => DISABLE_NETWORK_RESOURCE_PROVISIONING,
            };
            return Err(refuse(
                MANAGE_UNTAGGED_ENI,
                r.raw(MANAGE_UNTAGGED_ENI)?.unwrap_or_default(),
                &format!(
                    "telling untagged ENIs apart needs their tags from EC2, and with {mode}=true ipamd makes no EC2 call (instance metadata has no tags): unset MANAGE_UNTAGGED_ENI, or run in EC2 mode"
                ),
            ));
        }
        Ok(())
    }

    /// Settings that have no effect in this configuration, exactly as in the reference: they are
    /// still validated, and the deprecated ones are logged.
    pub(super) fn check_no_op_settings<E: Env + ?Sized>(
        &mut self,
        r: &Reader<'_, E>,
    ) -> Result<(), ConfigError> {
        for var in [AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER, ENABLE_NFTABLES] {
            if let Some(value) = r.raw(var)? {
                r.bool(var, false)?;
                self.warnings.push(format!(
                    "{var}={value:?} is deprecated and has no effect, as in the reference (rp_filter is always set to 2 on the primary ENI by install-cni; the iptables backend is detected); it can be removed"
                ));
            }
        }
        // egress-cni settings: used only in IPv6 clusters or with ENABLE_V6_EGRESS, both refused.
        r.bool(ENABLE_V4_EGRESS, true)?;
        for var in [
            AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE,
            AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE,
        ] {
            r.parse(var, parse::parse_plugin_log_file)?;
        }
        Ok(())
    }

    /// Cross-variable checks, and features this build cannot honour yet (refused rather than
    /// silently ignored, because each one changes which addresses pods get).
    pub(super) fn validate<E: Env + ?Sized>(&self, r: &Reader<'_, E>) -> Result<(), ConfigError> {
        let raw = |var: &'static str| -> Result<String, ConfigError> {
            Ok(r.raw(var)?.unwrap_or_default())
        };
        let f = &self.features;
        // The address families as the reference combines them (isConfigValid): one of the two,
        // and IPv6 only with prefix delegation and without custom networking.
        if f.ipv4 && f.ipv6 {
            return Err(ConfigError::Unsupported {
                var: ENABLE_IPV6,
                value: raw(ENABLE_IPV6)?,
                reason: format!(
                    "{ENABLE_IPV4} and {ENABLE_IPV6} are both true, and dual-stack pods are not supported (as in the reference): for an IPv6 cluster set {ENABLE_IPV4}=false, else unset {ENABLE_IPV6}"
                ),
            });
        }
        if !f.ipv4 && !f.ipv6 {
            return Err(ConfigError::Unsupported {
                var: ENABLE_IPV4,
                value: raw(ENABLE_IPV4)?,
                reason: format!(
                    "{ENABLE_IPV4} and {ENABLE_IPV6} are both false: one of them must be true; unset {ENABLE_IPV4} or set it to true"
                ),
            });
        }
        if f.ipv6 && !f.prefix_delegation {
            return Err(ConfigError::Unsupported {
                var: ENABLE_IPV6,
                value: raw(ENABLE_IPV6)?,
                reason: format!(
                    "IPv6 pods get their addresses from a /80 prefix of the primary ENI, so IPv6 mode needs prefix delegation (as in the reference): set {ENABLE_PREFIX_DELEGATION}=true, or unset {ENABLE_IPV6} for an IPv4 cluster"
                ),
            });
        }
        if f.ipv6 && f.custom_network {
            return Err(ConfigError::Unsupported {
                var: AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG,
                value: raw(AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG)?,
                reason: format!(
                    "custom networking is not supported in IPv6 mode (as in the reference): unset {AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG} or set {ENABLE_IPV6}=false"
                ),
            });
        }
        if f.custom_network && self.provisioning != ProvisioningMode::Ec2 {
            let mode = match self.provisioning {
                ProvisioningMode::ImdsOnly => ENABLE_IMDS_ONLY_MODE,
                _ => DISABLE_NETWORK_RESOURCE_PROVISIONING,
            };
            return Err(ConfigError::Unsupported {
                var: AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG,
                value: raw(AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG)?,
                reason: format!(
                    "custom networking puts the ENIs ipamd creates into the ENIConfig's subnet, and with {mode}=true ipamd creates none (this build does not take pods off the primary ENI of ENIs made by others): unset {mode} or {AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG}"
                ),
            });
        }
        // Features this build lacks next: checking how they combine with other settings would
        // only send the operator to fix a setting that is refused anyway.
        let unsupported = [
            (f.pod_eni, ENABLE_POD_ENI, "security groups for pods"),
            (f.multi_nic, ENABLE_MULTI_NIC, "multiple network cards"),
            (
                f.v6_egress,
                ENABLE_V6_EGRESS,
                "IPv6 egress for pods (egress-cni)",
            ),
        ];
        for (enabled, var, what) in unsupported {
            if enabled {
                return Err(ConfigError::Unsupported {
                    var,
                    value: raw(var)?,
                    reason: format!(
                        "{what} is not available in this build yet; unset {var} or set it to false"
                    ),
                });
            }
        }
        Ok(())
    }
}
