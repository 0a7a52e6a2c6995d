//! The datastore interface and the values it deals in.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::Result;

/// etcd's global revision: every change increments it.
pub type Revision = i64;
pub type LeaseId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// 0 when the key has no lease.
    pub lease: LeaseId,
}

/// The keys under a prefix, in key order, and the revision they were read at (where a watch
/// should resume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub kvs: Vec<KeyValue>,
    pub revision: Revision,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last modified at this revision.
    ModRevision(String, Revision),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: String,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }
}

/// The most comparisons, and the most operations, one transaction may carry: etcd's default
/// (`--max-txn-ops`); etcd refuses a larger transaction. Writers of many keys split them.
pub const MAX_TXN_OPS: usize = 128;

/// All-or-nothing: if every comparison holds, every op is applied at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// A stream of batches of changes under one or more prefixes. The changes under each prefix
/// come in revision order; batches of different prefixes may interleave in any order (their
/// keys are disjoint, so what a watcher builds from them ends the same). An `Err` item
/// (compaction, lost connection) ends the stream: the watcher must resync.
pub struct Watch {
    pub(crate) rx: mpsc::Receiver<Result<Vec<WatchEvent>>>,
    /// Stops the backend's forwarding tasks when the watch is dropped.
    pub(crate) tasks: Vec<tokio::task::AbortHandle>,
}

impl Watch {
    pub async fn next(&mut self) -> Option<Result<Vec<WatchEvent>>> {
        self.rx.recv().await
    }

    /// The next batch if one has already arrived; None if none has (yet). A stream that
    /// ended is reported as [`crate::DatastoreError::WatchEnded`].
    pub fn try_next(&mut self) -> Option<Result<Vec<WatchEvent>>> {
        match self.rx.try_recv() {
            Ok(item) => Some(item),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                Some(Err(crate::DatastoreError::WatchEnded))
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// One step of [`Datastore::list_each`].
#[derive(Debug)]
pub enum ListPage {
    Keys(Vec<KeyValue>),
    Restart,
}

#[async_trait]
pub trait Datastore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    async fn list(&self, prefix: &str) -> Result<Listing>;
    /// The keys under each of `prefixes`, in turn, all at one revision (one consistent
    /// snapshot), handed to `sink` a page at a time so the caller need not hold it all;
    /// [`ListPage::Restart`] means what came before is void (the snapshot's revision was
    /// compacted away mid-listing) and the listing starts over. Returns the snapshot's
    /// revision.
    async fn list_each(
        &self,
        prefixes: &[&str],
        sink: &mut (dyn FnMut(ListPage) + Send),
    ) -> Result<Revision>;
    async fn put(&self, key: &str, value: &str) -> Result<Revision>;
    /// Whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// How many keys were deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64>;
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome>;
    /// Changes under each of `prefixes` from revision `from` on (inclusive); `from` = 0
    /// means from now.
    async fn watch(&self, prefixes: &[&str], from: Revision) -> Result<Watch>;
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;
    /// One refresh of the lease's time to live.
    async fn keep_lease_alive(&self, lease: LeaseId) -> Result<()>;
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
}
