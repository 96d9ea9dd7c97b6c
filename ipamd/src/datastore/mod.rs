//! The node's address book: ENIs → secondary /32 addresses and delegated /28 prefixes →
//! assignments keyed by (network name, container ID, ifname).
//!
//! A prefix's 16 addresses are addresses like the others, each remembering its prefix. With
//! prefix delegation new pods take prefix addresses first and secondary ones (the fallback of a
//! fragmented subnet, or left from before the switch) when none is left; without it, secondary
//! addresses only, as in the reference (prefixes left from prefix delegation serve the pods that
//! hold them until they go). A prefix leaves the store whole, when none of its addresses is
//! assigned or cooling down.
//!
//! Every operation is O(log n) or amortized O(1); nothing scans all addresses:
//! - each ENI keeps an ordered set of its free addresses, and the store keeps the set of ENIs that
//!   have any, so an assignment takes the lowest free address of the lowest-numbered ENI. Pods
//!   pack onto the primary ENI first, which later lets emptied secondary ENIs be released (the
//!   reference picks at random and spreads pods, issue #2203);
//! - released addresses enter one FIFO cooling queue (all share one cooldown, so the queue is
//!   ordered by expiry) and move back to their ENI's free set when `IP_COOLDOWN_PERIOD` has passed.
//!   Cooling addresses are never assignable and are reported separately (the reference counts them
//!   as available, issue #2896).

mod clock;
#[cfg(test)]
mod tests;
mod types;
pub mod v6;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;

pub use self::clock::{Clock, ManualClock, SystemClock};
pub use self::types::{
    Assignment, CapacityNote, DatastoreError, EniSpec, EniView, IpamKey, NoAssignableIp,
    PodMetadata, PrefixView, Released, Stats,
};
use self::v6::{V6Assignment, V6Error, V6Prefix, V6Store};

#[derive(Debug, Clone)]
struct AssignedInfo {
    key: IpamKey,
    metadata: PodMetadata,
    assigned_at: SystemTime,
}

#[derive(Debug, Clone)]
enum AddrState {
    Free,
    Assigned(Box<AssignedInfo>),
    Cooling { seq: u64 },
}

/// Where an address came from: the two kinds an ENI can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A secondary private address.
    Secondary = 0,
    /// An address of a delegated prefix.
    Prefix = 1,
}

#[derive(Debug, Clone)]
struct Addr {
    device: u32,
    /// The delegated prefix it belongs to; `None` for a secondary address.
    prefix: Option<Ipv4Net>,
    state: AddrState,
}

impl Addr {
    fn kind(&self) -> Kind {
        if self.prefix.is_some() {
            Kind::Prefix
        } else {
            Kind::Secondary
        }
    }
}

#[derive(Debug, Clone)]
struct Eni {
    spec: EniSpec,
    members: BTreeSet<Ipv4Addr>,
    /// Free addresses by kind ([`Kind`] as index).
    free: [BTreeSet<Ipv4Addr>; 2],
    /// Its delegated prefixes.
    prefixes: BTreeSet<Ipv4Net>,
    total: usize,
    assigned: usize,
    cooling: usize,
    /// No new pod gets an address of this ENI (its subnet was excluded from pod addresses);
    /// pods that hold one keep it.
    excluded: bool,
}

/// The address book. Not internally synchronized: the owner wraps it in a lock.
#[derive(Debug)]
pub struct Datastore {
    enis: BTreeMap<u32, Eni>,
    eni_devices: HashMap<String, u32>,
    addrs: HashMap<Ipv4Addr, Addr>,
    by_key: HashMap<IpamKey, Ipv4Addr>,
    cooling_queue: VecDeque<(Instant, u64, Ipv4Addr)>,
    /// Devices of the ENIs (not excluded) with a free address, by kind ([`Kind`] as index).
    with_free: [BTreeSet<u32>; 2],
    /// New pods take prefix addresses first (prefix delegation in force).
    prefix_mode: bool,
    seq: u64,
    total: usize,
    assigned: usize,
    cooling: usize,
    cooldown: Duration,
    clock: Arc<dyn Clock>,
    capacity_note: Arc<dyn CapacityNote>,
    /// IPv6 mode: pods' addresses come from this store (the primary ENI's /80) and the IPv4
    /// part stays empty.
    v6: Option<V6Store>,
}

/// The explanation appended to exhaustion messages in instance-metadata-only mode, where the
/// instance's ENI and IP limits are not known and ipamd cannot add addresses.
pub const IMDS_ONLY_CAPACITY_NOTE: &str = "in instance-metadata-only mode the pool is limited to the secondary IPs and prefixes that instance metadata lists (the instance's ENI x IP limit is not known and ipamd adds no ENIs, IPs or prefixes); assign more secondary IPs or prefixes to the node's ENIs to grow it";

/// The same for `DISABLE_NETWORK_RESOURCE_PROVISIONING=true`.
pub const PROVISIONING_DISABLED_CAPACITY_NOTE: &str = "with DISABLE_NETWORK_RESOURCE_PROVISIONING=true the pool is limited to the secondary IPs and prefixes that instance metadata lists (ipamd adds no ENIs, IPs or prefixes, and the instance's ENI x IP limit is not consulted); assign more secondary IPs or prefixes to the node's ENIs to grow it";

