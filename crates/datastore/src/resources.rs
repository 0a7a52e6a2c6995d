//! Calico's resources read and written through any [`Datastore`]: the typed layer that
//! `calicoctl` (and later the Docker plugin) use. Every edit of an existing value is a
//! compare-and-swap through [`crate::update`], so concurrent edits never lose each other.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use calico_model::bgp::{AsNumber, BgpPeer, NodeMesh, DEFAULT_AS};
use calico_model::endpoint::{Endpoint, EndpointKey};
use calico_model::keys::{self, V1Key};
use calico_model::pool::{overlaps, validate_pool_cidr, IpPool};
use calico_model::profile::{tags_from_json, Profile, ProfileRules};
use calico_model::ModelError;
use ipnet::IpNet;

use crate::error::DatastoreError;
use crate::store::{Compare, Datastore, Op, Revision, Txn};
use crate::update::{update, Change, UpdateError};

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    #[error(transparent)]
    Invalid(#[from] ModelError),
    /// The full sentence to show the user.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored; the full sentence to show the user.
    #[error("{0}")]
    Refused(String),
    #[error("the value stored at {key} is not valid ({reason}); fix or delete that key")]
    Corrupt { key: String, reason: String },
    #[error("gave up after many attempts: {0} kept changing under us")]
    Contended(String),
}

pub type Result<T, E = ResourceError> = std::result::Result<T, E>;

fn from_update(key: &str, error: UpdateError<ResourceError>) -> ResourceError {
    match error {
        UpdateError::Datastore(e) => e.into(),
        UpdateError::Rejected(e) => e,
        UpdateError::Contended(_) => ResourceError::Contended(key.to_string()),
    }
}

fn corrupt(key: &str, error: ModelError) -> ResourceError {
    ResourceError::Corrupt {
        key: key.to_string(),
        reason: error.to_string(),
    }
}

/// A stored endpoint; `endpoint` is an error when its JSON is not valid.
#[derive(Debug, Clone)]
pub struct EndpointRecord {
    pub key: EndpointKey,
    pub endpoint: Result<Endpoint, ModelError>,
}

/// Which endpoints `endpoint show` and `endpoint <ID> …` look at.
#[derive(Debug, Clone, Default)]
pub struct EndpointFilter {
    pub host: Option<String>,
    pub orchestrator: Option<String>,
    pub workload: Option<String>,
    pub endpoint_id: Option<String>,
}

impl EndpointFilter {
    fn matches(&self, key: &EndpointKey) -> bool {
        let ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        ok(&self.host, &key.host)
            && ok(&self.orchestrator, &key.orchestrator)
            && ok(&self.workload, &key.workload)
            && ok(&self.endpoint_id, &key.endpoint_id)
    }
}

/// Where a BGP peer is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerScope {
    Global,
    Host(String),
}

impl PeerScope {
    fn key(&self, ip: &IpAddr) -> String {
        match self {
            PeerScope::Global => keys::bgp_global_peer(ip),
            PeerScope::Host(host) => keys::bgp_host_peer(host, ip),
        }
    }

    fn prefix(&self, v4: bool) -> String {
        match self {
            PeerScope::Global => keys::bgp_global_peers_prefix(v4),
            PeerScope::Host(host) => keys::bgp_host_peers_prefix(host, v4),
        }
    }
}

#[derive(Clone)]
pub struct Resources {
    store: Arc<dyn Datastore>,
}

impl Resources {
    pub fn new(store: Arc<dyn Datastore>) -> Self {
        Resources { store }
    }

    pub fn store(&self) -> &dyn Datastore {
        self.store.as_ref()
    }

    /// The same store, to share with another component (IPAM).
    pub fn shared_store(&self) -> Arc<dyn Datastore> {
        self.store.clone()
    }

    // ---- profiles ----

