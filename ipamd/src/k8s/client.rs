//! [`KubeClient`]: the [`PodApi`] and [`NodeApi`] calls over kube-rs. Each call names the permission it needs
//! with [`permission!`], which `tests/tests/ops/manifests.rs` reads to keep
//! [`super::KUBE_PERMISSIONS`] and the ClusterRole equal to the calls made here.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{
    ApiFuture, Cleared, KubeError, NodeApi, NodeFacts, POD_IPS_ANNOTATION, PodApi, PodRef,
    PodWarning,
};

/// Names the RBAC permission (group, resource, verb) of the call that follows; expands to
/// nothing.
macro_rules! permission {
    ($group:literal, $resource:literal, $verb:literal) => {};
}

/// How long one API call may take (ipamd calls the API inside a pod's ADD).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The Kubernetes client of ipamd.
#[derive(Clone)]
pub struct KubeClient {
    client: kube::Client,
    server: String,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl KubeClient {
    /// The in-cluster client: the service account's token and CA, the API server from
    /// `KUBERNETES_SERVICE_HOST`/`_PORT` or `endpoint` (`CLUSTER_ENDPOINT`) when given.
    ///
    /// # Errors
    /// No service account is mounted, the in-cluster variables are missing, or the client
    /// cannot be built.
    pub fn in_cluster(endpoint: Option<&str>) -> Result<Self, KubeError> {
        let mut config = match endpoint {
            None => kube::Config::incluster_env(),
            Some(_) => kube::Config::incluster_dns(),
        }
        .map_err(|e| KubeError::Config(format!("no in-cluster configuration ({e})")))?;
        if let Some(url) = endpoint {
            config.cluster_url = url
                .parse()
                .map_err(|e| KubeError::Config(format!("CLUSTER_ENDPOINT {url:?}: {e}")))?;
        }
        Self::from_config(config)
    }

    /// The client of a kubeconfig file's current context (`ipamd` itself always runs
    /// in-cluster; tests and tools call the API server with an admin's kubeconfig).
    ///
    /// # Errors
    /// The file cannot be read or names no usable cluster.
    pub async fn from_kubeconfig(path: &std::path::Path) -> Result<Self, KubeError> {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
        Self::from_config(config)
    }

    /// A client for `config` (tests point it at their own API server).
    ///
    /// # Errors
    /// The client cannot be built from `config`.
    pub fn from_config(mut config: kube::Config) -> Result<Self, KubeError> {
        config.read_timeout = Some(CALL_TIMEOUT);
        config.connect_timeout = Some(CALL_TIMEOUT);
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)
            .map_err(|e| KubeError::Config(format!("API server {server}: {e}")))?;
        Ok(Self { client, server })
    }

    /// The API server this client calls.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

/// The taint of a cordoned Node (the node lifecycle controller turns `spec.unschedulable` into
/// it), which the reference looks for.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// What ipamd needs of a Node.
pub fn node_facts(node: Node) -> NodeFacts {
    // The reference looks for the taint only, which the node lifecycle controller adds a moment
    // after `kubectl cordon` sets spec.unschedulable; the field counts at once.
    let unschedulable = node.spec.as_ref().is_some_and(|s| {
        s.unschedulable == Some(true)
            || s.taints.as_ref().is_some_and(|taints| {
                taints
                    .iter()
                    .any(|t| t.key == UNSCHEDULABLE_TAINT && t.effect == "NoSchedule")
            })
    });
    let max_pods = node
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("pods"))
        .and_then(|q| q.0.parse::<u32>().ok());
    NodeFacts {
        unschedulable,
        max_pods,
        labels: node.metadata.labels.unwrap_or_default(),
        annotations: node.metadata.annotations.unwrap_or_default(),
    }
}

/// The Warning Event `warning` on the pod `pod` (uid `uid`), as the kubelet's recorder writes
/// them (core/v1, a generated name, count 1, the node as the source's host).
pub fn pod_event(pod: &PodRef, uid: Option<String>, warning: &PodWarning) -> Event {
    let now = Timestamp::now();
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                pod.name,
                now.as_nanosecond().unsigned_abs()
            )),
            namespace: Some(pod.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid,
            ..ObjectReference::default()
        },
        reason: Some(warning.reason.to_owned()),
        message: Some(warning.message.clone()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some("aws-node".into()),
            host: Some(warning.node.clone()),
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some("aws-node".into()),
        reporting_instance: Some(warning.node.clone()),
        ..Event::default()
    }
}

