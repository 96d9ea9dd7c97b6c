//! The harness's own EC2 client: aws-sdk-ec2 against the simulated VPC's moto, for building the
//! VPC and its instances, for the hypervisor watcher's polls, and for tests that change EC2
//! state out of band (as an operator or another controller would).
//!
//! moto listens inside the simulated `internet` namespace, which the test process is not in.
//! The client therefore runs on a tokio runtime whose threads all entered that namespace when
//! they started (network namespaces are per thread), so every socket it opens belongs there;
//! callers stay on their own threads and wait for the result. Nothing connects from, or listens
//! in, the machine's root namespace.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, InstanceType, NetworkInterface, ResourceType, Subnet, SubnetCidrBlockStateCode, Tag,
    TagSpecification, Vpc, VpcCidrBlockStateCode,
};
use ipnet::{Ipv4Net, Ipv6Net};
use nix::sched::{CloneFlags, setns};

use super::model::{EniAttachment, EniState, InstanceInfo, SubnetInfo, SubnetState};
use test_support::netns::Netns;

/// Access key the harness signs with (moto accepts any).
const HARNESS_ACCESS_KEY: &str = "AKIAVCNIHARNESS00000";
/// Image id of simulated instances (moto does not validate AMIs by default).
pub(crate) const SIMULATED_AMI: &str = "ami-0vcni0simulated0";
/// How long one EC2 call may take before the harness gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An EC2 call that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("EC2 {operation} failed: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct Ec2Error {
    /// The API operation (`CreateNetworkInterface`).
    pub operation: String,
    /// EC2's error code, when EC2 answered with one.
    pub code: Option<String>,
    /// EC2's message, or the transport error.
    pub message: String,
}

impl Ec2Error {
    fn new(operation: &str, code: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            operation: operation.to_owned(),
            code: code.map(str::to_owned),
            message: message.into(),
        }
    }

    fn sdk<E, R>(operation: &str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = err.code().map(str::to_owned);
        let message = match err.message() {
            Some(m) => m.to_owned(),
            None => DisplayErrorContext(&err).to_string(),
        };
        Self {
            operation: operation.to_owned(),
            code,
            message,
        }
    }

    fn missing(operation: &str, what: &str) -> Self {
        Self::new(operation, None, format!("the response has no {what}"))
    }
}

