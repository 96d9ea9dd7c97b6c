//! A real Kubernetes control plane for the real-node tests (issue 14, part 2): etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler, built by `make kube-bins` from the
//! Go module `tests/kubernetes` (k8s.io/kubernetes at the release its go.mod names), run in a
//! namespace of the VPC simulator (its internet side, like a public EKS endpoint) and reachable
//! from the nodes at [`API_SERVER_ADDR`]:6443.
//!
//! Certificates are the cluster's own, made with `openssl` in the control plane's directory: a CA,
//! the API server's serving certificate (for its address, the `kubernetes` Service's ClusterIP and
//! names), the service-account signing key, and client certificates for the admin
//! (`system:masters`), the controller-manager and the scheduler (their RBAC users), and each
//! node (`system:node:<name>` in `system:nodes`, for the Node authorizer). The API server runs
//! with `--authorization-mode=Node,RBAC` and `NodeRestriction`, privileged pods allowed (aws-node
//! is one), the Service CIDR of EKS (10.100.0.0/16).
//!
//! Everything the processes write stays in the directory (removed on drop, with the processes
//! killed); nothing touches the machine's root namespace.

pub mod aws_node;
pub mod eniconfig;
mod kubelet;
mod node;
mod proxy;
pub mod workloads;

pub use kubelet::{Kubelet, kernel_default_binds};
pub use node::KubeNode;
pub use proxy::KubeProxy;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use test_support::cleanup;
use test_support::netns::{CommandError, Netns, NetnsProcess, tail};
use test_support::prereqs::{self, PrereqError};

/// The API server's address, on the internet side of the VPC simulator.
pub const API_SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// The API server's port.
pub const API_SERVER_PORT: u16 = 6443;
/// The Service CIDR (EKS's default for IPv4 clusters).
pub const SERVICE_CIDR: &str = "10.100.0.0/16";
/// The `kubernetes` Service's ClusterIP (the first address of [`SERVICE_CIDR`]).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
/// Env var naming the directory of the Kubernetes binaries (default:
/// `target/go/kube/<version of tests/kubernetes/go.mod>`, filled by `make kube-bins`).
pub const KUBE_BIN_DIR_ENV: &str = "KUBE_BIN_DIR";
/// How long the control plane may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// A binary or tool is missing.
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    /// A process could not be started or a namespace command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A file could not be written or read.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("`{command}` failed: {detail}")]
    Failed {
        /// The command.
        command: String,
        /// Its stderr (and stdout).
        detail: String,
    },
    /// A component did not come up or died.
    #[error("{what}\n{logs}")]
    NotUp {
        /// What went wrong.
        what: String,
        /// The components' log tails.
        logs: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KubeError {
    let context = context.into();
    move |source| KubeError::Io { context, source }
}

/// The Kubernetes release `tests/kubernetes/go.mod` pins (`v1.37.2`).
pub fn kube_version() -> Result<String, KubeError> {
    let go_mod = prereqs::workspace_dir().join("tests/kubernetes/go.mod");
    let text =
        fs::read_to_string(&go_mod).map_err(io_err(format!("cannot read {}", go_mod.display())))?;
    text.lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("k8s.io/kubernetes"))
                .then(|| words.next().map(str::to_owned))
                .flatten()
        })
        .ok_or_else(|| KubeError::Failed {
            command: format!("reading {}", go_mod.display()),
            detail: "no k8s.io/kubernetes requirement".into(),
        })
}

/// Where the Kubernetes binaries are: `$KUBE_BIN_DIR`, else `target/go/kube/<version>`.
pub fn kube_bin_dir() -> Result<PathBuf, KubeError> {
    if let Some(dir) = std::env::var_os(KUBE_BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    Ok(prereqs::workspace_dir()
        .join("target/go/kube")
        .join(kube_version()?))
}

/// One Kubernetes binary, which must exist.
pub fn kube_bin(name: &'static str) -> Result<PathBuf, KubeError> {
    let path = kube_bin_dir()?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(PrereqError::Missing {
            what: name,
            path,
            hint: format!("build it with `make kube-bins` (Go and the Go module proxy), or point {KUBE_BIN_DIR_ENV} at a directory that has it"),
        }
        .into())
    }
}

/// Env var naming the project's image archive (default: `target/kube/aws-vpc-cni-rs.oci.tar`,
/// built by `make node-image` from the Dockerfile).
pub const NODE_IMAGE_ENV: &str = "NODE_IMAGE";
/// The repository the project's image is imported as (`<repo>:test`).
pub const NODE_IMAGE_REPO: &str = "localhost/aws-vpc-cni-rs";

