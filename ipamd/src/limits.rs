//! The instance's limits: how many ENIs it can attach and how many IPv4 addresses each ENI can
//! hold, from EC2's `DescribeInstanceTypes` (the default network card's
//! `MaximumNetworkInterfaces`, and `Ipv4AddressesPerInterface`), with a built-in table of common
//! instance types for when that call fails. `MAX_ENI` lowers the ENI limit; an ENI has
//! `Ipv4AddressesPerInterface − 1` slots for pod addresses (the ENI's own address is never a
//! pod's), each one secondary address or, with prefix delegation (Nitro and bare-metal types
//! only), one /28 prefix of 16 addresses. Max pods without the Kubernetes API is what the EKS
//! AMI's max-pods calculator gives kubelet for the mode (see [`Limits::max_pods`]).
//!
//! moto and other fakes do not enforce these limits; ipamd does, for every ENI and address it
//! asks for.

use std::fmt;

use thiserror::Error;

use crate::cloud::ec2::{Ec2Api, Ec2Error, InstanceTypeLimits, Platform};
use Platform::{BareMetal, Nitro, Xen};

/// `(instance type, ENIs on the default network card, IPv4 addresses per ENI, default vCPUs,
/// platform)` of common instance types, as EC2's `DescribeInstanceTypes` reports them (the
/// Xen types are there so that prefix delegation's Nitro check has something to refuse).
pub const BUILTIN_LIMITS: [(&str, u32, u32, u32, Platform); 83] = [
    ("t3.nano", 2, 2, 2, Nitro),
    ("t3.micro", 2, 2, 2, Nitro),
    ("t3.small", 3, 4, 2, Nitro),
    ("t3.medium", 3, 6, 2, Nitro),
    ("t3.large", 3, 12, 2, Nitro),
    ("t3.xlarge", 4, 15, 4, Nitro),
    ("t3.2xlarge", 4, 15, 8, Nitro),
    ("t3a.nano", 2, 2, 2, Nitro),
    ("t3a.micro", 2, 2, 2, Nitro),
    ("t3a.small", 2, 4, 2, Nitro),
    ("t3a.medium", 3, 6, 2, Nitro),
    ("t3a.large", 3, 12, 2, Nitro),
    ("t3a.xlarge", 4, 15, 4, Nitro),
    ("t3a.2xlarge", 4, 15, 8, Nitro),
    ("m5.large", 3, 10, 2, Nitro),
    ("m5.xlarge", 4, 15, 4, Nitro),
    ("m5.2xlarge", 4, 15, 8, Nitro),
    ("m5.4xlarge", 8, 30, 16, Nitro),
    ("m5.8xlarge", 8, 30, 32, Nitro),
    ("m5.12xlarge", 8, 30, 48, Nitro),
    ("m5.16xlarge", 15, 50, 64, Nitro),
    ("m5.24xlarge", 15, 50, 96, Nitro),
    ("m5.metal", 15, 50, 96, BareMetal),
    ("m6i.large", 3, 10, 2, Nitro),
    ("m6i.xlarge", 4, 15, 4, Nitro),
    ("m6i.2xlarge", 4, 15, 8, Nitro),
    ("m6i.4xlarge", 8, 30, 16, Nitro),
    ("m6i.8xlarge", 8, 30, 32, Nitro),
    ("m6i.12xlarge", 8, 30, 48, Nitro),
    ("m6i.16xlarge", 15, 50, 64, Nitro),
    ("m6i.24xlarge", 15, 50, 96, Nitro),
    ("m6i.32xlarge", 15, 50, 128, Nitro),
    ("m6i.metal", 15, 50, 128, BareMetal),
    ("m7i.large", 3, 10, 2, Nitro),
    ("m7i.xlarge", 4, 15, 4, Nitro),
    ("m7i.2xlarge", 4, 15, 8, Nitro),
    ("m7i.4xlarge", 8, 30, 16, Nitro),
    ("m7i.8xlarge", 8, 30, 32, Nitro),
    ("m7i.12xlarge", 8, 30, 48, Nitro),
    ("m7i.16xlarge", 15, 50, 64, Nitro),
    ("m7i.24xlarge", 15, 50, 96, Nitro),
    ("m7i.48xlarge", 15, 50, 192, Nitro),
    ("c5.large", 3, 10, 2, Nitro),
    ("c5.xlarge", 4, 15, 4, Nitro),
    ("c5.2xlarge", 4, 15, 8, Nitro),
    ("c5.4xlarge", 8, 30, 16, Nitro),
    ("c5.9xlarge", 8, 30, 36, Nitro),
    ("c5.12xlarge", 8, 30, 48, Nitro),
    ("c5.18xlarge", 15, 50, 72, Nitro),
    ("c5.24xlarge", 15, 50, 96, Nitro),
    ("c5.metal", 15, 50, 96, BareMetal),
    ("c6i.large", 3, 10, 2, Nitro),
    ("c6i.xlarge", 4, 15, 4, Nitro),
    ("c6i.2xlarge", 4, 15, 8, Nitro),
    ("c6i.4xlarge", 8, 30, 16, Nitro),
    ("c6i.8xlarge", 8, 30, 32, Nitro),
    ("c6i.12xlarge", 8, 30, 48, Nitro),
    ("c6i.16xlarge", 15, 50, 64, Nitro),
    ("c6i.24xlarge", 15, 50, 96, Nitro),
    ("c6i.32xlarge", 15, 50, 128, Nitro),
    ("c6i.metal", 15, 50, 128, BareMetal),
    ("r5.large", 3, 10, 2, Nitro),
    ("r5.xlarge", 4, 15, 4, Nitro),
    ("r5.2xlarge", 4, 15, 8, Nitro),
    ("r5.4xlarge", 8, 30, 16, Nitro),
    ("r5.8xlarge", 8, 30, 32, Nitro),
    ("r5.12xlarge", 8, 30, 48, Nitro),
    ("r5.16xlarge", 15, 50, 64, Nitro),
    ("r5.24xlarge", 15, 50, 96, Nitro),
    ("r5.metal", 15, 50, 96, BareMetal),
    ("r6i.large", 3, 10, 2, Nitro),
    ("r6i.xlarge", 4, 15, 4, Nitro),
    ("r6i.2xlarge", 4, 15, 8, Nitro),
    ("r6i.4xlarge", 8, 30, 16, Nitro),
    ("r6i.8xlarge", 8, 30, 32, Nitro),
    ("r6i.12xlarge", 8, 30, 48, Nitro),
    ("r6i.16xlarge", 15, 50, 64, Nitro),
    ("r6i.24xlarge", 15, 50, 96, Nitro),
    ("r6i.32xlarge", 15, 50, 128, Nitro),
    ("r6i.metal", 15, 50, 128, BareMetal),
    ("t2.medium", 3, 6, 2, Xen),
    ("c4.large", 3, 10, 2, Xen),
    ("m4.large", 2, 10, 2, Xen),
];

