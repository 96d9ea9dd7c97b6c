//! `ipamd`, the node daemon of the Rust AWS VPC CNI: it owns the node's pool of VPC addresses
//! (the secondary IPs of the instance's ENIs), brings up secondary ENIs, hands addresses to the
//! `aws-cni` plugin over gRPC on a Unix socket, checkpoints every assignment, and writes the CNI
//! conflist once it is ready.

pub mod checkpoint;
pub mod cloud;
pub mod config;
pub mod conflist;
pub mod daemon;
pub mod datastore;
pub mod fsutil;
pub mod http;
pub mod install;
pub mod introspect;
pub mod journal;
pub mod limits;
pub mod logging;
pub mod mac;
pub mod metrics;
pub mod node_network;
pub mod pool;
pub mod probe;
pub mod restore;
pub mod server;
pub mod socket;
pub mod state;
#[cfg(test)]
pub mod testing;

/// The gRPC contract with the plugin (the contract crate's `proto/rpc.proto`), server and
/// client.
pub use vpc_cni_contract::rpc;