/// What to create with [`Ec2::create_eni`].
#[derive(Debug, Clone, Default)]
pub struct EniRequest {
    /// Subnet to create it in.
    pub subnet_id: String,
    /// Security groups.
    pub security_groups: Vec<String>,
    /// `SecondaryPrivateIpAddressCount` (0: only the primary address).
    pub secondary_ips: u32,
    /// Explicit primary address (EC2 picks one when `None`).
    pub private_ip: Option<Ipv4Addr>,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// A synchronous EC2 client for the simulated VPC's moto.
#[derive(Debug, Clone)]
pub struct Ec2 {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runtime: tokio::runtime::Runtime,
    client: Client,
    endpoint: String,
    region: String,
    entered: Arc<AtomicBool>,
}

impl Ec2 {
    /// A client for `endpoint` whose connections are opened inside `ns`.
    pub fn connect(ns: &Netns, endpoint: &str, region: &str) -> Result<Self, Ec2Error> {
        let file = File::open(ns.path()).map_err(|e| {
            Ec2Error::new(
                "connect",
                None,
                format!("cannot open network namespace {}: {e}", ns.name()),
            )
        })?;
        let file = Arc::new(file);
        let entered = Arc::new(AtomicBool::new(true));
        let on_start = {
            let file = Arc::clone(&file);
            let entered = Arc::clone(&entered);
            move || {
                // Every runtime thread (workers and the blocking pool) joins the namespace
                // before it runs anything, so every socket the SDK opens lives there.
                if let Err(errno) = setns(&*file, CloneFlags::CLONE_NEWNET) {
                    tracing::error!(%errno, "EC2 client thread cannot enter the VPC namespace");
                    entered.store(false, Ordering::SeqCst);
                }
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(4)
            .thread_name(format!("ec2-{}", ns.name()))
            .on_thread_start(on_start)
            .enable_all()
            .build()
            .map_err(|e| Ec2Error::new("connect", None, format!("cannot build a runtime: {e}")))?;
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(
                HARNESS_ACCESS_KEY,
                "vcni-harness-not-a-secret",
                None,
                None,
                "vcni-harness",
            ))
            .build();
        let client = Client::from_conf(config);
        Ok(Self {
            inner: Arc::new(Inner {
                runtime,
                client,
                endpoint: endpoint.to_owned(),
                region: region.to_owned(),
                entered,
            }),
        })
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// The underlying SDK client, for calls this wrapper does not cover; run its futures with
    /// [`Ec2::run`] (they must be polled on the client's own threads).
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// Runs `fut` on the client's runtime (inside the VPC's namespace) and waits for it.
    pub fn run<T, Fut>(&self, operation: &str, fut: Fut) -> Result<T, Ec2Error>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, Ec2Error>> + Send + 'static,
    {
        if !self.inner.entered.load(Ordering::SeqCst) {
            return Err(Ec2Error::new(
                operation,
                None,
                "the client's threads could not enter the VPC namespace",
            ));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.inner.runtime.spawn(async move {
            let result = tokio::time::timeout(CALL_TIMEOUT, fut).await;
            // The caller may have given up waiting; nothing to do then.
            let _ = tx.send(result);
        });
        match rx.recv_timeout(CALL_TIMEOUT + Duration::from_secs(5)) {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(Ec2Error::new(
                operation,
                None,
                format!("no answer from {} within {CALL_TIMEOUT:?}", self.endpoint()),
            )),
        }
    }

    /// Waits until the endpoint answers a `DescribeVpcs`.
    pub(crate) fn wait_until_up(&self, timeout: Duration) -> Result<(), Ec2Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let client = self.client();
            let result = self.run("DescribeVpcs", async move {
                client
                    .describe_vpcs()
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| Ec2Error::sdk("DescribeVpcs", e))
            });
            match result {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() >= deadline => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `CreateVpc`; with `ipv6` also `AmazonProvidedIpv6CidrBlock` (EC2 picks the /56).
    /// Returns the VPC id.
    pub(crate) fn create_vpc(&self, cidr: Ipv4Net, ipv6: bool) -> Result<String, Ec2Error> {
        let client = self.client();
        self.run("CreateVpc", async move {
            let out = client
                .create_vpc()
                .cidr_block(cidr.to_string())
                .set_amazon_provided_ipv6_cidr_block(ipv6.then_some(true))
                .send()
                .await
                .map_err(|e| Ec2Error::sdk("CreateVpc", e))?;
            out.vpc()
                .and_then(|v| v.vpc_id())
                .map(str::to_owned)
                .ok_or_else(|| Ec2Error::missing("CreateVpc", "VpcId"))
        })
    }

    /// The CIDR blocks associated with `vpc_id`: its IPv4 blocks, primary first, and its IPv6
    /// blocks (empty for an IPv4-only VPC).
    pub(crate) fn vpc_cidrs(&self, vpc_id: &str) -> Result<(Vec<Ipv4Net>, Vec<Ipv6Net>), Ec2Error> {
        let client = self.client();
        let vpc_id = vpc_id.to_owned();
        self.run("DescribeVpcs", async move {
            let out = client
                .describe_vpcs()
                .vpc_ids(&vpc_id)
                .send()
                .await
                .map_err(|e| Ec2Error::sdk("DescribeVpcs", e))?;
            let vpc = out
                .vpcs()
                .first()
                .ok_or_else(|| Ec2Error::missing("DescribeVpcs", "VPC"))?;
            let mut cidrs: Vec<Ipv4Net> = Vec::new();
            if let Some(primary) = vpc.cidr_block().and_then(|c| c.parse().ok()) {
                cidrs.push(primary);
            }
            for assoc in vpc.cidr_block_association_set() {
                if let Some(c) = assoc.cidr_block().and_then(|c| c.parse().ok())
                    && !cidrs.contains(&c)
                {
                    cidrs.push(c);
                }
            }
            Ok((cidrs, vpc_ipv6_cidrs(vpc)))
        })
    }

    /// `CreateSubnet`, with the IPv6 block `ipv6_cidr` (a /64 of the VPC's) when given.
    pub(crate) fn create_subnet(
        &self,
        vpc_id: &str,
        cidr: Ipv4Net,
        ipv6_cidr: Option<Ipv6Net>,
        availability_zone: &str,
    ) -> Result<SubnetInfo, Ec2Error> {
        let client = self.client();
        let (vpc_id, az) = (vpc_id.to_owned(), availability_zone.to_owned());
        self.run("CreateSubnet", async move {
            let out = client
                .create_subnet()
                .vpc_id(vpc_id)
                .cidr_block(cidr.to_string())
                .set_ipv6_cidr_block(ipv6_cidr.map(|c| c.to_string()))
                .availability_zone(&az)
                .send()
                .await
                .map_err(|e| Ec2Error::sdk("CreateSubnet", e))?;
            let subnet = out
                .subnet()
                .ok_or_else(|| Ec2Error::missing("CreateSubnet", "Subnet"))?;
            let id = subnet
                .subnet_id()
                .ok_or_else(|| Ec2Error::missing("CreateSubnet", "SubnetId"))?;
            Ok(SubnetInfo {
                id: id.to_owned(),
                cidr,
                ipv6_cidrs: subnet_ipv6_cidrs(subnet),
                availability_zone: az,
            })
        })
    }

    /// `DescribeSubnets` of one subnet.
    pub fn subnet(&self, subnet_id: &str) -> Result<SubnetInfo, Ec2Error> {
        Ok(self.subnet_state(subnet_id)?.info())
    }

    /// `DescribeSubnets` of one subnet, with its free addresses and tags as EC2 shows them now.
    pub fn subnet_state(&self, subnet_id: &str) -> Result<SubnetState, Ec2Error> {
        self.describe_subnets(Vec::new(), vec![subnet_id.to_owned()])?
            .pop()
            .ok_or_else(|| Ec2Error::missing("DescribeSubnets", "subnet"))
    }

    fn describe_subnets(
        &self,
        filters: Vec<Filter>,
        ids: Vec<String>,
    ) -> Result<Vec<SubnetState>, Ec2Error> {
        const OP: &str = "DescribeSubnets";
        let client = self.client();
        self.run(OP, async move {
            let out = client
                .describe_subnets()
                .set_filters((!filters.is_empty()).then_some(filters))
                .set_subnet_ids((!ids.is_empty()).then_some(ids))
                .send()
                .await
                .map_err(|e| Ec2Error::sdk(OP, e))?;
            out.subnets()
                .iter()
                .map(|s| {
                    let id = s
                        .subnet_id()
                        .ok_or_else(|| Ec2Error::missing(OP, "SubnetId"))?
                        .to_owned();
                    let cidr = s
                        .cidr_block()
                        .and_then(|c| c.parse().ok())
                        .ok_or_else(|| Ec2Error::missing(OP, &format!("CidrBlock of {id}")))?;
                    let available_ips = s
                        .available_ip_address_count()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            Ec2Error::missing(OP, &format!("AvailableIpAddressCount of {id}"))
                        })?;
                    Ok(SubnetState {
                        cidr,
                        ipv6_cidrs: subnet_ipv6_cidrs(s),
                        availability_zone: s.availability_zone().unwrap_or_default().to_owned(),
                        vpc_id: s.vpc_id().unwrap_or_default().to_owned(),
                        available_ips,
                        tags: tag_map(s.tags()),
                        id,
                    })
                })
                .collect()
        })
    }

    /// `CreateSecurityGroup`; returns the group id.
    pub(crate) fn create_security_group(
        &self,
        vpc_id: &str,
        name: &str,
    ) -> Result<String, Ec2Error> {
        let client = self.client();
        let (vpc_id, name) = (vpc_id.to_owned(), name.to_owned());
        self.run("CreateSecurityGroup", async move {
            let out = client
                .create_security_group()
                .vpc_id(vpc_id)
                .group_name(&name)
                .description(format!("{name} (simulated VPC)"))
                .send()
                .await
                .map_err(|e| Ec2Error::sdk("CreateSecurityGroup", e))?;
            out.group_id()
                .map(str::to_owned)
                .ok_or_else(|| Ec2Error::missing("CreateSecurityGroup", "GroupId"))
        })
    }

    /// `RunInstances` of one instance of `instance_type` in `subnet` with `security_group`,
    /// tagged `Name=<name>`.
    pub(crate) fn run_instance(
        &self,
        instance_type: &str,
        subnet: &SubnetInfo,
        security_group: &str,
        name: &str,
        ipv6_addresses: u32,
    ) -> Result<InstanceInfo, Ec2Error> {
        let client = self.client();
        let (instance_type, sg, name) = (
            instance_type.to_owned(),
            security_group.to_owned(),
            name.to_owned(),
        );
        let subnet = subnet.clone();
        self.run("RunInstances", async move {
            let out = client
                .run_instances()
                .image_id(SIMULATED_AMI)
                .instance_type(InstanceType::from(instance_type.as_str()))
                .min_count(1)
                .max_count(1)
                .subnet_id(&subnet.id)
                .security_group_ids(sg)
                .set_ipv6_address_count(
                    (ipv6_addresses > 0).then(|| i32::try_from(ipv6_addresses).unwrap_or(i32::MAX)),
                )
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Instance)
                        .tags(Tag::builder().key("Name").value(name).build())
                        .build(),
                )
                .send()
                .await
                .map_err(|e| Ec2Error::sdk("RunInstances", e))?;
            let instance = out
                .instances()
                .first()
                .ok_or_else(|| Ec2Error::missing("RunInstances", "instance"))?;
            let id = instance
                .instance_id()
                .ok_or_else(|| Ec2Error::missing("RunInstances", "InstanceId"))?;
            let primary = instance
                .network_interfaces()
                .iter()
                .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
                .ok_or_else(|| Ec2Error::missing("RunInstances", "primary network interface"))?;
            let private_ip = instance
                .private_ip_address()
                .and_then(|ip| ip.parse().ok())
                .ok_or_else(|| Ec2Error::missing("RunInstances", "PrivateIpAddress"))?;
            Ok(InstanceInfo {
                id: id.to_owned(),
                instance_type,
                availability_zone: subnet.availability_zone.clone(),
                primary_eni: primary
                    .network_interface_id()
                    .ok_or_else(|| Ec2Error::missing("RunInstances", "NetworkInterfaceId"))?
                    .to_owned(),
                mac: primary
                    .mac_address()
                    .ok_or_else(|| Ec2Error::missing("RunInstances", "MacAddress"))?
                    .to_ascii_lowercase(),
                private_ip,
                subnet_id: subnet.id.clone(),
            })
        })
    }

