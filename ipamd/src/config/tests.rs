use std::collections::HashMap;

use super::parse::RandomizeSnat;
use super::*;

fn base() -> HashMap<String, String> {
    HashMap::from([
        (ENABLE_IMDS_ONLY_MODE.to_owned(), "true".to_owned()),
        (MY_NODE_NAME.to_owned(), "node-1".to_owned()),
    ])
}

fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut env = base();
    for (k, v) in pairs {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_env(&env)
}

fn err_of(pairs: &[(&str, &str)]) -> String {
    with(pairs).unwrap_err().to_string()
}

#[test]
fn defaults_match_the_reference() {
    let c = Config::from_env(&base()).unwrap();
    assert_eq!(c.provisioning, ProvisioningMode::ImdsOnly);
    assert_eq!(c.socket_path, PathBuf::from("/var/run/aws-node/ipamd.sock"));
    assert_eq!(
        c.backing_store,
        PathBuf::from("/var/run/aws-node/ipam.json")
    );
    assert_eq!(c.cni_conf_dir, PathBuf::from("/host/etc/cni/net.d"));
    assert_eq!(
        c.log_destination,
        LogDestination::File("/host/var/log/aws-routed-eni/ipamd.log".into())
    );
    assert_eq!(c.log_level, tracing::Level::DEBUG);
    assert_eq!(c.ip_cooldown, Duration::from_secs(30));
    assert!(!c.disable_metrics);
    assert!(!c.disable_introspection);
    assert_eq!(
        c.introspection_bind,
        BindAddress::Tcp("127.0.0.1:61679".parse().unwrap())
    );
    assert_eq!(
        c.pool,
        PoolTargets {
            warm_eni_target: 1,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            warm_prefix_target: 0,
            max_eni: None
        }
    );
    let n = &c.node_network;
    assert_eq!(n.eni_mtu, 9001);
    assert!(!n.external_snat);
    assert!(n.exclude_snat_cidrs.is_empty());
    assert!(n.external_service_cidrs.is_empty());
    assert_eq!(n.randomize_snat, RandomizeSnat::Prng);
    assert_eq!(n.connmark, 0x80);
    assert!(n.node_port_support);
    let p = &c.plugin;
    assert_eq!(p.veth_prefix, "eni");
    assert_eq!(p.pod_mtu, 9001);
    assert_eq!(p.log_file, "/var/log/aws-routed-eni/plugin.log");
    assert_eq!(p.log_level, "DEBUG");
    assert_eq!(p.pod_sg_enforcing_mode, "strict");
    let k = &c.kubernetes;
    assert_eq!(k.node_name, "node-1");
    assert_eq!(k.pod_name, None);
    assert_eq!(k.cluster_name, None);
    assert_eq!(k.eni_config_annotation, "k8s.amazonaws.com/eniConfig");
    assert_eq!(k.eni_config_label, "k8s.amazonaws.com/eniConfig");
    let cl = &c.cloud;
    assert_eq!(cl.ec2_endpoint, None);
    assert_eq!(cl.http_timeout, Duration::from_secs(10));
    assert!(cl.additional_eni_tags.is_empty());
    assert!(cl.manage_untagged_eni);
    assert!(!cl.manage_enis_non_schedulable);
    assert!(!cl.disable_leaked_eni_cleanup);
    assert!(cl.enable_subnet_discovery);
    assert_eq!(cl.vpc_cni_version, None);
    let f = &c.features;
    assert!(f.ipv4 && !f.ipv6 && !f.prefix_delegation && !f.custom_network);
    assert!(!f.pod_eni && !f.multi_nic && !f.v6_egress);
    assert!(c.warnings.is_empty());
}

