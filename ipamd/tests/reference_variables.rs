//! Configuration parity with the reference's aws-node: every environment variable of
//! aws/amazon-vpc-cni-k8s v1.23.1 is honoured with the reference's semantics, refused at
//! start-up, or a no-op in the reference too. `docs/reference-variables.tsv` keeps that list as
//! data, and this file holds it to account:
//!
//! - the table: every variable once, spelled as ipamd reads it, a valid status, and for
//!   honoured and no-op variables a proof, a test that exists, is a test and mentions the
//!   variable;
//! - every refused value: the real `ipamd` binary (and `ipamd install-cni` for the variables it
//!   reads) exits non-zero naming the variable and the value, and writes nothing (no conflist,
//!   no socket, no checkpoint, nothing installed);
//! - `docs/configuration.md` shows exactly the table's variables and statuses;
//! - the no-op settings change nothing ipamd does, and are still validated;
//! - the behaviour of the variables no other test shows: the real binary in a throwaway node
//!   namespace, against the test IMDS and, for EC2 mode, a fake EC2 endpoint that records what
//!   it is sent (`AWS_EC2_ENDPOINT`, `VPC_CNI_VERSION`, `MY_POD_NAME`, `HTTP_TIMEOUT`,
//!   `AWS_VPC_K8S_CNI_LOG_FILE`, `AWS_VPC_K8S_CNI_LOGLEVEL`, `DISABLE_LEAKED_ENI_CLEANUP`,
//!   `ENABLE_IMDS_ONLY_MODE`, `DISABLE_NETWORK_RESOURCE_PROVISIONING`, `AWS_VPC_ENI_MTU`,
//!   `AWS_VPC_K8S_CNI_CONNMARK`, `AWS_VPC_K8S_CNI_RANDOMIZESNAT`, `AWS_VPC_K8S_CNI_VETHPREFIX`,
//!   `HOST_CNI_CONFDIR_PATH`, `AWS_VPC_K8S_CNI_BACKING_STORE`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{Ipamd, command};
use common::{World, world};
use ipamd::config::{self as cfg, Config, ConfigError};
use ipamd::install::{DISABLE_TCP_EARLY_DEMUX, HOST_CNI_BIN_PATH, SHIPPED_PLUGINS};
use ipamd::rpc::AddNetworkRequest;
use test_support::ipamd_client::client;
use test_support::netns::Netns;
use test_support::prereqs::require_root;

/// Every variable of the reference's aws-node, as ipamd's constants spell them.
const REFERENCE_VARIABLES: [&str; 59] = [
    cfg::ADDITIONAL_ENI_TAGS,
    cfg::ANNOTATE_POD_IP,
    cfg::AWS_EC2_ENDPOINT,
    cfg::AWS_EXTERNAL_SERVICE_CIDRS,
    cfg::AWS_MANAGE_ENIS_NON_SCHEDULABLE,
    cfg::AWS_VPC_CNI_NODE_PORT_SUPPORT,
    cfg::AWS_VPC_ENI_MTU,
    cfg::AWS_VPC_K8S_CNI_BACKING_STORE,
    cfg::AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER,
    cfg::AWS_VPC_K8S_CNI_CONNMARK,
    cfg::AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG,
    cfg::AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS,
    cfg::AWS_VPC_K8S_CNI_EXTERNALSNAT,
    cfg::AWS_VPC_K8S_CNI_LOGLEVEL,
    cfg::AWS_VPC_K8S_CNI_LOG_FILE,
    cfg::AWS_VPC_K8S_CNI_RANDOMIZESNAT,
    cfg::AWS_VPC_K8S_CNI_VETHPREFIX,
    cfg::AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE,
    cfg::AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE,
    cfg::AWS_VPC_K8S_PLUGIN_LOG_FILE,
    cfg::AWS_VPC_K8S_PLUGIN_LOG_LEVEL,
    cfg::CLUSTER_ENDPOINT,
    cfg::CLUSTER_NAME,
    cfg::DISABLE_INTROSPECTION,
    cfg::DISABLE_LEAKED_ENI_CLEANUP,
    cfg::DISABLE_METRICS,
    cfg::DISABLE_NETWORK_RESOURCE_PROVISIONING,
    cfg::DISABLE_POD_V6,
    DISABLE_TCP_EARLY_DEMUX,
    cfg::ENABLE_BANDWIDTH_PLUGIN,
    cfg::ENABLE_IMDS_ONLY_MODE,
    cfg::ENABLE_IPV4,
    cfg::ENABLE_IPV6,
    cfg::ENABLE_MULTI_NIC,
    cfg::ENABLE_NFTABLES,
    cfg::ENABLE_POD_ENI,
    cfg::ENABLE_PREFIX_DELEGATION,
    cfg::ENABLE_SUBNET_DISCOVERY,
    cfg::ENABLE_V4_EGRESS,
    cfg::ENABLE_V6_EGRESS,
    cfg::ENI_CONFIG_ANNOTATION_DEF,
    cfg::ENI_CONFIG_LABEL_DEF,
    HOST_CNI_BIN_PATH,
    cfg::HOST_CNI_CONFDIR_PATH,
    cfg::HTTP_TIMEOUT,
    cfg::INTROSPECTION_BIND_ADDRESS,
    cfg::IP_COOLDOWN_PERIOD,
    cfg::MANAGE_UNTAGGED_ENI,
    cfg::MAX_ENI,
    cfg::MINIMUM_IP_TARGET,
    cfg::MY_NODE_NAME,
    cfg::MY_POD_NAME,
    cfg::NETWORK_POLICY_ENFORCING_MODE,
    cfg::POD_MTU,
    cfg::POD_SECURITY_GROUP_ENFORCING_MODE,
    cfg::VPC_CNI_VERSION,
    cfg::WARM_ENI_TARGET,
    cfg::WARM_IP_TARGET,
    cfg::WARM_PREFIX_TARGET,
];

