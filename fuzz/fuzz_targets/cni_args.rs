//! The plugin's environment parser: `CNI_ARGS` alone, and the whole `CNI_*` set read through a
//! lookup built from the input (one `KEY=VALUE` per line). Every outcome is a parsed
//! environment or a code-4 error naming a variable.

#![no_main]
#![allow(dead_code, unused_imports, clippy::all)]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

#[path = "../../cni-plugin/src/cni/mod.rs"]
mod cni;

use cni::env::{CniArgs, CniEnv};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match CniArgs::parse(&text) {
        Ok(args) => {
            for v in [
                &args.pod_name,
                &args.pod_namespace,
                &args.infra_container_id,
                &args.pod_uid,
            ]
            .into_iter()
            .flatten()
            {
                assert!(v.len() <= 253 && !v.chars().any(char::is_control));
            }
        }
        Err(e) => assert_eq!(e.cni_code(), 4),
    }
    let vars: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match CniEnv::from_lookup(|k| vars.get(k).cloned()) {
        Ok(env) => {
            if let Some(a) = env.attachment {
                assert!(!a.container_id.is_empty() && !a.ifname.is_empty());
                assert!(a.ifname.len() <= 15);
            }
        }
        Err(e) => {
            assert_eq!(e.cni_code(), 4);
            assert!(e.to_string().contains("CNI_"), "{e}");
        }
    }
});
