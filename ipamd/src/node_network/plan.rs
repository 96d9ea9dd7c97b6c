//! The iptables part of node networking as pure functions: the rules ipamd wants (the
//! reference's, vpc-cni.md §3.6, in the exact text `iptables-save` prints them), the parse of
//! what a table holds now, and the `iptables-restore --noflush` batch that turns one into the
//! other without touching anything ipamd does not own.
//!
//! What ipamd owns in a table:
//! - every chain named `AWS-SNAT-CHAIN-<n>` or `AWS-CONNMARK-CHAIN-<n>` (only `-0` is still
//!   wanted; older releases of the reference created more), wholly: when its content differs it
//!   is redeclared (`:CHAIN - [0:0]` flushes it inside the batch) and rewritten in order;
//! - in the built-in chains, the rules carrying one of the reference's comments
//!   ([`OWNED_COMMENTS`]), and in any other chain the rules that jump to an owned chain. When the
//!   owned rules of such a chain differ from the wanted ones (missing, duplicated, stale, out of
//!   order) they are all deleted by specification (`-D CHAIN <spec>`, so a concurrent change by
//!   kube-proxy cannot shift what is deleted) and the wanted ones appended in order.
//!
//! Everything else (kube-proxy's chains and rules, the node's own) is never named in a batch.
//! One batch per table is applied atomically by `iptables-restore`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::parse::RandomizeSnat;

/// The SNAT chain in `nat` (POSTROUTING jumps to it).
pub const SNAT_CHAIN: &str = "AWS-SNAT-CHAIN-0";
/// The connmark chain in `nat` (PREROUTING jumps to it for traffic from pods).
pub const CONNMARK_CHAIN: &str = "AWS-CONNMARK-CHAIN-0";
/// Prefixes of the chains ipamd owns (`-0` is current; higher numbers are stale).
pub const OWNED_CHAIN_PREFIXES: [&str; 2] = ["AWS-SNAT-CHAIN-", "AWS-CONNMARK-CHAIN-"];
/// Comments of every rule the reference (any release) put into built-in chains.
pub const OWNED_COMMENTS: [&str; 8] = [
    "Block Node Local Pod access via IPv4",
    "AWS SNAT CHAIN",
    "AWS SNAT CHAIN EXCLUSION",
    "AWS, SNAT",
    "AWS, primary ENI",
    "AWS, outbound connections",
    "AWS, CONNMARK",
    "AWS CONNMARK CHAIN",
];
/// The built-in chains of the tables ipamd writes to.
const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// A table ipamd writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// `nat`: SNAT and the connmark chain for pod egress.
    Nat,
    /// `mangle`: NodePort connmark on the primary ENI and the restore on pod veths.
    Mangle,
    /// `filter`: in IPv6 mode, FORWARD rejects new connections to the pods' node-local IPv4
    /// addresses (egress-cni's 169.254.172.0/22) coming from elsewhere.
    Filter,
}

impl Table {
    /// Every table ipamd reconciles in IPv4 mode.
    pub const ALL: [Table; 2] = [Table::Nat, Table::Mangle];
    /// Every table ipamd reconciles in IPv6 mode (nat and mangle are kept empty of its rules).
    pub const ALL_IPV6: [Table; 3] = [Table::Nat, Table::Mangle, Table::Filter];

    /// The table's name for `-t`.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Filter => "filter",
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The knobs that shape the rules (from [`crate::config::NodeNetworkConfig`] and the plugin's
/// veth prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSettings {
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT`: no SNAT and no connmark chain.
    pub external_snat: bool,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`.
    pub exclude_snat_cidrs: Vec<Ipv4Net>,
    /// `AWS_VPC_K8S_CNI_RANDOMIZESNAT`.
    pub randomize_snat: RandomizeSnat,
    /// Whether this iptables knows `--random-fully` (1.6.2 and later); `prng` falls back to
    /// `--random` without it, as in the reference.
    pub random_fully_supported: bool,
    /// `AWS_VPC_K8S_CNI_CONNMARK`.
    pub connmark: u32,
    /// `AWS_VPC_CNI_NODE_PORT_SUPPORT`.
    pub node_port_support: bool,
    /// `AWS_VPC_K8S_CNI_VETHPREFIX`: pod veths are `<prefix>+`.
    pub veth_prefix: String,
}

/// What the node is right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddressing {
    /// The VPC's IPv4 CIDRs (instance metadata `vpc-ipv4-cidr-blocks` of the primary ENI).
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// The primary ENI's primary address: the SNAT source.
    pub primary_ip: Ipv4Addr,
    /// The primary ENI's interface name.
    pub primary_link: String,
}