/// The refused variables `ipamd install-cni` reads too (the reference's init container does).
/// What install-cni refuses too (it honours `ENABLE_IPv6`: the reference's IPv6 sysctls).
const INSTALL_CNI_REFUSES: [&str; 1] = [cfg::ENABLE_V6_EGRESS];

/// How long a refusal may take (it happens before anything is started).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// The table
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Honoured,
    Refused,
    NoOp,
}

impl Status {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "honoured" => Some(Self::Honoured),
            "refused" => Some(Self::Refused),
            "no-op" => Some(Self::NoOp),
            _ => None,
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
struct Row {
    line: usize,
    variable: String,
    status: Status,
    /// `path::fn` for honoured and no-op variables, the refused value otherwise.
    proof: String,
    /// Alternative extra environments (`A=1 B=2 | -`), each tried on its own.
    envs: Vec<Vec<(String, String)>>,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn read_doc(rel: &str) -> String {
    let path = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn parse_envs(line: usize, cell: &str) -> Vec<Vec<(String, String)>> {
    cell.split('|')
        .map(|alt| {
            let alt = alt.trim();
            if alt == "-" {
                return Vec::new();
            }
            alt.split_whitespace()
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| {
                        panic!("line {line}: env {pair:?} is not NAME=value (or -)")
                    });
                    assert!(!k.is_empty(), "line {line}: env {pair:?} has no name");
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        })
        .collect()
}

/// The table, checked line by line: five tab-separated cells, a valid status, no empty cell.
fn rows() -> Vec<Row> {
    let text = read_doc("docs/reference-variables.tsv");
    let mut lines = text.lines().enumerate();
    let (_, header) = lines.next().expect("the table is empty");
    assert_eq!(header, "variable\tstatus\tproof\tenv\tnote", "header");
    lines
        .map(|(i, l)| {
            let line = i + 1;
            let cells: Vec<&str> = l.split('\t').collect();
            assert_eq!(
                cells.len(),
                5,
                "line {line}: 5 tab-separated cells expected: {l:?}"
            );
            for (cell, name) in cells
                .iter()
                .zip(["variable", "status", "proof", "env", "note"])
            {
                assert!(!cell.trim().is_empty(), "line {line}: empty {name}: {l:?}");
            }
            let status = Status::parse(cells[1]).unwrap_or_else(|| {
                panic!(
                    "line {line}: status {:?} is none of honoured, refused, no-op",
                    cells[1]
                )
            });
            Row {
                line,
                variable: cells[0].to_owned(),
                status,
                proof: cells[2].to_owned(),
                envs: parse_envs(line, cells[3]),
            }
        })
        .collect()
}

/// Whether the lines above `fn <name>(` at `at` carry a test attribute.
fn is_test_fn(text: &str, at: usize) -> bool {
    // The lines before the fn's own line (which may start with `async `, `pub ` ...).
    let above = &text[..text[..at].rfind('\n').unwrap_or(0)];
    above
        .lines()
        .rev()
        .map(str::trim)
        .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
        .any(|l| l.starts_with("#[") && l.contains("test"))
}

#[test]
fn table_lists_every_reference_variable_with_a_status_and_a_proof() {
    let rows = rows();
    let listed: Vec<&str> = rows.iter().map(|r| r.variable.as_str()).collect();
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a variable is listed twice: {listed:?}"
    );
    let reference: BTreeSet<&str> = REFERENCE_VARIABLES.into_iter().collect();
    assert!(
        unique == reference,
        "the table must list exactly the reference's 59 variables, spelled as ipamd reads them; missing: {:?}, unknown: {:?}",
        reference.difference(&unique).collect::<Vec<_>>(),
        unique.difference(&reference).collect::<Vec<_>>()
    );

