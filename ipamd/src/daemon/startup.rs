//! The daemon's start-up, from the bound socket to ready: read instance metadata (retrying
//! while IMDS is unreachable) → in EC2 mode, start the pool manager (the instance's limits and
//! EC2's view of the ENIs, skipping those tagged `no_manage`) → set the primary ENI's MTU and
//! bring up the secondary ENIs → program node networking → build the pool from the metadata's
//! secondary IPs and restore the checkpoint into it → in EC2 mode, pre-scale the pool (bounded:
//! a failing EC2 leaves the pool as metadata shows it) → ready (health SERVING, then the
//! conflist). A step that fails for a reason that may pass (IMDS unreachable, a link not there
//! yet) is retried from the start with backoff; an unusable checkpoint stops the daemon.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic_health::server::HealthReporter;

use super::{Daemon, DaemonError, Manager};
use crate::cloud::ec2::Ec2Api;
use crate::cloud::imds::Imds;
use crate::cloud::metadata::{self, EniMetadata, InstanceMetadata};
use crate::config::ProvisioningMode;
use crate::conflist;
use crate::datastore::Datastore;
use crate::metrics::StartupOutcome;
use crate::node_network::host::HostNetwork;
use crate::node_network::{NodeNetwork, PrimaryEni};
use crate::pool::manager::{ManagerConfig, NodeCheck, NodeInfo, PoolManager};
use crate::pool::reconcile;
use crate::pool::situation::PoolSituation;
use crate::restore::restore_allocations;
use crate::server;
use crate::state::{IpamState, Phase};

const INIT_BACKOFF_START: Duration = Duration::from_millis(250);
const INIT_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A start-up step that failed: retried (IMDS unreachable, link not there yet) or fatal.
pub(super) enum InitError {
    Retry(String),
    Fatal(DaemonError),
}

impl<I: Imds, E: Ec2Api> Daemon<I, E> {
    /// Start-up until the pool is built, retrying with backoff; returns the instance's
    /// metadata and what node networking was programmed from.
    pub(super) async fn initialize(
        &self,
        host: &HostNetwork,
        node_net: &NodeNetwork,
        state: &Arc<IpamState>,
        manager: &mut Option<Manager<I, E>>,
    ) -> Result<(InstanceMetadata, PrimaryEni), DaemonError> {
        let mut delay = INIT_BACKOFF_START;
        loop {
            match self.try_initialize(host, node_net, state, manager).await {
                Ok(found) => return Ok(found),
                Err(InitError::Fatal(e)) => return Err(e),
                Err(InitError::Retry(why)) => {
                    self.metrics.error("nodeInit");
                    tracing::warn!(reason = %why, retry_in = ?delay, "not ready yet");
                    state.set_pending(why);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(INIT_BACKOFF_MAX);
                }
            }
        }
    }

    /// One attempt at start-up until the pool is built. `manager` is started once and kept
    /// across attempts.
    async fn try_initialize(
        &self,
        host: &HostNetwork,
        node_net: &NodeNetwork,
        state: &Arc<IpamState>,
        manager: &mut Option<Manager<I, E>>,
    ) -> Result<(InstanceMetadata, PrimaryEni), InitError> {
        let md = self.read_metadata(state).await?;
        if self.config.features.ipv6 {
            let primary = self.try_initialize_v6(host, node_net, state, &md).await?;
            return Ok((md, primary));
        }
        if manager.is_none() {
            *manager = self.start_manager(host, state, &md).await;
        }
        let managed = managed_enis(&md, manager.as_ref());
        self.bring_up_enis(host, state, &managed).await?;
        let primary = self.program_node_network(node_net, state, &md).await?;

        state.set_pending("restoring the checkpoint");
        let ds = self.pool_from_metadata(&managed, manager.as_mut());
        self.restore_into_pool(host, state, ds).await?;

        state.set_vpc_cidrs(primary.vpc_cidrs.clone());
        Ok((md, primary))
    }

    /// Instance metadata; the instance's identity goes into the node report.
    async fn read_metadata(&self, state: &IpamState) -> Result<InstanceMetadata, InitError> {
        state.set_pending("reading instance metadata");
        let md = metadata::fetch_instance(self.imds.as_ref())
            .await
            .map_err(|e| InitError::Retry(format!("cannot read instance metadata: {e}")))?;
        tracing::info!(
            instance = %md.instance_id, instance_type = %md.instance_type, region = %md.region,
            zone = %md.availability_zone, primary_ip = %md.local_ipv4, enis = md.enis.len(),
            "instance metadata read"
        );
        state.update_node_report(|f| {
            f.instance_id = Some(md.instance_id.clone());
            f.instance_type = Some(md.instance_type.clone());
        });
        Ok(md)
    }

