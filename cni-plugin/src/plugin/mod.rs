//! One invocation end to end: validate the environment and the config, then run the verb
//! against ipamd and the kernel ([`add`], [`del`], [`check`] for CHECK and STATUS, [`gc`];
//! VERSION here), and produce what goes on stdout. What the verbs share lives here: the pod's
//! identity, the namespaces, the mapping of errors to CNI codes, the requests to ipamd.

mod add;
mod check;
mod del;
mod gc;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};
use vpc_cni_contract::dataplane::MAIN_TABLE;

use crate::cni::config::{NetConf, peek_version, request_version};
use crate::cni::env::{Attachment, CNI_NETNS, CniEnv, Command};
use crate::cni::error::CniError;
use crate::cni::version::{CniVersion, version_reply};
use crate::ipamd_client::{IpamdError, rpc};
use crate::netlink::NetlinkError;
use crate::netns::{Netns, NetnsError};
use crate::timing;

/// What an invocation produced.
#[derive(Debug)]
pub struct Outcome {
    /// The version replies are written in (the request's when known).
    pub version: CniVersion,
    /// `Ok(Some(json))`: print it; `Ok(None)`: print nothing; `Err`: print the error JSON.
    pub result: Result<Option<Value>, CniError>,
}

/// Runs one invocation. `get_env` reads `CNI_*` variables; `stdin` is the request as read (or
/// the error reading it).
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: Result<Vec<u8>, CniError>) -> Outcome {
    let version = request_version(&stdin);
    Outcome {
        version,
        result: run_inner(get_env, stdin),
    }
}

fn run_inner(
    get_env: impl Fn(&str) -> Option<String>,
    stdin: Result<Vec<u8>, CniError>,
) -> Result<Option<Value>, CniError> {
    let env = CniEnv::from_lookup(get_env)?;
    let bytes = stdin?;
    if env.command == Command::Version {
        return Ok(Some(version_reply(peek_version(&bytes).as_deref())));
    }
    let conf = NetConf::parse(&bytes)?;
    check_verb_version(env.command, conf.cni_version)?;
    timing::mark("env_config");
    crate::logging::init(&conf.log_target, conf.log_level);
    timing::mark("log_init");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::Io {
            what: "the async runtime",
            reason: e.to_string(),
        })?;
    timing::mark("runtime");
    let span = match &env.attachment {
        Some(a) => info_span!(
            "cni",
            command = env.command.as_str(),
            container_id = %a.container_id,
            ifname = %a.ifname,
            netns = a.netns.as_deref().unwrap_or(""),
        ),
        None => info_span!("cni", command = env.command.as_str()),
    };
    span.in_scope(|| debug!(cni_version = %conf.cni_version, network = ?conf.name, "request"));
    let result = runtime.block_on(dispatch(&env, &conf).instrument(span.clone()));
    // Closes the netlink and gRPC connections the verb opened.
    drop(runtime);
    timing::mark("runtime_drop");
    let _enter = span.enter();
    match &result {
        Ok(_) => info!("done"),
        Err(e) => warn!(code = e.cni_code(), error = %e, "failed"),
    }
    debug!(
        us = %timing::summary(&timing::snapshot()),
        "phases"
    );
    result
}

/// The verbs each version defines: ADD, DEL and VERSION in every served version, CHECK from
/// 0.4.0, GC and STATUS from 1.1.0. Others get code 1, with `skel`'s wording for CHECK.
fn check_verb_version(command: Command, version: CniVersion) -> Result<(), CniError> {
    let needed = match command {
        Command::Version | Command::Add | Command::Del => return Ok(()),
        Command::Check if version.has_check() => return Ok(()),
        Command::Gc | Command::Status if version.has_gc_and_status() => return Ok(()),
        Command::Check => "0.4.0 or newer",
        Command::Gc | Command::Status => "1.1.0",
    };
    let skel_words = if command == Command::Check {
        "config version does not allow CHECK; "
    } else {
        ""
    };
    Err(CniError::IncompatibleVersion {
        reason: format!(
            "{skel_words}{} is not defined for cniVersion {version}; it needs cniVersion {needed}",
            command.as_str()
        ),
    })
}

