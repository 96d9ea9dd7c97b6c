//! ipamd's configuration: every environment variable of the reference's ipamd (and the
//! entrypoint's conflist knobs ipamd now owns), by the same name and default, parsed once into a
//! typed [`Config`]. A bad value stops startup with an error naming the variable and the value,
//! before any socket is bound.

mod env;
pub mod parse;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use thiserror::Error;

pub use self::env::{Env, ProcessEnv};
use self::parse::{BindAddress, LogDestination, RandomizeSnat};

/// JSON map of extra tags for managed ENIs.
pub const ADDITIONAL_ENI_TAGS: &str = "ADDITIONAL_ENI_TAGS";
/// Annotate pods with `vpc.amazonaws.com/pod-ips`.
pub const ANNOTATE_POD_IP: &str = "ANNOTATE_POD_IP";
/// Custom EC2 endpoint URL (reference name; the SDK's `AWS_ENDPOINT_URL_EC2` also works).
pub const AWS_EC2_ENDPOINT: &str = "AWS_EC2_ENDPOINT";
/// CIDRs reached through the main table from pods on secondary ENIs (rule priority 1535).
pub const AWS_EXTERNAL_SERVICE_CIDRS: &str = "AWS_EXTERNAL_SERVICE_CIDRS";
/// Allow ENI/IP changes on unschedulable nodes.
pub const AWS_MANAGE_ENIS_NON_SCHEDULABLE: &str = "AWS_MANAGE_ENIS_NON_SCHEDULABLE";
/// NodePort support (connmark rules on the primary ENI).
pub const AWS_VPC_CNI_NODE_PORT_SUPPORT: &str = "AWS_VPC_CNI_NODE_PORT_SUPPORT";
/// MTU of every managed ENI, and the default pod MTU.
pub const AWS_VPC_ENI_MTU: &str = "AWS_VPC_ENI_MTU";
/// Path of the allocation checkpoint.
pub const AWS_VPC_K8S_CNI_BACKING_STORE: &str = "AWS_VPC_K8S_CNI_BACKING_STORE";
/// Connmark bit used to steer SNAT and NodePort traffic.
pub const AWS_VPC_K8S_CNI_CONNMARK: &str = "AWS_VPC_K8S_CNI_CONNMARK";
/// Custom networking (ENIConfig).
pub const AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG: &str = "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG";
/// CIDRs that are not SNATed.
pub const AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: &str = "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS";
/// No on-node SNAT when true.
pub const AWS_VPC_K8S_CNI_EXTERNALSNAT: &str = "AWS_VPC_K8S_CNI_EXTERNALSNAT";
/// Path of the gRPC Unix socket.
pub const AWS_VPC_K8S_CNI_IPAMD_SOCKET: &str = "AWS_VPC_K8S_CNI_IPAMD_SOCKET";
/// ipamd's log level.
pub const AWS_VPC_K8S_CNI_LOGLEVEL: &str = "AWS_VPC_K8S_CNI_LOGLEVEL";
/// ipamd's log destination.
pub const AWS_VPC_K8S_CNI_LOG_FILE: &str = "AWS_VPC_K8S_CNI_LOG_FILE";
/// SNAT port randomization.
pub const AWS_VPC_K8S_CNI_RANDOMIZESNAT: &str = "AWS_VPC_K8S_CNI_RANDOMIZESNAT";
/// Host veth name prefix.
pub const AWS_VPC_K8S_CNI_VETHPREFIX: &str = "AWS_VPC_K8S_CNI_VETHPREFIX";
/// The plugin's log file (written into the conflist).
pub const AWS_VPC_K8S_PLUGIN_LOG_FILE: &str = "AWS_VPC_K8S_PLUGIN_LOG_FILE";
/// The plugin's log level (written into the conflist).
pub const AWS_VPC_K8S_PLUGIN_LOG_LEVEL: &str = "AWS_VPC_K8S_PLUGIN_LOG_LEVEL";
/// API server URL overriding the in-cluster address.
pub const CLUSTER_ENDPOINT: &str = "CLUSTER_ENDPOINT";
/// Cluster name for ENI tags and leak cleanup scoping.
pub const CLUSTER_NAME: &str = "CLUSTER_NAME";
/// Chain the `tuning` plugin that disables IPv6 inside every pod (written into the conflist).
pub const DISABLE_POD_V6: &str = "DISABLE_POD_V6";
/// Disable the introspection endpoint.
pub const DISABLE_INTROSPECTION: &str = "DISABLE_INTROSPECTION";
/// Disable the leaked-ENI cleanup job.
pub const DISABLE_LEAKED_ENI_CLEANUP: &str = "DISABLE_LEAKED_ENI_CLEANUP";
/// Disable the metrics endpoint.
pub const DISABLE_METRICS: &str = "DISABLE_METRICS";
/// Never add or remove ENIs/IPs through EC2.
pub const DISABLE_NETWORK_RESOURCE_PROVISIONING: &str = "DISABLE_NETWORK_RESOURCE_PROVISIONING";
/// Chain the `bandwidth` plugin (pod ingress/egress limits from annotations).
pub const ENABLE_BANDWIDTH_PLUGIN: &str = "ENABLE_BANDWIDTH_PLUGIN";
/// Use only what instance metadata shows; no EC2 calls at all.
pub const ENABLE_IMDS_ONLY_MODE: &str = "ENABLE_IMDS_ONLY_MODE";
/// IPv4 mode.
pub const ENABLE_IPV4: &str = "ENABLE_IPv4";
/// IPv6 mode.
pub const ENABLE_IPV6: &str = "ENABLE_IPv6";
/// Manage network cards other than 0.
pub const ENABLE_MULTI_NIC: &str = "ENABLE_MULTI_NIC";
/// Security groups for pods.
pub const ENABLE_POD_ENI: &str = "ENABLE_POD_ENI";
/// /28 prefixes instead of secondary IPs.
pub const ENABLE_PREFIX_DELEGATION: &str = "ENABLE_PREFIX_DELEGATION";
/// Choose ENI subnets among tagged subnets.
pub const ENABLE_SUBNET_DISCOVERY: &str = "ENABLE_SUBNET_DISCOVERY";
/// IPv6 egress for pods of an IPv4 cluster.
pub const ENABLE_V6_EGRESS: &str = "ENABLE_V6_EGRESS";
/// Node annotation naming the ENIConfig.
pub const ENI_CONFIG_ANNOTATION_DEF: &str = "ENI_CONFIG_ANNOTATION_DEF";
/// Node label naming the ENIConfig.
pub const ENI_CONFIG_LABEL_DEF: &str = "ENI_CONFIG_LABEL_DEF";
/// Directory the conflist is written into.
pub const HOST_CNI_CONFDIR_PATH: &str = "HOST_CNI_CONFDIR_PATH";
/// AWS SDK per-request timeout in seconds (minimum 10).
pub const HTTP_TIMEOUT: &str = "HTTP_TIMEOUT";
/// Introspection listen address.
pub const INTROSPECTION_BIND_ADDRESS: &str = "INTROSPECTION_BIND_ADDRESS";
/// Seconds a released pod IP is held back before reuse.
pub const IP_COOLDOWN_PERIOD: &str = "IP_COOLDOWN_PERIOD";
/// Manage ENIs not tagged with this instance's id.
pub const MANAGE_UNTAGGED_ENI: &str = "MANAGE_UNTAGGED_ENI";
/// Cap on the number of ENIs.
pub const MAX_ENI: &str = "MAX_ENI";
/// Floor on the total number of IPs.
pub const MINIMUM_IP_TARGET: &str = "MINIMUM_IP_TARGET";
/// This node's name.
pub const MY_NODE_NAME: &str = "MY_NODE_NAME";
/// The aws-node pod's name (events).
pub const MY_POD_NAME: &str = "MY_POD_NAME";
/// Network policy mode (makes the reference's plugin call the network policy agent).
pub const NETWORK_POLICY_ENFORCING_MODE: &str = "NETWORK_POLICY_ENFORCING_MODE";
/// MTU of pod veth pairs (written into the conflist).
pub const POD_MTU: &str = "POD_MTU";
/// Security-groups-for-pods enforcing mode (written into the conflist).
pub const POD_SECURITY_GROUP_ENFORCING_MODE: &str = "POD_SECURITY_GROUP_ENFORCING_MODE";
/// Deprecated in the reference (v1.12.1): rp_filter is always set by the init container.
pub const AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER: &str = "AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER";
/// Deprecated in the reference (v1.13.2): the iptables backend is detected.
pub const ENABLE_NFTABLES: &str = "ENABLE_NFTABLES";
/// IPv4 egress for pods of an IPv6 cluster (egress-cni).
pub const ENABLE_V4_EGRESS: &str = "ENABLE_V4_EGRESS";
/// egress-cni's log file in IPv6 clusters.
pub const AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE: &str = "AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE";
/// egress-cni's log file in IPv4 clusters with `ENABLE_V6_EGRESS`.
pub const AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE: &str = "AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE";
/// Version string added to user agents.
pub const VPC_CNI_VERSION: &str = "VPC_CNI_VERSION";
/// Keep this many ENIs' worth of free IPs.
pub const WARM_ENI_TARGET: &str = "WARM_ENI_TARGET";
/// Keep this many free IPs.
pub const WARM_IP_TARGET: &str = "WARM_IP_TARGET";
/// Keep this many free /28 prefixes.
pub const WARM_PREFIX_TARGET: &str = "WARM_PREFIX_TARGET";

