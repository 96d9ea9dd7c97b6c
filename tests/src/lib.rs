//! Test harness of the Rust AWS VPC CNI: an IMDS emulator, simulated EC2 nodes built from
//! network namespaces (alone, or as instances of a moto-backed simulated VPC), and drivers for
//! the real clients of the plugin (direct exec as a runtime does, libcni through a Go front
//! end, podman, containerd's CRI driven by crictl). Used by the end-to-end tests in `tests/`
//! and by the `vpcsim` demo. Everything kernel-related happens in namespaces the harness (or
//! the containerd it runs) creates and deletes; the machine's root namespace is never changed.

#![warn(unreachable_pub)]

pub mod cni;
mod cniclient;
pub mod cri;
pub mod faults;
mod faults_proxy;
pub mod http;
pub mod kube;
pub mod node;
mod podman;
pub mod probe;
pub mod vpc;

pub use cni::{CniOutcome, CniRequest, Pod, host_veth_name};
pub use cniclient::CniClient;
pub use node::{NodeOptions, SimNode, SimNodeError, standard_node};
pub use podman::Podman;
pub use vpc::{FabricOptions, NodeSpec, VpcFabric, VpcNode};
