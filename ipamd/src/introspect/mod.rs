//! The introspection endpoint on `INTROSPECTION_BIND_ADDRESS` (default `127.0.0.1:61679`,
//! `unix:<path>` allowed; `DISABLE_INTROSPECTION=true` turns it off), with the reference's
//! paths and JSON shapes (`pkg/ipamd/introspect.go`) plus two of ours:
//!
//! | path | shape |
//! |---|---|
//! | `/` (and any unknown path, as Go's `ServeMux` does) | `{"AvailableCommands": [...]}` |
//! | `/v1/enis` | network card → `{TotalIPs, AssignedIPs, ENIs: {id → ENI}}` (containerID and ifName scrubbed, as in v1.23) |
//! | `/v1/pods` | ours (the reference dropped it): every assignment, with its key and pod |
//! | `/v1/pool` | ours: readiness, counts, limits and the last EC2 error, for `ipamd status` |
//! | `/v1/networkutils-env-settings` | the node-network settings in effect |
//! | `/v1/ipamd-env-settings` | the pool settings in effect |
//!
//! The JSON types are shared with the `ipamd status` client ([`status`]).

pub mod status;
pub mod wire;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::routing::get;
use serde_json::{Value, json};
use vpc_cni_contract::dataplane::route_table_for_device;

use self::wire::{
    AddressInfo, CidrInfo, CloudErrorJson, EniInfo, EniInfos, IpCounts, IpNet, IpamKeyJson,
    IpamMetadataJson, LimitsJson, PodInfo, PoolReport, RootResponse, SubnetJson,
};
use crate::config::parse::RandomizeSnat;
use crate::config::{self, Config, ProvisioningMode};
use crate::datastore::{Assignment, Datastore};
use crate::state::{IpamState, Phase};

/// Paths listed by `/`.
pub const PATHS: [&str; 5] = [
    "/v1/enis",
    "/v1/ipamd-env-settings",
    "/v1/networkutils-env-settings",
    "/v1/pods",
    "/v1/pool",
];

/// The introspection router over `state`, with settings from `config`.
pub fn router(state: Arc<IpamState>, config: &Config) -> axum::Router {
    let network_env = Arc::new(networkutils_env_settings(config));
    let ipamd_env = Arc::new(ipamd_env_settings(config));
    let mode = provisioning_mode(config.provisioning);
    let root = || async {
        Json(RootResponse {
            available_commands: PATHS.iter().map(|p| (*p).to_owned()).collect(),
        })
    };
    let enis_state = Arc::clone(&state);
    let pods_state = Arc::clone(&state);
    let pool_state = state;
    axum::Router::new()
        .route("/", get(root))
        .route(
            "/v1/enis",
            get(move || {
                let state = Arc::clone(&enis_state);
                async move { Json(state.with_datastore(eni_infos).await) }
            }),
        )
        .route(
            "/v1/pods",
            get(move || {
                let state = Arc::clone(&pods_state);
                async move { Json(state.with_datastore(|ds| pods(ds)).await) }
            }),
        )
        .route(
            "/v1/pool",
            get(move || {
                let state = Arc::clone(&pool_state);
                async move { Json(pool_report(&state, mode).await) }
            }),
        )
        .route(
            "/v1/networkutils-env-settings",
            get(move || {
                let v = Arc::clone(&network_env);
                async move { Json((*v).clone()) }
            }),
        )
        .route(
            "/v1/ipamd-env-settings",
            get(move || {
                let v = Arc::clone(&ipamd_env);
                async move { Json((*v).clone()) }
            }),
        )
        .fallback(get(root))
}

/// How ipamd gets its addresses, in words.
pub fn provisioning_mode(mode: ProvisioningMode) -> &'static str {
    match mode {
        ProvisioningMode::ImdsOnly => "instance-metadata-only (ENABLE_IMDS_ONLY_MODE)",
        ProvisioningMode::ProvisioningDisabled => {
            "no provisioning (DISABLE_NETWORK_RESOURCE_PROVISIONING)"
        }
        ProvisioningMode::Ec2 => "EC2 provisioning",
    }
}

fn randomize_snat(r: RandomizeSnat) -> &'static str {
    match r {
        RandomizeSnat::Prng => "prng",
        RandomizeSnat::HashRandom => "hashrandom",
        RandomizeSnat::None => "none",
    }
}

