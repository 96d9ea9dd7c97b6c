//! `ipamd`, the node daemon of the Rust AWS VPC CNI: it owns the node's pool of VPC addresses
//! (the secondary IPs of the instance's ENIs), brings up secondary ENIs, hands addresses to the
//! `aws-cni` plugin over gRPC on a Unix socket, checkpoints every assignment, and writes the CNI
//! conflist once it is ready.
//!
//! The modules, each owning one concern; a module imports only modules listed before it:
//!
//! - [`config`] the configuration from the environment; [`mac`] MAC addresses; [`fsutil`] atomic
//!   file writes; [`datastore`] the address book (ENIs, addresses, assignments, cooldown);
//! - [`checkpoint`] the checkpoint file; [`journal`] its group commit around the datastore;
//!   [`state`] what every part shares (phase, pool, node report, what replies say about SNAT);
//!   [`metrics`] the metric families and the `/metrics` route;
//! - [`cloud`] instance metadata and EC2; [`k8s`] the Kubernetes API (only when a setting needs
//!   it); [`limits`] the instance's limits; [`node_network`]
//!   everything ipamd programs in the node's namespace (netlink, SNAT and connmark, policy
//!   rules);
//! - [`socket`] Unix socket setup; [`server`] the plugin's gRPC service; [`http`] the HTTP server
//!   of `/metrics` and introspection; [`introspect`] the introspection routes and `ipamd status`;
//! - [`pool`] keeping the pool (following metadata; in EC2 mode the pool manager and the
//!   leaked-ENI cleanup); [`restore`] which assignments still belong to live pods (checkpoint
//!   restore, orphan sweep); [`conflist`] the CNI conflist;
//! - [`daemon`] ipamd's life (start-up, upkeep, shutdown); [`probe`], [`install`] and
//!   [`logging`] for the operator subcommands and the process.

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
pub mod k8s;
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
