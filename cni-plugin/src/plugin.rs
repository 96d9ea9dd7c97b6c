//! One invocation end to end: validate the environment and the config, then run the verb
//! (ADD, DEL, CHECK, VERSION, GC, STATUS) against ipamd and the kernel, and produce what goes on
//! stdout.

use std::net::Ipv4Addr;

use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};
use vpc_cni_contract::dataplane::{MAIN_TABLE, POD_GATEWAY, host_veth_name};

use crate::cni::config::{GcAttachment, NetConf, VALID_ATTACHMENTS_KEY, peek_version};
use crate::cni::env::{Attachment, CNI_NETNS, CniEnv, Command};
use crate::cni::error::CniError;
use crate::cni::result::AddResult;
use crate::cni::version::{CniVersion, version_reply};
use crate::ipamd_client::{IpamdClient, IpamdError, REASON_POD_DELETED, REASON_SETUP_FAILED, rpc};
use crate::netlink::{Netlink, NetlinkError, format_mac, parse_mac};
use crate::netns::{Netns, NetnsError};
use crate::pod_network::{self, HostVethRef, PodNetworkError, PodSpec};
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
    let version = stdin
        .as_ref()
        .ok()
        .and_then(|b| peek_version(b))
        .and_then(|v| CniVersion::parse(&v))
        .unwrap_or(CniVersion::LATEST);
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
        (Command::Add, Some(a)) => add(conf, a).await.map(Some),
        (Command::Del, Some(a)) => del(conf, a).await.map(|()| None),
        (Command::Check, Some(a)) => check(conf, a).await.map(|()| None),
        (Command::Gc, _) => gc(conf).await.map(|()| None),
        (Command::Status, _) => status(conf).await.map(|()| None),
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
    ip: Ipv4Addr,
    route_table: u32,
}