    /// Every ENI of `vpc_id` (`DescribeNetworkInterfaces` with a `vpc-id` filter, all pages).
    pub fn vpc_enis(&self, vpc_id: &str) -> Result<Vec<EniState>, Ec2Error> {
        self.describe_enis(vec![filter("vpc-id", vpc_id)], Vec::new())
    }

    /// The ENIs attached to `instance_id`, by device index.
    pub fn instance_enis(&self, instance_id: &str) -> Result<Vec<EniState>, Ec2Error> {
        let mut enis = self.describe_enis(
            vec![filter("attachment.instance-id", instance_id)],
            Vec::new(),
        )?;
        enis.sort_by_key(EniState::device_index);
        Ok(enis)
    }

    /// One ENI; `Ok(None)` when EC2 says it does not exist.
    pub fn eni(&self, eni_id: &str) -> Result<Option<EniState>, Ec2Error> {
        match self.describe_enis(Vec::new(), vec![eni_id.to_owned()]) {
            Ok(mut enis) => Ok(enis.pop()),
            Err(err) if err.code.as_deref() == Some("InvalidNetworkInterfaceID.NotFound") => {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    fn describe_enis(
        &self,
        filters: Vec<Filter>,
        ids: Vec<String>,
    ) -> Result<Vec<EniState>, Ec2Error> {
        let client = self.client();
        self.run("DescribeNetworkInterfaces", async move {
            let mut enis = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let out = client
                    .describe_network_interfaces()
                    .set_filters((!filters.is_empty()).then(|| filters.clone()))
                    .set_network_interface_ids((!ids.is_empty()).then(|| ids.clone()))
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| Ec2Error::sdk("DescribeNetworkInterfaces", e))?;
                for eni in out.network_interfaces() {
                    enis.push(eni_state(eni)?);
                }
                match out.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                    _ => break,
                }
            }
            Ok(enis)
        })
    }

