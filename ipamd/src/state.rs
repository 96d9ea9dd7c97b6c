//! ipamd's shared state: the lifecycle phase (starting, ready, draining) and the pool (the
//! datastore plus its checkpoint). Every change to an assignment is written to the checkpoint
//! before it is answered; when the write fails, the change is rolled back and the request fails,
//! so the file never lags behind what pods were told.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use thiserror::Error;
use tokio::sync::{Mutex, Notify};

use crate::checkpoint::{CheckpointData, CheckpointError, Checkpointer};
use crate::datastore::{Assignment, Datastore, IpamKey, NoAssignableIp, PodMetadata, Stats};

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

/// What introspection and metrics show about the node beyond the pool itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `instance-id` from metadata, once read.
    pub instance_id: Option<String>,
    /// `instance-type` from metadata, once read.
    pub instance_type: Option<String>,
    /// Limits, when known.
    pub limits: Option<NodeLimits>,
    /// The most recent cloud error, if any.
    pub last_cloud_error: Option<CloudErrorReport>,
}

/// Phase plus pool, shared by the gRPC server, start-up and the reconcile loop.
#[derive(Debug)]
pub struct IpamState {
    phase: RwLock<Phase>,
    pool: Mutex<Datastore>,
    checkpointer: Arc<dyn Checkpointer>,
    facts: RwLock<NodeFacts>,
    pool_wanted: Arc<Notify>,
}

impl IpamState {
    /// A starting state around an empty datastore.
    pub fn new(datastore: Datastore, checkpointer: Arc<dyn Checkpointer>) -> Self {
        Self {
            phase: RwLock::new(Phase::Starting("reading instance metadata".into())),
            pool: Mutex::new(datastore),
            checkpointer,
            facts: RwLock::new(NodeFacts::default()),
            pool_wanted: Arc::new(Notify::new()),
        }
    }

    /// Notified whenever an assignment finds no address, so the pool manager (EC2 mode) grows
    /// the pool now instead of at its next cycle.
    pub fn pool_wanted(&self) -> Arc<Notify> {
        Arc::clone(&self.pool_wanted)
    }

