//! `vpcsim k8s-demo` (`make k8s-demo`): the path of issue 14 with real Kubernetes components on
//! the VPC simulator. A control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, v1.37 built by `make kube-bins`) on the VPC's internet side; two m5.large
//! nodes, each with containerd, kubelet and kube-proxy, NotReady until aws-node runs there; the
//! aws-node DaemonSet deployed with `kubectl apply -k` from `conf/` (the project's image from
//! `make node-image`, imported into each node's containerd; ipamd in EC2 mode over moto); a
//! Deployment of 30 pods spread over the nodes, each pod's address from aws-cni and ipamd, and
//! the checks a user would make: where each pod landed (node, ENI, address), pods pinging each
//! other across the nodes, a ClusterIP and a NodePort Service answering. Then everything is torn
//! down.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use harness::kube::workloads::{self, WEB_NODE_PORT};
use harness::kube::{ControlPlane, KubeNode, NODE_IMAGE_REPO, aws_node, kube_version};
use harness::vpc::router::ec2_endpoint;
use harness::{FabricOptions, NodeSpec, VpcFabric};

const NODES: [&str; 2] = ["node-a", "node-b"];
const PODS: usize = 30;

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    say!(
        "== a VPC on moto, with a Kubernetes {} control plane ==",
        kube_version()?
    );
    let vpc = VpcFabric::start(FabricOptions::default()).context("starting the VPC simulator")?;
    let cp = ControlPlane::start(vpc.internet()).context("starting the control plane")?;
    say!(
        "API server {} (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) in {:.1} s",
        cp.endpoint(),
        started.elapsed().as_secs_f64()
    );
    let ns = vpc.internet();
    let kubectl = |args: &[&str]| cp.kubectl_ok(ns, args).context("kubectl");
    let mut nodes = Vec::new();
    for name in NODES {
        let t = Instant::now();
        let kn = KubeNode::join(&vpc, &cp, NodeSpec::new(name, "m5.large"), 29)
            .with_context(|| format!("starting node {name}"))?;
        say!(
            "node {name}: instance {} ({}), containerd with the project's image, kubelet and kube-proxy; registered in {:.1} s",
            kn.node.instance_id(),
            kn.node.primary_ip(),
            t.elapsed().as_secs_f64(),
        );
        nodes.push(kn);
    }
    say!("\n$ kubectl get nodes   # no CNI yet");
    say!("{}", kubectl(&["get", "nodes"])?.trim_end());

    let t = Instant::now();
    say!(
        "\n$ kubectl apply -k <overlay of conf/: image {NODE_IMAGE_REPO}:{}, AWS_ENDPOINT_URL_EC2>",
        aws_node::FIRST_TAG
    );
    say!(
        "{}",
        aws_node::deploy(&cp, ns, aws_node::FIRST_TAG, &ec2_endpoint())?.trim_end()
    );
    let image = format!("{NODE_IMAGE_REPO}:{}", aws_node::FIRST_TAG);
    aws_node::wait_ready(&cp, ns, &NODES, &image, Duration::from_secs(180))?;
    for kn in &mut nodes {
        kn.kubelet
            .wait_ready(&cp, ns, Duration::from_secs(60))
            .with_context(|| format!("node {} Ready", kn.name()))?;
    }
    say!(
        "aws-node Ready on both nodes and the nodes Ready {:.1} s after the apply",
        t.elapsed().as_secs_f64()
    );
    say!("\n$ kubectl -n kube-system get pods -o wide");
    say!(
        "{}",
        kubectl(&["-n", "kube-system", "get", "pods", "-o", "wide"])?.trim_end()
    );
    say!("\n$ kubectl get nodes -o wide");
    say!("{}", kubectl(&["get", "nodes", "-o", "wide"])?.trim_end());

    workloads::wait_service_account(&cp, ns, "default", Duration::from_secs(60))?;
    let apply = |file: &str, manifest: &str| -> anyhow::Result<String> {
        let path = cp.dir().join(file);
        std::fs::write(&path, manifest)?;
        let path = path.display().to_string();
        kubectl(&["apply", "-f", &path])?;
        Ok(path)
    };
    let t = Instant::now();
    apply("spread.yaml", &workloads::spread("spread", PODS))?;
    let pods = workloads::running_pods(&cp, ns, "app=spread", PODS, Duration::from_secs(240))?;
    say!(
        "\n== Deployment spread: {PODS} pods running in {:.1} s ==",
        t.elapsed().as_secs_f64()
    );
    say!("{:<28} {:<8} {:<15} ENI (device)", "POD", "NODE", "IP");
    for p in &pods {
        let kn = nodes
            .iter()
            .find(|k| k.kubelet.name() == p.node)
            .context("a pod on an unknown node")?;
        let eni = kn
            .node
            .eni_holding(p.ip)?
            .map(|e| format!("{} (eth{})", e.id, e.device_index().unwrap_or(0)))
            .unwrap_or_else(|| "NOT ON THE NODE'S ENIs".into());
        say!("{:<28} {:<8} {:<15} {eni}", p.name, p.node, p.ip);
    }

    say!("\n== checks ==");
    let a = pods
        .iter()
        .find(|p| p.node == NODES[0])
        .context("no pod on node-a")?;
    let b = pods
        .iter()
        .find(|p| p.node == NODES[1])
        .context("no pod on node-b")?;
    for (from, to) in [(a, b), (b, a)] {
        workloads::ping(&cp, ns, from, to)?;
        say!(
            "ping {} ({}) -> {} ({}): ok",
            from.name,
            from.node,
            to.name,
            to.node
        );
    }
    apply("web.yaml", &workloads::web())?;
    let backends: Vec<String> =
        workloads::running_pods(&cp, ns, "app=web", 2, Duration::from_secs(120))?
            .into_iter()
            .map(|p| p.name)
            .collect();
    let cluster_ip = kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let script = workloads::http_get(&cluster_ip, 80);
    let mut answer = None;
    wait(Duration::from_secs(60), "the ClusterIP", || {
        answer = kubectl(&["exec", &a.name, "--", "/bin/busybox", "sh", "-c", &script])
            .ok()
            .and_then(|out| workloads::http_body(&out));
        answer.is_some()
    })?;
    say!(
        "ClusterIP Service web {cluster_ip}:80 from pod {}: answered by {}",
        a.name,
        answer.unwrap_or_default()
    );
    for kn in &nodes {
        let script = workloads::http_get(&kn.node.primary_ip().to_string(), WEB_NODE_PORT);
        let mut answer = None;
        wait(Duration::from_secs(60), "the NodePort", || {
            answer = kn
                .node
                .ns()
                .exec("busybox", &["sh", "-c", &script])
                .ok()
                .and_then(|out| workloads::http_body(&String::from_utf8_lossy(&out.stdout)));
            answer.is_some()
        })?;
        let answer = answer.unwrap_or_default();
        if !backends.contains(&answer) {
            bail!("the NodePort answered {answer:?}, not one of {backends:?}");
        }
        say!(
            "NodePort {}:{WEB_NODE_PORT} on {}: answered by {answer}",
            kn.node.primary_ip(),
            kn.kubelet.name()
        );
    }
    say!(
        "\n== done in {:.1} s; tearing down ==",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn wait(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}
