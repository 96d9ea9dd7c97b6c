//! What a test asks a node: ipamd's counters, assignments, datastore (introspection) and
//! checkpoint, and the node's routes, rules and links (as `ip -j` shows them), plus the
//! snapshot used to prove an operation left nothing behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde_json::Value;
use vpc_cni_contract::rpc::PoolStatusReply;

use super::host::{NETWORK_NAME, NodeHost, SimNodeError, io_err};
use crate::cni::Pod;
use crate::http;
use test_support::ipamd_client;
use test_support::netns::{Netns, PingOutcome};

impl NodeHost {
    /// ipamd's pool counters.
    pub fn pool_status(&self) -> Result<PoolStatusReply, SimNodeError> {
        ipamd_client::pool_status(&self.socket_path()).map_err(|source| SimNodeError::Client {
            source,
            diag: self.diag(),
        })
    }

    /// ipamd's answer to CheckNetwork for `pod` (`None`: not assigned).
    pub fn ipamd_assignment(&self, pod: &Pod) -> Result<Option<Ipv4Addr>, SimNodeError> {
        let reply = ipamd_client::check_network(
            &self.socket_path(),
            NETWORK_NAME,
            &pod.container_id,
            &pod.ifname,
        )
        .map_err(|source| SimNodeError::Client {
            source,
            diag: self.diag(),
        })?;
        Ok(reply.and_then(|r| {
            r.ip_allocation_metadata
                .first()
                .and_then(|m| m.i_pv4_addr.parse().ok())
        }))
    }

