//! Which assignments still belong to live pods. Every pod has a host veth named
//! `<prefix> + sha1("<namespace>.<name>")[:11]` for as long as it lives (the plugin names it so,
//! whatever the prefix): an assignment whose pod has no such link is the address of a pod that is gone.
//!
//! - **At start-up** ([`restore_allocations`]): the checkpoint's allocations go back into the
//!   datastore when their veth is still there, or when they are younger than [`ORPHAN_GRACE`]
//!   (their ADD may still be creating the veth; the sweep releases them later if it never
//!   comes). The others belong to pods deleted while ipamd was down: the caller removes their
//!   policy rules. Allocations of addresses on no known ENI are dropped and logged.
//! - **While running** ([`sweep`], every [`SWEEP_INTERVAL`]): assignments whose pod is gone
//!   although no DEL reached ipamd (the plugin's DEL found ipamd down, starting or dying; it
//!   cleans the host and succeeds, as the spec wants), or whose ADD failed after ipamd assigned
//!   the address and the runtime never sent the DEL. Such an address would stay assigned until
//!   the next restart (or forever): a leak. The sweep releases assignments whose veth is missing
//!   once they are older than [`ORPHAN_GRACE`], deleting their rules first (so the address is
//!   never handed out while a rule still routes it). The grace keeps an ADD in progress safe:
//!   ipamd assigns the address before the plugin creates the veth, milliseconds later (the
//!   plugin's whole call is bounded by its 2 s connect and 5 s RPC timeouts plus the kernel
//!   work).
//!
//! Assignments without pod metadata (written by old reference versions) are never judged: the
//! restore keeps them, as the reference does, and the sweep leaves them alone.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::checkpoint::{CheckpointData, CheckpointEntry};
use crate::datastore::v6::V6Error;
use crate::datastore::{Assignment, Clock, Datastore, DatastoreError};
use vpc_cni_contract::dataplane::veth_suffix;

use crate::node_network::host::HostNetwork;
use crate::state::IpamState;

/// How old an assignment without a veth must be before it is released (and the age under
/// which the restore keeps an allocation without one).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// How often the sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The outcome of a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Allocations back in the datastore.
    pub restored: Vec<Assignment>,
    /// Allocations whose host veth is gone (their rules must be deleted).
    pub stale: Vec<(CheckpointEntry, IpAddr)>,
    /// Allocations of addresses that are on no known ENI.
    pub unknown_ip: Vec<CheckpointEntry>,
    /// Allocations that cannot be used, with the reason.
    pub invalid: Vec<(CheckpointEntry, String)>,
}

/// Whether some link name ends with the pod's veth suffix.
pub fn has_veth(link_names: &[String], namespace: &str, name: &str) -> bool {
    let suffix = veth_suffix(namespace, name);
    link_names.iter().any(|l| l.ends_with(&suffix))
}

/// Puts the live allocations of `data` into `ds`. Allocations without pod metadata (written by
/// old reference versions) skip the veth check, as the reference does.
pub fn restore_allocations(
    ds: &mut Datastore,
    data: &CheckpointData,
    link_names: &[String],
) -> RestoreReport {
    let mut report = RestoreReport::default();
    let now = std::time::SystemTime::now();
    for entry in &data.allocations {
        let ip = match entry_address(entry, ds.ipv6_mode()) {
            Ok(ip) => ip,
            Err(why) => {
                tracing::warn!(key = %entry.key(), reason = %why, "checkpoint allocation dropped");
                report.invalid.push((entry.clone(), why));
                continue;
            }
        };
        let md = &entry.metadata;
        // An allocation younger than the orphan grace may belong to an ADD whose plugin is
        // still between ipamd's answer and creating the veth (ipamd restarted in between):
        // dropping it would hand the address to a second pod. It is kept; the orphan sweep
        // releases it later if its veth never appears.
        let young = now
            .duration_since(entry.allocated_at())
            .is_ok_and(|age| age < ORPHAN_GRACE)
            || entry.allocated_at() > now;
        if !md.pod_namespace.is_empty()
            && !md.pod_name.is_empty()
            && !young
            && !has_veth(link_names, &md.pod_namespace, &md.pod_name)
        {
            tracing::info!(
                key = %entry.key(), %ip, pod = %format!("{}/{}", md.pod_namespace, md.pod_name),
                "pod's host veth is gone (deleted while ipamd was down); releasing its IP"
            );
            report.stale.push((entry.clone(), ip));
            continue;
        }
        // Err(None): the address is on no known ENI (or outside the /80); Err(Some): unusable.
        let restored = match ip {
            IpAddr::V4(v4) => ds
                .restore(&entry.key(), entry.pod_metadata(), v4, entry.allocated_at())
                .map_err(|e| match e {
                    DatastoreError::UnknownIp { .. } => None,
                    other => Some(other.to_string()),
                }),
            IpAddr::V6(v6) => ds
                .restore_v6(&entry.key(), entry.pod_metadata(), v6, entry.allocated_at())
                .map_err(|e| match e {
                    V6Error::OutsidePrefix { .. } => None,
                    other => Some(other.to_string()),
                }),
        };
        match restored {
            Ok(a) => {
                tracing::info!(key = %a.key, ip = %a.ip, eni = %a.eni_id, "restored allocation");
                report.restored.push(a);
            }
            Err(None) => {
                tracing::warn!(key = %entry.key(), %ip, "checkpoint allocation uses an IP on no known ENI; presuming it stale and dropping it");
                report.unknown_ip.push(entry.clone());
            }
            Err(Some(e)) => {
                tracing::warn!(key = %entry.key(), %ip, error = %e, "checkpoint allocation dropped");
                report.invalid.push((entry.clone(), e));
            }
        }
    }
    report
}

