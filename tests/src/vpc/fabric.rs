//! [`VpcFabric`]: one simulated VPC (moto, router, internet, hypervisor, IMDS) and the entry
//! point to create nodes in it. Dropping it stops the IMDS emulator and the hypervisor, kills
//! moto and deletes the namespaces; nodes still alive lose their links with the router.
//!
//! A VPC has the nodes' subnet and any number of further subnets ([`SubnetSpec`]), in the
//! nodes' Availability Zone or another one, tagged in moto as an operator tags them for subnet
//! discovery (`kubernetes.io/role/cni`, `cni.networking.k8s.aws/cluster/<name>`). The router
//! answers for every subnet's router address, and the hypervisor knows every subnet, so an ENI
//! ipamd puts into any of them works and shows its own subnet in instance metadata. Tests change
//! tags at run time, read a subnet's `AvailableIpAddressCount`, and fill a subnet with
//! unattached ENIs ([`VpcFabric::fill_subnet`]) to leave it exactly as many free addresses as
//! they need.
//!
//! An IPv6 VPC ([`FabricOptions::with_ipv6`], as EKS IPv6 clusters use) also gets an
//! Amazon-provided /56 (moto picks it), every subnet the n-th /64 of it in creation order (the
//! nodes' subnet the first), every instance one IPv6 address on its primary ENI, and a router
//! that routes IPv6 (see [`super::router`]). IPv4 stays as it is: nodes keep their private IPv4
//! addresses, and instance metadata stays on 169.254.169.254.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};

use super::VpcError;
use super::ec2::{Ec2, EniRequest};
use super::model::{EniState, SubnetInfo, SubnetState, VpcSnapshot, gateway_of};
use super::node::{NodeSpec, VpcNode};
use super::router::{self, EC2_ENDPOINT_ADDR, EC2_ENDPOINT_PORT, IMDS_ADDR};
use super::watcher::{DEFAULT_POLL, Hypervisor, MotoSource, Watcher};
use crate::node::{StateDir, io_err};
use test_support::cleanup;
use test_support::imds::{self, ImdsServer};
use test_support::moto::{self, Ec2CallCount, Ec2Latency, MotoOptions, MotoServer};
use test_support::netns::Netns;
use test_support::prereqs;

/// Description of the ENIs [`VpcFabric::fill_subnet`] creates.
pub(crate) const FILLER_DESCRIPTION: &str = "vcni filler (keeps subnet addresses taken)";

/// A subnet to create besides the nodes' subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetSpec {
    /// Its CIDR (inside the VPC's).
    pub cidr: Ipv4Net,
    /// Its Availability Zone; `None`: the nodes' zone ([`FabricOptions::availability_zone`]).
    pub availability_zone: Option<String>,
    /// Tags set through `CreateTags` right after `CreateSubnet`.
    pub tags: BTreeMap<String, String>,
}

impl SubnetSpec {
    /// An untagged subnet `cidr` in the nodes' zone.
    pub fn new(cidr: Ipv4Net) -> Self {
        Self {
            cidr,
            availability_zone: None,
            tags: BTreeMap::new(),
        }
    }

    /// Puts it into Availability Zone `zone`.
    pub fn zone(mut self, zone: &str) -> Self {
        self.availability_zone = Some(zone.to_owned());
        self
    }

