//! The warm-pool policy as pure functions: no I/O, no clock reads (times are passed in). The
//! semantics are the reference's (vpc-cni.md §3.2–3.3, `ipamd.go`'s `isDatastorePoolTooLow`,
//! `isDatastorePoolTooHigh`, `shouldRemoveExtraENIs`, `getDeletableENI`, `hasRoomForEni`):
//!
//! - "IP targets defined" ⇔ `WARM_IP_TARGET > 0 || MINIMUM_IP_TARGET > 0`; they override
//!   `WARM_ENI_TARGET`.
//! - available = total − assigned. IPs in cooldown count as available, exactly as in the
//!   reference (they are not assignable yet, which the exhaustion message says).
//! - too low, targets defined: `short = max(WARM_IP − available, MINIMUM_IP − total, 0)`;
//!   otherwise low iff `available < ips_per_eni × WARM_ENI_TARGET` or
//!   (`WARM_ENI_TARGET = 0` and `available = 0`), and then a whole ENI's worth is asked for.
//!   Never low once `total ≥ max pods`, and never asking for more than `max pods − total`.
//! - too high (targets defined only): `over = max(min(available − WARM_IP, total − MINIMUM_IP), 0)`;
//!   checked at most once per 30 s.
//! - free an ENI: with targets always try; otherwise only when
//!   `available ≥ (WARM_ENI_TARGET + 1) × ips_per_eni`. The ENI must not be the primary, must be
//!   at least a minute old, without assigned or cooling IPs, and not needed for the targets
//!   (the other ENIs' free IPs ≥ WARM_IP, their total ≥ MINIMUM_IP). One ENI per cycle.
//! - room for an ENI: `managed ENIs + unmanaged ENIs < max ENIs`.

use std::time::{Duration, Instant};

use crate::config::PoolTargets;

/// How often the pool may shrink (the reference's `decreaseIPPoolInterval`).
pub const DECREASE_INTERVAL: Duration = Duration::from_secs(30);
/// How old an ENI must be before it may be freed (the reference's `minENILifeTime`).
pub const MIN_ENI_AGE: Duration = Duration::from_secs(60);

/// The warm-pool targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    /// `WARM_ENI_TARGET`.
    pub warm_eni: u32,
    /// `WARM_IP_TARGET` (0 = unset).
    pub warm_ip: u32,
    /// `MINIMUM_IP_TARGET` (0 = unset).
    pub minimum_ip: u32,
}

impl Targets {
    /// Whether `WARM_IP_TARGET` or `MINIMUM_IP_TARGET` is set (they override `WARM_ENI_TARGET`).
    pub fn ip_targets_defined(&self) -> bool {
        self.warm_ip > 0 || self.minimum_ip > 0
    }
}

impl From<&PoolTargets> for Targets {
    fn from(p: &PoolTargets) -> Self {
        Self {
            warm_eni: p.warm_eni_target,
            warm_ip: p.warm_ip_target,
            minimum_ip: p.minimum_ip_target,
        }
    }
}

/// The limits the policy works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// ENIs that may be attached (instance limit, lowered by `MAX_ENI`).
    pub max_enis: u32,
    /// Pod addresses per ENI (`Ipv4AddressesPerInterface − 1`).
    pub ips_per_eni: u32,
    /// Max pods; the pool never grows past it.
    pub max_pods: u32,
    /// Attached ENIs ipamd does not manage (tagged `no_manage`); they count against `max_enis`.
    pub unmanaged_enis: u32,
}

/// Pool-wide counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Addresses in the pool.
    pub total: u32,
    /// Addresses assigned to pods.
    pub assigned: u32,
}

impl Counts {
    /// `total − assigned` (cooling addresses included, as in the reference).
    pub fn available(&self) -> u32 {
        self.total.saturating_sub(self.assigned)
    }
}

/// One managed ENI as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniState {
    /// `eni-…`.
    pub id: String,
    /// Device number.
    pub device_number: u32,
    /// The instance's primary ENI (never freed).
    pub is_primary: bool,
    /// How long it has been in the pool.
    pub age: Duration,
    /// Its addresses.
    pub total: u32,
    /// Assigned ones.
    pub assigned: u32,
    /// Cooling ones.
    pub cooling: u32,
    /// Its subnet has no free addresses (EC2 said so recently): no addresses are asked for on
    /// it; a new ENI in another subnet may be.
    pub subnet_full: bool,
}

