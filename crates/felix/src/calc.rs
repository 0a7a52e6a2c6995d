//! The calc graph: holds the parsed datastore contents that matter to one host and keeps its
//! desired state up to date, one change at a time.
//!
//! After felix's calculation graph, each change updates only what depends on it:
//!
//! ```text
//! endpoint ─▶ its interface's local endpoint ─▶ the profiles it uses ─▶ the tags their rules use
//!    └──────▶ the tags its profiles carry (members, every host)
//! profile rules ─▶ that profile (and the local endpoints listing it: validity)
//! profile tags  ─▶ the members of old and new tags, for every endpoint listing it
//! config ─▶ every local endpoint (the interface prefix)
//! ```
//!
//! Each change marks what it touches; `settle` then recomputes those parts alone, in
//! dependency order, updates [`DesiredState`] in place and records what changed in
//! [`Changes`] for the dataplane. Reverse indexes (profile → endpoints listing it,
//! interface → endpoints claiming it) keep every step proportional to what depends on the
//! change, not to the cluster. The whole-state calculation this replaced is kept as the test
//! oracle (`oracle.rs`): a property test checks the two agree after every change.

mod members;
#[cfg(test)]
mod oracle;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use calico_model::endpoint::{Endpoint, EndpointKey, EndpointState};
use calico_model::keys::{self, parse_v1, V1Key};
use calico_model::pool::{is_block, IpPool};
use calico_model::profile::{tags_from_json, ProfileRules};
use ipnet::IpNet;

use crate::desired::{
    Changes, Config, DesiredState, EndpointPolicy, HostAction, LocalEndpoint, NetSet, TagChange,
};
use members::{TagMembers, TagMoves};

/// One change to the datastore, as the agent's watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Put { key: String, value: String },
    Delete { key: String },
}

impl Update {
    pub fn key(&self) -> &str {
        match self {
            Update::Put { key, .. } | Update::Delete { key } => key,
        }
    }
}

/// An endpoint as the graph keeps it: this host's whole, other hosts' only as far as tag
/// membership needs (about 250 bytes less each, at 100,000 endpoints a quarter of the graph).
#[derive(Debug, Clone)]
enum Stored {
    /// Boxed, so that the remote records (nearly all of them) stay small.
    Local(Box<Endpoint>),
    Remote(Remote),
}

#[derive(Debug, Clone)]
struct Remote {
    active: bool,
    profile_ids: Box<[Box<str>]>,
    nets: Box<[IpNet]>,
}

impl Remote {
    fn of(endpoint: Endpoint) -> Remote {
        Remote {
            active: endpoint.state == EndpointState::Active,
            nets: endpoint.nets().copied().collect(),
            profile_ids: endpoint
                .profile_ids
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
        }
    }
}

impl Stored {
    fn local(&self) -> Option<&Endpoint> {
        match self {
            Stored::Local(endpoint) => Some(endpoint),
            Stored::Remote(_) => None,
        }
    }

    fn active(&self) -> bool {
        match self {
            Stored::Local(endpoint) => endpoint.state == EndpointState::Active,
            Stored::Remote(remote) => remote.active,
        }
    }

    fn profile_ids(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Stored::Local(endpoint) => Box::new(endpoint.profile_ids.iter().map(String::as_str)),
            Stored::Remote(remote) => Box::new(remote.profile_ids.iter().map(|p| &**p)),
        }
    }

    fn nets(&self) -> Box<dyn Iterator<Item = &IpNet> + '_> {
        match self {
            Stored::Local(endpoint) => Box::new(endpoint.nets()),
            Stored::Remote(remote) => Box::new(remote.nets.iter()),
        }
    }
}

/// What an endpoint puts into tags: the tags its profiles carry (sorted, once each), and
/// its networks. Boxed slices: there is one of these per endpoint of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Contribution {
    tags: Box<[Arc<str>]>,
    nets: Box<[IpNet]>,
}