    /// `CreateNetworkInterface`.
    pub fn create_eni(&self, request: &EniRequest) -> Result<EniState, Ec2Error> {
        let client = self.client();
        let request = request.clone();
        self.run("CreateNetworkInterface", async move {
            let mut call = client
                .create_network_interface()
                .subnet_id(&request.subnet_id)
                .set_groups(Some(request.security_groups.clone()))
                .description(&request.description);
            if request.secondary_ips > 0 {
                call = call.secondary_private_ip_address_count(
                    i32::try_from(request.secondary_ips).unwrap_or(i32::MAX),
                );
            }
            if let Some(ip) = request.private_ip {
                call = call.private_ip_address(ip.to_string());
            }
            if !request.tags.is_empty() {
                let mut spec =
                    TagSpecification::builder().resource_type(ResourceType::NetworkInterface);
                for (k, v) in &request.tags {
                    spec = spec.tags(Tag::builder().key(k).value(v).build());
                }
                call = call.tag_specifications(spec.build());
            }
            let out = call
                .send()
                .await
                .map_err(|e| Ec2Error::sdk("CreateNetworkInterface", e))?;
            let eni = out
                .network_interface()
                .ok_or_else(|| Ec2Error::missing("CreateNetworkInterface", "NetworkInterface"))?;
            eni_state(eni)
        })
    }

