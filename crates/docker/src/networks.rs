//! Networks shared by every host through the datastore, since Docker has no cluster store any
//! more: a network created on one host is recorded at `/calico/libnetwork/v1/network/<name>`,
//! and every host's calico-node makes its engine's networks of our driver match the records:
//! it creates the missing ones (same name, subnets, IPv6) and removes those whose record went.
//!
//! Loops cannot form: a host that creates a network from a record finds the record there when
//! it publishes it, and a host that removes one because its record went finds no record to
//! remove.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use calico_datastore::{Compare, Datastore, Op, Txn, WatchEvent};
use calico_model::keys;
use calico_model::network::DockerNetwork;
use tokio::sync::watch;

use crate::driver::Driver;

/// How often the engine's networks are compared with the records even without a change: to
/// retry what failed (an engine that was down, a network still in use).
const RESYNC: Duration = Duration::from_secs(10);
/// How long a newly created network may take to show in its engine.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(60);

/// After CreateNetwork: reads the network's name back from the engine once Docker has stored
/// it, then records it in the datastore with its profile.
pub async fn publish(driver: Arc<Driver>, id: String) {
    let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
    let mut pause = Duration::from_millis(2);
    let local = loop {
        match driver.engine.network(&id).await {
            Ok(Some(local)) => break local,
            Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {}
            Ok(None) => return, // created and removed again, or never stored
            Err(e) => {
                tracing::error!(network = %id, error = %e, "cannot read a new network back from the engine; it is not shared with other hosts");
                return;
            }
        }
        // Still on Docker's side of the call, or gone: look again soon.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    };
    let Some(known) = driver.networks.lock().await.get(&id).cloned() else {
        return; // deleted meanwhile
    };
    let record = DockerNetwork {
        name: local.name.clone(),
        subnets: known.subnets.clone(),
        ipv6: known.ipv6,
        created_by: driver.config.host.clone(),
    };
    if let Some(entry) = driver.networks.lock().await.get_mut(&id) {
        entry.name = Some(local.name.clone());
    }
    let mut pause = Duration::from_millis(100);
    loop {
        match record_network(&driver, &record).await {
            Ok(true) => break,
            Ok(false) => {
                // The cluster knows this name with other settings: the cluster's stand.
                tracing::error!(network = %record.name, "a network of this name exists in the cluster with other subnets; removing the one just created on this host");
                driver.networks.lock().await.remove(&id);
                if let Err(e) = driver.engine.remove_network(&id).await {
                    tracing::error!(network = %record.name, error = %e, "cannot remove the conflicting network");
                }
                return;
            }
            Err(e) if driver.networks.lock().await.contains_key(&id) => {
                tracing::warn!(network = %record.name, error = %e, "cannot record the network in the datastore yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(_) => return, // deleted meanwhile
        }
    }
    if let Some(entry) = driver.networks.lock().await.get_mut(&id) {
        entry.published = true;
    }
    tracing::info!(network = %record.name, subnets = ?record.subnets, "network recorded for every host");
}

/// Writes the record and the network's profile (unless they exist); false if another record
/// of this name describes another network.
async fn record_network(driver: &Driver, record: &DockerNetwork) -> Result<bool, String> {
    let resources = driver.lifecycle.resources();
    let key = keys::docker_network(&record.name);
    let written = resources
        .store()
        .txn(Txn {
            compares: vec![Compare::Absent(key.clone())],
            ops: vec![Op::put(key.clone(), record.to_json())],
        })
        .await
        .map_err(|e| e.to_string())?;
    if !written.succeeded {
        let existing = resources
            .store()
            .get(&key)
            .await
            .map_err(|e| e.to_string())?;
        let same = existing
            .and_then(|kv| DockerNetwork::from_json(&kv.value).ok())
            .is_some_and(|other| other.same_as(record));
        if !same {
            return Ok(false);
        }
    }
    resources
        .create_profile(&record.name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// After DeleteNetwork: the record goes (unless another host's removal came first, which this
/// one follows), and the profile with it unless endpoints still use it.
pub async fn unpublish(driver: &Driver, name: &str) {
    let resources = driver.lifecycle.resources();
    let key = keys::docker_network(name);
    let mut pause = Duration::from_millis(100);
    for _ in 0..8 {
        let removed = async {
            let Some(kv) = resources.store().get(&key).await? else {
                return Ok::<bool, calico_datastore::DatastoreError>(false);
            };
            let outcome = resources
                .store()
                .txn(Txn {
                    compares: vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
                    ops: vec![Op::delete(key.clone())],
                })
                .await?;
            Ok(outcome.succeeded)
        }
        .await;
        match removed {
            Ok(false) => return,
            Ok(true) => break,
            Err(e) => {
                tracing::warn!(network = %name, error = %e, "cannot remove the network's record yet; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    tracing::info!(network = %name, "network removed; other hosts remove it too");
    match resources.endpoints_using(name).await {
        Ok(users) if users.is_empty() => match resources.delete_profile(name).await {
            Ok(_) => tracing::info!(profile = %name, "removed the network's profile"),
            Err(e) => {
                tracing::warn!(profile = %name, error = %e, "cannot remove the network's profile")
            }
        },
        Ok(users) => tracing::warn!(
            profile = %name,
            endpoints = users.len(),
            "kept the network's profile: endpoints still use it"
        ),
        Err(e) => {
            tracing::warn!(profile = %name, error = %e, "cannot tell whether the network's profile is in use; kept it")
        }
    }
}

/// The records, read and then followed, with the engine brought in step after each change.
pub async fn sync(driver: Arc<Driver>, mut shutdown: watch::Receiver<bool>) {
    let store = driver.lifecycle.resources().shared_store();
    let mut blocked = BTreeSet::new();
    while !*shutdown.borrow() {
        let (mut records, revision) = match list(store.as_ref()).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the shared networks; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        reconcile(&driver, &records, &mut blocked).await;
        let mut watch = match store
            .watch(&[keys::DOCKER_NETWORKS_PREFIX], revision + 1)
            .await
        {
            Ok(watch) => watch,
            Err(_) => continue,
        };
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = driver.nudge.notified() => {}
                _ = resync.tick() => {}
                batch = watch.next() => match batch {
                    Some(Ok(events)) => apply(&mut records, events),
                    // Compacted or lost: read everything again.
                    _ => break,
                },
            }
            reconcile(&driver, &records, &mut blocked).await;
        }
    }
}

async fn list(
    store: &dyn Datastore,
) -> Result<(BTreeMap<String, DockerNetwork>, i64), calico_datastore::DatastoreError> {
    let listing = store.list(keys::DOCKER_NETWORKS_PREFIX).await?;
    let mut records = BTreeMap::new();
    for kv in listing.kvs {
        apply(&mut records, vec![WatchEvent::Put(kv)]);
    }
    Ok((records, listing.revision))
}

/// Takes in record changes; a record that does not parse is left out (and said so).
fn apply(records: &mut BTreeMap<String, DockerNetwork>, events: Vec<WatchEvent>) {
    for event in events {
        match event {
            WatchEvent::Put(kv) => {
                let Some(name) = keys::docker_network_name(&kv.key) else {
                    continue;
                };
                match DockerNetwork::from_json(&kv.value) {
                    Ok(record) if record.name == name => {
                        records.insert(name.to_string(), record);
                    }
                    Ok(_) => {
                        tracing::warn!(key = %kv.key, "ignoring a network record whose name is not its key's");
                        records.remove(name);
                    }
                    Err(e) => {
                        tracing::warn!(key = %kv.key, error = %e, "ignoring an invalid network record");
                        records.remove(name);
                    }
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let Some(name) = keys::docker_network_name(&key) {
                    records.remove(name);
                }
            }
        }
    }
}

/// Brings the engine's networks of our driver to the records. `blocked`: networks whose removal
/// failed last time (so a network still in use is said once, not every pass).
async fn reconcile(
    driver: &Driver,
    records: &BTreeMap<String, DockerNetwork>,
    blocked: &mut BTreeSet<String>,
) {
    let local = match driver.engine.calico_networks().await {
        Ok(local) => local,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the engine's networks");
            return;
        }
    };
    let mut known = driver.networks.lock().await;
    // Networks this host created and has not recorded yet are left alone.
    let unpublished: BTreeSet<String> = known
        .iter()
        .filter(|(_, n)| !n.published)
        .map(|(id, _)| id.clone())
        .collect();
    for network in &local {
        known
            .entry(network.id.clone())
            .and_modify(|n| n.name = Some(network.name.clone()))
            .or_insert_with(|| crate::driver::KnownNetwork {
                name: Some(network.name.clone()),
                subnets: network.subnets.clone(),
                ipv6: network.ipv6,
                published: true,
            });
    }
    drop(known);
    let mut present = BTreeSet::new();
    for network in local.iter().filter(|n| !unpublished.contains(&n.id)) {
        let wanted = records.get(&network.name);
        if wanted.is_some_and(|r| network.matches(r)) {
            present.insert(network.name.clone());
            continue;
        }
        // Removed elsewhere (or replaced by another of the same name).
        match driver.engine.remove_network(&network.id).await {
            Ok(_) => {
                driver.metrics.network_syncs.inc();
                blocked.remove(&network.name);
                tracing::info!(network = %network.name, "removed: the cluster no longer has it");
            }
            Err(e) => {
                present.insert(network.name.clone());
                if blocked.insert(network.name.clone()) {
                    tracing::warn!(network = %network.name, error = %e, "the cluster removed this network, but it cannot be removed here yet; retrying");
                }
            }
        }
    }
    let pending_names: BTreeSet<String> = local
        .iter()
        .filter(|n| unpublished.contains(&n.id))
        .map(|n| n.name.clone())
        .collect();
    for record in records.values() {
        if present.contains(&record.name) || pending_names.contains(&record.name) {
            continue;
        }
        match driver.engine.create_network(record).await {
            Ok(_) => {
                driver.metrics.network_syncs.inc();
                blocked.remove(&record.name);
                tracing::info!(network = %record.name, created_by = %record.created_by, "created from the cluster's record");
            }
            Err(e) => {
                if blocked.insert(record.name.clone()) {
                    tracing::warn!(network = %record.name, error = %e, "cannot create the cluster's network here; retrying");
                }
            }
        }
    }
}
