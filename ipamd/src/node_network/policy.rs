//! The routing-policy and sysctl part of node networking, over rtnetlink and `/proc/sys` of
//! ipamd's own namespace: rule 1024 `fwmark <mark>/<mark> lookup main` (connmarked traffic
//! leaves through the main table, i.e. the primary ENI), rules 1535 `to <cidr> lookup main`
//! (`AWS_EXTERNAL_SERVICE_CIDRS`), and `rp_filter=2` on the primary ENI's interface.
//!
//! Each priority is reconciled as a set: the rules ipamd owns there that are not wanted (other
//! marks, old CIDRs, duplicates) are deleted, the missing ones added, the rest left alone.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags};
use vpc_cni_contract::dataplane::MAIN_TABLE;
pub use vpc_cni_contract::dataplane::{EXTERNAL_SERVICE_RULE_PRIORITY, HOST_RULE_PRIORITY};
use vpc_cni_contract::netlink::{Rule, RuleSpec};

use super::host::{HostNetwork, HostNetworkError};

/// `rp_filter` the primary ENI needs: loose, because NodePort replies of pods on secondary
/// ENIs and their requests take different ENIs (the reference's issue #75).
pub const PRIMARY_RP_FILTER: &str = "2";

/// One IPv4 policy rule ipamd wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// Priority.
    pub priority: u32,
    /// Table looked up.
    pub table: u32,
    /// `to <cidr>`.
    pub destination: Option<Ipv4Net>,
    /// `fwmark <value>/<mask>`.
    pub fwmark: Option<(u32, u32)>,
}

impl PolicyRule {
    /// Rule 1024: `fwmark <mark>/<mark> lookup main`.
    pub fn host(mark: u32) -> Self {
        Self {
            priority: HOST_RULE_PRIORITY,
            table: MAIN_TABLE,
            destination: None,
            fwmark: Some((mark, mark)),
        }
    }

    /// Rule 1535: `to <cidr> lookup main`.
    pub fn external_service(cidr: Ipv4Net) -> Self {
        Self {
            priority: EXTERNAL_SERVICE_RULE_PRIORITY,
            table: MAIN_TABLE,
            destination: Some(cidr.trunc()),
            fwmark: None,
        }
    }

    /// The netlink request that adds it.
    fn spec(&self) -> RuleSpec {
        RuleSpec {
            priority: self.priority,
            src: None,
            dst: self.destination.map(IpNet::V4),
            fwmark: self.fwmark,
            table: self.table,
        }
    }

    fn matches(&self, rule: &Rule) -> bool {
        let msg = rule.message();
        let attr = |pick: fn(&RuleAttribute) -> Option<u32>| msg.attributes.iter().find_map(pick);
        let mark = attr(|a| match a {
            RuleAttribute::FwMark(m) => Some(*m),
            _ => None,
        });
        let mask = attr(|a| match a {
            RuleAttribute::FwMask(m) => Some(*m),
            _ => None,
        });
        let has_interface = msg
            .attributes
            .iter()
            .any(|a| matches!(a, RuleAttribute::Iifname(_) | RuleAttribute::Oifname(_)));
        // The kernel reports a mask only when it is not the full one, and reports mark 0 with
        // mask 0 for a rule without fwmark.
        let fwmark = match (mark.unwrap_or(0), mask) {
            (0, None | Some(0)) => None,
            (m, mask) => Some((m, mask.unwrap_or(u32::MAX))),
        };
        rule.priority == self.priority
            && rule.table == self.table
            && rule.action == RuleAction::ToTable
            && !msg.header.flags.contains(RuleFlags::Invert)
            && rule.src.is_none()
            && rule.dst
                == self
                    .destination
                    .map(|d| (IpAddr::V4(d.network()), d.prefix_len()))
            && fwmark == self.fwmark
            && !has_interface
    }
}

impl fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.priority)?;
        if let Some(d) = self.destination {
            write!(f, " to {d}")?;
        }
        if let Some((m, mask)) = self.fwmark {
            write!(f, " fwmark {m:#x}/{mask:#x}")?;
        }
        if self.table == MAIN_TABLE {
            write!(f, " lookup main")
        } else {
            write!(f, " lookup {}", self.table)
        }
    }
}

