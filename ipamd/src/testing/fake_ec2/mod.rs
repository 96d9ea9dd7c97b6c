//! A stateful, honest EC2 for unit tests. Like the real service (and unlike moto) it enforces
//! the instance type's ENI and per-ENI address limits, refuses taken device indexes, deleting
//! attached ENIs and detaching the primary ENI, hands out addresses from the subnet (never the
//! VPC-reserved ones) and runs out of them when told to. Tests make it throttle, fail with 5xx
//! or any other error, count and time every call, and change things out of band.
//!
//! [`FakeEc2::imds`] ([`views`]) is instance metadata answered from the same live state (what an ENI
//! attached through EC2 looks like to the instance), and [`FakeEc2::host`] is the instance's
//! links (the link of an attached ENI appears), so a pool manager under test sees one
//! consistent world.

mod api;
mod filters;
pub mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::cloud::ec2::{
    Ec2Error, Ec2ErrorKind, EniAttachment, EniStatus, InstanceTypeLimits, NetworkInterface, Tags,
};
use crate::datastore::is_reserved_in_subnet;
use crate::limits::{BUILTIN_LIMITS, builtin};
use crate::mac::MacAddr;

/// The fake VPC's id and CIDR.
pub const VPC_ID: &str = "vpc-0fake";
/// The fake VPC's CIDR.
pub const VPC_CIDR: &str = "10.0.0.0/16";
/// The default subnet's id.
pub const SUBNET_ID: &str = "subnet-0fake";
/// The default subnet's CIDR.
pub const SUBNET_CIDR: &str = "10.0.0.0/24";
/// The security group of every instance.
pub const SECURITY_GROUP: &str = "sg-0fake";

/// The Availability Zone of the default subnet (and of every instance).
pub const AVAILABILITY_ZONE: &str = "us-west-2a";

#[derive(Debug, Clone)]
struct Subnet {
    cidr: Ipv4Net,
    availability_zone: String,
    tags: Tags,
    /// Addresses still allocatable before InsufficientFreeAddressesInSubnet (None = the CIDR).
    capacity: Option<usize>,
    /// Every aligned /28 has an address in use by something outside the fake (fragmented):
    /// prefixes fail with InsufficientCidrBlocks, single addresses still come.
    fragmented: bool,
}

#[derive(Debug, Clone)]
struct Att {
    id: String,
    instance: String,
    device: u32,
    delete_on_termination: bool,
}

/// One ENI of the fake.
#[derive(Debug, Clone)]
pub struct FakeEni {
    /// `eni-…`.
    pub id: String,
    /// MAC.
    pub mac: MacAddr,
    /// Description.
    pub description: String,
    /// Subnet.
    pub subnet_id: String,
    /// Addresses, primary first.
    pub ips: Vec<Ipv4Addr>,
    /// Delegated /28 prefixes.
    pub prefixes: Vec<Ipv4Net>,
    /// Delegated IPv6 /80s.
    pub ipv6_prefixes: Vec<Ipv6Net>,
    /// Tags.
    pub tags: Tags,
    /// Security groups (the instance's for its primary ENI).
    pub security_groups: Vec<String>,
    attachment: Option<Att>,
}

impl FakeEni {
    /// Attached to this instance at this device index.
    pub fn attached_to(&self) -> Option<(&str, u32)> {
        self.attachment
            .as_ref()
            .map(|a| (a.instance.as_str(), a.device))
    }

    /// DeleteOnTermination of its attachment.
    pub fn delete_on_termination(&self) -> bool {
        self.attachment
            .as_ref()
            .is_some_and(|a| a.delete_on_termination)
    }
}

#[derive(Debug, Clone)]
struct Injected {
    api: String,
    kind: Ec2ErrorKind,
    remaining: Option<u32>,
}

