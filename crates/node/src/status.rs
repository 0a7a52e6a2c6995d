//! What the agent tells the datastore about itself: a heartbeat that vanishes when the agent
//! stops refreshing it (a lease), and the status of each local endpoint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use calico_dataplane::Applied;
use calico_datastore::{Datastore, DatastoreError, LeaseId, Op, Txn};
use calico_felix::{DesiredState, EndpointPolicy};
use calico_model::endpoint::EndpointKey;
use calico_model::keys;

pub fn endpoint_status_key(host: &str, key: &EndpointKey) -> String {
    format!(
        "/calico/felix/v1/host/{host}/workload/{}/{}/endpoint/{}",
        key.orchestrator, key.workload, key.endpoint_id
    )
}

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
            (endpoint_status_key(host, &endpoint.key), status.to_string())
        })
        .collect()
}

pub struct Reporter {
    host: String,
    ttl: Duration,
    started: Instant,
    lease: Option<LeaseId>,
    /// What was last written for each endpoint status key.
    written: BTreeMap<String, String>,
}

impl Reporter {
    pub fn new(host: &str, ttl: Duration) -> Self {
        Reporter {
            host: host.to_string(),
            ttl,
            started: Instant::now(),
            lease: None,
            written: BTreeMap::new(),
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

    /// Writes the statuses that changed and deletes those of endpoints that are gone.
    pub async fn endpoints(
        &mut self,
        store: &dyn Datastore,
        statuses: BTreeMap<String, String>,
    ) -> Result<(), DatastoreError> {
        let mut ops: Vec<Op> = statuses
            .iter()
            .filter(|(key, value)| self.written.get(*key) != Some(*value))
            .map(|(key, value)| Op::put(key.clone(), value.clone()))
            .collect();
        ops.extend(
            self.written
                .keys()
                .filter(|k| !statuses.contains_key(*k))
                .map(|k| Op::delete(k.clone())),
        );
        if !ops.is_empty() {
            store
                .txn(Txn {
                    compares: vec![],
                    ops,
                })
                .await?;
        }
        self.written = statuses;
        Ok(())
    }

    /// Removes the heartbeat at a clean shutdown.
    pub async fn stop(&mut self, store: &dyn Datastore) {
        if let Some(lease) = self.lease.take() {
            let _ = store.revoke_lease(lease).await;
        }
    }
}
