//! Campaign 5, bad input: a corpus of malformed and hostile configs and environments through
//! the real plugin binary (invalid JSON, wrong types, huge stdin, NUL bytes, absurd MTUs,
//! vethPrefix collisions, path traversal in `pluginLogFile`, bad `CNI_*` variables and
//! `CNI_ARGS`) and through ipamd's configuration (invalid CIDRs, MTUs, prefixes and log paths
//! in its environment). Each gets the spec's error code with a message naming the problem, and
//! changes nothing: no link, route or rule on the node, no address taken, nothing in the pod,
//! no file written where a hostile path pointed; a refused ipamd binds no socket and writes no
//! conflist or checkpoint.
//!
//! The rule for log file paths (plugin `pluginLogFile`, ipamd `AWS_VPC_K8S_PLUGIN_LOG_FILE` and
//! `AWS_VPC_K8S_CNI_LOG_FILE`): `stderr` (or `stdout` for ipamd's own log), or an absolute path
//! without `..` components that is not a directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{CniRequest, NodeOptions, Pod, SimNode, standard_node};
use serde_json::{Value, json};

use crate::{check, ok, pod, start};

struct Case {
    what: String,
    code: u64,
    /// Must appear in the error's `msg` (names the key, variable or problem).
    says: &'static str,
    request: CniRequest,
    /// A file the input pointed at that must not exist afterwards.
    must_not_exist: Option<PathBuf>,
}

