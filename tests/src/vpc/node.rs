//! [`VpcNode`]: an instance of the simulated VPC run as a node. Its namespace's `eth0` is the
//! instance's primary ENI (configured as the node OS would: primary address, default route via
//! the subnet's `.1`, `ip_forward=1`); further ENIs appear when moto shows them attached. ipamd
//! runs inside in EC2 mode against the VPC's moto, with instance metadata from 169.254.169.254
//! and credentials from the instance profile, as on EC2 (or in IMDS-only mode on ENIs the test
//! pre-provisions in moto). Derefs to [`NodeHost`] for ipamd and the plugin.
//!
//! In an IPv6 VPC the instance gets one IPv6 address on its primary ENI, and `eth0` gets what
//! DHCPv6 and router advertisements give an EKS node: that address as a `/128` and a default
//! route via the VPC router's link-local `fe80::1`. The subnet's /64 is never on-link: the node
//! sends everything through the router, as on EC2. IPv6 forwarding is left to the CNI (ipamd's
//! `install-cni`), as on a node.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::VpcError;
use super::ec2::EniRequest;
use super::fabric::{VpcFabric, fabric_diag};
use super::model::{EniState, InstanceInfo, SubnetInfo};
use super::router;
use super::watcher::{Hypervisor, RegisteredNode};
use crate::node::{DiagFn, HostSettings, NodeHost};
use test_support::metadata::NodeDescription;
use test_support::netns::Netns;

/// How ipamd provisions addresses on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpamdMode {
    /// EC2 mode: ipamd creates, attaches and frees ENIs and addresses through EC2 (moto).
    Ec2,
    /// `ENABLE_IMDS_ONLY_MODE=true`: ipamd uses exactly what instance metadata shows.
    ImdsOnly,
}

/// What node to create.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node name (`MY_NODE_NAME`, and the instance's `Name` tag).
    pub name: String,
    /// EC2 instance type (its ENI and address limits are EC2's).
    pub instance_type: String,
    /// How ipamd provisions.
    pub mode: IpamdMode,
    /// `IP_COOLDOWN_PERIOD`.
    pub cooldown: String,
    /// ipamd environment set by the test (`WARM_ENI_TARGET`, `MAX_ENI`, ...).
    pub env: Vec<(String, String)>,
    /// Start ipamd and wait for readiness.
    pub start_ipamd: bool,
    /// How long to wait for ipamd's conflist.
    pub ready_timeout: Duration,
    /// Secondary addresses assigned in moto to the primary ENI before ipamd starts.
    pub primary_secondary_ips: u32,
    /// /28 prefixes delegated in moto to the primary ENI before ipamd starts.
    pub primary_prefixes: u32,
    /// ENIs created (in the node's subnet, without tags) and attached in moto before ipamd
    /// starts (device 1, 2, ...), each with this many secondary addresses.
    pub extra_enis: Vec<u32>,
    /// The subnet of the instance's primary ENI (an id of [`VpcFabric::subnets`]); `None`: the
    /// nodes' subnet. The instance's Availability Zone is that subnet's.
    pub subnet_id: Option<String>,
    /// Runs `ipamd install-cni` from this directory (staged like the image's `/app/cni/bin`)
    /// before ipamd starts, as the aws-node init container does; plugin calls then use the
    /// installed directory.
    pub install_cni_from: Option<PathBuf>,
}

impl NodeSpec {
    /// A node of `instance_type` in EC2 mode with cooldown 0 and ipamd started.
    pub fn new(name: &str, instance_type: &str) -> Self {
        Self {
            name: name.to_owned(),
            instance_type: instance_type.to_owned(),
            mode: IpamdMode::Ec2,
            cooldown: "0".into(),
            env: Vec::new(),
            start_ipamd: true,
            ready_timeout: Duration::from_secs(90),
            primary_secondary_ips: 0,
            primary_prefixes: 0,
            extra_enis: Vec::new(),
            subnet_id: None,
            install_cni_from: None,
        }
    }

    /// Runs `ipamd install-cni --from image_plugins` before ipamd starts (the init container).
    pub fn with_install_cni(mut self, image_plugins: &Path) -> Self {
        self.install_cni_from = Some(image_plugins.to_owned());
        self
    }

    /// Runs the instance in `subnet` (one of [`VpcFabric::subnets`]).
    pub fn in_subnet(mut self, subnet: &SubnetInfo) -> Self {
        self.subnet_id = Some(subnet.id.clone());
        self
    }

    /// Attaches one ENI per entry of `enis` (with that many secondary addresses, in the node's
    /// subnet, without any tag) before ipamd starts, whatever ipamd's mode: ENIs someone else
    /// attached, which ipamd must leave alone with `MANAGE_UNTAGGED_ENI=false`.
    pub fn with_attached_enis(mut self, enis: &[u32]) -> Self {
        self.extra_enis = enis.to_vec();
        self
    }

