//! What an instance of the [`FakeEc2`] sees: its instance metadata and its links, both
//! answered from the fake's live state (an ENI attached through EC2 shows in metadata and as a
//! link, unless a test hides it to play lag).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{FakeEc2, FakeEni, SECURITY_GROUP, VPC_CIDR, VPC_IPV6_CIDR};
use crate::cloud::imds::{Imds, ImdsError, META_DATA};
use crate::mac::MacAddr;
use crate::node_network::host::{HostNetworkError, SecondaryEni};
use crate::pool::host::EniHost;

impl FakeEc2 {
    /// Instance metadata of `instance`, answered from this fake's live state.
    pub fn imds(&self, instance: &str) -> FakeEc2Imds {
        FakeEc2Imds::new(self.clone(), instance)
    }

    /// The links of `instance`, from this fake's live state.
    pub fn host(&self, instance: &str) -> FakeHost {
        FakeHost::new(self.clone(), instance)
    }
}

/// Instance metadata of one instance of a [`FakeEc2`].
#[derive(Debug, Clone)]
pub struct FakeEc2Imds {
    ec2: FakeEc2,
    instance: String,
}

impl FakeEc2Imds {
    fn new(ec2: FakeEc2, instance: &str) -> Self {
        Self {
            ec2,
            instance: instance.to_owned(),
        }
    }

    fn visible(&self) -> Vec<FakeEni> {
        let hidden = self.ec2.lock().imds_hidden.clone();
        self.ec2
            .attached(&self.instance)
            .into_iter()
            .filter(|e| !hidden.contains(&e.id))
            .collect()
    }

    fn eni<T>(
        &self,
        mac: MacAddr,
        field: &str,
        f: impl FnOnce(&FakeEni) -> T,
    ) -> Result<T, ImdsError> {
        self.visible()
            .iter()
            .find(|e| e.mac == mac)
            .map(f)
            .ok_or_else(|| ImdsError::NotFound {
                path: format!("{META_DATA}network/interfaces/macs/{mac}/{field}"),
            })
    }
}

impl Imds for FakeEc2Imds {
    async fn instance_id(&self) -> Result<String, ImdsError> {
        Ok(self.instance.clone())
    }

    async fn instance_type(&self) -> Result<String, ImdsError> {
        Ok(self
            .ec2
            .lock()
            .instances
            .get(&self.instance)
            .cloned()
            .unwrap_or_default())
    }

    async fn availability_zone(&self) -> Result<String, ImdsError> {
        Ok(super::AVAILABILITY_ZONE.into())
    }

    async fn region(&self) -> Result<String, ImdsError> {
        Ok("us-west-2".into())
    }

    async fn primary_mac(&self) -> Result<MacAddr, ImdsError> {
        Ok(self.ec2.primary_eni(&self.instance).mac)
    }

    async fn local_ipv4(&self) -> Result<Ipv4Addr, ImdsError> {
        Ok(self.ec2.primary_eni(&self.instance).ips[0])
    }

    async fn macs(&self) -> Result<Vec<MacAddr>, ImdsError> {
        Ok(self.visible().iter().map(|e| e.mac).collect())
    }

    async fn device_number(&self, mac: MacAddr) -> Result<u32, ImdsError> {
        self.eni(mac, "device-number", |e| {
            e.attached_to().map_or(0, |(_, d)| d)
        })
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

    async fn ipv6_prefixes(&self, mac: MacAddr) -> Result<Vec<Ipv6Net>, ImdsError> {
        self.eni(mac, "ipv6-prefix", |e| e.ipv6_prefixes.clone())
    }

    async fn vpc_ipv6_cidr_blocks(&self, mac: MacAddr) -> Result<Vec<Ipv6Net>, ImdsError> {
        self.eni(mac, "vpc-ipv6-cidr-blocks", |_| {
            VPC_IPV6_CIDR.parse().into_iter().collect()
        })
    }

    async fn subnet_id(&self, mac: MacAddr) -> Result<String, ImdsError> {
        self.eni(mac, "subnet-id", |e| e.subnet_id.clone())
    }

    async fn subnet_ipv4_cidr_block(&self, mac: MacAddr) -> Result<Ipv4Net, ImdsError> {
        let subnet = self.eni(mac, "subnet-ipv4-cidr-block", |e| e.subnet_id.clone())?;
        Ok(self.ec2.subnet_cidr(&subnet))
    }

    async fn vpc_ipv4_cidr_blocks(&self, mac: MacAddr) -> Result<Vec<Ipv4Net>, ImdsError> {
        self.eni(mac, "vpc-ipv4-cidr-blocks", |_| {
            vec![VPC_CIDR.parse().unwrap()]
        })
    }

    async fn security_group_ids(&self, mac: MacAddr) -> Result<Vec<String>, ImdsError> {
        self.eni(mac, "security-group-ids", |_| {
            vec![SECURITY_GROUP.to_owned()]
        })
    }
}

/// What the manager did to the instance's links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOp {
    /// A secondary ENI was brought up.
    Setup(String),
    /// A secondary ENI's rules and routes were removed.
    Teardown(String),
}

/// The links of one instance of a [`FakeEc2`]: the link of every attached ENI is there
/// (unless hidden); bring-up and teardown are recorded.
#[derive(Debug, Clone)]
pub struct FakeHost {
    ec2: FakeEc2,
    instance: String,
    log: Arc<Mutex<Vec<HostOp>>>,
    brought_up: Arc<Mutex<Vec<SecondaryEni>>>,
}

impl FakeHost {
    fn new(ec2: FakeEc2, instance: &str) -> Self {
        Self {
            ec2,
            instance: instance.to_owned(),
            log: Arc::new(Mutex::new(Vec::new())),
            brought_up: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Bring-ups and teardowns so far.
    pub fn ops(&self) -> Vec<HostOp> {
        self.log.lock().unwrap().clone()
    }

    /// Every secondary ENI brought up, as the manager described it (subnet, addresses).
    pub fn brought_up(&self) -> Vec<SecondaryEni> {
        self.brought_up.lock().unwrap().clone()
    }
}

impl EniHost for FakeHost {
    async fn has_link(&self, mac: MacAddr) -> Result<bool, HostNetworkError> {
        let hidden = self.ec2.lock().links_hidden.clone();
        Ok(self
            .ec2
            .attached(&self.instance)
            .iter()
            .any(|e| e.mac == mac && !hidden.contains(&e.id)))
    }

    async fn setup_secondary_eni(&self, eni: &SecondaryEni) -> Result<(), HostNetworkError> {
        if !self.has_link(eni.mac).await? {
            return Err(HostNetworkError::LinkNotFound {
                mac: eni.mac,
                eni: eni.id.clone(),
            });
        }
        self.log.lock().unwrap().push(HostOp::Setup(eni.id.clone()));
        self.brought_up.lock().unwrap().push(eni.clone());
        Ok(())
    }

    async fn teardown_secondary_eni(&self, eni: &SecondaryEni) -> Result<(), HostNetworkError> {
        self.log
            .lock()
            .unwrap()
            .push(HostOp::Teardown(eni.id.clone()));
        Ok(())
    }
}
