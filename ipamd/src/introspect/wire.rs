//! The JSON of the introspection endpoint, shared by the server and the `ipamd status` client.
//! Field names follow the reference's Go structs (exported field names, the `json` tags of
//! `IPAMKey`/`IPAMMetadata`); fields the reference does not have are marked "ours".

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Go's zero `time.Time`, as `encoding/json` writes it.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootResponse {
    /// The paths served.
    pub available_commands: Vec<String>,
}

/// Go's `net.IPNet` as `encoding/json` writes it: the mask is base64 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpNet {
    /// The address.
    #[serde(rename = "IP")]
    pub ip: String,
    /// base64 of the 4 mask bytes (`/////w==` for /32).
    pub mask: String,
}

impl IpNet {
    /// `ip/prefix_len`.
    pub fn new(ip: Ipv4Addr, prefix_len: u8) -> Self {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(prefix_len.min(32)))
            .unwrap_or(0);
        Self {
            ip: ip.to_string(),
            mask: base64(&bits.to_be_bytes()),
        }
    }

    /// `ip/prefix_len` of IPv6 (a 16-byte mask).
    pub fn new_v6(ip: std::net::Ipv6Addr, prefix_len: u8) -> Self {
        let bits = u128::MAX
            .checked_shl(128 - u32::from(prefix_len.min(128)))
            .unwrap_or(0);
        Self {
            ip: ip.to_string(),
            mask: base64(&bits.to_be_bytes()),
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// The reference's `IPAMKey` (json tags `networkName`, `containerID`, `ifName`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamKeyJson {
    /// CNI network name.
    #[serde(rename = "networkName")]
    pub network_name: String,
    /// Container ID (empty in `/v1/enis`, scrubbed as in the reference).
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name (empty in `/v1/enis`).
    #[serde(rename = "ifName")]
    pub if_name: String,
}

/// The reference's `IPAMMetadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamMetadataJson {
    /// Pod namespace.
    #[serde(
        rename = "k8sPodNamespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_pod_namespace: String,
    /// Pod name.
    #[serde(
        rename = "k8sPodName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_pod_name: String,
    /// Interfaces of the pod.
    #[serde(rename = "interfacesCount", default, skip_serializing_if = "is_zero")]
    pub interfaces_count: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The reference's `AddressInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressInfo {
    /// The address.
    pub address: String,
    /// Its holder.
    #[serde(rename = "IPAMKey")]
    pub ipam_key: IpamKeyJson,
    /// The holder's pod.
    #[serde(rename = "IPAMMetadata")]
    pub ipam_metadata: IpamMetadataJson,
    /// RFC 3339.
    pub assigned_time: String,
    /// RFC 3339 (Go's zero time when not released).
    pub unassigned_time: String,
}

/// The reference's `CidrInfo` (a secondary IP is a /32, a delegated prefix its /28).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CidrInfo {
    /// The CIDR.
    pub cidr: IpNet,
    /// Addresses handed out (assigned ones).
    #[serde(rename = "IPAddresses")]
    pub ip_addresses: BTreeMap<String, AddressInfo>,
    /// A delegated /28 prefix.
    pub is_prefix: bool,
    /// `"4"`.
    pub address_family: String,
}

/// The reference's `ENI`, plus counts and addresses of ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EniInfo {
    /// `eni-…`.
    #[serde(rename = "ID")]
    pub id: String,
    /// Device 0.
    pub is_primary: bool,
    /// Trunk ENI (never, in this build).
    pub is_trunk: bool,
    /// EFA (never, in this build).
    #[serde(rename = "IsEFA")]
    pub is_efa: bool,
    /// Its subnet is excluded from pod addresses (subnet discovery): no new pod gets one.
    #[serde(rename = "IsExcludedForPodIPs", default)]
    pub is_excluded_for_pod_ips: bool,
    /// Device number.
    pub device_number: u32,
    /// Host route table of its pods (254 = main for device 0).
    #[serde(rename = "RouteTableID")]
    pub route_table_id: u32,
    /// Ours: the ENI's own address.
    #[serde(rename = "PrimaryIP")]
    pub primary_ip: String,
    /// Ours: its subnet.
    #[serde(rename = "SubnetCIDR")]
    pub subnet_cidr: String,
    /// Its secondary IPs: all, assigned, cooling.
    #[serde(flatten)]
    pub ips: IpCounts,
    /// `ip/32` or `prefix/28` → CIDR.
    #[serde(rename = "AvailableIPv4Cidrs")]
    pub available_ipv4_cidrs: BTreeMap<String, CidrInfo>,
    /// Empty (IPv4 only).
    #[serde(rename = "IPv6Cidrs")]
    pub ipv6_cidrs: BTreeMap<String, CidrInfo>,
}

/// Secondary IPs by state: `TotalIPs` and `AssignedIPs` as the reference names them, and our
/// `CooldownIPs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpCounts {
    /// Secondary IPs.
    #[serde(rename = "TotalIPs")]
    pub total: usize,
    /// Assigned ones.
    #[serde(rename = "AssignedIPs")]
    pub assigned: usize,
    /// Cooling ones.
    #[serde(rename = "CooldownIPs")]
    pub cooling: usize,
}

impl IpCounts {
    /// Neither assigned nor cooling.
    pub fn free(&self) -> usize {
        self.total
            .saturating_sub(self.assigned)
            .saturating_sub(self.cooling)
    }
}

/// The reference's `ENIInfos` for one network card, plus our cooldown count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EniInfos {
    /// Its secondary IPs: all, assigned, cooling.
    #[serde(flatten)]
    pub ips: IpCounts,
    /// By ENI id.
    #[serde(rename = "ENIs")]
    pub enis: BTreeMap<String, EniInfo>,
}

