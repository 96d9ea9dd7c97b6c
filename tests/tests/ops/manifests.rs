//! The deployment files in `conf/`: valid against the Kubernetes schemas of a current release,
//! rendered by `kubectl kustomize`, and consistent with what the code reads and calls (env vars
//! and their defaults, paths, probe flags, RBAC, the IAM policy, the conflist).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::{describe, pip_tool, read, tool, workspace, yaml_docs};

const MANIFEST: &str = "conf/aws-k8s-cni.yaml";

fn docs() -> Vec<Value> {
    yaml_docs(&read(MANIFEST))
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{MANIFEST} has no {kind}"))
}

fn validate(file: &std::path::Path) -> String {
    let validator = pip_tool("kubernetes-validate", "kubernetes-validate");
    let out = std::process::Command::new(&validator)
        .arg("--strict")
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn newest_schema_version() -> String {
    // kubernetes-validate's default version is the newest schema it ships.
    let validator = pip_tool("kubernetes-validate", "kubernetes-validate");
    let out = std::process::Command::new(&validator)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let version = help
        .split("Defaults to")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(|s| s.trim_end_matches('.').to_owned())
        .unwrap_or_else(|| panic!("cannot find the default version in {help}"));
    // Releases from 1.30 on: the schemas must be of a current Kubernetes.
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap();
    assert!(
        minor >= 30,
        "kubernetes-validate ships only old schemas ({version})"
    );
    version
}

#[test]
fn manifests_validate_against_the_newest_kubernetes_schemas() {
    let version = newest_schema_version();
    let report = validate(&workspace().join(MANIFEST));
    let short = version
        .rsplit_once('.')
        .map_or(version.as_str(), |(a, _)| a);
    for resource in [
        "serviceaccount/aws-node",
        "clusterrole/aws-node",
        "clusterrolebinding/aws-node",
        "daemonset/aws-node",
    ] {
        assert!(
            report.contains(&format!(
                "passed for resource {resource} against version {short}"
            )),
            "{resource} not validated against {version}:\n{report}"
        );
    }
}

#[test]
fn kustomize_renders_the_install_and_it_validates() {
    let out = tool(
        "kubectl",
        "kubernetes-client (Debian) or any kubectl with kustomize",
        &["kustomize", "conf/"],
        &workspace(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let docs = yaml_docs(&rendered);
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "DaemonSet",
            "ServiceAccount"
        ])
    );
    let crd = kind(&docs, "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["name"], "eniconfigs.crd.k8s.amazonaws.com");
    let ds = kind(&docs, "DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], "kube-system");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/example/aws-vpc-cni-rs:v0.1.0"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let report = validate(&file);
    assert!(report.contains("daemonset/aws-node"), "{report}");
}

fn env_of(container: &Value) -> (HashMap<String, String>, HashMap<String, String>) {
    let mut plain = HashMap::new();
    let mut field_refs = HashMap::new();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_owned();
        if let Some(v) = e["value"].as_str() {
            plain.insert(name, v.to_owned());
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            field_refs.insert(name, path.to_owned());
        } else {
            panic!("env {name} has neither a value nor a fieldRef: {e}");
        }
    }
    (plain, field_refs)
}

/// mountPath → hostPath for a container.
fn host_mounts(pod: &Value, container: &Value) -> BTreeMap<String, String> {
    let volumes: HashMap<&str, &str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["hostPath"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            (
                m["mountPath"].as_str().unwrap().to_owned(),
                volumes[name].to_owned(),
            )
        })
        .collect()
}

