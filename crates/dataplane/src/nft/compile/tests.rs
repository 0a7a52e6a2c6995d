//! The compiled inbound chain must give every packet the verdict the plain walk gives: an
//! interpreter of the ruleset's chains runs random packets through both (the plain walk is
//! the profiles' own chains, in the endpoint's order, then a drop).

use std::net::IpAddr;

use calico_felix::{CalcGraph, Update};
use calico_model::arbitrary;
use calico_model::profile::ProfileRules;
use calico_model::rule::{Protocol, Rule as ModelRule};
use ipnet::IpNet;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

use super::super::names::{endpoint_chain, profile_chain, TO_COMPILED};
use super::super::render::Ruleset;
use super::super::rule::{End, Family, Part, Rule, Verdict};
use super::COMPILE_FROM;
use crate::nft::COMPILED_MARK;

const TAGS: [&str; 4] = ["t0", "t1", "t2", "t3"];
const INTERFACE: &str = "cali00000000001";

#[derive(Debug, Clone, Copy)]
struct Packet {
    saddr: IpAddr,
    daddr: IpAddr,
    protocol: Protocol,
    sport: u16,
    dport: u16,
    icmp: (u8, u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accept,
    Drop,
}

/// Runs `chain` of `ruleset`: a verdict, or None if the chain returns.
fn run(
    ruleset: &Ruleset,
    chain: &str,
    packet: &Packet,
    mark: &mut u32,
    depth: usize,
) -> Option<Outcome> {
    assert!(depth < 16, "jumps nest deeper than the kernel allows");
    let chain = ruleset
        .chains
        .get(chain)
        .unwrap_or_else(|| panic!("no chain {chain}"));
    'rules: for rule in &chain.rules {
        for part in &rule.parts {
            match part {
                Part::Verdict(Verdict::Accept) => return Some(Outcome::Accept),
                Part::Verdict(Verdict::Drop) => return Some(Outcome::Drop),
                Part::Verdict(Verdict::Return) => return None,
                Part::Verdict(Verdict::Jump(target)) => {
                    match run(ruleset, target, packet, mark, depth + 1) {
                        Some(outcome) => return Some(outcome),
                        None => continue 'rules,
                    }
                }
                Part::PortMap { protocol, targets } => {
                    let target = targets
                        .iter()
                        .find(|(r, _)| r.low <= packet.dport && packet.dport <= r.high);
                    match target {
                        Some((_, chain)) if packet.protocol == *protocol => {
                            match run(ruleset, chain, packet, mark, depth + 1) {
                                Some(outcome) => return Some(outcome),
                                None => continue 'rules,
                            }
                        }
                        _ => continue 'rules,
                    }
                }
                Part::SetMark(bit) => *mark |= bit,
                test if !matches(ruleset, test, packet, *mark) => continue 'rules,
                _ => {}
            }
        }
    }
    None
}

