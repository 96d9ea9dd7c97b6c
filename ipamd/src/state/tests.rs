//! Tests of the pool state: phases, checkpointing of every change, rollback, GC, and the group
//! commit (durability of acknowledged changes, shared writes, rollback of a failed write's
//! changes and of those made meanwhile, requests about a key waiting for its write).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex as StdMutex};
use std::time::Duration;

use super::*;
use crate::checkpoint::{CheckpointData, FileCheckpointer};
use crate::testing::pools::{self, key};

/// A checkpointer that keeps the last save, counts saves, can be told to fail, and can hold
/// saves until released (to see what requests do while a write is in progress).
#[derive(Debug, Default)]
struct MemCheckpointer {
    last: StdMutex<Option<CheckpointData>>,
    fail: AtomicBool,
    fail_once: AtomicBool,
    saves: AtomicUsize,
    entered: AtomicUsize,
    held: StdMutex<bool>,
    released: Condvar,
}

impl MemCheckpointer {
    fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }

    fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }

    /// Waits until `n` saves have started.
    async fn entered(&self, n: usize) {
        while self.entered.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Checkpointer for MemCheckpointer {
    fn load(&self) -> Result<Option<CheckpointData>, CheckpointError> {
        Ok(self.last.lock().unwrap().clone())
    }

    fn save(&self, data: &CheckpointData) -> Result<(), CheckpointError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.released.wait(held).unwrap();
        }
        drop(held);
        if self.fail.load(Ordering::SeqCst) || self.fail_once.swap(false, Ordering::SeqCst) {
            return Err(CheckpointError::Write {
                path: "/mem/ipam.json".into(),
                source: std::io::Error::other("disk full"),
            });
        }
        *self.last.lock().unwrap() = Some(data.clone());
        self.saves.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn location(&self) -> String {
        "/mem/ipam.json".into()
    }
}

fn datastore(n: u8) -> Datastore {
    datastore_cooling(n, Duration::from_secs(30))
}

fn datastore_cooling(n: u8, cooldown: Duration) -> Datastore {
    let mut ds = pools::datastore(cooldown, &[("eni-a", 0, "10.0.0.10", &[])]);
    for i in 0..n {
        ds.add_ip("eni-a", std::net::Ipv4Addr::new(10, 0, 0, 11 + i))
            .unwrap();
    }
    ds
}

fn state() -> (IpamState, Arc<MemCheckpointer>) {
    let cp = Arc::new(MemCheckpointer::default());
    let st = IpamState::new(datastore(2), cp.clone());
    (st, cp)
}

