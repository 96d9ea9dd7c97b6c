//! Following instance metadata: what the datastore must change so its ENIs, secondary IPs and
//! delegated prefixes match what IMDS lists (a prefix is adopted or dropped whole). Addresses that appear are adopted; free ones that vanish are dropped;
//! assigned ones are never dropped because metadata lags (they are logged and kept); an ENI that
//! vanished is dropped only once no pod uses it. Also the two steps of putting what appeared
//! into the datastore, whoever saw it (metadata here, EC2 in the pool manager): [`add_ips`] and
//! [`add_eni_with_ips`].

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::cloud::metadata::EniMetadata;
use crate::datastore::{Datastore, DatastoreError, EniSpec, IpamKey};

/// The difference between the datastore and metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// ENIs in metadata but not in the datastore (secondary ones need host bring-up first).
    pub new_enis: Vec<EniMetadata>,
    /// Addresses to adopt: (ENI id, address).
    pub added_ips: Vec<(String, Ipv4Addr)>,
    /// Free or cooling addresses metadata no longer lists.
    pub removed_ips: Vec<(String, Ipv4Addr)>,
    /// Assigned addresses metadata no longer lists; kept.
    pub kept_assigned: Vec<(String, Ipv4Addr, IpamKey)>,
    /// ENIs in the datastore that metadata no longer lists.
    pub gone_enis: Vec<String>,
    /// Prefixes to adopt: (ENI id, prefix).
    pub added_prefixes: Vec<(String, Ipv4Net)>,
    /// Prefixes metadata no longer lists, none of whose addresses is assigned or cooling.
    pub removed_prefixes: Vec<(String, Ipv4Net)>,
    /// Prefixes metadata no longer lists that pods still use; kept.
    pub kept_prefixes: Vec<(String, Ipv4Net)>,
}

impl Diff {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.new_enis.is_empty()
            && self.added_ips.is_empty()
            && self.removed_ips.is_empty()
            && self.kept_assigned.is_empty()
            && self.gone_enis.is_empty()
            && self.added_prefixes.is_empty()
            && self.removed_prefixes.is_empty()
            && self.kept_prefixes.is_empty()
    }

    /// Something to change (what pods still use is kept whatever the source says).
    pub fn has_changes(&self) -> bool {
        !(self.new_enis.is_empty()
            && self.added_ips.is_empty()
            && self.removed_ips.is_empty()
            && self.gone_enis.is_empty()
            && self.added_prefixes.is_empty()
            && self.removed_prefixes.is_empty())
    }
}

/// Compares the datastore with metadata.
pub fn diff(ds: &Datastore, metadata: &[EniMetadata]) -> Diff {
    let mut out = Diff::default();
    let listed: HashSet<&str> = metadata.iter().map(|e| e.id.as_str()).collect();
    for eni in metadata {
        if ds.eni(&eni.id).is_none() {
            out.new_enis.push(eni.clone());
            continue;
        }
        let present = ds.eni_secondary_addresses(&eni.id);
        let present_set: BTreeSet<Ipv4Addr> = present.iter().map(|(ip, _)| *ip).collect();
        let wanted: BTreeSet<Ipv4Addr> = eni.secondary_ips.iter().copied().collect();
        for ip in wanted.difference(&present_set) {
            out.added_ips.push((eni.id.clone(), *ip));
        }
        for (ip, holder) in present {
            if wanted.contains(&ip) {
                continue;
            }
            match holder {
                Some(key) => out.kept_assigned.push((eni.id.clone(), ip, key)),
                None => out.removed_ips.push((eni.id.clone(), ip)),
            }
        }
        let held = ds.eni(&eni.id).map(|v| v.prefixes).unwrap_or_default();
        for p in &eni.ipv4_prefixes {
            if !held.iter().any(|h| h.prefix == *p) {
                out.added_prefixes.push((eni.id.clone(), *p));
            }
        }
        for h in held {
            if eni.ipv4_prefixes.contains(&h.prefix) {
                continue;
            }
            if h.assigned == 0 && h.cooling == 0 {
                out.removed_prefixes.push((eni.id.clone(), h.prefix));
            } else {
                out.kept_prefixes.push((eni.id.clone(), h.prefix));
            }
        }
    }
    for view in ds.enis() {
        if !listed.contains(view.spec.id.as_str()) {
            out.gone_enis.push(view.spec.id);
        }
    }
    out
}

/// The datastore's description of an ENI.
pub fn eni_spec(eni: &EniMetadata) -> EniSpec {
    EniSpec {
        id: eni.id.clone(),
        device_number: eni.device_number,
        primary_ip: eni.primary_ip,
        subnet: eni.subnet,
    }
}

