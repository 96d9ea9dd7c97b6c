//! The EC2 API as ipamd uses it: the [`Ec2Api`] trait with exactly the calls ipamd makes, in and
//! out through small domain types (never SDK types), and [`Ec2Error`], which classifies EC2's
//! answer into what the caller acts on (throttled, server error, not found, a limit, the subnet
//! being full, missing permissions, anything else with EC2's code and message).
//!
//! Implementations: [`super::ec2_sdk::SdkEc2`] over aws-sdk-ec2, [`super::ec2_client::Ec2Client`]
//! (counting, timing and retrying any implementation), and the stateful fake of the unit tests
//! (`crate::testing::fake_ec2`).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::SystemTime;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use ipnet::{Ipv4Net, Ipv6Net};
use thiserror::Error;

use crate::mac::MacAddr;

/// Tag naming the instance an ENI was created for.
pub const INSTANCE_ID_TAG: &str = "node.k8s.amazonaws.com/instance_id";
/// Tag holding an ENI's creation time (RFC 3339); the leaked-ENI cleanup reads it.
pub const CREATED_AT_TAG: &str = "node.k8s.amazonaws.com/createdAt";
/// `no_manage=true` makes ipamd leave an ENI alone (it still counts against the ENI limit).
pub const NO_MANAGE_TAG: &str = "node.k8s.amazonaws.com/no_manage";
/// Cluster tag written when `CLUSTER_NAME` is set.
pub const CLUSTER_NAME_TAG: &str = "cluster.k8s.amazonaws.com/name";
/// Owner tag written with the cluster tag.
pub const ENI_OWNER_TAG: &str = "eks:eni:owner";
/// Value of [`ENI_OWNER_TAG`].
pub const ENI_OWNER_VALUE: &str = "amazon-vpc-cni";
/// Description prefix of every ENI ipamd creates (`aws-K8S-<instance id>`).
pub const ENI_DESCRIPTION_PREFIX: &str = "aws-K8S-";

/// The IAM actions behind the [`Ec2Api`] methods, i.e. every EC2 action ipamd can call. The IAM
/// policy in `conf/` must list exactly these.
pub const EC2_ACTIONS: [&str; 13] = [
    "ec2:AssignIpv6Addresses",
    "ec2:AssignPrivateIpAddresses",
    "ec2:AttachNetworkInterface",
    "ec2:CreateNetworkInterface",
    "ec2:CreateTags",
    "ec2:DeleteNetworkInterface",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeInstances",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DetachNetworkInterface",
    "ec2:ModifyNetworkInterfaceAttribute",
    "ec2:UnassignPrivateIpAddresses",
];

/// ENI tags, ordered by key.
pub type Tags = BTreeMap<String, String>;

/// A time as RFC 3339 (`2024-05-01T10:00:00Z`), as the reference writes `createdAt`.
pub fn rfc3339(t: SystemTime) -> String {
    DateTime::from(t)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Parses an RFC 3339 `createdAt` (also with fractional seconds); `None` when unreadable.
pub fn parse_created_at(value: &str) -> Option<SystemTime> {
    DateTime::from_str(value, Format::DateTime)
        .ok()
        .and_then(|d| SystemTime::try_from(d).ok())
}

/// What an instance type allows, for the default network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeLimits {
    /// `m5.large`, …
    pub instance_type: String,
    /// ENIs that can be attached (`MaximumNetworkInterfaces` of the default network card).
    pub max_enis: u32,
    /// IPv4 addresses per ENI, the ENI's own primary address included
    /// (`Ipv4AddressesPerInterface`).
    pub ipv4_per_eni: u32,
    /// Default vCPUs (`VCpuInfo.DefaultVCpus`; 0 when EC2 did not say).
    pub vcpus: u32,
    /// The platform (`Hypervisor`, `BareMetal`): prefix delegation needs Nitro or bare metal.
    pub platform: Platform,
}

/// How EC2 runs an instance type, as far as prefix delegation is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Hypervisor `nitro`.
    Nitro,
    /// A bare-metal type (no hypervisor).
    BareMetal,
    /// Hypervisor `xen`.
    Xen,
    /// EC2 named no hypervisor and the type is not bare metal.
    Unknown,
}