#[derive(Debug)]
pub struct CalcGraph {
    host: String,
    // The datastore's contents that matter here, parsed.
    /// Valid endpoints of every host (remote ones matter for tag membership).
    /// Keys are shared with the indexes below: at 100,000 endpoints a copy of each key per
    /// index cost about 500 bytes an endpoint.
    endpoints: BTreeMap<Arc<EndpointKey>, Stored>,
    /// Every valid endpoint as parsed, for the oracle alone: it must not see them through
    /// the graph's own (compacted) records.
    #[cfg(test)]
    parsed_endpoints: BTreeMap<EndpointKey, Endpoint>,
    profile_rules: HashMap<String, Result<ProfileRules, String>>,
    /// Tags are shared with the endpoints' contributions.
    profile_tags: HashMap<String, Result<Vec<Arc<str>>, String>>,
    global_config: BTreeMap<String, String>,
    host_config: BTreeMap<String, String>,
    pools: BTreeMap<IpNet, IpPool>,
    /// IPAM blocks claimed by this host.
    blocks: BTreeSet<IpNet>,
    /// Keys whose values could not be used, with the reason.
    skipped: BTreeMap<String, String>,

    // Indexes.
    /// Profile → active endpoints (every host) listing it.
    listed_by: HashMap<String, BTreeSet<Arc<EndpointKey>>>,
    /// Profile → this host's endpoints listing it (any state): their policy depends on it.
    listed_locally_by: HashMap<String, BTreeSet<Arc<EndpointKey>>>,
    /// Interface → this host's active endpoints claiming it.
    claims: HashMap<String, BTreeSet<Arc<EndpointKey>>>,
    /// What each active endpoint puts into tags.
    contributions: HashMap<Arc<EndpointKey>, Contribution>,
    /// Every tag's members (wanted or not), counted.
    members: HashMap<String, TagMembers>,
    /// Profile → how many programmed local endpoints list it.
    used: HashMap<String, usize>,
    /// Tag → how many profiles in the desired state have rules that use it.
    tag_refs: HashMap<String, usize>,

    // Work to do.
    dirty_interfaces: BTreeSet<String>,
    dirty_profiles: BTreeSet<String>,
    /// Tags whose wanted-ness may have changed, or whose members moved (the moves since the
    /// last settle).
    dirty_tags: BTreeMap<String, TagMoves>,
    dirty_config: bool,
    dirty_pools: bool,

    state: DesiredState,
    changes: Changes,
}

impl CalcGraph {
    pub fn new(host: &str) -> Self {
        CalcGraph {
            host: host.to_string(),
            endpoints: BTreeMap::new(),
            #[cfg(test)]
            parsed_endpoints: BTreeMap::new(),
            profile_rules: HashMap::new(),
            profile_tags: HashMap::new(),
            global_config: BTreeMap::new(),
            host_config: BTreeMap::new(),
            pools: BTreeMap::new(),
            blocks: BTreeSet::new(),
            skipped: BTreeMap::new(),
            listed_by: HashMap::new(),
            listed_locally_by: HashMap::new(),
            claims: HashMap::new(),
            contributions: HashMap::new(),
            members: HashMap::new(),
            used: HashMap::new(),
            tag_refs: HashMap::new(),
            dirty_interfaces: BTreeSet::new(),
            dirty_profiles: BTreeSet::new(),
            dirty_tags: BTreeMap::new(),
            dirty_config: false,
            dirty_pools: false,
            state: DesiredState::default(),
            changes: Changes::default(),
        }
    }

    /// Forgets everything, before a full resync.
    pub fn clear(&mut self) {
        *self = CalcGraph::new(&self.host);
    }

    /// The desired state of this host's dataplane, as of the last change taken in.
    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    /// A copy of [`Self::state`].
    pub fn desired(&self) -> DesiredState {
        self.state.clone()
    }

    /// What changed since the last call (everything, after `new` or `clear`, that was taken
    /// in since).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Takes in one change and brings the desired state up to date. Keys outside the model
    /// are ignored.
    pub fn apply(&mut self, update: &Update) {
        self.take_in(update);
        self.settle();
    }

