//! The plugin driven by real libcni (Debian's libcni 1.1.2 through `cniclient`), inside the
//! node's namespace, with the conflist ipamd wrote: ADD, CHECK, tampering, DEL and its
//! idempotency, plus a 0.4.0 conflist and a 0.3.1 one (no CHECK, no cached result on DEL, with
//! ipamd up and down).

use std::net::Ipv4Addr;

use harness::node::{CONFLIST_NAME, NETWORK_NAME};
use harness::{CniClient, Pod, standard_node};
use serde_json::Value;

use crate::{
    assert_pod_gone, assert_pod_network, assert_pod_unrouted, check, must, ok, pod, pod_ip,
    start_node, table_of,
};

fn cache_file(client: &CniClient<'_>, pod: &Pod) -> std::path::PathBuf {
    client.cache_dir().join("results").join(format!(
        "{NETWORK_NAME}-{}-{}",
        pod.container_id, pod.ifname
    ))
}

#[test]
fn libcni_add_check_del_lifecycle() {
    let node = start_node(standard_node(&[3, 3]));
    let client = ok(&node, CniClient::new(&node));

    let validate = ok(&node, client.validate(NETWORK_NAME));
    check!(
        node,
        validate.success(),
        "validate: {}",
        validate.describe()
    );
    let v = validate.json.clone().unwrap_or_default();
    check!(
        node,
        v["cniVersion"] == "1.0.0" && v["capabilities"].to_string().contains("portMappings"),
        "validate output {v}"
    );

    // Five pods on a node whose primary ENI has three secondary IPs: some land on eth1.
    let mut pods: Vec<Pod> = (0..5)
        .map(|i| pod("default", &format!("web-{i}")))
        .collect();
    let mut ips = Vec::new();
    for p in &pods {
        let out = ok(&node, client.add(NETWORK_NAME, p));
        check!(node, out.success(), "libcni ADD: {}", out.describe());
        let result = out.json.clone().unwrap_or_default();
        check!(
            node,
            result["cniVersion"] == "1.0.0",
            "result version: {result}"
        );
        let ip = pod_ip(&node, &result);
        let veth = p.host_veth("eni");
        let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
        check!(
            node,
            ifaces.iter().any(|i| i["name"] == veth.as_str())
                && ifaces
                    .iter()
                    .any(|i| i["name"] == "eth0" && i["sandbox"] == p.netns_path.as_str()),
            "result interfaces {ifaces:?} lack {veth} and eth0 in {}",
            p.netns_path
        );
        check!(
            node,
            cache_file(&client, p).is_file(),
            "libcni cached no result at {}",
            cache_file(&client, p).display()
        );
        assert_pod_network(&node, p, ip);
        ips.push(ip);
    }
    let distinct: std::collections::BTreeSet<_> = ips.iter().collect();
    check!(
        node,
        distinct.len() == ips.len(),
        "duplicate pod IPs {ips:?}"
    );
    let on_eth1: Vec<usize> = (0..ips.len())
        .filter(|&i| table_of(&node, ips[i]) == 2)
        .collect();
    let on_eth0: Vec<usize> = (0..ips.len())
        .filter(|&i| table_of(&node, ips[i]) == 254)
        .collect();
    check!(
        node,
        !on_eth1.is_empty() && !on_eth0.is_empty(),
        "want pods on both ENIs, got {ips:?}"
    );

    // Reachability: pod <-> node, pod <-> pod across ENIs, and an eth1 pod reaches the VPC
    // router through eth1 (rule 1536 -> table 2).
    let node_ip = Ipv4Addr::new(10, 0, 0, 10);
    let (a, b) = (on_eth0[0], on_eth1[0]);
    for (from, to) in [
        (pods[a].ns().unwrap(), node_ip),
        (pods[b].ns().unwrap(), node_ip),
        (node.ns(), ips[a]),
        (node.ns(), ips[b]),
        (pods[a].ns().unwrap(), ips[b]),
        (pods[b].ns().unwrap(), ips[a]),
    ] {
        let ping = ok(&node, node.ping(from, to));
        check!(
            node,
            ping.ok,
            "ping {} -> {to} failed: {}",
            from.name(),
            ping.output
        );
    }
    let tx = |node: &harness::SimNode| -> u64 {
        let link = ok(node, node.ns().ip_json(&["-s", "link", "show", "eth1"]));
        link[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or(0)
    };
    let before = tx(&node);
    let ping = ok(
        &node,
        node.ping(pods[b].ns().unwrap(), Ipv4Addr::new(10, 0, 0, 1)),
    );
    check!(
        node,
        ping.ok,
        "eth1 pod cannot reach the VPC gateway: {}",
        ping.output
    );
    let after = tx(&node);
    check!(
        node,
        after >= before + 3,
        "the eth1 pod's traffic did not leave through eth1 (tx {before} -> {after})"
    );

    // CHECK passes on an intact pod, fails once its default route is gone.
    let target = &pods[b];
    let out = ok(&node, client.check(NETWORK_NAME, target));
    check!(
        node,
        out.success(),
        "CHECK of an intact pod: {}",
        out.describe()
    );
    ok(&node, target.ns().unwrap().ip(&["route", "del", "default"]));
    let out = ok(&node, client.check(NETWORK_NAME, target));
    check!(
        node,
        !out.success(),
        "CHECK passed without the default route"
    );
    check!(
        node,
        out.error_code().is_some_and(|c| c >= 100),
        "CHECK failure must carry a plugin code >= 100: {}",
        out.describe()
    );
    check!(
        node,
        out.stdout.to_lowercase().contains("route"),
        "CHECK failure should name the route: {}",
        out.describe()
    );

    // DEL removes the pod's routing state and address, twice is fine, and after the netns is
    // gone too; the veth pair goes with the namespace.
    for (i, p) in pods.iter_mut().enumerate().take(3) {
        let veth = p.host_veth("eni");
        let out = ok(&node, client.del(NETWORK_NAME, p));
        check!(node, out.success(), "DEL: {}", out.describe());
        assert_pod_unrouted(&node, p, ips[i]);
        check!(
            node,
            ok(&node, node.ns().link(&veth)).is_some(),
            "DEL deleted the host veth {veth}; it goes with the namespace"
        );
        let pod_links = ok(&node, p.ns().unwrap().link_names());
        check!(
            node,
            pod_links == vec!["lo".to_owned(), "eth0".to_owned()],
            "pod namespace has {pod_links:?} after DEL, want lo and an eth0 without address"
        );
        check!(
            node,
            ok(&node, node.ipamd_assignment(p)).is_none(),
            "ipamd still holds {} after DEL",
            ips[i]
        );
        check!(
            node,
            !cache_file(&client, p).exists(),
            "libcni cache kept after DEL"
        );
        let again = ok(&node, client.del(NETWORK_NAME, p));
        check!(node, again.success(), "second DEL: {}", again.describe());
        ok(&node, p.delete_netns());
        assert_pod_gone(&node, p, ips[i]);
    }
    // Pod 3: DEL after an earlier DEL and its netns deletion; pod 4: netns deleted before any DEL.
    let out = ok(&node, client.del(NETWORK_NAME, &pods[3]));
    check!(node, out.success(), "DEL: {}", out.describe());
    for i in [3, 4] {
        ok(&node, pods[i].delete_netns());
        let out = ok(&node, client.del(NETWORK_NAME, &pods[i]));
        check!(
            node,
            out.success(),
            "DEL after netns deletion: {}",
            out.describe()
        );
        assert_pod_gone(&node, &pods[i], ips[i]);
        check!(
            node,
            ok(&node, node.ipamd_assignment(&pods[i])).is_none(),
            "ipamd still holds {} after DEL",
            ips[i]
        );
    }
    let status = ok(&node, node.pool_status());
    check!(
        node,
        status.assigned_i_ps == 0,
        "addresses still assigned after every DEL: {status:?}"
    );
}

#[test]
fn libcni_with_a_0_4_0_conflist_caches_ips_version() {
    let node = start_node(standard_node(&[2]));
    let mut conflist: Value = ok(&node, node.conflist());
    conflist["cniVersion"] = Value::from("0.4.0");
    let dir = node.dir().join("net.d-0.4.0");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(CONFLIST_NAME), conflist.to_string()).unwrap();
    let client = ok(&node, CniClient::new(&node)).with_confdir(&dir);

    let mut p = pod("kube-system", "coredns-0");
    let out = ok(&node, client.add(NETWORK_NAME, &p));
    check!(node, out.success(), "0.4.0 ADD: {}", out.describe());
    let result = out.json.clone().unwrap_or_default();
    check!(node, result["cniVersion"] == "0.4.0", "result {result}");
    let ip = pod_ip(&node, &result);
    let cached = ok(&node, client.cached(NETWORK_NAME, &p));
    check!(node, cached.success(), "cached: {}", cached.describe());
    let cached = cached.json.unwrap_or_default();
    check!(
        node,
        cached["ips"][0]["version"] == "4"
            && cached["ips"][0]["address"] == format!("{ip}/32").as_str(),
        "cached 0.4.0 result must carry ips[].version \"4\": {cached}"
    );
    assert_pod_network(&node, &p, ip);
    let out = ok(&node, client.check(NETWORK_NAME, &p));
    check!(node, out.success(), "0.4.0 CHECK: {}", out.describe());
    let out = ok(&node, client.del(NETWORK_NAME, &p));
    check!(node, out.success(), "0.4.0 DEL: {}", out.describe());
    assert_pod_unrouted(&node, &p, ip);
    ok(&node, p.delete_netns());
    assert_pod_gone(&node, &p, ip);
}

