//! ipamd under load and at start-up: AddNetwork/DelNetwork service time as seen by concurrent
//! gRPC clients on the node's socket, start-up-to-ready time with a checkpoint of many pods
//! (their host veths present, so restore keeps them), and resident memory.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};
use tonic::transport::Channel;
use vpc_cni_contract::connect::{Timeouts, connect as connect_unix};
use vpc_cni_contract::rpc::cni_backend_client::CniBackendClient;
use vpc_cni_contract::rpc::{AddNetworkRequest, DelNetworkRequest, PoolStatusRequest};

use super::BenchError;
use super::exec::{enter_netns, monotonic_ns};
use super::pods::{PodSet, ip_batch};
use super::stats::{Summary, ns_to_ms};
use harness::node::{NETWORK_NAME, SimNode};
use test_support::cleanup;
use vpc_cni_contract::dataplane::host_veth_name;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Resident memory of a process (`/proc/<pid>/status`), KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// `VmRSS`.
    pub rss_kib: u64,
    /// `VmHWM` (peak RSS).
    pub hwm_kib: u64,
    /// `RssAnon`: heap, stacks and other private memory.
    pub anon_kib: u64,
    /// `RssFile`: mapped files, i.e. the executable's pages in use.
    pub file_kib: u64,
    /// `Threads`.
    pub threads: u64,
}

/// Reads VmRSS and VmHWM of `pid`.
pub(crate) fn memory(pid: i32) -> Result<Memory, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|source| BenchError::Io {
        context: format!("cannot read {path}"),
        source,
    })?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| BenchError::Invalid(format!("{path} has no {name} line")))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
        file_kib: field("RssFile:")?,
        threads: field("Threads:")?,
    })
}

/// CPU time (user + system) `pid` has used, ms (`/proc/<pid>/stat`, in clock ticks).
pub(crate) fn cpu_ms(pid: i32) -> Result<f64, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|source| BenchError::Io {
        context: format!("cannot read {path}"),
        source,
    })?;
    // The fields after the command name in parentheses (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Invalid(format!("{path} has no command field")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| BenchError::Invalid(format!("{path}: field {} is missing", i + 3)))
    };
    let total = ticks(11)? + ticks(12)?;
    #[allow(clippy::cast_precision_loss)]
    let ms = total as f64 * 1_000.0 / super::stats::clock_ticks_per_second() as f64;
    Ok(ms)
}

/// ipamd's CPU use while idle (no requests), with its periodic work running.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct IdleCpu {
    /// How long it was watched, s.
    pub window_s: f64,
    /// CPU time it used meanwhile, ms.
    pub cpu_ms: f64,
}

impl IdleCpu {
    /// Watches `pid` for `window`.
    fn measure(pid: i32, window: Duration) -> Result<Self, BenchError> {
        let before = cpu_ms(pid)?;
        let t0 = Instant::now();
        std::thread::sleep(window);
        let cpu = cpu_ms(pid)? - before;
        Ok(Self {
            window_s: t0.elapsed().as_secs_f64(),
            cpu_ms: cpu,
        })
    }

    /// Percent of one core.
    pub fn percent_of_core(&self) -> f64 {
        if self.window_s > 0.0 {
            self.cpu_ms / (self.window_s * 10.0)
        } else {
            0.0
        }
    }
}

async fn connect(socket: &Path) -> Result<CniBackendClient<Channel>, BenchError> {
    let timeouts = Timeouts {
        connect: CONNECT_TIMEOUT,
        call: None,
    };
    let channel = connect_unix(socket, timeouts)
        .await
        .map_err(|e| BenchError::Grpc {
            what: format!("connect to {}", socket.display()),
            detail: format!("{e:?}"),
        })?;
    Ok(CniBackendClient::new(channel))
}

fn add_request(container_id: &str, pod_name: &str) -> AddNetworkRequest {
    AddNetworkRequest {
        client_version: format!("cnibench/{}", env!("CARGO_PKG_VERSION")),
        k8s_pod_name: pod_name.to_owned(),
        k8s_pod_namespace: "bench".to_owned(),
        k8s_pod_infra_container_id: container_id.to_owned(),
        container_id: container_id.to_owned(),
        if_name: "eth0".to_owned(),
        network_name: NETWORK_NAME.to_owned(),
        netns: "/run/netns/cnibench-load".to_owned(),
        requires_multi_nic_attachment: false,
    }
}

fn del_request(container_id: &str, pod_name: &str) -> DelNetworkRequest {
    DelNetworkRequest {
        client_version: format!("cnibench/{}", env!("CARGO_PKG_VERSION")),
        k8s_pod_name: pod_name.to_owned(),
        k8s_pod_namespace: "bench".to_owned(),
        k8s_pod_infra_container_id: container_id.to_owned(),
        reason: "PodDeleted".to_owned(),
        container_id: container_id.to_owned(),
        if_name: "eth0".to_owned(),
        network_name: NETWORK_NAME.to_owned(),
        k8s_pod_uid: String::new(),
    }
}