async fn dispatch(env: &CniEnv, conf: &NetConf) -> Result<Option<Value>, CniError> {
    match (env.command, &env.attachment) {
        (Command::Add, Some(a)) => add::add(conf, a).await.map(Some),
        (Command::Del, Some(a)) => del::del(conf, a).await.map(|()| None),
        (Command::Check, Some(a)) => check::check(conf, a).await.map(|()| None),
        (Command::Gc, _) => gc::gc(conf).await.map(|()| None),
        (Command::Status, _) => check::status(conf).await.map(|()| None),
        (Command::Version, _) => Ok(Some(version_reply(Some(conf.cni_version.as_str())))),
        (cmd, None) => Err(CniError::InvalidEnv {
            var: crate::cni::env::CNI_CONTAINERID,
            reason: format!("missing for {}", cmd.as_str()),
        }),
    }
}

/// The pod's effective Kubernetes identity (docs/contracts.md): `K8S_POD_NAMESPACE` or
/// `default`, `K8S_POD_NAME` or the container ID.
fn pod_identity(a: &Attachment) -> (String, String) {
    let namespace = a
        .args
        .pod_namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let name = a
        .args
        .pod_name
        .clone()
        .unwrap_or_else(|| a.container_id.clone());
    (namespace, name)
}

fn netns_error(e: NetnsError, path: &str) -> CniError {
    match e {
        NetnsError::NotFound { .. } => CniError::NetnsNotFound {
            netns: path.to_string(),
            reason: "no such file".into(),
        },
        NetnsError::NotANetns { reason, .. } => CniError::InvalidEnv {
            var: CNI_NETNS,
            reason: format!("{path} is not a network namespace ({reason})"),
        },
        other => CniError::Netns {
            netns: path.to_string(),
            reason: other.to_string(),
        },
    }
}

fn netlink_error(e: NetlinkError) -> CniError {
    match e {
        NetlinkError::Netns(NetnsError::Enter { path, source }) if source == nix::Error::EINVAL => {
            CniError::InvalidEnv {
                var: CNI_NETNS,
                reason: format!(
                    "{} is not a network namespace (setns: {source})",
                    path.display()
                ),
            }
        }
        NetlinkError::Netns(n) => CniError::Netns {
            netns: match &n {
                NetnsError::NotFound { path }
                | NetnsError::NotANetns { path, .. }
                | NetnsError::Open { path, .. }
                | NetnsError::Enter { path, .. } => path.display().to_string(),
            },
            reason: n.to_string(),
        },
        other => CniError::Setup {
            msg: other.to_string(),
        },
    }
}

fn ipamd_error(e: IpamdError) -> CniError {
    if e.is_transient() {
        CniError::TryAgainLater { msg: e.to_string() }
    } else {
        CniError::Ipamd { msg: e.to_string() }
    }
}

/// Opens the pod namespace for ADD/CHECK and refuses the plugin's own namespace.
fn open_pod_netns(path: &str, host_ns: &Netns) -> Result<Netns, CniError> {
    let ns = Netns::open(path).map_err(|e| netns_error(e, path))?;
    if ns.same_as(host_ns).map_err(|e| netns_error(e, path))? {
        return Err(CniError::InvalidEnv {
            var: CNI_NETNS,
            reason: format!("{path} is the plugin's own network namespace"),
        });
    }
    Ok(ns)
}

fn current_netns() -> Result<Netns, CniError> {
    Netns::current().map_err(|e| CniError::Netns {
        netns: "/proc/thread-self/ns/net".into(),
        reason: e.to_string(),
    })
}

struct Allocation {
    ip: IpAddr,
    route_table: u32,
}

