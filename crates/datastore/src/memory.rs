//! An in-memory datastore with etcd's semantics (revisions, prefix watches from a revision,
//! compaction, leases), for unit tests of the code that uses a [`Datastore`]. Leases expire
//! lazily: an expired lease's keys vanish at the next operation.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::{DatastoreError, Result};
use crate::store::{
    Compare, Datastore, KeyValue, LeaseId, ListPage, Listing, Op, Revision, Txn, TxnOutcome, Watch,
    WatchEvent, MAX_TXN_OPS,
};

/// Whether `key` lies under one of `prefixes`.
fn under(key: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| key.starts_with(p.as_str()))
}

#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    revision: Revision,
    data: BTreeMap<String, KeyValue>,
    /// Every change after `compacted`, for watches that start in the past.
    history: Vec<WatchEvent>,
    compacted: Revision,
    watchers: Vec<Watcher>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
}

/// An open watch: its prefixes, and where its batches go.
type Watcher = (Vec<String>, mpsc::UnboundedSender<Result<Vec<WatchEvent>>>);

struct Lease {
    ttl: Duration,
    deadline: Instant,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.expire_leases(Instant::now());
        state
    }

    /// Forgets the history before `revision`, as etcd's compaction does.
    pub fn compact(&self, revision: Revision) {
        let mut state = self.lock();
        state.compacted = revision.min(state.revision);
        let keep_from = state.compacted;
        state.history.retain(|e| e.revision() > keep_from);
    }

    /// Ends a lease now, as if its holder had stopped refreshing it.
    pub fn expire_lease(&self, lease: LeaseId) {
        let mut state = self.lock();
        if state.leases.remove(&lease).is_some() {
            state.drop_lease_keys(lease);
        }
    }

    /// Ends every open watch with `error`, as a lost etcd connection would.
    pub fn fail_watches(&self, error: DatastoreError) {
        let mut state = self.lock();
        for (_, tx) in state.watchers.drain(..) {
            let _ = tx.send(Err(error.clone()));
        }
    }

    /// The revision of the last change.
    pub fn revision(&self) -> Revision {
        self.lock().revision
    }
}

