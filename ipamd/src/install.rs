//! `ipamd install-cni`: what the reference's init container (`aws-vpc-cni-init`) does, run from
//! the same image as ipamd before it starts.
//!
//! 1. Copies every plugin binary shipped in the image into `HOST_CNI_BIN_PATH` (default
//!    `/host/opt/cni/bin`), each through a temp file in the target directory, fsync and rename,
//!    so a kubelet or runtime exec'ing a plugin at that moment runs the old binary or the new
//!    one, never a half-written file. The image ships [`SHIPPED_PLUGINS`]: `aws-cni`,
//!    `egress-cni` (IPv4 egress for IPv6 pods, chained when `ENABLE_V4_EGRESS`) and, as
//!    the reference's init image does, the upstream plugins the written conflist chains
//!    (`portmap`, `bandwidth`, `tuning`), `loopback` (containerd runs it for every pod's `lo`
//!    and requires it in the CNI bin dir) and `host-local`, so a node whose OS image lacks them
//!    still runs pods. All of them must be in the source directory: an image without them
//!    would leave a node where every pod ADD fails, so the init container fails instead.
//! 2. Sets the sysctls the reference's init container sets, in the node's network namespace
//!    (the init container is hostNetwork): `net/ipv4/conf/<primary interface>/rp_filter=2`
//!    (loose reverse-path filtering, needed for pods on secondary ENIs answering NodePort
//!    traffic that arrived on the primary ENI), where the primary interface is the link whose
//!    MAC is instance metadata's `mac`; and `net/ipv4/tcp_early_demux` = 0 when
//!    `DISABLE_TCP_EARLY_DEMUX=true`, else 1. With `ENABLE_IPv6=true`, as the reference:
//!    `net/ipv6/conf/all/disable_ipv6=0`, `net/ipv6/conf/all/forwarding=1` and
//!    `net/ipv6/conf/<primary interface>/accept_ra=2` (the node keeps its default route from
//!    router advertisements although it forwards). `ENABLE_V6_EGRESS` is refused (not in this
//!    build, as in ipamd).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::cloud::imds::{Imds, ImdsError};
use crate::config::parse::{parse_bool, parse_dir_path};
use crate::config::{ConfigError, ENABLE_IPV6, ENABLE_V6_EGRESS, Env};
use crate::mac::MacAddr;
use crate::node_network::host::{HostNetwork, HostNetworkError};

/// Where plugin binaries are installed (the host's `/opt/cni/bin`, mounted into the pod).
pub const HOST_CNI_BIN_PATH: &str = "HOST_CNI_BIN_PATH";
/// `true` sets `net.ipv4.tcp_early_demux=0` (kubelet TCP probes to SGP pods need it).
pub const DISABLE_TCP_EARLY_DEMUX: &str = "DISABLE_TCP_EARLY_DEMUX";
/// The default of [`HOST_CNI_BIN_PATH`].
pub const DEFAULT_HOST_CNI_BIN_PATH: &str = "/host/opt/cni/bin";
/// The plugin that must be among the installed binaries.
pub const PLUGIN: &str = "aws-cni";
/// The chained plugin giving IPv6 pods IPv4 egress (the reference's type name), built from
/// this workspace next to [`PLUGIN`].
pub const EGRESS_PLUGIN: &str = "egress-cni";
/// The binaries this project builds, among [`SHIPPED_PLUGINS`].
pub const OWN_PLUGINS: [&str; 2] = [PLUGIN, EGRESS_PLUGIN];
/// Every binary the image ships in `/app/cni/bin` and this command requires in its source
/// directory: [`OWN_PLUGINS`] and the upstream plugins (Debian's `containernetworking-plugins`,
/// staged by `make image-binaries`) that a conflist ipamd writes can chain, plus `loopback`
/// and `host-local` (which egress-cni delegates its IPv4 addresses to).
pub const SHIPPED_PLUGINS: [&str; 7] = [
    PLUGIN,
    "bandwidth",
    EGRESS_PLUGIN,
    "host-local",
    "loopback",
    "portmap",
    "tuning",
];
/// How long to keep asking instance metadata for the primary MAC.
pub const IMDS_PATIENCE: Duration = Duration::from_secs(30);

