//! The pool manager (EC2 mode): a background task that keeps the warm pool at its targets
//! through EC2, never inside an RPC. Every few seconds, or at once when an assignment found the
//! pool empty, one cycle runs:
//!
//! 1. reconcile: instance metadata vs the datastore, confirmed with EC2 when they disagree
//!    (`sync`);
//! 2. grow while the pool is too low: fill existing ENIs first (`AssignPrivateIpAddresses` with
//!    a count), then create ENIs with their addresses in the same call (`enis`);
//! 3. otherwise shrink when it is too high, at most once per 30 s (`UnassignPrivateIpAddresses`);
//! 4. free at most one ENI that is no longer needed.
//!
//! Limits (ENIs per instance, addresses per ENI, max pods) are enforced here for every request,
//! also when EC2 itself would not (moto). ENIs tagged `no_manage=true` are never touched and
//! count against the ENI limit. Start-up calls [`PoolManager::discover`] (limits, tags, unmanaged
//! ENIs) and [`PoolManager::prescale`] before ipamd reports ready; neither blocks readiness for
//! long when EC2 fails: ipamd then serves what metadata shows and keeps trying here.

mod custom;
mod enis;
mod node;
mod placement;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use tokio::sync::Notify;

use super::host::EniHost;
use super::policy::{self, Capacity, Counts, EniState, Grow, Targets};
use super::reconcile;
use super::situation::PoolSituation;
use super::subnets::SubnetPicker;
use crate::cloud::ec2::{
    CLUSTER_NAME_TAG, ENI_OWNER_TAG, ENI_OWNER_VALUE, Ec2Api, Ec2Error, Ec2ErrorKind,
    INSTANCE_ID_TAG, NO_MANAGE_TAG, NetworkInterface, Tags,
};
use crate::cloud::ec2_client::Ec2Health;
use crate::cloud::imds::Imds;
use crate::cloud::metadata::{EniMetadata, InstanceMetadata};
use crate::config::Config;
use crate::datastore::{Clock, Datastore, DatastoreError};
use crate::limits;
use crate::mac::MacAddr;
use crate::metrics::IpamdMetrics;
use crate::state::{CloudErrorReport, IpamState, NodeLimits};

pub use custom::{EniConfigKeys, NOT_USABLE_REASON};
pub use node::NodeCheck;

/// The manager's timings. The defaults are the reference's; tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    /// Time between cycles when nothing asks for one.
    pub cycle: Duration,
    /// Shortest time between two cycles, also when assignments keep asking for one.
    pub min_gap: Duration,
    /// The pool shrinks at most once per this (the reference's 30 s).
    pub decrease_interval: Duration,
    /// An ENI younger than this is never freed (the reference's 1 minute).
    pub min_eni_age: Duration,
    /// Addresses ipamd released are not re-adopted from metadata for this long (60 s).
    pub reconcile_grace: Duration,
    /// After EC2 said the subnet is out of addresses, no growth is tried for this long (the
    /// reference's 120 s).
    pub subnet_full_backoff: Duration,
    /// How old the subnets read may be when a new ENI's subnet is chosen.
    pub subnet_ttl: Duration,
    /// How often the subnets are re-read for `awscni_subnet_available_ips` and the low-address
    /// warning when no ENI is being created.
    pub subnet_report: Duration,
    /// How long a new ENI may take to show in metadata and as a link.
    pub attach_wait: Duration,
    /// How long a detaching ENI may take to become `available`.
    pub detach_wait: Duration,
    /// First pause when polling metadata, links or EC2 for a change.
    pub poll_start: Duration,
    /// Longest pause when polling.
    pub poll_cap: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            cycle: Duration::from_secs(5),
            min_gap: Duration::from_secs(1),
            decrease_interval: policy::DECREASE_INTERVAL,
            min_eni_age: policy::MIN_ENI_AGE,
            reconcile_grace: Duration::from_secs(60),
            subnet_full_backoff: Duration::from_secs(120),
            subnet_ttl: Duration::from_secs(5),
            subnet_report: Duration::from_secs(300),
            attach_wait: Duration::from_secs(60),
            detach_wait: Duration::from_secs(60),
            poll_start: Duration::from_millis(100),
            poll_cap: Duration::from_secs(2),
        }
    }
}

/// What the manager takes from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Warm-pool targets.
    pub targets: Targets,
    /// `MAX_ENI`.
    pub max_eni: Option<u32>,
    /// `AWS_VPC_ENI_MTU` for new ENIs.
    pub eni_mtu: u32,
    /// Tags every managed ENI carries besides the instance id (cluster tags,
    /// `ADDITIONAL_ENI_TAGS`).
    pub extra_tags: Tags,
    /// `ENABLE_SUBNET_DISCOVERY`.
    pub subnet_discovery: bool,
    /// `CLUSTER_NAME` (subnets tagged for other clusters are not used).
    pub cluster_name: Option<String>,
    /// `MANAGE_UNTAGGED_ENI`: `false` leaves alone every ENI not tagged with this instance's id.
    pub manage_untagged_eni: bool,
    /// `ENABLE_PREFIX_DELEGATION` (in force only on Nitro and bare-metal types: see
    /// [`limits::Limits::prefix_delegation`]).
    pub prefix_delegation: bool,
    /// `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`: where the node's ENIConfig is named.
    pub custom_network: Option<EniConfigKeys>,
    /// Timings.
    pub timings: Timings,
}

