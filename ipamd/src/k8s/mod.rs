//! The Kubernetes API, used only when a setting needs it ([`KubernetesConfig::uses_api`]):
//! without those settings ipamd builds no client, makes no API call and needs no service
//! account token. With them it builds one client at start-up from the pod's service account
//! (in-cluster: `KUBERNETES_SERVICE_HOST`, the token and CA under
//! `/var/run/secrets/kubernetes.io/serviceaccount`), the API server being `CLUSTER_ENDPOINT`
//! when set, and fails start-up saying what to change when that is not possible.
//!
//! Every call goes through [`PodApi`]; [`KUBE_PERMISSIONS`] lists the permission each needs, and
//! the ClusterRole in `conf/aws-k8s-cni.yaml` grants exactly those (`tests/tests/ops/manifests.rs`
//! checks both against the calls in [`client`]). The TLS stack is rustls with aws-lc, the AWS
//! SDK's provider: one crypto provider for the process.

pub mod client;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use thiserror::Error;

pub use client::KubeClient;

use crate::config::KubernetesConfig;

/// The pod annotation `ANNOTATE_POD_IP=true` sets: the pod's address (the reference's key).
pub const POD_IPS_ANNOTATION: &str = "vpc.amazonaws.com/pod-ips";

/// One RBAC permission: API group (`""` for the core group), resource, verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    /// The API group.
    pub group: &'static str,
    /// The resource (plural).
    pub resource: &'static str,
    /// The verb.
    pub verb: &'static str,
}

/// Every permission ipamd's calls need, whichever settings are on. The aws-node ClusterRole
/// grants exactly these.
pub const KUBE_PERMISSIONS: [Permission; 1] = [
    // ANNOTATE_POD_IP: set and clear the pod's address annotation (one patch each).
    Permission {
        group: "",
        resource: "pods",
        verb: "patch",
    },
];

/// Why a Kubernetes call failed.
#[derive(Debug, Error)]
pub enum KubeError {
    /// No client could be built (no service account, a bad endpoint).
    #[error("cannot build the Kubernetes client: {0}")]
    Config(String),
    /// The API server refused or did not answer.
    #[error("{what}: {source}")]
    Api {
        /// The call.
        what: String,
        /// kube's error.
        source: kube::Error,
    },
}

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What clearing an annotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleared {
    /// The annotation held the address and is now empty.
    Cleared,
    /// The annotation holds something else (a newer pod of the same name): left alone.
    Changed,
    /// The pod (or the annotation) is gone: nothing to clear.
    Gone,
}

/// A boxed future of the API calls (the trait is used as `dyn`).
pub type ApiFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KubeError>> + Send + 'a>>;

/// The calls ipamd makes about pods.
pub trait PodApi: Send + Sync + fmt::Debug {
    /// Sets the pod's [`POD_IPS_ANNOTATION`] to `ip` (a merge patch; creates the annotations).
    fn annotate_pod_ip<'a>(&'a self, pod: &'a PodRef, ip: IpAddr) -> ApiFuture<'a, ()>;

    /// Empties the pod's [`POD_IPS_ANNOTATION`] if it still is `ip`, in one conditional patch
    /// (a JSON Patch whose `test` operation makes the API server check the value), as the
    /// reference does on DEL.
    fn clear_pod_ip<'a>(&'a self, pod: &'a PodRef, ip: IpAddr) -> ApiFuture<'a, Cleared>;
}

/// The client the configuration needs: `None` when no setting uses the API.
///
/// # Errors
/// A setting needs the API and no client can be built; the message names the setting and says
/// what to change.
pub fn client_for(config: &KubernetesConfig) -> Result<Option<KubeClient>, KubeError> {
    if !config.uses_api() {
        return Ok(None);
    }
    KubeClient::in_cluster(config.cluster_endpoint.as_deref())
        .map(Some)
        .map_err(|e| {
            KubeError::Config(format!(
                "ANNOTATE_POD_IP=true needs the Kubernetes API, and {e}: give the aws-node pod its service account token (automountServiceAccountToken: true in conf/aws-k8s-cni.yaml, or a projected token volume), or set ANNOTATE_POD_IP=false"
            ))
        })
}
