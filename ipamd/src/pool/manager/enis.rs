//! ENI lifecycle: create → attach → DeleteOnTermination → wait for metadata and the link →
//! bring up → into the pool; and free: out of the pool → rules and routes removed → detach →
//! wait for `available` → delete. Failures roll back what EC2 holds (a new ENI whose attach
//! failed or timed out, or that never shows in instance metadata, is detached if needed and
//! deleted) and never leave the datastore pointing at an ENI that is not usable.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::Rng;

use super::{CreateFailed, PoolManager};
use crate::cloud::ec2::{
    CREATED_AT_TAG, CreateEni, ENI_DESCRIPTION_PREFIX, Ec2Api, Ec2Error, Ec2ErrorKind, EniStatus,
    NetworkInterface, rfc3339,
};
use crate::cloud::imds::Imds;
use crate::cloud::metadata::{self, EniMetadata};
use crate::datastore::{Datastore, EniSpec};
use crate::mac::MacAddr;
use crate::node_network::host::SecondaryEni;
use crate::pool::host::EniHost;
use crate::pool::policy::{self, Capacity};
use crate::pool::reconcile;

impl<E: Ec2Api, I: Imds, H: EniHost> PoolManager<E, I, H> {
    pub(super) fn secondary(
        &self,
        id: &str,
        mac: MacAddr,
        device: u32,
        primary_ip: Ipv4Addr,
        subnet: Ipv4Net,
    ) -> SecondaryEni {
        SecondaryEni {
            id: id.to_owned(),
            mac,
            device_number: device,
            primary_ip,
            subnet,
            mtu: self.cfg.eni_mtu,
        }
    }

    /// `CreateNetworkInterface` in the first candidate subnet that has room (subnet discovery:
    /// most free addresses first); a subnet out of addresses enters its back-off and the next
    /// one is tried. Returns the ENI and its subnet's CIDR.
    async fn create_in_some_subnet(
        &mut self,
        request: &mut CreateEni,
    ) -> Result<(NetworkInterface, Ipv4Net), CreateFailed> {
        let (mut candidates, any_full) = if self.custom_networking() {
            self.custom_candidates(&mut request.security_groups).await?
        } else {
            self.candidates_for_new_eni().await
        };
        if request.prefix_count > 0 {
            self.fragmented_last(&mut candidates);
        }
        if candidates.is_empty() {
            if !any_full && !self.custom_networking() {
                let read: Vec<String> = self
                    .subnets
                    .subnets()
                    .into_iter()
                    .map(|(s, e)| format!("{} ({})", s.id, e.reason()))
                    .collect();
                tracing::warn!(subnets = ?read, "no subnet of the node's Availability Zone may take new ENIs (the node's subnet is tagged kubernetes.io/role/cni=0 or for another cluster, and no other subnet is tagged kubernetes.io/role/cni=1 for this cluster)");
                self.situation.set_subnet_note(Some(
                    "no subnet may take new ENIs: the node's subnet is excluded (kubernetes.io/role/cni=0 or another cluster's tag) and no other subnet of the Availability Zone is tagged kubernetes.io/role/cni=1 for this cluster".into(),
                ));
            }
            return Err(CreateFailed::NoSubnet);
        }
        let mut fragmented = false;
        for c in candidates {
            request.subnet_id.clone_from(&c.id);
            tracing::info!(
                subnet = %c.id, cidr = %c.cidr, available = ?c.available_ips, node_subnet = c.is_node_subnet,
                security_groups = ?request.security_groups, ips = request.secondary_ip_count,
                prefixes = request.prefix_count, "creating an ENI"
            );
            match self.ec2.create_network_interface(request).await {
                Ok(eni) => {
                    let n = 1
                        + u32::try_from(eni.secondary_ips().len()).unwrap_or(u32::MAX)
                        + 16 * u32::try_from(eni.ipv4_prefixes.len()).unwrap_or(0);
                    self.subnet_answered(&c.id, n);
                    if !eni.ipv4_prefixes.is_empty() {
                        self.fragmented_subnets.remove(&c.id);
                    }
                    return Ok((eni, c.cidr));
                }
                Err(e) if e.kind == Ec2ErrorKind::SubnetFull => {
                    self.count_error("increaseIPPoolAllocENIFailed");
                    self.mark_subnet_full(&c.id, &e);
                }
                Err(e) if e.kind == Ec2ErrorKind::NoFreePrefix => {
                    // Fragmented: another candidate may still have an aligned /28.
                    self.count_error("increaseIPPoolAllocENIFailed");
                    tracing::warn!(subnet = %c.id, error = %e, "no aligned /28 is free in the subnet for the new ENI's prefixes");
                    self.mark_fragmented(&c.id);
                    fragmented = true;
                }
                Err(e) => {
                    self.count_error("increaseIPPoolAllocENIFailed");
                    tracing::warn!(subnet = %c.id, error = %e, "cannot create an ENI");
                    return Err(CreateFailed::Failed);
                }
            }
            // A fresh idempotency token per subnet: the failed request must not be replayed.
            request.client_token = new_client_token();
        }
        Err(if fragmented {
            CreateFailed::Fragmented
        } else {
            CreateFailed::Failed
        })
    }

