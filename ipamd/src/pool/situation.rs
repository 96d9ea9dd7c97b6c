//! What limits the pool right now, in words a user can act on. The datastore asks for this
//! note at the moment an assignment fails ([`CapacityNote`]), so the reason is never stale:
//! the node at its ENI × IP limit (with the numbers and the instance type), the subnet out of
//! addresses (EC2's `InsufficientFreeAddressesInSubnet`), EC2 failing or throttling (its last
//! error and when), the limits still unknown, or the pool still growing. Cooling addresses are
//! explained by the datastore's own message, which this note ends.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::cloud::ec2_client::{Ec2Failure, Ec2Health};
use crate::datastore::{CapacityNote, Stats};
use crate::limits::Limits;
use crate::pool::policy::{self, Capacity, Counts, Targets};

#[derive(Debug, Default)]
struct Inner {
    limits: Option<Limits>,
    limits_error: Option<String>,
    unmanaged_enis: u32,
    /// Which subnets are out of addresses, when that holds growth back (set by the manager).
    subnet_note: Option<String>,
    /// The node is cordoned and `AWS_MANAGE_ENIS_NON_SCHEDULABLE=false`: no growth.
    unschedulable: bool,
    /// Custom networking: why the node's ENIConfig cannot be used (no ENI can be created).
    eni_config_note: Option<String>,
}

/// The pool's situation, shared by the pool manager (which updates it) and the datastore
/// (which quotes it).
#[derive(Debug)]
pub struct PoolSituation {
    inner: RwLock<Inner>,
    targets: Targets,
    health: Arc<Ec2Health>,
}

fn ago(at: Instant) -> String {
    format!("{} s ago", at.elapsed().as_secs())
}

fn describe_failure(f: &Ec2Failure) -> String {
    format!("{} ({})", f.error, ago(f.at))
}

impl PoolSituation {
    /// A situation for a pool with these targets, quoting EC2's `health`.
    pub fn new(targets: Targets, health: Arc<Ec2Health>) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            targets,
            health,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The instance's limits are known.
    pub fn set_limits(&self, limits: Limits) {
        let mut w = self.write();
        w.limits = Some(limits);
        w.limits_error = None;
    }

    /// The limits could not be found (yet).
    pub fn set_limits_error(&self, why: String) {
        self.write().limits_error = Some(why);
    }

    /// Attached ENIs ipamd leaves alone.
    pub fn set_unmanaged_enis(&self, n: u32) {
        self.write().unmanaged_enis = n;
    }

    /// Which subnets are out of addresses (or that none may take ENIs), in words; `None` once
    /// that no longer holds growth back.
    pub fn set_subnet_note(&self, note: Option<String>) {
        self.write().subnet_note = note;
    }

    /// Whether a cordon holds the pool (set by the manager).
    pub fn set_unschedulable(&self, held: bool) {
        self.write().unschedulable = held;
    }

    /// Why the node's ENIConfig cannot be used, in words; `None` once it can.
    pub fn set_eni_config_note(&self, note: Option<String>) {
        self.write().eni_config_note = note;
    }

    /// Why the node's ENIConfig cannot be used.
    pub fn eni_config_note(&self) -> Option<String> {
        self.read().eni_config_note.clone()
    }

    /// Whether a cordon holds the pool.
    pub fn unschedulable(&self) -> bool {
        self.read().unschedulable
    }

    /// The limits, when known.
    pub fn limits(&self) -> Option<Limits> {
        self.read().limits.clone()
    }

    /// Attached ENIs ipamd leaves alone.
    pub fn unmanaged_enis(&self) -> u32 {
        self.read().unmanaged_enis
    }

    /// The policy's view of the limits, when known.
    pub fn capacity(&self) -> Option<Capacity> {
        let r = self.read();
        r.limits
            .as_ref()
            .map(|l| Capacity::new(l, r.unmanaged_enis))
    }

    fn limit_text(l: &Limits, unmanaged: u32) -> String {
        let per_eni = if l.prefix_delegation {
            format!("{} prefixes x 16 IPs", l.slots_per_eni)
        } else {
            format!("{} IPs", l.ips_per_eni)
        };
        let mut s = format!(
            "the node is at its limit of {} ENIs x {per_eni} = {} pod IPs ({}",
            l.pod_enis(),
            l.pod_ip_capacity(),
            l.instance_type
        );
        if l.primary_eni_unused {
            s.push_str("; custom networking: the primary ENI's addresses are not used for pods");
        }
        if l.max_enis < l.instance_max_enis {
            s.push_str(&format!(
                ", MAX_ENI={} of the instance's {} ENIs",
                l.max_enis, l.instance_max_enis
            ));
        }
        if unmanaged > 0 {
            s.push_str(&format!(
                "; {unmanaged} of them tagged node.k8s.amazonaws.com/no_manage=true and not used for pods"
            ));
        }
        s.push_str("); schedule fewer pods on this node or use a larger instance type");
        s
    }
}

