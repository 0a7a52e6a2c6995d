//! What went away while nobody was looking: containers removed while calico-node was down (or
//! while the engine restarted) leave endpoints, interfaces and addresses that Docker's calls to
//! the plugin would have removed. calico-node compares them with the engine when it starts
//! (before it serves the plugin socket, so no call can race it) and whenever the engine comes
//! back after being away. Containers given networking with `calicoctl container add` and then
//! removed with `docker rm` are looked for every 10 s as well.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use calico_dataplane::netlink::Netlink;
use calico_dataplane::workload::unwire;
use calico_ipam::Ipam;
use calico_workload::Addresses;
use tokio::sync::watch;

use crate::driver::{Driver, ORCHESTRATOR};
use crate::engine::CONTAINER_ORCHESTRATOR;

/// How often the engine is asked whether it is there.
const ENGINE_CHECK: Duration = Duration::from_secs(2);
/// How often endpoints of removed containers are looked for.
const REMOVED_CHECK: Duration = Duration::from_secs(10);

/// At start: endpoints, stray interfaces and leaked addresses.
pub async fn at_start(driver: &Arc<Driver>) {
    match driver.engine.ping().await {
        Ok(()) => endpoints(driver, true).await,
        Err(e) => {
            tracing::warn!(error = %e, "the Docker engine is not answering; reconciling when it does")
        }
    }
}

/// Follows the engine: when it comes back after being away, reconciles endpoints and wakes the
/// network sync.
pub async fn follow_engine(driver: Arc<Driver>, mut shutdown: watch::Receiver<bool>) {
    let mut up = driver.engine.ping().await.is_ok();
    let mut check = tokio::time::interval(ENGINE_CHECK);
    let mut removed = tokio::time::interval(REMOVED_CHECK);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = check.tick() => {}
            _ = removed.tick() => {
                if up {
                    removed_containers(&driver).await;
                }
                continue;
            }
        }
        let now = driver.engine.ping().await.is_ok();
        if now && !up {
            tracing::info!("the Docker engine is back; reconciling with it");
            // Plugin calls may run meanwhile: addresses are not swept now (an address between
            // RequestAddress and Join has no endpoint yet).
            endpoints(&driver, false).await;
            driver.nudge.notify_one();
        }
        up = now;
    }
}

/// Tears down this host's libnetwork endpoints whose Docker endpoint is gone; with
/// `sweep_addresses`, releases addresses the driver holds that nothing uses.
async fn endpoints(driver: &Arc<Driver>, sweep_addresses: bool) {
    // Records first: an endpoint is written at Join, after Docker stored its endpoint, so a
    // record listed now whose Docker endpoint is missing from the later listing is gone.
    let records = match driver.lifecycle.endpoints(ORCHESTRATOR, ORCHESTRATOR).await {
        Ok(records) => records,
        Err(e) => {
            return tracing::warn!(error = %e, "cannot read this host's endpoints to reconcile")
        }
    };
    let local = match driver.engine.calico_networks().await {
        Ok(local) => local,
        Err(e) => {
            return tracing::warn!(error = %e, "cannot read the engine's networks to reconcile")
        }
    };
    let live: BTreeSet<&String> = local.iter().flat_map(|n| &n.endpoints).collect();
    let (stale, kept): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| !live.contains(&r.key.endpoint_id));
    if !stale.is_empty() {
        tracing::info!(
            endpoints = stale.len(),
            "removing endpoints of containers that went away"
        );
        if let Err(e) = driver.lifecycle.teardown(&stale, Addresses::Release).await {
            tracing::warn!(error = %e, "reconcile");
        }
        driver.metrics.reconciled.inc_by(stale.len() as u64);
    }
    let used: BTreeSet<String> = kept
        .iter()
        .filter_map(|r| r.endpoint.as_ref().ok().map(|e| e.name.clone()))
        .collect();
    stray_interfaces(driver, &used).await;
    removed_containers(driver).await;
    if sweep_addresses {
        let docker: BTreeSet<IpAddr> = local
            .iter()
            .flat_map(|n| n.addresses.iter().copied())
            .collect();
        leaked_addresses(driver, &docker).await;
    }
}

/// Endpoints `calicoctl container add` gave Docker containers that were removed since (their
/// interface went with their namespace): the records go, and their addresses back to IPAM. A
/// stopped container keeps its endpoint and address.
async fn removed_containers(driver: &Driver) {
    let filter = calico_datastore::resources::EndpointFilter {
        host: Some(driver.config.host.clone()),
        orchestrator: Some(CONTAINER_ORCHESTRATOR.into()),
        ..Default::default()
    };
    let Ok(records) = driver.lifecycle.resources().endpoints(&filter).await else {
        return;
    };
    let mut by_workload: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for record in records {
        by_workload
            .entry(record.key.workload.clone())
            .or_default()
            .push(record);
    }
    for (id, records) in by_workload {
        // Only an engine that answers "no such container" counts; an error proves nothing.
        if !matches!(driver.engine.container(&id).await, Ok(None)) {
            continue;
        }
        tracing::info!(container = %id, "removing the endpoints of a removed container");
        if let Err(e) = driver
            .lifecycle
            .teardown(&records, Addresses::Release)
            .await
        {
            tracing::warn!(container = %id, error = %e, "reconcile");
        }
        driver.metrics.reconciled.inc_by(records.len() as u64);
    }
}

/// A `cali…` interface whose other end (`tmp…`) is still on the host belongs to no container:
/// Docker moved it back when the container went, or it was never moved in.
async fn stray_interfaces(driver: &Driver, used: &BTreeSet<String>) {
    let Ok(netlink) = Netlink::connect() else {
        return;
    };
    let Ok(links) = netlink.links().await else {
        return;
    };
    for name in links.keys().filter_map(|l| l.strip_prefix("tmp")) {
        let host_end = format!("cali{name}");
        if links.contains_key(&host_end) && !used.contains(&host_end) {
            match unwire(&host_end).await {
                Ok(_) => {
                    driver.metrics.reconciled.inc();
                    tracing::info!(interface = %host_end, "removed an interface no container has");
                }
                Err(e) => {
                    tracing::warn!(interface = %host_end, error = %e, "cannot remove a stray interface")
                }
            }
        }
    }
}

/// Addresses the driver took that neither an endpoint nor Docker has: Docker asked for them and
/// then never created (or never released) their endpoint while calico-node was away.
async fn leaked_addresses(driver: &Driver, docker: &BTreeSet<IpAddr>) {
    let ipam = Ipam::new(driver.lifecycle.resources().shared_store());
    let handle = format!("libnetwork.{}", driver.config.host);
    let held = match ipam.addresses_of(&handle).await {
        Ok(held) => held,
        Err(e) => return tracing::warn!(error = %e, "cannot read the driver's addresses"),
    };
    for ip in held.into_iter().filter(|ip| !docker.contains(ip)) {
        match driver.release_if_ours(ip).await {
            Ok(true) => {
                driver.metrics.reconciled.inc();
                tracing::info!(%ip, "released an address no container has");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(%ip, error = %e.0, "cannot release a leaked address"),
        }
    }
}
