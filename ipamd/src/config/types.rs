//! The typed configuration: what ipamd does with each variable, grouped by the part of ipamd
//! that uses it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::parse::{BindAddress, LogDestination, RandomizeSnat};

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
    /// `ENABLE_V4_EGRESS` (default true): in IPv6 mode, chain `egress-cni` so pods reach IPv4
    /// destinations through the node's IPv4 address.
    pub v4_egress: bool,
    /// `AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE` (default
    /// `/var/log/aws-routed-eni/egress-v4-plugin.log`): egress-cni's log in IPv6 mode.
    pub egress_v4_log_file: String,
}

/// Kubernetes-related knobs. ipamd uses the Kubernetes API when its service account is mounted
/// (see [`crate::k8s`]); [`KubernetesConfig::needs_api`] names the settings that cannot work
/// without it.
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
    /// `ANNOTATE_POD_IP` (default false): annotate each pod with its address
    /// (`vpc.amazonaws.com/pod-ips`) as soon as AddNetwork assigns it.
    pub annotate_pod_ip: bool,
    /// `CLUSTER_ENDPOINT`: the API server to call instead of the in-cluster one
    /// (`KUBERNETES_SERVICE_HOST`, which needs kube-proxy).
    pub cluster_endpoint: Option<String>,
    /// `AWS_MANAGE_ENIS_NON_SCHEDULABLE=false` set explicitly in EC2 mode: the operator asked
    /// for the cordon check, which needs the Node (left unset, a node without the API manages
    /// ENIs as the reference does when it cannot read the Node).
    pub cordon_check_asked: bool,
    /// `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true` (a copy of [`Features::custom_network`]): the
    /// node's ENIConfig comes from the API.
    pub custom_network: bool,
}

impl KubernetesConfig {
    /// The first setting that cannot work without the Kubernetes API, and what else the
    /// operator may do; `None` when ipamd can run without the API.
    pub fn needs_api(&self) -> Option<(&'static str, &'static str)> {
        if self.custom_network {
            return Some((
                "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true",
                "set AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=false",
            ));
        }
        if self.annotate_pod_ip {
            return Some(("ANNOTATE_POD_IP=true", "set ANNOTATE_POD_IP=false"));
        }
        if self.cordon_check_asked {
            return Some((
                "AWS_MANAGE_ENIS_NON_SCHEDULABLE=false",
                "unset AWS_MANAGE_ENIS_NON_SCHEDULABLE (or set it to true): ipamd then manages ENIs whether or not the node is cordoned",
            ));
        }
        if self.cluster_endpoint.is_some() {
            return Some((
                "CLUSTER_ENDPOINT",
                "unset CLUSTER_ENDPOINT (it only tells the Kubernetes client where the API server is)",
            ));
        }
        None
    }
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
