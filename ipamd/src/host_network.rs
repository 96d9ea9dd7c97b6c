//! The node's own network namespace, over rtnetlink: secondary ENI bring-up (vpc-cni §3.6),
//! the primary ENI's MTU, the host link list (checkpoint restore), and removal of a pod's
//! policy rules. ipamd runs in the node's namespace (hostNetwork), so a netlink socket opened
//! here works on the node; nothing calls `setns`.
//!
//! Every step is idempotent: addresses, routes and rules are compared with what exists and only
//! the difference is applied, so running the bring-up twice leaves the same state.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use nix::errno::Errno;
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};
use sha1::{Digest, Sha1};
use thiserror::Error;

use crate::mac::MacAddr;

/// Priority of `to <pod ip> lookup main` rules.
pub const TO_CONTAINER_RULE_PRIORITY: u32 = 512;
/// Priority of `from <pod ip> lookup <ENI table>` rules.
pub const FROM_POD_RULE_PRIORITY: u32 = 1536;
/// Priority of `from <ENI primary ip> lookup <ENI table>` rules.
pub const FROM_ENI_PRIMARY_IP_RULE_PRIORITY: u32 = 32765;
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A netlink failure, naming what was being done.
#[derive(Debug, Error)]
pub enum HostNetworkError {
    /// Opening the netlink socket failed.
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done (names the link, address, route or rule).
        op: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// No host link has the ENI's MAC.
    #[error(
        "no network interface has MAC {mac} (ENI {eni}); is the ENI attached and visible in this network namespace?"
    )]
    LinkNotFound {
        /// The MAC.
        mac: MacAddr,
        /// The ENI.
        eni: String,
    },
    /// Several errors (teardown carries on and reports them all).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<HostNetworkError>),
}

/// The errno of a netlink error, if it is one.
pub fn errno(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

fn is_gone(err: &rtnetlink::Error) -> bool {
    matches!(
        errno(err),
        Some(Errno::ENOENT | Errno::ESRCH | Errno::ENODEV | Errno::EADDRNOTAVAIL)
    )
}

/// A host link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC, if it has one.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
}

fn host_link(msg: &LinkMessage) -> HostLink {
    let mut link = HostLink {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Address(a) => link.mac = MacAddr::from_bytes(a),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            _ => {}
        }
    }
    link
}

/// What a secondary ENI needs on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryEni {
    /// `eni-…` (for messages).
    pub id: String,
    /// Its MAC.
    pub mac: MacAddr,
    /// Device number (≥ 1).
    pub device_number: u32,
    /// Its primary address.
    pub primary_ip: Ipv4Addr,
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// MTU to set.
    pub mtu: u32,
}

impl SecondaryEni {
    /// Route table `device + 1`.
    pub fn route_table(&self) -> u32 {
        self.device_number + 1
    }

    /// The subnet's router: network address + 1.
    pub fn gateway(&self) -> Ipv4Addr {
        crate::cloud::metadata::subnet_gateway(self.subnet)
    }
}

/// The suffix the plugin gives a pod's host veth: first 11 hex chars of sha1("<ns>.<name>").
pub fn veth_suffix(namespace: &str, name: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{name}").as_bytes());
    let mut hex = hex::encode(digest);
    hex.truncate(11);
    hex
}

fn route_table_of(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or_else(|| u32::from(msg.header.table))
}

