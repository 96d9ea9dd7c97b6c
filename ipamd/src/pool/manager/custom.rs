//! Custom networking (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`), as the reference does it:
//! every ENI ipamd creates goes into the subnet of the node's ENIConfig with its security
//! groups (the primary ENI's when it lists none), read again before each ENI; the primary
//! ENI's addresses are not used for pods; subnet discovery does not choose the subnet.
//!
//! An ENIConfig that is missing or unusable (no such object, a bad subnet or group id, a subnet
//! outside the node's VPC and zone) holds the pool back without stopping ipamd: the reason goes
//! into the pool's situation (what failed ADDs and their pods' Events say), into ipamd's log,
//! and as a Warning Event `ENIConfigNotUsable` onto the Node; the next cycle tries again, so
//! creating or fixing the ENIConfig is enough.

use std::time::Duration;

use super::{CreateFailed, PoolManager};
use crate::cloud::ec2::Ec2Api;
use crate::cloud::imds::Imds;
use crate::k8s::PodWarning;
use crate::k8s::eniconfig::{self, NodeEniConfig};
use crate::pool::host::EniHost;
use crate::pool::subnets::Candidate;

/// The Node Event's reason when the ENIConfig cannot be used.
pub const NOT_USABLE_REASON: &str = "ENIConfigNotUsable";

/// The same reason is recorded on the Node at most this often.
const NODE_EVENT_EVERY: Duration = Duration::from_secs(300);

/// Which Node annotation and label name the ENIConfig (`ENI_CONFIG_ANNOTATION_DEF`,
/// `ENI_CONFIG_LABEL_DEF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniConfigKeys {
    /// The annotation's key.
    pub annotation: String,
    /// The label's key.
    pub label: String,
}

/// Where the next ENI goes with custom networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The ENIConfig, and what named it.
    pub eni_config: NodeEniConfig,
    /// Its subnet, as the last `DescribeSubnets` of the node's zone showed it.
    pub subnet: Candidate,
    /// The security groups of the new ENI.
    pub security_groups: Vec<String>,
}

impl<E: Ec2Api, I: Imds, H: EniHost> PoolManager<E, I, H> {
    /// Custom networking is on.
    pub(super) fn custom_networking(&self) -> bool {
        self.cfg.custom_network.is_some()
    }

    /// The node's ENIConfig and where it puts the next ENI, or why it cannot be used (in words
    /// that name the ENIConfig and say what to do).
    pub(super) async fn eni_config_placement(&mut self) -> Result<Placement, String> {
        let Some(keys) = self.cfg.custom_network.clone() else {
            return Err("custom networking is off".into());
        };
        let Some(check) = self.node_check.clone() else {
            return Err("custom networking needs the Kubernetes API (the aws-node service account token) to read the node's ENIConfig".into());
        };
        let facts = check
            .api()
            .node(check.name())
            .await
            .map_err(|e| format!("cannot read the Node to find its ENIConfig: {e}"))?;
        let chosen = eniconfig::node_eniconfig_name(
            &facts.annotations,
            &facts.labels,
            &keys.annotation,
            &keys.label,
        )
        .map_err(|e| e.to_string())?;
        let name = chosen.name.clone();
        let spec = match check.api().eni_config(&name).await {
            Ok(Some(spec)) => spec,
            Ok(None) => {
                return Err(format!(
                    "ENIConfig \"{name}\" (named by {}) does not exist: create it (kind ENIConfig, apiVersion crd.k8s.amazonaws.com/v1alpha1, spec.subnet in zone {}, spec.securityGroups; the CRD is conf/eniconfig-crd.yaml)",
                    chosen.source, self.node.availability_zone
                ));
            }
            Err(e) => return Err(format!("cannot read ENIConfig \"{name}\": {e}")),
        };
        spec.validate(&name).map_err(|e| e.to_string())?;
        if spec.security_groups.is_empty() {
            tracing::warn!(eniconfig = %name, groups = ?self.node.security_groups, "the ENIConfig lists no security groups; new ENIs get the primary ENI's");
        }
        let security_groups = spec.groups_for_new_eni(&self.node.security_groups).to_vec();
        self.refresh_subnets(self.cfg.timings.subnet_ttl).await;
        let subnet = self
            .subnets
            .subnets()
            .into_iter()
            .map(|(s, _)| s)
            .find(|s| s.id == spec.subnet)
            .map(|s| Candidate {
                id: s.id.clone(),
                cidr: s.cidr,
                available_ips: Some(s.available_ips),
                is_node_subnet: s.id == self.node.subnet_id,
            })
            .ok_or_else(|| {
                format!(
                    "ENIConfig \"{name}\": spec.subnet {} is not a subnet of the node's VPC in its Availability Zone {} (as DescribeSubnets lists them): set it to a subnet of that zone (kubectl edit eniconfig {name})",
                    spec.subnet, self.node.availability_zone
                )
            })?;
        Ok(Placement {
            eni_config: chosen,
            subnet,
            security_groups,
        })
    }

    /// The one candidate subnet of a new ENI with custom networking, with the ENIConfig's
    /// groups set on `groups`; `Err` when the ENIConfig cannot be used (reported here).
    pub(super) async fn custom_candidates(
        &mut self,
        groups: &mut Vec<String>,
    ) -> Result<(Vec<Candidate>, bool), CreateFailed> {
        match self.eni_config_placement().await {
            Ok(p) => {
                self.eni_config_usable(&p);
                *groups = p.security_groups;
                let full = self
                    .subnets_in_backoff(self.clock.now())
                    .contains(&p.subnet.id);
                Ok(if full {
                    (Vec::new(), true)
                } else {
                    (vec![p.subnet], false)
                })
            }
            Err(why) => {
                self.eni_config_unusable(why).await;
                Err(CreateFailed::NoSubnet)
            }
        }
    }

    /// The ENIConfig is usable (logged once per ENI it places).
    fn eni_config_usable(&mut self, p: &Placement) {
        tracing::info!(
            eniconfig = %p.eni_config.name, source = %p.eni_config.source, subnet = %p.subnet.id,
            security_groups = ?p.security_groups, "custom networking: the new ENI goes into the ENIConfig's subnet"
        );
        self.situation.set_eni_config_note(None);
        self.eni_config_logged = None;
    }

    /// Reports an unusable ENIConfig: the situation, the log and the Node's Event (each
    /// distinct reason logged once, and recorded on the Node at most every 5 minutes).
    async fn eni_config_unusable(&mut self, why: String) {
        self.situation
            .set_eni_config_note(Some(format!("custom networking: {why}")));
        let now = self.clock.now();
        let new_reason = self.eni_config_logged.as_deref() != Some(why.as_str());
        if new_reason {
            tracing::warn!(reason = %why, "custom networking: no ENI can be created until the node's ENIConfig can be used");
        }
        let due = new_reason
            || self
                .eni_config_evented
                .is_none_or(|at| now.saturating_duration_since(at) >= NODE_EVENT_EVERY);
        self.eni_config_logged = Some(why.clone());
        let Some(check) = self.node_check.clone() else {
            return;
        };
        if !due {
            return;
        }
        self.eni_config_evented = Some(now);
        let warning = PodWarning {
            reason: NOT_USABLE_REASON,
            message: format!(
                "aws-node on {} creates no ENI for pods: {why}",
                check.name()
            ),
            node: check.name().to_owned(),
        };
        if let Err(e) = check.api().warn_node(&warning).await {
            tracing::warn!(error = %e, "cannot record the Node's Event");
        }
    }
}
