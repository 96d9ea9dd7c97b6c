//! A running ipamd on a simulated node serves `/metrics` with the pool's true values after pods
//! come and go, the introspection paths with the same pool, and `ipamd status` renders it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use harness::{NodeOptions, Pod, SimNode, standard_node};
use serde_json::Value;

use super::{describe, http_get_in, ipamd_in, start};

const METRICS: &str = "0.0.0.0:61678";

fn metrics_addr() -> SocketAddr {
    "127.0.0.1:61678".parse().unwrap()
}

fn introspection_addr() -> SocketAddr {
    "127.0.0.1:61679".parse().unwrap()
}

/// `name{labels} value` lines of the exposition, by series.
fn samples(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn scrape(node: &SimNode) -> BTreeMap<String, String> {
    let answer = http_get_in(node.ns(), metrics_addr(), "/metrics").unwrap();
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, node.diag());
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for counter in [
        "awscni_add_ip_req_count",
        "awscni_del_ip_req_count",
        "awscni_no_available_ip_addresses",
    ] {
        assert!(
            answer.body.contains(&format!("# TYPE {counter} counter\n")),
            "{counter} is not typed counter under its reference name:\n{}",
            answer.body
        );
    }
    // `awscni_connmark_reconcile_total` is the reference's own name (its Go counter is named so).
    let suffixed: Vec<&str> = answer
        .body
        .lines()
        .filter(|l| l.contains("_total ") || l.contains("_total{"))
        .filter(|l| !l.contains("awscni_connmark_reconcile_total"))
        .collect();
    assert!(
        suffixed.is_empty(),
        "no series may get prometheus-client's _total suffix: {suffixed:?}\n{}",
        answer.body
    );
    samples(&answer.body)
}

fn introspect(node: &SimNode, path: &str) -> Value {
    let answer = http_get_in(node.ns(), introspection_addr(), path).unwrap();
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", answer.body))
}

fn expect(series: &BTreeMap<String, String>, want: &[(&str, &str)], node: &SimNode) {
    for (name, value) in want {
        assert_eq!(
            series.get(*name).map(String::as_str),
            Some(*value),
            "{name}; all series:\n{series:#?}\n{}",
            node.diag()
        );
    }
}

