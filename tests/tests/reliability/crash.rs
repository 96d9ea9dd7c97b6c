//! Campaign 1, crash: pods are added and deleted by 8 workers at once (each op execs the real
//! plugin, as a runtime does) while ipamd is SIGKILLed at random moments and restarted. A
//! sampler reads the checkpoint file every millisecond or so throughout (and right after every
//! kill): it must parse every time. The workers keep the model (which pod is live with which
//! IP) from the plugin's answers; a runtime DELs after a failed ADD, and so do they.
//!
//! Afterwards: no IP is held by two pods; every live pod's IP is assigned in the checkpoint and
//! in ipamd's datastore and its data plane passes CHECK; the node's veths, rules and routes are
//! exactly the live pods'; every deleted pod's IP is free after the cooldown; ADDs that failed
//! failed with code 11 and left nothing behind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::cni::result_ip;
use harness::faults::{self, CheckpointSampler, IpamdSupervisor};
use harness::{CniRequest, NodeOptions, Pod, standard_node};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::{checkpoint_pods, datastore_pods, must, ok, plumbing, pod, start, wait_for, with_prev};

const COOLDOWN: Duration = Duration::from_secs(1);
const WORKERS: usize = 8;
/// Live pods a worker keeps at most (8 workers x 2 = 16 of the node's 36 addresses, 72 at soak
/// size).
const LIVE_PER_WORKER: usize = 2;

struct Live {
    pod: Pod,
    ip: Ipv4Addr,
    result: Value,
}

#[derive(Debug, Default)]
struct Tally {
    adds_ok: u64,
    adds_failed: BTreeMap<u64, u64>,
    add_failures: BTreeMap<String, u64>,
    down_add_latency: Vec<Duration>,
    dels_ok: u64,
    refused_cooling: u64,
    refused_exhausted: u64,
    violations: Vec<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.adds_ok += o.adds_ok;
        for (k, v) in o.adds_failed {
            *self.adds_failed.entry(k).or_default() += v;
        }
        for (k, v) in o.add_failures {
            *self.add_failures.entry(k).or_default() += v;
        }
        self.down_add_latency.extend(o.down_add_latency);
        self.dels_ok += o.dels_ok;
        self.refused_cooling += o.refused_cooling;
        self.refused_exhausted += o.refused_exhausted;
        self.violations.extend(o.violations);
    }
}

struct Shared<'a> {
    node: &'a harness::SimNode,
    config: Value,
    ops: AtomicU64,
    total_ops: u64,
    /// Live IP -> container, to catch an address handed to a second pod.
    live_ips: Mutex<BTreeMap<Ipv4Addr, String>>,
    secondary: BTreeSet<Ipv4Addr>,
    ipamd_up: std::sync::atomic::AtomicBool,
}