/// One entry of `/v1/pods` (ours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PodInfo {
    /// The pod's address.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Its ENI.
    #[serde(rename = "ENI")]
    pub eni: String,
    /// The ENI's device number.
    pub device_number: u32,
    /// Host route table.
    #[serde(rename = "RouteTableID")]
    pub route_table_id: u32,
    /// The CNI key.
    #[serde(rename = "IPAMKey")]
    pub ipam_key: IpamKeyJson,
    /// The pod.
    #[serde(rename = "IPAMMetadata")]
    pub ipam_metadata: IpamMetadataJson,
    /// RFC 3339.
    pub assigned_time: String,
}

/// Instance limits in `/v1/pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LimitsJson {
    /// ENIs ipamd may use.
    #[serde(rename = "MaxENIs")]
    pub max_enis: u32,
    /// Pod IPs per ENI.
    #[serde(rename = "IPsPerENI")]
    pub ips_per_eni: u32,
    /// Max pods.
    pub max_pods: u32,
}

/// The last EC2 error in `/v1/pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CloudErrorJson {
    /// The API call.
    pub operation: String,
    /// Code and message.
    pub message: String,
    /// RFC 3339.
    pub time: String,
}

/// `/v1/pool` (ours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PoolReport {
    /// Serving CNI requests.
    pub ready: bool,
    /// `starting`, `ready` or `draining`.
    pub phase: String,
    /// What start-up waits for, or why nothing is assignable; empty otherwise.
    pub message: String,
    /// How addresses are obtained.
    pub mode: String,
    /// From metadata (empty until read).
    #[serde(rename = "InstanceID")]
    pub instance_id: String,
    /// From metadata (empty until read).
    pub instance_type: String,
    /// ENIs in the pool.
    #[serde(rename = "ENIs")]
    pub enis: usize,
    /// Its secondary IPs: all, assigned, cooling.
    #[serde(flatten)]
    pub ips: IpCounts,
    /// Assignable now.
    #[serde(rename = "AssignableIPs")]
    pub assignable_ips: usize,
    /// Instance limits (null when unknown).
    pub limits: Option<LimitsJson>,
    /// The last EC2 error (null when none).
    #[serde(rename = "LastEC2Error")]
    pub last_ec2_error: Option<CloudErrorJson>,
    /// The subnets new ENIs may go into, most free addresses first (EC2 mode).
    #[serde(default)]
    pub subnets: Vec<SubnetJson>,
    /// The node is cordoned and `AWS_MANAGE_ENIS_NON_SCHEDULABLE=false`: the pool neither
    /// grows nor frees ENIs.
    #[serde(default)]
    pub unschedulable: bool,
}

/// One subnet new ENIs may go into, in `/v1/pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SubnetJson {
    /// `subnet-…`.
    #[serde(rename = "SubnetID")]
    pub subnet_id: String,
    /// Its CIDR.
    #[serde(rename = "CIDR")]
    pub cidr: String,
    /// `AvailableIpAddressCount` as last read.
    #[serde(rename = "AvailableIPs")]
    pub available_ips: u32,
    /// The node's own subnet (else one tagged `kubernetes.io/role/cni`).
    pub node_subnet: bool,
    /// Fewer free addresses than [`SubnetJson::one_node_takes`].
    #[serde(rename = "LowIPs")]
    pub low_ips: bool,
    /// Addresses one more node of this instance type takes for its warm pool.
    pub one_node_takes: u32,
}

/// `t` in RFC 3339 with nanoseconds, trailing zeros trimmed, UTC (Go's `RFC3339Nano`).
pub fn rfc3339(t: SystemTime) -> String {
    let Ok(d) = t.duration_since(UNIX_EPOCH) else {
        return ZERO_TIME.to_owned();
    };
    let secs = d.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use super::*;

    #[test]
    fn ip_counts_are_fields_of_the_card_as_in_the_reference() {
        let card = EniInfos {
            ips: IpCounts {
                total: 9,
                assigned: 5,
                cooling: 1,
            },
            enis: BTreeMap::new(),
        };
        let json = serde_json::to_value(&card).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"TotalIPs": 9, "AssignedIPs": 5, "CooldownIPs": 1, "ENIs": {}})
        );
        assert_eq!(serde_json::from_value::<EniInfos>(json).unwrap(), card);
        assert_eq!(card.ips.free(), 3);
    }

    #[test]
    fn masks_are_base64_like_go() {
        assert_eq!(
            IpNet::new("10.0.0.11".parse().unwrap(), 32).mask,
            "/////w=="
        );
        assert_eq!(IpNet::new("10.0.0.0".parse().unwrap(), 24).mask, "////AA==");
        assert_eq!(IpNet::new("10.0.0.0".parse().unwrap(), 28).mask, "////8A==");
        assert_eq!(IpNet::new("0.0.0.0".parse().unwrap(), 0).mask, "AAAAAA==");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(1_723_456_789, 12_345_600);
        assert_eq!(rfc3339(t), "2024-08-12T09:59:49.0123456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), ZERO_TIME);
    }

    #[test]
    fn metadata_omits_empty_fields_like_go() {
        let m = IpamMetadataJson {
            k8s_pod_namespace: String::new(),
            k8s_pod_name: "web".into(),
            interfaces_count: 0,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"k8sPodName":"web"}"#
        );
        let back: IpamMetadataJson = serde_json::from_str(r#"{"k8sPodName":"web"}"#).unwrap();
        assert_eq!(back, m);
    }
}
