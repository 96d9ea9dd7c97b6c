//! The node's own network namespace, over rtnetlink: secondary ENI bring-up (vpc-cni §3.6),
//! the primary ENI's MTU, the host link list (checkpoint restore, orphan sweep), removal of a
//! pod's policy rules, and the rule dump, deletion and addition that node networking's policy
//! rules are reconciled with ([`super::policy`]). ipamd runs in the node's namespace
//! (hostNetwork), so a netlink socket opened here works on the node; nothing calls `setns`.
//!
//! Every step is idempotent: addresses, routes and rules are compared with what exists and only
//! the difference is applied, so running the bring-up twice leaves the same state.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressScope;
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::rule::RuleAction;
use rtnetlink::{Handle, LinkUnspec};
use thiserror::Error;
use vpc_cni_contract::dataplane::{
    self, FROM_ENI_PRIMARY_IP_RULE_PRIORITY, MAIN_TABLE, route_table_for_device,
};
use vpc_cni_contract::netlink::{self as core, Family, Route, Rule, RuleSpec};

use crate::mac::MacAddr;

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

impl From<core::Link> for HostLink {
    fn from(l: core::Link) -> Self {
        Self {
            index: l.index,
            name: l.name,
            mac: l.mac.map(MacAddr),
            mtu: l.mtu,
            up: l.up,
        }
    }
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
    /// Its route table: `device + 1` (a secondary ENI is never device 0).
    pub fn route_table(&self) -> u32 {
        route_table_for_device(self.device_number)
    }

    /// The subnet's router: network address + 1.
    pub fn gateway(&self) -> Ipv4Addr {
        crate::cloud::metadata::subnet_gateway(self.subnet)
    }
}

/// True when a rule's `from` (or its `to`) is exactly `ip/32`.
fn rule_is_for(rule: &Rule, ip: Ipv4Addr, by_source: bool) -> bool {
    let want = Some((IpAddr::V4(ip), 32));
    if by_source {
        rule.src == want
    } else {
        rule.dst == want
    }
}