impl ManagerConfig {
    /// From ipamd's configuration: targets, `MAX_ENI`, MTU, `CLUSTER_NAME` tags (the cluster tag
    /// and `eks:eni:owner`) and `ADDITIONAL_ENI_TAGS`.
    pub fn from_config(config: &Config) -> Self {
        let mut extra_tags = config.cloud.additional_eni_tags.clone();
        if let Some(cluster) = &config.kubernetes.cluster_name {
            extra_tags.insert(CLUSTER_NAME_TAG.to_owned(), cluster.clone());
            extra_tags.insert(ENI_OWNER_TAG.to_owned(), ENI_OWNER_VALUE.to_owned());
        }
        Self {
            targets: Targets::from(&config.pool),
            max_eni: config.pool.max_eni,
            eni_mtu: config.node_network.eni_mtu,
            extra_tags,
            subnet_discovery: config.cloud.enable_subnet_discovery,
            cluster_name: config.kubernetes.cluster_name.clone(),
            manage_untagged_eni: config.cloud.manage_untagged_eni,
            prefix_delegation: config.features.prefix_delegation,
            custom_network: config.features.custom_network.then(|| EniConfigKeys {
                annotation: config.kubernetes.eni_config_annotation.clone(),
                label: config.kubernetes.eni_config_label.clone(),
            }),
            timings: Timings::default(),
        }
    }
}

/// The instance, as start-up read it from metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `i-…`.
    pub instance_id: String,
    /// Instance type.
    pub instance_type: String,
    /// The primary ENI's id.
    pub primary_eni: String,
    /// The primary ENI's MAC.
    pub primary_mac: MacAddr,
    /// The node's subnet (the primary ENI's).
    pub subnet_id: String,
    /// Its CIDR.
    pub subnet: Ipv4Net,
    /// The node's Availability Zone (subnets of other zones are never used).
    pub availability_zone: String,
    /// Security groups of new ENIs (the primary ENI's).
    pub security_groups: Vec<String>,
}

impl NodeInfo {
    /// From instance metadata; `None` when it lists no primary ENI.
    pub fn from_metadata(md: &InstanceMetadata) -> Option<Self> {
        let primary = md.enis.iter().find(|e| e.is_primary)?;
        Some(Self {
            instance_id: md.instance_id.clone(),
            instance_type: md.instance_type.clone(),
            primary_eni: primary.id.clone(),
            primary_mac: primary.mac,
            subnet_id: primary.subnet_id.clone(),
            subnet: primary.subnet,
            availability_zone: md.availability_zone.clone(),
            security_groups: primary.security_groups.clone(),
        })
    }
}

/// What one growth pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrowReport {
    /// Addresses added to the pool.
    pub ips_added: u32,
    /// ENIs attached and added.
    pub enis_added: u32,
    /// Stopped at the instance's (or `MAX_ENI`'s) limit.
    pub at_limit: bool,
    /// Stopped by an EC2 error.
    pub failed: bool,
    /// Not tried: the subnet was out of addresses less than the back-off ago.
    pub subnet_backoff: bool,
    /// Not tried: the node is cordoned (`AWS_MANAGE_ENIS_NON_SCHEDULABLE=false`).
    pub unschedulable: bool,
}

impl GrowReport {
    /// Growing stopped short of the targets for a reason that the next try soon will not
    /// change (the next one waits [`Timings::min_gap`]).
    fn held_back(&self) -> bool {
        self.failed || self.at_limit || self.subnet_backoff || self.unschedulable
    }
}

/// Why no new ENI joined the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateFailed {
    /// Every subnet a new ENI may go into is in its back-off after EC2 said it is out of
    /// addresses, or none may take ENIs at all: nothing was asked of EC2.
    NoSubnet,
    /// An EC2 call or the bring-up failed (logged).
    Failed,
    /// Prefixes were asked for and no candidate subnet has a free aligned /28
    /// (`InsufficientCidrBlocks`): nothing was created.
    Fragmented,
}

/// One address slot of an ENI the pool gives back: a secondary address or a delegated prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// A secondary address.
    Ip(Ipv4Addr),
    /// A /28 prefix.
    Prefix(Ipv4Net),
}

impl Slot {
    fn ip(self) -> Option<Ipv4Addr> {
        match self {
            Self::Ip(ip) => Some(ip),
            Self::Prefix(_) => None,
        }
    }

    fn prefix(self) -> Option<Ipv4Net> {
        match self {
            Self::Prefix(p) => Some(p),
            Self::Ip(_) => None,
        }
    }

    /// The addresses it holds.
    fn addresses(self) -> Vec<Ipv4Addr> {
        match self {
            Self::Ip(ip) => vec![ip],
            Self::Prefix(p) => {
                let first = u32::from(p.network());
                (0..=u32::from(p.hostmask()))
                    .map(|k| Ipv4Addr::from(first + k))
                    .collect()
            }
        }
    }

    /// Back into the pool (EC2 did not take it).
    fn put_back(self, ds: &mut Datastore, eni: &str) -> Result<(), DatastoreError> {
        match self {
            Self::Ip(ip) => ds.add_ip(eni, ip),
            Self::Prefix(p) => ds.add_prefix(eni, p),
        }
    }
}

