//! The warm-pool policy as pure functions: no I/O, no clock reads (times are passed in). The
//! semantics are the reference's (vpc-cni.md §3.2–3.3, `ipamd.go`'s `isDatastorePoolTooLow`,
//! `isDatastorePoolTooHigh`, `datastoreTargetState`, `getPrefixesNeeded`,
//! `shouldRemoveExtraENIs`, `getDeletableENI`, `hasRoomForEni`).
//!
//! The pool grows by slots: an ENI has `Ipv4AddressesPerInterface − 1` of them, each one
//! secondary address, or with prefix delegation one /28 prefix of 16 addresses
//! ([`Capacity::per_slot`]). Counts are in addresses; what [`shortfall`] asks for and what
//! [`surplus`] gives back are slots.
//!
//! Secondary addresses:
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
//!
//! Prefix delegation (a free prefix has no assigned address; cooling ones do not count):
//! - too low, IP targets defined: the same `short` in addresses, asked for as `⌈short / 16⌉`
//!   prefixes; otherwise low iff `available < 16 × WARM_PREFIX_TARGET` or (target 0 and
//!   nothing available), asking for `max(1, WARM_PREFIX_TARGET − free prefixes)`. Never low
//!   once `total ≥ max pods`, never more than `⌈(max pods − total) / 16⌉`.
//! - too high, IP targets defined: `min(free prefixes, prefixes − ⌈(assigned + WARM_IP) / 16⌉,
//!   prefixes − ⌈MINIMUM_IP / 16⌉)`; otherwise `free prefixes − WARM_PREFIX_TARGET`.
//! - free an ENI: always try (the reference's `CheckFreeableENIexists`); the targets count in
//!   whole prefixes (`WARM_IP` and `MINIMUM_IP` rounded up to multiples of 16) and the other
//!   ENIs must keep `WARM_PREFIX_TARGET` free prefixes.

use std::time::{Duration, Instant};

use crate::config::PoolTargets;
use crate::limits::Limits;

/// How often the pool may shrink (the reference's `decreaseIPPoolInterval`).
pub const DECREASE_INTERVAL: Duration = Duration::from_secs(30);
/// How old an ENI must be before it may be freed (the reference's `minENILifeTime`).
pub const MIN_ENI_AGE: Duration = Duration::from_secs(60);

/// The warm-pool targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    /// `WARM_ENI_TARGET` (secondary addresses only).
    pub warm_eni: u32,
    /// `WARM_IP_TARGET` (0 = unset).
    pub warm_ip: u32,
    /// `MINIMUM_IP_TARGET` (0 = unset).
    pub minimum_ip: u32,
    /// `WARM_PREFIX_TARGET` (prefix delegation only).
    pub warm_prefix: u32,
}

impl Targets {
    /// `WARM_ENI_TARGET`, `WARM_IP_TARGET` and `MINIMUM_IP_TARGET`, without `WARM_PREFIX_TARGET`.
    pub const fn new(warm_eni: u32, warm_ip: u32, minimum_ip: u32) -> Self {
        Self {
            warm_eni,
            warm_ip,
            minimum_ip,
            warm_prefix: 0,
        }
    }

    /// Whether `WARM_IP_TARGET` or `MINIMUM_IP_TARGET` is set (they override `WARM_ENI_TARGET`
    /// and `WARM_PREFIX_TARGET`).
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
            warm_prefix: p.warm_prefix_target,
        }
    }
}

/// The limits the policy works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// ENIs that may be attached (instance limit, lowered by `MAX_ENI`).
    pub max_enis: u32,
    /// Pod addresses per ENI (slots × [`Capacity::per_slot`]).
    pub ips_per_eni: u32,
    /// Max pods; the pool never grows past it.
    pub max_pods: u32,
    /// Attached ENIs ipamd does not manage (tagged `no_manage`); they count against `max_enis`.
    pub unmanaged_enis: u32,
    /// Addresses per slot: 1 (secondary addresses) or 16 (prefix delegation).
    pub per_slot: u32,
}

impl Capacity {
    /// The policy's view of `limits`, with `unmanaged_enis` attached ENIs ipamd leaves alone.
    pub fn new(limits: &Limits, unmanaged_enis: u32) -> Self {
        Self {
            max_enis: limits.max_enis,
            ips_per_eni: limits.ips_per_eni,
            max_pods: limits.max_pods,
            unmanaged_enis,
            per_slot: limits.addresses_per_slot(),
        }
    }

