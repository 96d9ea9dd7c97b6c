//! The end of a pod's network as a runtime brings it about, and the point where the kernel is
//! done with it. After DEL, the runtime removes the pod's network namespace (containerd and
//! CRI-O unmount its bind mount and unlink the file, in process); the kernel then tears the
//! namespace down asynchronously (`cleanup_net` in its `netns` workqueue), deleting the devices
//! still in it. aws-cni, like the reference, leaves the pod's veth pair to that teardown; ptp
//! deletes the pair in DEL itself. So that both plugins are charged the same work, the clock
//! of "DEL + netns removal" (and of an ADD+DEL cycle) stops at the later of
//! - the removal's return (unmount + unlink), and
//! - the kernel's announcement that the pod's host-side veth was deleted from the node's
//!   namespace: the RTM_DELLINK notification, received by `LinkWatch` on a netlink socket in
//!   the node's namespace that is subscribed to link events before the first DEL.
//!
//! For ptp the notification arrives during DEL, so its figure is DEL plus the removal call; for
//! aws-cni (and the kernel floor) it includes the kernel's teardown up to the veth's deletion.
//! What the kernel does after that (freeing the namespace after RCU grace periods) is in
//! neither figure.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, setsockopt,
    socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::BenchError;
use super::exec::{enter_netns, monotonic_ns};
use super::pods::PodSet;

/// How long a pod's host-side veth may take to go after its namespace was removed before the
/// pod counts as a failure (the kernel's teardown normally takes milliseconds).
pub(crate) const VETH_GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// `RTM_DELLINK` (linux/rtnetlink.h).
const RTM_DELLINK: u16 = 17;
/// `RTMGRP_LINK`: the multicast group of link events.
const RTMGRP_LINK: u32 = 1;
/// `IFLA_IFNAME`.
const IFLA_IFNAME: u16 = 3;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct ifinfomsg)`.
const IFINFOMSG_LEN: usize = 16;
/// The flag bits of `nla_type` (`NLA_F_NESTED | NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Receive buffer of the watch socket: room for thousands of notifications, so none is
/// dropped while the listener is descheduled (root may exceed `rmem_max` with SO_RCVBUFFORCE).
const WATCH_RCVBUF: usize = 16 << 20;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// The names of the links whose deletion a buffer of rtnetlink messages announces (RTM_DELLINK
/// of family AF_UNSPEC; bridge-port messages of family AF_BRIDGE are not deletions).
fn deleted_links(buf: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut off = 0;
    while let (Some(len), Some(ty)) = (u32_at(buf, off), u16_at(buf, off + 4)) {
        let Ok(len) = usize::try_from(len) else { break };
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let msg = &buf[off + NLMSG_HDRLEN..off + len];
        if ty == RTM_DELLINK && msg.len() >= IFINFOMSG_LEN && i32::from(msg[0]) == libc::AF_UNSPEC {
            let mut at = IFINFOMSG_LEN;
            while let (Some(alen), Some(aty)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
                let alen = usize::from(alen);
                if alen < 4 || at + alen > msg.len() {
                    break;
                }
                if aty & NLA_TYPE_MASK == IFLA_IFNAME {
                    let raw = &msg[at + 4..at + alen];
                    let name = raw.split(|&b| b == 0).next().unwrap_or_default();
                    out.push(String::from_utf8_lossy(name).into_owned());
                }
                at += align4(alen);
            }
        }
        off += align4(len);
    }
    out
}

#[derive(Debug, Default)]
struct WatchState {
    /// Link name → CLOCK_MONOTONIC ns when its first deletion was received.
    gone: HashMap<String, u64>,
    /// The socket overflowed (ENOBUFS): notifications were lost, waiters fall back to looking.
    lost: bool,
    /// The listener stopped on an error.
    failed: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<WatchState>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut WatchState)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_all();
    }
}

/// Records when links are deleted from a namespace, from the kernel's RTM_DELLINK
/// notifications (a listener thread on a netlink socket in that namespace).
#[derive(Debug)]
pub(crate) struct LinkWatch {
    shared: Arc<Shared>,
}

