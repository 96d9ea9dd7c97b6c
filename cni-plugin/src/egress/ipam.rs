//! Delegation to the IPAM plugin (`ipam.type`, host-local in the reference's conflist), the way
//! libcni's `ipam.ExecAdd`/`ExecDel`/`ExecCheck` do it: the binary is looked up in `CNI_PATH`,
//! run with this process's environment (`CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, ...) and
//! `CNI_COMMAND` set to the verb, with the plugin's own stdin. Its result is the abbreviated form
//! (no `interfaces`); its error JSON is passed on with its code.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::error::EgressError;

/// `CNI_PATH`.
pub const CNI_PATH: &str = "CNI_PATH";
/// Upper bound on one IPAM exec (host-local waits on its file lock).
pub const IPAM_TIMEOUT: Duration = Duration::from_secs(60);

/// The IPAM plugin of the request.
#[derive(Clone, Debug)]
pub struct Ipam {
    /// `ipam.type`.
    pub kind: String,
    /// Where it was found.
    pub path: PathBuf,
}

/// One route of the IPAM result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpamRoute {
    /// `dst`.
    pub dst: Ipv4Net,
    /// `gw`, when given (else the address's gateway is used, as `ipam.ConfigureIface` does).
    pub gw: Option<Ipv4Addr>,
}

/// What the IPAM plugin allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The pod's address with the range's prefix (`169.254.172.2/22`).
    pub address: Ipv4Net,
    /// The range's gateway (host-local: the first address).
    pub gateway: Ipv4Addr,
    /// The IPv4 routes to install in the pod.
    pub routes: Vec<IpamRoute>,
}

