//! An in-memory, stateful [`Imds`] for unit tests: tests change the node (IPs appear or vanish,
//! ENIs attach) and make chosen paths fail, the way the real service can.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::cloud::imds::{Imds, ImdsError, META_DATA};
use crate::mac::MacAddr;

/// One fake ENI.
#[derive(Debug, Clone)]
pub struct FakeEni {
    /// MAC.
    pub mac: MacAddr,
    /// `eni-…`.
    pub id: String,
    /// Device number.
    pub device_number: u32,
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Addresses, primary first.
    pub ips: Vec<Ipv4Addr>,
    /// Delegated prefixes.
    pub prefixes: Vec<Ipv4Net>,
    /// Delegated IPv6 /80 prefixes.
    pub ipv6_prefixes: Vec<Ipv6Net>,
    /// The VPC's IPv6 CIDRs, as this ENI lists them.
    pub vpc_ipv6_cidrs: Vec<Ipv6Net>,
}

impl FakeEni {
    /// Builds an ENI from strings; panics on malformed test input.
    pub fn new(mac: &str, id: &str, device_number: u32, subnet: &str, ips: &[&str]) -> Self {
        Self {
            mac: mac.parse().unwrap(),
            id: id.to_owned(),
            device_number,
            subnet: subnet.parse().unwrap(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            prefixes: Vec::new(),
            ipv6_prefixes: Vec::new(),
            vpc_ipv6_cidrs: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct State {
    instance_id: String,
    region: Option<String>,
    enis: Vec<FakeEni>,
    fail_path: Option<String>,
    hidden: Vec<MacAddr>,
}

/// The fake service; clones share state.
#[derive(Debug, Clone)]
pub struct FakeImds {
    state: Arc<Mutex<State>>,
}

impl FakeImds {
    /// A node in us-west-2a whose first ENI is the primary.
    pub fn new(instance_id: &str, enis: Vec<FakeEni>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                instance_id: instance_id.to_owned(),
                region: Some("us-west-2".into()),
                enis,
                fail_path: None,
                hidden: Vec::new(),
            })),
        }
    }

