//! A simulated EC2 node described by a JSON file (docs/contracts.md): a `vpc` namespace playing
//! the VPC router, a `node` namespace whose `eth0`, `eth1`, … are the instance's ENIs, the IMDS
//! emulator listening on the node's own loopback, and ipamd in instance-metadata-only mode
//! inside the node namespace. Everything is torn down on drop. (Nodes of a moto-backed VPC are
//! [`crate::vpc::VpcNode`]; both share [`NodeHost`].)
//!
//! Topology (design.md §5, §8): each ENI is a veth pair; the node end carries the ENI's MAC,
//! the peer is a port of bridge `br0` in the `vpc` namespace, which holds each subnet's gateway
//! (`.1`). The router knows every ENI address as a permanent neighbour (`ip/32 -> ENI MAC`),
//! the way the VPC fabric knows which ENI owns an address. `eth0` is configured like the node OS
//! does (primary address, default route via `.1`, `ip_forward=1`); secondary ENIs are created
//! and left down for ipamd to bring up. Nothing here touches the machine's root namespace.

mod host;
mod inspect;
mod root;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

pub use host::{CONFLIST_NAME, DiagFn, HostSettings, NETWORK_NAME, NodeHost, SimNodeError, ok};
pub(crate) use host::{StateDir, io_err};
pub use inspect::HostState;
use ipnet::Ipv4Net;
pub use root::{Bind, NodeRoot};

use test_support::cleanup;
use test_support::imds::{self, ImdsServer};
use test_support::metadata::{InterfaceDescription, NodeDescription, NodeFileError};
use test_support::netns::Netns;

/// How to build a node and run its ipamd.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The instance and its ENIs.
    pub description: NodeDescription,
    /// `IP_COOLDOWN_PERIOD` for ipamd (a string so invalid values can be tested).
    pub cooldown: String,
    /// `MY_NODE_NAME`.
    pub node_name: String,
    /// Extra environment for ipamd (overrides the defaults).
    pub ipamd_env: Vec<(String, String)>,
    /// Start ipamd and wait for readiness as part of [`SimNode::start`].
    pub start_ipamd: bool,
    /// How long to wait for ipamd's conflist.
    pub ready_timeout: Duration,
}

impl NodeOptions {
    /// Defaults: cooldown 0, ipamd started, 60 s readiness timeout.
    pub fn new(description: NodeDescription) -> Self {
        Self {
            node_name: format!("node-{}", description.instance_id),
            description,
            cooldown: "0".into(),
            ipamd_env: Vec::new(),
            start_ipamd: true,
            ready_timeout: Duration::from_secs(60),
        }
    }

    /// Sets `IP_COOLDOWN_PERIOD` in seconds.
    pub fn cooldown_seconds(mut self, seconds: u64) -> Self {
        self.cooldown = seconds.to_string();
        self
    }

    /// Adds or overrides one ipamd environment variable.
    pub fn ipamd_env(mut self, key: &str, value: &str) -> Self {
        self.ipamd_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Builds the namespaces and the emulator but leaves ipamd to the test.
    pub fn without_ipamd(mut self) -> Self {
        self.start_ipamd = false;
        self
    }
}

/// Describes a node whose subnet is 10.0.0.0/24 (VPC 10.0.0.0/16), with one ENI per entry of
/// `secondary_ips`: ENI `i` has primary address `10.0.0.(10 + 10 i)`, then that many secondary
/// addresses following it, MAC `02:00:0a:00:00:<primary's last octet in hex>`.
pub fn standard_node(secondary_ips: &[u8]) -> NodeDescription {
    let interfaces = secondary_ips
        .iter()
        .zip(0u8..)
        .map(|(&count, device)| {
            let base = 10 + 10 * device;
            InterfaceDescription {
                mac: format!("02:00:0a:00:00:{base:02x}"),
                interface_id: format!("eni-0a1b2c3d4e5f6{:04x}", u16::from(base)),
                device_number: u32::from(device),
                network_card: 0,
                subnet_id: "subnet-0a1b2c3d".into(),
                subnet_ipv4_cidr_block: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 24)
                    .unwrap_or_default(),
                security_group_ids: vec!["sg-0a1b2c3d".into()],
                local_ipv4s: (0..=count)
                    .map(|k| Ipv4Addr::new(10, 0, 0, base.saturating_add(k)))
                    .collect(),
                ipv4_prefixes: Vec::new(),
                ipv6s: Vec::new(),
                ipv6_prefixes: Vec::new(),
                subnet_ipv6_cidr_blocks: Vec::new(),
            }
        })
        .collect();
    NodeDescription {
        instance_id: format!("i-0a1b2c3d{:09x}", std::process::id()),
        instance_type: "m5.large".into(),
        region: "us-west-2".into(),
        availability_zone: "us-west-2a".into(),
        vpc_id: "vpc-0a1b2c3d".into(),
        vpc_ipv4_cidr_blocks: vec![
            Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap_or_default(),
        ],
        vpc_ipv6_cidr_blocks: Vec::new(),
        account_id: test_support::metadata::DEFAULT_ACCOUNT_ID.into(),
        interfaces,
    }
}

