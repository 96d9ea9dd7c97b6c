//! A fake ipamd for the plugin's tests: the real gRPC contract (the contract crate's server,
//! generated from contract/proto/rpc.proto) over a Unix socket, with an honest in-memory pool:
//! a key keeps its address, released addresses return to the pool, exhaustion and "not ready"
//! are reported with the contract's status codes. It also records, at each DelNetwork, how many
//! priority-512/1536 rules still named the released address in the host namespace, which proves
//! the plugin's teardown-before-release order. An IPv6 address in the pool is answered as ipamd's
//! IPv6 mode answers it: `IPv6Addr` set, `IPv4Addr` empty.
#![allow(clippy::unwrap_used, missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

pub use vpc_cni_contract::rpc;

use rpc::cni_backend_server::{CniBackend, CniBackendServer};

type Key = (String, String, String);

#[derive(Default)]
pub struct State {
    /// Free addresses with their route table.
    pub free: Vec<(IpAddr, i32)>,
    pub assigned: HashMap<Key, (IpAddr, i32)>,
    pub ready: bool,
    /// PodVlanId returned by AddNetwork (non-zero = branch ENI).
    pub pod_vlan_id: i32,
    pub add_requests: Vec<rpc::AddNetworkRequest>,
    pub del_requests: Vec<rpc::DelNetworkRequest>,
    /// (address, rules naming it in the host namespace) at each release by DelNetwork.
    pub rules_at_release: Vec<(IpAddr, usize)>,
    /// Edits AddNetwork's allocation before it is sent (a reply ipamd should never give).
    pub mangle_add_reply: Option<fn(&mut rpc::IpAllocationMetadata)>,
    /// Host namespace to inspect at release time.
    pub host_ns: Option<String>,
}

impl State {
    /// Ends `key`'s assignment; its address (with its route table) returns to the pool.
    fn release(&mut self, key: &Key) -> Option<(IpAddr, i32)> {
        let released = self.assigned.remove(key)?;
        self.free.push(released);
        Some(released)
    }
}

#[derive(Clone)]
struct Service(Arc<Mutex<State>>);

/// The ENI every address of the fake pool belongs to.
const ENI_ID: &str = "eni-0000000000000000a";

fn key(network_name: &str, container_id: &str, if_name: &str) -> Key {
    (
        network_name.to_string(),
        container_id.to_string(),
        if_name.to_string(),
    )
}

fn meta((ip, table): (IpAddr, i32)) -> rpc::IpAllocationMetadata {
    let (v4, v6) = match ip {
        IpAddr::V4(_) => (ip.to_string(), String::new()),
        IpAddr::V6(_) => (String::new(), ip.to_string()),
    };
    rpc::IpAllocationMetadata {
        i_pv4_addr: v4,
        i_pv6_addr: v6,
        device_number: if table == 254 { 0 } else { table - 1 },
        route_table_id: table,
    }
}

fn count_rules(ns: &str, ip: IpAddr) -> usize {
    let family = if ip.is_ipv6() { "-6" } else { "-4" };
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-j", family, "rule", "show"])
        .output()
        .unwrap();
    let rules: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let ip = ip.to_string();
    rules
        .iter()
        .filter(|r| {
            let p = r["priority"].as_u64().unwrap_or(0);
            (p == 512 || p == 1536) && (r["dst"] == ip.as_str() || r["src"] == ip.as_str())
        })
        .count()
}

#[tonic::async_trait]
impl CniBackend for Service {
    async fn add_network(
        &self,
        req: Request<rpc::AddNetworkRequest>,
    ) -> Result<Response<rpc::AddNetworkReply>, Status> {
        let r = req.into_inner();
        let mut s = self.0.lock().unwrap();
        s.add_requests.push(r.clone());
        if !s.ready {
            return Err(Status::unavailable(
                "ipamd is starting: checkpoint not restored yet",
            ));
        }
        let key = key(&r.network_name, &r.container_id, &r.if_name);
        let assigned = match s.assigned.get(&key) {
            Some(v) => *v,
            None => {
                if s.free.is_empty() {
                    let n = s.assigned.len();
                    return Err(Status::resource_exhausted(format!(
                        "no assignable IP address: {n} of {n} assigned, 0 cooling down; node at its limit of 1 ENIs x {n} IPs"
                    )));
                }
                let v = s.free.remove(0);
                s.assigned.insert(key, v);
                v
            }
        };
        let mut allocation = meta(assigned);
        if let Some(mangle) = s.mangle_add_reply {
            mangle(&mut allocation);
        }
        Ok(Response::new(rpc::AddNetworkReply {
            success: true,
            ip_allocation_metadata: vec![allocation],
            pod_vlan_id: s.pod_vlan_id,
            eniid: ENI_ID.into(),
            ..Default::default()
        }))
    }

