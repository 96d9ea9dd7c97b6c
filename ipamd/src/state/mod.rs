//! ipamd's shared state: the lifecycle phase (starting, ready, draining), the pool (the
//! datastore plus its checkpoint), what is known about the node, and what every AddNetwork
//! reply tells the plugin about SNAT ([`PodEgress`]). Every change to an assignment is written to the checkpoint
//! before it is answered; when the write fails, the change is rolled back and the request fails,
//! so the file never lags behind what pods were told. Writes are group commits made outside the
//! pool lock ([`crate::journal`]).

pub mod demand;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use thiserror::Error;
use tokio::sync::Notify;

use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::datastore::{Assignment, Datastore, IpamKey, NoAssignableIp, PodMetadata, Stats};
use crate::journal::{Change, Journal, Settle};

use self::demand::Demand;

/// Network name the reference used for allocations migrated from the CRI (before v1.12).
pub const LEGACY_NETWORK_NAME: &str = "_migrated-from-cri";
/// Interface name of such allocations.
pub const LEGACY_IF_NAME: &str = "unknown";

/// Where ipamd is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not ready yet; the text says what is pending.
    Starting(String),
    /// Serving.
    Ready,
    /// Shutting down.
    Draining,
}

/// Why a pool request failed.
#[derive(Debug, Error)]
pub enum IpamError {
    /// ipamd is not ready.
    #[error("ipamd is not ready yet: {0}")]
    NotReady(String),
    /// ipamd is shutting down.
    #[error("ipamd is shutting down")]
    Draining,
    /// Nothing assignable.
    #[error(transparent)]
    Exhausted(#[from] NoAssignableIp),
    /// The key has no assignment (CheckNetwork).
    #[error("no IP is assigned to network {network:?} container {container:?} ifname {ifname:?}")]
    NotFound {
        /// Network name.
        network: String,
        /// Container ID.
        container: String,
        /// Interface name.
        ifname: String,
    },
    /// The checkpoint could not be written; the change was rolled back.
    #[error("{op} was rolled back: {source}")]
    Checkpoint {
        /// What was rolled back.
        op: String,
        /// The write error.
        source: CheckpointError,
    },
}

/// What PoolStatus reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    /// Ready to serve.
    pub ready: bool,
    /// Counts.
    pub stats: Stats,
    /// Why nothing is assignable (or what start-up waits for); empty otherwise.
    pub message: String,
}

/// The instance's limits, as the pool manager knows them (unknown in
/// instance-metadata-only mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    /// ENIs ipamd may use (instance limit, capped by `MAX_ENI`).
    pub max_enis: u32,
    /// Pod IPs per ENI (IPv4 addresses per interface − 1).
    pub ips_per_eni: u32,
    /// Max pods the node takes.
    pub max_pods: u32,
}

/// The last failed call to the cloud (EC2), for introspection and `ipamd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudErrorReport {
    /// The API call (`CreateNetworkInterface`, ...).
    pub operation: String,
    /// What it answered (code and message).
    pub message: String,
    /// When.
    pub at: SystemTime,
}

/// A subnet new ENIs may go into, as the pool manager last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetReport {
    /// `subnet-…`.
    pub id: String,
    /// Its CIDR.
    pub cidr: ipnet::Ipv4Net,
    /// `AvailableIpAddressCount`.
    pub available_ips: u32,
    /// The node's own subnet (else one tagged `kubernetes.io/role/cni`).
    pub node_subnet: bool,
    /// Fewer free addresses than one more node of this instance type takes.
    pub low: bool,
    /// How many addresses one more node of this instance type takes for its warm pool.
    pub one_node_takes: u32,
}