/// `/v1/networkutils-env-settings`: the reference's keys (`networkutils.GetConfigForDebug`).
pub fn networkutils_env_settings(config: &Config) -> Value {
    let n = &config.node_network;
    let cidrs = |v: &[ipnet::Ipv4Net]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    json!({
        config::AWS_VPC_K8S_CNI_CONNMARK: n.connmark,
        config::AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: cidrs(&n.exclude_snat_cidrs),
        config::AWS_VPC_K8S_CNI_EXTERNALSNAT: n.external_snat,
        config::AWS_EXTERNAL_SERVICE_CIDRS: cidrs(&n.external_service_cidrs),
        config::AWS_VPC_ENI_MTU: n.eni_mtu,
        config::AWS_VPC_K8S_CNI_VETHPREFIX: config.plugin.veth_prefix,
        config::AWS_VPC_CNI_NODE_PORT_SUPPORT: n.node_port_support,
        config::AWS_VPC_K8S_CNI_RANDOMIZESNAT: randomize_snat(n.randomize_snat),
    })
}

/// `/v1/ipamd-env-settings`: the reference's keys (`ipamd.GetConfigForDebug`) and the other
/// pool knobs this ipamd reads.
pub fn ipamd_env_settings(config: &Config) -> Value {
    let p = &config.pool;
    json!({
        config::WARM_IP_TARGET: p.warm_ip_target,
        config::WARM_ENI_TARGET: p.warm_eni_target,
        config::MINIMUM_IP_TARGET: p.minimum_ip_target,
        config::WARM_PREFIX_TARGET: p.warm_prefix_target,
        config::MAX_ENI: p.max_eni,
        config::AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG: config.features.custom_network,
        config::AWS_MANAGE_ENIS_NON_SCHEDULABLE: config.cloud.manage_enis_non_schedulable,
        config::ENABLE_SUBNET_DISCOVERY: config.subnet_discovery_in_effect(),
        config::ENABLE_PREFIX_DELEGATION: config.features.prefix_delegation,
        config::ENABLE_POD_ENI: config.features.pod_eni,
        config::IP_COOLDOWN_PERIOD: config.ip_cooldown.as_secs(),
        config::ENABLE_IMDS_ONLY_MODE: matches!(config.provisioning, ProvisioningMode::ImdsOnly),
        config::DISABLE_NETWORK_RESOURCE_PROVISIONING:
            matches!(config.provisioning, ProvisioningMode::ProvisioningDisabled),
        config::DISABLE_LEAKED_ENI_CLEANUP: config.leaked_eni_cleanup_disabled(),
    })
}

fn metadata_json(a: &Assignment) -> IpamMetadataJson {
    IpamMetadataJson {
        k8s_pod_namespace: a.metadata.namespace.clone(),
        k8s_pod_name: a.metadata.name.clone(),
        interfaces_count: a.metadata.interfaces_count,
    }
}

