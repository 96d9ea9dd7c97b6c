//! Campaign 6, security: ipamd's socket is mode 0660 owned by root:root and refuses users that
//! are neither root nor in its group (the plugin run as such a user gets EACCES); introspection
//! listens on the node's loopback only by default; neither ipamd's logs (at TRACE) nor the
//! plugin's carry the instance profile's access key, secret or session token, nor an IMDSv2
//! session token, after a full run in EC2 mode; and the IAM policy holds exactly the EC2
//! actions the code calls (also checked against the call sites by the ops tests, and against
//! the calls seen on the wire by the EC2-fault campaign).

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use harness::vpc::IMDS_ADDR;
use harness::{CniRequest, FabricOptions, NodeOptions, NodeSpec, VpcFabric, standard_node};
use serde_json::Value;

use crate::{check, ok, pod, start};

/// Runs the plugin's STATUS inside the node as uid/gid `uid:gid` (setpriv, no supplementary
/// groups); returns its output.
fn status_as(node: &harness::SimNode, uid: u32, gid: u32) -> harness::CniOutcome {
    let plugin = test_support::prereqs::aws_cni().unwrap_or_else(|e| panic!("{e}"));
    let conf = ok(node, node.plugin_config("1.1.0", None));
    let req = CniRequest::new("STATUS", &conf);
    let mut cmd = node.ns().command("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--clear-groups",
        "--",
    ])
    .arg(&plugin)
    .env_clear()
    .env("PATH", test_support::netns::default_path())
    .envs(req.env(node.cni_path()));
    ok(node, harness::cni::run_with_stdin(&mut cmd, &req.stdin))
}

#[test]
fn the_socket_is_0660_root_root_and_refuses_other_users() {
    test_support::prereqs::require_tool("setpriv", "apt-get install util-linux")
        .unwrap_or_else(|e| panic!("{e}"));
    let node = start(NodeOptions::new(standard_node(&[2])));
    let meta = std::fs::metadata(node.socket_path()).unwrap();
    check!(
        node,
        meta.permissions().mode() & 0o7777 == 0o660 && meta.uid() == 0 && meta.gid() == 0,
        "socket mode {:o} owner {}:{}",
        meta.permissions().mode() & 0o7777,
        meta.uid(),
        meta.gid()
    );
    // The state directory is a private temp dir (0700): open it for the test so the socket's
    // own mode is what decides, as under /var/run/aws-node (0755).
    std::fs::set_permissions(node.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let plugin_log = node.plugin_log_path();
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&plugin_log);
    std::fs::set_permissions(&plugin_log, std::fs::Permissions::from_mode(0o666)).unwrap();

    let root = status_as(&node, 0, 0);
    check!(node, root.success(), "STATUS as root: {}", root.describe());
    let nobody = status_as(&node, 65534, 65534);
    check!(
        node,
        nobody.error_code() == Some(50) && nobody.error_text().contains("Permission denied"),
        "STATUS as an unprivileged user must fail to connect with EACCES: {}",
        nobody.describe()
    );
    // The socket's group (root) is what 0660 grants besides the owner.
    let group = status_as(&node, 65534, 0);
    check!(
        node,
        group.success(),
        "STATUS as a member of the socket's group: {}",
        group.describe()
    );
    eprintln!(
        "campaign security/socket: mode 0660 root:root; uid 65534 refused (EACCES), gid 0 and root served"
    );
}

#[test]
fn introspection_listens_on_loopback_only_by_default() {
    let node = start(NodeOptions::new(standard_node(&[2])));
    let out = ok(&node, node.ns().exec_checked("ss", &["-Hltn"]));
    let listeners: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .collect();
    check!(
        node,
        listeners.iter().any(|l| l == "127.0.0.1:61679"),
        "introspection is not listening on 127.0.0.1:61679: {listeners:?}"
    );
    check!(
        node,
        !listeners
            .iter()
            .any(|l| l.ends_with(":61679") && l != "127.0.0.1:61679"),
        "introspection listens beyond loopback: {listeners:?}"
    );
}

/// Maximal runs of ASCII letters and digits of exactly `len` characters in `text` (the shape
/// of the emulator's IMDSv2 session tokens; longer runs, like container IDs, do not count).
fn runs_of(text: &str, len: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() {
            run.push(c);
        } else {
            if run.len() == len {
                out.push(run.clone());
            }
            run.clear();
        }
    }
    out
}