    let root = workspace_root();
    for row in &rows {
        let (var, line) = (&row.variable, row.line);
        match row.status {
            Status::Refused => assert!(
                row.envs.iter().all(|env| env.iter().all(|(k, _)| k != var)),
                "line {line}: {var}'s env must not set {var} itself"
            ),
            Status::Honoured | Status::NoOp => {
                let (path, name) = row.proof.rsplit_once("::").unwrap_or_else(|| {
                    panic!(
                        "line {line}: {var}: proof {:?} is not <path>::<test fn>",
                        row.proof
                    )
                });
                assert!(
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "line {line}: {var}: {name:?} is not a function name"
                );
                let file = root.join(path);
                let text = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("line {line}: {var}: proof file {path}: {e}"));
                let at = text
                    .find(&format!("fn {name}("))
                    .unwrap_or_else(|| panic!("line {line}: {var}: {path} has no fn {name}"));
                assert!(
                    is_test_fn(&text, at),
                    "line {line}: {var}: {path}::{name} is not a test"
                );
                assert!(
                    text.contains(var.as_str()) || text.contains(&var.to_uppercase()),
                    "line {line}: {var}: {path} does not mention {var}"
                );
                assert!(
                    row.envs.iter().all(Vec::is_empty),
                    "line {line}: {var}: only refused variables take an env"
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Refused values
// ------------------------------------------------------------------------------------------

/// Every file and directory under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(dir).unwrap().to_owned());
            if path.is_dir() && !path.is_symlink() {
                todo.push(path);
            }
        }
    }
    out
}

/// What one refused start did.
struct Refusal {
    code: Option<i32>,
    stderr: String,
    written: Vec<PathBuf>,
}

/// Runs `ipamd` (or `ipamd install-cni` from a directory holding every shipped plugin) inside
/// `ns` with a minimal environment whose every path is in a fresh directory, plus `env`.
fn run_refused(ns: &Netns, install_cni: bool, env: &[(String, String)]) -> Refusal {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let from = d.join("from");
    std::fs::create_dir(&from).unwrap();
    for plugin in SHIPPED_PLUGINS {
        let p = from.join(plugin);
        std::fs::write(&p, b"#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::create_dir(d.join("bin")).unwrap();
    let before = tree(d);

    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_ipamd")]);
    if install_cni {
        cmd.arg("install-cni").arg("--from").arg(&from);
    }
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(cfg::MY_NODE_NAME, "node-1")
        .env(cfg::AWS_VPC_K8S_CNI_IPAMD_SOCKET, d.join("run/ipamd.sock"))
        .env(cfg::AWS_VPC_K8S_CNI_BACKING_STORE, d.join("run/ipam.json"))
        .env(cfg::HOST_CNI_CONFDIR_PATH, d.join("net.d"))
        .env(cfg::AWS_VPC_K8S_CNI_LOG_FILE, "stderr")
        .env(
            cfg::INTROSPECTION_BIND_ADDRESS,
            format!("unix:{}", d.join("introspect.sock").display()),
        )
        .env(cfg::DISABLE_METRICS, "true")
        .env(HOST_CNI_BIN_PATH, d.join("bin"))
        // Nothing listens there: a start that is not refused waits for metadata (and times
        // out here) instead of reaching anything.
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-west-2");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let written = tree(d).difference(&before).cloned().collect();
    Refusal {
        code: status.map(|s| s.code().unwrap_or(-1)),
        stderr,
        written,
    }
}

#[test]
fn refused_settings_stop_ipamd_and_install_cni_before_anything_is_written() {
    require_root().unwrap();
    let ns = Netns::new("refuse").unwrap();
    let mut runs = 0;
    for row in rows().into_iter().filter(|r| r.status == Status::Refused) {
        let (var, value) = (row.variable.as_str(), row.proof.as_str());
        for extra in &row.envs {
            let mut env = extra.clone();
            env.push((var.to_owned(), value.to_owned()));
            let programs: &[bool] = if INSTALL_CNI_REFUSES.contains(&var) {
                &[false, true]
            } else {
                &[false]
            };
            for &install_cni in programs {
                let what = format!(
                    "{}{var}={value} with {extra:?}",
                    if install_cni {
                        "ipamd install-cni, "
                    } else {
                        "ipamd, "
                    }
                );
                let r = run_refused(&ns, install_cni, &env);
                runs += 1;
                let code = r.code.unwrap_or_else(|| {
                    panic!(
                        "{what}: still running after {REFUSAL_TIMEOUT:?}, not refused; stderr:\n{}",
                        r.stderr
                    )
                });
                assert_ne!(code, 0, "{what}: exit 0; stderr:\n{}", r.stderr);
                assert!(
                    r.stderr.contains(&format!("{var}={value:?}"))
                        || r.stderr.contains(&format!("{var}={value}")),
                    "{what}: stderr must name the variable and the value:\n{}",
                    r.stderr
                );
                assert!(
                    r.stderr.contains("configuration error"),
                    "{what}: stderr must say it is the configuration:\n{}",
                    r.stderr
                );
                assert!(
                    r.stderr.contains(&format!("unset {var}")),
                    "{what}: stderr must say what to do (unset {var}, ...):\n{}",
                    r.stderr
                );
                assert!(
                    r.written.is_empty(),
                    "{what}: wrote {:?} (no conflist, socket, checkpoint or plugin may appear)",
                    r.written
                );
            }
        }
    }
    // Every refused row ran (some under several environments, some through install-cni too).
    assert!(runs >= 6, "only {runs} refused runs");
}

/// `ANNOTATE_POD_IP=true` needs the Kubernetes API: without a service account (this test
/// process runs outside any pod) ipamd stops at start-up, before anything is bound or written,
/// saying how to give it one. On a cluster the annotation itself is checked by
/// `tests/tests/kube/main.rs`.
#[test]
fn settings_that_need_the_api_without_a_service_account_stop_ipamd_saying_what_to_mount() {
    require_root().unwrap();
    let ns = Netns::new("needsapi").unwrap();
    for (var, value, says) in [
        (cfg::ANNOTATE_POD_IP, "true", "set ANNOTATE_POD_IP=false"),
        (
            cfg::AWS_MANAGE_ENIS_NON_SCHEDULABLE,
            "false",
            "unset AWS_MANAGE_ENIS_NON_SCHEDULABLE",
        ),
        (
            cfg::CLUSTER_ENDPOINT,
            "https://10.0.0.1:6443",
            "unset CLUSTER_ENDPOINT",
        ),
    ] {
        let r = run_refused(&ns, false, &[(var.to_owned(), value.to_owned())]);
        assert!(r.code.is_some_and(|c| c != 0), "{:?}: {}", r.code, r.stderr);
        assert!(
            r.stderr.contains(var)
                && r.stderr.contains("needs the Kubernetes API")
                && r.stderr.contains("automountServiceAccountToken: true")
                && r.stderr.contains(says),
            "{}",
            r.stderr
        );
        assert!(r.written.is_empty(), "{var}: wrote {:?}", r.written);
    }
}

// ------------------------------------------------------------------------------------------
// The documentation
// ------------------------------------------------------------------------------------------

#[test]
fn configuration_page_shows_the_table() {
    let page = read_doc("docs/configuration.md");
    let mut shown: BTreeMap<String, (Status, String)> = BTreeMap::new();
    for l in page.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = l.split('|').map(str::trim).collect();
        // "", variable, default, status, ...
        let Some(var) = cells[1].strip_prefix('`').and_then(|v| v.strip_suffix('`')) else {
            continue;
        };
        if !REFERENCE_VARIABLES.contains(&var) {
            continue;
        }
        let status = Status::parse(cells[3])
            .unwrap_or_else(|| panic!("docs/configuration.md: {var}: status {:?}", cells[3]));
        let again = shown.insert(var.to_owned(), (status, l.to_owned()));
        assert!(again.is_none(), "docs/configuration.md lists {var} twice");
    }
    let rows = rows();
    let want: BTreeSet<&str> = rows.iter().map(|r| r.variable.as_str()).collect();
    let got: BTreeSet<&str> = shown.keys().map(String::as_str).collect();
    assert!(
        got == want,
        "docs/configuration.md must list exactly the table's variables; missing: {:?}, not in the table: {:?}",
        want.difference(&got).collect::<Vec<_>>(),
        got.difference(&want).collect::<Vec<_>>()
    );
    for row in &rows {
        let (status, line) = &shown[&row.variable];
        assert_eq!(
            *status, row.status,
            "docs/configuration.md: {} has another status than the table",
            row.variable
        );
        let proof = match row.status {
            Status::Refused => format!("{}={}", row.variable, row.proof),
            _ => row.proof.clone(),
        };
        assert!(
            line.contains(&proof),
            "docs/configuration.md: {}'s row must show {proof}",
            row.variable
        );
    }
}

// ------------------------------------------------------------------------------------------
// No-op settings
// ------------------------------------------------------------------------------------------

/// No-op variables with a valid value other than the default, and an invalid one.
const NO_OPS: [(&str, &str, &str); 4] = [
    (cfg::AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER, "false", "maybe"),
    (
        cfg::AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE,
        "/var/log/v6.log",
        "v6.log",
    ),
    (cfg::ENABLE_NFTABLES, "true", "maybe"),
    (cfg::POD_SECURITY_GROUP_ENFORCING_MODE, "standard", "loose"),
];

fn config_of(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut env: HashMap<&str, &str> = pairs.iter().copied().collect();
    env.insert(cfg::MY_NODE_NAME, "node-1");
    Config::from_env(&env)
}

/// Each no-op variable leaves everything ipamd acts on as it was (the fields only refused
/// features would read are set but read by nothing; the deprecated ones are warned about), and
/// a bad value still stops start-up naming it.
#[test]
fn no_op_settings_change_nothing_but_are_validated() {
    let noop_rows: BTreeSet<String> = rows()
        .into_iter()
        .filter(|r| r.status == Status::NoOp)
        .map(|r| r.variable)
        .collect();
    let covered: BTreeSet<String> = NO_OPS.iter().map(|(v, ..)| (*v).to_owned()).collect();
    assert_eq!(covered, noop_rows, "every no-op row is checked here");

    let base = config_of(&[]).unwrap();
    assert!(base.warnings.is_empty(), "{:?}", base.warnings);
    for (var, valid, invalid) in NO_OPS {
        let mut c = config_of(&[(var, valid)]).unwrap_or_else(|e| panic!("{var}={valid}: {e}"));
        let deprecated = [
            cfg::AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER,
            cfg::ENABLE_NFTABLES,
        ];
        if deprecated.contains(&var) {
            assert!(
                c.warnings.len() == 1
                    && c.warnings[0].contains(var)
                    && c.warnings[0].contains("no effect"),
                "{var}: {:?}",
                c.warnings
            );
            c.warnings.clear();
        }
        if var == cfg::POD_SECURITY_GROUP_ENFORCING_MODE {
            // Written into the conflist as the reference does, and nothing else changes.
            let want = ipamd::conflist::render(&base).replace(
                "\"podSGEnforcingMode\": \"strict\"",
                "\"podSGEnforcingMode\": \"standard\"",
            );
            assert_eq!(ipamd::conflist::render(&c), want);
            c.plugin.pod_sg_enforcing_mode = base.plugin.pod_sg_enforcing_mode.clone();
        }
        assert_eq!(c, base, "{var}={valid} changed what ipamd does");

        let err = config_of(&[(var, invalid)]).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{var}={invalid:?}")),
            "{var}={invalid} must be rejected naming it: {err}"
        );
    }
}

/// `ENABLE_V4_EGRESS` and `AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE` in an IPv6 cluster: the
/// conflist chains egress-cni after aws-cni (true, the default), with its log file, SNAT to
/// the node's IPv4 address and host-local in the reference's range; false leaves it out. In an
/// IPv4 cluster neither changes the conflist (egress-cni is for IPv6 pods). Pods through the
/// chained egress-cni: `tests/tests/vpc/ipv6_pods.rs`.
#[test]
fn ipv4_egress_settings_shape_the_ipv6_conflist() {
    let node_ip = std::net::Ipv4Addr::new(10, 0, 0, 5);
    let ipv6 = [
        (cfg::ENABLE_IPV6, "true"),
        (cfg::ENABLE_IPV4, "false"),
        (cfg::ENABLE_PREFIX_DELEGATION, "true"),
    ];
    let conflist = |pairs: &[(&str, &str)]| -> serde_json::Value {
        let c = config_of(pairs).unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
        serde_json::from_str(&ipamd::conflist::render_for_node(&c, Some(node_ip))).unwrap()
    };
    let types = |v: &serde_json::Value| -> Vec<String> {
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_owned())
            .collect()
    };
    let default = conflist(&ipv6);
    assert_eq!(types(&default), ["aws-cni", "egress-cni", "portmap"]);
    let egress = &default["plugins"][1];
    assert_eq!(egress["nodeIP"], "10.0.0.5");
    assert_eq!(egress["enabled"], "true");
    assert_eq!(
        egress["pluginLogFile"],
        "/var/log/aws-routed-eni/egress-v4-plugin.log"
    );
    assert_eq!(
        egress["ipam"]["ranges"][0][0]["subnet"], "169.254.172.0/22",
        "{egress}"
    );

