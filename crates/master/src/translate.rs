//! The master's work, kept live: each pass reads the group keyspace, this model's endpoints and
//! the hosts' BGP addresses, and writes what differs from what they call for:
//!
//! - a profile per group (named and tagged by the group's id; see [`crate::groups`]), and the
//!   profiles of groups that went are deleted (`/calico/master/group/<id>` records which
//!   profiles the master made, so it never touches one it did not);
//! - each endpoint's profile list: the profiles it had that are not groups', then its groups'
//!   (closed groups first, so a group that cannot be read denies before another allows);
//! - the legacy paths of seed 002: `/calico/host/<hostname>/bird_ip` and, for Docker
//!   containers, `/calico/host/<hostname>/workload/docker/<container-id>/endpoint/<endpoint-id>`
//!   (the endpoint's JSON), so an orchestrator finds a container's endpoint id as the seed says.
//!
//! A pass runs after every burst of changes under the group keyspace or the hosts, and every
//! 10 s to retry what failed. Each pass reads everything it needs, so nothing it missed stays
//! missed (the cost is one listing of groups, endpoints and legacy keys per pass).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calico_datastore::resources::{EndpointFilter, Resources};
use calico_datastore::{Datastore, Op, Txn, MAX_TXN_OPS};
use calico_model::keys;
use tokio::sync::watch;

use crate::groups::{self, Group, GROUPS_PREFIX};

/// The profiles the master made, one key per group id.
pub const MADE_PREFIX: &str = "/calico/master/group/";
/// Seed 002's host paths.
pub const LEGACY_HOSTS_PREFIX: &str = "/calico/host/";
/// How long a burst of changes is let settle before a pass.
const SETTLE: Duration = Duration::from_millis(50);
/// A pass at least this often, to retry what failed.
const RETRY: Duration = Duration::from_secs(10);

/// What one pass changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    pub profiles_written: usize,
    pub profiles_removed: usize,
    pub endpoints_updated: usize,
    pub legacy_written: usize,
    pub legacy_removed: usize,
}

pub struct Translator {
    store: Arc<dyn Datastore>,
    resources: Resources,
    /// Problems already logged, so each is logged once while it lasts.
    logged: Mutex<BTreeSet<(String, String)>>,
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator").finish_non_exhaustive()
    }
}

impl Translator {
    pub fn new(store: Arc<dyn Datastore>) -> Translator {
        Translator {
            resources: Resources::new(store.clone()),
            store,
            logged: Mutex::new(BTreeSet::new()),
        }
    }