fn watch_socket() -> Result<OwnedFd, Errno> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    if setsockopt(&fd, sockopt::RcvBufForce, &WATCH_RCVBUF).is_err() {
        setsockopt(&fd, sockopt::RcvBuf, &WATCH_RCVBUF)?;
    }
    // Wakes the listener regularly so it notices when the watch is dropped.
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_LINK))?;
    Ok(fd)
}

fn listen(fd: &OwnedFd, shared: &Shared) {
    let mut buf = vec![0u8; 256 * 1024];
    while !shared.stop.load(Ordering::Relaxed) {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => {
                let t = monotonic_ns();
                let names = deleted_links(&buf[..n]);
                if !names.is_empty() {
                    shared.update(|s| {
                        for name in names {
                            s.gone.entry(name).or_insert(t);
                        }
                    });
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(Errno::ENOBUFS) => {
                tracing::warn!("the link watch lost notifications; waiters look the links up");
                shared.update(|s| s.lost = true);
            }
            Err(e) => {
                shared.update(|s| s.failed = Some(format!("recv on the link watch: {e}")));
                return;
            }
        }
    }
}

impl LinkWatch {
    /// Starts watching link deletions in the namespace at `netns`; returns once the socket is
    /// subscribed, so every deletion from then on is seen.
    pub(crate) fn start(netns: &Path) -> Result<Self, BenchError> {
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), BenchError>>();
        let netns = netns.to_owned();
        let theirs = Arc::clone(&shared);
        // Detached: on drop the watch only raises `stop`, see `Drop`.
        std::thread::Builder::new()
            .name("bench-linkwatch".into())
            .spawn(move || {
                // The socket belongs to the namespace of the thread that creates it.
                let fd = enter_netns(&netns).and_then(|()| {
                    watch_socket().map_err(|e| BenchError::Io {
                        context: format!("cannot open a link watch in {}", netns.display()),
                        source: e.into(),
                    })
                });
                match fd {
                    Ok(fd) => {
                        let _ = ready_tx.send(Ok(()));
                        listen(&fd, &theirs);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| BenchError::Io {
                context: "cannot start the link watch thread".into(),
                source,
            })?;
        let watch = Self { shared };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(watch),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BenchError::Invalid(
                "the link watch thread ended before it was ready".into(),
            )),
        }
    }

    /// When the deletion of `ifname` was received, if it was.
    pub(crate) fn gone_at(&self, ifname: &str) -> Option<u64> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .gone
            .get(ifname)
            .copied()
    }

    /// Waits (at most `timeout`) until `ifname` has been deleted and returns when the deletion
    /// was received (CLOCK_MONOTONIC ns). The caller must be in the watched namespace: if
    /// notifications were lost, the link is looked up by name there instead.
    pub(crate) fn wait_gone(&self, ifname: &str, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(&t) = state.gone.get(ifname) {
                return Ok(t);
            }
            if let Some(e) = &state.failed {
                return Err(e.clone());
            }
            if state.lost && !link_exists(ifname) {
                return Ok(monotonic_ns());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "host veth {ifname} still on the node {} s after its namespace was removed",
                    timeout.as_secs()
                ));
            }
            // Short slices only matter after a loss, when the link has to be looked up.
            let slice = (deadline - now).min(Duration::from_millis(10));
            state = self
                .shared
                .changed
                .wait_timeout(state, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        // The listener is not joined: it notices within its receive timeout and ends on its
        // own, so a measurement ending with the watch does not wait for it.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether a link of this name exists in the calling thread's network namespace.
fn link_exists(ifname: &str) -> bool {
    nix::net::if_::if_nametoindex(ifname) != Err(Errno::ENODEV)
}

/// When a pod's teardown reached each point (CLOCK_MONOTONIC ns).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Teardown {
    /// The removal of the pod's namespace began (right after DEL was reaped).
    pub removal_start_ns: u64,
    /// The removal returned.
    pub removed_ns: u64,
    /// The host-side veth was gone: its deletion was received, or, when it was gone before the
    /// removal began (DEL deleted it, as ptp's does), at the latest `removal_start_ns`.
    pub veth_gone_ns: u64,
    /// The host-side veth was still on the node when the removal began (DEL left it).
    pub veth_left_by_del: bool,
}

impl Teardown {
    /// Where the clock stops: the later of the removal's return and the veth's deletion.
    pub(crate) fn end_ns(&self) -> u64 {
        self.removed_ns.max(self.veth_gone_ns)
    }

