//! ipamd's own lifecycle: invalid configuration stops it at once naming the variable; SIGTERM
//! ends it cleanly.

use std::time::{Duration, Instant};

use harness::{NodeOptions, standard_node};
use test_support::netns::NetnsProcess;
use test_support::netns::tail;

use crate::{check, must, ok, start};

#[test]
fn invalid_configuration_stops_ipamd_naming_the_variable() {
    let node = start(NodeOptions::new(standard_node(&[2])).without_ipamd());
    for (var, value) in [("IP_COOLDOWN_PERIOD", "-3"), ("AWS_VPC_ENI_MTU", "70000")] {
        let started = Instant::now();
        let mut process = ok(&node, node.spawn_ipamd_process(&[(var, value)]));
        let status = process.wait_timeout(Duration::from_secs(10));
        let status = match status {
            Some(s) => s,
            None => {
                process.kill();
                panic!(
                    "ipamd with {var}={value} still runs after 10 s\n{}",
                    node.diag()
                );
            }
        };
        check!(
            node,
            started.elapsed() < Duration::from_secs(5),
            "ipamd with {var}={value} took {:?} to give up",
            started.elapsed()
        );
        check!(
            node,
            !status.success(),
            "ipamd with {var}={value} exited {}",
            NetnsProcess::describe_status(status)
        );
        let said = format!(
            "{}\n{}",
            tail(&node.ipamd_output_path(), 50),
            tail(&node.ipamd_log_path(), 50)
        );
        check!(
            node,
            said.contains(var) && said.contains(value),
            "ipamd's message for {var}={value} does not name the variable and value:\n{said}"
        );
        check!(
            node,
            !node.socket_path().exists() && !node.conflist_path().exists(),
            "a misconfigured ipamd bound its socket or wrote the conflist"
        );
    }
}

#[test]
fn sigterm_stops_ipamd_with_exit_0_and_removes_its_socket() {
    let mut node = start(NodeOptions::new(standard_node(&[2])));
    check!(node, node.socket_path().exists(), "no socket while running");
    let status = must(node.stop_ipamd(Duration::from_secs(15)));
    check!(
        node,
        status.success(),
        "ipamd exited {} on SIGTERM",
        NetnsProcess::describe_status(status)
    );
    check!(
        node,
        !node.socket_path().exists(),
        "ipamd left its socket {} behind",
        node.socket_path().display()
    );
}