    /// What is known about the node (introspection, metrics).
    pub fn facts(&self) -> NodeFacts {
        self.facts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Updates the node facts (instance identity, limits, last cloud error).
    pub fn update_facts(&self, f: impl FnOnce(&mut NodeFacts)) {
        f(&mut self
            .facts
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

    /// Runs `f` on the datastore under the pool lock (start-up and reconcile).
    pub async fn with_datastore<R>(&self, f: impl FnOnce(&mut Datastore) -> R) -> R {
        let mut ds = self.pool.lock().await;
        f(&mut ds)
    }

    /// Writes the checkpoint from the datastore as it is now.
    ///
    /// # Errors
    /// The write failed.
    pub async fn write_checkpoint(&self) -> Result<usize, CheckpointError> {
        let ds = self.pool.lock().await;
        let n = ds.assignments().len();
        self.persist(&ds).await?;
        Ok(n)
    }

    async fn persist(&self, ds: &Datastore) -> Result<(), CheckpointError> {
        let data = CheckpointData::from_assignments(&ds.assignments());
        let checkpointer = Arc::clone(&self.checkpointer);
        let location = checkpointer.location();
        tokio::task::spawn_blocking(move || checkpointer.save(&data))
            .await
            .unwrap_or_else(|join| {
                Err(CheckpointError::Write {
                    path: location.into(),
                    source: std::io::Error::other(join.to_string()),
                })
            })
    }

    /// Assigns an address to `key` (the same one again for a repeated key).
    ///
    /// # Errors
    /// Not ready, no assignable address, or the checkpoint write failed (rolled back).
    pub async fn add(&self, key: &IpamKey, metadata: PodMetadata) -> Result<Assignment, IpamError> {
        self.ensure_ready()?;
        let mut ds = self.pool.lock().await;
        let (assignment, is_new) = ds.assign(key, metadata).inspect_err(|_| {
            self.pool_wanted.notify_one();
        })?;
        if is_new && let Err(source) = self.persist(&ds).await {
            ds.rollback_assign(key);
            return Err(IpamError::Checkpoint {
                op: format!("assigning {} to {key}", assignment.ip),
                source,
            });
        }
        Ok(assignment)
    }

    /// Releases the address of `key` (or of the reference's legacy CRI-migrated key for the same
    /// container). `None` when nothing was assigned.
    ///
    /// # Errors
    /// Not ready, or the checkpoint write failed (rolled back).
    pub async fn del(&self, key: &IpamKey) -> Result<Option<Assignment>, IpamError> {
        self.ensure_ready()?;
        let mut ds = self.pool.lock().await;
        let legacy = IpamKey {
            network_name: LEGACY_NETWORK_NAME.into(),
            container_id: key.container_id.clone(),
            if_name: LEGACY_IF_NAME.into(),
        };
        let Some(released) = ds.release(key).or_else(|| ds.release(&legacy)) else {
            return Ok(None);
        };
        if let Err(source) = self.persist(&ds).await {
            ds.rollback_release(&released);
            return Err(IpamError::Checkpoint {
                op: format!("releasing {} of {key}", released.assignment.ip),
                source,
            });
        }
        Ok(Some(released.assignment))
    }

    /// Releases `key`'s address if it is still `ip` (the orphan sweep: the pod is gone and
    /// no DEL came). `Ok(false)` when the key holds nothing or another address by now.
    ///
    /// # Errors
    /// Not ready, or the checkpoint write failed (rolled back).
    pub async fn release_if(
        &self,
        key: &IpamKey,
        ip: std::net::Ipv4Addr,
    ) -> Result<bool, IpamError> {
        self.ensure_ready()?;
        let mut ds = self.pool.lock().await;
        if ds.lookup(key).is_none_or(|a| a.ip != ip) {
            return Ok(false);
        }
        let Some(released) = ds.release(key) else {
            return Ok(false);
        };
        if let Err(source) = self.persist(&ds).await {
            ds.rollback_release(&released);
            return Err(IpamError::Checkpoint {
                op: format!("releasing {ip} of {key} (pod gone)"),
                source,
            });
        }
        Ok(true)
    }

    /// The assignment of `key`.
    ///
    /// # Errors
    /// Not ready, or [`IpamError::NotFound`].
    pub async fn check(&self, key: &IpamKey) -> Result<Assignment, IpamError> {
        self.ensure_ready()?;
        self.pool
            .lock()
            .await
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
        let mut ds = self.pool.lock().await;
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
        let mut ds = self.pool.lock().await;
        let mut released = Vec::new();
        for key in ds.keys_of_network(network) {
            if valid.contains(&(key.container_id.clone(), key.if_name.clone())) {
                continue;
            }
            if let Some(r) = ds.release(&key) {
                released.push(r);
            }
        }
        if released.is_empty() {
            return Ok(Vec::new());
        }
        if let Err(source) = self.persist(&ds).await {
            for r in released.iter().rev() {
                ds.rollback_release(r);
            }
            return Err(IpamError::Checkpoint {
                op: format!(
                    "garbage collection of {} assignments of network {network:?}",
                    released.len()
                ),
                source,
            });
        }
        Ok(released.into_iter().map(|r| r.assignment).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::datastore::{EniSpec, ManualClock};

    /// A checkpointer that keeps the last save and can be told to fail.
    #[derive(Debug, Default)]
    struct MemCheckpointer {
        last: std::sync::Mutex<Option<CheckpointData>>,
        fail: AtomicBool,
    }

    impl Checkpointer for MemCheckpointer {
        fn load(&self) -> Result<Option<CheckpointData>, CheckpointError> {
            Ok(self.last.lock().unwrap().clone())
        }

        fn save(&self, data: &CheckpointData) -> Result<(), CheckpointError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(CheckpointError::Write {
                    path: "/mem/ipam.json".into(),
                    source: std::io::Error::other("disk full"),
                });
            }
            *self.last.lock().unwrap() = Some(data.clone());
            Ok(())
        }

        fn location(&self) -> String {
            "/mem/ipam.json".into()
        }
    }

    fn state() -> (IpamState, Arc<MemCheckpointer>) {
        let mut ds = Datastore::new(
            Duration::from_secs(30),
            Arc::new(ManualClock::new()),
            "note",
        );
        ds.add_eni(EniSpec {
            id: "eni-a".into(),
            device_number: 0,
            primary_ip: "10.0.0.10".parse().unwrap(),
            subnet: "10.0.0.0/24".parse().unwrap(),
        })
        .unwrap();
        ds.add_ip("eni-a", "10.0.0.11".parse().unwrap()).unwrap();
        ds.add_ip("eni-a", "10.0.0.12".parse().unwrap()).unwrap();
        let cp = Arc::new(MemCheckpointer::default());
        let st = IpamState::new(ds, cp.clone());
        (st, cp)
    }

    fn key(c: &str) -> IpamKey {
        IpamKey {
            network_name: "aws-cni".into(),
            container_id: c.into(),
            if_name: "eth0".into(),
        }
    }

    fn saved_ips(cp: &MemCheckpointer) -> Vec<String> {
        cp.last
            .lock()
            .unwrap()
            .as_ref()
            .map(|d| {
                d.allocations
                    .iter()
                    .filter_map(|a| a.ipv4.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn requests_before_ready_say_what_is_pending() {
        let (st, _) = state();
        st.set_pending("bringing up ENI eni-b");
        let err = st.add(&key("c"), PodMetadata::default()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "ipamd is not ready yet: bringing up ENI eni-b"
        );
        let status = st.status().await;
        assert!(!status.ready);
        assert!(status.message.contains("bringing up ENI eni-b"));
        st.set_phase(Phase::Draining);
        assert!(matches!(st.del(&key("c")).await, Err(IpamError::Draining)));
    }

    #[tokio::test]
    async fn every_change_is_checkpointed() {
        let (st, cp) = state();
        st.set_phase(Phase::Ready);
        let a = st.add(&key("c1"), PodMetadata::default()).await.unwrap();
        assert_eq!(saved_ips(&cp), vec![a.ip.to_string()]);
        st.add(&key("c2"), PodMetadata::default()).await.unwrap();
        assert_eq!(saved_ips(&cp).len(), 2);
        let released = st.del(&key("c1")).await.unwrap().unwrap();
        assert_eq!(released.ip, a.ip);
        assert_eq!(saved_ips(&cp), vec!["10.0.0.12".to_owned()]);
        assert!(st.del(&key("c1")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn failed_checkpoint_write_rolls_back_and_fails() {
        let (st, cp) = state();
        st.set_phase(Phase::Ready);
        let held = st.add(&key("c1"), PodMetadata::default()).await.unwrap();
        cp.fail.store(true, Ordering::SeqCst);
        let err = st
            .add(&key("c2"), PodMetadata::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("rolled back") && err.to_string().contains("disk full"),
            "{err}"
        );
        assert!(matches!(
            st.check(&key("c2")).await,
            Err(IpamError::NotFound { .. })
        ));
        let err = st.del(&key("c1")).await.unwrap_err();
        assert!(err.to_string().contains("releasing 10.0.0.11"), "{err}");
        assert_eq!(st.check(&key("c1")).await.unwrap().ip, held.ip);
        assert_eq!(st.status().await.stats.assigned, 1);
        cp.fail.store(false, Ordering::SeqCst);
        let b = st.add(&key("c2"), PodMetadata::default()).await.unwrap();
        assert_eq!(
            b.ip.to_string(),
            "10.0.0.12",
            "the rolled-back address is free again"
        );
    }

    #[tokio::test]
    async fn legacy_cri_key_is_released_by_container_id() {
        let (st, cp) = state();
        st.set_phase(Phase::Ready);
        let legacy = IpamKey {
            network_name: LEGACY_NETWORK_NAME.into(),
            container_id: "old".into(),
            if_name: LEGACY_IF_NAME.into(),
        };
        st.add(&legacy, PodMetadata::default()).await.unwrap();
        let r = st.del(&key("old")).await.unwrap().unwrap();
        assert_eq!(r.key, legacy);
        assert!(saved_ips(&cp).is_empty());
    }

    #[tokio::test]
    async fn gc_releases_unlisted_attachments_of_the_network() {
        let (st, cp) = state();
        st.set_phase(Phase::Ready);
        st.add(&key("keep"), PodMetadata::default()).await.unwrap();
        let gone = st.add(&key("gone"), PodMetadata::default()).await.unwrap();
        let valid = HashSet::from([("keep".to_owned(), "eth0".to_owned())]);
        let released = st.gc("aws-cni", &valid).await.unwrap();
        assert_eq!(
            released.iter().map(|a| a.ip).collect::<Vec<_>>(),
            vec![gone.ip]
        );
        assert_eq!(saved_ips(&cp).len(), 1);
        assert!(
            st.gc("other-net", &HashSet::new())
                .await
                .unwrap()
                .is_empty()
        );
        cp.fail.store(true, Ordering::SeqCst);
        assert!(st.gc("aws-cni", &HashSet::new()).await.is_err());
        assert!(
            st.check(&key("keep")).await.is_ok(),
            "failed GC is rolled back"
        );
    }

    #[tokio::test]
    async fn status_explains_exhaustion() {
        let (st, _) = state();
        st.set_phase(Phase::Ready);
        st.add(&key("a"), PodMetadata::default()).await.unwrap();
        st.add(&key("b"), PodMetadata::default()).await.unwrap();
        let s = st.status().await;
        assert!(s.ready);
        assert_eq!(s.stats.assignable, 0);
        assert!(
            s.message
                .starts_with("no assignable IP: all 2 IPs on 1 ENI are assigned"),
            "{}",
            s.message
        );
        let err = st.add(&key("c"), PodMetadata::default()).await.unwrap_err();
        assert_eq!(err.to_string(), s.message);
    }
}
