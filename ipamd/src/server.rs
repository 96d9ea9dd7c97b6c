//! The gRPC side: `rpc.CNIBackend` (AddNetwork, DelNetwork, CheckNetwork, PoolStatus,
//! GarbageCollect, as commented in `proto/rpc.proto` and docs/contracts.md) and the standard
//! `grpc.health.v1.Health`, both on the Unix socket `AWS_VPC_K8S_CNI_IPAMD_SOCKET` (bound by
//! [`crate::socket`]).
//!
//! Errors are gRPC statuses: RESOURCE_EXHAUSTED (no assignable IP, with the reason),
//! UNAVAILABLE (starting or draining, with what is pending), INVALID_ARGUMENT, NOT_FOUND,
//! INTERNAL (checkpoint write failed; the change was rolled back).

use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument;
use vpc_cni_contract::dataplane::route_table_for_device;

use crate::datastore::{Assignment, IpamKey, PodMetadata};
use crate::k8s::events::NoAddressEvents;
use crate::k8s::{Cleared, POD_IPS_ANNOTATION, PodApi, PodRef};
use crate::metrics::IpamdMetrics;
use crate::rpc::cni_backend_server::{CniBackend, CniBackendServer};
use crate::rpc::{
    AddNetworkReply, AddNetworkRequest, CheckNetworkReply, CheckNetworkRequest, DelNetworkReply,
    DelNetworkRequest, GarbageCollectReply, GarbageCollectRequest, IpAllocationMetadata,
    PoolStatusReply, PoolStatusRequest,
};
use crate::state::{IpamError, IpamState};

/// Health service names reported: the whole server, the reference's probe name, and the backend.
pub const HEALTH_SERVICES: [&str; 3] = ["", "grpc.health.v1.aws-node", "rpc.CNIBackend"];

/// The gRPC server failed.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The gRPC server failed.
    #[error("gRPC server on {path}: {source}")]
    Serve {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: tonic::transport::Error,
    },
}

/// Sets every reported health service to SERVING or NOT_SERVING.
pub async fn set_health(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in HEALTH_SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// The `rpc.CNIBackend` implementation.
#[derive(Debug, Clone)]
pub struct Backend {
    state: Arc<IpamState>,
    metrics: IpamdMetrics,
    /// `ANNOTATE_POD_IP=true`: the API that annotates pods with their address.
    pods: Option<Arc<dyn PodApi>>,
    /// With the Kubernetes API: a Warning Event on each pod that gets no address.
    events: Option<NoAddressEvents>,
}

impl Backend {
    /// Serves `state` (the pool, and what replies say about SNAT). Request metrics go to a
    /// private registry until [`Backend::with_metrics`] gives the daemon's.
    pub fn new(state: Arc<IpamState>) -> Self {
        Self {
            state,
            metrics: IpamdMetrics::new(&mut prometheus_client::registry::Registry::default()),
            pods: None,
            events: None,
        }
    }

    /// Records why on each pod AddNetwork has no address for (rate-limited Warning Events).
    #[must_use]
    pub fn with_no_address_events(mut self, events: NoAddressEvents) -> Self {
        self.events = Some(events);
        self
    }

    /// Annotates every pod AddNetwork gives an address with it ([`POD_IPS_ANNOTATION`],
    /// `ANNOTATE_POD_IP=true`), and empties the annotation on DelNetwork.
    #[must_use]
    pub fn with_pod_annotations(mut self, pods: Arc<dyn PodApi>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// `ANNOTATE_POD_IP`: the pod gets its address as an annotation before the reply, so
    /// controllers see it before the kubelet reports it. A pod that cannot be annotated gets no
    /// address: it is released (never leaked) and the ADD fails saying why; the kubelet retries.
    async fn annotate(
        &self,
        key: &IpamKey,
        pod: Option<PodRef>,
        a: &Assignment,
    ) -> Result<(), Status> {
        let (Some(api), Some(pod)) = (&self.pods, pod) else {
            return Ok(());
        };
        let Err(e) = api.annotate_pod_ip(&pod, a.ip).await else {
            tracing::debug!(%pod, ip = %a.ip, "annotated {POD_IPS_ANNOTATION}");
            return Ok(());
        };
        let released = match self.state.del(key).await {
            Ok(_) => "the address was released".to_owned(),
            Err(del) => format!("releasing the address failed too ({del})"),
        };
        tracing::warn!(error = %e, %pod, ip = %a.ip, "{released}");
        Err(Status::unavailable(format!(
            "ANNOTATE_POD_IP=true and {e}; {released} (check the API server and the aws-node ClusterRole: pods patch)"
        )))
    }

    /// DelNetwork's side of [`Backend::annotate`]: the annotation is emptied if it still holds
    /// the released address (a newer pod of the same name keeps its own). A failure is logged:
    /// the pod is going away and its address is already back in the pool.
    async fn clear_annotation(&self, pod: Option<PodRef>, released: Option<&Assignment>) {
        let (Some(api), Some(pod), Some(a)) = (&self.pods, pod, released) else {
            return;
        };
        match api.clear_pod_ip(&pod, a.ip).await {
            Ok(Cleared::Cleared) => {
                tracing::debug!(%pod, ip = %a.ip, "{POD_IPS_ANNOTATION} emptied")
            }
            Ok(outcome) => {
                tracing::debug!(%pod, ip = %a.ip, ?outcome, "{POD_IPS_ANNOTATION} left alone")
            }
            Err(e) => tracing::warn!(error = %e, %pod, "cannot empty {POD_IPS_ANNOTATION}"),
        }
    }

    /// Counts requests in `metrics` (`awscni_add_ip_req_count`, `awscni_del_ip_req_count`,
    /// `awscni_no_available_ip_addresses`).
    #[must_use]
    pub fn with_metrics(mut self, metrics: IpamdMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

fn to_status(err: &IpamError) -> Status {
    let msg = err.to_string();
    match err {
        IpamError::NotReady(_) | IpamError::Draining => Status::unavailable(msg),
        IpamError::Exhausted(_) => Status::resource_exhausted(msg),
        IpamError::NotFound { .. } => Status::not_found(msg),
        IpamError::Checkpoint { .. } => Status::internal(msg),
    }
}

fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is empty")));
    }
    if value.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{field} contains a NUL byte"
        )));
    }
    Ok(())
}