    /// Whether the pool grows by /28 prefixes.
    pub fn prefix_mode(&self) -> bool {
        self.per_slot > 1
    }

    /// Slots of an ENI: `ips_per_eni / per_slot`.
    pub fn slots_per_eni(&self) -> u32 {
        self.ips_per_eni / self.per_slot.max(1)
    }

    /// `n` addresses rounded up to whole slots.
    fn slots_for(&self, n: u32) -> u32 {
        n.div_ceil(self.per_slot.max(1))
    }
}

/// Pool-wide counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Addresses in the pool.
    pub total: u32,
    /// Addresses assigned to pods.
    pub assigned: u32,
    /// Delegated prefixes in the pool.
    pub prefixes: u32,
    /// Prefixes none of whose addresses is assigned.
    pub free_prefixes: u32,
    /// Pods waiting for an address (beyond the reference: see [`shortfall`]).
    pub waiting: u32,
    /// Addresses assigned in the last burst window, counted while pods wait.
    pub recent: u32,
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
    /// Its addresses (secondary ones and those of its prefixes).
    pub total: u32,
    /// Assigned ones.
    pub assigned: u32,
    /// Cooling ones.
    pub cooling: u32,
    /// Slots it uses in EC2: secondary addresses plus prefixes.
    pub slots: u32,
    /// Its prefixes.
    pub prefixes: u32,
    /// Its prefixes none of whose addresses is assigned.
    pub free_prefixes: u32,
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
        prefixes: enis.iter().map(|e| e.prefixes).sum(),
        free_prefixes: enis.iter().map(|e| e.free_prefixes).sum(),
        waiting: 0,
        recent: 0,
    }
}

/// How many slots the pool is short of its targets (0 = not too low): what the manager asks
/// EC2 for, addresses or prefixes (in `WARM_ENI_TARGET` mode a whole ENI's worth), capped at
/// max pods.
///
/// Beyond the reference, when more pods wait for an address than the pool has (a burst found
/// it empty): the waiting pods plus as many again as got an address in the burst window are
/// served first, then the targets apply to the pool as it will be once they are, in one go.
/// The burst's part only enlarges a call the waiting pods need anyway: when the pool covers
/// them, the targets alone decide, for the pool once they are served. Without waiting pods
/// this is exactly the reference's computation.
pub fn shortfall(c: Counts, t: Targets, cap: Capacity) -> u32 {
    if c.waiting == 0 {
        return reference_shortfall(c, t, cap);
    }
    if c.total >= cap.max_pods {
        return 0;
    }
    let avail = c.available();
    let wanted = if c.waiting > avail {
        c.waiting.saturating_add(c.recent)
    } else {
        c.waiting
    };
    let served = wanted.min(avail);
    let left = avail - served;
    let after = Counts {
        assigned: c.assigned + served,
        free_prefixes: c.free_prefixes.min(left / cap.per_slot.max(1)),
        waiting: 0,
        recent: 0,
        ..c
    };
    let room = cap.slots_for(cap.max_pods - c.total);
    cap.slots_for(wanted - served)
        .saturating_add(reference_shortfall(after, t, cap))
        .min(room)
}

/// [`shortfall`] as the reference computes it, from the pool alone.
fn reference_shortfall(c: Counts, t: Targets, cap: Capacity) -> u32 {
    if c.total >= cap.max_pods {
        return 0;
    }
    let avail = c.available();
    let ip_short = || {
        t.warm_ip
            .saturating_sub(avail)
            .max(t.minimum_ip.saturating_sub(c.total))
    };
    let room = cap.slots_for(cap.max_pods - c.total);
    let short = if cap.prefix_mode() {
        if t.ip_targets_defined() {
            match ip_short() {
                0 => 0,
                short => cap.slots_for(short).max(1),
            }
        } else if avail < cap.per_slot.saturating_mul(t.warm_prefix)
            || (t.warm_prefix == 0 && avail == 0)
        {
            t.warm_prefix.saturating_sub(c.free_prefixes).max(1)
        } else {
            0
        }
    } else if t.ip_targets_defined() {
        ip_short()
    } else if avail < cap.ips_per_eni.saturating_mul(t.warm_eni) || (t.warm_eni == 0 && avail == 0)
    {
        cap.ips_per_eni
    } else {
        0
    };
    short.min(room)
}