fn route_oif(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_v4(
    msg: &RouteMessage,
    pick: fn(&RouteAttribute) -> Option<&RouteAddress>,
) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match pick(a) {
        Some(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn route_dst(msg: &RouteMessage) -> Option<Ipv4Addr> {
    route_v4(msg, |a| match a {
        RouteAttribute::Destination(d) => Some(d),
        _ => None,
    })
}

fn route_gw(msg: &RouteMessage) -> Option<Ipv4Addr> {
    route_v4(msg, |a| match a {
        RouteAttribute::Gateway(g) => Some(g),
        _ => None,
    })
}

pub(crate) fn rule_table(msg: &RuleMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or_else(|| u32::from(msg.header.table))
}

pub(crate) fn rule_priority(msg: &RuleMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

pub(crate) fn rule_src(msg: &RuleMessage) -> Option<(IpAddr, u8)> {
    msg.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(ip) => Some((*ip, msg.header.src_len)),
        _ => None,
    })
}

pub(crate) fn rule_dst(msg: &RuleMessage) -> Option<(IpAddr, u8)> {
    msg.attributes.iter().find_map(|a| match a {
        RuleAttribute::Destination(ip) => Some((*ip, msg.header.dst_len)),
        _ => None,
    })
}

/// True when a rule's only selector is the given source or destination /32.
fn rule_is_for(msg: &RuleMessage, ip: Ipv4Addr, by_source: bool) -> bool {
    let want = Some((IpAddr::V4(ip), 32));
    if by_source {
        rule_src(msg) == want
    } else {
        rule_dst(msg) == want
    }
}

/// Netlink access to the namespace ipamd runs in.
#[derive(Debug, Clone)]
pub struct HostNetwork {
    pub(crate) handle: Handle,
}

impl HostNetwork {
    /// Opens a netlink socket in the current thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    ///
    /// # Errors
    /// The socket could not be opened.
    pub fn connect() -> Result<Self, HostNetworkError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(HostNetworkError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Every link. The kernel is asked to leave out the statistics (RTEXT_FILTER_SKIP_STATS)
    /// and each message is reduced to what [`HostLink`] keeps as it arrives: with hundreds of
    /// pod veths on the node, collecting the full messages (kilobytes each) first is what
    /// ipamd's heap grew by at start-up.
    ///
    /// # Errors
    /// The dump failed.
    pub async fn links(&self) -> Result<Vec<HostLink>, HostNetworkError> {
        self.handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
            .execute()
            .map_ok(|msg| host_link(&msg))
            .try_collect()
            .await
            .map_err(|source| HostNetworkError::Netlink {
                op: "list links".into(),
                source,
            })
    }

    /// The names of every link (what restore and the orphan sweep look for pod veths in).
    ///
    /// # Errors
    /// The dump failed.
    pub async fn link_names(&self) -> Result<Vec<String>, HostNetworkError> {
        Ok(self.links().await?.into_iter().map(|l| l.name).collect())
    }

    /// The link with this MAC.
    ///
    /// # Errors
    /// The dump failed.
    pub async fn link_by_mac(&self, mac: MacAddr) -> Result<Option<HostLink>, HostNetworkError> {
        Ok(self.links().await?.into_iter().find(|l| l.mac == Some(mac)))
    }

    async fn require_link(&self, mac: MacAddr, eni: &str) -> Result<HostLink, HostNetworkError> {
        self.link_by_mac(mac)
            .await?
            .ok_or_else(|| HostNetworkError::LinkNotFound {
                mac,
                eni: eni.to_owned(),
            })
    }

    /// Sets the MTU of the primary ENI's link (the only change ipamd makes to it here).
    ///
    /// # Errors
    /// No link has the MAC, or the change failed.
    pub async fn set_primary_mtu(
        &self,
        mac: MacAddr,
        eni: &str,
        mtu: u32,
    ) -> Result<HostLink, HostNetworkError> {
        let link = self.require_link(mac, eni).await?;
        if link.mtu != Some(mtu) {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(link.index).mtu(mtu).build())
                .execute()
                .await
                .map_err(|source| HostNetworkError::Netlink {
                    op: format!("set MTU {mtu} on {} (primary ENI {eni})", link.name),
                    source,
                })?;
        }
        Ok(link)
    }

    /// Brings up a secondary ENI: MTU, link up, `<primary ip>/<subnet prefix>` as its only global
    /// IPv4 address, table `device + 1` with `<gw>/32 scope link` and `default via <gw>`, the
    /// kernel's subnet route removed from main, and rule 32765 `from <primary ip> lookup <table>`.
    ///
    /// # Errors
    /// No link has the MAC, or a netlink step failed (the message names it).
    pub async fn setup_secondary_eni(
        &self,
        eni: &SecondaryEni,
    ) -> Result<HostLink, HostNetworkError> {
        let link = self.require_link(eni.mac, &eni.id).await?;
        let name = link.name.clone();
        let ctx = |what: String| move |source| HostNetworkError::Netlink { op: what, source };

        if link.mtu != Some(eni.mtu) || !link.up {
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(link.index)
                        .mtu(eni.mtu)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(ctx(format!(
                    "set MTU {} and up on {name} ({})",
                    eni.mtu, eni.id
                )))?;
        }

        self.ensure_address(&link, eni).await?;

        let table = eni.route_table();
        let gw = eni.gateway();
        let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(gw, 32)
            .output_interface(link.index)
            .scope(RouteScope::Link)
            .table_id(table)
            .build();
        self.handle
            .route()
            .add(gw_route)
            .replace()
            .execute()
            .await
            .map_err(ctx(format!(
                "add route {gw}/32 dev {name} scope link table {table}"
            )))?;
        let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(link.index)
            .table_id(table)
            .build();
        self.handle
            .route()
            .add(default_route)
            .replace()
            .execute()
            .await
            .map_err(ctx(format!(
                "add route default via {gw} dev {name} table {table}"
            )))?;

        self.remove_subnet_route(&link, eni).await?;
        self.ensure_eni_rule(eni).await?;
        Ok(link)
    }

    async fn addresses_v4(&self, link: &HostLink) -> Result<Vec<AddressMessage>, HostNetworkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| HostNetworkError::Netlink {
                op: format!("list addresses of {}", link.name),
                source,
            })?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.family == AddressFamily::Inet && m.header.index == link.index)
            .collect())
    }

    async fn ensure_address(
        &self,
        link: &HostLink,
        eni: &SecondaryEni,
    ) -> Result<(), HostNetworkError> {
        let want = (eni.primary_ip, eni.subnet.prefix_len());
        let mut present = false;
        for msg in self.addresses_v4(link).await? {
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let Some(addr) = addr else { continue };
            if (addr, msg.header.prefix_len) == want {
                present = true;
                continue;
            }
            if msg.header.scope != AddressScope::Universe {
                continue;
            }
            let prefix = msg.header.prefix_len;
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .or_else(|e| if is_gone(&e) { Ok(()) } else { Err(e) })
                .map_err(|source| HostNetworkError::Netlink {
                    op: format!("delete stale address {addr}/{prefix} from {}", link.name),
                    source,
                })?;
        }
        if !present {
            self.handle
                .address()
                .add(
                    link.index,
                    IpAddr::V4(eni.primary_ip),
                    eni.subnet.prefix_len(),
                )
                .execute()
                .await
                .map_err(|source| HostNetworkError::Netlink {
                    op: format!(
                        "add address {}/{} to {}",
                        eni.primary_ip,
                        eni.subnet.prefix_len(),
                        link.name
                    ),
                    source,
                })?;
        }
        Ok(())
    }

    async fn routes_v4(&self) -> Result<Vec<RouteMessage>, HostNetworkError> {
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|source| HostNetworkError::Netlink {
                op: "list IPv4 routes".into(),
                source,
            })
    }

    /// Adding the address made the kernel add `<subnet> dev ethN proto kernel` to main; traffic
    /// for the subnet must keep leaving through the primary ENI, as in the reference.
    async fn remove_subnet_route(
        &self,
        link: &HostLink,
        eni: &SecondaryEni,
    ) -> Result<(), HostNetworkError> {
        let subnet = eni.subnet.trunc();
        for route in self.routes_v4().await? {
            let is_subnet_route = route_table_of(&route) == MAIN_TABLE
                && route_oif(&route) == Some(link.index)
                && route.header.destination_prefix_length == subnet.prefix_len()
                && route_dst(&route) == Some(subnet.network())
                && route.header.protocol == RouteProtocol::Kernel;
            if !is_subnet_route {
                continue;
            }
            self.handle
                .route()
                .del(route)
                .execute()
                .await
                .or_else(|e| if is_gone(&e) { Ok(()) } else { Err(e) })
                .map_err(|source| HostNetworkError::Netlink {
                    op: format!("delete subnet route {subnet} dev {} from main", link.name),
                    source,
                })?;
        }
        Ok(())
    }

    pub(crate) async fn rules_v4(&self) -> Result<Vec<RuleMessage>, HostNetworkError> {
        self.handle
            .rule()
            .get(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(|source| HostNetworkError::Netlink {
                op: "list IPv4 rules".into(),
                source,
            })
    }

    async fn ensure_eni_rule(&self, eni: &SecondaryEni) -> Result<(), HostNetworkError> {
        let table = eni.route_table();
        let mut present = false;
        for rule in self.rules_v4().await? {
            if rule_priority(&rule) != Some(FROM_ENI_PRIMARY_IP_RULE_PRIORITY)
                || !rule_is_for(&rule, eni.primary_ip, true)
            {
                continue;
            }
            if rule_table(&rule) == table && rule.header.action == RuleAction::ToTable && !present {
                present = true;
                continue;
            }
            // A duplicate, or one pointing at another table: replace it.
            self.delete_rule(
                rule,
                &format!(
                    "stale rule {FROM_ENI_PRIMARY_IP_RULE_PRIORITY} from {}",
                    eni.primary_ip
                ),
            )
            .await?;
        }
        if !present {
            self.handle
                .rule()
                .add()
                .v4()
                .source_prefix(eni.primary_ip, 32)
                .table_id(table)
                .priority(FROM_ENI_PRIMARY_IP_RULE_PRIORITY)
                .action(RuleAction::ToTable)
                .execute()
                .await
                .or_else(|e| {
                    if errno(&e) == Some(Errno::EEXIST) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|source| HostNetworkError::Netlink {
                    op: format!(
                        "add rule {FROM_ENI_PRIMARY_IP_RULE_PRIORITY} from {} lookup {table}",
                        eni.primary_ip
                    ),
                    source,
                })?;
        }
        Ok(())
    }

    pub(crate) async fn delete_rule(
        &self,
        rule: RuleMessage,
        what: &str,
    ) -> Result<(), HostNetworkError> {
        self.handle
            .rule()
            .del(rule)
            .execute()
            .await
            .or_else(|e| if is_gone(&e) { Ok(()) } else { Err(e) })
            .map_err(|source| HostNetworkError::Netlink {
                op: format!("delete {what}"),
                source,
            })
    }

    /// Undoes [`Self::setup_secondary_eni`] before the ENI is detached: deletes rule 32765
    /// `from <primary ip>` and every route of table `device + 1`, so a later ENI at the same
    /// device index starts clean. Links and addresses go with the detached ENI. Carries on past
    /// failures and reports them all; what is already gone counts as deleted.
    ///
    /// # Errors
    /// Every failed deletion.
    pub async fn teardown_secondary_eni(&self, eni: &SecondaryEni) -> Result<(), HostNetworkError> {
        let mut errors = Vec::new();
        let table = eni.route_table();
        for rule in self.rules_v4().await? {
            if rule_priority(&rule) == Some(FROM_ENI_PRIMARY_IP_RULE_PRIORITY)
                && rule_is_for(&rule, eni.primary_ip, true)
                && let Err(e) = self
                    .delete_rule(
                        rule,
                        &format!(
                            "rule {FROM_ENI_PRIMARY_IP_RULE_PRIORITY} from {} ({})",
                            eni.primary_ip, eni.id
                        ),
                    )
                    .await
            {
                errors.push(e);
            }
        }
        for route in self.routes_v4().await? {
            if route_table_of(&route) != table {
                continue;
            }
            let dst = route_dst(&route).map_or_else(
                || "default".to_owned(),
                |d| format!("{d}/{}", route.header.destination_prefix_length),
            );
            if let Err(source) = self
                .handle
                .route()
                .del(route)
                .execute()
                .await
                .or_else(|e| if is_gone(&e) { Ok(()) } else { Err(e) })
            {
                errors.push(HostNetworkError::Netlink {
                    op: format!("delete route {dst} table {table} ({})", eni.id),
                    source,
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(HostNetworkError::Many(errors))
        }
    }

    /// Deletes a pod's policy rules: priority 512 `to <ip>` and every priority 1536 `from <ip>`.
    /// Carries on past failures and reports them all; returns how many rules were deleted.
    ///
    /// # Errors
    /// Every failed deletion (rules already gone count as deleted).
    pub async fn delete_pod_rules(&self, ip: Ipv4Addr) -> Result<usize, HostNetworkError> {
        let mut errors = Vec::new();
        let mut deleted = 0;
        for rule in self.rules_v4().await? {
            let prio = rule_priority(&rule);
            let what = if prio == Some(TO_CONTAINER_RULE_PRIORITY) && rule_is_for(&rule, ip, false)
            {
                format!("rule {TO_CONTAINER_RULE_PRIORITY} to {ip}")
            } else if prio == Some(FROM_POD_RULE_PRIORITY) && rule_is_for(&rule, ip, true) {
                format!(
                    "rule {FROM_POD_RULE_PRIORITY} from {ip} lookup {}",
                    rule_table(&rule)
                )
            } else {
                continue;
            };
            match self.delete_rule(rule, &what).await {
                Ok(()) => deleted += 1,
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(deleted)
        } else {
            Err(HostNetworkError::Many(errors))
        }
    }

    /// The routes of one table (for checks and tests): `(destination, prefix, gateway, oif)`.
    ///
    /// # Errors
    /// The dump failed.
    pub async fn table_routes(
        &self,
        table: u32,
    ) -> Result<Vec<(Option<Ipv4Addr>, u8, Option<Ipv4Addr>, Option<u32>)>, HostNetworkError> {
        Ok(self
            .routes_v4()
            .await?
            .iter()
            .filter(|r| route_table_of(r) == table)
            .map(|r| {
                (
                    route_dst(r),
                    r.header.destination_prefix_length,
                    route_gw(r),
                    route_oif(r),
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_suffix_matches_the_plugin_naming() {
        // printf 'default.web-0' | sha1sum → 0d7763386da219ddff1faed1cc6576fb9d57d419
        assert_eq!(veth_suffix("default", "web-0"), "0d7763386da");
        assert_ne!(
            veth_suffix("default", "web-0"),
            veth_suffix("default", "web-1")
        );
    }
}
