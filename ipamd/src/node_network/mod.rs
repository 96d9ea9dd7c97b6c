//! Node networking (vpc-cni.md §3.6, design.md §2 "Node network"): what ipamd programs on the
//! node itself so pods on every ENI reach the world and NodePort replies leave the right way.
//!
//! - **SNAT** (`nat`): `AWS-SNAT-CHAIN-0`, jumped to from POSTROUTING, returns for the VPC's
//!   CIDRs and `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS` and SNATs everything else to the primary
//!   ENI's primary address (`--random-fully` / `--random` / nothing per
//!   `AWS_VPC_K8S_CNI_RANDOMIZESNAT`).
//! - **Connmark for pod egress** (`nat`): `AWS-CONNMARK-CHAIN-0`, jumped to from PREROUTING for
//!   packets from pod veths, marks connections to non-VPC, non-excluded, non-local
//!   destinations with `AWS_VPC_K8S_CNI_CONNMARK` (0x80); the mark is copied to the packet and
//!   rule 1024 `fwmark 0x80/0x80 lookup main` sends it out of the primary ENI, where it is
//!   SNATed, even from a pod whose address belongs to a secondary ENI.
//! - **NodePort** (`mangle`, `AWS_VPC_CNI_NODE_PORT_SUPPORT`): connections entering the primary
//!   ENI for a local address are marked, and the mark is restored on the pod's replies, so they
//!   leave through the primary ENI too; `rp_filter=2` there accepts that asymmetric path.
//! - `AWS_VPC_K8S_CNI_EXTERNALSNAT=true` removes the SNAT and connmark chains (pods then egress
//!   through their own ENI with their VPC address); `AWS_EXTERNAL_SERVICE_CIDRS` become rules
//!   1535 `to <cidr> lookup main`.
//!
//! Everything is reconciled, not appended: [`NodeNetwork::reconcile`] computes the wanted state,
//! reads the current one (`iptables-save`, the rule dump, the sysctl) and changes only the
//! difference, removing stale rules and duplicates ipamd owns and never touching others'
//! (kube-proxy's). ipamd runs it at start-up, before it is ready, and every
//! [`RECONCILE_INTERVAL`] after, with the VPC's CIDRs re-read from instance metadata.
//!
//! Mechanism: the `iptables` command (iptables-restore batches, one atomic change per table)
//! on whichever backend the node's `iptables` uses, for SNAT *and* connmark ([`iptables`], the
//! wanted rules and the difference in [`plan`]); see docs/contracts.md "Node networking" for why
//! not the reference's native nftables table. Rules 1024/1535 and `rp_filter` are [`policy`];
//! every netlink request ipamd makes in the node's namespace (links, secondary ENIs, pod rules,
//! those policy rules) goes through [`host`].

pub mod host;
pub mod iptables;
pub mod plan;
pub mod policy;

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use ipnet::Ipv4Net;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use thiserror::Error;

use self::host::{HostNetwork, HostNetworkError};
use self::iptables::{Iptables, IptablesError, IptablesVersion};
use self::plan::{NodeAddressing, PlanSummary, RuleSettings, Table};
use self::policy::{
    EXTERNAL_SERVICE_RULE_PRIORITY, HOST_RULE_PRIORITY, PolicyRule, RuleChanges, SysctlError,
};
use crate::config::Config;
use crate::config::parse::RandomizeSnat;
use crate::mac::MacAddr;
use crate::metrics::Counter;

/// How often the node's networking is reconciled after start-up (the reference re-reads the
/// VPC's CIDRs every 30 s).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);

/// The knobs of node networking (from [`Config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetworkSettings {
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT`.
    pub external_snat: bool,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`.
    pub exclude_snat_cidrs: Vec<Ipv4Net>,
    /// `AWS_EXTERNAL_SERVICE_CIDRS`.
    pub external_service_cidrs: Vec<Ipv4Net>,
    /// `AWS_VPC_K8S_CNI_RANDOMIZESNAT`.
    pub randomize_snat: RandomizeSnat,
    /// `AWS_VPC_K8S_CNI_CONNMARK`.
    pub connmark: u32,
    /// `AWS_VPC_CNI_NODE_PORT_SUPPORT`.
    pub node_port_support: bool,
    /// `AWS_VPC_K8S_CNI_VETHPREFIX`.
    pub veth_prefix: String,
    /// `ENABLE_IPv6`: pods have IPv6 addresses of the primary ENI's prefix and leave the node
    /// with them, so there is no SNAT, no connmark and no rule 1024 (as in the reference,
    /// whose IPv6 mode adds no SNAT or connmark rule; its IPv6 rule 1024 matches a mark that
    /// nothing sets then).
    pub ipv6: bool,
}

