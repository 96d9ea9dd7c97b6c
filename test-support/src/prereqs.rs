//! Where the programs under test are, and what the machine must have to run the tests.
//!
//! `aws-cni` and `ipamd` are taken from the cargo target directory of the build the tests run
//! from (`target/debug/` for `cargo test`), overridable with `AWS_CNI_BIN` and `IPAMD_BIN`. The
//! Python tools (moto, kubernetes-validate, hadolint) come from the project's venv
//! `<target>/moto-venv` that `make deps` fills with the pinned versions. Missing prerequisites
//! are errors, never silent skips.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Env var overriding the path of the plugin binary.
const AWS_CNI_BIN_ENV: &str = "AWS_CNI_BIN";
/// Env var overriding the path of the egress-cni binary.
const EGRESS_CNI_BIN_ENV: &str = "EGRESS_CNI_BIN";
/// Env var overriding the path of the ipamd binary.
const IPAMD_BIN_ENV: &str = "IPAMD_BIN";
/// Where Debian's containernetworking-plugins installs portmap and friends.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";
/// Env var naming the Python interpreter that has moto (else `<target>/moto-venv`, else the
/// `python3` on PATH).
const PYTHON_ENV: &str = "VCNI_PYTHON";
/// The project's Python venv under the target dir (`make deps`: moto and the deployment
/// tests' tools, pinned; the name predates the tools).
const PYTHON_VENV: &str = "moto-venv";
/// The moto release the simulated VPC is written against (its launcher patches moto's internals).
const MOTO_VERSION: &str = "5.2.1";

/// Errors about missing programs or privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrereqError {
    /// A binary under test is missing.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        /// Which program.
        what: &'static str,
        /// Where it was expected.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// The tests run as a user other than root.
    #[error("these tests must run as root (they create network namespaces); run `sudo make test`")]
    NotRoot,
    /// A tool the tests need is not installed.
    #[error("required tool {tool} is missing: {hint}")]
    MissingTool {
        /// The tool.
        tool: String,
        /// How to install it.
        hint: String,
    },
    /// A program the tests build themselves (the libcni front end) could not be built.
    #[error("building {what} failed: {reason}")]
    Build {
        /// Which program.
        what: &'static str,
        /// The builder's error output.
        reason: String,
    },
}

/// The workspace root (parent of this crate's manifest directory).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// The directory holding the cargo-built binaries of this build (`target/debug`, ...).
pub fn profile_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        // Integration tests run from target/<profile>/deps, binaries from target/<profile>.
        let dir = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        if dir.join("ipamd").exists() || dir.join("aws-cni").exists() {
            return dir.to_owned();
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    target.join("debug")
}

/// The cargo target directory (parent of [`profile_dir`]).
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile.parent().map(Path::to_owned).unwrap_or(profile)
}

fn locate(what: &'static str, env: &str, file: &str) -> Result<PathBuf, PrereqError> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join(file));
    if path.is_file() {
        Ok(path)
    } else {
        Err(PrereqError::Missing {
            what,
            path,
            hint: format!(
                "build it with `cargo build --workspace --locked` (or `make build`), or point {env} at it"
            ),
        })
    }
}

/// The `aws-cni` plugin binary.
pub fn aws_cni() -> Result<PathBuf, PrereqError> {
    locate("the aws-cni plugin", AWS_CNI_BIN_ENV, "aws-cni")
}

/// The `egress-cni` plugin binary (IPv4 egress for IPv6 pods, chained after `aws-cni`).
pub fn egress_cni() -> Result<PathBuf, PrereqError> {
    locate("the egress-cni plugin", EGRESS_CNI_BIN_ENV, "egress-cni")
}

/// Copies the plugins `names` into `dir` as the image ships them in `/app/cni/bin`: `aws-cni`
/// and `egress-cni` from this build, every other name from Debian's
/// containernetworking-plugins in [`SYSTEM_CNI_DIR`].
///
/// # Errors
/// A binary is missing (named, with how to get it) or cannot be copied.
pub fn stage_plugins(dir: &Path, names: &[&str]) -> Result<(), PrereqError> {
    let copy_failed = |path: PathBuf, e: std::io::Error| PrereqError::Missing {
        what: "a plugin to stage",
        path,
        hint: format!("cannot copy it into {}: {e}", dir.display()),
    };
    std::fs::create_dir_all(dir).map_err(|e| copy_failed(dir.to_owned(), e))?;
    for name in names {
        let from = match *name {
            "aws-cni" => aws_cni()?,
            "egress-cni" => egress_cni()?,
            upstream => {
                let path = Path::new(SYSTEM_CNI_DIR).join(upstream);
                if !path.is_file() {
                    return Err(PrereqError::Missing {
                        what: "an upstream CNI plugin",
                        path,
                        hint: "install containernetworking-plugins (make deps)".into(),
                    });
                }
                path
            }
        };
        std::fs::copy(&from, dir.join(name)).map_err(|e| copy_failed(from.clone(), e))?;
    }
    Ok(())
}

/// The `ipamd` binary.
pub fn ipamd() -> Result<PathBuf, PrereqError> {
    locate("ipamd", IPAMD_BIN_ENV, "ipamd")
}

/// `CNI_PATH` for the plugin: the directory of `aws-cni`, then the system plugins (portmap).
pub fn cni_path() -> Result<String, PrereqError> {
    let plugin = aws_cni()?;
    let dir = plugin.parent().unwrap_or(Path::new("/"));
    Ok(format!("{}:{SYSTEM_CNI_DIR}", dir.display()))
}

