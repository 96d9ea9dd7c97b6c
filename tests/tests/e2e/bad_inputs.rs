//! Bad input through the plugin gets the spec's error code as JSON on stdout, and changes
//! nothing: no links, routes or rules on the node, no address taken from ipamd.

use harness::{CniRequest, Pod, SimNode, standard_node};
use serde_json::Value;

use crate::{check, ok, pod, start_node};

struct Case {
    what: &'static str,
    code: u64,
    request: CniRequest,
}

fn cases(node: &SimNode, p: &Pod) -> Vec<Case> {
    let conf = ok(node, node.plugin_config("1.0.0", None));
    let good = CniRequest::for_pod("ADD", &conf, p);
    let with = |f: &dyn Fn(&mut CniRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let mut old_version = conf.clone();
    old_version["cniVersion"] = Value::from("9.9.9");
    let mut long_prefix = conf.clone();
    long_prefix["vethPrefix"] = Value::from("toolong");
    vec![
        Case {
            what: "malformed JSON",
            code: 6,
            request: good
                .clone()
                .raw_stdin(b"{\"cniVersion\": \"1.0.0\", \"name\": "),
        },
        Case {
            what: "unknown cniVersion",
            code: 1,
            request: with(&|r| r.stdin = old_version.to_string().into_bytes()),
        },
        Case {
            what: "missing CNI_NETNS",
            code: 4,
            request: with(&|r| r.netns = None),
        },
        Case {
            what: "missing CNI_CONTAINERID",
            code: 4,
            request: with(&|r| r.container_id = None),
        },
        Case {
            what: "ifname over 15 chars",
            code: 4,
            request: with(&|r| r.ifname = Some("eth0123456789abc".into())),
        },
        Case {
            what: "netns path that does not exist",
            code: 3,
            request: with(&|r| {
                r.netns = Some(format!("/run/netns/vcni-{}-absent", std::process::id()))
            }),
        },
        Case {
            what: "vethPrefix over 4 chars",
            code: 7,
            request: with(&|r| r.stdin = long_prefix.to_string().into_bytes()),
        },
    ]
}

#[test]
fn bad_inputs_get_their_error_codes_and_change_nothing() {
    let node = start_node(standard_node(&[2]));
    let p = pod("default", "bad-input");
    let before = ok(&node, node.host_state());
    let assigned = ok(&node, node.pool_status()).assigned_i_ps;
    for case in cases(&node, &p) {
        let out = ok(&node, node.exec_plugin(&case.request));
        check!(
            node,
            !out.success(),
            "{}: the plugin accepted it: {}",
            case.what,
            out.describe()
        );
        let json = out.json.clone().unwrap_or_default();
        check!(
            node,
            out.error_code() == Some(case.code)
                && json["msg"].as_str().is_some_and(|m| !m.is_empty())
                && json["cniVersion"].is_string(),
            "{}: want spec error JSON with code {} on stdout: {}",
            case.what,
            case.code,
            out.describe()
        );
        check!(
            node,
            out.status.is_some_and(|s| s != 0),
            "{}: exit status {:?}",
            case.what,
            out.status
        );
        let after = ok(&node, node.host_state());
        if let Some(diff) = before.diff(&after) {
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
    }
}