/// How many slots the pool holds beyond its targets (0 = not too high): addresses, or whole
/// free prefixes. With secondary addresses in plain `WARM_ENI_TARGET` mode the pool is never
/// "too high" for addresses: only whole ENIs go.
pub fn surplus(c: Counts, t: Targets, cap: Capacity) -> u32 {
    let non_negative = |v: i64| u32::try_from(v.max(0)).unwrap_or(0);
    if cap.prefix_mode() {
        if !t.ip_targets_defined() {
            return c.free_prefixes.saturating_sub(t.warm_prefix);
        }
        let prefixes = i64::from(c.prefixes);
        let for_warm = i64::from(cap.slots_for(c.assigned.saturating_add(t.warm_ip)));
        let for_min = i64::from(cap.slots_for(t.minimum_ip));
        let over = i64::from(c.free_prefixes)
            .min(prefixes - for_warm)
            .min(prefixes - for_min);
        return non_negative(over);
    }
    if !t.ip_targets_defined() {
        return 0;
    }
    let over_warm = i64::from(c.available()) - i64::from(t.warm_ip);
    let over_min = i64::from(c.total) - i64::from(t.minimum_ip);
    non_negative(over_warm.min(over_min))
}

/// Whether the pool may shrink now: at most once per `interval`.
pub fn may_decrease(last: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last.is_none_or(|l| now.saturating_duration_since(l) >= interval)
}

/// Whether to look for an ENI to free this cycle.
pub fn should_try_free_eni(c: Counts, t: Targets, cap: Capacity) -> bool {
    t.ip_targets_defined()
        || cap.prefix_mode()
        || c.available() >= t.warm_eni.saturating_add(1).saturating_mul(cap.ips_per_eni)
}

/// The ENI to free, if one may go: not the primary, at least `min_age` old, no assigned or
/// cooling addresses, and not needed for `WARM_IP_TARGET` / `MINIMUM_IP_TARGET` (in whole
/// slots) or, with prefixes, `WARM_PREFIX_TARGET`. Among several, the one with the highest
/// device number.
pub fn deletable_eni(
    enis: &[EniState],
    t: Targets,
    cap: Capacity,
    min_age: Duration,
) -> Option<&EniState> {
    let whole = |n: u32| cap.slots_for(n).saturating_mul(cap.per_slot.max(1));
    let mut candidates: Vec<&EniState> = enis
        .iter()
        .filter(|e| !e.is_primary && e.age >= min_age && e.assigned == 0 && e.cooling == 0)
        .collect();
    candidates.sort_by_key(|e| std::cmp::Reverse(e.device_number));
    candidates.into_iter().find(|eni| {
        let others = enis.iter().filter(|o| o.id != eni.id);
        let other_free: u32 = others.clone().map(EniState::free).sum();
        let other_total: u32 = others.clone().map(|o| o.total).sum();
        let other_free_prefixes: u32 = others.map(|o| o.free_prefixes).sum();
        let needed_for_warm = t.warm_ip > 0 && other_free < whole(t.warm_ip);
        let needed_for_min = t.minimum_ip > 0 && other_total < whole(t.minimum_ip);
        let needed_for_prefixes =
            cap.prefix_mode() && t.warm_prefix > 0 && other_free_prefixes < t.warm_prefix;
        !needed_for_warm && !needed_for_min && !needed_for_prefixes
    })
}

/// Whether another ENI may be attached.
pub fn has_room_for_eni(managed_enis: u32, cap: Capacity) -> bool {
    managed_enis.saturating_add(cap.unmanaged_enis) < cap.max_enis
}

/// The next thing to do to grow the pool by `short` slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grow {
    /// `AssignPrivateIpAddresses` of `count` slots (addresses or prefixes) on an ENI that has
    /// room.
    Assign {
        /// The ENI.
        eni: String,
        /// How many.
        count: u32,
    },
    /// `CreateNetworkInterface` with `slots` secondary addresses or prefixes.
    CreateEni {
        /// How many.
        slots: u32,
    },
    /// Every ENI is full and no ENI may be added.
    AtLimit,
}