    /// Passes until `shutdown`: one now, then after each burst of changes, and every 10 s.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let mut changes = match self
                .store
                .watch(&[GROUPS_PREFIX, keys::HOSTS_PREFIX], 0)
                .await
            {
                Ok(changes) => changes,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the group keyspace; trying again");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            self.pass_logged().await;
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                    change = changes.next() => match change {
                        Some(Ok(_)) => {
                            tokio::time::sleep(SETTLE).await;
                            while let Some(Ok(_)) = changes.try_next() {}
                        }
                        Some(Err(e)) => {
                            tracing::info!(error = %e, "the watch ended; listing again");
                            break;
                        }
                        None => break,
                    },
                }
                self.pass_logged().await;
            }
        }
    }

    async fn pass_logged(&self) {
        match self.pass().await {
            Ok(pass) if pass != Pass::default() => tracing::info!(?pass, "translated"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "a translation pass failed; retrying"),
        }
    }

    /// One pass: everything read, what differs written.
    pub async fn pass(&self) -> anyhow::Result<Pass> {
        let mut pass = Pass::default();
        let listed = self.store.list(GROUPS_PREFIX).await?;
        let groups = groups::parse(
            listed
                .kvs
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.as_str())),
        );
        self.log_problems(&groups);
        let made: BTreeSet<String> = self
            .store
            .list(MADE_PREFIX)
            .await?
            .kvs
            .into_iter()
            .filter_map(|kv| kv.key.strip_prefix(MADE_PREFIX).map(String::from))
            .collect();
        self.profiles(&groups, &made, &mut pass).await?;
        let group_ids: BTreeSet<&str> = made
            .iter()
            .map(String::as_str)
            .chain(groups.keys().map(String::as_str))
            .collect();
        self.memberships(&groups, &group_ids, &mut pass).await?;
        self.legacy(&mut pass).await?;
        Ok(pass)
    }

    fn log_problems(&self, groups: &BTreeMap<String, Group>) {
        let now: BTreeSet<(String, String)> = groups
            .values()
            .flat_map(|g| g.problems.iter().cloned())
            .collect();
        let mut logged = self.logged.lock().expect("never poisoned");
        for (key, why) in now.difference(&logged) {
            tracing::warn!(%key, %why, "a group value cannot be read: the group is closed (its profile denies everything) until it is fixed");
        }
        *logged = now;
    }

    async fn profiles(
        &self,
        groups: &BTreeMap<String, Group>,
        made: &BTreeSet<String>,
        pass: &mut Pass,
    ) -> anyhow::Result<()> {
        let existing: HashMap<String, String> = self
            .store
            .list(keys::PROFILES_PREFIX)
            .await?
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        let mut ops = Vec::new();
        for group in groups.values() {
            // An id that is no profile name: closed, and nothing can be written for it.
            if calico_model::names::validate_name("group id", &group.id).is_err() {
                continue;
            }
            let tags = serde_json::to_string(&group.tags()).expect("tags serialize");
            let rules = group.rules().to_json();
            let mut changed = false;
            for (key, value) in [
                (keys::profile_tags(&group.id), tags),
                (keys::profile_rules(&group.id), rules),
            ] {
                if existing.get(&key) != Some(&value) {
                    ops.push(Op::put(key, value));
                    changed = true;
                }
            }
            if !made.contains(&group.id) {
                ops.push(Op::put(format!("{MADE_PREFIX}{}", group.id), ""));
            }
            pass.profiles_written += usize::from(changed);
        }
        for gone in made.iter().filter(|id| !groups.contains_key(*id)) {
            ops.push(Op::DeletePrefix {
                prefix: keys::profile_prefix(gone),
            });
            ops.push(Op::delete(format!("{MADE_PREFIX}{gone}")));
            pass.profiles_removed += 1;
        }
        self.commit(ops).await
    }

    async fn memberships(
        &self,
        groups: &BTreeMap<String, Group>,
        group_ids: &BTreeSet<&str>,
        pass: &mut Pass,
    ) -> anyhow::Result<()> {
        let mut member_of: HashMap<&str, Vec<&Group>> = HashMap::new();
        for group in groups.values() {
            for member in &group.members {
                member_of.entry(member.as_str()).or_default().push(group);
            }
        }
        for list in member_of.values_mut() {
            list.sort_by_key(|g| (!g.is_closed(), g.id.clone()));
        }
        let desired = |current: &[String], endpoint_id: &str| -> Vec<String> {
            current
                .iter()
                .filter(|p| !group_ids.contains(p.as_str()))
                .cloned()
                .chain(
                    member_of
                        .get(endpoint_id)
                        .into_iter()
                        .flatten()
                        .map(|g| g.id.clone()),
                )
                .collect()
        };
        let records = self.resources.endpoints(&EndpointFilter::default()).await?;
        for record in records {
            let Ok(endpoint) = &record.endpoint else {
                continue;
            };
            let id = record.key.endpoint_id.clone();
            if desired(&endpoint.profile_ids, &id) == endpoint.profile_ids {
                continue;
            }
            let updated = self
                .resources
                .update_endpoint(&record.key, |stored| {
                    let wanted = desired(&stored.profile_ids, &id);
                    let changed = wanted != stored.profile_ids;
                    stored.profile_ids = wanted;
                    Ok(changed)
                })
                .await;
            match updated {
                Ok(true) => pass.endpoints_updated += 1,
                Ok(false) => {}
                // Gone meanwhile, or its host rewrote it: the next pass sees it as it is.
                Err(e) => {
                    tracing::info!(endpoint = %id, error = %e, "cannot update an endpoint's groups yet")
                }
            }
        }
        Ok(())
    }

    async fn legacy(&self, pass: &mut Pass) -> anyhow::Result<()> {
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        for kv in self.store.list(keys::HOSTS_PREFIX).await?.kvs {
            let Some(rest) = kv.key.strip_prefix(keys::HOSTS_PREFIX) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [host, "bird_ip"] => {
                    wanted.insert(format!("{LEGACY_HOSTS_PREFIX}{host}/bird_ip"), kv.value);
                }
                [host, "workload", "docker", container, "endpoint", endpoint] => {
                    wanted.insert(
                        format!("{LEGACY_HOSTS_PREFIX}{host}/workload/docker/{container}/endpoint/{endpoint}"),
                        kv.value,
                    );
                }
                _ => {}
            }
        }
        let mut ops = Vec::new();
        let existing = self.store.list(LEGACY_HOSTS_PREFIX).await?.kvs;
        let existing: HashMap<String, String> =
            existing.into_iter().map(|kv| (kv.key, kv.value)).collect();
        for key in existing.keys().filter(|k| !wanted.contains_key(*k)) {
            ops.push(Op::delete(key.clone()));
            pass.legacy_removed += 1;
        }
        for (key, value) in wanted {
            if existing.get(&key) != Some(&value) {
                ops.push(Op::put(key, value));
                pass.legacy_written += 1;
            }
        }
        self.commit(ops).await
    }

    /// Writes ops in transactions etcd takes (at most [`MAX_TXN_OPS`] each).
    async fn commit(&self, ops: Vec<Op>) -> anyhow::Result<()> {
        for chunk in ops.chunks(MAX_TXN_OPS) {
            self.store
                .txn(Txn {
                    compares: vec![],
                    ops: chunk.to_vec(),
                })
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_datastore::MemoryStore;
    use calico_model::endpoint::{Endpoint, EndpointKey, EndpointState};

    const G: &str = "a935e8e1-008a-4e05-af4b-4b5701df417e";
    const H: &str = "0b0c7a6c-2b2f-4d53-9a3e-6f0c6d8f1a11";

    fn key(host: &str, container: &str, id: &str) -> EndpointKey {
        EndpointKey {
            host: host.into(),
            orchestrator: "docker".into(),
            workload: container.into(),
            endpoint_id: id.into(),
        }
    }

    async fn endpoint(store: &Arc<dyn Datastore>, key: &EndpointKey, profiles: &[&str]) {
        let endpoint = Endpoint {
            state: EndpointState::Active,
            name: format!("cali{}", &key.endpoint_id[..4]),
            mac: None,
            profile_ids: profiles.iter().map(|p| p.to_string()).collect(),
            profile_id: None,
            ipv4_nets: vec!["192.168.1.1/32".parse().unwrap()],
            ipv6_nets: vec![],
            ipv4_gateway: None,
            ipv6_gateway: None,
            labels: Default::default(),
        };
        store
            .put(&keys::endpoint(key), &endpoint.to_json())
            .await
            .unwrap();
    }

    async fn profiles_of(store: &Arc<dyn Datastore>, key: &EndpointKey) -> Vec<String> {
        Resources::new(store.clone())
            .get_endpoint(key)
            .await
            .unwrap()
            .profile_ids
    }

    async fn put(store: &Arc<dyn Datastore>, group: &str, field: &str, value: &str) {
        store
            .put(&format!("{GROUPS_PREFIX}{group}/{field}"), value)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn groups_become_profiles_and_memberships_and_go_again() {
        let store: Arc<dyn Datastore> = Arc::new(MemoryStore::new());
        let (e1, e2) = (key("h1", "c1", "e1e1e1"), key("h2", "c2", "e2e2e2"));
        endpoint(&store, &e1, &["user"]).await;
        endpoint(&store, &e2, &[]).await;
        store
            .put(&keys::host_bird_ip("h1"), "172.17.8.101")
            .await
            .unwrap();
        put(&store, G, "name", "web").await;
        put(&store, G, "member/e1e1e1", "").await;
        put(&store, G, "rule/inbound_default", "deny").await;
        put(
            &store,
            G,
            "rule/inbound/1",
            &format!(r#"{{"group": "{H}", "cidr": null, "protocol": null, "port": null}}"#),
        )
        .await;
        put(&store, H, "member/e2e2e2", "").await;
        let translator = Translator::new(store.clone());

        let pass = translator.pass().await.unwrap();
        assert_eq!(pass.profiles_written, 2);
        assert_eq!(pass.endpoints_updated, 2);
        let web = Resources::new(store.clone()).get_profile(G).await.unwrap();
        assert_eq!(web.tags, [G]);
        assert_eq!(
            web.rules.inbound_rules[0].to_string(),
            format!("allow from tag {H}")
        );
        assert!(
            web.rules.outbound_rules.is_empty(),
            "what no rule allows is denied"
        );
        assert_eq!(profiles_of(&store, &e1).await, ["user", G]);
        assert_eq!(profiles_of(&store, &e2).await, [H]);
        // Seed 002's paths.
        for legacy in [
            "/calico/host/h1/bird_ip".to_string(),
            "/calico/host/h1/workload/docker/c1/endpoint/e1e1e1".to_string(),
            "/calico/host/h2/workload/docker/c2/endpoint/e2e2e2".to_string(),
        ] {
            assert!(store.get(&legacy).await.unwrap().is_some(), "{legacy}");
        }
        // Nothing to do a second time.
        assert_eq!(translator.pass().await.unwrap(), Pass::default());

        // A value that cannot be read closes H only; H's members deny first.
        put(
            &store,
            H,
            "rule/outbound/1",
            r#"{"protocol": "tcp", "port": "eighty"}"#,
        )
        .await;
        translator.pass().await.unwrap();
        let closed = Resources::new(store.clone()).get_profile(H).await.unwrap();
        assert_eq!(closed.rules.inbound_rules[0].to_string(), "deny");
        assert_eq!(profiles_of(&store, &e2).await, [H]);
        let web = Resources::new(store.clone()).get_profile(G).await.unwrap();
        assert_eq!(web.rules.inbound_rules.len(), 1, "G is as it was");

        // A member in two groups, a closed one first.
        put(&store, H, "member/e1e1e1", "").await;
        translator.pass().await.unwrap();
        assert_eq!(profiles_of(&store, &e1).await, ["user", H, G]);

        // The group's directory deleted: what it made goes, the rest stays.
        store
            .delete_prefix(&format!("{GROUPS_PREFIX}{G}/"))
            .await
            .unwrap();
        let pass = translator.pass().await.unwrap();
        assert_eq!(pass.profiles_removed, 1);
        assert!(!Resources::new(store.clone())
            .profile_exists(G)
            .await
            .unwrap());
        assert_eq!(profiles_of(&store, &e1).await, ["user", H]);
        assert!(store
            .get(&format!("{MADE_PREFIX}{G}"))
            .await
            .unwrap()
            .is_none());
        // A profile the master did not make is never touched.
        assert!(store
            .list(&keys::profile_prefix("user"))
            .await
            .unwrap()
            .kvs
            .is_empty());

        // An endpoint gone: its legacy path goes too.
        store.delete(&keys::endpoint(&e2)).await.unwrap();
        translator.pass().await.unwrap();
        assert!(store
            .get("/calico/host/h2/workload/docker/c2/endpoint/e2e2e2")
            .await
            .unwrap()
            .is_none());
    }
}
