//! The instance's limits: how many ENIs it can attach and how many IPv4 addresses each ENI can
//! hold, from EC2's `DescribeInstanceTypes` (the default network card's
//! `MaximumNetworkInterfaces`, and `Ipv4AddressesPerInterface`), with a built-in table of common
//! instance types for when that call fails. `MAX_ENI` lowers the ENI limit; pods get
//! `Ipv4AddressesPerInterface − 1` addresses per ENI (the ENI's own address is never a pod's);
//! max pods without the Kubernetes API is `ENIs × (IPs − 1) + 2`, the reference's
//! `eni-max-pods.txt` formula.
//!
//! moto and other fakes do not enforce these limits; ipamd does, for every ENI and address it
//! asks for.

use std::fmt;

use thiserror::Error;

use crate::cloud::ec2::{Ec2Api, Ec2Error};

/// `(instance type, ENIs on the default network card, IPv4 addresses per ENI)` of common
/// instance types, as EC2's `DescribeInstanceTypes` reports them.
pub const BUILTIN_LIMITS: [(&str, u32, u32); 80] = [
    ("t3.nano", 2, 2),
    ("t3.micro", 2, 2),
    ("t3.small", 3, 4),
    ("t3.medium", 3, 6),
    ("t3.large", 3, 12),
    ("t3.xlarge", 4, 15),
    ("t3.2xlarge", 4, 15),
    ("t3a.nano", 2, 2),
    ("t3a.micro", 2, 2),
    ("t3a.small", 2, 4),
    ("t3a.medium", 3, 6),
    ("t3a.large", 3, 12),
    ("t3a.xlarge", 4, 15),
    ("t3a.2xlarge", 4, 15),
    ("m5.large", 3, 10),
    ("m5.xlarge", 4, 15),
    ("m5.2xlarge", 4, 15),
    ("m5.4xlarge", 8, 30),
    ("m5.8xlarge", 8, 30),
    ("m5.12xlarge", 8, 30),
    ("m5.16xlarge", 15, 50),
    ("m5.24xlarge", 15, 50),
    ("m5.metal", 15, 50),
    ("m6i.large", 3, 10),
    ("m6i.xlarge", 4, 15),
    ("m6i.2xlarge", 4, 15),
    ("m6i.4xlarge", 8, 30),
    ("m6i.8xlarge", 8, 30),
    ("m6i.12xlarge", 8, 30),
    ("m6i.16xlarge", 15, 50),
    ("m6i.24xlarge", 15, 50),
    ("m6i.32xlarge", 15, 50),
    ("m6i.metal", 15, 50),
    ("m7i.large", 3, 10),
    ("m7i.xlarge", 4, 15),
    ("m7i.2xlarge", 4, 15),
    ("m7i.4xlarge", 8, 30),
    ("m7i.8xlarge", 8, 30),
    ("m7i.12xlarge", 8, 30),
    ("m7i.16xlarge", 15, 50),
    ("m7i.24xlarge", 15, 50),
    ("m7i.48xlarge", 15, 50),
    ("c5.large", 3, 10),
    ("c5.xlarge", 4, 15),
    ("c5.2xlarge", 4, 15),
    ("c5.4xlarge", 8, 30),
    ("c5.9xlarge", 8, 30),
    ("c5.12xlarge", 8, 30),
    ("c5.18xlarge", 15, 50),
    ("c5.24xlarge", 15, 50),
    ("c5.metal", 15, 50),
    ("c6i.large", 3, 10),
    ("c6i.xlarge", 4, 15),
    ("c6i.2xlarge", 4, 15),
    ("c6i.4xlarge", 8, 30),
    ("c6i.8xlarge", 8, 30),
    ("c6i.12xlarge", 8, 30),
    ("c6i.16xlarge", 15, 50),
    ("c6i.24xlarge", 15, 50),
    ("c6i.32xlarge", 15, 50),
    ("c6i.metal", 15, 50),
    ("r5.large", 3, 10),
    ("r5.xlarge", 4, 15),
    ("r5.2xlarge", 4, 15),
    ("r5.4xlarge", 8, 30),
    ("r5.8xlarge", 8, 30),
    ("r5.12xlarge", 8, 30),
    ("r5.16xlarge", 15, 50),
    ("r5.24xlarge", 15, 50),
    ("r5.metal", 15, 50),
    ("r6i.large", 3, 10),
    ("r6i.xlarge", 4, 15),
    ("r6i.2xlarge", 4, 15),
    ("r6i.4xlarge", 8, 30),
    ("r6i.8xlarge", 8, 30),
    ("r6i.12xlarge", 8, 30),
    ("r6i.16xlarge", 15, 50),
    ("r6i.24xlarge", 15, 50),
    ("r6i.32xlarge", 15, 50),
    ("r6i.metal", 15, 50),
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

/// The limits the pool manager works within.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The instance type.
    pub instance_type: String,
    /// ENIs the instance can attach.
    pub instance_max_enis: u32,
    /// IPv4 addresses per ENI, the ENI's own included.
    pub ipv4_per_eni: u32,
    /// ENIs ipamd may have attached: the instance limit, lowered by `MAX_ENI`.
    pub max_enis: u32,
    /// Pod addresses per ENI: `ipv4_per_eni − 1`.
    pub ips_per_eni: u32,
    /// Max pods: `instance_max_enis × (ipv4_per_eni − 1) + 2`.
    pub max_pods: u32,
    /// Where the numbers came from.
    pub source: LimitsSource,
}

