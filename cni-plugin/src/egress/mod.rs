//! `egress-cni`: the chained plugin the reference installs as `/opt/cni/bin/egress-cni`
//! (`cmd/egress-cni-plugin`), here in its IPv4-egress mode for IPv6 pods (IPv6 clusters,
//! `ENABLE_V4_EGRESS`). It runs after `aws-cni` and gives the pod a second, node-local IPv4
//! interface whose traffic the node SNATs to its own IPv4 address:
//!
//! - an address from the IPAM plugin (host-local over 169.254.172.0/22, delegated as libcni
//!   does, [`ipam`]);
//! - a veth `v4if0` in the pod whose host end (`veth` + 8 random hex digits, the reference's
//!   `ip.SetupVeth` naming) holds the range's gateway as a link-scope /32, with the host route
//!   `<pod v4>/32 dev <host veth> scope link` and, in the pod, the gateway as a link route and
//!   the IPAM routes (0.0.0.0/0) and the range via it ([`add`]);
//! - the SNAT chain `CNI-E4-<hash>` ([`snat`]);
//! - the result: `prevResult` with the two interfaces appended ([`result`]).
//!
//! The IPv6-egress mode (an IPv6 `nodeIP`, `ENABLE_V6_EGRESS` in IPv4 clusters) is not built: ADD
//! and CHECK refuse it with code 2. `main` (src/bin/egress-cni.rs) reads the environment and
//! stdin and prints; [`run`] does the rest.

mod add;
mod check;
pub mod config;
mod del;
pub mod error;
pub mod ipam;
pub mod link;
pub mod result;
pub mod snat;

use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};

use self::config::EgressConf;
use self::error::EgressError;
use crate::cni::config::{peek_version, request_version};
use crate::cni::env::{Attachment, CNI_NETNS, CniEnv, Command};
use crate::cni::error::CniError;
use crate::cni::version::{CniVersion, version_reply};
use crate::netlink::NetlinkError;
use crate::netns::NetnsError;

/// The interface egress-cni creates in the pod (the reference's `egressIPv4InterfaceName`).
pub const V4_IFNAME: &str = "v4if0";

/// What an invocation produced.
#[derive(Debug)]
pub struct Outcome {
    /// The version replies are written in (the request's when known).
    pub version: CniVersion,
    /// `Ok(Some(json))`: print it; `Ok(None)`: print nothing; `Err`: print the error JSON.
    pub result: Result<Option<Value>, EgressError>,
}

/// Runs one invocation. `get_env` reads the environment; `stdin` is the request as read.
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: Result<Vec<u8>, CniError>) -> Outcome {
    let version = request_version(&stdin);
    Outcome {
        version,
        result: run_inner(get_env, stdin),
    }
}

/// One attachment request: what every verb works from.
#[derive(Debug)]
struct Request<'a> {
    conf: &'a EgressConf,
    attachment: &'a Attachment,
    /// The request as received: the IPAM plugin gets it unchanged.
    stdin: &'a [u8],
    /// `CNI_PATH`.
    cni_path: Option<String>,
}

impl Request<'_> {
    /// The SNAT chain and comment of this attachment.
    fn snat_names(&self) -> Result<(String, String), CniError> {
        let network = self.conf.network_name()?;
        let id = &self.attachment.container_id;
        Ok((snat::chain_name(network, id), snat::comment(network, id)))
    }

    fn ipam(&self) -> Result<ipam::Ipam, EgressError> {
        ipam::Ipam::find(self.conf.ipam_type()?, self.cni_path.as_deref())
    }
}

