//! The [`Ec2Api`] of the [`FakeEc2`]: each call checks what EC2 checks (limits, device indexes,
//! attachments, existence) and answers with EC2's error codes.

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};

use super::filters::matching;
use super::{Att, FakeEc2, err};
use crate::cloud::ec2::{
    CreateEni, Ec2Api, Ec2Error, Filter, Instance, InstanceEni, InstanceTypeLimits,
    NetworkInterface, Subnet, Tags,
};

impl Ec2Api for FakeEc2 {
    async fn describe_instance_types(
        &self,
        instance_types: &[String],
    ) -> Result<Vec<InstanceTypeLimits>, Ec2Error> {
        const API: &str = "DescribeInstanceTypes";
        let w = self.enter(API)?;
        let mut out = Vec::new();
        for t in instance_types {
            let Some(limits) = w.types.get(t) else {
                return Err(err(
                    API,
                    "InvalidInstanceType",
                    format!("The following supplied instance types do not exist: [{t}]"),
                ));
            };
            out.push(limits.clone());
        }
        Ok(out)
    }

    async fn describe_network_interfaces(
        &self,
        eni_ids: &[String],
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        const API: &str = "DescribeNetworkInterfaces";
        let w = self.enter(API)?;
        eni_ids
            .iter()
            .map(|id| {
                w.enis.get(id).map(|e| w.view(e)).ok_or_else(|| {
                    err(
                        API,
                        "InvalidNetworkInterfaceID.NotFound",
                        format!("The networkInterface ID '{id}' does not exist"),
                    )
                })
            })
            .collect()
    }

    async fn describe_network_interfaces_filtered(
        &self,
        filters: &[Filter],
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        const API: &str = "DescribeNetworkInterfaces";
        let w = self.enter(API)?;
        matching(API, w.enis.values().map(|e| w.view(e)), filters)
    }