    /// Where ipamd's introspection endpoint listens (`INTROSPECTION_BIND_ADDRESS`, default
    /// `127.0.0.1:61679`, inside the node).
    pub fn introspection_addr(&self) -> SocketAddr {
        self.settings()
            .overrides
            .iter()
            .rev()
            .find(|(k, _)| k == "INTROSPECTION_BIND_ADDRESS")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 61679)))
    }

    /// GET of an introspection path (`/v1/enis`, `/v1/pods`, `/v1/pool`) as JSON.
    pub fn introspect(&self, path: &str) -> Result<Value, SimNodeError> {
        let reply = http::request(self.ns(), self.introspection_addr(), "GET", path, &[])?;
        if reply.status != 200 {
            return Err(SimNodeError::Introspection {
                path: path.to_owned(),
                reason: format!("status {}: {}", reply.status, reply.body.trim()),
            });
        }
        reply.json().ok_or_else(|| SimNodeError::Introspection {
            path: path.to_owned(),
            reason: format!("not JSON: {}", reply.body.trim()),
        })
    }

    /// The addresses in ipamd's datastore by ENI id (`/v1/enis`, every network card).
    pub fn datastore_ips(&self) -> Result<BTreeMap<String, BTreeSet<Ipv4Addr>>, SimNodeError> {
        let cards = self.introspect("/v1/enis")?;
        let bad = |reason: &str| SimNodeError::Introspection {
            path: "/v1/enis".into(),
            reason: format!("{reason}: {cards}"),
        };
        let mut out = BTreeMap::new();
        for card in cards
            .as_object()
            .ok_or_else(|| bad("not an object"))?
            .values()
        {
            let enis = card["ENIs"].as_object().ok_or_else(|| bad("no ENIs"))?;
            for (id, eni) in enis {
                let ips: BTreeSet<Ipv4Addr> = eni["AvailableIPv4Cidrs"]
                    .as_object()
                    .map(|cidrs| {
                        cidrs
                            .keys()
                            .filter_map(|c| c.trim_end_matches("/32").parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(id.clone(), ips);
            }
        }
        Ok(out)
    }

    /// Where ipamd serves Prometheus metrics (`:61678`, reached on the node's loopback).
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 61678))
    }

    /// ipamd's `/metrics`, as (series with labels, value) pairs in the order served.
    pub fn metrics(&self) -> Result<Vec<(String, f64)>, SimNodeError> {
        let reply = http::request(self.ns(), self.metrics_addr(), "GET", "/metrics", &[])?;
        if reply.status != 200 {
            return Err(SimNodeError::Introspection {
                path: "/metrics".into(),
                reason: format!("status {}: {}", reply.status, reply.body.trim()),
            });
        }
        Ok(parse_metrics(&reply.body))
    }

    /// The sum of every series of metric `name` (all label sets); `None` when ipamd does not
    /// export it.
    pub fn metric(&self, name: &str) -> Result<Option<f64>, SimNodeError> {
        let series: Vec<f64> = self
            .metrics()?
            .into_iter()
            .filter(|(s, _)| s.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .collect();
        Ok((!series.is_empty()).then(|| series.iter().sum()))
    }

    /// ipamd's checkpoint file as JSON.
    pub fn checkpoint(&self) -> Result<Value, SimNodeError> {
        let path = self.checkpoint_path();
        let text =
            fs::read_to_string(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| SimNodeError::Io {
            context: format!("checkpoint {} is not JSON", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// The IPv4 addresses the checkpoint lists.
    pub fn checkpoint_ips(&self) -> Result<BTreeSet<Ipv4Addr>, SimNodeError> {
        Ok(self.checkpoint()?["allocations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|al| al["ipv4"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The IPv6 addresses the checkpoint lists (pods of an IPv6 cluster).
    pub fn checkpoint_ipv6s(&self) -> Result<BTreeSet<Ipv6Addr>, SimNodeError> {
        Ok(self.checkpoint()?["allocations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|al| al["ipv6"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The node's rules that name `ip` (as destination or source).
    pub fn rules_for(&self, ip: Ipv4Addr) -> Result<Vec<Value>, SimNodeError> {
        let ip = ip.to_string();
        let with_len = format!("{ip}/32");
        Ok(self
            .ns()
            .rules()?
            .into_iter()
            .filter(|r| {
                [&r["src"], &r["dst"]]
                    .iter()
                    .any(|v| v.as_str() == Some(&ip) || v.as_str() == Some(&with_len))
            })
            .collect())
    }

    /// The node's main-table routes whose destination is `ip`.
    pub fn routes_to(&self, ip: Ipv4Addr) -> Result<Vec<Value>, SimNodeError> {
        let ip = ip.to_string();
        let with_len = format!("{ip}/32");
        Ok(self
            .ns()
            .routes("main")?
            .into_iter()
            .filter(|r| r["dst"].as_str() == Some(&ip) || r["dst"].as_str() == Some(&with_len))
            .collect())
    }

    /// A snapshot of what pods leave on the node: link names, main routes and rules.
    pub fn host_state(&self) -> Result<HostState, SimNodeError> {
        let mut links: Vec<String> = self.ns().link_names()?;
        links.sort();
        let routes = self
            .ns()
            .routes("all")?
            .iter()
            .map(Value::to_string)
            .collect();
        let rules = self.ns().rules()?.iter().map(Value::to_string).collect();
        Ok(HostState {
            links,
            routes,
            rules,
        })
    }

    /// Pings `dst` from `from`.
    pub fn ping(&self, from: &Netns, dst: impl Into<IpAddr>) -> Result<PingOutcome, SimNodeError> {
        Ok(from.ping(dst.into())?)
    }
}

/// Prometheus text format 0.0.4 → (series, value); comments and malformed lines are skipped.
pub(crate) fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.trim().rsplit_once(char::is_whitespace)?;
            Some((series.trim().to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Links, routes and rules of a node, compared before and after operations that must leave
/// nothing behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// Link names, sorted.
    pub links: Vec<String>,
    /// Routes of every table (JSON text).
    pub routes: BTreeSet<String>,
    /// Rules (JSON text).
    pub rules: BTreeSet<String>,
}

impl HostState {
    /// What differs from `other`, or `None` when equal.
    pub fn diff(&self, other: &HostState) -> Option<String> {
        if self == other {
            return None;
        }
        let links_a: BTreeSet<&String> = self.links.iter().collect();
        let links_b: BTreeSet<&String> = other.links.iter().collect();
        Some(format!(
            "links only before: {:?}, links only after: {:?}\nroutes only before: {:?}\nroutes only after: {:?}\nrules only before: {:?}\nrules only after: {:?}",
            links_a.difference(&links_b).collect::<Vec<_>>(),
            links_b.difference(&links_a).collect::<Vec<_>>(),
            self.routes.difference(&other.routes).collect::<Vec<_>>(),
            other.routes.difference(&self.routes).collect::<Vec<_>>(),
            self.rules.difference(&other.rules).collect::<Vec<_>>(),
            other.rules.difference(&self.rules).collect::<Vec<_>>(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_is_parsed_by_series() {
        let text = "# HELP awscni_eni_max x\n# TYPE awscni_eni_max gauge\nawscni_eni_max 3\n\
                    awscni_ec2api_req_count{fn=\"CreateTags\"} 2\n\
                    awscni_ec2api_req_count{fn=\"AttachNetworkInterface\"} 1\nbroken\n";
        let m = parse_metrics(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0], ("awscni_eni_max".to_owned(), 3.0));
        assert_eq!(
            m[2].0,
            "awscni_ec2api_req_count{fn=\"AttachNetworkInterface\"}"
        );
    }

    #[test]
    fn host_state_diff_names_the_new_link() {
        let a = HostState {
            links: vec!["eth0".into()],
            routes: BTreeSet::new(),
            rules: BTreeSet::new(),
        };
        let mut b = a.clone();
        b.links.push("eni123".into());
        assert!(a.diff(&a).is_none());
        assert!(a.diff(&b).unwrap().contains("eni123"));
    }
}
