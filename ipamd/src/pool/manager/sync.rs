//! Reconcile in EC2 mode: instance metadata against the datastore; when they disagree, EC2's
//! `DescribeNetworkInterfaces` (the ENIs attached to this instance) decides, because metadata
//! lags. Addresses EC2 shows are adopted, except those ipamd itself gave back less than the
//! grace period ago (EC2's answers can lag too); free addresses EC2 no longer shows are dropped
//! (assigned ones are kept and logged); ENIs attached outside ipamd are tagged, brought up and
//! adopted unless tagged `no_manage`; ENIs EC2 no longer shows attached leave the pool once no
//! pod uses them.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Instant;

use ipnet::Ipv4Net;

use super::PoolManager;
use crate::cloud::ec2::{Ec2Api, Filter, NetworkInterface};
use crate::cloud::imds::Imds;
use crate::cloud::metadata::{self, EniMetadata};
use crate::datastore::Datastore;
use crate::pool::host::EniHost;
use crate::pool::reconcile::{self, Diff};

/// EC2's view of the ENIs attached to the instance, by id.
type Attached = HashMap<String, NetworkInterface>;

impl<E: Ec2Api, I: Imds, H: EniHost> PoolManager<E, I, H> {
    /// Compares metadata with the datastore and, where they differ, applies what EC2 says:
    /// the addresses of ENIs both know, then ENIs attached outside ipamd, then ENIs that left.
    pub async fn reconcile(&mut self) {
        self.forget_old_releases();
        let Some(diff) = self.metadata_diff().await else {
            return;
        };
        for (eni, ip, key) in &diff.kept_assigned {
            tracing::debug!(%eni, %ip, %key, "instance metadata no longer lists this address but a pod holds it; keeping it");
        }
        for (eni, prefix) in &diff.kept_prefixes {
            tracing::debug!(%eni, %prefix, "instance metadata no longer lists this prefix but pods use it; keeping it");
        }
        if !diff.has_changes() {
            // Nothing to change (what a pod holds is kept whatever EC2 says).
            return;
        }
        let Some(attached) = self.attached_enis().await else {
            return;
        };
        self.sync_addresses(&diff, &attached).await;
        self.adopt_enis(&diff.new_enis, &attached).await;
        self.drop_enis(&diff.gone_enis, &attached).await;
    }

    /// Forgets the addresses ipamd released longer than the grace period ago: EC2 may show
    /// them again from now on.
    fn forget_old_releases(&mut self) {
        let now = self.clock.now();
        let grace = self.cfg.timings.reconcile_grace;
        self.released
            .retain(|_, at| now.saturating_duration_since(*at) < grace);
    }

    /// What differs between instance metadata (the managed ENIs) and the datastore; `None`
    /// when metadata cannot be read.
    async fn metadata_diff(&self) -> Option<Diff> {
        let listed = match metadata::fetch_enis(&*self.imds, self.node.primary_mac).await {
            Ok(enis) => enis,
            Err(e) => {
                self.count_error("reconcileFailedGetENIs");
                tracing::warn!(error = %e, "cannot re-read instance metadata; keeping the pool as it is");
                return None;
            }
        };
        let managed: Vec<_> = listed
            .into_iter()
            .filter(|e| !self.unmanaged.contains(&e.id))
            .collect();
        Some(
            self.state
                .with_datastore(|ds| reconcile::diff(ds, &managed))
                .await,
        )
    }

    /// EC2's `DescribeNetworkInterfaces` of the instance's attachments (learning which are
    /// unmanaged); `None` when EC2 does not answer.
    async fn attached_enis(&mut self) -> Option<Attached> {
        let attached = match self
            .ec2
            .describe_network_interfaces_filtered(&[Filter::one(
                "attachment.instance-id",
                &self.node.instance_id,
            )])
            .await
        {
            Ok(enis) => enis,
            Err(e) => {
                self.count_error("reconcileFailedDescribeENIs");
                tracing::warn!(error = %e, "instance metadata and the pool disagree and EC2 cannot confirm which is right; keeping the pool as it is");
                return None;
            }
        };
        for eni in &attached {
            self.learn(eni);
        }
        self.publish_unmanaged();
        Some(attached.into_iter().map(|e| (e.id.clone(), e)).collect())
    }