impl EniState {
    fn free(&self) -> u32 {
        self.total.saturating_sub(self.assigned)
    }
}

/// Pool-wide counts of a set of ENIs.
pub fn counts(enis: &[EniState]) -> Counts {
    Counts {
        total: enis.iter().map(|e| e.total).sum(),
        assigned: enis.iter().map(|e| e.assigned).sum(),
    }
}

/// How many addresses the pool is short of its targets (0 = not too low): the amount the
/// manager asks EC2 for (in `WARM_ENI_TARGET` mode a whole ENI's worth), capped at max pods.
pub fn shortfall(c: Counts, t: Targets, cap: Capacity) -> u32 {
    if c.total >= cap.max_pods {
        return 0;
    }
    let avail = c.available();
    let short = if t.ip_targets_defined() {
        t.warm_ip
            .saturating_sub(avail)
            .max(t.minimum_ip.saturating_sub(c.total))
    } else if avail < cap.ips_per_eni.saturating_mul(t.warm_eni) || (t.warm_eni == 0 && avail == 0)
    {
        cap.ips_per_eni
    } else {
        0
    };
    short.min(cap.max_pods - c.total)
}

/// How many addresses the pool holds beyond its targets (0 = not too high). In plain
/// `WARM_ENI_TARGET` mode the pool is never "too high" for addresses: only whole ENIs go.
pub fn surplus(c: Counts, t: Targets) -> u32 {
    if !t.ip_targets_defined() {
        return 0;
    }
    let over_warm = i64::from(c.available()) - i64::from(t.warm_ip);
    let over_min = i64::from(c.total) - i64::from(t.minimum_ip);
    u32::try_from(over_warm.min(over_min).max(0)).unwrap_or(0)
}

/// Whether the pool may shrink now: at most once per `interval`.
pub fn may_decrease(last: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last.is_none_or(|l| now.saturating_duration_since(l) >= interval)
}

/// Whether to look for an ENI to free this cycle.
pub fn should_try_free_eni(c: Counts, t: Targets, cap: Capacity) -> bool {
    t.ip_targets_defined()
        || c.available() >= t.warm_eni.saturating_add(1).saturating_mul(cap.ips_per_eni)
}

/// The ENI to free, if one may go: not the primary, at least `min_age` old, no assigned or
/// cooling addresses, and not needed for `WARM_IP_TARGET` / `MINIMUM_IP_TARGET`. Among several,
/// the one with the highest device number.
pub fn deletable_eni(enis: &[EniState], t: Targets, min_age: Duration) -> Option<&EniState> {
    let mut candidates: Vec<&EniState> = enis
        .iter()
        .filter(|e| !e.is_primary && e.age >= min_age && e.assigned == 0 && e.cooling == 0)
        .collect();
    candidates.sort_by_key(|e| std::cmp::Reverse(e.device_number));
    candidates.into_iter().find(|eni| {
        let others = enis.iter().filter(|o| o.id != eni.id);
        let other_free: u32 = others.clone().map(EniState::free).sum();
        let other_total: u32 = others.map(|o| o.total).sum();
        let needed_for_warm = t.warm_ip > 0 && other_free < t.warm_ip;
        let needed_for_min = t.minimum_ip > 0 && other_total < t.minimum_ip;
        !needed_for_warm && !needed_for_min
    })
}

/// Whether another ENI may be attached.
pub fn has_room_for_eni(managed_enis: u32, cap: Capacity) -> bool {
    managed_enis.saturating_add(cap.unmanaged_enis) < cap.max_enis
}

/// The next thing to do to grow the pool by `short` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grow {
    /// `AssignPrivateIpAddresses` of `count` on an ENI that has room.
    Assign {
        /// The ENI.
        eni: String,
        /// How many.
        count: u32,
    },
    /// `CreateNetworkInterface` with `ips` secondary addresses.
    CreateEni {
        /// How many secondary addresses.
        ips: u32,
    },
    /// Every ENI is full and no ENI may be added.
    AtLimit,
}