/// Adds an ENI as metadata describes it, with its secondary addresses and prefixes; returns
/// how many addresses were added.
///
/// # Errors
/// The ENI (id or device number) is already known.
pub fn add_eni(ds: &mut Datastore, eni: &EniMetadata) -> Result<usize, DatastoreError> {
    let n = add_eni_with_ips(ds, eni_spec(eni), eni.secondary_ips.iter().copied())?;
    Ok(n + 16 * add_prefixes(ds, &eni.id, eni.ipv4_prefixes.iter().copied()).len())
}

/// Adds to ENI `eni` those of `prefixes` it does not hold yet, logging each the datastore
/// refuses. Returns the prefixes added, in order.
pub fn add_prefixes(
    ds: &mut Datastore,
    eni: &str,
    prefixes: impl IntoIterator<Item = Ipv4Net>,
) -> Vec<Ipv4Net> {
    let known: HashSet<Ipv4Net> = ds.eni_prefixes(eni).into_iter().collect();
    let mut added = Vec::new();
    for prefix in prefixes {
        if known.contains(&prefix) {
            continue;
        }
        match ds.add_prefix(eni, prefix) {
            Ok(()) => added.push(prefix),
            Err(e) => tracing::warn!(%eni, %prefix, error = %e, "prefix not added to the pool"),
        }
    }
    added
}

/// Adds an ENI, then `ips` to it ([`add_ips`]); returns how many addresses were added.
///
/// # Errors
/// The ENI (id or device number) is already known; no address was added.
pub fn add_eni_with_ips(
    ds: &mut Datastore,
    spec: EniSpec,
    ips: impl IntoIterator<Item = Ipv4Addr>,
) -> Result<usize, DatastoreError> {
    let id = spec.id.clone();
    ds.add_eni(spec)?;
    Ok(add_ips(ds, &id, ips).len())
}

/// Adds to ENI `eni` those of `ips` it does not hold yet (nor its own primary address, never a
/// pod's), logging each the datastore refuses. Returns the addresses added, in order.
pub fn add_ips(
    ds: &mut Datastore,
    eni: &str,
    ips: impl IntoIterator<Item = Ipv4Addr>,
) -> Vec<Ipv4Addr> {
    let known: HashSet<Ipv4Addr> = ds
        .eni_addresses(eni)
        .into_iter()
        .map(|(ip, _)| ip)
        .collect();
    let primary = ds.eni(eni).map(|v| v.spec.primary_ip);
    let mut added = Vec::new();
    for ip in ips {
        if known.contains(&ip) || Some(ip) == primary {
            continue;
        }
        match ds.add_ip(eni, ip) {
            Ok(()) => added.push(ip),
            Err(e) => tracing::warn!(%eni, %ip, error = %e, "address not added to the pool"),
        }
    }
    added
}

/// What applying a diff changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Addresses adopted.
    pub added: usize,
    /// Addresses dropped.
    pub removed: usize,
    /// ENIs dropped.
    pub enis_removed: usize,
}

/// Logs one change metadata asked for (`what` appeared or vanished, `done` added to or
/// removed from the pool, or why not); returns the addresses it moved (`weight`, or 0).
fn applied_one(
    result: Result<(), DatastoreError>,
    eni: &str,
    item: &dyn std::fmt::Display,
    weight: usize,
    what: &str,
    done: &str,
) -> usize {
    let seen = if done == "added to" {
        "appeared in"
    } else {
        "vanished from"
    };
    match result {
        Ok(()) => {
            tracing::info!(%eni, item = %item, "{what} {seen} instance metadata; {done} the pool");
            weight
        }
        Err(e) => {
            tracing::warn!(%eni, item = %item, error = %e, "{what} that {seen} instance metadata not {done} the pool");
            0
        }
    }
}

/// Applies the address changes and drops vanished ENIs that no pod uses (new ENIs are added by
/// the caller once their host link is set up). Logs every change.
pub fn apply(ds: &mut Datastore, diff: &Diff) -> Applied {
    let mut applied = Applied::default();
    for (eni, ip) in &diff.added_ips {
        applied.added += applied_one(ds.add_ip(eni, *ip), eni, ip, 1, "secondary IP", "added to");
    }
    for (eni, ip) in &diff.removed_ips {
        applied.removed += applied_one(
            ds.remove_ip(*ip),
            eni,
            ip,
            1,
            "secondary IP",
            "removed from",
        );
    }
    for (eni, ip, key) in &diff.kept_assigned {
        tracing::warn!(%eni, %ip, %key, "instance metadata no longer lists this IP but a pod holds it; keeping it (metadata may lag)");
    }
    for (eni, prefix) in &diff.added_prefixes {
        let done = ds.add_prefix(eni, *prefix);
        applied.added += applied_one(done, eni, prefix, 16, "prefix", "added to");
    }
    for (eni, prefix) in &diff.removed_prefixes {
        let done = ds.remove_prefix(eni, *prefix);
        applied.removed += applied_one(done, eni, prefix, 16, "prefix", "removed from");
    }
    for (eni, prefix) in &diff.kept_prefixes {
        tracing::warn!(%eni, %prefix, "instance metadata no longer lists this prefix but pods use it; keeping it (metadata may lag)");
    }
    for eni in &diff.gone_enis {
        match ds.remove_eni(eni) {
            Ok(_) => {
                applied.enis_removed += 1;
                tracing::info!(%eni, "ENI vanished from instance metadata; removed from the pool");
            }
            Err(e) => {
                tracing::warn!(%eni, error = %e, "ENI vanished from instance metadata but is kept")
            }
        }
    }
    applied
}