    /// Adds tag `key=value`.
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// Shape of a simulated VPC.
#[derive(Debug, Clone)]
pub struct FabricOptions {
    /// Region (`AWS_REGION` of every node).
    pub region: String,
    /// Availability zone of the nodes' subnet (and so, by default, of the instances).
    pub availability_zone: String,
    /// The VPC's CIDR.
    pub vpc_cidr: Ipv4Net,
    /// The nodes' subnet (nodes' primary ENIs go there unless [`crate::vpc::NodeSpec`] says
    /// otherwise).
    pub subnet_cidr: Ipv4Net,
    /// Further subnets, created after the nodes' subnet in this order.
    pub extra_subnets: Vec<SubnetSpec>,
    /// How often the hypervisor polls moto.
    pub poll: Duration,
    /// EC2's response times for the nodes' calls; `clients` is ignored: only calls from inside
    /// the VPC's CIDR (the nodes') wait, never the harness's own. `None`: moto's own times.
    pub ec2_latency: Option<Ec2Latency>,
    /// Log every EC2 call in moto's log, for [`VpcFabric::ec2_calls`].
    pub ec2_call_log: bool,
    /// An IPv6 VPC: an Amazon-provided /56, a /64 per subnet, IPv6 routed (module docs).
    pub ipv6: bool,
}

impl Default for FabricOptions {
    fn default() -> Self {
        Self {
            region: "us-west-2".into(),
            availability_zone: "us-west-2a".into(),
            vpc_cidr: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap_or_default(),
            subnet_cidr: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 24).unwrap_or_default(),
            extra_subnets: Vec::new(),
            poll: DEFAULT_POLL,
            ec2_latency: None,
            ec2_call_log: false,
            ipv6: false,
        }
    }
}

impl FabricOptions {
    /// Uses `cidr` (inside the VPC's CIDR) as the nodes' subnet.
    pub fn subnet(mut self, cidr: Ipv4Net) -> Self {
        self.subnet_cidr = cidr;
        self
    }

    /// Adds a further subnet.
    pub fn with_subnet(mut self, subnet: SubnetSpec) -> Self {
        self.extra_subnets.push(subnet);
        self
    }

    /// Makes it an IPv6 VPC (dual stack, as EKS IPv6 clusters have it).
    pub fn with_ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    /// moto's options: latency for the VPC's clients only, the call log.
    fn moto_options(&self) -> MotoOptions {
        MotoOptions {
            latency: self.ec2_latency.clone().map(|latency| Ec2Latency {
                clients: vec![self.vpc_cidr],
                ..latency
            }),
            call_log: self.ec2_call_log,
        }
    }

    /// Every subnet's CIDR, the nodes' first: each inside the VPC, at least a /28, no overlap.
    fn validate(&self) -> Result<(), VpcError> {
        let cidrs: Vec<Ipv4Net> = std::iter::once(self.subnet_cidr)
            .chain(self.extra_subnets.iter().map(|s| s.cidr))
            .collect();
        for (i, cidr) in cidrs.iter().enumerate() {
            validate_subnet(self.vpc_cidr, *cidr)?;
            if let Some(other) = cidrs[..i]
                .iter()
                .find(|o| o.contains(cidr) || cidr.contains(*o))
            {
                return Err(VpcError::Invalid(format!(
                    "subnet {cidr} overlaps subnet {other}"
                )));
            }
        }
        Ok(())
    }
}

/// The `n`-th /64 of the VPC's first IPv6 block: the IPv6 block of its `n`-th subnet.
fn subnet_ipv6_block(vpc_blocks: &[Ipv6Net], n: usize) -> Result<Ipv6Net, VpcError> {
    vpc_blocks
        .first()
        .and_then(|block| block.subnets(64).ok()?.nth(n))
        .ok_or_else(|| {
            VpcError::Invalid(format!(
                "the VPC's IPv6 blocks {vpc_blocks:?} have no /64 number {n} for a subnet"
            ))
        })
}

fn validate_subnet(vpc: Ipv4Net, cidr: Ipv4Net) -> Result<(), VpcError> {
    if !vpc.contains(&cidr) {
        return Err(VpcError::Invalid(format!(
            "subnet {cidr} is not inside the VPC's CIDR {vpc}"
        )));
    }
    if cidr.prefix_len() > 28 {
        return Err(VpcError::Invalid(format!(
            "subnet {cidr} is smaller than a /28, the smallest subnet EC2 allows"
        )));
    }
    Ok(())
}

/// A running simulated VPC.
#[derive(Debug)]
pub struct VpcFabric {
    imds: Option<ImdsServer>,
    watcher: Option<Watcher>,
    moto: Option<MotoServer>,
    hypervisor: Arc<Hypervisor>,
    ec2: Ec2,
    options: FabricOptions,
    vpc_id: String,
    subnet: SubnetInfo,
    /// Every subnet the fabric created, the nodes' first.
    subnets: Mutex<Vec<SubnetInfo>>,
    security_group: String,
    router: Arc<Netns>,
    internet: Netns,
    dir: StateDir,
}

