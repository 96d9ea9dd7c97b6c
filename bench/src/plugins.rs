//! The plugins under comparison and how each is called: `aws-cni` with the conflist entry ipamd
//! wrote, and the baseline, Debian's `ptp` with `host-local` IPAM (bench-ptp.sh's config: its
//! own /16, `ipMasq: false`, a fresh IPAM store per round; for IPv6 pods the same with a /64 of
//! documentation space). Both get the same `CNI_*` environment and `CNI_ARGS` and run with the
//! simulated node's namespace as their host.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::BenchError;
use super::exec::{ExecOutcome, exec_timed};
use super::pods::BenchPod;

/// Which plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Flavor {
    /// `aws-cni` backed by ipamd.
    Ours,
    /// Debian's `ptp` + `host-local`.
    Ptp,
    /// The kernel floor program (same netlink operations, nothing else).
    Floor,
}

impl Flavor {
    /// Label in tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ours => "aws-cni",
            Self::Ptp => "ptp+host-local",
            Self::Floor => "kernel-floor",
        }
    }
}

/// The subnet host-local hands out in baseline rounds (inside the node namespace only).
pub const PTP_SUBNET: &str = "10.231.0.0/16";

/// The subnet host-local hands out in the IPv6 baseline rounds: documentation space (RFC 3849),
/// inside the IPv6 node's namespace only.
pub const PTP_SUBNET_V6: &str = "2001:db8:231::/64";

/// A plugin ready to be exec'd.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// Which one.
    pub flavor: Flavor,
    /// The executable.
    pub program: PathBuf,
    /// `CNI_PATH`.
    pub cni_path: String,
    /// The network configuration (ours: the written conflist's entry; ptp: bench-ptp's).
    conf: Value,
    /// Directory for per-round state (ptp's IPAM store).
    state_dir: PathBuf,
}

impl Plugin {
    /// `aws-cni` at `program` with `conf` (the entry of ipamd's conflist, with `name` and
    /// `cniVersion`).
    pub fn ours(program: &Path, conf: Value, state_dir: &Path) -> Self {
        let dir = program.parent().unwrap_or(Path::new("/"));
        Self {
            flavor: Flavor::Ours,
            program: program.to_owned(),
            cni_path: dir.display().to_string(),
            conf,
            state_dir: state_dir.to_owned(),
        }
    }

    /// `ptp` from `dir` (which must also hold `host-local`), IPv4 pods from [`PTP_SUBNET`].
    pub fn ptp(dir: &Path, cni_version: &str, state_dir: &Path) -> Result<Self, BenchError> {
        Self::ptp_with(dir, cni_version, state_dir, PTP_SUBNET, "0.0.0.0/0")
    }

    /// `ptp` as [`Plugin::ptp`], IPv6 pods from [`PTP_SUBNET_V6`] with a default route `::/0`.
    pub fn ptp_v6(dir: &Path, cni_version: &str, state_dir: &Path) -> Result<Self, BenchError> {
        Self::ptp_with(dir, cni_version, state_dir, PTP_SUBNET_V6, "::/0")
    }