fn worker(shared: &Shared<'_>, w: usize, seed: u64) -> (Tally, Vec<Live>) {
    let node = shared.node;
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut tally = Tally::default();
    let mut live: Vec<Live> = Vec::new();
    let mut serial = 0u32;
    loop {
        let n = shared.ops.fetch_add(1, Ordering::SeqCst);
        if n >= shared.total_ops {
            break;
        }
        let add = live.is_empty() || (live.len() < LIVE_PER_WORKER && rng.random_bool(0.6));
        if add {
            serial += 1;
            let mut p = pod("crash", &format!("w{w}-{serial}"));
            let veth = p.host_veth("eni");
            let was_up = shared.ipamd_up.load(Ordering::SeqCst);
            let started = Instant::now();
            let out = ok(
                node,
                node.exec_plugin(&CniRequest::for_pod("ADD", &shared.config, &p)),
            );
            let took = started.elapsed();
            if out.success() {
                let Some(ip) = out.json.as_ref().and_then(result_ip) else {
                    tally.violations.push(format!(
                        "ADD of {} succeeded without an IP: {}",
                        p.name,
                        out.describe()
                    ));
                    continue;
                };
                if !shared.secondary.contains(&ip) {
                    tally.violations.push(format!(
                        "ADD of {} got {ip}, which is not a pod address of the node",
                        p.name
                    ));
                }
                let mut ips = shared.live_ips.lock().unwrap();
                if let Some(holder) = ips.insert(ip, p.container_id.clone()) {
                    tally.violations.push(format!(
                        "{ip} given to {} while container {holder} holds it",
                        p.name
                    ));
                }
                drop(ips);
                tally.adds_ok += 1;
                live.push(Live {
                    pod: p,
                    ip,
                    result: out.json.clone().unwrap_or_default(),
                });
            } else {
                let code = out.error_code().unwrap_or(0);
                *tally.adds_failed.entry(code).or_default() += 1;
                if !was_up && !shared.ipamd_up.load(Ordering::SeqCst) {
                    tally.down_add_latency.push(took);
                }
                if code != 11 {
                    tally.violations.push(format!(
                        "ADD of {} failed with code {code}, not 11: {}",
                        p.name,
                        out.describe()
                    ));
                } else {
                    // Grouped by cause for the summary (the message up to its first ':',
                    // without the socket path).
                    let text = out.error_text();
                    let cause = text
                        .replace(&node.socket_path().display().to_string(), "<socket>")
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    *tally.add_failures.entry(cause).or_default() += 1;
                }
                // With the churn of 8 workers most addresses can be cooling down at once: ipamd
                // then refuses the ADD (code 11, saying so), which is not a fault. Running out
                // for any other reason is.
                // Under soak-size kill rates the addresses of pods deleted while ipamd was down
                // are held until the orphan sweep (at most ORPHAN_GRACE + SWEEP_INTERVAL): the
                // pool can run out for a moment. Both are counted; that nothing stays leaked is
                // what the end of the campaign checks.
                let text = out.error_text();
                if text.contains("no assignable IP") {
                    if text.contains("in cooldown") {
                        tally.refused_cooling += 1;
                    } else {
                        tally.refused_exhausted += 1;
                    }
                }
                // A failed ADD leaves nothing: no host veth, nothing in the pod.
                if ok(node, node.ns().link(&veth)).is_some() {
                    tally
                        .violations
                        .push(format!("failed ADD of {} left host veth {veth}", p.name));
                }
                let links = ok(node, p.ns().unwrap().link_names());
                if links != vec!["lo".to_owned()] {
                    tally.violations.push(format!(
                        "failed ADD of {} left {links:?} in the pod",
                        p.name
                    ));
                }
                // The runtime DELs an attachment whose ADD failed (it has no result to send).
                let del = ok(
                    node,
                    node.exec_plugin(&CniRequest::for_pod("DEL", &shared.config, &p)),
                );
                if !del.success() {
                    tally.violations.push(format!(
                        "DEL after the failed ADD of {} failed: {}",
                        p.name,
                        del.describe()
                    ));
                }
                let _ = p.delete_netns();
            }
        } else {
            let i = rng.random_range(0..live.len());
            let mut l = live.swap_remove(i);
            // From the moment DEL starts the address may go to another pod.
            shared.live_ips.lock().unwrap().remove(&l.ip);
            // Runtimes tear the sandbox down before or after the DEL.
            let netns_first = rng.random_bool(0.3);
            if netns_first {
                let _ = l.pod.delete_netns();
            }
            let conf = with_prev(&shared.config, &l.result);
            let out = ok(
                node,
                node.exec_plugin(&CniRequest::for_pod("DEL", &conf, &l.pod)),
            );
            if out.success() {
                tally.dels_ok += 1;
            } else {
                tally.violations.push(format!(
                    "DEL of {} ({}) failed: {}",
                    l.pod.name,
                    l.ip,
                    out.describe()
                ));
            }
            // DEL leaves the veth pair to the namespace's removal, but the sandbox must no
            // longer hold the address (another pod may get it now). The veths of removed
            // namespaces are checked at the end, with the rest of the node's plumbing.
            if let Some(ns) = l.pod.netns()
                && ok(node, ns.link(&l.pod.ifname)).is_some()
            {
                let addrs = ok(node, ns.addresses_of(&l.pod.ifname));
                if !addrs.is_empty() {
                    tally.violations.push(format!(
                        "DEL of {} left {addrs:?} on the sandbox's {}",
                        l.pod.name, l.pod.ifname
                    ));
                }
            }
            if !netns_first {
                let _ = l.pod.delete_netns();
            }
        }
    }
    (tally, live)
}

#[test]
fn crash_campaign_kill_9_during_pod_churn_loses_and_leaks_nothing() {
    campaign(NodeOptions::new(standard_node(&faults::scale(
        vec![9; 4],
        vec![9; 8],
    ))));
}

/// The same campaign with `ENABLE_PREFIX_DELEGATION=true`: the pool is one /28 prefix per ENI
/// as instance metadata lists them (instance-metadata-only mode), no secondary IPs.
#[test]
fn crash_campaign_with_prefix_delegation_loses_and_leaks_nothing() {
    let mut node = standard_node(&faults::scale(vec![0; 4], vec![0; 8]));
    for (k, eni) in (0u8..).zip(&mut node.interfaces) {
        let prefix = ipnet::Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 96 + 16 * k), 28);
        eni.ipv4_prefixes = vec![prefix.unwrap()];
    }
    campaign(NodeOptions::new(node).ipamd_env("ENABLE_PREFIX_DELEGATION", "true"));
}

