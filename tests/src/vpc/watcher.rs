//! The hypervisor: a background thread that polls moto (every [`DEFAULT_POLL`]) and keeps the
//! simulated VPC in step with it, the way EC2's hypervisor and VPC fabric follow the EC2 API:
//! an ENI attached to a node's instance appears in the node as `eth<device>` with the ENI's MAC
//! (and goes away on detach), and the router routes every private address moto shows on an ENI
//! to that ENI (in an IPv6 VPC also its IPv6 addresses and /80 prefixes, added and removed as
//! moto changes). Each poll that was applied to the kernel is then published to the instance
//! metadata view ([`MotoSource`]), so IMDS never shows an ENI or address the fabric does not
//! deliver yet (ipamd waits for both), optionally with a lag to simulate stale IMDS.
//!
//! Tests get "moto and the fabric agree" points with [`Hypervisor::sync`] (a poll that started
//! after the call has been applied) and [`Hypervisor::wait_until`]. Shutdown is deterministic:
//! [`Watcher`] stops and joins the thread on drop.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};

use super::VpcError;
use super::ec2::Ec2;
use super::model::{InstanceInfo, SubnetInfo, VpcSnapshot};
use super::router::RouterState;
use test_support::metadata::{MetadataSource, NodeDescription, NodeFileError};
use test_support::netns::Netns;

/// How often the hypervisor polls moto (also the freshness bound of instance metadata).
pub(crate) const DEFAULT_POLL: Duration = Duration::from_millis(200);
/// How long [`Hypervisor::sync`] waits for a poll to complete.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Published snapshots kept beyond the IMDS lag.
const HISTORY_SLACK: Duration = Duration::from_secs(2);

/// A node the hypervisor serves: its instance and the namespace its ENIs appear in.
#[derive(Debug, Clone)]
pub(crate) struct RegisteredNode {
    /// The instance.
    pub instance: InstanceInfo,
    /// Name of the node's network namespace.
    pub netns: String,
}

#[derive(Debug)]
struct WatchState {
    /// Published snapshots, oldest first, with the time each was published.
    history: VecDeque<(Instant, Arc<VpcSnapshot>)>,
    generation: u64,
    requested: u64,
    served: u64,
    last_result: Result<(), String>,
    last_error: Option<(Instant, String)>,
    failures: u64,
    links: Vec<(String, String, u32)>,
    stop: bool,
}

