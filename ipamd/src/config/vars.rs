//! The names of the environment variables ipamd (and `install-cni`) reads: the reference's
//! aws-node variables, by the same names (docs/configuration.md says what each does here).

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