/// A 0.3.1 copy of ipamd's conflist (aws-cni then portmap, as ipamd writes them) in its own
/// directory.
fn conflist_0_3_1(node: &harness::SimNode) -> std::path::PathBuf {
    let mut conflist: Value = ok(node, node.conflist());
    conflist["cniVersion"] = Value::from("0.3.1");
    let plugins: Vec<Value> = conflist["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["type"] == "aws-cni" || p["type"] == "portmap")
        .collect();
    let types: Vec<&str> = plugins.iter().filter_map(|p| p["type"].as_str()).collect();
    check!(
        node,
        types == ["aws-cni", "portmap"],
        "ipamd's conflist lacks aws-cni then portmap: {conflist}"
    );
    conflist["plugins"] = Value::Array(plugins);
    let dir = node.dir().join("net.d-0.3.1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(CONFLIST_NAME), conflist.to_string()).unwrap();
    dir
}

#[test]
fn libcni_with_a_0_3_1_conflist_adds_and_deletes_without_cached_results() {
    let mut node = start_node(standard_node(&[3, 3]));
    let dir = conflist_0_3_1(&node);
    let mut pods: Vec<Pod> = (0..4)
        .map(|i| pod("default", &format!("legacy-{i}")))
        .collect();
    let mut ips = Vec::new();
    {
        let client = ok(&node, CniClient::new(&node)).with_confdir(&dir);
        // libcni's VERSION validation: both plugins support 0.3.1.
        let validate = ok(&node, client.validate(NETWORK_NAME));
        check!(
            node,
            validate.success() && validate.json.as_ref().unwrap()["cniVersion"] == "0.3.1",
            "validate: {}",
            validate.describe()
        );

        // Four pods on a node whose ENIs have three secondary IPs each: both ENIs serve.
        for p in &pods {
            let out = ok(&node, client.add(NETWORK_NAME, p));
            check!(node, out.success(), "0.3.1 ADD: {}", out.describe());
            let result = out.json.clone().unwrap_or_default();
            let ip = pod_ip(&node, &result);
            let veth = p.host_veth("eni");
            check!(
                node,
                result["cniVersion"] == "0.3.1"
                    && result["ips"].as_array().map(Vec::len) == Some(1)
                    && result["ips"][0]["version"] == "4"
                    && result["ips"][0]["gateway"] == "169.254.1.1"
                    && result["ips"][0]["interface"] == 1
                    && result["interfaces"][0]["name"] == veth.as_str()
                    && result["interfaces"][1]["name"] == "eth0"
                    && result["interfaces"][1]["sandbox"] == p.netns_path.as_str()
                    && result["routes"]
                        == serde_json::json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]),
                "not the 0.3.1 result of {veth}/eth0 in {}: {result}",
                p.netns_path
            );
            // libcni caches it (it just never hands it to a 0.3.1 DEL).
            let cached = ok(&node, client.cached(NETWORK_NAME, p));
            check!(
                node,
                cached.success() && cached.json.as_ref().unwrap()["ips"][0]["version"] == "4",
                "cached: {}",
                cached.describe()
            );
            assert_pod_network(&node, p, ip);
            ips.push(ip);
        }
        let tables: Vec<u32> = ips.iter().map(|ip| table_of(&node, *ip)).collect();
        check!(
            node,
            tables.contains(&254) && tables.iter().any(|t| *t != 254),
            "want pods on both ENIs (rule 1536 for the secondary one), got {ips:?} in {tables:?}"
        );
        let ping = ok(&node, node.ping(pods[0].ns().unwrap(), ips[1]));
        check!(node, ping.ok, "pod -> pod: {}", ping.output);

        // CHECK does not exist before 0.4.0: libcni refuses it without exec'ing a plugin.
        let out = ok(&node, client.check(NETWORK_NAME, &pods[0]));
        check!(
            node,
            !out.success() && out.stderr.contains("does not support the CHECK command"),
            "0.3.1 CHECK: {}",
            out.describe()
        );
        assert_pod_network(&node, &pods[0], ips[0]);

        // DEL with ipamd up: no prevResult, ipamd names the address; the host route and rules
        // 512/1536 go, the pod's eth0 loses the address, ipamd releases it.
        for i in 0..2 {
            let p = &pods[i];
            let out = ok(&node, client.del(NETWORK_NAME, p));
            check!(node, out.success(), "0.3.1 DEL: {}", out.describe());
            assert_pod_unrouted(&node, p, ips[i]);
            check!(
                node,
                ok(&node, node.ipamd_assignment(p)).is_none(),
                "ipamd still holds {} after the 0.3.1 DEL",
                ips[i]
            );
            let again = ok(&node, client.del(NETWORK_NAME, p));
            check!(node, again.success(), "second DEL: {}", again.describe());
        }
    }
    for i in 0..2 {
        ok(&node, pods[i].delete_netns());
        assert_pod_gone(&node, &pods[i], ips[i]);
    }

    // DEL with ipamd down: the plugin learns the address from the pod's eth0 and still
    // removes the host route and the rules; ipamd, back, releases it on the runtime's next DEL.
    must(node.stop_ipamd(std::time::Duration::from_secs(15)));
    {
        let client = ok(&node, CniClient::new(&node)).with_confdir(&dir);
        for i in 2..4 {
            let out = ok(&node, client.del(NETWORK_NAME, &pods[i]));
            check!(
                node,
                out.success(),
                "0.3.1 DEL without ipamd: {}",
                out.describe()
            );
            assert_pod_unrouted(&node, &pods[i], ips[i]);
        }
    }
    must(node.start_ipamd());
    let client = ok(&node, CniClient::new(&node)).with_confdir(&dir);
    for i in 2..4 {
        check!(
            node,
            ok(&node, node.ipamd_assignment(&pods[i])) == Some(ips[i]),
            "ipamd, restarted, lost {} of a pod whose DEL it did not see",
            ips[i]
        );
        let out = ok(&node, client.del(NETWORK_NAME, &pods[i]));
        check!(
            node,
            out.success(),
            "DEL with ipamd back: {}",
            out.describe()
        );
        check!(
            node,
            ok(&node, node.ipamd_assignment(&pods[i])).is_none(),
            "ipamd still holds {} after the DEL",
            ips[i]
        );
        ok(&node, pods[i].delete_netns());
        assert_pod_gone(&node, &pods[i], ips[i]);
    }
    let status = ok(&node, node.pool_status());
    check!(
        node,
        status.assigned_i_ps == 0,
        "addresses still assigned after every DEL: {status:?}"
    );
}
