//! ipamd's configuration: every environment variable of the reference's ipamd (and the
//! entrypoint's conflist knobs ipamd now owns), by the same name and default, parsed once into a
//! typed [`Config`]. A bad value stops startup with an error naming the variable and the value,
//! before any socket is bound.
//!
//! [`vars`] names the variables, [`env`](Env) is where values come from, [`parse`] turns one
//! value into a typed one, `read` reads each section of [`Config`], and `checks` refuses what
//! this build cannot honour and validates the settings that have no effect, as in the reference.

mod checks;
mod env;
mod error;
pub mod parse;
mod read;
mod types;
mod vars;

use std::path::PathBuf;
use std::time::Duration;

pub use self::env::{Env, ProcessEnv};
pub use self::error::ConfigError;
use self::parse::{BindAddress, LogDestination};
use self::read::Reader;
pub use self::types::*;
pub use self::vars::*;

impl Config {
    /// Reads and validates the whole configuration.
    ///
    /// # Errors
    /// The first invalid, missing or unsupported variable, by name and value.
    pub fn from_env(env: &(impl Env + ?Sized)) -> Result<Self, ConfigError> {
        let r = Reader::new(env);
        let mut warnings = Vec::new();
        let mut config = Self {
            provisioning: r.provisioning()?,
            socket_path: r.or(
                AWS_VPC_K8S_CNI_IPAMD_SOCKET,
                PathBuf::from("/var/run/aws-node/ipamd.sock"),
                parse::parse_socket_path,
            )?,
            backing_store: r.or(
                AWS_VPC_K8S_CNI_BACKING_STORE,
                PathBuf::from("/var/run/aws-node/ipam.json"),
                parse::parse_file_path,
            )?,
            cni_conf_dir: r.or(
                HOST_CNI_CONFDIR_PATH,
                PathBuf::from("/host/etc/cni/net.d"),
                parse::parse_dir_path,
            )?,
            log_destination: r.or(
                AWS_VPC_K8S_CNI_LOG_FILE,
                LogDestination::File("/host/var/log/aws-routed-eni/ipamd.log".into()),
                parse::parse_log_destination,
            )?,
            log_level: r.or(
                AWS_VPC_K8S_CNI_LOGLEVEL,
                tracing::Level::DEBUG,
                parse::parse_log_level,
            )?,
            ip_cooldown: Duration::from_secs(u64::from(r.or(
                IP_COOLDOWN_PERIOD,
                30,
                parse::parse_non_negative,
            )?)),
            disable_metrics: r.bool(DISABLE_METRICS, false)?,
            disable_introspection: r.bool(DISABLE_INTROSPECTION, false)?,
            introspection_bind: r.or(
                INTROSPECTION_BIND_ADDRESS,
                BindAddress::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 61679))),
                parse::parse_bind_address,
            )?,
            pool: r.pool()?,
            node_network: r.node_network()?,
            plugin: r.plugin()?,
            kubernetes: r.kubernetes()?,
            cloud: r.cloud(&mut warnings)?,
            features: r.features()?,
            warnings,
        };
        // Only EC2 mode grows and frees ENIs, which a cordon holds back.
        config.kubernetes.cordon_check_asked = config.provisioning == ProvisioningMode::Ec2
            && r.raw(AWS_MANAGE_ENIS_NON_SCHEDULABLE)?.is_some()
            && !config.cloud.manage_enis_non_schedulable;
        config.kubernetes.custom_network = config.features.custom_network;
        config.validate(&r)?;
        config.refuse_what_needs_missing_parts(&r)?;
        config.check_no_op_settings(&r)?;
        Ok(config)
    }

    /// Whether subnet discovery is in effect: `ENABLE_SUBNET_DISCOVERY` in EC2 mode (the other
    /// modes create no ENIs).
    pub fn subnet_discovery_in_effect(&self) -> bool {
        self.cloud.enable_subnet_discovery && self.provisioning == ProvisioningMode::Ec2
    }

    /// Whether the leaked-ENI cleanup is off: `DISABLE_LEAKED_ENI_CLEANUP`, implied in the modes
    /// that make no EC2 call, as in the reference.
    pub fn leaked_eni_cleanup_disabled(&self) -> bool {
        self.cloud.disable_leaked_eni_cleanup || self.provisioning != ProvisioningMode::Ec2
    }
}

#[cfg(test)]
mod tests;