/// Existing ENIs are filled first (the lowest device number with room, by
/// `min(free slots, short)`); only when all are full is a new ENI created, with
/// `min(short, ips_per_eni)` addresses.
pub fn next_grow_step(short: u32, enis: &[EniState], cap: Capacity) -> Option<Grow> {
    if short == 0 {
        return None;
    }
    let mut by_device: Vec<&EniState> = enis.iter().collect();
    by_device.sort_by_key(|e| e.device_number);
    if let Some(eni) = by_device
        .iter()
        .find(|e| e.total < cap.ips_per_eni && !e.subnet_full)
    {
        return Some(Grow::Assign {
            eni: eni.id.clone(),
            count: (cap.ips_per_eni - eni.total).min(short),
        });
    }
    let managed = u32::try_from(enis.len()).unwrap_or(u32::MAX);
    if has_room_for_eni(managed, cap) && cap.ips_per_eni > 0 {
        return Some(Grow::CreateEni {
            ips: short.min(cap.ips_per_eni),
        });
    }
    Some(Grow::AtLimit)
}

/// How many VPC addresses one more node of this instance type takes when it starts with no
/// pods and pre-scales its pool to these targets: each ENI's own address plus the pool, as
/// [`shortfall`] and [`next_grow_step`] grow it. The subnet-exhaustion warning compares each
/// candidate subnet's free addresses with this.
pub fn addresses_of_new_node(t: Targets, cap: Capacity) -> u32 {
    let fresh = |device: u32| EniState {
        id: format!("new-{device}"),
        device_number: device,
        is_primary: device == 0,
        age: Duration::ZERO,
        total: 0,
        assigned: 0,
        cooling: 0,
        subnet_full: false,
    };
    let mut enis = vec![fresh(0)];
    // Each step adds addresses or an ENI, both bounded by the capacity.
    let bound = cap.max_enis.saturating_add(1).saturating_mul(2);
    for _ in 0..bound {
        let short = shortfall(counts(&enis), t, cap);
        match next_grow_step(short, &enis, cap) {
            Some(Grow::Assign { eni, count }) => {
                if let Some(e) = enis.iter_mut().find(|e| e.id == eni) {
                    e.total += count;
                }
            }
            Some(Grow::CreateEni { ips }) => {
                let device = u32::try_from(enis.len()).unwrap_or(u32::MAX);
                let mut e = fresh(device);
                e.total = ips;
                enis.push(e);
            }
            None | Some(Grow::AtLimit) => break,
        }
    }
    let enis_n = u32::try_from(enis.len()).unwrap_or(u32::MAX);
    counts(&enis).total.saturating_add(enis_n)
}

#[cfg(test)]
mod tests {

    use super::*;

    /// t3.small: 3 ENIs × 4 IPv4 → 3 pod IPs per ENI, max pods 3 × 3 + 2 = 11.
    const T3_SMALL: Capacity = Capacity {
        max_enis: 3,
        ips_per_eni: 3,
        max_pods: 11,
        unmanaged_enis: 0,
    };

    fn eni(device: u32, total: u32, assigned: u32) -> EniState {
        EniState {
            id: format!("eni-{device}"),
            device_number: device,
            is_primary: device == 0,
            age: Duration::from_secs(3600),
            total,
            assigned,
            cooling: 0,
            subnet_full: false,
        }
    }

    fn targets(warm_eni: u32, warm_ip: u32, minimum_ip: u32) -> Targets {
        Targets {
            warm_eni,
            warm_ip,
            minimum_ip,
        }
    }