    fn take_in(&mut self, update: &Update) {
        let key = update.key();
        self.forget_skip(key);
        let value = match update {
            Update::Put { value, .. } => Some(value.as_str()),
            Update::Delete { .. } => None,
        };
        if key.starts_with(keys::IPAM_PREFIX) {
            return self.apply_block_affinity(key, value.is_some());
        }
        match parse_v1(key) {
            Some(V1Key::Endpoint(endpoint_key)) => self.apply_endpoint(key, endpoint_key, value),
            Some(V1Key::Pool(cidr)) => {
                let parsed = value.map(|v| {
                    IpPool::from_json(v)
                        .map_err(|e| e.to_string())
                        .and_then(|pool| match pool.cidr == cidr {
                            true => Ok(pool),
                            false => Err(format!(
                                "the pool's cidr {} does not match its key",
                                pool.cidr
                            )),
                        })
                });
                self.note(key, &parsed);
                set(&mut self.pools, cidr, parsed.and_then(Result::ok));
                self.dirty_pools = true;
            }
            Some(V1Key::ProfileRules(name)) => {
                let parsed = value.map(|v| ProfileRules::from_json(v).map_err(|e| e.to_string()));
                self.note(key, &parsed);
                let before = self.profile_problem(&name);
                set_hashed(&mut self.profile_rules, name.clone(), parsed);
                self.profile_validity_may_change(&name, before);
                self.dirty_profiles.insert(name);
            }
            Some(V1Key::ProfileTags(name)) => {
                let parsed = value.map(|v| {
                    tags_from_json(v)
                        .map(|tags| tags.into_iter().map(Arc::from).collect())
                        .map_err(|e| e.to_string())
                });
                self.note(key, &parsed);
                let before = self.profile_problem(&name);
                set_hashed(&mut self.profile_tags, name.clone(), parsed);
                self.profile_validity_may_change(&name, before);
                // Every endpoint listing it may carry other tags now.
                let listing: Vec<Arc<EndpointKey>> = self
                    .listed_by
                    .get(&name)
                    .map(|keys| keys.iter().cloned().collect())
                    .unwrap_or_default();
                for endpoint_key in listing {
                    self.recontribute(&endpoint_key);
                }
            }
            Some(V1Key::FelixConfig(param)) => {
                set(&mut self.global_config, param, value.map(str::to_string));
                self.dirty_config = true;
            }
            Some(V1Key::HostConfig { host, param }) if host == self.host => {
                set(&mut self.host_config, param, value.map(str::to_string));
                self.dirty_config = true;
            }
            _ => {}
        }
    }

    /// `/calico/ipam/v2/host/<this host>/ipv<N>/block/<cidr>`: a block this host claimed.
    fn apply_block_affinity(&mut self, key: &str, present: bool) {
        let mine = [true, false]
            .iter()
            .any(|v4| key.starts_with(&keys::ipam_host_blocks_prefix(&self.host, *v4)));
        if !mine {
            return;
        }
        let block = keys::cidr_of_key(key).filter(is_block);
        match block {
            Some(cidr) if present => {
                self.blocks.insert(cidr);
            }
            Some(cidr) => {
                self.blocks.remove(&cidr);
            }
            None => self.skip(key, "not an IPAM block (/26 or /122) in its key".into()),
        }
        if self.state.blocks != self.blocks {
            self.state.blocks = self.blocks.clone();
            self.changes.blocks = true;
        }
    }

