//! The pod's SNAT in the host's `nat` table, with the `iptables` command on `PATH` (as the
//! reference's go-iptables does), every call waiting for the xtables lock (`-w`, shared with
//! kube-proxy and ipamd):
//!
//! ```text
//! -N CNI-E4-<21 hex>
//! -A CNI-E4-<..> -d 224.0.0.0/4 -m comment --comment "name: \"<net>\" id: \"<cid>\"" -j ACCEPT
//! -A CNI-E4-<..> -m comment --comment "..." -j SNAT --to-source <nodeIP> [--random-fully|--random]
//! -A POSTROUTING -s <pod v4>/32 -m comment --comment "..." -j CNI-E4-<..>
//! ```
//!
//! The chain is named as containernetworking/plugins' `MustFormatChainNameWithPrefix(name, id,
//! "E4-")` names it: `CNI-E4-` and the sha512 of network name + container ID, cut to 28
//! characters; the comment is its `FormatComment` (`name: %q id: %q`). Teardown finds the rules
//! jumping to the chain in `iptables -S` instead of rebuilding them from the pod address, so DEL
//! removes them even when the pod's namespace (and so its address) is already gone.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha512};
use tokio::process::Command;

use super::config::RandomizeSnat;

/// The chain name prefix (containernetworking/plugins' `CNI-` plus the reference's `E4-`).
pub const CHAIN_PREFIX: &str = "CNI-E4-";
/// Length of every chain name (containernetworking/plugins' `maxChainLength`).
pub const CHAIN_LEN: usize = 28;
/// Multicast is left alone (the reference's `ipv4MulticastRange`).
pub const IPV4_MULTICAST: &str = "224.0.0.0/4";
/// Seconds each command waits for the xtables lock.
pub const LOCK_WAIT_SECONDS: &str = "10";
/// Upper bound on one command, lock wait included.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The table.
const NAT: &str = "nat";

/// A failed iptables command.
#[derive(Debug, thiserror::Error)]
pub enum SnatError {
    /// `iptables` is not on `PATH`.
    #[error("`{program}` was not found on PATH; egress-cni programs the pod's SNAT with it")]
    NotFound {
        /// The program.
        program: String,
    },
    /// It could not be run or did not finish.
    #[error("cannot run `{command}`: {reason}")]
    Run {
        /// The command line.
        command: String,
        /// Why.
        reason: String,
    },
    /// It ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
}

/// The chain of one attachment: `CNI-E4-` + sha512(network + container ID) in hex, 28 chars.
pub fn chain_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let mut name = String::with_capacity(CHAIN_LEN);
    name.push_str(CHAIN_PREFIX);
    for b in digest.iter() {
        if name.len() >= CHAIN_LEN {
            break;
        }
        name.push_str(&format!("{b:02x}"));
    }
    name.truncate(CHAIN_LEN);
    name
}

/// The rules' comment, as Go's `fmt.Sprintf("name: %q id: %q", name, id)` writes it.
pub fn comment(network: &str, container_id: &str) -> String {
    format!("name: {} id: {}", go_quote(network), go_quote(container_id))
}

/// Go's `%q` for the strings it meets here (network names and container IDs are validated to
/// `[A-Za-z0-9_.-]`; quotes, backslashes and control characters are escaped anyway).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What the SNAT of one pod is made of.
#[derive(Clone, Debug)]
pub struct SnatSpec {
    /// The chain.
    pub chain: String,
    /// The comment on every rule.
    pub comment: String,
    /// The pod's egress address.
    pub pod_ip: Ipv4Addr,
    /// The node's address packets leave with.
    pub node_ip: Ipv4Addr,
    /// Port randomisation.
    pub randomize: RandomizeSnat,
}

/// The port randomisation flag: `prng` → `--random-fully` when iptables has it (>= 1.6.2), else
/// `--random`; `hashrandom` → `--random`; `none` → nothing (the reference's `snat.Add`).
pub fn random_flag(randomize: RandomizeSnat, has_random_fully: bool) -> Option<&'static str> {
    match randomize {
        RandomizeSnat::None => None,
        RandomizeSnat::Prng if has_random_fully => Some("--random-fully"),
        RandomizeSnat::Prng | RandomizeSnat::HashRandom => Some("--random"),
    }
}