/// AddNetwork/DelNetwork service time under concurrent clients.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// Where the checkpoint lived (`tmpfs` or `disk`).
    pub checkpoint: String,
    /// Concurrent clients (one connection each).
    pub clients: usize,
    /// AddNetwork latency, client side.
    pub add: Summary,
    /// DelNetwork latency, client side.
    pub del: Summary,
    /// Requests (Add + Del) per second over the run.
    pub requests_per_second: f64,
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| BenchError::Io {
            context: "cannot build the load client's runtime".into(),
            source,
        })
}

/// `clients` tasks, each on its own connection, each doing `warmup` untimed then
/// `iterations` timed AddNetwork + DelNetwork pairs with keys of its own.
pub(crate) fn grpc_load(
    socket: &Path,
    checkpoint: &str,
    clients: usize,
    warmup: usize,
    iterations: usize,
) -> Result<LoadResult, BenchError> {
    let rt = runtime()?;
    let run = async {
        let mut tasks = Vec::new();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
        for c in 0..clients {
            let socket = socket.to_owned();
            let start = std::sync::Arc::clone(&start);
            tasks.push(tokio::spawn(async move {
                let client = connect(&socket).await;
                let mut adds = Vec::with_capacity(iterations);
                let mut dels = Vec::with_capacity(iterations);
                let mut began = 0;
                let mut client = match client {
                    Ok(c) => c,
                    Err(e) => {
                        // Let the others pass the barrier; the error is reported below.
                        start.wait().await;
                        return Err(e);
                    }
                };
                for i in 0..warmup + iterations {
                    let id = format!("load-{c}-{i}");
                    if i == warmup {
                        start.wait().await;
                        began = monotonic_ns();
                    }
                    let t0 = monotonic_ns();
                    let reply = client.add_network(add_request(&id, &id)).await;
                    let t1 = monotonic_ns();
                    let reply = reply.map_err(|s| BenchError::Grpc {
                        what: format!("AddNetwork {id}"),
                        detail: s.to_string(),
                    })?;
                    if reply.get_ref().ip_allocation_metadata.is_empty() {
                        return Err(BenchError::Grpc {
                            what: format!("AddNetwork {id}"),
                            detail: "reply has no address".into(),
                        });
                    }
                    let d = client.del_network(del_request(&id, &id)).await;
                    let t2 = monotonic_ns();
                    d.map_err(|s| BenchError::Grpc {
                        what: format!("DelNetwork {id}"),
                        detail: s.to_string(),
                    })?;
                    if i >= warmup {
                        adds.push(t1 - t0);
                        dels.push(t2 - t1);
                    }
                }
                Ok::<_, BenchError>((adds, dels, began, monotonic_ns()))
            }));
        }
        let mut adds = Vec::new();
        let mut dels = Vec::new();
        let (mut first, mut last) = (u64::MAX, 0);
        for t in tasks {
            let (a, d, began, end) = t.await.map_err(|e| BenchError::Grpc {
                what: "load client task".into(),
                detail: e.to_string(),
            })??;
            adds.extend(a);
            dels.extend(d);
            first = first.min(began);
            last = last.max(end);
        }
        Ok::<_, BenchError>((adds, dels, last.saturating_sub(first)))
    };
    let (adds, dels, wall) = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(600), run).await })
        .map_err(|_| BenchError::Grpc {
            what: "the gRPC load".into(),
            detail: "did not finish within 600 s".into(),
        })??;
    let add = Summary::from_ns(&adds)
        .ok_or_else(|| BenchError::Invalid("no AddNetwork samples".into()))?;
    let del = Summary::from_ns(&dels)
        .ok_or_else(|| BenchError::Invalid("no DelNetwork samples".into()))?;
    Ok(LoadResult {
        checkpoint: checkpoint.to_owned(),
        clients,
        requests_per_second: super::latency::per_second(adds.len() + dels.len(), wall),
        add,
        del,
    })
}

/// Assigns `n` addresses through AddNetwork (held, for memory figures); returns the keys.
pub(crate) fn hold_pods(socket: &Path, n: usize) -> Result<Vec<String>, BenchError> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut client = connect(socket).await?;
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("held-{i}");
            client
                .add_network(add_request(&id, &id))
                .await
                .map_err(|s| BenchError::Grpc {
                    what: format!("AddNetwork {id}"),
                    detail: s.to_string(),
                })?;
            ids.push(id);
        }
        Ok(ids)
    })
}