/// What a config that sets none of these variables gives: on-node SNAT with a random port
/// (`prng`), connmark 0x80, NodePort support, veths named `eni…`.
impl Default for NodeNetworkSettings {
    fn default() -> Self {
        Self {
            external_snat: false,
            exclude_snat_cidrs: Vec::new(),
            external_service_cidrs: Vec::new(),
            randomize_snat: RandomizeSnat::Prng,
            connmark: 0x80,
            node_port_support: true,
            veth_prefix: "eni".into(),
            ipv6: false,
        }
    }
}

impl NodeNetworkSettings {
    /// The settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        let n = &config.node_network;
        Self {
            external_snat: n.external_snat,
            exclude_snat_cidrs: n.exclude_snat_cidrs.clone(),
            external_service_cidrs: n.external_service_cidrs.clone(),
            randomize_snat: n.randomize_snat,
            connmark: n.connmark,
            node_port_support: n.node_port_support,
            veth_prefix: config.plugin.veth_prefix.clone(),
            ipv6: config.features.ipv6,
        }
    }

    /// Whether rule 1024 is wanted: NodePort support or on-node SNAT.
    pub fn wants_host_rule(&self) -> bool {
        !self.ipv6 && (self.node_port_support || !self.external_snat)
    }

    /// Whether any iptables rule is wanted.
    pub fn wants_iptables(&self) -> bool {
        self.ipv6 || self.node_port_support || !self.external_snat
    }
}

/// The primary ENI as instance metadata shows it, with the VPC's CIDRs listed under it: what
/// node networking is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryEni {
    /// The primary ENI's MAC (its link is found by it).
    pub primary_mac: MacAddr,
    /// The primary ENI's id (messages).
    pub primary_eni: String,
    /// The primary ENI's primary address: the SNAT source.
    pub primary_ip: Ipv4Addr,
    /// The VPC's IPv4 CIDRs.
    pub vpc_cidrs: Vec<Ipv4Net>,
}

/// A reconcile that failed (other parts were still applied; [`NodeNetworkError::Many`]).
#[derive(Debug, Error)]
pub enum NodeNetworkError {
    /// Instance metadata gave no VPC CIDR: SNAT would translate traffic inside the VPC.
    #[error("instance metadata lists no VPC CIDR for the primary ENI {eni}; SNAT rules need them")]
    NoVpcCidrs {
        /// The primary ENI.
        eni: String,
    },
    /// The primary ENI's link is not in this namespace.
    #[error("primary ENI {eni}: no network interface has MAC {mac}")]
    NoPrimaryLink {
        /// The ENI.
        eni: String,
        /// Its MAC.
        mac: MacAddr,
    },
    /// An iptables command failed.
    #[error("iptables ({table}): {source}")]
    Iptables {
        /// The table (or `-` for `--version`).
        table: String,
        /// The failure.
        source: IptablesError,
    },
    /// A netlink step failed (link dump, rules).
    #[error(transparent)]
    Netlink(#[from] HostNetworkError),
    /// The primary ENI's rp_filter could not be set.
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    /// Several parts failed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<NodeNetworkError>),
}

/// What one reconcile changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// The primary ENI's interface.
    pub primary_link: String,
    /// The rp_filter value replaced by 2, if it was something else.
    pub rp_filter_was: Option<String>,
    /// iptables batches applied, by table.
    pub iptables: Vec<(Table, PlanSummary)>,
    /// Tables that still differ after their batch (iptables prints a rule differently than
    /// ipamd writes it; they are rewritten on every pass).
    pub unstable: Vec<Table>,
    /// Rule 1024 changes.
    pub host_rule: RuleChanges,
    /// Rule 1535 changes.
    pub external_service_rules: RuleChanges,
}

