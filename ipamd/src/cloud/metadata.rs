//! The node as instance metadata describes it: the instance and its attached ENIs, read through
//! an [`Imds`] and checked for consistency (one ENI per device number, the primary MAC among the
//! attached ENIs, every address inside its subnet).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use futures::future::try_join_all;
use ipnet::Ipv4Net;
use thiserror::Error;

use super::imds::{Imds, ImdsError};
use crate::mac::MacAddr;

/// Instance metadata that does not add up, or could not be read.
#[derive(Debug, Error)]
pub enum MetadataError {
    /// A read failed.
    #[error(transparent)]
    Imds(#[from] ImdsError),
    /// The instance's primary MAC is not among the attached ENIs.
    #[error(
        "instance metadata: primary MAC {mac} (path mac) is not listed under network/interfaces/macs/"
    )]
    PrimaryMissing {
        /// The primary MAC.
        mac: MacAddr,
    },
    /// Two ENIs claim one device number.
    #[error("instance metadata: ENIs {first} and {second} both have device-number {device}")]
    DuplicateDevice {
        /// The device number.
        device: u32,
        /// One ENI.
        first: String,
        /// The other.
        second: String,
    },
    /// An ENI's prefix lies outside its subnet, or is not an aligned /28.
    #[error(
        "instance metadata: prefix {prefix} of ENI {eni} ({mac}) is not an aligned /28 of its subnet {subnet}"
    )]
    BadPrefix {
        /// The ENI.
        eni: String,
        /// Its MAC.
        mac: MacAddr,
        /// The prefix.
        prefix: Ipv4Net,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// An ENI's address lies outside its subnet.
    #[error("instance metadata: address {ip} of ENI {eni} ({mac}) is outside its subnet {subnet}")]
    OutsideSubnet {
        /// The ENI.
        eni: String,
        /// Its MAC.
        mac: MacAddr,
        /// The address.
        ip: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// The primary ENI has no IPv4 address.
    #[error("instance metadata: the primary ENI {eni} ({mac}) lists no local-ipv4s")]
    PrimaryWithoutAddress {
        /// The ENI.
        eni: String,
        /// Its MAC.
        mac: MacAddr,
    },
}

/// One attached ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniMetadata {
    /// `eni-…`.
    pub id: String,
    /// Its MAC (how ipamd finds its host link).
    pub mac: MacAddr,
    /// `device-number` (0 = primary ENI).
    pub device_number: u32,
    /// Whether this is the instance's primary ENI.
    pub is_primary: bool,
    /// The ENI's own (first) address; never given to pods.
    pub primary_ip: Ipv4Addr,
    /// The secondary addresses: with `ipv4_prefixes`, the pool.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// `ipv4-prefix`: delegated /28 prefixes.
    pub ipv4_prefixes: Vec<Ipv4Net>,
    /// `subnet-id`.
    pub subnet_id: String,
    /// `subnet-ipv4-cidr-block`.
    pub subnet: Ipv4Net,
    /// `vpc-ipv4-cidr-blocks`.
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// `security-group-ids`.
    pub security_groups: Vec<String>,
}

impl EniMetadata {
    /// The subnet's gateway: its network address + 1, as in a VPC.
    pub fn gateway(&self) -> Ipv4Addr {
        subnet_gateway(self.subnet)
    }
}

/// The VPC router address of a subnet (network address + 1).
pub fn subnet_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// The instance and its ENIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// `instance-id`.
    pub instance_id: String,
    /// `instance-type`.
    pub instance_type: String,
    /// `placement/availability-zone`.
    pub availability_zone: String,
    /// `placement/region` (or derived from the zone when IMDS lacks it).
    pub region: String,
    /// `mac`.
    pub primary_mac: MacAddr,
    /// `local-ipv4`.
    pub local_ipv4: Ipv4Addr,
    /// Attached ENIs with IPv4 addresses, by device number.
    pub enis: Vec<EniMetadata>,
}

impl InstanceMetadata {
    /// The VPC's IPv4 CIDRs (as the primary ENI reports them).
    pub fn vpc_cidrs(&self) -> Vec<Ipv4Net> {
        self.enis
            .iter()
            .find(|e| e.is_primary)
            .map(|e| e.vpc_cidrs.clone())
            .unwrap_or_default()
    }
}

/// Reads the whole instance description.
///
/// # Errors
/// A failed read (naming the path) or inconsistent metadata.
pub async fn fetch_instance(imds: &impl Imds) -> Result<InstanceMetadata, MetadataError> {
    let instance_id = imds.instance_id().await?;
    let instance_type = imds.instance_type().await?;
    let availability_zone = imds.availability_zone().await?;
    let region = match imds.region().await {
        Ok(r) => r,
        Err(ImdsError::NotFound { .. }) => region_of_zone(&availability_zone),
        Err(e) => return Err(e.into()),
    };
    let primary_mac = imds.primary_mac().await?;
    let local_ipv4 = imds.local_ipv4().await?;
    let enis = fetch_enis(imds, primary_mac).await?;
    Ok(InstanceMetadata {
        instance_id,
        instance_type,
        availability_zone,
        region,
        primary_mac,
        local_ipv4,
        enis,
    })
}

/// `us-west-2a` → `us-west-2`.
fn region_of_zone(zone: &str) -> String {
    zone.trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .to_owned()
}

