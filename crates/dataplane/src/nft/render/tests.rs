use calico_felix::{CalcGraph, Update};

use super::*;

fn put(graph: &mut CalcGraph, key: &str, value: &str) {
    graph.apply(&Update::Put {
        key: key.into(),
        value: value.into(),
    });
}

/// Two local workloads (one dual-stack), one remote, a profile with every kind of rule, one
/// endpoint dropped for an invalid profile, a pool with nat-outgoing and one without.
pub fn sample() -> DesiredState {
    let mut g = CalcGraph::new("calico-01");
    put(&mut g, "/calico/v1/policy/profile/web/tags", r#"["web"]"#);
    put(
        &mut g,
        "/calico/v1/policy/profile/web/rules",
        r#"{"inbound_rules":[
            {"action":"deny","protocol":"tcp","src_net":"10.9.0.0/16","dst_ports":[22]},
            {"action":"allow","protocol":"tcp","src_tag":"db","dst_ports":[80,443,"8000:8080"]},
            {"action":"allow","protocol":"icmp","icmp_type":8,"icmp_code":0},
            {"action":"allow","protocol":"icmpv6","icmp_type":128},
            {"action":"allow","src_tag":"web"}],
          "outbound_rules":[{"action":"deny","protocol":"udp","dst_net":"fd00::/8","src_ports":[53]},{"action":"allow"}]}"#,
    );
    put(
        &mut g,
        "/calico/v1/policy/profile/db/tags",
        r#"["db","web.backend"]"#,
    );
    put(
        &mut g,
        "/calico/v1/policy/profile/db/rules",
        &calico_model::profile::ProfileRules::default_for("db").to_json(),
    );
    put(&mut g, "/calico/v1/policy/profile/broken/rules", "{");
    put(
        &mut g,
        "/calico/v1/ipam/v4/pool/192.168.0.0-16",
        r#"{"cidr":"192.168.0.0/16","masquerade":true}"#,
    );
    put(
        &mut g,
        "/calico/v1/ipam/v6/pool/fd80::-64",
        r#"{"cidr":"fd80::/64"}"#,
    );
    let endpoints = [
        (
            "calico-01",
            "w1",
            "1111111111111111",
            r#""ipv4_nets":["192.168.0.1/32"],"ipv6_nets":["fd80::1/128"]"#,
            r#"["web","db"]"#,
        ),
        (
            "calico-01",
            "w2",
            "2222222222222222",
            r#""ipv4_nets":["192.168.0.2/32"]"#,
            r#"["db"]"#,
        ),
        (
            "calico-01",
            "w3",
            "3333333333333333",
            r#""ipv4_nets":["192.168.0.3/32"]"#,
            r#"["broken"]"#,
        ),
        (
            "calico-02",
            "w4",
            "4444444444444444",
            r#""ipv4_nets":["192.168.1.4/32"]"#,
            r#"["db"]"#,
        ),
    ];
    for (host, workload, id, nets, profiles) in endpoints {
        let key = format!("/calico/v1/host/{host}/workload/docker/{workload}/endpoint/{id}");
        let value = format!(
            r#"{{"state":"active","name":"cali{}","profile_ids":{profiles},{nets}}}"#,
            &id[..11]
        );
        put(&mut g, &key, &value);
    }
    g.desired()
}

