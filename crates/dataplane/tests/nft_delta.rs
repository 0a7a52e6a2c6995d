//! An incremental update must leave the kernel exactly where a full replacement would: for
//! random pairs of states A and B, full(A) + delta(A→B) in one namespace equals full(B) in
//! another, as nft itself lists them.

use std::collections::BTreeMap;

use calico_dataplane::nft::{delta_script, Op, Ruleset};
use calico_dataplane::{Firewall, NftCli};
use calico_felix::{CalcGraph, Update};
use calico_model::arbitrary;
use calico_model::profile::ProfileRules;
use calico_model::rule::Rule;
use calico_testkit::Netns;
use proptest::prelude::*;
use serde_json::Value;

const PROFILES: [&str; 4] = ["a", "b", "c", "d"];
const TAGS: [&str; 6] = ["a", "b", "c", "d", "t1", "t2"];

#[derive(Debug, Clone)]
struct Spec {
    profiles: Vec<(usize, Vec<Rule>, Vec<usize>)>,
    /// (local?, interface/id index, address index, profile indexes)
    endpoints: Vec<(bool, usize, u8, Vec<usize>)>,
    host_action: usize,
}

fn spec() -> impl Strategy<Value = Spec> {
    let profile = (
        0..PROFILES.len(),
        proptest::collection::vec(arbitrary::rule(), 0..4),
        proptest::collection::vec(0..TAGS.len(), 1..3),
    );
    // Mostly local endpoints with profiles, so that sets, chains and map entries come and go.
    let endpoint = (
        proptest::bool::weighted(0.7),
        0..5usize,
        1..20u8,
        proptest::collection::vec(0..PROFILES.len(), 1..3),
    );
    (
        proptest::collection::vec(profile, 1..5),
        proptest::collection::vec(endpoint, 0..7),
        0..3usize,
    )
        .prop_map(|(profiles, endpoints, host_action)| Spec {
            profiles,
            endpoints,
            host_action,
        })
}

/// The datastore contents a spec stands for.
fn keys(spec: &Spec) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    let mut put = |key: String, value: String| {
        keys.insert(key, value);
    };
    // Rules name tags from the pool, so tag sets have members that come and go.
    let pooled =
        |tag: &Option<String>| tag.as_ref().map(|t| TAGS[t.len() % TAGS.len()].to_string());
    for (p, rules, tags) in &spec.profiles {
        let name = PROFILES[*p];
        let mut rules: Vec<Rule> = rules
            .iter()
            .map(|r| Rule {
                src_tag: pooled(&r.src_tag),
                dst_tag: pooled(&r.dst_tag),
                ..r.clone()
            })
            .collect();
        rules.push(Rule::allow_from_tag(TAGS[(*p + tags.len()) % TAGS.len()]));
        let tags: Vec<&str> = tags.iter().map(|t| TAGS[*t]).collect();
        put(
            format!("/calico/v1/policy/profile/{name}/tags"),
            serde_json::to_string(&tags).unwrap(),
        );
        let rules = ProfileRules {
            id: None,
            inbound_rules: rules.clone(),
            outbound_rules: rules.iter().rev().cloned().collect(),
        };
        put(
            format!("/calico/v1/policy/profile/{name}/rules"),
            rules.to_json(),
        );
    }
    for (n, (local, id, address, profiles)) in spec.endpoints.iter().enumerate() {
        let host = if *local { "h" } else { "remote" };
        let id = format!("{id:011}00000");
        let profiles: Vec<&str> = profiles.iter().map(|p| PROFILES[*p]).collect();
        // Every fifth address is a network: its tags' sets are interval sets, and they
        // change kind as such endpoints come and go.
        let (v4, v6) = match address % 5 {
            0 => (
                format!("10.1.{address}.0/24"),
                format!("fd01:0:0:{address}::/64"),
            ),
            _ => (
                format!("10.0.0.{address}/32"),
                format!("fd00::{address}/128"),
            ),
        };
        let value = format!(
            r#"{{"state":"active","name":"cali{}","profile_ids":{},"ipv4_nets":["{v4}"],"ipv6_nets":["{v6}"]}}"#,
            &id[..11],
            serde_json::to_string(&profiles).unwrap()
        );
        put(
            format!("/calico/v1/host/{host}/workload/docker/w{n}/endpoint/{id}"),
            value,
        );
    }
    let action = ["DROP", "RETURN", "ACCEPT"][spec.host_action];
    put(
        "/calico/v1/config/DefaultEndpointToHostAction".into(),
        action.into(),
    );
    keys
}