#[test]
fn daemonset_matches_the_reference_and_what_ipamd_reads() {
    let docs = docs();
    let ds = kind(&docs, "DaemonSet");
    assert_eq!(ds["metadata"]["name"], "aws-node");
    assert_eq!(ds["metadata"]["namespace"], "kube-system");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "10%"
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert_eq!(pod["serviceAccountName"], "aws-node");

    let main = &pod["containers"][0];
    assert_eq!(main["name"], "aws-node");
    let caps: BTreeSet<&str> = main["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(caps, BTreeSet::from(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(
        main["ports"][0]["containerPort"],
        u64::from(ipamd::metrics::server::METRICS_PORT)
    );

    // Downward API, as the reference.
    let (env, refs) = env_of(main);
    assert_eq!(
        refs.get("MY_NODE_NAME").map(String::as_str),
        Some("spec.nodeName")
    );
    assert_eq!(
        refs.get("MY_POD_NAME").map(String::as_str),
        Some("metadata.name")
    );

    // Every value parses, and each is ipamd's default (what the reference's manifest sets),
    // except the version string and WARM_PREFIX_TARGET (the reference's manifest sets 1 over
    // the code default 0, and so does this one).
    let mut with_manifest: HashMap<String, String> = env.clone();
    with_manifest.insert("MY_NODE_NAME".into(), "node-1".into());
    with_manifest.insert("MY_POD_NAME".into(), "aws-node-abcde".into());
    let from_manifest = ipamd::config::Config::from_env(&with_manifest)
        .unwrap_or_else(|e| panic!("ipamd refuses the manifest's environment: {e}"));
    let baseline: HashMap<String, String> = [
        ("MY_NODE_NAME", "node-1"),
        ("MY_POD_NAME", "aws-node-abcde"),
        ("VPC_CNI_VERSION", env["VPC_CNI_VERSION"].as_str()),
        ("WARM_PREFIX_TARGET", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let defaults = ipamd::config::Config::from_env(&baseline).unwrap();
    assert_eq!(
        from_manifest, defaults,
        "a manifest value differs from ipamd's default"
    );

    // Host paths: where the reference has them, mounted where the settings point.
    let mounts = host_mounts(pod, main);
    let parent = |p: &str| {
        std::path::Path::new(p)
            .parent()
            .unwrap()
            .display()
            .to_string()
    };
    assert_eq!(mounts[&env["HOST_CNI_CONFDIR_PATH"]], "/etc/cni/net.d");
    assert_eq!(
        mounts[&parent(&env["AWS_VPC_K8S_CNI_LOG_FILE"])],
        "/var/log/aws-routed-eni"
    );
    // The plugin on the host dials the socket path ipamd writes into the conflist: the
    // container path must be the host path.
    let run_dir = parent(&env["AWS_VPC_K8S_CNI_IPAMD_SOCKET"]);
    assert_eq!(mounts[&run_dir], run_dir);
    assert_eq!(run_dir, "/var/run/aws-node");
    assert_eq!(parent(&env["AWS_VPC_K8S_CNI_BACKING_STORE"]), run_dir);
    assert_eq!(mounts["/run/xtables.lock"], "/run/xtables.lock");
    assert_eq!(
        parent(&env["AWS_VPC_K8S_PLUGIN_LOG_FILE"]),
        "/var/log/aws-routed-eni"
    );

    // Probes: `ipamd probe` with flags it accepts, on the socket ipamd serves.
    for probe in ["readinessProbe", "livenessProbe"] {
        let cmd: Vec<String> = main[probe]["exec"]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(&cmd[..2], ["/app/ipamd", "probe"], "{probe}");
        let opts = ipamd::probe::parse_args(&cmd[2..], "/nowhere".into())
            .unwrap_or_else(|e| panic!("{probe}: {e}"));
        assert_eq!(
            opts.addr,
            ipamd::probe::ProbeAddress::Unix(env["AWS_VPC_K8S_CNI_IPAMD_SOCKET"].clone().into())
        );
    }
    assert_eq!(main["readinessProbe"]["initialDelaySeconds"], 1);
    assert_eq!(main["livenessProbe"]["initialDelaySeconds"], 60);

    // The init container installs the plugin into the host's /opt/cni/bin.
    let init = &pod["initContainers"][0];
    assert_eq!(
        init["command"],
        serde_json::json!(["/app/ipamd", "install-cni"])
    );
    assert_eq!(init["image"], main["image"]);
    assert_eq!(init["securityContext"]["privileged"], true);
    let (init_env, _) = env_of(init);
    let init_config = ipamd::install::InstallConfig::from_env(&init_env).unwrap();
    let init_mounts = host_mounts(pod, init);
    assert_eq!(
        init_mounts[&init_config.bin_dir.display().to_string()],
        "/opt/cni/bin"
    );
}

fn dependency_names(manifest: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_deps = false;
    for line in read(manifest).lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line.ends_with("dependencies]");
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once(['=', '.']) {
            names.insert(name.trim().to_owned());
        }
    }
    names
}

/// The `permission!(group, resource, verb)` markers of ipamd's Kubernetes client (the files of
/// ipamd/src/k8s): one before every API call it makes.
fn kube_call_sites() -> BTreeSet<(String, String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ipamd/src/k8s");
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("permission!(\"") {
        let args = &text[i + "permission!(".len()..];
        let args = &args[..args.find(')').unwrap()];
        let parts: Vec<String> = args
            .split(',')
            .map(|p| p.trim().trim_matches('"').to_owned())
            .collect();
        assert_eq!(parts.len(), 3, "permission!({args})");
        found.insert((parts[0].clone(), parts[1].clone(), parts[2].clone()));
    }
    assert!(!found.is_empty(), "no API call in ipamd/src/k8s");
    found
}

#[test]
fn rbac_grants_exactly_what_the_kubernetes_calls_need() {
    // Only ipamd talks to the API, and only through ipamd::k8s; the plugin has no client.
    let plugin = dependency_names("cni-plugin/Cargo.toml");
    assert!(
        plugin.contains("tonic"),
        "cannot read cni-plugin/Cargo.toml: {plugin:?}"
    );
    for client in ["kube", "kube-client", "k8s-openapi"] {
        assert!(!plugin.contains(client), "the plugin depends on {client}");
    }
    let declared: BTreeSet<(String, String, String)> = ipamd::k8s::KUBE_PERMISSIONS
        .iter()
        .map(|p| (p.group.to_owned(), p.resource.to_owned(), p.verb.to_owned()))
        .collect();
    assert_eq!(
        kube_call_sites(),
        declared,
        "ipamd::k8s::KUBE_PERMISSIONS differs from the calls in ipamd/src/k8s"
    );
    let docs = docs();
    let role = kind(&docs, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .unwrap_or_else(|| panic!("a rule without {k}: {rule}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    assert!(
                        ![&group, &resource, &verb].iter().any(|s| s.contains('*')),
                        "wildcard in {rule}"
                    );
                    assert!(
                        granted.insert((group.clone(), resource.clone(), verb.clone())),
                        "({group}, {resource}, {verb}) granted twice"
                    );
                }
            }
        }
    }
    assert_eq!(
        granted, declared,
        "conf/aws-k8s-cni.yaml's ClusterRole differs from what ipamd's Kubernetes calls need"
    );
    let binding = kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "aws-node");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "aws-node", "namespace": "kube-system"}])
    );
    // The pod mounts its token (ipamd's client; docs/kubernetes.md), as the reference's does.
    let ds = kind(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["automountServiceAccountToken"],
        true
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        "aws-node"
    );
}