impl Platform {
    /// From `DescribeInstanceTypes`' `Hypervisor` and `BareMetal`.
    pub fn from_ec2(hypervisor: Option<&str>, bare_metal: bool) -> Self {
        match hypervisor {
            Some("nitro") => Self::Nitro,
            Some("xen") => Self::Xen,
            _ if bare_metal => Self::BareMetal,
            _ => Self::Unknown,
        }
    }

    /// Whether EC2 can delegate prefixes to the type's ENIs (the reference's
    /// `IsPrefixDelegationSupported`: Nitro or bare metal).
    pub fn supports_prefix_delegation(self) -> bool {
        matches!(self, Self::Nitro | Self::BareMetal)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Nitro => "nitro",
            Self::BareMetal => "bare metal",
            Self::Xen => "xen",
            Self::Unknown => "unknown hypervisor",
        })
    }
}

/// The state of an ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EniStatus {
    /// Not attached to anything.
    Available,
    /// Being attached.
    Attaching,
    /// Attached.
    InUse,
    /// Being detached.
    Detaching,
    /// Another state EC2 reported.
    Other(String),
}

impl EniStatus {
    /// Parses EC2's status string.
    pub fn parse(value: &str) -> Self {
        match value {
            "available" => Self::Available,
            "attaching" => Self::Attaching,
            "in-use" => Self::InUse,
            "detaching" => Self::Detaching,
            other => Self::Other(other.to_owned()),
        }
    }

    /// EC2's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Available => "available",
            Self::Attaching => "attaching",
            Self::InUse => "in-use",
            Self::Detaching => "detaching",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for EniStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A subnet as `DescribeSubnets` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// `subnet-…`.
    pub id: String,
    /// Its IPv4 CIDR.
    pub cidr: Ipv4Net,
    /// Its Availability Zone.
    pub availability_zone: String,
    /// Its VPC.
    pub vpc_id: String,
    /// `AvailableIpAddressCount`: addresses no ENI holds (EC2's five reserved ones excluded).
    pub available_ips: u32,
    /// Its tags.
    pub tags: Tags,
}

/// An ENI's attachment to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniAttachment {
    /// `eni-attach-…`.
    pub attachment_id: String,
    /// The instance it is attached to.
    pub instance_id: Option<String>,
    /// Its device index on the instance.
    pub device_index: Option<u32>,
    /// Its network card.
    pub network_card_index: Option<u32>,
    /// `attaching`, `attached`, `detaching`, `detached`.
    pub status: String,
    /// Whether the ENI is deleted with the instance.
    pub delete_on_termination: bool,
}

/// An ENI as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    /// `eni-…`.
    pub id: String,
    /// Its MAC.
    pub mac: Option<MacAddr>,
    /// Its description.
    pub description: String,
    /// Its state.
    pub status: EniStatus,
    /// Its subnet.
    pub subnet_id: String,
    /// Its VPC.
    pub vpc_id: String,
    /// The ENI's own address.
    pub primary_ip: Option<Ipv4Addr>,
    /// Every private IPv4 address, primary included.
    pub private_ips: Vec<Ipv4Addr>,
    /// Its delegated IPv4 prefixes (/28).
    pub ipv4_prefixes: Vec<Ipv4Net>,
    /// Its delegated IPv6 prefixes (/80).
    pub ipv6_prefixes: Vec<Ipv6Net>,
    /// Its attachment, if attached.
    pub attachment: Option<EniAttachment>,
    /// Its tags.
    pub tags: Tags,
    /// Its security groups.
    pub security_groups: Vec<String>,
}

impl NetworkInterface {
    /// The private addresses other than the ENI's own (the ones pods get).
    pub fn secondary_ips(&self) -> Vec<Ipv4Addr> {
        self.private_ips
            .iter()
            .copied()
            .filter(|ip| Some(*ip) != self.primary_ip)
            .collect()
    }