fn ruleset(spec: &Spec) -> Ruleset {
    let mut graph = CalcGraph::new("h");
    for (key, value) in keys(spec) {
        graph.apply(&Update::Put { key, value });
    }
    Ruleset::new(graph.state())
}

/// Runs a script in a namespace; nft's complaint if it refuses it.
fn run_script(netns: &Netns, script: &str) -> Result<(), String> {
    let output = netns
        .command("nft", &["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// Our tables (the namespace holds no others) as nft lists them, without handles and with
/// unordered things sorted.
fn listing(netns: &Netns) -> BTreeMap<String, Value> {
    let json: Value = serde_json::from_str(&netns.run("nft", &["-j", "list", "ruleset"])).unwrap();
    let mut objects = BTreeMap::new();
    let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for item in json["nftables"].as_array().unwrap() {
        let (kind, mut body) = item
            .as_object()
            .unwrap()
            .iter()
            .next()
            .map(|(k, v)| (k.clone(), v.clone()))
            .unwrap();
        if let Some(body) = body.as_object_mut() {
            body.remove("handle");
            if let Some(Value::Array(elements)) = body.get_mut("elem") {
                elements.sort_by_key(|e| e.to_string());
            }
        }
        match kind.as_str() {
            "rule" => rules
                .entry(format!("{} {}", body["table"], body["chain"]))
                .or_default()
                .push(body),
            "metainfo" => {}
            _ => {
                objects.insert(format!("{kind} {} {}", body["table"], body["name"]), body);
            }
        }
    }
    for (chain, list) in rules {
        objects.insert(format!("rules {chain}"), Value::Array(list));
    }
    objects
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_delta_lands_where_a_full_replacement_does(a in spec(), b in spec()) {
        let (before, after) = (ruleset(&a), ruleset(&b));
        let stepped = Netns::new("delta");
        stepped.run_with_input("nft", &["-f", "-"], &before.full_script());
        let delta = delta_script(&before, &after);
        let refused = run_script(&stepped, &delta);
        prop_assert!(refused.is_ok(), "nft refused the delta: {:?}\n{}", refused, delta);
        let direct = Netns::new("direct");
        direct.run_with_input("nft", &["-f", "-"], &after.full_script());
        prop_assert_eq!(listing(&stepped), listing(&direct), "delta:\n{}", delta);
        prop_assert_eq!(delta_script(&after, &after), "", "no change, no script");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The agent's usual path: the calc graph's changes applied to the ruleset one object at
    /// a time give the ruleset a full render gives, and the operations bring the kernel there.
    #[test]
    fn changes_applied_one_object_at_a_time_land_where_a_full_replacement_does(
        a in spec(), mut b in spec(), same_settings in proptest::bool::weighted(0.8)
    ) {
        if same_settings {
            b.host_action = a.host_action;
        }
        let (from, to) = (keys(&a), keys(&b));
        let mut graph = CalcGraph::new("h");
        for (key, value) in &from {
            graph.apply(&Update::Put { key: key.clone(), value: value.clone() });
        }
        graph.take_changes();
        let mut ruleset = Ruleset::new(graph.state());
        let stepped = Netns::new("stepped");
        stepped.run_with_input("nft", &["-f", "-"], &ruleset.full_script());
        for key in from.keys().filter(|k| !to.contains_key(*k)) {
            graph.apply(&Update::Delete { key: key.clone() });
        }
        for (key, value) in &to {
            graph.apply(&Update::Put { key: key.clone(), value: value.clone() });
        }
        let changes = graph.take_changes();
        let ops = ruleset.update(graph.state(), &changes);
        prop_assert_eq!(&ruleset, &Ruleset::new(graph.state()), "changes: {:?}", changes);
        // As the agent runs them: elements over netlink, the rest through nft.
        let script = calico_dataplane::nft::script(&ops);
        let path = std::path::PathBuf::from(format!("/var/run/netns/{}", stepped.name));
        let refused = calico_dataplane::netns::run_in(&path, move || async move {
            NftCli::default().apply_ops(&ops)
        })
        .unwrap();
        prop_assert!(refused.is_ok(), "refused: {:?}\n{}", refused, script);
        let direct = Netns::new("direct");
        direct.run_with_input("nft", &["-f", "-"], &ruleset.full_script());
        prop_assert_eq!(listing(&stepped), listing(&direct), "script:\n{}", script);
    }
}

/// A change the kernel refuses is refused whole, and the error names the message it refused.
#[test]
fn a_refused_change_names_what_the_kernel_refused_and_changes_nothing() {
    use calico_dataplane::nft::rule::{Rule as NftRule, Verdict};
    use calico_dataplane::nft::{Chain, Op};
    let spec = Spec {
        profiles: vec![(0, vec![], vec![0])],
        endpoints: vec![(true, 1, 1, vec![0])],
        host_action: 0,
    };
    let ruleset = ruleset(&spec);
    let netns = Netns::new("refused");
    netns.run_with_input("nft", &["-f", "-"], &ruleset.full_script());
    let before = listing(&netns);
    let good = Chain {
        name: "extra".into(),
        hook: None,
        comment: Some("a new chain".into()),
        rules: vec![NftRule::from(Verdict::Drop)],
    };
    let bad = Chain {
        name: "broken".into(),
        hook: None,
        comment: None,
        rules: vec![NftRule::from(Verdict::Jump("no-such-chain".into()))],
    };
    let ops = vec![Op::AddChain(good), Op::AddChain(bad)];
    let path = std::path::PathBuf::from(format!("/var/run/netns/{}", netns.name));
    let refused =
        calico_dataplane::netns::run_in(
            &path,
            move || async move { NftCli::default().apply_ops(&ops) },
        )
        .unwrap();
    let message = refused.expect_err("a jump to a missing chain").to_string();
    assert!(
        message.contains("rule 0 of chain broken: jump no-such-chain"),
        "{message}"
    );
    assert_eq!(listing(&netns), before, "nothing of the batch applied");
}

/// The agent keeps one netlink connection: it goes on serving after a change the kernel
/// refused (no answer of the refused batch is read as the next one's), and it answers
/// whether the table exists as the table comes and goes.
#[test]
fn one_connection_serves_changes_after_a_refusal_and_sees_the_table_come_and_go() {
    use calico_dataplane::nft::rule::{Rule as NftRule, Verdict};
    use calico_dataplane::nft::{Chain, Op};
    let spec = Spec {
        profiles: vec![(0, vec![], vec![0])],
        endpoints: vec![(true, 1, 1, vec![0])],
        host_action: 0,
    };
    let netns = Netns::new("session");
    let chain = |name: &str, target: &str| Chain {
        name: name.into(),
        hook: None,
        comment: None,
        rules: vec![NftRule::from(Verdict::Jump(target.into()))],
    };
    let path = std::path::PathBuf::from(format!("/var/run/netns/{}", netns.name));
    let script = ruleset(&spec).full_script();
    let steps = calico_dataplane::netns::run_in(&path, move || async move {
        let nft = NftCli::default();
        let before = nft.table_exists();
        nft.apply(&script)?;
        let after = nft.table_exists();
        let refused = nft
            .apply_ops(&[Op::AddChain(chain("broken", "no-such-chain"))])
            .is_err();
        let leaf = Chain {
            rules: vec![NftRule::from(Verdict::Drop)],
            ..chain("leaf", "unused")
        };
        let accepted = nft.apply_ops(&[Op::AddChain(leaf), Op::AddChain(chain("upper", "leaf"))]);
        let accepted_again = nft.apply_ops(&[Op::DeleteChain("upper".into())]);
        let still = nft.table_exists();
        Ok::<_, calico_dataplane::nft::FirewallError>((
            before,
            after,
            refused,
            accepted,
            accepted_again,
            still,
        ))
    })
    .unwrap()
    .expect("the table applies");
    let (before, after, refused, accepted, accepted_again, still) = steps;
    assert!(!before.expect("asked"), "no table yet");
    assert!(after.expect("asked"), "the table exists once applied");
    assert!(refused, "a jump to a missing chain is refused");
    accepted.expect("a good change after a refused one");
    accepted_again.expect("and another");
    assert!(still.expect("asked"));
    let listed = format!("{:?}", listing(&netns));
    assert!(
        listed.contains("leaf") && !listed.contains("upper"),
        "{listed}"
    );
    netns.run("nft", &["delete", "table", "inet", calico_dataplane::TABLE]);
    let gone =
        calico_dataplane::netns::run_in(
            &path,
            move || async move { NftCli::default().table_exists() },
        )
        .unwrap();
    assert!(!gone.expect("asked"), "the table was deleted");
}

/// An endpoint with many profiles gets a compiled inbound chain (dispatch by protocol and
/// port, shared nodes, merged network sets): the kernel takes it whole, and incremental
/// changes to it (a profile's rule, members and kind of a tag it uses, the endpoint going)
/// land where a full render does, in both tables.
#[test]
fn a_compiled_endpoint_is_taken_whole_and_changed_in_steps() {
    let profile_key = |i: usize, what: &str| format!("/calico/v1/policy/profile/p{i}/{what}");
    let rules = |i: usize, extra: Option<&str>| {
        let mut inbound: Vec<Rule> = [
            format!("allow tcp from tag t{} to ports {}", i % 3, 1000 + i),
            format!("deny from cidr 172.16.{i}.0/24"),
            "allow udp from cidr 10.0.0.0/8 to ports 53".to_string(),
            format!("allow icmp type 8 from tag t{}", i % 3),
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        // Two wide port ranges with different rules: the dispatch's interval map, beside its
        // map of exact ports.
        if i < 2 {
            let low = 3000 + 1000 * i;
            inbound.push(
                format!("allow tcp from tag t{i} to ports {low}:{}", low + 499)
                    .parse()
                    .unwrap(),
            );
        }
        if let Some(extra) = extra {
            inbound.insert(0, extra.parse().unwrap());
        }
        ProfileRules {
            id: None,
            inbound_rules: inbound,
            outbound_rules: vec!["allow".parse().unwrap()],
        }
        .to_json()
    };
    let mut graph = CalcGraph::new("h");
    let names: Vec<String> = (0..24).map(|i| format!("p{i}")).collect();
    for i in 0..24 {
        graph.apply(&Update::Put {
            key: profile_key(i, "rules"),
            value: rules(i, None),
        });
        graph.apply(&Update::Put {
            key: profile_key(i, "tags"),
            value: format!(r#"["t{}"]"#, i % 3),
        });
    }
    let endpoint = "/calico/v1/host/h/workload/docker/w/endpoint/00000000001";
    graph.apply(&Update::Put {
        key: endpoint.into(),
        value: format!(
            r#"{{"state":"active","name":"cali00000000001","profile_ids":{},"ipv4_nets":["10.0.0.1/32"]}}"#,
            serde_json::to_string(&names).unwrap()
        ),
    });
    graph.take_changes();
    let mut ruleset = Ruleset::new(graph.state());
    let entry = &ruleset.chains[&ruleset.inbound_chain("cali00000000001")];
    let tcp_maps = entry
        .rules
        .iter()
        .filter(|r| r.to_string().starts_with("tcp dport vmap {"))
        .count();
    assert_eq!(
        tcp_maps, 2,
        "the endpoint is compiled, its TCP flows dispatched by a map of exact ports and one of ranges: {entry:?}"
    );
    let stepped = Netns::new("compiled");
    stepped.run_with_input("nft", &["-f", "-"], &ruleset.full_script());
    let path = std::path::PathBuf::from(format!("/var/run/netns/{}", stepped.name));
    // Another endpoint in a profile carrying tag t1, which the compiled rules use: the
    // compiled table's copy of t1's set follows its members, and its kind.
    let other = |n: u8, net: &str| Update::Put {
        key: format!("/calico/v1/host/h/workload/docker/w{n}/endpoint/{n:011}"),
        value: format!(
            r#"{{"state":"active","name":"cali{n:011}","profile_ids":["p1"],"ipv4_nets":["{net}"]}}"#
        ),
    };
    let steps: [Update; 5] = [
        Update::Put {
            key: profile_key(5, "rules"),
            value: rules(5, Some("allow tcp from tag t1 to ports 6000")),
        },
        other(2, "10.0.0.2/32"),
        other(3, "10.9.0.0/24"),
        Update::Delete {
            key: "/calico/v1/host/h/workload/docker/w3/endpoint/00000000003".into(),
        },
        Update::Delete {
            key: endpoint.into(),
        },
    ];
    for (n, update) in steps.into_iter().enumerate() {
        graph.apply(&update);
        let changes = graph.take_changes();
        // The change lands at once (the endpoint walks its profiles meanwhile), and the
        // compiled chain follows when the agent is quiet.
        let urgent = ruleset.update(graph.state(), &changes);
        assert!(!urgent.is_empty(), "{update:?} changes the table");
        if n == 0 {
            // The walk of its profiles is kept: falling back to it rewrites one rule of the
            // endpoint's chain, and the profile's own chain.
            let written: usize = urgent
                .iter()
                .map(|op| match op {
                    Op::AddChain(c) | Op::ReplaceChain(c) => c.rules.len(),
                    _ => 0,
                })
                .sum();
            assert!(written < 24, "{written} rules written: {urgent:?}");
        }
        let deferred = ruleset.compile_deferred(graph.state());
        assert_eq!(ruleset, Ruleset::new(graph.state()), "after {update:?}");
        for ops in [urgent, deferred] {
            let script = calico_dataplane::nft::script(&ops);
            let applied = calico_dataplane::netns::run_in(&path, move || async move {
                NftCli::default().apply_ops(&ops)
            })
            .unwrap();
            assert!(applied.is_ok(), "{applied:?}\n{script}");
        }
        let direct = Netns::new("compiled-direct");
        direct.run_with_input("nft", &["-f", "-"], &ruleset.full_script());
        assert_eq!(listing(&stepped), listing(&direct), "after {update:?}");
    }
    let compiled_table = |name: &&String| {
        calico_dataplane::nft::table_of(name) == calico_dataplane::nft::COMPILED_TABLE
    };
    assert_eq!(
        ruleset.chains.keys().filter(compiled_table).count(),
        2,
        "compiled chains go with the endpoint, only the compiled table's base chains stay"
    );
    assert_eq!(
        ruleset.sets.keys().filter(compiled_table).count(),
        0,
        "so do its sets and its copies of tag sets"
    );
}

/// A tag's members are a hash set while they are single addresses, an interval set while one
/// is a wider network, and a hash set again when the last one goes: each change lands over
/// netlink where a full render does, the profile using the tag rendered again onto the new set.
#[test]
fn a_tag_changes_set_kind_with_its_members() {
    let mut graph = CalcGraph::new("h");
    let put = |graph: &mut CalcGraph, key: &str, value: String| {
        graph.apply(&Update::Put {
            key: key.into(),
            value,
        });
    };
    put(
        &mut graph,
        "/calico/v1/policy/profile/p/rules",
        ProfileRules {
            id: None,
            inbound_rules: vec![Rule::allow_from_tag("t")],
            outbound_rules: vec!["allow".parse().unwrap()],
        }
        .to_json(),
    );
    put(
        &mut graph,
        "/calico/v1/policy/profile/p/tags",
        r#"["t"]"#.into(),
    );
    let endpoint = |n: u8, net: &str| {
        (
            format!("/calico/v1/host/h/workload/docker/w{n}/endpoint/{n:011}00000"),
            format!(
                r#"{{"state":"active","name":"cali{n:011}","profile_ids":["p"],"ipv4_nets":["{net}"]}}"#
            ),
        )
    };
    let (key, value) = endpoint(1, "10.0.0.1/32");
    put(&mut graph, &key, value);
    graph.take_changes();
    let mut ruleset = Ruleset::new(graph.state());
    let kinds = |ruleset: &Ruleset| {
        ruleset
            .sets
            .values()
            .filter(|s| s.comment.as_deref() == Some("tag t") && s.v4)
            .map(|s| s.interval())
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&ruleset), [false], "single addresses: a hash set");
    let stepped = Netns::new("tagkind");
    stepped.run_with_input("nft", &["-f", "-"], &ruleset.full_script());
    let path = std::path::PathBuf::from(format!("/var/run/netns/{}", stepped.name));
    let add = |n: u8, net: &str| {
        let (key, value) = endpoint(n, net);
        Update::Put { key, value }
    };
    let delete = |n: u8| Update::Delete {
        key: endpoint(n, "").0,
    };
    // The kind is decided from the change where it can be: a single address joining a hash
    // set, or one leaving an interval set that keeps a wider network, leaves it as it is.
    let steps = [
        (add(2, "10.9.0.0/24"), [true]),
        (add(3, "10.8.0.0/24"), [true]),
        (add(4, "10.0.0.4/32"), [true]),
        (delete(2), [true]),
        (delete(4), [true]),
        (delete(3), [false]),
        (add(5, "10.0.0.5/32"), [false]),
    ];
    for (update, kind) in steps {
        graph.apply(&update);
        let changes = graph.take_changes();
        let ops = ruleset.update(graph.state(), &changes);
        assert_eq!(ruleset, Ruleset::new(graph.state()), "after {update:?}");
        assert_eq!(kinds(&ruleset), kind, "after {update:?}");
        let script = calico_dataplane::nft::script(&ops);
        let applied = calico_dataplane::netns::run_in(&path, move || async move {
            NftCli::default().apply_ops(&ops)
        })
        .unwrap();
        assert!(applied.is_ok(), "{applied:?}\n{script}");
        let direct = Netns::new("tagkind-direct");
        direct.run_with_input("nft", &["-f", "-"], &ruleset.full_script());
        assert_eq!(listing(&stepped), listing(&direct), "after {update:?}");
    }
}