/// The EC2 operations the SDK implementation of `Ec2Api` really calls: every
/// `client.<operation>()` on the SDK client (a local `client`, not `self.client`), with the
/// chain's line breaks removed, as an IAM action.
fn ec2_call_sites() -> BTreeSet<String> {
    let source = read("ipamd/src/cloud/ec2_sdk.rs");
    let mut joined = String::with_capacity(source.len());
    for line in source.lines() {
        let t = line.trim();
        if t.starts_with('.') && joined.ends_with("client") {
            joined.push_str(t);
        } else {
            joined.push('\n');
            joined.push_str(t);
        }
    }
    let mut actions = BTreeSet::new();
    for (at, _) in joined.match_indices("client.") {
        let before = joined[..at].chars().next_back();
        if before.is_some_and(|c| c == '.' || c == '_' || c.is_alphanumeric()) {
            continue;
        }
        let rest = &joined[at + "client.".len()..];
        let op: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if op.is_empty() || !rest[op.len()..].starts_with("()") {
            continue;
        }
        let pascal: String = op
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        actions.insert(format!("ec2:{pascal}"));
    }
    assert!(
        !actions.is_empty(),
        "no EC2 call found in ipamd/src/cloud/ec2_sdk.rs"
    );
    actions
}

#[test]
fn iam_policy_lists_exactly_the_ec2_actions_ipamd_calls() {
    let policy: Value = serde_json::from_str(&read("conf/iam-policy.json")).unwrap();
    assert_eq!(policy["Version"], "2012-10-17");
    let mut granted = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        for action in statement["Action"].as_array().unwrap() {
            let action = action.as_str().unwrap().to_owned();
            assert!(!action.contains('*'), "wildcard action {action}");
            assert!(granted.insert(action.clone()), "{action} granted twice");
        }
    }
    let declared: BTreeSet<String> = ipamd::cloud::ec2::EC2_ACTIONS
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    let called = ec2_call_sites();
    assert_eq!(
        called, declared,
        "EC2_ACTIONS differs from the SDK call sites"
    );
    assert_eq!(
        granted, declared,
        "conf/iam-policy.json differs from the EC2 calls ipamd makes"
    );
    // Tags only on network interfaces, as the reference's managed policy.
    let tags = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Action"] == serde_json::json!(["ec2:CreateTags"]))
        .expect("a statement for ec2:CreateTags alone");
    assert_eq!(tags["Resource"], "arn:aws:ec2:*:*:network-interface/*");
}

#[test]
fn conflist_template_is_what_ipamd_writes_with_the_manifest_settings() {
    let docs = docs();
    let main = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let (mut env, _) = env_of(main);
    env.insert("MY_NODE_NAME".into(), "node-1".into());
    let config = ipamd::config::Config::from_env(&env).unwrap();
    assert_eq!(
        ipamd::conflist::render(&config),
        read("conf/10-aws.conflist")
    );
}