    /// Plays the manager: grows until the policy is satisfied, with `pods` pods placed on the
    /// lowest ENIs as they come (the datastore packs that way), one pod at a time.
    fn simulate(t: Targets, cap: Capacity, pods: u32) -> Vec<EniState> {
        let mut enis = vec![eni(0, 0, 0)];
        let grow = |enis: &mut Vec<EniState>| {
            for _ in 0..50 {
                let short = shortfall(counts(enis), t, cap);
                match next_grow_step(short, enis, cap) {
                    None | Some(Grow::AtLimit) => return,
                    Some(Grow::Assign { eni, count }) => {
                        enis.iter_mut().find(|e| e.id == eni).unwrap().total += count;
                    }
                    Some(Grow::CreateEni { ips }) => {
                        let d = u32::try_from(enis.len()).unwrap();
                        enis.push(eni(d, ips, 0));
                    }
                }
            }
            panic!("the pool never settles");
        };
        grow(&mut enis);
        for _ in 0..pods {
            if let Some(e) = enis.iter_mut().find(|e| e.assigned < e.total) {
                e.assigned += 1;
            }
            grow(&mut enis);
        }
        enis
    }

    fn shape(enis: &[EniState]) -> (usize, u32) {
        (enis.len(), counts(enis).total)
    }

    #[test]
    fn reference_worked_examples() {
        // docs/eni-and-ip-target.md, t3.small.
        let cases = [
            // (WARM_ENI, WARM_IP, MIN_IP, pods) → (ENIs, IPs)
            ((1, 0, 0, 0), (1, 3)),
            ((1, 0, 0, 5), (3, 9)),
            ((0, 2, 5, 0), (2, 5)),
            ((1, 2, 5, 0), (2, 5)),
            ((1, 0, 0, 3), (2, 6)),
            ((0, 1, 0, 0), (1, 1)),
            ((0, 0, 5, 0), (2, 5)),
            ((0, 2, 0, 5), (3, 7)),
        ];
        for ((we, wi, mi, pods), want) in cases {
            let got = shape(&simulate(targets(we, wi, mi), T3_SMALL, pods));
            assert_eq!(
                got, want,
                "WARM_ENI={we} WARM_IP={wi} MIN_IP={mi} pods={pods}"
            );
        }
    }

    #[test]
    fn shortfall_boundaries() {
        let c = |total, assigned| Counts { total, assigned };
        let cases = [
            // WARM_ENI_TARGET=1: keep a whole ENI's worth (3) free.
            (targets(1, 0, 0), c(3, 0), 0),
            (targets(1, 0, 0), c(3, 1), 3),
            (targets(1, 0, 0), c(0, 0), 3),
            // WARM_ENI_TARGET=0: grow only when nothing is available.
            (targets(0, 0, 0), c(0, 0), 3),
            (targets(0, 0, 0), c(3, 3), 3),
            (targets(0, 0, 0), c(3, 2), 0),
            // WARM_IP_TARGET / MINIMUM_IP_TARGET.
            (targets(1, 2, 0), c(3, 2), 1),
            (targets(1, 2, 0), c(4, 2), 0),
            (targets(0, 2, 5), c(0, 0), 5),
            (targets(0, 2, 5), c(3, 0), 2),
            (targets(0, 2, 5), c(5, 0), 0),
            (targets(0, 2, 5), c(5, 4), 1),
            // Max pods (11) reached or close: never past it.
            (targets(1, 0, 0), c(11, 11), 0),
            (targets(1, 0, 0), c(12, 12), 0),
            (targets(0, 20, 0), c(9, 0), 2),
        ];
        for (t, counts, want) in cases {
            assert_eq!(shortfall(counts, t, T3_SMALL), want, "{t:?} {counts:?}");
        }
    }

    #[test]
    fn cooling_ips_count_as_available_as_in_the_reference() {
        // 3 IPs, 1 assigned, 2 cooling: available = 2 → with WARM_IP_TARGET=2 not low.
        let c = Counts {
            total: 3,
            assigned: 1,
        };
        assert_eq!(shortfall(c, targets(0, 2, 0), T3_SMALL), 0);
        // ...but an ENI with cooling IPs is never freed.
        let mut e = eni(1, 3, 0);
        e.cooling = 1;
        let enis = vec![eni(0, 3, 0), e];
        assert_eq!(deletable_eni(&enis, targets(1, 0, 0), MIN_ENI_AGE), None);
    }