/// `/metadata/annotations/<key>` as a JSON pointer (`/` in the key escaped as `~1`).
fn annotation_pointer(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

/// The JSON Patch that empties `key` only if it is `value`.
fn clear_if_patch(key: &str, value: &str) -> json_patch::Patch {
    let path = annotation_pointer(key);
    serde_json::from_value(json!([
        {"op": "test", "path": path, "value": value},
        {"op": "replace", "path": path, "value": ""},
    ]))
    .unwrap_or_default()
}

/// Whether the API server refused a JSON Patch because its `test` operation failed (the value
/// differs, or the annotation is missing): 422 Unprocessable, or 500 on servers that report
/// patch application errors as internal.
fn test_failed(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => {
            status.code == 422
                || (status.code == 500
                    && (status.message.contains("test") || status.message.contains("testing")))
        }
        _ => false,
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

impl PodApi for KubeClient {
    fn annotate_pod_ip<'a>(&'a self, pod: &'a PodRef, ip: IpAddr) -> ApiFuture<'a, ()> {
        Box::pin(async move {
            let patch = json!({"metadata": {"annotations": {POD_IPS_ANNOTATION: ip.to_string()}}});
            permission!("", "pods", "patch");
            self.pods(&pod.namespace)
                .patch_metadata(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(|source| KubeError::Api {
                    what: format!("annotating pod {pod} with {POD_IPS_ANNOTATION}={ip}"),
                    source,
                })
        })
    }

    fn clear_pod_ip<'a>(&'a self, pod: &'a PodRef, ip: IpAddr) -> ApiFuture<'a, Cleared> {
        Box::pin(async move {
            let patch = clear_if_patch(POD_IPS_ANNOTATION, &ip.to_string());
            permission!("", "pods", "patch");
            match self
                .pods(&pod.namespace)
                .patch_metadata(
                    &pod.name,
                    &PatchParams::default(),
                    &Patch::Json::<()>(patch),
                )
                .await
            {
                Ok(_) => Ok(Cleared::Cleared),
                Err(e) if is_not_found(&e) => Ok(Cleared::Gone),
                Err(e) if test_failed(&e) => Ok(Cleared::Changed),
                Err(source) => Err(KubeError::Api {
                    what: format!("clearing {POD_IPS_ANNOTATION} of pod {pod}"),
                    source,
                }),
            }
        })
    }

    fn warn_pod<'a>(&'a self, pod: &'a PodRef, warning: &'a PodWarning) -> ApiFuture<'a, ()> {
        Box::pin(async move {
            permission!("", "pods", "get");
            let uid = match self.pods(&pod.namespace).get_metadata(&pod.name).await {
                Ok(p) => p.metadata.uid,
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(source) => {
                    return Err(KubeError::Api {
                        what: format!("reading pod {pod}"),
                        source,
                    });
                }
            };
            let event = pod_event(pod, uid, warning);
            permission!("", "events", "create");
            Api::<Event>::namespaced(self.client.clone(), &pod.namespace)
                .create(&PostParams::default(), &event)
                .await
                .map(|_| ())
                .map_err(|source| KubeError::Api {
                    what: format!("recording a {} Event on pod {pod}", warning.reason),
                    source,
                })
        })
    }
}

/// The Warning Event `warning` on the Node `warning.node`, as the kubelet records its own:
/// namespace `default`, the node's name as uid.
pub fn node_event(warning: &PodWarning) -> Event {
    let node = PodRef {
        namespace: "default".into(),
        name: warning.node.clone(),
    };
    let mut event = pod_event(&node, Some(warning.node.clone()), warning);
    event.involved_object.kind = Some("Node".into());
    event.involved_object.namespace = None;
    event
}

impl NodeApi for KubeClient {
    fn eni_config<'a>(
        &'a self,
        name: &'a str,
    ) -> ApiFuture<'a, Option<super::eniconfig::EniConfigSpec>> {
        Box::pin(async move {
            permission!("crd.k8s.amazonaws.com", "eniconfigs", "get");
            match super::eniconfig::get(&self.client, name).await {
                // An ENIConfig that does not exist is Ok(None); a 404 here is the API server's
                // plain "404 page not found" for a resource it does not know.
                Err(KubeError::Api { source, .. }) if is_not_found(&source) => {
                    Err(KubeError::NotServed(
                        "the API server does not know the ENIConfig resource: install its CRD (kubectl apply -f conf/eniconfig-crd.yaml, or kubectl apply -k conf/)".into(),
                    ))
                }
                other => other,
            }
        })
    }

    fn warn_node<'a>(&'a self, warning: &'a PodWarning) -> ApiFuture<'a, ()> {
        Box::pin(async move {
            permission!("", "events", "create");
            Api::<Event>::namespaced(self.client.clone(), "default")
                .create(&PostParams::default(), &node_event(warning))
                .await
                .map(|_| ())
                .map_err(|source| KubeError::Api {
                    what: format!(
                        "recording a {} Event on node {}",
                        warning.reason, warning.node
                    ),
                    source,
                })
        })
    }

    fn node<'a>(&'a self, name: &'a str) -> ApiFuture<'a, NodeFacts> {
        Box::pin(async move {
            permission!("", "nodes", "get");
            Api::<Node>::all(self.client.clone())
                .get(name)
                .await
                .map(node_facts)
                .map_err(|source| KubeError::Api {
                    what: format!("reading node {name}"),
                    source,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clear_patch_tests_then_empties_the_escaped_annotation() {
        let patch = serde_json::to_value(clear_if_patch(POD_IPS_ANNOTATION, "10.0.0.7")).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/annotations/vpc.amazonaws.com~1pod-ips", "value": "10.0.0.7"},
                {"op": "replace", "path": "/metadata/annotations/vpc.amazonaws.com~1pod-ips", "value": ""},
            ])
        );
        assert_eq!(annotation_pointer("a~b/c"), "/metadata/annotations/a~0b~1c");
    }

    #[test]
    fn a_client_needs_a_service_account_outside_a_pod() {
        // This test process has no /var/run/secrets/kubernetes.io/serviceaccount.
        let e = KubeClient::in_cluster(Some("https://10.0.0.1:6443")).unwrap_err();
        assert!(e.to_string().contains("no in-cluster configuration"), "{e}");
    }
}