    fn apply_endpoint(&mut self, key: &str, endpoint_key: EndpointKey, value: Option<&str>) {
        let parsed = value.map(|v| {
            endpoint_key.validate().map_err(|e| e.to_string())?;
            Endpoint::from_json(v).map_err(|e| e.to_string())
        });
        let new = match parsed {
            Some(Ok(endpoint)) => Some(endpoint),
            Some(Err(reason)) => {
                self.skip(key, reason);
                None
            }
            None => None,
        };
        let endpoint_key = match self.endpoints.get_key_value(&endpoint_key) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(endpoint_key),
        };
        #[cfg(test)]
        match &new {
            Some(endpoint) => self
                .parsed_endpoints
                .insert(EndpointKey::clone(&endpoint_key), endpoint.clone()),
            None => self.parsed_endpoints.remove(&*endpoint_key),
        };
        let new = new.map(|endpoint| match endpoint_key.host == self.host {
            true => Stored::Local(Box::new(endpoint)),
            false => Stored::Remote(Remote::of(endpoint)),
        });
        let old = match &new {
            Some(endpoint) => self
                .endpoints
                .insert(endpoint_key.clone(), endpoint.clone()),
            None => self.endpoints.remove(&endpoint_key),
        };
        self.reindex(&endpoint_key, old.as_ref(), new.as_ref());
        self.recontribute(&endpoint_key);
    }

    /// Moves an endpoint in the indexes from its old value to its new one.
    fn reindex(&mut self, key: &Arc<EndpointKey>, old: Option<&Stored>, new: Option<&Stored>) {
        if let Some(old) = old {
            for profile in old.profile_ids() {
                remove_from(&mut self.listed_by, profile, key);
            }
            if let Stored::Local(old) = old {
                for profile in &old.profile_ids {
                    remove_from(&mut self.listed_locally_by, profile, key);
                }
                remove_from(&mut self.claims, &old.name, key);
                self.dirty_interfaces.insert(old.name.clone());
            }
        }
        if let Some(new) = new {
            if new.active() {
                for profile in new.profile_ids() {
                    add_to(&mut self.listed_by, profile, key);
                }
            }
            if let Stored::Local(new) = new {
                for profile in &new.profile_ids {
                    add_to(&mut self.listed_locally_by, profile, key);
                }
                if new.state == EndpointState::Active {
                    add_to(&mut self.claims, &new.name, key);
                }
                self.dirty_interfaces.insert(new.name.clone());
            }
        }
    }

    /// Recomputes what one endpoint puts into tags, and moves the difference.
    fn recontribute(&mut self, key: &Arc<EndpointKey>) {
        let new = match self.endpoints.get(key) {
            Some(endpoint) if endpoint.active() => {
                let mut tags: Vec<Arc<str>> = endpoint
                    .profile_ids()
                    .filter_map(|p| self.profile_tags.get(p)?.as_ref().ok())
                    .flatten()
                    .cloned()
                    .collect();
                tags.sort();
                tags.dedup();
                Contribution {
                    tags: tags.into(),
                    nets: endpoint.nets().map(|n| n.trunc()).collect(),
                }
            }
            _ => Contribution::default(),
        };
        let old = self.contributions.remove(key).unwrap_or_default();
        if old == new {
            if !new.tags.is_empty() {
                self.contributions.insert(key.clone(), new);
            }
            return;
        }
        // With the same nets, only the tags gained or lost move: an endpoint listing 1,000
        // profiles gains one tag at a time in a full sync, and moving all of its tags each
        // time cost 3 of 4 seconds at 100,000 endpoints.
        let same_nets = old.nets == new.nets;
        let lost = old
            .tags
            .iter()
            .filter(|t| !same_nets || new.tags.binary_search(t).is_err());
        self.move_members(lost, &old.nets, false);
        let gained = new
            .tags
            .iter()
            .filter(|t| !same_nets || old.tags.binary_search(t).is_err());
        self.move_members(gained, &new.nets, true);
        if !new.tags.is_empty() {
            self.contributions.insert(key.clone(), new);
        }
    }

    /// Adds `nets` to each of `tags`' members, or takes them out, noting the moves.
    fn move_members<'a>(
        &mut self,
        tags: impl Iterator<Item = &'a Arc<str>>,
        nets: &[IpNet],
        add: bool,
    ) {
        for tag in tags {
            let members = self.members.entry(tag.to_string()).or_default();
            let moves = self.dirty_tags.entry(tag.to_string()).or_default();
            for net in nets {
                match add {
                    true => members.add(net, moves),
                    false => members.remove(net, moves),
                }
            }
            if members.is_empty() {
                self.members.remove(&**tag);
            }
        }
    }

    /// A profile's rules or tags changed: whether it is valid may have too (`before`: its
    /// problem before the change), which decides the policy of the local endpoints listing it.
    /// Only a change of validity touches them: an endpoint listing 1,000 profiles was
    /// recomputed for each of their 2,000 keys in a full sync (3.7 s of 4.2 at 100,000
    /// endpoints).
    fn profile_validity_may_change(&mut self, profile: &str, before: Option<String>) {
        if self.profile_problem(profile) == before {
            return;
        }
        if let Some(keys) = self.listed_locally_by.get(profile) {
            for key in keys {
                if let Some(endpoint) = self.endpoints.get(key).and_then(Stored::local) {
                    self.dirty_interfaces.insert(endpoint.name.clone());
                }
            }
        }
    }

    fn note<T>(&mut self, key: &str, parsed: &Option<Result<T, String>>) {
        if let Some(Err(reason)) = parsed {
            self.skip(key, reason.clone());
        }
    }

    fn skip(&mut self, key: &str, reason: String) {
        tracing::warn!(key, %reason, "ignoring invalid datastore value");
        self.skipped.insert(key.to_string(), reason.clone());
        self.state.skipped.insert(key.to_string(), reason);
    }

    fn forget_skip(&mut self, key: &str) {
        if self.skipped.remove(key).is_some() {
            self.state.skipped.remove(key);
        }
    }

    // Settling: recompute what was marked, in dependency order.

    fn settle(&mut self) {
        if std::mem::take(&mut self.dirty_config) {
            self.settle_config();
        }
        if std::mem::take(&mut self.dirty_pools) {
            self.settle_pools();
        }
        for interface in std::mem::take(&mut self.dirty_interfaces) {
            self.settle_interface(&interface);
        }
        for profile in std::mem::take(&mut self.dirty_profiles) {
            self.settle_profile(&profile);
        }
        for (tag, moves) in std::mem::take(&mut self.dirty_tags) {
            self.settle_tag(&tag, moves);
        }
    }

    fn settle_config(&mut self) {
        let (config, problems) = self.config();
        // Config problems are reported like skipped keys, under a name of their own.
        let stale: Vec<String> = self
            .state
            .skipped
            .keys()
            .filter(|k| is_config_origin(k) && !self.skipped.contains_key(*k))
            .cloned()
            .collect();
        for origin in stale {
            self.state.skipped.remove(&origin);
        }
        self.state.skipped.extend(problems);
        if config != self.state.config {
            if config.interface_prefix != self.state.config.interface_prefix {
                let all: Vec<String> = self
                    .claims
                    .keys()
                    .chain(self.state.endpoints.keys())
                    .cloned()
                    .collect();
                self.dirty_interfaces.extend(all);
            }
            self.state.config = config;
            self.changes.config = true;
        }
    }

    fn settle_pools(&mut self) {
        let pool_set = |masquerade_only: bool| {
            let nets = self
                .pools
                .values()
                .filter(|p| p.masquerade || !masquerade_only)
                .map(|p| p.cidr)
                .collect::<Vec<_>>();
            NetSet {
                ipv4: v4_nets(nets.iter()),
                ipv6: v6_nets(nets.iter()),
            }
        };
        let pools = pool_set(false);
        let masquerade = pool_set(true);
        let ipip: BTreeSet<IpNet> = self
            .pools
            .values()
            .filter(|p| p.ipip.is_some())
            .map(|p| p.cidr)
            .collect();
        if pools != self.state.pools
            || masquerade != self.state.masquerade
            || ipip != self.state.ipip_pools
        {
            self.state.pools = pools;
            self.state.masquerade = masquerade;
            self.state.ipip_pools = ipip;
            self.changes.pools = true;
        }
    }

    /// The local endpoint an interface should have, if any.
    fn local_endpoint(&self, interface: &str) -> Option<LocalEndpoint> {
        if !interface.starts_with(&self.state.config.interface_prefix) {
            // Not an interface we manage: leave it alone rather than police someone else's.
            return None;
        }
        let claims = self.claims.get(interface)?;
        // With several claims, the last key's endpoint, as a scan in key order would leave.
        let key = claims.iter().next_back()?;
        let endpoint = self.endpoints.get(key)?.local()?;
        let policy = if claims.len() > 1 {
            EndpointPolicy::DropAll(format!("interface {interface} is claimed by two endpoints"))
        } else {
            match endpoint
                .profile_ids
                .iter()
                .find_map(|p| self.profile_problem(p))
            {
                Some(reason) => EndpointPolicy::DropAll(reason),
                None => EndpointPolicy::Profiles(endpoint.profile_ids.clone()),
            }
        };
        Some(LocalEndpoint {
            key: EndpointKey::clone(key),
            interface: endpoint.name.clone(),
            mac: endpoint.mac.clone(),
            ipv4: v4_nets(endpoint.nets()),
            ipv6: v6_nets(endpoint.nets()),
            policy,
        })
    }

    fn settle_interface(&mut self, interface: &str) {
        let new = self.local_endpoint(interface);
        let old = self.state.endpoints.get(interface);
        if new.as_ref() == old {
            return;
        }
        let old_profiles = old.map(programmed_profiles).unwrap_or_default();
        let new_profiles = new.as_ref().map(programmed_profiles).unwrap_or_default();
        for profile in old_profiles.difference(&new_profiles) {
            if let Some(count) = self.used.get_mut(profile) {
                *count -= 1;
                if *count == 0 {
                    self.used.remove(profile);
                    self.dirty_profiles.insert(profile.clone());
                }
            }
        }
        for profile in new_profiles.difference(&old_profiles) {
            let count = self.used.entry(profile.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.dirty_profiles.insert(profile.clone());
            }
        }
        match new {
            Some(endpoint) => self.state.endpoints.insert(interface.to_string(), endpoint),
            None => self.state.endpoints.remove(interface),
        };
        self.changes.endpoints.insert(interface.to_string());
    }

    /// Why a profile cannot be trusted, if it cannot.
    fn profile_problem(&self, name: &str) -> Option<String> {
        match (self.profile_rules.get(name), self.profile_tags.get(name)) {
            (Some(Err(e)), _) => Some(format!("profile {name} has invalid rules: {e}")),
            (_, Some(Err(e))) => Some(format!("profile {name} has invalid tags: {e}")),
            _ => None,
        }
    }

    fn settle_profile(&mut self, name: &str) {
        let new = match (self.used.contains_key(name), self.profile_rules.get(name)) {
            (true, Some(Ok(rules))) => Some(rules.clone()),
            _ => None,
        };
        let old = self.state.profiles.get(name);
        if new.as_ref() == old {
            return;
        }
        let old_tags = old.map(rule_tags).unwrap_or_default();
        let new_tags = new.as_ref().map(rule_tags).unwrap_or_default();
        for tag in old_tags.difference(&new_tags) {
            if let Some(count) = self.tag_refs.get_mut(tag) {
                *count -= 1;
                if *count == 0 {
                    self.tag_refs.remove(tag);
                    self.dirty_tags.entry(tag.clone()).or_default();
                }
            }
        }
        for tag in new_tags.difference(&old_tags) {
            let count = self.tag_refs.entry(tag.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.dirty_tags.entry(tag.clone()).or_default();
            }
        }
        // Endpoint chains jump to the profiles that exist: those listing it render anew
        // when it appears or goes.
        if old.is_some() != new.is_some() {
            let listing: Vec<String> = self
                .listed_locally_by
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|key| self.endpoints.get(key)?.local())
                .map(|endpoint| endpoint.name.clone())
                .filter(|interface| self.state.endpoints.contains_key(interface))
                .collect();
            self.changes.endpoints.extend(listing);
        }
        match new {
            Some(rules) => self.state.profiles.insert(name.to_string(), rules),
            None => self.state.profiles.remove(name),
        };
        self.changes.profiles.insert(name.to_string());
    }

    fn settle_tag(&mut self, tag: &str, moves: TagMoves) {
        let wanted = self.tag_refs.contains_key(tag);
        let present = self.state.tags.contains_key(tag);
        match (present, wanted) {
            (false, false) => {}
            (true, false) => {
                self.state.tags.remove(tag);
                self.changes.tags.insert(tag.to_string(), TagChange::Whole);
            }
            (false, true) => {
                let members = self.members.get(tag);
                let set = NetSet {
                    ipv4: members
                        .map(|m| m.v4.effective().clone())
                        .unwrap_or_default(),
                    ipv6: members
                        .map(|m| m.v6.effective().clone())
                        .unwrap_or_default(),
                };
                self.state.tags.insert(tag.to_string(), set);
                self.changes.tags.insert(tag.to_string(), TagChange::Whole);
            }
            (true, true) => {
                if moves.v4.is_empty() && moves.v6.is_empty() {
                    return;
                }
                let set = self.state.tags.get_mut(tag).expect("present");
                for net in &moves.v4.removed {
                    set.ipv4.remove(net);
                }
                for net in &moves.v6.removed {
                    set.ipv6.remove(net);
                }
                set.ipv4.extend(&moves.v4.added);
                set.ipv6.extend(&moves.v6.added);
                record_members(&mut self.changes, tag, moves);
            }
        }
    }

    fn config(&self) -> (Config, BTreeMap<String, String>) {
        let mut config = Config::default();
        let mut problems = BTreeMap::new();
        let lookup = |param: &str| {
            self.host_config
                .get(param)
                .map(|v| (v, format!("host {} config {param}", self.host)))
                .or_else(|| {
                    self.global_config
                        .get(param)
                        .map(|v| (v, format!("config {param}")))
                })
        };
        if let Some((value, origin)) = lookup("DefaultEndpointToHostAction") {
            match HostAction::parse(value) {
                Some(action) => config.endpoint_to_host = action,
                None => {
                    problems.insert(
                        origin,
                        format!("'{value}' is not DROP, RETURN or ACCEPT; using DROP"),
                    );
                }
            }
        }
        if let Some((value, origin)) = lookup("InterfacePrefix") {
            if !value.is_empty()
                && value.len() <= 10
                && value.chars().all(|c| c.is_ascii_alphanumeric())
            {
                config.interface_prefix = value.clone();
            } else {
                problems.insert(
                    origin,
                    format!("'{value}' is not a valid interface prefix; using cali"),
                );
            }
        }
        if let Some((value, _)) = lookup("LogSeverityScreen") {
            config.log_level = value.to_ascii_lowercase();
        }
        (config, problems)
    }
}