impl SnatSpec {
    /// The rules, each as `(chain, rule arguments)`, in the order they are appended.
    pub fn rules(&self, random: Option<&str>) -> Vec<(String, Vec<String>)> {
        let s = |v: &str| v.to_string();
        let comment = [s("-m"), s("comment"), s("--comment"), self.comment.clone()];
        let mut accept = vec![s("-d"), s(IPV4_MULTICAST), s("-j"), s("ACCEPT")];
        accept.extend(comment.iter().cloned());
        let mut snat = vec![
            s("-j"),
            s("SNAT"),
            s("--to-source"),
            self.node_ip.to_string(),
        ];
        snat.extend(comment.iter().cloned());
        if let Some(flag) = random {
            snat.push(s(flag));
        }
        let mut jump = vec![
            s("-s"),
            self.pod_ip.to_string(),
            s("-j"),
            self.chain.clone(),
        ];
        jump.extend(comment.iter().cloned());
        vec![
            (self.chain.clone(), accept),
            (self.chain.clone(), snat),
            (s("POSTROUTING"), jump),
        ]
    }
}

/// The `iptables` command.
#[derive(Clone, Debug)]
pub struct Iptables {
    program: String,
}

impl Default for Iptables {
    fn default() -> Self {
        Self {
            program: "iptables".into(),
        }
    }
}

/// How one command ended.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    command: String,
}

impl Ran {
    fn ok(self) -> Result<String, SnatError> {
        if self.code == Some(0) {
            Ok(self.stdout)
        } else {
            Err(self.failed())
        }
    }

    fn failed(self) -> SnatError {
        SnatError::Failed {
            command: self.command,
            status: self
                .code
                .map_or_else(|| "killed".into(), |c| format!("exit {c}")),
            stderr: self.stderr.trim().to_string(),
        }
    }
}

/// What `iptables -t nat -S` shows about one chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainState {
    /// Whether the chain exists.
    pub exists: bool,
    /// Its own rules, tokenized, without the leading `-A <chain>`.
    pub rules: Vec<Vec<String>>,
    /// Rules of other chains that jump to it, tokenized, starting with `-A <chain>`.
    pub jumps: Vec<Vec<String>>,
}

impl ChainState {
    /// Reads `iptables -S` output of the whole table.
    pub fn parse(save: &str, chain: &str) -> Self {
        let mut state = Self::default();
        for line in save.lines() {
            let tokens = tokenize(line);
            match tokens.first().map(String::as_str) {
                Some("-N") if tokens.get(1).map(String::as_str) == Some(chain) => {
                    state.exists = true;
                }
                Some("-A") if tokens.get(1).map(String::as_str) == Some(chain) => {
                    state.exists = true;
                    state.rules.push(tokens[2..].to_vec());
                }
                Some("-A") if tokens.windows(2).any(|w| w[0] == "-j" && w[1] == chain) => {
                    state.jumps.push(tokens);
                }
                _ => {}
            }
        }
        state
    }

    /// The source address of each jump (`-s <addr>`), as written (`169.254.172.2/32`).
    pub fn jump_sources(&self) -> Vec<String> {
        self.jumps
            .iter()
            .filter_map(|r| r.windows(2).find(|w| w[0] == "-s").map(|w| w[1].clone()))
            .collect()
    }

    /// The `--to-source` of the chain's SNAT rules.
    pub fn snat_targets(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.windows(2).any(|w| w[0] == "-j" && w[1] == "SNAT"))
            .filter_map(|r| {
                r.windows(2)
                    .find(|w| w[0] == "--to-source")
                    .map(|w| w[1].clone())
            })
            .collect()
    }
}

/// Splits a line of `iptables -S` into arguments: words, and double-quoted strings with `\"` and
/// `\\` escapes (how iptables writes comments).
pub fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            break;
        };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            word.push(n);
                        }
                    }
                    '"' => break,
                    c => word.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        out.push(word);
    }
    out
}