/// Pods churn on the node of `options` while ipamd is killed and restarted; then everything is
/// checked (see the module documentation).
fn campaign(options: NodeOptions) {
    let seed = faults::seed();
    let total_ops: u64 = faults::scale(500, 5000);
    let kill_count: usize = faults::scale(5, 20);
    let node = start(options.cooldown_seconds(COOLDOWN.as_secs()).without_ipamd());
    let secondary: BTreeSet<Ipv4Addr> =
        node.description().all_pod_addresses().into_iter().collect();
    let node_ref: &harness::SimNode = &node;
    let mut ipamd = IpamdSupervisor::new(node_ref);
    must(ipamd.start(Duration::from_secs(60)));
    let config = ok(node_ref, node_ref.plugin_config("1.0.0", None));

    // Kill points spread over the run, at random op counts (and a random extra delay).
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kill_at: Vec<u64> = (0..kill_count)
        .map(|_| rng.random_range(total_ops / 20..total_ops * 19 / 20))
        .collect();
    kill_at.sort_unstable();

    let shared = Shared {
        node: node_ref,
        config,
        ops: AtomicU64::new(0),
        total_ops,
        live_ips: Mutex::new(BTreeMap::new()),
        secondary: secondary.clone(),
        ipamd_up: std::sync::atomic::AtomicBool::new(true),
    };
    let sampler = CheckpointSampler::start(&node_ref.checkpoint_path(), Duration::from_millis(1));
    let sampler = Arc::new(sampler);
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut live: Vec<Live> = Vec::new();
    let mut down_times: Vec<Duration> = Vec::new();
    std::thread::scope(|scope| {
        let killer = {
            let shared = &shared;
            let sampler = Arc::clone(&sampler);
            let ipamd = &mut ipamd;
            let down_times = &mut down_times;
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));
                for at in kill_at {
                    while shared.ops.load(Ordering::SeqCst) < at {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
                    shared.ipamd_up.store(false, Ordering::SeqCst);
                    let down = Instant::now();
                    must(ipamd.kill());
                    sampler.sample_now();
                    std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
                    sampler.sample_now();
                    must(ipamd.start(Duration::from_secs(60)));
                    shared.ipamd_up.store(true, Ordering::SeqCst);
                    down_times.push(down.elapsed());
                }
            })
        };
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let shared = &shared;
                scope.spawn(move || worker(shared, w, seed))
            })
            .collect();
        for h in workers {
            let (t, l) = h
                .join()
                .unwrap_or_else(|_| panic!("a campaign worker panicked"));
            tally.merge(t);
            live.extend(l);
        }
        killer
            .join()
            .unwrap_or_else(|_| panic!("the killer thread panicked"));
    });
    let churn = started.elapsed();
    let sampler = Arc::try_unwrap(sampler)
        .unwrap_or_else(|_| panic!("the sampler is still shared"))
        .finish();
    let node = node_ref;

    assert!(
        tally.violations.is_empty(),
        "seed {seed}: {} violations:\n{}\n{}",
        tally.violations.len(),
        tally.violations.join("\n"),
        node.diag()
    );

    // No IP held by two live pods.
    let live_by_container: BTreeMap<String, Ipv4Addr> = live
        .iter()
        .map(|l| (l.pod.container_id.clone(), l.ip))
        .collect();
    let live_ips: BTreeSet<Ipv4Addr> = live.iter().map(|l| l.ip).collect();
    crate::check!(
        node,
        live_ips.len() == live.len(),
        "seed {seed}: live pods share addresses: {live_by_container:?}"
    );

    // ipamd converges on exactly the live pods: pods deleted while it was down or restarting
    // are released by the restart's checkpoint restore or its sweep of pods without a veth.
    let converged = wait_for(Duration::from_secs(90), || {
        datastore_pods(node) == live_by_container
    });
    crate::check!(
        node,
        converged,
        "seed {seed}: ipamd's datastore never matched the live pods\n  datastore: {:?}\n  live:      {live_by_container:?}",
        datastore_pods(node)
    );
    let checkpoint = checkpoint_pods(node);
    crate::check!(
        node,
        checkpoint == live_by_container,
        "seed {seed}: checkpoint {checkpoint:?} differs from the live pods {live_by_container:?}"
    );
    for l in &live {
        crate::check!(
            node,
            ok(node, node.ipamd_assignment(&l.pod)) == Some(l.ip),
            "seed {seed}: CheckNetwork of live pod {} does not give {}",
            l.pod.name,
            l.ip
        );
        let out = ok(
            node,
            node.exec_plugin(&CniRequest::for_pod(
                "CHECK",
                &with_prev(&shared.config, &l.result),
                &l.pod,
            )),
        );
        crate::check!(
            node,
            out.success(),
            "seed {seed}: CHECK of live pod {} ({}) after the campaign: {}",
            l.pod.name,
            l.ip,
            out.describe()
        );
    }

    // The node holds exactly the live pods' plumbing.
    let got = plumbing(node, "eni");
    let want_veths: BTreeSet<String> = live.iter().map(|l| l.pod.host_veth("eni")).collect();
    crate::check!(
        node,
        got.veths == want_veths,
        "seed {seed}: host veths {:?}, live pods' {want_veths:?}",
        got.veths
    );
    crate::check!(
        node,
        got.to_rules == live_ips,
        "seed {seed}: rules 512 for {:?}, live pods {live_ips:?}",
        got.to_rules
    );
    let want_from: BTreeMap<Ipv4Addr, String> = live
        .iter()
        .filter_map(|l| {
            let table = node.description().owner_of_pod_address(l.ip)?.route_table();
            (table != 254).then(|| (l.ip, table.to_string()))
        })
        .collect();
    crate::check!(
        node,
        got.from_rules == want_from,
        "seed {seed}: rules 1536 {:?}, want {want_from:?}",
        got.from_rules
    );
    let want_routes: BTreeMap<Ipv4Addr, String> = live
        .iter()
        .map(|l| (l.ip, l.pod.host_veth("eni")))
        .collect();
    crate::check!(
        node,
        got.routes == want_routes,
        "seed {seed}: host routes {:?}, want {want_routes:?}",
        got.routes
    );

    // Every other address is free once the cooldown is over.
    std::thread::sleep(COOLDOWN + Duration::from_millis(200));
    let status = ok(node, node.pool_status());
    crate::check!(
        node,
        usize::try_from(status.assigned_i_ps).unwrap() == live.len()
            && status.cooldown_i_ps == 0
            && usize::try_from(status.assignable_i_ps).unwrap() == secondary.len() - live.len(),
        "seed {seed}: pool after the campaign {status:?}; {} live pods of {} addresses",
        live.len(),
        secondary.len()
    );

    // The checkpoint parsed every time it was read, also right after each kill, and no write
    // cut short by a kill left its temp file behind (ipamd removes them when it starts).
    crate::check!(
        node,
        sampler.failures.is_empty() && sampler.parsed > 100,
        "seed {seed}: checkpoint reads: {sampler:?}"
    );
    let temps = faults::checkpoint_temp_files(&node.checkpoint_path());
    crate::check!(
        node,
        temps.is_empty(),
        "seed {seed}: temp files of interrupted checkpoint writes remain: {temps:?}"
    );

    // Finally the live pods go too, leaving a clean node and a pool with nothing assigned.
    let removed = live.len();
    for mut l in live {
        let out = ok(
            node,
            node.exec_plugin(&CniRequest::for_pod(
                "DEL",
                &with_prev(&shared.config, &l.result),
                &l.pod,
            )),
        );
        crate::check!(node, out.success(), "final DEL: {}", out.describe());
        let _ = l.pod.delete_netns();
    }
    // The veths go with the namespaces, in the kernel's asynchronous namespace cleanup.
    wait_for(Duration::from_secs(10), || {
        plumbing(node, "eni") == crate::PodPlumbing::default()
    });
    let clean = plumbing(node, "eni");
    crate::check!(
        node,
        clean == crate::PodPlumbing::default(),
        "seed {seed}: pod plumbing left after deleting every pod: {clean:?}"
    );
    crate::check!(
        node,
        ok(node, node.pool_status()).assigned_i_ps == 0,
        "seed {seed}: addresses still assigned after deleting every pod"
    );

    let failed: u64 = tally.adds_failed.values().sum();
    let latency = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        (
            v.get(v.len() / 2).copied().unwrap_or_default(),
            v.last().copied().unwrap_or_default(),
        )
    };
    let (down_median, down_max) = latency(&tally.down_add_latency);
    let (restart_median, restart_max) = latency(&down_times);
    eprintln!(
        "campaign crash: seed={seed} ops={total_ops} workers={WORKERS} kills={} restarts={} \
         adds_ok={} adds_failed={failed} (codes {:?}; {} refused while every free IP cooled down, \
         {} while addresses of pods deleted during a restart awaited the sweep) \
         dels_ok={} live_at_end={removed} \
         checkpoint_reads={} (missing {}) add_while_down median={down_median:?} max={down_max:?} \
         down_to_ready median={restart_median:?} max={restart_max:?} churn={churn:?}",
        ipamd.kills,
        ipamd.starts - 1,
        tally.adds_ok,
        tally.adds_failed,
        tally.refused_cooling,
        tally.refused_exhausted,
        tally.dels_ok,
        sampler.parsed,
        sampler.missing,
    );
    for (cause, n) in &tally.add_failures {
        eprintln!("  failed ADDs (code 11): {n} x {cause}");
    }
    drop(ipamd);
}
