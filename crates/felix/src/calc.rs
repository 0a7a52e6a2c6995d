//! The calc graph: holds the parsed datastore contents that matter to one host and derives
//! its desired state from them.

use std::collections::{BTreeMap, BTreeSet};

use calico_model::endpoint::{Endpoint, EndpointKey, EndpointState};
use calico_model::keys::{self, parse_v1, V1Key};
use calico_model::pool::{is_block, IpPool};
use calico_model::profile::{tags_from_json, ProfileRules};
use ipnet::IpNet;

use crate::desired::{Config, DesiredState, EndpointPolicy, HostAction, LocalEndpoint, NetSet};

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

pub struct CalcGraph {
    host: String,
    /// Valid endpoints of every host (remote ones matter for tag membership).
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    profile_rules: BTreeMap<String, Result<ProfileRules, String>>,
    profile_tags: BTreeMap<String, Result<Vec<String>, String>>,
    global_config: BTreeMap<String, String>,
    host_config: BTreeMap<String, String>,
    pools: BTreeMap<IpNet, IpPool>,
    /// IPAM blocks claimed by this host.
    blocks: BTreeSet<IpNet>,
    /// Keys whose values could not be used, with the reason.
    skipped: BTreeMap<String, String>,
}

impl CalcGraph {
    pub fn new(host: &str) -> Self {
        CalcGraph {
            host: host.to_string(),
            endpoints: BTreeMap::new(),
            profile_rules: BTreeMap::new(),
            profile_tags: BTreeMap::new(),
            global_config: BTreeMap::new(),
            host_config: BTreeMap::new(),
            pools: BTreeMap::new(),
            blocks: BTreeSet::new(),
            skipped: BTreeMap::new(),
        }
    }

    /// Forgets everything, before a full resync.
    pub fn clear(&mut self) {
        *self = CalcGraph::new(&self.host);
    }

    /// Takes in one change. Keys outside the model are ignored.
    pub fn apply(&mut self, update: &Update) {
        let key = update.key();
        self.skipped.remove(key);
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
                let parsed = value.map(|v| IpPool::from_json(v).map_err(|e| e.to_string()));
                let parsed = parsed.map(|p| {
                    p.and_then(|pool| match pool.cidr == cidr {
                        true => Ok(pool),
                        false => Err(format!(
                            "the pool's cidr {} does not match its key",
                            pool.cidr
                        )),
                    })
                });
                self.note(key, &parsed);
                set(&mut self.pools, cidr, parsed.and_then(Result::ok));
            }
            Some(V1Key::ProfileRules(name)) => {
                let parsed = value.map(|v| ProfileRules::from_json(v).map_err(|e| e.to_string()));
                self.note(key, &parsed);
                set(&mut self.profile_rules, name, parsed);
            }
            Some(V1Key::ProfileTags(name)) => {
                let parsed = value.map(|v| tags_from_json(v).map_err(|e| e.to_string()));
                self.note(key, &parsed);
                set(&mut self.profile_tags, name, parsed);
            }
            Some(V1Key::FelixConfig(param)) => {
                set(&mut self.global_config, param, value.map(str::to_string))
            }
            Some(V1Key::HostConfig { host, param }) if host == self.host => {
                set(&mut self.host_config, param, value.map(str::to_string))
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
    }