    fn ptp_with(
        dir: &Path,
        cni_version: &str,
        state_dir: &Path,
        subnet: &str,
        default_route: &str,
    ) -> Result<Self, BenchError> {
        for p in ["ptp", "host-local"] {
            if !dir.join(p).is_file() {
                return Err(BenchError::Missing {
                    what: format!("the baseline plugin {p}"),
                    path: dir.join(p),
                    hint: "apt-get install containernetworking-plugins".into(),
                });
            }
        }
        Ok(Self {
            flavor: Flavor::Ptp,
            program: dir.join("ptp"),
            cni_path: dir.display().to_string(),
            conf: json!({
                "cniVersion": cni_version,
                "name": "bench-ptp",
                "type": "ptp",
                "ipMasq": false,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": default_route}],
                },
            }),
            state_dir: state_dir.to_owned(),
        })
    }

    /// The configuration of round `round`: ptp gets a fresh network name and IPAM store (as
    /// bench-ptp.sh does); ours keeps the conflist ipamd wrote.
    pub fn conf_for_round(&self, round: usize) -> Value {
        let mut conf = self.conf.clone();
        if self.flavor == Flavor::Ptp {
            conf["name"] = Value::from(format!("bench-ptp-{round}"));
            conf["ipam"]["dataDir"] = Value::from(
                self.state_dir
                    .join(format!("ptp-ipam-{round}"))
                    .display()
                    .to_string(),
            );
        }
        conf
    }

    /// The `CNI_*` environment of `command` for `pod` (plus `extra`).
    pub fn env(
        &self,
        command: &str,
        pod: &BenchPod,
        extra: &[(String, String)],
    ) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "PATH".to_owned(),
                "/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("CNI_COMMAND".to_owned(), command.to_owned()),
            ("CNI_CONTAINERID".to_owned(), pod.container_id.clone()),
            ("CNI_NETNS".to_owned(), pod.netns.display().to_string()),
            ("CNI_IFNAME".to_owned(), "eth0".to_owned()),
            ("CNI_PATH".to_owned(), self.cni_path.clone()),
            ("CNI_ARGS".to_owned(), pod.cni_args()),
        ];
        env.extend(extra.iter().cloned());
        env
    }

    /// Execs `command` for `pod` with `conf` (plus `prevResult` when given), timed.
    pub fn call(
        &self,
        command: &str,
        pod: &BenchPod,
        conf: &Value,
        prev_result: Option<&Value>,
        extra_env: &[(String, String)],
    ) -> Result<ExecOutcome, BenchError> {
        self.call_via(None, command, pod, conf, prev_result, extra_env)
    }

    /// [`Plugin::call`], optionally through `wrapper` (`wrapper <plugin>`, e.g. `peak-rss`).
    pub fn call_via(
        &self,
        wrapper: Option<&Path>,
        command: &str,
        pod: &BenchPod,
        conf: &Value,
        prev_result: Option<&Value>,
        extra_env: &[(String, String)],
    ) -> Result<ExecOutcome, BenchError> {
        let stdin = match prev_result {
            Some(prev) => {
                let mut c = conf.clone();
                c["prevResult"] = prev.clone();
                serde_json::to_vec(&c)
            }
            None => serde_json::to_vec(conf),
        }
        .map_err(|e| BenchError::Invalid(format!("cannot encode the plugin config: {e}")))?;
        let env = self.env(command, pod, extra_env);
        match wrapper {
            None => exec_timed(&self.program, &[], &env, &stdin),
            Some(w) => {
                let program = self.program.display().to_string();
                exec_timed(w, &[program.as_str()], &env, &stdin)
            }
        }
    }

    /// `CNI_COMMAND=VERSION` (the exec floor of this binary: no netlink, no IPAM).
    pub fn version(&self, cni_version: &str) -> Result<ExecOutcome, BenchError> {
        let env = vec![
            (
                "PATH".to_owned(),
                "/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("CNI_COMMAND".to_owned(), "VERSION".to_owned()),
        ];
        exec_timed(
            &self.program,
            &[],
            &env,
            format!("{{\"cniVersion\":\"{cni_version}\"}}").as_bytes(),
        )
    }
}

/// The first address of an ADD result (`<ip>/<prefix>`, either family), if it has one.
pub fn result_address(result: &Value) -> Option<&str> {
    result.get("ips")?.get(0)?.get("address")?.as_str()
}