/// Why installing failed.
#[derive(Debug, Error)]
pub enum InstallError {
    /// A bad environment value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The plugins directory cannot be read.
    #[error("cannot read the plugins directory {dir}: {source}")]
    ReadSource {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Binaries of [`SHIPPED_PLUGINS`] are not among the files to install.
    #[error("{dir} has no {} binary to install", missing.join(", "))]
    MissingPlugins {
        /// The directory.
        dir: PathBuf,
        /// The missing names, in [`SHIPPED_PLUGINS`] order.
        missing: Vec<&'static str>,
    },
    /// The target directory cannot be created.
    #[error("cannot create {dir}: {source}")]
    CreateTarget {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A binary could not be copied.
    #[error("cannot install {from} as {to}: {source}")]
    Copy {
        /// Source.
        from: PathBuf,
        /// Target.
        to: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Instance metadata did not give the primary MAC in time.
    #[error(
        "cannot read the primary ENI's MAC from instance metadata within {IMDS_PATIENCE:?}: {0}"
    )]
    Imds(ImdsError),
    /// Netlink failed.
    #[error(transparent)]
    HostNetwork(#[from] HostNetworkError),
    /// No link has the primary MAC.
    #[error(
        "no network interface has the primary ENI's MAC {0} (is this container in the node's network namespace, hostNetwork: true?)"
    )]
    NoPrimaryLink(MacAddr),
    /// A sysctl write failed.
    #[error("cannot set {key}={value} (writing {path}): {source}")]
    Sysctl {
        /// The sysctl, dotted.
        key: String,
        /// The value.
        value: String,
        /// The /proc path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The environment `install-cni` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallConfig {
    /// `HOST_CNI_BIN_PATH`.
    pub bin_dir: PathBuf,
    /// `DISABLE_TCP_EARLY_DEMUX`.
    pub disable_tcp_early_demux: bool,
    /// `ENABLE_IPv6`.
    pub enable_ipv6: bool,
}

fn read_bool(env: &(impl Env + ?Sized), var: &'static str) -> Result<bool, ConfigError> {
    match env.var(var)?.filter(|v| !v.is_empty()) {
        None => Ok(false),
        Some(v) => parse_bool(&v).map_err(|reason| ConfigError::Invalid {
            var,
            value: v,
            reason,
        }),
    }
}

impl InstallConfig {
    /// Reads and checks the variables.
    ///
    /// # Errors
    /// A value that does not parse, or IPv6 egress asked for (not in this build).
    pub fn from_env(env: &(impl Env + ?Sized)) -> Result<Self, ConfigError> {
        let bin_dir = match env.var(HOST_CNI_BIN_PATH)?.filter(|v| !v.is_empty()) {
            None => PathBuf::from(DEFAULT_HOST_CNI_BIN_PATH),
            Some(v) => parse_dir_path(&v)
                .and_then(|p| {
                    if p.is_absolute() {
                        Ok(p)
                    } else {
                        Err("must be an absolute directory path".into())
                    }
                })
                .map_err(|reason| ConfigError::Invalid {
                    var: HOST_CNI_BIN_PATH,
                    value: v,
                    reason,
                })?,
        };
        if read_bool(env, ENABLE_V6_EGRESS)? {
            return Err(ConfigError::Unsupported {
                var: ENABLE_V6_EGRESS,
                value: env.var(ENABLE_V6_EGRESS)?.unwrap_or_default(),
                reason: format!(
                    "IPv6 egress for pods (egress-cni) is not available in this build yet (ipamd refuses it too); unset {ENABLE_V6_EGRESS} or set it to false"
                ),
            });
        }
        Ok(Self {
            bin_dir,
            disable_tcp_early_demux: read_bool(env, DISABLE_TCP_EARLY_DEMUX)?,
            enable_ipv6: read_bool(env, ENABLE_IPV6)?,
        })
    }
}

/// What happened to one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Its path on the host (as mounted).
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// It was already there with the same content (left alone).
    pub unchanged: bool,
}

/// The plugins directory shipped next to the running binary: `<dir of ipamd>/cni/bin`.
///
/// # Errors
/// The running executable's path is unknown.
pub fn default_source_dir() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(crate::fsutil::parent_dir(&exe).join("cni").join("bin"))
}

