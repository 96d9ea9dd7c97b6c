//! A simulated EC2 node: a `vpc` namespace playing the VPC router, a `node` namespace whose
//! `eth0`, `eth1`, … are the instance's ENIs, the IMDS emulator listening on the node's own
//! loopback, and ipamd running inside the node namespace. Everything is torn down on drop.
//!
//! Topology (design.md §5, §8): each ENI is a veth pair; the node end carries the ENI's MAC,
//! the peer is a port of bridge `br0` in the `vpc` namespace, which holds each subnet's gateway
//! (`.1`). The router knows every ENI address as a permanent neighbour (`ip/32 -> ENI MAC`),
//! the way the VPC fabric knows which ENI owns an address. `eth0` is configured like the node OS
//! does (primary address, default route via `.1`, `ip_forward=1`); secondary ENIs are created
//! and left down for ipamd to bring up. Nothing here touches the machine's root namespace.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use ipamd::rpc::PoolStatusReply;
use ipnet::Ipv4Net;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::bins::{self, BinError};
use crate::cleanup;
use crate::cni::{CniError, CniOutcome, CniRequest, Pod};
use crate::imds::{self, ImdsError, ImdsServer};
use crate::ipamd_client::{self, IpamdClientError};
use crate::metadata::{InterfaceDescription, MetadataError, NodeDescription};
use crate::netns::{Netns, NetnsError, NetnsProcess, PingOutcome};

/// Name of the conflist ipamd writes when ready.
pub const CONFLIST_NAME: &str = "10-aws.conflist";
/// The network name in that conflist.
pub const NETWORK_NAME: &str = "aws-cni";
/// The pod-side gateway every pod routes through.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Env var that keeps node state directories (logs, checkpoint) after the test, for debugging.
pub const KEEP_DIRS_ENV: &str = "VCNI_KEEP_DIRS";

/// Errors of building or driving a simulated node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Namespace or command failure.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A program under test or a tool is missing.
    #[error(transparent)]
    Bin(#[from] BinError),
    /// The node description is unusable.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The IMDS emulator did not start.
    #[error(transparent)]
    Imds(#[from] ImdsError),
    /// Running the plugin failed.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// Asking ipamd failed.
    #[error("{source}\n{diag}")]
    Client {
        /// The client error.
        source: IpamdClientError,
        /// Logs.
        diag: String,
    },
    /// A file of the node's state directory could not be used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// ipamd exited while it should be running.
    #[error("ipamd exited ({status}) before becoming ready\n{diag}")]
    IpamdExited {
        /// How it exited.
        status: String,
        /// Its logs.
        diag: String,
    },
    /// ipamd did not write its conflist in time.
    #[error("ipamd did not write {conflist} within {timeout:?}\n{diag}")]
    NotReady {
        /// The conflist path waited for.
        conflist: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// Its logs.
        diag: String,
    },
    /// ipamd is not running (stopped or killed) for an operation that needs it.
    #[error("ipamd is not running")]
    IpamdNotRunning,
    /// The conflist ipamd wrote is not what the contract says.
    #[error("conflist {path} is unusable: {reason}")]
    Conflist {
        /// The conflist.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A plugin call that had to succeed failed.
    #[error("{what} failed:\n{outcome}\n{diag}")]
    PluginFailed {
        /// What was attempted.
        what: String,
        /// The plugin's output.
        outcome: String,
        /// Logs.
        diag: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

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
        account_id: crate::metadata::DEFAULT_ACCOUNT_ID.into(),
        interfaces,
    }
}

enum StateDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.path())
    }
}

impl StateDir {
    fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Kept(p) => p,
        }
    }
}

/// One running simulated node. Dropping it kills ipamd, stops the emulator and deletes the
/// namespaces and the state directory.
#[derive(Debug)]
pub struct SimNode {
    ipamd: Option<NetnsProcess>,
    imds: Option<ImdsServer>,
    node_ns: Netns,
    vpc_ns: Netns,
    dir: StateDir,
    options: NodeOptions,
    description: NodeDescription,
    imds_endpoint: String,
    ipamd_bin: PathBuf,
    cni_path: String,
}

