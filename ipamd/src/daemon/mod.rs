//! ipamd's life: bind the socket (health NOT_SERVING) → start-up until ready (`startup`:
//! instance metadata, ENIs, node networking, the pool and its checkpoint, then health SERVING
//! and the conflist) → the upkeep until shutdown (`upkeep`: the pool follows metadata, or the
//! pool manager runs, plus node networking and the orphan sweep) → on shutdown: NOT_SERVING,
//! drain, remove the socket. Alongside, from the moment the socket is bound: `/metrics` on
//! `:61678` and the introspection endpoint (unless disabled), both answering from the same
//! shared state.

mod ipv6;
mod startup;
mod upkeep;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;

use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::cloud::ec2::{Ec2Api, NoEc2};
use crate::cloud::ec2_client::Ec2Client;
use crate::cloud::imds::Imds;
use crate::cloud::metadata::EniMetadata;
use crate::config::parse::BindAddress;
use crate::config::{Config, ProvisioningMode};
use crate::conflist::ConflistError;
use crate::datastore::{
    Clock, Datastore, IMDS_ONLY_CAPACITY_NOTE, PROVISIONING_DISABLED_CAPACITY_NOTE, SystemClock,
};
use crate::http;
use crate::introspect;
use crate::k8s::KubeApis;
use crate::k8s::events::NoAddressEvents;
use crate::metrics::server::{METRICS_ADDRESS, Scrape};
use crate::metrics::{IpamdMetrics, StartupOutcome};
use crate::node_network::host::{HostNetwork, HostNetworkError, SecondaryEni};
use crate::node_network::iptables::Iptables;
use crate::node_network::{self, NodeNetwork, NodeNetworkMetrics, NodeNetworkSettings};
use crate::pool::manager::PoolManager;
use crate::server::{self, Backend, ServerError};
use crate::socket::{self, SocketError};
use crate::state::{IpamState, Phase};

/// How often instance metadata is re-read after start-up.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// How long in-flight requests may take to finish at shutdown.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Why the daemon stopped with an error.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The gRPC server failed.
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
    /// The node cannot run the configuration (e.g. IPv6 mode on a Xen instance type).
    #[error("{0}")]
    Unsupported(String),
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
    /// The Kubernetes API, when the service account is mounted.
    kube: Option<KubeApis>,
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
            kube: None,
        }
    }

    /// Calls the Kubernetes API through `kube` (built by [`crate::k8s::client_for`]): Events on
    /// pods without an address, the Node's max pods and cordon, and with `ANNOTATE_POD_IP=true`
    /// the pods' annotations. `None` makes no API call.
    #[must_use]
    pub fn with_kube(mut self, kube: Option<KubeApis>) -> Self {
        self.kube = kube;
        self
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
        let listener = socket::bind(&socket)?;
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
        state.set_add_wait(crate::state::demand::ADD_WAIT);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let registry = Arc::new(std::mem::take(&mut self.registry));
        let side_servers = self.spawn_http_endpoints(&state, registry, &stop_rx);
        let mut backend = Backend::new(Arc::clone(&state)).with_metrics(self.metrics.clone());
        if let Some(kube) = &self.kube {
            backend = backend.with_no_address_events(NoAddressEvents::new(
                Arc::clone(&kube.pods),
                self.config.kubernetes.node_name.clone(),
            ));
            if self.config.kubernetes.annotate_pod_ip {
                backend = backend.with_pod_annotations(Arc::clone(&kube.pods));
            }
        }
        let mut server_task = tokio::spawn(server::serve(
            listener,
            socket.clone(),
            backend,
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
        self.drain(server_task, &socket, side_servers).await;
        match &outcome {
            Ok(()) => tracing::info!("ipamd stopped"),
            Err(e) => tracing::error!(error = %e, "ipamd stopped with an error"),
        }
        outcome
    }

    /// After the servers were told to stop: lets in-flight requests finish within the drain
    /// grace, removes the socket, and waits briefly for the HTTP endpoints.
    async fn drain(
        &self,
        mut server_task: JoinHandle<Result<(), ServerError>>,
        socket: &Path,
        side_servers: Vec<JoinHandle<()>>,
    ) {
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
        match std::fs::remove_file(socket) {
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
                let bind = http::bind_with_retry("metrics", &addr, stopped(stop.clone()));
                if let Some(listener) = bind.await {
                    http::serve("metrics", listener, router, stopped(stop)).await;
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
                let bind = http::bind_with_retry("introspection", &addr, stopped(stop.clone()));
                if let Some(listener) = bind.await {
                    http::serve("introspection", listener, router, stopped(stop)).await;
                }
            }));
        }
        tasks
    }

    /// Start-up until ready, then the upkeep until `shutdown`.
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
        let (md, primary) = tokio::select! {
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
        self.become_ready(state, reporter, manager.as_mut(), primary.primary_ip)
            .await?;
        tokio::select! {
            () = self.upkeep(&host, &node_net, state, manager, md.primary_mac, primary) => Ok(()),
            () = &mut shutdown => {
                tracing::info!("shutdown requested; draining");
                Ok(())
            }
        }
    }

    /// An empty datastore whose exhaustion messages say what the provisioning mode allows.
    fn new_datastore(&self) -> Datastore {
        let note = match self.config.provisioning {
            ProvisioningMode::ImdsOnly => IMDS_ONLY_CAPACITY_NOTE,
            ProvisioningMode::ProvisioningDisabled => PROVISIONING_DISABLED_CAPACITY_NOTE,
            // The pool manager's situation replaces this note once it knows the limits.
            ProvisioningMode::Ec2 => "",
        };
        let mut ds = Datastore::new(self.config.ip_cooldown, Arc::clone(&self.clock), note);
        if self.config.features.ipv6 {
            ds.set_ipv6_mode();
        }
        // In EC2 mode the pool manager turns this off on a platform without prefixes.
        ds.set_prefix_mode(self.config.features.prefix_delegation);
        ds
    }

    /// How a secondary ENI from metadata is brought up on the host.
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
}

/// The `failure_reason` label of a start-up that gave up.
fn startup_failure_reason(e: &DaemonError) -> &'static str {
    match e {
        DaemonError::Socket(_) | DaemonError::Server(_) => "server",
        DaemonError::HostNetwork(_) => "host_network",
        DaemonError::Checkpoint(_) => "checkpoint",
        DaemonError::Conflist(_) => "conflist",
        DaemonError::Unsupported(_) => "unsupported",
    }
}
