//! Changes to the agent's table as operations: the difference between two rulesets, or the
//! parts of one that a batch of desired-state [`Changes`] touches, so that a change to one
//! rule, endpoint or tag member costs a few operations, not the whole table.
//!
//! Operations run in phases that keep every reference valid: new sets and chains are
//! declared first, then set members change, chains are filled, map entries change, and
//! removals come last (endpoint chains before the profile chains they jump to, chains
//! before the sets they might still use).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use calico_felix::{Changes, DesiredState, EndpointPolicy, NetSet, TagChange};
use ipnet::IpNet;

use super::names::{
    compiled_copy, endpoint_chain, endpoint_walk_chain, is_host_set, profile_chain, tag_host_set,
    tag_set, TO_COMPILED,
};
use super::render::{
    element_text, map_entry, pool_sets, tag_set_of, tag_sets, wants_nat, Chain, Ruleset, Set,
    FROM_ENDPOINT, NAT_CHAIN, TO_ENDPOINT,
};
use super::table_of;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Declares a set (members follow as `AddElements`).
    AddSet(Set),
    DeleteSet(String),
    AddElements {
        set: String,
        elements: Vec<IpNet>,
    },
    DeleteElements {
        set: String,
        elements: Vec<IpNet>,
    },
    /// Declares a chain and fills it.
    AddChain(Chain),
    /// Replaces a chain's rules.
    ReplaceChain(Chain),
    DeleteChain(String),
    /// Map entries: interface → the chain it jumps to.
    AddMapEntries {
        map: String,
        entries: Vec<(String, String)>,
    },
    DeleteMapEntries {
        map: String,
        interfaces: Vec<String>,
    },
}

impl Op {
    /// Whether the operation only adds or removes elements of a set or map.
    pub fn is_elements(&self) -> bool {
        matches!(
            self,
            Op::AddElements { .. }
                | Op::DeleteElements { .. }
                | Op::AddMapEntries { .. }
                | Op::DeleteMapEntries { .. }
        )
    }
}

/// The operations that turn `old` into `new`.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Vec<Op> {
    let mut ops = Vec::new();
    let names: BTreeSet<&String> = old.sets.keys().chain(new.sets.keys()).collect();
    for name in names {
        set_ops(name, old.sets.get(name), new.sets.get(name), &mut ops);
    }
    let names: BTreeSet<&String> = old.chains.keys().chain(new.chains.keys()).collect();
    for name in names {
        chain_ops(name, old.chains.get(name), new.chains.get(name), &mut ops);
    }
    let empty = BTreeMap::new();
    let names: BTreeSet<&String> = old.maps.keys().chain(new.maps.keys()).collect();
    for map in names {
        let before = old.maps.get(map).unwrap_or(&empty);
        let after = new.maps.get(map).unwrap_or(&empty);
        map_ops(map, before, after, &mut ops);
    }
    ops
}

fn set_ops(name: &str, old: Option<&Set>, new: Option<&Set>, ops: &mut Vec<Op>) {
    match (old, new) {
        (None, None) => {}
        (Some(_), None) => ops.push(Op::DeleteSet(name.to_string())),
        (None, Some(new)) => {
            ops.push(Op::AddSet(Set {
                elements: BTreeSet::new(),
                ..new.clone()
            }));
            if !new.elements.is_empty() {
                ops.push(Op::AddElements {
                    set: name.to_string(),
                    elements: new.elements.iter().copied().collect(),
                });
            }
        }
        (Some(old), Some(new)) => {
            let gone: Vec<IpNet> = old.elements.difference(&new.elements).copied().collect();
            let added: Vec<IpNet> = new.elements.difference(&old.elements).copied().collect();
            element_ops(name, added, gone, ops);
        }
    }
}

fn element_ops(set: &str, added: Vec<IpNet>, gone: Vec<IpNet>, ops: &mut Vec<Op>) {
    if !gone.is_empty() {
        ops.push(Op::DeleteElements {
            set: set.to_string(),
            elements: gone,
        });
    }
    if !added.is_empty() {
        ops.push(Op::AddElements {
            set: set.to_string(),
            elements: added,
        });
    }
}

fn chain_ops(name: &str, old: Option<&Chain>, new: Option<&Chain>, ops: &mut Vec<Op>) {
    match (old, new) {
        (None, None) => {}
        (Some(old), None) => {
            // Compiled chains jump to one another: emptied first, they can go in any order.
            if super::compile::is_compiled(name) && !old.rules.is_empty() {
                ops.push(Op::ReplaceChain(Chain {
                    rules: Vec::new(),
                    ..old.clone()
                }));
            }
            ops.push(Op::DeleteChain(name.to_string()));
        }
        (None, Some(new)) => ops.push(Op::AddChain(new.clone())),
        (Some(old), Some(new)) if old.rules != new.rules => ops.push(Op::ReplaceChain(new.clone())),
        (Some(_), Some(_)) => {}
    }
}

