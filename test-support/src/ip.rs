//! What is inside a test's namespace, as `ip -j` shows it to an operator: links, addresses,
//! routes, rules, neighbours, parsed as JSON values (the field names are iproute2's).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::{CommandError, Netns, describe, run_checked};

impl Netns {
    /// `ip -n <ns> <args>`, checked; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, CommandError> {
        run_checked(Command::new("ip").arg("-n").arg(self.name()).args(args))
    }

    /// `ip -j -n <ns> <args>` parsed as a JSON array (empty when ip prints nothing).
    pub fn ip_json(&self, args: &[&str]) -> Result<Vec<Value>, CommandError> {
        let mut cmd = Command::new("ip");
        cmd.arg("-j").arg("-n").arg(self.name()).args(args);
        let out = run_checked(&mut cmd)?;
        if out.trim().is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_str(&out).map_err(|source| CommandError::Json {
            command: describe(&cmd),
            source,
            stdout: out,
        })
    }

    /// `ip -j link show`.
    pub fn links(&self) -> Result<Vec<Value>, CommandError> {
        self.ip_json(&["link", "show"])
    }

    /// The link called `name`, if it exists.
    pub fn link(&self, name: &str) -> Result<Option<Value>, CommandError> {
        Ok(self
            .links()?
            .into_iter()
            .find(|l| l["ifname"].as_str() == Some(name)))
    }

    /// Waits up to `timeout` for the link `name` to be gone; whether it went. A pod's veth
    /// pair goes with the pod's namespace, freed by the kernel's namespace cleanup shortly
    /// after the namespace is removed (not synchronously).
    pub fn wait_link_gone(&self, name: &str, timeout: Duration) -> Result<bool, CommandError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.link(name)?.is_none() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Names of every link.
    pub fn link_names(&self) -> Result<Vec<String>, CommandError> {
        Ok(self
            .links()?
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect())
    }

    /// `ip -j -4 addr show`.
    pub fn addresses(&self) -> Result<Vec<Value>, CommandError> {
        self.ip_json(&["-4", "addr", "show"])
    }

    /// IPv4 addresses of `ifname` as `a.b.c.d/len` strings.
    pub fn addresses_of(&self, ifname: &str) -> Result<Vec<String>, CommandError> {
        Ok(self
            .addresses()?
            .iter()
            .filter(|l| l["ifname"].as_str() == Some(ifname))
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .collect())
    }

    /// `ip -j -4 route show table <table>`; a table that does not exist is empty.
    pub fn routes(&self, table: &str) -> Result<Vec<Value>, CommandError> {
        match self.ip_json(&["-4", "route", "show", "table", table]) {
            Err(CommandError::Failed { stderr, .. }) if stderr.contains("does not exist") => {
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// Every IPv4 route of every table but the kernel's own (the `local` table, broadcast and
    /// local routes): what a data plane added.
    pub fn routes_all(&self) -> Result<Vec<Value>, CommandError> {
        Ok(self
            .ip_json(&["-4", "route", "show", "table", "all"])?
            .into_iter()
            .filter(|r| r["table"] != "local" && r["type"] != "broadcast" && r["type"] != "local")
            .collect())
    }

    /// `ip -j -4 rule show`.
    pub fn rules(&self) -> Result<Vec<Value>, CommandError> {
        self.ip_json(&["-4", "rule", "show"])
    }

    /// `ip -4 rule show` as text, one rule a line with single spaces (`512: from all to
    /// 10.0.0.5 lookup main`): how the tests compare rules with what an operator reads.
    pub fn rule_lines(&self) -> Result<Vec<String>, CommandError> {
        Ok(self
            .ip(&["-4", "rule", "show"])?
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect())
    }

    /// `ip -j -4 neigh show`.
    pub fn neighbours(&self) -> Result<Vec<Value>, CommandError> {
        self.ip_json(&["-4", "neigh", "show"])
    }
}