fn saved_ips(cp: &MemCheckpointer) -> Vec<String> {
    cp.last
        .lock()
        .unwrap()
        .as_ref()
        .map(|d| {
            d.allocations
                .iter()
                .filter_map(|a| a.ipv4.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn requests_before_ready_say_what_is_pending() {
    let (st, _) = state();
    st.set_pending("bringing up ENI eni-b");
    let err = st.add(&key("c"), PodMetadata::default()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "ipamd is not ready yet: bringing up ENI eni-b"
    );
    let status = st.status().await;
    assert!(!status.ready);
    assert!(status.message.contains("bringing up ENI eni-b"));
    st.set_phase(Phase::Draining);
    assert!(matches!(st.del(&key("c")).await, Err(IpamError::Draining)));
}

#[tokio::test]
async fn every_change_is_checkpointed() {
    let (st, cp) = state();
    st.set_phase(Phase::Ready);
    let a = st.add(&key("c1"), PodMetadata::default()).await.unwrap();
    assert_eq!(saved_ips(&cp), vec![a.ip.to_string()]);
    st.add(&key("c2"), PodMetadata::default()).await.unwrap();
    assert_eq!(saved_ips(&cp).len(), 2);
    let released = st.del(&key("c1")).await.unwrap().unwrap();
    assert_eq!(released.ip, a.ip);
    assert_eq!(saved_ips(&cp), vec!["10.0.0.12".to_owned()]);
    assert!(st.del(&key("c1")).await.unwrap().is_none());
}

#[tokio::test]
async fn failed_checkpoint_write_rolls_back_and_fails() {
    let (st, cp) = state();
    st.set_phase(Phase::Ready);
    let held = st.add(&key("c1"), PodMetadata::default()).await.unwrap();
    cp.fail.store(true, Ordering::SeqCst);
    let err = st
        .add(&key("c2"), PodMetadata::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("rolled back") && err.to_string().contains("disk full"),
        "{err}"
    );
    assert!(matches!(
        st.check(&key("c2")).await,
        Err(IpamError::NotFound { .. })
    ));
    let err = st.del(&key("c1")).await.unwrap_err();
    assert!(err.to_string().contains("releasing 10.0.0.11"), "{err}");
    assert_eq!(st.check(&key("c1")).await.unwrap().ip, held.ip);
    assert_eq!(st.status().await.stats.assigned, 1);
    cp.fail.store(false, Ordering::SeqCst);
    let b = st.add(&key("c2"), PodMetadata::default()).await.unwrap();
    assert_eq!(
        b.ip.to_string(),
        "10.0.0.12",
        "the rolled-back address is free again"
    );
}

#[tokio::test]
async fn legacy_cri_key_is_released_by_container_id() {
    let (st, cp) = state();
    st.set_phase(Phase::Ready);
    let legacy = IpamKey {
        network_name: LEGACY_NETWORK_NAME.into(),
        container_id: "old".into(),
        if_name: LEGACY_IF_NAME.into(),
    };
    st.add(&legacy, PodMetadata::default()).await.unwrap();
    let r = st.del(&key("old")).await.unwrap().unwrap();
    assert_eq!(r.key, legacy);
    assert!(saved_ips(&cp).is_empty());
}

#[tokio::test]
async fn gc_releases_unlisted_attachments_of_the_network() {
    let (st, cp) = state();
    st.set_phase(Phase::Ready);
    st.add(&key("keep"), PodMetadata::default()).await.unwrap();
    let gone = st.add(&key("gone"), PodMetadata::default()).await.unwrap();
    let valid = HashSet::from([("keep".to_owned(), "eth0".to_owned())]);
    let released = st.gc("aws-cni", &valid).await.unwrap();
    assert_eq!(
        released.iter().map(|a| a.ip).collect::<Vec<_>>(),
        vec![gone.ip]
    );
    assert_eq!(saved_ips(&cp).len(), 1);
    assert!(
        st.gc("other-net", &HashSet::new())
            .await
            .unwrap()
            .is_empty()
    );
    cp.fail.store(true, Ordering::SeqCst);
    assert!(st.gc("aws-cni", &HashSet::new()).await.is_err());
    assert!(
        st.check(&key("keep")).await.is_ok(),
        "failed GC is rolled back"
    );
}

#[tokio::test]
async fn status_explains_exhaustion() {
    let (st, _) = state();
    st.set_phase(Phase::Ready);
    st.add(&key("a"), PodMetadata::default()).await.unwrap();
    st.add(&key("b"), PodMetadata::default()).await.unwrap();
    let s = st.status().await;
    assert!(s.ready);
    assert_eq!(s.stats.assignable, 0);
    assert!(
        s.message
            .starts_with("no assignable IP: all 2 IPs on 1 ENI are assigned"),
        "{}",
        s.message
    );
    let err = st.add(&key("c"), PodMetadata::default()).await.unwrap_err();
    assert_eq!(err.to_string(), s.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acknowledged_change_is_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Arc::new(FileCheckpointer::new(dir.path().join("ipam.json")));
    let st = Arc::new(IpamState::new(
        datastore_cooling(200, Duration::ZERO),
        cp.clone(),
    ));
    st.set_phase(Phase::Ready);
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let (st, cp) = (Arc::clone(&st), Arc::clone(&cp));
            tokio::spawn(async move {
                for i in 0..20 {
                    let k = key(&format!("w{w}-{i}"));
                    let a = st.add(&k, PodMetadata::default()).await.unwrap();
                    // Answered: the file already holds it (nothing else releases this key).
                    let data = cp.load().unwrap().unwrap();
                    assert!(
                        data.allocations
                            .iter()
                            .any(|e| e.key() == k && e.ipv4_addr() == a.ipv4()),
                        "{k} -> {} acknowledged but not in the file",
                        a.ip
                    );
                    if i % 2 == 0 {
                        st.del(&k).await.unwrap().unwrap();
                        let data = cp.load().unwrap().unwrap();
                        assert!(
                            !data.allocations.iter().any(|e| e.key() == k),
                            "{k} released but still in the file"
                        );
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // The file is the datastore, entry for entry.
    let want = CheckpointData::from_assignments(&st.with_datastore(|ds| ds.assignments()).await);
    assert_eq!(want.allocations.len(), 16 * 10);
    assert_eq!(cp.load().unwrap().unwrap(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_share_writes() {
    let (st, cp) = state_with(50);
    let st = Arc::new(st);
    // The first change's write is held: the others queue meanwhile and share the next write.
    cp.hold();
    let first = tokio::spawn({
        let st = Arc::clone(&st);
        async move { st.add(&key("first"), PodMetadata::default()).await }
    });
    cp.entered(1).await;
    let others: Vec<_> = (0..16)
        .map(|i| {
            let st = Arc::clone(&st);
            tokio::spawn(
                async move { st.add(&key(&format!("c{i}")), PodMetadata::default()).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        others.iter().all(|t| !t.is_finished()),
        "answered before any write covering them completed"
    );
    cp.release();
    first.await.unwrap().unwrap();
    for t in others {
        t.await.unwrap().unwrap();
    }
    let saves = cp.saves.load(Ordering::SeqCst);
    assert!(
        saves <= 3,
        "17 changes took {saves} writes; the 16 queued behind the first should share one"
    );
    assert_eq!(saved_ips(&cp).len(), 17);
}

fn state_with(n: u8) -> (IpamState, Arc<MemCheckpointer>) {
    let cp = Arc::new(MemCheckpointer::default());
    let st = IpamState::new(datastore(n), cp.clone());
    st.set_phase(Phase::Ready);
    (st, cp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_write_rolls_back_its_changes_and_those_made_meanwhile() {
    let (st, cp) = state_with(4);
    let st = Arc::new(st);
    let held = st.add(&key("held"), PodMetadata::default()).await.unwrap();
    assert_eq!(saved_ips(&cp), vec!["10.0.0.11".to_owned()]);

    // A write that will fail is in progress (covering c2's assignment)...
    cp.hold();
    cp.fail.store(true, Ordering::SeqCst);
    let entered = cp.entered.load(Ordering::SeqCst);
    let spawn_add = |name: &'static str| {
        let st = Arc::clone(&st);
        tokio::spawn(async move { st.add(&key(name), PodMetadata::default()).await })
    };
    let c2 = spawn_add("c2");
    cp.entered(entered + 1).await;
    // ...while held's address is released and c3 gets an address: both changes build on the
    // datastore the failing write does not make durable.
    let del_held = tokio::spawn({
        let st = Arc::clone(&st);
        async move { st.del(&key("held")).await }
    });
    let c3 = spawn_add("c3");
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        st.status().await.stats.assigned,
        2,
        "c2 and c3 in, held out"
    );
    cp.release();

    for (what, r) in [
        ("c2", c2.await.unwrap().map(|_| ())),
        ("release of held", del_held.await.unwrap().map(|_| ())),
        ("c3", c3.await.unwrap().map(|_| ())),
    ] {
        let err = r.expect_err(what).to_string();
        assert!(
            err.contains("rolled back") && err.contains("disk full"),
            "{what}: {err}"
        );
    }
    // Everything is as before the failed write: held keeps its address, nobody else has one.
    assert_eq!(st.check(&key("held")).await.unwrap().ip, held.ip);
    for k in ["c2", "c3"] {
        assert!(matches!(
            st.check(&key(k)).await,
            Err(IpamError::NotFound { .. })
        ));
    }
    let s = st.status().await.stats;
    assert_eq!((s.assigned, s.cooling, s.assignable), (1, 0, 3));
    assert_eq!(saved_ips(&cp), vec!["10.0.0.11".to_owned()]);

    // The next write (rebuilt from the datastore) carries on from there.
    cp.fail.store(false, Ordering::SeqCst);
    let c2 = st.add(&key("c2"), PodMetadata::default()).await.unwrap();
    assert_eq!(c2.ip.to_string(), "10.0.0.12");
    assert_eq!(
        saved_ips(&cp),
        vec!["10.0.0.11".to_owned(), "10.0.0.12".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_add_waits_for_the_first_ones_write() {
    let (st, cp) = state_with(2);
    let st = Arc::new(st);
    // The first ADD's write is held, and will fail.
    cp.hold();
    cp.fail_once.store(true, Ordering::SeqCst);
    let add = || {
        let st = Arc::clone(&st);
        tokio::spawn(async move { st.add(&key("k"), PodMetadata::default()).await })
    };
    let first = add();
    cp.entered(1).await;
    let again = add();
    let check = tokio::spawn({
        let st = Arc::clone(&st);
        async move { st.check(&key("k")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !again.is_finished() && !check.is_finished(),
        "a request about the key answered before its assignment was written"
    );
    // The write fails: the first ADD fails and its assignment is rolled back; the repeated ADD
    // then finds nothing assigned and assigns afresh, durably this time.
    cp.release();
    let err = first.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("rolled back"), "{err}");
    let got = again.await.unwrap().unwrap();
    assert_eq!(saved_ips(&cp), vec![got.ip.to_string()]);
    // CHECK, which waited too, saw nothing (before the retry) or the durable address.
    match check.await.unwrap() {
        Ok(a) => assert_eq!(a.ip, got.ip),
        Err(e) => assert!(matches!(e, IpamError::NotFound { .. }), "{e}"),
    }
    assert_eq!(cp.saves.load(Ordering::SeqCst), 1);
}

#[test]
fn replies_name_the_vpc_cidrs_then_the_excluded_ones() {
    let st = IpamState::new(datastore(1), Arc::new(MemCheckpointer::default()))
        .with_snat(true, vec!["203.0.113.0/24".parse().unwrap()]);
    let cidrs = |st: &IpamState| -> Vec<String> {
        st.egress()
            .no_snat_cidrs()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(cidrs(&st), ["203.0.113.0/24"], "before metadata was read");
    st.set_vpc_cidrs(vec!["10.0.0.0/16".parse().unwrap()]);
    assert_eq!(cidrs(&st), ["10.0.0.0/16", "203.0.113.0/24"]);
    st.set_vpc_cidrs(vec![
        "10.0.0.0/16".parse().unwrap(),
        "100.64.0.0/16".parse().unwrap(),
    ]);
    assert_eq!(
        cidrs(&st),
        ["10.0.0.0/16", "100.64.0.0/16", "203.0.113.0/24"],
        "after the VPC gained a CIDR"
    );
    assert!(st.egress().external_snat);
}
