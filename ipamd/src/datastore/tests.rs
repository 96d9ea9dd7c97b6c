//! Tests of the datastore: ENIs and addresses, assignment and release, cooldown, exhaustion
//! reasons, restore and rollback.

use std::collections::{HashMap, HashSet};

use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn key(c: &str) -> IpamKey {
    IpamKey {
        network_name: "aws-cni".into(),
        container_id: c.into(),
        if_name: "eth0".into(),
    }
}

fn md(name: &str) -> PodMetadata {
    PodMetadata {
        namespace: "default".into(),
        name: name.into(),
        interfaces_count: 1,
    }
}

/// An ENI in 10.0.0.0/24.
fn eni(id: &str, device_number: u32, primary_ip: &str) -> EniSpec {
    EniSpec {
        id: id.into(),
        device_number,
        primary_ip: ip(primary_ip),
        subnet: "10.0.0.0/24".parse().unwrap(),
    }
}

/// Two ENIs in 10.0.0.0/24: primary (device 0) with 3 secondaries, eth1 (device 1) with 2.
fn store(cooldown_secs: u64) -> (Datastore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let mut ds = Datastore::new(
        Duration::from_secs(cooldown_secs),
        clock.clone(),
        IMDS_ONLY_CAPACITY_NOTE,
    );
    ds.add_eni(eni("eni-b", 1, "10.0.0.20")).unwrap();
    ds.add_eni(eni("eni-a", 0, "10.0.0.10")).unwrap();
    for a in ["10.0.0.13", "10.0.0.11", "10.0.0.12"] {
        ds.add_ip("eni-a", ip(a)).unwrap();
    }
    for b in ["10.0.0.22", "10.0.0.21"] {
        ds.add_ip("eni-b", ip(b)).unwrap();
    }
    (ds, clock)
}

#[test]
fn repeated_key_gets_the_same_ip() {
    let (mut ds, _) = store(30);
    let (first, new) = ds.assign(&key("c1"), md("p1")).unwrap();
    assert!(new);
    let (again, new_again) = ds.assign(&key("c1"), md("p1")).unwrap();
    assert!(!new_again);
    assert_eq!(first.ip, again.ip);
    assert_eq!(ds.stats().assigned, 1);
}

#[test]
fn packs_primary_eni_first_in_address_order_then_next_device() {
    let (mut ds, _) = store(30);
    let got: Vec<(Ipv4Addr, u32, String)> = (0..5)
        .map(|i| {
            let (a, _) = ds.assign(&key(&format!("c{i}")), md("p")).unwrap();
            (a.ipv4().unwrap(), a.device_number, a.eni_id)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (ip("10.0.0.11"), 0, "eni-a".into()),
            (ip("10.0.0.12"), 0, "eni-a".into()),
            (ip("10.0.0.13"), 0, "eni-a".into()),
            (ip("10.0.0.21"), 1, "eni-b".into()),
            (ip("10.0.0.22"), 1, "eni-b".into()),
        ]
    );
}

#[test]
fn released_ip_waits_for_the_cooldown() {
    let (mut ds, clock) = store(30);
    let (a, _) = ds.assign(&key("c1"), md("p1")).unwrap();
    assert_eq!(a.ip, ip("10.0.0.11"));
    let released = ds.release(&key("c1")).unwrap();
    assert_eq!(released.assignment.ip, a.ip);
    assert_eq!(ds.stats().cooling, 1);
    // The cooling address is skipped.
    let (b, _) = ds.assign(&key("c2"), md("p2")).unwrap();
    assert_eq!(b.ip, ip("10.0.0.12"));
    clock.advance(Duration::from_secs(29));
    assert_eq!(ds.stats().cooling, 1);
    clock.advance(Duration::from_secs(1));
    let s = ds.stats();
    assert_eq!((s.cooling, s.assignable), (0, 4));
    let (c, _) = ds.assign(&key("c3"), md("p3")).unwrap();
    assert_eq!(
        c.ip,
        ip("10.0.0.11"),
        "lowest free address again after cooldown"
    );
}