    /// `instance_id` with two ENIs in 10.0.0.0/24: eni-a (primary, MAC 02:00:0a:00:00:0a,
    /// 10.0.0.10 with .11 and .12) and eni-b (device 1, MAC 02:00:0a:00:00:0b, 10.0.0.20 with
    /// .21).
    pub fn two_enis(instance_id: &str) -> Self {
        Self::new(
            instance_id,
            vec![
                FakeEni::new(
                    "02:00:0a:00:00:0a",
                    "eni-a",
                    0,
                    "10.0.0.0/24",
                    &["10.0.0.10", "10.0.0.11", "10.0.0.12"],
                ),
                FakeEni::new(
                    "02:00:0a:00:00:0b",
                    "eni-b",
                    1,
                    "10.0.0.0/24",
                    &["10.0.0.20", "10.0.0.21"],
                ),
            ],
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the ENIs.
    pub fn update(&self, f: impl FnOnce(&mut Vec<FakeEni>)) {
        f(&mut self.lock().enis);
    }

    /// Sets or removes `placement/region`.
    pub fn set_region(&self, region: Option<&str>) {
        self.lock().region = region.map(str::to_owned);
    }

    /// Leaves an ENI out of the `network/interfaces/macs/` listing (metadata lagging).
    pub fn hide_from_listing(&self, mac: MacAddr) {
        self.lock().hidden.push(mac);
    }

    /// Makes reads of this path (relative to `/latest/meta-data/`) fail; `None` heals it.
    pub fn fail_path(&self, path: Option<&str>) {
        self.lock().fail_path = path.map(str::to_owned);
    }

    fn read<T>(&self, rel: &str, f: impl FnOnce(&State) -> Option<T>) -> Result<T, ImdsError> {
        let state = self.lock();
        let path = format!("{META_DATA}{rel}");
        if state.fail_path.as_deref() == Some(rel) || state.fail_path.as_deref() == Some("*") {
            return Err(ImdsError::Request {
                path,
                detail: "connection refused".into(),
            });
        }
        f(&state).ok_or(ImdsError::NotFound { path })
    }

    fn eni<T>(
        &self,
        mac: MacAddr,
        field: &str,
        f: impl FnOnce(&FakeEni) -> T,
    ) -> Result<T, ImdsError> {
        self.read(&format!("network/interfaces/macs/{mac}/{field}"), |s| {
            s.enis.iter().find(|e| e.mac == mac).map(f)
        })
    }

    fn primary(s: &State) -> Option<&FakeEni> {
        s.enis.iter().find(|e| e.device_number == 0)
    }
}

impl Imds for FakeImds {
    async fn instance_id(&self) -> Result<String, ImdsError> {
        self.read("instance-id", |s| Some(s.instance_id.clone()))
    }

    async fn instance_type(&self) -> Result<String, ImdsError> {
        self.read("instance-type", |_| Some("m5.large".to_owned()))
    }

    async fn availability_zone(&self) -> Result<String, ImdsError> {
        self.read("placement/availability-zone", |_| {
            Some("us-west-2a".to_owned())
        })
    }

    async fn region(&self) -> Result<String, ImdsError> {
        self.read("placement/region", |s| s.region.clone())
    }

    async fn primary_mac(&self) -> Result<MacAddr, ImdsError> {
        self.read("mac", |s| Self::primary(s).map(|e| e.mac))
    }

    async fn local_ipv4(&self) -> Result<Ipv4Addr, ImdsError> {
        self.read("local-ipv4", |s| {
            Self::primary(s).and_then(|e| e.ips.first().copied())
        })
    }

    async fn macs(&self) -> Result<Vec<MacAddr>, ImdsError> {
        self.read("network/interfaces/macs/", |s| {
            Some(
                s.enis
                    .iter()
                    .map(|e| e.mac)
                    .filter(|m| !s.hidden.contains(m))
                    .collect(),
            )
        })
    }

    async fn device_number(&self, mac: MacAddr) -> Result<u32, ImdsError> {
        self.eni(mac, "device-number", |e| e.device_number)
    }

    async fn interface_id(&self, mac: MacAddr) -> Result<String, ImdsError> {
        self.eni(mac, "interface-id", |e| e.id.clone())
    }

    async fn local_ipv4s(&self, mac: MacAddr) -> Result<Vec<Ipv4Addr>, ImdsError> {
        self.eni(mac, "local-ipv4s", |e| e.ips.clone())
    }

    async fn ipv4_prefixes(&self, mac: MacAddr) -> Result<Vec<Ipv4Net>, ImdsError> {
        self.eni(mac, "ipv4-prefix", |e| e.prefixes.clone())
    }

    async fn subnet_id(&self, mac: MacAddr) -> Result<String, ImdsError> {
        self.eni(mac, "subnet-id", |_| "subnet-0a1b2c3d".to_owned())
    }

    async fn subnet_ipv4_cidr_block(&self, mac: MacAddr) -> Result<Ipv4Net, ImdsError> {
        self.eni(mac, "subnet-ipv4-cidr-block", |e| e.subnet)
    }

    async fn vpc_ipv4_cidr_blocks(&self, mac: MacAddr) -> Result<Vec<Ipv4Net>, ImdsError> {
        self.eni(mac, "vpc-ipv4-cidr-blocks", |_| {
            vec![Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap_or_default()]
        })
    }

    async fn security_group_ids(&self, mac: MacAddr) -> Result<Vec<String>, ImdsError> {
        self.eni(mac, "security-group-ids", |_| {
            vec!["sg-0a1b2c3d".to_owned()]
        })
    }

    async fn ipv6_prefixes(&self, mac: MacAddr) -> Result<Vec<Ipv6Net>, ImdsError> {
        self.eni(mac, "ipv6-prefix", |e| e.ipv6_prefixes.clone())
    }

    async fn vpc_ipv6_cidr_blocks(&self, mac: MacAddr) -> Result<Vec<Ipv6Net>, ImdsError> {
        self.eni(mac, "vpc-ipv6-cidr-blocks", |e| e.vpc_ipv6_cidrs.clone())
    }
}