#[test]
fn the_sample_renders_as_the_golden_script() {
    let script = render(&sample());
    let golden = include_str!("golden.nft");
    if script != golden {
        // Show the first difference; the full script is in the failure output.
        let (line, (got, want)) = script
            .lines()
            .zip(golden.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((0, ("(length differs)", "")));
        panic!(
            "line {}:\n got: {got}\nwant: {want}\n\nfull script:\n{script}",
            line + 1
        );
    }
}

#[test]
fn an_empty_state_still_guards_workload_interfaces() {
    let script = render(&DesiredState::default());
    assert!(
        script.contains("iifname vmap @from-endpoint\n\t\tdrop"),
        "{script}"
    );
    assert!(
        script.contains("oifname vmap @to-endpoint\n\t\tdrop"),
        "{script}"
    );
    assert!(!script.contains("elements"), "{script}");
}

/// An endpoint without profiles (as `calicoctl container add` leaves it until `profile set`)
/// gets no chains and no map entries: its traffic meets the drop after the maps, as an
/// unknown interface's does, and adding it commits no rules (no check of the whole table).
#[test]
fn an_endpoint_without_profiles_is_dropped_without_chains() {
    let mut g = CalcGraph::new("calico-01");
    put(
        &mut g,
        "/calico/v1/host/calico-01/workload/docker/w/endpoint/5555555555555555",
        r#"{"state":"active","name":"cali55555555555","profile_ids":[],"ipv4_nets":["192.168.0.5/32"]}"#,
    );
    let state = g.desired();
    assert!(state.endpoints.contains_key("cali55555555555"));
    let ruleset = Ruleset::new(&state);
    for inbound in [false, true] {
        let chain = endpoint_chain("cali55555555555", inbound);
        assert!(!ruleset.chains.contains_key(&chain), "{chain}");
    }
    assert!(ruleset.maps.values().all(|entries| entries.is_empty()));
}

/// The nat chain exists while some pool has nat-outgoing (a nat hook costs every new flow),
/// and comes and goes with a change of pools.
#[test]
fn the_nat_chain_is_there_only_while_a_pool_asks_for_it() {
    use crate::nft::Op;
    let with = sample();
    let mut without = with.clone();
    without.masquerade = Default::default();
    assert!(Ruleset::new(&with).chains.contains_key(NAT_CHAIN));
    assert!(!Ruleset::new(&without).chains.contains_key(NAT_CHAIN));
    let changes = calico_felix::Changes {
        pools: true,
        ..Default::default()
    };
    let mut ruleset = Ruleset::new(&without);
    let ops = ruleset.update(&with, &changes);
    assert!(
        ops.iter()
            .any(|op| matches!(op, Op::AddChain(c) if c.name == NAT_CHAIN)),
        "{ops:?}"
    );
    assert_eq!(ruleset, Ruleset::new(&with));
    let ops = ruleset.update(&without, &changes);
    assert!(
        ops.iter()
            .any(|op| matches!(op, Op::DeleteChain(name) if name == NAT_CHAIN)),
        "{ops:?}"
    );
    assert_eq!(ruleset, Ruleset::new(&without));
}

/// A profile with a rule that matches everything decides every packet that gets to it: the
/// endpoint's walk stops after it, in each direction on its own.
#[test]
fn a_rule_matching_everything_ends_the_walk_of_profiles() {
    let mut g = CalcGraph::new("h");
    for (name, inbound, outbound) in [
        (
            "p1",
            r#"{"action":"allow","protocol":"tcp"}"#,
            r#"{"action":"allow"}"#,
        ),
        ("p2", r#"{"action":"deny"}"#, r#"{"action":"deny"}"#),
        ("p3", r#"{"action":"allow"}"#, r#"{"action":"allow"}"#),
    ] {
        put(
            &mut g,
            &format!("/calico/v1/policy/profile/{name}/rules"),
            &format!(r#"{{"inbound_rules":[{inbound}],"outbound_rules":[{outbound}]}}"#),
        );
    }
    put(
        &mut g,
        "/calico/v1/host/h/workload/docker/w/endpoint/e",
        r#"{"state":"active","name":"cali1","profile_ids":["p1","p2","p3"],"ipv4_nets":["10.0.0.1/32"]}"#,
    );
    let ruleset = Ruleset::new(&g.desired());
    let jumps = |inbound: bool| -> Vec<String> {
        ruleset.chains[&endpoint_chain("cali1", inbound)]
            .rules
            .iter()
            .flat_map(|r| &r.parts)
            .filter_map(|p| match p {
                Part::Verdict(Verdict::Jump(target)) => Some(target.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(jumps(false), [profile_chain("p1", false)]);
    assert_eq!(
        jumps(true),
        [profile_chain("p1", true), profile_chain("p2", true)]
    );
}