/// `/v1/enis` from the datastore: one network card (0).
pub fn eni_infos(ds: &mut Datastore) -> BTreeMap<String, EniInfos> {
    let stats = ds.stats();
    let assigned: BTreeMap<IpAddr, Assignment> =
        ds.assignments().into_iter().map(|a| (a.ip, a)).collect();
    let v6_prefix = ds.v6_prefix().cloned();
    let mut enis = BTreeMap::new();
    for view in ds.enis() {
        let address_info = |ip: IpAddr, a: &Assignment| AddressInfo {
            address: ip.to_string(),
            // Scrubbed as the reference does since v1.23: the network name stays.
            ipam_key: IpamKeyJson {
                network_name: a.key.network_name.clone(),
                container_id: String::new(),
                if_name: String::new(),
            },
            ipam_metadata: metadata_json(a),
            assigned_time: wire::rfc3339(a.assigned_at),
            unassigned_time: wire::ZERO_TIME.to_owned(),
        };
        let mut cidrs = BTreeMap::new();
        // A secondary IP is a /32; a prefix is its /28 with the addresses assigned in it, as in
        // the reference.
        for (ip, _) in ds.eni_secondary_addresses(&view.spec.id) {
            let addresses = assigned
                .get(&IpAddr::V4(ip))
                .map(|a| (ip.to_string(), address_info(IpAddr::V4(ip), a)))
                .into_iter()
                .collect();
            cidrs.insert(
                format!("{ip}/32"),
                CidrInfo {
                    cidr: IpNet::new(ip, 32),
                    ip_addresses: addresses,
                    is_prefix: false,
                    address_family: "4".into(),
                },
            );
        }
        for p in &view.prefixes {
            let addresses = assigned
                .range(IpAddr::V4(p.prefix.network())..=IpAddr::V4(p.prefix.broadcast()))
                .map(|(ip, a)| (ip.to_string(), address_info(*ip, a)))
                .collect();
            cidrs.insert(
                p.prefix.to_string(),
                CidrInfo {
                    cidr: IpNet::new(p.prefix.network(), p.prefix.prefix_len()),
                    ip_addresses: addresses,
                    is_prefix: true,
                    address_family: "4".into(),
                },
            );
        }
        // IPv6 mode: the primary ENI's /80 with the addresses pods have.
        let mut ipv6_cidrs = BTreeMap::new();
        let mut ips = IpCounts {
            total: view.total,
            assigned: view.assigned,
            cooling: view.cooling,
        };
        if let Some(p) = v6_prefix.as_ref().filter(|p| p.eni_id == view.spec.id) {
            let net = p.prefix;
            let addresses = assigned
                .range(IpAddr::V6(net.network())..=IpAddr::V6(net.broadcast()))
                .map(|(ip, a)| (ip.to_string(), address_info(*ip, a)))
                .collect();
            ipv6_cidrs.insert(
                net.to_string(),
                CidrInfo {
                    cidr: IpNet::new_v6(net.network(), net.prefix_len()),
                    ip_addresses: addresses,
                    is_prefix: true,
                    address_family: "6".into(),
                },
            );
            ips = IpCounts {
                total: stats.total,
                assigned: stats.assigned,
                cooling: stats.cooling,
            };
        }
        let device = view.spec.device_number;
        enis.insert(
            view.spec.id.clone(),
            EniInfo {
                id: view.spec.id.clone(),
                is_primary: device == 0,
                is_trunk: false,
                is_efa: false,
                is_excluded_for_pod_ips: view.excluded,
                device_number: device,
                route_table_id: route_table_for_device(device),
                primary_ip: view.spec.primary_ip.to_string(),
                subnet_cidr: view.spec.subnet.to_string(),
                ips,
                available_ipv4_cidrs: cidrs,
                ipv6_cidrs,
            },
        );
    }
    BTreeMap::from([(
        "0".to_owned(),
        EniInfos {
            ips: IpCounts {
                total: stats.total,
                assigned: stats.assigned,
                cooling: stats.cooling,
            },
            enis,
        },
    )])
}

/// `/v1/pods`: every assignment, by address.
pub fn pods(ds: &Datastore) -> Vec<PodInfo> {
    ds.assignments()
        .iter()
        .map(|a| PodInfo {
            ip: a.ip.to_string(),
            eni: a.eni_id.clone(),
            device_number: a.device_number,
            route_table_id: route_table_for_device(a.device_number),
            ipam_key: IpamKeyJson {
                network_name: a.key.network_name.clone(),
                container_id: a.key.container_id.clone(),
                if_name: a.key.if_name.clone(),
            },
            ipam_metadata: metadata_json(a),
            assigned_time: wire::rfc3339(a.assigned_at),
        })
        .collect()
}

/// `/v1/pool`: what `ipamd status` shows at the top.
pub async fn pool_report(state: &IpamState, mode: &str) -> PoolReport {
    let status = state.status().await;
    let node = state.node_report();
    let phase = match state.phase() {
        Phase::Starting(_) => "starting",
        Phase::Ready => "ready",
        Phase::Draining => "draining",
    };
    PoolReport {
        ready: status.ready,
        phase: phase.to_owned(),
        message: status.message,
        mode: mode.to_owned(),
        instance_id: node.instance_id.unwrap_or_default(),
        instance_type: node.instance_type.unwrap_or_default(),
        enis: status.stats.enis,
        ips: IpCounts {
            total: status.stats.total,
            assigned: status.stats.assigned,
            cooling: status.stats.cooling,
        },
        assignable_ips: status.stats.assignable,
        limits: node.limits.map(|l| LimitsJson {
            max_enis: l.max_enis,
            ips_per_eni: l.ips_per_eni,
            max_pods: l.max_pods,
        }),
        last_ec2_error: node.last_cloud_error.map(|e| CloudErrorJson {
            operation: e.operation,
            message: e.message,
            time: wire::rfc3339(e.at),
        }),
        subnets: node
            .subnets
            .into_iter()
            .map(|s| SubnetJson {
                subnet_id: s.id,
                cidr: s.cidr.to_string(),
                available_ips: s.available_ips,
                node_subnet: s.node_subnet,
                low_ips: s.low,
                one_node_takes: s.one_node_takes,
            })
            .collect(),
        unschedulable: node.unschedulable,
    }
}