    #[test]
    fn minimum_ip_target_beyond_capacity_stops_at_the_limit() {
        let enis = simulate(targets(0, 0, 20), T3_SMALL, 0);
        assert_eq!(shape(&enis), (3, 9));
        let short = shortfall(counts(&enis), targets(0, 0, 20), T3_SMALL);
        assert_eq!(short, 2, "still short, capped by max pods 11 − 9");
        assert_eq!(next_grow_step(short, &enis, T3_SMALL), Some(Grow::AtLimit));
    }

    #[test]
    fn max_eni_and_unmanaged_enis_cap_growth() {
        let cap = Capacity {
            max_enis: 1,
            ..T3_SMALL
        };
        assert_eq!(shape(&simulate(targets(1, 0, 0), cap, 5)), (1, 3));
        // MAX_ENI below what is attached: no new ENI, nothing forced out.
        let enis = vec![eni(0, 3, 3), eni(1, 3, 3)];
        assert!(!has_room_for_eni(2, cap));
        assert_eq!(next_grow_step(3, &enis, cap), Some(Grow::AtLimit));
        // An unmanaged ENI takes a slot.
        let cap = Capacity {
            unmanaged_enis: 1,
            ..T3_SMALL
        };
        assert!(has_room_for_eni(1, cap));
        assert!(!has_room_for_eni(2, cap));
        assert_eq!(shape(&simulate(targets(1, 0, 0), cap, 5)), (2, 6));
    }

    #[test]
    fn existing_enis_are_filled_before_creating() {
        let enis = vec![eni(0, 3, 3), eni(1, 1, 1), eni(2, 3, 0)];
        assert_eq!(
            next_grow_step(5, &enis, T3_SMALL),
            Some(Grow::Assign {
                eni: "eni-1".into(),
                count: 2
            })
        );
        let enis = vec![eni(0, 3, 3)];
        assert_eq!(
            next_grow_step(2, &enis, T3_SMALL),
            Some(Grow::CreateEni { ips: 2 })
        );
        assert_eq!(
            next_grow_step(7, &enis, T3_SMALL),
            Some(Grow::CreateEni { ips: 3 })
        );
        assert_eq!(next_grow_step(0, &enis, T3_SMALL), None);
    }

    #[test]
    fn enis_in_full_subnets_are_not_grown_a_new_eni_is() {
        let mut enis = vec![eni(0, 3, 3), eni(1, 1, 0)];
        enis[1].subnet_full = true;
        assert_eq!(
            next_grow_step(2, &enis, T3_SMALL),
            Some(Grow::CreateEni { ips: 2 })
        );
        enis.push(eni(2, 3, 0));
        assert_eq!(next_grow_step(2, &enis, T3_SMALL), Some(Grow::AtLimit));
    }

    #[test]
    fn addresses_of_a_new_node_follow_the_pre_scaling() {
        // t3.small, WARM_ENI_TARGET=1: the primary ENI's 3 addresses + its own = 4.
        assert_eq!(addresses_of_new_node(targets(1, 0, 0), T3_SMALL), 4);
        // WARM_ENI_TARGET=2: a second ENI with 3 more, and its own address.
        assert_eq!(addresses_of_new_node(targets(2, 0, 0), T3_SMALL), 8);
        // MINIMUM_IP_TARGET=5, WARM_IP_TARGET=2 (the reference's worked example): 5 IPs on 2 ENIs.
        assert_eq!(addresses_of_new_node(targets(1, 2, 5), T3_SMALL), 7);
        // m5.large, the reference's defaults: 9 + 1.
        let m5 = Capacity {
            max_enis: 3,
            ips_per_eni: 9,
            max_pods: 29,
            unmanaged_enis: 0,
        };
        assert_eq!(addresses_of_new_node(targets(1, 0, 0), m5), 10);
    }

    #[test]
    fn surplus_only_with_ip_targets() {
        let c = |total, assigned| Counts { total, assigned };
        let cases = [
            (targets(1, 0, 0), c(9, 0), 0),
            (targets(0, 2, 0), c(9, 0), 7),
            (targets(0, 2, 0), c(9, 7), 0),
            (targets(0, 2, 5), c(9, 0), 4),
            (targets(0, 2, 5), c(5, 0), 0),
            (targets(0, 2, 5), c(9, 6), 1),
            (targets(0, 0, 5), c(3, 0), 0),
        ];
        for (t, counts, want) in cases {
            assert_eq!(surplus(counts, t), want, "{t:?} {counts:?}");
        }
    }