impl Ipam {
    /// Finds `kind` in the `:`-separated `cni_path`.
    pub fn find(kind: &str, cni_path: Option<&str>) -> Result<Self, EgressError> {
        let exec_err = |reason: String| EgressError::IpamExec {
            plugin: kind.to_string(),
            verb: "lookup",
            reason,
        };
        let Some(cni_path) = cni_path.filter(|p| !p.is_empty()) else {
            return Err(crate::cni::error::CniError::InvalidEnv {
                var: CNI_PATH,
                reason: format!("not set; it is needed to run the IPAM plugin {kind}"),
            }
            .into());
        };
        cni_path
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(kind))
            .find(|p| p.is_file())
            .map(|path| Self {
                kind: kind.to_string(),
                path,
            })
            .ok_or_else(|| exec_err(format!("not found in CNI_PATH {cni_path:?}")))
    }

    /// IPAM ADD: the allocation.
    pub async fn add(&self, stdin: &[u8]) -> Result<Allocation, EgressError> {
        let out = self.exec("ADD", stdin).await?;
        let value: Value = serde_json::from_slice(&out).map_err(|e| EgressError::IpamExec {
            plugin: self.kind.clone(),
            verb: "ADD",
            reason: format!("its result is not JSON ({e})"),
        })?;
        parse_allocation(&value).map_err(|reason| EgressError::IpamExec {
            plugin: self.kind.clone(),
            verb: "ADD",
            reason,
        })
    }

    /// IPAM DEL.
    pub async fn del(&self, stdin: &[u8]) -> Result<(), EgressError> {
        self.exec("DEL", stdin).await.map(|_| ())
    }

    /// IPAM CHECK.
    pub async fn check(&self, stdin: &[u8]) -> Result<(), EgressError> {
        self.exec("CHECK", stdin).await.map(|_| ())
    }

    async fn exec(&self, verb: &'static str, stdin: &[u8]) -> Result<Vec<u8>, EgressError> {
        let exec_err = |reason: String| EgressError::IpamExec {
            plugin: self.kind.clone(),
            verb,
            reason,
        };
        let mut child = Command::new(&self.path)
            .env("CNI_COMMAND", verb)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| exec_err(format!("cannot run {}: {e}", self.path.display())))?;
        let work = async {
            if let Some(mut si) = child.stdin.take() {
                // A plugin exiting before reading everything shows in its status and output.
                let _ = si.write_all(stdin).await;
            }
            child.wait_with_output().await
        };
        let out = match tokio::time::timeout(IPAM_TIMEOUT, work).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(exec_err(format!("waiting for it failed: {e}"))),
            Err(_) => return Err(exec_err(format!("did not finish within {IPAM_TIMEOUT:?}"))),
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        // libcni reads the error JSON from stdout, and only falls back to stderr without one.
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(v) if v.get("code").and_then(Value::as_u64).is_some() => {
                let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                Err(EgressError::IpamPlugin {
                    plugin: self.kind.clone(),
                    verb,
                    code: v
                        .get("code")
                        .and_then(Value::as_u64)
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(super::error::IPAM_EXEC_CODE),
                    msg: text("msg"),
                    details: text("details"),
                })
            }
            _ => Err(exec_err(format!(
                "exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }
}

/// Reads the abbreviated IPAM result: exactly one IPv4 address with a gateway (the reference
/// refuses zero or several addresses), and its IPv4 routes.
pub fn parse_allocation(v: &Value) -> Result<Allocation, String> {
    let ips = v
        .get("ips")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ip = match ips.as_slice() {
        [] => return Err("it returned no address".into()),
        [one] => one,
        many => {
            return Err(format!(
                "it returned {} addresses; one was expected",
                many.len()
            ));
        }
    };
    let addr = ip
        .get("address")
        .and_then(Value::as_str)
        .ok_or("its address entry has no \"address\"")?;
    let address: Ipv4Net = addr.parse().map_err(|_| {
        format!(
            "address {addr:?} is not an IPv4 CIDR (IPv4 egress needs an IPv4 range in ipam.ranges)"
        )
    })?;
    let gateway = ip
        .get("gateway")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("address {addr} has no gateway"))?;
    let gateway: Ipv4Addr = gateway
        .parse()
        .map_err(|_| format!("gateway {gateway:?} is not an IPv4 address"))?;
    let mut routes = Vec::new();
    for r in v
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(dst) = r.get("dst").and_then(Value::as_str) else {
            return Err(format!("route {r} has no dst"));
        };
        // An IPv6 route in the IPv4 range's result is not for this interface.
        let Ok(dst) = dst.parse::<Ipv4Net>() else {
            if dst.parse::<ipnet::Ipv6Net>().is_ok() {
                continue;
            }
            return Err(format!("route dst {dst:?} is not a CIDR"));
        };
        let gw = match r.get("gw").and_then(Value::as_str) {
            None | Some("") => None,
            Some(g) => Some(
                g.parse::<Ipv4Addr>()
                    .map_err(|_| format!("route gw {g:?} is not an IPv4 address"))?,
            ),
        };
        routes.push(IpamRoute { dst, gw });
    }
    Ok(Allocation {
        address,
        gateway,
        routes,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn host_local_results_parse() {
        for version in ["0.4.0", "1.0.0"] {
            let v = json!({"cniVersion": version,
                "ips": [{"version": "4", "address": "169.254.172.2/22", "gateway": "169.254.172.1"}],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}], "dns": {}});
            let a = parse_allocation(&v).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.address.to_string(), "169.254.172.2/22");
            assert_eq!(a.gateway, Ipv4Addr::new(169, 254, 172, 1));
            assert_eq!(
                a.routes,
                vec![IpamRoute {
                    dst: "0.0.0.0/0".parse().unwrap_or_default(),
                    gw: None
                }]
            );
        }
    }

    #[test]
    fn unusable_results_are_refused() {
        let ip = |a: &str, gw: Option<&str>| {
            let mut e = json!({"address": a});
            if let Some(g) = gw {
                e["gateway"] = json!(g);
            }
            e
        };
        for (ips, needle) in [
            (json!([]), "no address"),
            (
                json!([
                    ip("169.254.172.2/22", Some("169.254.172.1")),
                    ip("169.254.172.3/22", Some("169.254.172.1"))
                ]),
                "2 addresses",
            ),
            (
                json!([ip("fd00::2/118", Some("fd00::1"))]),
                "not an IPv4 CIDR",
            ),
            (json!([ip("169.254.172.2/22", None)]), "no gateway"),
        ] {
            let e = parse_allocation(&json!({"ips": ips}))
                .err()
                .unwrap_or_default();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }

    #[test]
    fn lookup_walks_cni_path_and_requires_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let plugin = dir.path().join("fake-ipam");
        std::fs::write(&plugin, "").unwrap_or_else(|e| panic!("{e}"));
        let path = format!("/nonexistent:{}", dir.path().display());
        let found = Ipam::find("fake-ipam", Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found.path, plugin);
        assert_eq!(
            Ipam::find("other", Some(&path))
                .map(|_| ())
                .map_err(|e| e.cni_code()),
            Err(super::super::error::IPAM_EXEC_CODE)
        );
        assert_eq!(
            Ipam::find("fake-ipam", None)
                .map(|_| ())
                .map_err(|e| e.cni_code()),
            Err(4)
        );
    }
}
