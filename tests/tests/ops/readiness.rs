//! `ipamd probe` answers as the DaemonSet's probes need (not ready → non-zero, ready → 0, the
//! reference probe's exit codes), and the install flow: the conflist appears only once ipamd is
//! ready, and it is the one the plugin accepts.

use std::time::{Duration, Instant};

use harness::{NodeOptions, Pod, SimNode, standard_node};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::{describe, http_get_in, ipamd_in, read, start};

fn probe(node: &SimNode, extra: &[&str]) -> std::process::Output {
    let addr = format!("-addr=unix://{}", node.socket_path().display());
    let mut args = vec![
        "probe",
        addr.as_str(),
        "-connect-timeout=2s",
        "-rpc-timeout=2s",
    ];
    args.extend_from_slice(extra);
    ipamd_in(node.ns(), &args, &[])
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn probe_and_conflist_follow_readiness() {
    let mut node = start(NodeOptions::new(standard_node(&[2])).without_ipamd());
    let conflist = node.conflist_path();

    // No ipamd at all: connection failure.
    let out = probe(&node, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed to connect to service"),
        "{}",
        describe(&out)
    );
    // Bad flags: 1, as grpc-health-probe.
    let out = ipamd_in(node.ns(), &["probe", "-adrr=x"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    // Instance metadata names a primary MAC that no link has: ipamd binds its socket but
    // cannot become ready.
    let real_mac = node.description().interfaces[0].mac.clone();
    node.update_description(|d| d.interfaces[0].mac = "02:00:0a:ff:ff:fe".into())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ipamd = node
        .spawn_ipamd_process(&[])
        .unwrap_or_else(|e| panic!("{e}"));
    let socket = node.socket_path();
    wait_for("ipamd's socket", Duration::from_secs(20), || {
        socket.exists()
    });
    let unready_since = Instant::now();
    let out = probe(&node, &[]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}\n{}",
        describe(&out),
        node.diag()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_SERVING"),
        "{}",
        describe(&out)
    );
    let out = probe(&node, &["-service=grpc.health.v1.aws-node"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    // Meanwhile the metrics and introspection already answer, and say why.
    let pool = http_get_in(node.ns(), "127.0.0.1:61679".parse().unwrap(), "/v1/pool").unwrap();
    let pool: Value = serde_json::from_str(&pool.body).unwrap();
    assert_eq!(pool["Ready"], false, "{pool}");
    assert_eq!(pool["Phase"], "starting", "{pool}");
    wait_for("a counted init error", Duration::from_secs(10), || {
        http_get_in(node.ns(), "127.0.0.1:61678".parse().unwrap(), "/metrics").is_ok_and(|a| {
            a.body
                .lines()
                .any(|l| l.starts_with("awscni_ipamd_error_count{fn=\"nodeInit\"} "))
        })
    });
    // Not ready for a while: still no conflist (kubelet keeps the node NotReady).
    while unready_since.elapsed() < Duration::from_secs(2) {
        assert!(
            !conflist.exists(),
            "conflist written before ipamd was ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(probe(&node, &[]).status.code(), Some(4));
    assert!(ipamd.try_wait().is_none(), "ipamd gave up: {}", node.diag());

    // Metadata heals: ipamd becomes ready, then writes the conflist.
    node.update_description(|d| d.interfaces[0].mac = real_mac)
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("the conflist", Duration::from_secs(30), || {
        conflist.exists()
    });
    let out = probe(&node, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "status: SERVING\n");

    // The conflist is the template of conf/ with this node's paths, and the plugin accepts it.
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    let mut template: Value = serde_json::from_str(&read("conf/10-aws.conflist")).unwrap();
    template["plugins"][0]["pluginLogFile"] = written["plugins"][0]["pluginLogFile"].clone();
    template["plugins"][0]["ipamdSocket"] = Value::from(socket.display().to_string());
    assert_eq!(written, template);
    let pod = Pod::new("default", "first").unwrap();
    let result = node
        .add_pod(&pod, "1.0.0")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        harness::cni::result_ip(&result)
            .map(|ip| ip.to_string())
            .as_deref(),
        Some("10.0.0.11"),
        "{result}"
    );
    node.del_pod(&pod, "1.0.0", Some(&result))
        .unwrap_or_else(|e| panic!("{e}"));

    // Shutting down: the socket goes away and the probe fails again.
    ipamd.signal(Signal::SIGTERM).unwrap();
    let status = ipamd
        .wait_timeout(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("ipamd ignored SIGTERM\n{}", node.diag()));
    assert!(status.success(), "{status:?}");
    assert_eq!(probe(&node, &[]).status.code(), Some(2));
}