#[test]
fn no_credentials_or_tokens_in_logs_after_a_full_run_in_ec2_mode() {
    let vpc = VpcFabric::start(FabricOptions::default())
        .unwrap_or_else(|e| panic!("cannot start the simulated VPC: {e}"));
    let mut node = vpc
        .add_node(
            NodeSpec::new("secrets", "t3.small")
                .env("AWS_VPC_K8S_CNI_LOGLEVEL", "TRACE")
                .env("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "TRACE")
                .env("WARM_IP_TARGET", "1"),
        )
        .unwrap_or_else(|e| panic!("cannot start the node: {e}\n{}", vpc.diag()));
    // What the instance profile hands out (what the SDK signs every EC2 call with).
    let creds = harness::http::imds_get(
        node.ns(),
        (IMDS_ADDR, 80).into(),
        &format!(
            "/latest/meta-data/iam/security-credentials/{}",
            test_support::imds::INSTANCE_PROFILE_ROLE
        ),
    )
    .unwrap_or_else(|e| panic!("cannot read the instance profile: {e}"));
    let creds: Value = serde_json::from_str(&creds.body).unwrap();
    let secrets: Vec<(&str, String)> = ["AccessKeyId", "SecretAccessKey", "Token"]
        .iter()
        .map(|k| (*k, creds[*k].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert!(secrets.iter().all(|(_, v)| v.len() >= 16), "{creds}");

    // A full run: pods beyond the first ENI (EC2 calls: assign, create, attach, tags), CHECK,
    // DEL, a restart.
    let mut pods = Vec::new();
    for i in 0..5 {
        let p = pod("secrets", &format!("p{i}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let result = loop {
            let out = ok(&node, node.cni("ADD", &p, "1.0.0", None));
            if out.success() {
                break out.json.unwrap_or_default();
            }
            check!(
                node,
                out.error_code() == Some(11) && std::time::Instant::now() < deadline,
                "{}",
                out.describe()
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        let out = ok(&node, node.cni("CHECK", &p, "1.0.0", Some(&result)));
        check!(node, out.success(), "{}", out.describe());
        pods.push((p, result));
    }
    let (first, result) = pods.remove(0);
    ok(&node, node.del_pod(&first, "1.0.0", Some(&result)));
    let ec2_calls = ok(&node, node.metric("awscni_ec2api_req_count")).unwrap_or(0.0);
    check!(
        node,
        ec2_calls >= 3.0,
        "ipamd made only {ec2_calls} EC2 calls"
    );
    node.restart_ipamd()
        .unwrap_or_else(|e| panic!("restart failed: {e}"));
    for (p, r) in &pods {
        ok(&node, node.del_pod(p, "1.0.0", Some(r)));
    }

    let mut scanned = 0;
    let mut bytes = 0;
    for path in [
        node.ipamd_log_path(),
        node.ipamd_output_path(),
        node.plugin_log_path(),
    ] {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        check!(
            node,
            !text.is_empty() || path == node.ipamd_output_path(),
            "{} is empty",
            path.display()
        );
        scanned += 1;
        bytes += text.len();
        for (what, value) in &secrets {
            check!(
                node,
                !text.contains(value.as_str()),
                "{} contains the instance profile's {what}",
                path.display()
            );
        }
        for marker in [
            "x-aws-ec2-metadata-token:",
            "X-Amz-Security-Token",
            "AWS4-HMAC-SHA256 Credential",
            "authorization:",
        ] {
            check!(
                node,
                !text
                    .to_ascii_lowercase()
                    .contains(&marker.to_ascii_lowercase()),
                "{} contains a request header that carries secrets ({marker})",
                path.display()
            );
        }
        let tokens = runs_of(&text, 56);
        check!(
            node,
            tokens.is_empty(),
            "{} contains strings shaped like IMDSv2 session tokens: {tokens:?}",
            path.display()
        );
    }
    eprintln!(
        "campaign security/logs: {scanned} logs ({bytes} bytes, ipamd and plugin at TRACE, {ec2_calls} signed EC2 calls) hold no access key, secret, session token or IMDS token"
    );
    drop(node);
}

#[test]
fn the_iam_policy_holds_exactly_the_ec2_actions_ipamd_calls() {
    let path = test_support::prereqs::workspace_dir().join("conf/iam-policy.json");
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut actions = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        match &statement["Action"] {
            Value::String(a) => {
                actions.insert(a.clone());
            }
            Value::Array(list) => {
                actions.extend(list.iter().filter_map(|a| a.as_str().map(str::to_owned)))
            }
            other => panic!("unexpected Action {other}"),
        }
    }
    let called: BTreeSet<String> = ipamd::cloud::ec2::EC2_ACTIONS
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    assert_eq!(
        actions,
        called,
        "{} differs from the EC2 actions ipamd calls",
        path.display()
    );
    assert!(
        !actions.iter().any(|a| a.contains('*')),
        "the policy grants wildcards: {actions:?}"
    );
}
