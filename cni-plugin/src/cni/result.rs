//! CNI results: rendering the ADD result in the request's version, and reading a cached result
//! (`prevResult`) loosely, whatever supported version it was written in.
//!
//! 0.3.0, 0.3.1 and 0.4.0 share one result format (`ips[].version` required, no `mtu` on
//! interfaces, routes of `dst` and `gw` only); 1.0.0 drops `ips[].version`; 1.1.0 adds
//! `interfaces[].mtu` and more route keys. An IPv6 pod's result is the IPv4 one in its family:
//! `<ip>/128`, `version` "6" where the format has it, gateway and default route `fe80::1`.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::version::CniVersion;

/// What ADD made, in the terms of a CNI result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddResult {
    /// Host end of the veth.
    pub host_veth: String,
    /// Its MAC, `aa:bb:..`.
    pub host_mac: String,
    /// Container end (`CNI_IFNAME`).
    pub ifname: String,
    /// Its MAC.
    pub container_mac: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// The pod's address (a /32, or a /128 for an IPv6 pod).
    pub ip: IpAddr,
    /// The gateway the pod routes through (the data plane's link-local 169.254.1.1 or fe80::1;
    /// this module only renders it).
    pub gateway: IpAddr,
}

impl AddResult {
    /// Renders the result in `version`. A `prev` result (from an earlier plugin of the chain) is
    /// kept and this plugin's interfaces, addresses and routes are appended to it.
    pub fn render(&self, version: CniVersion, prev: Option<&PrevResult>) -> Value {
        let mut interfaces: Vec<Value> = Vec::new();
        let mut ips: Vec<Value> = Vec::new();
        let mut routes: Vec<Value> = Vec::new();
        let mut dns = json!({});
        if let Some(p) = prev {
            interfaces.extend(
                p.list("interfaces")
                    .into_iter()
                    .map(|i| downgrade_interface(i, version)),
            );
            ips.extend(p.list("ips").into_iter().map(|i| adapt_ip(i, version)));
            routes.extend(
                p.list("routes")
                    .into_iter()
                    .map(|r| downgrade_route(r, version)),
            );
            if let Some(d @ Value::Object(_)) = p.raw.get("dns") {
                dns = d.clone();
            }
        }
        let base = interfaces.len();

        let mut host = json!({"name": self.host_veth, "mac": self.host_mac});
        let mut container = json!({
            "name": self.ifname, "mac": self.container_mac, "sandbox": self.netns,
        });
        if version.interface_has_mtu() {
            host["mtu"] = json!(self.mtu);
            container["mtu"] = json!(self.mtu);
        }
        interfaces.push(host);
        interfaces.push(container);

        let (host_len, family, default_dst) = match self.ip {
            IpAddr::V4(_) => (32, "4", "0.0.0.0/0"),
            IpAddr::V6(_) => (128, "6", "::/0"),
        };
        let mut ip = json!({
            "address": format!("{}/{host_len}", self.ip),
            "interface": base + 1,
            "gateway": self.gateway.to_string(),
        });
        if version.ip_has_version_field() {
            ip["version"] = json!(family);
        }
        ips.push(ip);
        routes.push(json!({"dst": default_dst, "gw": self.gateway.to_string()}));

        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": dns,
        })
    }
}

fn downgrade_interface(mut v: Value, version: CniVersion) -> Value {
    if !version.interface_has_mtu()
        && let Some(o) = v.as_object_mut()
    {
        for k in ["mtu", "socketPath", "pciID"] {
            o.remove(k);
        }
    }
    v
}

fn downgrade_route(mut v: Value, version: CniVersion) -> Value {
    if !version.has_gc_and_status()
        && let Some(o) = v.as_object_mut()
    {
        for k in ["mtu", "advmss", "priority", "table", "scope"] {
            o.remove(k);
        }
    }
    v
}

/// One `ips[]` entry for `version`: `version` (4 or 6, from the address) only where the spec
/// has it.
pub(crate) fn adapt_ip(mut v: Value, version: CniVersion) -> Value {
    if let Some(o) = v.as_object_mut() {
        if version.ip_has_version_field() {
            if !o.contains_key("version") {
                let family = o
                    .get("address")
                    .and_then(Value::as_str)
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .map(|a| if a.is_ipv4() { "4" } else { "6" });
                if let Some(f) = family {
                    o.insert("version".into(), json!(f));
                }
            }
        } else {
            o.remove("version");
        }
    }
    v
}

/// One interface of a cached result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrevInterface {
    /// `name`.
    pub name: String,
    /// `mac`, if present.
    pub mac: Option<String>,
    /// `sandbox`; `None` (or empty) for host interfaces.
    pub sandbox: Option<String>,
}

/// One address of a cached result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrevIp {
    /// The address part of `address` (IPv4 or IPv6).
    pub address: IpAddr,
    /// `interface` (index into `interfaces`), if present.
    pub interface: Option<usize>,
}