    /// Creates, attaches and brings up a new ENI with `slots` secondary addresses or, with
    /// prefix delegation, prefixes; returns how many addresses entered the pool. When no
    /// candidate subnet has a free aligned /28, the ENI comes with as many secondary addresses
    /// as the prefixes would have given (within its slots). Errors are logged here.
    pub(super) async fn create_eni(
        &mut self,
        slots: u32,
        cap: &Capacity,
    ) -> Result<u32, CreateFailed> {
        let device = self.device_for_new_eni(cap).await?;
        let mut request = self.new_eni_request(slots, cap.prefix_mode());
        let created = match self.create_in_some_subnet(&mut request).await {
            Err(CreateFailed::Fragmented) => {
                let ips = slots.saturating_mul(cap.per_slot).min(cap.slots_per_eni());
                tracing::warn!(
                    prefixes = slots,
                    secondary_ips = ips,
                    "no candidate subnet has a free aligned /28 (fragmented); creating the ENI with secondary IPs instead. A prefix-type subnet CIDR reservation keeps /28s free for prefixes"
                );
                request = self.new_eni_request(ips, false);
                let created = self.create_in_some_subnet(&mut request).await;
                if let (Ok((eni, _)), Some(m)) = (&created, &self.metrics) {
                    m.prefix_fallback(u32::try_from(eni.secondary_ips().len()).unwrap_or(0));
                }
                created
            }
            other => other,
        };
        let (eni, subnet) = created?;
        let subnet_id = request.subnet_id;
        let (Some(mac), Some(primary_ip)) = (eni.mac, eni.primary_ip) else {
            tracing::error!(eni = %eni.id, "EC2 returned a new ENI without MAC or address; deleting it");
            if !self.delete_eni(&eni.id).await {
                self.to_remove.insert(eni.id.clone());
            }
            return Err(CreateFailed::Failed);
        };
        let secondary = eni.secondary_ips();
        let prefixes = eni.ipv4_prefixes.clone();
        tracing::info!(eni = %eni.id, subnet = %subnet_id, %mac, ip = %primary_ip, secondary = ?secondary, prefixes = ?prefixes, device, "ENI created");
        self.attach_new_eni(&eni.id, device).await?;
        self.tagged.insert(eni.id.clone());
        let shown = self
            .await_new_eni(&eni.id, mac, primary_ip, (&secondary, &prefixes))
            .await?;
        let device = if shown.device_number == device {
            device
        } else {
            tracing::warn!(eni = %eni.id, attached_at = device, metadata = shown.device_number, "metadata shows another device number; using it");
            shown.device_number
        };
        let spec = self.secondary(&eni.id, mac, device, primary_ip, subnet);
        self.eni_subnets.insert(eni.id.clone(), subnet_id.clone());
        if let Err(e) = self.host.setup_secondary_eni(&spec).await {
            tracing::warn!(eni = %eni.id, error = %e, "cannot bring up the new ENI; the next reconcile retries");
            return Err(CreateFailed::Failed);
        }
        let added = self
            .state
            .with_datastore(|ds| add_new_eni(ds, &spec, &secondary, &prefixes))
            .await
            .ok_or(CreateFailed::Failed)?;
        self.added_at.insert(eni.id.clone(), self.clock.now());
        self.macs.insert(eni.id.clone(), mac);
        tracing::info!(eni = %eni.id, subnet = %subnet_id, device, ips = added, table = device + 1, "new ENI up and in the pool");
        Ok(added)
    }