fn family_of(address: IpAddr) -> Family {
    match address {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

fn matches(ruleset: &Ruleset, part: &Part, p: &Packet, mark: u32) -> bool {
    let address = |end: End| match end {
        End::Source => p.saddr,
        End::Destination => p.daddr,
    };
    match part {
        Part::Family(f) => family_of(p.saddr) == *f,
        Part::L4Proto(protocol) => p.protocol == *protocol,
        Part::Ports {
            protocol,
            end,
            ports,
        } => {
            let port = match end {
                End::Source => p.sport,
                End::Destination => p.dport,
            };
            p.protocol == *protocol && ports.iter().any(|r| r.low <= port && port <= r.high)
        }
        Part::Icmp { v6, code, value } => {
            let protocol = if *v6 {
                Protocol::Icmpv6
            } else {
                Protocol::Icmp
            };
            p.protocol == protocol && (if *code { p.icmp.1 } else { p.icmp.0 }) == *value
        }
        Part::Net { end, net } => net.contains(&address(*end)),
        Part::InSet { family, end, set } => {
            family_of(address(*end)) == *family
                && ruleset.sets[set]
                    .elements
                    .iter()
                    .any(|n| n.contains(&address(*end)))
        }
        Part::MarkHas(bit) => mark & bit == *bit,
        other => panic!("unexpected in an endpoint's inbound chains: {other:?}"),
    }
}

/// A new flow's verdict at the endpoint as the kernel reaches it: its chain in our table,
/// then, if that accepted the flow marked for the compiled table, the compiled table's
/// dispatch by interface (which drops what it has no entry for).
fn to_endpoint(ruleset: &Ruleset, packet: &Packet) -> Outcome {
    let mut mark = 0;
    let ours = run(
        ruleset,
        &endpoint_chain(INTERFACE, true),
        packet,
        &mut mark,
        2,
    )
    .unwrap_or(Outcome::Drop);
    if ours == Outcome::Drop || mark & COMPILED_MARK == 0 {
        return ours;
    }
    match ruleset.maps[TO_COMPILED].get(INTERFACE) {
        Some(entry) => run(ruleset, entry, packet, &mut mark, 2).unwrap_or(Outcome::Drop),
        None => Outcome::Drop,
    }
}

/// The verdict of the endpoint's inbound policy, and of the plain walk of its profiles.
fn verdicts(ruleset: &Ruleset, profiles: &[String], packet: &Packet) -> (Outcome, Outcome) {
    let compiled = to_endpoint(ruleset, packet);
    let plain = profiles
        .iter()
        .find_map(|p| run(ruleset, &profile_chain(p, true), packet, &mut 0, 3))
        .unwrap_or(Outcome::Drop);
    (compiled, plain)
}

fn state(profiles: &[Vec<ModelRule>], members: &[Vec<u8>]) -> (CalcGraph, Vec<String>) {
    let mut graph = CalcGraph::new("h");
    let mut names = Vec::new();
    for (i, rules) in profiles.iter().enumerate() {
        let name = format!("p{i}");
        // Tags from a small pool, so that rules' tag sets have members.
        let pooled = |tag: &Option<String>| {
            tag.as_ref().map(|t| match TAGS.contains(&t.as_str()) {
                true => t.clone(),
                false => TAGS[t.len() % TAGS.len()].to_string(),
            })
        };
        let rules: Vec<ModelRule> = rules
            .iter()
            .map(|r| ModelRule {
                src_tag: pooled(&r.src_tag),
                dst_tag: pooled(&r.dst_tag),
                ..r.clone()
            })
            .collect();
        let rules = ProfileRules {
            id: None,
            inbound_rules: rules,
            outbound_rules: vec![],
        };
        graph.apply(&Update::Put {
            key: format!("/calico/v1/policy/profile/{name}/rules"),
            value: rules.to_json(),
        });
        graph.apply(&Update::Put {
            key: format!("/calico/v1/policy/profile/{name}/tags"),
            value: serde_json::to_string(&[TAGS[i % TAGS.len()]]).unwrap(),
        });
        names.push(name);
    }
    // Remote endpoints put addresses in the tags' sets.
    for (i, hosts) in members.iter().enumerate() {
        for host in hosts {
            graph.apply(&Update::Put {
                key: format!("/calico/v1/host/r/workload/o/m{i}-{host}/endpoint/m{i}x{host}"),
                value: format!(
                    r#"{{"state":"active","name":"calim{i}x{host}","profile_ids":["p{i}"],"ipv4_nets":["10.{i}.0.{host}/32"],"ipv6_nets":["fd00::{i}:{host}/128"]}}"#
                ),
            });
        }
    }
    graph.apply(&Update::Put {
        key: "/calico/v1/host/h/workload/o/w/endpoint/00000000001".into(),
        value: format!(
            r#"{{"state":"active","name":"{INTERFACE}","profile_ids":{},"ipv4_nets":["10.200.0.1/32"]}}"#,
            serde_json::to_string(&names).unwrap()
        ),
    });
    (graph, names)
}

/// Packets that meet the rules: ports and addresses taken from them, or from the tags.
fn packets(rules: Vec<ModelRule>) -> impl Strategy<Value = Packet> {
    let mut addresses: Vec<IpAddr> = vec![
        "10.0.0.1".parse().unwrap(),
        "10.1.0.2".parse().unwrap(),
        "fd00::2:1".parse().unwrap(),
        "192.0.2.7".parse().unwrap(),
    ];
    let mut ports: Vec<u16> = vec![0, 22, 80, 81, 65535];
    for rule in &rules {
        for net in [rule.src_net, rule.dst_net].into_iter().flatten() {
            addresses.push(net.addr());
            if let IpNet::V4(n) = net {
                addresses.push(IpAddr::V4(n.broadcast()));
            }
        }
        for range in rule.src_ports.iter().chain(&rule.dst_ports) {
            ports.extend([
                range.low,
                range.high,
                range.low.saturating_sub(1),
                range.high.saturating_add(1),
            ]);
        }
    }
    let protocol = prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Icmp),
        Just(Protocol::Icmpv6)
    ];
    let address = proptest::sample::select(addresses);
    let port = proptest::sample::select(ports);
    (
        address.clone(),
        address,
        protocol,
        port.clone(),
        port,
        (0u8..4, 0u8..3),
    )
        .prop_map(|(saddr, daddr, protocol, sport, dport, icmp)| Packet {
            saddr,
            daddr: match (saddr, daddr) {
                (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => saddr,
                _ => daddr,
            },
            protocol,
            sport,
            dport,
            icmp,
        })
}

/// Networks for rules that differ only in one (merged into a set), some inside others.
const NETS: [&str; 6] = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.0.2/32",
    "172.16.0.0/24",
    "192.0.2.0/28",
    "fd00::/64",
];