/// A configuration error; its message names the variable and, when there is one, the value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid {var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// The raw value.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A required variable is missing.
    #[error("{var} is not set: {reason}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// Why it is needed.
        reason: String,
    },
    /// The value is not UTF-8.
    #[error("invalid {var}={value:?}: not valid UTF-8")]
    NotUnicode {
        /// The variable.
        var: &'static str,
        /// The value, lossily decoded.
        value: String,
    },
    /// A value this build does not support (yet).
    #[error("unsupported {var}={value:?}: {reason}")]
    Unsupported {
        /// The variable.
        var: &'static str,
        /// The raw value.
        value: String,
        /// What is not supported and what to do instead.
        reason: String,
    },
}

/// How ipamd obtains ENIs and IPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisioningMode {
    /// The default: ipamd keeps the warm pool through the EC2 API (creates and attaches ENIs,
    /// assigns and unassigns secondary IPs) within the instance's limits.
    Ec2,
    /// `ENABLE_IMDS_ONLY_MODE=true`: only what instance metadata shows, no EC2 calls at all.
    ImdsOnly,
    /// `DISABLE_NETWORK_RESOURCE_PROVISIONING=true`: no EC2 writes; the pool is what instance
    /// metadata shows.
    ProvisioningDisabled,
}

/// Warm-pool knobs (EC2 mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTargets {
    /// `WARM_ENI_TARGET` (default 1).
    pub warm_eni_target: u32,
    /// `WARM_IP_TARGET` (default 0 = unset).
    pub warm_ip_target: u32,
    /// `MINIMUM_IP_TARGET` (default 0 = unset).
    pub minimum_ip_target: u32,
    /// `WARM_PREFIX_TARGET` (default 0 = unset).
    pub warm_prefix_target: u32,
    /// `MAX_ENI` when at least 1 (values ≤ 0 mean "no cap", as in the reference).
    pub max_eni: Option<u32>,
}

