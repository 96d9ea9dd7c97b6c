//! Group commit of the checkpoint. [`Journal::lock`] hands out the pool's datastore under the
//! pool lock; a change to an assignment made there is recorded by [`Locked::commit`], which
//! costs O(1) under the lock: a sequence number, how to undo it, and the allocations it sets or
//! removes. Its request is answered only once a checkpoint write that covers it has completed
//! (temp file, fsync, rename, fsync of the directory: [`crate::fsutil::atomic_write`]), so an
//! acknowledged change is always in the file.
//!
//! One writer at a time takes every change recorded so far, encodes only their allocations (the
//! others stay encoded from earlier writes, by address), assembles the file and writes it
//! outside the lock; changes recorded meanwhile are covered by its next write. So the lock is
//! never held for encoding or I/O, and concurrent requests share writes instead of queueing for
//! one each.
//!
//! A failed write rolls back, under the lock and newest first, every change that is not durable:
//! the ones it covered and the ones recorded since (they may build on them, e.g. an address
//! released and assigned again), fails their requests with the write's error, and makes the next
//! write encode the whole datastore again. Requests about a key whose latest change is not
//! settled yet (written or rolled back) wait for it first ([`Settle`]), so a repeated AddNetwork
//! never answers with an assignment that may still be rolled back.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError};

use tokio::sync::{Mutex, MutexGuard, oneshot, watch};

use crate::checkpoint::{CheckpointError, Checkpointer, encode_entry, encode_file};
use crate::datastore::{Assignment, Datastore, IpamKey, Released};

/// A change to the assignments, made in the datastore under the pool lock.
#[derive(Debug)]
pub enum Change {
    /// A fresh assignment.
    Assigned(Assignment),
    /// Releases, in the order they were made.
    Released(Vec<Released>),
}

/// Which unwritten changes [`Journal::lock`] waits for before it hands out the pool.
#[derive(Debug, Clone, Copy)]
pub enum Settle<'a> {
    /// None: the caller does not answer about assignments (start-up, reconcile, counts).
    Nothing,
    /// The latest change of each of these keys: a request about a key answers only from
    /// durable state.
    Keys(&'a [&'a IpamKey]),
    /// Every change (GC looks at every key of a network).
    All,
}

/// How to undo a change when its write fails.
#[derive(Debug)]
enum Undo {
    /// Nothing (a rewrite of the whole checkpoint).
    Nothing,
    /// A fresh assignment of this key.
    Assign(IpamKey),
    /// Releases, in the order they were made.
    Release(Vec<Released>),
}

/// What a change does to the file.
#[derive(Debug)]
enum Delta {
    /// The address's allocation is now this one.
    Set(Assignment),
    /// The address has no allocation any more.
    Remove(IpAddr),
}

/// What a request awaits: the outcome of the write that covers its change.
type Ack = oneshot::Receiver<Result<(), CheckpointError>>;

#[derive(Debug)]
struct Record {
    seq: u64,
    undo: Undo,
    deltas: Vec<Delta>,
    ack: oneshot::Sender<Result<(), CheckpointError>>,
}

/// The datastore and the changes the writer has not taken yet, behind the pool lock.
#[derive(Debug)]
struct Pool {
    /// The address book.
    ds: Datastore,
    /// Sequence number of the last recorded change.
    last_seq: u64,
    /// Recorded changes the writer has not taken yet, oldest first.
    queue: Vec<Record>,
    /// Key → sequence number of its latest change (stale once settled; pruned lazily).
    pending: HashMap<IpamKey, u64>,
    /// `pending`'s size after its last pruning.
    pending_floor: usize,
    /// A writer task is running.
    writer_running: bool,
    /// The next write encodes every assignment of the datastore again.
    rebuild: bool,
}

/// The encoded allocations of the last write, by address (the file's order).
#[derive(Debug, Default)]
struct Encoded {
    entries: BTreeMap<IpAddr, Box<[u8]>>,
    /// The file of the last write (a reused buffer).
    file: Vec<u8>,
}