/// Copies every regular file of `source` into `target` (created if missing), atomically per
/// file, mode 0755. Every name of [`SHIPPED_PLUGINS`] must be among them; nothing is written
/// otherwise.
///
/// # Errors
/// The source cannot be read or lacks one of [`SHIPPED_PLUGINS`], or a copy failed.
pub fn install_binaries(source: &Path, target: &Path) -> Result<Vec<Installed>, InstallError> {
    let read_err = |source_err| InstallError::ReadSource {
        dir: source.to_owned(),
        source: source_err,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(source).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        // Follows symlinks: an image may link plugins into the directory.
        if fs::metadata(entry.path()).map_err(read_err)?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    let missing: Vec<&'static str> = SHIPPED_PLUGINS
        .into_iter()
        .filter(|name| {
            !files
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n == *name))
        })
        .collect();
    if !missing.is_empty() {
        return Err(InstallError::MissingPlugins {
            dir: source.to_owned(),
            missing,
        });
    }
    fs::create_dir_all(target).map_err(|e| InstallError::CreateTarget {
        dir: target.to_owned(),
        source: e,
    })?;
    let mut done = Vec::with_capacity(files.len());
    for from in files {
        let Some(name) = from.file_name() else {
            continue;
        };
        let to = target.join(name);
        let copy_err = |e| InstallError::Copy {
            from: from.clone(),
            to: to.clone(),
            source: e,
        };
        let contents = fs::read(&from).map_err(copy_err)?;
        let unchanged = match (fs::read(&to), fs::metadata(&to)) {
            (Ok(existing), Ok(meta)) => {
                existing == contents && meta.permissions().mode() & 0o777 == 0o755
            }
            _ => false,
        };
        if !unchanged {
            crate::fsutil::atomic_write(&to, &contents, 0o755).map_err(copy_err)?;
        }
        done.push(Installed {
            path: to,
            bytes: u64::try_from(contents.len()).unwrap_or(u64::MAX),
            unchanged,
        });
    }
    Ok(done)
}

/// Writes `value` to `/proc/sys/<path>` of the calling thread's network namespace; `key` is
/// the dotted name for messages. (Interface names may contain dots, so the path is given.)
fn write_sysctl(key: &str, path: &str, value: &str) -> Result<(), InstallError> {
    let path = Path::new("/proc/sys").join(path);
    fs::write(&path, value).map_err(|source| InstallError::Sysctl {
        key: key.to_owned(),
        value: value.to_owned(),
        path,
        source,
    })
}