/// A rule as `ip rule` would show it, for logs.
pub fn describe_rule(rule: &Rule) -> String {
    let msg = rule.message();
    let mut s = format!("{}:", rule.priority);
    if msg.header.flags.contains(RuleFlags::Invert) {
        s.push_str(" not");
    }
    if let Some((ip, len)) = rule.src {
        s.push_str(&format!(" from {ip}/{len}"));
    }
    if let Some((ip, len)) = rule.dst {
        s.push_str(&format!(" to {ip}/{len}"));
    }
    for a in &msg.attributes {
        match a {
            RuleAttribute::FwMark(m) => s.push_str(&format!(" fwmark {m:#x}")),
            RuleAttribute::FwMask(m) => s.push_str(&format!("/{m:#x}")),
            RuleAttribute::Iifname(i) => s.push_str(&format!(" iif {i}")),
            RuleAttribute::Oifname(o) => s.push_str(&format!(" oif {o}")),
            _ => {}
        }
    }
    s.push_str(&format!(" lookup {}", rule.table));
    s
}

/// What a rule reconcile changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleChanges {
    /// Rules added.
    pub added: Vec<String>,
    /// Rules deleted (stale or duplicated).
    pub deleted: Vec<String>,
}

impl RuleChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.deleted.is_empty()
    }
}

/// Makes the IPv4 rules at `priority` that look up the main table exactly `want` (each once):
/// the others there are deleted, the missing ones added. Rules at that priority for other
/// tables are not ipamd's and stay.
///
/// # Errors
/// The dump, a deletion or an addition failed (names the rule).
pub async fn reconcile_main_rules(
    host: &HostNetwork,
    priority: u32,
    want: &[PolicyRule],
) -> Result<RuleChanges, HostNetworkError> {
    let mut changes = RuleChanges::default();
    let mut present = vec![false; want.len()];
    for rule in host.rules_v4().await? {
        if rule.priority != priority || rule.table != MAIN_TABLE {
            continue;
        }
        let hit = want
            .iter()
            .enumerate()
            .find(|(i, w)| !present[*i] && w.matches(&rule))
            .map(|(i, _)| i);
        match hit {
            Some(i) => present[i] = true,
            None => {
                let what = describe_rule(&rule);
                host.delete_rule(&rule, &format!("stale rule {what}"))
                    .await?;
                changes.deleted.push(what);
            }
        }
    }
    for (rule, _) in want.iter().zip(&present).filter(|(_, p)| !**p) {
        host.add_rule(&rule.spec(), &format!("rule {rule}")).await?;
        changes.added.push(rule.to_string());
    }
    Ok(changes)
}

/// A sysctl that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {key} ({path}): {source}")]
pub struct SysctlError {
    /// `read` or `write`.
    pub op: &'static str,
    /// The dotted key.
    pub key: String,
    /// Its file.
    pub path: String,
    /// The I/O error.
    pub source: std::io::Error,
}

/// Sets `net.ipv4.conf.<link>.rp_filter` of the calling thread's network namespace to
/// [`PRIMARY_RP_FILTER`] unless it already is; returns the previous value when it changed it.
///
/// # Errors
/// The file could not be read or written (no such interface, read-only `/proc/sys`).
pub fn ensure_rp_filter(link: &str) -> Result<Option<String>, SysctlError> {
    let key = format!("net.ipv4.conf.{link}.rp_filter");
    let path: PathBuf = ["/proc/sys/net/ipv4/conf", link, "rp_filter"]
        .iter()
        .collect();
    let err = |op: &'static str| {
        let (key, path) = (key.clone(), path.display().to_string());
        move |source| SysctlError {
            op,
            key,
            path,
            source,
        }
    };
    let now = std::fs::read_to_string(&path).map_err(err("read"))?;
    let now = now.trim();
    if now == PRIMARY_RP_FILTER {
        return Ok(None);
    }
    std::fs::write(&path, PRIMARY_RP_FILTER).map_err(err("write"))?;
    Ok(Some(now.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_display_as_ip_rule_shows_them() {
        assert_eq!(
            PolicyRule::host(0x80).to_string(),
            "1024: fwmark 0x80/0x80 lookup main"
        );
        assert_eq!(
            PolicyRule::external_service("192.0.2.9/24".parse().unwrap()).to_string(),
            "1535: to 192.0.2.0/24 lookup main"
        );
    }
}
