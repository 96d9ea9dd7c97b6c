//! A small rtnetlink wrapper: one connection per network namespace (opened inside the namespace
//! by fd, then used from anywhere), and the handful of link, address, route, neighbour and rule
//! operations the pod data plane needs, with errno-based outcomes ("already there", "already
//! gone").

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::{Netns, NetnsError};

/// The main routing table.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

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
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(Errno::from_raw(m.raw_code().abs())),
            _ => None,
        }
    }

    fn is(&self, errnos: &[Errno]) -> bool {
        self.errno().is_some_and(|e| errnos.contains(&e))
    }
}

/// Errnos meaning "the object is already gone" on teardown.
const GONE: [Errno; 4] = [
    Errno::ENOENT,
    Errno::ESRCH,
    Errno::ENODEV,
    Errno::EADDRNOTAVAIL,
];

fn req(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Request { op, source }
}

/// A link as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: Option<u32>,
    /// Whether the link is a veth.
    pub is_veth: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Self {
            index: m.header.index,
            name: String::new(),
            mac: None,
            up: m.header.flags.contains(LinkFlags::Up),
            mtu: None,
            is_veth: false,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::LinkInfo(infos) => {
                    link.is_veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        link
    }
}

/// An IPv4 route as read back from the kernel.
#[derive(Clone, Debug)]
pub struct Route {
    /// Destination (0.0.0.0 for default).
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Scope.
    pub scope: RouteScope,
    /// Table.
    pub table: u32,
    message: RouteMessage,
}

impl Route {
    fn from_message(m: RouteMessage) -> Option<Self> {
        if m.header.address_family != AddressFamily::Inet {
            return None;
        }
        let mut r = Self {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: m.header.destination_prefix_length,
            gateway: None,
            oif: None,
            scope: m.header.scope,
            table: u32::from(m.header.table),
            message: RouteMessage::default(),
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Table(t) => r.table = *t,
                _ => {}
            }
        }
        r.message = m;
        Some(r)
    }
}

/// An IPv4 neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface index.
    pub ifindex: u32,
    /// IP address.
    pub ip: Ipv4Addr,
    /// Link-layer address.
    pub mac: Option<[u8; 6]>,
    /// Whether the entry is PERMANENT.
    pub permanent: bool,
}

/// An IPv4 policy-routing rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Priority.
    pub priority: u32,
    /// `from` prefix.
    pub src: Option<(Ipv4Addr, u8)>,
    /// `to` prefix.
    pub dst: Option<(Ipv4Addr, u8)>,
    /// `lookup` table.
    pub table: u32,
    /// Action.
    pub action: RuleAction,
    message: RuleMessage,
}

impl Rule {
    fn from_message(m: RuleMessage) -> Self {
        let mut r = Self {
            priority: 0,
            src: None,
            dst: None,
            table: u32::from(m.header.table),
            action: m.header.action,
            message: RuleMessage::default(),
        };
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => r.priority = *p,
                RuleAttribute::Source(IpAddr::V4(ip)) => r.src = Some((*ip, m.header.src_len)),
                RuleAttribute::Destination(IpAddr::V4(ip)) => {
                    r.dst = Some((*ip, m.header.dst_len));
                }
                RuleAttribute::Table(t) => r.table = *t,
                _ => {}
            }
        }
        r.message = m;
        r
    }
}

