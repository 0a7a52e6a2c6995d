//! Containers that ask for Calico networking with `CALICO_IP` in their environment (seeds 000
//! and 002): each step of their life through the one workload lifecycle.
//!
//! - **created**: the address is taken at once (a given one, or `auto` from this host's
//!   blocks), so a taken address or one outside every pool fails `docker run` before anything
//!   runs (the container is removed again then), and its endpoint is recorded, inactive, under
//!   orchestrator `docker`, workload = the full container id (seed 002's path).
//! - **started**: its interface (`eth0`, a /32 or /128, routes via 169.254.1.1 and fe80::1)
//!   and its endpoint active. Started again, a container gets the same endpoint back: same id,
//!   MAC, addresses and profiles.
//! - **stopped** (died, killed): the interface goes and the endpoint turns inactive; address
//!   and endpoint are kept for its next start.
//! - **removed**: endpoint and addresses go.
//!
//! The proxy calls these as its calls pass; the engine's events call them too (a container
//! started by the engine itself, or through its own socket, or one that died), and at start,
//! and whenever the events stream comes back, everything is compared with the engine. Each step
//! runs under the container's lock and asks the engine first, so they can come in any order
//! and any number of times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use calico_dataplane::netlink::Netlink;
use calico_datastore::resources::EndpointRecord;
use calico_model::endpoint::{EndpointKey, EndpointState};
use calico_model::names::validate_name;
use calico_workload::{AddressRequest, Addresses, Attach, Lifecycle, WorkloadError};
use futures::StreamExt;
use ipnet::IpNet;
use tokio::sync::{watch, Mutex, OwnedMutexGuard};

use crate::engine::{ContainerInfo, Engine, CONTAINER_ORCHESTRATOR};

/// The variable that asks for an address: an IP, a pool's CIDR, `auto` (or `ipv4`), `ipv6`.
pub const ENV_IP: &str = "CALICO_IP";
/// The variable naming the endpoint's profile (created if missing).
pub const ENV_PROFILE: &str = "CALICO_PROFILE";
/// The container's interface: its only one, since it has no other network.
pub const INTERFACE: &str = "eth0";
/// How long to wait before asking for the engine's events again.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// What a container's environment asks of Calico.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub request: AddressRequest,
    pub profile: Option<String>,
}

/// What `Env` asks for: None without `CALICO_IP`; the sentence to show the user when what it
/// asks for is malformed. The last of a repeated variable counts, as in the container.
pub fn wanted(env: &[String]) -> Result<Option<Wanted>, String> {
    let value = |name: &str| {
        env.iter()
            .rev()
            .find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
    };
    let Some(ip) = value(ENV_IP) else {
        return Ok(None);
    };
    let request = AddressRequest::parse(ip.trim()).map_err(|_| {
        format!(
            "{ENV_IP}={ip} is not something Calico can give: use an IP address in a Calico \
             pool, a pool's CIDR, auto (or ipv4), or ipv6"
        )
    })?;
    let profile = match value(ENV_PROFILE).map(str::trim) {
        None | Some("") => None,
        Some(name) => {
            validate_name("profile name", name).map_err(|e| format!("{ENV_PROFILE}: {e}"))?;
            Some(name.to_string())
        }
    };
    Ok(Some(Wanted { request, profile }))
}

/// The Calico side of proxied containers on one host.
pub struct Containers {
    lifecycle: Lifecycle,
    engine: Engine,
    /// One lock per container (by full id), held through each step.
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Told when an endpoint that stayed active got a new interface (the agent checks the
    /// kernel then: nothing in the datastore changed for it to notice).
    rewired: Option<Arc<tokio::sync::Notify>>,
}

impl std::fmt::Debug for Containers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containers")
            .field("lifecycle", &self.lifecycle)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// What a Calico container has, for `docker inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Networking {
    pub nets: Vec<IpNet>,
    pub mac: Option<String>,
}

impl Containers {
    pub fn new(lifecycle: Lifecycle, engine: Engine) -> Containers {
        Containers {
            lifecycle,
            engine,
            locks: std::sync::Mutex::new(HashMap::new()),
            rewired: None,
        }
    }