impl VpcFabric {
    /// Starts moto, builds the router and the internet namespace, creates the VPC, its subnets
    /// (tagged) and the nodes' security group in moto, and starts the hypervisor and the IMDS
    /// emulator.
    pub fn start(options: FabricOptions) -> Result<Self, VpcError> {
        prereqs::require_root()?;
        prereqs::require_tool("ip", "apt-get install iproute2")?;
        prereqs::require_tool("sysctl", "apt-get install procps")?;
        prereqs::python_with_moto()?;
        if options.ipv6 {
            prereqs::require_tool("ip6tables", "apt-get install iptables")?;
        }
        cleanup::install_signal_cleanup();
        options.validate()?;
        let dir = StateDir::create("vpc")?;
        let internet = Netns::new("inet")?;
        let router = Arc::new(Netns::new("vpc")?);
        let gateways: Vec<Ipv4Addr> = std::iter::once(options.subnet_cidr)
            .chain(options.extra_subnets.iter().map(|s| s.cidr))
            .map(gateway_of)
            .collect();
        router::build(
            &router,
            &internet,
            &[options.vpc_cidr],
            &gateways,
            options.ipv6,
        )?;

        let endpoint = router::ec2_endpoint();
        let ec2 = Ec2::connect(&internet, &endpoint, &options.region)?;
        let moto = MotoServer::start_with(
            &internet,
            SocketAddrV4::new(EC2_ENDPOINT_ADDR, EC2_ENDPOINT_PORT),
            dir.path(),
            &options.moto_options(),
        )?;
        ec2.wait_until_up(moto::START_TIMEOUT).map_err(|err| {
            moto.not_up(format!(
                "moto does not answer EC2 requests on {}: {err}",
                moto.listen()
            ))
        })?;
        let vpc_id = ec2.create_vpc(options.vpc_cidr, options.ipv6)?;
        let (vpc_cidrs, vpc_ipv6_cidrs) = ec2.vpc_cidrs(&vpc_id)?;
        if options.ipv6 && vpc_ipv6_cidrs.is_empty() {
            return Err(VpcError::Invalid(format!(
                "CreateVpc with AmazonProvidedIpv6CidrBlock left {vpc_id} without an IPv6 block"
            )));
        }
        let ipv6_block = |n: usize| -> Result<Option<Ipv6Net>, VpcError> {
            if !options.ipv6 {
                return Ok(None);
            }
            subnet_ipv6_block(&vpc_ipv6_cidrs, n).map(Some)
        };
        let subnet = ec2.create_subnet(
            &vpc_id,
            options.subnet_cidr,
            ipv6_block(0)?,
            &options.availability_zone,
        )?;
        let mut subnets = vec![subnet.clone()];
        for spec in &options.extra_subnets {
            let zone = spec
                .availability_zone
                .as_deref()
                .unwrap_or(&options.availability_zone);
            let created =
                ec2.create_subnet(&vpc_id, spec.cidr, ipv6_block(subnets.len())?, zone)?;
            if !spec.tags.is_empty() {
                ec2.create_tags(&created.id, &spec.tags)?;
            }
            subnets.push(created);
        }
        let security_group = ec2.create_security_group(&vpc_id, "vcni-nodes")?;
        if options.ipv6 {
            router::route_vpc_ipv6(&router, &internet, &vpc_ipv6_cidrs)?;
        }

        let hypervisor = Arc::new(Hypervisor::new(
            ec2.clone(),
            Arc::clone(&router),
            &vpc_id,
            vpc_cidrs,
            options.poll,
            options.ipv6,
        ));
        hypervisor.set_vpc_ipv6_cidrs(vpc_ipv6_cidrs);
        for s in &subnets {
            hypervisor.add_subnet(s.clone());
        }
        let watcher = Watcher::start(Arc::clone(&hypervisor))?;

        // 169.254.169.254 is an address of the router: nodes reach it over their primary ENI
        // (default route via the subnet's .1), and the peer address says who asks.
        let listener = router
            .run_in(|| TcpListener::bind((IMDS_ADDR, 80)))?
            .map_err(io_err("cannot listen on 169.254.169.254:80 in the router"))?;
        let imds =
            imds::spawn_with_source(listener, Arc::new(MotoSource::new(Arc::clone(&hypervisor))))?;
        let fabric = Self {
            imds: Some(imds),
            watcher: Some(watcher),
            moto: Some(moto),
            hypervisor,
            ec2,
            options,
            vpc_id,
            subnet,
            subnets: Mutex::new(subnets),
            security_group,
            router,
            internet,
            dir,
        };
        fabric.sync()?;
        Ok(fabric)
    }