/// The rules ipamd wants in one table: owned chains with their rules, and the owned rules of
/// other chains, each in order. Rules are the text after `-A <chain> ` as `iptables-save`
/// prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredTable {
    /// Owned chains that must exist, with their whole content.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Owned rules in chains ipamd does not own (built-in ones), by chain.
    pub rules: BTreeMap<String, Vec<String>>,
    /// Chains whose owned rules go first (inserted at the top) instead of last.
    pub insert_first: BTreeSet<String>,
}

/// The node-local IPv4 range egress-cni gives IPv6 pods.
pub const EGRESS_V4_RANGE: &str = "169.254.172.0/22";

/// IPv6 mode's `filter` rule, as the reference inserts it first in FORWARD: nothing from
/// elsewhere may open a connection to a pod's node-local IPv4 address.
pub fn desired_ipv6_filter() -> DesiredTable {
    let mut out = DesiredTable::default();
    out.rules.insert(
        "FORWARD".into(),
        vec![format!(
            "-d {EGRESS_V4_RANGE} -m conntrack --ctstate NEW -m comment --comment \"Block Node Local Pod access via IPv4\" -j REJECT --reject-with icmp-port-unreachable"
        )],
    );
    out.insert_first.insert("FORWARD".into());
    out
}

/// The `-d` part of a RETURN rule: none for `0.0.0.0/0` (iptables prints no `-d` for it).
fn dst(cidr: &Ipv4Net) -> String {
    if cidr.prefix_len() == 0 {
        String::new()
    } else {
        format!("-d {} ", cidr.trunc())
    }
}

/// CIDRs without host bits, in order of first appearance, without repeats.
fn unique(cidrs: impl IntoIterator<Item = Ipv4Net>) -> Vec<Ipv4Net> {
    let mut seen = BTreeSet::new();
    cidrs
        .into_iter()
        .map(|c| c.trunc())
        .filter(|c| seen.insert(*c))
        .collect()
}

/// The rules ipamd wants in `table` (vpc-cni.md §3.6). With on-node SNAT (the default):
/// `nat` holds `AWS-SNAT-CHAIN-0` (RETURN for each VPC and excluded CIDR, then SNAT to the
/// primary IP) jumped to from POSTROUTING, and `AWS-CONNMARK-CHAIN-0` (RETURN for local,
/// VPC and excluded destinations, else set the connmark) jumped to from PREROUTING for pod
/// veths, followed by the restore of the connmark into the packet mark. `mangle` PREROUTING
/// marks connections entering the primary ENI for a local address (NodePort support) and
/// restores the mark on packets from pods. With `AWS_VPC_K8S_CNI_EXTERNALSNAT=true` the nat
/// part is empty.
pub fn desired(table: Table, s: &RuleSettings, node: &NodeAddressing) -> DesiredTable {
    let mark = format!("{:#x}", s.connmark);
    let restore = format!("-j CONNMARK --restore-mark --nfmask {mark} --ctmask {mark}");
    match table {
        Table::Nat if s.external_snat => DesiredTable::default(),
        Table::Nat => desired_nat(s, node, &mark, &restore),
        Table::Mangle => desired_mangle(s, node, &mark, &restore),
        Table::Filter => DesiredTable::default(),
    }
}

/// `nat` with on-node SNAT: the SNAT and connmark chains and their jumps.
fn desired_nat(s: &RuleSettings, node: &NodeAddressing, mark: &str, restore: &str) -> DesiredTable {
    let vpc = unique(node.vpc_cidrs.iter().copied());
    let excluded = unique(s.exclude_snat_cidrs.iter().copied());
    let mut out = DesiredTable::default();
    out.chains
        .insert(SNAT_CHAIN.to_owned(), snat_chain(s, node, &vpc, &excluded));
    out.chains.insert(
        CONNMARK_CHAIN.to_owned(),
        connmark_chain(&vpc, &excluded, mark),
    );
    out.rules.insert(
        "PREROUTING".into(),
        vec![
            format!(
                "-i {}+ -m comment --comment \"AWS, outbound connections\" -j {CONNMARK_CHAIN}",
                s.veth_prefix
            ),
            format!("-m comment --comment \"AWS, CONNMARK\" {restore}"),
        ],
    );
    out.rules.insert(
        "POSTROUTING".into(),
        vec![format!(
            "-m comment --comment \"AWS SNAT CHAIN\" -j {SNAT_CHAIN}"
        )],
    );
    out
}

