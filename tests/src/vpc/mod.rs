//! The VPC simulator on moto (design.md §5): a `vpc` namespace is the VPC router, an `internet`
//! namespace holds 203.0.113.0/24 behind it (with moto, the EC2 endpoint), and every simulated
//! node is a namespace whose `eth0`, `eth1`, … are veths into the router carrying the MACs of the
//! instance's ENIs in moto. A hypervisor thread follows moto: ENIs attached to a node's instance
//! appear in the node (and vanish on detach), and the router routes every private address moto
//! shows on an ENI to that ENI. The IMDS emulator answers on 169.254.169.254 from the same
//! state, for the instance that asks. ipamd runs on each node in EC2 mode (or IMDS-only mode)
//! exactly as on an EC2 instance: endpoints from the SDK's standard settings, credentials from
//! the instance profile.
//!
//! An IPv6 VPC ([`FabricOptions::with_ipv6`]) is dual stack as EKS IPv6 clusters have it: an
//! Amazon-provided /56, a /64 per subnet, an IPv6 address per node, and the router delivering
//! every IPv6 address and /80 prefix moto shows on an ENI to that ENI; `2001:db8::1` in the
//! internet namespace stands for the IPv6 world beyond (no NAT). [`ipv6`] has what the nodes
//! and pods of an IPv6 cluster need on top (the cluster's settings, egress-cni's leases).
//!
//! The VPC may have several subnets in several Availability Zones (tagged for subnet
//! discovery); a node's primary ENI sits in the subnet its [`NodeSpec`] names, the nodes'
//! subnet by default, and ipamd may put further ENIs into any subnet of the node's zone.
//!
//! Use it as a library ([`VpcFabric::start`], [`VpcFabric::add_node`]) or through
//! `vpcsim vpc-demo`. Nothing connects to the machine's root namespace: the harness's own EC2
//! client runs on threads that entered the internet namespace, and the IMDS emulator's socket
//! was opened inside the router namespace.

mod ec2;
mod fabric;
pub mod ipv6;
mod model;
mod node;
pub mod router;
mod watcher;

use std::time::Duration;

pub use ec2::{Ec2, Ec2Error, EniRequest};
pub use fabric::{FabricOptions, SubnetSpec, VpcFabric};
pub use model::{EniAttachment, EniState, InstanceInfo, SubnetInfo, SubnetState, VpcSnapshot};
pub use node::{IpamdMode, NodeSpec, VpcNode};
pub use router::{
    EC2_ENDPOINT_ADDR, EC2_ENDPOINT_PORT, IMDS_ADDR, INTERNET_HOST, INTERNET_HOST_V6,
    ROUTER_LINK_LOCAL,
};
/// EC2's response times and call counts of [`FabricOptions::ec2_latency`] and
/// [`VpcFabric::ec2_calls`].
pub use test_support::moto::{Ec2CallCount, Ec2Latency};
pub use watcher::Hypervisor;

use crate::node::SimNodeError;
use test_support::imds::ImdsServerError;
use test_support::moto::MotoError;
use test_support::netns::CommandError;
use test_support::prereqs::PrereqError;

/// Tags and description the reference (and ipamd) put on the ENIs it creates.
pub mod tags {
    /// Tag naming the instance an ENI was created for.
    pub const INSTANCE_ID: &str = "node.k8s.amazonaws.com/instance_id";
    /// Tag with the ENI's creation time (RFC 3339), used by leaked-ENI cleanup.
    pub const CREATED_AT: &str = "node.k8s.amazonaws.com/createdAt";
    /// Tag that makes ipamd leave an ENI alone.
    pub const NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";
    /// Description prefix of ENIs ipamd created (`aws-K8S-<instance id>`).
    pub const DESCRIPTION_PREFIX: &str = "aws-K8S-";
    /// Subnet tag that opts a subnet into subnet discovery (any value but `0`) or a subnet out
    /// of it, the node's own included (`0`).
    pub const ROLE_CNI: &str = "kubernetes.io/role/cni";
    /// Prefix of the subnet tags that reserve a subnet for named clusters
    /// (`cni.networking.k8s.aws/cluster/<CLUSTER_NAME>`).
    pub const CLUSTER_PREFIX: &str = "cni.networking.k8s.aws/cluster/";
}

/// Errors of the simulated VPC.
#[derive(Debug, thiserror::Error)]
pub enum VpcError {
    /// Namespace or command failure.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A tool or binary is missing.
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    /// An EC2 call of the harness failed.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// A node failed (ipamd, plugin).
    #[error(transparent)]
    Node(#[from] Box<SimNodeError>),
    /// The IMDS emulator did not start.
    #[error(transparent)]
    Imds(#[from] ImdsServerError),
    /// moto did not start or died.
    #[error(transparent)]
    Moto(#[from] MotoError),
    /// The hypervisor could not follow moto.
    #[error("hypervisor: {0}")]
    Hypervisor(String),
    /// A wait ran out.
    #[error("timed out after {waited:?} waiting for {what}; last seen: {state}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
        /// The last observed state.
        state: String,
    },
    /// A file could not be written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A request to the simulator is inconsistent.
    #[error("invalid request to the VPC simulator: {0}")]
    Invalid(String),
}

impl From<SimNodeError> for VpcError {
    fn from(err: SimNodeError) -> Self {
        Self::Node(Box::new(err))
    }
}

impl From<VpcError> for SimNodeError {
    fn from(err: VpcError) -> Self {
        match err {
            VpcError::Node(node) => *node,
            other => SimNodeError::Vpc(other.to_string()),
        }
    }
}
