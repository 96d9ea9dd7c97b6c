//! The address book of IPv6 mode: one /80 prefix delegated to the primary ENI (2^48 addresses),
//! pods get /128s from it. As in the reference (`AssignPodIPv6Address`, `getUnusedIP`), an
//! address released and past `IP_COOLDOWN_PERIOD` is handed out again first, else the lowest
//! address of the prefix never handed out; with 2^48 addresses there is no warm pool and no
//! exhaustion in practice, but the store still says so precisely when it happens.
//!
//! One deviation: the prefix's first address (offset 0) is never handed out. When EC2 delegates
//! the first /80 of the subnet's /64, that address is the subnet's Subnet-Router anycast address
//! (RFC 4291 §2.6.1), which no host may use as its own; skipping it always costs one address of
//! 2^48. The reference starts at offset 0.
//!
//! Nothing scans: assigned addresses are in a map, reusable ones in an ordered set, released ones
//! in one FIFO cooling queue (all share one cooldown), never-used ones are the offsets from
//! `next` up (minus those restored from a checkpoint, which are skipped when `next` reaches them).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv6Net;
use thiserror::Error;

use super::{Clock, IpamKey, PodMetadata};

/// The prefix length EC2 delegates for IPv6 (`/80`).
pub const V6_PREFIX_LEN: u8 = 80;

/// The prefix and the ENI that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6Prefix {
    /// `eni-…` (the primary ENI).
    pub eni_id: String,
    /// Its device number (0).
    pub device_number: u32,
    /// The /80.
    pub prefix: Ipv6Net,
}

/// A pod's IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6Assignment {
    /// The address (a /128 of the prefix).
    pub ip: Ipv6Addr,
    /// Who has it.
    pub key: IpamKey,
    /// About the pod.
    pub metadata: PodMetadata,
    /// When it was assigned.
    pub assigned_at: SystemTime,
    /// The ENI holding the prefix.
    pub eni_id: String,
    /// Its device number.
    pub device_number: u32,
}

/// Counts for PoolStatus, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct V6Stats {
    /// Addresses assigned to pods.
    pub assigned: usize,
    /// Released addresses still cooling down.
    pub cooling: usize,
}

/// Why an IPv6 address could not be assigned or restored.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum V6Error {
    /// No prefix yet (ipamd has not got one from EC2 or instance metadata).
    #[error(
        "no IPv6 /80 prefix on the primary ENI yet: ipamd assigns one through EC2 at start-up (AssignIpv6Addresses); check ipamd's log for why it has none"
    )]
    NoPrefix,
    /// Every address of the prefix is assigned or cooling down.
    #[error(
        "all {size} addresses of the IPv6 prefix {prefix} are assigned ({assigned}) or cooling down ({cooling})"
    )]
    Exhausted {
        /// The prefix.
        prefix: Ipv6Net,
        /// Addresses it has (excluding the skipped first one).
        size: u128,
        /// Assigned.
        assigned: usize,
        /// Cooling.
        cooling: usize,
    },
    /// The datastore is not in IPv6 mode.
    #[error("ipamd is not in IPv6 mode (ENABLE_IPv6 is not true)")]
    NotIpv6Mode,
    /// A checkpointed address is not in the prefix.
    #[error("IPv6 address {ip} is not in the node's prefix {prefix}")]
    OutsidePrefix {
        /// The address.
        ip: Ipv6Addr,
        /// The prefix.
        prefix: Ipv6Net,
    },
    /// A checkpointed address is held by another key, or the key holds another address.
    #[error("IPv6 address {ip} cannot be restored for {key}: already in use")]
    InUse {
        /// The address.
        ip: Ipv6Addr,
        /// The key being restored.
        key: IpamKey,
    },
}

#[derive(Debug, Clone)]
struct Held {
    key: IpamKey,
    metadata: PodMetadata,
    assigned_at: SystemTime,
}

