//! In EC2 mode (ipamd against moto in the simulated VPC), `/metrics` carries the EC2 client's
//! families and the instance limits, and `ipamd status` shows the limits and, once EC2 fails,
//! the last EC2 error.

use std::time::{Duration, Instant};

use harness::{FabricOptions, NodeSpec, Pod, VpcFabric};
use serde_json::Value;

use super::{describe, http_get_in, ipamd_in};

fn series(text: &str, prefix: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN)))
        .collect()
}

#[test]
fn ec2_mode_exposes_limits_ec2_calls_and_the_last_ec2_error() {
    let vpc = VpcFabric::start(FabricOptions::default())
        .unwrap_or_else(|e| panic!("cannot start the simulated VPC: {e}"));
    // t3.small: 3 ENIs x 4 IPv4 addresses → 3 pod IPs per ENI, max pods 3 x 3 + 2 = 11.
    let node = vpc
        .add_node(NodeSpec::new("ops-ec2", "t3.small"))
        .unwrap_or_else(|e| panic!("cannot start the node: {e}\n{}", vpc.diag()));
    let metrics = "127.0.0.1:61678".parse().unwrap();
    let text = http_get_in(node.ns(), metrics, "/metrics").unwrap().body;
    assert_eq!(
        series(&text, "awscni_eni_max "),
        [("awscni_eni_max".to_owned(), 3.0)],
        "{text}"
    );
    assert_eq!(
        series(&text, "awscni_ip_max "),
        [("awscni_ip_max".to_owned(), 9.0)],
        "{text}"
    );
    let requests = series(&text, "awscni_ec2api_req_count{");
    assert!(
        requests
            .iter()
            .any(|(k, v)| k.contains("fn=\"DescribeNetworkInterfaces\"") && *v >= 1.0),
        "no counted EC2 call:\n{text}"
    );
    assert!(
        text.contains("# TYPE awscni_ec2api_req_count counter\n"),
        "{text}"
    );
    assert!(
        !series(&text, "awscni_aws_api_latency_ms_count{").is_empty(),
        "no EC2 latency:\n{text}"
    );

    let out = ipamd_in(node.ns(), &["status"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.contains("mode:           EC2 provisioning\n"),
        "{status}"
    );
    assert!(
        status.contains("limits:         3 ENIs x 3 IPs = 9 pod IPs, max pods 11\n"),
        "{status}"
    );
    assert!(
        status.contains(&format!("instance {} (t3.small)", node.instance_id())),
        "{status}"
    );

    // EC2 becomes unreachable; a pod takes a warm IP, the pool manager tries to grow and fails.
    vpc.set_ec2_reachable(false).unwrap();
    let pod = Pod::new("default", "ops-ec2-pod").unwrap();
    node.add_pod(&pod, "1.0.0")
        .unwrap_or_else(|e| panic!("the warm pool must serve the pod while EC2 fails: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let pool = loop {
        let answer =
            http_get_in(node.ns(), "127.0.0.1:61679".parse().unwrap(), "/v1/pool").unwrap();
        let pool: Value = serde_json::from_str(&answer.body).unwrap();
        if !pool["LastEC2Error"].is_null() {
            break pool;
        }
        assert!(
            Instant::now() < deadline,
            "no EC2 error recorded: {pool}\n{}",
            node.diag()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let operation = pool["LastEC2Error"]["Operation"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!operation.is_empty(), "{pool}");
    let out = ipamd_in(node.ns(), &["status"], &[]);
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.contains(&format!("last EC2 error: {operation} at ")),
        "{status}"
    );
    let text = http_get_in(node.ns(), metrics, "/metrics").unwrap().body;
    assert!(
        series(&text, "awscni_ec2api_error_count{")
            .iter()
            .any(|(_, v)| *v >= 1.0),
        "EC2 errors not counted:\n{text}"
    );
    vpc.set_ec2_reachable(true).unwrap();
}
