//! The `iptables` commands of the node, run as child processes in ipamd's own network namespace
//! (the node's: hostNetwork in production, the node namespace in tests): `iptables --version`
//! once, `iptables-save -t <table>` to read, and `iptables-restore --noflush` to apply one
//! atomic batch per table. Every call waits for the xtables lock (`-w`, the file
//! `/run/xtables.lock` the DaemonSet mounts and kube-proxy shares) and is bounded in time.
//!
//! The backend is whatever the node's `iptables` is (`nf_tables` or `legacy`, as
//! `update-alternatives` or the image's wrapper chose), exactly like kube-proxy: the rules are
//! the same text on both and `iptables-save` prints them identically.

use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::plan::Table;

/// Seconds every command waits for the xtables lock (`-w`).
pub const LOCK_WAIT_SECONDS: u32 = 5;
/// Upper bound on one command, lock wait included.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed iptables command.
#[derive(Debug, Error)]
pub enum IptablesError {
    /// The program is not installed (or not on `PATH`).
    #[error(
        "`{program}` was not found on PATH: ipamd programs SNAT and connmark rules with the iptables commands (iptables-nft or iptables-legacy); install them or set AWS_VPC_K8S_CNI_EXTERNALSNAT=true and AWS_VPC_CNI_NODE_PORT_SUPPORT=false"
    )]
    NotFound {
        /// The program.
        program: String,
    },
    /// The program could not be run.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("`{command}` failed ({status}): {stderr}{}", batch_note(.input))]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr.
        stderr: String,
        /// The batch it was given, if any.
        input: Option<String>,
    },
    /// It did not finish in time (the xtables lock held elsewhere, a hung kernel call).
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout {
        /// The command line.
        command: String,
        /// The bound.
        timeout: Duration,
    },
    /// `iptables --version` printed something unexpected.
    #[error("cannot read the version from `{command}`: {output:?}")]
    Version {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
}

fn batch_note(input: &Option<String>) -> String {
    input
        .as_ref()
        .map(|b| format!("\n--- batch ---\n{}", b.trim_end()))
        .unwrap_or_default()
}

/// `iptables --version`: `iptables v1.8.9 (nf_tables)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesVersion {
    /// `(major, minor, patch)`.
    pub version: (u32, u32, u32),
    /// `nf_tables` or `legacy` (`legacy` when the output names no backend: iptables before
    /// 1.8 had only the legacy one).
    pub backend: String,
}

impl IptablesVersion {
    /// Parses the first line of `iptables --version`.
    pub fn parse(output: &str) -> Option<Self> {
        let line = output.lines().next()?.trim();
        let mut words = line.split_whitespace();
        words.next()?;
        let number = words.next()?.strip_prefix('v')?;
        let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
        let version = (
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
            parts.next().flatten().unwrap_or(0),
        );
        let backend = match (line.find('('), line.rfind(')')) {
            (Some(a), Some(b)) if a < b => line[a + 1..b].to_owned(),
            _ => "legacy".to_owned(),
        };
        Some(Self { version, backend })
    }

    /// `--random-fully` arrived in iptables 1.6.2.
    pub fn has_random_fully(&self) -> bool {
        self.version >= (1, 6, 2)
    }

    /// Whether the backend is nf_tables.
    pub fn is_nf_tables(&self) -> bool {
        self.backend == "nf_tables"
    }
}

/// An iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft`.
    Nft,
    /// `iptables-legacy`.
    Legacy,
}

/// What one backend's `iptables-save` holds, as far as choosing a backend needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveSummary {
    /// Number of rules (`-A` lines).
    pub rules: usize,
    /// Whether kubelet's hint chains are there (kubelet creates them in the backend it uses).
    pub kubelet_hint: bool,
}

impl SaveSummary {
    /// Summarises `iptables-save` output.
    pub fn of(save: &str) -> Self {
        Self {
            rules: save.lines().filter(|l| l.starts_with("-A ")).count(),
            kubelet_hint: save.lines().any(|l| {
                l.starts_with(':')
                    && (l.starts_with(":KUBE-IPTABLES-HINT ")
                        || l.starts_with(":KUBE-KUBELET-CANARY "))
            }),
        }
    }
}

/// The backend to use when both exist: kubelet's hint first, then the one with more rules, nft
/// on a tie (Debian's and the reference's default).
pub fn choose_backend(nft: &SaveSummary, legacy: &SaveSummary) -> Backend {
    match (nft.kubelet_hint, legacy.kubelet_hint) {
        (true, _) => Backend::Nft,
        (false, true) => Backend::Legacy,
        (false, false) if legacy.rules > nft.rules => Backend::Legacy,
        (false, false) => Backend::Nft,
    }
}

/// The iptables commands of one family: `iptables`, `iptables-save`, `iptables-restore`
/// (production), or e.g. `iptables-legacy…` (tests prove both backends).
#[derive(Debug, Clone)]
pub struct Iptables {
    base: String,
}

impl Default for Iptables {
    fn default() -> Self {
        Self::new()
    }
}

impl Iptables {
    /// The node's `iptables`, `iptables-save` and `iptables-restore` from `PATH`.
    pub fn new() -> Self {
        Self::with_command("iptables")
    }