    fn apply_endpoint(&mut self, key: &str, endpoint_key: EndpointKey, value: Option<&str>) {
        let parsed = value.map(|v| {
            endpoint_key.validate().map_err(|e| e.to_string())?;
            Endpoint::from_json(v).map_err(|e| e.to_string())
        });
        match parsed {
            Some(Ok(endpoint)) => {
                self.endpoints.insert(endpoint_key, endpoint);
            }
            Some(Err(reason)) => {
                self.endpoints.remove(&endpoint_key);
                self.skip(key, reason);
            }
            None => {
                self.endpoints.remove(&endpoint_key);
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
        self.skipped.insert(key.to_string(), reason);
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

    /// Why a profile cannot be trusted, if it cannot.
    fn profile_problem(&self, name: &str) -> Option<String> {
        match (self.profile_rules.get(name), self.profile_tags.get(name)) {
            (Some(Err(e)), _) => Some(format!("profile {name} has invalid rules: {e}")),
            (_, Some(Err(e))) => Some(format!("profile {name} has invalid tags: {e}")),
            _ => None,
        }
    }

    fn local_endpoints(&self, prefix: &str) -> BTreeMap<String, LocalEndpoint> {
        let mut local: BTreeMap<String, LocalEndpoint> = BTreeMap::new();
        let mine = self
            .endpoints
            .iter()
            .filter(|(k, e)| k.host == self.host && e.state == EndpointState::Active);
        for (key, endpoint) in mine {
            let policy = match endpoint
                .profile_ids
                .iter()
                .find_map(|p| self.profile_problem(p))
            {
                Some(reason) => EndpointPolicy::DropAll(reason),
                None => EndpointPolicy::Profiles(endpoint.profile_ids.clone()),
            };
            let mut entry = LocalEndpoint {
                key: key.clone(),
                interface: endpoint.name.clone(),
                mac: endpoint.mac.clone(),
                ipv4: v4_nets(endpoint.nets()),
                ipv6: v6_nets(endpoint.nets()),
                policy,
            };
            if !entry.interface.starts_with(prefix) {
                // Not an interface we manage: leave it alone rather than police someone else's.
                continue;
            }
            if let Some(other) = local.get_mut(&entry.interface) {
                let reason = format!("interface {} is claimed by two endpoints", entry.interface);
                other.policy = EndpointPolicy::DropAll(reason.clone());
                entry.policy = EndpointPolicy::DropAll(reason);
            }
            local.insert(entry.interface.clone(), entry);
        }
        local
    }

    /// The desired state of this host's dataplane.
    pub fn desired(&self) -> DesiredState {
        let (config, config_problems) = self.config();
        let endpoints = self.local_endpoints(&config.interface_prefix);
        let used: BTreeSet<&String> = endpoints
            .values()
            .filter_map(|e| match &e.policy {
                EndpointPolicy::Profiles(list) => Some(list),
                EndpointPolicy::DropAll(_) => None,
            })
            .flatten()
            .collect();
        let profiles: BTreeMap<String, ProfileRules> = used
            .into_iter()
            .filter_map(|name| match self.profile_rules.get(name) {
                Some(Ok(rules)) => Some((name.clone(), rules.clone())),
                _ => None,
            })
            .collect();
        let tags = self.tag_sets(&profiles);
        let mut skipped = self.skipped.clone();
        skipped.extend(config_problems);
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
        DesiredState {
            endpoints,
            profiles,
            tags,
            pools: pool_set(false),
            masquerade: pool_set(true),
            blocks: self.blocks.clone(),
            ipip_pools: self
                .pools
                .values()
                .filter(|p| p.ipip.is_some())
                .map(|p| p.cidr)
                .collect(),
            config,
            skipped,
        }
    }

    /// Members of every tag the given profiles' rules mention.
    fn tag_sets(&self, profiles: &BTreeMap<String, ProfileRules>) -> BTreeMap<String, NetSet> {
        let mut sets: BTreeMap<String, NetSet> = profiles
            .values()
            .flat_map(|r| r.inbound_rules.iter().chain(&r.outbound_rules))
            .flat_map(|rule| [&rule.src_tag, &rule.dst_tag])
            .flatten()
            .map(|tag| (tag.clone(), NetSet::default()))
            .collect();
        if sets.is_empty() {
            return sets;
        }
        // Which wanted tags each profile carries.
        let carried: BTreeMap<&str, Vec<&str>> = self
            .profile_tags
            .iter()
            .filter_map(|(name, tags)| {
                let tags = tags.as_ref().ok()?;
                let wanted: Vec<&str> = tags
                    .iter()
                    .filter(|t| sets.contains_key(*t))
                    .map(String::as_str)
                    .collect();
                (!wanted.is_empty()).then_some((name.as_str(), wanted))
            })
            .collect();
        for endpoint in self
            .endpoints
            .values()
            .filter(|e| e.state == EndpointState::Active)
        {
            for tag in endpoint
                .profile_ids
                .iter()
                .filter_map(|p| carried.get(p.as_str()))
                .flatten()
            {
                let set = sets.get_mut(*tag).expect("only wanted tags are carried");
                set.ipv4.extend(v4_nets(endpoint.nets()));
                set.ipv6.extend(v6_nets(endpoint.nets()));
            }
        }
        for set in sets.values_mut() {
            set.ipv4 = non_overlapping(
                std::mem::take(&mut set.ipv4),
                |n| n.prefix_len(),
                |a, b| a.contains(b),
            );
            set.ipv6 = non_overlapping(
                std::mem::take(&mut set.ipv6),
                |n| n.prefix_len(),
                |a, b| a.contains(b),
            );
        }
        sets
    }
}

fn set<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(value) => map.insert(key, value),
        None => map.remove(&key),
    };
}

fn v4_nets<'a>(nets: impl Iterator<Item = &'a IpNet>) -> BTreeSet<ipnet::Ipv4Net> {
    let nets = nets.filter_map(|n| match n {
        IpNet::V4(v4) => Some(*v4),
        IpNet::V6(_) => None,
    });
    non_overlapping(nets.collect(), |n| n.prefix_len(), |a, b| a.contains(b))
}

fn v6_nets<'a>(nets: impl Iterator<Item = &'a IpNet>) -> BTreeSet<ipnet::Ipv6Net> {
    let nets = nets.filter_map(|n| match n {
        IpNet::V6(v6) => Some(*v6),
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
