//! The rendered policy against a real kernel, in namespaces of our own: nft accepts every
//! script we can render, and the policy decides traffic as profiles say.

use calico_dataplane::nft::render;
use calico_felix::CalcGraph;
use calico_model::arbitrary;
use calico_model::profile::ProfileRules;
use calico_testkit::Netns;
mod common;
use common::{profile, put, OneHost};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any valid profile renders to a script the kernel takes.
    #[test]
    fn the_kernel_accepts_every_rendered_policy(
        inbound in proptest::collection::vec(arbitrary::rule(), 0..6),
        outbound in proptest::collection::vec(arbitrary::rule(), 0..6),
        tags in proptest::collection::vec(arbitrary::name(), 1..3),
    ) {
        let mut graph = CalcGraph::new("h");
        let rules = ProfileRules { id: None, inbound_rules: inbound, outbound_rules: outbound };
        put(&mut graph, "/calico/v1/policy/profile/p/rules", &rules.to_json());
        put(&mut graph, "/calico/v1/policy/profile/p/tags", &serde_json_list(&tags));
        put(
            &mut graph,
            "/calico/v1/host/h/workload/docker/w/endpoint/0123456789abcdef",
            r#"{"state":"active","name":"cali0123456789a","profile_ids":["p"],"ipv4_nets":["10.0.0.1/32"],"ipv6_nets":["fd00::1/128"]}"#,
        );
        let script = render(&graph.desired());
        let netns = Netns::new("nftprop");
        let output = netns.command("nft", &["-f", "-"]).stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait_with_output()
        }).unwrap();
        prop_assert!(output.status.success(), "{}\n{script}", String::from_utf8_lossy(&output.stderr));
    }
}

fn apply(lab: &OneHost, graph: &CalcGraph) {
    lab.host
        .run_with_input("nft", &["-f", "-"], &render(&graph.desired()));
}