fn allocation_from(meta: &[rpc::IpAllocationMetadata], rpc: &str) -> Result<Allocation, CniError> {
    let m = meta
        .iter()
        .find(|m| !m.i_pv4_addr.is_empty())
        .ok_or_else(|| CniError::Ipamd {
            msg: format!("ipamd {rpc} returned no IPv4 address"),
        })?;
    let ip: Ipv4Addr = m.i_pv4_addr.parse().map_err(|_| CniError::Ipamd {
        msg: format!(
            "ipamd {rpc} returned an invalid IPv4 address {:?}",
            m.i_pv4_addr
        ),
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

async fn add(conf: &NetConf, a: &Attachment) -> Result<Value, CniError> {
    let network = conf.network_name()?;
    let netns_path = a.netns.as_deref().ok_or(CniError::InvalidEnv {
        var: CNI_NETNS,
        reason: "not set (required for ADD)".into(),
    })?;
    let host_ns = current_netns()?;
    let pod_ns = open_pod_netns(netns_path, &host_ns)?;
    let (pod_namespace, pod_name) = pod_identity(a);
    let host_veth = host_veth_name(&conf.veth_prefix, &pod_namespace, &pod_name);
    timing::mark("netns_open");

    let host = Netlink::current().map_err(netlink_error)?;
    let pod = Netlink::in_netns(&pod_ns).map_err(netlink_error)?;
    timing::mark("netlink_open");
    // Fail before taking an address when the interface is already there.
    if pod
        .link_by_name(&a.ifname)
        .await
        .map_err(netlink_error)?
        .is_some()
    {
        return Err(CniError::InterfaceExists {
            ifname: a.ifname.clone(),
            netns: netns_path.to_string(),
        });
    }

    timing::mark("ifname_check");
    debug!("validated; asking ipamd for an address");
    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket)
        .await
        .map_err(ipamd_error)?;
    timing::mark("ipamd_connect");
    debug!("connected to ipamd");
    let reply = ipamd
        .add_network(rpc::AddNetworkRequest {
            client_version: env!("CARGO_PKG_VERSION").to_string(),
            k8s_pod_name: pod_name.clone(),
            k8s_pod_namespace: pod_namespace.clone(),
            k8s_pod_infra_container_id: a.args.infra_container_id.clone().unwrap_or_default(),
            container_id: a.container_id.clone(),
            if_name: a.ifname.clone(),
            network_name: network.to_string(),
            netns: netns_path.to_string(),
            requires_multi_nic_attachment: false,
        })
        .await
        .map_err(ipamd_error)?;
    timing::mark("add_network_rpc");
    debug!(?reply, "AddNetwork reply");

    let alloc = match allocation_from(&reply.ip_allocation_metadata, "AddNetwork") {
        Ok(alloc) if reply.pod_vlan_id == 0 => alloc,
        Ok(_) => {
            let err = CniError::Ipamd {
                msg: format!(
                    "ipamd assigned a branch ENI (VLAN {}); security groups for pods are not supported by this plugin",
                    reply.pod_vlan_id
                ),
            };
            return Err(release_after_failure(
                &mut ipamd,
                network,
                a,
                &pod_namespace,
                &pod_name,
                err,
            )
            .await);
        }
        Err(e) => {
            return Err(release_after_failure(
                &mut ipamd,
                network,
                a,
                &pod_namespace,
                &pod_name,
                e,
            )
            .await);
        }
    };
    info!(ip = %alloc.ip, table = alloc.route_table, eni = %reply.eniid, veth = %host_veth, "address assigned");

    let spec = PodSpec {
        ip: alloc.ip,
        route_table: alloc.route_table,
        host_veth: &host_veth,
        ifname: &a.ifname,
        mtu: conf.mtu,
    };
    match pod_network::setup(&host, &host_ns, &pod, &spec).await {
        Ok(outcome) => {
            let result = AddResult {
                host_veth: host_veth.clone(),
                host_mac: format_mac(&outcome.host_mac),
                ifname: a.ifname.clone(),
                container_mac: format_mac(&outcome.container_mac),
                netns: netns_path.to_string(),
                mtu: conf.mtu,
                ip: alloc.ip,
                gateway: POD_GATEWAY,
            };
            let rendered = result.render(conf.cni_version, conf.prev_result.as_ref());
            timing::mark("result_render");
            Ok(rendered)
        }
        Err(e) => {
            let err = match e {
                PodNetworkError::InterfaceExists { ifname } => CniError::InterfaceExists {
                    ifname,
                    netns: netns_path.to_string(),
                },
                other => CniError::Setup {
                    msg: format!("setting up {} for {}: {other}", host_veth, alloc.ip),
                },
            };
            Err(release_after_failure(&mut ipamd, network, a, &pod_namespace, &pod_name, err).await)
        }
    }
}

/// Gives the address back after a failed ADD; a failed release is added to the error text.
async fn release_after_failure(
    ipamd: &mut IpamdClient,
    network: &str,
    a: &Attachment,
    pod_namespace: &str,
    pod_name: &str,
    err: CniError,
) -> CniError {
    warn!(error = %err, "ADD failed; returning the address to ipamd");
    match ipamd
        .del_network(del_request(
            network,
            a,
            pod_namespace,
            pod_name,
            REASON_SETUP_FAILED,
        ))
        .await
    {
        Ok(_) => err,
        Err(rel) => {
            warn!(error = %rel, "releasing the address after a failed ADD failed");
            match err {
                CniError::Setup { msg } => CniError::Setup {
                    msg: format!("{msg} (releasing the address failed too: {rel})"),
                },
                other => other,
            }
        }
    }
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

async fn del(conf: &NetConf, a: &Attachment) -> Result<(), CniError> {
    let network = conf.network_name()?;
    let (pod_namespace, pod_name) = pod_identity(a);
    let mut veths = vec![HostVethRef {
        name: host_veth_name(&conf.veth_prefix, &pod_namespace, &pod_name),
        mac: None,
    }];
    let mut ips: Vec<Ipv4Addr> = Vec::new();
    let mut container_mac = None;
    if let Some(prev) = &conf.prev_result {
        ips = prev.pod_ipv4s(&a.ifname);
        container_mac = prev
            .container_interface(&a.ifname)
            .and_then(|i| i.mac.as_deref())
            .and_then(parse_mac);
        for i in prev.host_interfaces() {
            if !i.name.starts_with(&conf.veth_prefix) {
                continue;
            }
            let mac = i.mac.as_deref().and_then(parse_mac);
            match veths.iter_mut().find(|v| v.name == i.name) {
                Some(v) => v.mac = v.mac.or(mac),
                None => veths.push(HostVethRef {
                    name: i.name.clone(),
                    mac,
                }),
            }
        }
    }

    let host_ns = current_netns()?;
    let pod_ns = match a.netns.as_deref() {
        None => None,
        Some(path) => match Netns::open(path) {
            Ok(ns) if ns.same_as(&host_ns).unwrap_or(true) => {
                warn!(
                    netns = path,
                    "CNI_NETNS is the plugin's own namespace; pod side skipped"
                );
                None
            }
            Ok(ns) => Some(ns),
            Err(e) => {
                info!(netns = path, error = %e, "pod namespace unusable; only the host side is cleaned");
                None
            }
        },
    };

    timing::mark("netns_open");
    let mut ipamd = match IpamdClient::connect(&conf.ipamd_socket).await {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "ipamd unreachable; cleaning up from prevResult only");
            None
        }
    };
    timing::mark("ipamd_connect");
    if ips.is_empty()
        && let Some(client) = ipamd.as_mut()
    {
        match client.check_network(check_request(network, a)).await {
            Ok(reply) => {
                ips = reply
                    .ip_allocation_metadata
                    .iter()
                    .filter_map(|m| m.i_pv4_addr.parse().ok())
                    .collect();
            }
            Err(e) if e.is_not_found() => debug!("ipamd has no assignment for this attachment"),
            Err(e) => warn!(error = %e, "CheckNetwork failed; tearing down by name only"),
        }
        timing::mark("check_network_rpc");
    }

    let mut errors: Vec<String> = Vec::new();
    let mut pod_nl: Option<Netlink> = None;
    // Neither a cached result (runtimes send none on DEL before 0.4.0) nor ipamd named the
    // address: the pod's own interface does, and its gateway neighbour gives the host veth's
    // MAC, which keeps the ownership check prevResult's MAC gives (docs/contracts.md, DEL).
    // Without the namespace nothing of this sandbox can be told apart: its veth pair and host
    // route went with the namespace, and a veth of the pod's name is a later sandbox's.
    if ips.is_empty()
        && let Some(ns) = &pod_ns
    {
        if !conf.cni_version.del_has_prev_result() {
            debug!(version = %conf.cni_version, "no prevResult on DEL in this version");
        }
        match Netlink::in_netns(ns) {
            Ok(pod) => {
                match pod_network::read_pod_side(&pod, &a.ifname).await {
                    Ok(Some(side)) => {
                        info!(ips = ?side.ips, "addresses taken from the pod's interface");
                        ips = side.ips;
                        container_mac = side.mac;
                        if let (Some(mac), Some(v)) = (side.host_veth_mac, veths.first_mut()) {
                            v.mac = Some(mac);
                        }
                    }
                    Ok(None) => debug!("the pod has no such interface; nothing of it is left"),
                    Err(e) => {
                        errors.push(format!("reading {} in the pod namespace: {e}", a.ifname))
                    }
                }
                pod_nl = Some(pod);
            }
            Err(e) => info!(error = %e, "pod namespace not enterable; pod side skipped"),
        }
        timing::mark("pod_side_read");
    }
    info!(?ips, ?veths, "tearing down");

    let host = Netlink::current().map_err(netlink_error)?;
    timing::mark("netlink_open");
    // The host's routing state of the pod first, then its addresses in the pod; the veth pair
    // stays for the runtime's removal of the namespace (docs/contracts.md, DEL).
    errors.extend(pod_network::teardown_host(&host, &ips, &veths).await);
    if let Some(ns) = &pod_ns
        && !ips.is_empty()
    {
        let pod = match pod_nl.take() {
            Some(p) => Ok(p),
            None => Netlink::in_netns(ns),
        };
        match pod {
            Ok(pod) => {
                errors.extend(pod_network::teardown_pod(&pod, &a.ifname, &ips, container_mac).await)
            }
            Err(e) => info!(error = %e, "pod namespace not enterable; pod side skipped"),
        }
        timing::mark("pod_addr_del");
    }

    // Release only once the host no longer routes the address and the pod no longer holds it:
    // a pod that gets it next (IP_COOLDOWN_PERIOD=0) must never have its fresh rules removed
    // by this DEL, nor share the address with this sandbox.
    if errors.is_empty() {
        if let Some(client) = ipamd.as_mut() {
            match client
                .del_network(del_request(
                    network,
                    a,
                    &pod_namespace,
                    &pod_name,
                    REASON_POD_DELETED,
                ))
                .await
            {
                Ok(reply) => {
                    timing::mark("del_network_rpc");
                    let released: Vec<&str> = reply
                        .ip_allocation_metadata
                        .iter()
                        .map(|m| m.i_pv4_addr.as_str())
                        .collect();
                    info!(?released, "released");
                    for r in &released {
                        if let Ok(ip) = r.parse::<Ipv4Addr>()
                            && !ips.contains(&ip)
                        {
                            warn!(%ip, "ipamd released an address the cached result did not name");
                        }
                    }
                }
                Err(e) if e.is_unreachable() => {
                    warn!(error = %e, "ipamd unreachable; it reclaims the address when it next reconciles");
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
    } else {
        errors
            .push("the address was not released to ipamd because the pod's cleanup failed".into());
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::Teardown { errors })
    }
}

async fn check(conf: &NetConf, a: &Attachment) -> Result<(), CniError> {
    let network = conf.network_name()?;
    let prev = conf.prev_result.as_ref().ok_or(CniError::InvalidConfig {
        key: "prevResult",
        reason: "CHECK needs the cached ADD result".into(),
    })?;
    let ip = *prev
        .pod_ipv4s(&a.ifname)
        .first()
        .ok_or_else(|| CniError::InvalidConfig {
            key: "prevResult",
            reason: format!("has no IPv4 address for interface {}", a.ifname),
        })?;
    let netns_path = a.netns.as_deref().ok_or(CniError::InvalidEnv {
        var: CNI_NETNS,
        reason: "not set (required for CHECK)".into(),
    })?;
    let host_ns = current_netns()?;
    let pod_ns = open_pod_netns(netns_path, &host_ns)?;

    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket)
        .await
        .map_err(ipamd_error)?;
    let reply = match ipamd.check_network(check_request(network, a)).await {
        Ok(r) => r,
        Err(e) if e.is_not_found() => {
            return Err(CniError::CheckIpam {
                msg: format!(
                    "ipamd has no assignment for ({network}, {}, {}); the cached result has {ip}",
                    a.container_id, a.ifname
                ),
            });
        }
        Err(e) => return Err(ipamd_error(e)),
    };
    let alloc = allocation_from(&reply.ip_allocation_metadata, "CheckNetwork")?;
    if alloc.ip != ip {
        return Err(CniError::CheckIpam {
            msg: format!("ipamd assigned {} but the cached result has {ip}", alloc.ip),
        });
    }

    let (pod_namespace, pod_name) = pod_identity(a);
    let host_veth = host_veth_name(&conf.veth_prefix, &pod_namespace, &pod_name);
    let host = Netlink::current().map_err(netlink_error)?;
    let pod = Netlink::in_netns(&pod_ns).map_err(netlink_error)?;
    let spec = PodSpec {
        ip,
        route_table: alloc.route_table,
        host_veth: &host_veth,
        ifname: &a.ifname,
        mtu: conf.mtu,
    };
    let differences = pod_network::check(&host, &pod, &spec)
        .await
        .map_err(netlink_error)?;
    if differences.is_empty() {
        Ok(())
    } else {
        Err(CniError::CheckDataPlane { differences })
    }
}

async fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |msg: String| CniError::Unavailable { msg };
    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let s = ipamd
        .pool_status()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if !s.ready {
        return Err(unavailable(format!(
            "ipamd is not ready{}",
            if s.message.is_empty() {
                String::new()
            } else {
                format!(": {}", s.message)
            }
        )));
    }
    if s.assignable_i_ps == 0 {
        return Err(unavailable(format!(
            "no assignable IP address ({} total, {} assigned, {} cooling down){}",
            s.total_i_ps,
            s.assigned_i_ps,
            s.cooldown_i_ps,
            if s.message.is_empty() {
                String::new()
            } else {
                format!(": {}", s.message)
            }
        )));
    }
    debug!(
        assignable = s.assignable_i_ps,
        total = s.total_i_ps,
        "ready"
    );
    Ok(())
}

async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let network = conf.network_name()?;
    let valid: &[GcAttachment] =
        conf.valid_attachments
            .as_deref()
            .ok_or(CniError::InvalidConfig {
                key: VALID_ATTACHMENTS_KEY,
                reason: "GC needs the list of valid attachments".into(),
            })?;
    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket)
        .await
        .map_err(ipamd_error)?;
    let reply = ipamd
        .garbage_collect(rpc::GarbageCollectRequest {
            client_version: env!("CARGO_PKG_VERSION").to_string(),
            network_name: network.to_string(),
            valid_attachments: valid
                .iter()
                .map(|v| rpc::Attachment {
                    container_id: v.container_id.clone(),
                    if_name: v.ifname.clone(),
                })
                .collect(),
        })
        .await
        .map_err(ipamd_error)?;
    let mut errors = Vec::new();
    let mut ips = Vec::new();
    for m in &reply.released {
        match m.i_pv4_addr.parse::<Ipv4Addr>() {
            Ok(ip) => ips.push(ip),
            Err(_) if m.i_pv4_addr.is_empty() => {}
            Err(_) => errors.push(format!(
                "ipamd released an invalid address {:?}",
                m.i_pv4_addr
            )),
        }
    }
    info!(released = ?ips, kept = valid.len(), "garbage collected");
    let host = Netlink::current().map_err(netlink_error)?;
    errors.extend(pod_network::teardown_released(&host, &ips).await);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::Teardown { errors })
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