impl ReconcileReport {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.rp_filter_was.is_none()
            && self.iptables.is_empty()
            && self.host_rule.is_empty()
            && self.external_service_rules.is_empty()
    }
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(was) = &self.rp_filter_was {
            parts.push(format!(
                "net.ipv4.conf.{}.rp_filter {was} -> 2",
                self.primary_link
            ));
        }
        for (table, s) in &self.iptables {
            let mut what = Vec::new();
            if !s.chains_written.is_empty() {
                what.push(format!("wrote {}", s.chains_written.join(", ")));
            }
            if !s.chains_deleted.is_empty() {
                what.push(format!("deleted {}", s.chains_deleted.join(", ")));
            }
            if s.rules_deleted > 0 {
                what.push(format!("{} rule(s) deleted", s.rules_deleted));
            }
            if s.rules_added > 0 {
                what.push(format!("{} rule(s) added", s.rules_added));
            }
            parts.push(format!("{table}: {}", what.join(", ")));
        }
        for (label, c) in [
            ("rule", &self.host_rule),
            ("rule", &self.external_service_rules),
        ] {
            for r in &c.added {
                parts.push(format!("{label} added {r}"));
            }
            for r in &c.deleted {
                parts.push(format!("{label} deleted {r}"));
            }
        }
        if parts.is_empty() {
            f.write_str("no change")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// `backend` label of `awscni_connmark_backend`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// `iptables` (this build's only connmark backend) or `nftables`.
    pub backend: String,
}

/// `result` label of `awscni_connmark_reconcile_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `error`.
    pub result: String,
}

/// The reference's connmark metrics.
#[derive(Debug, Clone, Default)]
pub struct NodeNetworkMetrics {
    /// `awscni_connmark_backend{backend}`: 1 for the backend in use.
    pub backend: Family<BackendLabel, Gauge>,
    /// `awscni_connmark_reconcile_total{result}`.
    pub reconciles: Family<ResultLabel, Counter>,
}

