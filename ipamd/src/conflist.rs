//! The CNI network configuration ipamd writes once it is ready (`10-aws.conflist` in
//! `HOST_CNI_CONFDIR_PATH`): the kubelet marks the node's network ready when it appears, so it is
//! written only after ipamd serves, atomically, and again on every start.
//!
//! Like the reference's `generateJSON`, optional upstream plugins are chained after `portmap`, in
//! the reference's order: `bandwidth` (`ENABLE_BANDWIDTH_PLUGIN`), then `tuning`
//! (`DISABLE_POD_V6`). Both come from containernetworking-plugins and act on the result of the
//! plugins before them (the bandwidth plugin finds the host veth among its interfaces).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::config::Config;
use crate::fsutil;

/// File name of the conflist.
pub const CONFLIST_NAME: &str = "10-aws.conflist";

/// Writing the conflist failed.
#[derive(Debug, Error)]
#[error("cannot write CNI config {path}: {source}")]
pub struct ConflistError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

#[derive(Debug, Serialize)]
struct AwsCniEntry<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "vethPrefix")]
    veth_prefix: &'a str,
    mtu: String,
    #[serde(rename = "podSGEnforcingMode")]
    pod_sg_enforcing_mode: &'a str,
    #[serde(rename = "pluginLogFile")]
    plugin_log_file: &'a str,
    #[serde(rename = "pluginLogLevel")]
    plugin_log_level: &'a str,
    #[serde(rename = "ipamdSocket")]
    ipamd_socket: String,
}

#[derive(Debug, Serialize)]
struct Capabilities {
    #[serde(rename = "portMappings")]
    port_mappings: bool,
}

#[derive(Debug, Serialize)]
struct PortmapEntry {
    #[serde(rename = "type")]
    kind: &'static str,
    capabilities: Capabilities,
    snat: bool,
}

#[derive(Debug, Serialize)]
struct BandwidthCapabilities {
    bandwidth: bool,
}

/// `{"type":"bandwidth","capabilities":{"bandwidth":true}}`: the runtime passes the pod's
/// rates (kubelet's `kubernetes.io/{ingress,egress}-bandwidth` annotations) as runtime config.
#[derive(Debug, Serialize)]
struct BandwidthEntry {
    #[serde(rename = "type")]
    kind: &'static str,
    capabilities: BandwidthCapabilities,
}

/// `{"type":"tuning","sysctl":{...}}`: sysctls written inside the pod's network namespace.
#[derive(Debug, Serialize)]
struct TuningEntry {
    #[serde(rename = "type")]
    kind: &'static str,
    /// Sorted, as the reference's Go map marshals.
    sysctl: BTreeMap<&'static str, &'static str>,
}

/// The sysctls `DISABLE_POD_V6=true` sets in the pod: IPv6 off on every interface, present
/// (`all`, `lo`) and future (`default`).
const POD_V6_OFF_SYSCTLS: [(&str, &str); 3] = [
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
    ("net.ipv6.conf.lo.disable_ipv6", "1"),
];

/// egress-cni's IPAM: host-local over the node-local range, one route.
#[derive(Debug, Serialize)]
struct EgressIpam {
    #[serde(rename = "type")]
    kind: &'static str,
    ranges: [[EgressRange; 1]; 1],
    routes: [EgressRoute; 1],
    #[serde(rename = "dataDir")]
    data_dir: &'static str,
}

#[derive(Debug, Serialize)]
struct EgressRange {
    subnet: &'static str,
}

#[derive(Debug, Serialize)]
struct EgressRoute {
    dst: &'static str,
}

/// The reference's `egress-cni` entry in IPv6 mode: pods get a node-local IPv4 address from
/// 169.254.172.0/22 on `v4if0`, SNATed to the node's IPv4 address.
#[derive(Debug, Serialize)]
struct EgressEntry<'a> {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    mtu: String,
    enabled: &'static str,
    #[serde(rename = "randomizeSNAT")]
    randomize_snat: &'static str,
    #[serde(rename = "nodeIP")]
    node_ip: String,
    ipam: EgressIpam,
    #[serde(rename = "pluginLogFile")]
    plugin_log_file: &'a str,
    #[serde(rename = "pluginLogLevel")]
    plugin_log_level: &'a str,
}

