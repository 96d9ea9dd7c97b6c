//! The plugin's request parser: stdin (bounded read, NUL check, JSON object), every config key
//! of the contract, `prevResult` and GC's attachment lists. Whatever the bytes, it returns a
//! config or an error with a spec code whose reply JSON serializes; an accepted config renders
//! an ADD result (with its prevResult) in its version.

#![no_main]
#![allow(dead_code, unused_imports, clippy::all)]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;

#[path = "../../cni-plugin/src/cni/mod.rs"]
mod cni;

use cni::config::{NetConf, peek_version, read_request};
use cni::result::AddResult;
use cni::version::CniVersion;

const SPEC_CODES: [u32; 15] = [1, 3, 4, 5, 6, 7, 11, 50, 100, 101, 110, 120, 121, 130, 140];

fuzz_target!(|data: &[u8]| {
    let bytes = match read_request(data) {
        Ok(b) => b,
        Err(e) => {
            assert_eq!(e.cni_code(), 5);
            return;
        }
    };
    let version = peek_version(&bytes)
        .and_then(|v| CniVersion::parse(&v))
        .unwrap_or(CniVersion::LATEST);
    match NetConf::parse(&bytes) {
        Ok(conf) => {
            assert!((576..=9001).contains(&conf.mtu), "mtu {}", conf.mtu);
            assert!(!conf.veth_prefix.is_empty() && conf.veth_prefix.len() <= 4);
            let _ = conf.network_name();
            if let Some(prev) = &conf.prev_result {
                let _ = prev.pod_ips("eth0");
                let _ = prev.host_interface_names().count();
            }
            let result = AddResult {
                host_veth: format!("{}0123456789a", conf.veth_prefix),
                host_mac: "02:00:00:00:00:01".into(),
                ifname: "eth0".into(),
                container_mac: "02:00:00:00:00:02".into(),
                netns: "/run/netns/x".into(),
                mtu: conf.mtu,
                ip: Ipv4Addr::new(10, 0, 0, 11).into(),
                gateway: Ipv4Addr::new(169, 254, 1, 1).into(),
            };
            let rendered = result.render(conf.cni_version, conf.prev_result.as_ref());
            assert!(serde_json::to_string(&rendered).is_ok());
        }
        Err(e) => {
            assert!(SPEC_CODES.contains(&e.cni_code()), "code {}", e.cni_code());
            let reply = e.to_reply(version);
            assert!(!reply.msg.is_empty());
            assert!(serde_json::to_string(&reply).is_ok());
        }
    }
});
