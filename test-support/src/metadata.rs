//! The simulated instance's metadata: the node file format of `docs/contracts.md`, its validation,
//! and the [`MetadataSource`] trait the IMDS emulator answers from.
//!
//! The trait takes the caller's socket address so that a later source can answer per instance
//! (by the caller's source IP, from moto's state); [`FileSource`] describes one node from a JSON
//! file that tests edit to make addresses appear or vanish, and re-reads it whenever it changes.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Account id reported when the node file does not name one.
pub const DEFAULT_ACCOUNT_ID: &str = "123456789012";

/// Errors of reading, parsing or validating a node description.
#[derive(Debug, thiserror::Error)]
pub enum NodeFileError {
    /// The node file could not be read.
    #[error("cannot read node file {path}: {source}")]
    Read {
        /// The node file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The node file could not be written.
    #[error("cannot write node file {path}: {source}")]
    Write {
        /// The node file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The node file is not the JSON format of docs/contracts.md.
    #[error("node file {path} is not a valid node description: {source}")]
    Parse {
        /// The node file.
        path: PathBuf,
        /// The JSON error (names the field and position).
        source: serde_json::Error,
    },
    /// The description parsed but is inconsistent.
    #[error("invalid node description: {0}")]
    Invalid(String),
}

/// One ENI of the simulated instance, as instance metadata shows it under
/// `network/interfaces/macs/<mac>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct InterfaceDescription {
    /// MAC address, lowercase `xx:xx:xx:xx:xx:xx`; the node's link carries it.
    pub mac: String,
    /// ENI id (`eni-...`).
    pub interface_id: String,
    /// Attachment device index; 0 is the primary ENI (the node's `eth0`).
    pub device_number: u32,
    /// Network card index (0 unless the instance has several cards).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub network_card: u32,
    /// Subnet id (`subnet-...`).
    pub subnet_id: String,
    /// The subnet's CIDR; its `.1` is the VPC router's address.
    pub subnet_ipv4_cidr_block: Ipv4Net,
    /// Security groups of the ENI.
    pub security_group_ids: Vec<String>,
    /// Private addresses, the ENI's primary address first, then its secondary addresses.
    pub local_ipv4s: Vec<Ipv4Addr>,
    /// IPv4 prefixes (/28) delegated to the ENI (IMDS `ipv4-prefix`, absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4_prefixes: Vec<Ipv4Net>,
    /// The ENI's IPv6 addresses, in EC2's order (IMDS `ipv6s`, absent when none); the first one
    /// of the primary ENI is the instance's `ipv6`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6s: Vec<Ipv6Addr>,
    /// IPv6 prefixes (/80) delegated to the ENI (IMDS `ipv6-prefix`, absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_prefixes: Vec<Ipv6Net>,
    /// The subnet's IPv6 CIDR blocks (IMDS `subnet-ipv6-cidr-blocks`, absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ipv6_cidr_blocks: Vec<Ipv6Net>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl InterfaceDescription {
    /// The ENI's primary private address (first of `local-ipv4s`).
    pub fn primary_ip(&self) -> Option<Ipv4Addr> {
        self.local_ipv4s.first().copied()
    }

    /// The ENI's secondary addresses (what ipamd hands to pods).
    pub fn secondary_ips(&self) -> &[Ipv4Addr] {
        self.local_ipv4s.get(1..).unwrap_or(&[])
    }

    /// Every address pods may get on this ENI: its secondary addresses, then each address of
    /// its delegated prefixes.
    pub fn pod_addresses(&self) -> Vec<Ipv4Addr> {
        let prefixed = self.ipv4_prefixes.iter().flat_map(|p| {
            let first = u32::from(p.network());
            (0..=u32::from(p.hostmask())).map(move |k| Ipv4Addr::from(first + k))
        });
        self.secondary_ips()
            .iter()
            .copied()
            .chain(prefixed)
            .collect()
    }

    /// The subnet's gateway, i.e. its network address + 1 (as on AWS).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet_ipv4_cidr_block.network()).wrapping_add(1))
    }