impl Iptables {
    /// Another program than `iptables` (tests).
    pub fn with_program(program: &str) -> Self {
        Self {
            program: program.into(),
        }
    }

    async fn run(&self, args: &[&str]) -> Result<Ran, SnatError> {
        let command = std::iter::once(self.program.as_str())
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let child = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    SnatError::NotFound {
                        program: self.program.clone(),
                    }
                } else {
                    SnatError::Run {
                        command: command.clone(),
                        reason: e.to_string(),
                    }
                }
            })?;
        let out = match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(SnatError::Run {
                    command,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(SnatError::Run {
                    command,
                    reason: format!("did not finish within {COMMAND_TIMEOUT:?}"),
                });
            }
        };
        Ok(Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            command,
        })
    }

    async fn nat(&self, args: &[&str]) -> Result<Ran, SnatError> {
        let mut all = vec!["-w", LOCK_WAIT_SECONDS, "-t", NAT];
        all.extend_from_slice(args);
        self.run(&all).await
    }

    /// Whether this iptables has `--random-fully` (1.6.2 and later, as go-iptables decides).
    pub async fn has_random_fully(&self) -> Result<bool, SnatError> {
        let out = self.run(&["--version"]).await?.ok()?;
        Ok(parse_version(&out).is_some_and(|v| v >= (1, 6, 2)))
    }

    /// The chain as `iptables -t nat -S` shows it.
    pub async fn chain_state(&self, chain: &str) -> Result<ChainState, SnatError> {
        let save = self.nat(&["-S"]).await?.ok()?;
        Ok(ChainState::parse(&save, chain))
    }

    /// Creates the chain if needed and appends each rule that is not there yet (the
    /// reference's `snat.Add`: `NewChain` + `AppendUnique`).
    pub async fn add(&self, spec: &SnatSpec) -> Result<(), SnatError> {
        let random = match spec.randomize {
            RandomizeSnat::Prng => random_flag(spec.randomize, self.has_random_fully().await?),
            other => random_flag(other, false),
        };
        if !self.chain_state(&spec.chain).await?.exists {
            self.nat(&["-N", &spec.chain]).await?.ok()?;
        }
        for (chain, rule) in spec.rules(random) {
            let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
            let mut check = vec!["-C", chain.as_str()];
            check.extend_from_slice(&rule);
            let ran = self.nat(&check).await?;
            match ran.code {
                Some(0) => continue,
                // 1: the rule is not there.
                Some(1) => {}
                _ => return Err(ran.failed()),
            }
            let mut append = vec!["-A", chain.as_str()];
            append.extend_from_slice(&rule);
            self.nat(&append).await?.ok()?;
        }
        Ok(())
    }

    /// Deletes every rule jumping to the chain, then the chain; missing pieces are fine (the
    /// reference's `snat.Del`). Returns whether anything was there.
    pub async fn delete(&self, chain: &str) -> Result<bool, SnatError> {
        let state = self.chain_state(chain).await?;
        for jump in &state.jumps {
            let mut args: Vec<&str> = jump.iter().map(String::as_str).collect();
            args[0] = "-D";
            self.nat(&args).await?.ok()?;
        }
        if state.exists {
            self.nat(&["-F", chain]).await?.ok()?;
            self.nat(&["-X", chain]).await?.ok()?;
        }
        Ok(state.exists || !state.jumps.is_empty())
    }
}