    /// Tagged `node.k8s.amazonaws.com/no_manage=true`.
    pub fn is_no_manage(&self) -> bool {
        self.tags
            .get(NO_MANAGE_TAG)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// One ENI attached to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEni {
    /// `eni-…`.
    pub eni_id: String,
    /// Its device index.
    pub device_index: u32,
    /// Its network card.
    pub network_card_index: u32,
}

/// An instance, as far as ipamd needs it (which device indexes are taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `i-…`.
    pub id: String,
    /// Its instance type.
    pub instance_type: String,
    /// Its attached ENIs.
    pub enis: Vec<InstanceEni>,
}

impl Instance {
    /// The lowest device index on network card 0 that no ENI uses (0..=99, as the reference).
    pub fn first_free_device_index(&self) -> Option<u32> {
        (0..100).find(|i| {
            !self
                .enis
                .iter()
                .any(|e| e.network_card_index == 0 && e.device_index == *i)
        })
    }
}

/// A new ENI: `CreateNetworkInterface` with its secondary addresses or prefixes in the same
/// call (never both: EC2 refuses the combination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEni {
    /// The subnet.
    pub subnet_id: String,
    /// Security groups.
    pub security_groups: Vec<String>,
    /// `aws-K8S-<instance id>`.
    pub description: String,
    /// How many secondary addresses EC2 assigns at creation.
    pub secondary_ip_count: u32,
    /// How many /28 prefixes EC2 delegates at creation (`Ipv4PrefixCount`).
    pub prefix_count: u32,
    /// Tags written at creation.
    pub tags: Tags,
    /// Idempotency token, so a retried create never makes two ENIs.
    pub client_token: String,
}

/// A `DescribeNetworkInterfaces` filter (`Name` and `Values`, as EC2 spells them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// e.g. `tag-key`, `status`, `vpc-id`, `tag:<key>`.
    pub name: String,
    /// Accepted values.
    pub values: Vec<String>,
}

impl Filter {
    /// A filter with one value.
    pub fn one(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            values: vec![value.into()],
        }
    }
}

/// What kind of failure an EC2 call had; the caller acts on this, never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ec2ErrorKind {
    /// `RequestLimitExceeded` and other throttling codes: the request was not executed.
    Throttled,
    /// HTTP 5xx (`InternalError`, `ServiceUnavailable`, `Unavailable`).
    Server,
    /// No answer within `HTTP_TIMEOUT`.
    Timeout,
    /// Connection refused, DNS, TLS and other transport failures.
    Transport,
    /// `*.NotFound`: the ENI, attachment or instance does not exist.
    NotFound,
    /// `PrivateIpAddressLimitExceeded`: the ENI holds as many addresses as it can.
    IpLimitExceeded,
    /// `AttachmentLimitExceeded` / `NetworkInterfaceLimitExceeded`: no more ENIs.
    EniLimitExceeded,
    /// `InsufficientFreeAddressesInSubnet`: the subnet is full.
    SubnetFull,
    /// `InsufficientCidrBlocks`: no aligned /28 is free in the subnet (it may still have free
    /// addresses, scattered: the subnet is fragmented).
    NoFreePrefix,
    /// `UnauthorizedOperation` and credential failures: the IAM policy lacks an action.
    Unauthorized,
    /// No region or credentials could be found; nothing was sent.
    Config,
    /// The response could not be understood.
    InvalidResponse,
    /// Anything else (the code and message say what).
    Other,
}

impl Ec2ErrorKind {
    /// Classifies an EC2 error code (and the HTTP status, when known).
    pub fn classify(code: &str, status: Option<u16>) -> Self {
        match code {
            "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "SlowDown"
            | "EC2ThrottledException"
            | "PriorRequestNotComplete" => Self::Throttled,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => {
                Self::Server
            }
            "PrivateIpAddressLimitExceeded" => Self::IpLimitExceeded,
            "AttachmentLimitExceeded" | "NetworkInterfaceLimitExceeded" => Self::EniLimitExceeded,
            "InsufficientFreeAddressesInSubnet" => Self::SubnetFull,
            "InsufficientCidrBlocks" => Self::NoFreePrefix,
            "UnauthorizedOperation"
            | "AuthFailure"
            | "Blocked"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "OptInRequired" => Self::Unauthorized,
            c if c.ends_with(".NotFound") || c.ends_with("NotFound") => Self::NotFound,
            _ if status.is_some_and(|s| s >= 500) => Self::Server,
            _ if status == Some(429) => Self::Throttled,
            _ => Self::Other,
        }
    }