impl SimNode {
    /// Builds the node and (unless told otherwise) starts ipamd and waits until it is ready.
    pub fn start(options: NodeOptions) -> Result<Self, NodeError> {
        bins::require_node_prerequisites()?;
        cleanup::install_signal_cleanup();
        options.description.validate()?;
        let ipamd_bin = bins::ipamd()?;
        let cni_path = bins::cni_path()?;

        let temp = tempfile::Builder::new()
            .prefix("vcni-node-")
            .tempdir()
            .map_err(io_err("cannot create the node's state directory"))?;
        let dir = if std::env::var_os(KEEP_DIRS_ENV).is_some() {
            StateDir::Kept(temp.keep())
        } else {
            cleanup::register_dir(temp.path());
            StateDir::Temp(temp)
        };
        let vpc_ns = Netns::new("vpc")?;
        let node_ns = Netns::new("node")?;
        let mut node = Self {
            ipamd: None,
            imds: None,
            node_ns,
            vpc_ns,
            dir,
            description: options.description.clone(),
            options,
            imds_endpoint: String::new(),
            ipamd_bin,
            cni_path,
        };
        fs::create_dir_all(node.conflist_dir()).map_err(io_err("cannot create net.d"))?;
        node.description.store(&node.node_file())?;
        node.build_fabric()?;
        node.start_imds()?;
        if node.options.start_ipamd {
            node.start_ipamd()?;
        }
        Ok(node)
    }

    fn build_fabric(&self) -> Result<(), NodeError> {
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
            self.node_ns.ip(&[
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
            .ok_or_else(|| MetadataError::Invalid("no primary ENI".into()))?;
        let primary_ip = primary
            .primary_ip()
            .ok_or_else(|| MetadataError::Invalid("primary ENI has no address".into()))?;
        let prefix = primary.subnet_ipv4_cidr_block.prefix_len();
        self.node_ns.ip(&[
            "addr",
            "add",
            &format!("{primary_ip}/{prefix}"),
            "dev",
            "eth0",
        ])?;
        self.node_ns.ip(&["link", "set", "eth0", "up"])?;
        self.node_ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &primary.gateway().to_string(),
            "dev",
            "eth0",
        ])?;
        self.node_ns.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(())
    }

    /// Makes the router's neighbour table match the ENI addresses of the description
    /// (`old` = the previous description, whose vanished addresses are removed).
    fn sync_router_neighbours(&self, old: Option<&NodeDescription>) -> Result<(), NodeError> {
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

    fn start_imds(&mut self) -> Result<(), NodeError> {
        // Loopback is per namespace: open the listener inside the node so ipamd reaches it on
        // 127.0.0.1; the socket keeps its namespace when served from this process's thread.
        let listener = self
            .node_ns
            .run_in(|| TcpListener::bind("127.0.0.1:0"))?
            .map_err(io_err("cannot listen on the node's loopback"))?;
        let server = imds::spawn(listener, self.node_file())?;
        self.imds_endpoint = server.endpoint();
        self.imds = Some(server);
        Ok(())
    }

    /// The node's namespace (where ipamd, the plugin and the host veths live).
    pub fn ns(&self) -> &Netns {
        &self.node_ns
    }

    /// The VPC router's namespace.
    pub fn vpc(&self) -> &Netns {
        &self.vpc_ns
    }

    /// The node's state directory (socket, checkpoint, net.d, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
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
    ) -> Result<(), NodeError> {
        let old = self.description.clone();
        let mut new = old.clone();
        edit(&mut new);
        new.validate()?;
        new.store(&self.node_file())?;
        self.description = new;
        self.sync_router_neighbours(Some(&old))
    }

    /// ipamd's `HOST_CNI_CONFDIR_PATH`.
    pub fn conflist_dir(&self) -> PathBuf {
        self.dir().join("net.d")
    }

    /// The conflist ipamd writes when ready.
    pub fn conflist_path(&self) -> PathBuf {
        self.conflist_dir().join(CONFLIST_NAME)
    }