/// The pool, its checkpoint and the writer's state.
#[derive(Debug)]
pub struct Journal {
    pool: Mutex<Pool>,
    checkpointer: Arc<dyn Checkpointer>,
    encoded: std::sync::Mutex<Encoded>,
    /// Sequence number up to which every change is settled: written, or rolled back.
    settled: watch::Sender<u64>,
}

/// The pool, locked: its datastore, and [`Locked::commit`] for the change made in it.
/// Dropping it unlocks the pool without recording anything.
#[derive(Debug)]
pub struct Locked<'a> {
    journal: &'a Arc<Journal>,
    pool: MutexGuard<'a, Pool>,
}

impl Locked<'_> {
    /// The datastore. Changes to assignments made here must be committed
    /// ([`Locked::commit`]); changes to ENIs and addresses are not checkpointed.
    pub fn datastore(&mut self) -> &mut Datastore {
        &mut self.pool.ds
    }

    /// Records `change` (just made in the datastore), unlocks the pool and waits for the write
    /// that covers the change.
    ///
    /// # Errors
    /// The write failed: the change (and those recorded since) was rolled back.
    pub async fn commit(self, change: Change) -> Result<(), CheckpointError> {
        let Self { journal, mut pool } = self;
        let ack = journal.record(&mut pool, change);
        drop(pool);
        journal.durable(ack).await
    }
}

impl Journal {
    /// A journal around `ds`; its first write encodes the whole datastore.
    pub fn new(ds: Datastore, checkpointer: Arc<dyn Checkpointer>) -> Arc<Self> {
        Arc::new(Self {
            pool: Mutex::new(Pool {
                ds,
                last_seq: 0,
                queue: Vec::new(),
                pending: HashMap::new(),
                pending_floor: 0,
                writer_running: false,
                rebuild: true,
            }),
            checkpointer,
            encoded: std::sync::Mutex::new(Encoded::default()),
            settled: watch::channel(0).0,
        })
    }

    /// The pool lock, once no change that `settle` names is waiting for its write.
    pub async fn lock<'a>(self: &'a Arc<Self>, settle: Settle<'_>) -> Locked<'a> {
        loop {
            let pool = self.pool.lock().await;
            let waiting = match settle {
                Settle::Nothing => None,
                Settle::Keys(keys) => keys.iter().find_map(|k| self.pending(&pool, k)),
                Settle::All => self.any_pending(&pool),
            };
            match waiting {
                None => {
                    return Locked {
                        journal: self,
                        pool,
                    };
                }
                Some(seq) => {
                    drop(pool);
                    self.wait_settled(seq).await;
                }
            }
        }
    }

    /// Writes the whole checkpoint from the datastore as it is now (every assignment encoded
    /// again: start-up, after the datastore was replaced) and waits for the write. Returns how
    /// many assignments it holds.
    ///
    /// # Errors
    /// The write failed.
    pub async fn rewrite(self: &Arc<Self>) -> Result<usize, CheckpointError> {
        let (n, ack) = {
            let mut pool = self.pool.lock().await;
            pool.rebuild = true;
            let n = pool.ds.assignments().len();
            (n, self.push(&mut pool, Undo::Nothing, Vec::new()))
        };
        self.durable(ack).await?;
        Ok(n)
    }

    /// Where the checkpoint is stored (for messages).
    pub fn location(&self) -> String {
        self.checkpointer.location()
    }

    fn settled_seq(&self) -> u64 {
        *self.settled.borrow()
    }

    /// The sequence number of `key`'s latest change when it is not settled yet.
    fn pending(&self, pool: &Pool, key: &IpamKey) -> Option<u64> {
        let settled = self.settled_seq();
        pool.pending.get(key).copied().filter(|&s| s > settled)
    }

    /// The sequence number of the latest change when some change is not settled yet.
    fn any_pending(&self, pool: &Pool) -> Option<u64> {
        (pool.last_seq > self.settled_seq()).then_some(pool.last_seq)
    }

