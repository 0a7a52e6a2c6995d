//! The whole-state calculation, from the graph's inputs alone: what the incremental graph
//! must always agree with. Simple on purpose (every endpoint, every profile, every time), and
//! used only by tests.

use std::collections::{BTreeMap, BTreeSet};

use calico_model::endpoint::EndpointState;
use calico_model::profile::ProfileRules;

use super::{non_overlapping, v4_nets, v6_nets, CalcGraph};
use crate::desired::{DesiredState, EndpointPolicy, LocalEndpoint, NetSet};

impl CalcGraph {
    fn oracle_local_endpoints(&self, prefix: &str) -> BTreeMap<String, LocalEndpoint> {
        let mut local: BTreeMap<String, LocalEndpoint> = BTreeMap::new();
        let mine = self
            .parsed_endpoints
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

    /// The desired state computed from scratch.
    pub(super) fn oracle(&self) -> DesiredState {
        let (config, config_problems) = self.config();
        let endpoints = self.oracle_local_endpoints(&config.interface_prefix);
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
        let tags = self.oracle_tag_sets(&profiles);
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
    fn oracle_tag_sets(
        &self,
        profiles: &BTreeMap<String, ProfileRules>,
    ) -> BTreeMap<String, NetSet> {
        let mut sets: BTreeMap<String, NetSet> = profiles
            .values()
            .flat_map(|r| r.inbound_rules.iter().chain(&r.outbound_rules))
            .flat_map(|rule| [&rule.src_tag, &rule.dst_tag])
            .flatten()
            .map(|tag| (tag.clone(), NetSet::default()))
            .collect();
        let carried: BTreeMap<&str, Vec<&str>> = self
            .profile_tags
            .iter()
            .filter_map(|(name, tags)| {
                let tags = tags.as_ref().ok()?;
                let wanted: Vec<&str> = tags
                    .iter()
                    .filter(|t| sets.contains_key(&***t))
                    .map(|t| &**t)
                    .collect();
                (!wanted.is_empty()).then_some((name.as_str(), wanted))
            })
            .collect();
        for endpoint in self
            .parsed_endpoints
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