/// Releases keys taken by [`hold_pods`].
pub(crate) fn release_pods(socket: &Path, ids: &[String]) -> Result<(), BenchError> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut client = connect(socket).await?;
        for id in ids {
            client
                .del_network(del_request(id, id))
                .await
                .map_err(|s| BenchError::Grpc {
                    what: format!("DelNetwork {id}"),
                    detail: s.to_string(),
                })?;
        }
        Ok(())
    })
}

/// Assigned addresses according to ipamd.
pub(crate) fn assigned(socket: &Path) -> Result<u32, BenchError> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut client = connect(socket).await?;
        let s = client
            .pool_status(PoolStatusRequest {})
            .await
            .map_err(|s| BenchError::Grpc {
                what: "PoolStatus".into(),
                detail: s.to_string(),
            })?;
        Ok(s.get_ref().assigned_i_ps)
    })
}

/// An ipamd the driver started itself (exec'd straight into the node namespace, so its start
/// is not slowed by `ip netns exec`). Killed on drop.
#[derive(Debug)]
struct OwnIpamd {
    child: Child,
}

impl OwnIpamd {
    fn spawn(node: &SimNode, bin: &Path, env: &[(String, String)]) -> Result<Self, BenchError> {
        let log = node.ipamd_output_path();
        let open = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|source| BenchError::Io {
                    context: format!("cannot open {}", log.display()),
                    source,
                })
        };
        let (out, err) = (open()?, open()?);
        let netns = node.ns().path();
        let child = std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&netns)?;
                Command::new(bin)
                    .env_clear()
                    .env("PATH", test_support::netns::default_path())
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()
                    .map_err(|source| BenchError::Spawn {
                        program: bin.display().to_string(),
                        source,
                    })
            })
            .join()
            .map_err(|_| BenchError::Invalid("the spawning thread panicked".into()))?
        })?;
        if let Ok(pid) = i32::try_from(child.id()) {
            cleanup::register_pid(pid);
        }
        Ok(Self { child })
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(mut self) -> Result<(), BenchError> {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !self.running() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(BenchError::Invalid(
            "ipamd did not exit within 15 s of SIGTERM".into(),
        ))
    }
}

impl Drop for OwnIpamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(pid) = i32::try_from(self.child.id()) {
            cleanup::unregister_pid(pid);
        }
    }
}

fn wait_conflist(
    conflist: &Path,
    ipamd: &mut OwnIpamd,
    timeout: Duration,
    node: &SimNode,
) -> Result<u64, BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = fs::read_to_string(conflist)
            && serde_json::from_str::<Value>(&text).is_ok()
        {
            return Ok(monotonic_ns());
        }
        if !ipamd.running() {
            return Err(BenchError::Invalid(format!(
                "ipamd exited before it was ready\n{}",
                node.diag()
            )));
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Invalid(format!(
                "ipamd was not ready within {timeout:?}\n{}",
                node.diag()
            )));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Start-up of ipamd with a checkpoint of `pods` live pods.
#[derive(Debug, Clone, Serialize)]
pub struct StartupResult {
    /// Pods in the checkpoint (each with its host veth on the node).
    pub pods: usize,
    /// Spawn → conflist written (ready), every start.
    pub ready_ms: Vec<f64>,
    /// Their summary.
    pub summary: Summary,
    /// Addresses ipamd reported assigned after the first start.
    pub restored: u32,
    /// Memory a second after the first start.
    pub memory: Memory,
    /// CPU used while idle after the first start (when an idle window was asked for).
    pub idle_cpu: Option<IdleCpu>,
}

fn write_checkpoint(path: &Path, entries: &[(String, String, Ipv4Addr)]) -> Result<(), BenchError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let allocations: Vec<Value> = entries
        .iter()
        .map(|(cid, name, ip)| {
            json!({
                "networkName": NETWORK_NAME,
                "containerID": cid,
                "ifName": "eth0",
                "ipv4": ip.to_string(),
                "allocationTimestamp": u64::try_from(now).unwrap_or(u64::MAX),
                "metadata": {"k8sPodNamespace": "bench", "k8sPodName": name, "interfacesCount": 1},
            })
        })
        .collect();
    let text = json!({"version": "vpc-cni-ipam/1", "allocations": allocations}).to_string();
    fs::write(path, text).map_err(|source| BenchError::Io {
        context: format!("cannot write checkpoint {}", path.display()),
        source,
    })
}