/// What introspection and metrics report about the node beyond the pool itself: its identity,
/// limits, last cloud error and subnets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReport {
    /// `instance-id` from metadata, once read.
    pub instance_id: Option<String>,
    /// `instance-type` from metadata, once read.
    pub instance_type: Option<String>,
    /// Limits, when known.
    pub limits: Option<NodeLimits>,
    /// The most recent cloud error, if any.
    pub last_cloud_error: Option<CloudErrorReport>,
    /// The subnets new ENIs may go into (EC2 mode), most free addresses first.
    pub subnets: Vec<SubnetReport>,
    /// The node is cordoned and `AWS_MANAGE_ENIS_NON_SCHEDULABLE=false`: the pool is held.
    pub unschedulable: bool,
}

/// What every AddNetwork reply tells the plugin besides the address: which destinations pods
/// reach with their own address, and whether the node SNATs at all (the reference fills in
/// both).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodEgress {
    /// The VPC's CIDRs, as instance metadata last listed them (none before start-up read them).
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`.
    pub exclude_snat_cidrs: Vec<Ipv4Net>,
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT`.
    pub external_snat: bool,
    /// The VPC's IPv6 CIDRs (IPv6 mode), as instance metadata listed them at start-up.
    pub vpc_v6_cidrs: Vec<ipnet::Ipv6Net>,
}

impl PodEgress {
    /// The destinations that are not SNATed: the VPC's CIDRs, then the excluded ones.
    pub fn no_snat_cidrs(&self) -> impl Iterator<Item = &Ipv4Net> {
        self.vpc_cidrs.iter().chain(&self.exclude_snat_cidrs)
    }
}

/// Phase plus pool, shared by the gRPC server, start-up and the reconcile loop.
#[derive(Debug)]
pub struct IpamState {
    phase: RwLock<Phase>,
    journal: Arc<Journal>,
    node: RwLock<NodeReport>,
    egress: RwLock<PodEgress>,
    pool_wanted: Arc<Notify>,
    demand: Demand,
    add_wait: RwLock<Duration>,
}

impl IpamState {
    /// A starting state around an empty datastore.
    pub fn new(datastore: Datastore, checkpointer: Arc<dyn Checkpointer>) -> Self {
        Self {
            phase: RwLock::new(Phase::Starting("reading instance metadata".into())),
            journal: Journal::new(datastore, checkpointer),
            node: RwLock::new(NodeReport::default()),
            egress: RwLock::new(PodEgress::default()),
            pool_wanted: Arc::new(Notify::new()),
            demand: Demand::default(),
            add_wait: RwLock::new(Duration::ZERO),
        }
    }

    /// An AddNetwork that finds no address waits up to `wait` while the pool manager can still
    /// grow the pool (see [`demand`]); zero (the default) fails it at once.
    pub fn set_add_wait(&self, wait: Duration) {
        *self
            .add_wait
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = wait;
    }

    /// Pods waiting for an address, for the pool manager.
    pub fn demand(&self) -> &Demand {
        &self.demand
    }

    /// Tells the plugin `external_snat` and that `exclude_snat_cidrs` are not SNATed (besides
    /// the VPC's CIDRs, see [`IpamState::set_vpc_cidrs`]).
    #[must_use]
    pub fn with_snat(self, external_snat: bool, exclude_snat_cidrs: Vec<Ipv4Net>) -> Self {
        {
            let mut egress = self
                .egress
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            egress.external_snat = external_snat;
            egress.exclude_snat_cidrs = exclude_snat_cidrs;
        }
        self
    }