/// The address of one allocation: its `IPv4Addr` or, in an IPv6 cluster, its `IPv6Addr`;
/// `Ok(None)` when it has neither. Both at once is refused: dual-stack pods are not supported
/// (neither by the reference).
fn allocated_address(m: &rpc::IpAllocationMetadata) -> Result<Option<IpAddr>, String> {
    match (m.i_pv4_addr.as_str(), m.i_pv6_addr.as_str()) {
        ("", "") => Ok(None),
        (v4, "") => v4
            .parse::<Ipv4Addr>()
            .map(|ip| Some(IpAddr::V4(ip)))
            .map_err(|_| format!("an invalid IPv4 address {v4:?}")),
        ("", v6) => v6
            .parse::<Ipv6Addr>()
            .map(|ip| Some(IpAddr::V6(ip)))
            .map_err(|_| format!("an invalid IPv6 address {v6:?}")),
        (v4, v6) => Err(format!(
            "both an IPv4 ({v4}) and an IPv6 ({v6}) address; dual-stack pods are not supported"
        )),
    }
}

/// The addresses of a reply's allocations; unusable entries are reported through `bad` and
/// skipped (teardown goes on with the others).
fn allocated_addresses(
    meta: &[rpc::IpAllocationMetadata],
    mut bad: impl FnMut(String),
) -> Vec<IpAddr> {
    meta.iter()
        .filter_map(|m| {
            allocated_address(m).unwrap_or_else(|e| {
                bad(e);
                None
            })
        })
        .collect()
}

fn allocation_from(meta: &[rpc::IpAllocationMetadata], rpc: &str) -> Result<Allocation, CniError> {
    let m = meta
        .iter()
        .find(|m| !m.i_pv4_addr.is_empty() || !m.i_pv6_addr.is_empty())
        .ok_or_else(|| CniError::Ipamd {
            msg: format!("ipamd {rpc} returned no address (neither IPv4 nor IPv6)"),
        })?;
    let ip = allocated_address(m)
        .map_err(|e| CniError::Ipamd {
            msg: format!("ipamd {rpc} returned {e}"),
        })?
        .ok_or_else(|| CniError::Ipamd {
            msg: format!("ipamd {rpc} returned no address (neither IPv4 nor IPv6)"),
        })?;
    let route_table = match u32::try_from(m.route_table_id) {
        Ok(0) => MAIN_TABLE,
        Ok(t) => t,
        Err(_) => {
            return Err(CniError::Ipamd {
                msg: format!("ipamd {rpc} returned route table {}", m.route_table_id),
            });
        }
    };
    Ok(Allocation { ip, route_table })
}

fn del_request(
    network: &str,
    a: &Attachment,
    pod_namespace: &str,
    pod_name: &str,
    reason: &str,
) -> rpc::DelNetworkRequest {
    rpc::DelNetworkRequest {
        client_version: env!("CARGO_PKG_VERSION").to_string(),
        k8s_pod_name: pod_name.to_string(),
        k8s_pod_namespace: pod_namespace.to_string(),
        k8s_pod_infra_container_id: a.args.infra_container_id.clone().unwrap_or_default(),
        reason: reason.to_string(),
        container_id: a.container_id.clone(),
        if_name: a.ifname.clone(),
        network_name: network.to_string(),
        k8s_pod_uid: a.args.pod_uid.clone().unwrap_or_default(),
    }
}

