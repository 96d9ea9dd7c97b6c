//! `ipamd install-cni`, the init container's work, run the way the init container runs it: in
//! the node's network namespace, against instance metadata, from a directory holding what the
//! image ships (`aws-cni`, `egress-cni` and Debian's upstream plugins) into a directory standing for the
//! host's /opt/cni/bin. Sysctls change only inside the simulated node.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use harness::{NodeOptions, standard_node};
use ipamd::install::SHIPPED_PLUGINS;

use super::plugins::{plugin_versions, plugins_a_node_needs, stage_shipped};
use super::{describe, ipamd_in, start};

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn install_cni_installs_the_plugins_and_sets_the_node_sysctls() {
    let node = start(NodeOptions::new(standard_node(&[1])).without_ipamd());
    let ns = node.ns();
    let plugin = test_support::prereqs::aws_cni().unwrap();
    let image = tempfile::tempdir().unwrap();
    let shipped = image.path().join("cni").join("bin");
    stage_shipped(&shipped);
    let host = tempfile::tempdir().unwrap();
    let bin_dir = host.path().join("opt").join("cni").join("bin");
    let bin_dir_s = bin_dir.display().to_string();
    let shipped_s = shipped.display().to_string();

    ns.sysctl("net.ipv4.conf.eth0.rp_filter", "1").unwrap();
    ns.sysctl("net.ipv4.tcp_early_demux", "1").unwrap();
    let env = |demux: &'static str| {
        vec![
            ("HOST_CNI_BIN_PATH", bin_dir_s.as_str()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", node.imds_endpoint()),
            ("DISABLE_TCP_EARLY_DEMUX", demux),
        ]
    };
    let out = ipamd_in(ns, &["install-cni", "--from", &shipped_s], &env("true"));
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every shipped binary, byte for byte, executable, and one a runtime can run: in
    // particular every plugin a conflist ipamd writes chains, and loopback.
    let mut shipped_names: Vec<String> = SHIPPED_PLUGINS.iter().map(|n| (*n).to_owned()).collect();
    shipped_names.sort();
    assert_eq!(names_in(&bin_dir), shipped_names, "temp files left behind");
    for name in SHIPPED_PLUGINS {
        let path = bin_dir.join(name);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(shipped.join(name)).unwrap(),
            "the installed {name} is not the shipped one"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755,
            "{name}"
        );
        assert!(
            stderr.contains(&format!("installed {}", path.display())),
            "{stderr}"
        );
        assert!(
            plugin_versions(&path).contains(&"1.0.0".to_owned()),
            "the installed {name} does not run"
        );
    }
    for needed in plugins_a_node_needs() {
        assert!(bin_dir.join(&needed).is_file(), "{needed} not installed");
    }
    let installed = bin_dir.join("aws-cni");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&plugin).unwrap(),
        "the installed plugin is not the shipped one"
    );
    assert_eq!(ns.sysctl_get("net.ipv4.conf.eth0.rp_filter").unwrap(), "2");
    assert_eq!(ns.sysctl_get("net.ipv4.tcp_early_demux").unwrap(), "0");
    assert!(
        stderr.contains("net.ipv4.conf.eth0.rp_filter=2"),
        "{stderr}"
    );

    // Again, with the reference's default: nothing to copy, early demux back on.
    let out = ipamd_in(ns, &["install-cni", "--from", &shipped_s], &env("false"));
    assert!(out.status.success(), "{}", describe(&out));
    for name in SHIPPED_PLUGINS {
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains(&format!("unchanged {}", bin_dir.join(name).display())),
            "{name}: {}",
            describe(&out)
        );
    }
    assert_eq!(ns.sysctl_get("net.ipv4.tcp_early_demux").unwrap(), "1");

    // ENABLE_IPv6=true: IPv6 on, forwarding, and router advertisements still accepted on the
    // primary interface, as the reference's init container sets them.
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "0").unwrap();
    ns.sysctl("net.ipv6.conf.eth0.accept_ra", "1").unwrap();
    let mut v6_env = env("false");
    v6_env.push(("ENABLE_IPv6", "true"));
    let out = ipamd_in(ns, &["install-cni", "--from", &shipped_s], &v6_env);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        ns.sysctl_get("net.ipv6.conf.all.disable_ipv6").unwrap(),
        "0"
    );
    assert_eq!(ns.sysctl_get("net.ipv6.conf.all.forwarding").unwrap(), "1");
    assert_eq!(ns.sysctl_get("net.ipv6.conf.eth0.accept_ra").unwrap(), "2");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("net.ipv6.conf.eth0.accept_ra=2"),
        "{}",
        describe(&out)
    );

    // A new image with another portmap: the installed file is replaced by rename (a new inode),
    // so a runtime that opened the old one at that moment still reads the old binary whole.
    let portmap = bin_dir.join("portmap");
    let mut old = std::fs::File::open(&portmap).unwrap();
    let old_inode = old.metadata().unwrap().ino();
    let old_bytes = std::fs::read(&portmap).unwrap();
    let mut new_bytes = old_bytes.clone();
    new_bytes.extend_from_slice(b"\0image v2");
    std::fs::write(shipped.join("portmap"), &new_bytes).unwrap();
    let out = ipamd_in(ns, &["install-cni", "--from", &shipped_s], &env("false"));
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("installed {}", portmap.display()))
            && stderr.contains(&format!("unchanged {}", installed.display())),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&portmap).unwrap(), new_bytes);
    assert_ne!(
        std::fs::metadata(&portmap).unwrap().ino(),
        old_inode,
        "portmap was rewritten in place"
    );
    let mut held = Vec::new();
    old.read_to_end(&mut held).unwrap();
    assert_eq!(held, old_bytes, "the old binary changed under its reader");
    assert!(plugin_versions(&portmap).contains(&"1.0.0".to_owned()));
    assert_eq!(names_in(&bin_dir), shipped_names, "temp files left behind");
}

