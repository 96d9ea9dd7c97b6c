//! `ipamd install-cni`, the init container's work, run the way the init container runs it: in
//! the node's network namespace, against instance metadata, into a directory standing for the
//! host's /opt/cni/bin. Sysctls change only inside the simulated node.

use std::os::unix::fs::PermissionsExt;

use harness::{NodeOptions, standard_node};
use serde_json::Value;

use super::{describe, ipamd_in, start};

#[test]
fn install_cni_installs_the_plugin_and_sets_the_node_sysctls() {
    let node = start(NodeOptions::new(standard_node(&[1])).without_ipamd());
    let ns = node.ns();
    let plugin = harness::bins::aws_cni().unwrap();
    let image = tempfile::tempdir().unwrap();
    let shipped = image.path().join("cni").join("bin");
    std::fs::create_dir_all(&shipped).unwrap();
    std::fs::copy(&plugin, shipped.join("aws-cni")).unwrap();
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
    let installed = bin_dir.join("aws-cni");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&plugin).unwrap(),
        "the installed plugin is not the shipped one"
    );
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(ns.sysctl_get("net.ipv4.conf.eth0.rp_filter").unwrap(), "2");
    assert_eq!(ns.sysctl_get("net.ipv4.tcp_early_demux").unwrap(), "0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("installed {}", installed.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("net.ipv4.conf.eth0.rp_filter=2"),
        "{stderr}"
    );

    // The installed binary is a working plugin (as a runtime would exec it).
    let version = std::process::Command::new(&installed)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(version.status.success(), "{}", describe(&version));
    let v: Value = serde_json::from_slice(&version.stdout).unwrap();
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "1.0.0"),
        "{v}"
    );

    // Again, with the reference's default: nothing to copy, early demux back on.
    let out = ipamd_in(ns, &["install-cni", "--from", &shipped_s], &env("false"));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("unchanged {}", installed.display())),
        "{}",
        describe(&out)
    );
    assert_eq!(ns.sysctl_get("net.ipv4.tcp_early_demux").unwrap(), "1");
    let names: Vec<_> = std::fs::read_dir(&bin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["aws-cni"], "temp files left behind");
}

#[test]
fn install_cni_refuses_what_this_build_cannot_do() {
    let node = start(NodeOptions::new(standard_node(&[1])).without_ipamd());
    let host = tempfile::tempdir().unwrap();
    let dir = host.path().display().to_string();
    let out = ipamd_in(
        node.ns(),
        &["install-cni", "--from", &dir],
        &[("HOST_CNI_BIN_PATH", dir.as_str()), ("ENABLE_IPv6", "true")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsupported ENABLE_IPv6=\"true\""),
        "{}",
        describe(&out)
    );
    // A plugins directory without aws-cni is an error naming it; nothing is installed.
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
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("{empty_s} has no aws-cni binary to install")),
        "{}",
        describe(&out)
    );
    assert!(!target.exists());
}
