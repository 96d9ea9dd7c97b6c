//! What ipamd's integration tests share: a veth between two test namespaces, and the node
//! fixture of the daemon tests ([`World`]: a node namespace with two ENIs behind a VPC peer,
//! the IMDS emulator of `test_support` describing them, and a directory for ipamd's files).

#![allow(dead_code, clippy::unwrap_used)]

pub mod daemon;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

use daemon::{Ipamd, Paths};
use test_support::imds::{self, ImdsServer};
use test_support::metadata::{DEFAULT_ACCOUNT_ID, InterfaceDescription, NodeDescription};
use test_support::netns::Netns;
use test_support::prereqs::require_root;

/// MAC of the node's primary ENI (`eth0`).
pub const MAC0: &str = "02:00:0a:00:00:0a";
/// MAC of the node's secondary ENI (`eth1`).
pub const MAC1: &str = "02:00:0a:00:00:0b";

/// A veth whose `node` end (named `ifname`, with `mac`) is in `node` and whose peer is in `peer`.
pub fn add_veth(node: &Netns, ifname: &str, mac: &str, peer: &Netns, peer_name: &str) {
    node.ip(&[
        "link",
        "add",
        ifname,
        "address",
        mac,
        "type",
        "veth",
        "peer",
        "name",
        peer_name,
        "netns",
        peer.name(),
    ])
    .unwrap();
    peer.ip(&["link", "set", peer_name, "up"]).unwrap();
}

/// Adds routing rules to `ns`, each written as `ip rule add` takes it
/// (`"to 10.0.0.50 lookup main priority 512"`).
pub fn add_rules(ns: &Netns, rules: &[&str]) {
    for rule in rules {
        let mut args = vec!["rule", "add"];
        args.extend(rule.split_whitespace());
        ns.ip(&args).unwrap();
    }
}

/// A node namespace with two ENIs (eth0 primary 10.0.0.10 with .11/.12, eth1 10.0.0.20 with
/// .21/.22) behind a VPC peer, its IMDS, and a directory for ipamd's files.
pub struct World {
    pub node: Netns,
    _vpc: Netns,
    _dir: tempfile::TempDir,
    pub paths: Paths,
    pub imds: ImdsServer,
    node_file: PathBuf,
}

fn eni(mac: &str, id: &str, device: u32, ips: [[u8; 4]; 3]) -> InterfaceDescription {
    InterfaceDescription {
        mac: mac.into(),
        interface_id: id.into(),
        device_number: device,
        network_card: 0,
        subnet_id: "subnet-0a1b2c3d".into(),
        subnet_ipv4_cidr_block: "10.0.0.0/24".parse().unwrap(),
        security_group_ids: vec!["sg-0a1b2c3d".into()],
        local_ipv4s: ips.into_iter().map(Ipv4Addr::from).collect(),
        ipv4_prefixes: Vec::new(),
        ipv6s: Vec::new(),
        ipv6_prefixes: Vec::new(),
        subnet_ipv6_cidr_blocks: Vec::new(),
    }
}

/// The node of [`World`].
pub fn world() -> World {
    require_root().unwrap();
    let node = Netns::new("node").unwrap();
    let vpc = Netns::new("vpc").unwrap();
    add_veth(&node, "eth0", MAC0, &vpc, "v0");
    add_veth(&node, "eth1", MAC1, &vpc, "v1");
    node.ip(&["addr", "add", "10.0.0.10/24", "dev", "eth0"])
        .unwrap();
    node.ip(&["link", "set", "eth0", "up"]).unwrap();
    let description = NodeDescription {
        instance_id: "i-0a1b2c3d4e5f60001".into(),
        instance_type: "m5.large".into(),
        region: "us-west-2".into(),
        availability_zone: "us-west-2a".into(),
        vpc_id: "vpc-0a1b2c3d".into(),
        vpc_ipv4_cidr_blocks: vec!["10.0.0.0/16".parse().unwrap()],
        vpc_ipv6_cidr_blocks: Vec::new(),
        account_id: DEFAULT_ACCOUNT_ID.into(),
        interfaces: vec![
            eni(
                MAC0,
                "eni-0000000000000000a",
                0,
                [[10, 0, 0, 10], [10, 0, 0, 11], [10, 0, 0, 12]],
            ),
            eni(
                MAC1,
                "eni-0000000000000000b",
                1,
                [[10, 0, 0, 20], [10, 0, 0, 21], [10, 0, 0, 22]],
            ),
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let node_file = dir.path().join("node.json");
    description.store(&node_file).unwrap();
    // IMDS listens on the node's own loopback, as ipamd's endpoint override points there.
    let listener = node
        .run_in(|| TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let imds = imds::spawn(listener, &node_file).unwrap();
    let paths = Paths {
        dir: dir.path().to_owned(),
    };
    World {
        node,
        _vpc: vpc,
        _dir: dir,
        paths,
        imds,
        node_file,
    }
}

impl World {
    /// Starts ipamd in instance-metadata-only mode against this node's IMDS, plus `extra`.
    pub fn start(&self, extra: &[(&str, &str)]) -> Ipamd {
        Ipamd::start(&self.node, &self.paths, &self.imds.endpoint(), extra)
    }

    /// Changes what IMDS reports from now on (the emulator re-reads the node file).
    pub fn edit_metadata(&self, edit: impl FnOnce(&mut NodeDescription)) {
        let mut description = NodeDescription::load(&self.node_file).unwrap();
        edit(&mut description);
        description.store(&self.node_file).unwrap();
    }
}