impl NodeNetworkMetrics {
    /// Creates the families (both results at 0, as the reference) and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        for result in ["success", "error"] {
            drop(m.reconciles.get_or_create(&ResultLabel {
                result: result.into(),
            }));
        }
        registry.register(
            "awscni_connmark_backend",
            "The connmark backend in use; the active backend's series is set to 1",
            m.backend.clone(),
        );
        registry.register(
            "awscni_connmark_reconcile_total",
            "The number of connmark Setup/Cleanup reconciliations by result",
            m.reconciles.clone(),
        );
        m
    }

    fn reconciled(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

/// The node-networking reconciler of one node (its namespace: where ipamd runs).
#[derive(Debug)]
pub struct NodeNetwork {
    settings: NodeNetworkSettings,
    host: HostNetwork,
    iptables: Iptables,
    version: Mutex<Option<IptablesVersion>>,
    metrics: NodeNetworkMetrics,
}

impl NodeNetwork {
    /// A reconciler over `host` (netlink in ipamd's namespace) and the node's `iptables`.
    pub fn new(settings: NodeNetworkSettings, host: HostNetwork) -> Self {
        Self::with_iptables(settings, host, Iptables::new())
    }

    /// The same with other iptables commands (`iptables-legacy` in tests).
    pub fn with_iptables(
        settings: NodeNetworkSettings,
        host: HostNetwork,
        iptables: Iptables,
    ) -> Self {
        Self {
            settings,
            host,
            iptables,
            version: Mutex::new(None),
            metrics: NodeNetworkMetrics::default(),
        }
    }

    /// Counts reconciles into `metrics` (the daemon's registered families).
    #[must_use]
    pub fn with_metrics(mut self, metrics: NodeNetworkMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &NodeNetworkSettings {
        &self.settings
    }

    /// Brings the node's rp_filter, iptables rules and policy rules in line with the settings
    /// and `primary`. Every part is attempted; the failures are reported together.
    ///
    /// # Errors
    /// The parts that failed (what did not fail is applied).
    pub async fn reconcile(
        &self,
        primary: &PrimaryEni,
    ) -> Result<ReconcileReport, NodeNetworkError> {
        let result = self.reconcile_inner(primary).await;
        self.metrics.reconciled(result.is_ok());
        result
    }

    async fn reconcile_inner(
        &self,
        primary: &PrimaryEni,
    ) -> Result<ReconcileReport, NodeNetworkError> {
        let s = &self.settings;
        if primary.vpc_cidrs.is_empty() && !s.external_snat && !s.ipv6 {
            return Err(NodeNetworkError::NoVpcCidrs {
                eni: primary.primary_eni.clone(),
            });
        }
        let link = self
            .host
            .link_by_mac(primary.primary_mac)
            .await?
            .ok_or_else(|| NodeNetworkError::NoPrimaryLink {
                eni: primary.primary_eni.clone(),
                mac: primary.primary_mac,
            })?;
        let mut report = ReconcileReport {
            primary_link: link.name.clone(),
            ..ReconcileReport::default()
        };
        let mut errors = Vec::new();

        match policy::ensure_rp_filter(&link.name) {
            Ok(was) => report.rp_filter_was = was,
            Err(e) => errors.push(e.into()),
        }

        let addressing = NodeAddressing {
            vpc_cidrs: primary.vpc_cidrs.clone(),
            primary_ip: primary.primary_ip,
            primary_link: link.name.clone(),
        };
        if let Err(e) = self.reconcile_iptables(&addressing, &mut report).await {
            errors.push(e);
        }

        let host_rule: Vec<PolicyRule> = if s.wants_host_rule() {
            vec![PolicyRule::host(s.connmark)]
        } else {
            Vec::new()
        };
        match policy::reconcile_main_rules(&self.host, HOST_RULE_PRIORITY, &host_rule).await {
            Ok(c) => report.host_rule = c,
            Err(e) => errors.push(e.into()),
        }
        let external: Vec<PolicyRule> = s
            .external_service_cidrs
            .iter()
            .map(|c| PolicyRule::external_service(*c))
            .collect();
        match policy::reconcile_main_rules(&self.host, EXTERNAL_SERVICE_RULE_PRIORITY, &external)
            .await
        {
            Ok(c) => report.external_service_rules = c,
            Err(e) => errors.push(e.into()),
        }

        match errors.len() {
            0 => Ok(report),
            1 => Err(errors.remove(0)),
            _ => Err(NodeNetworkError::Many(errors)),
        }
    }

    /// `iptables --version`, read once.
    async fn version(&self) -> Result<IptablesVersion, NodeNetworkError> {
        let cached = self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(v) = cached {
            return Ok(v);
        }
        let v = self
            .iptables
            .version()
            .await
            .map_err(|source| NodeNetworkError::Iptables {
                table: "-".into(),
                source,
            })?;
        tracing::info!(
            command = self.iptables.command_name(),
            version = %format!("{}.{}.{}", v.version.0, v.version.1, v.version.2),
            backend = %v.backend,
            "iptables found: SNAT and connmark rules go through it"
        );
        self.metrics
            .backend
            .get_or_create(&BackendLabel {
                backend: "iptables".into(),
            })
            .set(1);
        *self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v.clone());
        Ok(v)
    }

    async fn reconcile_iptables(
        &self,
        node: &NodeAddressing,
        report: &mut ReconcileReport,
    ) -> Result<(), NodeNetworkError> {
        let s = &self.settings;
        let version = match self.version().await {
            Ok(v) => v,
            // With nothing to program, a node without iptables is fine.
            Err(NodeNetworkError::Iptables {
                source: IptablesError::NotFound { program },
                ..
            }) if !s.wants_iptables() => {
                tracing::debug!(%program, "no iptables on this node; none of its rules are wanted");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let rules = RuleSettings {
            external_snat: s.external_snat,
            exclude_snat_cidrs: s.exclude_snat_cidrs.clone(),
            randomize_snat: s.randomize_snat,
            random_fully_supported: version.has_random_fully(),
            connmark: s.connmark,
            node_port_support: s.node_port_support,
            veth_prefix: s.veth_prefix.clone(),
        };
        let mut errors = Vec::new();
        let tables: &[Table] = if s.ipv6 {
            &Table::ALL_IPV6
        } else {
            &Table::ALL
        };
        for &table in tables {
            // IPv6 mode: no SNAT or connmark (an earlier IPv4 life's rules are removed), only
            // the FORWARD rule that keeps others off the pods' node-local IPv4 addresses.
            let want = match (s.ipv6, table) {
                (true, Table::Filter) => plan::desired_ipv6_filter(),
                (true, _) => plan::DesiredTable::default(),
                (false, _) => plan::desired(table, &rules, node),
            };
            match self.apply_table(table, &want).await {
                Ok(None) => {}
                Ok(Some((summary, stable))) => {
                    report.iptables.push((table, summary));
                    if !stable {
                        report.unstable.push(table);
                    }
                }
                Err(source) => errors.push(NodeNetworkError::Iptables {
                    table: table.name().into(),
                    source,
                }),
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(NodeNetworkError::Many(errors)),
        }
    }

    /// Applies the difference for one table; `(what changed, whether it now matches)`.
    async fn apply_table(
        &self,
        table: Table,
        want: &plan::DesiredTable,
    ) -> Result<Option<(PlanSummary, bool)>, IptablesError> {
        let current = plan::parse_save(&self.iptables.save(table).await?);
        let Some(p) = plan::plan(table, want, &current) else {
            return Ok(None);
        };
        let applied = match self.iptables.restore(&p.batch).await {
            Ok(()) => p,
            Err(first) => {
                // Someone (kube-proxy) may have changed the table between the read and the
                // batch (a rule to delete moved or went away): read again, try once more.
                tracing::debug!(%table, error = %first, "iptables batch refused; re-reading the table");
                let current = plan::parse_save(&self.iptables.save(table).await?);
                match plan::plan(table, want, &current) {
                    None => return Ok(None),
                    Some(again) => {
                        self.iptables.restore(&again.batch).await?;
                        again
                    }
                }
            }
        };
        let after = plan::parse_save(&self.iptables.save(table).await?);
        let left = plan::plan(table, want, &after);
        if let Some(left) = &left {
            tracing::warn!(
                %table,
                batch = %left.batch,
                "iptables prints ipamd's rules differently than they were written; they will be rewritten on every pass"
            );
        }
        Ok(Some((applied.summary, left.is_none())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connmark_metrics_keep_the_reference_names_and_types() {
        let mut registry = Registry::default();
        let m = NodeNetworkMetrics::new(&mut registry);
        m.reconciled(true);
        m.reconciled(true);
        m.reconciled(false);
        m.backend
            .get_or_create(&BackendLabel {
                backend: "iptables".into(),
            })
            .set(1);
        let text = crate::metrics::encode(&registry).unwrap();
        for line in [
            "# TYPE awscni_connmark_reconcile_total counter",
            "awscni_connmark_reconcile_total{result=\"success\"} 2",
            "awscni_connmark_reconcile_total{result=\"error\"} 1",
            "# TYPE awscni_connmark_backend gauge",
            "awscni_connmark_backend{backend=\"iptables\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn rule_1024_is_wanted_with_node_port_support_or_on_node_snat() {
        let base = NodeNetworkSettings::default();
        for (external_snat, node_port, wanted) in [
            (false, true, true),
            (false, false, true),
            (true, true, true),
            (true, false, false),
        ] {
            let s = NodeNetworkSettings {
                external_snat,
                node_port_support: node_port,
                ..base.clone()
            };
            assert_eq!(s.wants_host_rule(), wanted, "{s:?}");
            assert_eq!(s.wants_iptables(), wanted, "{s:?}");
        }
    }

    #[test]
    fn the_default_settings_are_those_of_a_config_setting_none() {
        let env = std::collections::HashMap::from([("MY_NODE_NAME", "n")]);
        assert_eq!(
            NodeNetworkSettings::from_config(&Config::from_env(&env).unwrap()),
            NodeNetworkSettings::default()
        );
    }

    #[test]
    fn settings_come_from_the_config() {
        let env: std::collections::HashMap<String, String> = [
            ("MY_NODE_NAME", "n"),
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "203.0.113.0/24"),
            ("AWS_EXTERNAL_SERVICE_CIDRS", "198.51.100.0/24,192.0.2.0/24"),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "none"),
            ("AWS_VPC_K8S_CNI_CONNMARK", "0x4000"),
            ("AWS_VPC_CNI_NODE_PORT_SUPPORT", "false"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "cali"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = NodeNetworkSettings::from_config(&Config::from_env(&env).unwrap());
        assert!(s.external_snat && !s.node_port_support);
        assert_eq!(s.exclude_snat_cidrs.len(), 1);
        assert_eq!(s.external_service_cidrs.len(), 2);
        assert_eq!(s.randomize_snat, RandomizeSnat::None);
        assert_eq!(s.connmark, 0x4000);
        assert_eq!(s.veth_prefix, "cali");
    }
}