/// Where the limits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsSource {
    /// `DescribeInstanceTypes`.
    Ec2,
    /// [`BUILTIN_LIMITS`] (the EC2 call failed).
    BuiltinTable,
}

impl fmt::Display for LimitsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ec2 => "DescribeInstanceTypes",
            Self::BuiltinTable => "the built-in table",
        })
    }
}

/// Addresses in one delegated IPv4 prefix (a /28).
pub const ADDRESSES_PER_PREFIX: u32 = 16;

/// The limits the pool manager works within.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The instance type.
    pub instance_type: String,
    /// ENIs the instance can attach.
    pub instance_max_enis: u32,
    /// IPv4 addresses per ENI, the ENI's own included.
    pub ipv4_per_eni: u32,
    /// Default vCPUs (0 when unknown).
    pub vcpus: u32,
    /// Nitro, bare metal or Xen: prefix delegation needs one of the first two.
    pub platform: Platform,
    /// ENIs ipamd may have attached: the instance limit, lowered by `MAX_ENI`.
    pub max_enis: u32,
    /// Address slots of an ENI for pods: `ipv4_per_eni − 1` (the ENI's own address takes one).
    /// Each holds one secondary address, or with prefix delegation one /28 prefix.
    pub slots_per_eni: u32,
    /// Whether prefix delegation is in force: asked for (`ENABLE_PREFIX_DELEGATION`) and the
    /// platform supports it.
    pub prefix_delegation: bool,
    /// Pod addresses per ENI: `slots_per_eni`, times 16 with prefix delegation.
    pub ips_per_eni: u32,
    /// Max pods without the Kubernetes API, as the EKS AMI's max-pods calculator gives kubelet
    /// for the mode in force: `instance_max_enis × slots_per_eni + 2` with secondary addresses
    /// (the reference's `eni-max-pods.txt`); with prefixes `instance_max_enis × slots_per_eni × 16
    /// + 2`, capped at 110 for up to 30 vCPUs and 250 above.
    pub max_pods: u32,
    /// `max_pods` is the Node's capacity (the kubelet's `--max-pods`), read from the
    /// Kubernetes API, not the formula.
    pub max_pods_from_node: bool,
    /// Custom networking: the primary ENI holds no pod address, so the pods' ENIs are
    /// `max_enis − 1`.
    pub primary_eni_unused: bool,
    /// Where the numbers came from.
    pub source: LimitsSource,
}