#[test]
fn zero_cooldown_makes_released_ip_reusable_at_once() {
    let (mut ds, _) = store(0);
    let (a, _) = ds.assign(&key("c1"), md("p1")).unwrap();
    ds.release(&key("c1")).unwrap();
    assert_eq!(ds.stats().cooling, 0);
    let (b, _) = ds.assign(&key("c2"), md("p2")).unwrap();
    assert_eq!(a.ip, b.ip);
}

#[test]
fn release_of_unknown_key_is_none() {
    let (mut ds, _) = store(30);
    assert!(ds.release(&key("nope")).is_none());
}

#[test]
fn exhaustion_all_assigned_names_counts_and_limit() {
    let (mut ds, _) = store(30);
    for i in 0..5 {
        ds.assign(&key(&format!("c{i}")), md("p")).unwrap();
    }
    let err = ds.assign(&key("c9"), md("p")).unwrap_err();
    assert!(
        err.message
            .starts_with("no assignable IP: all 5 IPs on 2 ENIs are assigned;"),
        "{}",
        err.message
    );
    assert!(err.message.contains("limit"), "{}", err.message);
    assert_eq!(err.stats.assigned, 5);
}

#[test]
fn exhaustion_with_cooldown_says_how_long() {
    let (mut ds, clock) = store(30);
    for i in 0..5 {
        ds.assign(&key(&format!("c{i}")), md("p")).unwrap();
    }
    ds.release(&key("c0")).unwrap();
    clock.advance(Duration::from_secs(3));
    ds.release(&key("c1")).unwrap();
    let err = ds.assign(&key("c9"), md("p")).unwrap_err();
    assert_eq!(
        err.message,
        format!(
            "no assignable IP on 2 ENIs: 3 IPs are assigned and 2 of 5 IPs are in cooldown for up to 30 s (IP_COOLDOWN_PERIOD=30 s; the first becomes assignable in 27 s); {IMDS_ONLY_CAPACITY_NOTE}"
        )
    );
    for i in 2..5 {
        ds.release(&key(&format!("c{i}"))).unwrap();
    }
    let err = ds.exhaustion_reason().unwrap();
    assert!(
        err.message
            .starts_with("no assignable IP on 2 ENIs: 5 of 5 IPs are in cooldown for up to 30 s"),
        "{}",
        err.message
    );
}

#[test]
fn exhaustion_with_no_secondary_ips() {
    let clock = Arc::new(ManualClock::new());
    let mut ds = Datastore::new(Duration::from_secs(30), clock, "note");
    ds.add_eni(eni("eni-a", 0, "10.0.0.10")).unwrap();
    let err = ds.assign(&key("c"), md("p")).unwrap_err();
    assert_eq!(
        err.message,
        "no assignable IP: the node's 1 ENI has no secondary IPs; note"
    );
    assert!(ds.exhaustion_reason().is_some());
}

#[test]
fn stats_track_every_state() {
    let (mut ds, _) = store(30);
    assert_eq!(
        ds.stats(),
        Stats {
            enis: 2,
            total: 5,
            assigned: 0,
            cooling: 0,
            assignable: 5
        }
    );
    ds.assign(&key("a"), md("a")).unwrap();
    ds.assign(&key("b"), md("b")).unwrap();
    ds.release(&key("a")).unwrap();
    assert_eq!(
        ds.stats(),
        Stats {
            enis: 2,
            total: 5,
            assigned: 1,
            cooling: 1,
            assignable: 3
        }
    );
    assert!(ds.exhaustion_reason().is_none());
}

