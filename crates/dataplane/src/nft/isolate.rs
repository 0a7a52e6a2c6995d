//! When nft refuses a host's whole ruleset, find the parts it refuses and program the rest.
//!
//! nft applies a script as one transaction, so one object the kernel will not take (a name,
//! an element, a rule) would otherwise refuse every later change on the host. The parts are
//! profiles (with the tag sets their rules use) and endpoints (their own chains and map
//! entries). Each is checked with `nft --check` (the kernel validates, nothing is committed),
//! by bisection: k refused parts among n cost about k·log₂(n) checks, not n. Endpoints that
//! use a refused profile, and refused endpoints, fail closed: no map entry, so their traffic
//! meets the drop, and their status says why. Everything else is programmed as usual.

use std::collections::{BTreeMap, BTreeSet};

use calico_felix::{DesiredState, EndpointPolicy};

use super::render::Ruleset;
use super::FirewallError;

/// A part of the ruleset that can be checked and left out on its own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Profile(String),
    /// An endpoint, by its interface.
    Endpoint(String),
}

/// The parts nft refused, each with nft's reason.
pub type Refused = BTreeMap<Part, String>;

/// Every part of a state.
fn parts(state: &DesiredState) -> Vec<Part> {
    let profiles = state.profiles.keys().cloned().map(Part::Profile);
    let endpoints = state.endpoints.keys().cloned().map(Part::Endpoint);
    profiles.chain(endpoints).collect()
}

/// The tags a set of profiles' rules use.
fn tags_of<'a>(
    state: &DesiredState,
    profiles: impl Iterator<Item = &'a String>,
) -> BTreeSet<String> {
    profiles
        .filter_map(|name| state.profiles.get(name))
        .flat_map(|rules| rules.inbound_rules.iter().chain(&rules.outbound_rules))
        .flat_map(|rule| [&rule.src_tag, &rule.dst_tag])
        .flatten()
        .cloned()
        .collect()
}