/// Where host-local keeps egress-cni's allocations (the reference's directory).
pub const EGRESS_V4_IPAM_DATA_DIR: &str = "/run/cni/v6pd/egress-v4-ipam";

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Plugin<'a> {
    AwsCni(AwsCniEntry<'a>),
    Egress(EgressEntry<'a>),
    Portmap(PortmapEntry),
    Bandwidth(BandwidthEntry),
    Tuning(TuningEntry),
}

#[derive(Debug, Serialize)]
struct Conflist<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    name: &'static str,
    plugins: Vec<Plugin<'a>>,
}

/// The conflist's JSON (pretty-printed, trailing newline), exactly as docs/contracts.md pins it:
/// the `aws-cni` entry (MTU as a string, `POD_MTU` else `AWS_VPC_ENI_MTU`), portmap, then
/// `bandwidth` when `ENABLE_BANDWIDTH_PLUGIN=true` and `tuning` when `DISABLE_POD_V6=true`.
pub fn render(config: &Config) -> String {
    render_for_node(config, None)
}

/// [`render`] for a node whose IPv4 address is `node_ipv4`: in IPv6 mode with
/// `ENABLE_V4_EGRESS=true` the `egress-cni` entry follows `aws-cni` (as in the reference's
/// conflist) and SNATs pods' IPv4 traffic to it. The reference also chains a disabled
/// `egress-cni` in every other case, which does nothing but cost an exec per pod; it is left
/// out here.
pub fn render_for_node(config: &Config, node_ipv4: Option<Ipv4Addr>) -> String {
    let p = &config.plugin;
    let mut list = Conflist {
        cni_version: "1.0.0",
        name: "aws-cni",
        plugins: vec![Plugin::AwsCni(AwsCniEntry {
            name: "aws-cni",
            kind: "aws-cni",
            veth_prefix: &p.veth_prefix,
            mtu: p.pod_mtu.to_string(),
            pod_sg_enforcing_mode: &p.pod_sg_enforcing_mode,
            plugin_log_file: &p.log_file,
            plugin_log_level: &p.log_level,
            ipamd_socket: config.socket_path.display().to_string(),
        })],
    };
    if let (true, true, Some(node_ip)) = (config.features.ipv6, p.v4_egress, node_ipv4) {
        list.plugins.push(Plugin::Egress(EgressEntry {
            name: crate::install::EGRESS_PLUGIN,
            kind: crate::install::EGRESS_PLUGIN,
            mtu: p.pod_mtu.to_string(),
            enabled: "true",
            randomize_snat: config.node_network.randomize_snat.as_str(),
            node_ip: node_ip.to_string(),
            ipam: EgressIpam {
                kind: "host-local",
                ranges: [[EgressRange {
                    subnet: "169.254.172.0/22",
                }]],
                routes: [EgressRoute { dst: "0.0.0.0/0" }],
                data_dir: EGRESS_V4_IPAM_DATA_DIR,
            },
            plugin_log_file: &p.egress_v4_log_file,
            plugin_log_level: &p.log_level,
        }));
    }
    list.plugins.push(Plugin::Portmap(PortmapEntry {
        kind: "portmap",
        capabilities: Capabilities {
            port_mappings: true,
        },
        snat: true,
    }));
    if p.bandwidth_plugin {
        list.plugins.push(Plugin::Bandwidth(BandwidthEntry {
            kind: "bandwidth",
            capabilities: BandwidthCapabilities { bandwidth: true },
        }));
    }
    if p.disable_pod_v6 {
        list.plugins.push(Plugin::Tuning(TuningEntry {
            kind: "tuning",
            sysctl: POD_V6_OFF_SYSCTLS.into_iter().collect(),
        }));
    }
    // Serializing plain structs of strings and bools cannot fail.
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    text
}

