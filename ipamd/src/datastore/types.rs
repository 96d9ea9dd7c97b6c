//! The datastore's public types: keys, pod metadata, ENIs, assignments, counts and errors.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use ipnet::Ipv4Net;
use thiserror::Error;

/// The CNI primary key of an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpamKey {
    /// CNI network name (the conflist's `name`).
    pub network_name: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub if_name: String,
}

impl fmt::Display for IpamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.network_name, self.container_id, self.if_name
        )
    }
}

/// What is known about the pod behind an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodMetadata {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Number of interfaces the pod has (1 for a regular pod).
    pub interfaces_count: u32,
}

/// An ENI as the datastore needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniSpec {
    /// `eni-…`.
    pub id: String,
    /// Device number (0 = primary ENI).
    pub device_number: u32,
    /// The ENI's own address (never assigned to pods).
    pub primary_ip: Ipv4Addr,
    /// Its subnet.
    pub subnet: Ipv4Net,
}

/// A pod's address and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The address: IPv4 (a secondary IP or an address of a /28 prefix), or IPv6 in IPv6 mode
    /// (an address of the primary ENI's /80).
    pub ip: IpAddr,
    /// Who has it.
    pub key: IpamKey,
    /// About the pod.
    pub metadata: PodMetadata,
    /// When it was assigned.
    pub assigned_at: SystemTime,
    /// The ENI it belongs to.
    pub eni_id: String,
    /// That ENI's device number (its host route table follows from it:
    /// `vpc_cni_contract::dataplane::route_table_for_device`).
    pub device_number: u32,
}

impl Assignment {
    /// The address when it is IPv4 (every assignment outside IPv6 mode).
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        match self.ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }
}

/// Counts for PoolStatus and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// ENIs in the store.
    pub enis: usize,
    /// Secondary addresses in the store.
    pub total: usize,
    /// Addresses assigned to pods.
    pub assigned: usize,
    /// Released addresses still cooling down.
    pub cooling: usize,
    /// Addresses an assignment could take now.
    pub assignable: usize,
}

/// Errors changing the set of ENIs and addresses.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DatastoreError {
    /// An ENI with this id or device number is already known.
    #[error("ENI {id} (device {device_number}) is already in the datastore")]
    DuplicateEni {
        /// ENI id.
        id: String,
        /// Device number.
        device_number: u32,
    },
    /// The ENI is not known.
    #[error("ENI {id} is not in the datastore")]
    UnknownEni {
        /// ENI id.
        id: String,
    },
    /// The ENI still has pods.
    #[error("ENI {id} still has {assigned} assigned IPs")]
    EniInUse {
        /// ENI id.
        id: String,
        /// How many.
        assigned: usize,
    },
    /// The address is already known.
    #[error("IP {ip} is already in the datastore (ENI {eni})")]
    DuplicateIp {
        /// The address.
        ip: Ipv4Addr,
        /// Its ENI.
        eni: String,
    },
    /// The address is an ENI's primary address.
    #[error("IP {ip} is the primary address of ENI {eni} and is never given to pods")]
    PrimaryIp {
        /// The address.
        ip: Ipv4Addr,
        /// The ENI.
        eni: String,
    },
    /// The address is outside the ENI's subnet.
    #[error("IP {ip} is outside subnet {subnet} of ENI {eni}")]
    OutsideSubnet {
        /// The address.
        ip: Ipv4Addr,
        /// The ENI.
        eni: String,
        /// Its subnet.
        subnet: Ipv4Net,
    },
    /// The address is one the VPC reserves in the subnet.
    #[error(
        "IP {ip} is reserved by the VPC in subnet {subnet} of ENI {eni} and is never given to pods"
    )]
    ReservedIp {
        /// The address.
        ip: Ipv4Addr,
        /// The ENI.
        eni: String,
        /// Its subnet.
        subnet: Ipv4Net,
    },
    /// The address is not known.
    #[error("IP {ip} is not in the datastore")]
    UnknownIp {
        /// The address.
        ip: Ipv4Addr,
    },
    /// The address is assigned.
    #[error("IP {ip} is assigned to {key}")]
    IpAssigned {
        /// The address.
        ip: Ipv4Addr,
        /// Its holder.
        key: IpamKey,
    },
    /// The key already holds another address (restore).
    #[error("{key} already holds IP {ip}")]
    KeyAssigned {
        /// The key.
        key: IpamKey,
        /// The address it holds.
        ip: Ipv4Addr,
    },
    /// A delegated prefix must be an aligned /28.
    #[error("{prefix} of ENI {eni} is not an aligned /28 prefix")]
    NotAPrefix {
        /// The prefix.
        prefix: Ipv4Net,
        /// The ENI.
        eni: String,
    },
    /// The ENI does not hold this prefix.
    #[error("prefix {prefix} is not on ENI {eni} in the datastore")]
    UnknownPrefix {
        /// The prefix.
        prefix: Ipv4Net,
        /// The ENI.
        eni: String,
    },
    /// An address of the prefix is assigned or cooling down.
    #[error("prefix {prefix} of ENI {eni} is in use ({ip} is assigned or cooling down)")]
    PrefixInUse {
        /// The prefix.
        prefix: Ipv4Net,
        /// The ENI.
        eni: String,
        /// The address in use.
        ip: Ipv4Addr,
    },
}

/// No address can be assigned; the message says why, with numbers.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{message}")]
pub struct NoAssignableIp {
    /// The user-facing explanation.
    pub message: String,
    /// The counts at the time.
    pub stats: Stats,
}

/// The result of [`crate::datastore::Datastore::release`], needed to undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// What was released.
    pub assignment: Assignment,
}

/// How one delegated prefix is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixView {
    /// The /28.
    pub prefix: Ipv4Net,
    /// Its addresses assigned to pods.
    pub assigned: usize,
    /// Its addresses cooling down.
    pub cooling: usize,
}

impl PrefixView {
    /// No address of it is assigned (the reference's free prefix; cooling ones may remain).
    pub fn is_free(&self) -> bool {
        self.assigned == 0
    }
}

/// A view of one ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniView {
    /// The ENI.
    pub spec: EniSpec,
    /// Its addresses for pods: secondary ones and those of its prefixes.
    pub total: usize,
    /// Assigned ones.
    pub assigned: usize,
    /// Cooling ones.
    pub cooling: usize,
    /// Its secondary addresses (each takes one of the ENI's slots in EC2).
    pub secondary: usize,
    /// Its delegated prefixes (each takes one slot), lowest first.
    pub prefixes: Vec<PrefixView>,
    /// Its addresses go to no new pod (its subnet was excluded).
    pub excluded: bool,
}

impl EniView {
    /// Slots it uses in EC2: secondary addresses plus prefixes.
    pub fn slots(&self) -> usize {
        self.secondary + self.prefixes.len()
    }

    /// Its prefixes none of whose addresses is assigned.
    pub fn free_prefixes(&self) -> usize {
        self.prefixes.iter().filter(|p| p.is_free()).count()
    }
}

/// What ends an exhaustion message: what limits the pool now and what happens next. Asked at
/// the moment the message is made, with the counts of that moment.
pub trait CapacityNote: Send + Sync + fmt::Debug {
    /// The note, or `None` when there is nothing to add.
    fn note(&self, stats: &Stats) -> Option<String>;
}

impl CapacityNote for String {
    fn note(&self, _stats: &Stats) -> Option<String> {
        (!self.is_empty()).then(|| self.clone())
    }
}