    /// Short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Server => "server",
            Self::Timeout => "timeout",
            Self::Transport => "transport",
            Self::NotFound => "not_found",
            Self::IpLimitExceeded => "ip_limit_exceeded",
            Self::EniLimitExceeded => "eni_limit_exceeded",
            Self::SubnetFull => "subnet_full",
            Self::NoFreePrefix => "no_free_prefix",
            Self::Unauthorized => "unauthorized",
            Self::Config => "config",
            Self::InvalidResponse => "invalid_response",
            Self::Other => "other",
        }
    }
}

/// A failed EC2 call: which API, what kind of failure, and EC2's own code and message.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("EC2 {api} failed: {code}: {message}")]
pub struct Ec2Error {
    /// The API (`CreateNetworkInterface`, …).
    pub api: &'static str,
    /// The classification.
    pub kind: Ec2ErrorKind,
    /// EC2's error code (or ours for transport failures: `Timeout`, `Transport`, …).
    pub code: String,
    /// EC2's message (or the cause chain).
    pub message: String,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
}

impl Ec2Error {
    /// An error from EC2's code and message, classified.
    pub fn from_code(
        api: &'static str,
        code: impl Into<String>,
        message: impl Into<String>,
        status: Option<u16>,
    ) -> Self {
        let code = code.into();
        Self {
            api,
            kind: Ec2ErrorKind::classify(&code, status),
            code,
            message: message.into(),
            status,
        }
    }

    /// An error of a known kind whose code is the kind's name (transport, timeout, config).
    pub fn new(api: &'static str, kind: Ec2ErrorKind, message: impl Into<String>) -> Self {
        let code = match kind {
            Ec2ErrorKind::Timeout => "Timeout",
            Ec2ErrorKind::Transport => "Transport",
            Ec2ErrorKind::Config => "Config",
            Ec2ErrorKind::InvalidResponse => "InvalidResponse",
            Ec2ErrorKind::Throttled => "RequestLimitExceeded",
            Ec2ErrorKind::Server => "InternalError",
            Ec2ErrorKind::NotFound => "NotFound",
            Ec2ErrorKind::IpLimitExceeded => "PrivateIpAddressLimitExceeded",
            Ec2ErrorKind::EniLimitExceeded => "AttachmentLimitExceeded",
            Ec2ErrorKind::SubnetFull => "InsufficientFreeAddressesInSubnet",
            Ec2ErrorKind::NoFreePrefix => "InsufficientCidrBlocks",
            Ec2ErrorKind::Unauthorized => "UnauthorizedOperation",
            Ec2ErrorKind::Other => "Unknown",
        };
        Self {
            api,
            kind,
            code: code.to_owned(),
            message: message.into(),
            status: None,
        }
    }

    /// Worth retrying the same request after a pause: throttling, 5xx, timeouts and transport
    /// failures. Whether a retry is *safe* depends on the call (see `Ec2Client`).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            Ec2ErrorKind::Throttled
                | Ec2ErrorKind::Server
                | Ec2ErrorKind::Timeout
                | Ec2ErrorKind::Transport
        )
    }

    /// The request certainly did not run (throttled), so even a non-idempotent call may repeat.
    pub fn not_executed(&self) -> bool {
        self.kind == Ec2ErrorKind::Throttled
    }
}