fn map_ops(
    map: &str,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    ops: &mut Vec<Op>,
) {
    let gone: Vec<String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    let added: Vec<(String, String)> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !gone.is_empty() {
        ops.push(Op::DeleteMapEntries {
            map: map.to_string(),
            interfaces: gone,
        });
    }
    if !added.is_empty() {
        ops.push(Op::AddMapEntries {
            map: map.to_string(),
            entries: added,
        });
    }
}

impl Ruleset {
    /// Brings the parts of this ruleset that `changes` names to what `state` holds, and
    /// returns the operations that do the same to the kernel. Work is proportional to the
    /// changes, except after a change of settings, which renders everything again.
    pub fn update(&mut self, state: &DesiredState, changes: &Changes) -> Vec<Op> {
        // The nat chain comes and goes with the first and last pool asking for nat-outgoing:
        // a change of base chains, rendered whole like a change of settings.
        let nat_came_or_went =
            changes.pools && self.chains.contains_key(NAT_CHAIN) != wants_nat(state);
        if changes.config || nat_came_or_went {
            let new = Ruleset::new(state);
            let ops = diff(self, &new);
            *self = new;
            return ops;
        }
        let mut ops = Vec::new();
        // A tag whose set changes kind (its first wider network came, or its last went) has
        // a set of another name: every profile whose rules use it is rendered again.
        let mut tag_sets_now = BTreeMap::new();
        let mut flipped: BTreeSet<&String> = BTreeSet::new();
        for (tag, change) in &changes.tags {
            for v4 in [true, false] {
                let held = [tag_set(tag, v4), tag_host_set(tag, v4)]
                    .into_iter()
                    .find(|name| self.sets.contains_key(name));
                let now = tag_set_after(state, tag, v4, held.as_deref(), change);
                if held.is_some_and(|name| name != now) {
                    flipped.insert(tag);
                }
                tag_sets_now.insert((tag, v4), now);
            }
        }
        let mut profiles: BTreeSet<String> = changes.profiles.clone();
        if !flipped.is_empty() {
            profiles.extend(
                state
                    .profiles
                    .iter()
                    .filter(|(_, rules)| {
                        rules
                            .inbound_rules
                            .iter()
                            .chain(&rules.outbound_rules)
                            .flat_map(|r| [&r.src_tag, &r.dst_tag])
                            .any(|tag| tag.as_ref().is_some_and(|t| flipped.contains(t)))
                    })
                    .map(|(name, _)| name.clone()),
            );
        }
        let profiles = &profiles;
        // A compiled endpoint holds its profiles' rules: it changes with them. One already
        // walking its profiles (compiling deferred) changes only if one of them came or went.
        let mut endpoints: BTreeSet<&String> = changes.endpoints.iter().collect();
        if !profiles.is_empty() {
            let came_or_went = |p: &String| {
                self.chains.contains_key(&profile_chain(p, true)) != state.profiles.contains_key(p)
            };
            endpoints.extend(state.endpoints.values().filter_map(|e| match &e.policy {
                EndpointPolicy::Profiles(list) if list.len() >= super::compile::COMPILE_FROM => {
                    let mut changed = list.iter().filter(|p| profiles.contains(*p));
                    let affected = match self.deferred.contains(&e.interface) {
                        true => changed.any(came_or_went),
                        false => changed.next().is_some(),
                    };
                    affected.then_some(&e.interface)
                }
                _ => None,
            }));
        }
        for interface in endpoints {
            // Compiling waits for a quiet moment: the change itself must land at once.
            self.put_endpoint_recording(state, interface, false, &mut ops);
        }
        for name in profiles {
            let names = [true, false].map(|inbound| profile_chain(name, inbound));
            let before = names.clone().map(|n| self.chains.get(&n).cloned());
            self.put_profile(state, name);
            for (chain, old) in names.iter().zip(before) {
                chain_ops(chain, old.as_ref(), self.chains.get(chain), &mut ops);
            }
        }
        for (tag, change) in &changes.tags {
            match change {
                TagChange::Whole => self.replace_tag_sets(state, tag, &mut ops),
                TagChange::Members { .. } if flipped.contains(tag) => {
                    self.replace_tag_sets(state, tag, &mut ops)
                }
                TagChange::Members { added, removed } => {
                    for v4 in [true, false] {
                        let (added, gone) = (family(added, v4), family(removed, v4));
                        let name = &tag_sets_now[&(tag, v4)];
                        // The compiled table's copy, if a compiled endpoint uses the tag.
                        let copy = compiled_copy(name);
                        if self.sets.contains_key(&copy) {
                            self.move_members(&copy, added.clone(), gone.clone(), &mut ops);
                        }
                        self.move_members(name, added, gone, &mut ops);
                    }
                }
            }
        }
        if changes.pools {
            for set in pool_sets(state) {
                let name = set.name.clone();
                self.replace_set(&name, Some(set), &mut ops);
            }
        }
        ops
    }