/// The project's image as an OCI archive, which must exist.
pub fn node_image() -> Result<PathBuf, KubeError> {
    let path = std::env::var_os(NODE_IMAGE_ENV).map_or_else(
        || prereqs::workspace_dir().join("target/kube/aws-vpc-cni-rs.oci.tar"),
        PathBuf::from,
    );
    if path.is_file() {
        Ok(path)
    } else {
        Err(PrereqError::Missing {
            what: "the project's image",
            path,
            hint: format!("build it with `make node-image` (debootstrap, podman), or point {NODE_IMAGE_ENV} at an OCI archive of it"),
        }
        .into())
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    // Processes first: dropped (killed) before the directory goes.
    scheduler: Option<NetnsProcess>,
    controller_manager: Option<NetnsProcess>,
    apiserver: Option<NetnsProcess>,
    etcd: Option<NetnsProcess>,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
}

/// A client identity: its certificate and key, signed by the cluster's CA.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl ControlPlane {
    /// Starts etcd, the API server, the controller-manager and the scheduler in `ns` (the VPC
    /// simulator's internet namespace), the API server on [`API_SERVER_ADDR`] (added to `ns`'s
    /// loopback), and waits until `/readyz` answers `ok`.
    pub fn start(ns: &Netns) -> Result<Self, KubeError> {
        prereqs::require_root()?;
        prereqs::require_tool("openssl", "apt-get install openssl")?;
        let bins = [
            kube_bin("etcd")?,
            kube_bin("kube-apiserver")?,
            kube_bin("kube-controller-manager")?,
            kube_bin("kube-scheduler")?,
        ];
        let kubectl = kube_bin("kubectl")?;
        let dir = tempfile::Builder::new()
            .prefix("vcni-kube-")
            .tempdir()
            .map_err(io_err("cannot create the control plane's directory"))?;
        cleanup::register_dir(dir.path());
        let mut cp = Self {
            scheduler: None,
            controller_manager: None,
            apiserver: None,
            etcd: None,
            dir,
            kubectl,
        };
        cp.make_pki()?;
        // The API server's identity towards kubelets (logs, exec): all rights there.
        cp.client_cert(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
        )?;
        for (user, name) in [
            ("system:kube-controller-manager", "controller-manager"),
            ("system:kube-scheduler", "scheduler"),
            ("admin", "admin"),
        ] {
            let org = if name == "admin" {
                Some("system:masters")
            } else {
                None
            };
            let cert = cp.client_cert(name, user, org)?;
            cp.write_kubeconfig(&cp.dir().join(format!("{name}.kubeconfig")), &cert)?;
        }
        ns.ip(&["addr", "add", &format!("{API_SERVER_ADDR}/32"), "dev", "lo"])?;
        let [etcd, apiserver, controller_manager, scheduler] = bins;
        cp.etcd = Some(cp.spawn(ns, &etcd, "etcd", &cp.etcd_args())?);
        cp.apiserver = Some(cp.spawn(ns, &apiserver, "kube-apiserver", &cp.apiserver_args())?);
        cp.wait_ready(ns)?;
        cp.controller_manager = Some(cp.spawn(
            ns,
            &controller_manager,
            "kube-controller-manager",
            &cp.controller_manager_args(),
        )?);
        cp.scheduler = Some(cp.spawn(ns, &scheduler, "kube-scheduler", &cp.scheduler_args())?);
        Ok(cp)
    }

    /// The control plane's directory (PKI, kubeconfigs, logs, etcd's data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API server's URL.
    pub fn endpoint(&self) -> String {
        format!("https://{API_SERVER_ADDR}:{API_SERVER_PORT}")
    }

    /// The cluster CA's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// The admin's kubeconfig (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir().join("admin.kubeconfig")
    }

    fn log(&self, component: &str) -> PathBuf {
        self.dir().join(format!("{component}.log"))
    }

    /// The last lines of every component's log.
    pub fn logs(&self) -> String {
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ]
        .iter()
        .map(|c| format!("===== {c} =====\n{}", tail(&self.log(c), 25)))
        .collect::<Vec<_>>()
        .join("\n")
    }

    fn spawn(
        &self,
        ns: &Netns,
        program: &Path,
        component: &str,
        args: &[String],
    ) -> Result<NetnsProcess, KubeError> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = vec![("HOME".to_owned(), self.dir().display().to_string())];
        Ok(NetnsProcess::spawn(
            ns,
            program,
            &args,
            &env,
            &self.log(component),
        )?)
    }

    fn path(&self, file: &str) -> String {
        self.dir().join(file).display().to_string()
    }

    fn etcd_args(&self) -> Vec<String> {
        vec![
            "--name=vcni".into(),
            format!("--data-dir={}", self.path("etcd")),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=vcni=http://127.0.0.1:2380".into(),
            "--listen-metrics-urls=http://127.0.0.1:2381".into(),
            // A test cluster: losing etcd's data on a crash of the machine is fine.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ]
    }

    fn apiserver_args(&self) -> Vec<String> {
        vec![
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--bind-address={API_SERVER_ADDR}"),
            format!("--advertise-address={API_SERVER_ADDR}"),
            format!("--secure-port={API_SERVER_PORT}"),
            format!("--tls-cert-file={}", self.path("apiserver.crt")),
            format!("--tls-private-key-file={}", self.path("apiserver.key")),
            format!("--client-ca-file={}", self.path("ca.crt")),
            format!("--service-account-key-file={}", self.path("sa.pub")),
            format!("--service-account-signing-key-file={}", self.path("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            "--kubelet-preferred-address-types=InternalIP".into(),
            format!("--kubelet-certificate-authority={}", self.path("ca.crt")),
            format!(
                "--kubelet-client-certificate={}",
                self.path("apiserver-kubelet-client.crt")
            ),
            format!(
                "--kubelet-client-key={}",
                self.path("apiserver-kubelet-client.key")
            ),
            format!("--cert-dir={}", self.path("apiserver-certs")),
        ]
    }

    fn controller_manager_args(&self) -> Vec<String> {
        let kubeconfig = self.path("controller-manager.kubeconfig");
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            format!("--service-account-private-key-file={}", self.path("sa.key")),
            format!("--root-ca-file={}", self.path("ca.crt")),
            format!("--cluster-signing-cert-file={}", self.path("ca.crt")),
            format!("--cluster-signing-key-file={}", self.path("ca.key")),
            "--use-service-account-credentials=true".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allocate-node-cidrs=false".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--cert-dir={}", self.path("controller-manager-certs")),
        ]
    }

    fn scheduler_args(&self) -> Vec<String> {
        let kubeconfig = self.path("scheduler.kubeconfig");
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--cert-dir={}", self.path("scheduler-certs")),
        ]
    }

    /// The CA, the API server's serving certificate and the service-account key pair.
    fn make_pki(&self) -> Result<(), KubeError> {
        let d = self.dir();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "7",
                "-subj",
                "/CN=vcni-test-cluster-ca",
            ],
        )?;
        let sans = format!(
            "subjectAltName=IP:{API_SERVER_ADDR},IP:{KUBERNETES_SERVICE_IP},IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
        );
        self.sign("apiserver", "/CN=kube-apiserver", &sans, "serverAuth")?;
        openssl(d, &["genrsa", "-out", "sa.key", "2048"])?;
        openssl(d, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(())
    }

    /// `<name>.key` and `<name>.crt` signed by the CA for `subject`.
    fn sign(&self, name: &str, subject: &str, ext: &str, usage: &str) -> Result<(), KubeError> {
        let d = self.dir();
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            d,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                subject,
            ],
        )?;
        let extfile = format!("{name}.ext");
        fs::write(
            d.join(&extfile),
            format!("{ext}\nextendedKeyUsage={usage}\nkeyUsage=digitalSignature,keyEncipherment\n"),
        )
        .map_err(io_err(format!("cannot write {extfile}")))?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "7",
                "-extfile",
                &extfile,
            ],
        )?;
        Ok(())
    }

    /// A client certificate for `user` (in group `org`), named `name` in the directory.
    pub fn client_cert(
        &self,
        name: &str,
        user: &str,
        org: Option<&str>,
    ) -> Result<ClientCert, KubeError> {
        let subject = match org {
            Some(o) => format!("/O={o}/CN={user}"),
            None => format!("/CN={user}"),
        };
        self.sign(name, &subject, "basicConstraints=CA:FALSE", "clientAuth")?;
        Ok(ClientCert {
            cert: self.dir().join(format!("{name}.crt")),
            key: self.dir().join(format!("{name}.key")),
        })
    }

    /// A kubeconfig at `path` for `cert` against this API server.
    pub fn write_kubeconfig(&self, path: &Path, cert: &ClientCert) -> Result<(), KubeError> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: vcni\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: vcni\n  context:\n    cluster: vcni\n    user: user\ncurrent-context: vcni\n",
            self.endpoint(),
            self.ca_cert().display(),
            cert.cert.display(),
            cert.key.display()
        );
        fs::write(path, text).map_err(io_err(format!("cannot write {}", path.display())))
    }

    /// A serving certificate for node `node`'s kubelet at `ip`, signed by the cluster's CA (the
    /// API server verifies it when it reaches the kubelet for logs and exec).
    pub fn kubelet_serving_cert(&self, node: &str, ip: Ipv4Addr) -> Result<ClientCert, KubeError> {
        let name = format!("kubelet-{node}");
        self.sign(
            &name,
            &format!("/CN={node}"),
            &format!("subjectAltName=IP:{ip}"),
            "serverAuth",
        )?;
        Ok(ClientCert {
            cert: self.dir().join(format!("{name}.crt")),
            key: self.dir().join(format!("{name}.key")),
        })
    }

    /// A kubeconfig for node `node` (`system:node:<node>` in `system:nodes`), as kubelet uses.
    pub fn node_kubeconfig(&self, node: &str) -> Result<PathBuf, KubeError> {
        let name = format!("node-{node}");
        let cert = self.client_cert(&name, &format!("system:node:{node}"), Some("system:nodes"))?;
        let path = self.dir().join(format!("{name}.kubeconfig"));
        self.write_kubeconfig(&path, &cert)?;
        Ok(path)
    }

    /// Runs kubectl (the release the cluster runs) in `ns` with `kubeconfig`.
    pub fn kubectl_as(
        &self,
        ns: &Netns,
        kubeconfig: &Path,
        args: &[&str],
    ) -> Result<Output, KubeError> {
        let mut cmd = ns.command(&self.kubectl);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .env("HOME", self.dir());
        cmd.output().map_err(io_err("cannot run kubectl"))
    }

    /// Runs kubectl in `ns` as the admin and returns its stdout; fails with its stderr.
    pub fn kubectl_ok(&self, ns: &Netns, args: &[&str]) -> Result<String, KubeError> {
        let out = self.kubectl_as(ns, &self.admin_kubeconfig(), args)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(KubeError::Failed {
                command: format!("kubectl {}", args.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// Waits until the API server answers `/readyz` with `ok`; fails early when a component
    /// exited.
    fn wait_ready(&mut self, ns: &Netns) -> Result<(), KubeError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ]
            .into_iter()
            .find_map(|(name, p)| {
                p.as_mut()
                    .and_then(NetnsProcess::try_wait)
                    .map(|status| (name, status))
            });
            if let Some((name, status)) = exited {
                return Err(KubeError::NotUp {
                    what: format!(
                        "{name} exited ({}) before the API server was ready",
                        NetnsProcess::describe_status(status)
                    ),
                    logs: self.logs(),
                });
            }
            let last = match self.kubectl_ok(ns, &["get", "--raw=/readyz"]) {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(KubeError::NotUp {
                    what: format!(
                        "the API server did not become ready within {READY_TIMEOUT:?}; last answer: {last}"
                    ),
                    logs: self.logs(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Starts `cmd` with only PATH (and what `cmd` set) in its environment, stdout and stderr into
/// the new file `log`, registered for the harness's cleanup.
fn spawn_logged(
    mut cmd: Command,
    log: &Path,
    what: &str,
) -> Result<std::process::Child, KubeError> {
    let out = fs::File::create(log).map_err(io_err(format!("cannot create {}", log.display())))?;
    let err = out.try_clone().map_err(io_err("cannot clone the log"))?;
    let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    cmd.env_clear()
        .env("PATH", test_support::netns::default_path())
        .envs(envs)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd
        .spawn()
        .map_err(io_err(format!("cannot start {what}")))?;
    if let Ok(pid) = i32::try_from(child.id()) {
        cleanup::register_pid(pid);
    }
    Ok(child)
}

/// Runs `openssl args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<(), KubeError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(io_err("cannot run openssl"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KubeError::Failed {
            command: format!("openssl {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_release_is_read_from_the_go_module() {
        let v = kube_version().unwrap();
        assert!(v.starts_with("v1."), "{v}");
        assert!(kube_bin_dir().unwrap().ends_with(&v));
    }
}
