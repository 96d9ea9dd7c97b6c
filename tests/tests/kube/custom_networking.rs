//! Custom networking (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`) on the real control plane, set
//! up as the EKS guide has it: a node subnet and a pod subnet in each of two Availability
//! Zones, one ENIConfig per zone named after it, chosen through the nodes' zone label
//! (`ENI_CONFIG_LABEL_DEF=topology.kubernetes.io/zone`). Pods get addresses only from secondary
//! ENIs in their zone's ENIConfig subnet with its security groups, never from the primary ENI;
//! a node whose ENIConfig does not exist yet stays Ready and says why its pods wait, and
//! networks them once the ENIConfig is created.

use std::time::Duration;

use harness::kube::workloads::{self, RunningPod};
use harness::kube::{ControlPlane, KubeNode, NODE_IMAGE_REPO, aws_node, eniconfig};
use harness::vpc::router::ec2_endpoint;
use harness::vpc::{INTERNET_HOST, SubnetInfo, SubnetSpec};
use harness::{FabricOptions, NodeSpec, VpcFabric};
use ipnet::Ipv4Net;
use serde_json::Value;
use test_support::netns::Netns;

use super::{wait_for, wait_for_or};

/// The zone of kube-a, of the nodes' subnet (the fabric's default, 10.0.0.0/24) and of
/// [`PODS_A`].
const ZONE_A: &str = "us-west-2a";
/// The zone of kube-b, [`NODES_B`] and [`PODS_B`].
const ZONE_B: &str = "us-west-2b";
/// kube-b's subnet.
const NODES_B: &str = "10.0.1.0/24";
/// The pod subnet of [`ZONE_A`] (its ENIConfig's).
const PODS_A: &str = "10.0.16.0/20";
/// The pod subnet of [`ZONE_B`].
const PODS_B: &str = "10.0.32.0/20";

fn cidr(text: &str) -> Ipv4Net {
    text.parse()
        .unwrap_or_else(|e| panic!("bad CIDR {text}: {e}"))
}