    /// What AddNetwork replies tell the plugin about SNAT.
    pub fn egress(&self) -> PodEgress {
        self.egress
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The VPC's CIDRs as instance metadata lists them now (start-up, and every re-read).
    pub fn set_vpc_cidrs(&self, cidrs: Vec<Ipv4Net>) {
        self.egress
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .vpc_cidrs = cidrs;
    }

    /// The VPC's IPv6 CIDRs (IPv6 mode, start-up).
    pub fn set_vpc_v6_cidrs(&self, cidrs: Vec<ipnet::Ipv6Net>) {
        self.egress
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .vpc_v6_cidrs = cidrs;
    }

    /// Notified whenever an assignment finds no address, so the pool manager (EC2 mode) grows
    /// the pool now instead of at its next cycle.
    pub fn pool_wanted(&self) -> Arc<Notify> {
        Arc::clone(&self.pool_wanted)
    }

    /// What is known about the node (introspection, metrics).
    pub fn node_report(&self) -> NodeReport {
        self.node
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Updates what is known about the node (instance identity, limits, last cloud error,
    /// subnets).
    pub fn update_node_report(&self, f: impl FnOnce(&mut NodeReport)) {
        f(&mut self
            .node
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Moves to a phase.
    pub fn set_phase(&self, phase: Phase) {
        *self
            .phase
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = phase;
    }

    /// Says what start-up is waiting for (no effect once ready or draining).
    pub fn set_pending(&self, what: impl Into<String>) {
        let mut phase = self
            .phase
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(*phase, Phase::Starting(_)) {
            *phase = Phase::Starting(what.into());
        }
    }

    fn ensure_ready(&self) -> Result<(), IpamError> {
        match self.phase() {
            Phase::Ready => Ok(()),
            Phase::Starting(pending) => Err(IpamError::NotReady(pending)),
            Phase::Draining => Err(IpamError::Draining),
        }
    }

    /// Runs `f` on the datastore under the pool lock (start-up and reconcile). Assignments
    /// changed here are not checkpointed: call [`IpamState::write_checkpoint`] after replacing
    /// or restoring them.
    pub async fn with_datastore<R>(&self, f: impl FnOnce(&mut Datastore) -> R) -> R {
        f(self.journal.lock(Settle::Nothing).await.datastore())
    }

    /// Writes the checkpoint from the datastore as it is now (every assignment encoded again).
    ///
    /// # Errors
    /// The write failed.
    pub async fn write_checkpoint(&self) -> Result<usize, CheckpointError> {
        self.journal.rewrite().await
    }

    /// Assigns an address to `key` (the same one again for a repeated key). When none is free
    /// and the pool manager can still grow the pool, waits up to the add wait for addresses
    /// to arrive (see [`demand`]).
    ///
    /// # Errors
    /// Not ready, no assignable address, or the checkpoint write failed (rolled back).
    pub async fn add(&self, key: &IpamKey, metadata: PodMetadata) -> Result<Assignment, IpamError> {
        let pod = if metadata.name.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", metadata.namespace, metadata.name)
        };
        let wait = *self
            .add_wait
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.ensure_ready()?;
            let grown = self.demand.grown();
            tokio::pin!(grown);
            grown.as_mut().enable();
            match self.try_add(key, metadata.clone(), &pod).await {
                Err(IpamError::Exhausted(e)) => {
                    self.demand.wait_for(&pod);
                    self.pool_wanted.notify_one();
                    if !self.demand.may_grow() || tokio::time::Instant::now() >= deadline {
                        return Err(e.into());
                    }
                    tokio::select! {
                        () = &mut grown => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                other => return other,
            }
        }
    }

    async fn try_add(
        &self,
        key: &IpamKey,
        metadata: PodMetadata,
        pod: &str,
    ) -> Result<Assignment, IpamError> {
        let mut pool = self.journal.lock(Settle::Keys(&[key])).await;
        let (assignment, is_new) = pool.datastore().assign(key, metadata)?;
        if !is_new {
            return Ok(assignment);
        }
        // Under the pool lock, so the pool manager never sees the pod both waiting and served.
        self.demand.served(pod);
        pool.commit(Change::Assigned(assignment.clone()))
            .await
            .map_err(|source| IpamError::Checkpoint {
                op: format!("assigning {} to {key}", assignment.ip),
                source,
            })?;
        Ok(assignment)
    }

    /// Releases the address of `key` (or of the reference's legacy CRI-migrated key for the same
    /// container). `None` when nothing was assigned.
    ///
    /// # Errors
    /// Not ready, or the checkpoint write failed (rolled back).
    pub async fn del(&self, key: &IpamKey) -> Result<Option<Assignment>, IpamError> {
        self.ensure_ready()?;
        let legacy = IpamKey {
            network_name: LEGACY_NETWORK_NAME.into(),
            container_id: key.container_id.clone(),
            if_name: LEGACY_IF_NAME.into(),
        };
        let mut pool = self.journal.lock(Settle::Keys(&[key, &legacy])).await;
        let ds = pool.datastore();
        let Some(released) = ds.release(key).or_else(|| ds.release(&legacy)) else {
            return Ok(None);
        };
        let assignment = released.assignment.clone();
        pool.commit(Change::Released(vec![released]))
            .await
            .map_err(|source| IpamError::Checkpoint {
                op: format!("releasing {} of {key}", assignment.ip),
                source,
            })?;
        Ok(Some(assignment))
    }

    /// Releases `key`'s address if it is still `ip` (the orphan sweep: the pod is gone and
    /// no DEL came). `Ok(false)` when the key holds nothing or another address by now.
    ///
    /// # Errors
    /// Not ready, or the checkpoint write failed (rolled back).
    pub async fn release_if(&self, key: &IpamKey, ip: std::net::IpAddr) -> Result<bool, IpamError> {
        self.ensure_ready()?;
        let mut pool = self.journal.lock(Settle::Keys(&[key])).await;
        let ds = pool.datastore();
        if ds.lookup(key).is_none_or(|a| a.ip != ip) {
            return Ok(false);
        }
        let Some(released) = ds.release(key) else {
            return Ok(false);
        };
        pool.commit(Change::Released(vec![released]))
            .await
            .map_err(|source| IpamError::Checkpoint {
                op: format!("releasing {ip} of {key} (pod gone)"),
                source,
            })?;
        Ok(true)
    }

    /// The assignment of `key`.
    ///
    /// # Errors
    /// Not ready, or [`IpamError::NotFound`].
    pub async fn check(&self, key: &IpamKey) -> Result<Assignment, IpamError> {
        self.ensure_ready()?;
        self.journal
            .lock(Settle::Keys(&[key]))
            .await
            .datastore()
            .lookup(key)
            .ok_or_else(|| IpamError::NotFound {
                network: key.network_name.clone(),
                container: key.container_id.clone(),
                ifname: key.if_name.clone(),
            })
    }

    /// Counts and, when nothing is assignable, why.
    pub async fn status(&self) -> PoolStatus {
        let phase = self.phase();
        let mut pool = self.journal.lock(Settle::Nothing).await;
        let ds = pool.datastore();
        let stats = ds.stats();
        let (ready, message) = match phase {
            Phase::Ready => (
                true,
                ds.exhaustion_reason()
                    .map(|e| e.message)
                    .unwrap_or_default(),
            ),
            Phase::Starting(pending) => (false, format!("ipamd is not ready yet: {pending}")),
            Phase::Draining => (false, "ipamd is shutting down".to_owned()),
        };
        PoolStatus {
            ready,
            stats,
            message,
        }
    }

    /// CNI GC: releases every assignment of `network` whose (container ID, ifname) is not in
    /// `valid`, in one checkpoint write.
    ///
    /// # Errors
    /// Not ready, or the checkpoint write failed (everything rolled back).
    pub async fn gc(
        &self,
        network: &str,
        valid: &HashSet<(String, String)>,
    ) -> Result<Vec<Assignment>, IpamError> {
        self.ensure_ready()?;
        // GC looks at every key of the network: it waits until no change is unwritten.
        let mut pool = self.journal.lock(Settle::All).await;
        let ds = pool.datastore();
        let released: Vec<_> = ds
            .keys_of_network(network)
            .into_iter()
            .filter(|key| !valid.contains(&(key.container_id.clone(), key.if_name.clone())))
            .filter_map(|key| ds.release(&key))
            .collect();
        if released.is_empty() {
            return Ok(Vec::new());
        }
        let out: Vec<Assignment> = released.iter().map(|r| r.assignment.clone()).collect();
        pool.commit(Change::Released(released))
            .await
            .map_err(|source| IpamError::Checkpoint {
                op: format!(
                    "garbage collection of {} assignments of network {network:?}",
                    out.len()
                ),
                source,
            })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
