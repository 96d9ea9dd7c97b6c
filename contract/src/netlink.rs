//! The rtnetlink core of the plugin and ipamd: errno outcomes, dumps read into plain structs,
//! and the link, route, rule and address requests both sides make. Each side keeps its own
//! connection type and error wording on top (the plugin opens a socket per network namespace,
//! ipamd one in the node's) and its own operations (the plugin's veth and neighbour setup,
//! ipamd's ENI bring-up and policy reconcile).
//!
//! Outcomes follow the errno (never the message text): on teardown ENOENT, ESRCH, ENODEV and
//! EADDRNOTAVAIL mean "already gone" and count as done (`Ok(false)`); adding a rule that exists
//! (EEXIST) is `Ok(false)` too.
//!
//! Both address families go through the same requests: addresses are [`IpAddr`] and prefixes
//! [`IpNet`], and a dump names the [`Family`] it reads (an IPv4 pod's requests are the bytes
//! they were before IPv6 existed here).

use std::fmt;
use std::io;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use nix::errno::Errno;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

/// An address family of the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The prefix length of one address: 32 or 128.
    pub fn host_prefix_len(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// The rtnetlink address family.
    pub fn address_family(self) -> AddressFamily {
        match self {
            Self::V4 => AddressFamily::Inet,
            Self::V6 => AddressFamily::Inet6,
        }
    }

    fn ip_version(self) -> IpVersion {
        match self {
            Self::V4 => IpVersion::V4,
            Self::V6 => IpVersion::V6,
        }
    }
}

impl fmt::Display for Family {
    /// `IPv4` or `IPv6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// Errnos meaning "the object is already gone" on teardown.
pub const GONE: [Errno; 4] = [
    Errno::ENOENT,
    Errno::ESRCH,
    Errno::ENODEV,
    Errno::EADDRNOTAVAIL,
];

/// Opens an rtnetlink socket in the calling thread's network namespace (a netlink socket stays
/// in the namespace it was created in, whichever thread uses it later) and spawns its
/// connection task on the current tokio runtime. Aborting the task closes the socket.
///
/// # Errors
/// The socket could not be opened.
pub fn open() -> io::Result<(Handle, tokio::task::JoinHandle<()>)> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    Ok((handle, tokio::spawn(conn)))
}