#[derive(Debug)]
struct World {
    types: HashMap<String, InstanceTypeLimits>,
    subnets: BTreeMap<String, Subnet>,
    instances: BTreeMap<String, String>,
    enis: BTreeMap<String, FakeEni>,
    tokens: HashMap<String, String>,
    next: u64,
    failures: Vec<Injected>,
    calls: Vec<(&'static str, tokio::time::Instant)>,
    imds_hidden: BTreeSet<String>,
    links_hidden: BTreeSet<String>,
    hide_new_links: bool,
}

/// The fake service; clones share state.
#[derive(Debug, Clone)]
pub struct FakeEc2 {
    world: Arc<Mutex<World>>,
}

impl Default for FakeEc2 {
    fn default() -> Self {
        Self::new()
    }
}

/// The fake VPC's IPv6 block.
pub const VPC_IPV6_CIDR: &str = "2600:1f14:d00:ab00::/56";

/// The /64 of the `ordinal`-th subnet.
fn subnet_ipv6_block(ordinal: usize) -> Ipv6Net {
    let vpc: Ipv6Net = VPC_IPV6_CIDR.parse().unwrap_or_default();
    let base = u128::from(vpc.network()) + ((ordinal as u128 & 0xff) << 64);
    Ipv6Net::new(std::net::Ipv6Addr::from(base), 64).unwrap_or_default()
}

fn err(api: &'static str, code: &str, message: impl Into<String>) -> Ec2Error {
    let status = match Ec2ErrorKind::classify(code, None) {
        Ec2ErrorKind::Throttled => 503,
        Ec2ErrorKind::Server => 500,
        Ec2ErrorKind::Unauthorized => 403,
        _ => 400,
    };
    Ec2Error::from_code(api, code, message, Some(status))
}

/// Puts `eni` into `set` or takes it out.
fn set_membership(set: &mut BTreeSet<String>, eni: &str, member: bool) {
    if member {
        set.insert(eni.to_owned());
    } else {
        set.remove(eni);
    }
}

impl FakeEc2 {
    /// A VPC with one subnet and no instances; instance types from the built-in table.
    pub fn new() -> Self {
        let types = BUILTIN_LIMITS
            .iter()
            .filter_map(|(t, ..)| Some(((*t).to_owned(), builtin(t)?)))
            .collect();
        let subnets = BTreeMap::from([(
            SUBNET_ID.to_owned(),
            Subnet {
                cidr: SUBNET_CIDR.parse().unwrap(),
                availability_zone: AVAILABILITY_ZONE.to_owned(),
                tags: Tags::new(),
                capacity: None,
                fragmented: false,
            },
        )]);
        Self {
            world: Arc::new(Mutex::new(World {
                types,
                subnets,
                instances: BTreeMap::new(),
                enis: BTreeMap::new(),
                tokens: HashMap::new(),
                next: 1,
                failures: Vec::new(),
                calls: Vec::new(),
                imds_hidden: BTreeSet::new(),
                links_hidden: BTreeSet::new(),
                hide_new_links: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Launches an instance with its primary ENI (device 0, no secondary addresses); returns
    /// the instance id.
    pub fn launch(&self, instance_type: &str) -> String {
        let mut w = self.lock();
        let n = w.next;
        w.next += 1;
        let id = format!("i-{n:017x}");
        w.instances.insert(id.clone(), instance_type.to_owned());
        let eni = w
            .new_eni(SUBNET_ID, "Primary network interface", 0, 0)
            .unwrap();
        w.enis.get_mut(&eni).unwrap().attachment = Some(Att {
            id: format!("eni-attach-{n:017x}"),
            instance: id.clone(),
            device: 0,
            delete_on_termination: true,
        });
        id
    }

    /// Makes the next `count` calls of `api` (`"*"` = any) fail with an error of `kind`.
    pub fn fail_next(&self, api: &str, kind: Ec2ErrorKind, count: u32) {
        self.lock().failures.push(Injected {
            api: api.to_owned(),
            kind,
            remaining: Some(count),
        });
    }

    /// Makes every call of `api` (`"*"` = any) fail with an error of `kind` until [`Self::heal`].
    pub fn fail_always(&self, api: &str, kind: Ec2ErrorKind) {
        self.lock().failures.push(Injected {
            api: api.to_owned(),
            kind,
            remaining: None,
        });
    }

    /// Stops every injected failure.
    pub fn heal(&self) {
        self.lock().failures.clear();
    }

    /// Lets the subnet hand out only `n` more addresses.
    pub fn set_subnet_capacity(&self, n: usize) {
        self.set_capacity_of(SUBNET_ID, n);
    }

    /// Fragments subnet `id`: no aligned /28 is free any more.
    pub fn fragment_subnet(&self, id: &str) {
        self.lock().subnets.get_mut(id).unwrap().fragmented = true;
    }

    /// Lets subnet `id` hand out only `n` more addresses.
    pub fn set_capacity_of(&self, id: &str, n: usize) {
        self.lock().subnets.get_mut(id).unwrap().capacity = Some(n);
    }

    /// Adds a subnet of the VPC in `zone` with `tags`.
    pub fn add_subnet(&self, id: &str, cidr: &str, zone: &str, tags: &[(&str, &str)]) {
        self.lock().subnets.insert(
            id.to_owned(),
            Subnet {
                cidr: cidr.parse().unwrap(),
                availability_zone: zone.to_owned(),
                tags: tags
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                capacity: None,
                fragmented: false,
            },
        );
    }

    /// Sets a tag on a subnet.
    pub fn tag_subnet(&self, id: &str, key: &str, value: &str) {
        self.lock()
            .subnets
            .get_mut(id)
            .unwrap()
            .tags
            .insert(key.to_owned(), value.to_owned());
    }

    /// The CIDR of subnet `id`.
    pub fn subnet_cidr(&self, id: &str) -> Ipv4Net {
        self.lock().subnets[id].cidr
    }

    /// Hides an ENI from instance metadata (metadata lagging), or shows it again.
    pub fn hide_from_imds(&self, eni: &str, hidden: bool) {
        set_membership(&mut self.lock().imds_hidden, eni, hidden);
    }

    /// Keeps an ENI's link from appearing on the instance, or lets it appear.
    pub fn hide_link(&self, eni: &str, hidden: bool) {
        set_membership(&mut self.lock().links_hidden, eni, hidden);
    }

    /// Keeps the links of ENIs created from now on from appearing (`false`: they appear, and
    /// every hidden link shows).
    pub fn hide_new_links(&self, hide: bool) {
        let mut w = self.lock();
        w.hide_new_links = hide;
        if !hide {
            w.links_hidden.clear();
        }
    }

    /// Assigns a given address to an ENI behind ipamd's back.
    pub fn assign_ip_out_of_band(&self, eni: &str, ip: Ipv4Addr) {
        self.lock().enis.get_mut(eni).unwrap().ips.push(ip);
    }

    /// How many calls of `api` were made (`"*"` = all).
    pub fn calls(&self, api: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|(a, _)| api == "*" || *a == api)
            .count()
    }

    /// When each call of `api` was made (`"*"` = all).
    pub fn call_times(&self, api: &str) -> Vec<tokio::time::Instant> {
        self.lock()
            .calls
            .iter()
            .filter(|(a, _)| api == "*" || *a == api)
            .map(|(_, t)| *t)
            .collect()
    }

    /// An ENI.
    pub fn eni(&self, id: &str) -> Option<FakeEni> {
        self.lock().enis.get(id).cloned()
    }

    /// Every ENI.
    pub fn all_enis(&self) -> Vec<FakeEni> {
        self.lock().enis.values().cloned().collect()
    }

    /// The ENIs attached to an instance, by device index.
    pub fn attached(&self, instance: &str) -> Vec<FakeEni> {
        let mut v: Vec<FakeEni> = self
            .lock()
            .enis
            .values()
            .filter(|e| e.attached_to().is_some_and(|(i, _)| i == instance))
            .cloned()
            .collect();
        v.sort_by_key(|e| e.attached_to().map(|(_, d)| d));
        v
    }

    /// The instance's primary ENI.
    pub fn primary_eni(&self, instance: &str) -> FakeEni {
        self.attached(instance).remove(0)
    }

    /// Assigns addresses to an ENI behind ipamd's back (another tool, a human).
    pub fn assign_out_of_band(&self, eni: &str, count: u32) -> Vec<Ipv4Addr> {
        self.lock()
            .assign(eni, count, "AssignPrivateIpAddresses")
            .unwrap()
    }

    /// Unassigns an address behind ipamd's back.
    pub fn unassign_out_of_band(&self, eni: &str, ip: Ipv4Addr) {
        self.lock()
            .enis
            .get_mut(eni)
            .unwrap()
            .ips
            .retain(|x| *x != ip);
    }

    /// Creates an unattached ENI with tags and a description (a leaked ENI, say); returns its id.
    pub fn create_detached(&self, description: &str, tags: &[(&str, &str)]) -> String {
        let mut w = self.lock();
        let id = w.new_eni(SUBNET_ID, description, 0, 0).unwrap();
        w.enis.get_mut(&id).unwrap().tags = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        id
    }

    /// Sets a tag on an ENI behind ipamd's back.
    pub fn tag(&self, eni: &str, key: &str, value: &str) {
        self.lock()
            .enis
            .get_mut(eni)
            .unwrap()
            .tags
            .insert(key.to_owned(), value.to_owned());
    }

    /// Records the call and returns the injected failure for it, if any, else the fake's
    /// state, locked for the call.
    fn enter(&self, api: &'static str) -> Result<MutexGuard<'_, World>, Ec2Error> {
        let mut w = self.lock();
        w.calls.push((api, tokio::time::Instant::now()));
        let pos = w.failures.iter().position(|f| f.api == "*" || f.api == api);
        let Some(pos) = pos else { return Ok(w) };
        let kind = w.failures[pos].kind;
        if let Some(n) = w.failures[pos].remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                w.failures.remove(pos);
            }
        }
        Err(match kind {
            Ec2ErrorKind::Throttled => err(api, "RequestLimitExceeded", "Request limit exceeded."),
            Ec2ErrorKind::Server => err(api, "InternalError", "An internal error has occurred"),
            Ec2ErrorKind::SubnetFull => err(
                api,
                "InsufficientFreeAddressesInSubnet",
                format!(
                    "The specified subnet {SUBNET_ID} does not have enough free addresses to satisfy the request."
                ),
            ),
            Ec2ErrorKind::Unauthorized => err(
                api,
                "UnauthorizedOperation",
                format!("You are not authorized to perform this operation (ec2:{api})."),
            ),
            other => Ec2Error::new(api, other, "injected failure"),
        })
    }
}

impl World {
    fn new_eni(
        &mut self,
        subnet: &str,
        description: &str,
        secondary: u32,
        prefixes: u32,
    ) -> Result<String, Ec2Error> {
        const API: &str = "CreateNetworkInterface";
        if !self.subnets.contains_key(subnet) {
            return Err(err(
                API,
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{subnet}' does not exist"),
            ));
        }
        let n = self.next;
        self.next += 1;
        let id = format!("eni-{n:017x}");
        let mac: MacAddr = format!("02:fe:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff)
            .parse()
            .unwrap();
        self.enis.insert(
            id.clone(),
            FakeEni {
                id: id.clone(),
                mac,
                description: description.to_owned(),
                subnet_id: subnet.to_owned(),
                ips: Vec::new(),
                prefixes: Vec::new(),
                ipv6_prefixes: Vec::new(),
                tags: Tags::new(),
                security_groups: vec![SECURITY_GROUP.to_owned()],
                attachment: None,
            },
        );
        let assigned = self.assign(&id, 1 + secondary, API).and_then(|_| {
            if prefixes > 0 {
                self.assign_prefixes(&id, prefixes, API).map(drop)
            } else {
                Ok(())
            }
        });
        if let Err(e) = assigned {
            self.enis.remove(&id);
            return Err(e);
        }
        if self.hide_new_links {
            self.links_hidden.insert(id.clone());
        }
        Ok(id)
    }

    /// `AvailableIpAddressCount`: the CIDR's host addresses less EC2's reserved ones and the
    /// ENIs' addresses, capped by an injected capacity.
    fn available_in(&self, id: &str) -> usize {
        let subnet = &self.subnets[id];
        let used = self
            .enis
            .values()
            .filter(|e| e.subnet_id == id)
            .map(|e| e.ips.len() + 16 * e.prefixes.len())
            .sum::<usize>();
        let size = 1usize << (32 - u32::from(subnet.cidr.prefix_len()));
        let free = size.saturating_sub(5).saturating_sub(used);
        subnet.capacity.map_or(free, |c| c.min(free))
    }

    fn subnet_view(&self, id: &str) -> crate::cloud::ec2::Subnet {
        let s = &self.subnets[id];
        crate::cloud::ec2::Subnet {
            id: id.to_owned(),
            cidr: s.cidr,
            availability_zone: s.availability_zone.clone(),
            vpc_id: VPC_ID.to_owned(),
            available_ips: u32::try_from(self.available_in(id)).unwrap(),
            tags: s.tags.clone(),
        }
    }

    fn limits_of(&self, instance: &str) -> (u32, u32) {
        let t = self.instances.get(instance).cloned().unwrap_or_default();
        self.types
            .get(&t)
            .map_or((2, 2), |l| (l.max_enis, l.ipv4_per_eni))
    }

    /// The ENI, or EC2's NotFound error.
    pub(super) fn eni_mut(
        &mut self,
        eni_id: &str,
        api: &'static str,
    ) -> Result<&mut FakeEni, Ec2Error> {
        self.enis.get_mut(eni_id).ok_or_else(|| {
            err(
                api,
                "InvalidNetworkInterfaceID.NotFound",
                format!("The networkInterface ID '{eni_id}' does not exist"),
            )
        })
    }

    /// `UnassignPrivateIpAddresses`: every address (never the ENI's own) and prefix must be the
    /// ENI's, or nothing is freed (`InvalidParameterValue`).
    pub(super) fn unassign(
        &mut self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Net],
        api: &'static str,
    ) -> Result<(), Ec2Error> {
        let eni = self.eni_mut(eni_id, api)?;
        let stray_ip = ips
            .iter()
            .find(|ip| eni.ips.first() == Some(*ip) || !eni.ips.contains(ip))
            .map(ToString::to_string);
        let stray_prefix = prefixes
            .iter()
            .find(|p| !eni.prefixes.contains(p))
            .map(ToString::to_string);
        if let Some(stray) = stray_ip.or(stray_prefix) {
            return Err(err(
                api,
                "InvalidParameterValue",
                format!(
                    "Some of the specified addresses are not assigned to interface {eni_id}: {stray}"
                ),
            ));
        }
        eni.ips.retain(|ip| !ips.contains(ip));
        eni.prefixes.retain(|p| !prefixes.contains(p));
        Ok(())
    }

    /// Checks that the ENI has `count` free address slots (secondary addresses and prefixes
    /// each take one, within the instance type's IPv4 addresses per ENI); returns its subnet's
    /// id and description and the addresses ENIs hold in it.
    fn room_for(
        &mut self,
        eni_id: &str,
        count: u32,
        api: &'static str,
    ) -> Result<(String, Subnet, BTreeSet<Ipv4Addr>), Ec2Error> {
        let eni = self.eni_mut(eni_id, api)?.clone();
        let limit = match &eni.attachment {
            Some(a) => self.limits_of(&a.instance).1,
            None => 50,
        };
        let have = u32::try_from(eni.ips.len() + eni.prefixes.len()).unwrap();
        if have + count > limit {
            return Err(err(
                api,
                "PrivateIpAddressLimitExceeded",
                format!("Number of private addresses will exceed limit of {limit} for {eni_id}"),
            ));
        }
        let subnet = self.subnets.get(&eni.subnet_id).cloned().unwrap();
        let used = self.used_in(&eni.subnet_id);
        Ok((eni.subnet_id, subnet, used))
    }

    fn assign(
        &mut self,
        eni_id: &str,
        count: u32,
        api: &'static str,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        let (subnet_id, subnet, used) = self.room_for(eni_id, count, api)?;
        let mut fresh = Vec::new();
        for ip in subnet.cidr.hosts() {
            if fresh.len() == count as usize {
                break;
            }
            if !used.contains(&ip) && !is_reserved_in_subnet(ip, subnet.cidr) {
                fresh.push(ip);
            }
        }
        let found = fresh.len() == count as usize;
        self.take_capacity(&subnet_id, found, count as usize, api, false)?;
        self.enis.get_mut(eni_id).unwrap().ips.extend(&fresh);
        Ok(fresh)
    }

    /// Takes `addresses` from the subnet's injected capacity, or fails as EC2 does when they
    /// were not `found` or the capacity is short: `InsufficientCidrBlocks` for prefixes,
    /// `InsufficientFreeAddressesInSubnet` for addresses.
    fn take_capacity(
        &mut self,
        subnet_id: &str,
        found: bool,
        addresses: usize,
        api: &'static str,
        prefixes: bool,
    ) -> Result<(), Ec2Error> {
        let capacity = self
            .subnets
            .get_mut(subnet_id)
            .and_then(|s| s.capacity.as_mut());
        let short = capacity.as_ref().is_some_and(|c| **c < addresses);
        if !found || short {
            return Err(if prefixes {
                err(
                    api,
                    "InsufficientCidrBlocks",
                    format!(
                        "There are not enough free cidr blocks in the specified subnet {subnet_id} to satisfy the request."
                    ),
                )
            } else {
                err(
                    api,
                    "InsufficientFreeAddressesInSubnet",
                    format!(
                        "The specified subnet {subnet_id} does not have enough free addresses to satisfy the request."
                    ),
                )
            });
        }
        if let Some(c) = capacity {
            *c -= addresses;
        }
        Ok(())
    }

    /// Every address ENIs hold in the subnet, their prefixes' included.
    fn used_in(&self, subnet_id: &str) -> BTreeSet<Ipv4Addr> {
        self.enis
            .values()
            .filter(|e| e.subnet_id == subnet_id)
            .flat_map(|e| {
                let prefixed = e.prefixes.iter().flat_map(|p| {
                    let first = u32::from(p.network());
                    (0..16).map(move |k| Ipv4Addr::from(first + k))
                });
                e.ips.iter().copied().chain(prefixed)
            })
            .collect()
    }

    /// Delegates `count` aligned /28s of the ENI's subnet (each takes one of the ENI's address
    /// slots): EC2's `InsufficientCidrBlocks` when fewer are free, nothing assigned then.
    fn assign_prefixes(
        &mut self,
        eni_id: &str,
        count: u32,
        api: &'static str,
    ) -> Result<Vec<Ipv4Net>, Ec2Error> {
        let (subnet_id, subnet, used) = self.room_for(eni_id, count, api)?;
        let fresh: Vec<Ipv4Net> = subnet
            .cidr
            .subnets(28)
            .into_iter()
            .flatten()
            .filter(|p| {
                if subnet.fragmented {
                    return false;
                }
                let first = u32::from(p.network());
                (0..16).all(|k| {
                    let ip = Ipv4Addr::from(first + k);
                    !used.contains(&ip) && !is_reserved_in_subnet(ip, subnet.cidr)
                })
            })
            .take(count as usize)
            .collect();
        let found = fresh.len() == count as usize;
        self.take_capacity(&subnet_id, found, 16 * count as usize, api, true)?;
        self.enis.get_mut(eni_id).unwrap().prefixes.extend(&fresh);
        Ok(fresh)
    }

    /// Delegates `count` /80s of the subnet's IPv6 /64 (the n-th /64 of [`VPC_IPV6_CIDR`] for the
    /// n-th subnet), lowest free first.
    fn assign_ipv6_prefixes(
        &mut self,
        eni_id: &str,
        count: u32,
        api: &'static str,
    ) -> Result<Vec<Ipv6Net>, Ec2Error> {
        let Some(eni) = self.enis.get(eni_id) else {
            return Err(err(
                api,
                "InvalidNetworkInterfaceID.NotFound",
                format!("The networkInterface ID '{eni_id}' does not exist"),
            ));
        };
        let ordinal = self
            .subnets
            .keys()
            .position(|id| *id == eni.subnet_id)
            .unwrap_or(0);
        let block = subnet_ipv6_block(ordinal);
        let used: BTreeSet<Ipv6Net> = self
            .enis
            .values()
            .flat_map(|e| e.ipv6_prefixes.iter().copied())
            .collect();
        let fresh: Vec<Ipv6Net> = block
            .subnets(80)
            .into_iter()
            .flatten()
            .filter(|p| !used.contains(p))
            .take(count as usize)
            .collect();
        if fresh.len() < count as usize {
            return Err(err(
                api,
                "InsufficientCidrBlocks",
                format!("There are not enough free cidr blocks in the specified subnet ({block})"),
            ));
        }
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.ipv6_prefixes.extend(&fresh);
        }
        Ok(fresh)
    }

    fn view(&self, e: &FakeEni) -> NetworkInterface {
        NetworkInterface {
            id: e.id.clone(),
            mac: Some(e.mac),
            description: e.description.clone(),
            status: if e.attachment.is_some() {
                EniStatus::InUse
            } else {
                EniStatus::Available
            },
            subnet_id: e.subnet_id.clone(),
            vpc_id: VPC_ID.to_owned(),
            primary_ip: e.ips.first().copied(),
            private_ips: e.ips.clone(),
            ipv4_prefixes: e.prefixes.clone(),
            ipv6_prefixes: e.ipv6_prefixes.clone(),
            attachment: e.attachment.as_ref().map(|a| EniAttachment {
                attachment_id: a.id.clone(),
                instance_id: Some(a.instance.clone()),
                device_index: Some(a.device),
                network_card_index: Some(0),
                status: "attached".into(),
                delete_on_termination: a.delete_on_termination,
            }),
            tags: e.tags.clone(),
            security_groups: e.security_groups.clone(),
        }
    }
}