    /// The addresses of ENIs both the datastore and EC2 know: EC2's list is adopted.
    async fn sync_addresses(&self, diff: &Diff, attached: &Attached) {
        let mut touched: BTreeSet<String> = BTreeSet::new();
        touched.extend(diff.added_ips.iter().map(|(e, _)| e.clone()));
        touched.extend(diff.removed_ips.iter().map(|(e, _)| e.clone()));
        touched.extend(diff.kept_assigned.iter().map(|(e, _, _)| e.clone()));
        for (e, _) in diff
            .added_prefixes
            .iter()
            .chain(&diff.removed_prefixes)
            .chain(&diff.kept_prefixes)
        {
            touched.insert(e.clone());
        }
        for eni in touched {
            let Some(shown) = attached.get(&eni) else {
                continue;
            };
            let ec2_ips: BTreeSet<Ipv4Addr> = shown.secondary_ips().into_iter().collect();
            let released = &self.released;
            let (added, dropped) = self
                .state
                .with_datastore(|ds| {
                    let (a, d) = follow_ec2_addresses(ds, &eni, &ec2_ips, released);
                    let (pa, pd) = follow_ec2_prefixes(ds, &eni, &shown.ipv4_prefixes, released);
                    (a + 16 * pa, d + 16 * pd)
                })
                .await;
            self.count_reconciled("eniDataStorePoolReconcileAdd", added);
            self.count_reconciled("eniIPPoolReconcileDel", dropped);
        }
    }

    /// ENIs attached outside ipamd (or whose bring-up failed before): tagged, brought up and
    /// put into the pool with the addresses EC2 shows, unless unmanaged or being removed.
    async fn adopt_enis(&mut self, new_enis: &[EniMetadata], attached: &Attached) {
        for md in new_enis {
            let Some(shown) = attached.get(&md.id) else {
                tracing::debug!(eni = %md.id, "metadata lists an ENI that EC2 does not show attached; ignoring it");
                continue;
            };
            if self.unmanaged.contains(&md.id) {
                continue;
            }
            if self.to_remove.contains(&md.id) {
                tracing::debug!(eni = %md.id, "ENI is being removed (a half-created or freed one); not adopting it");
                continue;
            }
            self.ensure_tags(shown).await;
            if !md.is_primary {
                let spec =
                    self.secondary(&md.id, md.mac, md.device_number, md.primary_ip, md.subnet);
                if let Err(e) = self.host.setup_secondary_eni(&spec).await {
                    tracing::warn!(eni = %md.id, error = %e, "ENI attached but not usable yet; retrying next cycle");
                    continue;
                }
            }
            let released = &self.released;
            let added = self
                .state
                .with_datastore(|ds| add_attached_eni(ds, md, shown, released))
                .await;
            if let Some(n) = added {
                self.count_reconciled("eniReconcileAdd", 1);
                self.count_reconciled("eniDataStorePoolReconcileAdd", n);
                self.added_at.insert(md.id.clone(), self.clock.now());
                self.macs.insert(md.id.clone(), md.mac);
                self.eni_subnets.insert(md.id.clone(), md.subnet_id.clone());
                tracing::info!(eni = %md.id, device = md.device_number, ips = n, "attached ENI adopted into the pool");
            }
        }
    }

    /// ENIs metadata no longer lists (and EC2 does not show attached), or that are now tagged
    /// `no_manage`: out of the pool once no pod uses them.
    async fn drop_enis(&mut self, gone_enis: &[String], attached: &Attached) {
        let mut leaving: Vec<String> = gone_enis
            .iter()
            .filter(|id| {
                let still = attached.contains_key(*id);
                if still {
                    tracing::debug!(eni = %id, "metadata no longer lists the ENI but EC2 shows it attached; keeping it");
                }
                !still
            })
            .cloned()
            .collect();
        leaving.extend(
            self.state
                .with_datastore(|ds| ds.enis())
                .await
                .into_iter()
                .map(|v| v.spec.id)
                .filter(|id| self.unmanaged.contains(id)),
        );
        for id in leaving {
            let removed = self.state.with_datastore(|ds| ds.remove_eni(&id)).await;
            match removed {
                Ok(_) => {
                    self.count_reconciled("eniReconcileDel", 1);
                    self.added_at.remove(&id);
                    self.macs.remove(&id);
                    self.eni_subnets.remove(&id);
                    tracing::info!(eni = %id, "ENI left the instance (or is no_manage); removed from the pool");
                }
                Err(e) => {
                    tracing::warn!(eni = %id, error = %e, "ENI left the instance (or is no_manage) but pods use it; keeping it until they are deleted")
                }
            }
        }
    }
}