    /// IMDS-only ipamd on ENIs provisioned in moto now: `primary` secondary addresses on the
    /// primary ENI, and one more ENI per entry of `enis` with that many.
    pub fn imds_only(mut self, primary: u32, enis: &[u32]) -> Self {
        self.mode = IpamdMode::ImdsOnly;
        self.primary_secondary_ips = primary;
        self.extra_enis = enis.to_vec();
        self
    }

    /// IMDS-only ipamd with prefix delegation on `prefixes` /28s delegated in moto now to the
    /// primary ENI.
    pub fn imds_only_prefixes(mut self, prefixes: u32) -> Self {
        self.mode = IpamdMode::ImdsOnly;
        self.primary_prefixes = prefixes;
        self.env("ENABLE_PREFIX_DELEGATION", "true")
    }

    /// Sets one ipamd environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets `IP_COOLDOWN_PERIOD` in seconds.
    pub fn cooldown_seconds(mut self, seconds: u64) -> Self {
        self.cooldown = seconds.to_string();
        self
    }

    /// Builds the node but leaves ipamd to the test.
    pub fn without_ipamd(mut self) -> Self {
        self.start_ipamd = false;
        self
    }
}

/// A running node of a [`VpcFabric`]. Dropping it kills ipamd, removes its ENI links from the
/// router and deletes its namespace; the instance stays in moto until the fabric goes.
#[derive(Debug)]
pub struct VpcNode {
    host: NodeHost,
    instance: InstanceInfo,
    subnet: SubnetInfo,
    hypervisor: Arc<Hypervisor>,
    /// The primary ENI's first IPv6 address, configured on `eth0` at boot (IPv6 VPCs).
    ipv6: Option<Ipv6Addr>,
}

impl Deref for VpcNode {
    type Target = NodeHost;

    fn deref(&self) -> &NodeHost {
        &self.host
    }
}

impl DerefMut for VpcNode {
    fn deref_mut(&mut self) -> &mut NodeHost {
        &mut self.host
    }
}

impl VpcNode {
    pub(super) fn create(fabric: &VpcFabric, spec: NodeSpec) -> Result<Self, VpcError> {
        let ec2 = fabric.ec2();
        let subnet = match &spec.subnet_id {
            Some(id) => fabric.subnet_by_id(id)?,
            None => fabric.subnet().clone(),
        };
        let sg = fabric.security_group().to_owned();
        let ipv6_addresses = u32::from(fabric.options().ipv6 && !subnet.ipv6_cidrs.is_empty());
        let instance = ec2.run_instance(
            &spec.instance_type,
            &subnet,
            &sg,
            &spec.name,
            ipv6_addresses,
        )?;
        if spec.primary_secondary_ips > 0 {
            ec2.assign_private_ips(&instance.primary_eni, spec.primary_secondary_ips)?;
        }
        if spec.primary_prefixes > 0 {
            ec2.assign_prefixes(&instance.primary_eni, spec.primary_prefixes)?;
        }
        for (device, &count) in (1u32..).zip(&spec.extra_enis) {
            let eni = ec2.create_eni(&EniRequest {
                subnet_id: subnet.id.clone(),
                security_groups: vec![sg.clone()],
                secondary_ips: count,
                description: format!("vcni pre-provisioned ENI of {}", instance.id),
                ..EniRequest::default()
            })?;
            ec2.attach_eni(&eni.id, &instance.id, device)?;
        }

        let ns = Netns::new("node")?;
        let hypervisor = Arc::clone(fabric.hypervisor());
        hypervisor.register(RegisteredNode {
            instance: instance.clone(),
            netns: ns.name().to_owned(),
        });
        let diag: DiagFn = {
            let hv = Arc::clone(&hypervisor);
            let moto_log = fabric.dir().join("moto.log");
            let id = instance.id.clone();
            Arc::new(move || {
                let enis: Vec<String> = hv
                    .latest()
                    .enis_of(&id)
                    .iter()
                    .map(|e| {
                        format!(
                            "  eth{} {} {} {:?}",
                            e.device_index().unwrap_or(0),
                            e.id,
                            e.mac,
                            e.private_ips
                        )
                    })
                    .collect();
                format!(
                    "===== instance {id} in moto (last poll) =====\n{}\n{}",
                    enis.join("\n"),
                    fabric_diag(&hv, Some(&moto_log))
                )
            })
        };
        let mut mode_env: Vec<(String, String)> = Vec::new();
        match spec.mode {
            IpamdMode::Ec2 => {
                mode_env.push(("AWS_ENDPOINT_URL_EC2".into(), router::ec2_endpoint()))
            }
            IpamdMode::ImdsOnly => {
                mode_env.push(("ENABLE_IMDS_ONLY_MODE".into(), "true".into()));
            }
        }
        let settings = HostSettings {
            node_name: spec.name.clone(),
            region: fabric.options().region.clone(),
            cooldown: spec.cooldown.clone(),
            mode_env,
            overrides: spec.env.clone(),
            ready_timeout: spec.ready_timeout,
            diag: Some(diag),
        };
        let host = match NodeHost::new(ns, settings) {
            Ok(host) => host,
            Err(err) => {
                hypervisor.unregister(&instance.id);
                return Err(err.into());
            }
        };
        let mut node = Self {
            host,
            instance,
            subnet,
            hypervisor,
            ipv6: None,
        };
        node.ipv6 = node.boot()?;
        if let Some(from) = &spec.install_cni_from {
            node.host.install_cni(from)?;
        }
        if spec.start_ipamd {
            node.host.start_ipamd()?;
        }
        Ok(node)
    }