    /// `AttachNetworkInterface`; returns the attachment id.
    pub fn attach_eni(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        let client = self.client();
        let (eni_id, instance_id) = (eni_id.to_owned(), instance_id.to_owned());
        self.run("AttachNetworkInterface", async move {
            let out = client
                .attach_network_interface()
                .network_interface_id(eni_id)
                .instance_id(instance_id)
                .device_index(i32::try_from(device_index).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(|e| Ec2Error::sdk("AttachNetworkInterface", e))?;
            out.attachment_id()
                .map(str::to_owned)
                .ok_or_else(|| Ec2Error::missing("AttachNetworkInterface", "AttachmentId"))
        })
    }

    /// `DetachNetworkInterface`.
    pub fn detach_eni(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        let client = self.client();
        let attachment_id = attachment_id.to_owned();
        self.run("DetachNetworkInterface", async move {
            client
                .detach_network_interface()
                .attachment_id(attachment_id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("DetachNetworkInterface", e))
        })
    }

    /// `AssignPrivateIpAddresses` with a count; returns the addresses EC2 picked.
    pub fn assign_private_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        let before: Vec<Ipv4Addr> = self.eni(eni_id)?.map(|e| e.private_ips).unwrap_or_default();
        let client = self.client();
        let id = eni_id.to_owned();
        self.run("AssignPrivateIpAddresses", async move {
            client
                .assign_private_ip_addresses()
                .network_interface_id(id)
                .secondary_private_ip_address_count(i32::try_from(count).unwrap_or(i32::MAX))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("AssignPrivateIpAddresses", e))
        })?;
        let after = self.eni(eni_id)?.map(|e| e.private_ips).unwrap_or_default();
        Ok(after
            .into_iter()
            .filter(|ip| !before.contains(ip))
            .collect())
    }

    /// `AssignPrivateIpAddresses` with `Ipv4PrefixCount`; returns the prefixes EC2 picked.
    pub fn assign_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        let client = self.client();
        let id = eni_id.to_owned();
        let out = self.run("AssignPrivateIpAddresses", async move {
            client
                .assign_private_ip_addresses()
                .network_interface_id(id)
                .ipv4_prefix_count(i32::try_from(count).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(|e| Ec2Error::sdk("AssignPrivateIpAddresses", e))
        })?;
        Ok(out
            .assigned_ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix()?.parse().ok())
            .collect())
    }

    /// `AssociateVpcCidrBlock` with `AmazonProvidedIpv6CidrBlock`; returns the VPC's IPv6
    /// blocks afterwards (EC2 picks the /56).
    pub fn associate_vpc_ipv6_cidr(&self, vpc_id: &str) -> Result<Vec<Ipv6Net>, Ec2Error> {
        let client = self.client();
        let id = vpc_id.to_owned();
        self.run("AssociateVpcCidrBlock", async move {
            client
                .associate_vpc_cidr_block()
                .vpc_id(id)
                .amazon_provided_ipv6_cidr_block(true)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("AssociateVpcCidrBlock", e))
        })?;
        Ok(self.vpc_cidrs(vpc_id)?.1)
    }

    /// `AssociateSubnetCidrBlock` of the IPv6 block `cidr` (inside one of the VPC's).
    pub fn associate_subnet_ipv6_cidr(
        &self,
        subnet_id: &str,
        cidr: Ipv6Net,
    ) -> Result<(), Ec2Error> {
        let client = self.client();
        let id = subnet_id.to_owned();
        self.run("AssociateSubnetCidrBlock", async move {
            client
                .associate_subnet_cidr_block()
                .subnet_id(id)
                .ipv6_cidr_block(cidr.to_string())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("AssociateSubnetCidrBlock", e))
        })
    }

    /// `AssignIpv6Addresses` with `Ipv6AddressCount`; returns the addresses EC2 picked.
    pub fn assign_ipv6_addresses(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv6Addr>, Ec2Error> {
        let before = self
            .eni(eni_id)?
            .map(|e| e.ipv6_addresses)
            .unwrap_or_default();
        let client = self.client();
        let id = eni_id.to_owned();
        self.run("AssignIpv6Addresses", async move {
            client
                .assign_ipv6_addresses()
                .network_interface_id(id)
                .ipv6_address_count(i32::try_from(count).unwrap_or(i32::MAX))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("AssignIpv6Addresses", e))
        })?;
        let after = self
            .eni(eni_id)?
            .map(|e| e.ipv6_addresses)
            .unwrap_or_default();
        Ok(after
            .into_iter()
            .filter(|ip| !before.contains(ip))
            .collect())
    }

    /// `AssignIpv6Addresses` with `Ipv6PrefixCount`; returns the /80s EC2 picked.
    pub fn assign_ipv6_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv6Net>, Ec2Error> {
        let client = self.client();
        let id = eni_id.to_owned();
        let out = self.run("AssignIpv6Addresses", async move {
            client
                .assign_ipv6_addresses()
                .network_interface_id(id)
                .ipv6_prefix_count(i32::try_from(count).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(|e| Ec2Error::sdk("AssignIpv6Addresses", e))
        })?;
        Ok(out
            .assigned_ipv6_prefixes()
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// `UnassignIpv6Addresses` of the prefixes `prefixes`.
    pub fn unassign_ipv6_prefixes(
        &self,
        eni_id: &str,
        prefixes: &[Ipv6Net],
    ) -> Result<(), Ec2Error> {
        let client = self.client();
        let id = eni_id.to_owned();
        let prefixes: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
        self.run("UnassignIpv6Addresses", async move {
            client
                .unassign_ipv6_addresses()
                .network_interface_id(id)
                .set_ipv6_prefixes(Some(prefixes))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("UnassignIpv6Addresses", e))
        })
    }

    /// `UnassignIpv6Addresses` of the addresses `ips`.
    pub fn unassign_ipv6_addresses(&self, eni_id: &str, ips: &[Ipv6Addr]) -> Result<(), Ec2Error> {
        let client = self.client();
        let id = eni_id.to_owned();
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        self.run("UnassignIpv6Addresses", async move {
            client
                .unassign_ipv6_addresses()
                .network_interface_id(id)
                .set_ipv6_addresses(Some(ips))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("UnassignIpv6Addresses", e))
        })
    }

    /// `AssignPrivateIpAddresses` with explicit addresses.
    pub fn assign_specific_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        let client = self.client();
        let id = eni_id.to_owned();
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        self.run("AssignPrivateIpAddresses", async move {
            client
                .assign_private_ip_addresses()
                .network_interface_id(id)
                .set_private_ip_addresses(Some(ips))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("AssignPrivateIpAddresses", e))
        })
    }

    /// `UnassignPrivateIpAddresses`.
    pub fn unassign_private_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        let client = self.client();
        let id = eni_id.to_owned();
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        self.run("UnassignPrivateIpAddresses", async move {
            client
                .unassign_private_ip_addresses()
                .network_interface_id(id)
                .set_private_ip_addresses(Some(ips))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("UnassignPrivateIpAddresses", e))
        })
    }

    /// `CreateTags` on one resource.
    pub(crate) fn create_tags(
        &self,
        resource_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        let client = self.client();
        let id = resource_id.to_owned();
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        self.run("CreateTags", async move {
            client
                .create_tags()
                .resources(id)
                .set_tags(Some(tags))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("CreateTags", e))
        })
    }

    /// `DeleteTags` of `keys` (whatever their values) on one resource.
    pub(crate) fn delete_tags(&self, resource_id: &str, keys: &[&str]) -> Result<(), Ec2Error> {
        let client = self.client();
        let id = resource_id.to_owned();
        let tags: Vec<Tag> = keys
            .iter()
            .map(|k| Tag::builder().key(*k).build())
            .collect();
        self.run("DeleteTags", async move {
            client
                .delete_tags()
                .resources(id)
                .set_tags(Some(tags))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Ec2Error::sdk("DeleteTags", e))
        })
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn eni_state(eni: &NetworkInterface) -> Result<EniState, Ec2Error> {
    const OP: &str = "DescribeNetworkInterfaces";
    let id = eni
        .network_interface_id()
        .ok_or_else(|| Ec2Error::missing(OP, "NetworkInterfaceId"))?
        .to_owned();
    let mut private_ips: Vec<(bool, Ipv4Addr)> = eni
        .private_ip_addresses()
        .iter()
        .filter_map(|p| {
            let ip = p.private_ip_address()?.parse().ok()?;
            Some((p.primary().unwrap_or(false), ip))
        })
        .collect();
    // Primary first, then the secondary addresses in EC2's order.
    private_ips.sort_by_key(|(primary, _)| !*primary);
    let attachment = match eni.attachment() {
        Some(a) if a.instance_id().is_some() => Some(EniAttachment {
            attachment_id: a.attachment_id().unwrap_or_default().to_owned(),
            instance_id: a.instance_id().unwrap_or_default().to_owned(),
            device_index: a
                .device_index()
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| Ec2Error::missing(OP, &format!("DeviceIndex of {id}")))?,
            network_card: a
                .network_card_index()
                .and_then(|d| u32::try_from(d).ok())
                .unwrap_or(0),
        }),
        _ => None,
    };
    Ok(EniState {
        mac: eni
            .mac_address()
            .ok_or_else(|| Ec2Error::missing(OP, &format!("MacAddress of {id}")))?
            .to_ascii_lowercase(),
        status: eni
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        description: eni.description().unwrap_or_default().to_owned(),
        subnet_id: eni.subnet_id().unwrap_or_default().to_owned(),
        vpc_id: eni.vpc_id().unwrap_or_default().to_owned(),
        private_ips: private_ips.into_iter().map(|(_, ip)| ip).collect(),
        ipv4_prefixes: eni
            .ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix()?.parse().ok())
            .collect(),
        ipv6_addresses: eni
            .ipv6_addresses()
            .iter()
            .filter_map(|a| a.ipv6_address()?.parse::<Ipv6Addr>().ok())
            .collect(),
        ipv6_prefixes: eni
            .ipv6_prefixes()
            .iter()
            .filter_map(|p| p.ipv6_prefix()?.parse().ok())
            .collect(),
        security_groups: eni
            .groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect(),
        attachment,
        tags: tag_map(eni.tag_set()),
        id,
    })
}