#[test]
fn valid_values_are_taken() {
    let c = with(&[
        (AWS_VPC_K8S_CNI_IPAMD_SOCKET, "/tmp/x/ipamd.sock"),
        (AWS_VPC_K8S_CNI_BACKING_STORE, "/tmp/x/ipam.json"),
        (HOST_CNI_CONFDIR_PATH, "/tmp/x/net.d"),
        (AWS_VPC_K8S_CNI_LOG_FILE, "stderr"),
        (AWS_VPC_K8S_CNI_LOGLEVEL, "info"),
        (IP_COOLDOWN_PERIOD, "0"),
        (DISABLE_METRICS, "1"),
        (DISABLE_INTROSPECTION, "T"),
        (INTROSPECTION_BIND_ADDRESS, "unix:/run/introspect.sock"),
        (WARM_ENI_TARGET, "0"),
        (WARM_IP_TARGET, "5"),
        (MINIMUM_IP_TARGET, "10"),
        (WARM_PREFIX_TARGET, "2"),
        (MAX_ENI, "3"),
        (AWS_VPC_ENI_MTU, "1500"),
        (AWS_VPC_K8S_CNI_EXTERNALSNAT, "true"),
        (
            AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS,
            "10.10.0.0/16,10.20.0.0/16",
        ),
        (AWS_EXTERNAL_SERVICE_CIDRS, "172.16.0.0/12"),
        (AWS_VPC_K8S_CNI_RANDOMIZESNAT, "none"),
        (AWS_VPC_K8S_CNI_CONNMARK, "0x4000"),
        (AWS_VPC_CNI_NODE_PORT_SUPPORT, "false"),
        (AWS_VPC_K8S_CNI_VETHPREFIX, "cali"),
        (AWS_VPC_K8S_PLUGIN_LOG_FILE, "stderr"),
        (AWS_VPC_K8S_PLUGIN_LOG_LEVEL, "INFO"),
        (POD_SECURITY_GROUP_ENFORCING_MODE, "standard"),
        (MY_POD_NAME, "aws-node-abcde"),
        (CLUSTER_NAME, "prod"),
        (ANNOTATE_POD_IP, "false"),
        (ENI_CONFIG_ANNOTATION_DEF, "example.com/eni"),
        (ENI_CONFIG_LABEL_DEF, "topology.kubernetes.io/zone"),
        (AWS_EC2_ENDPOINT, "http://127.0.0.1:5000"),
        (HTTP_TIMEOUT, "30"),
        (ADDITIONAL_ENI_TAGS, r#"{"team":"net"}"#),
        (AWS_MANAGE_ENIS_NON_SCHEDULABLE, "true"),
        (DISABLE_LEAKED_ENI_CLEANUP, "true"),
        (ENABLE_SUBNET_DISCOVERY, "false"),
        (VPC_CNI_VERSION, "v1.23.1-rs"),
        (ENABLE_IPV4, "true"),
        (ENABLE_IPV6, "false"),
    ])
    .unwrap();
    assert_eq!(c.socket_path, PathBuf::from("/tmp/x/ipamd.sock"));
    assert_eq!(c.backing_store, PathBuf::from("/tmp/x/ipam.json"));
    assert_eq!(c.cni_conf_dir, PathBuf::from("/tmp/x/net.d"));
    assert_eq!(c.log_destination, LogDestination::Stderr);
    assert_eq!(c.log_level, tracing::Level::INFO);
    assert_eq!(c.ip_cooldown, Duration::ZERO);
    assert!(c.disable_metrics && c.disable_introspection);
    assert_eq!(
        c.introspection_bind,
        BindAddress::Unix("/run/introspect.sock".into())
    );
    assert_eq!(
        c.pool,
        PoolTargets {
            warm_eni_target: 0,
            warm_ip_target: 5,
            minimum_ip_target: 10,
            warm_prefix_target: 2,
            max_eni: Some(3)
        }
    );
    let n = &c.node_network;
    assert_eq!(n.eni_mtu, 1500);
    assert!(n.external_snat);
    assert_eq!(n.exclude_snat_cidrs.len(), 2);
    assert_eq!(n.external_service_cidrs[0].to_string(), "172.16.0.0/12");
    assert_eq!(n.randomize_snat, RandomizeSnat::None);
    assert_eq!(n.connmark, 0x4000);
    assert!(!n.node_port_support);
    assert_eq!(c.plugin.veth_prefix, "cali");
    assert_eq!(
        c.plugin.pod_mtu, 1500,
        "POD_MTU defaults to AWS_VPC_ENI_MTU"
    );
    assert_eq!(c.plugin.log_file, "stderr");
    assert_eq!(c.plugin.log_level, "INFO");
    assert_eq!(c.plugin.pod_sg_enforcing_mode, "standard");
    assert_eq!(c.kubernetes.pod_name.as_deref(), Some("aws-node-abcde"));
    assert_eq!(c.kubernetes.cluster_name.as_deref(), Some("prod"));
    assert_eq!(c.kubernetes.eni_config_annotation, "example.com/eni");
    assert_eq!(c.kubernetes.eni_config_label, "topology.kubernetes.io/zone");
    assert_eq!(
        c.cloud.ec2_endpoint.as_deref(),
        Some("http://127.0.0.1:5000")
    );
    assert_eq!(c.cloud.http_timeout, Duration::from_secs(30));
    assert_eq!(
        c.cloud.additional_eni_tags.get("team").map(String::as_str),
        Some("net")
    );
    assert!(c.cloud.manage_enis_non_schedulable);
    assert!(c.cloud.disable_leaked_eni_cleanup);
    assert!(!c.cloud.enable_subnet_discovery);
    assert_eq!(c.cloud.vpc_cni_version.as_deref(), Some("v1.23.1-rs"));
}

#[test]
fn pod_mtu_overrides_eni_mtu_for_the_conflist() {
    let c = with(&[(AWS_VPC_ENI_MTU, "9001"), (POD_MTU, "1400")]).unwrap();
    assert_eq!(c.node_network.eni_mtu, 9001);
    assert_eq!(c.plugin.pod_mtu, 1400);
}

#[test]
fn empty_values_count_as_unset() {
    let c = with(&[(IP_COOLDOWN_PERIOD, ""), (AWS_VPC_ENI_MTU, "")]).unwrap();
    assert_eq!(c.ip_cooldown, Duration::from_secs(30));
    assert_eq!(c.node_network.eni_mtu, 9001);
}

/// Every invalid value names its variable and the value in the error.
#[test]
fn invalid_values_name_the_variable_and_value() {
    let cases: &[(&str, &str)] = &[
        (ENABLE_IMDS_ONLY_MODE, "yes"),
        (DISABLE_NETWORK_RESOURCE_PROVISIONING, "maybe"),
        (AWS_VPC_K8S_CNI_IPAMD_SOCKET, "relative/ipamd.sock"),
        (AWS_VPC_K8S_CNI_BACKING_STORE, "/var/run/aws-node/"),
        (AWS_VPC_K8S_CNI_LOG_FILE, "/var/log/"),
        (AWS_VPC_K8S_CNI_LOGLEVEL, "verbose"),
        (IP_COOLDOWN_PERIOD, "-3"),
        (IP_COOLDOWN_PERIOD, "30s"),
        (DISABLE_METRICS, "no"),
        (DISABLE_INTROSPECTION, "no"),
        (INTROSPECTION_BIND_ADDRESS, "localhost"),
        (WARM_ENI_TARGET, "-1"),
        (WARM_IP_TARGET, "x"),
        (MINIMUM_IP_TARGET, "-5"),
        (WARM_PREFIX_TARGET, "1.5"),
        (MAX_ENI, "three"),
        (AWS_VPC_ENI_MTU, "70000"),
        (AWS_VPC_ENI_MTU, "575"),
        (POD_MTU, "100"),
        (AWS_VPC_K8S_CNI_EXTERNALSNAT, "on"),
        (AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS, "10.0.0.0/8,bogus"),
        (AWS_EXTERNAL_SERVICE_CIDRS, "300.0.0.0/8"),
        (AWS_VPC_K8S_CNI_RANDOMIZESNAT, "random"),
        (AWS_VPC_K8S_CNI_CONNMARK, "0"),
        (AWS_VPC_CNI_NODE_PORT_SUPPORT, "2"),
        (AWS_VPC_K8S_CNI_VETHPREFIX, "toolong"),
        (AWS_VPC_K8S_CNI_VETHPREFIX, "eth"),
        (AWS_VPC_K8S_CNI_VETHPREFIX, "lo"),
        (AWS_VPC_K8S_CNI_VETHPREFIX, "vlan"),
        (AWS_VPC_K8S_PLUGIN_LOG_FILE, "stdout"),
        (AWS_VPC_K8S_PLUGIN_LOG_FILE, "../../etc/x"),
        (
            AWS_VPC_K8S_PLUGIN_LOG_FILE,
            "/var/log/aws-routed-eni/../../etc/x",
        ),
        (AWS_VPC_K8S_CNI_LOG_FILE, "ipamd.log"),
        (AWS_VPC_K8S_PLUGIN_LOG_LEVEL, "noisy"),
        (POD_SECURITY_GROUP_ENFORCING_MODE, "loose"),
        (CLUSTER_ENDPOINT, "api.example"),
        (ANNOTATE_POD_IP, "y"),
        (ENI_CONFIG_ANNOTATION_DEF, "a b"),
        (ENI_CONFIG_LABEL_DEF, "a b"),
        (AWS_EC2_ENDPOINT, "ftp://ec2"),
        (HTTP_TIMEOUT, "0"),
        (HTTP_TIMEOUT, "ten"),
        (ADDITIONAL_ENI_TAGS, "{bad json"),
        (ADDITIONAL_ENI_TAGS, r#"{"a":1}"#),
        (MANAGE_UNTAGGED_ENI, "nope"),
        (AWS_MANAGE_ENIS_NON_SCHEDULABLE, "nope"),
        (DISABLE_LEAKED_ENI_CLEANUP, "nope"),
        (ENABLE_SUBNET_DISCOVERY, "nope"),
        (ENABLE_IPV4, "nope"),
        (ENABLE_IPV6, "nope"),
        (ENABLE_PREFIX_DELEGATION, "nope"),
        (AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG, "nope"),
        (ENABLE_POD_ENI, "nope"),
        (ENABLE_MULTI_NIC, "nope"),
        (ENABLE_V6_EGRESS, "nope"),
        (ENABLE_V4_EGRESS, "nope"),
        (AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER, "nope"),
        (ENABLE_NFTABLES, "nope"),
        (AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE, "stdout"),
        (AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE, "relative.log"),
    ];
    for (var, value) in cases {
        let msg = err_of(&[(var, value)]);
        assert!(
            msg.contains(var) && msg.contains(&format!("{value:?}")),
            "{var}={value}: {msg}"
        );
    }
}

#[test]
fn missing_node_name_is_an_error_naming_it() {
    let env = HashMap::from([(ENABLE_IMDS_ONLY_MODE, "true")]);
    let msg = Config::from_env(&env).unwrap_err().to_string();
    assert!(msg.contains(MY_NODE_NAME), "{msg}");
}

#[test]
fn ec2_provisioning_is_the_default_mode() {
    let env = HashMap::from([(MY_NODE_NAME, "n")]);
    let c = Config::from_env(&env).unwrap();
    assert_eq!(c.provisioning, ProvisioningMode::Ec2);
    let env = HashMap::from([(MY_NODE_NAME, "n"), (ENABLE_IMDS_ONLY_MODE, "false")]);
    assert_eq!(
        Config::from_env(&env).unwrap().provisioning,
        ProvisioningMode::Ec2
    );
    let env = HashMap::from([
        (MY_NODE_NAME, "n"),
        (ENABLE_IMDS_ONLY_MODE, "true"),
        (DISABLE_NETWORK_RESOURCE_PROVISIONING, "true"),
    ]);
    assert_eq!(
        Config::from_env(&env).unwrap().provisioning,
        ProvisioningMode::ImdsOnly,
        "IMDS-only wins: no EC2 calls at all"
    );
}

#[test]
fn provisioning_disabled_behaves_like_imds_only() {
    let env = HashMap::from([
        (MY_NODE_NAME, "n"),
        (DISABLE_NETWORK_RESOURCE_PROVISIONING, "true"),
    ]);
    let c = Config::from_env(&env).unwrap();
    assert_eq!(c.provisioning, ProvisioningMode::ProvisioningDisabled);
}

#[test]
fn custom_networking_is_taken_in_ec2_mode_and_needs_the_api() {
    let ec2 = (ENABLE_IMDS_ONLY_MODE, "false");
    let c = with(&[ec2, (AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG, "true")]).unwrap();
    assert!(c.features.custom_network && c.kubernetes.custom_network);
    assert_eq!(
        c.kubernetes.needs_api().map(|n| n.0),
        Some("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true")
    );
    // The metadata-only modes create no ENI for it to place.
    for mode in [ENABLE_IMDS_ONLY_MODE, DISABLE_NETWORK_RESOURCE_PROVISIONING] {
        let msg = err_of(&[
            (ENABLE_IMDS_ONLY_MODE, "false"),
            (mode, "true"),
            (AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG, "true"),
        ]);
        assert!(
            msg.contains(AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG) && msg.contains(mode),
            "{msg}"
        );
    }
}

#[test]
fn features_that_change_assignment_are_refused() {
    for var in [ENABLE_POD_ENI, ENABLE_MULTI_NIC, ENABLE_V6_EGRESS] {
        let msg = err_of(&[(var, "true"), (WARM_IP_TARGET, "1")]);
        assert!(msg.contains(var) && msg.contains("not available"), "{msg}");
    }
}

#[test]
fn an_ipv6_cluster_is_accepted_with_ipv4_egress_on_by_default() {
    let ipv6 = [
        (ENABLE_IPV6, "true"),
        (ENABLE_IPV4, "false"),
        (ENABLE_PREFIX_DELEGATION, "true"),
    ];
    let c = with(&ipv6).unwrap();
    assert!(c.features.ipv6 && !c.features.ipv4 && c.features.prefix_delegation);
    assert!(c.plugin.v4_egress);
    let mut off = ipv6.to_vec();
    off.push((ENABLE_V4_EGRESS, "false"));
    assert!(!with(&off).unwrap().plugin.v4_egress);
}

#[test]
fn ipv6_settings_are_combined_as_in_the_reference() {
    // Dual stack.
    let msg = err_of(&[(ENABLE_IPV6, "true")]);
    assert!(
        msg.contains("dual-stack") && msg.contains("set ENABLE_IPv4=false"),
        "{msg}"
    );
    // IPv6 without prefix delegation.
    let msg = err_of(&[(ENABLE_IPV6, "true"), (ENABLE_IPV4, "false")]);
    assert!(
        msg.contains(ENABLE_IPV6) && msg.contains("set ENABLE_PREFIX_DELEGATION=true"),
        "{msg}"
    );
    // IPv6 with custom networking.
    let msg = err_of(&[
        (ENABLE_IPV6, "true"),
        (ENABLE_IPV4, "false"),
        (ENABLE_PREFIX_DELEGATION, "true"),
        (AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG, "true"),
    ]);
    assert!(
        msg.contains(AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG)
            && msg.contains("not supported in IPv6 mode"),
        "{msg}"
    );
    // Neither family.
    let msg = err_of(&[(ENABLE_IPV4, "false")]);
    assert!(
        msg.contains("must be true") && msg.contains("unset ENABLE_IPv4 or set it to true"),
        "{msg}"
    );
}

#[test]
fn settings_that_need_missing_parts_are_refused_with_what_to_do() {
    for (var, value, says) in [
        (
            NETWORK_POLICY_ENFORCING_MODE,
            "strict",
            "unset NETWORK_POLICY_ENFORCING_MODE",
        ),
        (
            NETWORK_POLICY_ENFORCING_MODE,
            "standard",
            "network policy agent",
        ),
        (MANAGE_UNTAGGED_ENI, "false", "ENABLE_IMDS_ONLY_MODE=true"),
    ] {
        let err = with(&[(var, value)]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Unsupported { var: v, .. } if *v == var),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(var) && msg.contains(value) && msg.contains(says),
            "{msg}"
        );
    }
    // An invalid endpoint is reported as invalid first.
    assert!(err_of(&[(CLUSTER_ENDPOINT, "api.example")]).starts_with("invalid CLUSTER_ENDPOINT"));
    // Their off values are fine.
    with(&[
        (ANNOTATE_POD_IP, "false"),
        (NETWORK_POLICY_ENFORCING_MODE, ""),
    ])
    .unwrap();
    // The settings that cannot work without the Kubernetes API (start-up refuses them when no
    // service account is mounted: crate::k8s::client_for).
    let needs = |pairs: &[(&str, &str)]| with(pairs).unwrap().kubernetes.needs_api().map(|n| n.0);
    assert_eq!(needs(&[]), None);
    assert_eq!(
        needs(&[(ANNOTATE_POD_IP, "true")]),
        Some("ANNOTATE_POD_IP=true")
    );
    assert_eq!(
        needs(&[(CLUSTER_ENDPOINT, "https://api.example.internal")]),
        Some("CLUSTER_ENDPOINT")
    );
    // The cordon check when asked for in EC2 mode; its default (false, unset) and true do not
    // need the API, nor does false in the modes that never grow the pool (base: IMDS-only).
    let ec2 = (ENABLE_IMDS_ONLY_MODE, "false");
    assert_eq!(
        needs(&[ec2, (AWS_MANAGE_ENIS_NON_SCHEDULABLE, "false")]),
        Some("AWS_MANAGE_ENIS_NON_SCHEDULABLE=false")
    );
    assert_eq!(needs(&[ec2]), None);
    assert_eq!(
        needs(&[ec2, (AWS_MANAGE_ENIS_NON_SCHEDULABLE, "true")]),
        None
    );
    assert_eq!(needs(&[(AWS_MANAGE_ENIS_NON_SCHEDULABLE, "false")]), None);
    let c = with(&[
        (ANNOTATE_POD_IP, "true"),
        (CLUSTER_ENDPOINT, "https://api.example.internal"),
    ])
    .unwrap();
    assert_eq!(
        c.kubernetes.cluster_endpoint.as_deref(),
        Some("https://api.example.internal")
    );
    // MANAGE_UNTAGGED_ENI=false is honoured in EC2 mode.
    let env = HashMap::from([(MY_NODE_NAME, "node-1"), (MANAGE_UNTAGGED_ENI, "false")]);
    assert!(!Config::from_env(&env).unwrap().cloud.manage_untagged_eni);
}

#[test]
fn deprecated_and_egress_settings_are_validated_no_ops() {
    let c = with(&[
        (AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER, "false"),
        (ENABLE_NFTABLES, "true"),
        (ENABLE_V4_EGRESS, "false"),
        (
            AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE,
            "/var/log/aws-routed-eni/e4.log",
        ),
    ])
    .unwrap();
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains(AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER)
            && c.warnings[0].contains("no effect")
    );
    assert!(c.warnings[1].contains(ENABLE_NFTABLES));
}