/// Config problems are reported under "config P" or "host H config P", not a key.
fn is_config_origin(name: &str) -> bool {
    !name.starts_with('/')
}

/// Adds a tag's member moves to the changes not yet taken, cancelling moves that undo
/// each other.
fn record_members(changes: &mut Changes, tag: &str, moves: TagMoves) {
    let entry = changes
        .tags
        .entry(tag.to_string())
        .or_insert_with(|| TagChange::Members {
            added: NetSet::default(),
            removed: NetSet::default(),
        });
    let TagChange::Members { added, removed } = entry else {
        // The whole set is programmed from the state anyway.
        return;
    };
    for net in moves.v4.removed {
        if !added.ipv4.remove(&net) {
            removed.ipv4.insert(net);
        }
    }
    for net in moves.v6.removed {
        if !added.ipv6.remove(&net) {
            removed.ipv6.insert(net);
        }
    }
    for net in moves.v4.added {
        if !removed.ipv4.remove(&net) {
            added.ipv4.insert(net);
        }
    }
    for net in moves.v6.added {
        if !removed.ipv6.remove(&net) {
            added.ipv6.insert(net);
        }
    }
    let nothing = |set: &NetSet| set.ipv4.is_empty() && set.ipv6.is_empty();
    if nothing(added) && nothing(removed) {
        changes.tags.remove(tag);
    }
}

