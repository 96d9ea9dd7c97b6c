//! The aws-node DaemonSet deployed the way an operator does it: `kubectl apply -k` of a
//! kustomization whose only base is the project's `conf/`, changing just what this machine
//! needs: the image (the project's own, imported into every node's containerd as
//! [`NODE_IMAGE_REPO`]`:<tag>`, since there is no registry) and the EC2 endpoint of the VPC
//! simulator (`AWS_ENDPOINT_URL_EC2`, the SDK's standard setting). Everything else (the init
//! container, probes, security context, host paths, settings) is `conf/`'s.

use std::fmt::Write as _;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ControlPlane, KubeError, NODE_IMAGE_REPO, io_err};
use test_support::netns::Netns;
use test_support::prereqs;

/// The DaemonSet's namespace.
pub const NAMESPACE: &str = "kube-system";
/// The DaemonSet's name (the reference's).
pub const DAEMONSET: &str = "aws-node";
/// The label selecting its pods.
pub const SELECTOR: &str = "k8s-app=aws-node";
/// The image tag of the first deployment.
pub const FIRST_TAG: &str = "test";

/// The overlay's `kustomization.yaml`: `conf/` (as `base`, a path relative to the overlay),
/// the image `<NODE_IMAGE_REPO>:<tag>`, and `env` added to the aws-node container.
pub fn kustomization(base: &str, tag: &str, env: &[(&str, &str)]) -> String {
    let mut patch = String::new();
    for (name, value) in env {
        let _ = write!(
            patch,
            "      - op: add\n        path: /spec/template/spec/containers/0/env/-\n        value: {{name: {name}, value: \"{value}\"}}\n"
        );
    }
    format!(
        r#"# Written by the test harness (tests/src/kube/aws_node.rs): conf/ on the VPC simulator.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
images:
  - name: ghcr.io/example/aws-vpc-cni-rs
    newName: {NODE_IMAGE_REPO}
    newTag: {tag}
patches:
  - target:
      kind: DaemonSet
      name: {DAEMONSET}
    patch: |-
{patch}"#
    )
}

/// `to` relative to the directory `from` (both absolute, without `..`).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    rel
}

/// Writes the overlay into `<cp dir>/aws-node` and applies it (`kubectl apply -k`); `ec2` is
/// the EC2 endpoint the nodes use. Returns kubectl's output.
pub fn deploy(cp: &ControlPlane, ns: &Netns, tag: &str, ec2: &str) -> Result<String, KubeError> {
    deploy_with(cp, ns, tag, ec2, &[])
}

/// [`deploy`] with `env` added to the aws-node container.
pub fn deploy_with(
    cp: &ControlPlane,
    ns: &Netns,
    tag: &str,
    ec2: &str,
    env: &[(&str, &str)],
) -> Result<String, KubeError> {
    let overlay = cp.dir().join("aws-node");
    fs::create_dir_all(&overlay).map_err(io_err("cannot create the overlay's directory"))?;
    let conf = prereqs::workspace_dir().join("conf");
    let base = relative(&overlay, &conf);
    fs::write(
        overlay.join("kustomization.yaml"),
        kustomization(
            &base.display().to_string(),
            tag,
            &[&[("AWS_ENDPOINT_URL_EC2", ec2)], env].concat(),
        ),
    )
    .map_err(io_err("cannot write the overlay"))?;
    cp.kubectl_ok(ns, &["apply", "-k", &overlay.display().to_string()])
}

/// One pod of the DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsNodePod {
    /// Its name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its pod UID.
    pub uid: String,
    /// The aws-node container's image.
    pub image: String,
    /// Whether the pod is Ready (its readiness probe, `ipamd probe`, passes).
    pub ready: bool,
    /// Restarts of the aws-node container.
    pub restarts: u64,
}

/// The DaemonSet's pods now.
pub fn pods(cp: &ControlPlane, ns: &Netns) -> Result<Vec<AwsNodePod>, KubeError> {
    let text = cp.kubectl_ok(
        ns,
        &["-n", NAMESPACE, "get", "pods", "-l", SELECTOR, "-o", "json"],
    )?;
    let list: Value = serde_json::from_str(&text).unwrap_or_default();
    Ok(list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| {
            let status = p["status"]["containerStatuses"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == DAEMONSET)?;
            let ready = p["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            Some(AwsNodePod {
                name: p["metadata"]["name"].as_str()?.to_owned(),
                node: p["spec"]["nodeName"].as_str()?.to_owned(),
                uid: p["metadata"]["uid"].as_str()?.to_owned(),
                image: p["spec"]["containers"][0]["image"].as_str()?.to_owned(),
                ready,
                restarts: status["restartCount"].as_u64().unwrap_or(0),
            })
        })
        .collect())
}