#[cfg(test)]
mod tests {

    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cloud::metadata::fetch_enis;
    use crate::datastore::{ManualClock, PodMetadata};
    use crate::testing::fake_imds::{FakeEni, FakeImds};
    use crate::testing::pools::key;

    fn fake() -> FakeImds {
        FakeImds::two_enis("i-1")
    }

    async fn enis(imds: &FakeImds) -> Vec<EniMetadata> {
        fetch_enis(imds, "02:00:0a:00:00:0a".parse().unwrap())
            .await
            .unwrap()
    }

    async fn store(imds: &FakeImds) -> Datastore {
        let mut ds = Datastore::new(
            Duration::from_secs(30),
            Arc::new(ManualClock::new()),
            "note",
        );
        for eni in enis(imds).await {
            add_eni(&mut ds, &eni).unwrap();
        }
        ds
    }

    #[tokio::test]
    async fn in_sync_means_empty_diff() {
        let imds = fake();
        let ds = store(&imds).await;
        assert!(diff(&ds, &enis(&imds).await).is_empty());
        assert_eq!(
            ds.eni_addresses("eni-a").len(),
            2,
            "the ENI primary IP is never in the pool"
        );
    }

    #[tokio::test]
    async fn appeared_ips_are_adopted_and_free_vanished_ones_dropped() {
        let imds = fake();
        let mut ds = store(&imds).await;
        imds.update(|e| {
            e[0].ips.push("10.0.0.13".parse().unwrap());
            e[1].ips.retain(|ip| ip.to_string() != "10.0.0.21");
        });
        let d = diff(&ds, &enis(&imds).await);
        assert_eq!(
            d.added_ips,
            vec![("eni-a".into(), "10.0.0.13".parse().unwrap())]
        );
        assert_eq!(
            d.removed_ips,
            vec![("eni-b".into(), "10.0.0.21".parse().unwrap())]
        );
        let applied = apply(&mut ds, &d);
        assert_eq!((applied.added, applied.removed), (1, 1));
        assert_eq!(ds.stats().total, 3);
        assert!(diff(&ds, &enis(&imds).await).is_empty());
    }

    #[tokio::test]
    async fn assigned_ips_are_never_dropped_for_lagging_metadata() {
        let imds = fake();
        let mut ds = store(&imds).await;
        let (a, _) = ds.assign(&key("c1"), PodMetadata::default()).unwrap();
        imds.update(|e| e[0].ips.retain(|ip| Some(*ip) != a.ipv4()));
        let d = diff(&ds, &enis(&imds).await);
        assert_eq!(
            d.kept_assigned,
            vec![("eni-a".into(), a.ipv4().unwrap(), key("c1"))]
        );
        apply(&mut ds, &d);
        assert_eq!(ds.lookup(&key("c1")).unwrap().ip, a.ip);
        assert_eq!(ds.stats().total, 3, "eni-a: .11 (kept) .12, eni-b: .21");
    }

    #[tokio::test]
    async fn new_and_vanished_enis() {
        let imds = fake();
        let mut ds = store(&imds).await;
        imds.update(|e| {
            e.push(FakeEni::new(
                "02:00:0a:00:00:0c",
                "eni-c",
                2,
                "10.0.0.0/24",
                &["10.0.0.30", "10.0.0.31"],
            ));
            e.retain(|x| x.id != "eni-b");
        });
        let d = diff(&ds, &enis(&imds).await);
        assert_eq!(d.new_enis.len(), 1);
        assert_eq!(d.new_enis[0].id, "eni-c");
        assert_eq!(d.gone_enis, vec!["eni-b".to_owned()]);
        let applied = apply(&mut ds, &d);
        assert_eq!(applied.enis_removed, 1);
        assert_eq!(add_eni(&mut ds, &d.new_enis[0]).unwrap(), 1);
        assert_eq!(ds.stats().total, 3);
    }

    #[tokio::test]
    async fn vanished_eni_with_pods_is_kept() {
        let imds = fake();
        let mut ds = store(&imds).await;
        ds.restore(
            &key("p"),
            PodMetadata::default(),
            "10.0.0.21".parse().unwrap(),
            std::time::SystemTime::now(),
        )
        .unwrap();
        imds.update(|e| e.retain(|x| x.id != "eni-b"));
        let d = diff(&ds, &enis(&imds).await);
        assert_eq!(apply(&mut ds, &d).enis_removed, 0);
        assert!(ds.eni("eni-b").is_some());
    }
}