fn plugin_cases(node: &SimNode, p: &Pod) -> Vec<Case> {
    let conf = ok(node, node.plugin_config("1.0.0", None));
    let good = CniRequest::for_pod("ADD", &conf, p);
    let dir = node.dir().to_owned();
    let mut cases = Vec::new();
    let mut push = |what: &str, code: u64, says: &'static str, r: CniRequest| {
        cases.push(Case {
            what: what.to_owned(),
            code,
            says,
            request: r,
            must_not_exist: None,
        });
    };
    let raw = |bytes: &[u8]| good.clone().raw_stdin(bytes);
    let with = |key: &str, value: Value| {
        let mut c = conf.clone();
        c[key] = value;
        good.clone().raw_stdin(c.to_string().as_bytes())
    };
    let env = |f: &dyn Fn(&mut CniRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };

    // Undecodable stdin: code 6 (5 for an unreadable/oversized one).
    push(
        "truncated JSON",
        6,
        "decode",
        raw(br#"{"cniVersion": "1.0.0", "name": "#),
    );
    push("empty stdin", 6, "empty", raw(b""));
    push("whitespace only", 6, "empty", raw(b" \n\t "));
    push("JSON array", 6, "JSON object", raw(b"[]"));
    push("JSON string", 6, "JSON object", raw(br#""aws-cni""#));
    push("JSON null", 6, "JSON object", raw(b"null"));
    let mut nul = conf.to_string().into_bytes();
    nul.insert(10, 0);
    push("NUL byte in stdin", 6, "NUL byte", raw(&nul));
    push(
        "invalid UTF-8",
        6,
        "decode",
        raw(b"{\"cniVersion\":\"1.0.0\",\"name\":\"\xff\xfe\"}"),
    );
    let mut huge = conf.to_string().into_bytes();
    huge.pop();
    huge.extend_from_slice(br#","pad":""#);
    huge.extend(std::iter::repeat_n(b'x', 2 << 20));
    huge.extend_from_slice(br#""}"#);
    push("2 MiB stdin", 5, "larger than", raw(&huge));
    let mut deep = "[".repeat(100_000);
    deep.push_str(&"]".repeat(100_000));
    push(
        "100000 nested arrays",
        6,
        "recursion limit",
        raw(format!(r#"{{"cniVersion":"1.0.0","x":{deep}}}"#).as_bytes()),
    );

    // Versions: code 1 (6 when the type is wrong).
    let mut no_version = conf.clone();
    no_version.as_object_mut().map(|o| o.remove("cniVersion"));
    push(
        "no cniVersion",
        1,
        "cniVersion",
        raw(no_version.to_string().as_bytes()),
    );
    push(
        "cniVersion 9.9.9",
        1,
        "9.9.9",
        with("cniVersion", json!("9.9.9")),
    );
    push(
        "cniVersion 0.2.0 for ADD",
        1,
        "0.2.0",
        with("cniVersion", json!("0.2.0")),
    );
    push(
        "cniVersion as a number",
        6,
        "cniVersion",
        with("cniVersion", json!(1)),
    );

    // Keys of the wrong type: 6; decodable but invalid values: 7.
    push("name as a number", 6, "name", with("name", json!(7)));
    push(
        "name with a space",
        7,
        "name",
        with("name", json!("bad name")),
    );
    push("name with NUL", 7, "name", with("name", json!("a\u{0}b")));
    push(
        "name with path traversal",
        7,
        "name",
        with("name", json!("../../etc")),
    );
    push(
        "vethPrefix too long",
        7,
        "vethPrefix",
        with("vethPrefix", json!("toolong")),
    );
    push(
        "vethPrefix empty",
        7,
        "vethPrefix",
        with("vethPrefix", json!("")),
    );
    for reserved in ["eth", "lo", "vlan"] {
        push(
            &format!("vethPrefix {reserved} collides with node interfaces"),
            7,
            "reserved",
            with("vethPrefix", json!(reserved)),
        );
    }
    push(
        "vethPrefix with a slash",
        7,
        "vethPrefix",
        with("vethPrefix", json!("a/b")),
    );
    push(
        "vethPrefix with a newline",
        7,
        "vethPrefix",
        with("vethPrefix", json!("a\nb")),
    );
    push(
        "vethPrefix as a number",
        6,
        "vethPrefix",
        with("vethPrefix", json!(5)),
    );
    push("mtu 0", 7, "mtu", with("mtu", json!(0)));
    push("mtu 65536", 7, "mtu", with("mtu", json!(65536)));
    push("mtu -1", 7, "mtu", with("mtu", json!(-1)));
    push("mtu 575", 7, "mtu", with("mtu", json!("575")));
    push("mtu 9001abc", 7, "mtu", with("mtu", json!("9001abc")));
    push("mtu 1500.5", 7, "mtu", with("mtu", json!(1500.5)));
    push(
        "mtu 2^64",
        7,
        "mtu",
        with("mtu", json!(18_446_744_073_709_551_615_u64)),
    );
    push(
        "mtu 1e400",
        6,
        "decode",
        raw(br#"{"cniVersion":"1.0.0","name":"aws-cni","mtu":1e400}"#),
    );
    push("mtu true", 6, "mtu", with("mtu", json!(true)));
    push(
        "pluginLogFile stdout",
        7,
        "pluginLogFile",
        with("pluginLogFile", json!("stdout")),
    );
    push(
        "pluginLogFile as a number",
        6,
        "pluginLogFile",
        with("pluginLogFile", json!(3)),
    );
    push(
        "pluginLogFile is a directory",
        7,
        "directory",
        with("pluginLogFile", json!(dir.display().to_string())),
    );
    push(
        "pluginLogLevel unknown",
        7,
        "pluginLogLevel",
        with("pluginLogLevel", json!("chatty")),
    );
    push(
        "podSGEnforcingMode unknown",
        7,
        "podSGEnforcingMode",
        with("podSGEnforcingMode", json!("loose")),
    );
    push(
        "ipamdSocket relative",
        7,
        "ipamdSocket",
        with("ipamdSocket", json!("rel/ipamd.sock")),
    );
    push(
        "prevResult a string",
        6,
        "prevResult",
        with("prevResult", json!("x")),
    );

    // Environment: code 4 (3 for a namespace that does not exist).
    push(
        "no CNI_COMMAND",
        4,
        "CNI_COMMAND",
        env(&|r| r.command = None),
    );
    push(
        "CNI_COMMAND GET",
        4,
        "CNI_COMMAND",
        env(&|r| r.command = Some("GET".into())),
    );
    push(
        "no CNI_CONTAINERID",
        4,
        "CNI_CONTAINERID",
        env(&|r| r.container_id = None),
    );
    push(
        "CNI_CONTAINERID with path traversal",
        4,
        "CNI_CONTAINERID",
        env(&|r| r.container_id = Some("../../x".into())),
    );
    push(
        "CNI_IFNAME of 16 chars",
        4,
        "CNI_IFNAME",
        env(&|r| r.ifname = Some("eth0123456789abc".into())),
    );
    push(
        "CNI_IFNAME ..",
        4,
        "CNI_IFNAME",
        env(&|r| r.ifname = Some("..".into())),
    );
    push(
        "CNI_IFNAME with a slash",
        4,
        "CNI_IFNAME",
        env(&|r| r.ifname = Some("a/b".into())),
    );
    push("no CNI_NETNS", 4, "CNI_NETNS", env(&|r| r.netns = None));
    push(
        "CNI_NETNS that does not exist",
        3,
        "does not exist",
        env(&|r| r.netns = Some(format!("/run/netns/vcni-{}-absent", std::process::id()))),
    );
    push(
        "CNI_NETNS is the plugin's own namespace",
        4,
        "own network namespace",
        env(&|r| r.netns = Some("/proc/self/ns/net".into())),
    );
    push(
        "CNI_NETNS is a regular file",
        4,
        "not a network namespace",
        env(&|r| r.netns = Some("/etc/hostname".into())),
    );
    push(
        "CNI_NETNS is a mount namespace",
        4,
        "not a network namespace",
        env(&|r| r.netns = Some("/proc/self/ns/mnt".into())),
    );
    push(
        "CNI_ARGS pair without =",
        4,
        "CNI_ARGS",
        env(&|r| r.args = Some("K8S_POD_NAME".into())),
    );
    push(
        "CNI_ARGS pod name of 10000 bytes",
        4,
        "K8S_POD_NAME",
        env(&|r| {
            r.args = Some(format!(
                "K8S_POD_NAMESPACE=x;K8S_POD_NAME={}",
                "a".repeat(10_000)
            ))
        }),
    );
    push(
        "CNI_ARGS namespace with a newline",
        4,
        "K8S_POD_NAMESPACE",
        env(&|r| r.args = Some("K8S_POD_NAMESPACE=a\nb;K8S_POD_NAME=x".into())),
    );

    // Path traversal and relative paths in pluginLogFile: refused, and nothing is created where
    // they point (inside this node's state directory, so a regression cannot touch the machine).
    let escaped = dir.join("escaped.log");
    for (what, value, says) in [
        (
            "pluginLogFile climbing out with ..",
            format!("{}/logs/../escaped.log", dir.display()),
            "..",
        ),
        (
            "pluginLogFile relative with ..",
            "../escaped.log".to_owned(),
            "absolute",
        ),
        (
            "pluginLogFile relative",
            "escaped.log".to_owned(),
            "absolute",
        ),
    ] {
        cases.push(Case {
            what: what.to_owned(),
            code: 7,
            says,
            request: with("pluginLogFile", json!(value)),
            must_not_exist: Some(if value.starts_with('/') {
                escaped.clone()
            } else {
                std::env::current_dir().unwrap_or_default().join(&value)
            }),
        });
    }
    cases
}

#[test]
fn hostile_plugin_input_gets_spec_errors_and_changes_nothing() {
    let node = start(NodeOptions::new(standard_node(&[2])));
    let p = pod("bad", "input");
    let before = ok(&node, node.host_state());
    let assigned = ok(&node, node.pool_status()).assigned_i_ps;
    let cases = plugin_cases(&node, &p);
    assert!(
        cases.len() >= 40,
        "the corpus has only {} cases",
        cases.len()
    );
    let mut slowest = Duration::ZERO;
    for case in &cases {
        let started = Instant::now();
        let out = ok(&node, node.exec_plugin(&case.request));
        slowest = slowest.max(started.elapsed());
        let json = out.json.clone().unwrap_or_default();
        let msg = json["msg"].as_str().unwrap_or_default();
        check!(
            node,
            !out.success() && out.error_code() == Some(case.code) && json["cniVersion"].is_string(),
            "{}: want the spec's error JSON with code {}: {}",
            case.what,
            case.code,
            out.describe()
        );
        check!(
            node,
            msg.contains(case.says),
            "{}: the message does not name {:?}: {msg}",
            case.what,
            case.says
        );
        check!(
            node,
            out.stdout.trim().lines().count() == 1,
            "{}: stdout holds more than the error JSON: {}",
            case.what,
            out.describe()
        );
        if let Some(diff) = before.diff(&ok(&node, node.host_state())) {
            panic!("{} changed the node:\n{diff}\n{}", case.what, node.diag());
        }
        let now = ok(&node, node.pool_status()).assigned_i_ps;
        check!(
            node,
            now == assigned,
            "{}: ipamd's assigned count went {assigned} -> {now}",
            case.what
        );
        let pod_links = ok(&node, p.ns().unwrap().link_names());
        check!(
            node,
            pod_links == vec!["lo".to_owned()],
            "{}: the pod namespace got {pod_links:?}",
            case.what
        );
        if let Some(path) = &case.must_not_exist {
            check!(
                node,
                !path.exists(),
                "{}: {} was created",
                case.what,
                path.display()
            );
        }
    }
    eprintln!(
        "campaign bad-input/plugin: {} hostile inputs through aws-cni, each refused with its code and changing nothing (slowest answer {slowest:?})",
        cases.len()
    );
}

/// ipamd environments that must stop it before it binds anything.
fn ipamd_cases(dir: &Path) -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
            "10.0.0.0/33".into(),
            "IPv4 CIDR",
        ),
        (
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
            "10.0.0.0/8,bogus".into(),
            "bogus",
        ),
        (
            "AWS_EXTERNAL_SERVICE_CIDRS",
            "300.0.0.0/8".into(),
            "IPv4 CIDR",
        ),
        ("AWS_VPC_ENI_MTU", "0".into(), "MTU"),
        ("AWS_VPC_ENI_MTU", "99999".into(), "MTU"),
        ("POD_MTU", "-1".into(), "MTU"),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "eth".into(), "reserved"),
        (
            "AWS_VPC_K8S_CNI_VETHPREFIX",
            "toolong".into(),
            "4 characters",
        ),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "a/b".into(), "allowed"),
        ("AWS_VPC_K8S_PLUGIN_LOG_FILE", "stdout".into(), "stdout"),
        (
            "AWS_VPC_K8S_PLUGIN_LOG_FILE",
            "../../etc/x".into(),
            "absolute",
        ),
        (
            "AWS_VPC_K8S_PLUGIN_LOG_FILE",
            format!("{}/logs/../escaped.log", dir.display()),
            "..",
        ),
        ("AWS_VPC_K8S_CNI_LOG_FILE", "ipamd.log".into(), "absolute"),
        (
            "AWS_VPC_K8S_CNI_LOG_FILE",
            format!("{}/", dir.display()),
            "directory",
        ),
        ("WARM_IP_TARGET", "-1".into(), "negative"),
        ("IP_COOLDOWN_PERIOD", "30s".into(), "integer"),
        (
            "INTROSPECTION_BIND_ADDRESS",
            "localhost".into(),
            "INTROSPECTION_BIND_ADDRESS",
        ),
        ("ADDITIONAL_ENI_TAGS", "{bad".into(), "JSON"),
        ("AWS_VPC_K8S_CNI_CONNMARK", "0".into(), "0"),
        ("HTTP_TIMEOUT", "ten".into(), "integer"),
        ("ENABLE_IPv6", "true".into(), "dual-stack"),
    ]
}

#[test]
fn hostile_ipamd_environment_stops_it_before_anything_is_bound() {
    let node = start(NodeOptions::new(standard_node(&[2])).without_ipamd());
    let before = ok(&node, node.host_state());
    let cases = ipamd_cases(node.dir());
    let mut slowest = Duration::ZERO;
    for (var, value, says) in &cases {
        let out_path = node.ipamd_output_path();
        let offset = std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);
        let started = Instant::now();
        let mut process = ok(&node, node.spawn_ipamd_process(&[(*var, value.as_str())]));
        let status = process.wait_timeout(Duration::from_secs(10));
        let took = started.elapsed();
        slowest = slowest.max(took);
        let output = std::fs::read(&out_path).unwrap_or_default();
        let output =
            String::from_utf8_lossy(&output[usize::try_from(offset).unwrap()..]).into_owned();
        check!(
            node,
            status.is_some_and(|s| !s.success()),
            "ipamd with {var}={value:?} did not stop with an error within 10 s ({status:?}): {output}"
        );
        check!(
            node,
            output.contains(var) && output.contains(says),
            "ipamd's error for {var}={value:?} does not name the variable and {says:?}: {output}"
        );
        for path in [
            node.socket_path(),
            node.conflist_path(),
            node.checkpoint_path(),
            node.dir().join("escaped.log"),
        ] {
            check!(
                node,
                !path.exists(),
                "ipamd with {var}={value:?} created {}",
                path.display()
            );
        }
        if let Some(diff) = before.diff(&ok(&node, node.host_state())) {
            panic!(
                "ipamd with {var}={value:?} changed the node:\n{diff}\n{}",
                node.diag()
            );
        }
    }
    eprintln!(
        "campaign bad-input/ipamd: {} hostile environments, each stopping ipamd with the variable named (slowest exit {slowest:?})",
        cases.len()
    );
}