fn key_of(network: &str, container: &str, ifname: &str) -> Result<IpamKey, Status> {
    require("NetworkName", network)?;
    require("ContainerID", container)?;
    require("IfName", ifname)?;
    Ok(IpamKey {
        network_name: network.to_owned(),
        container_id: container.to_owned(),
        if_name: ifname.to_owned(),
    })
}

/// The pod of a request, when the runtime said which (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
fn pod_of(namespace: &str, name: &str) -> Option<PodRef> {
    (!namespace.is_empty() && !name.is_empty()).then(|| PodRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

fn clamp_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn allocation(a: &Assignment) -> IpAllocationMetadata {
    let (v4, v6) = match a.ip {
        IpAddr::V4(ip) => (ip.to_string(), String::new()),
        IpAddr::V6(ip) => (String::new(), ip.to_string()),
    };
    IpAllocationMetadata {
        i_pv4_addr: v4,
        i_pv6_addr: v6,
        device_number: clamp_i32(a.device_number),
        route_table_id: clamp_i32(route_table_for_device(a.device_number)),
    }
}

#[tonic::async_trait]
impl CniBackend for Backend {
    async fn add_network(
        &self,
        request: Request<AddNetworkRequest>,
    ) -> Result<Response<AddNetworkReply>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "AddNetwork",
            network = %req.network_name,
            container_id = %req.container_id,
            ifname = %req.if_name,
            pod = %format!("{}/{}", req.k8s_pod_namespace, req.k8s_pod_name),
            netns = %req.netns,
            client = %req.client_version,
        );
        async {
            self.metrics.add_ip_req.inc();
            let key = key_of(&req.network_name, &req.container_id, &req.if_name)?;
            if req.requires_multi_nic_attachment {
                tracing::info!("multi-NIC attachment requested but ENABLE_MULTI_NIC is off; assigning one IP");
            }
            let metadata = PodMetadata {
                namespace: req.k8s_pod_namespace.clone(),
                name: req.k8s_pod_name.clone(),
                interfaces_count: 1,
            };
            match self.state.add(&key, metadata).await {
                Ok(a) => {
                    tracing::info!(ip = %a.ip, eni = %a.eni_id, device = a.device_number, table = route_table_for_device(a.device_number), "assigned");
                    self.annotate(&key, pod_of(&req.k8s_pod_namespace, &req.k8s_pod_name), &a).await?;
                    let egress = self.state.egress();
                    // As the reference: the IPv4 CIDRs for IPv4 pods, the IPv6 ones for IPv6 pods.
                    let (v4_cidrs, v6_cidrs) = if a.ip.is_ipv6() {
                        (Vec::new(), egress.vpc_v6_cidrs.iter().map(ToString::to_string).collect())
                    } else {
                        (egress.no_snat_cidrs().map(ToString::to_string).collect(), Vec::new())
                    };
                    Ok(Response::new(AddNetworkReply {
                        success: true,
                        ip_allocation_metadata: vec![allocation(&a)],
                        use_external_snat: egress.external_snat,
                        vp_cv4_cid_rs: v4_cidrs,
                        vp_cv6_cid_rs: v6_cidrs,
                        eniid: a.eni_id,
                        ..AddNetworkReply::default()
                    }))
                }
                Err(e) => {
                    if let IpamError::Exhausted(why) = &e {
                        self.metrics.no_available_ip.inc();
                        if let (Some(events), Some(pod)) = (&self.events, pod_of(&req.k8s_pod_namespace, &req.k8s_pod_name)) {
                            events.record(pod, &why.message);
                        }
                    }
                    tracing::warn!(error = %e, "AddNetwork failed");
                    Err(to_status(&e))
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn del_network(
        &self,
        request: Request<DelNetworkRequest>,
    ) -> Result<Response<DelNetworkReply>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "DelNetwork",
            network = %req.network_name,
            container_id = %req.container_id,
            ifname = %req.if_name,
            pod = %format!("{}/{}", req.k8s_pod_namespace, req.k8s_pod_name),
            reason = %req.reason,
            client = %req.client_version,
        );
        async {
            self.metrics.del_request(&req.reason);
            let key = key_of(&req.network_name, &req.container_id, &req.if_name)?;
            match self.state.del(&key).await {
                Ok(released) => {
                    match &released {
                        Some(a) => tracing::info!(ip = %a.ip, eni = %a.eni_id, "released"),
                        None => tracing::info!("nothing assigned to this key (already released)"),
                    }
                    self.clear_annotation(
                        pod_of(&req.k8s_pod_namespace, &req.k8s_pod_name),
                        released.as_ref(),
                    )
                    .await;
                    Ok(Response::new(DelNetworkReply {
                        success: true,
                        ip_allocation_metadata: released.iter().map(allocation).collect(),
                        ..DelNetworkReply::default()
                    }))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DelNetwork failed");
                    Err(to_status(&e))
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn check_network(
        &self,
        request: Request<CheckNetworkRequest>,
    ) -> Result<Response<CheckNetworkReply>, Status> {
        let req = request.into_inner();
        let span = tracing::debug_span!(
            "CheckNetwork",
            network = %req.network_name,
            container_id = %req.container_id,
            ifname = %req.if_name,
        );
        async {
            let key = key_of(&req.network_name, &req.container_id, &req.if_name)?;
            match self.state.check(&key).await {
                Ok(a) => Ok(Response::new(CheckNetworkReply {
                    ip_allocation_metadata: vec![allocation(&a)],
                    eniid: a.eni_id,
                })),
                Err(e) => {
                    tracing::debug!(error = %e, "CheckNetwork");
                    Err(to_status(&e))
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn pool_status(
        &self,
        _request: Request<PoolStatusRequest>,
    ) -> Result<Response<PoolStatusReply>, Status> {
        let s = self.state.status().await;
        tracing::debug!(
            ready = s.ready,
            total = s.stats.total,
            assigned = s.stats.assigned,
            cooling = s.stats.cooling,
            "PoolStatus"
        );
        Ok(Response::new(PoolStatusReply {
            ready: s.ready,
            total_i_ps: clamp_u32(s.stats.total),
            assigned_i_ps: clamp_u32(s.stats.assigned),
            cooldown_i_ps: clamp_u32(s.stats.cooling),
            assignable_i_ps: clamp_u32(s.stats.assignable),
            message: s.message,
        }))
    }

    async fn garbage_collect(
        &self,
        request: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectReply>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "GarbageCollect",
            network = %req.network_name,
            valid = req.valid_attachments.len(),
            client = %req.client_version,
        );
        async {
            require("NetworkName", &req.network_name)?;
            let valid: HashSet<(String, String)> = req
                .valid_attachments
                .iter()
                .map(|a| (a.container_id.clone(), a.if_name.clone()))
                .collect();
            match self.state.gc(&req.network_name, &valid).await {
                Ok(released) => {
                    for a in &released {
                        tracing::info!(ip = %a.ip, key = %a.key, "released by GC");
                    }
                    Ok(Response::new(GarbageCollectReply {
                        released: released.iter().map(allocation).collect(),
                    }))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "GarbageCollect failed");
                    Err(to_status(&e))
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Serves the backend and health on `listener` until `shutdown` resolves, then stops accepting
/// and lets in-flight requests finish.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    backend: Backend,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(CniBackendServer::new(backend))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|source| ServerError::Serve { path, source })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::checkpoint::NullCheckpointer;
    use crate::k8s::{ApiFuture, KubeError};
    use crate::state::Phase;
    use crate::testing::pools;

    /// Records annotation calls; fails them while `fail` is set.
    #[derive(Debug, Default)]
    struct FakePods {
        calls: Mutex<Vec<String>>,
        fail: Mutex<bool>,
    }

    impl PodApi for FakePods {
        fn annotate_pod_ip<'a>(&'a self, pod: &'a PodRef, ip: IpAddr) -> ApiFuture<'a, ()> {
            Box::pin(async move {
                if *self.fail.lock().unwrap() {
                    return Err(KubeError::Config("API server unreachable".into()));
                }
                self.calls.lock().unwrap().push(format!("set {pod} {ip}"));
                Ok(())
            })
        }

        fn clear_pod_ip<'a>(&'a self, pod: &'a PodRef, ip: IpAddr) -> ApiFuture<'a, Cleared> {
            Box::pin(async move {
                self.calls.lock().unwrap().push(format!("clear {pod} {ip}"));
                Ok(Cleared::Cleared)
            })
        }

        fn warn_pod<'a>(
            &'a self,
            pod: &'a PodRef,
            warning: &'a crate::k8s::PodWarning,
        ) -> ApiFuture<'a, ()> {
            Box::pin(async move {
                self.calls.lock().unwrap().push(format!(
                    "event {pod} {} on {}: {}",
                    warning.reason, warning.node, warning.message
                ));
                Ok(())
            })
        }
    }

    fn backend(pods: &Arc<FakePods>) -> Backend {
        let ds = pools::datastore(
            Duration::ZERO,
            &[("eni-a", 0, "10.0.0.10", &["10.0.0.11", "10.0.0.12"])],
        );
        let state = Arc::new(IpamState::new(ds, Arc::new(NullCheckpointer)));
        state.set_phase(Phase::Ready);
        Backend::new(state).with_pod_annotations(Arc::clone(pods) as Arc<dyn PodApi>)
    }

    fn add(container: &str, pod: &str) -> Request<AddNetworkRequest> {
        Request::new(AddNetworkRequest {
            container_id: container.into(),
            if_name: "eth0".into(),
            network_name: "aws-cni".into(),
            k8s_pod_namespace: "default".into(),
            k8s_pod_name: pod.into(),
            ..AddNetworkRequest::default()
        })
    }

    fn del(container: &str, pod: &str) -> Request<DelNetworkRequest> {
        Request::new(DelNetworkRequest {
            container_id: container.into(),
            if_name: "eth0".into(),
            network_name: "aws-cni".into(),
            k8s_pod_namespace: "default".into(),
            k8s_pod_name: pod.into(),
            ..DelNetworkRequest::default()
        })
    }

    #[tokio::test]
    async fn annotate_pod_ip_sets_the_address_on_add_and_clears_it_on_del() {
        let pods = Arc::new(FakePods::default());
        let b = backend(&pods);
        let reply = b.add_network(add("c1", "web")).await.unwrap().into_inner();
        let ip = reply.ip_allocation_metadata[0].i_pv4_addr.clone();
        b.del_network(del("c1", "web")).await.unwrap();
        // A request without the pod's identity (not from a kubelet) annotates nothing.
        b.add_network(add("c2", "")).await.unwrap();
        assert_eq!(
            *pods.calls.lock().unwrap(),
            vec![
                format!("set default/web {ip}"),
                format!("clear default/web {ip}")
            ]
        );
    }

    #[tokio::test]
    async fn a_pod_that_cannot_be_annotated_gets_no_address_and_none_leaks() {
        let pods = Arc::new(FakePods::default());
        let b = backend(&pods);
        *pods.fail.lock().unwrap() = true;
        let e = b.add_network(add("c1", "web")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(
            e.message().contains("ANNOTATE_POD_IP=true")
                && e.message().contains("API server unreachable")
                && e.message().contains("the address was released"),
            "{}",
            e.message()
        );
        let status = b.state.status().await;
        assert_eq!(status.stats.assigned, 0, "{status:?}");
        // Once the API answers, the kubelet's retry gets an address.
        *pods.fail.lock().unwrap() = false;
        b.add_network(add("c1", "web")).await.unwrap();
        assert_eq!(b.state.status().await.stats.assigned, 1);
    }

    #[tokio::test]
    async fn a_pod_without_an_address_gets_one_event_saying_why() {
        let pods = Arc::new(FakePods::default());
        let b = Backend::new(backend(&pods).state.clone()).with_no_address_events(
            NoAddressEvents::new(Arc::clone(&pods) as Arc<dyn PodApi>, "node-1".into()),
        );
        b.add_network(add("c1", "a")).await.unwrap();
        b.add_network(add("c2", "b")).await.unwrap();
        // The pool (two addresses) is empty: the third pod and its retries get none.
        for _ in 0..3 {
            let e = b.add_network(add("c3", "c")).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        }
        // The Event goes out on its own task.
        for _ in 0..100 {
            if !pods.calls.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let calls = pods.calls.lock().unwrap().clone();
        assert_eq!(
            calls.len(),
            1,
            "one Event for the pod and its retries: {calls:?}"
        );
        assert!(
            calls[0].starts_with("event default/c FailedToAssignIP on node-1: aws-node on node-1 has no IP address for this pod: "),
            "{calls:?}"
        );
        // Without the annotation setting the pods are not annotated.
        assert!(!calls[0].contains("set "), "{calls:?}");
    }
}
