//! What the agent tells the datastore about itself: a heartbeat that vanishes when the agent
//! stops refreshing it (a lease), and the status of each local endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use calico_dataplane::Applied;
use calico_datastore::{Datastore, DatastoreError, LeaseId, Op, Txn, MAX_TXN_OPS};
use calico_felix::{DesiredState, EndpointPolicy};
use calico_model::keys;
use tokio::sync::watch;

/// Statuses of local endpoints after an apply: `up` when programmed, `down` while its
/// interface is missing, `error` (with the reason) when its traffic is dropped because its
/// policy could not be known or the kernel refused its part of the ruleset.
pub fn endpoint_statuses(
    host: &str,
    desired: &DesiredState,
    applied: &Applied,
) -> BTreeMap<String, String> {
    desired
        .endpoints
        .values()
        .map(|endpoint| {
            let failed = applied.failed_closed.get(&endpoint.interface);
            let status = match (&endpoint.policy, failed) {
                (EndpointPolicy::DropAll(reason), _) | (_, Some(reason)) => {
                    serde_json::json!({"status": "error", "reason": reason})
                }
                _ if applied.missing_interfaces.contains(&endpoint.interface) => {
                    serde_json::json!({"status": "down"})
                }
                _ => serde_json::json!({"status": "up"}),
            };
            (
                keys::felix_endpoint_status(host, &endpoint.key),
                status.to_string(),
            )
        })
        .collect()
}

pub struct Reporter {
    host: String,
    ttl: Duration,
    started: Instant,
    lease: Option<LeaseId>,
}

impl Reporter {
    pub fn new(host: &str, ttl: Duration) -> Self {
        Reporter {
            host: host.to_string(),
            ttl,
            started: Instant::now(),
            lease: None,
        }
    }

    /// Writes the heartbeat (under a lease that expires if the agent dies).
    pub async fn heartbeat(
        &mut self,
        store: &dyn Datastore,
        in_sync: bool,
        endpoints: usize,
        problems: &[String],
    ) -> Result<(), DatastoreError> {
        let lease = match self.lease {
            Some(lease) => match store.keep_lease_alive(lease).await {
                Ok(()) => lease,
                Err(DatastoreError::LeaseNotFound(_)) => store.grant_lease(self.ttl).await?,
                Err(e) => return Err(e),
            },
            None => store.grant_lease(self.ttl).await?,
        };
        self.lease = Some(lease);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let value = serde_json::json!({
            "time": now,
            "uptime": self.started.elapsed().as_secs(),
            "in_sync": in_sync,
            "endpoints": endpoints,
            "problems": problems,
        })
        .to_string();
        let put = Op::Put {
            key: keys::felix_status(&self.host),
            value,
            lease: Some(lease),
        };
        store
            .txn(Txn {
                compares: vec![],
                ops: vec![put],
            })
            .await?;
        Ok(())
    }

    /// Removes the heartbeat at a clean shutdown.
    pub async fn stop(&mut self, store: &dyn Datastore) {
        if let Some(lease) = self.lease.take() {
            let _ = store.revoke_lease(lease).await;
        }
    }
}

/// Writes the endpoint statuses in the background, so that the agent's next change never
/// waits for the datastore: the agent hands over the latest statuses after each apply, and a
/// writer that falls behind skips straight to the latest (only the last matters).
#[derive(Debug)]
pub struct StatusWriter {
    latest: watch::Sender<BTreeMap<String, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusWriter {
    /// `retry`: the pause before writing again after a failure.
    pub fn start(store: Arc<dyn Datastore>, retry: Duration) -> Self {
        let (latest, wanted) = watch::channel(BTreeMap::new());
        let task = tokio::spawn(write_statuses(store, wanted, retry));
        StatusWriter { latest, task }
    }

    /// The statuses of every local endpoint now (one entry per endpoint status key).
    pub fn publish(&self, statuses: BTreeMap<String, String>) {
        self.latest.send_if_modified(|current| {
            let changed = *current != statuses;
            *current = statuses;
            changed
        });
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn write_statuses(
    store: Arc<dyn Datastore>,
    mut wanted: watch::Receiver<BTreeMap<String, String>>,
    retry: Duration,
) {
    let mut written = BTreeMap::new();
    while wanted.changed().await.is_ok() {
        loop {
            let statuses = wanted.borrow_and_update().clone();
            match write_changed(store.as_ref(), &mut written, &statuses).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write endpoint status; retrying");
                    // Again after the pause, or at once with newer statuses.
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        closed = wanted.changed() => if closed.is_err() { return },
                    }
                }
            }
        }
    }
}

/// Writes the statuses that changed since `written` and deletes those of endpoints that are
/// gone, in transactions etcd takes ([`MAX_TXN_OPS`] each); `written` follows each one that
/// landed.
async fn write_changed(
    store: &dyn Datastore,
    written: &mut BTreeMap<String, String>,
    statuses: &BTreeMap<String, String>,
) -> Result<(), DatastoreError> {
    let mut ops: Vec<Op> = statuses
        .iter()
        .filter(|(key, value)| written.get(*key) != Some(*value))
        .map(|(key, value)| Op::put(key.clone(), value.clone()))
        .collect();
    ops.extend(
        written
            .keys()
            .filter(|k| !statuses.contains_key(*k))
            .map(|k| Op::delete(k.clone())),
    );
    for chunk in ops.chunks(MAX_TXN_OPS) {
        let txn = Txn {
            compares: vec![],
            ops: chunk.to_vec(),
        };
        store.txn(txn).await?;
        for op in chunk {
            match op {
                Op::Put { key, value, .. } => {
                    written.insert(key.clone(), value.clone());
                }
                Op::Delete { key } => {
                    written.remove(key);
                }
                Op::DeletePrefix { .. } => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use calico_datastore::MemoryStore;

    use super::*;

    fn statuses(range: std::ops::Range<u32>, status: &str) -> BTreeMap<String, String> {
        range
            .map(|n| {
                (
                    format!("/calico/felix/v1/host/h/workload/w/{n}"),
                    status.to_string(),
                )
            })
            .collect()
    }

    async fn stored(store: &MemoryStore) -> BTreeMap<String, String> {
        let listing = store.list("/calico/felix/v1/host/h/").await.unwrap();
        listing
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect()
    }

    /// Polls (up to 10 s) until the store holds exactly `want`.
    async fn until_stored(store: &MemoryStore, want: &BTreeMap<String, String>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored(store).await != *want {
            assert!(Instant::now() < deadline, "statuses never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// More endpoints than one etcd transaction holds: all of them are written, and those
    /// that go are deleted.
    #[tokio::test]
    async fn statuses_of_many_endpoints_are_written_in_transactions_etcd_takes() {
        let store = MemoryStore::new();
        let writer = StatusWriter::start(Arc::new(store.clone()), Duration::from_millis(10));
        let first = statuses(0..300, "up");
        writer.publish(first.clone());
        until_stored(&store, &first).await;
        let mut second = statuses(0..100, "up");
        second.extend(statuses(100..150, "down"));
        writer.publish(second.clone());
        until_stored(&store, &second).await;
    }
}