/// The IPv6 address book. Not internally synchronized: the owner wraps it in a lock.
#[derive(Debug)]
pub struct V6Store {
    prefix: Option<V6Prefix>,
    assigned: HashMap<Ipv6Addr, Held>,
    by_key: HashMap<IpamKey, Ipv6Addr>,
    /// Released, past cooldown: handed out first, lowest first.
    reusable: BTreeSet<Ipv6Addr>,
    /// Released, cooling: (release time, address), oldest first.
    cooling: VecDeque<(Instant, Ipv6Addr)>,
    cooling_set: BTreeSet<Ipv6Addr>,
    /// The lowest offset in the prefix never handed out.
    next: u128,
    cooldown: Duration,
    clock: Arc<dyn Clock>,
}

impl V6Store {
    /// An empty store whose released addresses cool down for `cooldown`.
    pub fn new(cooldown: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            prefix: None,
            assigned: HashMap::new(),
            by_key: HashMap::new(),
            reusable: BTreeSet::new(),
            cooling: VecDeque::new(),
            cooling_set: BTreeSet::new(),
            next: 1,
            cooldown,
            clock,
        }
    }

    /// The prefix in use.
    pub fn prefix(&self) -> Option<&V6Prefix> {
        self.prefix.as_ref()
    }

    /// Sets the prefix (start-up). Addresses already restored must be inside it.
    ///
    /// # Errors
    /// [`V6Error::OutsidePrefix`] for the first assigned address outside `prefix`.
    pub fn set_prefix(&mut self, prefix: V6Prefix) -> Result<(), V6Error> {
        if let Some(ip) = self.assigned.keys().find(|ip| !prefix.prefix.contains(*ip)) {
            return Err(V6Error::OutsidePrefix {
                ip: *ip,
                prefix: prefix.prefix,
            });
        }
        self.prefix = Some(prefix);
        Ok(())
    }

    /// The address `key` holds.
    pub fn lookup(&self, key: &IpamKey) -> Option<V6Assignment> {
        let ip = *self.by_key.get(key)?;
        self.assignment(ip)
    }

    fn assignment(&self, ip: Ipv6Addr) -> Option<V6Assignment> {
        let held = self.assigned.get(&ip)?;
        let prefix = self.prefix.as_ref()?;
        Some(V6Assignment {
            ip,
            key: held.key.clone(),
            metadata: held.metadata.clone(),
            assigned_at: held.assigned_at,
            eni_id: prefix.eni_id.clone(),
            device_number: prefix.device_number,
        })
    }

    /// Assigns an address to `key`; a key that holds one gets it back (`false` in the second
    /// field).
    ///
    /// # Errors
    /// [`V6Error::NoPrefix`], [`V6Error::Exhausted`].
    pub fn assign(
        &mut self,
        key: &IpamKey,
        metadata: PodMetadata,
    ) -> Result<(V6Assignment, bool), V6Error> {
        if let Some(existing) = self.lookup(key) {
            return Ok((existing, false));
        }
        let net = self.prefix.as_ref().ok_or(V6Error::NoPrefix)?.prefix;
        self.expire_cooldowns();
        let ip = match self.reusable.pop_first() {
            Some(ip) => ip,
            None => self.take_unused(net)?,
        };
        self.assigned.insert(
            ip,
            Held {
                key: key.clone(),
                metadata,
                assigned_at: self.clock.wall(),
            },
        );
        self.by_key.insert(key.clone(), ip);
        let assignment = self.assignment(ip).ok_or(V6Error::NoPrefix)?;
        Ok((assignment, true))
    }

    /// The lowest never-used address, skipping restored ones.
    fn take_unused(&mut self, net: Ipv6Net) -> Result<Ipv6Addr, V6Error> {
        let size = prefix_size(net);
        let base = u128::from(net.network());
        while self.next < size {
            let ip = Ipv6Addr::from(base + self.next);
            self.next += 1;
            if !self.assigned.contains_key(&ip) && !self.cooling_set.contains(&ip) {
                return Ok(ip);
            }
        }
        Err(V6Error::Exhausted {
            prefix: net,
            size: size - 1,
            assigned: self.assigned.len(),
            cooling: self.cooling_set.len(),
        })
    }

    /// Undoes a fresh [`V6Store::assign`] (the checkpoint could not be written): the address is
    /// reusable at once, since no pod ever used it.
    pub fn rollback_assign(&mut self, key: &IpamKey) {
        if let Some(ip) = self.by_key.remove(key) {
            self.assigned.remove(&ip);
            self.reusable.insert(ip);
        }
    }

    /// Puts a checkpointed assignment back (restart), before the prefix is known or after.
    ///
    /// # Errors
    /// [`V6Error::OutsidePrefix`] when the prefix is known and does not hold `ip`;
    /// [`V6Error::InUse`] when `ip` or `key` is taken.
    pub fn restore(
        &mut self,
        key: &IpamKey,
        metadata: PodMetadata,
        ip: Ipv6Addr,
        assigned_at: SystemTime,
    ) -> Result<(), V6Error> {
        if let Some(prefix) = &self.prefix
            && !prefix.prefix.contains(&ip)
        {
            return Err(V6Error::OutsidePrefix {
                ip,
                prefix: prefix.prefix,
            });
        }
        if self.by_key.contains_key(key) || self.assigned.contains_key(&ip) {
            return Err(V6Error::InUse {
                ip,
                key: key.clone(),
            });
        }
        self.reusable.remove(&ip);
        self.assigned.insert(
            ip,
            Held {
                key: key.clone(),
                metadata,
                assigned_at,
            },
        );
        self.by_key.insert(key.clone(), ip);
        Ok(())
    }

    /// Releases the address of `key` into cooldown (reusable at once with a zero cooldown).
    pub fn release(&mut self, key: &IpamKey) -> Option<V6Assignment> {
        let assignment = self.lookup(key)?;
        let ip = assignment.ip;
        self.by_key.remove(key);
        self.assigned.remove(&ip);
        if self.cooldown.is_zero() {
            self.reusable.insert(ip);
        } else {
            self.cooling.push_back((self.clock.now(), ip));
            self.cooling_set.insert(ip);
        }
        Some(assignment)
    }

    /// Undoes a [`V6Store::release`] (the checkpoint could not be written).
    pub fn rollback_release(&mut self, released: &V6Assignment) {
        let ip = released.ip;
        if self.assigned.contains_key(&ip) {
            return;
        }
        // A stale queue entry is skipped when it expires (no longer in the set).
        self.cooling_set.remove(&ip);
        self.reusable.remove(&ip);
        self.assigned.insert(
            ip,
            Held {
                key: released.key.clone(),
                metadata: released.metadata.clone(),
                assigned_at: released.assigned_at,
            },
        );
        self.by_key.insert(released.key.clone(), ip);
    }

    /// Every assignment, by address.
    pub fn assignments(&self) -> Vec<V6Assignment> {
        let mut all: Vec<V6Assignment> = self
            .assigned
            .keys()
            .filter_map(|ip| self.assignment(*ip))
            .collect();
        all.sort_by_key(|a| a.ip);
        all
    }

    /// Current counts (cooldowns that have passed are applied first).
    pub fn stats(&mut self) -> V6Stats {
        self.expire_cooldowns();
        self.stats_now()
    }

    /// Counts as they are, without applying passed cooldowns.
    pub fn stats_now(&self) -> V6Stats {
        V6Stats {
            assigned: self.assigned.len(),
            cooling: self.cooling_set.len(),
        }
    }

    /// Why no address can be assigned now, or `None` when one can.
    pub fn exhaustion(&mut self) -> Option<V6Error> {
        let Some(prefix) = &self.prefix else {
            return Some(V6Error::NoPrefix);
        };
        let net = prefix.prefix;
        self.expire_cooldowns();
        let used = (self.assigned.len() + self.cooling_set.len()) as u128;
        (used >= usable_addresses(net)).then(|| V6Error::Exhausted {
            prefix: net,
            size: usable_addresses(net),
            assigned: self.assigned.len(),
            cooling: self.cooling_set.len(),
        })
    }

    /// The keys holding an address.
    pub fn keys(&self) -> impl Iterator<Item = &IpamKey> {
        self.by_key.keys()
    }

    fn expire_cooldowns(&mut self) {
        let now = self.clock.now();
        while let Some(&(at, ip)) = self.cooling.front() {
            if now.duration_since(at) < self.cooldown {
                break;
            }
            self.cooling.pop_front();
            if self.cooling_set.remove(&ip) && !self.assigned.contains_key(&ip) {
                self.reusable.insert(ip);
            }
        }
    }
}

