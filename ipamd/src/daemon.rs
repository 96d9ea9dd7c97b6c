//! ipamd's life: bind the socket (health NOT_SERVING) → read instance metadata (retrying while
//! IMDS is unreachable) → find ENIs by MAC and bring up the secondary ones → build the pool from
//! the metadata's secondary IPs → restore the checkpoint → ready (health SERVING, then the
//! conflist) → follow metadata every few seconds → on shutdown: NOT_SERVING, drain, remove the
//! socket. In EC2 mode (the default) the pool manager joins in: before the pool is built it
//! reads the instance's limits and EC2's view of the ENIs (skipping those tagged `no_manage`),
//! before ready it pre-scales the pool (bounded: a failing EC2 leaves the pool as metadata shows
//! it), and after ready it replaces "follow metadata" with its cycles plus the leaked-ENI
//! cleanup. Alongside, from the moment the socket is bound: `/metrics` on `:61678` and the
//! introspection endpoint (unless disabled), both answering from the same shared state.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use thiserror::Error;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;

use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::cloud::ec2::{Ec2Api, NoEc2};
use crate::cloud::ec2_client::Ec2Client;
use crate::cloud::imds::Imds;
use crate::cloud::metadata::{self, EniMetadata, InstanceMetadata};
use crate::config::parse::BindAddress;
use crate::config::{Config, ProvisioningMode};
use crate::conflist::{self, ConflistError};
use crate::datastore::{
    Clock, Datastore, IMDS_ONLY_CAPACITY_NOTE, PROVISIONING_DISABLED_CAPACITY_NOTE, SystemClock,
};
use crate::host_network::{HostNetwork, HostNetworkError, SecondaryEni};
use crate::introspect;
use crate::mac::MacAddr;
use crate::metrics::http::{self as metrics_http};
use crate::metrics::server::{METRICS_ADDRESS, Scrape};
use crate::metrics::{IpamdMetrics, StartupOutcome};
use crate::node_network::iptables::Iptables;
use crate::node_network::{self, NodeFacts, NodeNetwork, NodeNetworkMetrics, NodeNetworkSettings};
use crate::pool::leak::LeakCleaner;
use crate::pool::manager::{ManagerConfig, NodeInfo, PoolManager};
use crate::pool::reconcile;
use crate::pool::situation::PoolSituation;
use crate::restore::restore_allocations;
use crate::server::{self, Backend, ServerError};
use crate::state::{IpamState, Phase};

