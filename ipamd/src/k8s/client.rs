//! [`KubeClient`]: the [`PodApi`] calls over kube-rs. Each call names the permission it needs
//! with [`permission!`], which `tests/tests/ops/manifests.rs` reads to keep
//! [`super::KUBE_PERMISSIONS`] and the ClusterRole equal to the calls made here.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{ApiFuture, Cleared, KubeError, POD_IPS_ANNOTATION, PodApi, PodRef};

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