    /// EC2 mode, once per start: the pool manager, its limits and EC2's view of the attached
    /// ENIs (which are `no_manage`). Never fails: without EC2 the pool is what metadata shows.
    async fn start_manager(
        &self,
        host: &HostNetwork,
        state: &Arc<IpamState>,
        md: &InstanceMetadata,
    ) -> Option<Manager<I, E>> {
        let ec2 = self.ec2.clone()?;
        if self.config.provisioning != ProvisioningMode::Ec2 {
            return None;
        }
        let Some(node) = NodeInfo::from_metadata(md) else {
            tracing::error!("instance metadata lists no primary ENI; EC2 provisioning is off");
            return None;
        };
        let mcfg = ManagerConfig::from_config(&self.config);
        let health = ec2.health();
        let situation = Arc::new(PoolSituation::new(mcfg.targets, Arc::clone(&health)));
        let mut m = PoolManager::new(
            mcfg,
            node,
            ec2,
            Arc::clone(&self.imds),
            host.clone(),
            Arc::clone(state),
            Arc::clone(&self.clock),
            situation,
            health,
        )
        .with_metrics(self.metrics.clone());
        if let Some(kube) = &self.kube {
            m = m.with_node(NodeCheck::new(
                Arc::clone(&kube.nodes),
                self.config.kubernetes.node_name.clone(),
                self.config.cloud.manage_enis_non_schedulable,
            ));
        }
        state.set_pending("reading the instance's limits and ENIs from EC2");
        m.discover(&md.enis).await;
        Some(m)
    }

    /// Sets the primary ENI's MTU and brings up the secondary ENIs (address, route table,
    /// rule); a link not there yet is retried.
    pub(super) async fn bring_up_enis(
        &self,
        host: &HostNetwork,
        state: &IpamState,
        managed: &[&EniMetadata],
    ) -> Result<(), InitError> {
        for &eni in managed {
            if eni.is_primary {
                state.set_pending(format!(
                    "setting MTU on the primary ENI {} ({})",
                    eni.id, eni.mac
                ));
                let link = host
                    .set_primary_mtu(eni.mac, &eni.id, self.config.node_network.eni_mtu)
                    .await
                    .map_err(|e| InitError::Retry(format!("primary ENI {}: {e}", eni.id)))?;
                tracing::info!(eni = %eni.id, link = %link.name, mtu = self.config.node_network.eni_mtu, "primary ENI found");
            } else {
                state.set_pending(format!(
                    "bringing up ENI {} ({}, device {})",
                    eni.id, eni.mac, eni.device_number
                ));
                let link = host
                    .setup_secondary_eni(&self.secondary(eni))
                    .await
                    .map_err(|e| {
                        InitError::Retry(format!(
                            "bringing up ENI {} ({}, device {}): {e}",
                            eni.id, eni.mac, eni.device_number
                        ))
                    })?;
                tracing::info!(
                    eni = %eni.id, link = %link.name, ip = %eni.primary_ip, table = eni.device_number + 1,
                    "secondary ENI up"
                );
            }
        }
        Ok(())
    }

    /// Programs node networking (SNAT, connmark, rules, rp_filter) from the primary ENI and
    /// the VPC's CIDRs; returns what it was programmed from.
    pub(super) async fn program_node_network(
        &self,
        node_net: &NodeNetwork,
        state: &IpamState,
        md: &InstanceMetadata,
    ) -> Result<PrimaryEni, InitError> {
        let primary = primary_eni(md)
            .ok_or_else(|| InitError::Retry("instance metadata lists no primary ENI".into()))?;
        state.set_pending(format!(
            "programming node networking on the primary ENI {} (SNAT, connmark, rules 1024/1535, rp_filter)",
            primary.primary_eni
        ));
        match node_net.reconcile(&primary).await {
            Ok(report) => tracing::info!(
                changes = %report, external_snat = self.config.node_network.external_snat,
                vpc_cidrs = ?primary.vpc_cidrs, snat_to = %primary.primary_ip,
                "node networking in place"
            ),
            Err(e) => return Err(InitError::Retry(format!("node networking: {e}"))),
        }
        Ok(primary)
    }

    /// A datastore holding the managed ENIs and their secondary IPs as metadata lists them;
    /// in EC2 mode its exhaustion messages quote the pool manager's situation.
    fn pool_from_metadata(
        &self,
        managed: &[&EniMetadata],
        manager: Option<&mut Manager<I, E>>,
    ) -> Datastore {
        let mut ds = self.new_datastore();
        if let Some(m) = manager {
            ds.set_capacity_note(m.situation());
            m.note_enis(managed.iter().copied());
        }
        for &eni in managed {
            match reconcile::add_eni(&mut ds, eni) {
                Ok(n) => {
                    tracing::info!(eni = %eni.id, device = eni.device_number, secondary_ips = n, "ENI added to the pool")
                }
                Err(e) => tracing::warn!(eni = %eni.id, error = %e, "ENI not added to the pool"),
            }
        }
        ds
    }

    /// Restores the checkpoint into `ds`, makes it the pool and writes the checkpoint again from
    /// it (what was dropped is gone from the file).
    pub(super) async fn restore_into_pool(
        &self,
        host: &HostNetwork,
        state: &IpamState,
        mut ds: Datastore,
    ) -> Result<(), InitError> {
        self.restore_checkpoint(host, &mut ds).await?;
        state.with_datastore(|current| *current = ds).await;
        state
            .write_checkpoint()
            .await
            .map(drop)
            .map_err(|e| InitError::Fatal(e.into()))
    }

