//! Datastore throughput (issue 6 §3): one assign + one release of a pod's address, with the
//! pool holding 250, 10 000 or 100 000 addresses of which half are assigned to other pods (a
//! node in steady state), `IP_COOLDOWN_PERIOD=0` so a released address is assignable again.
//!
//! - `datastore/assign_release/<n>`: the bare [`Datastore`] (what the 1 M ops/s target is about);
//! - `ipam_state/add_del/<n>`: [`IpamState::add`] + [`IpamState::del`] with a checkpointer that
//!   stores nothing, i.e. the service path minus gRPC and I/O: the pool lock, the group commit
//!   (encoding of the changed allocation only, assembly of the file from the entries encoded
//!   before, outside the lock) and the hand-off of the write to a blocking thread.
//!
//! One iteration is one assign + release pair, so ops/s = 1 / time per iteration. `cargo test`
//! runs each function once (criterion's test mode); `cargo bench -p ipamd --bench datastore`
//! measures. `make bench` reads the results from `target/criterion` into BENCHMARKS.md.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ipamd::checkpoint::NullCheckpointer;
use ipamd::datastore::{Datastore, EniSpec, IpamKey, PodMetadata, SystemClock};
use ipamd::state::{IpamState, Phase};

/// Pool sizes of the issue.
const SIZES: [usize; 3] = [250, 10_000, 100_000];
/// Addresses per ENI (the largest instance types have 50 per interface; a big pool here is
/// many ENIs' worth, which only exercises the per-ENI maps more).
const PER_ENI: usize = 50;

fn key(i: usize) -> IpamKey {
    IpamKey {
        network_name: "aws-cni".to_owned(),
        container_id: format!("{i:064x}"),
        if_name: "eth0".to_owned(),
    }
}

fn metadata(i: usize) -> PodMetadata {
    PodMetadata {
        namespace: "default".to_owned(),
        name: format!("pod-{i}"),
        interfaces_count: 1,
    }
}

/// A pool of `n` addresses in 10.64.0.0/10 (ENI d: primary 10.64.d.4-ish, then its secondaries),
/// half of them assigned.
fn pool(n: usize) -> Datastore {
    let mut ds = Datastore::new(Duration::ZERO, Arc::new(SystemClock), "benchmark pool");
    let subnet = "10.64.0.0/10".parse().unwrap_or_default();
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    let enis = n.div_ceil(PER_ENI);
    let mut added = 0;
    for d in 0..enis {
        let d32 = u32::try_from(d).unwrap_or(u32::MAX);
        // Each ENI gets a 64-address block; its primary is the block's 4th address.
        let block = base + d32 * 64;
        let id = format!("eni-{d:017x}");
        ds.add_eni(EniSpec {
            id: id.clone(),
            device_number: d32,
            primary_ip: Ipv4Addr::from(block + 4),
            subnet,
        })
        .unwrap_or_else(|e| panic!("add_eni {id}: {e}"));
        for k in 0..PER_ENI.min(n - added) {
            let ip = Ipv4Addr::from(block + 5 + u32::try_from(k).unwrap_or(0));
            ds.add_ip(&id, ip)
                .unwrap_or_else(|e| panic!("add_ip {ip}: {e}"));
            added += 1;
        }
    }
    for i in 0..n / 2 {
        ds.assign(&key(i), metadata(i))
            .unwrap_or_else(|e| panic!("fill: {}", e.message));
    }
    ds
}

fn datastore(c: &mut Criterion) {
    let mut group = c.benchmark_group("datastore");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let mut ds = pool(n);
        let keys: Vec<(IpamKey, PodMetadata)> =
            (0..64).map(|i| (key(n + i), metadata(n + i))).collect();
        let mut next = 0;
        group.bench_with_input(BenchmarkId::new("assign_release", n), &n, |b, _| {
            b.iter(|| {
                let (k, md) = &keys[next % keys.len()];
                next += 1;
                let (a, fresh) = ds
                    .assign(k, md.clone())
                    .unwrap_or_else(|e| panic!("assign: {}", e.message));
                black_box((a.ip, fresh));
                black_box(ds.release(k));
            });
        });
    }
    group.finish();
}

fn ipam_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipam_state");
    group.throughput(Throughput::Elements(1));
    // Assembling a 100k-allocation file (~20 MB) per write takes milliseconds: fewer, flat
    // samples keep the run to seconds.
    group.sample_size(20);
    group.sampling_mode(SamplingMode::Flat);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    for n in SIZES {
        let state = IpamState::new(pool(n), Arc::new(NullCheckpointer));
        state.set_phase(Phase::Ready);
        let k = key(n);
        group.bench_with_input(BenchmarkId::new("add_del", n), &n, |b, _| {
            b.iter(|| {
                rt.block_on(async {
                    let a = state
                        .add(&k, metadata(n))
                        .await
                        .unwrap_or_else(|e| panic!("add: {e}"));
                    black_box(a.ip);
                    black_box(state.del(&k).await.unwrap_or_else(|e| panic!("del: {e}")));
                });
            });
        });
    }
    group.finish();
}

criterion_group!(benches, datastore, ipam_state);
criterion_main!(benches);