/// The profiles a local endpoint's programmed policy uses (none when it drops everything).
fn programmed_profiles(endpoint: &LocalEndpoint) -> BTreeSet<String> {
    match &endpoint.policy {
        EndpointPolicy::Profiles(list) => list.iter().cloned().collect(),
        EndpointPolicy::DropAll(_) => BTreeSet::new(),
    }
}

/// The tags a profile's rules use.
fn rule_tags(rules: &ProfileRules) -> BTreeSet<String> {
    rules
        .inbound_rules
        .iter()
        .chain(&rules.outbound_rules)
        .flat_map(|rule| [&rule.src_tag, &rule.dst_tag])
        .flatten()
        .cloned()
        .collect()
}

fn add_to(
    index: &mut HashMap<String, BTreeSet<Arc<EndpointKey>>>,
    name: &str,
    key: &Arc<EndpointKey>,
) {
    index
        .entry(name.to_string())
        .or_default()
        .insert(key.clone());
}

fn remove_from(
    index: &mut HashMap<String, BTreeSet<Arc<EndpointKey>>>,
    name: &str,
    key: &EndpointKey,
) {
    if let Some(keys) = index.get_mut(name) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(name);
        }
    }
}

fn set<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(value) => map.insert(key, value),
        None => map.remove(&key),
    };
}