/// Asks instance metadata for the primary ENI's MAC, retrying for [`IMDS_PATIENCE`].
///
/// # Errors
/// The last error once the patience ran out.
pub async fn primary_mac(imds: &impl Imds) -> Result<MacAddr, InstallError> {
    let deadline = tokio::time::Instant::now() + IMDS_PATIENCE;
    let mut delay = Duration::from_millis(250);
    loop {
        match imds.primary_mac().await {
            Ok(mac) => return Ok(mac),
            Err(e) if tokio::time::Instant::now() + delay > deadline => {
                return Err(InstallError::Imds(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot read the primary MAC yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
        }
    }
}

/// The sysctls set, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlsSet {
    /// The primary interface found by MAC.
    pub primary_interface: String,
    /// (key, value) written.
    pub written: Vec<(String, String)>,
}

/// Sets the init container's sysctls in the calling process's network namespace.
///
/// # Errors
/// Metadata, netlink or sysctl failures.
pub async fn set_node_sysctls(
    config: &InstallConfig,
    imds: &impl Imds,
) -> Result<SysctlsSet, InstallError> {
    let mac = primary_mac(imds).await?;
    let host = HostNetwork::connect()?;
    let link = host
        .link_by_mac(mac)
        .await?
        .ok_or(InstallError::NoPrimaryLink(mac))?;
    let rp_filter = format!("net.ipv4.conf.{}.rp_filter", link.name);
    write_sysctl(
        &rp_filter,
        &format!("net/ipv4/conf/{}/rp_filter", link.name),
        "2",
    )?;
    let demux = if config.disable_tcp_early_demux {
        "0"
    } else {
        "1"
    };
    write_sysctl(
        "net.ipv4.tcp_early_demux",
        "net/ipv4/tcp_early_demux",
        demux,
    )?;
    let mut written = vec![
        (rp_filter, "2".to_owned()),
        ("net.ipv4.tcp_early_demux".to_owned(), demux.to_owned()),
    ];
    if config.enable_ipv6 {
        for (conf, setting, value) in [
            ("all", "disable_ipv6", "0"),
            ("all", "forwarding", "1"),
            (link.name.as_str(), "accept_ra", "2"),
        ] {
            let key = format!("net.ipv6.conf.{conf}.{setting}");
            write_sysctl(&key, &format!("net/ipv6/conf/{conf}/{setting}"), value)?;
            written.push((key, value.to_owned()));
        }
    }
    Ok(SysctlsSet {
        primary_interface: link.name,
        written,
    })
}

#[cfg(test)]
mod tests {

    use std::collections::HashMap;

    use super::*;

    #[test]
    fn reads_the_environment_with_the_reference_defaults() {
        let c = InstallConfig::from_env(&HashMap::<&str, &str>::new()).unwrap();
        assert_eq!(c.bin_dir, PathBuf::from("/host/opt/cni/bin"));
        assert!(!c.disable_tcp_early_demux);
        let c = InstallConfig::from_env(&HashMap::from([
            ("HOST_CNI_BIN_PATH", "/opt/x"),
            ("DISABLE_TCP_EARLY_DEMUX", "true"),
        ]))
        .unwrap();
        assert_eq!(c.bin_dir, PathBuf::from("/opt/x"));
        assert!(c.disable_tcp_early_demux);
        let e = InstallConfig::from_env(&HashMap::from([("DISABLE_TCP_EARLY_DEMUX", "maybe")]))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid DISABLE_TCP_EARLY_DEMUX=\"maybe\""),
            "{e}"
        );
        let c = InstallConfig::from_env(&HashMap::from([("ENABLE_IPv6", "true")])).unwrap();
        assert!(c.enable_ipv6);
        let e =
            InstallConfig::from_env(&HashMap::from([("ENABLE_V6_EGRESS", "true")])).unwrap_err();
        assert!(
            e.to_string().contains("ENABLE_V6_EGRESS")
                && e.to_string().contains("unset ENABLE_V6_EGRESS"),
            "{e}"
        );
        let e = InstallConfig::from_env(&HashMap::from([("HOST_CNI_BIN_PATH", "relative/dir")]))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid HOST_CNI_BIN_PATH"),
            "{e}"
        );
    }

    /// Writes every shipped plugin into `dir` with the content `<name> v1`, plus `extra`.
    fn ship(dir: &Path) {
        for name in SHIPPED_PLUGINS {
            fs::write(dir.join(name), format!("{name} v1")).unwrap();
        }
        fs::write(dir.join("extra-plugin"), b"extra").unwrap();
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn installs_every_binary_atomically_and_leaves_no_temp_files() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let target = dst.path().join("opt").join("cni").join("bin");
        ship(src.path());
        fs::create_dir(src.path().join("subdir")).unwrap();
        let done = install_binaries(src.path(), &target).unwrap();
        let mut expected: Vec<(PathBuf, u64, bool)> = SHIPPED_PLUGINS
            .iter()
            .map(|n| (target.join(n), u64::try_from(n.len()).unwrap() + 3, false))
            .collect();
        expected.push((target.join("extra-plugin"), 5, false));
        expected.sort();
        assert_eq!(
            done.iter()
                .map(|i| (i.path.clone(), i.bytes, i.unchanged))
                .collect::<Vec<_>>(),
            expected
        );
        for name in SHIPPED_PLUGINS {
            assert_eq!(
                fs::read_to_string(target.join(name)).unwrap(),
                format!("{name} v1")
            );
            let mode = fs::metadata(target.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o755, "{name}");
        }

        // A second run with the same content changes nothing; a new version replaces the file
        // by rename (a process holding the old inode keeps running the old binary).
        let again = install_binaries(src.path(), &target).unwrap();
        assert!(again.iter().all(|i| i.unchanged));
        let old_plugin = fs::File::open(target.join("aws-cni")).unwrap();
        let old_portmap = fs::File::open(target.join("portmap")).unwrap();
        fs::write(src.path().join("aws-cni"), b"aws-cni v2").unwrap();
        fs::write(src.path().join("portmap"), b"portmap v2").unwrap();
        let third = install_binaries(src.path(), &target).unwrap();
        let changed: Vec<_> = third
            .iter()
            .filter(|i| !i.unchanged)
            .map(|i| i.path.clone())
            .collect();
        assert_eq!(changed, [target.join("aws-cni"), target.join("portmap")]);
        assert_eq!(fs::read(target.join("aws-cni")).unwrap(), b"aws-cni v2");
        assert_eq!(fs::read(target.join("portmap")).unwrap(), b"portmap v2");
        for (old, content) in [(old_plugin, "aws-cni v1"), (old_portmap, "portmap v1")] {
            assert_eq!(
                std::io::read_to_string(&old).unwrap(),
                content,
                "the file was replaced, not rewritten in place"
            );
        }
        let mut expected_names: Vec<String> =
            SHIPPED_PLUGINS.iter().map(|n| (*n).to_owned()).collect();
        expected_names.push("extra-plugin".into());
        expected_names.sort();
        assert_eq!(names_in(&target), expected_names, "temp files left behind");
    }

    #[test]
    fn refuses_a_source_without_every_shipped_plugin() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::write(src.path().join("portmap"), b"x").unwrap();
        let e = install_binaries(src.path(), dst.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} has no aws-cni, bandwidth, egress-cni, host-local, loopback, tuning binary to install",
                src.path().display()
            )
        );
        // One plugin short: nothing is installed, the message names it.
        ship(src.path());
        fs::remove_file(src.path().join("loopback")).unwrap();
        let target = dst.path().join("bin");
        let e = install_binaries(src.path(), &target).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} has no loopback binary to install", src.path().display())
        );
        assert!(!target.exists());
        let e = install_binaries(&src.path().join("missing"), dst.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read the plugins directory"),
            "{e}"
        );
    }
}
