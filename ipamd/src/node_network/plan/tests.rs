//! Tests of the iptables plan: the wanted rules per settings, parsing `iptables-save`, and
//! the batches that turn one into the other.

use super::*;

fn settings() -> RuleSettings {
    RuleSettings {
        external_snat: false,
        exclude_snat_cidrs: Vec::new(),
        randomize_snat: RandomizeSnat::Prng,
        random_fully_supported: true,
        connmark: 0x80,
        node_port_support: true,
        veth_prefix: "eni".into(),
    }
}

fn node() -> NodeAddressing {
    NodeAddressing {
        vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
        primary_ip: Ipv4Addr::new(10, 0, 0, 10),
        primary_link: "eth0".into(),
    }
}

/// The batch a fresh node gets, as text lines (without `*table`/`COMMIT`).
fn fresh(table: Table, s: &RuleSettings) -> Vec<String> {
    let p = plan(table, &desired(table, s, &node()), &CurrentTable::default());
    p.map(|p| {
        p.batch
            .lines()
            .filter(|l| !l.starts_with('*') && *l != "COMMIT")
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// `current` as iptables-save would print it after applying `lines` to an empty table.
fn saved(lines: &[&str]) -> CurrentTable {
    parse_save(&lines.join("\n"))
}

#[test]
fn default_nat_rules_are_the_references() {
    assert_eq!(
        fresh(Table::Nat, &settings()),
        vec![
            ":AWS-CONNMARK-CHAIN-0 - [0:0]",
            ":AWS-SNAT-CHAIN-0 - [0:0]",
            "-A AWS-CONNMARK-CHAIN-0 -m comment --comment \"AWS CONNMARK CHAIN\" -m addrtype --dst-type LOCAL -j RETURN",
            "-A AWS-CONNMARK-CHAIN-0 -d 10.0.0.0/16 -m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN",
            "-A AWS-CONNMARK-CHAIN-0 -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --set-xmark 0x80/0x80",
            "-A AWS-SNAT-CHAIN-0 -d 10.0.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN",
            "-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.0.10 --random-fully",
            "-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0",
            "-A PREROUTING -i eni+ -m comment --comment \"AWS, outbound connections\" -j AWS-CONNMARK-CHAIN-0",
            "-A PREROUTING -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80",
        ]
    );
}

#[test]
fn default_mangle_rules_mark_node_port_traffic_and_restore_on_pod_veths() {
    assert_eq!(
        fresh(Table::Mangle, &settings()),
        vec![
            "-A PREROUTING -i eth0 -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80",
            "-A PREROUTING -i eni+ -m comment --comment \"AWS, primary ENI\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80",
            "-A PREROUTING -i vlan+ -m comment --comment \"AWS, primary ENI\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80",
        ]
    );
}

#[test]
fn external_snat_drops_the_nat_part_and_keeps_node_port_marking() {
    let s = RuleSettings {
        external_snat: true,
        ..settings()
    };
    assert_eq!(desired(Table::Nat, &s, &node()), DesiredTable::default());
    assert_eq!(fresh(Table::Mangle, &s).len(), 3);

    let without_node_port = RuleSettings {
        node_port_support: false,
        ..s
    };
    assert_eq!(
        desired(Table::Mangle, &without_node_port, &node()),
        DesiredTable::default()
    );
}

#[test]
fn without_node_port_support_only_the_pod_restore_stays_in_mangle() {
    let s = RuleSettings {
        node_port_support: false,
        ..settings()
    };
    assert_eq!(
        fresh(Table::Mangle, &s),
        vec![
            "-A PREROUTING -i eni+ -m comment --comment \"AWS, primary ENI\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80"
        ]
    );
}

#[test]
fn excluded_cidrs_return_in_both_chains_and_the_default_route_has_no_destination() {
    let s = RuleSettings {
        exclude_snat_cidrs: vec![
            "203.0.113.7/24".parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
            "10.0.0.0/16".parse().unwrap(),
        ],
        ..settings()
    };
    let want = desired(Table::Nat, &s, &node());
    assert_eq!(
        want.chains[SNAT_CHAIN],
        vec![
            "-d 10.0.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN",
            "-d 203.0.113.0/24 -m comment --comment \"AWS SNAT CHAIN EXCLUSION\" -j RETURN",
            "-m comment --comment \"AWS SNAT CHAIN EXCLUSION\" -j RETURN",
            "-d 10.0.0.0/16 -m comment --comment \"AWS SNAT CHAIN EXCLUSION\" -j RETURN",
            "! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.0.10 --random-fully",
        ]
    );
    // The connmark chain returns for each distinct CIDR once.
    assert_eq!(
        want.chains[CONNMARK_CHAIN],
        vec![
            "-m comment --comment \"AWS CONNMARK CHAIN\" -m addrtype --dst-type LOCAL -j RETURN",
            "-d 10.0.0.0/16 -m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN",
            "-d 203.0.113.0/24 -m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN",
            "-m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN",
            "-m comment --comment \"AWS, CONNMARK\" -j CONNMARK --set-xmark 0x80/0x80",
        ]
    );
}

#[test]
fn randomize_snat_picks_the_flag_and_prng_falls_back_without_random_fully() {
    let snat_rule = |randomize, supported| {
        let s = RuleSettings {
            randomize_snat: randomize,
            random_fully_supported: supported,
            ..settings()
        };
        desired(Table::Nat, &s, &node()).chains[SNAT_CHAIN]
            .last()
            .unwrap()
            .clone()
    };
    assert!(snat_rule(RandomizeSnat::Prng, true).ends_with("--to-source 10.0.0.10 --random-fully"));
    assert!(snat_rule(RandomizeSnat::Prng, false).ends_with("--to-source 10.0.0.10 --random"));
    assert!(snat_rule(RandomizeSnat::HashRandom, true).ends_with("--to-source 10.0.0.10 --random"));
    assert!(snat_rule(RandomizeSnat::None, true).ends_with("--to-source 10.0.0.10"));
}

#[test]
fn connmark_and_veth_prefix_come_from_the_settings() {
    let s = RuleSettings {
        connmark: 0x4000,
        veth_prefix: "cali".into(),
        ..settings()
    };
    let lines = fresh(Table::Nat, &s).join("\n") + &fresh(Table::Mangle, &s).join("\n");
    assert!(lines.contains("-i cali+ -m comment --comment \"AWS, outbound connections\""));
    assert!(lines.contains("--set-xmark 0x4000/0x4000"));
    assert!(lines.contains("--restore-mark --nfmask 0x4000 --ctmask 0x4000"));
    assert!(!lines.contains("0x80"));
}

#[test]
fn several_vpc_cidrs_each_return_once() {
    let mut n = node();
    n.vpc_cidrs = vec![
        "10.0.0.0/16".parse().unwrap(),
        "100.64.0.0/16".parse().unwrap(),
        "10.0.0.0/16".parse().unwrap(),
    ];
    let want = desired(Table::Nat, &settings(), &n);
    let returns: Vec<_> = want.chains[SNAT_CHAIN]
        .iter()
        .filter(|r| r.ends_with("-j RETURN"))
        .collect();
    assert_eq!(returns.len(), 2, "{returns:?}");
}

#[test]
fn parse_save_reads_chains_and_rules_in_order() {
    let t = parse_save(
        "# Generated by iptables-save v1.8.9 (nf_tables)\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [3:180]\n:AWS-SNAT-CHAIN-0 - [0:0]\n-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0\n-A AWS-SNAT-CHAIN-0 -d 10.0.0.0/16 -j RETURN\nCOMMIT\n# Completed\n",
    );
    assert_eq!(
        t.chains,
        ["AWS-SNAT-CHAIN-0", "POSTROUTING", "PREROUTING"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(
        t.rules,
        vec![
            (
                "POSTROUTING".to_owned(),
                "-m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0".to_owned()
            ),
            (
                "AWS-SNAT-CHAIN-0".to_owned(),
                "-d 10.0.0.0/16 -j RETURN".to_owned()
            ),
        ]
    );
    assert_eq!(parse_save(""), CurrentTable::default());
}

#[test]
fn ownership_is_by_chain_name_comment_and_jump_target() {
    assert!(is_owned_chain("AWS-SNAT-CHAIN-0"));
    assert!(is_owned_chain("AWS-CONNMARK-CHAIN-12"));
    assert!(!is_owned_chain("AWS-SNAT-CHAIN-"));
    assert!(!is_owned_chain("AWS-SNAT-CHAIN-x"));
    assert!(!is_owned_chain("KUBE-POSTROUTING"));

    assert!(is_owned_rule(
        "POSTROUTING",
        "-m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0"
    ));
    assert!(is_owned_rule(
        "PREROUTING",
        "-i eth0 -m comment --comment \"AWS, primary ENI\" -j CONNMARK --set-xmark 0x80/0x80"
    ));
    // A jump to an owned chain from anywhere is ipamd's (or the chain could not be deleted).
    assert!(is_owned_rule("MY-CHAIN", "-j AWS-SNAT-CHAIN-1"));
    // The same comment in someone else's chain is not.
    assert!(!is_owned_rule(
        "KUBE-SERVICES",
        "-m comment --comment \"AWS, SNAT\" -j RETURN"
    ));
    assert!(!is_owned_rule(
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
    ));
    assert!(!is_owned_rule(
        "POSTROUTING",
        "-m comment --comment \"AWS SNAT CHAIN, mine\" -j ACCEPT"
    ));
}

#[test]
fn comments_are_read_quoted_escaped_or_bare() {
    assert_eq!(
        comment_of("-m comment --comment \"AWS, SNAT\" -j X").as_deref(),
        Some("AWS, SNAT")
    );
    assert_eq!(
        comment_of("-m comment --comment plain -j X").as_deref(),
        Some("plain")
    );
    assert_eq!(
        comment_of(r#"-m comment --comment "say \"hi\"" -j X"#).as_deref(),
        Some("say \"hi\"")
    );
    assert_eq!(comment_of("-j X"), None);
    assert_eq!(comment_of("-m comment --comment \"unterminated"), None);
}

/// The text of a table that already holds exactly what is wanted (as save prints it).
fn applied(table: Table, s: &RuleSettings) -> Vec<String> {
    let want = desired(table, s, &node());
    let mut lines: Vec<String> = want
        .chains
        .keys()
        .map(|c| format!(":{c} - [0:0]"))
        .collect();
    for (chain, rules) in want.rules.iter().chain(&want.chains) {
        lines.extend(rules.iter().map(|r| format!("-A {chain} {r}")));
    }
    lines
}

#[test]
fn a_table_that_holds_what_is_wanted_needs_no_batch() {
    for table in Table::ALL {
        let mut lines = applied(table, &settings());
        // Someone else's rules around ours change nothing.
        lines.insert(0, ":KUBE-POSTROUTING - [0:0]".into());
        lines.insert(
            1,
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
                .into(),
        );
        lines.push("-A KUBE-POSTROUTING -j MASQUERADE".into());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let want = desired(table, &settings(), &node());
        assert_eq!(plan(table, &want, &saved(&refs)), None, "{table}");
    }
}

#[test]
fn a_stale_cidr_rewrites_the_owned_chain_only() {
    let mut lines = applied(Table::Nat, &settings());
    lines.push(
        "-A AWS-SNAT-CHAIN-0 -d 10.99.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN"
            .into(),
    );
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let want = desired(Table::Nat, &settings(), &node());
    let p = plan(Table::Nat, &want, &saved(&refs)).unwrap();
    assert_eq!(p.summary.chains_written, vec![SNAT_CHAIN.to_owned()]);
    assert_eq!(p.summary.rules_deleted + p.summary.rules_added, 0);
    assert!(p.batch.starts_with("*nat\n:AWS-SNAT-CHAIN-0 - [0:0]\n"));
    assert!(!p.batch.contains("10.99.0.0"));
    assert!(p.batch.ends_with("COMMIT\n"));
}

#[test]
fn duplicated_or_misordered_builtin_rules_are_deleted_and_appended_once_in_order() {
    let want = desired(Table::Nat, &settings(), &node());
    let jump = &want.rules["POSTROUTING"][0];
    let [connmark_jump, restore] = [&want.rules["PREROUTING"][0], &want.rules["PREROUTING"][1]];
    let mut lines = vec![
        ":AWS-SNAT-CHAIN-0 - [0:0]".to_owned(),
        ":AWS-CONNMARK-CHAIN-0 - [0:0]".to_owned(),
    ];
    lines.push(format!("-A POSTROUTING {jump}"));
    lines.push(
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .into(),
    );
    lines.push(format!("-A POSTROUTING {jump}"));
    // Restore before the jump: the first packet would leave unmarked.
    lines.push(format!("-A PREROUTING {restore}"));
    lines.push(format!("-A PREROUTING {connmark_jump}"));
    for (chain, rules) in &want.chains {
        lines.extend(rules.iter().map(|r| format!("-A {chain} {r}")));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let p = plan(Table::Nat, &want, &saved(&refs)).unwrap();
    let body: Vec<&str> = p.batch.lines().collect();
    assert_eq!(
        body,
        vec![
            "*nat",
            &format!("-D POSTROUTING {jump}"),
            &format!("-D POSTROUTING {jump}"),
            &format!("-D PREROUTING {restore}"),
            &format!("-D PREROUTING {connmark_jump}"),
            &format!("-A POSTROUTING {jump}"),
            &format!("-A PREROUTING {connmark_jump}"),
            &format!("-A PREROUTING {restore}"),
            "COMMIT",
        ]
    );
    assert!(!p.batch.contains("KUBE"));
    assert!(p.summary.chains_written.is_empty());
}

#[test]
fn stale_numbered_chains_and_their_jumps_are_removed() {
    let mut lines = applied(Table::Nat, &settings());
    lines.push(":AWS-SNAT-CHAIN-1 - [0:0]".into());
    lines.push("-A AWS-SNAT-CHAIN-0 -j AWS-SNAT-CHAIN-1".into());
    lines.push("-A AWS-SNAT-CHAIN-1 -d 10.1.0.0/16 -j RETURN".into());
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let want = desired(Table::Nat, &settings(), &node());
    let p = plan(Table::Nat, &want, &saved(&refs)).unwrap();
    assert_eq!(p.summary.chains_written, vec![SNAT_CHAIN.to_owned()]);
    assert_eq!(
        p.summary.chains_deleted,
        vec!["AWS-SNAT-CHAIN-1".to_owned()]
    );
    let flush = p.batch.find("-F AWS-SNAT-CHAIN-1").unwrap();
    let delete = p.batch.find("-X AWS-SNAT-CHAIN-1").unwrap();
    let rewrite = p.batch.find(":AWS-SNAT-CHAIN-0").unwrap();
    assert!(rewrite < flush && flush < delete, "{}", p.batch);
}

#[test]
fn external_snat_removes_the_chains_and_their_jumps() {
    let lines = applied(Table::Nat, &settings());
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let s = RuleSettings {
        external_snat: true,
        ..settings()
    };
    let p = plan(Table::Nat, &desired(Table::Nat, &s, &node()), &saved(&refs)).unwrap();
    assert_eq!(p.summary.rules_deleted, 3);
    assert_eq!(p.summary.rules_added, 0);
    assert_eq!(
        p.summary.chains_deleted,
        vec![CONNMARK_CHAIN.to_owned(), SNAT_CHAIN.to_owned()]
    );
    let last_delete = p.batch.rfind("-D ").unwrap();
    let first_drop = p.batch.find("-X ").unwrap();
    assert!(last_delete < first_drop, "{}", p.batch);
}

#[test]
fn an_old_release_snat_rule_in_postrouting_is_stale() {
    // Releases before the SNAT chain put the SNAT rule into POSTROUTING itself.
    let mut lines = applied(Table::Nat, &settings());
    let old = "! -d 10.0.0.0/16 -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.0.10";
    lines.push(format!("-A POSTROUTING {old}"));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let want = desired(Table::Nat, &settings(), &node());
    let p = plan(Table::Nat, &want, &saved(&refs)).unwrap();
    assert!(
        p.batch.contains(&format!("-D POSTROUTING {old}")),
        "{}",
        p.batch
    );
    assert_eq!(p.summary.rules_added, 1);
}