/// The pool manager. See the module documentation.
#[derive(Debug)]
pub struct PoolManager<E, I, H> {
    cfg: ManagerConfig,
    node: NodeInfo,
    ec2: Arc<E>,
    imds: Arc<I>,
    host: H,
    state: Arc<IpamState>,
    clock: Arc<dyn Clock>,
    situation: Arc<PoolSituation>,
    health: Arc<Ec2Health>,
    /// ipamd's own metric families (reconcile and error counts), when the daemon has them.
    metrics: Option<IpamdMetrics>,
    /// When each managed ENI entered the pool (its age for freeing).
    added_at: HashMap<String, Instant>,
    /// The MACs of managed ENIs.
    macs: HashMap<String, MacAddr>,
    /// Attached ENIs ipamd leaves alone: tagged `no_manage=true`, or untagged with
    /// `MANAGE_UNTAGGED_ENI=false`.
    unmanaged: BTreeSet<String>,
    /// The subnets new ENIs may go into.
    subnets: SubnetPicker,
    /// Subnets EC2 said are out of addresses, and when: not asked again for the back-off.
    full_subnets: HashMap<String, Instant>,
    /// Subnets EC2 said have no free aligned /28 (fragmented), and when: a new ENI with
    /// prefixes tries the other candidates first for the back-off.
    fragmented_subnets: HashMap<String, Instant>,
    /// The subnet of each managed ENI.
    eni_subnets: HashMap<String, String>,
    /// Subnets whose low-address warning was logged (logged again once they recovered).
    low_warned: BTreeSet<String>,
    /// When the subnets were last re-read for the report.
    subnets_reported: Option<Instant>,
    /// ENIs whose tags are known to be complete.
    tagged: HashSet<String>,
    /// The VPC (from EC2; the leaked-ENI cleanup filters on it).
    vpc_id: Option<String>,
    last_decrease: Option<Instant>,
    /// Addresses ipamd gave back to EC2, and when (not re-adopted within the grace).
    released: HashMap<Ipv4Addr, Instant>,
    /// ENIs whose last `AssignPrivateIpAddresses` failed in a way that may have run in EC2
    /// (timeout, cut connection, 5xx): EC2's view of them is read before assigning again, or
    /// a second request on top of addresses ipamd does not know could exceed the ENI's limit.
    uncertain: HashSet<String>,
    /// ENIs ipamd set out to remove (half-created, or freed) whose removal failed: retried
    /// every cycle instead of waiting for the hourly leaked-ENI cleanup.
    to_remove: BTreeSet<String>,
    at_limit_logged: bool,
    /// The Kubernetes Node (max pods, cordons, its ENIConfig), when ipamd has the API.
    node_check: Option<NodeCheck>,
    /// Custom networking: the last reason the ENIConfig could not be used (`None` once it
    /// could), and when it was last recorded on the Node.
    eni_config_logged: Option<String>,
    eni_config_evented: Option<Instant>,
}