/// Fails unless the process runs as root.
pub fn require_root() -> Result<(), PrereqError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(PrereqError::NotRoot)
    }
}

/// Fails unless `tool` is on PATH (or is an existing absolute path).
pub fn require_tool(tool: &str, install_hint: &str) -> Result<(), PrereqError> {
    let found = if tool.starts_with('/') {
        Path::new(tool).is_file()
    } else {
        std::env::split_paths(&crate::netns::default_path()).any(|d| d.join(tool).is_file())
    };
    if found {
        Ok(())
    } else {
        Err(PrereqError::MissingTool {
            tool: tool.to_owned(),
            hint: install_hint.to_owned(),
        })
    }
}

/// The project's Python venv, `<target>/moto-venv`.
fn python_venv() -> PathBuf {
    target_dir().join(PYTHON_VENV)
}

/// A program of the project's venv (`kubernetes-validate`, `hadolint`, its `python3`), which
/// `make deps` installs from the pinned PyPI package `package`. Never looked up elsewhere, so
/// the tests run the pinned version.
pub fn venv_tool(name: &str, package: &str) -> Result<PathBuf, PrereqError> {
    let path = python_venv().join("bin").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(PrereqError::Missing {
            what: "a Python tool of the project's venv",
            path,
            hint: format!(
                "run `sudo make deps` (installs the pinned {package} into {})",
                python_venv().display()
            ),
        })
    }
}

/// The Python interpreter (its real path, not a pyenv shim) that can import moto's server:
/// `$VCNI_PYTHON`, else `<target>/moto-venv/bin/python3` (the venv `make deps` fills), else
/// `python3` on PATH. Checked once per process.
pub fn python_with_moto() -> Result<PathBuf, PrereqError> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(find_python_with_moto)
        .clone()
        .map_err(|hint| PrereqError::MissingTool {
            tool: format!("moto {MOTO_VERSION} (Python)"),
            hint,
        })
}

fn find_python_with_moto() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os(PYTHON_ENV) {
        candidates.push(PathBuf::from(p));
    } else {
        let venv = python_venv().join("bin/python3");
        if venv.exists() {
            candidates.push(venv);
        }
        candidates.push(PathBuf::from("python3"));
    }
    let probe =
        "import sys, moto, moto.server, moto.ec2; print(sys.executable); print(moto.__version__)";
    let mut tried = Vec::new();
    for python in candidates {
        let out = Command::new(&python).args(["-c", probe]).output();
        match out {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let mut lines = text.lines();
                let exe = lines.next().unwrap_or_default().trim().to_owned();
                let version = lines.next().unwrap_or_default().trim().to_owned();
                if version != MOTO_VERSION {
                    tried.push(format!(
                        "{} has moto {version}, the tests need {MOTO_VERSION}",
                        python.display()
                    ));
                    continue;
                }
                return Ok(if exe.is_empty() {
                    python
                } else {
                    PathBuf::from(exe)
                });
            }
            Ok(out) => tried.push(format!(
                "{}: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("failed")
            )),
            Err(err) => tried.push(format!("{}: {err}", python.display())),
        }
    }
    Err(format!(
        "no Python with moto {MOTO_VERSION} found ({}); run `sudo make deps` (creates target/moto-venv) \
         or `pip install 'moto[server]=={MOTO_VERSION}'`, or point {PYTHON_ENV} at an interpreter that has it",
        tried.join("; ")
    ))
}

/// Everything a simulated node needs: root, iproute2, ping, the system CNI plugins, and the
/// two binaries under test.
pub fn require_node_prerequisites() -> Result<(), PrereqError> {
    require_root()?;
    require_tool("ip", "apt-get install iproute2")?;
    require_tool("ping", "apt-get install iputils-ping")?;
    require_tool("sysctl", "apt-get install procps")?;
    require_tool(
        &format!("{SYSTEM_CNI_DIR}/portmap"),
        "apt-get install containernetworking-plugins",
    )?;
    require_tool("iptables", "apt-get install iptables")?;
    aws_cni()?;
    ipamd()?;
    Ok(())
}

fn newest_source(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(modified) = meta.modified()
                && newest.as_ref().is_none_or(|(t, _)| modified > *t)
            {
                newest = Some((modified, path));
            }
        }
    }
    newest
}

/// Warnings about binaries under test that are older than their crates' sources (the tests
/// use whatever `cargo build --workspace` last produced; `cargo test -p vpc-cni-tests` alone
/// does not rebuild them). Empty when everything is fresh or the binaries were overridden.
pub fn staleness_warnings() -> Vec<String> {
    let ws = workspace_dir();
    type Locate = fn() -> Result<PathBuf, PrereqError>;
    let checks: [(&str, Locate, &[&str]); 2] = [
        (
            AWS_CNI_BIN_ENV,
            aws_cni,
            &["cni-plugin/src", "contract/src", "contract/proto"],
        ),
        (
            IPAMD_BIN_ENV,
            ipamd,
            &["ipamd/src", "contract/src", "contract/proto"],
        ),
    ];
    let mut warnings = Vec::new();
    for (env, locate_bin, dirs) in checks {
        if std::env::var_os(env).is_some() {
            continue;
        }
        let Ok(bin) = locate_bin() else {
            continue;
        };
        let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        for dir in dirs {
            if let Some((modified, source)) = newest_source(&ws.join(dir))
                && modified > built
            {
                warnings.push(format!(
                    "{} is older than {}: run `cargo build --workspace` (make build)",
                    bin.display(),
                    source.display()
                ));
                break;
            }
        }
    }
    warnings
}