impl Limits {
    /// Limits from the instance's numbers and `MAX_ENI` (values below 1 are "no cap").
    pub fn new(
        instance_type: &str,
        instance_max_enis: u32,
        ipv4_per_eni: u32,
        max_eni: Option<u32>,
        source: LimitsSource,
    ) -> Self {
        let ips_per_eni = ipv4_per_eni.saturating_sub(1);
        let max_enis = match max_eni {
            Some(cap) if cap >= 1 => cap.min(instance_max_enis),
            _ => instance_max_enis,
        };
        Self {
            instance_type: instance_type.to_owned(),
            instance_max_enis,
            ipv4_per_eni,
            max_enis,
            ips_per_eni,
            max_pods: instance_max_enis
                .saturating_mul(ips_per_eni)
                .saturating_add(2),
            source,
        }
    }

    /// Pod addresses ipamd may hold: `max_enis × ips_per_eni`.
    pub fn pod_ip_capacity(&self) -> u32 {
        self.max_enis.saturating_mul(self.ips_per_eni)
    }
}

/// The built-in limits of an instance type: `(ENIs, IPv4 addresses per ENI)`.
pub fn builtin(instance_type: &str) -> Option<(u32, u32)> {
    BUILTIN_LIMITS
        .iter()
        .find(|(t, _, _)| *t == instance_type)
        .map(|&(_, enis, ips)| (enis, ips))
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

/// Finds the instance's limits: `DescribeInstanceTypes`, else the built-in table.
///
/// # Errors
/// Neither source knows the instance type.
pub async fn resolve(
    ec2: &impl Ec2Api,
    instance_type: &str,
    max_eni: Option<u32>,
) -> Result<Limits, LimitsError> {
    let fallback = |why: &dyn fmt::Display| {
        builtin(instance_type).map(|(enis, ips)| {
            tracing::warn!(%instance_type, reason = %why, enis, ips, "using the built-in limits table");
            Limits::new(
                instance_type,
                enis,
                ips,
                max_eni,
                LimitsSource::BuiltinTable,
            )
        })
    };
    match ec2
        .describe_instance_types(&[instance_type.to_owned()])
        .await
    {
        Ok(types) => match types.iter().find(|t| t.instance_type == instance_type) {
            Some(t) => Ok(Limits::new(
                instance_type,
                t.max_enis,
                t.ipv4_per_eni,
                max_eni,
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
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::cloud::ec2::Ec2ErrorKind;
    use crate::testing::fake_ec2::FakeEc2;

    #[test]
    fn derived_sizes_follow_the_reference() {
        let l = Limits::new("t3.small", 3, 4, None, LimitsSource::Ec2);
        assert_eq!((l.max_enis, l.ips_per_eni, l.max_pods), (3, 3, 11));
        assert_eq!(l.pod_ip_capacity(), 9);
        let l = Limits::new("m5.large", 3, 10, Some(2), LimitsSource::Ec2);
        assert_eq!((l.max_enis, l.ips_per_eni, l.max_pods), (2, 9, 29));
        // MAX_ENI above the instance limit, or below 1, changes nothing.
        assert_eq!(
            Limits::new("m5.large", 3, 10, Some(8), LimitsSource::Ec2).max_enis,
            3
        );
        assert_eq!(
            Limits::new("m5.large", 3, 10, Some(0), LimitsSource::Ec2).max_enis,
            3
        );
    }

    #[test]
    fn builtin_table_has_correct_common_types() {
        assert_eq!(builtin("t3.small"), Some((3, 4)));
        assert_eq!(builtin("t3a.small"), Some((2, 4)));
        assert_eq!(builtin("m5.large"), Some((3, 10)));
        assert_eq!(builtin("m6i.xlarge"), Some((4, 15)));
        assert_eq!(builtin("c5.18xlarge"), Some((15, 50)));
        assert_eq!(builtin("r6i.32xlarge"), Some((15, 50)));
        assert_eq!(builtin("m7i.48xlarge"), Some((15, 50)));
        assert_eq!(builtin("x9.unknown"), None);
        for (t, enis, ips) in BUILTIN_LIMITS {
            assert!(enis >= 2 && ips >= 2, "{t}");
        }
    }

    #[tokio::test]
    async fn ec2_first_then_the_table() {
        let ec2 = FakeEc2::new();
        let l = resolve(&ec2, "m5.large", None).await.unwrap();
        assert_eq!(
            (l.instance_max_enis, l.ipv4_per_eni, l.source),
            (3, 10, LimitsSource::Ec2)
        );
        ec2.fail_next("DescribeInstanceTypes", Ec2ErrorKind::Server, 1);
        let l = resolve(&ec2, "m5.large", Some(2)).await.unwrap();
        assert_eq!((l.max_enis, l.source), (2, LimitsSource::BuiltinTable));
        ec2.fail_next("DescribeInstanceTypes", Ec2ErrorKind::Unauthorized, 1);
        let err = resolve(&ec2, "z9.mega", None).await.unwrap_err();
        assert!(
            err.to_string().contains("z9.mega")
                && err.to_string().contains("UnauthorizedOperation"),
            "{err}"
        );
        // EC2 itself does not know the type either.
        let err = resolve(&ec2, "z9.mega", None).await.unwrap_err();
        assert!(
            err.to_string().contains("InvalidInstanceType")
                && err.to_string().contains("built-in table"),
            "{err}"
        );
    }
}