impl<E: Ec2Api, I: Imds, H: EniHost> PoolManager<E, I, H> {
    /// A manager for `node`'s pool in `state`. `situation` (which the datastore quotes in
    /// exhaustion messages) and `health` are the EC2 client's view of EC2.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ManagerConfig,
        node: NodeInfo,
        ec2: Arc<E>,
        imds: Arc<I>,
        host: H,
        state: Arc<IpamState>,
        clock: Arc<dyn Clock>,
        situation: Arc<PoolSituation>,
        health: Arc<Ec2Health>,
    ) -> Self {
        let subnets = SubnetPicker::new(
            cfg.subnet_discovery,
            cfg.cluster_name.clone(),
            &node.subnet_id,
            node.subnet,
            &node.availability_zone,
        );
        Self {
            subnets,
            full_subnets: HashMap::new(),
            fragmented_subnets: HashMap::new(),
            eni_subnets: HashMap::new(),
            low_warned: BTreeSet::new(),
            subnets_reported: None,
            health,
            metrics: None,
            cfg,
            node,
            ec2,
            imds,
            host,
            state,
            clock,
            situation,
            added_at: HashMap::new(),
            macs: HashMap::new(),
            unmanaged: BTreeSet::new(),
            tagged: HashSet::new(),
            vpc_id: None,
            last_decrease: None,
            released: HashMap::new(),
            uncertain: HashSet::new(),
            to_remove: BTreeSet::new(),
            at_limit_logged: false,
            node_check: None,
            eni_config_logged: None,
            eni_config_evented: None,
        }
    }

    /// Counts reconcile changes (`awscni_reconcile_count{fn}`) and failures
    /// (`awscni_ipamd_error_count{fn}`) into ipamd's metric families, with the reference's
    /// function names.
    #[must_use]
    pub fn with_metrics(mut self, metrics: IpamdMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count_error(&self, site: &str) {
        if let Some(m) = &self.metrics {
            m.error(site);
        }
    }

    fn count_reconciled(&self, site: &str, n: usize) {
        if let Some(m) = &self.metrics {
            m.reconciled(site, n);
        }
    }

    /// The instance the manager works for.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// The ENIs ipamd leaves alone.
    pub fn unmanaged(&self) -> &BTreeSet<String> {
        &self.unmanaged
    }

    /// The VPC, once EC2 told.
    pub fn vpc_id(&self) -> Option<&str> {
        self.vpc_id.as_deref()
    }

    /// The situation the exhaustion messages quote.
    pub fn situation(&self) -> Arc<PoolSituation> {
        Arc::clone(&self.situation)
    }

    /// The tags every managed ENI carries.
    fn wanted_tags(&self) -> Tags {
        let mut tags = self.cfg.extra_tags.clone();
        tags.insert(INSTANCE_ID_TAG.to_owned(), self.node.instance_id.clone());
        tags
    }

    /// Start-up, before the datastore is built: the instance's limits, and EC2's view of the
    /// attached ENIs (which are tagged `no_manage`, the VPC), tagging managed ENIs that lack
    /// ipamd's tags. Failures are logged and retried by later cycles; returns whether EC2
    /// described the ENIs.
    pub async fn discover(&mut self, attached: &[EniMetadata]) -> bool {
        self.refresh_limits().await;
        let ids: Vec<String> = attached.iter().map(|e| e.id.clone()).collect();
        match self.ec2.describe_network_interfaces(&ids).await {
            Ok(enis) => {
                for eni in &enis {
                    self.learn(eni);
                    if !self.unmanaged.contains(&eni.id) {
                        self.ensure_tags(eni).await;
                    }
                }
                self.publish_unmanaged();
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot describe the attached ENIs; using every ENI instance metadata shows until EC2 answers");
                false
            }
        }
    }

    /// Records what EC2 says about an attached ENI: its VPC, and whether it is unmanaged.
    fn learn(&mut self, eni: &NetworkInterface) {
        if self.vpc_id.is_none() && !eni.vpc_id.is_empty() {
            self.vpc_id = Some(eni.vpc_id.clone());
        }
        if eni.id == self.node.primary_eni {
            // The primary ENI is always managed, whatever its tags.
            self.unmanaged.remove(&eni.id);
            return;
        }
        let why = match eni.tags.get(NO_MANAGE_TAG).map(String::as_str) {
            // The reference's rule: a no_manage tag decides on its own ("true" = leave alone).
            Some("true") => Some("it is tagged node.k8s.amazonaws.com/no_manage=true"),
            Some(_) => None,
            None if eni.tags.get(INSTANCE_ID_TAG) == Some(&self.node.instance_id) => None,
            None if self.cfg.manage_untagged_eni => None,
            None => Some(
                "it is not tagged node.k8s.amazonaws.com/instance_id with this instance and MANAGE_UNTAGGED_ENI=false",
            ),
        };
        match why {
            Some(why) => {
                if self.unmanaged.insert(eni.id.clone()) {
                    tracing::info!(eni = %eni.id, "ipamd leaves this ENI alone (it counts against the ENI limit): {why}");
                }
            }
            None => {
                self.unmanaged.remove(&eni.id);
            }
        }
    }

    fn publish_unmanaged(&self) {
        self.situation
            .set_unmanaged_enis(u32::try_from(self.unmanaged.len()).unwrap_or(u32::MAX));
        self.publish_limits();
    }

    /// Tells the rest of ipamd (metrics, introspection) the limits as ipamd may use them (the
    /// ENI limit less the unmanaged ENIs, as the reference's `awscni_eni_max`) and EC2's last
    /// error.
    fn publish_limits(&self) {
        let limits = self.situation.limits().map(|l| {
            let unmanaged = u32::try_from(self.unmanaged.len()).unwrap_or(u32::MAX);
            NodeLimits {
                max_enis: l.max_enis.saturating_sub(unmanaged),
                ips_per_eni: l.ips_per_eni,
                max_pods: l.max_pods,
            }
        });
        let last_error = self.health.last_error().map(|f| CloudErrorReport {
            operation: f.error.api.to_owned(),
            message: format!("{}: {}", f.error.code, f.error.message),
            at: SystemTime::now()
                .checked_sub(f.at.elapsed())
                .unwrap_or(SystemTime::UNIX_EPOCH),
        });
        self.state.update_node_report(|report| {
            report.instance_id = Some(self.node.instance_id.clone());
            report.instance_type = Some(self.node.instance_type.clone());
            if limits.is_some() {
                report.limits = limits;
            }
            if last_error.is_some() {
                report.last_cloud_error = last_error;
            }
        });
    }

    /// Tags a managed ENI with whatever of ipamd's tags it lacks (once per ENI).
    async fn ensure_tags(&mut self, eni: &NetworkInterface) {
        if self.tagged.contains(&eni.id) {
            return;
        }
        let missing: Tags = self
            .wanted_tags()
            .into_iter()
            .filter(|(k, v)| eni.tags.get(k) != Some(v))
            .collect();
        if missing.is_empty() {
            self.tagged.insert(eni.id.clone());
            return;
        }
        match self
            .ec2
            .create_tags(std::slice::from_ref(&eni.id), &missing)
            .await
        {
            Ok(()) => {
                tracing::info!(eni = %eni.id, tags = ?missing, "tagged ENI");
                self.tagged.insert(eni.id.clone());
            }
            Err(e) => tracing::warn!(eni = %eni.id, error = %e, "cannot tag ENI; retrying later"),
        }
    }

    async fn refresh_limits(&mut self) {
        if self.situation.limits().is_some() {
            return;
        }
        let limits = limits::resolve(
            &*self.ec2,
            &self.node.instance_type,
            self.cfg.max_eni,
            self.cfg.prefix_delegation,
        );
        match limits.await {
            Ok(l) => {
                let l = if self.custom_networking() {
                    l.with_primary_eni_unused()
                } else {
                    l
                };
                let l = self.with_node_max_pods(l).await;
                tracing::info!(
                    instance_type = %l.instance_type, max_enis = l.max_enis, instance_max_enis = l.instance_max_enis,
                    ips_per_eni = l.ips_per_eni, max_pods = l.max_pods, prefix_delegation = l.prefix_delegation,
                    source = %l.source, "instance limits"
                );
                let prefix_mode = l.prefix_delegation;
                self.state
                    .with_datastore(|ds| ds.set_prefix_mode(prefix_mode))
                    .await;
                self.situation.set_limits(l);
                self.publish_limits();
            }
            Err(e) => {
                tracing::warn!(error = %e, "instance limits unknown; the pool does not grow until they are known");
                self.situation.set_limits_error(e.to_string());
            }
        }
    }

    /// Remembers ENIs start-up put into the pool from metadata (their MAC, and now as the
    /// time they entered it).
    pub fn note_enis<'a>(&mut self, enis: impl IntoIterator<Item = &'a EniMetadata>) {
        let now = self.clock.now();
        for eni in enis {
            self.added_at.entry(eni.id.clone()).or_insert(now);
            self.macs.insert(eni.id.clone(), eni.mac);
            self.eni_subnets
                .insert(eni.id.clone(), eni.subnet_id.clone());
        }
    }

    /// The managed ENIs as the policy sees them, and the pool's counts.
    async fn snapshot(&mut self) -> (Vec<EniState>, Counts) {
        let state = Arc::clone(&self.state);
        let (views, prefix_mode, demand) = self
            .state
            .with_datastore(|ds| {
                ds.stats();
                // Under the pool lock: a pod is never both waiting and assigned here.
                (ds.enis(), ds.prefix_mode(), state.demand().counts())
            })
            .await;
        let now = self.clock.now();
        let full = self.subnets_in_backoff(now);
        let enis: Vec<EniState> = views
            .into_iter()
            .map(|v| {
                let added = *self.added_at.entry(v.spec.id.clone()).or_insert(now);
                let u = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                // Without prefix delegation the pool is the secondary addresses, as in the
                // reference: addresses of prefixes left from it serve only their pods.
                let (in_prefix_assigned, in_prefix_cooling) = if prefix_mode {
                    (0, 0)
                } else {
                    v.prefixes
                        .iter()
                        .fold((0, 0), |(a, c), p| (a + p.assigned, c + p.cooling))
                };
                let total = if prefix_mode { v.total } else { v.secondary };
                let is_primary = v.spec.device_number == 0 || v.spec.id == self.node.primary_eni;
                // Custom networking: no address is ever added to the primary ENI.
                let subnet_full = (is_primary && self.custom_networking())
                    || self
                        .eni_subnets
                        .get(&v.spec.id)
                        .is_some_and(|s| full.contains(s) || self.subnets.is_excluded(s));
                EniState {
                    subnet_full,
                    is_primary,
                    device_number: v.spec.device_number,
                    age: now.saturating_duration_since(added),
                    total: u(total),
                    assigned: u(v.assigned - in_prefix_assigned),
                    cooling: u(v.cooling - in_prefix_cooling),
                    slots: u(v.slots()),
                    prefixes: u(v.prefixes.len()),
                    free_prefixes: u(v.free_prefixes()),
                    id: v.spec.id,
                }
            })
            .collect();
        let counts = Counts {
            waiting: demand.waiting,
            recent: demand.recent,
            ..policy::counts(&enis)
        };
        (enis, counts)
    }

    /// Grows the pool until it is not low, at the limit, or EC2 fails. Used at start-up
    /// (pre-scaling) and by every cycle.
    pub async fn grow(&mut self) -> GrowReport {
        let mut report = GrowReport::default();
        let Some(cap) = self.situation.capacity() else {
            return report;
        };
        let max_steps = cap.max_enis.saturating_mul(2).saturating_add(4);
        let (mut full, mut announced, mut cordon_checked) = (false, 0, false);
        for _ in 0..max_steps {
            if report.ips_added > announced {
                // Pods waiting in AddNetwork take what the last step added.
                self.state.demand().pool_grew();
                announced = report.ips_added;
            }
            let (enis, counts) = self.snapshot().await;
            full = counts.total >= cap.max_pods;
            let short = policy::shortfall(counts, self.cfg.targets, cap);
            let step = policy::next_grow_step(short, &enis, cap);
            if matches!(step, Some(Grow::Assign { .. } | Grow::CreateEni { .. })) && !cordon_checked
            {
                cordon_checked = true;
                if self.held_by_cordon().await {
                    report.unschedulable = true;
                    break;
                }
            }
            match step {
                None => {
                    self.at_limit_logged = false;
                    break;
                }
                Some(Grow::AtLimit) => {
                    if !self.at_limit_logged {
                        tracing::info!(
                            short,
                            enis = enis.len(),
                            unmanaged = cap.unmanaged_enis,
                            max_enis = cap.max_enis,
                            ips_per_eni = cap.ips_per_eni,
                            total = counts.total,
                            "pool is low but the node is at its ENI x IP limit"
                        );
                        self.at_limit_logged = true;
                    }
                    report.at_limit = true;
                    break;
                }
                Some(Grow::Assign { eni, .. }) if self.uncertain.contains(&eni) => {
                    if !self.settle(&eni).await {
                        report.failed = true;
                        break;
                    }
                }
                Some(Grow::Assign { eni, count }) => {
                    match self.assign_slots(&eni, count, &enis, cap).await {
                        Ok(n) if n > 0 => report.ips_added += n,
                        Ok(_) => {
                            report.failed = true;
                            break;
                        }
                        // The ENI's subnet is out of addresses (now marked full): the next step
                        // grows another ENI or creates one in another subnet.
                        Err(Ec2ErrorKind::SubnetFull) => report.failed = true,
                        Err(kind) => {
                            report.failed = true;
                            if kind == Ec2ErrorKind::IpLimitExceeded {
                                // EC2 says the ENI is full: learn what it really holds next cycle.
                                self.reconcile().await;
                            }
                            break;
                        }
                    }
                }
                Some(Grow::CreateEni { slots }) => match self.create_eni(slots, &cap).await {
                    Ok(n) => {
                        report.enis_added += 1;
                        report.ips_added += n;
                    }
                    Err(CreateFailed::NoSubnet) => {
                        report.subnet_backoff = true;
                        break;
                    }
                    Err(CreateFailed::Failed | CreateFailed::Fragmented) => {
                        report.failed = true;
                        break;
                    }
                },
            }
        }
        if report.ips_added > announced {
            self.state.demand().pool_grew();
        }
        if report.ips_added > 0 {
            // The subnets' free addresses as they are now (the cached counts were lowered).
            self.publish_subnets();
        }
        // Waiting AddNetworks give up at once when nothing more can come.
        self.state.demand().set_may_grow(
            !full && !report.at_limit && !report.subnet_backoff && !report.unschedulable,
        );
        report
    }

    /// Adds `count` slots to an ENI: prefixes with prefix delegation, else secondary
    /// addresses. Returns how many addresses entered the pool.
    async fn assign_slots(
        &mut self,
        eni: &str,
        count: u32,
        enis: &[EniState],
        cap: Capacity,
    ) -> Result<u32, Ec2ErrorKind> {
        if !cap.prefix_mode() {
            return self.assign_ips(eni, count).await;
        }
        match self.assign_prefixes(eni, count).await {
            Err(Ec2ErrorKind::NoFreePrefix) => {
                // The subnet is fragmented: the same addresses as /32s, within the ENI's free
                // slots (beyond the reference, which waits while pods stay pending); new ENIs
                // try other subnets first.
                if let Some(subnet) = self.eni_subnets.get(eni).cloned() {
                    self.mark_fragmented(&subnet);
                }
                let used = enis.iter().find(|e| e.id == eni).map_or(0, |e| e.slots);
                let room = cap.slots_per_eni().saturating_sub(used);
                let want = count.saturating_mul(cap.per_slot).min(room);
                tracing::warn!(
                    %eni, prefixes = count, secondary_ips = want,
                    "no aligned /28 is free in the ENI's subnet (InsufficientCidrBlocks: the subnet is fragmented); asking for secondary IPs instead. A prefix-type subnet CIDR reservation keeps /28s free for prefixes"
                );
                let added = self.assign_ips(eni, want).await?;
                if let Some(m) = &self.metrics {
                    m.prefix_fallback(added);
                }
                Ok(added)
            }
            other => other,
        }
    }

    /// Delegates `count` prefixes to an ENI; returns how many addresses entered the pool.
    async fn assign_prefixes(&mut self, eni: &str, count: u32) -> Result<u32, Ec2ErrorKind> {
        let prefixes = match self.ec2.assign_ipv4_prefixes(eni, count).await {
            Ok(p) => p,
            Err(e) => return Err(self.assign_failed(eni, count, &e)),
        };
        let added = self
            .state
            .with_datastore(|ds| reconcile::add_prefixes(ds, eni, prefixes))
            .await;
        for ip in added.iter().flat_map(|p| Slot::Prefix(*p).addresses()) {
            self.released.remove(&ip);
        }
        let n = u32::try_from(added.len())
            .unwrap_or(u32::MAX)
            .saturating_mul(16);
        if let Some(subnet) = self.eni_subnets.get(eni).cloned() {
            self.subnet_answered(&subnet, n);
            self.fragmented_subnets.remove(&subnet);
        }
        tracing::info!(%eni, asked = count, added = ?added, "prefixes added to the pool");
        Ok(n)
    }

    /// Logs and counts a failed assignment; marks the subnet full or the ENI uncertain as the
    /// error says. Returns the error's kind.
    fn assign_failed(&mut self, eni: &str, count: u32, e: &Ec2Error) -> Ec2ErrorKind {
        self.count_error("increaseIPPoolAllocIPAddressesFailed");
        tracing::warn!(%eni, count, error = %e, "cannot add IPs to ENI");
        if e.kind == Ec2ErrorKind::SubnetFull
            && let Some(subnet) = self.eni_subnets.get(eni).cloned()
        {
            self.mark_subnet_full(&subnet, e);
        }
        if matches!(
            e.kind,
            Ec2ErrorKind::Timeout | Ec2ErrorKind::Transport | Ec2ErrorKind::Server
        ) {
            self.uncertain.insert(eni.to_owned());
        }
        e.kind
    }

    /// Adds `count` addresses to an ENI; returns how many entered the pool.
    async fn assign_ips(&mut self, eni: &str, count: u32) -> Result<u32, Ec2ErrorKind> {
        let ips = match self.ec2.assign_private_ip_addresses(eni, count).await {
            Ok(ips) => ips,
            Err(e) => return Err(self.assign_failed(eni, count, &e)),
        };
        let added = self
            .state
            .with_datastore(|ds| reconcile::add_ips(ds, eni, ips))
            .await;
        for ip in &added {
            self.released.remove(ip);
        }
        if let Some(subnet) = self.eni_subnets.get(eni).cloned() {
            let n = u32::try_from(added.len()).unwrap_or(u32::MAX);
            self.subnet_answered(&subnet, n);
        }
        tracing::info!(%eni, asked = count, added = ?added, "IPs added to the pool");
        Ok(u32::try_from(added.len()).unwrap_or(u32::MAX))
    }

    /// Reads what EC2 holds on an ENI whose last assignment may have run unseen, and adds the
    /// addresses the pool lacks (not those ipamd released within the grace). Returns whether
    /// EC2 answered (only then may ipamd assign to the ENI again).
    async fn settle(&mut self, eni: &str) -> bool {
        let ids = [eni.to_owned()];
        let shown = match self.ec2.describe_network_interfaces(&ids).await {
            Ok(v) => v.into_iter().next(),
            Err(e) if e.kind == Ec2ErrorKind::NotFound => None,
            Err(e) => {
                self.count_error("reconcileFailedDescribeENIs");
                tracing::warn!(%eni, error = %e, "cannot read the ENI whose last IP assignment may have run; not assigning to it until EC2 answers");
                return false;
            }
        };
        self.uncertain.remove(eni);
        let Some(shown) = shown else { return true };
        let released = &self.released;
        let added = self
            .state
            .with_datastore(|ds| {
                let not_released = shown
                    .secondary_ips()
                    .into_iter()
                    .filter(|ip| !released.contains_key(ip));
                let mut added = reconcile::add_ips(ds, eni, not_released);
                let prefixes = shown
                    .ipv4_prefixes
                    .iter()
                    .copied()
                    .filter(|p| !released.contains_key(&p.network()));
                for p in reconcile::add_prefixes(ds, eni, prefixes) {
                    added.push(p.network());
                }
                added
            })
            .await;
        if !added.is_empty() {
            tracing::info!(%eni, added = ?added, "the assignment that seemed to fail did run in EC2; its addresses joined the pool");
        }
        self.count_reconciled("eniDataStorePoolReconcileAdd", added.len());
        true
    }

    /// Gives addresses beyond the targets back to EC2, at most once per 30 s: secondary
    /// addresses, or with prefix delegation whole free prefixes; then the free addresses of the
    /// other kind (fallback /32s with prefixes, prefixes left from prefix delegation without)
    /// when the pool meets its targets without them. Returns how many addresses went.
    pub async fn shrink(&mut self) -> u32 {
        let now = self.clock.now();
        if !policy::may_decrease(self.last_decrease, now, self.cfg.timings.decrease_interval) {
            return 0;
        }
        let Some(cap) = self.situation.capacity() else {
            return 0;
        };
        let (_, counts) = self.snapshot().await;
        let over = policy::surplus(counts, self.cfg.targets, cap);
        let other = self.other_kind_may_go(counts, over, cap).await;
        if over == 0 && !other {
            return 0;
        }
        self.last_decrease = Some(now);
        let max = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        let (ips, prefixes) = self
            .state
            .with_datastore(|ds| {
                let (mut ips, mut prefixes) = (Vec::new(), Vec::new());
                if cap.prefix_mode() {
                    prefixes = ds.take_free_prefixes(max(over));
                    if other {
                        ips = ds.take_free_ips(usize::MAX);
                    }
                } else {
                    ips = ds.take_free_ips(max(over));
                    if other {
                        prefixes = ds.take_free_prefixes(usize::MAX);
                    }
                }
                (ips, prefixes)
            })
            .await;
        let slots = ips
            .into_iter()
            .map(|(eni, ip)| (eni, Slot::Ip(ip)))
            .chain(prefixes.into_iter().map(|(eni, p)| (eni, Slot::Prefix(p))));
        self.give_back(slots.collect()).await
    }

    /// Whether the free addresses of the kind the mode does not grow by may go (fallback /32s
    /// with prefix delegation, prefixes left from it without): there are some, and the pool
    /// without them and without the `over` slots of its own kind is not short of its targets.
    async fn other_kind_may_go(&self, counts: Counts, over: u32, cap: Capacity) -> bool {
        let views = self.state.with_datastore(|ds| ds.enis()).await;
        let free_other: usize = views
            .iter()
            .map(|v| {
                if cap.prefix_mode() {
                    let in_prefixes: usize =
                        v.prefixes.iter().map(|p| p.assigned + p.cooling).sum();
                    v.secondary
                        .saturating_sub(v.assigned + v.cooling - in_prefixes)
                } else {
                    16 * v
                        .prefixes
                        .iter()
                        .filter(|p| p.assigned == 0 && p.cooling == 0)
                        .count()
                }
            })
            .sum();
        let free_other = u32::try_from(free_other).unwrap_or(u32::MAX);
        if free_other == 0 {
            return false;
        }
        if !cap.prefix_mode() {
            // Prefixes left from prefix delegation are not in the pool's counts: a free one
            // only takes an address slot.
            return true;
        }
        let own = if cap.prefix_mode() { over } else { 0 };
        let without = Counts {
            total: counts
                .total
                .saturating_sub(free_other)
                .saturating_sub(over.saturating_mul(cap.per_slot)),
            prefixes: counts.prefixes.saturating_sub(own),
            free_prefixes: counts.free_prefixes.saturating_sub(own),
            ..counts
        };
        policy::shortfall(without, self.cfg.targets, cap) == 0
    }

    /// `UnassignPrivateIpAddresses` for what was taken out of the pool (secondary addresses, or
    /// prefixes with `Ipv4Prefix.N`), by ENI and kind; on failure it goes back into the pool.
    /// Returns how many addresses EC2 took back.
    async fn give_back(&mut self, taken: Vec<(String, Slot)>) -> u32 {
        let mut by_eni: HashMap<(String, bool), Vec<Slot>> = HashMap::new();
        for (eni, slot) in taken {
            let is_prefix = matches!(slot, Slot::Prefix(_));
            by_eni.entry((eni, is_prefix)).or_default().push(slot);
        }
        let mut released = 0;
        for ((eni, is_prefix), slots) in by_eni {
            let result = if is_prefix {
                let prefixes: Vec<Ipv4Net> = slots.iter().filter_map(|s| s.prefix()).collect();
                self.ec2.unassign_ipv4_prefixes(&eni, &prefixes).await
            } else {
                let ips: Vec<Ipv4Addr> = slots.iter().filter_map(|s| s.ip()).collect();
                self.ec2.unassign_private_ip_addresses(&eni, &ips).await
            };
            match result {
                Ok(()) => {
                    let at = self.clock.now();
                    for ip in slots.iter().flat_map(|s| s.addresses()) {
                        self.released.insert(ip, at);
                        released += 1;
                    }
                    tracing::info!(%eni, given_back = ?slots, "addresses beyond the warm targets given back to EC2");
                }
                Err(e) => {
                    self.count_error("decreaseIPPoolFreeIPsFailed");
                    tracing::warn!(%eni, slots = ?slots, error = %e, "cannot give addresses back to EC2; keeping them in the pool");
                    self.state
                        .with_datastore(|ds| {
                            for slot in &slots {
                                if let Err(e) = slot.put_back(ds, &eni) {
                                    tracing::warn!(%eni, ?slot, error = %e, "not put back");
                                }
                            }
                        })
                        .await;
                }
            }
        }
        released
    }

    /// Retries the removal of ENIs whose removal failed before. One the pool uses by now (the
    /// reconcile adopted it) is kept.
    async fn retry_removals(&mut self) {
        for id in std::mem::take(&mut self.to_remove) {
            let in_pool = self.state.with_datastore(|ds| ds.eni(&id).is_some()).await;
            if in_pool {
                tracing::info!(eni = %id, "an ENI whose removal failed is in the pool now; kept");
                continue;
            }
            if self.release_eni(&id).await {
                tracing::info!(eni = %id, "ENI removed on retry");
            } else {
                self.to_remove.insert(id);
            }
        }
    }

    /// Start-up, once the pool is built from metadata and the checkpoint: reads the subnets
    /// (subnet report, excluded subnets), then grows the pool to its targets.
    pub async fn prescale(&mut self) -> GrowReport {
        self.report_subnets().await;
        self.handle_excluded().await;
        self.grow().await
    }

    /// One cycle: reconcile (metadata, and the subnets when their report is due), then grow,
    /// or shrink, then free at most one ENI. Returns what growing did.
    pub async fn cycle(&mut self) -> GrowReport {
        self.refresh_limits().await;
        if self.situation.unschedulable() {
            // Uncordoned while the pool needed nothing: say so.
            self.held_by_cordon().await;
        }
        self.retry_removals().await;
        self.reconcile().await;
        self.report_subnets().await;
        self.handle_excluded().await;
        let report = self.grow().await;
        if report.ips_added == 0 && !report.held_back() {
            self.shrink().await;
        }
        self.free_one_eni().await;
        self.publish_unmanaged();
        report
    }

    /// Runs cycles forever: [`Timings::cycle`] after the end of the last one. When `wake` is
    /// notified (an assignment found no address, pods wait) it grows the pool at once, without
    /// the rest of a cycle (the reconcile is for the next one); only after an attempt that
    /// failed (EC2 error, limit, subnets full) it first lets [`Timings::min_gap`] pass.
    pub async fn run(&mut self, wake: Arc<Notify>) {
        let mut last = tokio::time::Instant::now();
        let mut calm_until = last;
        loop {
            let report = tokio::select! {
                () = tokio::time::sleep_until(last + self.cfg.timings.cycle) => self.cycle().await,
                () = wake.notified() => {
                    tracing::debug!("an assignment found the pool empty; growing the pool now");
                    tokio::time::sleep_until(calm_until).await;
                    self.grow().await
                }
            };
            last = tokio::time::Instant::now();
            calm_until = if report.held_back() {
                last + self.cfg.timings.min_gap
            } else {
                last
            };
        }
    }
}
