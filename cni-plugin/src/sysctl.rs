//! The per-interface IPv6 sysctls of a pod's veth pair (`/proc/sys/net/ipv6/conf/<if>/<key>`),
//! as the reference writes them: on the host end `accept_ra=0`, `accept_redirects=1` and
//! `forwarding=0` before it comes up (it must never take a router advertisement from the pod
//! side), and for an IPv6 pod `disable_ipv6=0` on the pod's interface and its `lo`. Beyond the
//! reference, an IPv6 pod's two ends get `accept_dad=0` before the link has carrier, so its
//! addresses are usable at once (the reference waits 1–2 s for detection on every IPv6 ADD).
//!
//! `/proc/sys/net` shows the network namespace of the calling *thread* (sysctl tables are
//! looked up in `current->nsproxy->net_ns`), so the pod's are written from inside the pod
//! namespace, through [`Netns::enter`]'s guard, which always brings the thread back. IPv6 has no
//! netlink request for these (`inet6_set_link_af` takes only the token and the address
//! generation mode).

use std::io::{self, Write};

use crate::netns::{Netns, NetnsError};

/// The host end's IPv6 settings, in the reference's order (`setHostVethV6Sysctls`).
pub const HOST_VETH_IPV6: [(&str, &str); 3] = [
    ("accept_ra", "0"),
    ("accept_redirects", "1"),
    ("forwarding", "0"),
];

/// A sysctl that could not be written, named as `sysctl(8)` names it.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// Writing the file failed.
    #[error("cannot set {key}={value} in {netns}: {source}")]
    Write {
        /// `net.ipv6.conf.<if>.<key>`.
        key: String,
        /// The value.
        value: String,
        /// The namespace it was written in.
        netns: String,
        /// The OS error.
        source: io::Error,
    },
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The file of `net.ipv6.conf.<ifname>.<key>`.
fn ipv6_conf_path(ifname: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{ifname}/{key}")
}

/// Writes `net.ipv6.conf.<ifname>.<key>` in the calling thread's namespace (`netns` names it in
/// the error). `Ok(false)` when the file does not exist: a kernel without IPv6, which the
/// reference ignores too.
///
/// # Errors
/// The write failed for another reason.
pub fn set_ipv6_conf(
    ifname: &str,
    key: &str,
    value: &str,
    netns: &str,
) -> Result<bool, SysctlError> {
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(ipv6_conf_path(ifname, key))
        .and_then(|mut f| f.write_all(value.as_bytes()));
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(%ifname, key, "no IPv6 sysctl (kernel without IPv6?); ignored");
            Ok(false)
        }
        Err(source) => Err(SysctlError::Write {
            key: format!("net.ipv6.conf.{ifname}.{key}"),
            value: value.to_string(),
            netns: netns.to_string(),
            source,
        }),
    }
}

/// The host end's settings ([`HOST_VETH_IPV6`]), written in the calling thread's namespace (the
/// host's). For an IPv6 pod also `accept_dad=0`: the host end's link-local address is the
/// source of its neighbour solicitations for the pod's address, and the kernel sends none from
/// a tentative one, so traffic to the pod would wait the 1–2 s of detection (see
/// [`enable_ipv6_in_pod`] for why detection finds nothing on this link).
///
/// # Errors
/// A write failed (other than for a kernel without IPv6).
pub fn harden_host_veth(host_veth: &str, ipv6_pod: bool) -> Result<(), SysctlError> {
    let dad = ipv6_pod.then_some(("accept_dad", "0"));
    for (key, value) in HOST_VETH_IPV6.into_iter().chain(dad) {
        set_ipv6_conf(host_veth, key, value, "the host network namespace")?;
    }
    Ok(())
}

/// Turns duplicate address detection off for `ifname` inside `pod_ns` (`accept_dad=0`), then
/// enables IPv6 on it and on `lo` (a pod namespace may come with IPv6 off, e.g.
/// `net.ipv6.conf.default.disable_ipv6=1`; the address of an IPv6 pod needs it on).
///
/// Without detection the pod's addresses are usable at once instead of after the 1–2 s the
/// kernel's detection takes (the reference waits that long for every IPv6 pod). Nothing can be
/// detected on that link: it is a veth with two ends (the host end's link-local address is
/// derived from another random MAC), and the pod's /128 is unique in the VPC by construction
/// (EC2 delegated the /80 to this node's ENI; ipamd hands each address to one pod). Calico
/// disables detection on its pod veths for the same reason. Must run before the link gets
/// carrier (the host end comes up), so the link-local address skips detection too.
///
/// # Errors
/// The namespace could not be entered or a write failed.
pub fn enable_ipv6_in_pod(pod_ns: &Netns, ifname: &str) -> Result<(), SysctlError> {
    let netns = pod_ns.path().display().to_string();
    let _guard = pod_ns.enter()?;
    set_ipv6_conf(ifname, "accept_dad", "0", &netns)?;
    for name in [ifname, "lo"] {
        set_ipv6_conf(name, "disable_ipv6", "0", &netns)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names_follow_the_interface() {
        assert_eq!(
            ipv6_conf_path("eni0d7763386da", "accept_ra"),
            "/proc/sys/net/ipv6/conf/eni0d7763386da/accept_ra"
        );
        // A dotted interface name stays as it is in the path (sysctl(8) swaps dots and
        // slashes only in keys).
        assert_eq!(
            ipv6_conf_path("eth0.5", "disable_ipv6"),
            "/proc/sys/net/ipv6/conf/eth0.5/disable_ipv6"
        );
    }

    #[test]
    fn a_missing_interface_is_a_kernel_without_ipv6_and_ignored() {
        // Longer than IFNAMSIZ: no interface can have this name, so nothing is written.
        let written = set_ipv6_conf("no-such-interface-here", "accept_ra", "0", "test");
        assert!(matches!(written, Ok(false)), "{written:?}");
    }
}