#[test]
fn metrics_introspection_and_status_follow_the_pods() {
    // Primary ENI with 2 secondary IPs, a secondary ENI with 3; released IPs cool down 30 s.
    let desc = standard_node(&[2, 3]);
    let eni0 = desc.interfaces[0].interface_id.clone();
    let eni1 = desc.interfaces[1].interface_id.clone();
    let node = start(NodeOptions::new(desc).cooldown_seconds(30));

    let pods: Vec<Pod> = (0..3)
        .map(|i| Pod::new("default", &format!("web-{i}")).unwrap())
        .collect();
    let results: Vec<Value> = pods
        .iter()
        .map(|p| node.add_pod(p, "1.0.0").unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let ips: Vec<String> = results
        .iter()
        .map(|r| harness::cni::result_ip(r).unwrap().to_string())
        .collect();
    // Packed: the primary ENI's IPs first, in order.
    assert_eq!(
        ips,
        ["10.0.0.11", "10.0.0.12", "10.0.0.21"],
        "{}",
        node.diag()
    );
    node.del_pod(&pods[1], "1.0.0", Some(&results[1]))
        .unwrap_or_else(|e| panic!("{e}"));

    let m = scrape(&node);
    let per_eni0 = format!("awscni_assigned_ip_per_eni{{eni=\"{eni0}\"}}");
    let per_eni1 = format!("awscni_assigned_ip_per_eni{{eni=\"{eni1}\"}}");
    expect(
        &m,
        &[
            ("awscni_add_ip_req_count", "3"),
            ("awscni_del_ip_req_count{reason=\"PodDeleted\"}", "1"),
            ("awscni_no_available_ip_addresses", "0"),
            ("awscni_eni_allocated", "2"),
            ("awscni_total_ip_addresses", "5"),
            ("awscni_assigned_ip_addresses", "2"),
            (per_eni0.as_str(), "1"),
            (per_eni1.as_str(), "1"),
            ("awscni_assigned_ip_per_cidr{cidr=\"10.0.0.11/32\"}", "1"),
            ("awscni_assigned_ip_per_cidr{cidr=\"10.0.0.12/32\"}", "0"),
            ("awscni_assigned_ip_per_cidr{cidr=\"10.0.0.21/32\"}", "1"),
            ("awscni_assigned_ip_per_cidr{cidr=\"10.0.0.22/32\"}", "0"),
            ("awscni_assigned_ip_per_cidr{cidr=\"10.0.0.23/32\"}", "0"),
            ("awscni_force_removed_ips", "0"),
            ("awscni_force_removed_enis", "0"),
            (
                "awscni_ipamd_startup_duration_seconds_count{success=\"true\",with_api_server=\"false\",failure_reason=\"\"}",
                "1",
            ),
        ],
        &node,
    );
    let cidr_series = m
        .keys()
        .filter(|k| k.starts_with("awscni_assigned_ip_per_cidr{"))
        .count();
    assert_eq!(cidr_series, 5, "one series per secondary IP: {m:#?}");
    // Instance limits are not known in instance-metadata-only mode: no false zeros.
    assert!(!m.contains_key("awscni_eni_max") && !m.contains_key("awscni_ip_max"));

    // Fill the pool (10.0.0.12 is cooling): two more fit, the third fails and is counted.
    let more: Vec<Pod> = (3..6)
        .map(|i| Pod::new("default", &format!("web-{i}")).unwrap())
        .collect();
    node.add_pod(&more[0], "1.0.0")
        .unwrap_or_else(|e| panic!("{e}"));
    node.add_pod(&more[1], "1.0.0")
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = node.cni("ADD", &more[2], "1.0.0", None).unwrap();
    assert_eq!(refused.error_code(), Some(11), "{}", refused.describe());
    let m = scrape(&node);
    expect(
        &m,
        &[
            ("awscni_add_ip_req_count", "6"),
            ("awscni_no_available_ip_addresses", "1"),
            ("awscni_assigned_ip_addresses", "4"),
            ("awscni_assigned_ip_per_cidr{cidr=\"10.0.0.12/32\"}", "0"),
        ],
        &node,
    );

    // Introspection: the same pool.
    let root = introspect(&node, "/");
    assert_eq!(
        root["AvailableCommands"],
        serde_json::json!([
            "/v1/enis",
            "/v1/ipamd-env-settings",
            "/v1/networkutils-env-settings",
            "/v1/pods",
            "/v1/pool"
        ])
    );
    let enis = introspect(&node, "/v1/enis");
    let card = &enis["0"];
    assert_eq!(
        (
            &card["TotalIPs"],
            &card["AssignedIPs"],
            &card["CooldownIPs"]
        ),
        (&Value::from(5), &Value::from(4), &Value::from(1)),
        "{enis}"
    );
    assert_eq!(card["ENIs"][&eni0]["IsPrimary"], true);
    assert_eq!(card["ENIs"][&eni1]["DeviceNumber"], 1);
    assert_eq!(card["ENIs"][&eni1]["RouteTableID"], 2);
    let addr =
        &card["ENIs"][&eni0]["AvailableIPv4Cidrs"]["10.0.0.11/32"]["IPAddresses"]["10.0.0.11"];
    assert_eq!(addr["IPAMMetadata"]["k8sPodName"], "web-0", "{enis}");
    assert_eq!(addr["IPAMKey"]["networkName"], "aws-cni");
    let pods_json = introspect(&node, "/v1/pods");
    let listed: Vec<(String, String)> = pods_json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["IP"].as_str().unwrap().to_owned(),
                p["IPAMMetadata"]["k8sPodName"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 4, "{pods_json}");
    assert!(
        listed.contains(&("10.0.0.21".to_owned(), "web-2".to_owned())),
        "{pods_json}"
    );
    assert_eq!(
        pods_json[0]["IPAMKey"]["containerID"],
        pods[0].container_id.as_str(),
        "{pods_json}"
    );
    let pool = introspect(&node, "/v1/pool");
    assert_eq!(pool["Ready"], true);
    assert_eq!(pool["AssignableIPs"], 0);
    assert_eq!(pool["InstanceType"], "m5.large");
    assert!(
        pool["Message"]
            .as_str()
            .unwrap()
            .starts_with("no assignable IP"),
        "{pool}"
    );
    let net = introspect(&node, "/v1/networkutils-env-settings");
    assert_eq!(net["AWS_VPC_K8S_CNI_VETHPREFIX"], "eni");
    assert_eq!(net["AWS_VPC_ENI_MTU"], 9001);
    let env = introspect(&node, "/v1/ipamd-env-settings");
    assert_eq!(env["IP_COOLDOWN_PERIOD"], 30);
    assert_eq!(env["WARM_ENI_TARGET"], 1);

    // The human view.
    let out = ipamd_in(node.ns(), &["status"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "ipamd:          ready — instance {} (m5.large)\n",
            node.description().instance_id
        )),
        "{text}"
    );
    assert!(
        text.contains("IPs:            5 total, 4 assigned, 1 cooling, 0 assignable, on 2 ENIs\n"),
        "{text}"
    );
    assert!(text.contains("last EC2 error: none\n"), "{text}");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("eni-"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                eni0.as_str(),
                "0",
                "main",
                "10.0.0.10",
                "10.0.0.0/24",
                "2",
                "1",
                "1",
                "0",
                "0"
            ],
            vec![
                eni1.as_str(),
                "1",
                "2",
                "10.0.0.20",
                "10.0.0.0/24",
                "3",
                "3",
                "0",
                "0",
                "0"
            ],
        ],
        "{text}"
    );
}