#[test]
fn rollbacks_restore_the_previous_state() {
    let (mut ds, _) = store(30);
    let before = ds.stats();
    let (a, _) = ds.assign(&key("c1"), md("p1")).unwrap();
    ds.rollback_assign(&key("c1"));
    assert_eq!(ds.stats(), before);
    assert!(ds.lookup(&key("c1")).is_none());
    let (again, _) = ds.assign(&key("c1"), md("p1")).unwrap();
    assert_eq!(again.ip, a.ip, "a rolled-back address is free at once");

    let held = ds.stats();
    let released = ds.release(&key("c1")).unwrap();
    ds.rollback_release(&released);
    assert_eq!(ds.stats(), held);
    assert_eq!(ds.lookup(&key("c1")).unwrap().ip, a.ip);
    // The stale cooling entry must not free the address later.
    ds.assign(&key("c2"), md("p2")).unwrap();
    let all: HashSet<Ipv4Addr> = ds.assignments().iter().map(|x| x.ipv4().unwrap()).collect();
    assert_eq!(all.len(), 2);
}

#[test]
fn rollback_release_with_zero_cooldown() {
    let (mut ds, _) = store(0);
    let (a, _) = ds.assign(&key("c1"), md("p1")).unwrap();
    let released = ds.release(&key("c1")).unwrap();
    ds.rollback_release(&released);
    let (b, _) = ds.assign(&key("c2"), md("p2")).unwrap();
    assert_ne!(a.ip, b.ip);
    assert_eq!(ds.lookup(&key("c1")).unwrap().ip, a.ip);
}

#[test]
fn restore_puts_assignments_back_and_checks_conflicts() {
    let (mut ds, _) = store(30);
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let r = ds
        .restore(&key("c1"), md("p1"), ip("10.0.0.21"), at)
        .unwrap();
    assert_eq!((r.device_number, r.eni_id.as_str()), (1, "eni-b"));
    assert_eq!(ds.lookup(&key("c1")).unwrap().assigned_at, at);
    assert!(matches!(
        ds.restore(&key("c2"), md("p2"), ip("10.0.0.21"), at),
        Err(DatastoreError::IpAssigned { .. })
    ));
    assert!(matches!(
        ds.restore(&key("c1"), md("p1"), ip("10.0.0.22"), at),
        Err(DatastoreError::KeyAssigned { .. })
    ));
    assert!(matches!(
        ds.restore(&key("c3"), md("p3"), ip("10.9.9.9"), at),
        Err(DatastoreError::UnknownIp { .. })
    ));
    // The restored address is not handed out again.
    let ips: Vec<Ipv4Addr> = (0..4)
        .map(|i| {
            ds.assign(&key(&format!("n{i}")), md("p"))
                .unwrap()
                .0
                .ipv4()
                .unwrap()
        })
        .collect();
    assert!(!ips.contains(&ip("10.0.0.21")));
    assert!(ds.assign(&key("n9"), md("p")).is_err());
}

