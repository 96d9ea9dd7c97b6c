//! The workloads the real-node tests and `make k8s-demo` run: a Deployment spread over the
//! nodes, a web Deployment behind a ClusterIP and a NodePort Service, all on the harness's
//! busybox image (imported into every node's containerd, never pulled), and how to read them
//! back.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ControlPlane, KubeError};
use crate::cri::PAUSE_IMAGE;
use test_support::netns::Netns;

/// The NodePort of [`web`]'s NodePort Service.
pub const WEB_NODE_PORT: u16 = 30080;

/// A Deployment `name` of `replicas` idle pods whose pod spec starts with `spec` (YAML lines
/// indented by six spaces, each ending in a newline).
fn idle_deployment(name: &str, replicas: usize, spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 0
{spec}      containers:
      - name: box
        image: {PAUSE_IMAGE}
        imagePullPolicy: Never
"#
    )
}

/// A Deployment `name` of `replicas` idle pods, spread evenly over the nodes.
pub fn spread(name: &str, replicas: usize) -> String {
    idle_deployment(
        name,
        replicas,
        &format!(
            "      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {{app: {name}}}
"
        ),
    )
}

/// A Deployment `name` of `replicas` idle pods bound to `node` by `spec.nodeName`: the kubelet
/// runs them without the scheduler, so also on a cordoned node, as DaemonSet and static pods
/// are.
pub fn pinned(name: &str, node: &str, replicas: usize) -> String {
    idle_deployment(name, replicas, &format!("      nodeName: {node}\n"))
}

/// Every Event of `reason` in the cluster now.
pub fn events(cp: &ControlPlane, ns: &Netns, reason: &str) -> Result<Vec<Value>, KubeError> {
    let text = cp.kubectl_ok(
        ns,
        &[
            "get",
            "events",
            "--all-namespaces",
            "--field-selector",
            &format!("reason={reason}"),
            "-o",
            "json",
        ],
    )?;
    let list: Value = serde_json::from_str(&text).unwrap_or_default();
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Two busybox httpd pods answering their hostname on 8080, behind Service `web` (ClusterIP,
/// port 80) and `web-nodeport` (NodePort [`WEB_NODE_PORT`]).
pub fn web() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: httpd
        image: {PAUSE_IMAGE}
        imagePullPolicy: Never
        command: ["/bin/busybox", "sh", "-c", "mkdir -p /www && /bin/busybox hostname > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web-nodeport
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
  - port: 80
    targetPort: 8080
    nodePort: {WEB_NODE_PORT}
"#
    )
}

/// A shell command doing an HTTP GET of `ip:port` with busybox nc (busybox's wget needs a
/// resolver its static build lacks).
pub fn http_get(ip: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 2 {ip} {port}")
}

/// The body of an HTTP/1.0 reply of [`web`] (its last line, the backend's hostname) when the
/// status is 200.
pub fn http_body(reply: &str) -> Option<String> {
    reply
        .contains("200 OK")
        .then(|| reply.lines().last().unwrap_or_default().trim().to_owned())
}

/// A running pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningPod {
    /// Its name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// `status.podIP`.
    pub ip: Ipv4Addr,
}

/// Waits until `replicas` pods of `selector` run with an address; returns them.
pub fn running_pods(
    cp: &ControlPlane,
    ns: &Netns,
    selector: &str,
    replicas: usize,
    timeout: Duration,
) -> Result<Vec<RunningPod>, KubeError> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = cp.kubectl_ok(ns, &["get", "pods", "-l", selector, "-o", "json"])?;
        let list: Value = serde_json::from_str(&text).unwrap_or_default();
        let pods: Vec<RunningPod> = list["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| {
                Some(RunningPod {
                    name: p["metadata"]["name"].as_str()?.to_owned(),
                    node: p["spec"]["nodeName"].as_str()?.to_owned(),
                    ip: p["status"]["podIP"].as_str()?.parse().ok()?,
                })
            })
            .collect();
        if pods.len() == replicas {
            return Ok(pods);
        }
        if Instant::now() >= deadline {
            return Err(KubeError::NotUp {
                what: format!(
                    "{} of {replicas} pods of {selector} running after {timeout:?}",
                    pods.len()
                ),
                logs: cp
                    .kubectl_ok(ns, &["get", "pods", "-l", selector, "-o", "wide"])
                    .unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Pings `to` from inside `from` (`kubectl exec`, busybox ping, 2 packets); fails with ping's
/// output unless none was lost.
pub fn ping(
    cp: &ControlPlane,
    ns: &Netns,
    from: &RunningPod,
    to: &RunningPod,
) -> Result<(), KubeError> {
    ping_ip(cp, ns, from, to.ip)
}

/// Pings address `to` (another pod, a node, the simulated internet's
/// [`crate::vpc::INTERNET_HOST`]) from inside `from`, as [`ping`] does.
pub fn ping_ip(
    cp: &ControlPlane,
    ns: &Netns,
    from: &RunningPod,
    to: Ipv4Addr,
) -> Result<(), KubeError> {
    let ip = to.to_string();
    let out = cp.kubectl_ok(
        ns,
        &[
            "exec",
            &from.name,
            "--",
            "/bin/busybox",
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            &ip,
        ],
    )?;
    if out.contains(" 0% packet loss") {
        Ok(())
    } else {
        Err(KubeError::Failed {
            command: format!("ping {ip} in {}", from.name),
            detail: out,
        })
    }
}

/// Waits until namespace `namespace` has its default service account (the controller-manager
/// made it; pods cannot be created before).
pub fn wait_service_account(
    cp: &ControlPlane,
    ns: &Netns,
    namespace: &str,
    timeout: Duration,
) -> Result<(), KubeError> {
    let deadline = Instant::now() + timeout;
    loop {
        match cp.kubectl_ok(ns, &["-n", namespace, "get", "serviceaccount", "default"]) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}