/// Measures ipamd's start-up `reps` times with a checkpoint of `pods` pods whose host veths
/// exist, and after the first start its memory and, when `idle` is not zero, the CPU it uses
/// idle for that long. The node's own ipamd is stopped for the measurement and restarted
/// (empty) after.
pub(crate) fn startup(
    node: &mut SimNode,
    ipamd_bin: &Path,
    checkpoint: &Path,
    pods: usize,
    reps: usize,
    idle: Duration,
) -> Result<StartupResult, BenchError> {
    let ips = node.description().all_secondary_ips();
    if ips.len() < pods {
        return Err(BenchError::Invalid(format!(
            "the node has {} secondary IPs, fewer than the {pods} pods of the start-up checkpoint",
            ips.len()
        )));
    }
    node.stop_ipamd(Duration::from_secs(15))?;
    let entries: Vec<(String, String, Ipv4Addr)> = (0..pods)
        .map(|i| (format!("{i:064x}"), format!("s-{i}"), ips[i]))
        .collect();
    let peers = PodSet::create(1, "bpeer")?;
    let lines: Vec<String> = entries
        .iter()
        .enumerate()
        .map(|(i, (_, name, _))| {
            format!(
                "link add {} type veth peer name p{i} netns {}",
                host_veth_name("eni", "bench", name),
                peers.name(0)
            )
        })
        .collect();
    ip_batch(Some(node.ns().name()), &lines)?;
    write_checkpoint(checkpoint, &entries)?;

    let env = node.ipamd_env(&[]);
    let mut ready_ms = Vec::with_capacity(reps);
    let mut restored = 0;
    let mut mem = Memory::default();
    let mut idle_cpu = None;
    let result = (|| {
        for rep in 0..reps {
            let _ = fs::remove_file(node.conflist_path());
            let t0 = monotonic_ns();
            let mut ipamd = OwnIpamd::spawn(node, ipamd_bin, &env)?;
            let t1 = wait_conflist(
                &node.conflist_path(),
                &mut ipamd,
                Duration::from_secs(60),
                node,
            )?;
            ready_ms.push(ns_to_ms(t1 - t0));
            if rep == 0 {
                restored = assigned(&node.socket_path())?;
                std::thread::sleep(Duration::from_secs(1));
                mem = memory(ipamd.pid())?;
                if !idle.is_zero() {
                    idle_cpu = Some(IdleCpu::measure(ipamd.pid(), idle)?);
                }
            }
            ipamd.stop()?;
        }
        Ok::<_, BenchError>(())
    })();
    // Leave the node as it was: no pods, its own ipamd running.
    drop(peers);
    let cleaned = write_checkpoint(checkpoint, &[]);
    let restarted = node.start_ipamd().map_err(BenchError::from);
    result?;
    cleaned?;
    restarted?;
    let samples: Vec<u64> = ready_ms
        .iter()
        .map(|ms| {
            // Positive and far below 2^63 ns.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let ns = (ms * 1e6) as u64;
            ns
        })
        .collect();
    Ok(StartupResult {
        pods,
        summary: Summary::from_ns(&samples)
            .ok_or_else(|| BenchError::Invalid("no start-up samples".into()))?,
        ready_ms,
        restored,
        memory: mem,
        idle_cpu,
    })
}

/// Runs [`grpc_load`] against an ipamd whose checkpoint is at `checkpoint` (e.g. on disk): the
/// node's own ipamd is stopped meanwhile and restarted afterwards.
pub(crate) fn load_with_checkpoint_at(
    node: &mut SimNode,
    ipamd_bin: &Path,
    checkpoint: &Path,
    clients: usize,
    warmup: usize,
    iterations: usize,
) -> Result<LoadResult, BenchError> {
    node.stop_ipamd(Duration::from_secs(15))?;
    let result = (|| {
        let env = node.ipamd_env(&[(
            "AWS_VPC_K8S_CNI_BACKING_STORE",
            &checkpoint.display().to_string(),
        )]);
        let _ = fs::remove_file(node.conflist_path());
        let mut ipamd = OwnIpamd::spawn(node, ipamd_bin, &env)?;
        wait_conflist(
            &node.conflist_path(),
            &mut ipamd,
            Duration::from_secs(60),
            node,
        )?;
        let label = if super::on_tmpfs(checkpoint.parent().unwrap_or(Path::new("/"))) {
            "tmpfs"
        } else {
            "disk"
        };
        let r = grpc_load(&node.socket_path(), label, clients, warmup, iterations)?;
        ipamd.stop()?;
        Ok::<_, BenchError>(r)
    })();
    let _ = fs::remove_file(checkpoint);
    let restarted = node.start_ipamd().map_err(BenchError::from);
    let r = result?;
    restarted?;
    Ok(r)
}

/// Where the benchmark keeps ipamd's checkpoint: tmpfs, as `/var/run` is on a real node.
pub(crate) fn tmpfs_dir() -> PathBuf {
    PathBuf::from(format!("/dev/shm/vcni-bench-{}", std::process::id()))
}
