//! Driving the plugin through podman 4.3 with its CNI backend, the way a user of a plain
//! container host would meet it. podman runs inside the node's network namespace (so the plugin
//! it execs works on the node; entered with `nsenter --net`, see [`Podman::command`]), with a private `containers.conf` (`CONTAINERS_CONF`: CNI backend,
//! plugin dirs = aws-cni's dir + /usr/lib/cni, network config dir = ipamd's net.d, runc, lowered
//! ulimits) and private storage (`--root`, `--runroot`, `--tmpdir`) removed afterwards, so
//! nothing on the machine changes. `podman system reset` is never used: it deletes conflists.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::node::SimNode;
use test_support::cleanup;
use test_support::netns::{CommandError, run};
use test_support::prereqs::{self, PrereqError};

/// The local image the tests run (busybox-static, imported, no registry involved).
pub(crate) const BUSYBOX_IMAGE: &str = "localhost/vcni-busybox:latest";

/// Applets linked into the image.
const APPLETS: &[&str] = &[
    "sh", "ip", "ls", "cat", "echo", "sleep", "ping", "ifconfig", "route", "hostname",
];

/// Errors of preparing or running podman.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    /// podman, runc or another tool is missing.
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    /// A command could not be run.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A file of the private setup could not be written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `podman import` of the busybox image failed.
    #[error("podman import of {image} failed: {stderr}")]
    Import {
        /// The image name.
        image: &'static str,
        /// podman's stderr.
        stderr: String,
    },
}

/// libcni's result cache, which podman 4.3's CNI backend does not let us relocate.
const LIBCNI_CACHE_DIR: &str = "/var/lib/cni";

/// podman with private configuration and storage, bound to one node.
#[derive(Debug)]
pub struct Podman<'a> {
    node: &'a SimNode,
    dir: tempfile::TempDir,
    conf: PathBuf,
    cache_dir_existed: bool,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> PodmanError {
    move |source| PodmanError::Io { context, source }
}

impl<'a> Podman<'a> {
    /// Writes the private `containers.conf` and storage directories for `node`.
    pub fn new(node: &'a SimNode) -> Result<Self, PodmanError> {
        prereqs::require_tool("podman", "apt-get install podman")?;
        prereqs::require_tool("runc", "apt-get install runc")?;
        prereqs::require_tool("tar", "apt-get install tar")?;
        prereqs::require_tool("nsenter", "apt-get install util-linux")?;
        let dir = tempfile::Builder::new()
            .prefix("vcni-podman-")
            .tempdir()
            .map_err(io_err("cannot create podman's private directory".into()))?;
        cleanup::register_dir(dir.path());
        let plugin = prereqs::aws_cni()?;
        let plugin_dir = plugin.parent().unwrap_or(Path::new("/"));
        let conf = dir.path().join("containers.conf");
        let text = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{plugin_dir:?}, {system:?}]\n\
             network_config_dir = {confdir:?}\n\
             default_network = \"aws-cni\"\n\
             [engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"none\"\n\
             tmp_dir = {tmp:?}\n",
            plugin_dir = plugin_dir.to_string_lossy(),
            system = prereqs::SYSTEM_CNI_DIR,
            confdir = node.conflist_dir().to_string_lossy(),
            tmp = dir.path().join("tmp").to_string_lossy(),
        );
        fs::write(&conf, text).map_err(io_err(format!("cannot write {}", conf.display())))?;
        Ok(Self {
            node,
            dir,
            conf,
            cache_dir_existed: Path::new(LIBCNI_CACHE_DIR).exists(),
        })
    }

    /// The private directory (configuration, storage, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A podman command running inside the node's network namespace with the private setup.
    /// It enters only the network namespace (`nsenter --net`): `ip netns exec` remounts `/sys`,
    /// which hides the cgroup mounts runc needs ("no cgroup mount found in mountinfo").
    pub fn command(&self) -> Command {
        let mut cmd = self.node.ns().nsenter_command("podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(self.dir().join("root"))
            .arg("--runroot")
            .arg(self.dir().join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir().join("tmp"));
        cmd
    }

    /// Runs podman with `args` and returns its output (any exit status).
    pub fn run(&self, args: &[&str]) -> Result<Output, PodmanError> {
        Ok(run(self.command().args(args))?)
    }

    /// Builds `BUSYBOX_IMAGE` from the static busybox binary with `podman import`.
    pub fn import_busybox(&self) -> Result<&'static str, PodmanError> {
        let busybox = fs::canonicalize("/bin/busybox").map_err(|_| PrereqError::MissingTool {
            tool: "/bin/busybox".into(),
            hint: "apt-get install busybox-static".into(),
        })?;
        let rootfs = self.dir().join("rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).map_err(io_err(format!("cannot create {}", bin.display())))?;
        fs::copy(&busybox, bin.join("busybox"))
            .map_err(io_err(format!("cannot copy {}", busybox.display())))?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet))
                .map_err(io_err(format!("cannot link {applet}")))?;
        }
        let tar = self.dir().join("rootfs.tar");
        test_support::netns::run_checked(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        )?;
        let out = self.run(&[
            "import",
            "-q",
            "--change",
            "CMD [\"/bin/sh\"]",
            &tar.to_string_lossy(),
            BUSYBOX_IMAGE,
        ])?;
        if !out.status.success() {
            return Err(PodmanError::Import {
                image: BUSYBOX_IMAGE,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(BUSYBOX_IMAGE)
    }

    /// Starts `podman <args>` with stdout and stderr piped (to follow a container's output).
    pub fn spawn(&self, args: &[&str]) -> Result<std::process::Child, PodmanError> {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("cannot start podman".into()))
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        // Remove leftovers (a failed test may leave a container running) so the storage's
        // mounts go away before the directory is removed.
        let _ = run(self
            .command()
            .args(["rm", "--all", "--force", "--time", "0"]));
        let _ = run(self.command().args(["rmi", "--all", "--force"]));
        cleanup::unregister_dir(self.dir.path());
        // podman's libcni writes its result cache under /var/lib/cni and removes the entries on
        // `--rm`; drop the then-empty directories if they were not there before (remove_dir
        // refuses non-empty ones, so nothing of anyone else's is lost).
        if !self.cache_dir_existed {
            let cache = Path::new(LIBCNI_CACHE_DIR);
            let _ = fs::remove_dir(cache.join("results"));
            let _ = fs::remove_dir(cache);
        }
    }
}
