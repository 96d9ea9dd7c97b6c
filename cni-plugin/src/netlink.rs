//! The plugin's rtnetlink connection: one per network namespace (opened inside the namespace by
//! fd, then used from anywhere), with the link, address, route, neighbour and rule operations
//! the pod data plane needs. Errno outcomes ("already there", "already gone"), the structs dumps
//! are read into and the requests ipamd makes too come from the contract crate's rtnetlink core
//! ([`vpc_cni_contract::netlink`]); the veth pair, pod addresses and the gateway's neighbour
//! entry are the plugin's own. Addresses are [`IpAddr`]: an IPv4 and an IPv6 pod go through the
//! same requests.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};
use vpc_cni_contract::dataplane::MAIN_TABLE;
use vpc_cni_contract::netlink::{self as core, GONE};
pub use vpc_cni_contract::netlink::{Family, Link, Route, Rule, RuleSelector, RuleSpec};

use crate::netns::{Netns, NetnsError};

/// Netlink failures, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The namespace could not be used.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The socket could not be opened.
    #[error("cannot open a netlink socket in {netns}: {source}")]
    Socket {
        /// The namespace path.
        netns: String,
        /// The OS error.
        source: io::Error,
    },
    /// A request failed.
    #[error("{op}: {}", describe(source))]
    Request {
        /// What was attempted, with names and addresses.
        op: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
}

fn describe(e: &rtnetlink::Error) -> String {
    core::describe(e)
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Request { source, .. } => core::errno(source),
            _ => None,
        }
    }

    fn is(&self, errnos: &[Errno]) -> bool {
        self.errno().is_some_and(|e| errnos.contains(&e))
    }
}

