//! ipamd's checkpoint reader: `vpc-cni-ipam/1` JSON of any shape (what a crash, a disk error or
//! another ipamd version may leave). Decoding either fails with an error naming the file or
//! gives allocations; each is restored into a datastore holding the addresses it names the way
//! start-up does, and what the datastore then holds re-encodes into a checkpoint that decodes
//! to the same allocations (no duplicate address, no lost one).

#![no_main]
#![allow(dead_code, unused_imports, clippy::all)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

#[path = "../../ipamd/src/checkpoint.rs"]
mod checkpoint;
#[path = "../../ipamd/src/datastore/mod.rs"]
mod datastore;
#[path = "../../ipamd/src/fsutil.rs"]
mod fsutil;

use checkpoint::{CheckpointData, decode};
use datastore::{Datastore, EniSpec, ManualClock};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/var/run/aws-node/ipam.json");
    let parsed = match decode(path, data) {
        Ok(p) => p,
        Err(e) => {
            assert!(e.to_string().contains("ipam.json"), "{e}");
            return;
        }
    };
    // A datastore whose ENIs hold every IPv4 address the checkpoint names (within a /16).
    let mut ds = Datastore::new(
        Duration::from_secs(30),
        Arc::new(ManualClock::new()),
        "fuzz",
    );
    let subnet: ipnet::Ipv4Net = "10.0.0.0/16".parse().unwrap();
    let _ = ds.add_eni(EniSpec {
        id: "eni-fuzz".into(),
        device_number: 0,
        primary_ip: Ipv4Addr::new(10, 0, 0, 10),
        subnet,
    });
    let mut named = BTreeSet::new();
    for entry in &parsed.allocations {
        let _ = entry.key().to_string();
        let _ = entry.pod_metadata();
        let _ = entry.allocated_at();
        if let Some(ip) = entry.ipv4_addr() {
            if subnet.contains(&ip) && named.insert(ip) {
                let _ = ds.add_ip("eni-fuzz", ip);
            }
        }
    }
    let mut restored = BTreeSet::new();
    for entry in &parsed.allocations {
        if let Some(ip) = entry.ipv4_addr() {
            if ds
                .restore(&entry.key(), entry.pod_metadata(), ip, entry.allocated_at())
                .is_ok()
            {
                assert!(restored.insert(ip), "{ip} restored twice");
            }
        }
    }
    let again = CheckpointData::from_assignments(&ds.assignments());
    let bytes = serde_json::to_vec(&again).unwrap();
    let back = decode(path, &bytes).unwrap();
    assert_eq!(back, again);
    let ips: BTreeSet<Ipv4Addr> = back
        .allocations
        .iter()
        .filter_map(|a| a.ipv4_addr())
        .collect();
    assert_eq!(ips, restored);
});
