//! Subnets in the pool manager: which subnets a new ENI may go into right now (the
//! [`SubnetPicker`](crate::pool::subnets::SubnetPicker)'s candidates less those EC2 recently said
//! are full), the per-subnet back-off after `InsufficientFreeAddressesInSubnet`, and the
//! subnet report: `awscni_subnet_available_ips{subnet_id}` for every candidate subnet, and the
//! early warning when one has fewer free addresses than one more node of this instance type
//! takes for its warm pool (`awscni_subnet_low_ips{subnet_id}`, a log line, `ipamd status`).
//!
//! With subnet discovery on, an ENI whose subnet the last read shows excluded (tagged
//! `kubernetes.io/role/cni=0`, or for another cluster) gives no address to a new pod: its free
//! addresses go back to EC2, pods that hold one keep it, and a secondary ENI is freed once no
//! pod uses it (the reference's `IsExcludedForPodIPs` ENIs).

use std::collections::BTreeSet;
use std::time::Instant;

use super::PoolManager;
use crate::cloud::ec2::{Ec2Api, Ec2Error};
use crate::cloud::imds::Imds;
use crate::pool::host::EniHost;
use crate::pool::policy;
use crate::pool::subnets::{Candidate, Source};
use crate::state::SubnetReport;

impl<E: Ec2Api, I: Imds, H: EniHost> PoolManager<E, I, H> {
    /// Subnets in their back-off after EC2 said they are out of addresses.
    pub(super) fn subnets_in_backoff(&self, now: Instant) -> BTreeSet<String> {
        let backoff = self.cfg.timings.subnet_full_backoff;
        self.full_subnets
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) < backoff)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// EC2 said `subnet` has no free addresses: it is not asked again for the back-off.
    pub(super) fn mark_subnet_full(&mut self, subnet: &str, error: &Ec2Error) {
        let now = self.clock.now();
        let backoff = self.cfg.timings.subnet_full_backoff;
        tracing::warn!(
            %subnet, error = %error, ?backoff,
            "subnet is out of addresses; ipamd does not ask EC2 for addresses in it during the back-off"
        );
        self.full_subnets.insert(subnet.to_owned(), now);
        self.subnets.took(subnet, u32::MAX);
        self.update_subnet_note();
    }

    /// EC2 said `subnet` has no free aligned /28: new ENIs with prefixes try the other
    /// candidates first during the back-off.
    pub(super) fn mark_fragmented(&mut self, subnet: &str) {
        let now = self.clock.now();
        if self
            .fragmented_subnets
            .insert(subnet.to_owned(), now)
            .is_none()
        {
            tracing::warn!(%subnet, backoff = ?self.cfg.timings.subnet_full_backoff, "subnet has no free aligned /28 (fragmented); new ENIs with prefixes go to other candidate subnets first");
        }
    }

    /// Orders the candidates for a new ENI with prefixes: subnets EC2 recently said are
    /// fragmented go last (the order is otherwise kept: most free addresses first).
    pub(super) fn fragmented_last(&self, candidates: &mut [Candidate]) {
        let now = self.clock.now();
        let backoff = self.cfg.timings.subnet_full_backoff;
        let fragmented = |id: &str| {
            self.fragmented_subnets
                .get(id)
                .is_some_and(|at| now.saturating_duration_since(*at) < backoff)
        };
        candidates.sort_by_key(|c| fragmented(&c.id));
    }

    /// EC2 gave `n` addresses (an ENI's own included) in `subnet`.
    pub(super) fn subnet_answered(&mut self, subnet: &str, n: u32) {
        self.full_subnets.remove(subnet);
        self.subnets.took(subnet, n);
        self.update_subnet_note();
    }

    /// The subnets to try for a new ENI, in order: re-reads them first when the last read is
    /// older than the TTL. Subnets in their back-off are left out; the second value says
    /// whether any were.
    pub(super) async fn candidates_for_new_eni(&mut self) -> (Vec<Candidate>, bool) {
        self.refresh_subnets(self.cfg.timings.subnet_ttl).await;
        let full = self.subnets_in_backoff(self.clock.now());
        let (all, source) = self.subnets.candidates();
        if let Source::Fallback(why) = &source {
            tracing::debug!(reason = %why, "subnets not known; a new ENI goes into the node's subnet");
        }
        let any_full = all.iter().any(|c| full.contains(&c.id));
        let usable = all.into_iter().filter(|c| !full.contains(&c.id)).collect();
        (usable, any_full)
    }

    /// Re-reads the subnets when the last read is older than `max_age`.
    pub(super) async fn refresh_subnets(&mut self, max_age: std::time::Duration) {
        let now = self.clock.now();
        if self.subnets.is_fresh(now, max_age) {
            return;
        }
        let Some(vpc) = self.vpc_id.clone() else {
            self.subnets
                .unreadable("the VPC is not known yet (EC2 has not described the node's ENIs)");
            return;
        };
        if let Err(e) = self.subnets.refresh(&*self.ec2, &vpc, now).await {
            self.count_error("describeSubnetsFailed");
            tracing::warn!(error = %e, "cannot read the VPC's subnets; new ENIs go into the node's subnet until EC2 answers");
        }
    }

    /// Tells the exhaustion message (through the pool's situation) which subnets are out of
    /// addresses, when that is what holds growth back.
    pub(super) fn update_subnet_note(&self) {
        let now = self.clock.now();
        let full = self.subnets_in_backoff(now);
        if full.is_empty() {
            self.situation.set_subnet_note(None);
            return;
        }
        let names: Vec<&str> = full.iter().map(String::as_str).collect();
        let (candidates, source) = self.subnets.candidates();
        let others = candidates.iter().any(|c| !full.contains(&c.id));
        let advice = match source {
            Source::NodeSubnetOnly => {
                "free addresses in it, or set ENABLE_SUBNET_DISCOVERY=true and tag another subnet of the node's Availability Zone kubernetes.io/role/cni=1"
            }
            _ if others => "ipamd uses the other candidate subnets meanwhile",
            _ => {
                "free addresses there, or tag another subnet of the node's Availability Zone kubernetes.io/role/cni=1"
            }
        };
        let (one, many) = ("subnet", "subnets");
        self.situation.set_subnet_note(Some(format!(
            "{} {} {} no free addresses; {advice}",
            if names.len() == 1 { one } else { many },
            names.join(", "),
            if names.len() == 1 { "has" } else { "have" },
        )));
    }

    /// Every [`super::Timings::subnet_report`]: re-reads the subnets and publishes each
    /// candidate's free addresses, with the low-address warning.
    pub(super) async fn report_subnets(&mut self) {
        let now = self.clock.now();
        let due = self
            .subnets_reported
            .is_none_or(|at| now.saturating_duration_since(at) >= self.cfg.timings.subnet_report);
        if !due {
            return;
        }
        self.subnets_reported = Some(now);
        self.refresh_subnets(self.cfg.timings.subnet_report).await;
        self.publish_subnets();
    }

    /// Applies the last read's exclusions to the pool's ENIs (subnet discovery only).
    pub(super) async fn handle_excluded(&mut self) {
        let eni_subnets: Vec<(String, String)> = self
            .eni_subnets
            .iter()
            .map(|(e, s)| (e.clone(), s.clone()))
            .collect();
        for (eni, subnet) in eni_subnets {
            let is_primary = eni == self.node.primary_eni;
            // Custom networking: the primary ENI's addresses never go to pods.
            let custom_primary = is_primary && self.custom_networking();
            let excluded = custom_primary || self.subnets.is_excluded(&subnet);
            let (was, taken) = self
                .state
                .with_datastore(|ds| {
                    let was = ds.eni(&eni).map(|v| v.excluded);
                    if was.is_none() {
                        return (None, Vec::new());
                    }
                    ds.set_excluded(&eni, excluded);
                    let taken = if excluded {
                        ds.take_free_ips_of(&eni)
                    } else {
                        Vec::new()
                    };
                    (was, taken)
                })
                .await;
            let Some(was) = was else { continue };
            if custom_primary && !was {
                tracing::info!(%eni, "custom networking: the primary ENI's addresses are not used for pods; pods that hold one keep it");
            } else if excluded && !was {
                tracing::warn!(%eni, %subnet, "the ENI's subnet is excluded from pod addresses (kubernetes.io/role/cni=0 or another cluster's tag): no new pod gets one of its addresses; pods that hold one keep it");
            } else if !excluded && was {
                tracing::info!(%eni, %subnet, "the ENI's subnet is no longer excluded; its addresses go to pods again");
            }
            if !taken.is_empty() {
                match self.ec2.unassign_private_ip_addresses(&eni, &taken).await {
                    Ok(()) => {
                        let at = self.clock.now();
                        for ip in &taken {
                            self.released.insert(*ip, at);
                        }
                        tracing::info!(%eni, ips = ?taken, "free addresses of an excluded subnet given back to EC2");
                    }
                    Err(e) => {
                        tracing::warn!(%eni, error = %e, "cannot give the excluded subnet's addresses back to EC2; retrying next cycle");
                        self.state
                            .with_datastore(|ds| {
                                for ip in &taken {
                                    let _ = ds.add_ip(&eni, *ip);
                                }
                            })
                            .await;
                    }
                }
            }
            if excluded && !is_primary && self.free_eni(&eni).await {
                tracing::info!(%eni, %subnet, "ENI of an excluded subnet freed (no pod uses it)");
            }
        }
    }

    /// Publishes what the last read says about the candidate subnets.
    pub(super) fn publish_subnets(&mut self) {
        let Some(cap) = self.situation.capacity() else {
            return;
        };
        let one_node = policy::addresses_of_new_node(self.cfg.targets, cap);
        let (candidates, _) = self.subnets.candidates();
        let mut reports = Vec::new();
        for c in candidates {
            let Some(available) = c.available_ips else {
                continue;
            };
            let low = available < one_node;
            if low && self.low_warned.insert(c.id.clone()) {
                tracing::warn!(
                    subnet = %c.id, cidr = %c.cidr, available, one_node,
                    instance_type = %self.node.instance_type,
                    "subnet is running out of addresses: it has fewer free addresses than one more node of this instance type takes for its warm pool; free addresses or tag another subnet of the zone kubernetes.io/role/cni=1 before scaling or upgrading nodes"
                );
            } else if !low && self.low_warned.remove(&c.id) {
                tracing::info!(subnet = %c.id, available, one_node, "subnet has enough free addresses again");
            }
            reports.push(SubnetReport {
                id: c.id,
                cidr: c.cidr,
                available_ips: available,
                node_subnet: c.is_node_subnet,
                low,
                one_node_takes: one_node,
            });
        }
        if let Some(m) = &self.metrics {
            m.observe_subnets(&reports);
        }
        self.state
            .update_node_report(|report| report.subnets = reports);
    }
}