fn serde_json_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Seed 001 on one host: A, C and E share a profile; B and D are alone.
#[test]
fn seed_001_policy_decides_traffic_in_the_kernel() {
    let mut lab = OneHost::new(true);
    let mut graph = CalcGraph::new("calico-01");
    for name in ["PROF_A_C_E", "PROF_B", "PROF_D"] {
        put(
            &mut graph,
            &format!("/calico/v1/policy/profile/{name}/tags"),
            &format!(r#"["{name}"]"#),
        );
        put(
            &mut graph,
            &format!("/calico/v1/policy/profile/{name}/rules"),
            &ProfileRules::default_for(name).to_json(),
        );
    }
    let workloads = [
        ("A", "192.168.0.1", "aaaaaaaaaaaaaaaa", "PROF_A_C_E"),
        ("B", "192.168.0.2", "bbbbbbbbbbbbbbbb", "PROF_B"),
        ("C", "192.168.0.3", "cccccccccccccccc", "PROF_A_C_E"),
        ("D", "192.168.0.4", "dddddddddddddddd", "PROF_D"),
        ("E", "192.168.0.5", "eeeeeeeeeeeeeeee", "PROF_A_C_E"),
    ];
    // Before any policy is programmed, the base table alone must drop workload traffic.
    for (name, ip, id, _) in workloads {
        lab.add(name, ip, id);
    }
    apply(&lab, &CalcGraph::new("calico-01"));
    assert!(
        !lab.pings("A", "C"),
        "no policy yet: workload traffic is dropped"
    );

    for (name, ip, id, profile) in workloads {
        let key = format!("/calico/v1/host/calico-01/workload/docker/{name}/endpoint/{id}");
        let value = format!(
            r#"{{"state":"active","name":"cali{}","profile_ids":["{profile}"],"ipv4_nets":["{ip}/32"]}}"#,
            &id[..11]
        );
        put(&mut graph, &key, &value);
    }
    apply(&lab, &graph);
    assert!(lab.pings("A", "C"));
    assert!(lab.pings("A", "E"));
    assert!(!lab.pings("A", "B"));
    assert!(!lab.pings("A", "D"));
    assert!(!lab.pings("B", "A"));
    assert!(!lab.pings("D", "E"));

    // Rule edits change reachability: B now admits pings from anyone (everyone's outbound
    // allows all), while A's profile still admits only its own members.
    let mut rules = ProfileRules::default_for("PROF_B");
    rules.inbound_rules.insert(0, "allow icmp".parse().unwrap());
    put(
        &mut graph,
        "/calico/v1/policy/profile/PROF_B/rules",
        &rules.to_json(),
    );
    apply(&lab, &graph);
    assert!(lab.pings("A", "B"));
    assert!(lab.pings("D", "B"));
    assert!(!lab.pings("D", "A"));

    // A deny before the allow wins.
    let mut rules = ProfileRules::default_for("PROF_A_C_E");
    rules
        .inbound_rules
        .insert(0, "deny icmp from cidr 192.168.0.1/32".parse().unwrap());
    put(
        &mut graph,
        "/calico/v1/policy/profile/PROF_A_C_E/rules",
        &rules.to_json(),
    );
    apply(&lab, &graph);
    assert!(!lab.pings("A", "C"));
    assert!(lab.pings("E", "C"));
}

/// A workload cannot send from an address that is not its own.
#[test]
fn spoofed_sources_are_dropped() {
    let mut lab = OneHost::new(true);
    let mut graph = CalcGraph::new("h");
    profile(
        &mut graph,
        "ALL",
        r#"{"inbound_rules":[{"action":"allow"}],"outbound_rules":[{"action":"allow"}]}"#,
    );
    for (name, ip, id) in [
        ("A", "192.168.0.1", "aaaaaaaaaaaaaaaa"),
        ("B", "192.168.0.2", "bbbbbbbbbbbbbbbb"),
    ] {
        lab.add(name, ip, id);
        let key = format!("/calico/v1/host/h/workload/docker/{name}/endpoint/{id}");
        put(
            &mut graph,
            &key,
            &format!(
                r#"{{"state":"active","name":"cali{}","profile_ids":["ALL"],"ipv4_nets":["{ip}/32"]}}"#,
                &id[..11]
            ),
        );
    }
    apply(&lab, &graph);
    assert!(lab.pings("A", "B"));
    // A takes a second address the datastore does not give it, and pings from it.
    let (a, _) = &lab.workloads["A"];
    a.run("ip", &["addr", "add", "192.168.0.99/32", "dev", "eth0"]);
    let spoofed = a
        .command(
            "ping",
            &["-c", "1", "-W", "1", "-I", "192.168.0.99", "192.168.0.2"],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!spoofed.success(), "a spoofed source must be dropped");
    let chain = calico_dataplane::nft::names::endpoint_chain("caliaaaaaaaaaaa", false);
    let counters = lab
        .host
        .run("nft", &["list", "chain", "inet", "calico", &chain]);
    assert!(
        counters.contains("ip saddr != 192.168.0.1 drop"),
        "{counters}"
    );
}

/// An endpoint with many profiles is compiled into a table of its own: our table only marks
/// its new flows for it, and the compiled table decides them as the profiles say, tag
/// members read from its own copies of the tag sets.
#[test]
fn a_compiled_endpoint_is_decided_in_the_compiled_table() {
    let mut lab = OneHost::new(true);
    let mut graph = CalcGraph::new("h");
    let allow_all_out = |inbound: &str| {
        format!(r#"{{"inbound_rules":[{inbound}],"outbound_rules":[{{"action":"allow"}}]}}"#)
    };
    for name in ["PB", "PC"] {
        profile(&mut graph, name, &allow_all_out(r#"{"action":"allow"}"#));
    }
    // A's profiles: one admits pings from PB's members, the rest admit other things.
    let names: Vec<String> = (0..20).map(|i| format!("PA{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let inbound = match i {
            7 => r#"{"action":"allow","protocol":"icmp","src_tag":"PB"}"#.to_string(),
            _ => format!(
                r#"{{"action":"allow","protocol":"tcp","src_tag":"PC","dst_ports":[{}]}}"#,
                1000 + i
            ),
        };
        profile(&mut graph, name, &allow_all_out(&inbound));
    }
    let workloads = [
        (
            "A",
            "192.168.0.1",
            "aaaaaaaaaaaaaaaa",
            serde_json_list(&names),
        ),
        (
            "B",
            "192.168.0.2",
            "bbbbbbbbbbbbbbbb",
            r#"["PB"]"#.to_string(),
        ),
        (
            "C",
            "192.168.0.3",
            "cccccccccccccccc",
            r#"["PC"]"#.to_string(),
        ),
    ];
    for (name, ip, id, profiles) in &workloads {
        lab.add(name, ip, id);
        put(
            &mut graph,
            &format!("/calico/v1/host/h/workload/docker/{name}/endpoint/{id}"),
            &format!(
                r#"{{"state":"active","name":"cali{}","profile_ids":{profiles},"ipv4_nets":["{ip}/32"]}}"#,
                &id[..11]
            ),
        );
    }
    apply(&lab, &graph);
    let ours = lab.host.run(
        "nft",
        &[
            "list",
            "chain",
            "inet",
            calico_dataplane::nft::TABLE,
            &calico_dataplane::nft::names::endpoint_chain("caliaaaaaaaaaaa", true),
        ],
    );
    assert!(ours.contains("accept") && !ours.contains("jump"), "{ours}");
    assert!(lab.pings("B", "A"), "PA7 admits pings from PB's members");
    assert!(!lab.pings("C", "A"), "no profile of A admits pings from C");
    assert!(lab.pings("A", "C"), "C's profile admits everything");

    // One more rule, in a profile A has: C's pings are admitted too.
    profile(
        &mut graph,
        "PA3",
        &allow_all_out(r#"{"action":"allow","protocol":"icmp","src_tag":"PC"}"#),
    );
    apply(&lab, &graph);
    assert!(lab.pings("C", "A"));
    assert!(lab.pings("B", "A"));

    // Without the compiled table, its flows fail closed; the rest of the host carries on.
    lab.host.run(
        "nft",
        &[
            "delete",
            "table",
            "inet",
            calico_dataplane::nft::COMPILED_TABLE,
        ],
    );
    assert!(
        !lab.pings("B", "A"),
        "no compiled table: nothing admits A's flows"
    );
    assert!(lab.pings("A", "C"));
}
