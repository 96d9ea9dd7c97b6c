//! The rtnetlink requests egress-cni needs beyond the plugin's [`Netlink`] connection: an
//! address with a scope and without its prefix route, routes with a gateway, a preferred source
//! and a scope (added exclusively, so an existing route is reported, not replaced), and the
//! IPv4 addresses of a link. Each [`Links`] pairs the crate's [`Netlink`] (veth, link lookup,
//! up, delete) with a raw handle opened in the same namespace for these.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use nix::errno::Errno;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::warn;
use vpc_cni_contract::netlink as core;

use crate::netlink::{Netlink, NetlinkError};
use crate::netns::Netns;

/// Attempts of the host route when the kernel says it exists (the reference's
/// `addRouteWithRetry`: a dying pod's veth may still hold the route to a recycled address).
pub const ROUTE_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
pub const ROUTE_RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// A route to add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination.
    pub dst: Ipv4Net,
    /// Output interface.
    pub oif: u32,
    /// Gateway, if any.
    pub gw: Option<Ipv4Addr>,
    /// Preferred source, if any.
    pub src: Option<Ipv4Addr>,
    /// `scope link` (else universe).
    pub link_scope: bool,
}

impl std::fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gw {
            write!(f, " via {gw}")?;
        }
        write!(f, " dev #{}", self.oif)?;
        if self.link_scope {
            f.write_str(" scope link")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        Ok(())
    }
}

/// The plugin's netlink connection in one namespace plus a raw handle for the requests above.
#[derive(Debug)]
pub struct Links {
    /// The crate's connection.
    pub nl: Netlink,
    raw: Handle,
    conn: tokio::task::JoinHandle<()>,
    netns: String,
}

impl Drop for Links {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Links {
    /// Connections in the calling thread's namespace (the host's).
    pub fn current() -> Result<Self, NetlinkError> {
        let nl = Netlink::current()?;
        Self::with(nl, "host network namespace".into())
    }

    /// Connections in `netns` (sockets are created inside it, then the thread returns).
    pub fn in_netns(netns: &Netns) -> Result<Self, NetlinkError> {
        let nl = Netlink::in_netns(netns)?;
        let _guard = netns.enter()?;
        Self::with(nl, netns.path().display().to_string())
    }

    fn with(nl: Netlink, netns: String) -> Result<Self, NetlinkError> {
        let (raw, conn) = core::open().map_err(|source| NetlinkError::Socket {
            netns: netns.clone(),
            source,
        })?;
        Ok(Self {
            nl,
            raw,
            conn,
            netns,
        })
    }

    fn failed(&self, op: String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError + '_ {
        move |source| NetlinkError::Request {
            op: format!("{op} in {}", self.netns),
            source,
        }
    }

    /// Adds `ip/prefix` to a link with `scope`; `noprefixroute` keeps the kernel from adding the
    /// subnet route (the caller routes the subnet itself).
    pub async fn add_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
        link_scope: bool,
        noprefixroute: bool,
    ) -> Result<(), NetlinkError> {
        let mut req = self.raw.address().add(index, IpAddr::V4(ip), prefix);
        let msg = req.message_mut();
        if link_scope {
            msg.header.scope = AddressScope::Link;
        }
        if noprefixroute {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        }
        req.execute().await.map_err(self.failed(format!(
            "add address {ip}/{prefix}{} to #{index}",
            if link_scope { " scope link" } else { "" }
        )))
    }

    /// The IPv4 addresses (with prefix lengths) of a link.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Net>, NetlinkError> {
        let msgs: Vec<AddressMessage> = self
            .raw
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(self.failed(format!("list addresses of #{index}")))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet && m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => {
                        Ipv4Net::new(*ip, m.header.prefix_len).ok()
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds a route (exclusively: an existing one is `EEXIST`).
    pub async fn add_route(&self, route: &RouteSpec) -> Result<(), NetlinkError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.network(), route.dst.prefix_len())
            .output_interface(route.oif)
            // What `netlink.RouteAdd` leaves it at in the reference (`ip route` shows no proto).
            .protocol(RouteProtocol::Boot);
        if let Some(gw) = route.gw {
            b = b.gateway(gw);
        }
        if let Some(src) = route.src {
            b = b.pref_source(src);
        }
        if route.link_scope {
            b = b.scope(RouteScope::Link);
        }
        self.raw
            .route()
            .add(b.build())
            .execute()
            .await
            .map_err(self.failed(format!("add route {route}")))
    }

    /// [`Links::add_route`], retried while the kernel says the route exists.
    pub async fn add_route_with_retry(&self, route: &RouteSpec) -> Result<(), NetlinkError> {
        let mut attempt = 1;
        loop {
            match self.add_route(route).await {
                Err(e) if e.errno() == Some(Errno::EEXIST) && attempt < ROUTE_ATTEMPTS => {
                    warn!(%route, attempt, "route already exists (a dying pod's?); retrying");
                    tokio::time::sleep(ROUTE_RETRY_INTERVAL).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}
