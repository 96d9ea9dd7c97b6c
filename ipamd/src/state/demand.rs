//! Pods waiting for an address, beyond the reference. When an AddNetwork finds the pool empty,
//! the reference fails it at once and kubelet tries the pod again 10–15 s later (its pod
//! workers' back-off), while the pool manager grows the pool by its warm target alone, one
//! cycle at a time, not knowing how many pods are pending. Here:
//! - the pod is remembered as waiting ([`Demand::wait_for`]) until it gets an address or
//!   [`WAITING_TTL`] passes (a pod deleted meanwhile has no DEL that says so: containerd's DEL
//!   after the failed ADD is the same call whether kubelet retries the pod or not);
//! - when more pods wait than the pool has, the pool manager grows for them, plus as many again
//!   as got an address in the last [`BURST_WINDOW`] (a burst goes on), on top of its warm
//!   target, in one call (see [`crate::pool::policy::shortfall`]);
//! - while the manager can still grow the pool ([`Demand::set_may_grow`]), the AddNetwork
//!   itself waits up to the state's add wait for addresses to arrive ([`Demand::grown`]), so
//!   the pod starts as soon as they do instead of after kubelet's back-off. At max pods, at the
//!   ENI × IP limit, and in instance-metadata-only mode (no manager) it fails at once, as in the
//!   reference.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::time::Instant;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// How long a pod that found no address counts as waiting (kubelet tries again every 10–15 s,
/// so a pod still pending is seen again well within it).
pub const WAITING_TTL: Duration = Duration::from_secs(60);
/// How far back assignments count as "the burst goes on".
pub const BURST_WINDOW: Duration = Duration::from_secs(10);
/// How long the daemon's AddNetwork waits for the pool to grow: a new ENI takes seconds (two in
/// a row on a cold node), and kubelet would try the pod again only 10–15 s later. Within the
/// plugin's 15 s AddNetwork deadline, with room for the checkpoint write and the reply.
pub const ADD_WAIT: Duration = Duration::from_secs(10);

/// What the pool manager sees of the demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DemandCounts {
    /// Pods waiting for an address now.
    pub waiting: u32,
    /// Addresses assigned in the last [`BURST_WINDOW`] (counted only while pods wait).
    pub recent: u32,
}

#[derive(Debug, Default)]
struct Book {
    /// Waiting pods (`namespace/name`, or the IPAM key without pod names), since when.
    waiting: HashMap<String, Instant>,
    /// When addresses were assigned, oldest first, within the burst window.
    assigned: VecDeque<Instant>,
}

impl Book {
    fn prune(&mut self, now: Instant) {
        self.waiting
            .retain(|_, since| now.saturating_duration_since(*since) < WAITING_TTL);
        while self
            .assigned
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= BURST_WINDOW)
        {
            self.assigned.pop_front();
        }
    }
}

/// The demand the pool manager grows for, and the AddNetworks waiting for it.
#[derive(Debug, Default)]
pub struct Demand {
    book: Mutex<Book>,
    grown: Notify,
    may_grow: AtomicBool,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Demand {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `pod` found no address.
    pub fn wait_for(&self, pod: &str) {
        let now = Instant::now();
        let mut book = self.book();
        book.prune(now);
        book.waiting.entry(pod.to_owned()).or_insert(now);
    }

    /// `pod` got an address.
    pub fn served(&self, pod: &str) {
        let now = Instant::now();
        let mut book = self.book();
        book.prune(now);
        book.waiting.remove(pod);
        book.assigned.push_back(now);
    }

    /// The counts now; `recent` is 0 when no pod waits.
    pub fn counts(&self) -> DemandCounts {
        self.counts_at(Instant::now())
    }

    fn counts_at(&self, now: Instant) -> DemandCounts {
        let mut book = self.book();
        book.prune(now);
        let waiting = count(book.waiting.len());
        DemandCounts {
            waiting,
            recent: if waiting == 0 {
                0
            } else {
                count(book.assigned.len())
            },
        }
    }

    /// A future that completes at the next [`Demand::pool_grew`]; enable it before looking at
    /// the pool so no growth in between is missed.
    pub fn grown(&self) -> Notified<'_> {
        self.grown.notified()
    }

    /// Addresses entered the pool: waiting AddNetworks look again.
    pub fn pool_grew(&self) {
        self.grown.notify_waiters();
    }

    /// Whether the pool manager may still add addresses (set after each of its growth passes).
    pub fn may_grow(&self) -> bool {
        self.may_grow.load(Ordering::Acquire)
    }

    /// The pool manager's verdict after a growth pass. When it can grow no more, waiting
    /// AddNetworks give up now.
    pub fn set_may_grow(&self, may: bool) {
        self.may_grow.store(may, Ordering::Release);
        if !may {
            self.grown.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_pods_count_until_served_or_expired() {
        let d = Demand::default();
        d.served("ns/a");
        assert_eq!(
            d.counts(),
            DemandCounts::default(),
            "no one waits: no burst"
        );
        d.wait_for("ns/b");
        d.wait_for("ns/b");
        d.wait_for("ns/c");
        let at = |waiting, recent| DemandCounts { waiting, recent };
        assert_eq!(d.counts(), at(2, 1));
        d.served("ns/b");
        assert_eq!(d.counts(), at(1, 2));
        let now = Instant::now();
        assert_eq!(
            d.counts_at(now + BURST_WINDOW),
            at(1, 0),
            "assignments older than the window are no burst"
        );
        assert_eq!(
            d.counts_at(now + WAITING_TTL).waiting,
            0,
            "a pod not seen again is forgotten"
        );
    }

    #[tokio::test]
    async fn growth_and_giving_up_wake_the_waiters() {
        let d = std::sync::Arc::new(Demand::default());
        for grow in [true, false] {
            let waiter = {
                let d = std::sync::Arc::clone(&d);
                tokio::spawn(async move {
                    let grown = d.grown();
                    tokio::pin!(grown);
                    grown.as_mut().enable();
                    tokio::time::timeout(Duration::from_secs(10), grown)
                        .await
                        .is_ok()
                })
            };
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            if grow {
                d.pool_grew();
            } else {
                d.set_may_grow(false);
            }
            assert!(waiter.await.unwrap(), "woken (grow: {grow})");
        }
        assert!(!d.may_grow());
        d.set_may_grow(true);
        assert!(d.may_grow());
    }
}