/// One running simulated node. Dropping it kills ipamd, stops the emulator and deletes the
/// namespaces and the state directory. Derefs to its [`NodeHost`] (ipamd, plugin, queries).
#[derive(Debug)]
pub struct SimNode {
    host: NodeHost,
    imds: Option<ImdsServer>,
    vpc_ns: Netns,
    options: NodeOptions,
    description: NodeDescription,
    imds_endpoint: String,
}

impl Deref for SimNode {
    type Target = NodeHost;

    fn deref(&self) -> &NodeHost {
        &self.host
    }
}

impl DerefMut for SimNode {
    fn deref_mut(&mut self) -> &mut NodeHost {
        &mut self.host
    }
}

impl SimNode {
    /// Builds the node and (unless told otherwise) starts ipamd and waits until it is ready.
    pub fn start(options: NodeOptions) -> Result<Self, SimNodeError> {
        cleanup::install_signal_cleanup();
        options.description.validate()?;
        let vpc_ns = Netns::new("vpc")?;
        let node_ns = Netns::new("node")?;
        let settings = HostSettings {
            node_name: options.node_name.clone(),
            region: options.description.region.clone(),
            cooldown: options.cooldown.clone(),
            mode_env: vec![
                ("ENABLE_IMDS_ONLY_MODE".into(), "true".into()),
                // Harmless dummies: IMDS-only mode makes no signed calls, and nothing may try
                // real AWS.
                ("AWS_ACCESS_KEY_ID".into(), "AKIAVCNITESTS0000000".into()),
                (
                    "AWS_SECRET_ACCESS_KEY".into(),
                    "vcni-tests-not-a-secret".into(),
                ),
            ],
            overrides: options.ipamd_env.clone(),
            ready_timeout: options.ready_timeout,
            diag: None,
        };
        let host = NodeHost::new(node_ns, settings)?;
        let mut node = Self {
            host,
            imds: None,
            vpc_ns,
            description: options.description.clone(),
            options,
            imds_endpoint: String::new(),
        };
        node.description.store(&node.node_file())?;
        node.build_fabric()?;
        node.start_imds()?;
        if node.options.start_ipamd {
            node.host.start_ipamd()?;
        }
        Ok(node)
    }