fn set_hashed<V>(map: &mut HashMap<String, V>, key: String, value: Option<V>) {
    match value {
        Some(value) => map.insert(key, value),
        None => map.remove(&key),
    };
}

/// An endpoint's or pool's IPv4 networks, host bits cleared, none inside another.
pub(crate) fn v4_nets<'a>(nets: impl Iterator<Item = &'a IpNet>) -> BTreeSet<ipnet::Ipv4Net> {
    let nets = nets.filter_map(|n| match n {
        IpNet::V4(v4) => Some(v4.trunc()),
        IpNet::V6(_) => None,
    });
    non_overlapping(nets.collect(), |n| n.prefix_len(), |a, b| a.contains(b))
}

/// As [`v4_nets`], for IPv6.
pub(crate) fn v6_nets<'a>(nets: impl Iterator<Item = &'a IpNet>) -> BTreeSet<ipnet::Ipv6Net> {
    let nets = nets.filter_map(|n| match n {
        IpNet::V6(v6) => Some(v6.trunc()),
        IpNet::V4(_) => None,
    });
    non_overlapping(nets.collect(), |n| n.prefix_len(), |a, b| a.contains(b))
}

/// Drops every net contained in a wider one of the set: the same addresses, and no two
/// elements overlap (nftables interval sets refuse overlaps, and an element merged into a
/// neighbour could not be deleted on its own later).
pub(crate) fn non_overlapping<N: Copy + Ord>(
    nets: BTreeSet<N>,
    prefix_len: impl Fn(&N) -> u8,
    contains: impl Fn(&N, &N) -> bool,
) -> BTreeSet<N> {
    let mut by_width: Vec<N> = nets.into_iter().collect();
    by_width.sort_by_key(|n| prefix_len(n));
    let narrowest = by_width.last().map(&prefix_len);
    // Only nets wider than the narrowest can contain others: usually none, so this stays linear.
    let mut wide: Vec<N> = Vec::new();
    let mut kept = BTreeSet::new();
    for net in by_width {
        if wide
            .iter()
            .any(|w| prefix_len(w) < prefix_len(&net) && contains(w, &net))
        {
            continue;
        }
        if Some(prefix_len(&net)) != narrowest {
            wide.push(net);
        }
        kept.insert(net);
    }
    kept
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
