//! ipamd on a node with two ENIs: it brings the secondary ENI up the way the reference does and
//! writes the conflist the runtime reads, once ready.

use std::time::Duration;

use harness::standard_node;

use crate::{check, must, ok, start_node};

#[test]
fn ipamd_brings_up_the_secondary_eni_and_writes_the_conflist() {
    let mut node = start_node(standard_node(&[4, 4]));
    let ns = node.ns();

    // eth1 (device 1): up, its primary address with the subnet's prefix, own route table 2.
    let eth1 = ok(&node, ns.link("eth1")).unwrap();
    let flags = eth1["flags"].to_string();
    check!(node, flags.contains("\"UP\""), "eth1 is not up: {eth1}");
    check!(
        node,
        eth1["address"] == "02:00:0a:00:00:14",
        "eth1 MAC changed: {eth1}"
    );
    let addrs = ok(&node, ns.addresses_of("eth1"));
    check!(
        node,
        addrs == vec!["10.0.0.20/24"],
        "eth1 addresses {addrs:?}, want [10.0.0.20/24]"
    );
    let table2 = ok(&node, ns.routes("2"));
    check!(
        node,
        table2
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "10.0.0.1" && r["dev"] == "eth1"),
        "table 2 lacks `default via 10.0.0.1 dev eth1`: {table2:?}"
    );
    check!(
        node,
        table2
            .iter()
            .any(|r| r["dst"] == "10.0.0.1" && r["dev"] == "eth1" && r["scope"] == "link"),
        "table 2 lacks `10.0.0.1 dev eth1 scope link`: {table2:?}"
    );
    let rules = ok(&node, ns.rules());
    let eni_rules: Vec<_> = rules.iter().filter(|r| r["priority"] == 32765).collect();
    check!(
        node,
        eni_rules.len() == 1 && eni_rules[0]["src"] == "10.0.0.20" && eni_rules[0]["table"] == "2",
        "want exactly `32765: from 10.0.0.20 lookup 2`, got {eni_rules:?}"
    );
    let main = ok(&node, ns.routes("main"));
    check!(
        node,
        !main.iter().any(|r| r["dev"] == "eth1"),
        "the main table still routes via eth1: {main:?}"
    );
    // eth0 is left as the node OS configured it.
    check!(
        node,
        ok(&node, ns.addresses_of("eth0")) == vec!["10.0.0.10/24"],
        "eth0 address changed"
    );

    // The conflist: cniVersion 1.0.0, the aws-cni entry pointing at this ipamd, then portmap.
    let conflist = ok(&node, node.conflist());
    check!(
        node,
        conflist["cniVersion"] == "1.0.0" && conflist["name"] == "aws-cni",
        "conflist header: {conflist}"
    );
    let plugins = conflist["plugins"].as_array().cloned().unwrap_or_default();
    check!(node, plugins.len() == 2, "want 2 plugins: {conflist}");
    let aws = &plugins[0];
    let socket = node.socket_path().to_string_lossy().into_owned();
    let plugin_log = node.plugin_log_path().to_string_lossy().into_owned();
    check!(
        node,
        aws["type"] == "aws-cni"
            && aws["name"] == "aws-cni"
            && aws["ipamdSocket"] == socket.as_str()
            && aws["vethPrefix"] == "eni"
            && aws["mtu"] == "9001"
            && aws["pluginLogFile"] == plugin_log.as_str()
            && aws["podSGEnforcingMode"] == "strict",
        "aws-cni entry: {aws}"
    );
    check!(
        node,
        plugins[1]["type"] == "portmap"
            && plugins[1]["capabilities"]["portMappings"] == true
            && plugins[1]["snat"] == true,
        "portmap entry: {}",
        plugins[1]
    );
    check!(
        node,
        conflist.get("disableCheck").is_none(),
        "CHECK is real, the conflist must not disable it: {conflist}"
    );

    // The pool is exactly the metadata's secondary addresses.
    let status = ok(&node, node.pool_status());
    check!(
        node,
        status.ready
            && status.total_i_ps == 8
            && status.assigned_i_ps == 0
            && status.assignable_i_ps == 8,
        "pool status {status:?}, want ready with 8 assignable IPs"
    );

    // Bring-up is idempotent: a restart adds no duplicate rule or route.
    must(node.restart_ipamd());
    let ns = node.ns();
    let rules = ok(&node, ns.rules());
    let count = rules.iter().filter(|r| r["priority"] == 32765).count();
    check!(
        node,
        count == 1,
        "after restart {count} rules 32765: {rules:?}"
    );
    let table2_again = ok(&node, ns.routes("2"));
    check!(
        node,
        table2_again.len() == table2.len(),
        "table 2 changed across a restart: {table2:?} -> {table2_again:?}"
    );
    let stopped = must(node.stop_ipamd(Duration::from_secs(15)));
    check!(node, stopped.success(), "ipamd exited {stopped} on SIGTERM");
}