    fn build_fabric(&self) -> Result<(), SimNodeError> {
        let vpc = &self.vpc_ns;
        vpc.ip(&["link", "add", "br0", "type", "bridge"])?;
        let subnets: BTreeSet<Ipv4Net> = self
            .description
            .interfaces
            .iter()
            .map(|e| e.subnet_ipv4_cidr_block)
            .collect();
        for subnet in &subnets {
            let gw = Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1));
            vpc.ip(&[
                "addr",
                "add",
                &format!("{gw}/{}", subnet.prefix_len()),
                "dev",
                "br0",
            ])?;
        }
        vpc.ip(&["link", "set", "br0", "up"])?;

        let mut enis: Vec<&InterfaceDescription> = self.description.interfaces.iter().collect();
        enis.sort_by_key(|e| e.device_number);
        for eni in enis {
            let ifname = format!("eth{}", eni.device_number);
            let peer = format!("enid{}", eni.device_number);
            self.host.ns().ip(&[
                "link",
                "add",
                &ifname,
                "address",
                &eni.mac,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                vpc.name(),
            ])?;
            vpc.ip(&["link", "set", &peer, "master", "br0", "up"])?;
        }
        self.sync_router_neighbours(None)?;

        // The node OS configures the primary ENI (DHCP on AWS) and enables forwarding.
        let primary = self
            .description
            .primary_interface()
            .ok_or_else(|| NodeFileError::Invalid("no primary ENI".into()))?;
        let primary_ip = primary
            .primary_ip()
            .ok_or_else(|| NodeFileError::Invalid("primary ENI has no address".into()))?;
        let prefix = primary.subnet_ipv4_cidr_block.prefix_len();
        self.host.ns().ip(&[
            "addr",
            "add",
            &format!("{primary_ip}/{prefix}"),
            "dev",
            "eth0",
        ])?;
        self.host.ns().ip(&["link", "set", "eth0", "up"])?;
        self.host.ns().ip(&[
            "route",
            "add",
            "default",
            "via",
            &primary.gateway().to_string(),
            "dev",
            "eth0",
        ])?;
        self.host.ns().sysctl("net.ipv4.ip_forward", "1")?;
        Ok(())
    }

    /// Makes the router's neighbour table match the ENI addresses of the description
    /// (`old` = the previous description, whose vanished addresses are removed).
    fn sync_router_neighbours(&self, old: Option<&NodeDescription>) -> Result<(), SimNodeError> {
        let wanted: BTreeSet<(Ipv4Addr, String)> = self
            .description
            .interfaces
            .iter()
            .flat_map(|e| e.local_ipv4s.iter().map(|ip| (*ip, e.mac.clone())))
            .collect();
        if let Some(old) = old {
            for eni in &old.interfaces {
                for ip in &eni.local_ipv4s {
                    if !wanted.iter().any(|(w, _)| w == ip) {
                        self.vpc_ns
                            .ip(&["neigh", "del", &ip.to_string(), "dev", "br0"])?;
                    }
                }
            }
        }
        for (ip, mac) in &wanted {
            self.vpc_ns.ip(&[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                mac,
                "dev",
                "br0",
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }

    fn start_imds(&mut self) -> Result<(), SimNodeError> {
        // Loopback is per namespace: open the listener inside the node so ipamd reaches it on
        // 127.0.0.1; the socket keeps its namespace when served from this process's thread.
        let listener = self
            .host
            .ns()
            .run_in(|| TcpListener::bind("127.0.0.1:0"))?
            .map_err(io_err("cannot listen on the node's loopback"))?;
        let server = imds::spawn(listener, self.node_file())?;
        self.imds_endpoint = server.endpoint();
        self.host
            .set_mode_env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &self.imds_endpoint);
        self.imds = Some(server);
        Ok(())
    }

    /// The VPC router's namespace.
    pub fn vpc(&self) -> &Netns {
        &self.vpc_ns
    }

    /// The current instance description.
    pub fn description(&self) -> &NodeDescription {
        &self.description
    }

    /// The options the node was started with.
    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    /// The emulator's endpoint as ipamd sees it (`http://127.0.0.1:<port>` in the node).
    pub fn imds_endpoint(&self) -> &str {
        &self.imds_endpoint
    }

    /// The JSON node file the emulator serves.
    pub fn node_file(&self) -> PathBuf {
        self.dir().join("node.json")
    }

    /// Edits the instance description (e.g. adds or removes secondary addresses, as EC2 does
    /// when someone calls AssignPrivateIpAddresses); the emulator serves the new state at once
    /// and the router learns the new addresses.
    pub fn update_description(
        &mut self,
        edit: impl FnOnce(&mut NodeDescription),
    ) -> Result<(), SimNodeError> {
        let old = self.description.clone();
        let mut new = old.clone();
        edit(&mut new);
        new.validate()?;
        new.store(&self.node_file())?;
        self.description = new;
        self.sync_router_neighbours(Some(&old))
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.host.kill_ipamd_if_running();
        if let Some(server) = self.imds.take() {
            server.stop();
        }
        // The namespaces and the state directory go with the remaining fields.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_node_is_valid_and_shaped_as_documented() {
        let d = standard_node(&[4, 3]);
        d.validate().unwrap();
        let eth1 = d.interface_by_device(1).unwrap();
        assert_eq!(eth1.mac, "02:00:0a:00:00:14");
        assert_eq!(eth1.primary_ip(), Some(Ipv4Addr::new(10, 0, 0, 20)));
        assert_eq!(eth1.secondary_ips().len(), 3);
        assert_eq!(eth1.route_table(), 2);
        assert_eq!(d.all_secondary_ips().len(), 7);
        assert_eq!(d.local_ipv4(), Some(Ipv4Addr::new(10, 0, 0, 10)));
    }
}
