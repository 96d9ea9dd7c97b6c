//! CHECK (the reference's egress-cni has none; its conflist sets `disableCheck`): the IPAM
//! plugin's CHECK is passed on, then `v4if0` must exist in the pod with an IPv4 address, the
//! SNAT chain must SNAT to `nodeIP`, and POSTROUTING must send that address to the chain. Each
//! difference is listed (code 100).

use super::config::{EgressConf, Mode};
use super::error::EgressError;
use super::link::Links;
use super::snat::Iptables;
use super::{Request, V4_IFNAME, netlink_error, netns_error};
use crate::cni::error::CniError;
use crate::netns::Netns;

pub(super) async fn check(req: &Request<'_>) -> Result<(), EgressError> {
    let conf = req.conf;
    let node_ip = match conf.mode()? {
        Mode::Disabled => return Ok(()),
        Mode::V6Unsupported { node_ip } => return Err(EgressConf::v6_unsupported(&node_ip)),
        Mode::V4 { node_ip } => node_ip,
    };
    if conf.prev_result.is_none() {
        return Err(CniError::InvalidConfig {
            key: "prevResult",
            reason: "missing; CHECK compares the attachment with the cached ADD result".into(),
        }
        .into());
    }
    req.ipam()?.check(req.stdin).await?;

    let (chain, _) = req.snat_names()?;
    let path = req.attachment.netns.as_deref().unwrap_or_default();
    let ns = Netns::open(path).map_err(|e| netns_error(e, path))?;
    let pod = Links::in_netns(&ns).map_err(|e| netlink_error(e, path))?;
    let mut differences = Vec::new();

    let mut address = None;
    match pod
        .nl
        .link_by_name(V4_IFNAME)
        .await
        .map_err(|e| netlink_error(e, path))?
    {
        None => differences.push(format!("{V4_IFNAME} does not exist in {path}")),
        Some(link) => {
            let addrs = pod
                .ipv4_addresses(link.index)
                .await
                .map_err(|e| netlink_error(e, path))?;
            match addrs.first() {
                Some(a) => address = Some(a.addr()),
                None => differences.push(format!("{V4_IFNAME} in {path} has no IPv4 address")),
            }
        }
    }

    match Iptables::default().chain_state(&chain).await {
        Err(e) => differences.push(format!("cannot read the nat table: {e}")),
        Ok(state) if !state.exists => {
            differences.push(format!("SNAT chain {chain} does not exist"))
        }
        Ok(state) => {
            let targets = state.snat_targets();
            if !targets.iter().any(|t| *t == node_ip.to_string()) {
                differences.push(format!(
                    "chain {chain} does not SNAT to nodeIP {node_ip} (it SNATs to {targets:?})"
                ));
            }
            if let Some(a) = address {
                let source = format!("{a}/32");
                if !state.jump_sources().contains(&source) {
                    differences.push(format!("no nat rule sends {source} to chain {chain}"));
                }
            }
        }
    }

    if differences.is_empty() {
        Ok(())
    } else {
        Err(CniError::CheckDataPlane { differences }.into())
    }
}