/// Existing ENIs are filled first (the lowest device number with room, by
/// `min(free slots, short)`); only when all are full is a new ENI created, with
/// `min(short, slots per ENI)` slots.
pub fn next_grow_step(short: u32, enis: &[EniState], cap: Capacity) -> Option<Grow> {
    if short == 0 {
        return None;
    }
    let slots_per_eni = cap.slots_per_eni();
    let mut by_device: Vec<&EniState> = enis.iter().collect();
    by_device.sort_by_key(|e| e.device_number);
    if let Some(eni) = by_device
        .iter()
        .find(|e| e.slots < slots_per_eni && !e.subnet_full)
    {
        return Some(Grow::Assign {
            eni: eni.id.clone(),
            count: (slots_per_eni - eni.slots).min(short),
        });
    }
    let managed = u32::try_from(enis.len()).unwrap_or(u32::MAX);
    if has_room_for_eni(managed, cap) && slots_per_eni > 0 {
        return Some(Grow::CreateEni {
            slots: short.min(slots_per_eni),
        });
    }
    Some(Grow::AtLimit)
}

/// An ENI the policy has not seen grow yet (for simulations of what is to come).
fn fresh_eni(device: u32) -> EniState {
    EniState {
        id: format!("new-{device}"),
        device_number: device,
        is_primary: device == 0,
        age: Duration::ZERO,
        total: 0,
        assigned: 0,
        cooling: 0,
        slots: 0,
        prefixes: 0,
        free_prefixes: 0,
        subnet_full: false,
    }
}

/// Adds `slots` fresh slots to `eni` (their addresses free).
fn grow_eni(eni: &mut EniState, slots: u32, cap: Capacity) {
    eni.slots += slots;
    eni.total += slots * cap.per_slot.max(1);
    if cap.prefix_mode() {
        eni.prefixes += slots;
        eni.free_prefixes += slots;
    }
}