    /// The device index a new ENI is attached at, after EC2's own view of the instance's
    /// attachments: the last word on the ENI limit (ENIs attached by anyone, and not yet in
    /// metadata, count too).
    async fn device_for_new_eni(&self, cap: &Capacity) -> Result<u32, CreateFailed> {
        let instance = match self.ec2.describe_instance(&self.node.instance_id).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the instance's attachments; no new ENI this cycle");
                return Err(CreateFailed::Failed);
            }
        };
        let attached = u32::try_from(instance.enis.len()).unwrap_or(u32::MAX);
        if attached >= cap.max_enis {
            tracing::info!(
                attached,
                max_enis = cap.max_enis,
                "EC2 shows the instance at its ENI limit; no new ENI"
            );
            return Err(CreateFailed::Failed);
        }
        instance.first_free_device_index().ok_or_else(|| {
            tracing::warn!("no free device index on network card 0");
            CreateFailed::Failed
        })
    }

    /// `CreateNetworkInterface` for a new ENI with `slots` prefixes (`prefixes`) or secondary
    /// addresses, in the node's subnet until a candidate subnet is chosen: ipamd's tags and the
    /// creation time, and the primary ENI's security groups (in every subnet, as in the
    /// reference).
    fn new_eni_request(&self, slots: u32, prefixes: bool) -> CreateEni {
        let mut tags = self.wanted_tags();
        tags.insert(CREATED_AT_TAG.to_owned(), rfc3339(self.clock.wall()));
        CreateEni {
            subnet_id: self.node.subnet_id.clone(),
            security_groups: self.node.security_groups.clone(),
            description: format!("{ENI_DESCRIPTION_PREFIX}{}", self.node.instance_id),
            secondary_ip_count: if prefixes { 0 } else { slots },
            prefix_count: if prefixes { slots } else { 0 },
            tags,
            client_token: new_client_token(),
        }
    }

    /// Attaches a new ENI at `device` and sets DeleteOnTermination. On failure the ENI is
    /// removed (or left to the retries of later cycles).
    async fn attach_new_eni(&mut self, eni_id: &str, device: u32) -> Result<(), CreateFailed> {
        let attachment = match self
            .ec2
            .attach_network_interface(eni_id, &self.node.instance_id, device)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                self.count_error("increaseIPPoolAllocENIFailed");
                // A timed-out or cut-off attach may have happened all the same: detach first if
                // EC2 shows it attached, then delete (a plain delete would fail "in use" and
                // leave an attached ENI the pool does not know).
                tracing::warn!(eni = %eni_id, device, error = %e, "cannot attach the new ENI; removing it");
                if !self.release_eni(eni_id).await {
                    tracing::warn!(eni = %eni_id, "the half-created ENI could not be removed now; retrying every cycle");
                    self.to_remove.insert(eni_id.to_owned());
                }
                return Err(CreateFailed::Failed);
            }
        };
        if let Err(e) = self
            .ec2
            .set_delete_on_termination(eni_id, &attachment)
            .await
        {
            tracing::warn!(eni = %eni_id, error = %e, "cannot set DeleteOnTermination on the new ENI; detaching and deleting it");
            if !self.release_eni(eni_id).await {
                self.to_remove.insert(eni_id.to_owned());
            }
            return Err(CreateFailed::Failed);
        }
        Ok(())
    }

    /// Waits until the new ENI shows in instance metadata and as a link ([`Self::wait_visible`]).
    /// One that never does cannot be used, yet holds one of the instance's ENI slots and its
    /// addresses: it is detached and deleted, and a later cycle tries a fresh one (at most one
    /// per attach wait).
    async fn await_new_eni(
        &mut self,
        eni_id: &str,
        mac: MacAddr,
        primary_ip: Ipv4Addr,
        addresses: (&[Ipv4Addr], &[Ipv4Net]),
    ) -> Result<EniMetadata, CreateFailed> {
        let why = match self.wait_visible(eni_id, mac, primary_ip, addresses).await {
            Ok(md) => return Ok(md),
            Err(why) => why,
        };
        self.count_error("increaseIPPoolwaitENIAttachedFailed");
        tracing::warn!(eni = %eni_id, reason = %why, "new ENI did not become usable; detaching and deleting it");
        self.tagged.remove(eni_id);
        if !self.release_eni(eni_id).await {
            tracing::warn!(eni = %eni_id, "the unusable ENI could not be removed now; retrying every cycle");
            self.to_remove.insert(eni_id.to_owned());
        }
        Err(CreateFailed::Failed)
    }

    /// Polls metadata and the links until the new ENI shows with its addresses and its link
    /// exists, backing off from [`super::Timings::poll_start`] to [`super::Timings::poll_cap`].
    /// At the deadline a listed ENI with a link is accepted even when metadata lacks some
    /// addresses (EC2's answer is used for those).
    async fn wait_visible(
        &self,
        eni_id: &str,
        mac: MacAddr,
        primary_ip: Ipv4Addr,
        (secondary, prefixes): (&[Ipv4Addr], &[Ipv4Net]),
    ) -> Result<EniMetadata, String> {
        let t = &self.cfg.timings;
        let deadline = tokio::time::Instant::now() + t.attach_wait;
        let mut delay = t.poll_start;
        loop {
            let mut why = String::new();
            let listed = match metadata::fetch_enis(&*self.imds, self.node.primary_mac).await {
                Ok(enis) => enis.into_iter().find(|e| e.id == eni_id),
                Err(e) => {
                    why = format!("instance metadata: {e}");
                    None
                }
            };
            let link = match self.host.has_link(mac).await {
                Ok(l) => l,
                Err(e) => {
                    why = e.to_string();
                    false
                }
            };
            let complete = listed.as_ref().is_some_and(|m| {
                m.primary_ip == primary_ip
                    && secondary.iter().all(|ip| m.secondary_ips.contains(ip))
                    && prefixes.iter().all(|p| m.ipv4_prefixes.contains(p))
            });
            let now = tokio::time::Instant::now();
            let is_listed = listed.is_some();
            match listed {
                Some(md) if link && (complete || now >= deadline) => {
                    if !complete {
                        tracing::warn!(eni = %eni_id, metadata = ?md.secondary_ips, ec2 = ?secondary, "metadata still lacks some of the ENI's addresses; using EC2's list");
                    }
                    return Ok(md);
                }
                _ if now >= deadline => {
                    return Err(format!(
                        "after {:?}: listed in instance metadata: {is_listed}, link with MAC {mac}: {link}{}",
                        t.attach_wait,
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(" ({why})")
                        }
                    ));
                }
                _ => {}
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(t.poll_cap);
        }
    }

    /// Deletes an ENI that is not attached (rollback). NotFound counts as deleted.
    pub(super) async fn delete_eni(&self, eni_id: &str) -> bool {
        match self.ec2.delete_network_interface(eni_id).await {
            Ok(()) => {
                tracing::info!(eni = %eni_id, "ENI deleted");
                true
            }
            Err(e) if e.kind == Ec2ErrorKind::NotFound => true,
            Err(e) => {
                tracing::warn!(eni = %eni_id, error = %e, "cannot delete ENI; the leaked-ENI cleanup removes it later");
                false
            }
        }
    }

    /// Detaches (if attached), waits until `available`, deletes. NotFound at any step means the
    /// ENI is gone, which is the goal. Returns whether it is gone.
    pub(super) async fn release_eni(&self, eni_id: &str) -> bool {
        let ids = [eni_id.to_owned()];
        let eni = match self.ec2.describe_network_interfaces(&ids).await {
            Ok(v) => match v.into_iter().next() {
                Some(e) => e,
                None => return true,
            },
            Err(e) if e.kind == Ec2ErrorKind::NotFound => return true,
            Err(e) => {
                tracing::warn!(eni = %eni_id, error = %e, "cannot describe the ENI to free; retrying later");
                return false;
            }
        };
        if let Some(att) = &eni.attachment {
            match self.ec2.detach_network_interface(&att.attachment_id).await {
                Ok(()) => {
                    tracing::info!(eni = %eni_id, attachment = %att.attachment_id, "ENI detached")
                }
                Err(e) if e.kind == Ec2ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(eni = %eni_id, error = %e, "cannot detach ENI");
                    return false;
                }
            }
            match self.wait_available(eni_id).await {
                Ok(true) => {}
                Ok(false) => return true,
                Err(e) => {
                    tracing::warn!(eni = %eni_id, error = %e, "detached ENI did not become available; the leaked-ENI cleanup deletes it later");
                    return false;
                }
            }
        }
        self.delete_eni(eni_id).await
    }

    /// Polls until the ENI is `available`: `Ok(true)`; gone: `Ok(false)`.
    async fn wait_available(&self, eni_id: &str) -> Result<bool, Ec2Error> {
        let t = &self.cfg.timings;
        let deadline = tokio::time::Instant::now() + t.detach_wait;
        let mut delay = t.poll_start;
        let ids = [eni_id.to_owned()];
        loop {
            match self.ec2.describe_network_interfaces(&ids).await {
                Ok(v) => match v.first() {
                    None => return Ok(false),
                    Some(e) if e.status == EniStatus::Available => return Ok(true),
                    Some(e) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(Ec2Error::new(
                                "DescribeNetworkInterfaces",
                                Ec2ErrorKind::Other,
                                format!("{eni_id} is still {} after {:?}", e.status, t.detach_wait),
                            ));
                        }
                    }
                },
                Err(e) if e.kind == Ec2ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(t.poll_cap);
        }
    }

    /// Frees at most one ENI the pool no longer needs (see [`policy::deletable_eni`]).
    /// Returns the freed ENI.
    pub async fn free_one_eni(&mut self) -> Option<String> {
        let cap = self.situation.capacity()?;
        let (enis, counts) = self.snapshot().await;
        if !policy::should_try_free_eni(counts, self.cfg.targets, cap) {
            return None;
        }
        let candidate =
            policy::deletable_eni(&enis, self.cfg.targets, cap, self.cfg.timings.min_eni_age)?
                .clone();
        if self.held_by_cordon().await {
            return None;
        }
        tracing::info!(
            eni = %candidate.id, device = candidate.device_number, ips = candidate.total,
            "freeing an ENI the pool no longer needs"
        );
        self.free_eni(&candidate.id).await.then_some(candidate.id)
    }

    /// Takes an ENI out of the pool (only if no pod holds or just released one of its
    /// addresses, re-checked under the datastore's lock), removes its rules and routes, and
    /// detaches and deletes it. Returns whether it left the pool.
    pub(super) async fn free_eni(&mut self, id: &str) -> bool {
        // Out of the pool first, so no pod is given one of its addresses from now on.
        let removed = self
            .state
            .with_datastore(|ds| {
                ds.stats();
                match ds.eni(id) {
                    Some(v) if v.assigned == 0 && v.cooling == 0 => ds.remove_eni(id).ok(),
                    _ => None,
                }
            })
            .await;
        let Some(removed) = removed else {
            return false;
        };
        let spec = removed.spec;
        let mac = self
            .macs
            .get(&spec.id)
            .copied()
            .unwrap_or(self.node.primary_mac);
        let host_spec = self.secondary(
            &spec.id,
            mac,
            spec.device_number,
            spec.primary_ip,
            spec.subnet,
        );
        if let Err(e) = self.host.teardown_secondary_eni(&host_spec).await {
            tracing::warn!(eni = %spec.id, error = %e, "cannot remove all of the ENI's rules and routes");
        }
        self.added_at.remove(&spec.id);
        self.macs.remove(&spec.id);
        self.tagged.remove(&spec.id);
        self.eni_subnets.remove(&spec.id);
        if self.release_eni(&spec.id).await {
            tracing::info!(eni = %spec.id, "ENI freed");
        } else {
            self.count_error("decreaseIPPoolFreeENIFailed");
            self.to_remove.insert(spec.id.clone());
        }
        true
    }
}

/// Puts a new ENI, brought up as `spec`, into the datastore with its secondary addresses and
/// prefixes. Returns how many addresses entered the pool; `None` when the datastore refused
/// the ENI.
fn add_new_eni(
    ds: &mut Datastore,
    spec: &SecondaryEni,
    secondary: &[Ipv4Addr],
    prefixes: &[Ipv4Net],
) -> Option<u32> {
    let eni = EniSpec {
        id: spec.id.clone(),
        device_number: spec.device_number,
        primary_ip: spec.primary_ip,
        subnet: spec.subnet,
    };
    let id = eni.id.clone();
    match reconcile::add_eni_with_ips(ds, eni, secondary.iter().copied()) {
        Ok(n) => {
            let n = n + 16 * reconcile::add_prefixes(ds, &id, prefixes.iter().copied()).len();
            Some(u32::try_from(n).unwrap_or(u32::MAX))
        }
        Err(e) => {
            tracing::warn!(eni = %spec.id, error = %e, "new ENI not added to the pool");
            None
        }
    }
}

/// A fresh idempotency token for `CreateNetworkInterface`.
fn new_client_token() -> String {
    format!("ipamd-{:032x}", rand::rng().random::<u128>())
}