    /// The removal call (unmount + unlink).
    pub(crate) fn removal_ns(&self) -> u64 {
        self.removed_ns.saturating_sub(self.removal_start_ns)
    }

    /// From the removal's return until the veth was gone (0 when it was gone already).
    pub(crate) fn veth_wait_ns(&self) -> u64 {
        self.veth_gone_ns.saturating_sub(self.removed_ns)
    }
}

/// Removes pod `i`'s namespace as a runtime does after DEL, then waits until its host-side
/// veth `host_veth` is gone from the node (`None`: the veth is unknown, e.g. ADD failed; only
/// the removal is done, and the result is an error). Call from a thread in the node's
/// namespace, with `watch` started before the pod's DEL.
pub(crate) fn finish_pod(
    set: &PodSet,
    i: usize,
    host_veth: Option<&str>,
    watch: &LinkWatch,
) -> Result<Teardown, String> {
    // Looked up before the clock of the removal starts; a veth DEL deleted is gone for good,
    // so its deletion time need not come from the listener (whose wake-up could be late).
    let left = host_veth.is_some_and(|v| watch.gone_at(v).is_none() && link_exists(v));
    let removal_start_ns = monotonic_ns();
    set.remove(i).map_err(|e| e.to_string())?;
    let removed_ns = monotonic_ns();
    let host_veth = host_veth.ok_or("no host veth known (no ADD result)")?;
    let veth_gone_ns = if left {
        watch.wait_gone(host_veth, VETH_GONE_TIMEOUT)?
    } else {
        watch
            .gone_at(host_veth)
            .map_or(removal_start_ns, |t| t.min(removal_start_ns))
    };
    Ok(Teardown {
        removal_start_ns,
        removed_ns,
        veth_gone_ns,
        veth_left_by_del: left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + payload.len()).unwrap();
        let mut a = len.to_ne_bytes().to_vec();
        a.extend(ty.to_ne_bytes());
        a.extend(payload);
        a.resize(align4(a.len()), 0);
        a
    }

    fn link_msg(ty: u16, family: u8, name: &str) -> Vec<u8> {
        let mut body = vec![family, 0];
        body.extend(1u16.to_ne_bytes()); // ARPHRD_ETHER
        body.extend(7i32.to_ne_bytes());
        body.extend([0u8; 8]);
        body.extend(attr(4, &1500u32.to_ne_bytes())); // IFLA_MTU
        let mut name = name.as_bytes().to_vec();
        name.push(0);
        body.extend(attr(IFLA_IFNAME, &name));
        let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap();
        let mut m = len.to_ne_bytes().to_vec();
        m.extend(ty.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        m
    }

    #[test]
    fn deletions_are_found_among_other_link_messages() {
        let mut buf = link_msg(16, 0, "veth-new"); // RTM_NEWLINK
        buf.extend(link_msg(RTM_DELLINK, 0, "eni0123456789a"));
        buf.extend(link_msg(RTM_DELLINK, 7, "bridge-port")); // AF_BRIDGE
        buf.extend(link_msg(RTM_DELLINK, 0, "veth1"));
        assert_eq!(deleted_links(&buf), ["eni0123456789a", "veth1"]);
    }

    #[test]
    fn truncated_messages_end_the_parse() {
        let mut buf = link_msg(RTM_DELLINK, 0, "veth1");
        let whole = buf.len();
        buf.extend(link_msg(RTM_DELLINK, 0, "veth2"));
        buf.truncate(whole + 20);
        assert_eq!(deleted_links(&buf), ["veth1"]);
        assert!(deleted_links(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn the_clock_stops_at_the_later_end() {
        let ptp = Teardown {
            removal_start_ns: 100,
            removed_ns: 150,
            veth_gone_ns: 40,
            veth_left_by_del: false,
        };
        assert_eq!(
            (ptp.end_ns(), ptp.removal_ns(), ptp.veth_wait_ns()),
            (150, 50, 0)
        );
        let ours = Teardown {
            veth_gone_ns: 900,
            veth_left_by_del: true,
            ..ptp
        };
        assert_eq!((ours.end_ns(), ours.veth_wait_ns()), (900, 750));
    }
}