/// Node networking knobs (SNAT, connmark, rules) for the host-network reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetworkConfig {
    /// `AWS_VPC_ENI_MTU` (default 9001).
    pub eni_mtu: u32,
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT` (default false).
    pub external_snat: bool,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`.
    pub exclude_snat_cidrs: Vec<Ipv4Net>,
    /// `AWS_EXTERNAL_SERVICE_CIDRS`.
    pub external_service_cidrs: Vec<Ipv4Net>,
    /// `AWS_VPC_K8S_CNI_RANDOMIZESNAT` (default prng).
    pub randomize_snat: RandomizeSnat,
    /// `AWS_VPC_K8S_CNI_CONNMARK` (default 0x80).
    pub connmark: u32,
    /// `AWS_VPC_CNI_NODE_PORT_SUPPORT` (default true).
    pub node_port_support: bool,
}

/// What ipamd writes into `10-aws.conflist` for the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// `AWS_VPC_K8S_CNI_VETHPREFIX` (default `eni`).
    pub veth_prefix: String,
    /// `POD_MTU`, else `AWS_VPC_ENI_MTU`.
    pub pod_mtu: u32,
    /// `AWS_VPC_K8S_PLUGIN_LOG_FILE` (default `/var/log/aws-routed-eni/plugin.log`).
    pub log_file: String,
    /// `AWS_VPC_K8S_PLUGIN_LOG_LEVEL` (default `DEBUG`).
    pub log_level: String,
    /// `POD_SECURITY_GROUP_ENFORCING_MODE` (default `strict`).
    pub pod_sg_enforcing_mode: String,
    /// `DISABLE_POD_V6` (default false): chain `tuning` with the sysctls that turn IPv6 off in
    /// the pod.
    pub disable_pod_v6: bool,
    /// `ENABLE_BANDWIDTH_PLUGIN` (default false): chain `bandwidth`.
    pub bandwidth_plugin: bool,
}