/// A cached result, read loosely: entries that do not parse are skipped, never fatal, because
/// DEL must work with whatever the runtime kept.
#[derive(Clone, Debug, PartialEq)]
pub struct PrevResult {
    /// The interfaces that have a `name`.
    pub interfaces: Vec<PrevInterface>,
    /// The addresses that parse.
    pub ips: Vec<PrevIp>,
    raw: Value,
}

impl PrevResult {
    /// Reads a `prevResult` object.
    pub fn from_value(v: &Value) -> Self {
        let interfaces = v
            .get("interfaces")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|i| PrevInterface {
                        name: i
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        mac: i.get("mac").and_then(Value::as_str).map(str::to_string),
                        sandbox: i
                            .get("sandbox")
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ips = v
            .get("ips")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|i| {
                        let addr = i.get("address")?.as_str()?;
                        let address = addr.split('/').next()?.parse::<IpAddr>().ok()?;
                        let interface = i
                            .get("interface")
                            .and_then(Value::as_u64)
                            .and_then(|n| usize::try_from(n).ok());
                        Some(PrevIp { address, interface })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            interfaces,
            ips,
            raw: v.clone(),
        }
    }

    fn list(&self, key: &str) -> Vec<Value> {
        self.raw
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The addresses (IPv4 or IPv6) of the container interface `ifname`. Addresses without an
    /// `interface` index are counted when no address names an interface at all (abbreviated
    /// results).
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let indexed = self.ips.iter().any(|ip| ip.interface.is_some());
        let mut out: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(idx) => self
                    .interfaces
                    .get(idx)
                    .is_some_and(|i| i.name == ifname && i.sandbox.is_some()),
                None => !indexed,
            })
            .map(|ip| ip.address)
            .collect();
        out.dedup();
        out
    }

    /// The interface entry of the container interface `ifname`.
    pub fn container_interface(&self, ifname: &str) -> Option<&PrevInterface> {
        self.interfaces
            .iter()
            .find(|i| i.name == ifname && i.sandbox.is_some())
    }

    /// The host-side interfaces (no `sandbox`) that have a name.
    pub fn host_interfaces(&self) -> impl Iterator<Item = &PrevInterface> {
        self.interfaces
            .iter()
            .filter(|i| i.sandbox.is_none() && !i.name.is_empty())
    }

    /// Names of the host-side interfaces (no `sandbox`).
    pub fn host_interface_names(&self) -> impl Iterator<Item = &str> {
        self.host_interfaces().map(|i| i.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddResult {
        AddResult {
            host_veth: "eni0123456789a".into(),
            host_mac: "02:11:22:33:44:55".into(),
            ifname: "eth0".into(),
            container_mac: "02:aa:bb:cc:dd:ee".into(),
            netns: "/run/netns/p1".into(),
            mtu: 9001,
            ip: IpAddr::from([10, 0, 2, 20]),
            gateway: IpAddr::from([169, 254, 1, 1]),
        }
    }

    /// An IPv6 pod's result (IPv6 cluster): a /128 of the node's /80 and gateway fe80::1.
    fn sample_v6() -> AddResult {
        AddResult {
            ip: "2600:1f14:abc:de01:9f3c::5"
                .parse()
                .unwrap_or(IpAddr::from([0; 16])),
            gateway: "fe80::1".parse().unwrap_or(IpAddr::from([0; 16])),
            ..sample()
        }
    }

    #[test]
    fn ipv6_results_carry_the_128_and_version_6_where_the_format_has_it() {
        for version in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            assert_eq!(
                sample_v6().render(version, None),
                json!({
                    "cniVersion": version.as_str(),
                    "interfaces": [
                        {"name": "eni0123456789a", "mac": "02:11:22:33:44:55"},
                        {"name": "eth0", "mac": "02:aa:bb:cc:dd:ee", "sandbox": "/run/netns/p1"}
                    ],
                    "ips": [{
                        "version": "6", "address": "2600:1f14:abc:de01:9f3c::5/128",
                        "gateway": "fe80::1", "interface": 1
                    }],
                    "routes": [{"dst": "::/0", "gw": "fe80::1"}],
                    "dns": {}
                }),
                "{version}"
            );
        }
        assert_eq!(
            sample_v6().render(CniVersion::V1_0_0, None),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "eni0123456789a", "mac": "02:11:22:33:44:55"},
                    {"name": "eth0", "mac": "02:aa:bb:cc:dd:ee", "sandbox": "/run/netns/p1"}
                ],
                "ips": [{"address": "2600:1f14:abc:de01:9f3c::5/128", "interface": 1,
                         "gateway": "fe80::1"}],
                "routes": [{"dst": "::/0", "gw": "fe80::1"}],
                "dns": {}
            })
        );
        let v = sample_v6().render(CniVersion::V1_1_0, None);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["interfaces"][1]["mtu"], 9001);
    }

    #[test]
    fn an_ipv6_prev_result_yields_the_pod_address_in_every_version() {
        for version in ["0.4.0", "1.0.0", "1.1.0"] {
            let cached = sample_v6().render(
                CniVersion::parse(version).unwrap_or(CniVersion::LATEST),
                None,
            );
            let p = PrevResult::from_value(&cached);
            assert_eq!(
                p.pod_ips("eth0")
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                vec!["2600:1f14:abc:de01:9f3c::5"],
                "{version}"
            );
        }
    }

    #[test]
    fn render_1_0_0() {
        let v = sample().render(CniVersion::V1_0_0, None);
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "eni0123456789a", "mac": "02:11:22:33:44:55"},
                    {"name": "eth0", "mac": "02:aa:bb:cc:dd:ee", "sandbox": "/run/netns/p1"}
                ],
                "ips": [{"address": "10.0.2.20/32", "interface": 1, "gateway": "169.254.1.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn render_0_3_x_is_the_0_3_result_format() {
        for version in [CniVersion::V0_3_0, CniVersion::V0_3_1] {
            let v = sample().render(version, None);
            assert_eq!(
                v,
                json!({
                    "cniVersion": version.as_str(),
                    "interfaces": [
                        {"name": "eni0123456789a", "mac": "02:11:22:33:44:55"},
                        {"name": "eth0", "mac": "02:aa:bb:cc:dd:ee", "sandbox": "/run/netns/p1"}
                    ],
                    "ips": [{
                        "version": "4", "address": "10.0.2.20/32", "gateway": "169.254.1.1",
                        "interface": 1
                    }],
                    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                    "dns": {}
                }),
                "{version}"
            );
        }
    }

    #[test]
    fn render_0_3_1_appends_to_a_0_3_1_previous_result() {
        // A plugin before this one in a 0.3.1 chain (e.g. an IPAM-only result without
        // interface indices) and one with a 1.1.0-only route key the runtime left in.
        let prev = PrevResult::from_value(&json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "lo", "sandbox": "/run/netns/p1"}],
            "ips": [{"version": "4", "address": "192.168.0.2/24", "gateway": "192.168.0.1",
                     "interface": 0},
                    {"address": "fd00::2/64"}],
            "routes": [{"dst": "192.168.0.0/16"}, {"dst": "10.9.0.0/16", "table": 5}],
            "dns": {"nameservers": ["10.0.0.2"], "search": ["svc.local"]}
        }));
        let v = sample().render(CniVersion::V0_3_1, Some(&prev));
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["interfaces"].as_array().map(Vec::len), Some(3));
        assert_eq!(v["interfaces"][2]["name"], "eth0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(
            v["ips"][1],
            json!({"version": "6", "address": "fd00::2/64"})
        );
        assert_eq!(
            v["ips"][2],
            json!({"version": "4", "address": "10.0.2.20/32", "gateway": "169.254.1.1",
                   "interface": 2})
        );
        assert_eq!(v["routes"][1], json!({"dst": "10.9.0.0/16"}));
        assert_eq!(
            v["routes"][2],
            json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
        );
        assert_eq!(v["dns"]["search"][0], "svc.local");
    }

    #[test]
    fn render_0_4_0_has_ip_version() {
        let v = sample().render(CniVersion::V0_4_0, None);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn render_1_1_0_has_interface_mtu() {
        let v = sample().render(CniVersion::V1_1_0, None);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 9001);
        assert_eq!(v["interfaces"][1]["mtu"], 9001);
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn render_appends_to_a_previous_result() {
        let prev = PrevResult::from_value(&json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "lo0", "sandbox": "/run/netns/p1", "mtu": 65536}],
            "ips": [{"version": "4", "address": "192.168.0.2/24", "interface": 0}],
            "routes": [{"dst": "192.168.0.0/16", "table": 5}],
            "dns": {"nameservers": ["10.0.0.2"]}
        }));
        let v = sample().render(CniVersion::V1_0_0, Some(&prev));
        assert_eq!(v["interfaces"].as_array().map(Vec::len), Some(3));
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["ips"][1]["interface"], 2);
        assert!(v["routes"][0].get("table").is_none());
        assert_eq!(v["dns"]["nameservers"][0], "10.0.0.2");
    }

    #[test]
    fn prev_result_of_any_version_yields_the_pod_ip_and_host_veth() {
        for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let cached = sample().render(
                CniVersion::parse(version).unwrap_or(CniVersion::LATEST),
                None,
            );
            let p = PrevResult::from_value(&cached);
            assert_eq!(
                p.pod_ips("eth0"),
                vec![IpAddr::from([10, 0, 2, 20])],
                "{version}"
            );
            assert_eq!(p.pod_ips("eth1"), Vec::<IpAddr>::new());
            assert_eq!(
                p.host_interface_names().collect::<Vec<_>>(),
                vec!["eni0123456789a"]
            );
            assert_eq!(
                p.container_interface("eth0")
                    .and_then(|i| i.mac.clone())
                    .as_deref(),
                Some("02:aa:bb:cc:dd:ee")
            );
        }
    }

    #[test]
    fn prev_result_is_read_loosely() {
        let p = PrevResult::from_value(&json!({
            "interfaces": "garbage",
            "ips": [{"address": "not-an-ip"}, {"address": "fd00::1/128"}, {"address": "10.1.1.1/32"}, 5]
        }));
        assert!(p.interfaces.is_empty());
        assert_eq!(
            p.pod_ips("eth0")
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["fd00::1", "10.1.1.1"]
        );
    }
}
