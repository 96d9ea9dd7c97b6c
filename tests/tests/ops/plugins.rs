//! The upstream CNI plugins the image ships next to `aws-cni`, as the reference's init image
//! does: every plugin a conflist ipamd can write chains (whatever `ipamd::conflist::render`
//! produces for each combination of the chaining variables), plus `loopback`, which containerd
//! runs for every pod and requires in the CNI bin dir. They come from Debian's
//! `containernetworking-plugins` (`/usr/lib/cni`): `make image-binaries` stages them, the
//! Dockerfile's build stage installs the package, `ipamd install-cni` requires and copies them.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};

use ipamd::install::{EGRESS_PLUGIN, OWN_PLUGINS, PLUGIN, SHIPPED_PLUGINS};
use serde_json::Value;

use super::{describe, read, workspace};

/// The variables that decide which plugins the written conflist chains.
const CHAINING_VARIABLES: [&str; 2] = ["DISABLE_POD_V6", "ENABLE_BANDWIDTH_PLUGIN"];

/// Where Debian's containernetworking-plugins installs the plugins.
const SYSTEM_CNI_DIR: &str = test_support::prereqs::SYSTEM_CNI_DIR;

/// The settings of an IPv6 node, whose conflist chains `egress-cni` (`ENABLE_V4_EGRESS`
/// defaults to true there).
const IPV6_NODE: [(&str, &str); 3] = [
    ("ENABLE_IPv6", "true"),
    ("ENABLE_IPv4", "false"),
    ("ENABLE_PREFIX_DELEGATION", "true"),
];

/// Every `type` of every conflist ipamd can write (all combinations of the chaining
/// variables, in IPv4 and in IPv6 mode), plus `loopback`.
pub fn plugins_a_node_needs() -> BTreeSet<String> {
    let mut types = BTreeSet::from(["loopback".to_owned()]);
    for combination in 0..1u32 << (CHAINING_VARIABLES.len() + 1) {
        let mut env: HashMap<String, String> =
            HashMap::from([("MY_NODE_NAME".to_owned(), "node-1".to_owned())]);
        if combination & (1 << CHAINING_VARIABLES.len()) != 0 {
            env.extend(IPV6_NODE.map(|(k, v)| (k.to_owned(), v.to_owned())));
        }
        for (bit, var) in CHAINING_VARIABLES.iter().enumerate() {
            let on = combination & (1 << bit) != 0;
            env.insert((*var).to_owned(), on.to_string());
        }
        let config = ipamd::config::Config::from_env(&env)
            .unwrap_or_else(|e| panic!("ipamd refuses {env:?}: {e}"));
        let node_ip = std::net::Ipv4Addr::new(10, 0, 0, 10);
        let conflist: Value =
            serde_json::from_str(&ipamd::conflist::render_for_node(&config, Some(node_ip)))
                .unwrap();
        let plugins = conflist["plugins"].as_array().unwrap();
        assert!(!plugins.is_empty(), "{conflist}");
        for plugin in plugins {
            let kind = plugin["type"]
                .as_str()
                .unwrap_or_else(|| panic!("a plugin without type in {conflist}"));
            types.insert(kind.to_owned());
        }
    }
    assert!(
        types.contains(PLUGIN) && types.contains(EGRESS_PLUGIN) && types.contains("portmap"),
        "{types:?}"
    );
    types
}

/// Copies what the image ships into `dir`: the plugins under test and the system's upstream
/// plugins of [`SHIPPED_PLUGINS`] (`make deps` installs them).
pub fn stage_shipped(dir: &Path) {
    test_support::prereqs::stage_plugins(dir, &SHIPPED_PLUGINS).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `CNI_COMMAND=VERSION` on a plugin binary, as a runtime would, and returns its
/// supported versions.
pub fn plugin_versions(path: &Path) -> Vec<String> {
    let out = Command::new(path)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        describe(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{}: {e}: {}", path.display(), describe(&out)));
    v["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: {v}", path.display()))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn install_cni_requires_every_plugin_a_conflist_can_chain() {
    let shipped: BTreeSet<String> = SHIPPED_PLUGINS.iter().map(|n| (*n).to_owned()).collect();
    let needed = plugins_a_node_needs();
    let unshipped: Vec<&String> = needed.difference(&shipped).collect();
    assert!(
        unshipped.is_empty(),
        "a conflist ipamd writes chains {unshipped:?}, which ipamd::install::SHIPPED_PLUGINS \
         (and so the image) lacks: add them there and to CNI_PLUGINS in the Makefile"
    );
    // The system has them (the e2e tests chain them from there and the image is staged from
    // there), and they are plugins a runtime can call.
    for name in SHIPPED_PLUGINS
        .into_iter()
        .filter(|n| !OWN_PLUGINS.contains(n))
    {
        let path = Path::new(SYSTEM_CNI_DIR).join(name);
        assert!(
            path.is_file(),
            "{} is missing: install containernetworking-plugins (make deps)",
            path.display()
        );
        assert!(
            plugin_versions(&path).contains(&"1.0.0".to_owned()),
            "{name} does not speak the conflist's cniVersion 1.0.0"
        );
    }
}

#[test]
fn image_binaries_stages_the_shipped_plugins_from_debians_package() {
    let out = Command::new("make")
        .args(["-n", "image-binaries"])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    let staged: BTreeSet<String> = plan
        .lines()
        .filter(|l| l.trim_start().starts_with("install ") && l.contains("/cni/bin"))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.strip_prefix(&format!("{SYSTEM_CNI_DIR}/")))
        .map(str::to_owned)
        .collect();
    let upstream: BTreeSet<String> = SHIPPED_PLUGINS
        .iter()
        .filter(|n| !OWN_PLUGINS.contains(n))
        .map(|n| (*n).to_owned())
        .collect();
    assert_eq!(
        staged, upstream,
        "make image-binaries must stage exactly the upstream plugins of SHIPPED_PLUGINS:\n{plan}"
    );
    for own in OWN_PLUGINS {
        assert!(
            plan.contains(&format!("target/image/cni/bin/{own}")),
            "{own} is staged too:\n{plan}"
        );
    }

    // The Dockerfile's build stage has the package, so the same target finds them there.
    let dockerfile = read("Dockerfile");
    let build_stage = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.contains(" AS build"))
        .expect("a build stage");
    let install = build_stage
        .find("containernetworking-plugins")
        .expect("the build stage installs containernetworking-plugins");
    assert!(
        build_stage[..install].contains("apt-get install"),
        "{build_stage}"
    );
    assert!(
        install < build_stage.find("RUN make image-binaries").unwrap(),
        "the package must be installed before make image-binaries runs:\n{build_stage}"
    );
}
