//! The daemon's upkeep once ready, until shutdown: the pool follows instance metadata every few
//! seconds (instance-metadata-only mode, provisioning disabled) or the pool manager runs its
//! cycles plus the leaked-ENI cleanup (EC2 mode); node networking is reconciled with the VPC's
//! CIDRs re-read from metadata; and the orphan sweep releases the addresses of pods that are
//! gone without a DEL.

use std::sync::Arc;

use super::{Daemon, Manager};
use crate::cloud::ec2::Ec2Api;
use crate::cloud::imds::Imds;
use crate::cloud::metadata;
use crate::mac::MacAddr;
use crate::node_network::host::HostNetwork;
use crate::node_network::{NodeNetwork, PrimaryEni};
use crate::pool::leak::LeakCleaner;
use crate::pool::reconcile;
use crate::restore;
use crate::state::IpamState;

impl<I: Imds, E: Ec2Api> Daemon<I, E> {
    /// Runs the pool's upkeep (the pool manager in EC2 mode, else following metadata), node
    /// networking's reconcile and the orphan sweep, forever.
    pub(super) async fn upkeep(
        &self,
        host: &HostNetwork,
        node_net: &NodeNetwork,
        state: &Arc<IpamState>,
        manager: Option<Manager<I, E>>,
        primary_mac: MacAddr,
        primary: PrimaryEni,
    ) {
        let pool = async {
            match manager {
                Some(mut m) => self.manage_pool(&mut m, state).await,
                // IPv6 mode: the /80 is the whole pool; nothing to follow or grow.
                None if self.config.features.ipv6 => std::future::pending().await,
                None => self.follow_metadata(host, state, primary_mac).await,
            }
        };
        let sweep = restore::sweep_forever(
            Arc::clone(state),
            host.clone(),
            Arc::clone(&self.clock),
            restore::SWEEP_INTERVAL,
            restore::ORPHAN_GRACE,
        );
        tokio::join!(
            pool,
            self.keep_node_network(node_net, state, primary),
            sweep
        );
    }

    /// EC2 mode after ready: the pool manager's cycles and the leaked-ENI cleanup, forever.
    async fn manage_pool(&self, manager: &mut Manager<I, E>, state: &Arc<IpamState>) {
        let (instance_id, primary_eni) = manager_node(manager);
        let vpc_id = manager.vpc_id().map(str::to_owned);
        let cleanup = async {
            let Some(ec2) = self.ec2.clone() else { return };
            if self.config.cloud.disable_leaked_eni_cleanup {
                tracing::info!("leaked-ENI cleanup disabled (DISABLE_LEAKED_ENI_CLEANUP=true)");
                return;
            }
            let mut cleaner = LeakCleaner::new(
                ec2,
                &instance_id,
                &primary_eni,
                vpc_id,
                self.config.kubernetes.cluster_name.clone(),
                Arc::clone(&self.clock),
            );
            cleaner.run().await;
        };
        let wake = state.pool_wanted();
        tokio::join!(manager.run(wake), async {
            cleanup.await;
            std::future::pending::<()>().await;
        });
    }

    /// After start-up, forever: every [`node_network::RECONCILE_INTERVAL`] re-reads the VPC's
    /// CIDRs from instance metadata (the reference's 30 s watcher) and reconciles node
    /// networking, which also repairs rules someone deleted and removes ones added to ipamd's
    /// chains.
    async fn keep_node_network(
        &self,
        node_net: &NodeNetwork,
        state: &IpamState,
        mut primary: PrimaryEni,
    ) {
        let mut tick = tokio::time::interval(self.node_network_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.imds.vpc_ipv4_cidr_blocks(primary.primary_mac).await {
                Ok(cidrs) if cidrs.is_empty() => {
                    tracing::warn!(eni = %primary.primary_eni, "instance metadata lists no VPC CIDR; keeping the last known ones");
                }
                Ok(cidrs) => {
                    if cidrs != primary.vpc_cidrs {
                        tracing::info!(old = ?primary.vpc_cidrs, new = ?cidrs, "the VPC's CIDRs changed");
                        state.set_vpc_cidrs(cidrs.clone());
                        primary.vpc_cidrs = cidrs;
                    }
                }
                Err(e) => {
                    self.metrics.error("reconcileFailedGetVPCCIDRs");
                    tracing::warn!(error = %e, "cannot re-read the VPC's CIDRs; keeping the last known ones");
                }
            }
            match node_net.reconcile(&primary).await {
                Ok(report) if report.is_empty() => {
                    tracing::debug!("node networking unchanged");
                }
                Ok(report) => {
                    tracing::info!(changes = %report, "node networking reconciled");
                }
                Err(e) => {
                    self.metrics.error("nodeNetworkReconcile");
                    tracing::warn!(error = %e, retry_in = ?self.node_network_interval, "node networking reconcile failed");
                }
            }
        }
    }

    /// Re-reads metadata forever, adopting what appeared and dropping what vanished.
    async fn follow_metadata(&self, host: &HostNetwork, state: &IpamState, primary_mac: MacAddr) {
        let mut tick = tokio::time::interval(self.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.reconcile_once(host, state, primary_mac).await;
        }
    }

    async fn reconcile_once(&self, host: &HostNetwork, state: &IpamState, primary_mac: MacAddr) {
        let enis = match metadata::fetch_enis(self.imds.as_ref(), primary_mac).await {
            Ok(e) => e,
            Err(e) => {
                self.metrics.error("reconcileFailedGetENIs");
                tracing::warn!(error = %e, "cannot re-read instance metadata; keeping the pool as it is");
                return;
            }
        };
        let diff = state.with_datastore(|ds| reconcile::diff(ds, &enis)).await;
        if diff.is_empty() {
            return;
        }
        let mut usable = Vec::new();
        for eni in &diff.new_enis {
            if eni.is_primary {
                usable.push(eni);
                continue;
            }
            match host.setup_secondary_eni(&self.secondary(eni)).await {
                Ok(link) => {
                    tracing::info!(eni = %eni.id, link = %link.name, "new ENI in instance metadata brought up");
                    usable.push(eni);
                }
                Err(e) => {
                    self.metrics.error("reconcileSetupENIFailed");
                    tracing::warn!(eni = %eni.id, error = %e, "new ENI in instance metadata is not usable yet; retrying next cycle")
                }
            }
        }
        state
            .with_datastore(|ds| {
                let applied = reconcile::apply(ds, &diff);
                let m = &self.metrics;
                m.reconciled("eniDataStorePoolReconcileAdd", applied.added);
                m.reconciled("eniIPPoolReconcileDel", applied.removed);
                m.reconciled("eniReconcileDel", applied.enis_removed);
                for eni in usable {
                    match reconcile::add_eni(ds, eni) {
                        Ok(n) => {
                            m.reconciled("eniReconcileAdd", 1);
                            m.reconciled("eniDataStorePoolReconcileAdd", n);
                            tracing::info!(eni = %eni.id, secondary_ips = n, "ENI added to the pool");
                        }
                        Err(e) => tracing::warn!(eni = %eni.id, error = %e, "ENI not added to the pool"),
                    }
                }
                let s = ds.stats();
                tracing::info!(
                    added = applied.added, removed = applied.removed, enis_removed = applied.enis_removed,
                    total = s.total, assigned = s.assigned, "pool follows instance metadata"
                );
            })
            .await;
    }
}

/// The instance id and primary ENI a manager works for.
fn manager_node<I: Imds, E: Ec2Api>(m: &Manager<I, E>) -> (String, String) {
    let n = m.node();
    (n.instance_id.clone(), n.primary_eni.clone())
}