    let mut logged = ipv6.to_vec();
    logged.push((
        cfg::AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE,
        "/var/log/v4.log",
    ));
    assert_eq!(
        conflist(&logged)["plugins"][1]["pluginLogFile"],
        "/var/log/v4.log"
    );

    let mut off = ipv6.to_vec();
    off.push((cfg::ENABLE_V4_EGRESS, "false"));
    assert_eq!(types(&conflist(&off)), ["aws-cni", "portmap"]);

    let ipv4 = conflist(&[]);
    for pairs in [
        vec![(cfg::ENABLE_V4_EGRESS, "false")],
        vec![(
            cfg::AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE,
            "/var/log/v4.log",
        )],
    ] {
        assert_eq!(conflist(&pairs), ipv4, "{pairs:?}");
    }
    for (var, bad) in [
        (cfg::ENABLE_V4_EGRESS, "maybe"),
        (cfg::AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE, "v4.log"),
    ] {
        let err = config_of(&[(var, bad)]).unwrap_err().to_string();
        assert!(err.contains(&format!("{var}={bad:?}")), "{err}");
    }
}

// ------------------------------------------------------------------------------------------
// Behaviour of the real binary
// ------------------------------------------------------------------------------------------

const TIMEOUT: Duration = Duration::from_secs(40);
/// Credentials for the fake EC2 (the SDK signs every request).
const CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "AKIAVCNITESTS0000000"),
    (
        "AWS_SECRET_ACCESS_KEY",
        "vcni-tests-secret-0000000000000000000000",
    ),
];