/// The kernel's errno, when the kernel refused a request.
pub fn errno(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

/// Whether the kernel said the object is already gone ([`GONE`]).
pub fn is_gone(err: &rtnetlink::Error) -> bool {
    errno(err).is_some_and(|e| GONE.contains(&e))
}

/// The kernel's answer as the OS error it stands for ("File exists (os error 17)"), anything
/// else as rtnetlink words it.
pub fn describe(err: &rtnetlink::Error) -> String {
    match err {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

/// `Ok(true)` when the request was done, `Ok(false)` when the kernel answered with one of
/// `tolerated`.
fn tolerating(
    res: Result<(), rtnetlink::Error>,
    tolerated: &[Errno],
) -> Result<bool, rtnetlink::Error> {
    match res {
        Ok(()) => Ok(true),
        Err(e) if errno(&e).is_some_and(|n| tolerated.contains(&n)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A link as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address, when it has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: Option<u32>,
    /// Whether the link is a veth.
    pub is_veth: bool,
}

impl Link {
    /// Reads what this struct keeps from a link message.
    pub fn from_message(m: &LinkMessage) -> Self {
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
                LinkAttribute::IfName(n) => link.name.clone_from(n),
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

/// Every link. The kernel is asked to leave out the statistics (RTEXT_FILTER_SKIP_STATS) and
/// each message is reduced to a [`Link`] as it arrives: with hundreds of pod veths on a node,
/// the full messages are kilobytes each.
///
/// # Errors
/// The dump failed.
pub async fn links(handle: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    handle
        .link()
        .get()
        .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
        .execute()
        .map_ok(|m| Link::from_message(&m))
        .try_collect()
        .await
}

/// An IPv4 or IPv6 route as read back from the kernel.
#[derive(Clone, Debug)]
pub struct Route {
    /// Destination (`None`: the default route).
    pub dst: Option<IpAddr>,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Scope.
    pub scope: RouteScope,
    /// Who added it (`kernel` for the subnet route of an address).
    pub protocol: RouteProtocol,
    /// Table.
    pub table: u32,
    message: RouteMessage,
}

impl Route {
    /// Reads an IPv4 or IPv6 route message; `None` for another family.
    pub fn from_message(m: RouteMessage) -> Option<Self> {
        if !matches!(
            m.header.address_family,
            AddressFamily::Inet | AddressFamily::Inet6
        ) {
            return None;
        }
        let mut r = Self {
            dst: None,
            prefix_len: m.header.destination_prefix_length,
            gateway: None,
            oif: None,
            scope: m.header.scope,
            protocol: m.header.protocol,
            table: u32::from(m.header.table),
            message: RouteMessage::default(),
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(a) => r.dst = route_address(a),
                RouteAttribute::Gateway(a) => r.gateway = route_address(a),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                // Tables above 255 only fit the attribute; it wins over the header's byte.
                RouteAttribute::Table(t) => r.table = *t,
                _ => {}
            }
        }
        r.message = m;
        Some(r)
    }

    /// Its family.
    pub fn family(&self) -> Family {
        if self.message.header.address_family == AddressFamily::Inet6 {
            Family::V6
        } else {
            Family::V4
        }
    }

    /// The destination as `ip route` shows it: `default` or `<ip>/<len>`.
    pub fn destination(&self) -> String {
        self.dst.map_or_else(
            || "default".to_owned(),
            |d| format!("{d}/{}", self.prefix_len),
        )
    }
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// A route request of `family` (the defaults of rtnetlink's typed builders: main table,
/// protocol static, scope universe, unicast).
fn route_message(family: Family) -> RouteMessageBuilder<IpAddr> {
    let mut b = RouteMessageBuilder::<IpAddr>::new();
    b.get_mut().header.address_family = family.address_family();
    b
}

/// A route the builder refused (a prefix longer than the family's): a caller's bug, reported
/// as rtnetlink reports a bad attribute.
fn invalid_route(e: impl fmt::Display) -> rtnetlink::Error {
    rtnetlink::Error::InvalidNla(e.to_string())
}

/// Every route of `family`, of every table.
///
/// # Errors
/// The dump failed.
pub async fn routes(handle: &Handle, family: Family) -> Result<Vec<Route>, rtnetlink::Error> {
    let msgs: Vec<_> = handle
        .route()
        .get(route_message(family).build())
        .execute()
        .try_collect()
        .await?;
    Ok(msgs.into_iter().filter_map(Route::from_message).collect())
}

/// Adds or replaces `dst/prefix dev <oif> scope link` in `table` (the kernel keeps no scope
/// for IPv6 routes: it reads them back as `universe`).
///
/// # Errors
/// The kernel refused it.
pub async fn replace_link_route(
    handle: &Handle,
    dst: impl Into<IpAddr>,
    prefix: u8,
    oif: u32,
    table: u32,
) -> Result<(), rtnetlink::Error> {
    let dst = dst.into();
    let msg = route_message(Family::of(dst))
        .destination_prefix(dst, prefix)
        .map_err(invalid_route)?
        .output_interface(oif)
        .scope(RouteScope::Link)
        .table_id(table)
        .build();
    handle.route().add(msg).replace().execute().await
}

/// Adds or replaces `default via <gw> dev <oif>` in `table` (of `gw`'s family), `onlink` when
/// the gateway is on no subnet of the link (the pod's 169.254.1.1; an IPv6 link-local gateway
/// such as the pod's fe80::1 needs no flag).
///
/// # Errors
/// The kernel refused it.
pub async fn replace_default_route(
    handle: &Handle,
    gw: impl Into<IpAddr>,
    oif: u32,
    table: u32,
    onlink: bool,
) -> Result<(), rtnetlink::Error> {
    let gw = gw.into();
    let mut msg = route_message(Family::of(gw))
        .gateway(gw)
        .map_err(invalid_route)?
        .output_interface(oif)
        .table_id(table);
    if onlink {
        msg = msg.onlink();
    }
    handle.route().add(msg.build()).replace().execute().await
}

/// Deletes a route read back by [`routes`]; `Ok(false)` if it was already gone.
///
/// # Errors
/// The kernel refused it for another reason.
pub async fn del_route(handle: &Handle, route: &Route) -> Result<bool, rtnetlink::Error> {
    tolerating(
        handle.route().del(route.message.clone()).execute().await,
        &GONE,
    )
}

/// An IPv4 or IPv6 policy-routing rule as read back from the kernel.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Priority (0 when the kernel reports none).
    pub priority: u32,
    /// `from` prefix.
    pub src: Option<(IpAddr, u8)>,
    /// `to` prefix.
    pub dst: Option<(IpAddr, u8)>,
    /// `lookup` table.
    pub table: u32,
    /// Action.
    pub action: RuleAction,
    message: RuleMessage,
}

impl Rule {
    /// Reads a rule message.
    pub fn from_message(m: RuleMessage) -> Self {
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
                RuleAttribute::Source(ip) => r.src = Some((*ip, m.header.src_len)),
                RuleAttribute::Destination(ip) => r.dst = Some((*ip, m.header.dst_len)),
                // Tables above 255 only fit the attribute; it wins over the header's byte.
                RuleAttribute::Table(t) => r.table = *t,
                _ => {}
            }
        }
        r.message = m;
        r
    }

    /// The message as the kernel sent it, for what this struct does not read (fwmark,
    /// interfaces, flags).
    pub fn message(&self) -> &RuleMessage {
        &self.message
    }
}

/// Every rule of `family`.
///
/// # Errors
/// The dump failed.
pub async fn rules(handle: &Handle, family: Family) -> Result<Vec<Rule>, rtnetlink::Error> {
    let msgs: Vec<RuleMessage> = handle
        .rule()
        .get(family.ip_version())
        .execute()
        .try_collect()
        .await?;
    Ok(msgs.into_iter().map(Rule::from_message).collect())
}

/// A rule to add, with action `lookup <table>`, in the family of its prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// Priority.
    pub priority: u32,
    /// `from <prefix>`.
    pub src: Option<IpNet>,
    /// `to <prefix>`.
    pub dst: Option<IpNet>,
    /// `fwmark <value>/<mask>`.
    pub fwmark: Option<(u32, u32)>,
    /// `lookup <table>`.
    pub table: u32,
}

impl RuleSpec {
    /// The family of its prefixes; IPv4 when it has none (a `fwmark` rule).
    pub fn family(&self) -> Family {
        self.src
            .or(self.dst)
            .map_or(Family::V4, |n| Family::of(n.addr()))
    }
}

/// A prefix as `ip rule` shows it: a /32 (or /128) as the bare address.
fn prefix(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

impl fmt::Display for RuleSpec {
    /// `priority 512 to 10.0.0.5 lookup 254` (for messages).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "priority {}", self.priority)?;
        if let Some(s) = &self.src {
            write!(f, " from {}", prefix(s))?;
        }
        if let Some(d) = &self.dst {
            write!(f, " to {}", prefix(d))?;
        }
        if let Some((mark, mask)) = self.fwmark {
            write!(f, " fwmark {mark:#x}/{mask:#x}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

/// Adds a rule; `Ok(false)` if an identical rule already exists (EEXIST).
///
/// # Errors
/// The kernel refused it for another reason.
pub async fn add_rule(handle: &Handle, spec: &RuleSpec) -> Result<bool, rtnetlink::Error> {
    let mut req = handle
        .rule()
        .add()
        .priority(spec.priority)
        .table_id(spec.table)
        // Without an explicit action the kernel stores an action-less rule (`... none`).
        .action(RuleAction::ToTable);
    // The attributes in the order rtnetlink's typed `v4()`/`v6()` requests push them.
    let msg = req.message_mut();
    msg.header.family = spec.family().address_family();
    if let Some(src) = spec.src {
        msg.header.src_len = src.prefix_len();
        msg.attributes.push(RuleAttribute::Source(src.network()));
    }
    if let Some(dst) = spec.dst {
        msg.header.dst_len = dst.prefix_len();
        msg.attributes
            .push(RuleAttribute::Destination(dst.network()));
    }
    if let Some((mark, mask)) = spec.fwmark {
        msg.attributes.push(RuleAttribute::FwMark(mark));
        msg.attributes.push(RuleAttribute::FwMask(mask));
    }
    tolerating(req.execute().await, &[Errno::EEXIST])
}

/// Deletes a rule read back by [`rules`]; `Ok(false)` if it was already gone.
///
/// # Errors
/// The kernel refused it for another reason.
pub async fn del_rule(handle: &Handle, rule: &Rule) -> Result<bool, rtnetlink::Error> {
    tolerating(
        handle.rule().del(rule.message.clone()).execute().await,
        &GONE,
    )
}

/// Which rules to delete by value: those of `priority` whose `from` is `src/32` (`/128`) when
/// given and whose `to` is `dst/32` (`/128`) when given, in any table. `src` and `dst` are of
/// one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSelector {
    /// Priority.
    pub priority: u32,
    /// `from <ip>/32` (`/128`).
    pub src: Option<IpAddr>,
    /// `to <ip>/32` (`/128`).
    pub dst: Option<IpAddr>,
}

impl RuleSelector {
    /// The family of its addresses; IPv4 when it has none.
    pub fn family(&self) -> Family {
        self.src.or(self.dst).map_or(Family::V4, Family::of)
    }
}

impl fmt::Display for RuleSelector {
    /// `priority 1536 from 10.0.0.5` (for messages).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "priority {}", self.priority)?;
        if let Some(s) = self.src {
            write!(f, " from {s}")?;
        }
        if let Some(d) = self.dst {
            write!(f, " to {d}")?;
        }
        Ok(())
    }
}

/// Deletes every rule `selector` matches, in any table; returns how many went. The kernel
/// matches a delete request on the attributes it carries only (fib_rules `rule_find`), so no
/// dump is needed (a dump grows with the pods on the node, two rules each); the loop takes
/// duplicates too and ends at "already gone".
///
/// # Errors
/// The kernel refused a deletion for another reason.
pub async fn del_rules_matching(
    handle: &Handle,
    selector: &RuleSelector,
) -> Result<usize, rtnetlink::Error> {
    // A node never holds more than a handful of copies of one rule; the bound only keeps a
    // misbehaving kernel from spinning the caller.
    const MAX_COPIES: usize = 64;
    let family = selector.family();
    let mut msg = RuleMessage::default();
    msg.header.family = family.address_family();
    msg.attributes
        .push(RuleAttribute::Priority(selector.priority));
    if let Some(src) = selector.src {
        msg.header.src_len = family.host_prefix_len();
        msg.attributes.push(RuleAttribute::Source(src));
    }
    if let Some(dst) = selector.dst {
        msg.header.dst_len = family.host_prefix_len();
        msg.attributes.push(RuleAttribute::Destination(dst));
    }
    for deleted in 0..MAX_COPIES {
        if !tolerating(handle.rule().del(msg.clone()).execute().await, &GONE)? {
            return Ok(deleted);
        }
    }
    Ok(MAX_COPIES)
}

/// The address messages of the link `index`: of `family`, or of every family (one dump).
///
/// # Errors
/// The dump failed.
pub async fn addresses(
    handle: &Handle,
    index: u32,
    family: Option<Family>,
) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
    let msgs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    Ok(msgs
        .into_iter()
        .filter(|m| {
            m.header.index == index
                && family.map_or(
                    matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6),
                    |f| m.header.family == f.address_family(),
                )
        })
        .collect())
}

/// The address an address message carries (its first `IFA_ADDRESS` or `IFA_LOCAL`: the same
/// address unless the link is point-to-point, which no link here is; the kernel sends IPv6
/// addresses as `IFA_ADDRESS` only).
pub fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

/// An address message's `IFA_F_*` flags: the 32-bit `IFA_FLAGS` attribute when the kernel sent
/// one, else the header's byte.
pub fn address_flags(msg: &AddressMessage) -> AddressFlags {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits())))
}

/// Deletes an address; `Ok(false)` if it was already gone. The kernel matches a delete on
/// `IFA_LOCAL` and, with `IFA_ADDRESS`, on the prefix (`inet_rtm_deladdr`), so a message built
/// from the address alone works as well as one read back.
///
/// # Errors
/// The kernel refused it for another reason.
pub async fn del_address(handle: &Handle, msg: AddressMessage) -> Result<bool, rtnetlink::Error> {
    tolerating(handle.address().del(msg).execute().await, &GONE)
}
