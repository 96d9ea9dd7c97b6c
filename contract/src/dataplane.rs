//! The names and numbers of the node's data plane that the plugin writes and ipamd reads back
//! (or the other way round), as the reference uses them (design.md §1, vpc-cni.md §3):
//!
//! - a pod's host veth is `<vethPrefix>` + the first 11 hex digits of sha1("<namespace>.<name>"),
//!   so ipamd finds a pod's veth from its name alone (restore, orphan sweep);
//! - policy rules: 512 `to <pod ip> lookup main`, 1024 `fwmark <mark> lookup main`, 1535
//!   `to <external service cidr> lookup main`, 1536 `from <pod ip> lookup <ENI table>`, 32765
//!   `from <ENI primary ip> lookup <ENI table>`;
//! - route tables: main (254) for the primary ENI (device 0), `device + 1` for the others;
//! - every pod routes through the link-local gateway 169.254.1.1 (`fe80::1` for an IPv6 pod),
//!   answered by its host veth.
//!
//! The rules a side adds or deletes are built here too ([`to_pod_rule`], [`from_pod_rule`],
//! [`from_eni_primary_rule`], [`pod_rules`]), so "a pod's rules" means the same on both sides;
//! they take either family (an IPv6 pod's rule 512 is `to <ip>/128 lookup main` in the IPv6
//! rule table).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use sha1::{Digest, Sha1};

use crate::netlink::{Family, RuleSelector, RuleSpec};

/// Priority of `to <pod ip> lookup main` (the plugin adds it, ipamd removes it for pods that are
/// gone).
pub const TO_POD_RULE_PRIORITY: u32 = 512;
/// Priority of `fwmark <mark>/<mark> lookup main`: connmarked traffic leaves through the primary
/// ENI (the reference's `hostRulePriority`).
pub const HOST_RULE_PRIORITY: u32 = 1024;
/// Priority of `to <cidr> lookup main` for `AWS_EXTERNAL_SERVICE_CIDRS`.
pub const EXTERNAL_SERVICE_RULE_PRIORITY: u32 = 1535;
/// Priority of `from <pod ip> lookup <ENI table>`, for pods on a secondary ENI.
pub const FROM_POD_RULE_PRIORITY: u32 = 1536;
/// Priority of `from <ENI primary ip> lookup <ENI table>`, one per secondary ENI.
pub const FROM_ENI_PRIMARY_IP_RULE_PRIORITY: u32 = 32765;

/// The main routing table: the primary ENI's table.
pub const MAIN_TABLE: u32 = 254;

/// The gateway every pod routes through: `default via 169.254.1.1`, with a PERMANENT neighbour
/// entry pointing at the host veth's MAC.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The gateway every IPv6 pod routes through: `default via fe80::1`, with a PERMANENT
/// neighbour entry pointing at the host veth's MAC (the reference's
/// `CalculatePodIPv6GatewayIP(0)`).
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The gateway of a pod of `family`: [`POD_GATEWAY`] or [`POD_GATEWAY_V6`].
pub fn pod_gateway(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(POD_GATEWAY),
        Family::V6 => IpAddr::V6(POD_GATEWAY_V6),
    }
}

/// How many hex digits of the sha1 a host veth name keeps (15-byte interface names leave room
/// for a 4-character prefix).
const VETH_HASH_DIGITS: usize = 11;

/// The host route table of an ENI: main for device 0, `device + 1` otherwise (the reference's
/// `CalculateRouteTableId` for network card 0).
pub fn route_table_for_device(device_number: u32) -> u32 {
    if device_number == 0 {
        MAIN_TABLE
    } else {
        device_number + 1
    }
}

/// The part of a pod's host veth name after the prefix: the first 11 hex digits of
/// sha1("<namespace>.<name>").
pub fn veth_suffix(namespace: &str, name: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{name}").as_bytes());
    let mut hex = hex::encode(digest);
    hex.truncate(VETH_HASH_DIGITS);
    hex
}

/// A pod's host veth name: `prefix` (`vethPrefix`, "eni" by default) + [`veth_suffix`].
pub fn host_veth_name(prefix: &str, namespace: &str, name: &str) -> String {
    format!("{prefix}{}", veth_suffix(namespace, name))
}

/// Rule 512 `to <pod ip> lookup main`: traffic to the pod uses the main table, where its host
/// veth route is, whatever rule 1536 says about traffic from it.
pub fn to_pod_rule(ip: impl Into<IpAddr>) -> RuleSpec {
    RuleSpec {
        priority: TO_POD_RULE_PRIORITY,
        src: None,
        dst: Some(IpNet::from(ip.into())),
        fwmark: None,
        table: MAIN_TABLE,
    }
}