/// How often instance metadata is re-read after start-up.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// How long in-flight requests may take to finish at shutdown.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(5);
const INIT_BACKOFF_START: Duration = Duration::from_millis(250);
const INIT_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why the daemon stopped with an error.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The socket could not be set up, or the server failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// No netlink socket.
    #[error(transparent)]
    HostNetwork(#[from] HostNetworkError),
    /// The checkpoint is unreadable or of an unknown version, or cannot be written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The conflist could not be written.
    #[error(transparent)]
    Conflist(#[from] ConflistError),
}

/// A start-up step that failed: retried (IMDS unreachable, link not there yet) or fatal.
enum InitError {
    Retry(String),
    Fatal(DaemonError),
}

/// The pool manager of EC2 mode, over the daemon's EC2 client and the node's links.
type Manager<I, E> = PoolManager<Ec2Client<E>, I, HostNetwork>;

/// The daemon, with its dependencies passed in. `E` is the EC2 implementation behind the
/// [`Ec2Client`] in EC2 mode ([`NoEc2`] in the metadata-only modes, which make no EC2 calls).
#[derive(Debug)]
pub struct Daemon<I: Imds, E: Ec2Api = NoEc2> {
    config: Config,
    imds: Arc<I>,
    ec2: Option<Arc<Ec2Client<E>>>,
    checkpointer: Arc<dyn Checkpointer>,
    clock: Arc<dyn Clock>,
    reconcile_interval: Duration,
    drain_grace: Duration,
    registry: Registry,
    metrics: IpamdMetrics,
    node_metrics: NodeNetworkMetrics,
    node_network_interval: Duration,
    metrics_address: SocketAddr,
    started_at: Instant,
}

impl<I: Imds> Daemon<I, NoEc2> {
    /// A daemon reading metadata from `imds` and storing allocations in `checkpointer`, making
    /// no EC2 calls (instance-metadata-only mode, or provisioning disabled).
    pub fn new(config: Config, imds: I, checkpointer: Arc<dyn Checkpointer>) -> Self {
        Self::build(config, imds, None, checkpointer)
    }
}

impl<I: Imds, E: Ec2Api> Daemon<I, E> {
    /// A daemon that keeps the warm pool through `ec2` (EC2 mode; in the other modes `ec2` is
    /// not used). `ec2` registered its metric families into the registry later given to
    /// [`Daemon::with_registry`].
    pub fn with_ec2(
        config: Config,
        imds: I,
        ec2: Ec2Client<E>,
        checkpointer: Arc<dyn Checkpointer>,
    ) -> Self {
        Self::build(config, imds, Some(Arc::new(ec2)), checkpointer)
    }

    fn build(
        config: Config,
        imds: I,
        ec2: Option<Arc<Ec2Client<E>>>,
        checkpointer: Arc<dyn Checkpointer>,
    ) -> Self {
        let mut registry = Registry::default();
        let metrics = IpamdMetrics::new(&mut registry);
        let node_metrics = NodeNetworkMetrics::new(&mut registry);
        Self {
            config,
            imds: Arc::new(imds),
            ec2,
            checkpointer,
            clock: Arc::new(SystemClock),
            reconcile_interval: DEFAULT_RECONCILE_INTERVAL,
            drain_grace: DEFAULT_DRAIN_GRACE,
            registry,
            metrics,
            node_metrics,
            node_network_interval: node_network::RECONCILE_INTERVAL,
            metrics_address: METRICS_ADDRESS,
            started_at: Instant::now(),
        }
    }

    /// Serves `registry` on `/metrics`: the daemon's one registry, into which the components
    /// built before the daemon (the EC2 client, ...) registered their families. The daemon
    /// registers its own families into it here.
    #[must_use]
    pub fn with_registry(mut self, mut registry: Registry) -> Self {
        self.metrics = IpamdMetrics::new(&mut registry);
        self.node_metrics = NodeNetworkMetrics::new(&mut registry);
        self.registry = registry;
        self
    }

    /// The daemon's own metric families (request, pool, reconcile, error counters).
    pub fn metrics(&self) -> &IpamdMetrics {
        &self.metrics
    }

    /// Counts start-up time from `at` (the process start) instead of from [`Daemon::new`].
    #[must_use]
    pub fn with_start_time(mut self, at: Instant) -> Self {
        self.started_at = at;
        self
    }

    /// Serves `/metrics` on another address than `:61678` (tests).
    #[must_use]
    pub fn with_metrics_address(mut self, addr: SocketAddr) -> Self {
        self.metrics_address = addr;
        self
    }

    /// Uses another clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Re-reads metadata at another interval.
    #[must_use]
    pub fn with_reconcile_interval(mut self, every: Duration) -> Self {
        self.reconcile_interval = every;
        self
    }

    /// Reconciles node networking (SNAT, connmark, rules) at another interval than
    /// [`node_network::RECONCILE_INTERVAL`] after start-up.
    #[must_use]
    pub fn with_node_network_interval(mut self, every: Duration) -> Self {
        self.node_network_interval = every;
        self
    }

    /// Runs until `shutdown` resolves (then drains and returns `Ok`) or a fatal error.
    ///
    /// # Errors
    /// The socket could not be bound, the checkpoint is unusable, or the conflist could not be
    /// written. The socket is removed in every case.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DaemonError> {
        let socket = self.config.socket_path.clone();
        let listener = server::bind(&socket)?;
        let (reporter, health) = tonic_health::server::health_reporter();
        server::set_health(&reporter, false).await;
        tracing::info!(socket = %socket.display(), "gRPC socket bound; NOT_SERVING until ready");

        let datastore = self.new_datastore();
        let state = Arc::new(
            IpamState::new(datastore, Arc::clone(&self.checkpointer)).with_snat(
                self.config.node_network.external_snat,
                self.config.node_network.exclude_snat_cidrs.clone(),
            ),
        );
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let registry = Arc::new(std::mem::take(&mut self.registry));
        let side_servers = self.spawn_http_endpoints(&state, registry, &stop_rx);
        let mut server_task = tokio::spawn(server::serve(
            listener,
            socket.clone(),
            Backend::new(Arc::clone(&state)).with_metrics(self.metrics.clone()),
            health,
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            },
        ));

        let outcome = tokio::select! {
            r = self.serve(&state, &reporter, shutdown) => r,
            r = &mut server_task => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(join) => {
                    tracing::error!(error = %join, "gRPC server task ended");
                    Ok(())
                }
            },
        };

        state.set_phase(Phase::Draining);
        server::set_health(&reporter, false).await;
        let _ = stop_tx.send(true);
        if !server_task.is_finished() {
            match tokio::time::timeout(self.drain_grace, &mut server_task).await {
                Ok(Ok(Ok(()))) => tracing::info!("in-flight requests drained"),
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "gRPC server ended with an error while draining")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed while draining"),
                Err(_) => {
                    tracing::warn!(grace = ?self.drain_grace, "requests still open after the drain grace period; closing them");
                    server_task.abort();
                }
            }
        }
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "cannot remove socket")
            }
        }
        for task in side_servers {
            // They stop at once on the watch; a hung client must not hold the exit.
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                tracing::warn!("an HTTP endpoint did not stop within 1 s");
            }
        }
        match &outcome {
            Ok(()) => tracing::info!("ipamd stopped"),
            Err(e) => tracing::error!(error = %e, "ipamd stopped with an error"),
        }
        outcome
    }

    /// Starts `/metrics` and the introspection endpoint (each unless disabled), stopping when
    /// `stop` turns true.
    fn spawn_http_endpoints(
        &self,
        state: &Arc<IpamState>,
        registry: Arc<Registry>,
        stop: &watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        if self.config.disable_metrics {
            tracing::info!("metrics endpoint disabled (DISABLE_METRICS=true)");
        } else {
            let router = crate::metrics::server::router(Scrape::new(
                registry,
                self.metrics.clone(),
                Arc::clone(state),
            ));
            let addr = BindAddress::Tcp(self.metrics_address);
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let bind = metrics_http::bind_with_retry("metrics", &addr, stopped(stop.clone()));
                if let Some(listener) = bind.await {
                    metrics_http::serve("metrics", listener, router, stopped(stop)).await;
                }
            }));
        }
        if self.config.disable_introspection {
            tracing::info!("introspection endpoint disabled (DISABLE_INTROSPECTION=true)");
        } else {
            let router = introspect::router(Arc::clone(state), &self.config);
            let addr = self.config.introspection_bind.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let bind =
                    metrics_http::bind_with_retry("introspection", &addr, stopped(stop.clone()));
                if let Some(listener) = bind.await {
                    metrics_http::serve("introspection", listener, router, stopped(stop)).await;
                }
            }));
        }
        tasks
    }

    async fn serve(
        &self,
        state: &Arc<IpamState>,
        reporter: &HealthReporter,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        let host = HostNetwork::connect()?;
        let node_net = NodeNetwork::with_iptables(
            NodeNetworkSettings::from_config(&self.config),
            host.clone(),
            Iptables::detect().await,
        )
        .with_metrics(self.node_metrics.clone());
        let mut manager = None;
        let (md, facts) = tokio::select! {
            r = self.initialize(&host, &node_net, state, &mut manager) => match r {
                Ok(found) => found,
                Err(e) => {
                    self.metrics.startup(
                        self.started_at.elapsed(),
                        &StartupOutcome::Failed(startup_failure_reason(&e).into()),
                    );
                    return Err(e);
                }
            },
            () = &mut shutdown => {
                tracing::info!("shutdown requested before ipamd became ready");
                return Ok(());
            }
        };
        if let Some(m) = manager.as_mut() {
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
        let path = match conflist::write(&self.config, &self.config.cni_conf_dir) {
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
        let pool = async {
            match manager {
                Some(mut m) => self.manage_pool(&mut m, state).await,
                None => self.follow_metadata(&host, state, md.primary_mac).await,
            }
        };
        let sweep = crate::orphans::sweep_forever(
            Arc::clone(state),
            host.clone(),
            Arc::clone(&self.clock),
            crate::orphans::SWEEP_INTERVAL,
            crate::orphans::ORPHAN_GRACE,
        );
        let work = async {
            tokio::join!(pool, self.keep_node_network(&node_net, state, facts), sweep);
        };
        tokio::select! {
            () = work => Ok(()),
            () = &mut shutdown => {
                tracing::info!("shutdown requested; draining");
                Ok(())
            }
        }
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

    async fn initialize(
        &self,
        host: &HostNetwork,
        node_net: &NodeNetwork,
        state: &Arc<IpamState>,
        manager: &mut Option<Manager<I, E>>,
    ) -> Result<(InstanceMetadata, NodeFacts), DaemonError> {
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

    fn new_datastore(&self) -> Datastore {
        let note = match self.config.provisioning {
            ProvisioningMode::ImdsOnly => IMDS_ONLY_CAPACITY_NOTE,
            ProvisioningMode::ProvisioningDisabled => PROVISIONING_DISABLED_CAPACITY_NOTE,
            // The pool manager's situation replaces this note once it knows the limits.
            ProvisioningMode::Ec2 => "",
        };
        Datastore::new(self.config.ip_cooldown, Arc::clone(&self.clock), note)
    }

    fn secondary(&self, eni: &EniMetadata) -> SecondaryEni {
        SecondaryEni {
            id: eni.id.clone(),
            mac: eni.mac,
            device_number: eni.device_number,
            primary_ip: eni.primary_ip,
            subnet: eni.subnet,
            mtu: self.config.node_network.eni_mtu,
        }
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
        state.set_pending("reading the instance's limits and ENIs from EC2");
        m.discover(&md.enis).await;
        Some(m)
    }

    async fn try_initialize(
        &self,
        host: &HostNetwork,
        node_net: &NodeNetwork,
        state: &Arc<IpamState>,
        manager: &mut Option<Manager<I, E>>,
    ) -> Result<(InstanceMetadata, NodeFacts), InitError> {
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

        if manager.is_none() {
            *manager = self.start_manager(host, state, &md).await;
        }
        let unmanaged = manager
            .as_ref()
            .map(|m| m.unmanaged().clone())
            .unwrap_or_default();
        let managed: Vec<&EniMetadata> = md
            .enis
            .iter()
            .filter(|e| {
                let skip = unmanaged.contains(&e.id);
                if skip {
                    tracing::info!(eni = %e.id, "ENI tagged no_manage: not brought up, not used for pods");
                }
                !skip
            })
            .collect();

        for &eni in &managed {
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

        let facts = node_facts(&md)
            .ok_or_else(|| InitError::Retry("instance metadata lists no primary ENI".into()))?;
        state.set_pending(format!(
            "programming node networking on the primary ENI {} (SNAT, connmark, rules 1024/1535, rp_filter)",
            facts.primary_eni
        ));
        match node_net.reconcile(&facts).await {
            Ok(report) => tracing::info!(
                changes = %report, external_snat = self.config.node_network.external_snat,
                vpc_cidrs = ?facts.vpc_cidrs, snat_to = %facts.primary_ip,
                "node networking in place"
            ),
            Err(e) => return Err(InitError::Retry(format!("node networking: {e}"))),
        }

        state.set_pending("restoring the checkpoint");
        let mut ds = self.new_datastore();
        if let Some(m) = manager.as_mut() {
            ds.set_capacity_note(m.situation());
            m.note_enis(managed.iter().copied());
        }
        for &eni in &managed {
            match reconcile::add_eni(&mut ds, eni) {
                Ok(n) => {
                    tracing::info!(eni = %eni.id, device = eni.device_number, secondary_ips = n, "ENI added to the pool")
                }
                Err(e) => tracing::warn!(eni = %eni.id, error = %e, "ENI not added to the pool"),
            }
        }
        let checkpointer = Arc::clone(&self.checkpointer);
        let loaded = tokio::task::spawn_blocking(move || checkpointer.load())
            .await
            .map_err(|e| InitError::Retry(format!("checkpoint read task failed: {e}")))?
            .map_err(|e| InitError::Fatal(e.into()))?;
        let links: Vec<String> = host
            .link_names()
            .await
            .map_err(|e| InitError::Retry(e.to_string()))?;
        if let Some(data) = loaded {
            let report = restore_allocations(&mut ds, &data, &links);
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
        } else {
            tracing::info!(checkpoint = %self.checkpointer.location(), "no checkpoint; starting with no allocations");
        }
        state.with_datastore(|current| *current = ds).await;
        state
            .write_checkpoint()
            .await
            .map_err(|e| InitError::Fatal(e.into()))?;

        state.set_vpc_cidrs(facts.vpc_cidrs.clone());
        Ok((md, facts))
    }

    /// After start-up, forever: every [`node_network::RECONCILE_INTERVAL`] re-reads the VPC's
    /// CIDRs from instance metadata (the reference's 30 s watcher) and reconciles node
    /// networking, which also repairs rules someone deleted and removes ones added to ipamd's
    /// chains.
    async fn keep_node_network(
        &self,
        node_net: &NodeNetwork,
        state: &IpamState,
        mut facts: NodeFacts,
    ) {
        let mut tick = tokio::time::interval(self.node_network_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.imds.vpc_ipv4_cidr_blocks(facts.primary_mac).await {
                Ok(cidrs) if cidrs.is_empty() => {
                    tracing::warn!(eni = %facts.primary_eni, "instance metadata lists no VPC CIDR; keeping the last known ones");
                }
                Ok(cidrs) => {
                    if cidrs != facts.vpc_cidrs {
                        tracing::info!(old = ?facts.vpc_cidrs, new = ?cidrs, "the VPC's CIDRs changed");
                        state.set_vpc_cidrs(cidrs.clone());
                        facts.vpc_cidrs = cidrs;
                    }
                }
                Err(e) => {
                    self.metrics.error("reconcileFailedGetVPCCIDRs");
                    tracing::warn!(error = %e, "cannot re-read the VPC's CIDRs; keeping the last known ones");
                }
            }
            match node_net.reconcile(&facts).await {
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

/// The `failure_reason` label of a start-up that gave up.
fn startup_failure_reason(e: &DaemonError) -> &'static str {
    match e {
        DaemonError::Server(_) => "server",
        DaemonError::HostNetwork(_) => "host_network",
        DaemonError::Checkpoint(_) => "checkpoint",
        DaemonError::Conflist(_) => "conflist",
    }
}

/// What node networking is computed from: the primary ENI and the VPC's CIDRs.
fn node_facts(md: &InstanceMetadata) -> Option<NodeFacts> {
    let primary = md.enis.iter().find(|e| e.is_primary)?;
    Some(NodeFacts {
        primary_mac: primary.mac,
        primary_eni: primary.id.clone(),
        primary_ip: primary.primary_ip,
        vpc_cidrs: primary.vpc_cidrs.clone(),
    })
}

/// The instance id and primary ENI a manager works for.
fn manager_node<I: Imds, E: Ec2Api>(m: &Manager<I, E>) -> (String, String) {
    let n = m.node();
    (n.instance_id.clone(), n.primary_eni.clone())
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