    /// Waits until every change up to `seq` is settled (written or rolled back).
    async fn wait_settled(&self, seq: u64) {
        let mut rx = self.settled.subscribe();
        // The sender lives as long as `self`: this cannot fail while we borrow it.
        let _ = rx.wait_for(|&s| s >= seq).await;
    }

    /// Records a change just made to `pool.ds` (under the lock).
    fn record(self: &Arc<Self>, pool: &mut Pool, change: Change) -> Ack {
        let (undo, deltas) = match change {
            Change::Assigned(a) => (Undo::Assign(a.key.clone()), vec![Delta::Set(a)]),
            Change::Released(released) => {
                let deltas = released
                    .iter()
                    .map(|r| Delta::Remove(r.assignment.ip))
                    .collect();
                (Undo::Release(released), deltas)
            }
        };
        self.push(pool, undo, deltas)
    }

    /// Queues a change for the writer, marks the keys it touched as pending, and starts a
    /// writer if none runs.
    fn push(self: &Arc<Self>, pool: &mut Pool, undo: Undo, deltas: Vec<Delta>) -> Ack {
        pool.last_seq += 1;
        let seq = pool.last_seq;
        if pool.pending.len() > 2 * pool.pending_floor.max(32) {
            let settled = self.settled_seq();
            pool.pending.retain(|_, s| *s > settled);
            pool.pending_floor = pool.pending.len();
        }
        match &undo {
            Undo::Nothing => {}
            Undo::Assign(key) => {
                pool.pending.insert(key.clone(), seq);
            }
            Undo::Release(released) => {
                for r in released {
                    pool.pending.insert(r.assignment.key.clone(), seq);
                }
            }
        }
        let (ack, rx) = oneshot::channel();
        pool.queue.push(Record {
            seq,
            undo,
            deltas,
            ack,
        });
        if !pool.writer_running {
            pool.writer_running = true;
            tokio::spawn(write_loop(Arc::clone(self)));
        }
        rx
    }

    /// Waits for the write covering a change.
    ///
    /// # Errors
    /// The write failed (the change was rolled back).
    async fn durable(&self, ack: Ack) -> Result<(), CheckpointError> {
        ack.await.unwrap_or_else(|_| {
            Err(CheckpointError::Write {
                path: self.location().into(),
                source: std::io::Error::other(
                    "the checkpoint writer stopped before the change was written",
                ),
            })
        })
    }

    /// Encodes the changes' allocations over those of the last write, writes the file and, once
    /// it is written, keeps the new encoding. `rebuild` replaces the old encoding first.
    fn write(
        &self,
        deltas: &[Vec<Delta>],
        rebuild: Option<Vec<Assignment>>,
    ) -> Result<(usize, usize), CheckpointError> {
        let mut enc = self.encoded.lock().unwrap_or_else(PoisonError::into_inner);
        let enc = &mut *enc;
        if let Some(all) = rebuild {
            enc.entries = all
                .iter()
                .map(|a| (a.ip, encode_entry(a).into_boxed_slice()))
                .collect();
        }
        // The state of each address the changes touched, after the last of them.
        let mut overlay: BTreeMap<IpAddr, Option<Box<[u8]>>> = BTreeMap::new();
        for d in deltas.iter().flatten() {
            match d {
                Delta::Set(a) => overlay.insert(a.ip, Some(encode_entry(a).into_boxed_slice())),
                Delta::Remove(ip) => overlay.insert(*ip, None),
            };
        }
        let merged = merge(&enc.entries, &overlay);
        let count = merged.len();
        encode_file(merged, &mut enc.file);
        self.checkpointer.save_encoded(&enc.file)?;
        let bytes = enc.file.len();
        for (ip, e) in overlay {
            match e {
                Some(e) => enc.entries.insert(ip, e),
                None => enc.entries.remove(&ip),
            };
        }
        Ok((count, bytes))
    }
}