fn run_inner(
    get_env: impl Fn(&str) -> Option<String>,
    stdin: Result<Vec<u8>, CniError>,
) -> Result<Option<Value>, EgressError> {
    let env = CniEnv::from_lookup(&get_env)?;
    let bytes = stdin?;
    if env.command == Command::Version {
        return Ok(Some(version_reply(peek_version(&bytes).as_deref())));
    }
    let conf = EgressConf::parse(&bytes)?;
    check_verb_version(env.command, conf.base.cni_version)?;
    crate::logging::init(&conf.base.log_target, conf.base.log_level);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::Io {
            what: "the async runtime",
            reason: e.to_string(),
        })?;
    let span = match &env.attachment {
        Some(a) => info_span!(
            "egress-cni",
            command = env.command.as_str(),
            container_id = %a.container_id,
            netns = a.netns.as_deref().unwrap_or(""),
        ),
        None => info_span!("egress-cni", command = env.command.as_str()),
    };
    span.in_scope(|| debug!(enabled = conf.enabled, node_ip = ?conf.node_ip, "request"));
    let cni_path = get_env(ipam::CNI_PATH);
    let result = runtime.block_on(
        async {
            match (env.command, &env.attachment) {
                (Command::Add | Command::Del | Command::Check, Some(attachment)) => {
                    let req = Request {
                        conf: &conf,
                        attachment,
                        stdin: &bytes,
                        cni_path,
                    };
                    match env.command {
                        Command::Add => add::add(&req).await.map(Some),
                        Command::Del => del::del(&req).await.map(|()| None),
                        _ => check::check(&req).await.map(|()| None),
                    }
                }
                // GC and STATUS (1.1.0): egress-cni keeps no state of its own that GC could
                // release without the attachment, and needs no daemon (the reference's `skel`
                // answers both with success when a plugin does not implement them).
                (Command::Gc | Command::Status, _) => Ok(None),
                (cmd, _) => Err(CniError::InvalidEnv {
                    var: crate::cni::env::CNI_CONTAINERID,
                    reason: format!("missing for {}", cmd.as_str()),
                }
                .into()),
            }
        }
        .instrument(span.clone()),
    );
    drop(runtime);
    let _enter = span.enter();
    match &result {
        Ok(_) => info!("done"),
        Err(e) => warn!(code = e.cni_code(), error = %e, "failed"),
    }
    result
}

/// ADD, DEL and VERSION in every served version, CHECK from 0.4.0, GC and STATUS from 1.1.0 (as
/// `aws-cni` decides).
fn check_verb_version(command: Command, version: CniVersion) -> Result<(), CniError> {
    let needed = match command {
        Command::Version | Command::Add | Command::Del => return Ok(()),
        Command::Check if version.has_check() => return Ok(()),
        Command::Gc | Command::Status if version.has_gc_and_status() => return Ok(()),
        Command::Check => "0.4.0 or newer",
        Command::Gc | Command::Status => "1.1.0",
    };
    Err(CniError::IncompatibleVersion {
        reason: format!(
            "{} is not defined for cniVersion {version}; it needs cniVersion {needed}",
            command.as_str()
        ),
    })
}

/// A namespace that cannot be used, with the spec's code where there is one.
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
        ref other if other.is_wrong_kind() => CniError::InvalidEnv {
            var: CNI_NETNS,
            reason: format!("{path} is not a network namespace ({other})"),
        },
        other => CniError::Netns {
            netns: path.to_string(),
            reason: other.to_string(),
        },
    }
}

/// A failed netlink step of ADD.
fn netlink_error(e: NetlinkError, path: &str) -> CniError {
    match e {
        NetlinkError::Netns(n) => netns_error(n, path),
        other => CniError::Setup {
            msg: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_needs_0_4_0_and_gc_1_1_0() {
        assert!(check_verb_version(Command::Check, CniVersion::V0_3_1).is_err());
        assert!(check_verb_version(Command::Check, CniVersion::V0_4_0).is_ok());
        assert!(check_verb_version(Command::Gc, CniVersion::V1_0_0).is_err());
        assert!(check_verb_version(Command::Status, CniVersion::V1_1_0).is_ok());
        assert!(check_verb_version(Command::Add, CniVersion::V0_3_0).is_ok());
    }

    #[test]
    fn version_needs_no_config() {
        let out = run(
            |k| (k == "CNI_COMMAND").then(|| "VERSION".to_string()),
            Ok(br#"{"cniVersion":"0.4.0"}"#.to_vec()),
        );
        let v = out.result.ok().flatten().unwrap_or_default();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert!(v["supportedVersions"].is_array());
    }
}