    /// Who to tell when an active endpoint got a new interface.
    pub fn tell_when_rewired(&mut self, notify: Arc<tokio::sync::Notify>) {
        self.rewired = Some(notify);
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .expect("the lock table is never poisoned")
            .entry(id.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    fn forget(&self, id: &str) {
        self.locks
            .lock()
            .expect("the lock table is never poisoned")
            .remove(id);
    }

    async fn records(&self, id: &str) -> Result<Vec<EndpointRecord>, WorkloadError> {
        self.lifecycle.endpoints(CONTAINER_ORCHESTRATOR, id).await
    }

    /// The engine created a container that asks for an address: take it now, and record its
    /// endpoint, inactive until the container runs (seed 002: "after a container has been
    /// created, a node will appear in etcd"). Its profile is created if missing.
    pub async fn created(
        &self,
        id: &str,
        wanted: &Wanted,
    ) -> Result<EndpointRecord, WorkloadError> {
        let _held = self.lock(id).await;
        self.reserve(id, wanted).await
    }

    async fn reserve(&self, id: &str, wanted: &Wanted) -> Result<EndpointRecord, WorkloadError> {
        let owner = self.lifecycle.owner(id);
        let net = self.lifecycle.allocate(&wanted.request, &owner).await?;
        let recorded = async {
            let mut profiles = Vec::new();
            if let Some(profile) = &wanted.profile {
                if self.lifecycle.resources().create_profile(profile).await? {
                    tracing::info!(%profile, "created the profile a container asked for");
                }
                profiles.push(profile.clone());
            }
            let endpoint_id = calico_workload::new_endpoint_id();
            let key = EndpointKey {
                host: self.lifecycle.host().to_string(),
                orchestrator: CONTAINER_ORCHESTRATOR.into(),
                workload: id.to_string(),
                endpoint_id: endpoint_id.clone(),
            };
            let mut endpoint = self.lifecycle.endpoint(&endpoint_id, &[net], &profiles);
            endpoint.state = EndpointState::Inactive;
            self.lifecycle.create_endpoint(&key, &endpoint).await?;
            Ok::<_, WorkloadError>(EndpointRecord {
                key,
                endpoint: Ok(endpoint),
            })
        }
        .await;
        if recorded.is_err() {
            if let Err(e) = self.lifecycle.release(&[net]).await {
                tracing::warn!(%net, error = %e, "cannot give back an address");
            }
        }
        recorded
    }

    /// A container may have started: if it is ours and runs, it gets its interface and an
    /// active endpoint (unless it has them). None if it is not a Calico container.
    pub async fn started(&self, id_or_name: &str) -> Result<Option<String>, String> {
        let Some(info) = self.calico_container(id_or_name).await? else {
            return Ok(None);
        };
        let _held = self.lock(&info.id).await;
        // Asked again under the lock: the container may have stopped or started since.
        let Some(info) = self.calico_container(&info.id).await? else {
            return Ok(None);
        };
        if !info.running {
            return Ok(Some(info.id));
        }
        if info.network_mode != "none" {
            tracing::warn!(container = %info.name, mode = %info.network_mode,
                "a container with {ENV_IP} was created around the proxy with a network of its own; leaving it alone");
            return Ok(None);
        }
        if let Err(e) = self.wire(&info).await {
            // A container that ended meanwhile took its namespace with it: nothing to wire.
            if matches!(self.calico_container(&info.id).await, Ok(Some(now)) if !now.running) {
                return Ok(Some(info.id));
            }
            return Err(e.to_string());
        }
        Ok(Some(info.id))
    }

    async fn wire(&self, info: &ContainerInfo) -> Result<(), WorkloadError> {
        let records = self.records(&info.id).await?;
        let record = match records.into_iter().find(|r| r.endpoint.is_ok()) {
            Some(record) => record,
            // Created around the proxy (on the engine's own socket): reserved now.
            None => {
                let wanted = wanted(&info.env)
                    .map_err(WorkloadError::Refused)?
                    .ok_or_else(|| WorkloadError::Refused(format!("{ENV_IP} is gone")))?;
                self.reserve(&info.id, &wanted).await?
            }
        };
        let was_active = matches!(&record.endpoint, Ok(e) if e.state == EndpointState::Active);
        // Asked inside the container's namespace: after a restart the old veth's host end can
        // outlive the old namespace for a moment, and must not pass for wired.
        if was_active && has_interface(info).await {
            return Ok(());
        }
        let attach = Attach {
            orchestrator: CONTAINER_ORCHESTRATOR.into(),
            workload_id: info.id.clone(),
            netns: info.netns(),
            interface: INTERFACE.into(),
            nets: Vec::new(),
            profiles: Vec::new(),
        };
        let added = self.lifecycle.attach(&attach, Some(&record)).await?;
        if let (true, Some(rewired)) = (was_active, &self.rewired) {
            rewired.notify_one();
        }
        tracing::info!(container = %info.name, endpoint = %added.key.endpoint_id,
            nets = ?added.endpoint.nets().collect::<Vec<_>>(), "container networked");
        Ok(())
    }

    /// A container may have stopped: if it is ours and does not run, its interface goes and
    /// its endpoint turns inactive.
    pub async fn stopped(&self, id: &str) {
        let Ok(Some(info)) = self.calico_container(id).await else {
            return;
        };
        let _held = self.lock(&info.id).await;
        if matches!(self.calico_container(&info.id).await, Ok(Some(now)) if now.running) {
            return;
        }
        let records = match self.records(&info.id).await {
            Ok(records) => records,
            Err(e) => {
                return tracing::warn!(container = %info.name, error = %e, "cannot read its endpoints")
            }
        };
        match self.lifecycle.detach(&records).await {
            Ok(()) if !records.is_empty() => {
                tracing::info!(container = %info.name, "container stopped; its endpoint is inactive until it starts again")
            }
            Ok(()) => {}
            Err(e) => tracing::warn!(container = %info.name, error = %e, "stopping its networking"),
        }
    }

    /// A container may be gone: if the engine has no such container, its endpoints and the
    /// addresses it held go (for containers of `calicoctl container add` too).
    pub async fn removed(&self, id: &str) {
        let _held = self.lock(id).await;
        // Only an engine that answers "no such container" counts; an error proves nothing.
        if !matches!(self.engine.container(id).await, Ok(None)) {
            return;
        }
        let mut failed = Vec::new();
        match self.records(id).await {
            Ok(records) => {
                if let Err(e) = self.lifecycle.teardown(&records, Addresses::Release).await {
                    failed.push(e.to_string());
                }
            }
            Err(e) => failed.push(e.to_string()),
        }
        match self.lifecycle.held(id).await {
            Ok(nets) if !nets.is_empty() => {
                if let Err(e) = self.lifecycle.release(&nets).await {
                    failed.push(e.to_string());
                } else {
                    tracing::info!(container = %id, ?nets, "container removed; its addresses are free");
                }
            }
            Ok(_) => {}
            Err(e) => failed.push(e.to_string()),
        }
        if failed.is_empty() {
            self.forget(id);
        } else {
            tracing::warn!(container = %id, errors = ?failed, "removing a container's networking");
        }
    }

    /// What a container has (for `docker inspect`): its endpoint's addresses and MAC.
    pub async fn networking(&self, id: &str) -> Result<Networking, WorkloadError> {
        let records = self.records(id).await?;
        Ok(match records.first().map(|r| &r.endpoint) {
            Some(Ok(endpoint)) => Networking {
                nets: endpoint.nets().copied().collect(),
                mac: endpoint.mac.clone(),
            },
            _ => Networking {
                nets: Vec::new(),
                mac: None,
            },
        })
    }

    /// The container if it asks for Calico networking (`CALICO_IP`); None if it does not or
    /// the engine has no such container.
    async fn calico_container(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, String> {
        let info = self
            .engine
            .container(id_or_name)
            .await
            .map_err(|e| e.to_string())?;
        Ok(info.filter(|info| matches!(wanted(&info.env), Ok(Some(_)))))
    }

    /// Compares everything with the engine: Calico containers that run get networking, those
    /// that do not lose their interface, and what removed containers left goes.
    pub async fn reconcile(&self) {
        let ids = match self.engine.container_ids().await {
            Ok(ids) => ids,
            Err(e) => return tracing::warn!(error = %e, "cannot list containers to reconcile"),
        };
        for id in &ids {
            match self.started(id).await {
                Ok(Some(_)) => self.stopped(id).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(container = %id, error = %e, "cannot network a container"),
            }
        }
        for id in self.gone_workloads(&ids).await {
            self.removed(&id).await;
        }
    }

    /// Workload ids of this host's Docker endpoints and address handles whose container is
    /// not among `ids`.
    async fn gone_workloads(&self, ids: &[String]) -> Vec<String> {
        let filter = calico_datastore::resources::EndpointFilter {
            host: Some(self.lifecycle.host().to_string()),
            orchestrator: Some(CONTAINER_ORCHESTRATOR.into()),
            ..Default::default()
        };
        let mut gone: Vec<String> = match self.lifecycle.resources().endpoints(&filter).await {
            Ok(records) => records.into_iter().map(|r| r.key.workload).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read endpoints to reconcile");
                Vec::new()
            }
        };
        let prefix = calico_model::keys::ipam_handle(&format!("{}.", self.lifecycle.host()));
        if let Ok(listed) = self.lifecycle.resources().store().list(&prefix).await {
            // Only handles named after a container id: others are namespaces' (calicoctl).
            gone.extend(
                listed
                    .kvs
                    .iter()
                    .filter_map(|kv| kv.key.strip_prefix(&prefix))
                    .filter(|id| is_container_id(id))
                    .map(String::from),
            );
        }
        gone.sort();
        gone.dedup();
        gone.retain(|id| !ids.contains(id));
        gone
    }

    /// Follows the engine's container events until `shutdown`; reconciles each time the
    /// events stream (re)starts, so nothing that happened while it was away is missed.
    pub async fn follow(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self.engine.container_events().await {
                Ok(events) => {
                    self.reconcile().await;
                    let mut events = std::pin::pin!(events);
                    loop {
                        let event = tokio::select! {
                            _ = shutdown.changed() => return,
                            event = events.next() => event,
                        };
                        match event {
                            Some(Ok((action, id))) => self.on_event(&action, &id).await,
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "the engine's events stream broke");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot follow the engine's events yet"),
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(RESUBSCRIBE) => {}
            }
        }
    }

    async fn on_event(&self, action: &str, id: &str) {
        match action {
            "start" => {
                if let Err(e) = self.started(id).await {
                    tracing::warn!(container = %id, error = %e, "cannot network a container");
                }
            }
            "die" => self.stopped(id).await,
            "destroy" => self.removed(id).await,
            _ => {}
        }
    }
}

/// Whether the container's namespace (as it is now) has our interface.
async fn has_interface(info: &ContainerInfo) -> bool {
    let netns = info.netns();
    tokio::task::spawn_blocking(move || {
        calico_dataplane::netns::run_in(&netns, || async {
            match Netlink::connect() {
                Ok(netlink) => matches!(netlink.link(INTERFACE).await, Ok(Some(_))),
                Err(_) => false,
            }
        })
    })
    .await
    .is_ok_and(|inside| inside.unwrap_or(false))
}

/// A full Docker container id: 64 lowercase hex characters.
fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[&str]) -> Vec<String> {
        vars.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn the_environment_asks_for_an_address_and_a_profile() {
        assert_eq!(wanted(&env(&["PATH=/bin", "TERM=xterm"])), Ok(None));
        assert_eq!(
            wanted(&env(&["CALICO_IP=192.168.1.1"])),
            Ok(Some(Wanted {
                request: AddressRequest::Explicit("192.168.1.1".parse().unwrap()),
                profile: None,
            }))
        );
        assert_eq!(
            wanted(&env(&["CALICO_IP=auto", "CALICO_PROFILE=PROF_A_C_E"])),
            Ok(Some(Wanted {
                request: AddressRequest::Auto { v4: true },
                profile: Some("PROF_A_C_E".into()),
            }))
        );
        // The last of a repeated variable counts; an empty profile is none.
        assert_eq!(
            wanted(&env(&[
                "CALICO_IP=auto",
                "CALICO_IP=ipv6",
                "CALICO_PROFILE="
            ])),
            Ok(Some(Wanted {
                request: AddressRequest::Auto { v4: false },
                profile: None,
            }))
        );
        // A variable that only starts with the name is another one.
        assert_eq!(wanted(&env(&["CALICO_IPX=1.2.3.4"])), Ok(None));
    }

    #[test]
    fn malformed_requests_name_what_is_wrong() {
        let bad = wanted(&env(&["CALICO_IP=192.168.1"])).unwrap_err();
        assert!(bad.contains("CALICO_IP=192.168.1"), "{bad}");
        assert!(bad.contains("auto"), "{bad}");
        let bad = wanted(&env(&["CALICO_IP=auto", "CALICO_PROFILE=a/b"])).unwrap_err();
        assert!(bad.contains("CALICO_PROFILE"), "{bad}");
    }

    #[test]
    fn container_ids_are_64_hex_characters() {
        assert!(is_container_id(&"ab12".repeat(16)));
        assert!(!is_container_id("ab12"));
        assert!(!is_container_id(&"AB12".repeat(16)));
        assert!(!is_container_id(&"w-1x".repeat(16)));
    }
}