#[test]
fn eni_and_ip_bookkeeping_rules() {
    let (mut ds, _) = store(30);
    type Expected = fn(&DatastoreError) -> bool;
    let refused: [(&str, &str, Expected); 4] = [
        ("eni-a", "10.0.0.10", |e| {
            matches!(e, DatastoreError::PrimaryIp { .. })
        }),
        ("eni-a", "10.0.0.21", |e| {
            matches!(e, DatastoreError::DuplicateIp { .. })
        }),
        ("eni-a", "10.1.0.5", |e| {
            matches!(e, DatastoreError::OutsideSubnet { .. })
        }),
        ("eni-x", "10.0.0.50", |e| {
            matches!(e, DatastoreError::UnknownEni { .. })
        }),
    ];
    for (eni, addr, is_expected) in refused {
        let err = ds.add_ip(eni, ip(addr)).unwrap_err();
        assert!(is_expected(&err), "add_ip({eni}, {addr}): {err:?}");
    }
    assert!(matches!(
        ds.add_eni(eni("eni-c", 1, "10.0.0.30")),
        Err(DatastoreError::DuplicateEni { .. })
    ));
    let (a, _) = ds.assign(&key("c1"), md("p1")).unwrap();
    assert!(matches!(
        ds.remove_ip(a.ipv4().unwrap()),
        Err(DatastoreError::IpAssigned { .. })
    ));
    ds.remove_ip(ip("10.0.0.12")).unwrap();
    assert_eq!(ds.stats().total, 4);
    assert_eq!(
        ds.eni_addresses("eni-a"),
        vec![(ip("10.0.0.11"), Some(key("c1"))), (ip("10.0.0.13"), None)]
    );
    assert!(matches!(
        ds.remove_eni("eni-a"),
        Err(DatastoreError::EniInUse { .. })
    ));
    ds.assign(&key("c2"), md("p2")).unwrap();
    ds.release(&key("c2")).unwrap();
    let removed = ds.remove_eni("eni-b");
    assert!(
        removed.is_ok(),
        "ENI with only free/cooling IPs can go: {removed:?}"
    );
    let s = ds.stats();
    assert_eq!((s.enis, s.total, s.cooling), (1, 2, 1));
}

#[test]
fn removing_a_cooling_ip_drops_it_from_the_counts() {
    let (mut ds, clock) = store(30);
    let (a, _) = ds.assign(&key("c1"), md("p1")).unwrap();
    ds.release(&key("c1")).unwrap();
    ds.remove_ip(a.ipv4().unwrap()).unwrap();
    assert_eq!(ds.stats().cooling, 0);
    clock.advance(Duration::from_secs(60));
    let s = ds.stats();
    assert_eq!((s.total, s.assignable), (4, 4));
    // Re-adding it later (metadata shows it again) works and does not duplicate it.
    ds.add_ip("eni-a", a.ipv4().unwrap()).unwrap();
    assert_eq!(ds.stats().assignable, 5);
}

#[test]
fn gc_keys_are_per_network() {
    let (mut ds, _) = store(30);
    ds.assign(&key("c1"), md("p1")).unwrap();
    let other = IpamKey {
        network_name: "other".into(),
        container_id: "c2".into(),
        if_name: "eth0".into(),
    };
    ds.assign(&other, md("p2")).unwrap();
    assert_eq!(ds.keys_of_network("aws-cni"), vec![key("c1")]);
    assert_eq!(ds.keys_of_network("other"), vec![other]);
}