/// What a policy rule to add looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// Priority.
    pub priority: u32,
    /// `from <ip>/32`.
    pub src: Option<Ipv4Addr>,
    /// `to <ip>/32`.
    pub dst: Option<Ipv4Addr>,
    /// `lookup <table>`.
    pub table: u32,
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

    fn open(netns: String) -> Result<Self, NetlinkError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetlinkError::Socket {
                netns: netns.clone(),
                source,
            })?;
        let conn = tokio::spawn(conn);
        Ok(Self {
            handle,
            netns,
            conn,
        })
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(|m| Link::from_message(&m))
            .try_collect()
            .await
            .map_err(req(format!("list links in {}", self.netns)))
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
            .map_err(req(format!("look up link {name} in {}", self.netns)));
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
            .map_err(req(format!("delete link {name} in {}", self.netns)))
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
            .map_err(req(format!(
                "create veth {name} in {} with peer {peer_name} in {}",
                self.netns,
                peer_ns.path().display()
            )))
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req(format!("set link {name} up in {}", self.netns)))
    }

    /// Adds (or replaces) `ip/prefix` on a link.
    pub async fn add_address(
        &self,
        index: u32,
        name: &str,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .replace()
            .execute()
            .await
            .map_err(req(format!(
                "add address {ip}/{prefix} to {name} in {}",
                self.netns
            )))
    }

    /// Deletes `ip/prefix` from a link; `Ok(false)` if it was not there.
    pub async fn del_address(
        &self,
        index: u32,
        name: &str,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<bool, NetlinkError> {
        // The kernel matches a delete on IFA_LOCAL and, with IFA_ADDRESS, on the prefix
        // (`inet_rtm_deladdr`); no dump is needed.
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        match self
            .handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(req(format!(
                "delete address {ip}/{prefix} from {name} in {}",
                self.netns
            ))) {
            Ok(()) => Ok(true),
            Err(e) if e.is(&GONE) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The IPv4 addresses (with prefix lengths) on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(req(format!("list addresses in {}", self.netns)))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .flat_map(|m| {
                m.attributes.iter().filter_map(move |a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds or replaces `dst/prefix dev <oif> scope link` in `table`.
    pub async fn replace_link_route(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        oif: u32,
        table: u32,
    ) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(oif)
            .scope(RouteScope::Link)
            .table_id(table)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(req(format!(
                "add route {dst}/{prefix} dev #{oif} scope link table {table} in {}",
                self.netns
            )))
    }

    /// Adds or replaces `default via <gw> dev <oif> onlink` in the main table.
    pub async fn replace_default_route(&self, gw: Ipv4Addr, oif: u32) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(oif)
            .onlink()
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(req(format!(
                "add default route via {gw} dev #{oif} in {}",
                self.netns
            )))
    }

    /// Every IPv4 route of every table.
    pub async fn routes(&self) -> Result<Vec<Route>, NetlinkError> {
        let msgs: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(req(format!("list routes in {}", self.netns)))?;
        Ok(msgs.into_iter().filter_map(Route::from_message).collect())
    }

    /// Deletes a route read back by [`Netlink::routes`]; `Ok(false)` if already gone.
    pub async fn del_route(&self, route: &Route) -> Result<bool, NetlinkError> {
        match self
            .handle
            .route()
            .del(route.message.clone())
            .execute()
            .await
            .map_err(req(format!(
                "delete route {}/{} table {} in {}",
                route.dst, route.prefix_len, route.table, self.netns
            ))) {
            Ok(()) => Ok(true),
            Err(e) if e.is(&GONE) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds or replaces a PERMANENT neighbour `ip lladdr mac` on a link.
    pub async fn replace_permanent_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!(
                "add neighbour {ip} lladdr {} on #{index} in {}",
                format_mac(&mac),
                self.netns
            )))
    }

    /// Every IPv4 neighbour entry.
    pub async fn neighbours(&self) -> Result<Vec<Neighbour>, NetlinkError> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(req(format!("list neighbours in {}", self.netns)))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
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
        let mut r = self
            .handle
            .rule()
            .add()
            .v4()
            .priority(spec.priority)
            .table_id(spec.table)
            // Without an explicit action the kernel stores an action-less rule (`... none`).
            .action(RuleAction::ToTable);
        if let Some(src) = spec.src {
            r = r.source_prefix(src, 32);
        }
        if let Some(dst) = spec.dst {
            r = r.destination_prefix(dst, 32);
        }
        match r.execute().await.map_err(req(format!(
            "add rule priority {}{}{} lookup {} in {}",
            spec.priority,
            spec.src.map(|s| format!(" from {s}")).unwrap_or_default(),
            spec.dst.map(|d| format!(" to {d}")).unwrap_or_default(),
            spec.table,
            self.netns
        ))) {
            Ok(()) => Ok(true),
            Err(e) if e.is(&[Errno::EEXIST]) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every IPv4 rule.
    pub async fn rules(&self) -> Result<Vec<Rule>, NetlinkError> {
        let msgs: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(req(format!("list rules in {}", self.netns)))?;
        Ok(msgs.into_iter().map(Rule::from_message).collect())
    }

    /// Deletes every IPv4 rule of `priority` whose `from` is `src/32` (when given) and whose
    /// `to` is `dst/32` (when given), in any table; returns how many went. The kernel matches
    /// a delete request on the attributes it carries only (fib_rules `rule_find`), so no dump
    /// is needed; the loop takes duplicates too and ends at ENOENT.
    pub async fn del_rules_matching(
        &self,
        priority: u32,
        src: Option<Ipv4Addr>,
        dst: Option<Ipv4Addr>,
    ) -> Result<usize, NetlinkError> {
        // A node never holds more than a handful of copies of one rule; the bound only keeps
        // a misbehaving kernel from spinning the plugin.
        const MAX_COPIES: usize = 64;
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.attributes.push(RuleAttribute::Priority(priority));
        if let Some(src) = src {
            msg.header.src_len = 32;
            msg.attributes.push(RuleAttribute::Source(IpAddr::V4(src)));
        }
        if let Some(dst) = dst {
            msg.header.dst_len = 32;
            msg.attributes
                .push(RuleAttribute::Destination(IpAddr::V4(dst)));
        }
        let op = || {
            format!(
                "delete rule priority {priority}{}{} in {}",
                src.map(|s| format!(" from {s}")).unwrap_or_default(),
                dst.map(|d| format!(" to {d}")).unwrap_or_default(),
                self.netns
            )
        };
        for deleted in 0..MAX_COPIES {
            match self
                .handle
                .rule()
                .del(msg.clone())
                .execute()
                .await
                .map_err(req(op()))
            {
                Ok(()) => {}
                Err(e) if e.is(&GONE) => return Ok(deleted),
                Err(e) => return Err(e),
            }
        }
        Ok(MAX_COPIES)
    }

    /// Deletes a rule read back by [`Netlink::rules`]; `Ok(false)` if already gone.
    pub async fn del_rule(&self, rule: &Rule) -> Result<bool, NetlinkError> {
        match self
            .handle
            .rule()
            .del(rule.message.clone())
            .execute()
            .await
            .map_err(req(format!(
                "delete rule priority {} lookup {} in {}",
                rule.priority, rule.table, self.netns
            ))) {
            Ok(()) => Ok(true),
            Err(e) if e.is(&GONE) => Ok(false),
            Err(e) => Err(e),
        }
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