    /// The route table ipamd uses for this ENI: 254 (main) for device 0, else device + 1.
    pub fn route_table(&self) -> u32 {
        vpc_cni_contract::dataplane::route_table_for_device(self.device_number)
    }

    /// The ENI's first IPv6 address (for the primary ENI, the instance's `ipv6`).
    pub fn primary_ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6s.first().copied()
    }

    /// The subnet IPv6 block (if any) that holds `net`.
    pub fn subnet_ipv6_block_of(&self, net: &Ipv6Net) -> Option<Ipv6Net> {
        self.subnet_ipv6_cidr_blocks
            .iter()
            .copied()
            .find(|block| block.contains(net))
    }
}

/// The whole simulated instance: the JSON file format of `docs/contracts.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeDescription {
    /// Instance id (`i-...`).
    pub instance_id: String,
    /// Instance type (`m5.large`, ...).
    pub instance_type: String,
    /// Region (`us-west-2`).
    pub region: String,
    /// Availability zone (`us-west-2a`).
    pub availability_zone: String,
    /// VPC id (`vpc-...`).
    pub vpc_id: String,
    /// The VPC's IPv4 CIDR blocks, primary first.
    pub vpc_ipv4_cidr_blocks: Vec<Ipv4Net>,
    /// The VPC's IPv6 CIDR blocks (IMDS `vpc-ipv6-cidr-blocks`, absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpc_ipv6_cidr_blocks: Vec<Ipv6Net>,
    /// Owner account of the instance and its ENIs (identity document, `owner-id`).
    #[serde(default = "default_account_id")]
    pub account_id: String,
    /// The attached ENIs.
    pub interfaces: Vec<InterfaceDescription>,
}