/// Every Event of `reason` in the cluster now.
fn events(cp: &ControlPlane, ns: &Netns, reason: &str) -> Vec<Value> {
    workloads::events(cp, ns, reason).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts custom networking's layout on `kn` as moto shows it: the primary ENI holds no address
/// but its own, every other ENI is in `subnet` with exactly `groups`, and each pod of `pods`
/// has an address of `subnet` held by one of those ENIs.
fn assert_pods_in_eniconfig_subnet(
    kn: &KubeNode,
    pods: &[RunningPod],
    subnet: &SubnetInfo,
    groups: &[String],
) {
    let name = kn.name();
    let primary = &kn.node.instance().primary_eni;
    let enis = kn.node.enis().unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{enis:#?}");
    for eni in &enis {
        if &eni.id == primary {
            assert!(
                eni.secondary_ips().is_empty() && eni.ipv4_prefixes.is_empty(),
                "{name}'s primary ENI {} holds pod addresses: {shown}",
                eni.id
            );
        } else {
            assert_eq!(
                eni.subnet_id, subnet.id,
                "{name}'s ENI {} is not in the ENIConfig's subnet {} ({}): {shown}",
                eni.id, subnet.id, subnet.cidr
            );
            // moto reports an attached ENI with the instance's groups (the primary ENI's) on
            // top of its own (shared/reference/moto.md): those are left out.
            let instance_groups: Vec<String> = enis
                .iter()
                .find(|e| &e.id == primary)
                .map(|e| e.security_groups.clone())
                .unwrap_or_default();
            let mut got: Vec<String> = eni
                .security_groups
                .iter()
                .filter(|g| !instance_groups.contains(g))
                .cloned()
                .collect();
            got.sort();
            let mut want = groups.to_vec();
            want.sort();
            assert_eq!(
                got, want,
                "{name}'s ENI {} has not the ENIConfig's security groups: {shown}",
                eni.id
            );
        }
    }
    assert!(enis.len() >= 2, "{name} has no secondary ENI: {shown}");
    for p in pods {
        assert_eq!(p.node, name, "{p:?}");
        assert!(
            subnet.cidr.contains(&p.ip),
            "{} on {name} has {}, outside the ENIConfig's subnet {}",
            p.name,
            p.ip,
            subnet.cidr
        );
        let eni = kn
            .node
            .eni_holding(p.ip)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| {
                panic!(
                    "{} of {} is held by no ENI of {name} in moto: {shown}",
                    p.ip, p.name
                )
            });
        assert_ne!(&eni.id, primary, "{} is on {name}'s primary ENI", p.ip);
    }
}

/// Two zones, each with its node and its pod subnet; the ENIConfig of us-west-2b is created only
/// after kube-b has said that it lacks it.
#[test]
fn custom_networking_puts_pods_in_each_zones_eniconfig_subnet() {
    let vpc = VpcFabric::start(
        FabricOptions::default()
            .with_subnet(SubnetSpec::new(cidr(NODES_B)).zone(ZONE_B))
            .with_subnet(SubnetSpec::new(cidr(PODS_A)).zone(ZONE_A))
            .with_subnet(SubnetSpec::new(cidr(PODS_B)).zone(ZONE_B)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cp = ControlPlane::start(vpc.internet()).unwrap_or_else(|e| panic!("{e}"));
    let ns = vpc.internet();
    let subnet = |text: &str| {
        vpc.subnet_with_cidr(cidr(text))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (pods_a, pods_b) = (subnet(PODS_A), subnet(PODS_B));
    assert_eq!(vpc.subnet().availability_zone, ZONE_A);
    assert_eq!(
        (
            pods_a.availability_zone.as_str(),
            pods_b.availability_zone.as_str()
        ),
        (ZONE_A, ZONE_B)
    );

    // kube-a in the nodes' subnet of us-west-2a, kube-b in us-west-2b's.
    let a = KubeNode::join(&vpc, &cp, NodeSpec::new("kube-a", "m5.large"), 29)
        .unwrap_or_else(|e| panic!("{e}"));
    let b = KubeNode::join(
        &vpc,
        &cp,
        NodeSpec::new("kube-b", "m5.large").in_subnet(&subnet(NODES_B)),
        29,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let names = [a.name(), b.name()];
    for (kn, zone) in [(&a, ZONE_A), (&b, ZONE_B)] {
        assert_eq!(kn.node.instance().availability_zone, zone, "{}", kn.name());
        assert_eq!(kn.node.subnet().availability_zone, zone, "{}", kn.name());
    }
    let kubectl = |args: &[&str]| {
        cp.kubectl_ok(ns, args)
            .unwrap_or_else(|e| panic!("{e}\n{}", aws_node::describe(&cp, ns)))
    };

    // The operator's part: zone labels, the definition, the pods' security group, and the
    // ENIConfig of us-west-2a only.
    for (kn, zone) in [(&a, ZONE_A), (&b, ZONE_B)] {
        eniconfig::label_zone(&cp, ns, kn.name(), zone).unwrap_or_else(|e| panic!("{e}"));
    }
    eniconfig::apply_crd(&cp, ns).unwrap_or_else(|e| panic!("{e}"));
    let pod_sg =
        eniconfig::create_security_group(&vpc, "vcni-pods").unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(pod_sg, vpc.security_group());
    let pod_groups = vec![pod_sg.clone()];
    let out = eniconfig::create(&cp, ns, ZONE_A, &pods_a.id, &[&pod_sg])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("created"), "{out}");
    let stored: Value =
        serde_json::from_str(&kubectl(&["get", "eniconfig", ZONE_A, "-o", "json"])).unwrap();
    assert_eq!(stored["spec"]["subnet"], pods_a.id.as_str(), "{stored}");
    assert_eq!(
        stored["spec"]["securityGroups"][0],
        pod_sg.as_str(),
        "{stored}"
    );

    aws_node::deploy_with(
        &cp,
        ns,
        aws_node::FIRST_TAG,
        &ec2_endpoint(),
        &[
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
            ("ENI_CONFIG_LABEL_DEF", eniconfig::ZONE_LABEL),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let image = format!("{NODE_IMAGE_REPO}:{}", aws_node::FIRST_TAG);
    aws_node::wait_ready(&cp, ns, &names, &image, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}"));
    workloads::wait_service_account(&cp, ns, "default", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let apply = |file: &str, manifest: &str| {
        let path = cp.dir().join(file);
        std::fs::write(&path, manifest).unwrap();
        kubectl(&["apply", "-f", &path.display().to_string()]);
    };
    let running = |selector: &str, n: usize, timeout: Duration| {
        workloads::running_pods(&cp, ns, selector, n, timeout).unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\n{}",
                kubectl(&["describe", "pods", "-l", selector]),
                a.node.diag()
            )
        })
    };

    // kube-a: its pods run on addresses of us-west-2a's pod subnet, on secondary ENIs with the
    // ENIConfig's security group.
    apply("on-a.yaml", &workloads::pinned("on-a", a.name(), 6));
    apply("on-b.yaml", &workloads::pinned("on-b", b.name(), 3));
    let on_a = running("app=on-a", 6, Duration::from_secs(180));
    assert_pods_in_eniconfig_subnet(&a, &on_a, &pods_a, &pod_groups);

    // kube-b, without an ENIConfig: its pods get no address, each is told why, and so is the
    // Node; ipamd stays Ready and creates no ENI.
    let b_pods: Vec<String> = {
        let listed: Value =
            serde_json::from_str(&kubectl(&["get", "pods", "-l", "app=on-b", "-o", "json"]))
                .unwrap();
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                assert!(
                    p["status"]["podIP"].is_null() && p["status"]["phase"] != "Running",
                    "a pod on kube-b without an ENIConfig: {p}"
                );
                p["metadata"]["name"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(b_pods.len(), 3, "{b_pods:?}");
    let missing = format!("ENIConfig \"{ZONE_B}\"");
    let tells = |e: &Value| {
        e["type"] == "Warning"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains(&missing) && m.contains("does not exist"))
    };
    let last = std::cell::RefCell::new(Vec::new());
    let pod_event = wait_for_or(
        "a FailedToAssignIP Event naming the missing ENIConfig on a pod of kube-b",
        Duration::from_secs(120),
        || {
            let all = events(&cp, ns, "FailedToAssignIP");
            let found = all
                .iter()
                .find(|e| {
                    e["involvedObject"]["name"]
                        .as_str()
                        .is_some_and(|n| b_pods.iter().any(|p| p == n))
                        && tells(e)
                })
                .cloned();
            *last.borrow_mut() = all;
            found
        },
        || format!("{:#?}\n{}", last.borrow(), b.node.diag()),
    );
    assert_eq!(pod_event["source"]["component"], "aws-node", "{pod_event}");
    assert_eq!(pod_event["source"]["host"], b.name(), "{pod_event}");
    let node_event = wait_for_or(
        "an ENIConfigNotUsable Event on Node kube-b",
        Duration::from_secs(60),
        || {
            let all = events(&cp, ns, "ENIConfigNotUsable");
            let found = all
                .iter()
                .find(|e| {
                    e["involvedObject"]["kind"] == "Node"
                        && e["involvedObject"]["name"] == b.name()
                        && tells(e)
                })
                .cloned();
            *last.borrow_mut() = all;
            found
        },
        || format!("{:#?}", last.borrow()),
    );
    assert_eq!(
        node_event["source"]["component"], "aws-node",
        "{node_event}"
    );
    // kube-a has its ENIConfig: no Event says otherwise.
    for e in events(&cp, ns, "ENIConfigNotUsable") {
        assert_eq!(e["involvedObject"]["name"], b.name(), "{e}");
    }
    let describe = wait_for(
        "ENIConfigNotUsable in kubectl describe node kube-b",
        Duration::from_secs(30),
        || {
            let out = kubectl(&["describe", "node", b.name()]);
            out.contains("ENIConfigNotUsable").then_some(out)
        },
    );
    // What an operator sees (shown with --nocapture).
    #[allow(clippy::print_stdout)]
    {
        println!("kubectl describe node {}:\n{describe}", b.name());
    }
    assert!(describe.contains(&missing), "{describe}");
    let b_enis = b.node.enis().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        b_enis.len(),
        1,
        "kube-b created an ENI without an ENIConfig: {b_enis:#?}"
    );
    assert!(
        b_enis[0].secondary_ips().is_empty() && b_enis[0].ipv4_prefixes.is_empty(),
        "kube-b's primary ENI holds pod addresses: {b_enis:#?}"
    );
    let aws_node_b = aws_node::pods(&cp, ns)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|p| p.node == b.name())
        .expect("an aws-node pod on kube-b");
    assert!(aws_node_b.ready, "{aws_node_b:?}");
    assert_eq!(aws_node_b.restarts, 0, "{aws_node_b:?}");

    // The ENIConfig of us-west-2b: kube-b's waiting pods start, on addresses of its pod subnet.
    eniconfig::create(&cp, ns, ZONE_B, &pods_b.id, &[&pod_sg]).unwrap_or_else(|e| panic!("{e}"));
    let on_b = running("app=on-b", 3, Duration::from_secs(180));
    assert_pods_in_eniconfig_subnet(&b, &on_b, &pods_b, &pod_groups);
    assert_pods_in_eniconfig_subnet(&a, &on_a, &pods_a, &pod_groups);

    // Pods reach each other across the zones, and the internet.
    for (from, to) in [(&on_a[0], &on_b[0]), (&on_b[0], &on_a[0])] {
        workloads::ping(&cp, ns, from, to).unwrap_or_else(|e| panic!("{e}"));
    }
    for from in [&on_a[0], &on_b[0]] {
        workloads::ping_ip(&cp, ns, from, INTERNET_HOST).unwrap_or_else(|e| panic!("{e}"));
    }

    // aws-node never restarted.
    for p in aws_node::pods(&cp, ns).unwrap_or_else(|e| panic!("{e}")) {
        assert!(p.ready, "{p:?}");
        assert_eq!(p.restarts, 0, "{p:?}");
    }
}