/// How many addresses `net` has (2^48 for a /80).
fn prefix_size(net: Ipv6Net) -> u128 {
    1u128 << (128 - u32::from(net.prefix_len()))
}

/// How many addresses of `net` pods can get (all but the first).
pub fn usable_addresses(net: Ipv6Net) -> u128 {
    prefix_size(net) - 1
}

impl From<V6Assignment> for super::Assignment {
    fn from(a: V6Assignment) -> Self {
        Self {
            ip: std::net::IpAddr::V6(a.ip),
            key: a.key,
            metadata: a.metadata,
            assigned_at: a.assigned_at,
            eni_id: a.eni_id,
            device_number: a.device_number,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ManualClock;
    use super::*;

    fn key(n: u32) -> IpamKey {
        IpamKey {
            network_name: "aws-cni".into(),
            container_id: format!("c{n}"),
            if_name: "eth0".into(),
        }
    }

    fn meta(n: u32) -> PodMetadata {
        PodMetadata {
            namespace: "default".into(),
            name: format!("pod-{n}"),
            interfaces_count: 1,
        }
    }

    fn prefix(text: &str) -> V6Prefix {
        V6Prefix {
            eni_id: "eni-1".into(),
            device_number: 0,
            prefix: text.parse().unwrap(),
        }
    }

    fn store(cooldown: u64) -> (V6Store, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let mut s = V6Store::new(Duration::from_secs(cooldown), clock.clone());
        s.set_prefix(prefix("2001:db8:0:1:5::/80")).unwrap();
        (s, clock)
    }

    fn ip(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_come_in_order_from_the_prefix_skipping_its_first() {
        let (mut s, _) = store(30);
        let (a, fresh) = s.assign(&key(1), meta(1)).unwrap();
        assert!(fresh);
        assert_eq!(a.ip, ip("2001:db8:0:1:5::1"));
        assert_eq!((a.eni_id.as_str(), a.device_number), ("eni-1", 0));
        assert_eq!(
            s.assign(&key(2), meta(2)).unwrap().0.ip,
            ip("2001:db8:0:1:5::2")
        );
        // The same key gets the same address back.
        let (again, fresh) = s.assign(&key(1), meta(1)).unwrap();
        assert_eq!((again.ip, fresh), (a.ip, false));
        assert_eq!(
            s.stats(),
            V6Stats {
                assigned: 2,
                cooling: 0
            }
        );
    }

    #[test]
    fn a_released_address_cools_down_then_is_handed_out_first() {
        let (mut s, clock) = store(30);
        let first = s.assign(&key(1), meta(1)).unwrap().0.ip;
        s.assign(&key(2), meta(2)).unwrap();
        let released = s.release(&key(1)).unwrap();
        assert_eq!(released.ip, first);
        assert_eq!(
            s.stats(),
            V6Stats {
                assigned: 1,
                cooling: 1
            }
        );
        // While it cools, new pods get never-used addresses.
        assert_eq!(
            s.assign(&key(3), meta(3)).unwrap().0.ip,
            ip("2001:db8:0:1:5::3")
        );
        clock.advance(Duration::from_secs(30));
        assert_eq!(s.assign(&key(4), meta(4)).unwrap().0.ip, first);
        assert_eq!(
            s.stats(),
            V6Stats {
                assigned: 3,
                cooling: 0
            }
        );
        assert!(s.release(&key(9)).is_none());
    }

    #[test]
    fn rollbacks_undo_exactly() {
        let (mut s, _) = store(30);
        let a = s.assign(&key(1), meta(1)).unwrap().0;
        s.rollback_assign(&key(1));
        assert!(s.lookup(&key(1)).is_none());
        // Never used by a pod: reusable at once.
        assert_eq!(s.assign(&key(2), meta(2)).unwrap().0.ip, a.ip);
        let released = s.release(&key(2)).unwrap();
        s.rollback_release(&released);
        assert_eq!(s.lookup(&key(2)).unwrap().ip, a.ip);
        assert_eq!(
            s.stats(),
            V6Stats {
                assigned: 1,
                cooling: 0
            }
        );
        assert_eq!(s.assignments().len(), 1);
    }

    #[test]
    fn restored_addresses_are_never_handed_out_again() {
        let clock = Arc::new(ManualClock::new());
        let mut s = V6Store::new(Duration::from_secs(30), clock);
        // The checkpoint is read before the prefix is known.
        s.restore(
            &key(1),
            meta(1),
            ip("2001:db8:0:1:5::2"),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert!(matches!(
            s.restore(
                &key(1),
                meta(1),
                ip("2001:db8:0:1:5::3"),
                SystemTime::UNIX_EPOCH
            ),
            Err(V6Error::InUse { .. })
        ));
        assert_eq!(s.assign(&key(2), meta(2)), Err(V6Error::NoPrefix));
        s.set_prefix(prefix("2001:db8:0:1:5::/80")).unwrap();
        let got: Vec<Ipv6Addr> = (2..5)
            .map(|n| s.assign(&key(n), meta(n)).unwrap().0.ip)
            .collect();
        assert_eq!(
            got,
            [
                ip("2001:db8:0:1:5::1"),
                ip("2001:db8:0:1:5::3"),
                ip("2001:db8:0:1:5::4")
            ]
        );
        assert_eq!(s.lookup(&key(1)).unwrap().metadata, meta(1));
        // An address outside the prefix is refused.
        assert!(matches!(
            s.restore(&key(7), meta(7), ip("2001:db8::7"), SystemTime::UNIX_EPOCH),
            Err(V6Error::OutsidePrefix { .. })
        ));
        let mut other = V6Store::new(Duration::ZERO, Arc::new(ManualClock::new()));
        other
            .restore(&key(1), meta(1), ip("2001:db8::7"), SystemTime::UNIX_EPOCH)
            .unwrap();
        assert!(other.set_prefix(prefix("2001:db8:0:1:5::/80")).is_err());
    }

    #[test]
    fn exhaustion_is_reported_with_numbers() {
        let clock = Arc::new(ManualClock::new());
        let mut s = V6Store::new(Duration::from_secs(30), clock);
        // A /126 stands in for the /80 (the arithmetic is the same): 3 usable addresses.
        s.set_prefix(prefix("2001:db8::/126")).unwrap();
        for n in 1..4 {
            s.assign(&key(n), meta(n)).unwrap();
        }
        s.release(&key(1)).unwrap();
        let err = s.assign(&key(9), meta(9)).unwrap_err();
        assert_eq!(
            err,
            V6Error::Exhausted {
                prefix: "2001:db8::/126".parse().unwrap(),
                size: 3,
                assigned: 2,
                cooling: 1
            }
        );
        assert!(err.to_string().contains("cooling down (1)"), "{err}");
    }
}