    /// The backend the node already uses, picked the way Kubernetes' iptables-wrappers (and the
    /// reference's image) pick it, so ipamd's rules sit next to kube-proxy's and never in the
    /// other store: when both `iptables-nft` and `iptables-legacy` exist, the one holding
    /// kubelet's hint chains (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY`) wins, else the one with
    /// more rules, nft on a tie; when only one exists it is used; when neither, plain `iptables`.
    pub async fn detect() -> Self {
        let nft = Self::with_command("iptables-nft");
        let legacy = Self::with_command("iptables-legacy");
        let (n, l) = tokio::join!(nft.summary(), legacy.summary());
        let chosen = match (n, l) {
            (None, None) => Self::new(),
            (Some(_), None) => nft,
            (None, Some(_)) => legacy,
            (Some(n), Some(l)) => match choose_backend(&n, &l) {
                Backend::Nft => nft,
                Backend::Legacy => legacy,
            },
        };
        tracing::debug!(command = chosen.command_name(), "iptables backend chosen");
        chosen
    }

    /// What `<base>-save` shows of every table, or `None` when the command is missing or fails.
    async fn summary(&self) -> Option<SaveSummary> {
        let program = format!("{}-save", self.base);
        self.run(&program, &[], None)
            .await
            .ok()
            .map(|out| SaveSummary::of(&out))
    }

    /// Commands named `<base>`, `<base>-save` and `<base>-restore` (`iptables-legacy`,
    /// `iptables-nft`).
    pub fn with_command(base: &str) -> Self {
        Self {
            base: base.to_owned(),
        }
    }

    /// The base command name.
    pub fn command_name(&self) -> &str {
        &self.base
    }

    /// `iptables --version`.
    ///
    /// # Errors
    /// The command is missing or failed, or its output has no version.
    pub async fn version(&self) -> Result<IptablesVersion, IptablesError> {
        let out = self.run(&self.base, &["--version"], None).await?;
        IptablesVersion::parse(&out).ok_or_else(|| IptablesError::Version {
            command: format!("{} --version", self.base),
            output: out,
        })
    }

    /// `iptables-save -t <table>`.
    ///
    /// # Errors
    /// The command is missing or failed.
    pub async fn save(&self, table: Table) -> Result<String, IptablesError> {
        let program = format!("{}-save", self.base);
        self.run(&program, &["-t", table.name()], None).await
    }

    /// `iptables-restore -w <s> --noflush` with `batch` on stdin: one atomic change.
    ///
    /// # Errors
    /// The command is missing or refused the batch (nothing of it was applied).
    pub async fn restore(&self, batch: &str) -> Result<(), IptablesError> {
        let program = format!("{}-restore", self.base);
        let wait = LOCK_WAIT_SECONDS.to_string();
        self.run(&program, &["-w", &wait, "--noflush"], Some(batch))
            .await
            .map(|_| ())
    }

    async fn run(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, IptablesError> {
        let command = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                IptablesError::NotFound {
                    program: program.to_owned(),
                }
            } else {
                IptablesError::Spawn {
                    command: command.clone(),
                    source,
                }
            }
        })?;
        let work = async {
            if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
                // A write error (the program exited early) shows in its status and stderr.
                let _ = stdin.write_all(text.as_bytes()).await;
                drop(stdin);
            }
            child.wait_with_output().await
        };
        let out = match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => return Err(IptablesError::Spawn { command, source }),
            Err(_) => {
                return Err(IptablesError::Timeout {
                    command,
                    timeout: COMMAND_TIMEOUT,
                });
            }
        };
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(IptablesError::Failed {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                input: input.map(str::to_owned),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_follows_kubelet_hint_then_rule_count_then_nft() {
        let empty = SaveSummary::default();
        let kube_legacy = SaveSummary::of(
            "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n",
        );
        assert!(kube_legacy.kubelet_hint);
        assert_eq!(choose_backend(&empty, &kube_legacy), Backend::Legacy);
        let busy_nft = SaveSummary::of("*filter\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n");
        assert_eq!(busy_nft.rules, 2);
        // kubelet's hint beats a rule count.
        assert_eq!(choose_backend(&busy_nft, &kube_legacy), Backend::Legacy);
        let kube_nft = SaveSummary {
            rules: 0,
            kubelet_hint: true,
        };
        assert_eq!(choose_backend(&kube_nft, &kube_legacy), Backend::Nft);
        let one_legacy = SaveSummary::of("*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n");
        assert_eq!(choose_backend(&empty, &one_legacy), Backend::Legacy);
        assert_eq!(choose_backend(&busy_nft, &one_legacy), Backend::Nft);
        assert_eq!(choose_backend(&empty, &empty), Backend::Nft);
    }

    #[test]
    fn versions_parse_with_and_without_a_backend() {
        let nft = IptablesVersion::parse("iptables v1.8.9 (nf_tables)\n").unwrap();
        assert_eq!(nft.version, (1, 8, 9));
        assert!(nft.is_nf_tables() && nft.has_random_fully());
        let legacy = IptablesVersion::parse("iptables v1.8.7 (legacy)").unwrap();
        assert_eq!(legacy.backend, "legacy");
        assert!(!legacy.is_nf_tables());
        let old = IptablesVersion::parse("iptables v1.6.1").unwrap();
        assert_eq!(old.backend, "legacy");
        assert!(!old.has_random_fully());
        assert!(
            IptablesVersion::parse("iptables v1.6.2")
                .unwrap()
                .has_random_fully()
        );
        assert_eq!(IptablesVersion::parse("not iptables"), None);
        assert_eq!(IptablesVersion::parse(""), None);
    }
}