/// ipamd in EC2 mode against `ec2`, plus `extra`.
fn start_ec2_mode(w: &World, ec2: &FakeEc2, extra: &[(&str, &str)]) -> Ipamd {
    let endpoint = ec2.endpoint();
    let mut env = vec![
        (cfg::ENABLE_IMDS_ONLY_MODE, "false"),
        (cfg::AWS_EC2_ENDPOINT, endpoint.as_str()),
    ];
    env.extend(CREDENTIALS);
    env.extend_from_slice(extra);
    w.start(&env)
}

fn link_mtu(w: &World, name: &str) -> u64 {
    w.node.ip_json(&["link", "show", "dev", name]).unwrap()[0]["mtu"]
        .as_u64()
        .unwrap()
}

/// Waits until `log` (a file) holds a line for which `want` is true; returns the whole text.
async fn wait_for_log(
    ipamd: &mut Ipamd,
    log: &Path,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(&want) {
            return text;
        }
        if let Some(status) = ipamd.child.try_wait().unwrap() {
            panic!("ipamd exited with {status} before logging {what}; log:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "no {what} after {TIMEOUT:?}; log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The level of a log line (`<timestamp> <LEVEL> <target>: ...`).
fn level_of(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

/// What the fake EC2 endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 403 `UnauthorizedOperation`, as EC2 answers a role without the action.
    Unauthorized,
    /// Nothing, ever (the connection stays open until the client gives up).
    Never,
}

/// One request the fake EC2 endpoint received.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    /// Header names lower-cased.
    headers: HashMap<String, String>,
    body: String,
}

impl Received {
    fn action(&self) -> &str {
        self.body
            .split('&')
            .find_map(|kv| kv.strip_prefix("Action="))
            .unwrap_or("")
    }
}

/// An HTTP/1.1 listener on 127.0.0.1 inside a namespace, recording every request.
struct FakeEc2 {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

const UNAUTHORIZED_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation.</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>";

impl FakeEc2 {
    fn spawn(ns: &Netns, answer: Answer) -> Self {
        let path = ns.path();
        // The socket belongs to the namespace it was created in; serving it needs no setns.
        let listener = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(
                std::os::fd::AsFd::as_fd(&file),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .unwrap();
            TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = Arc::clone(&log);
                std::thread::spawn(move || serve(stream, answer, &log));
            }
        });
        Self { addr, received }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_for_requests(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the fake EC2 endpoint got {} of {n} requests in {TIMEOUT:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads one request from a connection and answers it per `answer` (the answer closes the
/// connection, so every request comes on a connection of its own).
fn serve(mut stream: TcpStream, answer: Answer, log: &Mutex<Vec<Received>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut read_more = |stream: &mut TcpStream, buf: &mut Vec<u8>| match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    };
    // The head, then Content-Length bytes of body.
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(&mut stream, &mut buf) {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        if !read_more(&mut stream, &mut buf) {
            return;
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    log.lock().unwrap().push(Received {
        at: Instant::now(),
        headers,
        body,
    });
    match answer {
        Answer::Unauthorized => {
            let reply = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{UNAUTHORIZED_BODY}",
                UNAUTHORIZED_BODY.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
        Answer::Never => {
            // Hold the connection until the client gives up and closes it.
            while read_more(&mut stream, &mut buf) {}
        }
    }
}

/// `AWS_EC2_ENDPOINT`: EC2 mode's calls go to that endpoint; `VPC_CNI_VERSION` is in the user
/// agent of every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_calls_go_to_aws_ec2_endpoint_with_vpc_cni_version_in_the_user_agent() {
    let w = world();
    let ec2 = FakeEc2::spawn(&w.node, Answer::Unauthorized);
    let _ipamd = start_ec2_mode(&w, &ec2, &[(cfg::VPC_CNI_VERSION, "v9.8.7-test")]);
    let got = ec2.wait_for_requests(2).await;
    for r in &got {
        let agents = format!(
            "{} {}",
            r.headers.get("user-agent").map_or("", String::as_str),
            r.headers.get("x-amz-user-agent").map_or("", String::as_str)
        );
        assert!(
            agents.contains("aws-vpc-cni-rs-v9.8.7-test"),
            "{} without VPC_CNI_VERSION in its user agent: {agents}",
            r.action()
        );
        assert!(!r.action().is_empty(), "not an EC2 query: {:?}", r.body);
        assert!(
            r.headers.contains_key("authorization"),
            "{} is not signed",
            r.action()
        );
    }
}

/// `MY_POD_NAME`: the reference posts a `MissingIAMPermissions` Event on this pod when EC2
/// refuses an action; this build logs that warning naming the pod and the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_permission_warning_names_my_pod_name() {
    let w = world();
    let ec2 = FakeEc2::spawn(&w.node, Answer::Unauthorized);
    let mut ipamd = start_ec2_mode(&w, &ec2, &[(cfg::MY_POD_NAME, "aws-node-x7k2p")]);
    let log = wait_for_log(
        &mut ipamd,
        &w.paths.log(),
        "the MissingIAMPermissions warning",
        |l| l.contains("MissingIAMPermissions"),
    )
    .await;
    let first_api = ec2.received()[0].action().to_owned();
    let line = log
        .lines()
        .find(|l| l.contains("MissingIAMPermissions"))
        .unwrap();
    assert!(
        level_of(line) == "WARN"
            && line.contains("aws-node-x7k2p")
            && line.contains(&format!("ec2:{first_api}")),
        "{line}"
    );
}

/// `AWS_VPC_K8S_CNI_LOG_FILE` (directories created) and `AWS_VPC_K8S_CNI_LOGLEVEL`: at INFO
/// the log holds INFO and WARN lines but no DEBUG line; at DEBUG the same run logs DEBUG lines
/// (the refused EC2 call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_file_and_log_level_are_honoured() {
    let w = world();
    let ec2 = FakeEc2::spawn(&w.node, Answer::Unauthorized);
    for level in ["INFO", "DEBUG"] {
        let log = w.paths.dir.join(format!("logs-{level}/nested/ipamd.log"));
        let log_s = log.display().to_string();
        let mut ipamd = start_ec2_mode(
            &w,
            &ec2,
            &[
                (cfg::AWS_VPC_K8S_CNI_LOG_FILE, log_s.as_str()),
                (cfg::AWS_VPC_K8S_CNI_LOGLEVEL, level),
            ],
        );
        let text = wait_for_log(&mut ipamd, &log, "the MissingIAMPermissions warning", |l| {
            l.contains("MissingIAMPermissions")
        })
        .await;
        assert!(
            text.lines()
                .any(|l| level_of(l) == "INFO" && l.contains("ipamd starting")),
            "{text}"
        );
        if level == "INFO" {
            ipamd.wait_ready(TIMEOUT);
            let text = std::fs::read_to_string(&log).unwrap();
            let debug: Vec<&str> = text.lines().filter(|l| level_of(l) == "DEBUG").collect();
            assert!(debug.is_empty(), "DEBUG lines at INFO: {debug:#?}");
        } else {
            wait_for_log(&mut ipamd, &log, "a DEBUG line", |l| {
                level_of(l) == "DEBUG" && l.contains("EC2 call failed")
            })
            .await;
        }
        ipamd.signal(nix::sys::signal::Signal::SIGTERM);
        ipamd.wait_exit(TIMEOUT);
        let _ = std::fs::remove_file(w.paths.conflist());
    }
}

/// `DISABLE_LEAKED_ENI_CLEANUP`: EC2 mode starts the leaked-ENI cleanup job once ready, unless
/// this is true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_eni_cleanup_starts_unless_disabled() {
    let w = world();
    let ec2 = FakeEc2::spawn(&w.node, Answer::Unauthorized);
    for disabled in [false, true] {
        let value = disabled.to_string();
        let mut ipamd = start_ec2_mode(
            &w,
            &ec2,
            &[(cfg::DISABLE_LEAKED_ENI_CLEANUP, value.as_str())],
        );
        ipamd.wait_ready(TIMEOUT);
        let text = wait_for_log(
            &mut ipamd,
            &w.paths.log(),
            "the leaked-ENI cleanup's start",
            |l| {
                l.contains("leaked-ENI cleanup scheduled")
                    || l.contains("leaked-ENI cleanup disabled")
            },
        )
        .await;
        let run = text
            .lines()
            .filter(|l| l.contains("leaked-ENI cleanup scheduled"))
            .count();
        let off = text
            .lines()
            .filter(|l| l.contains("leaked-ENI cleanup disabled (DISABLE_LEAKED_ENI_CLEANUP=true)"))
            .count();
        assert_eq!(
            (run, off),
            if disabled { (0, 1) } else { (1, 0) },
            "{value}: {text}"
        );
        ipamd.signal(nix::sys::signal::Signal::SIGTERM);
        ipamd.wait_exit(TIMEOUT);
        let _ = std::fs::remove_file(w.paths.conflist());
        std::fs::remove_file(w.paths.log()).unwrap();
    }
}

/// `HTTP_TIMEOUT`: an EC2 request nobody answers is given up after that many seconds (then
/// retried after a short backoff), not after the default 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_ec2_calls_time_out_after_http_timeout() {
    const SECS: u64 = 12;
    let w = world();
    let ec2 = FakeEc2::spawn(&w.node, Answer::Never);
    let _ipamd = start_ec2_mode(&w, &ec2, &[(cfg::HTTP_TIMEOUT, "12")]);
    let got = ec2.wait_for_requests(2).await;
    assert_eq!(
        got[0].action(),
        got[1].action(),
        "the retry of the same call"
    );
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(SECS * 1000 - 500) && gap < Duration::from_secs(SECS + 3),
        "{} retried {gap:?} after the first attempt; HTTP_TIMEOUT={SECS}",
        got[0].action()
    );
}

/// Adds one pod through the socket; returns its address.
async fn add_pod(socket: &Path) -> String {
    let r = client(socket)
        .await
        .unwrap()
        .add_network(AddNetworkRequest {
            client_version: "test".into(),
            k8s_pod_name: "pod-1".into(),
            k8s_pod_namespace: "default".into(),
            container_id: "c1".into(),
            if_name: "eth0".into(),
            network_name: "aws-cni".into(),
            netns: "/run/netns/x".into(),
            ..AddNetworkRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{r:?}");
    r.ip_allocation_metadata[0].i_pv4_addr.clone()
}

/// A metadata-only mode: ready, serving metadata's addresses, and not one request to the EC2
/// endpoint it was given (EC2 mode sends there: see the user agent test).
async fn no_ec2_call_in(mode: &[(&str, &str)]) {
    let w = world();
    let ec2 = FakeEc2::spawn(&w.node, Answer::Unauthorized);
    let endpoint = ec2.endpoint();
    let mut env = vec![(cfg::AWS_EC2_ENDPOINT, endpoint.as_str())];
    env.extend(CREDENTIALS);
    env.extend_from_slice(mode);
    let mut ipamd = w.start(&env);
    ipamd.wait_ready(TIMEOUT);
    assert_eq!(add_pod(&w.paths.socket()).await, "10.0.0.11");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got: Vec<String> = ec2
        .received()
        .iter()
        .map(|r| r.action().to_owned())
        .collect();
    assert!(got.is_empty(), "{mode:?}: EC2 calls {got:?}");
}

/// `ENABLE_IMDS_ONLY_MODE=true`: no EC2 call at all; the pool is what instance metadata shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_only_mode_makes_no_ec2_call() {
    no_ec2_call_in(&[(cfg::ENABLE_IMDS_ONLY_MODE, "true")]).await;
}

/// `DISABLE_NETWORK_RESOURCE_PROVISIONING=true`: no EC2 call either, the pool is what
/// instance metadata shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_disabled_makes_no_ec2_call() {
    no_ec2_call_in(&[
        (cfg::ENABLE_IMDS_ONLY_MODE, "false"),
        (cfg::DISABLE_NETWORK_RESOURCE_PROVISIONING, "true"),
    ])
    .await;
}

/// `AWS_VPC_ENI_MTU`: set on the primary and the secondary ENI, and the pods' MTU in the
/// conflist when `POD_MTU` is unset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eni_mtu_is_set_on_every_eni_and_is_the_pod_mtu() {
    let w = world();
    assert_eq!((link_mtu(&w, "eth0"), link_mtu(&w, "eth1")), (1500, 1500));
    let mut ipamd = w.start(&[(cfg::AWS_VPC_ENI_MTU, "4000")]);
    ipamd.wait_ready(TIMEOUT);
    assert_eq!((link_mtu(&w, "eth0"), link_mtu(&w, "eth1")), (4000, 4000));
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.paths.conflist()).unwrap()).unwrap();
    assert_eq!(conflist["plugins"][0]["mtu"], "4000");
}

