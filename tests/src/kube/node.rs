//! A Kubernetes node of the VPC simulator: a [`VpcNode`] (the instance) with its own mount
//! namespace holding an EKS node's host paths ([`NodeRoot`]), its containerd, a kubelet
//! registered with the control plane and kube-proxy.
//!
//! Two ways to get ipamd and the plugin onto it:
//! - [`KubeNode::start`]: the harness runs ipamd (as in the other end-to-end tests) and
//!   containerd calls `aws-cni` through the recorder ([`CniLayout::Recorded`]);
//! - [`KubeNode::join`]: as on EKS, nothing of the CNI is there until the aws-node DaemonSet
//!   (deployed from `conf/` by [`super::aws_node`]) runs on it: its init container installs the
//!   plugins into `/opt/cni/bin`, its ipamd writes `/etc/cni/net.d/10-aws.conflist`
//!   ([`CniLayout::Node`]). The project's image is imported into the node's containerd first
//!   (there is no registry).
//!
//! The node's host paths, per node ([`NodeRoot`] binds): `/opt/cni/bin` (a directory of the
//! node), `/etc/cni/net.d` (the node's `net.d`), `/var/run/aws-node` and
//! `/var/log/aws-routed-eni` (both the node's state directory, where the harness reads socket,
//! checkpoint and logs), `/run/xtables.lock`, and what containerd and kubelet write outside their
//! own directories: `/run/netns` (pod network namespaces), `/var/lib/cni` (go-cni's cache),
//! `/run/containerd` (shim sockets), `/var/log/containers` (kubelet's log links); plus the
//! kernel settings kubelet reads ([`kernel_default_binds`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    ControlPlane, KubeError, KubeProxy, Kubelet, NODE_IMAGE_REPO, io_err, kernel_default_binds,
    node_image,
};
use crate::cri::{CniLayout, Containerd, NODE_CNI_BIN_DIR, NODE_CNI_CONF_DIR};
use crate::node::{Bind, NodeRoot};
use crate::vpc::{NodeSpec, VpcFabric, VpcNode};
use test_support::cleanup;

/// How long a node may take to register, or to become Ready.
const NODE_TIMEOUT: Duration = Duration::from_secs(120);

/// A node running kubelet. Dropped in order: kube-proxy, kubelet, containerd (its pods), the
/// mount namespace, the instance, then the directory of the node's host paths.
#[derive(Debug)]
pub struct KubeNode {
    /// kube-proxy (iptables mode).
    pub proxy: KubeProxy,
    /// The kubelet.
    pub kubelet: Kubelet,
    /// The node's containerd.
    pub containerd: Containerd,
    /// The node's mount namespace.
    pub root: NodeRoot,
    /// The instance (and its ipamd when the harness runs it).
    pub node: VpcNode,
    dir: tempfile::TempDir,
}

impl KubeNode {
    /// Creates the instance of `spec` (ipamd started by the harness), its containerd and kubelet
    /// (node name: `spec.name`, at most `max_pods` pods as the EKS AMI sets it), and waits
    /// until the Node is Ready.
    pub fn start(
        vpc: &VpcFabric,
        cp: &ControlPlane,
        spec: NodeSpec,
        max_pods: u32,
    ) -> Result<Self, KubeError> {
        let mut kn = Self::boot(vpc, cp, spec, max_pods, CniLayout::Recorded)?;
        kn.kubelet.wait_ready(cp, vpc.internet(), NODE_TIMEOUT)?;
        Ok(kn)
    }

    /// Creates the instance of `spec` without ipamd, imports the project's image into its
    /// containerd, starts kubelet and kube-proxy and waits until the Node is registered (it is
    /// not Ready before the aws-node DaemonSet has run on it).
    pub fn join(
        vpc: &VpcFabric,
        cp: &ControlPlane,
        spec: NodeSpec,
        max_pods: u32,
    ) -> Result<Self, KubeError> {
        let mut kn = Self::boot(vpc, cp, spec.without_ipamd(), max_pods, CniLayout::Node)?;
        kn.kubelet
            .wait_registered(cp, vpc.internet(), NODE_TIMEOUT)?;
        Ok(kn)
    }

