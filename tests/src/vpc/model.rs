//! What the simulated VPC knows about EC2's state: ENIs (MAC, attachment, private addresses,
//! IPv6 addresses and prefixes, tags), subnets (with their IPv6 blocks) and instances, as read
//! from moto, plus the instance metadata view derived from it (the [`NodeDescription`] the IMDS
//! emulator serves for one instance).
//!
//! These are the harness's own types, filled from aws-sdk-ec2's, so tests and the watcher never
//! juggle `Option`s of SDK structs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnet::{Ipv4Net, Ipv6Net};

use test_support::metadata::{DEFAULT_ACCOUNT_ID, InterfaceDescription, NodeDescription};

/// Where an ENI is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniAttachment {
    /// `eni-attach-...`.
    pub attachment_id: String,
    /// The instance it is attached to.
    pub instance_id: String,
    /// `DeviceIndex` (0 = primary ENI).
    pub device_index: u32,
    /// `NetworkCardIndex`.
    pub network_card: u32,
}

/// One ENI as EC2 (moto) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniState {
    /// `eni-...`.
    pub id: String,
    /// Lowercase MAC address.
    pub mac: String,
    /// `available`, `in-use`, ...
    pub status: String,
    /// The ENI's description (`aws-K8S-<instance id>` for ENIs ipamd created).
    pub description: String,
    /// Its subnet.
    pub subnet_id: String,
    /// Its VPC.
    pub vpc_id: String,
    /// Private IPv4 addresses, the primary one first.
    pub private_ips: Vec<Ipv4Addr>,
    /// IPv4 prefixes (/28) delegated to the ENI, in EC2's order.
    pub ipv4_prefixes: Vec<Ipv4Net>,
    /// IPv6 addresses of the ENI (`Ipv6Addresses`), in EC2's order.
    pub ipv6_addresses: Vec<Ipv6Addr>,
    /// IPv6 prefixes (/80) delegated to the ENI (`Ipv6Prefixes`), in EC2's order.
    pub ipv6_prefixes: Vec<Ipv6Net>,
    /// Security group ids.
    pub security_groups: Vec<String>,
    /// The attachment, if attached.
    pub attachment: Option<EniAttachment>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

impl EniState {
    /// The ENI's primary private address.
    pub fn primary_ip(&self) -> Option<Ipv4Addr> {
        self.private_ips.first().copied()
    }

    /// The secondary private addresses (what ipamd hands to pods).
    pub fn secondary_ips(&self) -> &[Ipv4Addr] {
        self.private_ips.get(1..).unwrap_or_default()
    }

    /// Every address EC2 delivers to the ENI: its private addresses, then each address of its
    /// delegated prefixes.
    pub fn all_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.private_ips
            .iter()
            .copied()
            .chain(self.ipv4_prefixes.iter().flat_map(|p| {
                let first = u32::from(p.network());
                (0..=u32::from(p.hostmask())).map(move |k| Ipv4Addr::from(first + k))
            }))
    }

    /// Whether it is attached to `instance_id`.
    pub fn attached_to(&self, instance_id: &str) -> bool {
        self.attachment
            .as_ref()
            .is_some_and(|a| a.instance_id == instance_id)
    }

    /// Its device index, when attached.
    pub fn device_index(&self) -> Option<u32> {
        self.attachment.as_ref().map(|a| a.device_index)
    }
}

/// A subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetInfo {
    /// `subnet-...`.
    pub id: String,
    /// Its IPv4 CIDR block.
    pub cidr: Ipv4Net,
    /// Its associated IPv6 CIDR blocks (empty in an IPv4-only subnet).
    pub ipv6_cidrs: Vec<Ipv6Net>,
    /// Its availability zone.
    pub availability_zone: String,
}

impl SubnetInfo {
    /// The subnet router (`.1`), which the VPC router answers for.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.cidr)
    }

    /// Addresses of the block EC2 can hand out: its size less the five AWS reserves (network,
    /// router, DNS, future use, broadcast).
    pub fn usable_ips(&self) -> u32 {
        let size = 1u64 << (32 - u32::from(self.cidr.prefix_len()));
        u32::try_from(size.saturating_sub(5)).unwrap_or(u32::MAX)
    }
}