/// Writes the conflist into `dir` (created if missing) atomically, mode 0644, without any
/// partial or temporary file in `dir` (the runtime watches it: [`fsutil::atomic_publish`]).
///
/// # Errors
/// The directory or the file could not be written.
pub fn write(
    config: &Config,
    node_ipv4: Option<Ipv4Addr>,
    dir: &Path,
) -> Result<PathBuf, ConflistError> {
    let path = dir.join(CONFLIST_NAME);
    std::fs::create_dir_all(dir).map_err(|source| ConflistError {
        path: path.clone(),
        source,
    })?;
    fsutil::atomic_publish(&path, render_for_node(config, node_ipv4).as_bytes(), 0o644).map_err(
        |source| ConflistError {
            path: path.clone(),
            source,
        },
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {

    use std::collections::HashMap;

    use super::*;

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut env: HashMap<&str, &str> =
            HashMap::from([("ENABLE_IMDS_ONLY_MODE", "true"), ("MY_NODE_NAME", "n")]);
        env.extend(extra.iter().copied());
        Config::from_env(&env).unwrap()
    }

    #[test]
    fn defaults_render_the_contract_conflist() {
        let got: serde_json::Value = serde_json::from_str(&render(&config(&[]))).unwrap();
        let want: serde_json::Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"aws-cni","plugins":[
              {"name":"aws-cni","type":"aws-cni","vethPrefix":"eni","mtu":"9001","podSGEnforcingMode":"strict",
               "pluginLogFile":"/var/log/aws-routed-eni/plugin.log","pluginLogLevel":"DEBUG",
               "ipamdSocket":"/var/run/aws-node/ipamd.sock"},
              {"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}"#,
        )
        .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn values_come_from_the_environment() {
        let c = config(&[
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "cali"),
            ("AWS_VPC_ENI_MTU", "1500"),
            ("POD_SECURITY_GROUP_ENFORCING_MODE", "standard"),
            ("AWS_VPC_K8S_PLUGIN_LOG_FILE", "/tmp/x/plugin.log"),
            ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "INFO"),
            ("AWS_VPC_K8S_CNI_IPAMD_SOCKET", "/tmp/x/ipamd.sock"),
        ]);
        let v: serde_json::Value = serde_json::from_str(&render(&c)).unwrap();
        let e = &v["plugins"][0];
        assert_eq!(e["vethPrefix"], "cali");
        assert_eq!(
            e["mtu"], "1500",
            "mtu is a string, from AWS_VPC_ENI_MTU when POD_MTU is unset"
        );
        assert_eq!(e["podSGEnforcingMode"], "standard");
        assert_eq!(e["pluginLogFile"], "/tmp/x/plugin.log");
        assert_eq!(e["pluginLogLevel"], "INFO");
        assert_eq!(e["ipamdSocket"], "/tmp/x/ipamd.sock");
        let v: serde_json::Value =
            serde_json::from_str(&render(&config(&[("POD_MTU", "1400")]))).unwrap();
        assert_eq!(v["plugins"][0]["mtu"], "1400");
        assert!(v.get("disableCheck").is_none());
    }

    fn plugins(c: &Config) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&render(c)).unwrap();
        v["plugins"].as_array().unwrap().clone()
    }

    fn bandwidth() -> serde_json::Value {
        serde_json::json!({"type": "bandwidth", "capabilities": {"bandwidth": true}})
    }

    fn tuning() -> serde_json::Value {
        serde_json::json!({"type": "tuning", "sysctl": {
            "net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1",
            "net.ipv6.conf.lo.disable_ipv6": "1"}})
    }

    #[test]
    fn explicit_false_chains_nothing() {
        let c = config(&[
            ("ENABLE_BANDWIDTH_PLUGIN", "false"),
            ("DISABLE_POD_V6", "false"),
        ]);
        assert_eq!(render(&c), render(&config(&[])));
    }

    #[test]
    fn enable_bandwidth_plugin_or_disable_pod_v6_chains_its_plugin_after_portmap() {
        let base = plugins(&config(&[]));
        for (variable, plugin) in [
            ("ENABLE_BANDWIDTH_PLUGIN", bandwidth()),
            ("DISABLE_POD_V6", tuning()),
        ] {
            let got = plugins(&config(&[(variable, "true")]));
            assert_eq!(got.len(), 3, "{variable}: {got:?}");
            assert_eq!(
                got[..2],
                base[..],
                "{variable}: aws-cni and portmap unchanged"
            );
            assert_eq!(got[2], plugin, "{variable}");
        }
    }

    #[test]
    fn both_chain_bandwidth_then_tuning_in_the_reference_order() {
        let c = config(&[
            ("DISABLE_POD_V6", "true"),
            ("ENABLE_BANDWIDTH_PLUGIN", "true"),
        ]);
        let got = plugins(&c);
        let types: Vec<&str> = got.iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["aws-cni", "portmap", "bandwidth", "tuning"]);
        assert_eq!(got[2], bandwidth());
        assert_eq!(got[3], tuning());
        // The text itself: keys in the reference's field order, sysctls sorted.
        let text = render(&c);
        let tail = text.split("\"snat\": true").nth(1).unwrap();
        assert_eq!(
            tail,
            r#"
    },
    {
      "type": "bandwidth",
      "capabilities": {
        "bandwidth": true
      }
    },
    {
      "type": "tuning",
      "sysctl": {
        "net.ipv6.conf.all.disable_ipv6": "1",
        "net.ipv6.conf.default.disable_ipv6": "1",
        "net.ipv6.conf.lo.disable_ipv6": "1"
      }
    }
  ]
}
"#
        );
    }

    #[test]
    fn write_creates_the_directory_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let confdir = dir.path().join("etc").join("net.d");
        let path = write(&config(&[]), None, &confdir).unwrap();
        assert_eq!(path, confdir.join(CONFLIST_NAME));
        write(&config(&[("POD_MTU", "1400")]), None, &confdir).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"mtu\": \"1400\""), "{text}");
        let names: Vec<_> = std::fs::read_dir(&confdir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn ipv6_mode_chains_the_references_egress_entry_after_aws_cni() {
        let mut c = config(&[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("ENABLE_V4_EGRESS", "false"),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "hashrandom"),
        ]);
        c.features.ipv4 = false;
        c.features.ipv6 = true;
        let node = Some(Ipv4Addr::new(10, 0, 0, 10));
        // ENABLE_V4_EGRESS=false: nothing to chain (the reference's disabled entry is a no-op).
        assert_eq!(render_for_node(&c, node), render(&config(&[])));
        c.plugin.v4_egress = true;
        let v: serde_json::Value = serde_json::from_str(&render_for_node(&c, node)).unwrap();
        let want: serde_json::Value = serde_json::from_str(
            r#"{"name":"egress-cni","type":"egress-cni","mtu":"9001","enabled":"true",
                "randomizeSNAT":"hashrandom","nodeIP":"10.0.0.10",
                "ipam":{"type":"host-local","ranges":[[{"subnet":"169.254.172.0/22"}]],
                        "routes":[{"dst":"0.0.0.0/0"}],"dataDir":"/run/cni/v6pd/egress-v4-ipam"},
                "pluginLogFile":"/var/log/aws-routed-eni/egress-v4-plugin.log",
                "pluginLogLevel":"DEBUG"}"#,
        )
        .unwrap();
        assert_eq!(v["plugins"][0]["type"], "aws-cni");
        assert_eq!(v["plugins"][1], want);
        assert_eq!(v["plugins"][2]["type"], "portmap");
        // Without IPv6 mode the setting changes nothing.
        let mut v4 = config(&[]);
        v4.plugin.v4_egress = true;
        assert_eq!(render_for_node(&v4, node), render(&config(&[])));
    }
}