fn netlink_error(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> HostNetworkError {
    let op = op.into();
    move |source| HostNetworkError::Netlink { op, source }
}

/// Netlink access to the namespace ipamd runs in.
#[derive(Debug, Clone)]
pub struct HostNetwork {
    handle: Handle,
}

impl HostNetwork {
    /// Opens a netlink socket in the current thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    ///
    /// # Errors
    /// The socket could not be opened.
    pub fn connect() -> Result<Self, HostNetworkError> {
        // The connection task lives as long as the runtime: every clone shares the socket.
        let (handle, _connection) = core::open().map_err(HostNetworkError::Connect)?;
        Ok(Self { handle })
    }

    /// Every link, without statistics (see [`core::links`]: with hundreds of pod veths on the
    /// node, collecting the full messages first is what ipamd's heap grew by at start-up).
    ///
    /// # Errors
    /// The dump failed.
    pub async fn links(&self) -> Result<Vec<HostLink>, HostNetworkError> {
        Ok(core::links(&self.handle)
            .await
            .map_err(netlink_error("list links"))?
            .into_iter()
            .map(HostLink::from)
            .collect())
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
                .map_err(netlink_error(format!(
                    "set MTU {mtu} on {} (primary ENI {eni})",
                    link.name
                )))?;
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
                .map_err(netlink_error(format!(
                    "set MTU {} and up on {name} ({})",
                    eni.mtu, eni.id
                )))?;
        }

        self.ensure_address(&link, eni).await?;

        let table = eni.route_table();
        let gw = eni.gateway();
        core::replace_link_route(&self.handle, gw, 32, link.index, table)
            .await
            .map_err(netlink_error(format!(
                "add route {gw}/32 dev {name} scope link table {table}"
            )))?;
        core::replace_default_route(&self.handle, gw, link.index, table, false)
            .await
            .map_err(netlink_error(format!(
                "add route default via {gw} dev {name} table {table}"
            )))?;

        self.remove_subnet_route(&link, eni).await?;
        self.ensure_eni_rule(eni).await?;
        Ok(link)
    }

    async fn ensure_address(
        &self,
        link: &HostLink,
        eni: &SecondaryEni,
    ) -> Result<(), HostNetworkError> {
        let want = (IpAddr::V4(eni.primary_ip), eni.subnet.prefix_len());
        let mut present = false;
        let msgs = core::addresses(&self.handle, link.index, Some(Family::V4))
            .await
            .map_err(netlink_error(format!("list addresses of {}", link.name)))?;
        for msg in msgs {
            let Some(addr) = core::address_of(&msg) else {
                continue;
            };
            if (addr, msg.header.prefix_len) == want {
                present = true;
                continue;
            }
            if msg.header.scope != AddressScope::Universe {
                continue;
            }
            let prefix = msg.header.prefix_len;
            core::del_address(&self.handle, msg)
                .await
                .map_err(netlink_error(format!(
                    "delete stale address {addr}/{prefix} from {}",
                    link.name
                )))?;
        }
        if !present {
            self.handle
                .address()
                .add(link.index, eni.primary_ip.into(), eni.subnet.prefix_len())
                .execute()
                .await
                .map_err(netlink_error(format!(
                    "add address {}/{} to {}",
                    eni.primary_ip,
                    eni.subnet.prefix_len(),
                    link.name
                )))?;
        }
        Ok(())
    }

    async fn routes_v4(&self) -> Result<Vec<Route>, HostNetworkError> {
        core::routes(&self.handle, Family::V4)
            .await
            .map_err(netlink_error("list IPv4 routes"))
    }

    /// Adding the address made the kernel add `<subnet> dev ethN proto kernel` to main; traffic
    /// for the subnet must keep leaving through the primary ENI, as in the reference.
    async fn remove_subnet_route(
        &self,
        link: &HostLink,
        eni: &SecondaryEni,
    ) -> Result<(), HostNetworkError> {
        let subnet: Ipv4Net = eni.subnet.trunc();
        for route in self.routes_v4().await? {
            let is_subnet_route = route.table == MAIN_TABLE
                && route.oif == Some(link.index)
                && route.prefix_len == subnet.prefix_len()
                && route.dst == Some(IpAddr::V4(subnet.network()))
                && route.protocol == RouteProtocol::Kernel;
            if !is_subnet_route {
                continue;
            }
            core::del_route(&self.handle, &route)
                .await
                .map_err(netlink_error(format!(
                    "delete subnet route {subnet} dev {} from main",
                    link.name
                )))?;
        }
        Ok(())
    }

    /// Every IPv4 policy rule.
    ///
    /// # Errors
    /// The dump failed.
    pub async fn rules_v4(&self) -> Result<Vec<Rule>, HostNetworkError> {
        core::rules(&self.handle, Family::V4)
            .await
            .map_err(netlink_error("list IPv4 rules"))
    }

    async fn ensure_eni_rule(&self, eni: &SecondaryEni) -> Result<(), HostNetworkError> {
        let table = eni.route_table();
        let mut present = false;
        for rule in self.rules_v4().await? {
            if rule.priority != FROM_ENI_PRIMARY_IP_RULE_PRIORITY
                || !rule_is_for(&rule, eni.primary_ip, true)
            {
                continue;
            }
            if rule.table == table && rule.action == RuleAction::ToTable && !present {
                present = true;
                continue;
            }
            // A duplicate, or one pointing at another table: replace it.
            self.delete_rule(
                &rule,
                &format!(
                    "stale rule {FROM_ENI_PRIMARY_IP_RULE_PRIORITY} from {}",
                    eni.primary_ip
                ),
            )
            .await?;
        }
        if !present {
            core::add_rule(
                &self.handle,
                &dataplane::from_eni_primary_rule(eni.primary_ip, table),
            )
            .await
            .map_err(netlink_error(format!(
                "add rule {FROM_ENI_PRIMARY_IP_RULE_PRIORITY} from {} lookup {table}",
                eni.primary_ip
            )))?;
        }
        Ok(())
    }

    /// Deletes `rule` (one already gone counts as deleted); `what` names it in the error.
    ///
    /// # Errors
    /// The kernel refused.
    pub async fn delete_rule(&self, rule: &Rule, what: &str) -> Result<(), HostNetworkError> {
        core::del_rule(&self.handle, rule)
            .await
            .map(drop)
            .map_err(netlink_error(format!("delete {what}")))
    }

    /// Adds an IPv4 rule (the same rule already there is fine); `what` names it in the error.
    ///
    /// # Errors
    /// The kernel refused.
    pub async fn add_rule(&self, spec: &RuleSpec, what: &str) -> Result<(), HostNetworkError> {
        core::add_rule(&self.handle, spec)
            .await
            .map(drop)
            .map_err(netlink_error(format!("add {what}")))
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
            if rule.priority == FROM_ENI_PRIMARY_IP_RULE_PRIORITY
                && rule_is_for(&rule, eni.primary_ip, true)
                && let Err(e) = self
                    .delete_rule(
                        &rule,
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
            if route.table != table {
                continue;
            }
            if let Err(source) = core::del_route(&self.handle, &route).await {
                errors.push(HostNetworkError::Netlink {
                    op: format!(
                        "delete route {} table {table} ({})",
                        route.destination(),
                        eni.id
                    ),
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

    /// Deletes a pod's policy rules by value ([`dataplane::pod_rules`]): priority 512 `to <ip>`
    /// and every priority 1536 `from <ip>`, as the plugin's DEL does. Carries on past failures
    /// and reports them all; returns how many rules were deleted.
    ///
    /// # Errors
    /// Every failed deletion (rules already gone count as deleted).
    pub async fn delete_pod_rules(&self, ip: IpAddr) -> Result<usize, HostNetworkError> {
        let mut errors = Vec::new();
        let mut deleted = 0;
        for selector in dataplane::pod_rules(ip) {
            match core::del_rules_matching(&self.handle, &selector).await {
                Ok(n) => deleted += n,
                Err(source) => errors.push(HostNetworkError::Netlink {
                    op: format!("delete rule {selector}"),
                    source,
                }),
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
    ) -> Result<Vec<(Option<IpAddr>, u8, Option<IpAddr>, Option<u32>)>, HostNetworkError> {
        Ok(self
            .routes_v4()
            .await?
            .iter()
            .filter(|r| r.table == table)
            .map(|r| (r.dst, r.prefix_len, r.gateway, r.oif))
            .collect())
    }
}
