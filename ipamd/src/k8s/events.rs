//! Warning Events on pods that get no address, so `kubectl describe pod` says why (the
//! reference leaves users with the kubelet's bare "failed to assign an IP address to
//! container"). The kubelet retries a failed sandbox every few seconds, so Events are
//! rate-limited: at most one per pod per [`PER_POD`], and at most [`BURST`] per [`WINDOW`] for
//! the node. Recording never delays the ADD: it runs on its own task, and a failure is logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{NO_ADDRESS_REASON, PodApi, PodRef, PodWarning};

/// At most one Event per pod this often.
pub const PER_POD: Duration = Duration::from_secs(60);
/// The node's Events are counted over this window ...
pub const WINDOW: Duration = Duration::from_secs(60);
/// ... and at most this many go out in it.
pub const BURST: u32 = 20;
/// Pods remembered before the ones whose [`PER_POD`] has passed are forgotten.
const REMEMBERED: usize = 1024;

/// Which Events may go out now.
#[derive(Debug, Default)]
pub struct EventLimiter {
    last: HashMap<String, Instant>,
    window_start: Option<Instant>,
    in_window: u32,
}

impl EventLimiter {
    /// Whether an Event on `pod` may go out at `now` (and counts it when it may).
    pub fn allow(&mut self, pod: &PodRef, now: Instant) -> bool {
        let key = pod.to_string();
        if self
            .last
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < PER_POD)
        {
            return false;
        }
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < WINDOW => {
                if self.in_window >= BURST {
                    return false;
                }
            }
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        self.in_window += 1;
        if self.last.len() >= REMEMBERED {
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < PER_POD);
        }
        self.last.insert(key, now);
        true
    }
}

/// Records the no-address Events of one node.
#[derive(Debug, Clone)]
pub struct NoAddressEvents {
    api: Arc<dyn PodApi>,
    node: String,
    limiter: Arc<Mutex<EventLimiter>>,
}

impl NoAddressEvents {
    /// Events on `node`'s pods through `api`.
    pub fn new(api: Arc<dyn PodApi>, node: String) -> Self {
        Self {
            api,
            node,
            limiter: Arc::default(),
        }
    }

    /// Records, on its own task, that `pod` got no address and `why` (the pool's reason),
    /// unless the limiter holds it back. Returns whether an Event is on its way.
    pub fn record(&self, pod: PodRef, why: &str) -> bool {
        let allowed = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(&pod, Instant::now());
        if !allowed {
            return false;
        }
        let warning = PodWarning {
            reason: NO_ADDRESS_REASON,
            message: format!(
                "aws-node on {} has no IP address for this pod: {why}",
                self.node
            ),
            node: self.node.clone(),
        };
        let api = Arc::clone(&self.api);
        tokio::spawn(async move {
            match api.warn_pod(&pod, &warning).await {
                Ok(()) => tracing::debug!(%pod, "recorded a {} Event", warning.reason),
                Err(e) => tracing::warn!(%pod, error = %e, "cannot record the pod's Event"),
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn one_event_per_pod_per_minute() {
        let mut l = EventLimiter::default();
        let t = Instant::now();
        assert!(l.allow(&pod("a"), t));
        assert!(!l.allow(&pod("a"), t + Duration::from_secs(10)));
        assert!(l.allow(&pod("b"), t + Duration::from_secs(10)));
        assert!(!l.allow(&pod("a"), t + PER_POD - Duration::from_millis(1)));
        assert!(l.allow(&pod("a"), t + PER_POD));
    }

    #[test]
    fn the_node_sends_at_most_a_burst_per_window() {
        let mut l = EventLimiter::default();
        let t = Instant::now();
        for i in 0..BURST {
            assert!(l.allow(&pod(&format!("p{i}")), t), "{i}");
        }
        assert!(!l.allow(&pod("one-more"), t + Duration::from_secs(1)));
        // A new window.
        assert!(l.allow(&pod("one-more"), t + WINDOW));
    }

    #[test]
    fn forgotten_pods_are_pruned_once_many_are_remembered() {
        let mut l = EventLimiter::default();
        let mut t = Instant::now();
        for i in 0..REMEMBERED + 10 {
            // Spread over windows so the burst never holds them back.
            t += WINDOW / 10;
            if i % 10 == 0 {
                t += WINDOW;
            }
            assert!(l.allow(&pod(&format!("p{i}")), t), "{i}");
        }
        assert!(l.last.len() <= REMEMBERED, "{}", l.last.len());
    }
}