#[test]
fn metrics_listen_on_every_address_and_introspection_on_loopback_only() {
    let node = start(NodeOptions::new(standard_node(&[1])));
    let node_ip = node.description().interfaces[0].local_ipv4s[0];
    // From the VPC router: the node's /metrics (Prometheus scrapes the node IP), never its
    // introspection endpoint.
    let from_vpc = http_get_in(
        node.vpc(),
        SocketAddr::new(node_ip.into(), 61678),
        "/metrics",
    )
    .unwrap_or_else(|e| panic!("metrics not reachable on {node_ip}:61678 ({METRICS}): {e}"));
    assert_eq!(from_vpc.status, 200);
    assert!(
        from_vpc.body.contains("awscni_total_ip_addresses 1\n"),
        "{}",
        from_vpc.body
    );
    let refused = http_get_in(node.vpc(), SocketAddr::new(node_ip.into(), 61679), "/");
    assert!(
        refused.is_err(),
        "introspection answered off-node: {refused:?}"
    );
    let other = http_get_in(node.ns(), metrics_addr(), "/v1/enis").unwrap();
    assert_eq!(other.status, 404);
}

#[test]
fn disabled_endpoints_do_not_listen() {
    let node = start(
        NodeOptions::new(standard_node(&[1]))
            .ipamd_env("DISABLE_METRICS", "true")
            .ipamd_env("DISABLE_INTROSPECTION", "true"),
    );
    // ipamd is ready (the harness waited for the conflist) and still serves pods.
    let pod = Pod::new("default", "lone").unwrap();
    node.add_pod(&pod, "1.0.0")
        .unwrap_or_else(|e| panic!("{e}"));
    for addr in [metrics_addr(), introspection_addr()] {
        let r = http_get_in(node.ns(), addr, "/");
        let err = r.expect_err("the endpoint is disabled but answered");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}: {err}"
        );
    }
    let out = ipamd_in(node.ns(), &["status"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot connect to ipamd's introspection endpoint at 127.0.0.1:61679"),
        "{}",
        describe(&out)
    );
}

#[test]
fn introspection_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("introspect.sock");
    let node = start(NodeOptions::new(standard_node(&[2])).ipamd_env(
        "INTROSPECTION_BIND_ADDRESS",
        &format!("unix:{}", sock.display()),
    ));
    let out = ipamd_in(
        node.ns(),
        &["status", "--addr", &format!("unix:{}", sock.display())],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("IPs:            2 total, 0 assigned, 0 cooling, 2 assignable, on 1 ENI\n"),
        "{}",
        describe(&out)
    );
    // The same through INTROSPECTION_BIND_ADDRESS, as `kubectl exec ... ipamd status` in the pod.
    let env = format!("unix:{}", sock.display());
    let out = ipamd_in(
        node.ns(),
        &["status"],
        &[("INTROSPECTION_BIND_ADDRESS", env.as_str())],
    );
    assert!(out.status.success(), "{}", describe(&out));
}