#[test]
fn install_cni_refuses_what_this_build_cannot_do() {
    let node = start(NodeOptions::new(standard_node(&[1])).without_ipamd());
    let host = tempfile::tempdir().unwrap();
    let dir = host.path().display().to_string();
    let out = ipamd_in(
        node.ns(),
        &["install-cni", "--from", &dir],
        &[
            ("HOST_CNI_BIN_PATH", dir.as_str()),
            ("ENABLE_V6_EGRESS", "true"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsupported ENABLE_V6_EGRESS=\"true\""),
        "{}",
        describe(&out)
    );
    // A plugins directory without the shipped binaries is an error naming them; nothing is
    // installed.
    let empty = tempfile::tempdir().unwrap();
    let empty_s = empty.path().display().to_string();
    let target = host.path().join("bin");
    let target_s = target.display().to_string();
    let out = ipamd_in(
        node.ns(),
        &["install-cni", "--from", &empty_s],
        &[("HOST_CNI_BIN_PATH", target_s.as_str())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "{empty_s} has no aws-cni, bandwidth, egress-cni, host-local, loopback, portmap, tuning binary to install"
        )),
        "{}",
        describe(&out)
    );
    assert!(!target.exists());
    // An image missing one upstream plugin (here loopback, which containerd requires) fails
    // the init container instead of leaving a node where pods cannot start.
    let partial = tempfile::tempdir().unwrap();
    stage_shipped(partial.path());
    std::fs::remove_file(partial.path().join("loopback")).unwrap();
    let partial_s = partial.path().display().to_string();
    let out = ipamd_in(
        node.ns(),
        &["install-cni", "--from", &partial_s],
        &[("HOST_CNI_BIN_PATH", target_s.as_str())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("{partial_s} has no loopback binary to install")),
        "{}",
        describe(&out)
    );
    assert!(!target.exists());
}