/// Whether a VPC reserves `ip` in `subnet`: the network address, the router (+1), DNS (+2), the
/// address reserved for future use (+3) and the last address. A pod given one of these would be
/// unreachable, so they never enter the pool, whatever EC2 or metadata claims.
pub fn is_reserved_in_subnet(ip: Ipv4Addr, subnet: ipnet::Ipv4Net) -> bool {
    if subnet.prefix_len() > 28 {
        return false;
    }
    let net = u32::from(subnet.network());
    let n = u32::from(ip);
    n.wrapping_sub(net) <= 3 || ip == subnet.broadcast()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Datastore {
    /// An empty store whose released addresses cool down for `cooldown`. `capacity_note` ends
    /// every exhaustion message (what limits the pool, and how to grow it).
    pub fn new(
        cooldown: Duration,
        clock: Arc<dyn Clock>,
        capacity_note: impl Into<String>,
    ) -> Self {
        Self {
            enis: BTreeMap::new(),
            eni_devices: HashMap::new(),
            addrs: HashMap::new(),
            by_key: HashMap::new(),
            cooling_queue: VecDeque::new(),
            with_free: [BTreeSet::new(), BTreeSet::new()],
            prefix_mode: false,
            seq: 0,
            total: 0,
            assigned: 0,
            cooling: 0,
            cooldown,
            clock,
            capacity_note: Arc::new(capacity_note.into()),
            v6: None,
        }
    }

    /// Switches to IPv6 mode (start-up, before anything is restored): pods get /128s of the
    /// primary ENI's /80 ([`Datastore::set_v6_prefix`]), as `ENABLE_IPv6=true` does.
    pub fn set_ipv6_mode(&mut self) {
        self.v6 = Some(V6Store::new(self.cooldown, Arc::clone(&self.clock)));
    }

    /// Whether pods get IPv6 addresses.
    pub fn ipv6_mode(&self) -> bool {
        self.v6.is_some()
    }

    /// Sets the /80 pods' IPv6 addresses come from.
    ///
    /// # Errors
    /// Not in IPv6 mode, or an address restored already is outside `prefix`.
    pub fn set_v6_prefix(&mut self, prefix: V6Prefix) -> Result<(), V6Error> {
        match &mut self.v6 {
            Some(v6) => v6.set_prefix(prefix),
            None => Err(V6Error::NotIpv6Mode),
        }
    }

    /// The /80 in use (IPv6 mode, once known).
    pub fn v6_prefix(&self) -> Option<&V6Prefix> {
        self.v6.as_ref()?.prefix()
    }

    /// Puts a checkpointed IPv6 assignment back (restart, after [`Datastore::set_v6_prefix`]).
    ///
    /// # Errors
    /// Not in IPv6 mode, outside the prefix, or the address or key is taken.
    pub fn restore_v6(
        &mut self,
        key: &IpamKey,
        metadata: PodMetadata,
        ip: std::net::Ipv6Addr,
        assigned_at: SystemTime,
    ) -> Result<Assignment, V6Error> {
        let v6 = self.v6.as_mut().ok_or(V6Error::NotIpv6Mode)?;
        v6.restore(key, metadata, ip, assigned_at)?;
        v6.lookup(key)
            .map(Assignment::from)
            .ok_or(V6Error::NoPrefix)
    }

    /// Replaces what ends exhaustion messages with a note computed when the message is made
    /// (EC2 mode: limits, subnet, EC2's health, whether the pool is growing).
    pub fn set_capacity_note(&mut self, note: Arc<dyn CapacityNote>) {
        self.capacity_note = note;
    }

    /// The configured cooldown.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// Makes new pods take prefix addresses first (`true`: prefix delegation is in force) or
    /// secondary addresses first.
    pub fn set_prefix_mode(&mut self, prefix_mode: bool) {
        self.prefix_mode = prefix_mode;
    }

    /// Whether new pods take prefix addresses first.
    pub fn prefix_mode(&self) -> bool {
        self.prefix_mode
    }

    /// The kinds new pods take, in order.
    fn kinds_in_order(&self) -> &'static [Kind] {
        if self.prefix_mode {
            &[Kind::Prefix, Kind::Secondary]
        } else {
            &[Kind::Secondary]
        }
    }

    /// Puts a free address back in its ENI's free set and the ENI among those with free
    /// addresses of that kind (unless it is excluded).
    fn offer(&mut self, device: u32, ip: Ipv4Addr, kind: Kind) {
        if let Some(eni) = self.enis.get_mut(&device) {
            eni.free[kind as usize].insert(ip);
            if !eni.excluded {
                self.with_free[kind as usize].insert(device);
            }
        }
    }

    /// Takes a free address out of its ENI's free set (it is assigned or leaves).
    fn withdraw(&mut self, device: u32, ip: Ipv4Addr, kind: Kind) {
        if let Some(eni) = self.enis.get_mut(&device) {
            eni.free[kind as usize].remove(&ip);
            if eni.free[kind as usize].is_empty() {
                self.with_free[kind as usize].remove(&device);
            }
        }
    }

    /// Adds an ENI with no addresses.
    ///
    /// # Errors
    /// [`DatastoreError::DuplicateEni`] when its id or device number is known.
    pub fn add_eni(&mut self, spec: EniSpec) -> Result<(), DatastoreError> {
        if self.eni_devices.contains_key(&spec.id) || self.enis.contains_key(&spec.device_number) {
            return Err(DatastoreError::DuplicateEni {
                id: spec.id,
                device_number: spec.device_number,
            });
        }
        self.eni_devices.insert(spec.id.clone(), spec.device_number);
        self.enis.insert(
            spec.device_number,
            Eni {
                spec,
                members: BTreeSet::new(),
                free: [BTreeSet::new(), BTreeSet::new()],
                prefixes: BTreeSet::new(),
                total: 0,
                assigned: 0,
                cooling: 0,
                excluded: false,
            },
        );
        Ok(())
    }

    /// Removes an ENI and its addresses; refused while any address is assigned.
    ///
    /// # Errors
    /// Unknown ENI, or ENI in use.
    pub fn remove_eni(&mut self, id: &str) -> Result<EniView, DatastoreError> {
        let device = self.device_of(id)?;
        let eni = self
            .enis
            .get(&device)
            .ok_or_else(|| DatastoreError::UnknownEni { id: id.to_owned() })?;
        if eni.assigned > 0 {
            return Err(DatastoreError::EniInUse {
                id: id.to_owned(),
                assigned: eni.assigned,
            });
        }
        let ips: Vec<Ipv4Addr> = eni.members.iter().copied().collect();
        for ip in ips {
            self.remove_ip(ip)?;
        }
        self.eni_devices.remove(id);
        for set in &mut self.with_free {
            set.remove(&device);
        }
        let eni = self
            .enis
            .remove(&device)
            .ok_or_else(|| DatastoreError::UnknownEni { id: id.to_owned() })?;
        Ok(EniView {
            spec: eni.spec,
            total: 0,
            assigned: 0,
            cooling: 0,
            secondary: 0,
            prefixes: Vec::new(),
            excluded: eni.excluded,
        })
    }

    fn device_of(&self, id: &str) -> Result<u32, DatastoreError> {
        self.eni_devices
            .get(id)
            .copied()
            .ok_or_else(|| DatastoreError::UnknownEni { id: id.to_owned() })
    }

    /// Adds a free secondary address to an ENI.
    ///
    /// # Errors
    /// Unknown ENI, address already known, the ENI's primary address, or outside its subnet.
    pub fn add_ip(&mut self, eni_id: &str, ip: Ipv4Addr) -> Result<(), DatastoreError> {
        let device = self.check_new_address(eni_id, ip)?;
        self.insert_free(device, ip, None);
        Ok(())
    }

    /// Adds a delegated /28 prefix to an ENI: its 16 addresses, free.
    ///
    /// # Errors
    /// Unknown ENI, not a /28, or one of its addresses cannot be a pod's (already known, the
    /// ENI's primary address, outside the subnet, reserved by the VPC): then nothing is added.
    pub fn add_prefix(&mut self, eni_id: &str, prefix: Ipv4Net) -> Result<(), DatastoreError> {
        let device = self.device_of(eni_id)?;
        if prefix.prefix_len() != 28 || prefix.trunc() != prefix {
            return Err(DatastoreError::NotAPrefix {
                prefix,
                eni: eni_id.to_owned(),
            });
        }
        let ips: Vec<Ipv4Addr> = prefix_addresses(prefix).collect();
        for ip in &ips {
            self.check_new_address(eni_id, *ip)?;
        }
        if let Some(eni) = self.enis.get_mut(&device) {
            eni.prefixes.insert(prefix);
        }
        for ip in ips {
            self.insert_free(device, ip, Some(prefix));
        }
        Ok(())
    }

    /// Removes a delegated prefix whose addresses are all free (none assigned or cooling):
    /// it is given back to EC2 whole.
    ///
    /// # Errors
    /// Unknown prefix, or one of its addresses is assigned or cooling down.
    pub fn remove_prefix(&mut self, eni_id: &str, prefix: Ipv4Net) -> Result<(), DatastoreError> {
        let device = self.device_of(eni_id)?;
        if !self
            .enis
            .get(&device)
            .is_some_and(|e| e.prefixes.contains(&prefix))
        {
            return Err(DatastoreError::UnknownPrefix {
                prefix,
                eni: eni_id.to_owned(),
            });
        }
        let busy = prefix_addresses(prefix).find(|ip| {
            self.addrs
                .get(ip)
                .is_some_and(|a| !matches!(a.state, AddrState::Free))
        });
        if let Some(ip) = busy {
            return Err(DatastoreError::PrefixInUse {
                prefix,
                eni: eni_id.to_owned(),
                ip,
            });
        }
        for ip in prefix_addresses(prefix) {
            if self.addrs.contains_key(&ip) {
                self.remove_ip(ip)?;
            }
        }
        if let Some(eni) = self.enis.get_mut(&device) {
            eni.prefixes.remove(&prefix);
        }
        Ok(())
    }

    /// The device of `eni_id` when `ip` may join it as a pod address.
    fn check_new_address(&self, eni_id: &str, ip: Ipv4Addr) -> Result<u32, DatastoreError> {
        let device = self.device_of(eni_id)?;
        if let Some(existing) = self.addrs.get(&ip) {
            let eni = self
                .enis
                .get(&existing.device)
                .map(|e| e.spec.id.clone())
                .unwrap_or_default();
            return Err(DatastoreError::DuplicateIp { ip, eni });
        }
        let eni = self
            .enis
            .get(&device)
            .ok_or_else(|| DatastoreError::UnknownEni {
                id: eni_id.to_owned(),
            })?;
        if ip == eni.spec.primary_ip {
            return Err(DatastoreError::PrimaryIp {
                ip,
                eni: eni_id.to_owned(),
            });
        }
        if !eni.spec.subnet.contains(&ip) {
            return Err(DatastoreError::OutsideSubnet {
                ip,
                eni: eni_id.to_owned(),
                subnet: eni.spec.subnet,
            });
        }
        if is_reserved_in_subnet(ip, eni.spec.subnet) {
            return Err(DatastoreError::ReservedIp {
                ip,
                eni: eni_id.to_owned(),
                subnet: eni.spec.subnet,
            });
        }
        Ok(device)
    }

    /// Records a checked new address as free on ENI `device`.
    fn insert_free(&mut self, device: u32, ip: Ipv4Addr, prefix: Option<Ipv4Net>) {
        let addr = Addr {
            device,
            prefix,
            state: AddrState::Free,
        };
        let kind = addr.kind();
        self.addrs.insert(ip, addr);
        if let Some(eni) = self.enis.get_mut(&device) {
            eni.members.insert(ip);
            eni.total += 1;
        }
        self.offer(device, ip, kind);
        self.total += 1;
    }

    /// Removes a free or cooling address (it left the ENI). Assigned addresses are never removed.
    ///
    /// # Errors
    /// Unknown or assigned address.
    pub fn remove_ip(&mut self, ip: Ipv4Addr) -> Result<(), DatastoreError> {
        let addr = self
            .addrs
            .get(&ip)
            .ok_or(DatastoreError::UnknownIp { ip })?;
        if let AddrState::Assigned(info) = &addr.state {
            return Err(DatastoreError::IpAssigned {
                ip,
                key: info.key.clone(),
            });
        }
        let device = addr.device;
        let kind = addr.kind();
        let was_cooling = matches!(addr.state, AddrState::Cooling { .. });
        self.addrs.remove(&ip);
        self.total -= 1;
        if !was_cooling {
            self.withdraw(device, ip, kind);
        }
        if let Some(eni) = self.enis.get_mut(&device) {
            eni.total -= 1;
            eni.members.remove(&ip);
            if was_cooling {
                eni.cooling -= 1;
            }
        }
        if was_cooling {
            // Its queue entry goes stale and is skipped when it reaches the front.
            self.cooling -= 1;
        }
        Ok(())
    }

    /// Moves addresses whose cooldown has passed back to their ENI's free set.
    fn expire_cooldowns(&mut self) {
        let now = self.clock.now();
        while let Some(&(released_at, seq, ip)) = self.cooling_queue.front() {
            if now.saturating_duration_since(released_at) < self.cooldown {
                break;
            }
            self.cooling_queue.pop_front();
            // A stale entry (the address was removed, or cooled and was assigned again since).
            if self
                .addrs
                .get(&ip)
                .is_some_and(|a| matches!(a.state, AddrState::Cooling { seq: s } if s == seq))
            {
                self.set_free(ip);
            }
        }
    }

    /// Makes an assigned or cooling address free: it leaves the counts of the state it was in
    /// (the pool's and its ENI's) and joins its ENI's free set, offered to new pods unless the
    /// ENI is excluded.
    fn set_free(&mut self, ip: Ipv4Addr) {
        let Some(addr) = self.addrs.get_mut(&ip) else {
            return;
        };
        let was_cooling = match std::mem::replace(&mut addr.state, AddrState::Free) {
            AddrState::Cooling { .. } => true,
            AddrState::Assigned(_) => false,
            AddrState::Free => return,
        };
        let device = addr.device;
        let kind = addr.kind();
        if was_cooling {
            self.cooling -= 1;
        } else {
            self.assigned -= 1;
        }
        if let Some(eni) = self.enis.get_mut(&device) {
            if was_cooling {
                eni.cooling -= 1;
            } else {
                eni.assigned -= 1;
            }
        }
        self.offer(device, ip, kind);
    }

    fn assignment(&self, ip: Ipv4Addr, device: u32, info: &AssignedInfo) -> Assignment {
        let eni_id = self
            .enis
            .get(&device)
            .map(|e| e.spec.id.clone())
            .unwrap_or_default();
        Assignment {
            ip: IpAddr::V4(ip),
            key: info.key.clone(),
            metadata: info.metadata.clone(),
            assigned_at: info.assigned_at,
            eni_id,
            device_number: device,
        }
    }

    /// The assignment of `key`, if any.
    pub fn lookup(&self, key: &IpamKey) -> Option<Assignment> {
        if let Some(v6) = &self.v6 {
            return v6.lookup(key).map(Assignment::from);
        }
        let ip = *self.by_key.get(key)?;
        let addr = self.addrs.get(&ip)?;
        match &addr.state {
            AddrState::Assigned(info) => Some(self.assignment(ip, addr.device, info)),
            _ => None,
        }
    }

    /// Assigns an address to `key`. A key that already holds one gets the same address back
    /// (`false` in the second field); otherwise the lowest free address of the lowest-numbered
    /// ENI that has one (`true`), of the mode's own kind if any is free.
    ///
    /// # Errors
    /// [`NoAssignableIp`] with the reason, in numbers.
    pub fn assign(
        &mut self,
        key: &IpamKey,
        metadata: PodMetadata,
    ) -> Result<(Assignment, bool), NoAssignableIp> {
        if let Some(v6) = &mut self.v6 {
            return match v6.assign(key, metadata) {
                Ok((a, fresh)) => Ok((a.into(), fresh)),
                Err(e) => Err(NoAssignableIp {
                    message: e.to_string(),
                    stats: self.stats_now(),
                }),
            };
        }
        if let Some(existing) = self.lookup(key) {
            return Ok((existing, false));
        }
        self.expire_cooldowns();
        let found = self.kinds_in_order().iter().find_map(|&kind| {
            let device = *self.with_free[kind as usize].first()?;
            let ip = *self.enis.get(&device)?.free[kind as usize].first()?;
            Some((device, ip, kind))
        });
        let Some((device, ip, kind)) = found else {
            return Err(self.exhaustion());
        };
        self.withdraw(device, ip, kind);
        if let Some(eni) = self.enis.get_mut(&device) {
            eni.assigned += 1;
        }
        let assigned_at = self.clock.wall();
        Ok((
            self.record_assigned(ip, device, key, metadata, assigned_at),
            true,
        ))
    }

    /// Records `ip` of ENI `device` as assigned to `key`, once the ENI has counted it out of
    /// its free addresses and into its assigned ones.
    fn record_assigned(
        &mut self,
        ip: Ipv4Addr,
        device: u32,
        key: &IpamKey,
        metadata: PodMetadata,
        assigned_at: SystemTime,
    ) -> Assignment {
        self.assigned += 1;
        let info = AssignedInfo {
            key: key.clone(),
            metadata,
            assigned_at,
        };
        let assignment = self.assignment(ip, device, &info);
        if let Some(addr) = self.addrs.get_mut(&ip) {
            addr.state = AddrState::Assigned(Box::new(info));
        }
        self.by_key.insert(key.clone(), ip);
        assignment
    }

    /// Undoes a fresh [`Datastore::assign`] (the checkpoint could not be written): the address
    /// becomes free again at once, since no pod ever used it.
    pub fn rollback_assign(&mut self, key: &IpamKey) {
        if let Some(v6) = &mut self.v6 {
            v6.rollback_assign(key);
            return;
        }
        let Some(ip) = self.by_key.remove(key) else {
            return;
        };
        if self
            .addrs
            .get(&ip)
            .is_some_and(|a| matches!(a.state, AddrState::Assigned(_)))
        {
            self.set_free(ip);
        }
    }

    /// Puts a checkpointed assignment back (restart). The address must be known and free.
    ///
    /// # Errors
    /// Unknown address (not on any known ENI), address taken, or key already holding another.
    pub fn restore(
        &mut self,
        key: &IpamKey,
        metadata: PodMetadata,
        ip: Ipv4Addr,
        assigned_at: SystemTime,
    ) -> Result<Assignment, DatastoreError> {
        if let Some(&held) = self.by_key.get(key) {
            return Err(DatastoreError::KeyAssigned {
                key: key.clone(),
                ip: held,
            });
        }
        let addr = self
            .addrs
            .get(&ip)
            .ok_or(DatastoreError::UnknownIp { ip })?;
        match &addr.state {
            AddrState::Assigned(info) => {
                return Err(DatastoreError::IpAssigned {
                    ip,
                    key: info.key.clone(),
                });
            }
            AddrState::Cooling { .. } => {
                // Restore happens before any release; treat as taken to stay safe.
                return Err(DatastoreError::IpAssigned {
                    ip,
                    key: key.clone(),
                });
            }
            AddrState::Free => {}
        }
        let device = addr.device;
        let kind = addr.kind();
        self.withdraw(device, ip, kind);
        if let Some(eni) = self.enis.get_mut(&device) {
            eni.assigned += 1;
        }
        Ok(self.record_assigned(ip, device, key, metadata, assigned_at))
    }

    /// Releases the address of `key` into cooldown (or straight to free with a zero cooldown).
    /// `None` when the key holds nothing.
    pub fn release(&mut self, key: &IpamKey) -> Option<Released> {
        if let Some(v6) = &mut self.v6 {
            return v6.release(key).map(|a| Released {
                assignment: a.into(),
            });
        }
        let assignment = self.lookup(key)?;
        let IpAddr::V4(ip) = assignment.ip else {
            return None;
        };
        self.by_key.remove(key);
        let addr = self.addrs.get_mut(&ip)?;
        let device = addr.device;
        let kind = addr.kind();
        self.assigned -= 1;
        let eni = self.enis.get_mut(&device)?;
        eni.assigned -= 1;
        if self.cooldown.is_zero() {
            addr.state = AddrState::Free;
            self.offer(device, ip, kind);
        } else {
            self.seq += 1;
            addr.state = AddrState::Cooling { seq: self.seq };
            eni.cooling += 1;
            self.cooling += 1;
            self.cooling_queue
                .push_back((self.clock.now(), self.seq, ip));
        }
        Some(Released { assignment })
    }

    /// Undoes a [`Datastore::release`] (the checkpoint could not be written).
    pub fn rollback_release(&mut self, released: &Released) {
        let a = &released.assignment;
        let ip = match (a.ip, &mut self.v6) {
            (IpAddr::V6(ip), Some(v6)) => {
                v6.rollback_release(&V6Assignment {
                    ip,
                    key: a.key.clone(),
                    metadata: a.metadata.clone(),
                    assigned_at: a.assigned_at,
                    eni_id: a.eni_id.clone(),
                    device_number: a.device_number,
                });
                return;
            }
            (IpAddr::V4(ip), None) => ip,
            _ => return,
        };
        let Some(addr) = self.addrs.get_mut(&ip) else {
            return;
        };
        let device = addr.device;
        let kind = addr.kind();
        match addr.state {
            AddrState::Free => self.withdraw(device, ip, kind),
            AddrState::Cooling { .. } => {
                // The queue entry goes stale: the state no longer matches its sequence number.
                if let Some(eni) = self.enis.get_mut(&device) {
                    eni.cooling -= 1;
                }
                self.cooling -= 1;
            }
            AddrState::Assigned(_) => return,
        }
        let (Some(addr), Some(eni)) = (self.addrs.get_mut(&ip), self.enis.get_mut(&device)) else {
            return;
        };
        addr.state = AddrState::Assigned(Box::new(AssignedInfo {
            key: a.key.clone(),
            metadata: a.metadata.clone(),
            assigned_at: a.assigned_at,
        }));
        eni.assigned += 1;
        self.assigned += 1;
        self.by_key.insert(a.key.clone(), ip);
    }

    /// Current counts (cooldowns that have passed are applied first).
    pub fn stats(&mut self) -> Stats {
        if let Some(v6) = &mut self.v6 {
            v6.stats();
        }
        self.expire_cooldowns();
        self.stats_now()
    }

    fn stats_now(&self) -> Stats {
        if let Some(v6) = &self.v6 {
            return v6_stats(v6);
        }
        Stats {
            enis: self.enis.len(),
            total: self.total,
            assigned: self.assigned,
            cooling: self.cooling,
            // Free addresses of excluded ENIs are in the pool only until the pool manager
            // gives them back, and free prefix addresses without prefix delegation until it
            // gives their prefix back; they are never assignable.
            assignable: self.total
                - self.assigned
                - self.cooling
                - self
                    .enis
                    .values()
                    .map(|e| {
                        if e.excluded {
                            e.free.iter().map(BTreeSet::len).sum::<usize>()
                        } else if self.prefix_mode {
                            0
                        } else {
                            e.free[Kind::Prefix as usize].len()
                        }
                    })
                    .sum::<usize>(),
        }
    }

    /// Why nothing is assignable, or `None` when something is.
    pub fn exhaustion_reason(&mut self) -> Option<NoAssignableIp> {
        if let Some(v6) = &mut self.v6 {
            return v6.exhaustion().map(|e| NoAssignableIp {
                message: e.to_string(),
                stats: v6_stats(v6),
            });
        }
        self.expire_cooldowns();
        if self
            .kinds_in_order()
            .iter()
            .all(|k| self.with_free[*k as usize].is_empty())
        {
            Some(self.exhaustion())
        } else {
            None
        }
    }

    /// Remaining cooldown of the soonest and the latest valid cooling entries.
    fn cooling_window(&self) -> (Duration, Duration) {
        let now = self.clock.now();
        let valid = |&&(_, seq, ip): &&(Instant, u64, Ipv4Addr)| {
            self.addrs
                .get(&ip)
                .is_some_and(|a| matches!(a.state, AddrState::Cooling { seq: s } if s == seq))
        };
        let remaining = |released_at: Instant| {
            self.cooldown
                .saturating_sub(now.saturating_duration_since(released_at))
        };
        let first = self
            .cooling_queue
            .iter()
            .find(valid)
            .map_or(Duration::ZERO, |e| remaining(e.0));
        let last = self
            .cooling_queue
            .iter()
            .rev()
            .find(valid)
            .map_or(Duration::ZERO, |e| remaining(e.0));
        (first, last)
    }

    fn exhaustion(&self) -> NoAssignableIp {
        let s = self.stats_now();
        let ips_on_enis = format!(
            "{} on {}",
            plural(s.total, "IP", "IPs"),
            plural(s.enis, "ENI", "ENIs")
        );
        let note = self
            .capacity_note
            .note(&s)
            .map(|n| format!("; {n}"))
            .unwrap_or_default();
        let cooldown_secs = self.cooldown.as_secs();
        let message = if s.total == 0 {
            format!(
                "no assignable IP: the node's {} {} no secondary IPs{note}",
                plural(s.enis, "ENI", "ENIs"),
                if s.enis == 1 { "has" } else { "have" }
            )
        } else if s.cooling == 0 {
            format!("no assignable IP: all {ips_on_enis} are assigned{note}")
        } else {
            let (first, last) = self.cooling_window();
            let (first, last) = (secs_ceil(first), secs_ceil(last));
            let cooling_part = format!(
                "{} of {} {} in cooldown for up to {last} s (IP_COOLDOWN_PERIOD={cooldown_secs} s; the first becomes assignable in {first} s)",
                s.cooling,
                plural(s.total, "IP", "IPs"),
                if s.cooling == 1 { "is" } else { "are" }
            );
            if s.assigned == 0 {
                format!(
                    "no assignable IP on {}: {cooling_part}{note}",
                    plural(s.enis, "ENI", "ENIs")
                )
            } else {
                format!(
                    "no assignable IP on {}: {} assigned and {cooling_part}{note}",
                    plural(s.enis, "ENI", "ENIs"),
                    plural(s.assigned, "IP is", "IPs are"),
                )
            }
        };
        NoAssignableIp { message, stats: s }
    }

    /// Removes up to `max` free secondary addresses (never assigned or cooling ones, never
    /// prefix addresses) so they can be given back to EC2: from the highest-numbered ENIs first
    /// (pods pack onto the lowest, so this empties ENIs that can then be freed), highest address
    /// first. Returns (ENI id, address).
    pub fn take_free_ips(&mut self, max: usize) -> Vec<(String, Ipv4Addr)> {
        self.expire_cooldowns();
        let mut taken = Vec::new();
        let secondary = Kind::Secondary as usize;
        let devices: Vec<u32> = self.with_free[secondary].iter().rev().copied().collect();
        for device in devices {
            if taken.len() >= max {
                break;
            }
            let Some(eni) = self.enis.get(&device) else {
                continue;
            };
            let id = eni.spec.id.clone();
            let ips: Vec<Ipv4Addr> = eni.free[secondary]
                .iter()
                .rev()
                .take(max - taken.len())
                .copied()
                .collect();
            for ip in ips {
                if self.remove_ip(ip).is_ok() {
                    taken.push((id.clone(), ip));
                }
            }
        }
        taken
    }

    /// Removes up to `max` prefixes none of whose addresses is assigned or cooling down, so
    /// they can be given back to EC2: highest-numbered ENIs first, highest prefix first.
    /// Returns (ENI id, prefix).
    pub fn take_free_prefixes(&mut self, max: usize) -> Vec<(String, Ipv4Net)> {
        self.expire_cooldowns();
        let candidates: Vec<(String, Ipv4Net)> = self
            .enis
            .values()
            .rev()
            .flat_map(|e| e.prefixes.iter().rev().map(|p| (e.spec.id.clone(), *p)))
            .collect();
        let mut taken = Vec::new();
        for (eni, prefix) in candidates {
            if taken.len() >= max {
                break;
            }
            if self.remove_prefix(&eni, prefix).is_ok() {
                taken.push((eni, prefix));
            }
        }
        taken
    }

    /// Stops (`true`) or resumes handing out addresses of an ENI to new pods; pods that hold
    /// one keep it. Returns whether the ENI is known.
    pub fn set_excluded(&mut self, id: &str, excluded: bool) -> bool {
        let Some(&device) = self.eni_devices.get(id) else {
            return false;
        };
        let Some(eni) = self.enis.get_mut(&device) else {
            return false;
        };
        eni.excluded = excluded;
        for (set, free) in self.with_free.iter_mut().zip(&eni.free) {
            if excluded || free.is_empty() {
                set.remove(&device);
            } else {
                set.insert(device);
            }
        }
        true
    }

    /// Removes every free secondary address of one ENI (not assigned or cooling ones) so they
    /// can be given back to EC2.
    pub fn take_free_ips_of(&mut self, id: &str) -> Vec<Ipv4Addr> {
        self.expire_cooldowns();
        let Some(eni) = self.eni_devices.get(id).and_then(|d| self.enis.get(d)) else {
            return Vec::new();
        };
        let ips: Vec<Ipv4Addr> = eni.free[Kind::Secondary as usize].iter().copied().collect();
        ips.into_iter()
            .filter(|ip| self.remove_ip(*ip).is_ok())
            .collect()
    }

    /// Removes every prefix of one ENI none of whose addresses is assigned or cooling down.
    pub fn take_free_prefixes_of(&mut self, id: &str) -> Vec<Ipv4Net> {
        self.expire_cooldowns();
        let Some(eni) = self.eni_devices.get(id).and_then(|d| self.enis.get(d)) else {
            return Vec::new();
        };
        let prefixes: Vec<Ipv4Net> = eni.prefixes.iter().copied().collect();
        prefixes
            .into_iter()
            .filter(|p| self.remove_prefix(id, *p).is_ok())
            .collect()
    }

    /// Every assignment (for the checkpoint), ordered by address.
    pub fn assignments(&self) -> Vec<Assignment> {
        if let Some(v6) = &self.v6 {
            return v6.assignments().into_iter().map(Assignment::from).collect();
        }
        let mut out: Vec<Assignment> = self
            .by_key
            .values()
            .filter_map(|ip| {
                let addr = self.addrs.get(ip)?;
                match &addr.state {
                    AddrState::Assigned(info) => Some(self.assignment(*ip, addr.device, info)),
                    _ => None,
                }
            })
            .collect();
        out.sort_by_key(|a| a.ip);
        out
    }

    /// Keys of `network_name` (for CNI GC).
    pub fn keys_of_network(&self, network_name: &str) -> Vec<IpamKey> {
        let keys: Box<dyn Iterator<Item = &IpamKey>> = match &self.v6 {
            Some(v6) => Box::new(v6.keys()),
            None => Box::new(self.by_key.keys()),
        };
        let mut keys: Vec<IpamKey> = keys
            .filter(|k| k.network_name == network_name)
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// The ENIs, by device number.
    pub fn enis(&self) -> Vec<EniView> {
        self.enis.values().map(|e| self.view(e)).collect()
    }

    /// The ENI with this id.
    pub fn eni(&self, id: &str) -> Option<EniView> {
        let device = self.eni_devices.get(id)?;
        self.enis.get(device).map(|e| self.view(e))
    }

    fn view(&self, e: &Eni) -> EniView {
        let prefixes = e
            .prefixes
            .iter()
            .map(|p| {
                let mut use_ = PrefixView {
                    prefix: *p,
                    assigned: 0,
                    cooling: 0,
                };
                for ip in prefix_addresses(*p) {
                    match self.addrs.get(&ip).map(|a| &a.state) {
                        Some(AddrState::Assigned(_)) => use_.assigned += 1,
                        Some(AddrState::Cooling { .. }) => use_.cooling += 1,
                        _ => {}
                    }
                }
                use_
            })
            .collect::<Vec<_>>();
        EniView {
            spec: e.spec.clone(),
            total: e.total,
            assigned: e.assigned,
            cooling: e.cooling,
            secondary: e.total - PREFIX_SIZE * prefixes.len(),
            prefixes,
            excluded: e.excluded,
        }
    }

    /// The addresses of an ENI (secondary and prefix ones) with whether each is assigned.
    pub fn eni_addresses(&self, id: &str) -> Vec<(Ipv4Addr, Option<IpamKey>)> {
        self.addresses_of(id, |_| true)
    }

    /// The secondary addresses of an ENI with whether each is assigned (reconcile against
    /// metadata's and EC2's lists of secondary addresses; prefixes are reconciled whole).
    pub fn eni_secondary_addresses(&self, id: &str) -> Vec<(Ipv4Addr, Option<IpamKey>)> {
        self.addresses_of(id, |a| a.prefix.is_none())
    }

    fn addresses_of(
        &self,
        id: &str,
        keep: impl Fn(&Addr) -> bool,
    ) -> Vec<(Ipv4Addr, Option<IpamKey>)> {
        let Some(eni) = self.eni_devices.get(id).and_then(|d| self.enis.get(d)) else {
            return Vec::new();
        };
        eni.members
            .iter()
            .filter_map(|ip| {
                let addr = self.addrs.get(ip)?;
                if !keep(addr) {
                    return None;
                }
                Some(match &addr.state {
                    AddrState::Assigned(info) => (*ip, Some(info.key.clone())),
                    _ => (*ip, None),
                })
            })
            .collect()
    }

    /// The delegated prefixes of an ENI.
    pub fn eni_prefixes(&self, id: &str) -> Vec<Ipv4Net> {
        self.eni_devices
            .get(id)
            .and_then(|d| self.enis.get(d))
            .map(|e| e.prefixes.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Addresses of one delegated prefix.
pub const PREFIX_SIZE: usize = 16;

/// The counts of IPv6 mode: the prefix's addresses (its first one is never handed out) as the
/// total, on one ENI once the prefix is known.
fn v6_stats(v6: &V6Store) -> Stats {
    let counts = v6.stats_now();
    let total = v6.prefix().map_or(0, |p| {
        usize::try_from(v6::usable_addresses(p.prefix)).unwrap_or(usize::MAX)
    });
    Stats {
        enis: usize::from(v6.prefix().is_some()),
        total,
        assigned: counts.assigned,
        cooling: counts.cooling,
        assignable: total.saturating_sub(counts.assigned + counts.cooling),
    }
}

/// The addresses of `prefix`, lowest first.
fn prefix_addresses(prefix: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(prefix.network());
    (0..=u32::from(prefix.hostmask())).map(move |k| Ipv4Addr::from(first.wrapping_add(k)))
}