/// Random profiles, each maybe ending with a rule of a shared shape (`deny from cidr N` or
/// `allow tcp from cidr N to ports 80`) so that runs of them are merged; and tag members.
fn case() -> impl Strategy<Value = (Vec<Vec<ModelRule>>, Vec<Vec<u8>>)> {
    let profile = (
        proptest::collection::vec(arbitrary::rule(), 0..4),
        proptest::option::of((any::<bool>(), 0..NETS.len())),
    )
        .prop_map(|(mut rules, shaped)| {
            if let Some((deny, net)) = shaped {
                let text = match deny {
                    true => format!("deny from cidr {}", NETS[net]),
                    false => format!("allow tcp from cidr {} to ports 80", NETS[net]),
                };
                rules.push(text.parse().expect("a rule"));
            }
            rules
        });
    (
        proptest::collection::vec(profile, COMPILE_FROM..COMPILE_FROM + 24),
        proptest::collection::vec(proptest::collection::vec(1u8..4, 0..3), 4),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn compiled_chains_decide_as_the_plain_walk_does(
        (profiles, members) in case(),
    ) {
        let (graph, names) = state(&profiles, &members);
        let ruleset = Ruleset::new(graph.state());
        let entry = &ruleset.chains[&ruleset.inbound_chain(INTERFACE)];
        prop_assert!(
            entry.rules.iter().any(|r| matches!(
                r.parts.first(),
                Some(Part::L4Proto(_) | Part::PortMap { .. })
            )),
            "compiled: {:?}", entry
        );
        let rules: Vec<ModelRule> = profiles.iter().flatten().cloned().collect();
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = packets(rules);
        for _ in 0..200 {
            let packet = strategy.new_tree(&mut runner).unwrap().current();
            let (compiled, plain) = verdicts(&ruleset, &names, &packet);
            prop_assert_eq!(compiled, plain, "packet {:?}", packet);
        }
    }
}

/// The bench's shape: many profiles whose port-free rules differ only in a network share
/// one set lookup, and a flow to a port walks a few chains, not every rule.
#[test]
fn port_free_runs_become_set_lookups_and_flows_take_few_steps() {
    let profiles: Vec<Vec<ModelRule>> = (0..200)
        .map(|i| {
            vec![
                format!("allow tcp from tag t1 to ports {}", 1000 + i)
                    .parse()
                    .unwrap(),
                format!("deny from cidr 172.16.{}.0/24", i % 250)
                    .parse()
                    .unwrap(),
            ]
        })
        .collect();
    let (graph, names) = state(&profiles, &[vec![1], vec![1], vec![], vec![]]);
    let ruleset = Ruleset::new(graph.state());
    let compiled_rules: usize = ruleset
        .chains
        .values()
        .filter(|c| super::is_compiled(&c.name))
        .map(|c| c.rules.len())
        .sum();
    assert!(compiled_rules < 200 * 30, "{compiled_rules} compiled rules");
    let set_lookups = ruleset
        .chains
        .values()
        .flat_map(|c| &c.rules)
        .filter(|r| {
            r.parts
                .iter()
                .any(|p| matches!(p, Part::InSet { set, .. } if set.starts_with("cset4_")))
        })
        .count();
    assert!(set_lookups > 0);
    decide_tcp(
        &ruleset,
        &names,
        &[
            ("10.1.0.1", 1150, Outcome::Accept),
            ("172.16.3.9", 1150, Outcome::Drop),
            ("10.1.0.1", 999, Outcome::Drop),
        ],
    );
}

/// New TCP flows from `source` to `port` get `expected` from the compiled chain and from
/// the plain walk alike.
fn decide_tcp(ruleset: &Ruleset, names: &[String], flows: &[(&str, u16, Outcome)]) {
    for &(source, port, expected) in flows {
        let packet = Packet {
            saddr: source.parse().unwrap(),
            daddr: "10.200.0.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            sport: 40000,
            dport: port,
            icmp: (0, 0),
        };
        let (compiled, plain) = verdicts(ruleset, names, &packet);
        assert_eq!((compiled, plain), (expected, expected), "{source}:{port}");
    }
}

/// Rules the kernel checks at a commit below `chain`: each chain reachable once (the kernel
/// remembers chains it has checked), with the chains themselves.
fn reachable(ruleset: &Ruleset, chain: &str) -> (usize, usize) {
    let mut seen = std::collections::BTreeSet::from([chain.to_string()]);
    let mut queue = vec![chain.to_string()];
    let mut rules = 0;
    while let Some(name) = queue.pop() {
        let chain = &ruleset.chains[&name];
        rules += chain.rules.len();
        for part in chain.rules.iter().flat_map(|r| &r.parts) {
            let targets: Vec<&String> = match part {
                Part::Verdict(Verdict::Jump(target)) => vec![target],
                Part::PortMap { targets, .. } => targets.iter().map(|(_, t)| t).collect(),
                _ => vec![],
            };
            for target in targets {
                if seen.insert(target.clone()) {
                    queue.push(target.clone());
                }
            }
        }
    }
    (rules, seen.len())
}

/// The benchmarks' `dst` (1,000 profiles of five rules as `calico-bench` writes them, then
/// one admitting a port range): compiled, it must not cost every commit's check (which
/// walks every reachable rule) much more than the plain walk does, or each container added
/// on its host pays for it.
#[test]
fn the_benchmarks_endpoint_costs_the_kernels_check_less_compiled_than_plain() {
    let n = 1000;
    let mut profiles: Vec<Vec<ModelRule>> = (0..n)
        .map(|i| {
            [
                format!("deny tcp from tag t{} to ports 22", (i + 1) % 4),
                format!("allow tcp from tag t{} to ports {}", (i + 2) % 4, 1000 + i),
                format!(
                    "allow udp from cidr 10.{}.{}.0/24 to ports 53",
                    i / 256,
                    i % 256
                ),
                format!("allow icmp type 8 from tag t{}", i % 4),
                format!("deny from cidr 172.16.{}.0/24", i % 256),
            ]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect()
        })
        .collect();
    profiles.push(vec!["allow tcp from tag t1 to ports 5201:5202"
        .parse()
        .unwrap()]);
    let (graph, names) = state(&profiles, &[vec![1], vec![1, 2], vec![3], vec![]]);
    // The last class's flows meet every profile's `deny from cidr` first: one set lookup,
    // the repeats of a network (every 256th profile) included.
    let last_class = |ruleset: &Ruleset| {
        ruleset
            .chains
            .values()
            .filter(|c| c.name.starts_with("cc_"))
            .find(|c| c.rules.iter().any(|r| r.to_string().contains("5201-5202")))
            .map(|c| c.rules.len())
    };
    let ours = endpoint_chain(INTERFACE, true);
    let compiled = Ruleset::new(graph.state());
    let plain = Ruleset::new_deferring(graph.state());
    let entry = compiled.inbound_chain(INTERFACE);
    assert_ne!(entry, ours, "not compiled");
    assert!(compiled.chains[&entry].rules.len() < 10, "not compiled");
    // Our table's check at a commit meets none of it: the compiled chains are in a table
    // of their own, which our chain for the endpoint only marks the flow for.
    assert_eq!(reachable(&compiled, &ours), (1, 1));
    assert_eq!(
        last_class(&compiled),
        Some(4),
        "a lookup, the rule's two families, a drop"
    );
    // TCP flows find their class in a map of exact ports (a hash: measured cheaper than an
    // interval map of every class), and the wide ranges between them, which accept
    // nothing here, in one jump after it.
    let tcp: Vec<&Rule> = compiled.chains[&entry]
        .rules
        .iter()
        .filter(|r| r.to_string().starts_with("tcp ") || r.to_string().contains("l4proto tcp"))
        .collect();
    assert_eq!(tcp.len(), 2, "{tcp:?}");
    match &tcp[0].parts[..] {
        [Part::PortMap { targets, .. }] => {
            assert!(targets.iter().all(|(range, _)| range.is_single()));
            assert!(targets.iter().any(|(range, _)| range.low == 5202));
        }
        other => panic!("not a map of exact ports: {other:?}"),
    }
    assert!(matches!(
        &tcp[1].parts[..],
        [
            Part::L4Proto(Protocol::Tcp),
            Part::Verdict(Verdict::Jump(_))
        ]
    ));
    let (compiled_rules, compiled_chains) = reachable(&compiled, &entry);
    let (plain_rules, plain_chains) = reachable(&plain, &ours);
    // Measured: checking 13,000 reachable rules costs a commit about 7 ms here. Before
    // classes stopped at their last accept, compiled was 23,295 rules against plain's 8,004.
    assert!(
        compiled_rules * 4 <= plain_rules * 7,
        "compiled: {compiled_rules} rules in {compiled_chains} chains; plain: {plain_rules} in {plain_chains}"
    );
    decide_tcp(
        &compiled,
        &names,
        &[
            ("10.1.0.1", 5202, Outcome::Accept),
            ("10.2.0.3", 1000, Outcome::Accept),
            ("10.2.0.3", 1001, Outcome::Drop),
            ("10.1.0.1", 22, Outcome::Drop),
        ],
    );
}