/// Makes `eni`'s addresses in the datastore EC2's list: adds those EC2 shows (not the ones
/// ipamd released within the grace), drops free ones EC2 no longer shows (assigned ones stay
/// until their pod is deleted). Returns (added, dropped).
fn follow_ec2_addresses(
    ds: &mut Datastore,
    eni: &str,
    ec2_ips: &BTreeSet<Ipv4Addr>,
    released: &HashMap<Ipv4Addr, Instant>,
) -> (usize, usize) {
    let (mut added, mut dropped) = (0, 0);
    let present = ds.eni_secondary_addresses(eni);
    let have: BTreeSet<Ipv4Addr> = present.iter().map(|(ip, _)| *ip).collect();
    for ip in ec2_ips.difference(&have) {
        if released.contains_key(ip) {
            tracing::debug!(%eni, %ip, "ipamd released this address less than the grace period ago; not re-adopting it");
            continue;
        }
        match ds.add_ip(eni, *ip) {
            Ok(()) => {
                added += 1;
                tracing::info!(%eni, %ip, "address assigned outside ipamd (EC2 confirms); added to the pool");
            }
            Err(e) => {
                tracing::warn!(%eni, %ip, error = %e, "address EC2 shows not added to the pool")
            }
        }
    }
    for (ip, holder) in present {
        if ec2_ips.contains(&ip) {
            continue;
        }
        match holder {
            None => match ds.remove_ip(ip) {
                Ok(()) => {
                    dropped += 1;
                    tracing::info!(%eni, %ip, "address unassigned outside ipamd (EC2 confirms); removed from the pool");
                }
                Err(e) => tracing::warn!(%eni, %ip, error = %e, "vanished address not removed"),
            },
            Some(key) => {
                tracing::warn!(%eni, %ip, %key, "EC2 no longer lists this address but a pod holds it; keeping it until the pod is deleted")
            }
        }
    }
    (added, dropped)
}

/// Makes `eni`'s prefixes in the datastore EC2's list, as [`follow_ec2_addresses`] does for
/// addresses: a prefix ipamd gave back within the grace (its addresses are in `released`) is
/// not re-adopted; one whose addresses pods still use stays. Returns (added, dropped).
fn follow_ec2_prefixes(
    ds: &mut Datastore,
    eni: &str,
    ec2_prefixes: &[Ipv4Net],
    released: &HashMap<Ipv4Addr, Instant>,
) -> (usize, usize) {
    let have = ds.eni_prefixes(eni);
    let fresh = ec2_prefixes
        .iter()
        .copied()
        .filter(|p| !have.contains(p) && !released.contains_key(&p.network()));
    let added = reconcile::add_prefixes(ds, eni, fresh).len();
    let mut dropped = 0;
    for prefix in have.iter().filter(|p| !ec2_prefixes.contains(p)) {
        match ds.remove_prefix(eni, *prefix) {
            Ok(()) => {
                dropped += 1;
                tracing::info!(%eni, %prefix, "prefix unassigned outside ipamd (EC2 confirms); removed from the pool");
            }
            Err(e) => {
                tracing::warn!(%eni, %prefix, error = %e, "EC2 no longer lists this prefix; keeping it while pods use it")
            }
        }
    }
    (added, dropped)
}

/// Puts an ENI attached outside ipamd into the datastore with the addresses and prefixes EC2
/// shows (not the ones ipamd released within the grace). Returns how many addresses it
/// brought; `None` when the datastore refused the ENI.
fn add_attached_eni(
    ds: &mut Datastore,
    md: &EniMetadata,
    shown: &NetworkInterface,
    released: &HashMap<Ipv4Addr, Instant>,
) -> Option<usize> {
    let not_released = shown
        .secondary_ips()
        .into_iter()
        .filter(|ip| !released.contains_key(ip));
    let prefixes = shown
        .ipv4_prefixes
        .iter()
        .copied()
        .filter(|p| !released.contains_key(&p.network()));
    match reconcile::add_eni_with_ips(ds, reconcile::eni_spec(md), not_released) {
        Ok(n) => Some(n + 16 * reconcile::add_prefixes(ds, &md.id, prefixes).len()),
        Err(e) => {
            tracing::warn!(eni = %md.id, error = %e, "ENI not added to the pool");
            None
        }
    }
}