    async fn describe_subnets(&self, filters: &[Filter]) -> Result<Vec<Subnet>, Ec2Error> {
        const API: &str = "DescribeSubnets";
        let w = self.enter(API)?;
        matching(API, w.subnets.keys().map(|id| w.subnet_view(id)), filters)
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Instance, Ec2Error> {
        const API: &str = "DescribeInstances";
        let w = self.enter(API)?;
        let Some(t) = w.instances.get(instance_id) else {
            return Err(err(
                API,
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{instance_id}' does not exist"),
            ));
        };
        let enis = w
            .enis
            .values()
            .filter_map(|e| {
                let a = e.attachment.as_ref()?;
                (a.instance == instance_id).then(|| InstanceEni {
                    eni_id: e.id.clone(),
                    device_index: a.device,
                    network_card_index: 0,
                })
            })
            .collect();
        Ok(Instance {
            id: instance_id.to_owned(),
            instance_type: t.clone(),
            enis,
        })
    }

    async fn create_network_interface(
        &self,
        request: &CreateEni,
    ) -> Result<NetworkInterface, Ec2Error> {
        const API: &str = "CreateNetworkInterface";
        let mut w = self.enter(API)?;
        if let Some(id) = w.tokens.get(&request.client_token).cloned()
            && let Some(e) = w.enis.get(&id)
        {
            return Ok(w.view(e));
        }
        if request.secondary_ip_count > 49 || request.prefix_count > 49 {
            return Err(err(
                API,
                "PrivateIpAddressLimitExceeded",
                "too many secondary addresses or prefixes",
            ));
        }
        if request.secondary_ip_count > 0 && request.prefix_count > 0 {
            return Err(err(
                API,
                "InvalidParameterCombination",
                "secondary private IPv4 addresses and IPv4 prefixes cannot be requested together",
            ));
        }
        let id = w.new_eni(
            &request.subnet_id,
            &request.description,
            request.secondary_ip_count,
            request.prefix_count,
        )?;
        let eni = w.enis.get_mut(&id).unwrap();
        eni.tags = request.tags.clone();
        eni.security_groups = request.security_groups.clone();
        w.tokens.insert(request.client_token.clone(), id.clone());
        let e = w.enis.get(&id).unwrap();
        Ok(w.view(e))
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        const API: &str = "AttachNetworkInterface";
        let mut w = self.enter(API)?;
        if !w.instances.contains_key(instance_id) {
            return Err(err(
                API,
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{instance_id}' does not exist"),
            ));
        }
        let Some(eni) = w.enis.get(eni_id) else {
            return Err(err(
                API,
                "InvalidNetworkInterfaceID.NotFound",
                format!("The networkInterface ID '{eni_id}' does not exist"),
            ));
        };
        if eni.attachment.is_some() {
            return Err(err(
                API,
                "InvalidParameterValue",
                format!("Interface {eni_id} is already attached"),
            ));
        }
        let ips = eni.ips.len();
        let (max_enis, ipv4) = w.limits_of(instance_id);
        let attached: Vec<u32> = w
            .enis
            .values()
            .filter_map(|e| {
                e.attachment
                    .as_ref()
                    .filter(|a| a.instance == instance_id)
                    .map(|a| a.device)
            })
            .collect();
        if attached.contains(&device_index) {
            return Err(err(
                API,
                "InvalidParameterValue",
                format!(
                    "Instance '{instance_id}' already has an interface attached at device index '{device_index}'."
                ),
            ));
        }
        if attached.len() >= max_enis as usize {
            return Err(err(
                API,
                "AttachmentLimitExceeded",
                format!(
                    "Interface count {} exceeds the limit for {}",
                    attached.len() + 1,
                    w.instances[instance_id]
                ),
            ));
        }
        if ips > ipv4 as usize {
            return Err(err(
                API,
                "PrivateIpAddressLimitExceeded",
                format!(
                    "{eni_id} has {ips} addresses; the instance type allows {ipv4} per interface"
                ),
            ));
        }
        let n = w.next;
        w.next += 1;
        let att = format!("eni-attach-{n:017x}");
        w.enis.get_mut(eni_id).unwrap().attachment = Some(Att {
            id: att.clone(),
            instance: instance_id.to_owned(),
            device: device_index,
            delete_on_termination: false,
        });
        Ok(att)
    }

    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        const API: &str = "ModifyNetworkInterfaceAttribute";
        let mut w = self.enter(API)?;
        let Some(att) = w
            .enis
            .get_mut(eni_id)
            .and_then(|e| e.attachment.as_mut())
            .filter(|a| a.id == attachment_id)
        else {
            return Err(err(
                API,
                "InvalidAttachmentID.NotFound",
                format!("The attachment ID '{attachment_id}' does not exist"),
            ));
        };
        att.delete_on_termination = true;
        Ok(())
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        const API: &str = "DetachNetworkInterface";
        let mut w = self.enter(API)?;
        let Some(eni) = w
            .enis
            .values_mut()
            .find(|e| e.attachment.as_ref().is_some_and(|a| a.id == attachment_id))
        else {
            return Err(err(
                API,
                "InvalidAttachmentID.NotFound",
                format!("The attachment ID '{attachment_id}' does not exist"),
            ));
        };
        if eni.attachment.as_ref().is_some_and(|a| a.device == 0) {
            return Err(err(
                API,
                "OperationNotPermitted",
                "The network interface at device index 0 cannot be detached.",
            ));
        }
        eni.attachment = None;
        Ok(())
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        const API: &str = "DeleteNetworkInterface";
        let mut w = self.enter(API)?;
        match w.enis.get(eni_id) {
            None => Err(err(
                API,
                "InvalidNetworkInterfaceID.NotFound",
                format!("The networkInterface ID '{eni_id}' does not exist"),
            )),
            Some(e) if e.attachment.is_some() => Err(err(
                API,
                "InvalidNetworkInterface.InUse",
                format!("The network interface '{eni_id}' is currently in use."),
            )),
            Some(_) => {
                w.enis.remove(eni_id);
                Ok(())
            }
        }
    }

    async fn assign_private_ip_addresses(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        const API: &str = "AssignPrivateIpAddresses";
        self.enter(API)?.assign(eni_id, count, API)
    }

    async fn unassign_private_ip_addresses(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> Result<(), Ec2Error> {
        const API: &str = "UnassignPrivateIpAddresses";
        self.enter(API)?.unassign(eni_id, ips, &[], API)
    }

    async fn assign_ipv4_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv4Net>, Ec2Error> {
        const API: &str = "AssignPrivateIpAddresses";
        self.enter(API)?.assign_prefixes(eni_id, count, API)
    }

    async fn unassign_ipv4_prefixes(
        &self,
        eni_id: &str,
        prefixes: &[Ipv4Net],
    ) -> Result<(), Ec2Error> {
        const API: &str = "UnassignPrivateIpAddresses";
        self.enter(API)?.unassign(eni_id, &[], prefixes, API)
    }

    async fn assign_ipv6_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv6Net>, Ec2Error> {
        const API: &str = "AssignIpv6Addresses";
        self.enter(API)?.assign_ipv6_prefixes(eni_id, count, API)
    }

    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<(), Ec2Error> {
        const API: &str = "CreateTags";
        let mut w = self.enter(API)?;
        for id in resource_ids {
            if !w.enis.contains_key(id) {
                return Err(err(
                    API,
                    "InvalidNetworkInterfaceID.NotFound",
                    format!("The networkInterface ID '{id}' does not exist"),
                ));
            }
        }
        for id in resource_ids {
            let e = w.enis.get_mut(id).unwrap();
            e.tags
                .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(())
    }
}