/// A state holding only `parts` of `state` (base chains, pools and config included).
fn only(state: &DesiredState, parts: &[Part]) -> DesiredState {
    let profiles: BTreeSet<&String> = parts
        .iter()
        .filter_map(|p| match p {
            Part::Profile(name) => Some(name),
            Part::Endpoint(_) => None,
        })
        .collect();
    let interfaces: BTreeSet<&String> = parts
        .iter()
        .filter_map(|p| match p {
            Part::Endpoint(interface) => Some(interface),
            Part::Profile(_) => None,
        })
        .collect();
    let tags = tags_of(state, profiles.iter().copied());
    DesiredState {
        endpoints: state
            .endpoints
            .iter()
            .filter(|(interface, _)| interfaces.contains(interface))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        profiles: state
            .profiles
            .iter()
            .filter(|(name, _)| profiles.contains(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tags: state
            .tags
            .iter()
            .filter(|(tag, _)| tags.contains(*tag))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..state.clone()
    }
}

/// The script that checks one part of `state` on its own (None if `state` has no such part).
pub fn probe_script(state: &DesiredState, part: &Part) -> Option<String> {
    let present = match part {
        Part::Profile(name) => state.profiles.contains_key(name),
        Part::Endpoint(interface) => state.endpoints.contains_key(interface),
    };
    present.then(|| Ruleset::new(&only(state, std::slice::from_ref(part))).full_script())
}

/// The parts of `state` that `check` refuses, found by bisection. `check` is given a whole
/// script for a state holding some of the parts.
pub fn refused_parts(
    state: &DesiredState,
    check: &dyn Fn(&str) -> Result<(), FirewallError>,
) -> Result<Refused, FirewallError> {
    let mut refused = Refused::new();
    let all = parts(state);
    // Without any part: if even that is refused, the fault is not in a part (the base chains,
    // the pools): nothing to isolate.
    check(&Ruleset::new(&only(state, &[])).full_script())?;
    bisect(state, &all, check, &mut refused)?;
    Ok(refused)
}

fn bisect(
    state: &DesiredState,
    parts: &[Part],
    check: &dyn Fn(&str) -> Result<(), FirewallError>,
    refused: &mut Refused,
) -> Result<(), FirewallError> {
    if parts.is_empty() {
        return Ok(());
    }
    match check(&Ruleset::new(&only(state, parts)).full_script()) {
        Ok(()) => Ok(()),
        Err(FirewallError::Rejected(reason)) if parts.len() == 1 => {
            refused.insert(parts[0].clone(), first_line(&reason));
            Ok(())
        }
        Err(FirewallError::Rejected(_)) => {
            let (left, right) = parts.split_at(parts.len() / 2);
            bisect(state, left, check, refused)?;
            bisect(state, right, check, refused)
        }
        Err(e) => Err(e),
    }
}

fn first_line(reason: &str) -> String {
    reason.lines().next().unwrap_or(reason).trim().to_string()
}

/// `state` without the refused parts: endpoints that are refused or use a refused profile
/// fail closed (their reason says which), refused profiles and the tags only they used go.
/// Returns the failed-closed endpoints by interface, with their reason.
pub fn without(
    state: &DesiredState,
    refused: &Refused,
) -> (DesiredState, BTreeMap<String, String>) {
    let mut patched = state.clone();
    let mut failed = BTreeMap::new();
    for (interface, endpoint) in &mut patched.endpoints {
        let reason = match (
            &endpoint.policy,
            refused.get(&Part::Endpoint(interface.clone())),
        ) {
            (_, Some(why)) => Some(format!("nft refused endpoint {interface}: {why}")),
            (EndpointPolicy::Profiles(profiles), None) => profiles.iter().find_map(|p| {
                refused
                    .get(&Part::Profile(p.clone()))
                    .map(|why| format!("nft refused profile {p}: {why}"))
            }),
            (EndpointPolicy::DropAll(_), None) => None,
        };
        if let Some(reason) = reason {
            endpoint.policy = EndpointPolicy::DropAll(reason.clone());
            failed.insert(interface.clone(), reason);
        }
    }
    patched
        .profiles
        .retain(|name, _| !refused.contains_key(&Part::Profile(name.clone())));
    let used = tags_of(&patched, patched.profiles.keys());
    patched.tags.retain(|tag, _| used.contains(tag));
    (patched, failed)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use calico_felix::{CalcGraph, Update};

    use super::*;

    fn put(graph: &mut CalcGraph, key: &str, value: &str) {
        graph.apply(&Update::Put {
            key: key.into(),
            value: value.into(),
        });
    }

    /// 40 endpoints, each in its own profile `p<i>` whose rule allows from tag `t<i>`.
    fn state() -> DesiredState {
        let mut graph = CalcGraph::new("h");
        for i in 0..40 {
            put(
                &mut graph,
                &format!("/calico/v1/policy/profile/p{i}/rules"),
                &format!(
                    r#"{{"inbound_rules":[{{"action":"allow","src_tag":"t{i}"}}],"outbound_rules":[]}}"#
                ),
            );
            put(
                &mut graph,
                &format!("/calico/v1/policy/profile/p{i}/tags"),
                &format!(r#"["t{i}"]"#),
            );
            put(
                &mut graph,
                &format!("/calico/v1/host/h/workload/docker/w{i}/endpoint/e{i}"),
                &format!(
                    r#"{{"state":"active","name":"cali{i:011}","profile_ids":["p{i}"],"ipv4_nets":["10.0.0.{i}/32"]}}"#
                ),
            );
        }
        graph.desired()
    }

    /// A fake nft that refuses any script holding `poison`, and counts its checks.
    fn refusing<'a>(
        poison: &'a [String],
        checks: &'a Cell<usize>,
    ) -> impl Fn(&str) -> Result<(), FirewallError> + 'a {
        move |script: &str| {
            checks.set(checks.get() + 1);
            match poison.iter().find(|p| script.contains(p.as_str())) {
                Some(p) => Err(FirewallError::Rejected(format!(
                    "Error: cannot take {p}\nmore"
                ))),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn a_refused_profile_fails_closed_only_its_endpoints() {
        let state = state();
        let poison = [super::super::names::profile_chain("p7", true)];
        let checks = Cell::new(0);
        let refused = refused_parts(&state, &refusing(&poison, &checks)).unwrap();
        assert_eq!(
            refused.keys().collect::<Vec<_>>(),
            [&Part::Profile("p7".into())]
        );
        assert!(
            checks.get() <= 2 + 2 * 7,
            "bisection, not one check per part: {}",
            checks.get()
        );
        let (patched, failed) = without(&state, &refused);
        assert_eq!(failed.len(), 1);
        let reason = &failed["cali00000000007"];
        assert!(
            reason.contains("nft refused profile p7: Error: cannot take"),
            "{reason}"
        );
        assert!(!patched.profiles.contains_key("p7"));
        assert!(
            !patched.tags.contains_key("t7"),
            "the tag only p7 used goes with it"
        );
        assert_eq!(patched.profiles.len(), 39);
        let dropped: Vec<&String> = patched
            .endpoints
            .iter()
            .filter(|(_, e)| matches!(e.policy, EndpointPolicy::DropAll(_)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(dropped, ["cali00000000007"]);
        // What is left, nft takes.
        refusing(&poison, &checks)(&Ruleset::new(&patched).full_script()).unwrap();
    }

    #[test]
    fn a_refused_tag_set_fails_closed_the_profiles_using_it() {
        let state = state();
        let poison = [
            super::super::names::tag_host_set("t3", true),
            super::super::names::endpoint_chain("cali00000000021", false),
        ];
        let checks = Cell::new(0);
        let refused = refused_parts(&state, &refusing(&poison, &checks)).unwrap();
        assert_eq!(
            refused.keys().collect::<Vec<_>>(),
            [
                &Part::Profile("p3".into()),
                &Part::Endpoint("cali00000000021".into())
            ]
        );
        let (patched, failed) = without(&state, &refused);
        assert_eq!(
            failed.keys().collect::<Vec<_>>(),
            ["cali00000000003", "cali00000000021"]
        );
        assert!(failed["cali00000000021"].starts_with("nft refused endpoint cali00000000021"));
        refusing(&poison, &checks)(&Ruleset::new(&patched).full_script()).unwrap();
    }

    #[test]
    fn a_fault_outside_every_part_is_not_blamed_on_one() {
        let state = state();
        let poison = ["chain forward".to_string()];
        let checks = Cell::new(0);
        assert!(refused_parts(&state, &refusing(&poison, &checks)).is_err());
    }
}