/// The max-pods ceiling of the EKS AMI's calculator: 110 up to 30 vCPUs, 250 above.
pub fn max_pods_ceiling(vcpus: u32) -> u32 {
    if vcpus > 30 { 250 } else { 110 }
}

impl Limits {
    /// Limits from the instance type's numbers, `MAX_ENI` (values below 1 are "no cap") and
    /// whether prefix delegation is asked for (it is in force only where the platform has it).
    pub fn new(
        info: &InstanceTypeLimits,
        max_eni: Option<u32>,
        prefix_delegation: bool,
        source: LimitsSource,
    ) -> Self {
        let slots_per_eni = info.ipv4_per_eni.saturating_sub(1);
        let prefix_delegation = prefix_delegation && info.platform.supports_prefix_delegation();
        let max_enis = match max_eni {
            Some(cap) if cap >= 1 => cap.min(info.max_enis),
            _ => info.max_enis,
        };
        let per_slot = if prefix_delegation {
            ADDRESSES_PER_PREFIX
        } else {
            1
        };
        let ips_per_eni = slots_per_eni.saturating_mul(per_slot);
        let formula = info.max_enis.saturating_mul(ips_per_eni).saturating_add(2);
        let max_pods = if prefix_delegation {
            formula.min(max_pods_ceiling(info.vcpus))
        } else {
            formula
        };
        Self {
            instance_type: info.instance_type.clone(),
            instance_max_enis: info.max_enis,
            ipv4_per_eni: info.ipv4_per_eni,
            vcpus: info.vcpus,
            platform: info.platform,
            max_enis,
            slots_per_eni,
            prefix_delegation,
            ips_per_eni,
            max_pods,
            max_pods_from_node: false,
            primary_eni_unused: false,
            source,
        }
    }

    /// These limits with custom networking: pods get no address of the primary ENI, and max pods
    /// is the EKS AMI calculator's for custom networking, `(instance_max_enis − 1) ×
    /// slots_per_eni (× 16 with prefixes, capped as above) + 2`.
    #[must_use]
    pub fn with_primary_eni_unused(mut self) -> Self {
        self.primary_eni_unused = true;
        if !self.max_pods_from_node {
            let formula = self
                .instance_max_enis
                .saturating_sub(1)
                .saturating_mul(self.ips_per_eni)
                .saturating_add(2);
            self.max_pods = if self.prefix_delegation {
                formula.min(max_pods_ceiling(self.vcpus))
            } else {
                formula
            };
        }
        self
    }

    /// ENIs whose addresses go to pods: `max_enis`, less the primary with custom networking.
    pub fn pod_enis(&self) -> u32 {
        if self.primary_eni_unused {
            self.max_enis.saturating_sub(1)
        } else {
            self.max_enis
        }
    }

    /// These limits with the Node's max pods (its `status.capacity.pods`), which the reference
    /// uses instead of the formula when it has the Kubernetes API. The ENI × IP limit still
    /// holds.
    #[must_use]
    pub fn with_node_max_pods(mut self, max_pods: u32) -> Self {
        self.max_pods = max_pods;
        self.max_pods_from_node = true;
        self
    }

    /// Addresses one slot gives: 16 with prefix delegation, else 1.
    pub fn addresses_per_slot(&self) -> u32 {
        if self.prefix_delegation {
            ADDRESSES_PER_PREFIX
        } else {
            1
        }
    }

    /// Pod addresses ipamd may hold: `max_enis × ips_per_eni` ([`Limits::pod_enis`]).
    pub fn pod_ip_capacity(&self) -> u32 {
        self.pod_enis().saturating_mul(self.ips_per_eni)
    }
}

/// The built-in numbers of an instance type, as `DescribeInstanceTypes` would give them.
pub fn builtin(instance_type: &str) -> Option<InstanceTypeLimits> {
    BUILTIN_LIMITS
        .iter()
        .find(|(t, ..)| *t == instance_type)
        .map(
            |&(name, max_enis, ipv4_per_eni, vcpus, platform)| InstanceTypeLimits {
                instance_type: name.to_owned(),
                max_enis,
                ipv4_per_eni,
                vcpus,
                platform,
            },
        )
}

