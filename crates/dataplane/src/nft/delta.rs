//! The difference between two rulesets as one nft transaction, so that a change to one rule or
//! one endpoint costs a few lines, not the whole table. The order within the transaction keeps
//! every reference valid: new objects first, then changed contents, then removals (chains
//! before the sets they might still use).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::render::{Chain, Ruleset, Set};
use super::TABLE;

/// The script turning `old` into `new` (empty if they are equal).
pub fn delta_script<'a>(old: &'a Ruleset, new: &'a Ruleset) -> String {
    let mut out = String::new();
    let mut emit = |text: String| {
        let _ = writeln!(out, "{text}");
    };
    let members = |set: &'a Set| -> (&'a Set, BTreeSet<&'a str>) {
        (set, set.elements.iter().map(String::as_str).collect())
    };
    let old_sets: BTreeMap<&str, (&Set, BTreeSet<&str>)> = old
        .sets
        .iter()
        .map(|s| (s.name.as_str(), members(s)))
        .collect();
    let new_sets: BTreeMap<&str, (&Set, BTreeSet<&str>)> = new
        .sets
        .iter()
        .map(|s| (s.name.as_str(), members(s)))
        .collect();
    let old_chains: BTreeMap<&str, &Chain> =
        old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let new_chains: BTreeMap<&str, &Chain> =
        new.chains.iter().map(|c| (c.name.as_str(), c)).collect();

    // 1. New sets and chains (empty), so anything may refer to them.
    for (name, (set, _)) in new_sets.iter().filter(|(n, _)| !old_sets.contains_key(*n)) {
        emit(format!(
            "add set inet {TABLE} {name} {{ {} }}",
            set.properties()
        ));
    }
    for chain in new
        .chains
        .iter()
        .filter(|c| !old_chains.contains_key(c.name.as_str()))
    {
        match chain.properties().as_str() {
            "" => emit(format!("add chain inet {TABLE} {}", chain.name)),
            properties => emit(format!(
                "add chain inet {TABLE} {} {{ {properties} }}",
                chain.name
            )),
        }
    }
    // 2. Set members.
    for (name, (_, members)) in &new_sets {
        let before = old_sets
            .get(name)
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let gone: Vec<&str> = before.difference(members).copied().collect();
        let added: Vec<&str> = members.difference(&before).copied().collect();
        if !gone.is_empty() {
            emit(format!(
                "delete element inet {TABLE} {name} {{ {} }}",
                gone.join(", ")
            ));
        }
        if !added.is_empty() {
            emit(format!(
                "add element inet {TABLE} {name} {{ {} }}",
                added.join(", ")
            ));
        }
    }
    // 3. Chains whose rules changed (or are new): refilled.
    for chain in &new.chains {
        match old_chains.get(chain.name.as_str()) {
            Some(before) if before.rules == chain.rules => continue,
            Some(_) => emit(format!("flush chain inet {TABLE} {}", chain.name)),
            None => {}
        }
        for rule in &chain.rules {
            emit(format!("add rule inet {TABLE} {} {rule}", chain.name));
        }
    }
    // 4. Verdict map entries.
    for (map, entries) in &new.maps {
        let before: BTreeMap<&str, &str> = old
            .maps
            .iter()
            .find(|(m, _)| m == map)
            .map(|(_, e)| e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
            .unwrap_or_default();
        let after: BTreeMap<&str, &str> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let gone: Vec<&str> = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(*v))
            .map(|(k, _)| *k)
            .collect();
        let added: Vec<String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k} : {v}"))
            .collect();
        if !gone.is_empty() {
            emit(format!(
                "delete element inet {TABLE} {map} {{ {} }}",
                gone.join(", ")
            ));
        }
        if !added.is_empty() {
            emit(format!(
                "add element inet {TABLE} {map} {{ {} }}",
                added.join(", ")
            ));
        }
    }
    // 5. Removals: chains (in definition order: endpoint chains before the profile chains
    //    they jump to), then sets nothing uses any more.
    for chain in old
        .chains
        .iter()
        .filter(|c| !new_chains.contains_key(c.name.as_str()))
    {
        emit(format!("delete chain inet {TABLE} {}", chain.name));
    }
    for name in old_sets.keys().filter(|n| !new_sets.contains_key(*n)) {
        emit(format!("delete set inet {TABLE} {name}"));
    }
    out
}