    /// Creates an instance in moto and runs it as a node (see [`NodeSpec`]).
    pub fn add_node(&self, spec: NodeSpec) -> Result<VpcNode, VpcError> {
        VpcNode::create(self, spec)
    }

    /// The harness's EC2 client (for out-of-band changes and for checking moto's state).
    pub fn ec2(&self) -> &Ec2 {
        &self.ec2
    }

    /// The hypervisor (moto ↔ fabric synchronisation, IMDS view).
    pub fn hypervisor(&self) -> &Arc<Hypervisor> {
        &self.hypervisor
    }

    /// The options the fabric was built with.
    pub fn options(&self) -> &FabricOptions {
        &self.options
    }

    /// The VPC's id in moto.
    pub fn vpc_id(&self) -> &str {
        &self.vpc_id
    }

    /// The VPC's IPv6 blocks as instance metadata shows them (the Amazon-provided /56 of an
    /// IPv6 VPC; empty in an IPv4-only VPC until one is associated out of band).
    pub fn ipv6_cidrs(&self) -> Vec<Ipv6Net> {
        self.hypervisor.vpc_ipv6_cidrs()
    }

    /// The nodes' subnet (the first one).
    pub fn subnet(&self) -> &SubnetInfo {
        &self.subnet
    }

    /// Every subnet of the VPC, the nodes' first, then in the order created.
    pub fn subnets(&self) -> Vec<SubnetInfo> {
        self.subnets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The subnet with CIDR `cidr`.
    pub fn subnet_with_cidr(&self, cidr: Ipv4Net) -> Result<SubnetInfo, VpcError> {
        self.subnets()
            .into_iter()
            .find(|s| s.cidr == cidr)
            .ok_or_else(|| VpcError::Invalid(format!("the VPC has no subnet {cidr}")))
    }

    /// The subnet `id`.
    pub(crate) fn subnet_by_id(&self, id: &str) -> Result<SubnetInfo, VpcError> {
        self.subnets()
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| VpcError::Invalid(format!("the VPC has no subnet {id}")))
    }

    /// Creates a further subnet at run time (in moto, tagged; in an IPv6 VPC with the next
    /// /64), makes the router answer for its router address and tells the hypervisor.
    pub fn add_subnet(&self, spec: &SubnetSpec) -> Result<SubnetInfo, VpcError> {
        validate_subnet(self.options.vpc_cidr, spec.cidr)?;
        let zone = spec
            .availability_zone
            .as_deref()
            .unwrap_or(&self.options.availability_zone);
        let ipv6 = if self.options.ipv6 {
            Some(subnet_ipv6_block(
                &self.ipv6_cidrs(),
                self.subnets
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len(),
            )?)
        } else {
            None
        };
        let created = self
            .ec2
            .create_subnet(&self.vpc_id, spec.cidr, ipv6, zone)?;
        if !spec.tags.is_empty() {
            self.ec2.create_tags(&created.id, &spec.tags)?;
        }
        router::add_gateway(&self.router, created.gateway())?;
        self.hypervisor.add_subnet(created.clone());
        self.subnets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(created.clone());
        Ok(created)
    }

    /// A subnet as moto shows it now: `AvailableIpAddressCount` and tags.
    pub fn subnet_state(&self, subnet_id: &str) -> Result<SubnetState, VpcError> {
        Ok(self.ec2.subnet_state(subnet_id)?)
    }