    async fn del_network(
        &self,
        req: Request<rpc::DelNetworkRequest>,
    ) -> Result<Response<rpc::DelNetworkReply>, Status> {
        let r = req.into_inner();
        let mut s = self.0.lock().unwrap();
        s.del_requests.push(r.clone());
        let released = s.release(&key(&r.network_name, &r.container_id, &r.if_name));
        if let (Some((ip, _)), Some(ns)) = (released, s.host_ns.clone()) {
            let n = count_rules(&ns, ip);
            s.rules_at_release.push((ip, n));
        }
        Ok(Response::new(rpc::DelNetworkReply {
            success: true,
            ip_allocation_metadata: released.into_iter().map(meta).collect(),
            ..Default::default()
        }))
    }

    async fn check_network(
        &self,
        req: Request<rpc::CheckNetworkRequest>,
    ) -> Result<Response<rpc::CheckNetworkReply>, Status> {
        let r = req.into_inner();
        let s = self.0.lock().unwrap();
        let key = key(&r.network_name, &r.container_id, &r.if_name);
        match s.assigned.get(&key) {
            Some(assigned) => Ok(Response::new(rpc::CheckNetworkReply {
                ip_allocation_metadata: vec![meta(*assigned)],
                eniid: ENI_ID.into(),
            })),
            None => Err(Status::not_found("no assignment for this key")),
        }
    }

    async fn pool_status(
        &self,
        _req: Request<rpc::PoolStatusRequest>,
    ) -> Result<Response<rpc::PoolStatusReply>, Status> {
        let s = self.0.lock().unwrap();
        let assigned = u32::try_from(s.assigned.len()).unwrap();
        let free = u32::try_from(s.free.len()).unwrap();
        Ok(Response::new(rpc::PoolStatusReply {
            ready: s.ready,
            total_i_ps: assigned + free,
            assigned_i_ps: assigned,
            cooldown_i_ps: 0,
            assignable_i_ps: free,
            message: if free == 0 {
                format!("all {assigned} addresses are assigned")
            } else {
                String::new()
            },
        }))
    }

    async fn garbage_collect(
        &self,
        req: Request<rpc::GarbageCollectRequest>,
    ) -> Result<Response<rpc::GarbageCollectReply>, Status> {
        let r = req.into_inner();
        let mut s = self.0.lock().unwrap();
        let keep = |k: &Key| {
            k.0 != r.network_name
                || r.valid_attachments
                    .iter()
                    .any(|a| a.container_id == k.1 && a.if_name == k.2)
        };
        let gone: Vec<Key> = s.assigned.keys().filter(|k| !keep(k)).cloned().collect();
        let released = gone.iter().filter_map(|k| s.release(k)).map(meta).collect();
        Ok(Response::new(rpc::GarbageCollectReply { released }))
    }
}

/// A running fake ipamd; stopped on drop.
pub struct FakeIpamd {
    pub socket: PathBuf,
    pub state: Arc<Mutex<State>>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeIpamd {
    /// Serves `pool` (address, route table) on a fresh socket, ready.
    pub fn start(pool: &[(IpAddr, i32)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ipamd.sock");
        let state = Arc::new(Mutex::new(State {
            free: pool.to_vec(),
            ready: true,
            ..Default::default()
        }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let svc = Service(Arc::clone(&state));
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&path).unwrap();
                ready_tx.send(()).unwrap();
                tonic::transport::Server::builder()
                    .add_service(CniBackendServer::new(svc))
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        ready_rx.recv().unwrap();
        Self {
            socket,
            state,
            _dir: dir,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn socket_str(&self) -> String {
        self.socket.display().to_string()
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

impl Drop for FakeIpamd {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