/// The IPv6 blocks associated with a subnet: every association but those going or gone
/// (`disassociating`, `disassociated`, `failing`, `failed`). A state EC2 does not name (moto
/// nests its state object one level too deep) counts as associated.
fn subnet_ipv6_cidrs(subnet: &Subnet) -> Vec<Ipv6Net> {
    use SubnetCidrBlockStateCode as Code;
    subnet
        .ipv6_cidr_block_association_set()
        .iter()
        .filter(|a| {
            !matches!(
                a.ipv6_cidr_block_state().and_then(|s| s.state()),
                Some(Code::Disassociating | Code::Disassociated | Code::Failing | Code::Failed)
            )
        })
        .filter_map(|a| a.ipv6_cidr_block()?.parse().ok())
        .collect()
}

/// The IPv6 blocks associated with a VPC, in EC2's order, as [`subnet_ipv6_cidrs`] for a
/// subnet.
fn vpc_ipv6_cidrs(vpc: &Vpc) -> Vec<Ipv6Net> {
    use VpcCidrBlockStateCode as Code;
    vpc.ipv6_cidr_block_association_set()
        .iter()
        .filter(|a| {
            !matches!(
                a.ipv6_cidr_block_state().and_then(|s| s.state()),
                Some(Code::Disassociating | Code::Disassociated | Code::Failing | Code::Failed)
            )
        })
        .filter_map(|a| a.ipv6_cidr_block()?.parse().ok())
        .collect()
}

fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}
