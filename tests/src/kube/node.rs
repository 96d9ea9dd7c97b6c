//! A Kubernetes node of the VPC simulator: a [`VpcNode`] (the instance, ipamd) with its own
//! containerd, a kubelet registered with the control plane and kube-proxy.

use std::time::Duration;

use super::{ControlPlane, KubeError, KubeProxy, Kubelet};
use crate::cri::Containerd;
use crate::vpc::{NodeSpec, VpcFabric, VpcNode};

/// A node running kubelet. Dropped in order: kube-proxy, kubelet, containerd (its pods), then
/// the node.
#[derive(Debug)]
pub struct KubeNode {
    /// kube-proxy (iptables mode).
    pub proxy: KubeProxy,
    /// The kubelet.
    pub kubelet: Kubelet,
    /// The node's containerd.
    pub containerd: Containerd,
    /// The instance and its ipamd.
    pub node: VpcNode,
}

impl KubeNode {
    /// Creates the instance of `spec` (ipamd started), its containerd and kubelet (node name:
    /// `spec.name`, at most `max_pods` pods as the EKS AMI sets it), and waits until the Node
    /// is Ready.
    pub fn start(
        vpc: &VpcFabric,
        cp: &ControlPlane,
        spec: NodeSpec,
        max_pods: u32,
    ) -> Result<Self, KubeError> {
        let name = spec.name.clone();
        let fail = |what: &str, e: &dyn std::fmt::Display| KubeError::NotUp {
            what: format!("node {name}: {what}"),
            logs: e.to_string(),
        };
        let node = vpc
            .add_node(spec)
            .map_err(|e| fail("the instance or its ipamd did not start", &e))?;
        let containerd =
            Containerd::start(&node).map_err(|e| fail("containerd did not start", &e))?;
        let mut kubelet =
            Kubelet::start(cp, &node, node.primary_ip(), &name, &containerd, max_pods)?;
        kubelet.wait_ready(cp, vpc.internet(), Duration::from_secs(120))?;
        let proxy = KubeProxy::start(
            cp,
            &node,
            node.primary_ip(),
            &name,
            &vpc.options().vpc_cidr.to_string(),
        )?;
        Ok(Self {
            proxy,
            kubelet,
            containerd,
            node,
        })
    }
}