/// A small xorshift generator: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random assign/release/rollback/cooldown/reconcile sequences never hand one address to two
/// keys, and the counters always agree with a recount.
#[test]
fn randomized_operations_never_double_assign() {
    for seed in 1..=20u64 {
        let (mut ds, clock) = store(if seed % 3 == 0 { 0 } else { 5 });
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut holders: HashMap<IpamKey, Ipv4Addr> = HashMap::new();
        for _ in 0..3000 {
            let k = key(&format!("c{}", rng.below(12)));
            match rng.below(10) {
                0..=3 => match ds.assign(&k, md("p")) {
                    Ok((a, new)) => {
                        if let Some(prev) = holders.get(&k) {
                            assert!(!new);
                            assert_eq!(*prev, a.ip);
                        } else {
                            assert!(new);
                            assert!(
                                !holders.values().any(|ip| *ip == a.ip),
                                "seed {seed}: {} handed out twice",
                                a.ip
                            );
                            if rng.below(8) == 0 {
                                ds.rollback_assign(&k);
                            } else {
                                holders.insert(k, a.ipv4().unwrap());
                            }
                        }
                    }
                    Err(e) => assert_eq!(e.stats.assignable, 0, "seed {seed}: {}", e.message),
                },
                4..=6 => {
                    let released = ds.release(&k);
                    assert_eq!(
                        released.as_ref().map(|r| r.assignment.ipv4().unwrap()),
                        holders.get(&k).copied()
                    );
                    if let Some(r) = released {
                        if rng.below(8) == 0 {
                            ds.rollback_release(&r);
                        } else {
                            holders.remove(&k);
                        }
                    }
                }
                7 => clock.advance(Duration::from_secs(rng.below(4))),
                8 => {
                    // Metadata churn: an address disappears (if not assigned) and comes back.
                    let candidate =
                        Ipv4Addr::new(10, 0, 0, 11 + u8::try_from(rng.below(3)).unwrap());
                    if !holders.values().any(|ip| *ip == candidate)
                        && ds.remove_ip(candidate).is_ok()
                    {
                        ds.add_ip("eni-a", candidate).unwrap();
                    }
                }
                _ => {
                    let s = ds.stats();
                    assert_eq!(s.assigned, holders.len(), "seed {seed}");
                    assert_eq!(s.total, 5);
                    assert_eq!(s.assigned + s.cooling + s.assignable, s.total);
                    let listed: HashSet<Ipv4Addr> =
                        ds.assignments().iter().map(|a| a.ipv4().unwrap()).collect();
                    assert_eq!(listed.len(), holders.len(), "seed {seed}");
                }
            }
            for (k, ip) in &holders {
                assert_eq!(ds.lookup(k).map(|a| a.ipv4().unwrap()), Some(*ip));
            }
        }
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[test]
fn a_prefix_adds_its_16_addresses_and_leaves_whole_once_free_and_cooled() {
    let (mut ds, clock) = store(30);
    ds.add_prefix("eni-b", net("10.0.0.32/28")).unwrap();
    let b = ds.eni("eni-b").unwrap();
    assert_eq!(
        (b.total, b.secondary, b.slots(), b.free_prefixes()),
        (18, 2, 3, 1)
    );
    assert_eq!(ds.eni_prefixes("eni-b"), [net("10.0.0.32/28")]);
    assert_eq!(ds.eni_secondary_addresses("eni-b").len(), 2);
    assert_eq!(ds.eni_addresses("eni-b").len(), 18);
    assert_eq!(ds.stats().total, 5 + 16);

    ds.set_prefix_mode(true);
    let (a, _) = ds.assign(&key("c1"), md("p")).unwrap();
    assert_eq!(
        (a.ipv4().unwrap(), a.eni_id.as_str()),
        (ip("10.0.0.32"), "eni-b")
    );
    let b = ds.eni("eni-b").unwrap();
    assert_eq!((b.prefixes[0].assigned, b.free_prefixes()), (1, 0));
    assert!(matches!(
        ds.remove_prefix("eni-b", net("10.0.0.32/28")),
        Err(DatastoreError::PrefixInUse { .. })
    ));
    ds.release(&key("c1")).unwrap();
    // Free again (nothing assigned) but cooling: counted free, not removable.
    assert_eq!(ds.eni("eni-b").unwrap().free_prefixes(), 1);
    assert!(ds.take_free_prefixes(5).is_empty());
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        ds.take_free_prefixes(5),
        [("eni-b".to_owned(), net("10.0.0.32/28"))]
    );
    let b = ds.eni("eni-b").unwrap();
    assert_eq!((b.total, b.prefixes.len()), (2, 0));
    assert_eq!(ds.stats().total, 5);
}

#[test]
fn the_mode_decides_which_kinds_new_pods_take() {
    let (mut ds, _) = store(0);
    ds.add_prefix("eni-b", net("10.0.0.48/28")).unwrap();
    // Secondary mode: the five secondary addresses only, as in the reference.
    let got: Vec<Ipv4Addr> = (0..5)
        .map(|i| {
            ds.assign(&key(&format!("s{i}")), md("p"))
                .unwrap()
                .0
                .ipv4()
                .unwrap()
        })
        .collect();
    assert_eq!(
        got,
        [
            ip("10.0.0.11"),
            ip("10.0.0.12"),
            ip("10.0.0.13"),
            ip("10.0.0.21"),
            ip("10.0.0.22")
        ]
    );
    assert!(ds.assign(&key("s5"), md("p")).is_err());
    assert!(ds.exhaustion_reason().is_some());
    assert_eq!(
        ds.stats().assignable,
        0,
        "free prefix addresses are not assignable"
    );
    for i in 0..5 {
        ds.release(&key(&format!("s{i}"))).unwrap();
    }
    // Prefix mode: the prefix's 16 first, then the secondary addresses.
    ds.set_prefix_mode(true);
    let got: Vec<Ipv4Addr> = (0..17)
        .map(|i| {
            ds.assign(&key(&format!("p{i}")), md("p"))
                .unwrap()
                .0
                .ipv4()
                .unwrap()
        })
        .collect();
    assert_eq!(got[0], ip("10.0.0.48"));
    assert_eq!(got[15], ip("10.0.0.63"));
    assert_eq!(got[16], ip("10.0.0.11"));
    let unique: HashSet<Ipv4Addr> = got.iter().copied().collect();
    assert_eq!(unique.len(), 17, "no address twice");
}

#[test]
fn prefixes_that_cannot_hold_pods_are_refused_whole() {
    let (mut ds, _) = store(30);
    let refused = [
        // Not aligned, not a /28.
        (net("10.0.0.40/28"), "not an aligned /28"),
        (net("10.0.0.32/27"), "not an aligned /28"),
        // Holds the VPC's reserved first addresses, or the ENI's own address.
        (net("10.0.0.0/28"), "reserved"),
        (net("10.0.0.16/28"), "primary address"),
        // Outside the subnet.
        (net("10.0.1.0/28"), "outside subnet"),
    ];
    for (prefix, why) in refused {
        let err = ds.add_prefix("eni-b", prefix).unwrap_err().to_string();
        assert!(err.contains(why), "{prefix}: {err}");
    }
    // 10.0.0.21 and .22 are eni-b's secondary addresses already.
    ds.remove_ip(ip("10.0.0.21")).unwrap();
    ds.add_ip("eni-a", ip("10.0.0.21")).unwrap();
    ds.add_prefix("eni-b", net("10.0.0.64/28")).unwrap();
    let err = ds.add_prefix("eni-a", net("10.0.0.64/28")).unwrap_err();
    assert!(matches!(err, DatastoreError::DuplicateIp { .. }), "{err}");
    assert_eq!(ds.eni("eni-a").unwrap().prefixes.len(), 0);
    assert_eq!(ds.stats().total, 5 + 16);
}

#[test]
fn free_prefixes_go_from_the_highest_eni_and_prefix_first_and_busy_ones_stay() {
    let (mut ds, _) = store(0);
    ds.add_prefix("eni-a", net("10.0.0.32/28")).unwrap();
    ds.add_prefix("eni-a", net("10.0.0.48/28")).unwrap();
    ds.add_prefix("eni-b", net("10.0.0.64/28")).unwrap();
    ds.set_prefix_mode(true);
    let (a, _) = ds.assign(&key("c1"), md("p")).unwrap();
    assert_eq!(a.ip, ip("10.0.0.32"));
    assert_eq!(
        ds.take_free_prefixes(1),
        [("eni-b".to_owned(), net("10.0.0.64/28"))]
    );
    assert_eq!(
        ds.take_free_prefixes(5),
        [("eni-a".to_owned(), net("10.0.0.48/28"))]
    );
    assert_eq!(ds.eni_prefixes("eni-a"), [net("10.0.0.32/28")]);
    // Secondary addresses are not taken with prefixes, and prefix addresses not with them.
    let taken = ds.take_free_ips(100);
    assert_eq!(taken.len(), 5);
    assert!(
        taken
            .iter()
            .all(|(_, ip)| !net("10.0.0.32/28").contains(ip))
    );
}
