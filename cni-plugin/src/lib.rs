//! `aws-cni`: the CNI plugin of the Rust AWS VPC CNI. It asks ipamd (over gRPC on a Unix socket)
//! for a VPC address and wires it into the pod: a veth pair, a /32 address (a /128 in an IPv6
//! cluster), a link-local gateway with a static neighbour, and the host routes and policy rules of
//! the reference plugin.
//!
//! `main.rs` only reads the environment and stdin and prints; [`plugin::run`] does the rest.

pub mod cni;
pub mod egress;
pub mod ipamd_client;
pub mod logging;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod pod_network;
pub mod sysctl;
pub mod timing;