/// The subnet router of `cidr`: its first address after the network address.
pub(crate) fn gateway_of(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()).wrapping_add(1))
}

/// A subnet as EC2 (moto) describes it right now: free addresses and tags change at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetState {
    /// `subnet-...`.
    pub id: String,
    /// Its IPv4 CIDR block.
    pub cidr: Ipv4Net,
    /// Its associated IPv6 CIDR blocks (empty in an IPv4-only subnet).
    pub ipv6_cidrs: Vec<Ipv6Net>,
    /// Its availability zone.
    pub availability_zone: String,
    /// Its VPC.
    pub vpc_id: String,
    /// `AvailableIpAddressCount`: the block's size less the five addresses AWS reserves and
    /// every address an ENI holds.
    pub available_ips: u32,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

impl SubnetState {
    /// The subnet's static part.
    pub fn info(&self) -> SubnetInfo {
        SubnetInfo {
            id: self.id.clone(),
            cidr: self.cidr,
            ipv6_cidrs: self.ipv6_cidrs.clone(),
            availability_zone: self.availability_zone.clone(),
        }
    }

    /// The value of tag `key`, if set.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// An instance of the simulated VPC (one simulated node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// `i-...`.
    pub id: String,
    /// `t3.small`, `m5.large`, ...
    pub instance_type: String,
    /// Its availability zone.
    pub availability_zone: String,
    /// The primary ENI's id.
    pub primary_eni: String,
    /// The primary ENI's MAC.
    pub mac: String,
    /// The primary private address (`local-ipv4`).
    pub private_ip: Ipv4Addr,
    /// The primary ENI's subnet.
    pub subnet_id: String,
}

/// Everything the fabric read from moto in one poll.
#[derive(Debug, Clone)]
pub struct VpcSnapshot {
    /// When it was read.
    pub taken: Instant,
    /// The region.
    pub region: String,
    /// The VPC.
    pub vpc_id: String,
    /// The VPC's IPv4 CIDR blocks, primary first.
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// The VPC's associated IPv6 CIDR blocks (empty in an IPv4-only VPC).
    pub vpc_ipv6_cidrs: Vec<Ipv6Net>,
    /// Every ENI of the VPC, by id.
    pub enis: BTreeMap<String, EniState>,
    /// Subnets by id.
    pub subnets: BTreeMap<String, SubnetInfo>,
    /// The instances the fabric runs as nodes, by id.
    pub instances: BTreeMap<String, InstanceInfo>,
}

impl VpcSnapshot {
    /// An empty view of `vpc_id` (before the first poll).
    pub fn empty(region: &str, vpc_id: &str, vpc_cidrs: Vec<Ipv4Net>) -> Self {
        Self {
            taken: Instant::now(),
            region: region.to_owned(),
            vpc_id: vpc_id.to_owned(),
            vpc_cidrs,
            vpc_ipv6_cidrs: Vec::new(),
            enis: BTreeMap::new(),
            subnets: BTreeMap::new(),
            instances: BTreeMap::new(),
        }
    }

    /// The ENIs attached to `instance_id`, by device index.
    pub(crate) fn enis_of(&self, instance_id: &str) -> Vec<&EniState> {
        let mut enis: Vec<&EniState> = self
            .enis
            .values()
            .filter(|e| e.attached_to(instance_id))
            .collect();
        enis.sort_by_key(|e| {
            e.attachment
                .as_ref()
                .map(|a| (a.network_card, a.device_index))
        });
        enis
    }

    /// The instance whose attached ENIs hold `ip` (the caller of IMDS, the owner of a route).
    pub(crate) fn instance_with_ip(&self, ip: Ipv4Addr) -> Option<&InstanceInfo> {
        let eni = self
            .enis
            .values()
            .find(|e| e.attachment.is_some() && e.private_ips.contains(&ip))?;
        let instance = &eni.attachment.as_ref()?.instance_id;
        self.instances.get(instance)
    }

    /// Every address attached to `instance_id` (private addresses and delegated prefixes').
    pub fn addresses_of(&self, instance_id: &str) -> BTreeSet<Ipv4Addr> {
        self.enis_of(instance_id)
            .iter()
            .flat_map(|e| e.all_addresses())
            .collect()
    }