/// State shared by the hypervisor thread, the IMDS emulator and the fabric's handles.
#[derive(Debug)]
pub struct Hypervisor {
    ec2: Ec2,
    router: Arc<Netns>,
    period: Duration,
    nodes: Mutex<BTreeMap<String, RegisteredNode>>,
    subnets: Mutex<BTreeMap<String, SubnetInfo>>,
    state: Mutex<WatchState>,
    changed: Condvar,
    imds_lag_ms: AtomicU64,
    /// Instances whose metadata shows only these ENIs (see [`Hypervisor::hide_new_enis`]).
    imds_visible_only: Mutex<BTreeMap<String, std::collections::BTreeSet<String>>>,
    region: String,
    vpc_id: String,
    vpc_cidrs: Vec<Ipv4Net>,
    /// The VPC's IPv6 blocks ([`Hypervisor::set_vpc_ipv6_cidrs`], empty in an IPv4-only VPC).
    vpc_ipv6_cidrs: Mutex<Vec<Ipv6Net>>,
    /// The router routes the ENIs' IPv6 addresses and prefixes (an IPv6 VPC).
    route_ipv6: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hypervisor {
    /// Shared state for the VPC `vpc_id`; nothing runs until `Watcher::start`. With
    /// `route_ipv6` the router also routes the ENIs' IPv6 addresses and prefixes.
    pub fn new(
        ec2: Ec2,
        router: Arc<Netns>,
        vpc_id: &str,
        vpc_cidrs: Vec<Ipv4Net>,
        period: Duration,
        route_ipv6: bool,
    ) -> Self {
        let region = ec2.region().to_owned();
        let empty = Arc::new(VpcSnapshot::empty(&region, vpc_id, vpc_cidrs.clone()));
        Self {
            ec2,
            router,
            period,
            nodes: Mutex::new(BTreeMap::new()),
            subnets: Mutex::new(BTreeMap::new()),
            state: Mutex::new(WatchState {
                history: VecDeque::from([(Instant::now(), empty)]),
                generation: 0,
                requested: 0,
                served: 0,
                last_result: Ok(()),
                last_error: None,
                failures: 0,
                links: Vec::new(),
                stop: false,
            }),
            changed: Condvar::new(),
            imds_lag_ms: AtomicU64::new(0),
            imds_visible_only: Mutex::new(BTreeMap::new()),
            region,
            vpc_id: vpc_id.to_owned(),
            vpc_cidrs,
            vpc_ipv6_cidrs: Mutex::new(Vec::new()),
            route_ipv6,
        }
    }

    /// The harness's EC2 client.
    pub fn ec2(&self) -> &Ec2 {
        &self.ec2
    }

    /// Registers a subnet the fabric created (saves the poll a `DescribeSubnets`). Its IPv6
    /// blocks are the ones it has now: one associated later is seen after
    /// [`Hypervisor::refresh_ipv6_cidrs`].
    pub fn add_subnet(&self, subnet: SubnetInfo) {
        lock(&self.subnets).insert(subnet.id.clone(), subnet);
    }

    /// Sets the VPC's IPv6 blocks that instance metadata shows (`vpc-ipv6-cidr-blocks`) from
    /// the next poll on; the fabric sets them from `DescribeVpcs` at start.
    pub fn set_vpc_ipv6_cidrs(&self, cidrs: Vec<Ipv6Net>) {
        *lock(&self.vpc_ipv6_cidrs) = cidrs;
    }

    /// Whether the router routes the ENIs' IPv6 addresses and prefixes (an IPv6 VPC).
    pub fn routes_ipv6(&self) -> bool {
        self.route_ipv6
    }

    /// The VPC's IPv6 blocks as the next poll publishes them.
    pub fn vpc_ipv6_cidrs(&self) -> Vec<Ipv6Net> {
        lock(&self.vpc_ipv6_cidrs).clone()
    }

    /// Re-reads the VPC's IPv6 blocks and those of every subnet seen so far from EC2 (after
    /// `AssociateVpcCidrBlock` or `AssociateSubnetCidrBlock` out of band, which polls do not
    /// look for); the next poll publishes them.
    pub fn refresh_ipv6_cidrs(&self) -> Result<(), VpcError> {
        let (_, vpc_ipv6) = self.ec2.vpc_cidrs(&self.vpc_id)?;
        let ids: Vec<String> = lock(&self.subnets).keys().cloned().collect();
        let mut blocks = Vec::with_capacity(ids.len());
        for id in ids {
            let subnet = self.ec2.subnet(&id)?;
            blocks.push((id, subnet.ipv6_cidrs));
        }
        let mut subnets = lock(&self.subnets);
        for (id, ipv6_cidrs) in blocks {
            if let Some(subnet) = subnets.get_mut(&id) {
                subnet.ipv6_cidrs = ipv6_cidrs;
            }
        }
        drop(subnets);
        self.set_vpc_ipv6_cidrs(vpc_ipv6);
        Ok(())
    }

    /// Starts serving `node`: its attached ENIs appear in its namespace from the next poll.
    pub(crate) fn register(&self, node: RegisteredNode) {
        lock(&self.nodes).insert(node.instance.id.clone(), node);
    }

    /// Stops serving the instance: its links are deleted at the next poll.
    pub(crate) fn unregister(&self, instance_id: &str) {
        lock(&self.nodes).remove(instance_id);
    }

    /// Delays what instance metadata shows by `lag` (IMDS lagging behind EC2, as on AWS).
    pub fn set_imds_lag(&self, lag: Duration) {
        let ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
        self.imds_lag_ms.store(ms, Ordering::SeqCst);
    }

    /// From now on the instance metadata of `instance_id` lists only the ENIs attached to it
    /// now: an ENI attached later never shows up there (its link still appears in the node), as
    /// when the metadata service misses an attachment. [`Hypervisor::show_all_enis`] ends it.
    pub fn hide_new_enis(&self, instance_id: &str) {
        let visible = self
            .latest()
            .enis_of(instance_id)
            .iter()
            .map(|e| e.id.clone())
            .collect();
        lock(&self.imds_visible_only).insert(instance_id.to_owned(), visible);
    }

    /// Instance metadata of `instance_id` lists every attached ENI again.
    pub fn show_all_enis(&self, instance_id: &str) {
        lock(&self.imds_visible_only).remove(instance_id);
    }

    /// The current IMDS lag.
    pub(crate) fn imds_lag(&self) -> Duration {
        Duration::from_millis(self.imds_lag_ms.load(Ordering::SeqCst))
    }

    /// The newest snapshot applied to the fabric.
    pub fn latest(&self) -> Arc<VpcSnapshot> {
        let state = lock(&self.state);
        state
            .history
            .back()
            .map(|(_, s)| Arc::clone(s))
            .unwrap_or_else(|| {
                Arc::new(VpcSnapshot::empty(
                    &self.region,
                    &self.vpc_id,
                    self.vpc_cidrs.clone(),
                ))
            })
    }

    /// What instance metadata shows now: the newest snapshot published at least the IMDS lag
    /// ago (the oldest one kept if none is that old).
    pub(crate) fn imds_view(&self) -> Arc<VpcSnapshot> {
        let lag = self.imds_lag();
        let state = lock(&self.state);
        let now = Instant::now();
        state
            .history
            .iter()
            .rev()
            .find(|(published, _)| now.duration_since(*published) >= lag)
            .or_else(|| state.history.front())
            .map(|(_, s)| Arc::clone(s))
            .unwrap_or_else(|| {
                Arc::new(VpcSnapshot::empty(
                    &self.region,
                    &self.vpc_id,
                    self.vpc_cidrs.clone(),
                ))
            })
    }

    /// Waits until a poll that started after this call has been applied to the kernel and
    /// published; returns its snapshot, or that poll's error.
    pub fn sync(&self) -> Result<Arc<VpcSnapshot>, VpcError> {
        let mut state = lock(&self.state);
        if state.stop {
            return Err(VpcError::Hypervisor("the hypervisor is stopped".into()));
        }
        state.requested += 1;
        let wanted = state.requested;
        self.changed.notify_all();
        let deadline = Instant::now() + SYNC_TIMEOUT;
        while state.served < wanted {
            let now = Instant::now();
            if now >= deadline || state.stop {
                return Err(VpcError::Hypervisor(format!(
                    "no poll of moto completed within {SYNC_TIMEOUT:?}{}",
                    state
                        .last_error
                        .as_ref()
                        .map(|(_, e)| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )));
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        match &state.last_result {
            Ok(()) => Ok(state
                .history
                .back()
                .map(|(_, s)| Arc::clone(s))
                .unwrap_or_else(|| Arc::new(VpcSnapshot::empty("", "", Vec::new())))),
            Err(e) => Err(VpcError::Hypervisor(e.clone())),
        }
    }

    /// Waits until `done` holds for a published snapshot (re-checked after every poll), up to
    /// `timeout`; the error names `what` and describes the last snapshot with `show`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&VpcSnapshot) -> bool,
        show: impl Fn(&VpcSnapshot) -> String,
    ) -> Result<Arc<VpcSnapshot>, VpcError> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            let latest = state.history.back().map(|(_, s)| Arc::clone(s));
            if let Some(s) = &latest
                && done(s)
            {
                return Ok(Arc::clone(s));
            }
            let now = Instant::now();
            if now >= deadline || state.stop {
                return Err(VpcError::Timeout {
                    what: what.to_owned(),
                    waited: timeout,
                    state: latest.map(|s| show(&s)).unwrap_or_default(),
                });
            }
            let generation = state.generation;
            while state.generation == generation && !state.stop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                state = self
                    .changed
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    /// ENIs that currently have links: (ENI id, node namespace, device index).
    pub fn links(&self) -> Vec<(String, String, u32)> {
        lock(&self.state).links.clone()
    }

    /// A readable status for failure messages: polls, failures, the last error.
    pub fn status(&self) -> String {
        let state = lock(&self.state);
        let last = state
            .last_error
            .as_ref()
            .map(|(at, e)| format!("; last error {:.1} s ago: {e}", at.elapsed().as_secs_f64()))
            .unwrap_or_default();
        format!(
            "hypervisor: {} polls applied, {} failed, IMDS lag {:?}{last}",
            state.generation,
            state.failures,
            self.imds_lag()
        )
    }

    /// One poll: read moto, apply to the kernel, return the snapshot to publish.
    fn poll(&self, router_state: &mut RouterState) -> Result<Arc<VpcSnapshot>, String> {
        let enis = self.ec2.vpc_enis(&self.vpc_id).map_err(|e| e.to_string())?;
        let mut subnets = lock(&self.subnets).clone();
        for eni in &enis {
            if !eni.subnet_id.is_empty() && !subnets.contains_key(&eni.subnet_id) {
                let subnet = self.ec2.subnet(&eni.subnet_id).map_err(|e| e.to_string())?;
                lock(&self.subnets).insert(subnet.id.clone(), subnet.clone());
                subnets.insert(subnet.id.clone(), subnet);
            }
        }
        let nodes = lock(&self.nodes).clone();
        let snapshot = VpcSnapshot {
            taken: Instant::now(),
            region: self.region.clone(),
            vpc_id: self.vpc_id.clone(),
            vpc_cidrs: self.vpc_cidrs.clone(),
            vpc_ipv6_cidrs: lock(&self.vpc_ipv6_cidrs).clone(),
            enis: enis.into_iter().map(|e| (e.id.clone(), e)).collect(),
            subnets,
            instances: nodes
                .values()
                .map(|n| (n.instance.id.clone(), n.instance.clone()))
                .collect(),
        };
        let netns: BTreeMap<String, String> =
            nodes.into_iter().map(|(id, n)| (id, n.netns)).collect();
        router_state
            .apply(&self.router, &snapshot, &netns)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(snapshot))
    }

    fn run(&self) {
        let mut router_state = RouterState::new(self.route_ipv6);
        let mut next = Instant::now();
        loop {
            let request = {
                let mut state = lock(&self.state);
                loop {
                    if state.stop {
                        router_state.clear();
                        return;
                    }
                    if state.requested > state.served {
                        break;
                    }
                    let now = Instant::now();
                    if now >= next {
                        break;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, next - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                state.requested
            };
            let result = self.poll(&mut router_state);
            let mut state = lock(&self.state);
            state.links = router_state.links();
            match result {
                Ok(snapshot) => {
                    let now = Instant::now();
                    state.history.push_back((now, snapshot));
                    let keep = self.imds_lag() + HISTORY_SLACK;
                    while state.history.len() > 1
                        && state
                            .history
                            .get(1)
                            .is_some_and(|(t, _)| now.duration_since(*t) > keep)
                    {
                        state.history.pop_front();
                    }
                    state.generation += 1;
                    state.last_result = Ok(());
                }
                Err(err) => {
                    if !state.stop {
                        tracing::warn!(%err, "hypervisor poll failed");
                    }
                    state.failures += 1;
                    state.last_error = Some((Instant::now(), err.clone()));
                    state.last_result = Err(err);
                }
            }
            state.served = state.served.max(request);
            self.changed.notify_all();
            next = Instant::now() + self.period;
        }
    }
}

/// The hypervisor thread; stopped and joined on drop.
#[derive(Debug)]
pub(crate) struct Watcher {
    hypervisor: Arc<Hypervisor>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts polling.
    pub(super) fn start(hypervisor: Arc<Hypervisor>) -> Result<Self, VpcError> {
        let hv = Arc::clone(&hypervisor);
        let thread = std::thread::Builder::new()
            .name("vcni-hypervisor".into())
            .spawn(move || hv.run())
            .map_err(|e| VpcError::Hypervisor(format!("cannot start the thread: {e}")))?;
        Ok(Self {
            hypervisor,
            thread: Some(thread),
        })
    }

    /// Stops polling and waits for the thread.
    pub(super) fn stop(&mut self) {
        {
            let mut state = lock(&self.hypervisor.state);
            state.stop = true;
            self.hypervisor.changed.notify_all();
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the hypervisor thread panicked");
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Instance metadata from moto's state, for the instance that asks (by the caller's address).
#[derive(Debug)]
pub(crate) struct MotoSource {
    hypervisor: Arc<Hypervisor>,
}

impl MotoSource {
    /// A source answering from `hypervisor`'s published view.
    pub(super) fn new(hypervisor: Arc<Hypervisor>) -> Self {
        Self { hypervisor }
    }
}

impl MetadataSource for MotoSource {
    fn describe(&self, caller: SocketAddr) -> Result<Arc<NodeDescription>, NodeFileError> {
        let ip = match caller.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped().ok_or_else(|| {
                NodeFileError::Invalid(format!("caller {caller} is not an IPv4 instance"))
            })?,
        };
        let view = self.hypervisor.imds_view();
        let instance = view.instance_with_ip(ip).ok_or_else(|| {
            NodeFileError::Invalid(format!(
                "no simulated instance has address {ip} (caller {caller})"
            ))
        })?;
        let mut description = view
            .node_description(&instance.id)
            .ok_or_else(|| NodeFileError::Invalid(format!("instance {} vanished", instance.id)))?;
        if let Some(visible) = lock(&self.hypervisor.imds_visible_only).get(&instance.id) {
            description
                .interfaces
                .retain(|i| visible.contains(&i.interface_id));
        }
        Ok(Arc::new(description))
    }
}