impl State {
    fn expire_leases(&mut self, now: Instant) {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.leases.remove(&id);
            self.drop_lease_keys(id);
        }
    }

    fn drop_lease_keys(&mut self, lease: LeaseId) {
        let keys: Vec<Op> = self
            .data
            .values()
            .filter(|kv| kv.lease == lease)
            .map(|kv| Op::delete(kv.key.clone()))
            .collect();
        if !keys.is_empty() {
            self.apply(&keys);
        }
    }

    /// The keys under `prefix`, in key order.
    fn under(&self, prefix: &str) -> Vec<KeyValue> {
        self.data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    fn holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::Absent(key) => !self.data.contains_key(key),
            Compare::ModRevision(key, revision) => self
                .data
                .get(key)
                .is_some_and(|kv| kv.mod_revision == *revision),
        }
    }

    /// Applies ops at one new revision (if anything changes) and tells the watchers.
    fn apply(&mut self, ops: &[Op]) -> Vec<WatchEvent> {
        let revision = self.revision + 1;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create_revision =
                        self.data.get(key).map_or(revision, |kv| kv.create_revision);
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: revision,
                        lease: lease.unwrap_or(0),
                    };
                    self.data.insert(key.clone(), kv.clone());
                    events.push(WatchEvent::Put(kv));
                }
                Op::Delete { key } => {
                    if self.data.remove(key).is_some() {
                        events.push(WatchEvent::Delete {
                            key: key.clone(),
                            revision,
                        });
                    }
                }
                Op::DeletePrefix { prefix } => {
                    let keys: Vec<String> = self
                        .data
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in keys {
                        self.data.remove(&key);
                        events.push(WatchEvent::Delete { key, revision });
                    }
                }
            }
        }
        if !events.is_empty() {
            self.revision = revision;
            self.history.extend(events.iter().cloned());
            self.notify(&events);
        }
        events
    }

    fn notify(&mut self, events: &[WatchEvent]) {
        self.watchers.retain(|(prefixes, tx)| {
            let batch: Vec<WatchEvent> = events
                .iter()
                .filter(|e| under(e.key(), prefixes))
                .cloned()
                .collect();
            batch.is_empty() || tx.send(Ok(batch)).is_ok()
        });
    }

    fn check_lease(&self, ops: &[Op]) -> Result<()> {
        for op in ops {
            if let Op::Put {
                lease: Some(id), ..
            } = op
            {
                if !self.leases.contains_key(id) {
                    return Err(DatastoreError::LeaseNotFound(*id));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Datastore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().data.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let state = self.lock();
        Ok(Listing {
            kvs: state.under(prefix),
            revision: state.revision,
        })
    }

    async fn list_each(
        &self,
        prefixes: &[&str],
        sink: &mut (dyn FnMut(ListPage) + Send),
    ) -> Result<Revision> {
        // Read under one lock: one revision.
        let (pages, revision) = {
            let state = self.lock();
            let pages: Vec<Vec<KeyValue>> = prefixes.iter().map(|p| state.under(p)).collect();
            (pages, state.revision)
        };
        for page in pages {
            sink(ListPage::Keys(page));
        }
        Ok(revision)
    }

    async fn put(&self, key: &str, value: &str) -> Result<Revision> {
        let mut state = self.lock();
        state.apply(&[Op::put(key, value)]);
        Ok(state.revision)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(!self.lock().apply(&[Op::delete(key)]).is_empty())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let op = Op::DeletePrefix {
            prefix: prefix.to_string(),
        };
        Ok(self.lock().apply(&[op]).len() as u64)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        if txn.compares.len() > MAX_TXN_OPS || txn.ops.len() > MAX_TXN_OPS {
            // etcd's own words.
            return Err(DatastoreError::Backend(
                "etcdserver: too many operations in txn request".into(),
            ));
        }
        let mut state = self.lock();
        let succeeded = txn.compares.iter().all(|c| state.holds(c));
        if succeeded {
            state.check_lease(&txn.ops)?;
            state.apply(&txn.ops);
        }
        Ok(TxnOutcome {
            succeeded,
            revision: state.revision,
        })
    }

    async fn watch(&self, prefixes: &[&str], from: Revision) -> Result<Watch> {
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        let mut state = self.lock();
        if from > 0 && from <= state.compacted {
            return Err(DatastoreError::Compacted {
                requested: from,
                compacted: state.compacted,
            });
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let past: Vec<WatchEvent> = state
            .history
            .iter()
            .filter(|e| from > 0 && e.revision() >= from && under(e.key(), &prefixes))
            .cloned()
            .collect();
        if !past.is_empty() {
            let _ = tx.send(Ok(past));
        }
        state.watchers.push((prefixes, tx));
        // Adapt the unbounded channel to the bounded one `Watch` holds.
        let (out_tx, out_rx) = mpsc::channel(256);
        let task = tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                if out_tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        Ok(Watch {
            rx: out_rx,
            tasks: vec![task.abort_handle()],
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let mut state = self.lock();
        state.next_lease += 1;
        let id = state.next_lease;
        let deadline = Instant::now() + ttl;
        state.leases.insert(id, Lease { ttl, deadline });
        Ok(id)
    }

    async fn keep_lease_alive(&self, id: LeaseId) -> Result<()> {
        let mut state = self.lock();
        let lease = state
            .leases
            .get_mut(&id)
            .ok_or(DatastoreError::LeaseNotFound(id))?;
        lease.deadline = Instant::now() + lease.ttl;
        Ok(())
    }

    async fn revoke_lease(&self, id: LeaseId) -> Result<()> {
        let mut state = self.lock();
        state
            .leases
            .remove(&id)
            .ok_or(DatastoreError::LeaseNotFound(id))?;
        state.drop_lease_keys(id);
        Ok(())
    }
}