/// Kubernetes-related knobs. This build makes no Kubernetes API call: the settings that need
/// one (`CLUSTER_ENDPOINT`, `ANNOTATE_POD_IP=true`) are refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// `MY_NODE_NAME` (required).
    pub node_name: String,
    /// `MY_POD_NAME` (the aws-node pod; the reference posts its Kubernetes Events there).
    pub pod_name: Option<String>,
    /// `CLUSTER_NAME`.
    pub cluster_name: Option<String>,
    /// `ENI_CONFIG_ANNOTATION_DEF` (read by custom networking only, as in the reference).
    pub eni_config_annotation: String,
    /// `ENI_CONFIG_LABEL_DEF` (read by custom networking only, as in the reference).
    pub eni_config_label: String,
}

/// EC2-side knobs (EC2 mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    /// `AWS_EC2_ENDPOINT`.
    pub ec2_endpoint: Option<String>,
    /// `HTTP_TIMEOUT` (seconds, at least 10).
    pub http_timeout: Duration,
    /// `ADDITIONAL_ENI_TAGS` without reserved keys.
    pub additional_eni_tags: BTreeMap<String, String>,
    /// `MANAGE_UNTAGGED_ENI` (default true).
    pub manage_untagged_eni: bool,
    /// `AWS_MANAGE_ENIS_NON_SCHEDULABLE` (default false).
    pub manage_enis_non_schedulable: bool,
    /// `DISABLE_LEAKED_ENI_CLEANUP` (default false; implied in IMDS-only mode and with
    /// provisioning disabled).
    pub disable_leaked_eni_cleanup: bool,
    /// `ENABLE_SUBNET_DISCOVERY` (default true).
    pub enable_subnet_discovery: bool,
    /// `VPC_CNI_VERSION`.
    pub vpc_cni_version: Option<String>,
}

/// Feature switches of the reference that change how addresses are handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// `ENABLE_IPv4` (default true).
    pub ipv4: bool,
    /// `ENABLE_IPv6` (default false).
    pub ipv6: bool,
    /// `ENABLE_PREFIX_DELEGATION` (default false).
    pub prefix_delegation: bool,
    /// `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG` (default false).
    pub custom_network: bool,
    /// `ENABLE_POD_ENI` (default false).
    pub pod_eni: bool,
    /// `ENABLE_MULTI_NIC` (default false).
    pub multi_nic: bool,
    /// `ENABLE_V6_EGRESS` (default false).
    pub v6_egress: bool,
}