    /// What the node OS does at boot once the hypervisor plugged the primary ENI in. Returns
    /// the IPv6 address it configured, if the primary ENI has one (an IPv6 VPC).
    fn boot(&self) -> Result<Option<Ipv6Addr>, VpcError> {
        let snapshot = self.hypervisor.sync()?;
        let ns = self.host.ns();
        let eth0 = ns.link("eth0")?.ok_or_else(|| {
            VpcError::Hypervisor(format!(
                "the primary ENI {} of {} did not appear as eth0 in {}",
                self.instance.primary_eni,
                self.instance.id,
                ns.name()
            ))
        })?;
        let mac = eth0["address"].as_str().unwrap_or_default();
        if !mac.eq_ignore_ascii_case(&self.instance.mac) {
            return Err(VpcError::Hypervisor(format!(
                "eth0 of {} has MAC {mac}, the primary ENI has {}",
                self.instance.id, self.instance.mac
            )));
        }
        let address = format!(
            "{}/{}",
            self.instance.private_ip,
            self.subnet.cidr.prefix_len()
        );
        ns.ip(&["addr", "add", &address, "dev", "eth0"])?;
        // DHCPv6's address, only in an IPv6 VPC (the router routes IPv6 only there).
        let ipv6 = if self.hypervisor.routes_ipv6() {
            snapshot
                .enis
                .get(&self.instance.primary_eni)
                .and_then(|eni| eni.ipv6_addresses.first().copied())
        } else {
            None
        };
        if let Some(ip) = ipv6 {
            // EC2 hands out unique addresses: skipping duplicate address detection saves the
            // node a second before its addresses (the link-local too) can be used.
            ns.sysctl("net.ipv6.conf.eth0.accept_dad", "0")?;
            ns.ip(&["addr", "add", &format!("{ip}/128"), "dev", "eth0", "nodad"])?;
        }
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &self.subnet.gateway().to_string(),
            "dev",
            "eth0",
        ])?;
        if ipv6.is_some() {
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &router::ROUTER_LINK_LOCAL.to_string(),
                "dev",
                "eth0",
            ])?;
        }
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(ipv6)
    }

    /// The instance.
    pub fn instance(&self) -> &InstanceInfo {
        &self.instance
    }

    /// The instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance.id
    }

    /// The node's primary address (`eth0`, `local-ipv4`).
    pub fn primary_ip(&self) -> Ipv4Addr {
        self.instance.private_ip
    }

    /// The node's IPv6 address (`eth0`'s `/128`, instance metadata's `ipv6`): the primary ENI's
    /// first IPv6 address, in an IPv6 VPC.
    pub fn primary_ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6
    }

    /// The node's subnet (its primary ENI's).
    pub fn subnet(&self) -> &SubnetInfo {
        &self.subnet
    }

    /// What instance metadata shows the node right now.
    pub fn metadata(&self) -> Option<NodeDescription> {
        self.hypervisor
            .imds_view()
            .node_description(&self.instance.id)
    }

    /// The ENIs attached to the instance, as moto shows them right now (by device index).
    pub fn enis(&self) -> Result<Vec<EniState>, VpcError> {
        Ok(self.hypervisor.ec2().instance_enis(&self.instance.id)?)
    }

    /// The secondary addresses of every attached ENI in moto right now, by ENI id.
    pub fn secondary_ips(&self) -> Result<BTreeMap<String, Vec<Ipv4Addr>>, VpcError> {
        Ok(self
            .enis()?
            .into_iter()
            .map(|e| (e.id.clone(), e.secondary_ips().to_vec()))
            .collect())
    }

    /// The attached ENI that holds `ip` in moto right now.
    pub fn eni_holding(&self, ip: Ipv4Addr) -> Result<Option<EniState>, VpcError> {
        Ok(self
            .enis()?
            .into_iter()
            .find(|e| e.all_addresses().any(|a| a == ip)))
    }
}

impl Drop for VpcNode {
    fn drop(&mut self) {
        self.host.kill_ipamd_if_running();
        self.hypervisor.unregister(&self.instance.id);
        // Take the links away before the namespace goes (errors: the fabric is gone already).
        let _ = self.hypervisor.sync();
    }
}
