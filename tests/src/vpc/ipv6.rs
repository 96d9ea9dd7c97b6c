//! Nodes and pods of an IPv6 cluster on the simulated VPC, shared by the IPv6 end-to-end tests
//! and `vpcsim vpc-demo --ipv6`: the settings aws-node runs with in an EKS IPv6 cluster
//! ([`cluster_spec`]), the node's own `/run/cni/v6pd` where egress-cni's host-local keeps its
//! leases ([`node_root`]: several simulated nodes share this machine, so each binds a
//! directory of its own there, in a mount namespace of the node), and what to read back: a
//! pod's egress IPv4 address on `v4if0` ([`egress_ipv4`]) and the leases a node still holds
//! ([`egress_leases`]).

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use test_support::netns::CommandError;

use super::NodeSpec;
use crate::cni::Pod;
use crate::node::{Bind, NETWORK_NAME, NodeHost, NodeRoot, SimNodeError, io_err};

/// Where egress-cni's host-local keeps its leases: the `dataDir` of ipamd's IPv6 conflist (the
/// reference's path) is under this mount point.
pub const EGRESS_RUN_DIR: &str = "/run/cni/v6pd";
/// The node-local range egress-cni gives pods their IPv4 address from.
pub const EGRESS_RANGE: &str = "169.254.172.0/22";
/// The pod interface egress-cni adds for IPv4 egress.
pub const EGRESS_IFNAME: &str = "v4if0";
/// The directory of the node's state directory bound over [`EGRESS_RUN_DIR`].
const EGRESS_RUN_SOURCE: &str = "run-cni-v6pd";
/// The subdirectory of [`EGRESS_RUN_DIR`] ipamd's conflist names as host-local's `dataDir`.
const EGRESS_IPAM_DIR: &str = "egress-v4-ipam";

/// `spec` with the settings of an EKS IPv6 cluster (`ENABLE_IPv6=true`, `ENABLE_IPv4=false`,
/// `ENABLE_PREFIX_DELEGATION=true`), its plugins installed from `image_plugins` (staged like
/// the image's `/app/cni/bin`) by `ipamd install-cni` before ipamd starts, as the aws-node
/// init container does.
pub fn cluster_spec(spec: NodeSpec, image_plugins: &Path) -> NodeSpec {
    spec.env("ENABLE_IPv6", "true")
        .env("ENABLE_IPv4", "false")
        .env("ENABLE_PREFIX_DELEGATION", "true")
        .with_install_cni(image_plugins)
}

/// The directory that is the node's [`EGRESS_RUN_DIR`].
pub fn egress_run_dir(node: &NodeHost) -> PathBuf {
    node.dir().join(EGRESS_RUN_SOURCE)
}

/// The node's mount namespace: its own [`EGRESS_RUN_DIR`], the machine's everything else
/// (following the machine's mounts, so pod namespaces created later show in it). Run libcni in
/// it (`CniClient::in_root`); drop it after the nodes' plugin calls are done.
pub fn node_root(node: &NodeHost) -> Result<NodeRoot, SimNodeError> {
    let run = egress_run_dir(node);
    std::fs::create_dir_all(&run).map_err(io_err(format!("cannot create {}", run.display())))?;
    NodeRoot::create_following(node.ns(), &[Bind::new(run, EGRESS_RUN_DIR)])
}

/// Leases host-local holds in the node's egress `dataDir` (its lock and last-reserved files
/// are not leases); none when the directory does not exist.
pub fn egress_leases(node: &NodeHost) -> Vec<String> {
    let dir = egress_run_dir(node)
        .join(EGRESS_IPAM_DIR)
        .join(NETWORK_NAME);
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default()
}

/// The first IPv4 address on the pod's [`EGRESS_IFNAME`], if any.
pub fn egress_ipv4(pod: &Pod) -> Result<Option<Ipv4Net>, CommandError> {
    Ok(pod
        .ns()?
        .addresses_of(EGRESS_IFNAME)?
        .first()
        .and_then(|a| a.parse().ok()))
}
