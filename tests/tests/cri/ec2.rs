//! CRI on a node of the simulated VPC in EC2 mode: ipamd grows its pool through EC2 (moto)
//! while 20 sandboxes are started at once (more than its warm pool holds; retried on failure
//! as kubelet does), every sandbox gets an address that moto shows on one of the instance's
//! ENIs, pods on different ENIs reach each other, and removing them leaves nothing on the node
//! and nothing assigned in ipamd.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::cri::{Containerd, PodSpec};
use harness::{FabricOptions, NodeSpec, VpcFabric};

use crate::{
    assert_sandbox_gone, assert_sandbox_networked, assert_two_dels, check, containerd, fail, ok,
};

/// RunPodSandbox retried every 500 ms until `timeout`, as kubelet retries a sandbox whose
/// network setup failed (the pool may still be growing through EC2). Returns the sandbox id
/// and how many attempts failed.
fn run_pod_retrying(
    ctd: &Containerd,
    spec: &PodSpec,
    timeout: Duration,
) -> Result<(String, usize), String> {
    let deadline = Instant::now() + timeout;
    let mut failed = 0;
    loop {
        match ctd.run_pod(spec) {
            Ok(id) => return Ok((id, failed)),
            Err(_) if Instant::now() < deadline => {
                failed += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Sandboxes on an EC2-mode node get addresses of the instance's ENIs in moto, on more than one
/// ENI, reach each other, and leave nothing once stopped and removed.
#[test]
fn ec2_mode_sandboxes_get_vpc_addresses_through_cri() {
    let vpc = VpcFabric::start(FabricOptions::default())
        .unwrap_or_else(|e| panic!("cannot start the simulated VPC: {e}"));
    let node = vpc
        .add_node(NodeSpec::new("cri-0", "m5.large"))
        .unwrap_or_else(|e| panic!("cannot start the node: {e}\n{}", vpc.diag()));
    let ctd = containerd(&node);
    ok(&node, &ctd, ctd.wait_network_ready(Duration::from_secs(10)));
    let specs: Vec<PodSpec> = (0..20)
        .map(|i| PodSpec::new("vpc", &format!("app-{i}")))
        .collect();
    let started = Instant::now();
    let runs: Vec<(String, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| s.spawn(|| run_pod_retrying(&ctd, spec, Duration::from_secs(120))))
            .collect();
        handles
            .into_iter()
            .map(|h| ok(&node, &ctd, h.join().unwrap()))
            .collect()
    });
    let ids: Vec<String> = runs.iter().map(|(id, _)| id.clone()).collect();
    eprintln!(
        "20 sandboxes on an EC2-mode node: {:?}, {} RunPodSandbox attempts failed while the pool grew",
        started.elapsed(),
        runs.iter().map(|(_, f)| f).sum::<usize>()
    );
    let ips: Vec<Ipv4Addr> = specs
        .iter()
        .zip(&ids)
        .map(|(spec, id)| assert_sandbox_networked(&node, &ctd, spec, id))
        .collect();
    let distinct: BTreeSet<Ipv4Addr> = ips.iter().copied().collect();
    check!(
        node,
        ctd,
        distinct.len() == ips.len(),
        "addresses given twice: {ips:?}"
    );
    let mut enis = BTreeSet::new();
    for ip in &ips {
        let eni = ok(&node, &ctd, node.eni_holding(*ip));
        match eni {
            Some(e)
                if e.attachment
                    .as_ref()
                    .is_some_and(|a| a.instance_id == node.instance_id()) =>
            {
                enis.insert(e.id.clone());
            }
            other => fail(
                &node,
                &ctd,
                format!("{ip} is on no ENI of the instance in moto: {other:?}"),
            ),
        }
    }
    check!(
        node,
        ctd,
        enis.len() >= 2,
        "20 pods on a m5.large fit on one ENI? {enis:?}"
    );

    // Pods reach each other (the first and the last pod, on different ENIs when they are).
    let (first, last) = (0, ips.len() - 1);
    let netns = ok(&node, &ctd, ctd.pod_netns(&ids[first]));
    let name = netns.file_name().unwrap().to_string_lossy().into_owned();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &name, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1",
        ])
        .arg(ips[last].to_string())
        .output()
        .unwrap();
    check!(
        node,
        ctd,
        out.status.success(),
        "pod {} cannot reach pod {}: {}",
        ips[first],
        ips[last],
        String::from_utf8_lossy(&out.stdout)
    );

    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(|| ctd.stop_pod(id).and_then(|()| ctd.remove_pod(id))))
            .collect();
        for h in handles {
            ok(&node, &ctd, h.join().unwrap());
        }
    });
    for ((spec, id), ip) in specs.iter().zip(&ids).zip(&ips) {
        assert_two_dels(&node, &ctd, id);
        assert_sandbox_gone(&node, &ctd, spec, id, *ip);
    }
    check!(
        node,
        ctd,
        ok(&node, &ctd, node.pool_status()).assigned_i_ps == 0,
        "ipamd still counts assignments"
    );
    let errors = ctd.cni_reload_errors();
    check!(node, ctd, errors.is_empty(), "reload errors: {errors:?}");
}