#[test]
fn effective_settings_follow_the_mode() {
    let c = with(&[]).unwrap();
    assert!(c.cloud.enable_subnet_discovery && !c.subnet_discovery_in_effect());
    assert!(c.leaked_eni_cleanup_disabled());
    let env = HashMap::from([(MY_NODE_NAME, "node-1")]);
    let c = Config::from_env(&env).unwrap();
    assert!(c.subnet_discovery_in_effect() && !c.leaked_eni_cleanup_disabled());
}

#[test]
fn prefix_delegation_is_read_with_its_warm_prefix_target() {
    let c = with(&[
        (ENABLE_PREFIX_DELEGATION, "true"),
        (WARM_PREFIX_TARGET, "2"),
    ])
    .unwrap();
    assert!(c.features.prefix_delegation);
    assert_eq!(c.pool.warm_prefix_target, 2);
    assert!(!with(&[]).unwrap().features.prefix_delegation);
}

#[test]
fn soft_problems_become_warnings() {
    let c = with(&[
        (HTTP_TIMEOUT, "5"),
        (
            ADDITIONAL_ENI_TAGS,
            r#"{"node.k8s.amazonaws.com/instance_id":"x","a":"b"}"#,
        ),
    ])
    .unwrap();
    assert_eq!(c.cloud.http_timeout, Duration::from_secs(10));
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings.iter().any(|w| w.contains(HTTP_TIMEOUT)));
    assert!(c.warnings.iter().any(|w| w.contains(ADDITIONAL_ENI_TAGS)));
    assert_eq!(c.cloud.additional_eni_tags.len(), 1);
}

#[test]
fn max_eni_of_zero_or_less_means_no_cap() {
    assert_eq!(with(&[(MAX_ENI, "0")]).unwrap().pool.max_eni, None);
    assert_eq!(with(&[(MAX_ENI, "-1")]).unwrap().pool.max_eni, None);
    assert_eq!(with(&[(MAX_ENI, "4")]).unwrap().pool.max_eni, Some(4));
}

#[test]
fn non_utf8_values_are_reported() {
    let err = ConfigError::NotUnicode {
        var: MY_NODE_NAME,
        value: "\u{fffd}".into(),
    };
    assert!(err.to_string().contains(MY_NODE_NAME));
}