fn default_account_id() -> String {
    DEFAULT_ACCOUNT_ID.to_owned()
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| {
            p.len() == 2
                && p.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

impl NodeDescription {
    /// Parses and validates a node description from JSON text.
    pub(crate) fn from_json(text: &str, origin: &Path) -> Result<Self, NodeFileError> {
        let desc: Self = serde_json::from_str(text).map_err(|source| NodeFileError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        desc.validate()?;
        Ok(desc)
    }

    /// Reads, parses and validates a node file.
    pub fn load(path: &Path) -> Result<Self, NodeFileError> {
        let text = fs::read_to_string(path).map_err(|source| NodeFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Writes the description to `path` atomically (temp file in the same directory, then
    /// rename), so a concurrent reader (the emulator) never sees a torn file.
    pub fn store(&self, path: &Path) -> Result<(), NodeFileError> {
        self.validate()?;
        let write_err = |source| NodeFileError::Write {
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| write_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        fs::write(&tmp, text.as_bytes()).map_err(write_err)?;
        fs::rename(&tmp, path).map_err(write_err)
    }

    /// Checks what AWS guarantees: one device-0 ENI, unique devices, MACs and addresses, every
    /// address inside its ENI's subnet, every subnet inside the VPC; the same for IPv6 (every
    /// IPv6 address and /80 prefix inside one of its subnet's IPv6 blocks, every such block
    /// inside one of the VPC's).
    pub fn validate(&self) -> Result<(), NodeFileError> {
        let invalid = |msg: String| Err(NodeFileError::Invalid(msg));
        for (field, value) in [
            ("instance-id", &self.instance_id),
            ("instance-type", &self.instance_type),
            ("region", &self.region),
            ("availability-zone", &self.availability_zone),
            ("vpc-id", &self.vpc_id),
            ("account-id", &self.account_id),
        ] {
            if value.trim().is_empty() {
                return invalid(format!("{field} is empty"));
            }
        }
        if !self.availability_zone.starts_with(&self.region) {
            return invalid(format!(
                "availability-zone {:?} is not in region {:?}",
                self.availability_zone, self.region
            ));
        }
        if self.vpc_ipv4_cidr_blocks.is_empty() {
            return invalid("vpc-ipv4-cidr-blocks is empty".to_owned());
        }
        if self.interfaces.is_empty() {
            return invalid("interfaces is empty (the instance needs its primary ENI)".to_owned());
        }
        for block in &self.vpc_ipv6_cidr_blocks {
            if block.trunc() != *block {
                return invalid(format!(
                    "vpc-ipv6-cidr-blocks entry {block} has host bits set"
                ));
            }
        }
        let mut devices = BTreeSet::new();
        let mut macs = BTreeSet::new();
        let mut ips = BTreeSet::new();
        let mut prefixes: Vec<(String, Ipv4Net)> = Vec::new();
        let mut ipv6s = BTreeSet::new();
        let mut ipv6_prefixes: Vec<(String, Ipv6Net)> = Vec::new();
        for eni in &self.interfaces {
            let id = &eni.interface_id;
            if id.trim().is_empty() || eni.subnet_id.trim().is_empty() {
                return invalid(format!(
                    "interface with mac {:?} has an empty interface-id or subnet-id",
                    eni.mac
                ));
            }
            if !valid_mac(&eni.mac) {
                return invalid(format!(
                    "interface {id}: mac {:?} is not a lowercase xx:xx:xx:xx:xx:xx address",
                    eni.mac
                ));
            }
            if !macs.insert(eni.mac.clone()) {
                return invalid(format!("interface {id}: mac {} is used twice", eni.mac));
            }
            if !devices.insert((eni.network_card, eni.device_number)) {
                return invalid(format!(
                    "interface {id}: device-number {} is used twice",
                    eni.device_number
                ));
            }
            let subnet = eni.subnet_ipv4_cidr_block;
            if subnet.trunc() != subnet {
                return invalid(format!(
                    "interface {id}: subnet-ipv4-cidr-block {subnet} has host bits set"
                ));
            }
            if !self
                .vpc_ipv4_cidr_blocks
                .iter()
                .any(|v| v.contains(&subnet))
            {
                return invalid(format!(
                    "interface {id}: subnet {subnet} is not inside vpc-ipv4-cidr-blocks"
                ));
            }
            if eni.local_ipv4s.is_empty() {
                return invalid(format!(
                    "interface {id}: local-ipv4s is empty (an ENI always has a primary address)"
                ));
            }
            for ip in &eni.local_ipv4s {
                if !subnet.contains(ip) || *ip == subnet.network() || *ip == subnet.broadcast() {
                    return invalid(format!(
                        "interface {id}: address {ip} is not a host address of subnet {subnet}"
                    ));
                }
                if *ip == eni.gateway() {
                    return invalid(format!(
                        "interface {id}: address {ip} is the subnet's gateway (reserved by AWS)"
                    ));
                }
                if !ips.insert(*ip) {
                    return invalid(format!("interface {id}: address {ip} is used twice"));
                }
            }
            for prefix in &eni.ipv4_prefixes {
                if prefix.prefix_len() != 28 || prefix.trunc() != *prefix {
                    return invalid(format!(
                        "interface {id}: ipv4-prefixes entry {prefix} is not an aligned /28"
                    ));
                }
                if !subnet.contains(prefix) {
                    return invalid(format!(
                        "interface {id}: prefix {prefix} is not inside subnet {subnet}"
                    ));
                }
                prefixes.push((id.to_owned(), *prefix));
            }
            self.validate_ipv6(eni, &mut ipv6s, &mut ipv6_prefixes)?;
        }
        for (i, (id, prefix)) in prefixes.iter().enumerate() {
            if let Some(ip) = ips.iter().find(|ip| prefix.contains(*ip)) {
                return invalid(format!(
                    "interface {id}: prefix {prefix} holds address {ip}, which an interface has"
                ));
            }
            if let Some((other, _)) = prefixes[i + 1..].iter().find(|(_, p)| p.contains(prefix)) {
                return invalid(format!(
                    "interface {id}: prefix {prefix} is delegated twice (also to {other})"
                ));
            }
        }
        for (i, (id, prefix)) in ipv6_prefixes.iter().enumerate() {
            if let Some(ip) = ipv6s.iter().find(|ip| prefix.contains(*ip)) {
                return invalid(format!(
                    "interface {id}: ipv6-prefixes entry {prefix} holds address {ip}, which an \
                     interface has"
                ));
            }
            if let Some((other, _)) = ipv6_prefixes[i + 1..]
                .iter()
                .find(|(_, p)| p.contains(prefix) || prefix.contains(p))
            {
                return invalid(format!(
                    "interface {id}: ipv6-prefixes entry {prefix} is delegated twice (also to \
                     {other})"
                ));
            }
        }
        if !devices.contains(&(0, 0)) {
            return invalid("no interface has device-number 0 (the primary ENI)".to_owned());
        }
        Ok(())
    }

    /// The IPv6 part of [`NodeDescription::validate`] for one ENI: its subnet's IPv6 blocks
    /// inside the VPC's, its addresses (collected in `seen`, unique across the node) and /80
    /// prefixes (collected in `prefixes`) inside one of those blocks.
    fn validate_ipv6(
        &self,
        eni: &InterfaceDescription,
        seen: &mut BTreeSet<Ipv6Addr>,
        prefixes: &mut Vec<(String, Ipv6Net)>,
    ) -> Result<(), NodeFileError> {
        let invalid = |msg: String| Err(NodeFileError::Invalid(msg));
        let id = &eni.interface_id;
        for block in &eni.subnet_ipv6_cidr_blocks {
            if block.trunc() != *block {
                return invalid(format!(
                    "interface {id}: subnet-ipv6-cidr-blocks entry {block} has host bits set"
                ));
            }
            if !self.vpc_ipv6_cidr_blocks.iter().any(|v| v.contains(block)) {
                return invalid(format!(
                    "interface {id}: subnet-ipv6-cidr-blocks entry {block} is not inside \
                     vpc-ipv6-cidr-blocks"
                ));
            }
        }
        for ip in &eni.ipv6s {
            let host = Ipv6Net::from(*ip);
            let Some(block) = eni.subnet_ipv6_block_of(&host) else {
                return invalid(format!(
                    "interface {id}: ipv6s entry {ip} is not inside subnet-ipv6-cidr-blocks"
                ));
            };
            if *ip == block.network() {
                return invalid(format!(
                    "interface {id}: ipv6s entry {ip} is the network address of subnet block \
                     {block} (reserved by AWS)"
                ));
            }
            if !seen.insert(*ip) {
                return invalid(format!("interface {id}: ipv6s entry {ip} is used twice"));
            }
        }
        for prefix in &eni.ipv6_prefixes {
            if prefix.prefix_len() != 80 || prefix.trunc() != *prefix {
                return invalid(format!(
                    "interface {id}: ipv6-prefixes entry {prefix} is not an aligned /80"
                ));
            }
            if eni.subnet_ipv6_block_of(prefix).is_none() {
                return invalid(format!(
                    "interface {id}: ipv6-prefixes entry {prefix} is not inside \
                     subnet-ipv6-cidr-blocks"
                ));
            }
            prefixes.push((id.to_owned(), *prefix));
        }
        Ok(())
    }

    /// The primary ENI (device 0 on card 0).
    pub fn primary_interface(&self) -> Option<&InterfaceDescription> {
        self.interfaces
            .iter()
            .find(|e| e.device_number == 0 && e.network_card == 0)
    }

    /// The ENI with this MAC (case-insensitive).
    pub(crate) fn interface_by_mac(&self, mac: &str) -> Option<&InterfaceDescription> {
        self.interfaces
            .iter()
            .find(|e| e.mac.eq_ignore_ascii_case(mac))
    }

    /// The ENI with this device number (card 0).
    pub fn interface_by_device(&self, device: u32) -> Option<&InterfaceDescription> {
        self.interfaces
            .iter()
            .find(|e| e.device_number == device && e.network_card == 0)
    }

    /// Mutable access to the ENI with this device number (card 0).
    pub fn interface_by_device_mut(&mut self, device: u32) -> Option<&mut InterfaceDescription> {
        self.interfaces
            .iter_mut()
            .find(|e| e.device_number == device && e.network_card == 0)
    }

    /// The instance's `local-ipv4`: the primary ENI's primary address.
    pub fn local_ipv4(&self) -> Option<Ipv4Addr> {
        self.primary_interface().and_then(|e| e.primary_ip())
    }

    /// The instance's `ipv6`: the primary ENI's first IPv6 address, if it has one.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.primary_interface()
            .and_then(InterfaceDescription::primary_ipv6)
    }

    /// Every secondary address of every ENI (what ipamd may hand out), in device order.
    pub fn all_secondary_ips(&self) -> Vec<Ipv4Addr> {
        let mut enis: Vec<&InterfaceDescription> = self.interfaces.iter().collect();
        enis.sort_by_key(|e| (e.network_card, e.device_number));
        enis.iter()
            .flat_map(|e| e.secondary_ips().iter().copied())
            .collect()
    }

    /// The ENI (if any) whose secondary addresses include `ip`.
    pub fn owner_of_secondary(&self, ip: Ipv4Addr) -> Option<&InterfaceDescription> {
        self.interfaces
            .iter()
            .find(|e| e.secondary_ips().contains(&ip))
    }

    /// Every address pods may get, secondary or of a prefix, ENI by ENI (device order).
    pub fn all_pod_addresses(&self) -> Vec<Ipv4Addr> {
        let mut enis: Vec<&InterfaceDescription> = self.interfaces.iter().collect();
        enis.sort_by_key(|e| (e.network_card, e.device_number));
        enis.iter().flat_map(|e| e.pod_addresses()).collect()
    }

    /// The ENI (if any) with `ip` among its secondary addresses or in one of its prefixes.
    pub fn owner_of_pod_address(&self, ip: Ipv4Addr) -> Option<&InterfaceDescription> {
        self.interfaces.iter().find(|e| {
            e.secondary_ips().contains(&ip) || e.ipv4_prefixes.iter().any(|p| p.contains(&ip))
        })
    }

    /// Every ENI's primary address.
    pub fn eni_primary_ips(&self) -> Vec<Ipv4Addr> {
        self.interfaces
            .iter()
            .filter_map(InterfaceDescription::primary_ip)
            .collect()
    }
}

/// Where the IMDS emulator gets the instance description for a caller.
pub trait MetadataSource: Send + Sync + std::fmt::Debug + 'static {
    /// The instance the caller at `caller` runs on.
    fn describe(&self, caller: SocketAddr) -> Result<Arc<NodeDescription>, NodeFileError>;
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// One node described by a JSON file; every caller gets that node. The file is re-read
/// whenever its modification time, size or inode changes (tests replace it atomically).
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    cache: Mutex<Option<(FileStamp, Arc<NodeDescription>)>>,
}

impl FileSource {
    /// A source reading `path`; the file is validated now so a bad file fails early.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, NodeFileError> {
        let source = Self {
            path: path.into(),
            cache: Mutex::new(None),
        };
        source.current()?;
        Ok(source)
    }

    /// The node file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Result<Arc<NodeDescription>, NodeFileError> {
        let meta = fs::metadata(&self.path).map_err(|source| NodeFileError::Read {
            path: self.path.clone(),
            source,
        })?;
        let stamp = FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        };
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached, desc)) = cache.as_ref()
            && *cached == stamp
        {
            return Ok(Arc::clone(desc));
        }
        let desc = Arc::new(NodeDescription::load(&self.path)?);
        tracing::debug!(path = %self.path.display(), "node file (re)loaded");
        *cache = Some((stamp, Arc::clone(&desc)));
        Ok(desc)
    }
}

