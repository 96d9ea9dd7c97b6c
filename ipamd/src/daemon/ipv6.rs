//! Start-up in IPv6 mode (`ENABLE_IPv6=true`, vpc-cni.md §3.8): the pool is one /80 prefix of
//! the primary ENI, so there is no warm pool, no secondary ENI and no pool manager. Start-up
//! checks the platform (prefixes exist on Nitro only), sets the primary ENI's MTU, programs
//! node networking, takes the primary ENI's /80 from instance metadata or, in EC2 mode when
//! it has none, asks EC2 for one (`AssignIpv6Addresses` with `Ipv6PrefixCount=1`, as the
//! reference does), then restores the checkpoint's IPv6 allocations into it.

use std::sync::Arc;

use ipnet::Ipv6Net;

use super::startup::InitError;
use super::{Daemon, DaemonError};
use crate::cloud::ec2::Ec2Api;
use crate::cloud::imds::Imds;
use crate::cloud::metadata::{EniMetadata, InstanceMetadata};
use crate::config::{ENABLE_IPV6, ProvisioningMode};
use crate::datastore::EniSpec;
use crate::datastore::v6::{V6_PREFIX_LEN, V6Prefix};
use crate::limits;
use crate::node_network::host::HostNetwork;
use crate::node_network::{NodeNetwork, PrimaryEni};
use crate::state::IpamState;

impl<I: Imds, E: Ec2Api> Daemon<I, E> {
    /// One attempt at the IPv6 start-up, after instance metadata was read.
    pub(super) async fn try_initialize_v6(
        &self,
        host: &HostNetwork,
        node_net: &NodeNetwork,
        state: &Arc<IpamState>,
        md: &InstanceMetadata,
    ) -> Result<PrimaryEni, InitError> {
        refuse_non_nitro(&md.instance_type)?;
        let eni = md
            .enis
            .iter()
            .find(|e| e.is_primary)
            .ok_or_else(|| InitError::Retry("instance metadata lists no primary ENI".into()))?;
        self.bring_up_enis(host, state, &[eni]).await?;
        let primary = self.program_node_network(node_net, state, md).await?;

        let prefix = self.primary_prefix(state, eni).await?;
        let vpc_v6 = self
            .imds
            .vpc_ipv6_cidr_blocks(eni.mac)
            .await
            .map_err(|e| InitError::Retry(format!("cannot read the VPC's IPv6 CIDRs: {e}")))?;

        state.set_pending("restoring the checkpoint");
        let mut ds = self.new_datastore();
        ds.add_eni(EniSpec {
            id: eni.id.clone(),
            device_number: eni.device_number,
            primary_ip: eni.primary_ip,
            subnet: eni.subnet,
        })
        .map_err(|e| InitError::Retry(format!("primary ENI {}: {e}", eni.id)))?;
        ds.set_v6_prefix(V6Prefix {
            eni_id: eni.id.clone(),
            device_number: eni.device_number,
            prefix,
        })
        .map_err(|e| InitError::Retry(e.to_string()))?;
        self.restore_into_pool(host, state, ds).await?;
        tracing::info!(eni = %eni.id, %prefix, vpc_ipv6_cidrs = ?vpc_v6, "IPv6 mode: pods get addresses from the primary ENI's prefix");
        state.set_vpc_v6_cidrs(vpc_v6);
        Ok(primary)
    }

