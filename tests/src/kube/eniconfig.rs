//! Custom networking's side of the cluster (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`), set up
//! the way an operator does it: the ENIConfig definition of `conf/eniconfig-crd.yaml` applied
//! with kubectl, one ENIConfig per Availability Zone naming the pods' subnet and security
//! groups, the nodes labelled with their zone (our kubelets run without a cloud provider, so
//! nothing else sets `topology.kubernetes.io/zone`), and the pods' security group created in
//! the VPC simulator's moto.

use std::fs;

use super::{ControlPlane, KubeError, io_err};
use crate::vpc::{VpcError, VpcFabric};
use test_support::netns::Netns;
use test_support::prereqs;

/// The ENIConfig definition, relative to the workspace.
pub const CRD_PATH: &str = "conf/eniconfig-crd.yaml";
/// The definition's name (`<plural>.<group>`).
pub const CRD_NAME: &str = "eniconfigs.crd.k8s.amazonaws.com";
/// The node label naming each node's zone, and so its ENIConfig when `ENI_CONFIG_LABEL_DEF`
/// is set to it.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Applies [`CRD_PATH`] (`kubectl apply -f`) and waits until the API server serves ENIConfigs
/// (the definition is `Established`).
pub fn apply_crd(cp: &ControlPlane, ns: &Netns) -> Result<(), KubeError> {
    let crd = prereqs::workspace_dir().join(CRD_PATH);
    cp.kubectl_ok(ns, &["apply", "-f", &crd.display().to_string()])?;
    cp.kubectl_ok(
        ns,
        &[
            "wait",
            "--for=condition=Established",
            &format!("crd/{CRD_NAME}"),
            "--timeout=60s",
        ],
    )?;
    Ok(())
}

/// An ENIConfig `name` (cluster-scoped): secondary ENIs go into `subnet` with
/// `security_groups`.
pub fn manifest(name: &str, subnet: &str, security_groups: &[&str]) -> String {
    let groups: String = security_groups
        .iter()
        .map(|sg| format!("\n  - {sg}"))
        .collect();
    format!(
        r#"apiVersion: crd.k8s.amazonaws.com/v1alpha1
kind: ENIConfig
metadata:
  name: {name}
spec:
  subnet: {subnet}
  securityGroups:{groups}
"#
    )
}

/// Writes [`manifest`] into the control plane's directory and applies it; returns kubectl's
/// output.
pub fn create(
    cp: &ControlPlane,
    ns: &Netns,
    name: &str,
    subnet: &str,
    security_groups: &[&str],
) -> Result<String, KubeError> {
    let path = cp.dir().join(format!("eniconfig-{name}.yaml"));
    fs::write(&path, manifest(name, subnet, security_groups))
        .map_err(io_err(format!("cannot write {}", path.display())))?;
    cp.kubectl_ok(ns, &["apply", "-f", &path.display().to_string()])
}

/// Labels Node `node` with its Availability Zone `zone` ([`ZONE_LABEL`]), as the cloud
/// provider would.
pub fn label_zone(cp: &ControlPlane, ns: &Netns, node: &str, zone: &str) -> Result<(), KubeError> {
    cp.kubectl_ok(
        ns,
        &[
            "label",
            "--overwrite",
            "node",
            node,
            &format!("{ZONE_LABEL}={zone}"),
        ],
    )?;
    Ok(())
}

/// Creates security group `name` in the VPC (moto), for an ENIConfig's `securityGroups`;
/// returns its id.
pub fn create_security_group(vpc: &VpcFabric, name: &str) -> Result<String, VpcError> {
    Ok(vpc.ec2().create_security_group(vpc.vpc_id(), name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_names_the_subnet_and_every_group() {
        let m = manifest("us-west-2a", "subnet-1", &["sg-1", "sg-2"]);
        assert!(m.contains("kind: ENIConfig\n"), "{m}");
        assert!(m.contains("\n  name: us-west-2a\n"), "{m}");
        assert!(
            m.ends_with("  subnet: subnet-1\n  securityGroups:\n  - sg-1\n  - sg-2\n"),
            "{m}"
        );
    }
}