    /// What instance metadata shows for `instance_id`: its attached ENIs with their MACs,
    /// device numbers, addresses (IPv4 and IPv6), prefixes and subnets, and the VPC's blocks.
    /// `None` for an instance the fabric does not run.
    pub(crate) fn node_description(&self, instance_id: &str) -> Option<NodeDescription> {
        let instance = self.instances.get(instance_id)?;
        let interfaces = self
            .enis_of(instance_id)
            .into_iter()
            .filter_map(|eni| {
                let attachment = eni.attachment.as_ref()?;
                let subnet = self.subnets.get(&eni.subnet_id)?;
                Some(InterfaceDescription {
                    mac: eni.mac.clone(),
                    interface_id: eni.id.clone(),
                    device_number: attachment.device_index,
                    network_card: attachment.network_card,
                    subnet_id: eni.subnet_id.clone(),
                    subnet_ipv4_cidr_block: subnet.cidr,
                    security_group_ids: eni.security_groups.clone(),
                    local_ipv4s: eni.private_ips.clone(),
                    ipv4_prefixes: eni.ipv4_prefixes.clone(),
                    ipv6s: eni.ipv6_addresses.clone(),
                    ipv6_prefixes: eni.ipv6_prefixes.clone(),
                    subnet_ipv6_cidr_blocks: subnet.ipv6_cidrs.clone(),
                })
            })
            .collect();
        Some(NodeDescription {
            instance_id: instance.id.clone(),
            instance_type: instance.instance_type.clone(),
            region: self.region.clone(),
            availability_zone: instance.availability_zone.clone(),
            vpc_id: self.vpc_id.clone(),
            vpc_ipv4_cidr_blocks: self.vpc_cidrs.clone(),
            vpc_ipv6_cidr_blocks: self.vpc_ipv6_cidrs.clone(),
            account_id: DEFAULT_ACCOUNT_ID.to_owned(),
            interfaces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(id: &str, instance: Option<(&str, u32)>, ips: &[&str]) -> EniState {
        EniState {
            id: id.into(),
            mac: format!("02:00:00:00:00:{:02x}", id.len()),
            status: if instance.is_some() {
                "in-use".into()
            } else {
                "available".into()
            },
            description: String::new(),
            subnet_id: "subnet-1".into(),
            vpc_id: "vpc-1".into(),
            private_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            ipv4_prefixes: Vec::new(),
            ipv6_addresses: Vec::new(),
            ipv6_prefixes: Vec::new(),
            security_groups: vec!["sg-1".into()],
            attachment: instance.map(|(i, d)| EniAttachment {
                attachment_id: format!("eni-attach-{id}"),
                instance_id: i.into(),
                device_index: d,
                network_card: 0,
            }),
            tags: BTreeMap::new(),
        }
    }

    fn snapshot() -> VpcSnapshot {
        let mut s = VpcSnapshot::empty("us-west-2", "vpc-1", vec!["10.0.0.0/16".parse().unwrap()]);
        s.subnets.insert(
            "subnet-1".into(),
            SubnetInfo {
                id: "subnet-1".into(),
                cidr: "10.0.0.0/24".parse().unwrap(),
                ipv6_cidrs: Vec::new(),
                availability_zone: "us-west-2a".into(),
            },
        );
        s.instances.insert(
            "i-1".into(),
            InstanceInfo {
                id: "i-1".into(),
                instance_type: "t3.small".into(),
                availability_zone: "us-west-2a".into(),
                primary_eni: "eni-a".into(),
                mac: "02:00:00:00:00:05".into(),
                private_ip: "10.0.0.4".parse().unwrap(),
                subnet_id: "subnet-1".into(),
            },
        );
        for e in [
            eni("eni-bb", Some(("i-1", 1)), &["10.0.0.8", "10.0.0.9"]),
            eni("eni-a", Some(("i-1", 0)), &["10.0.0.4", "10.0.0.5"]),
            eni("eni-ccc", None, &["10.0.0.20"]),
        ] {
            s.enis.insert(e.id.clone(), e);
        }
        s
    }

    #[test]
    fn metadata_lists_attached_enis_in_device_order() {
        let s = snapshot();
        let d = s.node_description("i-1").unwrap();
        d.validate().unwrap();
        let ids: Vec<&str> = d
            .interfaces
            .iter()
            .map(|e| e.interface_id.as_str())
            .collect();
        assert_eq!(ids, ["eni-a", "eni-bb"]);
        assert_eq!(d.local_ipv4(), Some("10.0.0.4".parse().unwrap()));
        assert_eq!(d.all_secondary_ips().len(), 2);
        assert!(s.node_description("i-2").is_none());
    }

    #[test]
    fn subnet_routers_and_usable_addresses_follow_ec2() {
        let s = snapshot();
        let subnet = &s.subnets["subnet-1"];
        assert_eq!(subnet.gateway(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(subnet.usable_ips(), 251);
        let small = SubnetInfo {
            cidr: "10.0.1.16/28".parse().unwrap(),
            ..subnet.clone()
        };
        assert_eq!(small.gateway(), Ipv4Addr::new(10, 0, 1, 17));
        assert_eq!(small.usable_ips(), 11);
    }

    #[test]
    fn callers_are_found_by_any_attached_address() {
        let s = snapshot();
        assert_eq!(
            s.instance_with_ip("10.0.0.9".parse().unwrap()).unwrap().id,
            "i-1"
        );
        assert!(s.instance_with_ip("10.0.0.20".parse().unwrap()).is_none());
        assert_eq!(s.addresses_of("i-1").len(), 4);
    }

    #[test]
    fn delegated_prefixes_are_addresses_of_the_instance_and_shown_by_metadata() {
        let mut s = snapshot();
        let prefix: Ipv4Net = "10.0.0.32/28".parse().unwrap();
        s.enis.get_mut("eni-a").unwrap().ipv4_prefixes.push(prefix);
        let addresses = s.addresses_of("i-1");
        assert_eq!(addresses.len(), 4 + 16);
        assert!(addresses.contains(&"10.0.0.32".parse().unwrap()));
        assert!(addresses.contains(&"10.0.0.47".parse().unwrap()));
        let d = s.node_description("i-1").unwrap();
        d.validate().unwrap();
        assert_eq!(d.interfaces[0].ipv4_prefixes, [prefix]);
    }

    #[test]
    fn ipv4_only_vpcs_show_no_ipv6_in_metadata() {
        let d = snapshot().node_description("i-1").unwrap();
        assert!(d.vpc_ipv6_cidr_blocks.is_empty());
        assert_eq!(d.ipv6(), None);
        assert!(d.interfaces.iter().all(|e| e.ipv6s.is_empty()
            && e.ipv6_prefixes.is_empty()
            && e.subnet_ipv6_cidr_blocks.is_empty()));
    }

    #[test]
    fn ipv6_addresses_prefixes_and_blocks_are_shown_by_metadata() {
        let mut s = snapshot();
        let vpc_block: Ipv6Net = "2600:1f14:abc:de00::/56".parse().unwrap();
        let subnet_block: Ipv6Net = "2600:1f14:abc:de00::/64".parse().unwrap();
        let prefix: Ipv6Net = "2600:1f14:abc:de00:1::/80".parse().unwrap();
        let address: Ipv6Addr = "2600:1f14:abc:de00::a".parse().unwrap();
        s.vpc_ipv6_cidrs = vec![vpc_block];
        s.subnets.get_mut("subnet-1").unwrap().ipv6_cidrs = vec![subnet_block];
        let primary = s.enis.get_mut("eni-a").unwrap();
        primary.ipv6_addresses.push(address);
        primary.ipv6_prefixes.push(prefix);
        let d = s.node_description("i-1").unwrap();
        d.validate().unwrap();
        assert_eq!(d.vpc_ipv6_cidr_blocks, [vpc_block]);
        assert_eq!(d.ipv6(), Some(address));
        let (eni_a, eni_bb) = (&d.interfaces[0], &d.interfaces[1]);
        assert_eq!(eni_a.ipv6_prefixes, [prefix]);
        assert_eq!(eni_a.subnet_ipv6_cidr_blocks, [subnet_block]);
        assert!(eni_bb.ipv6s.is_empty() && eni_bb.ipv6_prefixes.is_empty());
        assert_eq!(eni_bb.subnet_ipv6_cidr_blocks, [subnet_block]);
        // IPv6 does not change the IPv4 view.
        assert_eq!(s.addresses_of("i-1").len(), 4);
    }
}
