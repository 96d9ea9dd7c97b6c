//! egress-cni's result: `prevResult` passed through in the request's `cniVersion`, with the
//! egress veth's two interfaces appended on ADD. The egress address is not added to `ips` (the
//! reference copies "interfaces over to result, but not IPs"): the pod's addresses stay the ones
//! the cluster knows.

use serde_json::{Map, Value, json};

use crate::cni::result::adapt_ip;
use crate::cni::version::CniVersion;

/// One interface the plugin made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MadeInterface {
    /// Name.
    pub name: String,
    /// MAC, `aa:bb:..`.
    pub mac: String,
    /// `CNI_NETNS` for the pod end; `None` for the host end.
    pub sandbox: Option<String>,
    /// MTU (shown from 1.1.0 on).
    pub mtu: u32,
}

/// `prev` in `version` with `appended` added to its `interfaces`.
pub fn render(prev: &Value, version: CniVersion, appended: &[MadeInterface]) -> Value {
    let mut out: Map<String, Value> = prev.as_object().cloned().unwrap_or_default();
    out.insert("cniVersion".into(), json!(version.as_str()));

    let mut interfaces: Vec<Value> = list(&out, "interfaces")
        .into_iter()
        .map(|mut i| {
            if !version.interface_has_mtu()
                && let Some(o) = i.as_object_mut()
            {
                for k in ["mtu", "socketPath", "pciID"] {
                    o.remove(k);
                }
            }
            i
        })
        .collect();
    for made in appended {
        let mut i = json!({"name": made.name, "mac": made.mac});
        if let Some(s) = &made.sandbox {
            i["sandbox"] = json!(s);
        }
        if version.interface_has_mtu() {
            i["mtu"] = json!(made.mtu);
        }
        interfaces.push(i);
    }
    if !interfaces.is_empty() {
        out.insert("interfaces".into(), Value::Array(interfaces));
    }

    if out.contains_key("ips") {
        let ips: Vec<Value> = list(&out, "ips")
            .into_iter()
            .map(|ip| adapt_ip(ip, version))
            .collect();
        out.insert("ips".into(), Value::Array(ips));
    }

    if out.contains_key("routes") && !version.has_gc_and_status() {
        let routes: Vec<Value> = list(&out, "routes")
            .into_iter()
            .map(|mut r| {
                if let Some(o) = r.as_object_mut() {
                    for k in ["mtu", "advmss", "priority", "table", "scope"] {
                        o.remove(k);
                    }
                }
                r
            })
            .collect();
        out.insert("routes".into(), Value::Array(routes));
    }
    Value::Object(out)
}

fn list(map: &Map<String, Value>, key: &str) -> Vec<Value> {
    map.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "eni1a2b3c4d5e6", "mac": "02:00:00:00:00:01"},
                {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/p"}
            ],
            "ips": [{"address": "2001:db8::2/128", "interface": 1, "gateway": "fe80::1"}],
            "routes": [{"dst": "::/0", "gw": "fe80::1"}],
            "dns": {}
        })
    }

    fn made() -> Vec<MadeInterface> {
        vec![
            MadeInterface {
                name: "veth0a1b2c3d".into(),
                mac: "02:aa:00:00:00:01".into(),
                sandbox: None,
                mtu: 9001,
            },
            MadeInterface {
                name: "v4if0".into(),
                mac: "02:aa:00:00:00:02".into(),
                sandbox: Some("/run/netns/p".into()),
                mtu: 9001,
            },
        ]
    }

    #[test]
    fn interfaces_are_appended_and_ips_left_alone() {
        let out = render(&prev(), CniVersion::V1_0_0, &made());
        let mut want = prev();
        want["interfaces"]
            .as_array_mut()
            .map(|a| {
                a.push(json!({"name": "veth0a1b2c3d", "mac": "02:aa:00:00:00:01"}));
                a.push(
                    json!({"name": "v4if0", "mac": "02:aa:00:00:00:02", "sandbox": "/run/netns/p"}),
                );
            })
            .unwrap_or_default();
        assert_eq!(out, want);
    }

    #[test]
    fn pass_through_is_the_prev_result_in_the_requests_version() {
        assert_eq!(render(&prev(), CniVersion::V1_0_0, &[]), prev());
        let old = render(&prev(), CniVersion::V0_4_0, &[]);
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "6");
        let back = render(&old, CniVersion::V1_0_0, &[]);
        assert_eq!(back, prev());
    }

    #[test]
    fn v1_1_0_shows_the_mtu() {
        let out = render(&prev(), CniVersion::V1_1_0, &made());
        assert_eq!(out["interfaces"][3]["mtu"], 9001);
        assert_eq!(out["interfaces"][3]["sandbox"], "/run/netns/p");
        assert!(out["interfaces"][2].get("sandbox").is_none());
    }
}