    pub async fn profile_names(&self) -> Result<Vec<String>> {
        let listing = self.store.list(keys::PROFILES_PREFIX).await?;
        let names: BTreeSet<String> = listing
            .kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(keys::PROFILES_PREFIX)?.split_once('/'))
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(names.into_iter().collect())
    }

    pub async fn profile_exists(&self, name: &str) -> Result<bool> {
        Ok(!self
            .store
            .list(&keys::profile_prefix(name))
            .await?
            .kvs
            .is_empty())
    }

    async fn require_profile(&self, name: &str) -> Result<()> {
        if self.profile_exists(name).await? {
            Ok(())
        } else {
            Err(ResourceError::NotFound(format!(
                "Profile {name} not found."
            )))
        }
    }

    pub async fn get_profile(&self, name: &str) -> Result<Profile> {
        self.require_profile(name).await?;
        let tags_key = keys::profile_tags(name);
        let rules_key = keys::profile_rules(name);
        let tags = match self.store.get(&tags_key).await? {
            Some(kv) => tags_from_json(&kv.value).map_err(|e| corrupt(&tags_key, e))?,
            None => Vec::new(),
        };
        let rules = match self.store.get(&rules_key).await? {
            Some(kv) => ProfileRules::from_json(&kv.value).map_err(|e| corrupt(&rules_key, e))?,
            None => ProfileRules::default(),
        };
        Ok(Profile {
            name: name.to_string(),
            tags,
            rules,
        })
    }

    /// Creates a profile with the default tags and rules; `false` if it already existed.
    pub async fn create_profile(&self, name: &str) -> Result<bool> {
        let profile = Profile::new(name)?;
        let (tags_key, rules_key) = (keys::profile_tags(name), keys::profile_rules(name));
        let txn = Txn {
            compares: vec![
                Compare::Absent(tags_key.clone()),
                Compare::Absent(rules_key.clone()),
            ],
            ops: vec![
                Op::put(
                    tags_key,
                    serde_json::to_string(&profile.tags).expect("tags serialize"),
                ),
                Op::put(rules_key, profile.rules.to_json()),
            ],
        };
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Deletes the profile's keys; `false` if there was no such profile.
    pub async fn delete_profile(&self, name: &str) -> Result<bool> {
        Ok(self
            .store
            .delete_prefix(&keys::profile_prefix(name))
            .await?
            > 0)
    }

    /// Edits the tag list with compare-and-swap; the edit may run more than once.
    pub async fn update_tags(
        &self,
        name: &str,
        mut edit: impl FnMut(&mut Vec<String>) -> Result<bool>,
    ) -> Result<bool> {
        self.require_profile(name).await?;
        let key = keys::profile_tags(name);
        let change = update(self.store(), &key, |current| {
            let mut tags = match current {
                Some(json) => tags_from_json(json).map_err(|e| corrupt(&key, e))?,
                None => Vec::new(),
            };
            Ok(match edit(&mut tags)? {
                true => Change::Put(serde_json::to_string(&tags).expect("tags serialize")),
                false => Change::Keep,
            })
        })
        .await
        .map_err(|e| from_update(&key, e))?;
        Ok(change != Change::Keep)
    }

    /// Edits the rules with compare-and-swap; `edit` returns whether it changed anything.
    pub async fn update_rules(
        &self,
        name: &str,
        mut edit: impl FnMut(&mut ProfileRules) -> Result<bool>,
    ) -> Result<bool> {
        self.require_profile(name).await?;
        let key = keys::profile_rules(name);
        let change = update(self.store(), &key, |current| {
            let mut rules = match current {
                Some(json) => ProfileRules::from_json(json).map_err(|e| corrupt(&key, e))?,
                None => ProfileRules::default(),
            };
            if !edit(&mut rules)? {
                return Ok(Change::Keep);
            }
            rules.validate()?;
            Ok(Change::Put(rules.to_json()))
        })
        .await
        .map_err(|e| from_update(&key, e))?;
        Ok(change != Change::Keep)
    }

    // ---- endpoints ----

    pub async fn endpoints(&self, filter: &EndpointFilter) -> Result<Vec<EndpointRecord>> {
        let prefix = keys::endpoints_prefix(
            filter.host.as_deref(),
            filter.orchestrator.as_deref(),
            filter.workload.as_deref(),
        );
        let listing = self.store.list(&prefix).await?;
        Ok(listing
            .kvs
            .iter()
            .filter_map(|kv| match keys::parse_v1(&kv.key) {
                Some(V1Key::Endpoint(key)) if filter.matches(&key) => Some(EndpointRecord {
                    key,
                    endpoint: Endpoint::from_json(&kv.value),
                }),
                _ => None,
            })
            .collect())
    }

    /// The one endpoint with this id (narrowed by the filter's other fields).
    pub async fn find_endpoint(&self, id: &str, filter: &EndpointFilter) -> Result<EndpointKey> {
        let filter = EndpointFilter {
            endpoint_id: Some(id.to_string()),
            ..filter.clone()
        };
        let mut found = self.endpoints(&filter).await?;
        match found.len() {
            0 => Err(ResourceError::NotFound(format!(
                "Endpoint {id} is unknown to Calico."
            ))),
            1 => Ok(found.remove(0).key),
            _ => Err(ResourceError::Refused(
                "More than 1 endpoint matches the provided criteria; give --host, \
                 --orchestrator or --workload to pick one."
                    .into(),
            )),
        }
    }

    pub async fn get_endpoint(&self, key: &EndpointKey) -> Result<Endpoint> {
        let path = keys::endpoint(key);
        let kv = self.store.get(&path).await?.ok_or_else(|| {
            ResourceError::NotFound(format!(
                "Endpoint {} is unknown to Calico.",
                key.endpoint_id
            ))
        })?;
        Endpoint::from_json(&kv.value).map_err(|e| corrupt(&path, e))
    }

    /// Edits an endpoint with compare-and-swap; `edit` returns whether it changed anything.
    pub async fn update_endpoint(
        &self,
        key: &EndpointKey,
        mut edit: impl FnMut(&mut Endpoint) -> Result<bool>,
    ) -> Result<bool> {
        let path = keys::endpoint(key);
        let change = update(self.store(), &path, |current| {
            let json = current.ok_or_else(|| {
                ResourceError::NotFound(format!(
                    "Endpoint {} is unknown to Calico.",
                    key.endpoint_id
                ))
            })?;
            let mut endpoint = Endpoint::from_json(json).map_err(|e| corrupt(&path, e))?;
            if !edit(&mut endpoint)? {
                return Ok(Change::Keep);
            }
            endpoint.validate()?;
            Ok(Change::Put(endpoint.to_json()))
        })
        .await
        .map_err(|e| from_update(&path, e))?;
        Ok(change != Change::Keep)
    }

    /// Endpoints (valid ones) that list this profile.
    pub async fn endpoints_using(&self, profile: &str) -> Result<Vec<EndpointKey>> {
        let all = self.endpoints(&EndpointFilter::default()).await?;
        Ok(all
            .into_iter()
            .filter(|r| {
                r.endpoint
                    .as_ref()
                    .is_ok_and(|e| e.profile_ids.iter().any(|p| p == profile))
            })
            .map(|r| r.key)
            .collect())
    }

    // ---- IP pools ----

    /// Valid pools of one family, sorted, and the keys of invalid ones.
    pub async fn pools(&self, v4: bool) -> Result<(Vec<IpPool>, Vec<(String, ModelError)>)> {
        let listing = self.store.list(&keys::pools_prefix(v4)).await?;
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for kv in listing.kvs {
            match IpPool::from_json(&kv.value) {
                Ok(pool) => good.push(pool),
                Err(e) => bad.push((kv.key, e)),
            }
        }
        good.sort_by_key(|p| p.cidr);
        Ok((good, bad))
    }

    /// Adds (or updates the options of) pools, all or none. A pool that overlaps another, or
    /// is smaller than one IPAM block, is refused.
    pub async fn add_pools(&self, new: &[IpPool]) -> Result<()> {
        for (i, pool) in new.iter().enumerate() {
            validate_pool_cidr(&pool.cidr)?;
            if pool.ipip.is_some() && pool.cidr.addr().is_ipv6() {
                return Err(ResourceError::Refused(
                    "IP-in-IP is not supported for IPv6 pools.".into(),
                ));
            }
            if let Some(other) = new[..i].iter().find(|o| overlaps(&o.cidr, &pool.cidr)) {
                return Err(ResourceError::Refused(format!(
                    "Cannot add IP pool {} - it overlaps with another new pool {}. No pools added.",
                    pool.cidr, other.cidr
                )));
            }
        }
        let mut compares = Vec::new();
        for pool in new {
            let v4 = pool.cidr.addr().is_ipv4();
            let listing = self.store.list(&keys::pools_prefix(v4)).await?;
            for kv in &listing.kvs {
                let Some(V1Key::Pool(existing)) = keys::parse_v1(&kv.key) else {
                    continue;
                };
                if existing == pool.cidr {
                    compares.push(Compare::ModRevision(kv.key.clone(), kv.mod_revision));
                } else if overlaps(&existing, &pool.cidr) {
                    return Err(ResourceError::Refused(format!(
                        "Cannot add IP pool {} - it overlaps with the existing pool {existing}. No pools added.",
                        pool.cidr
                    )));
                }
            }
            if !compares
                .iter()
                .any(|c| matches!(c, Compare::ModRevision(k, _) if *k == keys::pool(&pool.cidr)))
            {
                compares.push(Compare::Absent(keys::pool(&pool.cidr)));
            }
        }
        let ops = new
            .iter()
            .map(|p| Op::put(keys::pool(&p.cidr), p.to_json()))
            .collect();
        if self.store.txn(Txn { compares, ops }).await?.succeeded {
            Ok(())
        } else {
            Err(ResourceError::Contended("the IP pools".into()))
        }
    }

    /// `false` if no pool has exactly this CIDR.
    pub async fn remove_pool(&self, cidr: &IpNet) -> Result<bool> {
        Ok(self.store.delete(&keys::pool(cidr)).await?)
    }

    // ---- BGP ----

    pub async fn peers(&self, scope: &PeerScope, v4: bool) -> Result<Vec<BgpPeer>> {
        let listing = self.store.list(&scope.prefix(v4)).await?;
        let mut peers = listing
            .kvs
            .iter()
            .map(|kv| BgpPeer::from_json(&kv.value).map_err(|e| corrupt(&kv.key, e)))
            .collect::<Result<Vec<_>>>()?;
        peers.sort_by_key(|p| p.ip);
        Ok(peers)
    }

    pub async fn add_peer(&self, scope: &PeerScope, peer: &BgpPeer) -> Result<Revision> {
        Ok(self
            .store
            .put(&scope.key(&peer.ip), &peer.to_json())
            .await?)
    }

    pub async fn remove_peer(&self, scope: &PeerScope, ip: &IpAddr) -> Result<bool> {
        Ok(self.store.delete(&scope.key(ip)).await?)
    }

    /// Whether the node-to-node mesh is on (it is unless switched off).
    pub async fn node_mesh(&self) -> Result<bool> {
        let key = keys::bgp_global_node_mesh();
        match self.store.get(&key).await? {
            Some(kv) => Ok(NodeMesh::from_json(&kv.value)
                .map_err(|e| corrupt(&key, e))?
                .enabled),
            None => Ok(true),
        }
    }

    pub async fn set_node_mesh(&self, enabled: bool) -> Result<()> {
        let json = serde_json::to_string(&NodeMesh { enabled }).expect("mesh serializes");
        self.store.put(&keys::bgp_global_node_mesh(), &json).await?;
        Ok(())
    }

    pub async fn default_as(&self) -> Result<AsNumber> {
        let key = keys::bgp_global_as_num();
        match self.store.get(&key).await? {
            Some(kv) => Ok(kv.value.trim().parse().map_err(|e| corrupt(&key, e))?),
            None => Ok(AsNumber(DEFAULT_AS)),
        }
    }

    pub async fn set_default_as(&self, as_num: AsNumber) -> Result<()> {
        self.store
            .put(&keys::bgp_global_as_num(), &as_num.to_string())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use calico_model::endpoint::EndpointState;

    fn resources() -> Resources {
        Resources::new(Arc::new(MemoryStore::new()))
    }

    fn endpoint_key(host: &str, id: &str) -> EndpointKey {
        EndpointKey {
            host: host.into(),
            orchestrator: "docker".into(),
            workload: format!("w-{id}"),
            endpoint_id: id.into(),
        }
    }

    async fn put_endpoint(r: &Resources, key: &EndpointKey, profiles: &[&str]) {
        let endpoint = Endpoint {
            state: EndpointState::Active,
            name: calico_model::endpoint::interface_name_for(&key.endpoint_id),
            mac: None,
            profile_ids: profiles.iter().map(|p| p.to_string()).collect(),
            profile_id: None,
            ipv4_nets: vec!["192.168.0.1/32".parse().unwrap()],
            ipv6_nets: vec![],
            ipv4_gateway: None,
            ipv6_gateway: None,
            labels: Default::default(),
        };
        r.store()
            .put(&keys::endpoint(key), &endpoint.to_json())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn profiles_are_created_once_with_defaults() {
        let r = resources();
        assert!(r.create_profile("WEB").await.unwrap());
        assert!(!r.create_profile("WEB").await.unwrap());
        let profile = r.get_profile("WEB").await.unwrap();
        assert_eq!(profile, Profile::new("WEB").unwrap());
        assert_eq!(r.profile_names().await.unwrap(), ["WEB"]);
        assert!(r.delete_profile("WEB").await.unwrap());
        assert!(matches!(
            r.get_profile("WEB").await,
            Err(ResourceError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn corrupt_profile_values_are_reported_with_their_key() {
        let r = resources();
        r.create_profile("P").await.unwrap();
        r.store()
            .put(&keys::profile_rules("P"), "{not json")
            .await
            .unwrap();
        let err = r.get_profile("P").await.unwrap_err().to_string();
        assert!(err.contains("/calico/v1/policy/profile/P/rules"), "{err}");
        let edit = r.update_rules("P", |_| Ok(true)).await.unwrap_err();
        assert!(matches!(edit, ResourceError::Corrupt { .. }), "{edit:?}");
        assert_eq!(
            r.store()
                .get(&keys::profile_rules("P"))
                .await
                .unwrap()
                .unwrap()
                .value,
            "{not json"
        );
    }

    #[tokio::test]
    async fn endpoints_are_found_by_id_and_filters() {
        let r = resources();
        put_endpoint(&r, &endpoint_key("h1", "aaa"), &["P"]).await;
        put_endpoint(&r, &endpoint_key("h2", "aaa"), &[]).await;
        put_endpoint(&r, &endpoint_key("h2", "bbb"), &["P", "Q"]).await;
        let found = r
            .find_endpoint("bbb", &EndpointFilter::default())
            .await
            .unwrap();
        assert_eq!(found.host, "h2");
        assert!(matches!(
            r.find_endpoint("aaa", &EndpointFilter::default()).await,
            Err(ResourceError::Refused(_))
        ));
        let h1 = EndpointFilter {
            host: Some("h1".into()),
            ..Default::default()
        };
        assert_eq!(r.find_endpoint("aaa", &h1).await.unwrap().host, "h1");
        assert!(matches!(
            r.find_endpoint("zzz", &EndpointFilter::default()).await,
            Err(ResourceError::NotFound(_))
        ));
        let users = r.endpoints_using("P").await.unwrap();
        assert_eq!(users.len(), 2);
    }

    #[tokio::test]
    async fn overlapping_pools_are_refused_and_nothing_is_written() {
        let r = resources();
        let pool = |s: &str| IpPool::new(s.parse().unwrap());
        r.add_pools(&[pool("192.168.0.0/16")]).await.unwrap();
        let err = r
            .add_pools(&[pool("10.0.0.0/8"), pool("192.168.1.0/24")])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("overlaps with the existing pool 192.168.0.0/16"),
            "{err}"
        );
        let err = r
            .add_pools(&[pool("10.0.0.0/8"), pool("10.1.0.0/16")])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("another new pool"), "{err}");
        assert_eq!(
            r.pools(true).await.unwrap().0.len(),
            1,
            "nothing half-written"
        );
        let mut nat = pool("192.168.0.0/16");
        nat.masquerade = true;
        r.add_pools(&[nat.clone()]).await.unwrap();
        assert_eq!(
            r.pools(true).await.unwrap().0,
            [nat],
            "re-adding a pool updates its options"
        );
    }

    #[tokio::test]
    async fn bgp_defaults_and_peers() {
        let r = resources();
        assert!(r.node_mesh().await.unwrap());
        assert_eq!(r.default_as().await.unwrap(), AsNumber(DEFAULT_AS));
        r.set_node_mesh(false).await.unwrap();
        r.set_default_as(AsNumber(65000)).await.unwrap();
        assert!(!r.node_mesh().await.unwrap());
        assert_eq!(r.default_as().await.unwrap(), AsNumber(65000));
        let peer = BgpPeer {
            ip: "10.0.0.9".parse().unwrap(),
            as_num: AsNumber(64600),
        };
        let host = PeerScope::Host("h1".into());
        r.add_peer(&host, &peer).await.unwrap();
        assert_eq!(
            r.peers(&host, true).await.unwrap(),
            std::slice::from_ref(&peer)
        );
        assert!(r.peers(&PeerScope::Global, true).await.unwrap().is_empty());
        assert!(r.remove_peer(&host, &peer.ip).await.unwrap());
        assert!(!r.remove_peer(&host, &peer.ip).await.unwrap());
    }
}