    /// ipamd's gRPC socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir().join("ipamd.sock")
    }

    /// ipamd's checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir().join("ipam.json")
    }

    /// ipamd's log file.
    pub fn ipamd_log_path(&self) -> PathBuf {
        self.dir().join("ipamd.log")
    }

    /// ipamd's stdout and stderr.
    pub fn ipamd_output_path(&self) -> PathBuf {
        self.dir().join("ipamd.out")
    }

    /// The plugin's log file (`pluginLogFile` of the written conflist).
    pub fn plugin_log_path(&self) -> PathBuf {
        self.dir().join("plugin.log")
    }

    /// `CNI_PATH` for plugin calls: aws-cni's directory, then /usr/lib/cni.
    pub fn cni_path(&self) -> &str {
        &self.cni_path
    }

    /// The environment ipamd runs with (before `extra`).
    pub fn ipamd_env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let d = |p: PathBuf| p.to_string_lossy().into_owned();
        let mut env: Vec<(String, String)> = vec![
            ("ENABLE_IMDS_ONLY_MODE".into(), "true".into()),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
                self.imds_endpoint.clone(),
            ),
            ("AWS_VPC_K8S_CNI_IPAMD_SOCKET".into(), d(self.socket_path())),
            (
                "AWS_VPC_K8S_CNI_BACKING_STORE".into(),
                d(self.checkpoint_path()),
            ),
            ("HOST_CNI_CONFDIR_PATH".into(), d(self.conflist_dir())),
            ("AWS_VPC_K8S_CNI_LOG_FILE".into(), d(self.ipamd_log_path())),
            ("AWS_VPC_K8S_CNI_LOGLEVEL".into(), "DEBUG".into()),
            (
                "AWS_VPC_K8S_PLUGIN_LOG_FILE".into(),
                d(self.plugin_log_path()),
            ),
            ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL".into(), "DEBUG".into()),
            ("MY_NODE_NAME".into(), self.options.node_name.clone()),
            ("AWS_REGION".into(), self.description.region.clone()),
            ("IP_COOLDOWN_PERIOD".into(), self.options.cooldown.clone()),
            // Harmless dummies: IMDS-only mode makes no signed calls, and nothing may try real AWS.
            ("AWS_ACCESS_KEY_ID".into(), "AKIAVCNITESTS0000000".into()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                "vcni-tests-not-a-secret".into(),
            ),
            ("HOME".into(), d(self.dir().to_owned())),
            ("RUST_BACKTRACE".into(), "1".into()),
        ];
        let overrides = self
            .options
            .ipamd_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
        for (k, v) in overrides {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        env
    }

    /// Starts ipamd with `extra` environment without waiting for readiness (config-error
    /// tests); the returned process is owned by the caller.
    pub fn spawn_ipamd_process(&self, extra: &[(&str, &str)]) -> Result<NetnsProcess, NodeError> {
        let env = self.ipamd_env(extra);
        let bin = self.ipamd_bin.to_string_lossy().into_owned();
        Ok(NetnsProcess::spawn(
            &self.node_ns,
            Path::new(&bin),
            &[],
            &env,
            &self.ipamd_output_path(),
        )?)
    }

    /// Starts ipamd and waits until it wrote its conflist (a fresh one: any previous conflist
    /// is removed first, since ipamd rewrites it on every start).
    pub fn start_ipamd(&mut self) -> Result<(), NodeError> {
        if self.ipamd_running() {
            return Ok(());
        }
        match fs::remove_file(self.conflist_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove the old conflist")(e)),
        }
        let process = self.spawn_ipamd_process(&[])?;
        self.ipamd = Some(process);
        self.wait_ready(self.options.ready_timeout)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), NodeError> {
        let deadline = Instant::now() + timeout;
        let conflist = self.conflist_path();
        loop {
            if let Ok(text) = fs::read_to_string(&conflist)
                && serde_json::from_str::<Value>(&text).is_ok()
            {
                return Ok(());
            }
            let exited = self.ipamd.as_mut().and_then(NetnsProcess::try_wait);
            if let Some(status) = exited {
                self.ipamd = None;
                return Err(NodeError::IpamdExited {
                    status: NetnsProcess::describe_status(status),
                    diag: self.diag(),
                });
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NotReady {
                    conflist,
                    timeout,
                    diag: self.diag(),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether ipamd is running.
    pub fn ipamd_running(&mut self) -> bool {
        match self.ipamd.as_mut() {
            Some(p) => p.try_wait().is_none(),
            None => false,
        }
    }

    /// ipamd's pid.
    pub fn ipamd_pid(&self) -> Option<i32> {
        self.ipamd.as_ref().map(NetnsProcess::pid)
    }

    /// Sends SIGTERM and waits up to `timeout` for ipamd to exit; returns its exit status.
    pub fn stop_ipamd(&mut self, timeout: Duration) -> Result<ExitStatus, NodeError> {
        let mut process = self.ipamd.take().ok_or(NodeError::IpamdNotRunning)?;
        process.signal(Signal::SIGTERM)?;
        match process.wait_timeout(timeout) {
            Some(status) => Ok(status),
            None => {
                let diag = self.diag();
                process.kill();
                Err(NodeError::IpamdExited {
                    status: format!("still running {timeout:?} after SIGTERM (killed)"),
                    diag,
                })
            }
        }
    }

    /// `kill -9` of ipamd (no chance to clean up, like a node crash or OOM kill).
    pub fn kill_ipamd(&mut self) -> Result<(), NodeError> {
        let mut process = self.ipamd.take().ok_or(NodeError::IpamdNotRunning)?;
        process.kill();
        Ok(())
    }

    /// SIGTERM, wait, start again and wait for readiness.
    pub fn restart_ipamd(&mut self) -> Result<(), NodeError> {
        if self.ipamd_running() {
            self.stop_ipamd(Duration::from_secs(15))?;
        }
        self.start_ipamd()
    }

    /// The conflist ipamd wrote.
    pub fn conflist(&self) -> Result<Value, NodeError> {
        let path = self.conflist_path();
        let text =
            fs::read_to_string(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| NodeError::Conflist {
            path,
            reason: e.to_string(),
        })
    }

    /// What a runtime puts on the plugin's stdin: the conflist's `aws-cni` entry with the
    /// list's `name` and the given `cniVersion`, plus `prevResult` when given.
    pub fn plugin_config(
        &self,
        cni_version: &str,
        prev_result: Option<&Value>,
    ) -> Result<Value, NodeError> {
        let list = self.conflist()?;
        let path = self.conflist_path();
        let entry = list["plugins"]
            .as_array()
            .and_then(|p| p.iter().find(|e| e["type"] == "aws-cni"))
            .cloned()
            .ok_or_else(|| NodeError::Conflist {
                path: path.clone(),
                reason: "no plugin of type aws-cni".into(),
            })?;
        let Value::Object(mut conf) = entry else {
            return Err(NodeError::Conflist {
                path,
                reason: "the aws-cni entry is not an object".into(),
            });
        };
        conf.insert("cniVersion".into(), Value::from(cni_version));
        conf.insert("name".into(), list["name"].clone());
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        Ok(Value::Object(conf))
    }

    /// Execs the plugin inside the node namespace, as a runtime on the node would.
    pub fn exec_plugin(&self, request: &CniRequest) -> Result<CniOutcome, NodeError> {
        let plugin = bins::aws_cni()?;
        Ok(request.run_in(&self.node_ns, plugin, &self.cni_path)?)
    }

    /// Direct-exec `command` for `pod` with the written conflist at `cni_version`.
    pub fn cni(
        &self,
        command: &str,
        pod: &Pod,
        cni_version: &str,
        prev_result: Option<&Value>,
    ) -> Result<CniOutcome, NodeError> {
        let config = self.plugin_config(cni_version, prev_result)?;
        self.exec_plugin(&CniRequest::for_pod(command, &config, pod))
    }

    /// ADD that must succeed; returns the result JSON.
    pub fn add_pod(&self, pod: &Pod, cni_version: &str) -> Result<Value, NodeError> {
        let out = self.cni("ADD", pod, cni_version, None)?;
        match (&out.json, out.success()) {
            (Some(result), true) => Ok(result.clone()),
            _ => Err(NodeError::PluginFailed {
                what: format!("ADD of pod {}/{}", pod.namespace, pod.name),
                outcome: out.describe(),
                diag: self.diag(),
            }),
        }
    }

    /// DEL that must succeed (with the ADD result as prevResult, as runtimes send it).
    pub fn del_pod(
        &self,
        pod: &Pod,
        cni_version: &str,
        prev_result: Option<&Value>,
    ) -> Result<(), NodeError> {
        let out = self.cni("DEL", pod, cni_version, prev_result)?;
        if out.success() {
            Ok(())
        } else {
            Err(NodeError::PluginFailed {
                what: format!("DEL of pod {}/{}", pod.namespace, pod.name),
                outcome: out.describe(),
                diag: self.diag(),
            })
        }
    }

    /// ipamd's pool counters.
    pub fn pool_status(&self) -> Result<PoolStatusReply, NodeError> {
        ipamd_client::pool_status(&self.socket_path()).map_err(|source| NodeError::Client {
            source,
            diag: self.diag(),
        })
    }

    /// ipamd's answer to CheckNetwork for `pod` (`None`: not assigned).
    pub fn ipamd_assignment(&self, pod: &Pod) -> Result<Option<Ipv4Addr>, NodeError> {
        let reply = ipamd_client::check_network(
            &self.socket_path(),
            NETWORK_NAME,
            &pod.container_id,
            &pod.ifname,
        )
        .map_err(|source| NodeError::Client {
            source,
            diag: self.diag(),
        })?;
        Ok(reply.and_then(|r| {
            r.ip_allocation_metadata
                .first()
                .and_then(|m| m.i_pv4_addr.parse().ok())
        }))
    }

    /// ipamd's checkpoint file as JSON.
    pub fn checkpoint(&self) -> Result<Value, NodeError> {
        let path = self.checkpoint_path();
        let text =
            fs::read_to_string(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| NodeError::Io {
            context: format!("checkpoint {} is not JSON", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// The IPv4 addresses the checkpoint lists.
    pub fn checkpoint_ips(&self) -> Result<BTreeSet<Ipv4Addr>, NodeError> {
        Ok(self.checkpoint()?["allocations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|al| al["ipv4"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The node's rules that name `ip` (as destination or source).
    pub fn rules_for(&self, ip: Ipv4Addr) -> Result<Vec<Value>, NodeError> {
        let ip = ip.to_string();
        let with_len = format!("{ip}/32");
        Ok(self
            .node_ns
            .rules()?
            .into_iter()
            .filter(|r| {
                [&r["src"], &r["dst"]]
                    .iter()
                    .any(|v| v.as_str() == Some(&ip) || v.as_str() == Some(&with_len))
            })
            .collect())
    }

    /// The node's main-table routes whose destination is `ip`.
    pub fn routes_to(&self, ip: Ipv4Addr) -> Result<Vec<Value>, NodeError> {
        let ip = ip.to_string();
        let with_len = format!("{ip}/32");
        Ok(self
            .node_ns
            .routes("main")?
            .into_iter()
            .filter(|r| r["dst"].as_str() == Some(&ip) || r["dst"].as_str() == Some(&with_len))
            .collect())
    }

    /// A snapshot of what pods leave on the node: link names, main routes and rules.
    pub fn host_state(&self) -> Result<HostState, NodeError> {
        let mut links: Vec<String> = self.node_ns.link_names()?;
        links.sort();
        let routes = self
            .node_ns
            .routes("all")?
            .iter()
            .map(Value::to_string)
            .collect();
        let rules = self.node_ns.rules()?.iter().map(Value::to_string).collect();
        Ok(HostState {
            links,
            routes,
            rules,
        })
    }

    /// Pings `dst` from `from`.
    pub fn ping(&self, from: &Netns, dst: impl Into<IpAddr>) -> Result<PingOutcome, NodeError> {
        Ok(from.ping(dst.into())?)
    }

    /// ipamd's log, its stdout/stderr and the plugin log (tails), for failure messages.
    pub fn diag(&self) -> String {
        let mut out = format!(
            "===== ipamd log ({}) =====\n{}\n===== ipamd stdout/stderr =====\n{}\n===== plugin log =====\n{}",
            self.ipamd_log_path().display(),
            tail(&self.ipamd_log_path(), 60),
            tail(&self.ipamd_output_path(), 30),
            tail(&self.plugin_log_path(), 40)
        );
        for warning in bins::staleness_warnings() {
            out.push_str("\n===== WARNING: stale binary: ");
            out.push_str(&warning);
        }
        out
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        if let Some(mut p) = self.ipamd.take() {
            p.kill();
        }
        if let Some(server) = self.imds.take() {
            server.stop();
        }
        if let StateDir::Temp(t) = &self.dir {
            cleanup::unregister_dir(t.path());
        }
        // The namespaces and the temp dir go with the remaining fields.
    }
}

/// Links, routes and rules of a node, compared before and after operations that must leave
/// nothing behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// Link names, sorted.
    pub links: Vec<String>,
    /// Routes of every table (JSON text).
    pub routes: BTreeSet<String>,
    /// Rules (JSON text).
    pub rules: BTreeSet<String>,
}

impl HostState {
    /// What differs from `other`, or `None` when equal.
    pub fn diff(&self, other: &HostState) -> Option<String> {
        if self == other {
            return None;
        }
        let links_a: BTreeSet<&String> = self.links.iter().collect();
        let links_b: BTreeSet<&String> = other.links.iter().collect();
        Some(format!(
            "links only before: {:?}, links only after: {:?}\nroutes only before: {:?}\nroutes only after: {:?}\nrules only before: {:?}\nrules only after: {:?}",
            links_a.difference(&links_b).collect::<Vec<_>>(),
            links_b.difference(&links_a).collect::<Vec<_>>(),
            self.routes.difference(&other.routes).collect::<Vec<_>>(),
            other.routes.difference(&self.routes).collect::<Vec<_>>(),
            self.rules.difference(&other.rules).collect::<Vec<_>>(),
            other.rules.difference(&self.rules).collect::<Vec<_>>(),
        ))
    }
}

/// The last `lines` lines of a text file (at most 64 KiB read), or a note that it is missing.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("({} does not exist)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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

    #[test]
    fn host_state_diff_names_the_new_link() {
        let a = HostState {
            links: vec!["eth0".into()],
            routes: BTreeSet::new(),
            rules: BTreeSet::new(),
        };
        let mut b = a.clone();
        b.links.push("eni123".into());
        assert!(a.diff(&a).is_none());
        assert!(a.diff(&b).unwrap().contains("eni123"));
    }
}
