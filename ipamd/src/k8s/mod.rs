//! The Kubernetes API. ipamd builds one client at start-up when the pod's service account is
//! mounted (in-cluster: `KUBERNETES_SERVICE_HOST`, the token and CA under
//! `/var/run/secrets/kubernetes.io/serviceaccount`; the API server is `CLUSTER_ENDPOINT` when
//! set), as the reference's aws-node has one. Without a service account it makes no API call,
//! and the settings that cannot work without one ([`KubernetesConfig::uses_api`]) stop start-up
//! saying what to change.
//!
//! With the client ipamd reads its own Node ([`NodeApi`]: max pods from its capacity, and
//! whether it is cordoned for `AWS_MANAGE_ENIS_NON_SCHEDULABLE=false`), records a Warning Event
//! on a pod that gets no address ([`PodApi::warn_pod`], rate-limited by [`events`]), and with
//! `ANNOTATE_POD_IP=true` annotates pods with their address.
//!
//! [`KUBE_PERMISSIONS`] lists the permission each call needs, and the ClusterRole in
//! `conf/aws-k8s-cni.yaml` grants exactly those (`tests/tests/ops/manifests.rs` checks both
//! against the calls in [`client`]). The TLS stack is rustls with aws-lc, the AWS SDK's
//! provider: one crypto provider for the process.

pub mod client;
pub mod eniconfig;
pub mod events;

use std::collections::BTreeMap;
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

/// Every permission ipamd's calls need, whichever settings are on, sorted by group, resource
/// and verb. The aws-node ClusterRole grants exactly these.
pub const KUBE_PERMISSIONS: [Permission; 5] = [
    // A Warning Event on a pod that gets no address (why, in `kubectl describe pod`).
    Permission {
        group: "",
        resource: "events",
        verb: "create",
    },
    // The node's own Node: max pods (capacity), cordoned (the unschedulable taint).
    Permission {
        group: "",
        resource: "nodes",
        verb: "get",
    },
    // The pod's uid, which its Event refers to.
    Permission {
        group: "",
        resource: "pods",
        verb: "get",
    },
    // ANNOTATE_POD_IP: set and clear the pod's address annotation (one patch each).
    Permission {
        group: "",
        resource: "pods",
        verb: "patch",
    },
    // Custom networking: the node's ENIConfig.
    Permission {
        group: "crd.k8s.amazonaws.com",
        resource: "eniconfigs",
        verb: "get",
    },
];

/// Why a Kubernetes call failed.
#[derive(Debug, Error)]
pub enum KubeError {
    /// No client could be built (no service account, a bad endpoint).
    #[error("cannot build the Kubernetes client: {0}")]
    Config(String),
    /// The API server does not serve a resource ipamd needs (its CRD is not installed).
    #[error("{0}")]
    NotServed(String),
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

/// A boxed future of the API calls (the traits are used as `dyn`).
pub type ApiFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KubeError>> + Send + 'a>>;

/// The reason of the Event on a pod that got no address.
pub const NO_ADDRESS_REASON: &str = "FailedToAssignIP";

/// A Warning Event about a pod or the node, from ipamd on `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWarning {
    /// CamelCase reason (`kubectl describe`'s Reason column).
    pub reason: &'static str,
    /// What happened and what to do.
    pub message: String,
    /// The node ipamd runs on (the Event's source host).
    pub node: String,
}

/// The calls ipamd makes about pods.
pub trait PodApi: Send + Sync + fmt::Debug {
    /// Sets the pod's [`POD_IPS_ANNOTATION`] to `ip` (a merge patch; creates the annotations).
    fn annotate_pod_ip<'a>(&'a self, pod: &'a PodRef, ip: IpAddr) -> ApiFuture<'a, ()>;

    /// Empties the pod's [`POD_IPS_ANNOTATION`] if it still is `ip`, in one conditional patch
    /// (a JSON Patch whose `test` operation makes the API server check the value), as the
    /// reference does on DEL.
    fn clear_pod_ip<'a>(&'a self, pod: &'a PodRef, ip: IpAddr) -> ApiFuture<'a, Cleared>;

    /// Records `warning` as a Warning Event on the pod (read first for its uid, which
    /// `kubectl describe pod` matches Events by). A pod that is gone gets none.
    fn warn_pod<'a>(&'a self, pod: &'a PodRef, warning: &'a PodWarning) -> ApiFuture<'a, ()>;
}

/// What ipamd reads of its own Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// It carries the taint `node.kubernetes.io/unschedulable:NoSchedule` (`kubectl cordon`),
    /// the reference's test.
    pub unschedulable: bool,
    /// `status.capacity.pods` (the kubelet's max pods), when it is a number.
    pub max_pods: Option<u32>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// The calls ipamd makes about its Node.
pub trait NodeApi: Send + Sync + fmt::Debug {
    /// The Node `name`.
    fn node<'a>(&'a self, name: &'a str) -> ApiFuture<'a, NodeFacts>;

    /// The spec of the ENIConfig `name` (custom networking); `None` when there is none.
    fn eni_config<'a>(&'a self, name: &'a str) -> ApiFuture<'a, Option<eniconfig::EniConfigSpec>>;

    /// Records `warning` as a Warning Event on the Node `warning.node` (as the kubelet's, in
    /// the `default` namespace with the node's name as uid, which `kubectl describe node`
    /// matches).
    fn warn_node<'a>(&'a self, warning: &'a PodWarning) -> ApiFuture<'a, ()>;
}

/// Where the API server is (for logs), and both views of one client.
#[derive(Debug, Clone)]
pub struct KubeApis {
    /// The API server.
    pub server: String,
    /// Calls about pods.
    pub pods: std::sync::Arc<dyn PodApi>,
    /// Calls about the node.
    pub nodes: std::sync::Arc<dyn NodeApi>,
}

impl KubeApis {
    /// Both views of `client`.
    pub fn of(client: KubeClient) -> Self {
        let client = std::sync::Arc::new(client);
        Self {
            server: client.server().to_owned(),
            pods: std::sync::Arc::clone(&client) as std::sync::Arc<dyn PodApi>,
            nodes: client,
        }
    }
}

/// The client of this pod: `None` without a mounted service account when no setting needs
/// the API (ipamd then makes no API call).
///
/// # Errors
/// A setting needs the API ([`KubernetesConfig::needs_api`] names it) and no client can be
/// built; the message says what to change.
pub fn client_for(config: &KubernetesConfig) -> Result<Option<KubeClient>, KubeError> {
    match KubeClient::in_cluster(config.cluster_endpoint.as_deref()) {
        Ok(client) => Ok(Some(client)),
        Err(e) => match config.needs_api() {
            None => {
                tracing::info!(
                    reason = %e,
                    "no Kubernetes API: max pods from the instance type, cordons not seen, no Events on pods without an address (mount the service account token for them)"
                );
                Ok(None)
            }
            Some((setting, otherwise)) => Err(KubeError::Config(format!(
                "{setting} needs the Kubernetes API, and {e}: give the aws-node pod its service account token (automountServiceAccountToken: true in conf/aws-k8s-cni.yaml, or a projected token volume), or {otherwise}"
            ))),
        },
    }
}
