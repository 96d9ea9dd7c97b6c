//! Assignments whose pod is gone although no DEL reached ipamd: the plugin's DEL found ipamd
//! down, starting or dying (it cleans the host and succeeds, as the spec wants), or an ADD
//! failed after ipamd assigned the address and the runtime never sent the DEL. Such an address
//! would stay assigned until the next restart (or forever): a leak.
//!
//! Every pod has a host veth named `<prefix>` + sha1("<namespace>.<name>")[:11] for as long as
//! it lives (the checkpoint restore uses the same test). The sweep releases assignments whose
//! veth is missing, once they are older than [`ORPHAN_GRACE`], and deletes their rules first
//! (so the address is never handed out while a rule still routes it). The grace keeps an ADD in
//! progress safe: ipamd assigns the address before the plugin creates the veth, milliseconds
//! later (the plugin's whole call is bounded by its 2 s connect and 5 s RPC timeouts plus the
//! kernel work). Assignments
//! without pod metadata (written by old reference versions) are never swept, as the restore
//! never drops them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::datastore::{Assignment, Clock};
use crate::host_network::HostNetwork;
use crate::restore::has_veth;
use crate::state::IpamState;

/// How old an assignment without a veth must be before it is released.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// How often the sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The assignments of `assignments` whose pod has no host veth among `links` and that were made
/// at least `grace` before `now`.
pub fn orphans(
    assignments: &[Assignment],
    links: &[String],
    now: SystemTime,
    grace: Duration,
) -> Vec<Assignment> {
    assignments
        .iter()
        .filter(|a| {
            let md = &a.metadata;
            !md.namespace.is_empty()
                && !md.name.is_empty()
                && now
                    .duration_since(a.assigned_at)
                    .is_ok_and(|age| age >= grace)
                && !has_veth(links, &md.namespace, &md.name)
        })
        .cloned()
        .collect()
}

/// One sweep: releases the orphans (rules first, then the address). Returns how many went.
pub async fn sweep(
    state: &IpamState,
    host: &HostNetwork,
    clock: &dyn Clock,
    grace: Duration,
) -> usize {
    let links: Vec<String> = match host.link_names().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the node's links; orphan sweep skipped");
            return 0;
        }
    };
    let found = state
        .with_datastore(|ds| orphans(&ds.assignments(), &links, clock.wall(), grace))
        .await;
    let mut released = 0;
    for a in found {
        let pod = format!("{}/{}", a.metadata.namespace, a.metadata.name);
        if let Err(e) = host.delete_pod_rules(a.ip).await {
            tracing::warn!(key = %a.key, ip = %a.ip, %pod, error = %e, "cannot delete the rules of a pod that is gone; its address stays assigned until the next sweep");
            continue;
        }
        match state.release_if(&a.key, a.ip).await {
            Ok(true) => {
                released += 1;
                tracing::info!(key = %a.key, ip = %a.ip, %pod, age = ?clock.wall().duration_since(a.assigned_at).unwrap_or_default(), "released the address of a pod whose host veth is gone (its DEL never reached ipamd)");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(key = %a.key, ip = %a.ip, error = %e, "cannot release the address of a pod that is gone")
            }
        }
    }
    released
}

/// Sweeps every `every`, forever.
pub async fn sweep_forever(
    state: Arc<IpamState>,
    host: HostNetwork,
    clock: Arc<dyn Clock>,
    every: Duration,
    grace: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        sweep(&state, &host, clock.as_ref(), grace).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::datastore::{IpamKey, PodMetadata};
    use crate::host_network::veth_suffix;

    fn assignment(ip: &str, ns: &str, name: &str, assigned_at: SystemTime) -> Assignment {
        Assignment {
            ip: ip.parse().unwrap(),
            key: IpamKey {
                network_name: "aws-cni".into(),
                container_id: format!("c-{name}"),
                if_name: "eth0".into(),
            },
            metadata: PodMetadata {
                namespace: ns.into(),
                name: name.into(),
                interfaces_count: 1,
            },
            assigned_at,
            eni_id: "eni-a".into(),
            device_number: 0,
        }
    }

    #[test]
    fn only_old_assignments_without_a_veth_are_orphans() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let old = now - Duration::from_secs(120);
        let young = now - Duration::from_secs(2);
        let list = vec![
            assignment("10.0.0.11", "default", "live", old),
            assignment("10.0.0.12", "default", "gone", old),
            assignment("10.0.0.13", "default", "adding", young),
            assignment("10.0.0.14", "", "", old),
        ];
        let links = vec![
            "eth0".to_owned(),
            format!("eni{}", veth_suffix("default", "live")),
        ];
        let found = orphans(&list, &links, now, ORPHAN_GRACE);
        let ips: Vec<String> = found.iter().map(|a| a.ip.to_string()).collect();
        assert_eq!(ips, vec!["10.0.0.12"]);
        // An assignment "from the future" (a clock step back) is not old.
        let future = assignment("10.0.0.15", "default", "f", now + Duration::from_secs(9));
        assert!(orphans(&[future], &links, now, ORPHAN_GRACE).is_empty());
    }
}