/// `AWS-SNAT-CHAIN-0`: RETURN for each VPC and excluded CIDR, then SNAT to the primary IP.
fn snat_chain(
    s: &RuleSettings,
    node: &NodeAddressing,
    vpc: &[Ipv4Net],
    excluded: &[Ipv4Net],
) -> Vec<String> {
    let mut snat: Vec<String> = vpc
        .iter()
        .map(|c| {
            format!(
                "{}-m comment --comment \"AWS SNAT CHAIN\" -j RETURN",
                dst(c)
            )
        })
        .collect();
    snat.extend(excluded.iter().map(|c| {
        format!(
            "{}-m comment --comment \"AWS SNAT CHAIN EXCLUSION\" -j RETURN",
            dst(c)
        )
    }));
    let random = match s.randomize_snat {
        RandomizeSnat::Prng if s.random_fully_supported => " --random-fully",
        RandomizeSnat::Prng | RandomizeSnat::HashRandom => " --random",
        RandomizeSnat::None => "",
    };
    snat.push(format!(
        "! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source {}{random}",
        node.primary_ip
    ));
    snat
}

/// `AWS-CONNMARK-CHAIN-0`: RETURN for local, VPC and excluded destinations, else set the
/// connmark.
fn connmark_chain(vpc: &[Ipv4Net], excluded: &[Ipv4Net], mark: &str) -> Vec<String> {
    // Local destinations first: an IPVS virtual address (kube-ipvs0) must not mark the
    // connection before IPVS forwards it (the reference's v1.23 `fib daddr type local
    // return`).
    let mut connmark = vec![
        "-m comment --comment \"AWS CONNMARK CHAIN\" -m addrtype --dst-type LOCAL -j RETURN"
            .to_owned(),
    ];
    connmark.extend(unique(vpc.iter().chain(excluded).copied()).iter().map(|c| {
        format!(
            "{}-m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN",
            dst(c)
        )
    }));
    connmark.push(format!(
        "-m comment --comment \"AWS, CONNMARK\" -j CONNMARK --set-xmark {mark}/{mark}"
    ));
    connmark
}

/// `mangle` PREROUTING: NodePort connections entering the primary ENI are marked, and the mark
/// is restored on packets from pods (and VLANs with NodePort support).
fn desired_mangle(
    s: &RuleSettings,
    node: &NodeAddressing,
    mark: &str,
    restore: &str,
) -> DesiredTable {
    let mut out = DesiredTable::default();
    let mut pre = Vec::new();
    if s.node_port_support {
        pre.push(format!(
            "-i {} -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark {mark}/{mark}",
            node.primary_link
        ));
    }
    if s.node_port_support || !s.external_snat {
        pre.push(format!(
            "-i {}+ -m comment --comment \"AWS, primary ENI\" {restore}",
            s.veth_prefix
        ));
    }
    if s.node_port_support {
        pre.push(format!(
            "-i vlan+ -m comment --comment \"AWS, primary ENI\" {restore}"
        ));
    }
    if !pre.is_empty() {
        out.rules.insert("PREROUTING".into(), pre);
    }
    out
}

/// One table as `iptables-save -t <table>` shows it: declared chains and rules, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentTable {
    /// Every chain (built-in and user-defined).
    pub chains: BTreeSet<String>,
    /// `(chain, rule)` in the order printed; the rule is the text after `-A <chain> `.
    pub rules: Vec<(String, String)>,
}

/// Parses the output of `iptables-save -t <table>` (comments, the `*table` line and `COMMIT`
/// are skipped; an absent table is empty).
pub fn parse_save(text: &str) -> CurrentTable {
    let mut t = CurrentTable::default();
    for line in text.lines().map(str::trim_end) {
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                t.chains.insert(name.to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            t.rules.push((chain.to_owned(), spec.to_owned()));
        }
    }
    t
}