/// The entries of `base` with `overlay` applied, in address order.
fn merge<'a>(
    base: &'a BTreeMap<IpAddr, Box<[u8]>>,
    overlay: &'a BTreeMap<IpAddr, Option<Box<[u8]>>>,
) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(base.len() + overlay.len());
    let mut b = base.iter().peekable();
    let mut o = overlay.iter().peekable();
    loop {
        let take_base = match (b.peek(), o.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((bi, _)), Some((oi, _))) => bi < oi,
        };
        if take_base {
            if let Some((_, e)) = b.next() {
                out.push(&e[..]);
            }
        } else if let Some((ip, e)) = o.next() {
            if b.peek().is_some_and(|(bi, _)| *bi == ip) {
                b.next();
            }
            if let Some(e) = e {
                out.push(&e[..]);
            }
        }
    }
    out
}

/// Undoes one change in the datastore.
fn undo(ds: &mut Datastore, undo: &Undo) {
    match undo {
        Undo::Nothing => {}
        Undo::Assign(key) => ds.rollback_assign(key),
        Undo::Release(released) => {
            for r in released.iter().rev() {
                ds.rollback_release(r);
            }
        }
    }
}

/// The writer: writes batches of recorded changes until none is left.
async fn write_loop(j: Arc<Journal>) {
    loop {
        let (mut batch, rebuild) = {
            let mut pool = j.pool.lock().await;
            if pool.queue.is_empty() {
                pool.writer_running = false;
                return;
            }
            let rebuild = std::mem::take(&mut pool.rebuild).then(|| pool.ds.assignments());
            (std::mem::take(&mut pool.queue), rebuild)
        };
        let deltas: Vec<Vec<Delta>> = batch
            .iter_mut()
            .map(|c| std::mem::take(&mut c.deltas))
            .collect();
        let started = std::time::Instant::now();
        let writer = Arc::clone(&j);
        let outcome = tokio::task::spawn_blocking(move || writer.write(&deltas, rebuild))
            .await
            .unwrap_or_else(|join| {
                Err(CheckpointError::Write {
                    path: j.location().into(),
                    source: std::io::Error::other(format!(
                        "the checkpoint write task failed: {join}"
                    )),
                })
            });
        match outcome {
            Ok((allocations, bytes)) => {
                let last = batch.last().map_or(0, |c| c.seq);
                j.settled.send_replace(last);
                tracing::trace!(
                    changes = batch.len(),
                    allocations,
                    bytes,
                    us = started.elapsed().as_micros(),
                    "checkpoint written"
                );
                for c in batch {
                    let _ = c.ack.send(Ok(()));
                }
            }
            Err(e) => {
                let mut pool = j.pool.lock().await;
                let later = std::mem::take(&mut pool.queue);
                batch.extend(later);
                for c in batch.iter().rev() {
                    undo(&mut pool.ds, &c.undo);
                }
                pool.pending.clear();
                pool.pending_floor = 0;
                pool.rebuild = true;
                let last = batch.last().map_or(0, |c| c.seq);
                j.settled.send_replace(last);
                drop(pool);
                tracing::warn!(error = %e, changes = batch.len(), "checkpoint write failed; its changes and those made since are rolled back");
                for c in batch {
                    let _ = c.ack.send(Err(e.duplicate()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn entries(list: &[(u8, &str)]) -> BTreeMap<IpAddr, Box<[u8]>> {
        list.iter()
            .map(|(i, s)| (IpAddr::from([10, 0, 0, *i]), s.as_bytes().into()))
            .collect()
    }

    #[test]
    fn merge_applies_sets_and_removals_in_address_order() {
        let base = entries(&[(2, "b"), (4, "d"), (6, "f")]);
        let overlay: BTreeMap<IpAddr, Option<Box<[u8]>>> = [
            (1, Some("a")),
            (4, None),
            (6, Some("F")),
            (7, Some("g")),
            (9, None),
        ]
        .into_iter()
        .map(|(i, s)| (IpAddr::from([10, 0, 0, i]), s.map(|s| s.as_bytes().into())))
        .collect();
        let got: Vec<&str> = merge(&base, &overlay)
            .into_iter()
            .map(|e| std::str::from_utf8(e).unwrap())
            .collect();
        assert_eq!(got, ["a", "b", "F", "g"]);
        assert!(merge(&BTreeMap::new(), &BTreeMap::new()).is_empty());
    }
}