/// The address of a checkpoint entry in this ipamd's family (IPv6 mode or not), or why it cannot
/// be used.
fn entry_address(entry: &CheckpointEntry, ipv6_mode: bool) -> Result<IpAddr, String> {
    match (&entry.ipv4, &entry.ipv6, ipv6_mode) {
        (Some(_), _, false) => entry
            .ipv4_addr()
            .map(IpAddr::V4)
            .ok_or_else(|| format!("ipv4 {:?} is not an IPv4 address", entry.ipv4)),
        (None, Some(v6), false) => Err(format!(
            "IPv6 allocation {v6} ignored: this ipamd runs in IPv4 mode"
        )),
        (_, Some(_), true) => entry
            .ipv6_addr()
            .map(IpAddr::V6)
            .ok_or_else(|| format!("ipv6 {:?} is not an IPv6 address", entry.ipv6)),
        (Some(v4), None, true) => Err(format!(
            "IPv4 allocation {v4} ignored: this ipamd runs in IPv6 mode"
        )),
        (None, None, _) => Err("no address".to_owned()),
    }
}

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

    use super::*;
    use crate::checkpoint::decode;
    use crate::datastore::{IpamKey, PodMetadata};
    use crate::testing::pools::{datastore, key};

    fn store() -> Datastore {
        datastore(
            Duration::from_secs(30),
            &[(
                "eni-a",
                0,
                "10.0.0.10",
                &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
            )],
        )
    }

    #[test]
    fn keeps_live_pods_drops_the_rest() {
        let data = decode(
            std::path::Path::new("ipam.json"),
            br#"{"version":"vpc-cni-ipam/1","allocations":[
              {"networkName":"aws-cni","containerID":"live","ifName":"eth0","ipv4":"10.0.0.11","allocationTimestamp":5,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-0","interfacesCount":1}},
              {"networkName":"aws-cni","containerID":"dead","ifName":"eth0","ipv4":"10.0.0.12","allocationTimestamp":6,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-1","interfacesCount":1}},
              {"networkName":"aws-cni","containerID":"old","ifName":"eth0","ipv4":"10.0.0.13","allocationTimestamp":7,"metadata":{}},
              {"networkName":"aws-cni","containerID":"elsewhere","ifName":"eth0","ipv4":"10.0.9.9","allocationTimestamp":8,"metadata":{}},
              {"networkName":"aws-cni","containerID":"v6","ifName":"eth0","ipv6":"2600::1","allocationTimestamp":9,"metadata":{}}
            ]}"#,
        )
        .unwrap();
        // A calico-style prefix still matches: only the suffix counts.
        let links = vec![
            "lo".to_owned(),
            "eth0".to_owned(),
            format!("cali{}", veth_suffix("default", "web-0")),
        ];
        let mut ds = store();
        let r = restore_allocations(&mut ds, &data, &links);
        let restored: Vec<_> = r
            .restored
            .iter()
            .map(|a| a.key.container_id.as_str())
            .collect();
        assert_eq!(restored, vec!["live", "old"]);
        assert_eq!(r.stale.len(), 1);
        assert_eq!(r.stale[0].1.to_string(), "10.0.0.12");
        assert_eq!(r.unknown_ip.len(), 1);
        assert_eq!(r.invalid.len(), 1);
        assert!(r.invalid[0].1.contains("IPv6"));
        let s = ds.stats();
        assert_eq!((s.assigned, s.assignable), (2, 1));
        let (next, _) = ds
            .assign(&key("new"), crate::datastore::PodMetadata::default())
            .unwrap();
        assert_eq!(
            next.ip.to_string(),
            "10.0.0.12",
            "the stale pod's IP is free again"
        );
    }

    #[test]
    fn young_allocations_without_a_veth_are_kept_for_the_sweep() {
        let now = crate::checkpoint::unix_nanos(std::time::SystemTime::now());
        let text = format!(
            r#"{{"version":"vpc-cni-ipam/1","allocations":[
              {{"networkName":"aws-cni","containerID":"adding","ifName":"eth0","ipv4":"10.0.0.11","allocationTimestamp":{now},"metadata":{{"k8sPodNamespace":"default","k8sPodName":"web-0","interfacesCount":1}}}}
            ]}}"#
        );
        let data = decode(std::path::Path::new("ipam.json"), text.as_bytes()).unwrap();
        let mut ds = store();
        let r = restore_allocations(&mut ds, &data, &["eth0".to_owned()]);
        assert_eq!(r.restored.len(), 1, "{r:?}");
        assert!(r.stale.is_empty());
    }

    #[test]
    fn duplicate_ip_in_checkpoint_keeps_the_first() {
        let data = decode(
            std::path::Path::new("ipam.json"),
            br#"{"version":"vpc-cni-ipam/1","allocations":[
              {"networkName":"aws-cni","containerID":"a","ifName":"eth0","ipv4":"10.0.0.11","allocationTimestamp":1,"metadata":{}},
              {"networkName":"aws-cni","containerID":"b","ifName":"eth0","ipv4":"10.0.0.11","allocationTimestamp":2,"metadata":{}}
            ]}"#,
        )
        .unwrap();
        let mut ds = store();
        let r = restore_allocations(&mut ds, &data, &[]);
        assert_eq!(r.restored.len(), 1);
        assert_eq!(r.invalid.len(), 1);
    }

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