/// Whether `chain` is one ipamd owns wholly.
pub fn is_owned_chain(chain: &str) -> bool {
    OWNED_CHAIN_PREFIXES.iter().any(|p| {
        chain
            .strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The value of `--comment` in a rule as `iptables-save` prints it (quoted when it has spaces).
pub fn comment_of(spec: &str) -> Option<String> {
    let rest = &spec[spec.find("--comment ")? + "--comment ".len()..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        None
    } else {
        rest.split_whitespace().next().map(str::to_owned)
    }
}

/// The target of `-j` in a rule.
fn jump_of(spec: &str) -> Option<&str> {
    let mut words = spec.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "--jump" {
            return words.next();
        }
    }
    None
}

/// Whether a rule of `chain` (not an owned chain) is ipamd's: it jumps to an owned chain, or
/// it sits in a built-in chain with one of the reference's comments.
pub fn is_owned_rule(chain: &str, spec: &str) -> bool {
    if jump_of(spec).is_some_and(is_owned_chain) {
        return true;
    }
    BUILTIN_CHAINS.contains(&chain)
        && comment_of(spec).is_some_and(|c| OWNED_COMMENTS.contains(&c.as_str()))
}

/// What a batch changes, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanSummary {
    /// Owned chains created or rewritten.
    pub chains_written: Vec<String>,
    /// Owned chains deleted (stale).
    pub chains_deleted: Vec<String>,
    /// Owned rules deleted from other chains.
    pub rules_deleted: usize,
    /// Owned rules appended to other chains.
    pub rules_added: usize,
}

impl PlanSummary {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.chains_written.is_empty()
            && self.chains_deleted.is_empty()
            && self.rules_deleted == 0
            && self.rules_added == 0
    }
}

/// A batch for `iptables-restore --noflush` and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The table.
    pub table: Table,
    /// The batch text (`*table` … `COMMIT`).
    pub batch: String,
    /// What it changes.
    pub summary: PlanSummary,
}

/// The batch that makes `current` hold exactly the owned chains and rules of `want`, or
/// `None` when it already does.
pub fn plan(table: Table, want: &DesiredTable, current: &CurrentTable) -> Option<Plan> {
    let mut summary = PlanSummary::default();
    let mut declare = Vec::new();
    let mut fill = Vec::new();
    let mut deletes = Vec::new();
    let mut appends = Vec::new();
    let mut flush = Vec::new();
    let mut drop_chains = Vec::new();

    // Owned chains: rewrite the wanted ones that differ, delete the others.
    let mut owned_now: BTreeMap<&str, Vec<&str>> = current
        .chains
        .iter()
        .filter(|c| is_owned_chain(c))
        .map(|c| (c.as_str(), Vec::new()))
        .collect();
    for (chain, spec) in &current.rules {
        if let Some(rules) = owned_now.get_mut(chain.as_str()) {
            rules.push(spec.as_str());
        }
    }
    for (chain, rules) in &want.chains {
        let same = owned_now
            .get(chain.as_str())
            .is_some_and(|now| now.iter().copied().eq(rules.iter().map(String::as_str)));
        if !same {
            declare.push(format!(":{chain} - [0:0]"));
            fill.extend(rules.iter().map(|r| format!("-A {chain} {r}")));
            summary.chains_written.push(chain.clone());
        }
    }
    for chain in owned_now.keys() {
        if !want.chains.contains_key(*chain) {
            flush.push(format!("-F {chain}"));
            drop_chains.push(format!("-X {chain}"));
            summary.chains_deleted.push((*chain).to_owned());
        }
    }

    // Owned rules in other chains: delete and re-append unless exactly as wanted, in order.
    let mut owned_rules: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (chain, spec) in &current.rules {
        if !is_owned_chain(chain) && is_owned_rule(chain, spec) {
            owned_rules.entry(chain).or_default().push(spec);
        }
    }
    let chains: BTreeSet<&str> = owned_rules
        .keys()
        .copied()
        .chain(want.rules.keys().map(String::as_str))
        .collect();
    for chain in chains {
        let now = owned_rules.get(chain).cloned().unwrap_or_default();
        let wanted: Vec<&str> = want
            .rules
            .get(chain)
            .map(|r| r.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if now == wanted {
            continue;
        }
        deletes.extend(now.iter().map(|r| format!("-D {chain} {r}")));
        if want.insert_first.contains(chain) {
            appends.extend(
                wanted
                    .iter()
                    .enumerate()
                    .map(|(i, r)| format!("-I {chain} {} {r}", i + 1)),
            );
        } else {
            appends.extend(wanted.iter().map(|r| format!("-A {chain} {r}")));
        }
        summary.rules_deleted += now.len();
        summary.rules_added += wanted.len();
    }

    if summary.is_empty() {
        return None;
    }
    let mut batch = format!("*{}\n", table.name());
    for line in declare
        .iter()
        .chain(&deletes)
        .chain(&fill)
        .chain(&appends)
        .chain(&flush)
        .chain(&drop_chains)
    {
        let _ = writeln!(batch, "{line}");
    }
    batch.push_str("COMMIT\n");
    Some(Plan {
        table,
        batch,
        summary,
    })
}

#[cfg(test)]
mod tests;