/// `(major, minor, patch)` from `iptables v1.8.9 (nf_tables)`.
fn parse_version(out: &str) -> Option<(u32, u32, u32)> {
    let word = out.split_whitespace().find(|w| w.starts_with('v'))?;
    let mut parts = word[1..].split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
        parts.next().flatten().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_name_is_the_references() {
        // containernetworking/plugins: ("CNI-E4-" + hex(sha512("aws-cni" + "abc")))[:28].
        let name = chain_name("aws-cni", "abc");
        assert_eq!(name.len(), CHAIN_LEN);
        assert!(name.starts_with(CHAIN_PREFIX));
        let hex: String = Sha512::digest(b"aws-cniabc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            &name[CHAIN_PREFIX.len()..],
            &hex[..CHAIN_LEN - CHAIN_PREFIX.len()]
        );
        assert_ne!(name, chain_name("aws-cni", "abd"));
        // sha512("") starts cf83e1357eefb8bdf1542850d66d8007...
        assert_eq!(chain_name("", ""), "CNI-E4-cf83e1357eefb8bdf1542");
    }

    #[test]
    fn comment_is_gos_format_comment() {
        assert_eq!(comment("aws-cni", "0a1b"), r#"name: "aws-cni" id: "0a1b""#);
        assert_eq!(go_quote("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }

    #[test]
    fn random_flags_follow_randomize_snat() {
        assert_eq!(
            random_flag(RandomizeSnat::Prng, true),
            Some("--random-fully")
        );
        assert_eq!(random_flag(RandomizeSnat::Prng, false), Some("--random"));
        assert_eq!(
            random_flag(RandomizeSnat::HashRandom, true),
            Some("--random")
        );
        assert_eq!(random_flag(RandomizeSnat::None, true), None);
    }

    #[test]
    fn rules_are_the_references() {
        let spec = SnatSpec {
            chain: "CNI-E4-x".into(),
            comment: "c".into(),
            pod_ip: Ipv4Addr::new(169, 254, 172, 2),
            node_ip: Ipv4Addr::new(10, 0, 0, 10),
            randomize: RandomizeSnat::Prng,
        };
        let rules: Vec<String> = spec
            .rules(Some("--random-fully"))
            .into_iter()
            .map(|(c, r)| format!("{c} {}", r.join(" ")))
            .collect();
        assert_eq!(
            rules,
            [
                "CNI-E4-x -d 224.0.0.0/4 -j ACCEPT -m comment --comment c",
                "CNI-E4-x -j SNAT --to-source 10.0.0.10 -m comment --comment c --random-fully",
                "POSTROUTING -s 169.254.172.2 -j CNI-E4-x -m comment --comment c",
            ]
        );
    }

    #[test]
    fn save_lines_tokenize_with_quoted_comments() {
        let line = r#"-A POSTROUTING -s 169.254.172.2/32 -m comment --comment "name: \"aws-cni\" id: \"c1\"" -j CNI-E4-x"#;
        assert_eq!(
            tokenize(line),
            [
                "-A",
                "POSTROUTING",
                "-s",
                "169.254.172.2/32",
                "-m",
                "comment",
                "--comment",
                r#"name: "aws-cni" id: "c1""#,
                "-j",
                "CNI-E4-x"
            ]
        );
        assert!(tokenize("   ").is_empty());
        assert_eq!(tokenize(r#"a "" b"#), ["a", "", "b"]);
    }

    #[test]
    fn chain_state_reads_the_chain_its_rules_and_jumps() {
        let save = r#"-P PREROUTING ACCEPT
-P POSTROUTING ACCEPT
-N CNI-E4-x
-N CNI-E4-y
-A POSTROUTING -s 169.254.172.2/32 -m comment --comment "name: \"aws-cni\" id: \"c1\"" -j CNI-E4-x
-A POSTROUTING -s 169.254.172.3/32 -m comment --comment "name: \"aws-cni\" id: \"c2\"" -j CNI-E4-y
-A CNI-E4-x -d 224.0.0.0/4 -m comment --comment "name: \"aws-cni\" id: \"c1\"" -j ACCEPT
-A CNI-E4-x -m comment --comment "name: \"aws-cni\" id: \"c1\"" -j SNAT --to-source 10.0.0.10 --random-fully
"#;
        let x = ChainState::parse(save, "CNI-E4-x");
        assert!(x.exists);
        assert_eq!(x.rules.len(), 2);
        assert_eq!(x.jump_sources(), ["169.254.172.2/32"]);
        assert_eq!(x.snat_targets(), ["10.0.0.10"]);
        let y = ChainState::parse(save, "CNI-E4-y");
        assert!(y.exists && y.rules.is_empty());
        assert_eq!(y.jumps.len(), 1);
        assert_eq!(ChainState::parse(save, "CNI-E4-z"), ChainState::default());
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)\n"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_version("iptables v1.6.1"), Some((1, 6, 1)));
        assert_eq!(parse_version("garbage"), None);
    }
}