/// How many VPC addresses one more node of this instance type takes when it starts with no
/// pods and pre-scales its pool to these targets: each ENI's own address plus the pool, as
/// [`shortfall`] and [`next_grow_step`] grow it. The subnet-exhaustion warning compares each
/// candidate subnet's free addresses with this.
pub fn addresses_of_new_node(t: Targets, cap: Capacity) -> u32 {
    let mut enis = vec![fresh_eni(0)];
    // Each step adds slots or an ENI, both bounded by the capacity.
    let bound = cap.max_enis.saturating_add(1).saturating_mul(2);
    for _ in 0..bound {
        let short = shortfall(counts(&enis), t, cap);
        match next_grow_step(short, &enis, cap) {
            Some(Grow::Assign { eni, count }) => {
                if let Some(e) = enis.iter_mut().find(|e| e.id == eni) {
                    grow_eni(e, count, cap);
                }
            }
            Some(Grow::CreateEni { slots }) => {
                let device = u32::try_from(enis.len()).unwrap_or(u32::MAX);
                let mut e = fresh_eni(device);
                grow_eni(&mut e, slots, cap);
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
        per_slot: 1,
    };

    /// t3.small with prefix delegation: 3 ENIs × 3 prefixes × 16, max pods 110.
    const T3_SMALL_PD: Capacity = Capacity {
        max_enis: 3,
        ips_per_eni: 48,
        max_pods: 110,
        unmanaged_enis: 0,
        per_slot: 16,
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
            slots: total,
            prefixes: 0,
            free_prefixes: 0,
            subnet_full: false,
        }
    }

    fn targets(warm_eni: u32, warm_ip: u32, minimum_ip: u32) -> Targets {
        Targets::new(warm_eni, warm_ip, minimum_ip)
    }

    fn prefix_targets(warm_prefix: u32, warm_ip: u32, minimum_ip: u32) -> Targets {
        Targets {
            warm_prefix,
            ..targets(1, warm_ip, minimum_ip)
        }
    }

    fn count(total: u32, assigned: u32) -> Counts {
        Counts {
            total,
            assigned,
            ..Counts::default()
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
                        let e = enis.iter_mut().find(|e| e.id == eni).unwrap();
                        grow_eni(e, count, cap);
                    }
                    Some(Grow::CreateEni { slots }) => {
                        let d = u32::try_from(enis.len()).unwrap();
                        enis.push(eni(d, slots, 0));
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
        let c = count;
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
        let c = count(3, 1);
        assert_eq!(shortfall(c, targets(0, 2, 0), T3_SMALL), 0);
        // ...but an ENI with cooling IPs is never freed.
        let mut e = eni(1, 3, 0);
        e.cooling = 1;
        let enis = vec![eni(0, 3, 0), e];
        assert_eq!(
            deletable_eni(&enis, targets(1, 0, 0), T3_SMALL, MIN_ENI_AGE),
            None
        );
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
            Some(Grow::CreateEni { slots: 2 })
        );
        assert_eq!(
            next_grow_step(7, &enis, T3_SMALL),
            Some(Grow::CreateEni { slots: 3 })
        );
        assert_eq!(next_grow_step(0, &enis, T3_SMALL), None);
    }

    #[test]
    fn enis_in_full_subnets_are_not_grown_a_new_eni_is() {
        let mut enis = vec![eni(0, 3, 3), eni(1, 1, 0)];
        enis[1].subnet_full = true;
        assert_eq!(
            next_grow_step(2, &enis, T3_SMALL),
            Some(Grow::CreateEni { slots: 2 })
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
            per_slot: 1,
        };
        assert_eq!(addresses_of_new_node(targets(1, 0, 0), m5), 10);
    }

    #[test]
    fn surplus_only_with_ip_targets() {
        let c = count;
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
            assert_eq!(surplus(counts, t, T3_SMALL), want, "{t:?} {counts:?}");
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
        let c = count;
        // WARM_ENI_TARGET=1 frees only with two ENIs' worth (6) available.
        assert!(!should_try_free_eni(c(6, 1), t, T3_SMALL));
        assert!(should_try_free_eni(c(9, 3), t, T3_SMALL));
        assert!(should_try_free_eni(c(0, 0), targets(0, 1, 0), T3_SMALL));

        let enis = vec![eni(0, 3, 3), eni(1, 3, 0), eni(2, 3, 0)];
        assert_eq!(
            deletable_eni(&enis, t, T3_SMALL, MIN_ENI_AGE).map(|e| e.id.as_str()),
            Some("eni-2"),
            "the highest device goes first"
        );
        // Never the primary, never one with pods.
        let enis = vec![eni(0, 3, 0), eni(1, 3, 1)];
        assert_eq!(deletable_eni(&enis, t, T3_SMALL, MIN_ENI_AGE), None);
        // Younger than a minute: kept.
        let mut young = eni(1, 3, 0);
        young.age = Duration::from_secs(59);
        assert_eq!(
            deletable_eni(&[eni(0, 3, 0), young.clone()], t, T3_SMALL, MIN_ENI_AGE),
            None
        );
        young.age = MIN_ENI_AGE;
        assert!(deletable_eni(&[eni(0, 3, 0), young], t, T3_SMALL, MIN_ENI_AGE).is_some());
        // Needed for WARM_IP_TARGET: the others have 1 free < 2.
        let enis = vec![eni(0, 3, 2), eni(1, 3, 0)];
        assert_eq!(
            deletable_eni(&enis, targets(0, 2, 0), T3_SMALL, MIN_ENI_AGE),
            None
        );
        assert!(deletable_eni(&enis, targets(0, 1, 0), T3_SMALL, MIN_ENI_AGE).is_some());
        // Needed for MINIMUM_IP_TARGET: the others hold 3 < 5.
        let enis = vec![eni(0, 3, 0), eni(1, 2, 0)];
        assert_eq!(
            deletable_eni(&enis, targets(0, 0, 5), T3_SMALL, MIN_ENI_AGE),
            None
        );
        assert!(deletable_eni(&enis, targets(0, 0, 3), T3_SMALL, MIN_ENI_AGE).is_some());
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
        let over = surplus(counts(&enis), t, T3_SMALL);
        assert_eq!(over, 5);
        // Addresses go from the highest ENIs first (as the datastore takes them).
        let mut left = over;
        for e in enis.iter_mut().rev() {
            let n = left.min(e.total);
            e.total -= n;
            e.slots -= n;
            left -= n;
        }
        assert_eq!(
            enis.iter().map(|e| e.total).collect::<Vec<_>>(),
            vec![2, 0, 0]
        );
        let first = deletable_eni(&enis, t, T3_SMALL, MIN_ENI_AGE)
            .unwrap()
            .id
            .clone();
        assert_eq!(first, "eni-2");
        enis.retain(|e| e.id != first);
        assert_eq!(
            deletable_eni(&enis, t, T3_SMALL, MIN_ENI_AGE).unwrap().id,
            "eni-1"
        );
    }

    /// A node with prefix delegation as the datastore fills it: per ENI, the assigned count of
    /// each prefix; pods go to the lowest prefix with room.
    #[derive(Debug, Default)]
    struct PdNode {
        enis: Vec<Vec<u32>>,
    }

    impl PdNode {
        fn states(&self) -> Vec<EniState> {
            let u = |n: usize| u32::try_from(n).unwrap();
            self.enis
                .iter()
                .enumerate()
                .map(|(d, prefixes)| EniState {
                    total: 16 * u(prefixes.len()),
                    assigned: prefixes.iter().sum(),
                    slots: u(prefixes.len()),
                    prefixes: u(prefixes.len()),
                    free_prefixes: u(prefixes.iter().filter(|&&a| a == 0).count()),
                    ..eni(u(d), 0, 0)
                })
                .collect()
        }

        fn grow(&mut self, t: Targets, cap: Capacity) {
            for _ in 0..50 {
                let enis = self.states();
                match next_grow_step(shortfall(counts(&enis), t, cap), &enis, cap) {
                    None | Some(Grow::AtLimit) => return,
                    Some(Grow::Assign { eni, count }) => {
                        let d = enis.iter().position(|e| e.id == eni).unwrap();
                        self.enis[d].extend(std::iter::repeat_n(0, count as usize));
                    }
                    Some(Grow::CreateEni { slots }) => self.enis.push(vec![0; slots as usize]),
                }
            }
            panic!("the pool never settles");
        }

        /// Grows, then adds `pods` pods one at a time, growing after each.
        fn simulate(t: Targets, cap: Capacity, pods: u32) -> Self {
            let mut node = Self {
                enis: vec![Vec::new()],
            };
            node.grow(t, cap);
            for _ in 0..pods {
                let slot = node
                    .enis
                    .iter_mut()
                    .flat_map(|e| e.iter_mut())
                    .find(|a| **a < 16)
                    .expect("an address for the pod");
                *slot += 1;
                node.grow(t, cap);
            }
            node
        }

        fn prefixes_per_eni(&self) -> Vec<usize> {
            self.enis.iter().map(Vec::len).collect()
        }
    }

    #[test]
    fn waiting_pods_are_served_in_one_go_then_the_targets_apply() {
        /// m5.large with prefix delegation: 3 ENIs × 9 prefixes, max pods 110.
        const M5_LARGE_PD: Capacity = Capacity {
            max_enis: 3,
            ips_per_eni: 144,
            max_pods: 110,
            unmanaged_enis: 0,
            per_slot: 16,
        };
        const M5_LARGE: Capacity = Capacity {
            max_enis: 3,
            ips_per_eni: 9,
            max_pods: 29,
            unmanaged_enis: 0,
            per_slot: 1,
        };
        let burst = |total, assigned, free_prefixes, waiting, recent| Counts {
            total,
            assigned,
            prefixes: total / 16,
            free_prefixes,
            waiting,
            recent,
        };
        let pd = prefix_targets(1, 0, 0);
        // Without waiting pods: the reference (one prefix for WARM_PREFIX_TARGET=1).
        assert_eq!(shortfall(burst(16, 16, 0, 0, 0), pd, M5_LARGE_PD), 1);
        // 16 pods took the warm prefix, 16 wait: 16 + 16 more of the burst, then one warm
        // prefix.
        assert_eq!(shortfall(burst(16, 16, 0, 16, 16), pd, M5_LARGE_PD), 3);
        // Never past max pods: 64 addresses, 16 wait, 48 came recently: 3 prefixes reach 112.
        assert_eq!(shortfall(burst(64, 64, 0, 16, 48), pd, M5_LARGE_PD), 3);
        assert_eq!(shortfall(burst(112, 100, 0, 10, 10), pd, M5_LARGE_PD), 0);
        // Waiting pods that the free addresses cover: only the warm target is asked for.
        assert_eq!(shortfall(burst(32, 16, 1, 4, 4), pd, M5_LARGE_PD), 1);
        // Pods coming one at a time (WARM_IP_TARGET=1, t3.small): the new ENI's 3 addresses
        // cover the pod that waited; the 3 that came before it ask for nothing more.
        assert_eq!(
            shortfall(burst(6, 3, 0, 1, 3), targets(0, 1, 0), T3_SMALL),
            0
        );
        // Secondary IPs, WARM_ENI_TARGET=1: 18 addresses taken, 11 wait, 18 came: a whole
        // ENI's worth on top of the 29 wanted, capped at max pods.
        let eni = targets(1, 0, 0);
        assert_eq!(shortfall(burst(18, 18, 0, 11, 18), eni, M5_LARGE), 11);
        // WARM_IP_TARGET=2: the waiting pods and the burst, plus 2.
        assert_eq!(
            shortfall(burst(10, 10, 0, 3, 4), targets(0, 2, 0), M5_LARGE),
            9
        );
    }

    #[test]
    fn reference_prefix_worked_examples() {
        // docs/prefix-and-ip-target.md, t3.small (3 ENIs × 3 prefixes).
        let cases: [(Targets, u32, &[usize]); 12] = [
            (prefix_targets(1, 0, 0), 0, &[1]),
            (prefix_targets(1, 0, 0), 5, &[2]),
            (prefix_targets(1, 0, 0), 16, &[2]),
            (prefix_targets(1, 0, 0), 17, &[3]),
            (prefix_targets(1, 0, 0), 58, &[3, 2]),
            (prefix_targets(0, 1, 1), 0, &[1]),
            (prefix_targets(0, 1, 1), 5, &[1]),
            (prefix_targets(0, 1, 1), 17, &[2]),
            (prefix_targets(0, 1, 1), 58, &[3, 1]),
            // The document's row for 0 pods says 1 prefix but "prefixes per ENI 2"; the
            // reference's code asks for ⌈20 / 16⌉ = 2 (MINIMUM_IP_TARGET 20 counts as 32).
            (prefix_targets(0, 7, 20), 0, &[2]),
            (prefix_targets(0, 7, 20), 17, &[2]),
            (prefix_targets(0, 7, 20), 58, &[3, 2]),
        ];
        for (t, pods, want) in cases {
            let node = PdNode::simulate(t, T3_SMALL_PD, pods);
            assert_eq!(node.prefixes_per_eni(), want, "{t:?} pods={pods}");
        }
    }

    #[test]
    fn prefix_shortfall_boundaries() {
        let c = |total, assigned, free_prefixes| Counts {
            total,
            assigned,
            prefixes: total / 16,
            free_prefixes,
            ..Counts::default()
        };
        let cases = [
            // WARM_PREFIX_TARGET=1: a whole free prefix's worth of addresses available.
            (prefix_targets(1, 0, 0), c(16, 0, 1), 0),
            (prefix_targets(1, 0, 0), c(16, 1, 0), 1),
            (prefix_targets(1, 0, 0), c(0, 0, 0), 1),
            // WARM_PREFIX_TARGET=3 with one free prefix: two more at once.
            (prefix_targets(3, 0, 0), c(32, 16, 1), 2),
            // WARM_PREFIX_TARGET=0: only when nothing is available, then one.
            (prefix_targets(0, 0, 0), c(16, 16, 0), 1),
            (prefix_targets(0, 0, 0), c(16, 15, 0), 0),
            // WARM_IP_TARGET / MINIMUM_IP_TARGET in whole prefixes.
            (prefix_targets(1, 20, 0), c(16, 0, 1), 1),
            (prefix_targets(1, 20, 0), c(0, 0, 0), 2),
            (prefix_targets(1, 0, 40), c(16, 0, 1), 2),
            (prefix_targets(1, 5, 0), c(16, 10, 0), 0),
            // Max pods (110): never past it.
            (prefix_targets(1, 0, 0), c(112, 112, 0), 0),
            (prefix_targets(0, 50, 0), c(96, 90, 0), 1),
        ];
        for (t, counts, want) in cases {
            assert_eq!(shortfall(counts, t, T3_SMALL_PD), want, "{t:?} {counts:?}");
        }
    }

    #[test]
    fn prefix_surplus_follows_the_reference() {
        let c = |prefixes, assigned, free_prefixes| Counts {
            total: prefixes * 16,
            assigned,
            prefixes,
            free_prefixes,
            ..Counts::default()
        };
        let cases = [
            // WARM_PREFIX_TARGET: free prefixes beyond it.
            (prefix_targets(1, 0, 0), c(4, 16, 3), 2),
            (prefix_targets(1, 0, 0), c(2, 16, 1), 0),
            (prefix_targets(0, 0, 0), c(2, 16, 1), 1),
            // WARM_IP 7, MINIMUM_IP 20, 40 pods on 5 prefixes (2 free): ⌈47/16⌉ = 3 needed
            // for the warm target, 2 for the minimum → 2 go.
            (prefix_targets(1, 7, 20), c(5, 40, 2), 2),
            // No pods, 2 prefixes: the minimum (32) keeps both.
            (prefix_targets(1, 7, 20), c(2, 0, 2), 0),
            // Free prefixes bound what goes even when the targets need fewer prefixes.
            (prefix_targets(1, 1, 0), c(4, 33, 1), 1),
            (prefix_targets(1, 1, 0), c(4, 40, 0), 0),
        ];
        for (t, counts, want) in cases {
            assert_eq!(surplus(counts, t, T3_SMALL_PD), want, "{t:?} {counts:?}");
        }
    }

    #[test]
    fn prefix_enis_go_when_the_others_keep_the_targets_in_whole_prefixes() {
        let node = PdNode {
            enis: vec![vec![16, 0], vec![0, 0]],
        };
        let enis = node.states();
        let t = prefix_targets(1, 0, 0);
        assert!(should_try_free_eni(counts(&enis), t, T3_SMALL_PD));
        let deletable = |t| deletable_eni(&enis, t, T3_SMALL_PD, MIN_ENI_AGE).map(|e| e.id.clone());
        // The primary keeps one free prefix: WARM_PREFIX_TARGET=1 holds without eni-1.
        assert_eq!(deletable(t).as_deref(), Some("eni-1"));
        assert_eq!(deletable(prefix_targets(2, 0, 0)), None);
        // WARM_IP_TARGET=5 counts as 16: the primary's 16 free addresses do.
        assert!(deletable(prefix_targets(1, 5, 0)).is_some());
        // WARM_IP_TARGET=17 counts as 32: they do not.
        assert_eq!(deletable(prefix_targets(1, 17, 0)), None);
        // MINIMUM_IP_TARGET=20 counts as 32, the primary holds 32.
        assert!(deletable(prefix_targets(1, 0, 20)).is_some());
        assert_eq!(deletable(prefix_targets(1, 0, 33)), None);
    }

    #[test]
    fn prefix_growth_fills_enis_by_prefix_slots() {
        let node = PdNode {
            enis: vec![vec![16, 16, 16], vec![16]],
        };
        let enis = node.states();
        assert_eq!(
            next_grow_step(3, &enis, T3_SMALL_PD),
            Some(Grow::Assign {
                eni: "eni-1".into(),
                count: 2
            })
        );
        let node = PdNode {
            enis: vec![vec![16, 16, 16]],
        };
        assert_eq!(
            next_grow_step(5, &node.states(), T3_SMALL_PD),
            Some(Grow::CreateEni { slots: 3 })
        );
    }

    #[test]
    fn addresses_of_a_new_prefix_node() {
        // One prefix and the primary ENI's own address.
        assert_eq!(
            addresses_of_new_node(prefix_targets(1, 0, 0), T3_SMALL_PD),
            17
        );
        // MINIMUM_IP_TARGET=30 → 2 prefixes.
        assert_eq!(
            addresses_of_new_node(prefix_targets(1, 5, 30), T3_SMALL_PD),
            33
        );
        // WARM_PREFIX_TARGET=4 on a t3.small: 3 prefixes on the primary, a second ENI with 1.
        assert_eq!(
            addresses_of_new_node(prefix_targets(4, 0, 0), T3_SMALL_PD),
            64 + 2
        );
    }
}