/// Rule 1536 `from <pod ip> lookup <table>`: a pod on a secondary ENI leaves through that ENI.
pub fn from_pod_rule(ip: impl Into<IpAddr>, table: u32) -> RuleSpec {
    RuleSpec {
        priority: FROM_POD_RULE_PRIORITY,
        src: Some(IpNet::from(ip.into())),
        dst: None,
        fwmark: None,
        table,
    }
}

/// Rule 32765 `from <ENI primary ip> lookup <table>`: the ENI's own address answers through it.
pub fn from_eni_primary_rule(ip: impl Into<IpAddr>, table: u32) -> RuleSpec {
    RuleSpec {
        priority: FROM_ENI_PRIMARY_IP_RULE_PRIORITY,
        src: Some(IpNet::from(ip.into())),
        dst: None,
        fwmark: None,
        table,
    }
}

/// A pod's policy rules, to delete by value: 512 `to <ip>` and 1536 `from <ip>`, whatever
/// their table (the plugin's DEL and GC, ipamd's clean-up of pods that are gone).
pub fn pod_rules(ip: impl Into<IpAddr>) -> [RuleSelector; 2] {
    let ip = ip.into();
    [
        RuleSelector {
            priority: TO_POD_RULE_PRIORITY,
            src: None,
            dst: Some(ip),
        },
        RuleSelector {
            priority: FROM_POD_RULE_PRIORITY,
            src: Some(ip),
            dst: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_name_is_prefix_plus_11_hex_of_sha1() {
        // `printf 'default.web-0' | sha1sum` = 0d7763386da219ddff1faed1cc6576fb9d57d419
        assert_eq!(veth_suffix("default", "web-0"), "0d7763386da");
        assert_eq!(host_veth_name("eni", "default", "web-0"), "eni0d7763386da");
        // `printf 'kube-system.coredns-abc' | sha1sum` = 3d5d6ab04b5152ac04d8...
        assert_eq!(
            host_veth_name("vlan", "kube-system", "coredns-abc"),
            "vlan3d5d6ab04b5"
        );
        assert_ne!(
            veth_suffix("default", "web-0"),
            veth_suffix("default", "web-1")
        );
    }

    #[test]
    fn pod_rules_read_as_ip_rule_writes_them() {
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        assert_eq!(
            to_pod_rule(ip).to_string(),
            "priority 512 to 10.0.0.5 lookup 254"
        );
        assert_eq!(
            from_pod_rule(ip, 3).to_string(),
            "priority 1536 from 10.0.0.5 lookup 3"
        );
        assert_eq!(
            from_eni_primary_rule(ip, 2).to_string(),
            "priority 32765 from 10.0.0.5 lookup 2"
        );
        let [to, from] = pod_rules(ip);
        assert_eq!(to.to_string(), "priority 512 to 10.0.0.5");
        assert_eq!(from.to_string(), "priority 1536 from 10.0.0.5");
    }

    #[test]
    fn ipv6_pod_rules_read_as_ip_6_rule_writes_them() {
        let ip: Ipv6Addr = "2600:1f14:abc:de01:9f3c::5"
            .parse()
            .unwrap_or(Ipv6Addr::LOCALHOST);
        let to = to_pod_rule(ip);
        assert_eq!(to.family(), Family::V6);
        assert_eq!(to.dst.map(|d| d.prefix_len()), Some(128));
        assert_eq!(
            to.to_string(),
            "priority 512 to 2600:1f14:abc:de01:9f3c::5 lookup 254"
        );
        assert_eq!(
            from_pod_rule(ip, 2).to_string(),
            "priority 1536 from 2600:1f14:abc:de01:9f3c::5 lookup 2"
        );
        let [to, from] = pod_rules(ip);
        assert_eq!((to.family(), from.family()), (Family::V6, Family::V6));
        assert_eq!(to.to_string(), "priority 512 to 2600:1f14:abc:de01:9f3c::5");
        assert_eq!(
            from.to_string(),
            "priority 1536 from 2600:1f14:abc:de01:9f3c::5"
        );
        // An IPv4 pod's rules stay in the IPv4 family, /32.
        let v4 = to_pod_rule(Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(v4.family(), Family::V4);
        assert_eq!(v4.dst.map(|d| d.prefix_len()), Some(32));
    }

    #[test]
    fn each_family_has_its_link_local_gateway() {
        assert_eq!(pod_gateway(Family::V4).to_string(), "169.254.1.1");
        assert_eq!(pod_gateway(Family::V6).to_string(), "fe80::1");
        assert_eq!(Family::of(pod_gateway(Family::V6)), Family::V6);
        assert_eq!(Family::V4.host_prefix_len(), 32);
        assert_eq!(Family::V6.host_prefix_len(), 128);
    }

    #[test]
    fn the_primary_eni_routes_through_main_and_the_others_through_device_plus_one() {
        assert_eq!(route_table_for_device(0), MAIN_TABLE);
        assert_eq!(route_table_for_device(1), 2);
        assert_eq!(route_table_for_device(14), 15);
    }
}