    /// Tags subnet `subnet_id` `key=value` (`CreateTags`; replaces the value of an existing
    /// tag).
    pub fn tag_subnet(&self, subnet_id: &str, key: &str, value: &str) -> Result<(), VpcError> {
        let tags = BTreeMap::from([(key.to_owned(), value.to_owned())]);
        Ok(self.ec2.create_tags(subnet_id, &tags)?)
    }

    /// Removes tag `key` from subnet `subnet_id` (`DeleteTags`).
    pub fn untag_subnet(&self, subnet_id: &str, key: &str) -> Result<(), VpcError> {
        Ok(self.ec2.delete_tags(subnet_id, &[key])?)
    }

    /// Takes addresses of subnet `subnet_id` until exactly `leave_free` stay free
    /// (`AvailableIpAddressCount`): creates one unattached ENI (description
    /// `FILLER_DESCRIPTION`, no tag ipamd looks at) holding the rest. Returns the ENI, or
    /// `None` when the subnet had no more than `leave_free` free addresses already.
    pub fn fill_subnet(
        &self,
        subnet_id: &str,
        leave_free: u32,
    ) -> Result<Option<EniState>, VpcError> {
        let before = self.ec2.subnet_state(subnet_id)?;
        let Some(take) = before
            .available_ips
            .checked_sub(leave_free)
            .filter(|n| *n > 0)
        else {
            return Ok(None);
        };
        let eni = self.ec2.create_eni(&EniRequest {
            subnet_id: subnet_id.to_owned(),
            security_groups: vec![self.security_group.clone()],
            secondary_ips: take - 1,
            description: FILLER_DESCRIPTION.to_owned(),
            ..EniRequest::default()
        })?;
        let after = self.ec2.subnet_state(subnet_id)?;
        if after.available_ips != leave_free {
            return Err(VpcError::Invalid(format!(
                "filling {subnet_id} ({}) with {take} addresses on {} left {} free, not {leave_free} (moto's count and its allocator disagree?)",
                before.cidr, eni.id, after.available_ips
            )));
        }
        Ok(Some(eni))
    }

    /// The nodes' security group.
    pub fn security_group(&self) -> &str {
        &self.security_group
    }