#[cfg(test)]
mod tests {

    use std::collections::HashMap;
    use std::time::Duration;

    use super::status::get_json;
    use super::*;
    use crate::checkpoint::NullCheckpointer;
    use crate::config::parse::BindAddress;
    use crate::datastore::PodMetadata;
    use crate::http::{Listener, serve};
    use crate::state::{CloudErrorReport, NodeLimits};
    use crate::testing::pools::{key, two_enis};

    fn config() -> Config {
        let env: HashMap<&str, &str> = HashMap::from([
            ("ENABLE_IMDS_ONLY_MODE", "true"),
            ("MY_NODE_NAME", "node-1"),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "10.9.0.0/16"),
            ("WARM_IP_TARGET", "4"),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "hashrandom"),
        ]);
        Config::from_env(&env).unwrap()
    }

    fn state() -> Arc<IpamState> {
        Arc::new(IpamState::new(two_enis(), Arc::new(NullCheckpointer)))
    }

    fn pod(ns: &str, name: &str) -> PodMetadata {
        PodMetadata {
            namespace: ns.into(),
            name: name.into(),
            interfaces_count: 1,
        }
    }

    #[tokio::test]
    async fn serves_the_pool_over_a_unix_socket() {
        let st = state();
        st.set_phase(Phase::Ready);
        st.update_node_report(|f| {
            f.instance_id = Some("i-0a1b".into());
            f.instance_type = Some("m5.large".into());
            f.limits = Some(NodeLimits {
                max_enis: 3,
                ips_per_eni: 9,
                max_pods: 29,
            });
            f.last_cloud_error = Some(CloudErrorReport {
                operation: "AssignPrivateIpAddresses".into(),
                message: "RequestLimitExceeded: slow down".into(),
                at: std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            });
        });
        st.add(&key("c1"), pod("default", "web-0")).await.unwrap();
        st.add(&key("c2"), pod("default", "web-1")).await.unwrap();
        st.add(&key("c3"), pod("kube-system", "dns")).await.unwrap();
        st.del(&key("c2")).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let addr = BindAddress::Unix(dir.path().join("introspect.sock"));
        let listener = Listener::bind(&addr).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            "introspection",
            listener,
            router(Arc::clone(&st), &config()),
            async {
                let _ = rx.await;
            },
        ));

        let root: RootResponse = get_json(&addr, "/").await.unwrap();
        assert_eq!(root.available_commands, PATHS);
        let unknown: RootResponse = get_json(&addr, "/v2/whatever").await.unwrap();
        assert_eq!(unknown, root);

        let enis: BTreeMap<String, EniInfos> = get_json(&addr, "/v1/enis").await.unwrap();
        let card = &enis["0"];
        assert_eq!(
            card.ips,
            IpCounts {
                total: 4,
                assigned: 2,
                cooling: 1
            }
        );
        let a = &card.enis["eni-a"];
        assert!(a.is_primary);
        assert_eq!(
            (
                a.device_number,
                a.route_table_id,
                a.ips.assigned,
                a.ips.cooling
            ),
            (0, 254, 1, 1)
        );
        let b = &card.enis["eni-b"];
        assert_eq!(
            (b.device_number, b.route_table_id, b.ips.assigned),
            (1, 2, 1)
        );
        assert_eq!(b.available_ipv4_cidrs.len(), 2);
        let cidr = &a.available_ipv4_cidrs["10.0.0.11/32"];
        assert_eq!(cidr.cidr.ip, "10.0.0.11");
        assert_eq!(cidr.cidr.mask, "/////w==");
        let addr11 = &cidr.ip_addresses["10.0.0.11"];
        assert_eq!(addr11.ipam_key.network_name, "aws-cni");
        assert_eq!(
            addr11.ipam_key.container_id, "",
            "scrubbed as in the reference"
        );
        assert_eq!(addr11.ipam_metadata.k8s_pod_name, "web-0");
        assert_eq!(addr11.unassigned_time, wire::ZERO_TIME);
        assert!(
            a.available_ipv4_cidrs["10.0.0.12/32"]
                .ip_addresses
                .is_empty()
        );

        let pods: Vec<PodInfo> = get_json(&addr, "/v1/pods").await.unwrap();
        let summary: Vec<(String, String, String, u32)> = pods
            .iter()
            .map(|p| {
                (
                    p.ip.clone(),
                    p.ipam_key.container_id.clone(),
                    p.ipam_metadata.k8s_pod_name.clone(),
                    p.route_table_id,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "10.0.0.11".to_owned(),
                    "c1".to_owned(),
                    "web-0".to_owned(),
                    254
                ),
                ("10.0.0.21".to_owned(), "c3".to_owned(), "dns".to_owned(), 2),
            ]
        );

        let pool: PoolReport = get_json(&addr, "/v1/pool").await.unwrap();
        assert!(pool.ready);
        assert_eq!(pool.phase, "ready");
        assert_eq!(pool.instance_id, "i-0a1b");
        assert_eq!(
            (
                pool.enis,
                pool.ips.total,
                pool.ips.assigned,
                pool.ips.cooling,
                pool.assignable_ips
            ),
            (2, 4, 2, 1, 1)
        );
        assert_eq!(pool.limits.unwrap().max_pods, 29);
        let err = pool.last_ec2_error.unwrap();
        assert_eq!(err.operation, "AssignPrivateIpAddresses");
        assert_eq!(err.time, "2027-01-15T08:00:00Z");

        let net: Value = get_json(&addr, "/v1/networkutils-env-settings")
            .await
            .unwrap();
        assert_eq!(
            net,
            json!({
                "AWS_VPC_K8S_CNI_CONNMARK": 128,
                "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": ["10.9.0.0/16"],
                "AWS_VPC_K8S_CNI_EXTERNALSNAT": false,
                "AWS_EXTERNAL_SERVICE_CIDRS": [],
                "AWS_VPC_ENI_MTU": 9001,
                "AWS_VPC_K8S_CNI_VETHPREFIX": "eni",
                "AWS_VPC_CNI_NODE_PORT_SUPPORT": true,
                "AWS_VPC_K8S_CNI_RANDOMIZESNAT": "hashrandom",
            })
        );
        let ipamd: Value = get_json(&addr, "/v1/ipamd-env-settings").await.unwrap();
        assert_eq!(ipamd["WARM_IP_TARGET"], 4);
        assert_eq!(ipamd["WARM_ENI_TARGET"], 1);
        assert_eq!(ipamd["ENABLE_IMDS_ONLY_MODE"], true);
        assert_eq!(ipamd["MAX_ENI"], Value::Null);

        let text = status::status(&addr).await.unwrap();
        assert!(
            text.contains(
                "IPs:            4 total, 2 assigned, 1 cooling, 1 assignable, on 2 ENIs"
            ),
            "{text}"
        );
        assert!(text.contains("eni-b  1       2      10.0.0.20"), "{text}");

        tx.send(()).unwrap();
        server.await.unwrap();
    }

    #[test]
    fn prefixes_show_as_their_28_with_the_addresses_assigned_in_them() {
        let mut ds = two_enis();
        ds.add_prefix("eni-b", "10.0.0.32/28".parse().unwrap())
            .unwrap();
        ds.set_prefix_mode(true);
        let (a, _) = ds.assign(&key("c1"), pod("default", "web-0")).unwrap();
        assert_eq!(a.ip, std::net::Ipv4Addr::new(10, 0, 0, 32));
        let enis = eni_infos(&mut ds);
        let b = &enis["0"].enis["eni-b"];
        assert_eq!((b.ips.total, b.ips.assigned), (18, 1));
        let prefix = &b.available_ipv4_cidrs["10.0.0.32/28"];
        assert!(prefix.is_prefix);
        assert_eq!(prefix.cidr.ip, "10.0.0.32");
        assert_eq!(prefix.cidr.mask, "////8A==");
        assert_eq!(
            prefix.ip_addresses.keys().collect::<Vec<_>>(),
            ["10.0.0.32"]
        );
        assert!(!b.available_ipv4_cidrs["10.0.0.21/32"].is_prefix);
        assert_eq!(b.available_ipv4_cidrs.len(), 3, "two /32s and one /28");
    }
}