/// Everything ipamd reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How ENIs and IPs are obtained.
    pub provisioning: ProvisioningMode,
    /// `AWS_VPC_K8S_CNI_IPAMD_SOCKET` (default `/var/run/aws-node/ipamd.sock`).
    pub socket_path: PathBuf,
    /// `AWS_VPC_K8S_CNI_BACKING_STORE` (default `/var/run/aws-node/ipam.json`).
    pub backing_store: PathBuf,
    /// `HOST_CNI_CONFDIR_PATH` (default `/host/etc/cni/net.d`).
    pub cni_conf_dir: PathBuf,
    /// `AWS_VPC_K8S_CNI_LOG_FILE`.
    pub log_destination: LogDestination,
    /// `AWS_VPC_K8S_CNI_LOGLEVEL` (default DEBUG).
    pub log_level: tracing::Level,
    /// `IP_COOLDOWN_PERIOD` (default 30 s).
    pub ip_cooldown: Duration,
    /// `DISABLE_METRICS` (default false).
    pub disable_metrics: bool,
    /// `DISABLE_INTROSPECTION` (default false).
    pub disable_introspection: bool,
    /// `INTROSPECTION_BIND_ADDRESS` (default `127.0.0.1:61679`).
    pub introspection_bind: BindAddress,
    /// Warm-pool targets.
    pub pool: PoolTargets,
    /// Node networking.
    pub node_network: NodeNetworkConfig,
    /// Conflist content for the plugin.
    pub plugin: PluginConfig,
    /// Kubernetes.
    pub kubernetes: KubernetesConfig,
    /// EC2.
    pub cloud: CloudConfig,
    /// Address-assignment features.
    pub features: Features,
    /// Things worth a warning once logging is up (dropped tags, clamped values).
    pub warnings: Vec<String>,
}

/// Reads variables from an [`Env`] and wraps parse failures with the variable's name and value.
struct Reader<'a, E: Env + ?Sized> {
    env: &'a E,
}

impl<E: Env + ?Sized> Reader<'_, E> {
    /// The raw value; an empty string counts as unset, as in the reference.
    fn raw(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(self.env.var(var)?.filter(|v| !v.is_empty()))
    }

    fn parse<T>(
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

    fn or<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        Ok(self.parse(var, parse)?.unwrap_or(default))
    }

    fn bool(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        self.or(var, default, parse::parse_bool)
    }

    fn string(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        self.raw(var)
    }
}