    /// The router's namespace.
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The internet namespace (203.0.113.0/24, and 2001:db8::/64 in an IPv6 VPC; moto listens
    /// there).
    pub fn internet(&self) -> &Netns {
        &self.internet
    }

    /// The fabric's state directory (moto's launcher and log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Waits until moto and the fabric agree (a poll that started now has been applied).
    pub fn sync(&self) -> Result<Arc<VpcSnapshot>, VpcError> {
        self.hypervisor.sync()
    }

    /// Every ENI of the VPC as moto shows it right now.
    pub fn enis(&self) -> Result<Vec<EniState>, VpcError> {
        Ok(self.ec2.vpc_enis(&self.vpc_id)?)
    }

    /// Makes the EC2 endpoint unreachable from every node (`false`: the router answers "prohibited"
    /// for it, as a broken route or a closed security group would) or reachable again (`true`).
    /// The harness and IMDS keep working.
    pub fn set_ec2_reachable(&self, reachable: bool) -> Result<(), VpcError> {
        let target = format!("{EC2_ENDPOINT_ADDR}/32");
        if reachable {
            match self.router.ip(&["route", "del", "prohibit", &target]) {
                Ok(_) => Ok(()),
                Err(test_support::netns::CommandError::Failed { stderr, .. })
                    if stderr.contains("No such process") =>
                {
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        } else {
            self.router
                .ip(&["route", "replace", "prohibit", &target])
                .map(|_| ())
                .map_err(Into::into)
        }
    }

    /// The EC2 calls the nodes made so far (clients inside the VPC's CIDR; the harness's own are
    /// not counted), by action, from moto's log. Empty unless [`FabricOptions::ec2_call_log`].
    pub fn ec2_calls(&self) -> Result<BTreeMap<String, Ec2CallCount>, VpcError> {
        let Some(moto) = self.moto.as_ref() else {
            return Ok(BTreeMap::new());
        };
        moto::ec2_calls(moto.log_path(), Some(&[self.options.vpc_cidr])).map_err(|source| {
            VpcError::Io {
                context: format!("cannot read moto's log {}", moto.log_path().display()),
                source,
            }
        })
    }

    /// Delays instance metadata by `lag` behind moto (stale IMDS, as on AWS under load).
    pub fn set_imds_lag(&self, lag: Duration) {
        self.hypervisor.set_imds_lag(lag);
    }

    /// moto's log tail, the hypervisor's status and the router's ENI links, for failures.
    pub fn diag(&self) -> String {
        fabric_diag(
            &self.hypervisor,
            self.moto.as_ref().map(MotoServer::log_path),
        )
    }
}

/// The simulated VPC's side of a failure message.
pub(super) fn fabric_diag(hypervisor: &Hypervisor, moto_log: Option<&std::path::Path>) -> String {
    let links: Vec<String> = hypervisor
        .links()
        .into_iter()
        .map(|(eni, ns, dev)| format!("{eni}=>{ns}/eth{dev}"))
        .collect();
    format!(
        "===== simulated VPC =====\n{}\nENI links: {}\n===== moto log (tail) =====\n{}",
        hypervisor.status(),
        links.join(" "),
        moto_log
            .map(|p| test_support::netns::tail(p, 15))
            .unwrap_or_default()
    )
}

impl Drop for VpcFabric {
    fn drop(&mut self) {
        if let Some(imds) = self.imds.take() {
            imds.stop();
        }
        if let Some(mut watcher) = self.watcher.take() {
            watcher.stop();
        }
        // Dropping kills moto; the namespaces and the directory go with the remaining fields.
        self.moto.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_must_be_inside_the_vpc_large_enough_and_apart() {
        let ok = FabricOptions::default()
            .with_subnet(SubnetSpec::new("10.0.1.0/26".parse().unwrap()).tag("k", "v"))
            .with_subnet(SubnetSpec::new("10.0.8.0/22".parse().unwrap()).zone("us-west-2b"));
        ok.validate().unwrap();
        assert_eq!(ok.extra_subnets[0].tags["k"], "v");
        assert_eq!(
            ok.extra_subnets[1].availability_zone.as_deref(),
            Some("us-west-2b")
        );
        for (bad, why) in [
            ("10.1.0.0/24", "not inside"),
            ("10.0.3.0/29", "smaller than a /28"),
            ("10.0.0.128/25", "overlaps"),
        ] {
            let err = FabricOptions::default()
                .with_subnet(SubnetSpec::new(bad.parse().unwrap()))
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn ipv6_subnets_take_the_vpcs_64s_in_order() {
        let vpc: Vec<Ipv6Net> = vec!["2400:6500:ab:cd00::/56".parse().unwrap()];
        assert_eq!(
            subnet_ipv6_block(&vpc, 0).unwrap(),
            "2400:6500:ab:cd00::/64".parse::<Ipv6Net>().unwrap()
        );
        assert_eq!(
            subnet_ipv6_block(&vpc, 2).unwrap(),
            "2400:6500:ab:cd02::/64".parse::<Ipv6Net>().unwrap()
        );
        assert!(subnet_ipv6_block(&vpc, 256).is_err());
        assert!(subnet_ipv6_block(&[], 0).is_err());
        assert!(FabricOptions::default().with_ipv6().ipv6);
    }

    #[test]
    fn only_the_nodes_calls_wait() {
        assert_eq!(
            FabricOptions::default().moto_options(),
            MotoOptions::default()
        );
        let options = FabricOptions {
            ec2_latency: Some(Ec2Latency {
                default: Duration::from_millis(200),
                clients: vec!["203.0.113.0/24".parse().unwrap()],
                ..Ec2Latency::default()
            }),
            ec2_call_log: true,
            ..FabricOptions::default()
        };
        let moto = options.moto_options();
        assert!(moto.call_log);
        let latency = moto.latency.unwrap();
        assert_eq!(latency.clients, vec![options.vpc_cidr]);
        assert_eq!(latency.default, Duration::from_millis(200));
    }
}