    #[test]
    fn decrease_at_most_once_per_interval() {
        let now = Instant::now();
        assert!(may_decrease(None, now, DECREASE_INTERVAL));
        assert!(!may_decrease(
            Some(now),
            now + Duration::from_secs(29),
            DECREASE_INTERVAL
        ));
        assert!(may_decrease(
            Some(now),
            now + Duration::from_secs(30),
            DECREASE_INTERVAL
        ));
    }

    #[test]
    fn free_eni_conditions() {
        let t = targets(1, 0, 0);
        let c = |total, assigned| Counts { total, assigned };
        // WARM_ENI_TARGET=1 frees only with two ENIs' worth (6) available.
        assert!(!should_try_free_eni(c(6, 1), t, T3_SMALL));
        assert!(should_try_free_eni(c(9, 3), t, T3_SMALL));
        assert!(should_try_free_eni(c(0, 0), targets(0, 1, 0), T3_SMALL));

        let enis = vec![eni(0, 3, 3), eni(1, 3, 0), eni(2, 3, 0)];
        assert_eq!(
            deletable_eni(&enis, t, MIN_ENI_AGE).map(|e| e.id.as_str()),
            Some("eni-2"),
            "the highest device goes first"
        );
        // Never the primary, never one with pods.
        let enis = vec![eni(0, 3, 0), eni(1, 3, 1)];
        assert_eq!(deletable_eni(&enis, t, MIN_ENI_AGE), None);
        // Younger than a minute: kept.
        let mut young = eni(1, 3, 0);
        young.age = Duration::from_secs(59);
        assert_eq!(
            deletable_eni(&[eni(0, 3, 0), young.clone()], t, MIN_ENI_AGE),
            None
        );
        young.age = MIN_ENI_AGE;
        assert!(deletable_eni(&[eni(0, 3, 0), young], t, MIN_ENI_AGE).is_some());
        // Needed for WARM_IP_TARGET: the others have 1 free < 2.
        let enis = vec![eni(0, 3, 2), eni(1, 3, 0)];
        assert_eq!(deletable_eni(&enis, targets(0, 2, 0), MIN_ENI_AGE), None);
        assert!(deletable_eni(&enis, targets(0, 1, 0), MIN_ENI_AGE).is_some());
        // Needed for MINIMUM_IP_TARGET: the others hold 3 < 5.
        let enis = vec![eni(0, 3, 0), eni(1, 2, 0)];
        assert_eq!(deletable_eni(&enis, targets(0, 0, 5), MIN_ENI_AGE), None);
        assert!(deletable_eni(&enis, targets(0, 0, 3), MIN_ENI_AGE).is_some());
    }

    #[test]
    fn warm_ip_target_shrinks_then_frees_after_pods_leave() {
        // 5 pods came and went with WARM_IP_TARGET=2: 3 ENIs, 7 IPs, none assigned.
        let t = targets(0, 2, 0);
        let mut enis = simulate(t, T3_SMALL, 5);
        assert_eq!(shape(&enis), (3, 7));
        for e in &mut enis {
            e.assigned = 0;
        }
        let over = surplus(counts(&enis), t);
        assert_eq!(over, 5);
        // Addresses go from the highest ENIs first (as the datastore takes them).
        let mut left = over;
        for e in enis.iter_mut().rev() {
            let n = left.min(e.total);
            e.total -= n;
            left -= n;
        }
        assert_eq!(
            enis.iter().map(|e| e.total).collect::<Vec<_>>(),
            vec![2, 0, 0]
        );
        let first = deletable_eni(&enis, t, MIN_ENI_AGE).unwrap().id.clone();
        assert_eq!(first, "eni-2");
        enis.retain(|e| e.id != first);
        assert_eq!(deletable_eni(&enis, t, MIN_ENI_AGE).unwrap().id, "eni-1");
    }
}