    /// The Node's Ready condition now, as `<status> <message>`.
    pub fn ready_condition(
        &self,
        cp: &ControlPlane,
        ns: &test_support::netns::Netns,
    ) -> Result<String, KubeError> {
        self.kubelet.ready_condition(cp, ns)
    }

    fn boot(
        vpc: &VpcFabric,
        cp: &ControlPlane,
        spec: NodeSpec,
        max_pods: u32,
        layout: CniLayout,
    ) -> Result<Self, KubeError> {
        let name = spec.name.clone();
        let fail = |what: &str, e: &dyn std::fmt::Display| KubeError::NotUp {
            what: format!("node {name}: {what}"),
            logs: e.to_string(),
        };
        let image = match layout {
            CniLayout::Node => Some(node_image()?),
            CniLayout::Recorded => None,
        };
        let node = vpc
            .add_node(spec)
            .map_err(|e| fail("the instance or its ipamd did not start", &e))?;
        let dir = tempfile::Builder::new()
            .prefix("vcni-kubenode-")
            .tempdir()
            .map_err(io_err("cannot create the node's directory"))?;
        cleanup::register_dir(dir.path());
        let binds = host_path_binds(dir.path(), &node)?;
        let root = NodeRoot::create(node.ns(), &binds)
            .map_err(|e| fail("its mount namespace was not set up", &e))?;
        let containerd = Containerd::start_in(&node, &root, layout)
            .map_err(|e| fail("containerd did not start", &e))?;
        if let Some(image) = image {
            containerd
                .import_image(&image, Some(NODE_IMAGE_REPO))
                .map_err(|e| fail("the project's image could not be imported", &e))?;
        }
        let kubelet = Kubelet::start(cp, &root, node.primary_ip(), &name, &containerd, max_pods)?;
        let proxy = KubeProxy::start(
            cp,
            &root,
            node.primary_ip(),
            &name,
            &vpc.options().vpc_cidr.to_string(),
        )?;
        Ok(Self {
            proxy,
            kubelet,
            containerd,
            root,
            node,
            dir,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.kubelet.name()
    }

    /// Where the node's `/opt/cni/bin` is on the machine.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.path().join("cni-bin")
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        cleanup::unregister_dir(self.dir.path());
    }
}

/// The binds of the node's root: directories of `dir` and of the node's state directory over an
/// EKS node's host paths (see the module docs).
fn host_path_binds(dir: &Path, node: &VpcNode) -> Result<Vec<Bind>, KubeError> {
    let mut binds = Vec::new();
    for (sub, target) in [
        ("cni-bin", NODE_CNI_BIN_DIR),
        ("netns", "/run/netns"),
        ("lib-cni", "/var/lib/cni"),
        ("run-containerd", "/run/containerd"),
        ("log-containers", "/var/log/containers"),
    ] {
        let source = dir.join(sub);
        fs::create_dir_all(&source).map_err(io_err(format!("cannot create {sub}")))?;
        binds.push(Bind::new(source, target));
    }
    let lock = dir.join("xtables.lock");
    fs::write(&lock, "").map_err(io_err("cannot create xtables.lock"))?;
    binds.push(Bind::new(lock, "/run/xtables.lock"));
    binds.push(Bind::new(node.conflist_dir(), NODE_CNI_CONF_DIR));
    binds.push(Bind::new(node.dir(), "/var/run/aws-node"));
    binds.push(Bind::new(node.dir(), "/var/log/aws-routed-eni"));
    let sysctl = dir.join("sysctl");
    fs::create_dir_all(&sysctl).map_err(io_err("cannot create sysctl"))?;
    binds.extend(kernel_default_binds(&sysctl)?);
    Ok(binds)
}