/// Reads every attached ENI (skipping those without IPv4 addresses, such as EFA-only ENIs).
///
/// # Errors
/// A failed read (naming the path) or inconsistent metadata.
pub async fn fetch_enis(
    imds: &impl Imds,
    primary_mac: MacAddr,
) -> Result<Vec<EniMetadata>, MetadataError> {
    let macs = imds.macs().await?;
    if !macs.contains(&primary_mac) {
        return Err(MetadataError::PrimaryMissing { mac: primary_mac });
    }
    let fetched = try_join_all(
        macs.iter()
            .map(|&mac| fetch_eni(imds, mac, mac == primary_mac)),
    )
    .await?;
    let mut enis: Vec<EniMetadata> = fetched.into_iter().flatten().collect();
    enis.sort_by_key(|e| e.device_number);
    for pair in enis.windows(2) {
        if pair[0].device_number == pair[1].device_number {
            return Err(MetadataError::DuplicateDevice {
                device: pair[0].device_number,
                first: pair[0].id.clone(),
                second: pair[1].id.clone(),
            });
        }
    }
    Ok(enis)
}

async fn fetch_eni(
    imds: &impl Imds,
    mac: MacAddr,
    is_primary: bool,
) -> Result<Option<EniMetadata>, MetadataError> {
    let id = imds.interface_id(mac).await?;
    let device_number = imds.device_number(mac).await?;
    let ips = imds.local_ipv4s(mac).await?;
    let Some((&primary_ip, secondary)) = ips.split_first() else {
        if is_primary {
            return Err(MetadataError::PrimaryWithoutAddress { eni: id, mac });
        }
        tracing::info!(eni = %id, %mac, "ENI has no IPv4 addresses (EFA-only?); not used for pods");
        return Ok(None);
    };
    let subnet_id = imds.subnet_id(mac).await?;
    let subnet = imds.subnet_ipv4_cidr_block(mac).await?;
    let vpc_cidrs = imds.vpc_ipv4_cidr_blocks(mac).await?;
    let security_groups = imds.security_group_ids(mac).await?;
    let ipv4_prefixes = imds.ipv4_prefixes(mac).await?;
    if let Some(&prefix) = ipv4_prefixes
        .iter()
        .find(|p| p.prefix_len() != 28 || p.trunc() != **p || !subnet.contains(*p))
    {
        return Err(MetadataError::BadPrefix {
            eni: id,
            mac,
            prefix,
            subnet,
        });
    }
    let mut seen = BTreeSet::new();
    let mut secondary_ips = Vec::with_capacity(secondary.len());
    for &ip in std::iter::once(&primary_ip).chain(secondary) {
        if !subnet.contains(&ip) {
            return Err(MetadataError::OutsideSubnet {
                eni: id,
                mac,
                ip,
                subnet,
            });
        }
        if seen.insert(ip) && ip != primary_ip {
            secondary_ips.push(ip);
        }
    }
    Ok(Some(EniMetadata {
        id,
        mac,
        device_number,
        is_primary,
        primary_ip,
        secondary_ips,
        ipv4_prefixes,
        subnet_id,
        subnet,
        vpc_cidrs,
        security_groups,
    }))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::testing::fake_imds::FakeImds;

    fn node() -> FakeImds {
        FakeImds::two_enis("i-0123")
    }

    #[tokio::test]
    async fn reads_instance_and_enis_in_device_order() {
        let md = fetch_instance(&node()).await.unwrap();
        assert_eq!(md.instance_id, "i-0123");
        assert_eq!(md.region, "us-west-2");
        assert_eq!(md.local_ipv4, Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(md.enis.len(), 2);
        let (a, b) = (&md.enis[0], &md.enis[1]);
        assert!(a.is_primary && !b.is_primary);
        assert_eq!(a.primary_ip, Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(
            a.secondary_ips,
            vec![Ipv4Addr::new(10, 0, 0, 11), Ipv4Addr::new(10, 0, 0, 12)]
        );
        assert_eq!(b.device_number, 1);
        assert_eq!(b.gateway(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            md.vpc_cidrs(),
            vec!["10.0.0.0/16".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[tokio::test]
    async fn region_falls_back_to_the_zone() {
        let imds = node();
        imds.set_region(None);
        assert_eq!(fetch_instance(&imds).await.unwrap().region, "us-west-2");
    }

    #[tokio::test]
    async fn inconsistencies_are_errors() {
        let imds = node();
        imds.update(|enis| enis[1].device_number = 0);
        let err = fetch_instance(&imds).await.unwrap_err().to_string();
        assert!(err.contains("device-number 0"), "{err}");

        let imds = node();
        imds.update(|enis| enis[1].ips.push("10.9.9.9".parse().unwrap()));
        let err = fetch_instance(&imds).await.unwrap_err().to_string();
        assert!(err.contains("10.9.9.9") && err.contains("outside"), "{err}");

        let imds = node();
        imds.hide_from_listing("02:00:0a:00:00:0a".parse().unwrap());
        let err = fetch_instance(&imds).await.unwrap_err().to_string();
        assert!(err.contains("primary MAC"), "{err}");
    }

    #[tokio::test]
    async fn eni_without_addresses_is_skipped() {
        let imds = node();
        imds.update(|enis| enis[1].ips.clear());
        let md = fetch_instance(&imds).await.unwrap();
        assert_eq!(md.enis.len(), 1);
    }

    #[tokio::test]
    async fn read_failures_name_the_path() {
        let imds = node();
        imds.fail_path(Some("network/interfaces/macs/02:00:0a:00:00:0b/subnet-id"));
        let err = fetch_instance(&imds).await.unwrap_err().to_string();
        assert!(
            err.contains("/latest/meta-data/network/interfaces/macs/02:00:0a:00:00:0b/subnet-id"),
            "{err}"
        );
    }
}