/// `AWS_VPC_K8S_CNI_CONNMARK`, `AWS_VPC_K8S_CNI_RANDOMIZESNAT` and
/// `AWS_VPC_K8S_CNI_VETHPREFIX` shape the iptables rules ipamd programs in the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_networking_follows_connmark_randomize_snat_and_veth_prefix() {
    let w = world();
    let mut ipamd = w.start(&[
        (cfg::AWS_VPC_K8S_CNI_CONNMARK, "0x4000"),
        (cfg::AWS_VPC_K8S_CNI_RANDOMIZESNAT, "hashrandom"),
        (cfg::AWS_VPC_K8S_CNI_VETHPREFIX, "cali"),
    ]);
    ipamd.wait_ready(TIMEOUT);
    let mut rules = String::new();
    for table in ["nat", "mangle"] {
        let out = Command::new("ip")
            .args(["netns", "exec", w.node.name(), "iptables-save", "-t", table])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        rules.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let snat: Vec<&str> = rules.lines().filter(|l| l.contains("-j SNAT")).collect();
    assert!(
        snat.len() == 1 && snat[0].ends_with("--random") && !snat[0].contains("--random-fully"),
        "hashrandom is --random: {snat:?}\n{rules}"
    );
    for want in [
        "--set-xmark 0x4000/0x4000",
        "--restore-mark --nfmask 0x4000 --ctmask 0x4000",
        "-i cali+ ",
    ] {
        assert!(rules.contains(want), "{want:?} missing:\n{rules}");
    }
    assert!(
        !rules.contains("0x80/") && !rules.contains("-i eni+"),
        "{rules}"
    );
}

/// `HOST_CNI_CONFDIR_PATH` (created) gets `10-aws.conflist`; `AWS_VPC_K8S_CNI_BACKING_STORE`
/// is the checkpoint holding the pods' addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflist_and_checkpoint_go_where_the_environment_says() {
    let w = world();
    let env: HashMap<String, PathBuf> = command(&w.node, &w.paths, &w.imds.endpoint(), &[])
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), PathBuf::from(v?))))
        .collect();
    let confdir = &env[cfg::HOST_CNI_CONFDIR_PATH];
    let store = &env[cfg::AWS_VPC_K8S_CNI_BACKING_STORE];
    assert!(!confdir.exists() && !store.exists());
    let mut ipamd = w.start(&[]);
    ipamd.wait_ready(TIMEOUT);
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(confdir.join("10-aws.conflist")).unwrap())
            .unwrap();
    assert_eq!(conflist["name"], "aws-cni");
    let ip = add_pod(&w.paths.socket()).await;
    let checkpoint: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(store).unwrap()).unwrap();
    let text = checkpoint.to_string();
    assert!(
        text.contains("\"c1\"") && text.contains(&format!("\"{ip}\"")),
        "{text}"
    );
}
