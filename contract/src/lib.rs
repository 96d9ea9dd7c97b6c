//! `vpc-cni-contract`: what the `aws-cni` plugin and `ipamd` must agree on, written once.
//!
//! - [`rpc`]: the gRPC service `rpc.CNIBackend` (`proto/rpc.proto`), messages, client and server.
//! - [`connect`]: the gRPC channel over ipamd's Unix socket, with its timeouts.
//! - [`dataplane`]: the names and numbers of a pod's data plane that one side writes and the
//!   other reads back: host veth names, policy-rule priorities, route tables, the pod gateway.
//! - [`netlink`]: the rtnetlink core both sides build on: errno outcomes ("already there",
//!   "already gone"), dumps read into plain structs, and the rule and route requests they share.
//!
//! It is linked into the plugin, a small static binary started once per pod event: nothing here
//! may pull in the AWS SDK, metrics or an HTTP server stack.

pub mod connect;
pub mod dataplane;
pub mod netlink;

/// The generated gRPC contract (`proto/rpc.proto`): messages, `cni_backend_client` and
/// `cni_backend_server`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod rpc {
    tonic::include_proto!("rpc");
}
