//! [`VpcFabric`]: one simulated VPC (moto, router, internet, hypervisor, IMDS) and the entry
//! point to create nodes in it. Dropping it stops the IMDS emulator and the hypervisor, kills
//! moto and deletes the namespaces; nodes still alive lose their links with the router.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::VpcError;
use super::ec2::Ec2;
use super::model::{EniState, SubnetInfo, VpcSnapshot};
use super::moto::MotoServer;
use super::node::{NodeSpec, VpcNode};
use super::router::{self, EC2_ENDPOINT_ADDR, EC2_ENDPOINT_PORT, IMDS_ADDR};
use super::watcher::{DEFAULT_POLL, Hypervisor, MotoSource, Watcher};
use crate::bins;
use crate::cleanup;
use crate::imds::{self, ImdsServer};
use crate::netns::Netns;
use crate::node::{StateDir, io_err};

/// Shape of a simulated VPC.
#[derive(Debug, Clone)]
pub struct FabricOptions {
    /// Region (`AWS_REGION` of every node).
    pub region: String,
    /// Availability zone of the subnet and the instances.
    pub availability_zone: String,
    /// The VPC's CIDR.
    pub vpc_cidr: Ipv4Net,
    /// The nodes' subnet.
    pub subnet_cidr: Ipv4Net,
    /// How often the hypervisor polls moto.
    pub poll: Duration,
}

impl Default for FabricOptions {
    fn default() -> Self {
        Self {
            region: "us-west-2".into(),
            availability_zone: "us-west-2a".into(),
            vpc_cidr: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap_or_default(),
            subnet_cidr: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 24).unwrap_or_default(),
            poll: DEFAULT_POLL,
        }
    }
}

impl FabricOptions {
    /// Uses `cidr` (inside the VPC's CIDR) as the nodes' subnet.
    pub fn subnet(mut self, cidr: Ipv4Net) -> Self {
        self.subnet_cidr = cidr;
        self
    }
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
    security_group: String,
    router: Arc<Netns>,
    internet: Netns,
    dir: StateDir,
}

impl VpcFabric {
    /// Starts moto, builds the router and the internet namespace, creates the VPC, its subnet
    /// and the nodes' security group in moto, and starts the hypervisor and the IMDS emulator.
    pub fn start(options: FabricOptions) -> Result<Self, VpcError> {
        bins::require_root()?;
        bins::require_tool("ip", "apt-get install iproute2")?;
        bins::require_tool("sysctl", "apt-get install procps")?;
        bins::python_with_moto()?;
        cleanup::install_signal_cleanup();
        if !options.vpc_cidr.contains(&options.subnet_cidr) {
            return Err(VpcError::Invalid(format!(
                "subnet {} is not inside the VPC's CIDR {}",
                options.subnet_cidr, options.vpc_cidr
            )));
        }
        if options.subnet_cidr.prefix_len() > 28 {
            return Err(VpcError::Invalid(format!(
                "subnet {} is smaller than a /28, the smallest subnet EC2 allows",
                options.subnet_cidr
            )));
        }
        let dir = StateDir::create("vpc")?;
        let internet = Netns::new("inet")?;
        let router = Arc::new(Netns::new("vpc")?);
        let gateway = SubnetInfo {
            id: String::new(),
            cidr: options.subnet_cidr,
            availability_zone: String::new(),
        }
        .gateway();
        router::build(&router, &internet, &[options.vpc_cidr], &[gateway])?;

        let endpoint = format!("http://{EC2_ENDPOINT_ADDR}:{EC2_ENDPOINT_PORT}");
        let ec2 = Ec2::connect(&internet, &endpoint, &options.region)?;
        let moto = MotoServer::start(
            &internet,
            SocketAddrV4::new(EC2_ENDPOINT_ADDR, EC2_ENDPOINT_PORT),
            dir.path(),
            &ec2,
        )?;
        let vpc_id = ec2.create_vpc(options.vpc_cidr)?;
        let subnet = ec2.create_subnet(&vpc_id, options.subnet_cidr, &options.availability_zone)?;
        let security_group = ec2.create_security_group(&vpc_id, "vcni-nodes")?;
        let vpc_cidrs = ec2.vpc_cidrs(&vpc_id)?;

        let hypervisor = Arc::new(Hypervisor::new(
            ec2.clone(),
            Arc::clone(&router),
            &vpc_id,
            vpc_cidrs,
            options.poll,
        ));
        hypervisor.add_subnet(subnet.clone());
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

    /// The nodes' subnet.
    pub fn subnet(&self) -> &SubnetInfo {
        &self.subnet
    }

    /// The nodes' security group.
    pub fn security_group(&self) -> &str {
        &self.security_group
    }

    /// The EC2 endpoint URL nodes use (`AWS_ENDPOINT_URL_EC2`).
    pub fn ec2_endpoint(&self) -> &str {
        self.ec2.endpoint()
    }

    /// The router's namespace.
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The internet namespace (203.0.113.0/24; moto listens there).
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
                Err(crate::netns::NetnsError::Failed { stderr, .. })
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
            .map(|p| crate::node::tail(p, 15))
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
