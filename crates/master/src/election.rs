//! One master at a time: `/calico/master/ip` is written only if absent, under a lease the
//! master keeps alive. While it lives, others wait; when the master stops (its lease is revoked)
//! or dies (its lease runs out), the next one gets in.

use std::sync::Arc;
use std::time::Duration;

use calico_datastore::{Compare, Datastore, DatastoreError, LeaseId, Op, Txn};

/// Where the master's address is, as seed 002 says.
pub const MASTER_IP: &str = "/calico/master/ip";
/// How long a master that stopped answering keeps the role.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// One try at the role: the lease it is held by, or None while another master has it.
pub async fn try_lead(
    store: &Arc<dyn Datastore>,
    ip: &str,
) -> Result<Option<LeaseId>, DatastoreError> {
    let lease = store.grant_lease(LEASE_TTL).await?;
    let txn = Txn {
        compares: vec![Compare::Absent(MASTER_IP.into())],
        ops: vec![Op::Put {
            key: MASTER_IP.into(),
            value: ip.to_string(),
            lease: Some(lease),
        }],
    };
    if store.txn(txn).await?.succeeded {
        return Ok(Some(lease));
    }
    store.revoke_lease(lease).await?;
    Ok(None)
}

/// Waits until this process is the master; the lease it holds the role by.
pub async fn lead(store: &Arc<dyn Datastore>, ip: &str) -> Result<LeaseId, DatastoreError> {
    let mut waiting = false;
    loop {
        if let Some(lease) = try_lead(store, ip).await? {
            return Ok(lease);
        }
        if !waiting {
            let current = store.get(MASTER_IP).await?.map(|kv| kv.value);
            tracing::info!(master = ?current, "another master holds the role; waiting for it to end");
            waiting = true;
        }
        tokio::time::sleep(LEASE_TTL / 4).await;
    }
}

/// Keeps the lease alive until that fails (the role is lost then).
pub async fn keep(store: &Arc<dyn Datastore>, lease: LeaseId) -> DatastoreError {
    let mut tick = tokio::time::interval(LEASE_TTL / 3);
    loop {
        tick.tick().await;
        if let Err(e) = store.keep_lease_alive(lease).await {
            return e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_datastore::MemoryStore;

    #[tokio::test]
    async fn a_second_master_waits_until_the_first_ends() {
        let store: Arc<dyn Datastore> = Arc::new(MemoryStore::new());
        let first = lead(&store, "10.0.0.1").await.unwrap();
        assert_eq!(try_lead(&store, "10.0.0.2").await.unwrap(), None);
        assert_eq!(
            store.get(MASTER_IP).await.unwrap().unwrap().value,
            "10.0.0.1"
        );
        store.revoke_lease(first).await.unwrap();
        assert!(
            store.get(MASTER_IP).await.unwrap().is_none(),
            "the address goes with the lease"
        );
        let second = lead(&store, "10.0.0.2").await.unwrap();
        assert_ne!(second, first);
        assert_eq!(
            store.get(MASTER_IP).await.unwrap().unwrap().value,
            "10.0.0.2"
        );
    }
}