fn check_request(network: &str, a: &Attachment) -> rpc::CheckNetworkRequest {
    rpc::CheckNetworkRequest {
        client_version: env!("CARGO_PKG_VERSION").to_string(),
        container_id: a.container_id.clone(),
        if_name: a.ifname.clone(),
        network_name: network.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_need_their_versions() {
        assert!(check_verb_version(Command::Add, CniVersion::V0_4_0).is_ok());
        assert!(check_verb_version(Command::Check, CniVersion::V1_0_0).is_ok());
        assert!(check_verb_version(Command::Gc, CniVersion::V1_1_0).is_ok());
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1] {
            assert!(check_verb_version(Command::Add, v).is_ok(), "ADD {v}");
            assert!(check_verb_version(Command::Del, v).is_ok(), "DEL {v}");
            assert!(
                check_verb_version(Command::Version, v).is_ok(),
                "VERSION {v}"
            );
            let msg = check_verb_version(Command::Check, v)
                .err()
                .map(|e| (e.cni_code(), e.to_string()));
            assert_eq!(
                msg,
                Some((
                    1,
                    format!(
                        "incompatible CNI version: config version does not allow CHECK; CHECK is not defined for cniVersion {v}; it needs cniVersion 0.4.0 or newer"
                    )
                ))
            );
        }
        for (cmd, v) in [
            (Command::Check, CniVersion::V0_3_0),
            (Command::Gc, CniVersion::V0_3_1),
            (Command::Gc, CniVersion::V1_0_0),
            (Command::Status, CniVersion::V0_4_0),
        ] {
            let e = check_verb_version(cmd, v).err().map(|e| e.cni_code());
            assert_eq!(e, Some(1), "{cmd:?} {v}");
        }
    }

    fn meta(v4: &str, v6: &str, table: i32) -> rpc::IpAllocationMetadata {
        rpc::IpAllocationMetadata {
            i_pv4_addr: v4.into(),
            i_pv6_addr: v6.into(),
            device_number: 0,
            route_table_id: table,
        }
    }

    fn outcome(meta: &[rpc::IpAllocationMetadata]) -> Result<(String, u32), (u32, String)> {
        allocation_from(meta, "AddNetwork")
            .map(|a| (a.ip.to_string(), a.route_table))
            .map_err(|e| (e.cni_code(), e.to_string()))
    }

    #[test]
    fn an_allocation_is_ipv4_or_ipv6_never_both_nor_neither() {
        assert_eq!(
            outcome(&[meta("10.0.2.20", "", 2)]),
            Ok(("10.0.2.20".into(), 2))
        );
        // IPv6 mode: IPv6Addr, route table 254 (0 means main too).
        assert_eq!(
            outcome(&[meta("", "2600:1f14:abc:de01:9f3c::5", 254)]),
            Ok(("2600:1f14:abc:de01:9f3c::5".into(), MAIN_TABLE))
        );
        assert_eq!(
            outcome(&[meta("", "2600:1f14::5", 0)]),
            Ok(("2600:1f14::5".into(), MAIN_TABLE))
        );
        let err = |m: &[rpc::IpAllocationMetadata]| outcome(m).err().unwrap_or_default();
        let (code, msg) = err(&[meta("10.0.2.20", "2600:1f14::5", 254)]);
        assert_eq!(code, 110);
        assert!(msg.contains("dual-stack pods are not supported"), "{msg}");
        assert!(
            msg.contains("10.0.2.20") && msg.contains("2600:1f14::5"),
            "{msg}"
        );
        for none in [&[][..], &[meta("", "", 254)][..]] {
            let (code, msg) = err(none);
            assert_eq!(code, 110);
            assert!(msg.contains("no address (neither IPv4 nor IPv6)"), "{msg}");
        }
        // Each field holds its own family.
        let (_, msg) = err(&[meta("2600:1f14::5", "", 254)]);
        assert!(msg.contains("invalid IPv4 address"), "{msg}");
        let (_, msg) = err(&[meta("", "10.0.2.20", 254)]);
        assert!(msg.contains("invalid IPv6 address"), "{msg}");
    }

    #[test]
    fn released_addresses_of_either_family_are_read_and_bad_ones_reported() {
        let mut bad = Vec::new();
        let ips = allocated_addresses(
            &[
                meta("10.0.2.20", "", 2),
                meta("", "2600:1f14::5", 254),
                meta("", "", 254),
                meta("10.0.2.21", "2600:1f14::6", 254),
            ],
            |e| bad.push(e),
        );
        assert_eq!(
            ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["10.0.2.20", "2600:1f14::5"]
        );
        assert_eq!(bad.len(), 1, "{bad:?}");
    }

    #[test]
    fn identity_defaults_follow_the_contract() {
        let a = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: None,
            args: Default::default(),
        };
        assert_eq!(pod_identity(&a), ("default".into(), "c1".into()));
    }
}