    /// Puts the checkpoint's allocations of live pods into `ds` and deletes the rules of pods
    /// deleted while ipamd was down. An unreadable checkpoint is fatal.
    async fn restore_checkpoint(
        &self,
        host: &HostNetwork,
        ds: &mut Datastore,
    ) -> Result<(), InitError> {
        let checkpointer = Arc::clone(&self.checkpointer);
        let loaded = tokio::task::spawn_blocking(move || checkpointer.load())
            .await
            .map_err(|e| InitError::Retry(format!("checkpoint read task failed: {e}")))?
            .map_err(|e| InitError::Fatal(e.into()))?;
        let links: Vec<String> = host
            .link_names()
            .await
            .map_err(|e| InitError::Retry(e.to_string()))?;
        let Some(data) = loaded else {
            tracing::info!(checkpoint = %self.checkpointer.location(), "no checkpoint; starting with no allocations");
            return Ok(());
        };
        let report = restore_allocations(ds, &data, &links);
        tracing::info!(
            restored = report.restored.len(),
            stale = report.stale.len(),
            unknown_ip = report.unknown_ip.len(),
            invalid = report.invalid.len(),
            "checkpoint restored from {}",
            self.checkpointer.location()
        );
        for (entry, ip) in &report.stale {
            match host.delete_pod_rules(*ip).await {
                Ok(n) => {
                    tracing::info!(key = %entry.key(), %ip, rules = n, "deleted the stale pod's rules")
                }
                Err(e) => {
                    tracing::warn!(key = %entry.key(), %ip, error = %e, "cannot delete the stale pod's rules")
                }
            }
        }
        Ok(())
    }

    /// The pool is built: in EC2 mode pre-scales it, then reports ready (health SERVING) and
    /// writes the conflist.
    ///
    /// # Errors
    /// The conflist could not be written.
    pub(super) async fn become_ready(
        &self,
        state: &IpamState,
        reporter: &HealthReporter,
        manager: Option<&mut Manager<I, E>>,
        node_ipv4: std::net::Ipv4Addr,
    ) -> Result<(), DaemonError> {
        if let Some(m) = manager {
            state.set_pending("pre-scaling the pool through EC2");
            let start = Instant::now();
            let r = m.prescale().await;
            let stats = state.status().await.stats;
            tracing::info!(
                ips_added = r.ips_added, enis_added = r.enis_added, at_limit = r.at_limit, ec2_failed = r.failed,
                enis = stats.enis, total = stats.total, took = ?start.elapsed(),
                "pool pre-scaled{}",
                if r.failed { " (EC2 failed; ready with what instance metadata shows, the pool manager keeps trying)" } else { "" }
            );
        }
        state.set_phase(Phase::Ready);
        server::set_health(reporter, true).await;
        let path = match conflist::write(&self.config, Some(node_ipv4), &self.config.cni_conf_dir) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.startup(
                    self.started_at.elapsed(),
                    &StartupOutcome::Failed("conflist".into()),
                );
                return Err(e.into());
            }
        };
        let took = self.started_at.elapsed();
        self.metrics.startup(took, &StartupOutcome::Ready);
        let stats = state.status().await.stats;
        tracing::info!(
            conflist = %path.display(), enis = stats.enis, total = stats.total,
            assigned = stats.assigned, assignable = stats.assignable, startup = ?took,
            "ipamd is ready: health SERVING, CNI config written"
        );
        release_startup_memory();
        Ok(())
    }
}

/// The ENIs of `md` ipamd uses: all but those the pool manager leaves alone (`no_manage`).
fn managed_enis<'a, I: Imds, E: Ec2Api>(
    md: &'a InstanceMetadata,
    manager: Option<&Manager<I, E>>,
) -> Vec<&'a EniMetadata> {
    let unmanaged = manager.map(PoolManager::unmanaged);
    md.enis
        .iter()
        .filter(|e| {
            let skip = unmanaged.is_some_and(|u| u.contains(&e.id));
            if skip {
                tracing::info!(eni = %e.id, "ENI tagged no_manage: not brought up, not used for pods");
            }
            !skip
        })
        .collect()
}

/// What node networking is computed from: the primary ENI and the VPC's CIDRs.
fn primary_eni(md: &InstanceMetadata) -> Option<PrimaryEni> {
    let primary = md.enis.iter().find(|e| e.is_primary)?;
    Some(PrimaryEni {
        primary_mac: primary.mac,
        primary_eni: primary.id.clone(),
        primary_ip: primary.primary_ip,
        vpc_cidrs: primary.vpc_cidrs.clone(),
    })
}

/// Hands the heap start-up freed back to the kernel. Start-up reads the checkpoint, every host
/// link and instance metadata; glibc keeps the freed memory in its arenas (one per thread that
/// allocated), where it would stay resident for the daemon's whole life.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and shrinks glibc's own arenas under their locks; it
        // takes no pointer and is safe to call at any time from any thread.
        let trimmed = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released = trimmed != 0,
            "returned freed start-up memory to the kernel"
        );
    }
}