/// The host-side interface of an ADD result: the first named interface without a `sandbox`
/// (both plugins list their host veth so).
pub fn host_veth(result: &Value) -> Option<&str> {
    result
        .get("interfaces")?
        .as_array()?
        .iter()
        .find(|i| {
            i.get("sandbox")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        })?
        .get("name")?
        .as_str()
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> BenchPod {
        BenchPod {
            namespace: "bench".into(),
            name: "p-1".into(),
            container_id: "c".repeat(64),
            netns: PathBuf::from("/run/netns/x"),
        }
    }

    #[test]
    fn ptp_rounds_get_their_own_network_and_store() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["ptp", "host-local"] {
            std::fs::write(dir.path().join(p), b"").unwrap();
        }
        let plugin = Plugin::ptp(dir.path(), "1.0.0", Path::new("/dev/shm/x")).unwrap();
        let a = plugin.conf_for_round(1);
        let b = plugin.conf_for_round(2);
        assert_eq!(a["name"], "bench-ptp-1");
        assert_eq!(b["ipam"]["dataDir"], "/dev/shm/x/ptp-ipam-2");
        assert_eq!(a["ipam"]["ranges"][0][0]["subnet"], PTP_SUBNET);
        assert_eq!(a["cniVersion"], "1.0.0");
    }

    #[test]
    fn the_ipv6_baseline_has_its_own_range_and_default_route() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["ptp", "host-local"] {
            std::fs::write(dir.path().join(p), b"").unwrap();
        }
        let v4 = Plugin::ptp(dir.path(), "1.0.0", Path::new("/dev/shm/x")).unwrap();
        let v6 = Plugin::ptp_v6(dir.path(), "1.0.0", Path::new("/dev/shm/x")).unwrap();
        let conf = v6.conf_for_round(7);
        assert_eq!(conf["ipam"]["ranges"][0][0]["subnet"], PTP_SUBNET_V6);
        assert_eq!(conf["ipam"]["routes"][0]["dst"], "::/0");
        assert_eq!(conf["ipam"]["dataDir"], "/dev/shm/x/ptp-ipam-7");
        assert_eq!(
            v4.conf_for_round(7)["ipam"]["routes"][0]["dst"],
            "0.0.0.0/0"
        );
        // Everything but the range and the route is the IPv4 baseline's.
        let mut same = conf.clone();
        same["ipam"]["ranges"] = v4.conf_for_round(7)["ipam"]["ranges"].clone();
        same["ipam"]["routes"] = v4.conf_for_round(7)["ipam"]["routes"].clone();
        assert_eq!(same, v4.conf_for_round(7));
        assert_eq!(
            result_address(&json!({"ips": [{"address": "2001:db8:231::2/64"}]})),
            Some("2001:db8:231::2/64")
        );
    }

    #[test]
    fn missing_baseline_is_named_with_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let e = Plugin::ptp(dir.path(), "1.0.0", dir.path()).err().unwrap();
        let text = e.to_string();
        assert!(text.contains("ptp") && text.contains("containernetworking-plugins"));
    }

    #[test]
    fn the_host_veth_is_the_interface_without_a_sandbox() {
        let r = json!({"interfaces": [
            {"name": "eth0", "sandbox": "/run/netns/x"},
            {"name": "eni0123456789a", "mac": "02:00:00:00:00:01"},
        ]});
        assert_eq!(host_veth(&r), Some("eni0123456789a"));
        let ptp = json!({"interfaces": [{"name": "veth1a2b", "sandbox": ""}, {"name": "eth0", "sandbox": "/x"}]});
        assert_eq!(host_veth(&ptp), Some("veth1a2b"));
        assert_eq!(
            host_veth(&json!({"interfaces": [{"name": "eth0", "sandbox": "/x"}]})),
            None
        );
        assert_eq!(host_veth(&json!({})), None);
    }

    #[test]
    fn both_plugins_get_the_kubelet_environment() {
        let plugin = Plugin::ours(
            Path::new("/opt/cni/bin/aws-cni"),
            json!({"name": "aws-cni"}),
            Path::new("/tmp"),
        );
        let env = plugin.env("ADD", &pod(), &[]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CNI_COMMAND"), Some("ADD"));
        assert_eq!(get("CNI_PATH"), Some("/opt/cni/bin"));
        assert_eq!(get("CNI_IFNAME"), Some("eth0"));
        assert!(get("CNI_ARGS").unwrap().contains("K8S_POD_NAME=p-1"));
        assert_eq!(plugin.conf_for_round(3)["name"], "aws-cni");
    }
}
