//! Read-modify-write of one key with compare-and-swap, retried when another writer got there
//! first. Every `calicoctl` command that edits an existing value goes through here, so two
//! users editing one profile at once both see their change land.

use std::time::Duration;

use crate::error::DatastoreError;
use crate::store::{Compare, Datastore, Op, Txn};

/// What the edit function decides for the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(String),
    Delete,
    /// Leave the key as it is (the edit found nothing to do).
    Keep,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// The edit function refused the current value.
    #[error(transparent)]
    Rejected(E),
    #[error("gave up after {0} attempts: the key kept changing under us")]
    Contended(u32),
}

/// Enough for dozens of concurrent writers: each round, one of them wins.
const MAX_ATTEMPTS: u32 = 500;

/// Applies `edit` to the current value of `key` (None when absent) until the write lands
/// without anyone having changed the key in between. `edit` may run several times.
pub async fn update<E>(
    store: &dyn Datastore,
    key: &str,
    mut edit: impl FnMut(Option<&str>) -> Result<Change, E>,
) -> Result<Change, UpdateError<E>> {
    for attempt in 0..MAX_ATTEMPTS {
        let current = store.get(key).await?;
        let change =
            edit(current.as_ref().map(|kv| kv.value.as_str())).map_err(UpdateError::Rejected)?;
        let op = match &change {
            Change::Keep => return Ok(change),
            Change::Put(value) => Op::put(key, value.clone()),
            Change::Delete if current.is_none() => return Ok(change),
            Change::Delete => Op::delete(key),
        };
        let compare = match &current {
            Some(kv) => Compare::ModRevision(key.to_string(), kv.mod_revision),
            None => Compare::Absent(key.to_string()),
        };
        let outcome = store
            .txn(Txn {
                compares: vec![compare],
                ops: vec![op],
            })
            .await?;
        if outcome.succeeded {
            return Ok(change);
        }
        // Spread the retries so racing writers do not collide in lockstep.
        let jitter = u64::from(attempt % 7 + (std::process::id() % 5));
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    Err(UpdateError::Contended(MAX_ATTEMPTS))
}