impl CapacityNote for PoolSituation {
    fn note(&self, stats: &Stats) -> Option<String> {
        let r = self.read();
        let Some(limits) = r.limits.as_ref() else {
            let why = r
                .limits_error
                .clone()
                .unwrap_or_else(|| "they have not been read yet".to_owned());
            return Some(format!(
                "the instance's ENI and IP limits are not known ({why}), so ipamd adds no addresses yet"
            ));
        };
        let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let enis = u32_of(stats.enis);
        let total = u32_of(stats.total);
        let cap = Capacity::new(limits, r.unmanaged_enis);
        let pod_enis = if limits.primary_eni_unused {
            enis.saturating_sub(1)
        } else {
            enis
        };
        let full = total >= pod_enis.saturating_mul(limits.ips_per_eni);
        if full && !policy::has_room_for_eni(enis, cap) {
            return Some(Self::limit_text(limits, r.unmanaged_enis));
        }
        if r.unschedulable {
            return Some("the node is cordoned (unschedulable) and AWS_MANAGE_ENIS_NON_SCHEDULABLE=false, so ipamd adds no addresses to it: uncordon the node (kubectl uncordon), or set AWS_MANAGE_ENIS_NON_SCHEDULABLE=true".to_owned());
        }
        if let Some(why) = &r.eni_config_note {
            return Some(format!("{why}; ipamd creates no ENI for pods until it can"));
        }
        if total >= limits.max_pods && limits.max_pods_from_node {
            return Some(format!(
                "the node holds its max pods' worth of IPs ({}, the Node's capacity: the kubelet's --max-pods)",
                limits.max_pods
            ));
        }
        if total >= limits.max_pods {
            // The calculator leaves the primary ENI out with custom networking.
            let formula_enis = if limits.primary_eni_unused {
                limits.instance_max_enis.saturating_sub(1)
            } else {
                limits.instance_max_enis
            };
            return Some(if limits.prefix_delegation {
                format!(
                    "the node holds its max pods' worth of IPs (max pods {} for {} with prefix delegation: {} ENIs x {} prefixes x 16 IPs + 2, at most {} for {} vCPUs)",
                    limits.max_pods,
                    limits.instance_type,
                    formula_enis,
                    limits.slots_per_eni,
                    crate::limits::max_pods_ceiling(limits.vcpus),
                    limits.vcpus
                )
            } else {
                format!(
                    "the node holds its max pods' worth of IPs ({} = {} ENIs x {} IPs + 2, {})",
                    limits.max_pods, formula_enis, limits.ips_per_eni, limits.instance_type
                )
            });
        }
        if let Some(subnets) = &r.subnet_note {
            return Some(match self.health.subnet_full() {
                Some(f) => format!(
                    "EC2 cannot add addresses: {subnets} ({})",
                    describe_failure(&f)
                ),
                None => format!("EC2 cannot add addresses: {subnets}"),
            });
        }
        if let Some(f) = self.health.failing() {
            let what = match f.error.kind {
                crate::cloud::ec2::Ec2ErrorKind::Throttled => "EC2 is throttling ipamd",
                crate::cloud::ec2::Ec2ErrorKind::Unauthorized => {
                    "EC2 refuses ipamd's requests (check the node's IAM policy)"
                }
                _ => "EC2 is failing",
            };
            return Some(format!(
                "{what}: {}; ipamd keeps retrying with backoff and the pool grows once EC2 answers",
                describe_failure(&f)
            ));
        }
        let counts = Counts {
            total,
            assigned: u32_of(stats.assigned),
            ..Counts::default()
        };
        if stats.cooling > 0 && policy::shortfall(counts, self.targets, cap) == 0 {
            return None;
        }
        Some(format!(
            "the pool is growing: ipamd is adding IPs through EC2 ({} of at most {} pod IPs on this node so far); retry in a few seconds",
            total,
            limits.pod_ip_capacity()
        ))
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::limits::LimitsSource;

    fn stats(enis: usize, total: usize, assigned: usize, cooling: usize) -> Stats {
        Stats {
            enis,
            total,
            assigned,
            cooling,
            assignable: total - assigned - cooling,
        }
    }

    fn situation(health: Arc<Ec2Health>) -> PoolSituation {
        let s = PoolSituation::new(
            Targets {
                warm_eni: 1,
                ..Targets::default()
            },
            health,
        );
        let t3_small = crate::limits::builtin("t3.small").unwrap();
        s.set_limits(Limits::new(&t3_small, None, false, LimitsSource::Ec2));
        s
    }

    #[test]
    fn at_the_limit_names_the_numbers() {
        let s = situation(Arc::default());
        let note = s.note(&stats(3, 9, 9, 0)).unwrap();
        assert!(
            note.starts_with("the node is at its limit of 3 ENIs x 3 IPs = 9 pod IPs (t3.small"),
            "{note}"
        );
        s.set_unmanaged_enis(1);
        let note = s.note(&stats(2, 6, 6, 0)).unwrap();
        assert!(
            note.contains("limit of 3 ENIs") && note.contains("no_manage"),
            "{note}"
        );
    }

    #[test]
    fn unknown_limits_and_growing_pool() {
        let s = PoolSituation::new(Targets::default(), Arc::default());
        s.set_limits_error("DescribeInstanceTypes failed".into());
        assert!(
            s.note(&stats(1, 0, 0, 0))
                .unwrap()
                .contains("DescribeInstanceTypes failed")
        );
        let s = situation(Arc::default());
        let note = s.note(&stats(1, 3, 3, 0)).unwrap();
        assert!(note.starts_with("the pool is growing"), "{note}");
        // Only cooling addresses, and the policy does not grow for them: the datastore's
        // cooldown explanation stands alone.
        assert_eq!(s.note(&stats(2, 6, 3, 3)), None);
    }
}