impl MetadataSource for FileSource {
    fn describe(&self, _caller: SocketAddr) -> Result<Arc<NodeDescription>, NodeFileError> {
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT_SAMPLE: &str = r#"{"instance-id":"i-0a1b2c3d4e5f60001","instance-type":"m5.large","region":"us-west-2",
 "availability-zone":"us-west-2a","vpc-id":"vpc-0a1b2c3d","vpc-ipv4-cidr-blocks":["10.0.0.0/16"],
 "interfaces":[
  {"mac":"02:00:0a:00:00:0a","interface-id":"eni-0000000000000000a","device-number":0,
   "subnet-id":"subnet-0a1b2c3d","subnet-ipv4-cidr-block":"10.0.0.0/24",
   "security-group-ids":["sg-0a1b2c3d"],"local-ipv4s":["10.0.0.10","10.0.0.11","10.0.0.12"]}]}"#;

    fn sample() -> NodeDescription {
        NodeDescription::from_json(CONTRACT_SAMPLE, Path::new("sample.json")).unwrap()
    }

    #[test]
    fn parses_the_contract_sample() {
        let d = sample();
        assert_eq!(d.local_ipv4(), Some(Ipv4Addr::new(10, 0, 0, 10)));
        assert_eq!(
            d.all_secondary_ips(),
            vec![Ipv4Addr::new(10, 0, 0, 11), Ipv4Addr::new(10, 0, 0, 12)]
        );
        let eni = d.primary_interface().unwrap();
        assert_eq!(eni.gateway(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(eni.route_table(), 254);
        assert_eq!(d.account_id, DEFAULT_ACCOUNT_ID);
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = CONTRACT_SAMPLE.replace("\"vpc-id\"", "\"vpcid\"");
        let err = NodeDescription::from_json(&text, Path::new("x.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vpcid"), "{err}");
    }

    #[test]
    fn inconsistent_descriptions_are_rejected_with_the_reason() {
        type Mutation = Box<dyn Fn(&mut NodeDescription)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|d| d.interfaces[0].mac = "02:00:0A:00:00:0A".into()),
                "lowercase",
            ),
            (
                Box::new(|d| d.interfaces[0].device_number = 1),
                "device-number 0",
            ),
            (
                Box::new(|d| d.interfaces[0].local_ipv4s.push(Ipv4Addr::new(10, 0, 1, 5))),
                "10.0.1.5",
            ),
            (
                Box::new(|d| {
                    d.interfaces[0]
                        .local_ipv4s
                        .push(Ipv4Addr::new(10, 0, 0, 11))
                }),
                "used twice",
            ),
            (
                Box::new(|d| d.interfaces[0].local_ipv4s.push(Ipv4Addr::new(10, 0, 0, 1))),
                "gateway",
            ),
            (Box::new(|d| d.interfaces[0].local_ipv4s.clear()), "empty"),
            (
                Box::new(|d| d.availability_zone = "eu-west-1a".into()),
                "not in region",
            ),
            (
                Box::new(|d| d.vpc_ipv4_cidr_blocks = vec!["192.168.0.0/16".parse().unwrap()]),
                "not inside",
            ),
            (
                Box::new(|d| d.interfaces[0].ipv4_prefixes = vec!["10.0.0.40/28".parse().unwrap()]),
                "aligned /28",
            ),
            (
                Box::new(|d| d.interfaces[0].ipv4_prefixes = vec!["10.0.0.32/27".parse().unwrap()]),
                "aligned /28",
            ),
            (
                Box::new(|d| d.interfaces[0].ipv4_prefixes = vec!["10.0.1.32/28".parse().unwrap()]),
                "not inside subnet",
            ),
            (
                // 10.0.0.10 is the primary ENI's address.
                Box::new(|d| d.interfaces[0].ipv4_prefixes = vec!["10.0.0.0/28".parse().unwrap()]),
                "holds address 10.0.0.10",
            ),
            (
                Box::new(|d| {
                    let p: Ipv4Net = "10.0.0.32/28".parse().unwrap();
                    d.interfaces[0].ipv4_prefixes = vec![p, p];
                }),
                "delegated twice",
            ),
        ];
        for (mutate, needle) in cases {
            let mut d = sample();
            mutate(&mut d);
            let err = d.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    /// The contract sample with an IPv6 VPC: a /56, the subnet's /64, one address, one /80.
    fn ipv6_sample() -> NodeDescription {
        let text = CONTRACT_SAMPLE
            .replace(
                r#""vpc-ipv4-cidr-blocks":["10.0.0.0/16"],"#,
                r#""vpc-ipv4-cidr-blocks":["10.0.0.0/16"],"vpc-ipv6-cidr-blocks":["2600:1f14:abc:de00::/56"],"#,
            )
            .replace(
                r#""local-ipv4s":["10.0.0.10","10.0.0.11","10.0.0.12"]"#,
                r#""local-ipv4s":["10.0.0.10","10.0.0.11","10.0.0.12"],
                   "ipv6s":["2600:1f14:abc:de00::a"],"ipv6-prefixes":["2600:1f14:abc:de00:1::/80"],
                   "subnet-ipv6-cidr-blocks":["2600:1f14:abc:de00::/64"]"#,
            );
        NodeDescription::from_json(&text, Path::new("ipv6.json")).unwrap()
    }

    #[test]
    fn ipv6_fields_are_optional_and_parsed() {
        let v4 = sample();
        assert!(v4.vpc_ipv6_cidr_blocks.is_empty());
        assert_eq!(v4.ipv6(), None);
        let eni = v4.primary_interface().unwrap();
        assert!(eni.ipv6s.is_empty() && eni.ipv6_prefixes.is_empty());
        assert!(eni.subnet_ipv6_cidr_blocks.is_empty());
        // An IPv4-only node is written without any IPv6 key, as before.
        let text = serde_json::to_string(&v4).unwrap();
        assert!(!text.contains("ipv6"), "{text}");

        let d = ipv6_sample();
        assert_eq!(d.ipv6(), Some("2600:1f14:abc:de00::a".parse().unwrap()));
        assert_eq!(
            d.vpc_ipv6_cidr_blocks,
            ["2600:1f14:abc:de00::/56".parse::<Ipv6Net>().unwrap()]
        );
        let eni = d.primary_interface().unwrap();
        assert_eq!(
            eni.ipv6_prefixes,
            ["2600:1f14:abc:de00:1::/80".parse::<Ipv6Net>().unwrap()]
        );
        assert_eq!(
            eni.subnet_ipv6_cidr_blocks,
            ["2600:1f14:abc:de00::/64".parse::<Ipv6Net>().unwrap()]
        );
        let text = serde_json::to_string(&d).unwrap();
        for key in [
            "\"vpc-ipv6-cidr-blocks\"",
            "\"ipv6s\"",
            "\"ipv6-prefixes\"",
            "\"subnet-ipv6-cidr-blocks\"",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        assert_eq!(
            NodeDescription::from_json(&text, Path::new("again.json")).unwrap(),
            d
        );
    }

    #[test]
    fn inconsistent_ipv6_descriptions_are_rejected_naming_interface_and_field() {
        type Mutation = Box<dyn Fn(&mut NodeDescription)>;
        fn net(s: &str) -> Ipv6Net {
            s.parse().unwrap()
        }
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|d| d.vpc_ipv6_cidr_blocks = vec![net("2600:1f14:abc:de00::1/56")]),
                "vpc-ipv6-cidr-blocks entry 2600:1f14:abc:de00::1/56 has host bits set",
            ),
            (
                Box::new(|d| d.vpc_ipv6_cidr_blocks.clear()),
                "interface eni-0000000000000000a: subnet-ipv6-cidr-blocks entry \
                 2600:1f14:abc:de00::/64 is not inside vpc-ipv6-cidr-blocks",
            ),
            (
                Box::new(|d| {
                    d.interfaces[0].subnet_ipv6_cidr_blocks = vec![net("2600:1f14:abc:ff00::/64")];
                }),
                "not inside vpc-ipv6-cidr-blocks",
            ),
            (
                Box::new(|d| {
                    d.interfaces[0].subnet_ipv6_cidr_blocks = vec![net("2600:1f14:abc:de00::5/64")];
                }),
                "subnet-ipv6-cidr-blocks entry 2600:1f14:abc:de00::5/64 has host bits set",
            ),
            (
                Box::new(|d| {
                    d.interfaces[0]
                        .ipv6s
                        .push("2600:1f14:abc:de01::7".parse().unwrap())
                }),
                "interface eni-0000000000000000a: ipv6s entry 2600:1f14:abc:de01::7 is not \
                 inside subnet-ipv6-cidr-blocks",
            ),
            (
                Box::new(|d| {
                    d.interfaces[0]
                        .ipv6s
                        .push("2600:1f14:abc:de00::".parse().unwrap())
                }),
                "network address",
            ),
            (
                Box::new(|d| {
                    d.interfaces[0]
                        .ipv6s
                        .push("2600:1f14:abc:de00::a".parse().unwrap())
                }),
                "ipv6s entry 2600:1f14:abc:de00::a is used twice",
            ),
            (
                // Addresses need the subnet's IPv6 block.
                Box::new(|d| d.interfaces[0].subnet_ipv6_cidr_blocks.clear()),
                "ipv6s entry 2600:1f14:abc:de00::a is not inside subnet-ipv6-cidr-blocks",
            ),
            (
                Box::new(|d| {
                    d.interfaces[0].ipv6_prefixes = vec![net("2600:1f14:abc:de00:2::/64")]
                }),
                "interface eni-0000000000000000a: ipv6-prefixes entry 2600:1f14:abc:de00:2::/64 \
                 is not an aligned /80",
            ),
            (
                Box::new(|d| {
                    d.interfaces[0].ipv6_prefixes = vec![net("2600:1f14:abc:de00:2::1/80")];
                }),
                "not an aligned /80",
            ),
            (
                Box::new(|d| {
                    d.interfaces[0].ipv6_prefixes = vec![net("2600:1f14:abc:de01:2::/80")];
                }),
                "ipv6-prefixes entry 2600:1f14:abc:de01:2::/80 is not inside \
                 subnet-ipv6-cidr-blocks",
            ),
            (
                // 2600:1f14:abc:de00::a is the ENI's address.
                Box::new(|d| d.interfaces[0].ipv6_prefixes = vec![net("2600:1f14:abc:de00::/80")]),
                "holds address 2600:1f14:abc:de00::a",
            ),
            (
                Box::new(|d| {
                    let p = net("2600:1f14:abc:de00:3::/80");
                    d.interfaces[0].ipv6_prefixes = vec![p, p];
                }),
                "ipv6-prefixes entry 2600:1f14:abc:de00:3::/80 is delegated twice",
            ),
        ];
        for (mutate, needle) in cases {
            let mut d = ipv6_sample();
            mutate(&mut d);
            let err = d.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn file_source_rereads_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        let mut d = sample();
        d.store(&path).unwrap();
        let source = FileSource::new(&path).unwrap();
        let caller: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            source.describe(caller).unwrap().all_secondary_ips().len(),
            2
        );
        d.interfaces[0]
            .local_ipv4s
            .push(Ipv4Addr::new(10, 0, 0, 13));
        d.store(&path).unwrap();
        assert_eq!(
            source.describe(caller).unwrap().all_secondary_ips().len(),
            3
        );
        fs::write(&path, "{").unwrap();
        assert!(matches!(
            source.describe(caller),
            Err(NodeFileError::Parse { .. })
        ));
    }
}
