//! kube-proxy (iptables mode) on a simulated node, as on an EKS node: Services' ClusterIPs and
//! NodePorts as NAT rules in the node's network namespace, the VPC's CIDR as the cluster CIDR.
//!
//! It runs in the node's network and mount namespaces (its [`NodeRoot`], so it shares
//! `/run/xtables.lock` with ipamd in the aws-node pod) as `system:kube-proxy` (bound to
//! `system:node-proxier` by the API server's default RBAC). It changes nothing outside the
//! namespace: the conntrack settings it would raise machine-wide (`nf_conntrack_max` and the
//! TCP timeouts, which are not per network namespace) are left as they are (`maxPerCore: 0`,
//! timeouts 0).

use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Child;

use super::{ControlPlane, KubeError, io_err, kube_bin, spawn_logged};
use crate::node::NodeRoot;
use test_support::cleanup;
use test_support::netns::tail;

/// A running kube-proxy. Killed on drop.
#[derive(Debug)]
pub struct KubeProxy {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl KubeProxy {
    /// Starts kube-proxy in the node's `root` (node name `name`, address `node_ip`) with `cluster_cidr`
    /// (the VPC's CIDR) against `cp`.
    pub fn start(
        cp: &ControlPlane,
        root: &NodeRoot,
        node_ip: Ipv4Addr,
        name: &str,
        cluster_cidr: &str,
    ) -> Result<Self, KubeError> {
        let bin = kube_bin("kube-proxy")?;
        let dir = tempfile::Builder::new()
            .prefix("vcni-kube-proxy-")
            .tempdir()
            .map_err(io_err("cannot create kube-proxy's directory"))?;
        cleanup::register_dir(dir.path());
        let cert = cp.client_cert(&format!("kube-proxy-{name}"), "system:kube-proxy", None)?;
        let kubeconfig = dir.path().join("kubeconfig");
        cp.write_kubeconfig(&kubeconfig, &cert)?;
        let config = dir.path().join("config.yaml");
        fs::write(
            &config,
            format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: iptables
hostnameOverride: {name}
bindAddress: {node_ip}
clusterCIDR: {cluster_cidr}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
nodePortAddresses: ["{node_ip}/32"]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
"#,
                kubeconfig = kubeconfig.display(),
            ),
        )
        .map_err(io_err("cannot write kube-proxy's config"))?;
        let mut cmd = root.command(&bin);
        cmd.arg(format!("--config={}", config.display()))
            .arg("--v=2");
        let child = spawn_logged(cmd, &dir.path().join("kube-proxy.log"), "kube-proxy")?;
        Ok(Self {
            child: Some(child),
            dir,
        })
    }

    /// kube-proxy's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("kube-proxy.log")
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