    /// The primary ENI's /80: the first one instance metadata lists (as the reference takes the
    /// first EC2 lists), else, in EC2 mode, a new one from EC2.
    async fn primary_prefix(
        &self,
        state: &IpamState,
        eni: &EniMetadata,
    ) -> Result<Ipv6Net, InitError> {
        state.set_pending(format!(
            "finding the IPv6 prefix of the primary ENI {}",
            eni.id
        ));
        let listed = self.imds.ipv6_prefixes(eni.mac).await.map_err(|e| {
            InitError::Retry(format!("cannot read the primary ENI's IPv6 prefixes: {e}"))
        })?;
        if let Some(&prefix) = listed.first() {
            if listed.len() > 1 {
                tracing::info!(eni = %eni.id, prefixes = ?listed, using = %prefix, "the primary ENI has several IPv6 prefixes; using the first, as the reference does");
            }
            return checked_prefix(prefix, &eni.id);
        }
        let ec2 = match (&self.ec2, self.config.provisioning) {
            (Some(ec2), ProvisioningMode::Ec2) => ec2,
            (_, mode) => {
                return Err(InitError::Retry(format!(
                    "the primary ENI {} has no IPv6 prefix in instance metadata (ipv6-prefix), and {} ipamd assigns none: assign one (aws ec2 assign-ipv6-addresses --network-interface-id {} --ipv6-prefix-count 1) or run in EC2 mode",
                    eni.id,
                    mode_phrase(mode),
                    eni.id
                )));
            }
        };
        state.set_pending(format!(
            "assigning an IPv6 prefix to the primary ENI {} through EC2",
            eni.id
        ));
        let assigned = ec2.assign_ipv6_prefixes(&eni.id, 1).await.map_err(|e| {
            InitError::Retry(format!(
                "assigning an IPv6 /80 prefix to the primary ENI {} (AssignIpv6Addresses): {e}",
                eni.id
            ))
        })?;
        let prefix = assigned.first().copied().ok_or_else(|| {
            InitError::Retry(format!(
                "AssignIpv6Addresses answered no prefix for the primary ENI {}",
                eni.id
            ))
        })?;
        tracing::info!(eni = %eni.id, %prefix, "IPv6 prefix assigned to the primary ENI");
        checked_prefix(prefix, &eni.id)
    }
}

/// How the provisioning mode reads in a sentence.
fn mode_phrase(mode: ProvisioningMode) -> &'static str {
    match mode {
        ProvisioningMode::ImdsOnly => "in instance-metadata-only mode (ENABLE_IMDS_ONLY_MODE=true)",
        ProvisioningMode::ProvisioningDisabled => "with DISABLE_NETWORK_RESOURCE_PROVISIONING=true",
        ProvisioningMode::Ec2 => "without an EC2 client",
    }
}

/// A delegated prefix is a /80 (what EC2 delegates, and what the address store assumes).
fn checked_prefix(prefix: Ipv6Net, eni: &str) -> Result<Ipv6Net, InitError> {
    if prefix.prefix_len() == V6_PREFIX_LEN && prefix.trunc() == prefix {
        Ok(prefix)
    } else {
        Err(InitError::Retry(format!(
            "the primary ENI {eni} lists IPv6 prefix {prefix}, which is not an aligned /{V6_PREFIX_LEN}"
        )))
    }
}

/// IPv6 prefixes exist on Nitro instances only (the reference refuses IPv6 mode elsewhere).
/// A type missing from the built-in table is let through: EC2 refuses the prefix then, and the
/// error says so.
fn refuse_non_nitro(instance_type: &str) -> Result<(), InitError> {
    match limits::builtin(instance_type) {
        Some(info) if !info.platform.supports_prefix_delegation() => {
            Err(InitError::Fatal(DaemonError::Unsupported(format!(
                "{ENABLE_IPV6}=true needs prefix delegation, which instance type {instance_type} ({}) does not have: run IPv6 clusters on Nitro instance types, or unset {ENABLE_IPV6}",
                info.platform
            ))))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aligned_80s_are_used() {
        let ok: Ipv6Net = "2600:1f14:d00:ab00:1234::/80".parse().unwrap();
        assert!(checked_prefix(ok, "eni-1").is_ok());
        for bad in ["2600:1f14:d00:ab00::/64", "2600:1f14:d00:ab00:1234::1/80"] {
            let p: Ipv6Net = bad.parse().unwrap();
            assert!(
                matches!(checked_prefix(p, "eni-1"), Err(InitError::Retry(m)) if m.contains("not an aligned /80")),
                "{bad}"
            );
        }
    }

    #[test]
    fn xen_types_are_refused_naming_the_type() {
        match refuse_non_nitro("m4.large") {
            Err(InitError::Fatal(DaemonError::Unsupported(m))) => {
                assert!(
                    m.contains("m4.large") && m.contains("Nitro") && m.contains("ENABLE_IPv6"),
                    "{m}"
                );
            }
            _ => panic!("m4.large must be refused"),
        }
        assert!(refuse_non_nitro("m5.large").is_ok());
        assert!(refuse_non_nitro("x9.unknown").is_ok());
    }
}