    /// Puts one endpoint (see [`Ruleset::put_endpoint`]), recording the operations.
    fn put_endpoint_recording(
        &mut self,
        state: &DesiredState,
        interface: &str,
        compile: bool,
        ops: &mut Vec<Op>,
    ) {
        let before = self.endpoint_snapshot(interface);
        let compiled = self.put_endpoint(state, interface, compile);
        for name in &compiled.added {
            chain_ops(name, None, self.chains.get(name), ops);
            set_ops(name, None, self.sets.get(name), ops);
        }
        for chain in &compiled.removed_chains {
            chain_ops(&chain.name, Some(chain), None, ops);
        }
        for set in compiled.removed_sets {
            ops.push(Op::DeleteSet(set));
        }
        let after = self.endpoint_snapshot(interface);
        for ((name, old), (_, new)) in before.chains.into_iter().zip(after.chains) {
            chain_ops(&name, old.as_ref(), new.as_ref(), ops);
        }
        for ((map, old), (_, new)) in before.entries.into_iter().zip(after.entries) {
            let one = |entry: Option<String>| {
                entry
                    .map(|chain| BTreeMap::from([(interface.to_string(), chain)]))
                    .unwrap_or_default()
            };
            map_ops(&map, &one(old), &one(new), ops);
        }
    }

    /// Compiles the endpoints left walking their profiles by [`Ruleset::update`], and
    /// returns the operations that put their compiled chains in place (and remove the
    /// compiled objects nothing uses any more).
    pub fn compile_deferred(&mut self, state: &DesiredState) -> Vec<Op> {
        let mut ops = Vec::new();
        for interface in std::mem::take(&mut self.deferred) {
            self.put_endpoint_recording(state, &interface, true, &mut ops);
        }
        ops
    }

    /// Replaces one set (or removes it, with `None`), recording the operations.
    fn replace_set(&mut self, name: &str, new: Option<Set>, ops: &mut Vec<Op>) {
        set_ops(name, self.sets.get(name), new.as_ref(), ops);
        match new {
            Some(set) => self.sets.insert(name.to_string(), set),
            None => self.sets.remove(name),
        };
    }

    /// A tag's sets as `state` has them, under the names of their kinds (a set of the other
    /// kind goes; the chains that used it were rendered again in the same batch).
    fn replace_tag_sets(&mut self, state: &DesiredState, tag: &str, ops: &mut Vec<Op>) {
        for (v4, new) in [true, false].into_iter().zip(tag_sets(state, tag)) {
            let name = tag_set_of(state, tag, v4);
            // A copy in the compiled table goes with the compiled chains that use it (they
            // are compiled again when a tag changes kind); until then it follows the tag.
            let copy = compiled_copy(&name);
            if let Some(old) = self.sets.get(&copy) {
                let elements = new.as_ref().map(|s| s.elements.clone()).unwrap_or_default();
                let set = Set {
                    elements,
                    ..old.clone()
                };
                self.replace_set(&copy, Some(set), ops);
            }
            for other in [tag_set(tag, v4), tag_host_set(tag, v4)] {
                if other != name {
                    self.replace_set(&other, None, ops);
                }
            }
            self.replace_set(&name, new, ops);
        }
    }

    /// Members that joined and left a set that exists.
    fn move_members(&mut self, name: &str, added: Vec<IpNet>, gone: Vec<IpNet>, ops: &mut Vec<Op>) {
        let Some(set) = self.sets.get_mut(name) else {
            return;
        };
        for net in &gone {
            set.elements.remove(net);
        }
        set.elements.extend(&added);
        element_ops(name, added, gone, ops);
    }

    fn endpoint_snapshot(&self, interface: &str) -> EndpointSnapshot {
        EndpointSnapshot {
            chains: [
                endpoint_chain(interface, false),
                endpoint_chain(interface, true),
                endpoint_walk_chain(interface),
            ]
            .map(|name| {
                let chain = self.chains.get(&name).cloned();
                (name, chain)
            }),
            entries: [FROM_ENDPOINT, TO_ENDPOINT, TO_COMPILED].map(|map| {
                let entry = self.maps.get(map).and_then(|m| m.get(interface)).cloned();
                (map.to_string(), entry)
            }),
        }
    }
}