impl Config {
    /// Reads and validates the whole configuration.
    ///
    /// # Errors
    /// The first invalid, missing or unsupported variable, by name and value.
    pub fn from_env(env: &(impl Env + ?Sized)) -> Result<Self, ConfigError> {
        let r = Reader { env };
        let mut warnings = Vec::new();

        let imds_only = r.bool(ENABLE_IMDS_ONLY_MODE, false)?;
        let provisioning_disabled = r.bool(DISABLE_NETWORK_RESOURCE_PROVISIONING, false)?;

        let eni_mtu = r.or(AWS_VPC_ENI_MTU, 9001, parse::parse_mtu)?;
        let pod_mtu = r.or(POD_MTU, eni_mtu, parse::parse_mtu)?;

        let (additional_eni_tags, dropped) = r.or(
            ADDITIONAL_ENI_TAGS,
            (BTreeMap::new(), Vec::new()),
            parse::parse_eni_tags,
        )?;
        for key in dropped {
            warnings.push(format!(
                "{ADDITIONAL_ENI_TAGS}: tag key {key:?} is ignored (keys containing k8s.amazonaws.com are reserved for ipamd)"
            ));
        }

        let http_timeout_secs = r.or(HTTP_TIMEOUT, 10, |v| {
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

        let max_eni = r.or(MAX_ENI, -1, parse::parse_int)?;
        let max_eni = if max_eni >= 1 {
            Some(u32::try_from(max_eni).map_err(|_| ConfigError::Invalid {
                var: MAX_ENI,
                value: max_eni.to_string(),
                reason: format!("must be at most {}", u32::MAX),
            })?)
        } else {
            None
        };

        let node_name = r.raw(MY_NODE_NAME)?.ok_or(ConfigError::Missing {
            var: MY_NODE_NAME,
            reason: "ipamd needs its node's name (set it from the downward API spec.nodeName)"
                .into(),
        })?;

        let mut config = Self {
            provisioning: match (imds_only, provisioning_disabled) {
                (true, _) => ProvisioningMode::ImdsOnly,
                (false, true) => ProvisioningMode::ProvisioningDisabled,
                (false, false) => ProvisioningMode::Ec2,
            },
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
            pool: PoolTargets {
                warm_eni_target: r.or(WARM_ENI_TARGET, 1, parse::parse_non_negative)?,
                warm_ip_target: r.or(WARM_IP_TARGET, 0, parse::parse_non_negative)?,
                minimum_ip_target: r.or(MINIMUM_IP_TARGET, 0, parse::parse_non_negative)?,
                warm_prefix_target: r.or(WARM_PREFIX_TARGET, 0, parse::parse_non_negative)?,
                max_eni,
            },
            node_network: NodeNetworkConfig {
                eni_mtu,
                external_snat: r.bool(AWS_VPC_K8S_CNI_EXTERNALSNAT, false)?,
                exclude_snat_cidrs: r.or(
                    AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS,
                    Vec::new(),
                    parse::parse_cidr_list,
                )?,
                external_service_cidrs: r.or(
                    AWS_EXTERNAL_SERVICE_CIDRS,
                    Vec::new(),
                    parse::parse_cidr_list,
                )?,
                randomize_snat: r.or(
                    AWS_VPC_K8S_CNI_RANDOMIZESNAT,
                    RandomizeSnat::Prng,
                    parse::parse_randomize_snat,
                )?,
                connmark: r.or(AWS_VPC_K8S_CNI_CONNMARK, 0x80, parse::parse_connmark)?,
                node_port_support: r.bool(AWS_VPC_CNI_NODE_PORT_SUPPORT, true)?,
            },
            plugin: PluginConfig {
                veth_prefix: r.or(
                    AWS_VPC_K8S_CNI_VETHPREFIX,
                    "eni".into(),
                    parse::parse_veth_prefix,
                )?,
                pod_mtu,
                log_file: r.or(
                    AWS_VPC_K8S_PLUGIN_LOG_FILE,
                    "/var/log/aws-routed-eni/plugin.log".into(),
                    parse::parse_plugin_log_file,
                )?,
                log_level: r.or(
                    AWS_VPC_K8S_PLUGIN_LOG_LEVEL,
                    "DEBUG".into(),
                    parse::parse_plugin_log_level,
                )?,
                pod_sg_enforcing_mode: r.or(
                    POD_SECURITY_GROUP_ENFORCING_MODE,
                    "strict".into(),
                    parse::parse_sg_mode,
                )?,
                disable_pod_v6: r.bool(DISABLE_POD_V6, false)?,
                bandwidth_plugin: r.bool(ENABLE_BANDWIDTH_PLUGIN, false)?,
            },
            kubernetes: KubernetesConfig {
                node_name,
                pod_name: r.string(MY_POD_NAME)?,
                cluster_name: r.parse(CLUSTER_NAME, parse::parse_non_empty)?,
                eni_config_annotation: r.or(
                    ENI_CONFIG_ANNOTATION_DEF,
                    "k8s.amazonaws.com/eniConfig".into(),
                    parse::parse_k8s_key,
                )?,
                eni_config_label: r.or(
                    ENI_CONFIG_LABEL_DEF,
                    "k8s.amazonaws.com/eniConfig".into(),
                    parse::parse_k8s_key,
                )?,
            },
            cloud: CloudConfig {
                ec2_endpoint: r.parse(AWS_EC2_ENDPOINT, parse::parse_url)?,
                http_timeout: Duration::from_secs(u64::from(http_timeout_secs)),
                additional_eni_tags,
                manage_untagged_eni: r.bool(MANAGE_UNTAGGED_ENI, true)?,
                manage_enis_non_schedulable: r.bool(AWS_MANAGE_ENIS_NON_SCHEDULABLE, false)?,
                disable_leaked_eni_cleanup: r.bool(DISABLE_LEAKED_ENI_CLEANUP, false)?,
                enable_subnet_discovery: r.bool(ENABLE_SUBNET_DISCOVERY, true)?,
                vpc_cni_version: r.string(VPC_CNI_VERSION)?,
            },
            features: Features {
                ipv4: r.bool(ENABLE_IPV4, true)?,
                ipv6: r.bool(ENABLE_IPV6, false)?,
                prefix_delegation: r.bool(ENABLE_PREFIX_DELEGATION, false)?,
                custom_network: r.bool(AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG, false)?,
                pod_eni: r.bool(ENABLE_POD_ENI, false)?,
                multi_nic: r.bool(ENABLE_MULTI_NIC, false)?,
                v6_egress: r.bool(ENABLE_V6_EGRESS, false)?,
            },
            warnings,
        };
        config.validate(&r)?;
        config.refuse_what_needs_missing_parts(&r)?;
        config.check_no_op_settings(&r)?;
        Ok(config)
    }

    /// Settings whose reference semantics need a part this build does not have (the Kubernetes
    /// API, the network policy agent, EC2 reads in the metadata-only modes): refused, naming
    /// the value and what to do, rather than accepted and ignored.
    fn refuse_what_needs_missing_parts<E: Env + ?Sized>(
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
        if r.bool(ANNOTATE_POD_IP, false)? {
            return Err(refuse(
                ANNOTATE_POD_IP,
                r.raw(ANNOTATE_POD_IP)?.unwrap_or_default(),
                "annotating pods with vpc.amazonaws.com/pod-ips needs the Kubernetes API, which this build does not call yet: unset ANNOTATE_POD_IP or set it to false",
            ));
        }
        if let Some(url) = r.raw(CLUSTER_ENDPOINT)? {
            parse::parse_url(&url).map_err(|reason| ConfigError::Invalid {
                var: CLUSTER_ENDPOINT,
                value: url.clone(),
                reason,
            })?;
            return Err(refuse(
                CLUSTER_ENDPOINT,
                url,
                "this build makes no Kubernetes API call (max pods comes from the instance's ENI x IP limits, not the Node), so an API server address would be ignored: unset CLUSTER_ENDPOINT",
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
    fn check_no_op_settings<E: Env + ?Sized>(
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

    /// Cross-variable checks, and features this build cannot honour yet (refused rather than
    /// silently ignored, because each one changes which addresses pods get).
    fn validate<E: Env + ?Sized>(&self, r: &Reader<'_, E>) -> Result<(), ConfigError> {
        let raw = |var: &'static str| -> Result<String, ConfigError> {
            Ok(r.raw(var)?.unwrap_or_default())
        };
        let f = &self.features;
        // Features this build lacks first: checking how they combine with other settings would
        // only send the operator to fix a setting that is refused anyway.
        let unsupported = [
            (f.ipv6, ENABLE_IPV6, "IPv6 mode"),
            (
                f.prefix_delegation,
                ENABLE_PREFIX_DELEGATION,
                "prefix delegation",
            ),
            (
                f.custom_network,
                AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG,
                "custom networking (ENIConfig)",
            ),
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
        if !f.ipv4 {
            return Err(ConfigError::Unsupported {
                var: ENABLE_IPV4,
                value: raw(ENABLE_IPV4)?,
                reason: format!(
                    "one of {ENABLE_IPV4} and {ENABLE_IPV6} must be true, and IPv6 mode is not available in this build yet; unset {ENABLE_IPV4} or set it to true"
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