/// The EC2 calls ipamd makes. Every method names its API in errors.
pub trait Ec2Api: Send + Sync + 'static {
    /// `DescribeInstanceTypes` for the given types.
    fn describe_instance_types(
        &self,
        instance_types: &[String],
    ) -> impl Future<Output = Result<Vec<InstanceTypeLimits>, Ec2Error>> + Send;

    /// `DescribeNetworkInterfaces` by id. Unknown ids fail the call with a NotFound error, as
    /// EC2 does.
    fn describe_network_interfaces(
        &self,
        eni_ids: &[String],
    ) -> impl Future<Output = Result<Vec<NetworkInterface>, Ec2Error>> + Send;

    /// `DescribeNetworkInterfaces` with filters, every page.
    fn describe_network_interfaces_filtered(
        &self,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<NetworkInterface>, Ec2Error>> + Send;

    /// `DescribeSubnets` with filters, every page.
    fn describe_subnets(
        &self,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<Subnet>, Ec2Error>> + Send;

    /// `DescribeInstances` for one instance (its attached ENIs and device indexes).
    fn describe_instance(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Instance, Ec2Error>> + Send;

    /// `CreateNetworkInterface` with secondary addresses, tags and an idempotency token.
    fn create_network_interface(
        &self,
        request: &CreateEni,
    ) -> impl Future<Output = Result<NetworkInterface, Ec2Error>> + Send;

    /// `AttachNetworkInterface` on network card 0; returns the attachment id.
    fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> impl Future<Output = Result<String, Ec2Error>> + Send;

    /// `ModifyNetworkInterfaceAttribute` setting the attachment's DeleteOnTermination.
    fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `DetachNetworkInterface`.
    fn detach_network_interface(
        &self,
        attachment_id: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `DeleteNetworkInterface`.
    fn delete_network_interface(
        &self,
        eni_id: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `AssignPrivateIpAddresses` with a count; returns the addresses EC2 reports for the ENI
    /// (the new ones; some implementations report all of the ENI's addresses, so callers take
    /// the difference with what they know).
    fn assign_private_ip_addresses(
        &self,
        eni_id: &str,
        count: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Addr>, Ec2Error>> + Send;

    /// `UnassignPrivateIpAddresses`.
    fn unassign_private_ip_addresses(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `AssignPrivateIpAddresses` with `Ipv4PrefixCount`; returns the new prefixes.
    fn assign_ipv4_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Net>, Ec2Error>> + Send;

    /// `UnassignPrivateIpAddresses` with `Ipv4Prefix.N`.
    fn unassign_ipv4_prefixes(
        &self,
        eni_id: &str,
        prefixes: &[Ipv4Net],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `AssignIpv6Addresses` with `Ipv6PrefixCount` (IPv6 mode: the primary ENI's /80);
    /// returns the new prefixes.
    fn assign_ipv6_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> impl Future<Output = Result<Vec<Ipv6Net>, Ec2Error>> + Send;

    /// `CreateTags` on the given resources.
    fn create_tags(
        &self,
        resource_ids: &[String],
        tags: &Tags,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

/// The EC2 of the modes that make no EC2 calls: a type with no values, so no call can exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEc2 {}

impl Ec2Api for NoEc2 {
    async fn describe_instance_types(
        &self,
        _: &[String],
    ) -> Result<Vec<InstanceTypeLimits>, Ec2Error> {
        match *self {}
    }

    async fn describe_network_interfaces(
        &self,
        _: &[String],
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        match *self {}
    }

    async fn describe_network_interfaces_filtered(
        &self,
        _: &[Filter],
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        match *self {}
    }

    async fn describe_subnets(&self, _: &[Filter]) -> Result<Vec<Subnet>, Ec2Error> {
        match *self {}
    }

    async fn describe_instance(&self, _: &str) -> Result<Instance, Ec2Error> {
        match *self {}
    }

    async fn create_network_interface(&self, _: &CreateEni) -> Result<NetworkInterface, Ec2Error> {
        match *self {}
    }

    async fn attach_network_interface(&self, _: &str, _: &str, _: u32) -> Result<String, Ec2Error> {
        match *self {}
    }

    async fn set_delete_on_termination(&self, _: &str, _: &str) -> Result<(), Ec2Error> {
        match *self {}
    }

    async fn detach_network_interface(&self, _: &str) -> Result<(), Ec2Error> {
        match *self {}
    }

    async fn delete_network_interface(&self, _: &str) -> Result<(), Ec2Error> {
        match *self {}
    }

    async fn assign_private_ip_addresses(
        &self,
        _: &str,
        _: u32,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        match *self {}
    }

    async fn unassign_private_ip_addresses(&self, _: &str, _: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        match *self {}
    }

    async fn assign_ipv4_prefixes(&self, _: &str, _: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        match *self {}
    }

    async fn unassign_ipv4_prefixes(&self, _: &str, _: &[Ipv4Net]) -> Result<(), Ec2Error> {
        match *self {}
    }

    async fn assign_ipv6_prefixes(&self, _: &str, _: u32) -> Result<Vec<Ipv6Net>, Ec2Error> {
        match *self {}
    }

    async fn create_tags(&self, _: &[String], _: &Tags) -> Result<(), Ec2Error> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_classified() {
        use Ec2ErrorKind as K;
        for (code, status, kind) in [
            ("RequestLimitExceeded", Some(503), K::Throttled),
            ("Throttling", Some(400), K::Throttled),
            ("InternalError", Some(500), K::Server),
            ("Whatever", Some(503), K::Server),
            ("InvalidNetworkInterfaceID.NotFound", Some(400), K::NotFound),
            ("InvalidAttachmentID.NotFound", Some(400), K::NotFound),
            (
                "PrivateIpAddressLimitExceeded",
                Some(400),
                K::IpLimitExceeded,
            ),
            ("AttachmentLimitExceeded", Some(400), K::EniLimitExceeded),
            (
                "InsufficientFreeAddressesInSubnet",
                Some(400),
                K::SubnetFull,
            ),
            ("InsufficientCidrBlocks", Some(400), K::NoFreePrefix),
            ("UnauthorizedOperation", Some(403), K::Unauthorized),
            ("InvalidParameterValue", Some(400), K::Other),
        ] {
            assert_eq!(Ec2ErrorKind::classify(code, status), kind, "{code}");
        }
        let e = Ec2Error::from_code(
            "AssignPrivateIpAddresses",
            "RequestLimitExceeded",
            "Request limit exceeded.",
            Some(503),
        );
        assert!(e.is_transient() && e.not_executed());
        assert_eq!(
            e.to_string(),
            "EC2 AssignPrivateIpAddresses failed: RequestLimitExceeded: Request limit exceeded."
        );
        let e = Ec2Error::new("DescribeInstances", K::Timeout, "no answer in 10s");
        assert!(e.is_transient() && !e.not_executed());
        assert!(!Ec2Error::new("X", K::SubnetFull, "full").is_transient());
    }

    #[test]
    fn first_free_device_index_skips_used_ones_on_card_zero() {
        let inst = Instance {
            id: "i-1".into(),
            instance_type: "m5.large".into(),
            enis: vec![
                InstanceEni {
                    eni_id: "eni-a".into(),
                    device_index: 0,
                    network_card_index: 0,
                },
                InstanceEni {
                    eni_id: "eni-b".into(),
                    device_index: 2,
                    network_card_index: 0,
                },
                InstanceEni {
                    eni_id: "eni-c".into(),
                    device_index: 1,
                    network_card_index: 1,
                },
            ],
        };
        assert_eq!(inst.first_free_device_index(), Some(1));
    }

    #[test]
    fn no_manage_and_secondary_ips() {
        let eni = NetworkInterface {
            id: "eni-a".into(),
            mac: None,
            description: String::new(),
            status: EniStatus::parse("in-use"),
            subnet_id: "subnet-1".into(),
            vpc_id: "vpc-1".into(),
            primary_ip: Some(Ipv4Addr::new(10, 0, 0, 10)),
            private_ips: vec![Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)],
            ipv4_prefixes: vec![],
            ipv6_prefixes: vec![],
            attachment: None,
            tags: Tags::from([(NO_MANAGE_TAG.to_owned(), "true".to_owned())]),
            security_groups: vec![],
        };
        assert!(eni.is_no_manage());
        assert_eq!(eni.secondary_ips(), vec![Ipv4Addr::new(10, 0, 0, 11)]);
        assert_eq!(eni.status, EniStatus::InUse);
        assert_eq!(EniStatus::parse("weird").to_string(), "weird");
    }
}
