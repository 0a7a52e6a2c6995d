//! The incremental graph against the whole-state oracle: random sequences of datastore
//! changes over a small world (so that names, interfaces and networks collide often), with
//! the state compared after every change, and the changes reported checked to be enough to
//! bring a copy of the previous state to the new one.

use proptest::prelude::*;

use super::*;

const HOSTS: [&str; 2] = ["h", "o"];
const PROFILES: [&str; 3] = ["A", "B", "C"];
const TAGS: [&str; 4] = ["A", "B", "C", "T"];
const INTERFACES: [&str; 4] = ["cali1", "cali2", "cali3", "tap1"];
const V4: [&str; 6] = [
    "10.0.0.1/32",
    "10.0.0.2/32",
    "10.0.0.0/30",
    "10.0.0.0/24",
    "10.0.1.5/24",
    "10.0.0.1/32",
];
const V6: [&str; 3] = ["fd00::1/128", "fd00::/126", "fd00::2/128"];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(items)
}

fn subset(items: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(pick(items), 0..=max)
}

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(",")
}

fn endpoint_update() -> impl Strategy<Value = Update> {
    (
        pick(&HOSTS),
        pick(&["w1", "w2"]),
        pick(&["e1", "e2"]),
        prop::option::weighted(
            0.85,
            (
                any::<bool>(),
                pick(&INTERFACES),
                subset(&PROFILES, 3),
                subset(&V4, 2),
                subset(&V6, 1),
                prop::option::of(pick(&["ee:00:00:00:00:01", "ee:00:00:00:00:02"])),
                prop::bool::weighted(0.05),
            ),
        ),
    )
        .prop_map(|(host, workload, id, value)| {
            let key = format!("/calico/v1/host/{host}/workload/docker/{workload}/endpoint/{id}");
            match value {
                None => Update::Delete { key },
                Some((_, _, _, _, _, _, true)) => Update::Put {
                    key,
                    value: "{not json".into(),
                },
                Some((active, name, profiles, v4, v6, mac, false)) => {
                    let mac = mac.map(|m| format!(r#","mac":"{m}""#)).unwrap_or_default();
                    Update::Put {
                        key,
                        value: format!(
                            r#"{{"state":"{}","name":"{name}"{mac},"profile_ids":[{}],"ipv4_nets":[{}],"ipv6_nets":[{}]}}"#,
                            if active { "active" } else { "inactive" },
                            quoted(&profiles),
                            quoted(&v4),
                            quoted(&v6),
                        ),
                    }
                }
            }
        })
}

fn rule() -> impl Strategy<Value = String> {
    (
        pick(&["allow", "deny"]),
        prop::option::of(pick(&TAGS)),
        prop::option::of(pick(&TAGS)),
    )
        .prop_map(|(action, src, dst)| {
            let mut fields = vec![format!(r#""action":"{action}""#)];
            if let Some(src) = src {
                fields.push(format!(r#""src_tag":"{src}""#));
            }
            if let Some(dst) = dst {
                fields.push(format!(r#""dst_tag":"{dst}""#));
            }
            format!("{{{}}}", fields.join(","))
        })
}

fn profile_update() -> impl Strategy<Value = Update> {
    let rules = (
        prop::collection::vec(rule(), 0..3),
        prop::collection::vec(rule(), 0..2),
    )
        .prop_map(|(inbound, outbound)| {
            format!(
                r#"{{"inbound_rules":[{}],"outbound_rules":[{}]}}"#,
                inbound.join(","),
                outbound.join(",")
            )
        });
    let value = prop_oneof![
        6 => rules.prop_map(Some),
        1 => Just(Some(r#"{"inbound_rules":"all"}"#.to_string())),
        1 => Just(None),
    ];
    let tags = prop_oneof![
        6 => subset(&TAGS, 2).prop_map(|t| Some(format!("[{}]", quoted(&t)))),
        1 => Just(Some("[7]".to_string())),
        1 => Just(None),
    ];
    prop_oneof![
        (pick(&PROFILES), value)
            .prop_map(|(p, v)| (format!("/calico/v1/policy/profile/{p}/rules"), v)),
        (pick(&PROFILES), tags)
            .prop_map(|(p, v)| (format!("/calico/v1/policy/profile/{p}/tags"), v)),
    ]
    .prop_map(|(key, value)| match value {
        Some(value) => Update::Put { key, value },
        None => Update::Delete { key },
    })
}

fn other_update() -> impl Strategy<Value = Update> {
    let config = (
        pick(&[
            "/calico/v1/config/InterfacePrefix",
            "/calico/v1/host/h/config/InterfacePrefix",
            "/calico/v1/config/DefaultEndpointToHostAction",
        ]),
        prop::option::of(pick(&["cali", "tap", "bad!", "ACCEPT"])),
    );
    let pool = (
        pick(&["10.0.0.0-16", "fd00::-64"]),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(cidr, value)| {
            let key = format!(
                "/calico/v1/ipam/v{}/pool/{cidr}",
                if cidr.contains(':') { 6 } else { 4 }
            );
            let value = value.map(|masquerade| {
                format!(
                    r#"{{"cidr":"{}","masquerade":{masquerade}}}"#,
                    cidr.replace('-', "/")
                )
            });
            (key, value)
        });
    let block = (pick(&["h", "o"]), prop::option::of(Just("{}"))).prop_map(|(host, value)| {
        (
            format!("/calico/ipam/v2/host/{host}/ipv4/block/10.0.0.0-26"),
            value.map(str::to_string),
        )
    });
    prop_oneof![
        config.prop_map(|(k, v)| (k.to_string(), v.map(str::to_string))),
        pool,
        block,
    ]
    .prop_map(|(key, value)| match value {
        Some(value) => Update::Put { key, value },
        None => Update::Delete { key },
    })
}

fn update() -> impl Strategy<Value = Update> {
    prop_oneof![5 => endpoint_update(), 3 => profile_update(), 1 => other_update()]
}

/// Brings `mirror` (the state when changes were last taken) up to date through `changes`
/// alone, as the dataplane would.
fn follow(mirror: &mut DesiredState, state: &DesiredState, changes: &Changes) {
    for interface in &changes.endpoints {
        match state.endpoints.get(interface) {
            Some(e) => mirror.endpoints.insert(interface.clone(), e.clone()),
            None => mirror.endpoints.remove(interface),
        };
    }
    for name in &changes.profiles {
        match state.profiles.get(name) {
            Some(r) => mirror.profiles.insert(name.clone(), r.clone()),
            None => mirror.profiles.remove(name),
        };
    }
    for (tag, change) in &changes.tags {
        match change {
            TagChange::Whole => match state.tags.get(tag) {
                Some(set) => mirror.tags.insert(tag.clone(), set.clone()),
                None => mirror.tags.remove(tag),
            },
            TagChange::Members { added, removed } => {
                let set = mirror
                    .tags
                    .get_mut(tag)
                    .expect("members of a set that exists");
                for net in &removed.ipv4 {
                    assert!(set.ipv4.remove(net), "{tag}: removing absent {net}");
                }
                for net in &removed.ipv6 {
                    assert!(set.ipv6.remove(net), "{tag}: removing absent {net}");
                }
                for net in &added.ipv4 {
                    assert!(set.ipv4.insert(*net), "{tag}: adding present {net}");
                }
                for net in &added.ipv6 {
                    assert!(set.ipv6.insert(*net), "{tag}: adding present {net}");
                }
                None
            }
        };
    }
    if changes.pools {
        mirror.pools = state.pools.clone();
        mirror.masquerade = state.masquerade.clone();
        mirror.ipip_pools = state.ipip_pools.clone();
    }
    if changes.blocks {
        mirror.blocks = state.blocks.clone();
    }
    if changes.config {
        mirror.config = state.config.clone();
    }
    mirror.skipped = state.skipped.clone();
}

/// The profiles an endpoint's chains jump to: those of its list that exist.
fn jumps(state: &DesiredState, endpoint: &LocalEndpoint) -> Vec<String> {
    match &endpoint.policy {
        EndpointPolicy::Profiles(list) => list
            .iter()
            .filter(|p| state.profiles.contains_key(*p))
            .cloned()
            .collect(),
        EndpointPolicy::DropAll(_) => vec![],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_incremental_state_is_the_whole_calculation_after_every_change(
        steps in prop::collection::vec((update(), any::<bool>()), 1..60)
    ) {
        let mut graph = CalcGraph::new("h");
        let mut mirror = DesiredState::default();
        let mut before = DesiredState::default();
        for (n, (update, take)) in steps.iter().enumerate() {
            graph.apply(update);
            let oracle = graph.oracle();
            prop_assert_eq!(graph.state(), &oracle, "after step {}: {:?}", n, update);
            if *take {
                let changes = graph.take_changes();
                let state = graph.state();
                follow(&mut mirror, state, &changes);
                prop_assert_eq!(&mirror, state, "changes {:?} after step {}", changes, n);
                for (interface, endpoint) in &state.endpoints {
                    if changes.endpoints.contains(interface) {
                        continue;
                    }
                    let old = before.endpoints.get(interface).map(|e| jumps(&before, e));
                    prop_assert_eq!(
                        old,
                        Some(jumps(state, endpoint)),
                        "{}'s jumps changed unreported", interface
                    );
                }
                before = state.clone();
            }
        }
    }
}