/// A neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface index.
    pub ifindex: u32,
    /// IP address.
    pub ip: IpAddr,
    /// Link-layer address.
    pub mac: Option<[u8; 6]>,
    /// Whether the entry is PERMANENT.
    pub permanent: bool,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let mut s = String::with_capacity(17);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case); `None` for anything else.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A netlink connection bound to one network namespace.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    netns: String,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Netlink {
    /// A connection in the calling thread's namespace. Must run inside a tokio runtime.
    pub fn current() -> Result<Self, NetlinkError> {
        Self::open("current network namespace".into())
    }

    /// A connection in `netns`: the socket is created inside it (a netlink socket stays in the
    /// namespace it was created in), then the thread returns home.
    pub fn in_netns(netns: &Netns) -> Result<Self, NetlinkError> {
        let _guard = netns.enter()?;
        Self::open(netns.path().display().to_string())
    }

    /// Turns the failure of a request into an error naming `op` and this namespace; the
    /// message is only formatted when the request fails.
    fn failed(&self, op: impl fmt::Display) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
        move |source| NetlinkError::Request {
            op: format!("{op} in {}", self.netns),
            source,
        }
    }

    fn open(netns: String) -> Result<Self, NetlinkError> {
        let (handle, conn) = core::open().map_err(|source| NetlinkError::Socket {
            netns: netns.clone(),
            source,
        })?;
        Ok(Self {
            handle,
            netns,
            conn,
        })
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        core::links(&self.handle)
            .await
            .map_err(self.failed("list links"))
    }

    /// The link called `name`, if any.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .map_err(self.failed(format_args!("look up link {name}")));
        match res {
            Ok(m) => Ok(m.map(|m| Link::from_message(&m))),
            Err(e) if e.is(&GONE) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a link; `Ok(false)` if it was already gone.
    pub async fn del_link(&self, index: u32, name: &str) -> Result<bool, NetlinkError> {
        match self
            .handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(self.failed(format_args!("delete link {name}")))
        {
            Ok(()) => Ok(true),
            Err(e) if e.is(&GONE) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a veth whose end `name` (MAC `mac`, up) lives in this connection's namespace and
    /// whose peer `peer_name` (MAC `peer_mac`) is created directly in `peer_ns`, so no link ever
    /// moves between namespaces. Both ends get `mtu`.
    pub async fn create_veth(
        &self,
        name: &str,
        mac: [u8; 6],
        peer_name: &str,
        peer_mac: [u8; 6],
        peer_ns: &Netns,
        mtu: u32,
    ) -> Result<(), NetlinkError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_name.to_string())
            .address(peer_mac.to_vec())
            .mtu(mtu)
            .setns_by_fd(peer_ns.file().as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .address(mac.to_vec())
            .mtu(mtu)
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                op: format!(
                    "create veth {name} in {} with peer {peer_name} in {}",
                    self.netns,
                    peer_ns.path().display()
                ),
                source,
            })
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(self.failed(format_args!("set link {name} up")))
    }

    /// Adds (or replaces) `ip/prefix` on a link; an IPv6 address without duplicate address
    /// detection (`IFA_F_NODAD`).
    pub async fn add_address(
        &self,
        index: u32,
        name: &str,
        ip: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut request = self.handle.address().add(index, ip, prefix).replace();
        if ip.is_ipv6() {
            // Usable at once: never tentative, not even until the kernel's address work runs
            // (duplicate address detection is off on pod links, see `sysctl`).
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request
            .execute()
            .await
            .map_err(self.failed(format_args!("add address {ip}/{prefix} to {name}")))
    }

    /// Deletes `ip/prefix` from a link; `Ok(false)` if it was not there.
    pub async fn del_address(
        &self,
        index: u32,
        name: &str,
        ip: IpAddr,
        prefix: u8,
    ) -> Result<bool, NetlinkError> {
        // Built from the address alone: no dump is needed (see `core::del_address`).
        let mut msg = AddressMessage::default();
        msg.header.family = Family::of(ip).address_family();
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        core::del_address(&self.handle, msg)
            .await
            .map_err(self.failed(format_args!("delete address {ip}/{prefix} from {name}")))
    }

    /// The addresses (with prefix lengths) on a link: of `family`, or of every family.
    pub async fn addresses(
        &self,
        index: u32,
        family: Option<Family>,
    ) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        Ok(self
            .address_states(index, family)
            .await?
            .into_iter()
            .map(|(ip, len, _)| (ip, len))
            .collect())
    }

    /// The addresses on a link with their prefix lengths and `IFA_F_*` flags (tentative,
    /// dadfailed: the state of duplicate address detection).
    pub async fn address_states(
        &self,
        index: u32,
        family: Option<Family>,
    ) -> Result<Vec<(IpAddr, u8, AddressFlags)>, NetlinkError> {
        let msgs = core::addresses(&self.handle, index, family)
            .await
            .map_err(self.failed("list addresses"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                core::address_of(m).map(|ip| (ip, m.header.prefix_len, core::address_flags(m)))
            })
            .collect())
    }

    /// Adds or replaces `dst/prefix dev <oif> scope link` in `table`.
    pub async fn replace_link_route(
        &self,
        dst: IpAddr,
        prefix: u8,
        oif: u32,
        table: u32,
    ) -> Result<(), NetlinkError> {
        core::replace_link_route(&self.handle, dst, prefix, oif, table)
            .await
            .map_err(self.failed(format_args!(
                "add route {dst}/{prefix} dev #{oif} scope link table {table}"
            )))
    }

    /// Adds or replaces `default via <gw> dev <oif>` in the main table, `onlink` if asked.
    pub async fn replace_default_route(
        &self,
        gw: IpAddr,
        oif: u32,
        onlink: bool,
    ) -> Result<(), NetlinkError> {
        core::replace_default_route(&self.handle, gw, oif, MAIN_TABLE, onlink)
            .await
            .map_err(self.failed(format_args!("add default route via {gw} dev #{oif}")))
    }

    /// Every route of `family`, of every table.
    pub async fn routes(&self, family: Family) -> Result<Vec<Route>, NetlinkError> {
        core::routes(&self.handle, family)
            .await
            .map_err(self.failed(format_args!("list {family} routes")))
    }

    /// Deletes a route read back by [`Netlink::routes`]; `Ok(false)` if already gone.
    pub async fn del_route(&self, route: &Route) -> Result<bool, NetlinkError> {
        core::del_route(&self.handle, route)
            .await
            .map_err(self.failed(format_args!(
                "delete route {} table {}",
                route.destination(),
                route.table
            )))
    }

    /// Adds or replaces a PERMANENT neighbour `ip lladdr mac` on a link.
    pub async fn replace_permanent_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(self.failed(format_args!(
                "add neighbour {ip} lladdr {} on #{index}",
                format_mac(&mac)
            )))
    }

    /// Every neighbour entry: of `family`, or of both IP families (one dump).
    pub async fn neighbours(&self, family: Option<Family>) -> Result<Vec<Neighbour>, NetlinkError> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family.map_or(AddressFamily::Unspec, Family::address_family))
            .execute()
            .try_collect()
            .await
            .map_err(self.failed("list neighbours"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => {
                            ip = Some(IpAddr::V4(*i));
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(i)) => {
                            ip = Some(IpAddr::V6(*i));
                        }
                        NeighbourAttribute::LinkLayerAddress(l) => {
                            mac = <[u8; 6]>::try_from(l.as_slice()).ok();
                        }
                        _ => {}
                    }
                }
                Some(Neighbour {
                    ifindex: m.header.ifindex,
                    ip: ip?,
                    mac,
                    permanent: m.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    /// Adds a rule with action `lookup`; `Ok(false)` if an identical rule already exists.
    pub async fn add_rule(&self, spec: RuleSpec) -> Result<bool, NetlinkError> {
        core::add_rule(&self.handle, &spec)
            .await
            .map_err(self.failed(format_args!("add rule {spec}")))
    }

    /// Every rule of `family`.
    pub async fn rules(&self, family: Family) -> Result<Vec<Rule>, NetlinkError> {
        core::rules(&self.handle, family)
            .await
            .map_err(self.failed(format_args!("list {family} rules")))
    }

    /// Deletes every rule `selector` matches, in any table, by value (no dump); returns
    /// how many went.
    pub async fn del_rules_matching(&self, selector: RuleSelector) -> Result<usize, NetlinkError> {
        core::del_rules_matching(&self.handle, &selector)
            .await
            .map_err(self.failed(format_args!("delete rule {selector}")))
    }

    /// Deletes a rule read back by [`Netlink::rules`]; `Ok(false)` if already gone.
    pub async fn del_rule(&self, rule: &Rule) -> Result<bool, NetlinkError> {
        core::del_rule(&self.handle, rule)
            .await
            .map_err(self.failed(format_args!(
                "delete rule priority {} lookup {}",
                rule.priority, rule.table
            )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_back_from_their_text() {
        let mac = [0x02, 0xab, 0x00, 0x10, 0xfe, 0x7f];
        assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
        assert_eq!(parse_mac("02:AB:00:10:FE:7F"), Some(mac));
        for bad in [
            "",
            "02:ab:00:10:fe",
            "02:ab:00:10:fe:7f:00",
            "02:ab:00:10:fe:7",
            "02-ab-00-10-fe-7f",
            "02:ab:00:10:fe:zz",
            "2:ab:00:10:fe:7f0",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