/// The limits could not be found.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LimitsError {
    /// EC2 failed and the type is not in the built-in table.
    #[error(
        "the limits of instance type {instance_type} are unknown: {source}, and it is not in the built-in table"
    )]
    Unavailable {
        /// The instance type.
        instance_type: String,
        /// Why EC2 did not tell.
        source: Ec2Error,
    },
    /// EC2 answered without the type, and it is not in the built-in table.
    #[error(
        "EC2 DescribeInstanceTypes does not know instance type {instance_type}, and it is not in the built-in table"
    )]
    UnknownType {
        /// The instance type.
        instance_type: String,
    },
}

/// Finds the instance's limits: `DescribeInstanceTypes`, else the built-in table. With
/// `prefix_delegation` asked for on a platform without it, warns (as the reference does) and
/// gives the secondary-address limits.
///
/// # Errors
/// Neither source knows the instance type.
pub async fn resolve(
    ec2: &impl Ec2Api,
    instance_type: &str,
    max_eni: Option<u32>,
    prefix_delegation: bool,
) -> Result<Limits, LimitsError> {
    let fallback = |why: &dyn fmt::Display| {
        builtin(instance_type).map(|info| {
            tracing::warn!(
                %instance_type, reason = %why, enis = info.max_enis, ips = info.ipv4_per_eni,
                "using the built-in limits table"
            );
            Limits::new(
                &info,
                max_eni,
                prefix_delegation,
                LimitsSource::BuiltinTable,
            )
        })
    };
    let limits = match ec2
        .describe_instance_types(&[instance_type.to_owned()])
        .await
    {
        Ok(types) => match types.iter().find(|t| t.instance_type == instance_type) {
            Some(info) => Ok(Limits::new(
                info,
                max_eni,
                prefix_delegation,
                LimitsSource::Ec2,
            )),
            None => fallback(&"DescribeInstanceTypes returned nothing for it").ok_or_else(|| {
                LimitsError::UnknownType {
                    instance_type: instance_type.to_owned(),
                }
            }),
        },
        Err(e) => fallback(&e).ok_or(LimitsError::Unavailable {
            instance_type: instance_type.to_owned(),
            source: e,
        }),
    }?;
    if prefix_delegation && !limits.prefix_delegation {
        tracing::warn!(
            %instance_type, platform = %limits.platform,
            "ENABLE_PREFIX_DELEGATION=true needs a Nitro or bare-metal instance type; running with secondary IPs (as the reference does)"
        );
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::cloud::ec2::Ec2ErrorKind;
    use crate::testing::fake_ec2::FakeEc2;

    fn info(instance_type: &str) -> InstanceTypeLimits {
        builtin(instance_type).unwrap()
    }

    #[test]
    fn derived_sizes_follow_the_reference() {
        let l = Limits::new(&info("t3.small"), None, false, LimitsSource::Ec2);
        assert_eq!((l.max_enis, l.ips_per_eni, l.max_pods), (3, 3, 11));
        assert_eq!(l.pod_ip_capacity(), 9);
        let l = Limits::new(&info("m5.large"), Some(2), false, LimitsSource::Ec2);
        assert_eq!((l.max_enis, l.ips_per_eni, l.max_pods), (2, 9, 29));
        // MAX_ENI above the instance limit, or below 1, changes nothing.
        for cap in [Some(8), Some(0)] {
            let l = Limits::new(&info("m5.large"), cap, false, LimitsSource::Ec2);
            assert_eq!(l.max_enis, 3);
        }
    }

    #[test]
    fn prefix_delegation_sizes_follow_the_max_pods_calculator() {
        // (type, max pods with secondary IPs, with prefixes, pod addresses per ENI with prefixes)
        let cases = [
            // 3 × 9 × 16 + 2 = 434, capped at 110 (2 vCPUs).
            ("m5.large", 29, 110, 144),
            // 3 × 3 × 16 + 2 = 146 → 110.
            ("t3.small", 11, 110, 48),
            // 2 × 1 × 16 + 2 = 34: under the cap.
            ("t3.micro", 4, 34, 16),
            // 15 × 49 × 16 + 2 → 250 (96 vCPUs); secondary 15 × 49 + 2 = 737.
            ("m5.24xlarge", 737, 250, 784),
            // 8 × 29 × 16 + 2 → 110 (16 vCPUs).
            ("m5.4xlarge", 234, 110, 464),
            // Bare metal supports prefixes too.
            ("m5.metal", 737, 250, 784),
        ];
        for (t, secondary, prefixes, per_eni) in cases {
            let l = Limits::new(&info(t), None, false, LimitsSource::Ec2);
            assert_eq!((l.max_pods, l.prefix_delegation), (secondary, false), "{t}");
            let l = Limits::new(&info(t), None, true, LimitsSource::Ec2);
            assert_eq!(
                (
                    l.max_pods,
                    l.ips_per_eni,
                    l.prefix_delegation,
                    l.addresses_per_slot()
                ),
                (prefixes, per_eni, true, 16),
                "{t}"
            );
            assert_eq!(l.slots_per_eni, l.ipv4_per_eni - 1, "{t}");
        }
        // Xen: prefix delegation is not in force, the secondary-address limits apply.
        let l = Limits::new(&info("c4.large"), None, true, LimitsSource::Ec2);
        assert_eq!(
            (l.prefix_delegation, l.max_pods, l.ips_per_eni),
            (false, 29, 9)
        );
    }

    #[test]
    fn builtin_table_has_correct_common_types() {
        let sizes = |t: &str| builtin(t).map(|i| (i.max_enis, i.ipv4_per_eni));
        assert_eq!(sizes("t3.small"), Some((3, 4)));
        assert_eq!(sizes("t3a.small"), Some((2, 4)));
        assert_eq!(sizes("m5.large"), Some((3, 10)));
        assert_eq!(sizes("m6i.xlarge"), Some((4, 15)));
        assert_eq!(sizes("c5.18xlarge"), Some((15, 50)));
        assert_eq!(sizes("r6i.32xlarge"), Some((15, 50)));
        assert_eq!(sizes("m7i.48xlarge"), Some((15, 50)));
        assert_eq!(sizes("x9.unknown"), None);
        assert_eq!(info("m5.large").platform, Platform::Nitro);
        assert_eq!(info("m5.metal").platform, Platform::BareMetal);
        assert_eq!(info("t2.medium").platform, Platform::Xen);
        for (t, enis, ips, vcpus, _) in BUILTIN_LIMITS {
            assert!(enis >= 2 && ips >= 2 && vcpus >= 2, "{t}");
        }
    }

    #[tokio::test]
    async fn ec2_first_then_the_table() {
        let ec2 = FakeEc2::new();
        let l = resolve(&ec2, "m5.large", None, false).await.unwrap();
        assert_eq!(
            (l.instance_max_enis, l.ipv4_per_eni, l.source),
            (3, 10, LimitsSource::Ec2)
        );
        ec2.fail_next("DescribeInstanceTypes", Ec2ErrorKind::Server, 1);
        let l = resolve(&ec2, "m5.large", Some(2), false).await.unwrap();
        assert_eq!((l.max_enis, l.source), (2, LimitsSource::BuiltinTable));
        ec2.fail_next("DescribeInstanceTypes", Ec2ErrorKind::Unauthorized, 1);
        let err = resolve(&ec2, "z9.mega", None, false).await.unwrap_err();
        assert!(
            err.to_string().contains("z9.mega")
                && err.to_string().contains("UnauthorizedOperation"),
            "{err}"
        );
        // EC2 itself does not know the type either.
        let err = resolve(&ec2, "z9.mega", None, false).await.unwrap_err();
        assert!(
            err.to_string().contains("InvalidInstanceType")
                && err.to_string().contains("built-in table"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn prefix_delegation_is_in_force_on_nitro_and_bare_metal_only() {
        let ec2 = FakeEc2::new();
        for (t, in_force) in [("m5.large", true), ("m5.metal", true), ("c4.large", false)] {
            let l = resolve(&ec2, t, None, true).await.unwrap();
            assert_eq!(l.prefix_delegation, in_force, "{t}");
            assert_eq!(l.source, LimitsSource::Ec2);
        }
    }

    #[test]
    fn custom_networking_takes_the_primary_eni_out_of_the_formula() {
        // m5.large: 3 ENIs x 9 pod addresses; the AMI's calculator gives 2 x 9 + 2 = 20.
        let l = Limits::new(&info("m5.large"), None, false, LimitsSource::Ec2)
            .with_primary_eni_unused();
        assert_eq!((l.max_pods, l.pod_enis(), l.pod_ip_capacity()), (20, 2, 18));
        // With prefixes: 2 x 9 x 16 + 2, capped at 110 for 2 vCPUs.
        let l =
            Limits::new(&info("m5.large"), None, true, LimitsSource::Ec2).with_primary_eni_unused();
        assert_eq!(l.max_pods, 110);
        // The Node's number wins whichever comes first.
        let l = Limits::new(&info("m5.large"), None, false, LimitsSource::Ec2)
            .with_node_max_pods(29)
            .with_primary_eni_unused();
        assert_eq!((l.max_pods, l.pod_ip_capacity()), (29, 18));
    }
}