/// The set a tag's members of one family are in after `change`, given the set held before.
/// Only a wider network joining a hash set, or one leaving an interval set, can change the
/// kind, so the members (100,000 of them in a tag of every endpoint) are scanned only then.
fn tag_set_after(
    state: &DesiredState,
    tag: &str,
    v4: bool,
    held: Option<&str>,
    change: &TagChange,
) -> String {
    let single = |net: &IpNet| net.prefix_len() == net.max_prefix_len();
    if let (Some(held), TagChange::Members { added, removed }) = (held, change) {
        let (added, removed) = (family(added, v4), family(removed, v4));
        let stays = match is_host_set(held) {
            true => added.iter().all(single),
            false => removed.iter().all(single),
        };
        if stays {
            return held.to_string();
        }
    }
    tag_set_of(state, tag, v4)
}

/// The networks of one family in `nets`.
fn family(nets: &NetSet, v4: bool) -> Vec<IpNet> {
    match v4 {
        true => nets.ipv4.iter().map(|n| IpNet::V4(*n)).collect(),
        false => nets.ipv6.iter().map(|n| IpNet::V6(*n)).collect(),
    }
}

/// What one endpoint has in a ruleset.
struct EndpointSnapshot {
    chains: [(String, Option<Chain>); 3],
    entries: [(String, Option<String>); 3],
}

/// Which phase an operation runs in (see the module's description).
fn phase(op: &Op) -> (u8, u8) {
    match op {
        Op::AddSet(_) => (0, 0),
        Op::AddChain(_) => (0, 1),
        Op::DeleteElements { .. } => (1, 0),
        Op::AddElements { .. } => (1, 1),
        Op::ReplaceChain(_) => (2, 0),
        Op::DeleteMapEntries { .. } => (3, 0),
        Op::AddMapEntries { .. } => (3, 1),
        Op::DeleteChain(name) if name.starts_with("fw_") || name.starts_with("tw_") => (4, 0),
        Op::DeleteChain(_) => (4, 1),
        Op::DeleteSet(_) => (5, 0),
    }
}

/// The operations in the order they must run.
pub(crate) fn ordered(mut ops: Vec<Op>) -> Vec<Op> {
    ops.sort_by_key(phase);
    ops
}

/// One nft script running `ops` as one transaction (empty if there are none).
pub fn script(ops: &[Op]) -> String {
    let ops = ordered(ops.to_vec());
    let mut lines: Vec<String> = Vec::new();
    // Declarations first (chains empty, so any rule may jump to any new chain).
    for op in &ops {
        match op {
            Op::AddSet(set) => lines.push(format!(
                "add set inet {} {} {{ {} }}",
                table_of(&set.name),
                set.name,
                set.properties()
            )),
            Op::AddChain(chain) => lines.push(match chain.properties().as_str() {
                "" => format!("add chain inet {} {}", table_of(&chain.name), chain.name),
                properties => format!(
                    "add chain inet {} {} {{ {properties} }}",
                    table_of(&chain.name),
                    chain.name
                ),
            }),
            _ => {}
        }
    }
    for op in &ops {
        match op {
            Op::DeleteElements { set, elements } => lines.push(format!(
                "delete element inet {} {set} {{ {} }}",
                table_of(set),
                joined(elements.iter().map(|n| element_text(set, n)))
            )),
            Op::AddElements { set, elements } => lines.push(format!(
                "add element inet {} {set} {{ {} }}",
                table_of(set),
                joined(elements.iter().map(|n| element_text(set, n)))
            )),
            _ => {}
        }
    }
    for op in &ops {
        let (chain, flush) = match op {
            Op::AddChain(chain) => (chain, false),
            Op::ReplaceChain(chain) => (chain, true),
            _ => continue,
        };
        let table = table_of(&chain.name);
        if flush {
            lines.push(format!("flush chain inet {table} {}", chain.name));
        }
        for rule in &chain.rules {
            lines.push(format!("add rule inet {table} {} {rule}", chain.name));
        }
    }
    for op in &ops {
        match op {
            Op::DeleteMapEntries { map, interfaces } => lines.push(format!(
                "delete element inet {} {map} {{ {} }}",
                table_of(map),
                joined(interfaces.iter().map(|i| format!("\"{i}\"")))
            )),
            Op::AddMapEntries { map, entries } => lines.push(format!(
                "add element inet {} {map} {{ {} }}",
                table_of(map),
                joined(entries.iter().map(|(i, c)| map_entry(i, c)))
            )),
            Op::DeleteChain(name) => {
                lines.push(format!("delete chain inet {} {name}", table_of(name)))
            }
            Op::DeleteSet(name) => lines.push(format!("delete set inet {} {name}", table_of(name))),
            _ => {}
        }
    }
    let mut out = String::new();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    out
}

fn joined(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// The script turning `old` into `new` (empty if they are equal).
pub fn delta_script(old: &Ruleset, new: &Ruleset) -> String {
    script(&diff(old, new))
}
