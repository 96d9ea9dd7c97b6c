//! DEL: remove the SNAT jump and chain, `v4if0` (its host peer and routes go with it) if the
//! pod's namespace still exists, and release the address with IPAM DEL. Nothing found is
//! success, so a repeated DEL, a DEL without the namespace and a DEL after a failed ADD all
//! succeed; every step is tried and every failure reported (code 130).

use std::net::IpAddr;

use tracing::{debug, info};

use super::add::delete_v4if0;
use super::error::EgressError;
use super::snat::Iptables;
use super::{Request, V4_IFNAME};
use crate::cni::error::CniError;
use crate::netlink::Netlink;
use crate::netns::{Netns, NetnsError};

pub(super) async fn del(req: &Request<'_>) -> Result<(), EgressError> {
    let conf = req.conf;
    if !conf.enabled {
        debug!("egress-cni is disabled; nothing to delete");
        return Ok(());
    }
    if let Some(IpAddr::V6(ip)) = conf.node_ip {
        // ADD refuses the IPv6-egress mode before allocating anything.
        info!(node_ip = %ip, "IPv6 egress is not built; nothing to delete");
        return Ok(());
    }
    let (chain, _) = req.snat_names()?;
    let mut failures: Vec<String> = Vec::new();

    // The jump first: no packet is SNATed through a chain being emptied.
    match Iptables::default().delete(&chain).await {
        Ok(found) => debug!(%chain, found, "SNAT removed"),
        Err(e) => failures.push(format!("SNAT chain {chain}: {e}")),
    }

    if let Some(path) = req.attachment.netns.as_deref() {
        match Netns::open(path) {
            Ok(ns) => match Netlink::in_netns(&ns) {
                Ok(nl) => match delete_v4if0(&nl).await {
                    Ok(found) => debug!(found, "{V4_IFNAME} removed"),
                    Err(e) => failures.push(e.to_string()),
                },
                Err(e) => failures.push(e.to_string()),
            },
            // The runtime already removed the namespace, and the veth pair with it.
            Err(NetnsError::NotFound { .. }) => debug!(netns = path, "namespace is gone"),
            Err(e) => failures.push(e.to_string()),
        }
    }

    // Last: the address is free for another pod only once nothing refers to it.
    match req.ipam() {
        Ok(ipam) => {
            if let Err(e) = ipam.del(req.stdin).await {
                failures.push(e.to_string());
            }
        }
        Err(e) => failures.push(e.to_string()),
    }

    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::Teardown { errors: failures }.into())
    }
}