/// Waits until every node of `nodes` has exactly one Ready aws-node pod running `image`
/// (`<repo>:<tag>`) and none other is left; returns them (in the order of `nodes`).
pub fn wait_ready(
    cp: &ControlPlane,
    ns: &Netns,
    nodes: &[&str],
    image: &str,
    timeout: Duration,
) -> Result<Vec<AwsNodePod>, KubeError> {
    let deadline = Instant::now() + timeout;
    loop {
        let all = pods(cp, ns)?;
        let ready: Vec<AwsNodePod> = nodes
            .iter()
            .filter_map(|n| {
                all.iter()
                    .find(|p| p.node == *n && p.ready && p.image == image)
                    .cloned()
            })
            .collect();
        if ready.len() == nodes.len() && all.len() == nodes.len() {
            return Ok(ready);
        }
        if Instant::now() >= deadline {
            return Err(KubeError::NotUp {
                what: format!(
                    "aws-node not Ready with {image} on {nodes:?} within {timeout:?}; pods: {all:?}"
                ),
                logs: describe(cp, ns),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `kubectl describe` of the DaemonSet's pods, for failure messages.
pub fn describe(cp: &ControlPlane, ns: &Netns) -> String {
    cp.kubectl_ok(ns, &["-n", NAMESPACE, "describe", "pods", "-l", SELECTOR])
        .unwrap_or_else(|e| e.to_string())
}

/// What a rolling update changes besides the image.
#[derive(Debug, Clone, Default)]
pub struct Rollout<'a> {
    /// Variables added to the aws-node container.
    pub env: Vec<(&'a str, &'a str)>,
    /// Mount the service account's token (`automountServiceAccountToken: true`), as settings
    /// that call the Kubernetes API need.
    pub mount_token: bool,
}

/// The JSON Patch of the DaemonSet for a rollout to `image` with `change`: both containers'
/// image, the aws-node container's added variables and the token mount, in one template
/// change (one rollout).
pub fn rollout_patch(image: &str, change: &Rollout<'_>) -> Value {
    let mut ops = vec![
        serde_json::json!({"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}),
        serde_json::json!({"op": "replace", "path": "/spec/template/spec/initContainers/0/image", "value": image}),
    ];
    for (name, value) in &change.env {
        ops.push(serde_json::json!({
            "op": "add",
            "path": "/spec/template/spec/containers/0/env/-",
            "value": {"name": name, "value": value},
        }));
    }
    if change.mount_token {
        ops.push(serde_json::json!({
            "op": "replace",
            "path": "/spec/template/spec/automountServiceAccountToken",
            "value": true,
        }));
    }
    Value::Array(ops)
}

/// Rolls the DaemonSet to `<NODE_IMAGE_REPO>:<tag>` (both containers) with `change`, and waits
/// until the rollout finished (`kubectl rollout status`).
pub fn roll_to(
    cp: &ControlPlane,
    ns: &Netns,
    tag: &str,
    change: &Rollout<'_>,
    timeout: Duration,
) -> Result<(), KubeError> {
    let image = format!("{NODE_IMAGE_REPO}:{tag}");
    cp.kubectl_ok(
        ns,
        &[
            "-n",
            NAMESPACE,
            "patch",
            &format!("daemonset/{DAEMONSET}"),
            "--type=json",
            "-p",
            &rollout_patch(&image, change).to_string(),
        ],
    )?;
    cp.kubectl_ok(
        ns,
        &[
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            &format!("daemonset/{DAEMONSET}"),
            &format!("--timeout={}s", timeout.as_secs()),
        ],
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_reached_from_the_overlay_by_a_relative_path() {
        assert_eq!(
            relative(
                Path::new("/tmp/vcni-cp-1/aws-node"),
                Path::new("/work/main/conf")
            ),
            Path::new("../../../work/main/conf")
        );
        assert_eq!(
            relative(Path::new("/work/x"), Path::new("/work/main/conf")),
            Path::new("../main/conf")
        );
    }

    #[test]
    fn a_rollout_patch_changes_image_env_and_token_in_one_go() {
        let p = rollout_patch(
            "localhost/aws-vpc-cni-rs:v2",
            &Rollout {
                env: vec![("ANNOTATE_POD_IP", "true")],
                mount_token: true,
            },
        );
        let ops = p.as_array().unwrap();
        assert_eq!(ops.len(), 4, "{p}");
        assert_eq!(ops[1]["path"], "/spec/template/spec/initContainers/0/image");
        assert_eq!(ops[2]["value"]["name"], "ANNOTATE_POD_IP");
        assert_eq!(ops[3]["value"], true);
        assert_eq!(
            rollout_patch("i", &Rollout::default())
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn the_overlay_changes_the_image_and_adds_the_endpoint() {
        let k = kustomization("../conf", "v2", &[("AWS_ENDPOINT_URL_EC2", "http://e:80")]);
        assert!(
            k.contains("newName: localhost/aws-vpc-cni-rs\n    newTag: v2"),
            "{k}"
        );
        assert!(
            k.contains("value: {name: AWS_ENDPOINT_URL_EC2, value: \"http://e:80\"}"),
            "{k}"
        );
    }
}
