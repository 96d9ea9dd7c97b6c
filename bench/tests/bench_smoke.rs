//! Smoke run of the benchmark driver (`make bench`, issue 6) with tiny N, so its harness is
//! compiled and exercised by `make test`: a simulated node, both plugins through every kind of
//! round, the phase breakdown, the floors, ipamd's load, start-up and memory, IPv6 pods on a
//! node whose ipamd runs in IPv6 mode, and the report.
//! It asserts what every figure is made of (sample counts, phases, restored pods, the report's
//! sections, DEL + netns removal ending no earlier than DEL, the veth left by aws-cni's DEL and
//! deleted by ptp's, the comparison with a previous run's JSON), never how fast anything was. Needs root, like every end-to-end test; run
//! `cargo build --workspace` and `cargo test` (which builds the `kernel-floor` and `peak-rss`
//! examples of aws-cni) first.

use std::path::PathBuf;

use vpc_cni_bench::compare::Previous;
use vpc_cni_bench::latency::Round;
use vpc_cni_bench::plugins::Flavor;
use vpc_cni_bench::report::ReportInputs;
use vpc_cni_bench::{self as bench, BenchConfig};

fn example(name: &str) -> PathBuf {
    let path = test_support::prereqs::profile_dir()
        .join("examples")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p aws-cni --example {name}` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

#[test]
fn benchmark_driver_runs_every_measurement_with_tiny_n() {
    test_support::prereqs::require_root().unwrap_or_else(|e| panic!("{e}"));
    let plugin = test_support::prereqs::aws_cni().unwrap_or_else(|e| panic!("{e}"));
    let mut c = BenchConfig::full(plugin, example("kernel-floor"), example("peak-rss"));
    c.pods = 3;
    c.concurrency = vec![1, 2];
    c.reps = 1;
    c.cycle_concurrency = 2;
    c.exec_floor_reps = 3;
    c.load_clients = 2;
    c.load_iterations = 4;
    c.rss_pods = 2;
    c.startup_pods = 5;
    c.startup_reps = 1;
    c.idle_window = std::time::Duration::from_secs(1);
    c.progress = false;
    c.command = "cargo test --test bench_smoke".into();
    let burst = bench::burst::BurstConfig {
        prefix_pods: 20,
        secondary_pods: 12,
        concurrency: 4,
        reps: 2,
    };
    c.burst = Some(burst);
    let criterion = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    c.criterion_dir = Some(criterion.path().to_owned());

    let r = bench::run(&c).unwrap_or_else(|e| panic!("benchmark run failed: {e}"));

    assert_eq!(r.failures(), 0, "failed calls: {:#?}", r.rounds);
    // Both plugins at both concurrencies, every pod added and deleted.
    assert_eq!(r.rounds.len(), 4);
    for flavor in [Flavor::Ours, Flavor::Ptp] {
        for conc in [1, 2] {
            let round = r
                .rounds
                .iter()
                .find(|x| x.flavor == flavor && x.concurrency == conc)
                .unwrap_or_else(|| panic!("no {flavor:?} round at C={conc}"));
            assert_eq!(round.add.latencies_ns.len(), 3);
            assert_eq!(round.del.latencies_ns.len(), 3);
            assert!(round.add.wall_ns > 0 && round.leaked_links.is_empty());
            // aws-cni's DEL leaves the veth pair to the namespace's removal; ptp's deletes it.
            let left = if flavor == Flavor::Ours { 3 } else { 0 };
            assert_del_netns_is_sane(round, left);
            if flavor == Flavor::Ptp {
                assert!(round.veth_wait_ns.iter().all(|&w| w == 0), "{round:#?}");
            }
        }
    }
    assert_eq!(r.cycles.len(), 2);
    for cy in &r.cycles {
        assert_eq!(cy.cycle_ns.len(), 3, "{cy:#?}");
        assert_eq!(cy.add_del_ns.len(), 3, "{cy:#?}");
        // A cycle holds its ADD and DEL plus the namespace's creation and removal.
        assert!(
            cy.cycle_ns.iter().zip(&cy.add_del_ns).all(|(c, ad)| c > ad),
            "{cy:#?}"
        );
        assert!(cy.wall_ns > 0 && cy.failures.is_empty(), "{cy:#?}");
    }
    assert_eq!(r.floor_rounds.len(), 1);
    assert_eq!(r.floor_rounds[0].add.latencies_ns.len(), 3);
    assert_del_netns_is_sane(&r.floor_rounds[0], 3);

    // The plugin's own phase marks were joined with the driver's clock.
    let add = r
        .phases
        .iter()
        .find(|t| t.command == "ADD")
        .unwrap_or_else(|| panic!("no ADD phases"));
    let names: Vec<&str> = add.phases.iter().map(|p| p.name.as_str()).collect();
    for phase in [
        "exec_startup",
        "env_config",
        "ipamd_connect",
        "add_network_rpc",
        "veth_create",
        "host_rules",
        "print",
        "exit_reap",
    ] {
        assert!(names.contains(&phase), "ADD phases {names:?} lack {phase}");
    }
    assert_eq!(add.n, 3);
    assert!(add.vm_hwm_kib.is_some_and(|(med, _)| med > 0));
    let del = r
        .phases
        .iter()
        .find(|t| t.command == "DEL")
        .unwrap_or_else(|| panic!("no DEL phases"));
    let del_names: Vec<&str> = del.phases.iter().map(|p| p.name.as_str()).collect();
    for phase in [
        "host_links_routes",
        "host_rules_del",
        "pod_addr_del",
        "del_network_rpc",
    ] {
        assert!(
            del_names.contains(&phase),
            "DEL phases {del_names:?} lack {phase}"
        );
    }
    // DEL leaves the veth pair to the namespace's removal.
    assert!(!del_names.contains(&"veth_del"), "{del_names:?}");

    // Peak RSS through the helper, both plugins.
    assert_eq!(r.rss.len(), 2);
    assert!(
        r.rss
            .iter()
            .all(|x| x.add_kib.len() == 2 && x.add_kib.iter().all(|&k| k > 0))
    );

    // Floors.
    assert_eq!(r.exec_floors.ours_version.n, 3);
    assert_eq!(r.kernel_floor.n, 3);
    let ops: Vec<&str> = r
        .kernel_floor
        .add
        .iter()
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(ops.first(), Some(&"netlink_open"));
    assert!(
        ops.contains(&"veth_create") && ops.contains(&"host_rules"),
        "{ops:?}"
    );
    let del_ops: Vec<&str> = r
        .kernel_floor
        .del
        .iter()
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(
        del_ops,
        ["host_route_del", "host_rules_del", "pod_addr_del"],
        "the floor's DEL does what the plugin's does"
    );

    // IPv6 pods: the IPv4 rounds' sizes (3 pods, C=1 and 2, one run), both plugins, every pod
    // added with an address of its family and deleted, the phases of the IPv6 data plane.
    let v6 = r.ipv6.as_ref().unwrap_or_else(|| panic!("no IPv6 section"));
    assert_eq!(
        (v6.pods, v6.reps, v6.concurrency.as_slice()),
        (3, 1, &[1, 2][..])
    );
    assert_eq!(v6.rounds.len(), 4, "{:#?}", v6.rounds);
    for round in &v6.rounds {
        assert_eq!(round.add.latencies_ns.len(), 3, "{round:#?}");
        assert!(round.leaked_links.is_empty(), "{round:#?}");
        let left = if round.flavor == Flavor::Ours { 3 } else { 0 };
        assert_del_netns_is_sane(round, left);
    }
    assert_eq!(v6.figures.len(), 6, "{:#?}", v6.figures);
    assert!(
        v6.figures
            .iter()
            .all(|f| f.ratio_median.is_some() && f.ipv4_ratio_median.is_some()),
        "{:#?}",
        v6.figures
    );
    let v6_add = v6
        .phases
        .iter()
        .find(|t| t.command == "ADD")
        .unwrap_or_else(|| panic!("no IPv6 ADD phases"));
    let v6_names: Vec<&str> = v6_add.phases.iter().map(|p| p.name.as_str()).collect();
    for phase in ["pod_sysctls", "pod_dad", "host_rules"] {
        assert!(
            v6_names.contains(&phase),
            "IPv6 ADD phases {v6_names:?} lack {phase}"
        );
    }
    assert!(v6.wall_s > 0.0);

    // ipamd: load with the checkpoint on tmpfs (2 clients, 1 client) and in /var/tmp (disk).
    assert_eq!(r.loads.len(), 3);
    assert_eq!(r.loads[0].add.n, 8);
    assert_eq!(r.loads[1].clients, 1);
    assert_eq!(r.loads[0].checkpoint, "tmpfs");
    let var_tmp = if bench::on_tmpfs(std::path::Path::new("/var/tmp")) {
        "tmpfs"
    } else {
        "disk"
    };
    assert_eq!(r.loads[2].checkpoint, var_tmp);
    assert_eq!(r.startups.len(), 2);
    assert_eq!(r.startups[0].pods, 0);
    assert_eq!(r.startups[1].restored, 5, "every checkpointed pod restored");
    let idle = r.startups[1]
        .idle_cpu
        .unwrap_or_else(|| panic!("no idle CPU figure after the start with pods"));
    assert!(
        idle.window_s >= 1.0 && idle.cpu_ms >= 0.0 && idle.percent_of_core() < 100.0,
        "{idle:?}"
    );
    assert!(r.ipamd_memory.len() >= 3);
    assert!(
        r.ipamd_memory
            .iter()
            .all(|(_, m)| m.rss_kib > 0 && m.hwm_kib >= m.rss_kib)
    );
    assert!(r.criterion.is_empty());

    let md = bench::report::markdown(
        &r,
        &ReportInputs {
            json: None,
            previous: Previous::NotAsked,
        },
    );
    for section in [
        "## Targets",
        "## 1. Per-pod ADD and DEL latency",
        "### Concurrency 2",
        "**ours/ptp**",
        "| aws-cni | DEL + netns removal |",
        "| ptp+host-local | DEL + netns removal |",
        "| **ours/ptp** | DEL + netns removal |",
        "Parts of DEL + netns removal",
        "### IPv6 pods",
        "| IPv6 rounds | 3 pods per round; concurrency 1, 2;",
        "| 2 | DEL + netns removal |",
        "### IPv6 pods: where the time goes",
        "| pod_dad | – |",
        "### ADD+DEL cycle throughput",
        "ADD → DEL median ms",
        "DEL + netns removal median",
        "## 2. Where the time goes",
        "add_network_rpc",
        "### Kernel floor",
        "## 3. ipamd",
        "### Start-up to ready",
        "## 4. A burst onto a cold node",
        "| AttachNetworkInterface | 1400 |",
        "## 5. Binary size and memory",
        "cargo test --test bench_smoke",
    ] {
        assert!(md.contains(section), "report lacks {section:?}:\n{md}");
    }
    // Figures of other runs come only from their JSON.
    for absent in ["## Compared with the previous run", "Optimisations chosen"] {
        assert!(!md.contains(absent), "report has {absent:?}:\n{md}");
    }

    // Both bursts: every pod served once, on the node's addresses, beyond the cold pool (so
    // the pool grew through EC2 during the burst), with the EC2 calls counted from moto's log.
    assert_eq!(r.bursts.len(), 2, "{:#?}", r.bursts);
    for b in &r.bursts {
        let pods = match b.mode {
            bench::burst::BurstMode::Prefixes => burst.prefix_pods,
            bench::burst::BurstMode::SecondaryIps => burst.secondary_pods,
        };
        assert_eq!(
            (b.pods, b.unserved, b.distinct_addresses),
            (pods, 0, pods),
            "{b:#?}"
        );
        assert!(b.cold_pool < pods, "{b:#?}");
        assert!(b.address_calls() >= 2, "start-up and burst: {b:#?}");
        assert!(
            b.time_to_all_ms > 0.0 && b.warm_ms > 0.0 && b.ec2_floor_ms > 0.0,
            "{b:#?}"
        );
        assert!(!b.floor_calls.is_empty(), "{b:#?}");
        // Every run is kept; the row is the median one.
        assert_eq!(b.time_samples_ms.len(), 2, "{b:#?}");
        assert!(b.time_samples_ms.contains(&b.time_to_all_ms), "{b:#?}");
    }
    let pd = &r.bursts[0];
    assert!(
        pd.enis == 1 && pd.prefixes >= 2,
        "20 pods: at least two prefixes, all on the primary ENI: {pd:#?}"
    );
    let ip = &r.bursts[1];
    assert_eq!(
        ip.calls("AttachNetworkInterface"),
        1,
        "12 pods: one more ENI: {ip:#?}"
    );
    assert!(
        r.targets
            .iter()
            .any(|t| t.key == "burst_pd_floor_ratio_median" && t.value.is_some()),
        "{:#?}",
        r.targets
    );

    // The headline DEL and cycle targets count the namespace's removal; none is on bare DEL.
    let targets = &r.targets;
    for key in [
        "del_netns_median_c1",
        "del_netns_median_c2",
        "cycles_netns_c2",
    ] {
        assert!(
            targets
                .iter()
                .any(|t| t.key == key && t.met.is_some() && t.value.is_some()),
            "no {key}: {targets:#?}"
        );
    }
    assert!(
        targets
            .iter()
            .all(|t| !t.key.starts_with("del_") || t.key.starts_with("del_netns_")),
        "{targets:#?}"
    );
    let json = serde_json::to_value(&r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["rounds"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        json["ipv6"]["figures"].as_array().map(Vec::len),
        Some(6),
        "the IPv6 figures are in the JSON"
    );
    assert_eq!(
        json["targets"].as_array().map(Vec::len),
        Some(targets.len())
    );

    // The next run compares itself with this run's JSON, target by target.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let prev = dir.path().join("results.json");
    std::fs::write(&prev, json.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let compared = bench::report::markdown(
        &r,
        &ReportInputs {
            json: Some(prev.clone()),
            previous: Previous::load(&prev),
        },
    );
    assert!(
        compared.contains("## Compared with the previous run") && compared.contains("| +0 % |"),
        "{compared}"
    );
    assert!(
        compared.contains("| IPv6 pods, ours/ptp median |"),
        "{compared}"
    );
    // Results of a run before IPv6 pods were measured are still compared, target by target.
    let mut old = json.clone();
    if let Some(o) = old.as_object_mut() {
        o.remove("ipv6");
    }
    std::fs::write(&prev, old.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let before_v6 = bench::report::markdown(
        &r,
        &ReportInputs {
            json: None,
            previous: Previous::load(&prev),
        },
    );
    assert!(
        before_v6.contains("| +0 % |") && before_v6.contains("measured no IPv6 pods"),
        "{before_v6}"
    );
    if let Some(o) = old.as_object_mut() {
        o.remove("targets");
    }
    std::fs::write(&prev, old.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let older = bench::report::markdown(
        &r,
        &ReportInputs {
            json: None,
            previous: Previous::load(&prev),
        },
    );
    assert!(older.contains("no evaluated targets"), "{older}");
}

/// DEL + netns removal of every pod: as many samples as DELs, each ending no earlier than its
/// DEL, with its parts recorded; `left` pods had their veth left by DEL.
fn assert_del_netns_is_sane(round: &Round, left: usize) {
    let n = round.del.latencies_ns.len();
    assert_eq!(round.del_netns.latencies_ns.len(), n, "{round:#?}");
    assert!(round.del_netns.wall_ns > 0 && round.del_netns.failures.is_empty());
    assert!(
        round
            .del_netns
            .latencies_ns
            .iter()
            .zip(&round.del.latencies_ns)
            .all(|(dn, d)| dn >= d),
        "DEL + netns removal shorter than DEL: {round:#?}"
    );
    assert_eq!(round.netns_removal_ns.len(), n);
    assert!(round.netns_removal_ns.iter().all(|&r| r > 0), "{round:#?}");
    assert_eq!(round.veth_wait_ns.len(), n);
    assert_eq!(round.veths_left_by_del, left, "{round:#?}");
}
