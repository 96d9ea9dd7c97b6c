//! ipamd's Kubernetes calls (`ipamd::k8s::KubeClient`) against the real API server, one by
//! one, with an admin's kubeconfig: what each call does to the objects, and how the answers
//! the code maps (a failed JSON Patch `test`, a missing pod, a missing ENIConfig or CRD) really
//! come back. The DaemonSet tests exercise the same calls through ipamd; this one reaches the
//! cases a running cluster rarely shows.

use harness::kube::{ControlPlane, eniconfig};
use harness::{FabricOptions, VpcFabric};
use ipamd::k8s::{KubeClient, NodeApi, POD_IPS_ANNOTATION, PodApi, PodRef, PodWarning};
use serde_json::Value;

/// A pod bound to a node that does not exist: an object to call on, never run.
const PARKED: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: parked
  namespace: default
spec:
  nodeName: nowhere
  containers:
  - name: box
    image: localhost/none:1
"#;

/// A Node object without a kubelet.
const NODE: &str = r#"apiVersion: v1
kind: Node
metadata:
  name: bare-1
  labels: {k8s.amazonaws.com/eniConfig: pods-a}
"#;

#[test]
fn ipamds_kubernetes_calls_behave_as_the_code_expects_on_the_real_api_server() {
    let vpc = VpcFabric::start(FabricOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let cp = ControlPlane::start(vpc.internet()).unwrap_or_else(|e| panic!("{e}"));
    let ns = vpc.internet();
    let kubectl = |args: &[&str]| cp.kubectl_ok(ns, args).unwrap_or_else(|e| panic!("{e}"));
    let apply = |file: &str, manifest: &str| {
        let path = cp.dir().join(file);
        std::fs::write(&path, manifest).unwrap();
        kubectl(&["apply", "-f", &path.display().to_string()]);
    };
    harness::kube::workloads::wait_service_account(
        &cp,
        ns,
        "default",
        std::time::Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    apply("parked.yaml", PARKED);
    apply("node.yaml", NODE);
    let annotation = || {
        let pod: Value =
            serde_json::from_str(&kubectl(&["get", "pod", "parked", "-o", "json"])).unwrap();
        pod["metadata"]["annotations"][POD_IPS_ANNOTATION]
            .as_str()
            .map(str::to_owned)
    };
    let kubeconfig = cp.admin_kubeconfig();
    // Runs `f` with a client, in the namespace that reaches the API server.
    let call = |f: fn(
        KubeClient,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>| {
        let kubeconfig = kubeconfig.clone();
        ns.block_on_in(move || async move {
            let client = KubeClient::from_kubeconfig(&kubeconfig)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            f(client).await
        })
        .unwrap_or_else(|e| panic!("{e}"))
    };
    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    // ANNOTATE_POD_IP's patches: set; a clear for another address leaves it (the JSON Patch
    // `test` fails on the server); the matching clear empties it; a pod that is gone is Gone.
    let out = call(|c| {
        Box::pin(async move {
            let p = pod("parked");
            c.annotate_pod_ip(&p, "10.0.0.7".parse().unwrap())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            format!(
                "{:?}",
                c.clear_pod_ip(&p, "10.0.0.8".parse().unwrap()).await
            )
        })
    });
    assert_eq!(out, "Ok(Changed)");
    assert_eq!(annotation().as_deref(), Some("10.0.0.7"));
    let out = call(|c| {
        Box::pin(async move {
            let p = pod("parked");
            let first = c.clear_pod_ip(&p, "10.0.0.7".parse().unwrap()).await;
            let again = c.clear_pod_ip(&p, "10.0.0.7".parse().unwrap()).await;
            let gone = c
                .clear_pod_ip(&pod("no-such-pod"), "10.0.0.7".parse().unwrap())
                .await;
            format!("{first:?} {again:?} {gone:?}")
        })
    });
    assert_eq!(out, "Ok(Cleared) Ok(Changed) Ok(Gone)");
    assert_eq!(annotation().as_deref(), Some(""));

    // A pod's Warning Event carries its uid (what kubectl describe matches); a pod that is
    // gone gets none and no error.
    let out = call(|c| {
        Box::pin(async move {
            let w = PodWarning {
                reason: ipamd::k8s::NO_ADDRESS_REASON,
                message: "no address for a test".into(),
                node: "bare-1".into(),
            };
            let on_parked = c.warn_pod(&pod("parked"), &w).await;
            let on_gone = c.warn_pod(&pod("no-such-pod"), &w).await;
            format!("{on_parked:?} {on_gone:?}")
        })
    });
    assert_eq!(out, "Ok(()) Ok(())");
    let uid = kubectl(&["get", "pod", "parked", "-o", "jsonpath={.metadata.uid}"]);
    let items = harness::kube::workloads::events(&cp, ns, "FailedToAssignIP")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["involvedObject"]["uid"], uid.as_str());
    assert!(
        kubectl(&["describe", "pod", "parked"]).contains("no address for a test"),
        "kubectl describe pod does not show the Event"
    );

    // The Node: labels, cordon and uncordon, no capacity without a kubelet; a Node that does
    // not exist is an error (counted as schedulable by the caller). (The node lifecycle
    // controller keeps the unschedulable taint equal to spec.unschedulable, so a taint set by
    // hand does not last.)
    let read = || {
        call(|c| {
            Box::pin(async move {
                match c.node("bare-1").await {
                    Ok(f) => format!(
                        "{} {:?} {:?}",
                        f.unschedulable,
                        f.max_pods,
                        f.labels.get("k8s.amazonaws.com/eniConfig")
                    ),
                    Err(e) => format!("error {e}"),
                }
            })
        })
    };
    assert_eq!(read(), "false None Some(\"pods-a\")");
    kubectl(&["cordon", "bare-1"]);
    assert_eq!(read(), "true None Some(\"pods-a\")");
    kubectl(&["uncordon", "bare-1"]);
    assert_eq!(read(), "false None Some(\"pods-a\")");
    let missing =
        call(|c| Box::pin(async move { format!("{:?}", c.node("no-such-node").await.is_err()) }));
    assert_eq!(missing, "true");

    // ENIConfigs: an error saying to install the CRD while it is missing (the API server's
    // plain 404), none of that name, then the spec; the Node's Event shows in kubectl describe
    // node.
    let eni_config = || {
        call(|c| {
            Box::pin(async move {
                match c.eni_config("pods-a").await {
                    Ok(spec) => format!("{spec:?}"),
                    Err(e) => format!("error {e}"),
                }
            })
        })
    };
    let without_crd = eni_config();
    assert!(
        without_crd.contains("does not know the ENIConfig resource: install its CRD"),
        "{without_crd}"
    );
    eniconfig::apply_crd(&cp, ns).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(eni_config(), "None", "without the ENIConfig");
    eniconfig::create(&cp, ns, "pods-a", "subnet-0a0b0c0d", &["sg-0123"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        eni_config(),
        "Some(EniConfigSpec { subnet: \"subnet-0a0b0c0d\", security_groups: [\"sg-0123\"] })"
    );
    let out = call(|c| {
        Box::pin(async move {
            let w = PodWarning {
                reason: "ENIConfigNotUsable",
                message: "a test of the Node's Event".into(),
                node: "bare-1".into(),
            };
            format!("{:?}", c.warn_node(&w).await)
        })
    });
    assert_eq!(out, "Ok(())");
    assert!(
        kubectl(&["describe", "node", "bare-1"]).contains("a test of the Node's Event"),
        "kubectl describe node does not show the Event"
    );
}
