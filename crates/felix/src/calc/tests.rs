use super::*;

fn put(key: &str, value: &str) -> Update {
    Update::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn endpoint_key(host: &str, workload: &str, id: &str) -> String {
    format!("/calico/v1/host/{host}/workload/docker/{workload}/endpoint/{id}")
}

fn endpoint_json(id: &str, ips: &[&str], profiles: &[&str]) -> String {
    let (v4, v6): (Vec<&str>, Vec<&str>) = ips.iter().partition(|ip| !ip.contains(':'));
    let quote = |items: &[&str], suffix: &str| {
        items
            .iter()
            .map(|i| format!("\"{i}{suffix}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"state":"active","name":"cali{}","mac":"ee:ee:ee:ee:ee:ee","profile_ids":[{}],"ipv4_nets":[{}],"ipv6_nets":[{}]}}"#,
        &id[..11],
        quote(profiles, ""),
        quote(&v4, "/32"),
        quote(&v6, "/128")
    )
}

fn profile(graph: &mut CalcGraph, name: &str) {
    let tags = format!(r#"["{name}"]"#);
    let rules = ProfileRules::default_for(name).to_json();
    graph.apply(&put(
        &format!("/calico/v1/policy/profile/{name}/tags"),
        &tags,
    ));
    graph.apply(&put(
        &format!("/calico/v1/policy/profile/{name}/rules"),
        &rules,
    ));
}

/// Seed 001: A, B, C on calico-01; D, E on calico-02.
fn seed_001(host: &str) -> CalcGraph {
    let mut graph = CalcGraph::new(host);
    for name in ["PROF_A_C_E", "PROF_B", "PROF_D"] {
        profile(&mut graph, name);
    }
    let workloads = [
        (
            "calico-01",
            "A",
            "aaaaaaaaaaaaaaaa",
            "192.168.0.1",
            "PROF_A_C_E",
        ),
        (
            "calico-01",
            "B",
            "bbbbbbbbbbbbbbbb",
            "192.168.0.2",
            "PROF_B",
        ),
        (
            "calico-01",
            "C",
            "cccccccccccccccc",
            "192.168.0.3",
            "PROF_A_C_E",
        ),
        (
            "calico-02",
            "D",
            "dddddddddddddddd",
            "192.168.0.4",
            "PROF_D",
        ),
        (
            "calico-02",
            "E",
            "eeeeeeeeeeeeeeee",
            "192.168.0.5",
            "PROF_A_C_E",
        ),
    ];
    for (host, workload, id, ip, prof) in workloads {
        graph.apply(&put(
            &endpoint_key(host, workload, id),
            &endpoint_json(id, &[ip], &[prof]),
        ));
    }
    graph
}

fn v4(set: &std::collections::BTreeSet<ipnet::Ipv4Net>) -> Vec<String> {
    set.iter().map(|n| n.to_string()).collect()
}

#[test]
fn a_host_programs_its_own_endpoints_with_tags_from_every_host() {
    let desired = seed_001("calico-01").desired();
    let interfaces: Vec<&String> = desired.endpoints.keys().collect();
    assert_eq!(
        interfaces,
        ["caliaaaaaaaaaaa", "calibbbbbbbbbbb", "caliccccccccccc"]
    );
    assert_eq!(
        desired.endpoints["caliaaaaaaaaaaa"].policy,
        EndpointPolicy::Profiles(vec!["PROF_A_C_E".into()])
    );
    // PROF_D is used only on calico-02: not needed here.
    let profiles: Vec<&String> = desired.profiles.keys().collect();
    assert_eq!(profiles, ["PROF_A_C_E", "PROF_B"]);
    // E lives on calico-02 but is in the tag, so A and C accept it.
    assert_eq!(
        v4(&desired.tags["PROF_A_C_E"].ipv4),
        ["192.168.0.1/32", "192.168.0.3/32", "192.168.0.5/32"]
    );
    assert_eq!(v4(&desired.tags["PROF_B"].ipv4), ["192.168.0.2/32"]);
    assert!(desired.skipped.is_empty());
    assert_eq!(desired.config, Config::default());
}

#[test]
fn deletes_and_state_changes_take_endpoints_out() {
    let mut graph = seed_001("calico-02");
    graph.apply(&Update::Delete {
        key: endpoint_key("calico-01", "A", "aaaaaaaaaaaaaaaa"),
    });
    let inactive = endpoint_json("cccccccccccccccc", &["192.168.0.3"], &["PROF_A_C_E"])
        .replace("active", "inactive");
    graph.apply(&put(
        &endpoint_key("calico-01", "C", "cccccccccccccccc"),
        &inactive,
    ));
    let desired = graph.desired();
    assert_eq!(desired.endpoints.len(), 2);
    assert_eq!(v4(&desired.tags["PROF_A_C_E"].ipv4), ["192.168.0.5/32"]);
}

#[test]
fn malformed_values_are_skipped_with_their_key_and_the_rest_is_programmed() {
    let mut graph = seed_001("calico-01");
    let bad_key = endpoint_key("calico-01", "B", "bbbbbbbbbbbbbbbb");
    graph.apply(&put(&bad_key, "{not json"));
    graph.apply(&put(
        &endpoint_key("calico-01", "Z", "zzzzzzzzzzzzzzzz"),
        r#"{"state":"active"}"#,
    ));
    let desired = graph.desired();
    assert!(
        desired.skipped.contains_key(&bad_key),
        "{:?}",
        desired.skipped
    );
    assert_eq!(desired.skipped.len(), 2);
    assert!(
        !desired.endpoints.contains_key("calibbbbbbbbbbb"),
        "a bad endpoint is not programmed"
    );
    assert_eq!(desired.endpoints.len(), 2, "the good ones still are");
    assert!(
        !desired.tags.contains_key("PROF_B"),
        "no local endpoint uses PROF_B any more"
    );

    // A good value again clears the complaint.
    graph.apply(&put(
        &bad_key,
        &endpoint_json("bbbbbbbbbbbbbbbb", &["192.168.0.2"], &["PROF_B"]),
    ));
    assert!(!graph.desired().skipped.contains_key(&bad_key));
}

#[test]
fn an_endpoint_using_an_invalid_profile_drops_everything() {
    // A deny in the broken profile must not be lost, letting a later profile's allow win.
    let mut graph = seed_001("calico-01");
    let key = "/calico/v1/policy/profile/PROF_B/rules";
    graph.apply(&put(
        key,
        r#"{"inbound_rules":[{"action":"deny","protocol":"tcp","!dst_ports":[22]}]}"#,
    ));
    let desired = graph.desired();
    match &desired.endpoints["calibbbbbbbbbbb"].policy {
        EndpointPolicy::DropAll(reason) => {
            assert!(reason.contains("PROF_B has invalid rules"), "{reason}")
        }
        other => panic!("expected DropAll, got {other:?}"),
    }
    assert!(desired.skipped.contains_key(key));
    assert!(!desired.profiles.contains_key("PROF_B"));
    assert!(matches!(
        desired.endpoints["caliaaaaaaaaaaa"].policy,
        EndpointPolicy::Profiles(_)
    ));

    let tags_key = "/calico/v1/policy/profile/PROF_A_C_E/tags";
    graph.apply(&put(tags_key, r#"["bad tag"]"#));
    assert!(matches!(
        graph.desired().endpoints["caliaaaaaaaaaaa"].policy,
        EndpointPolicy::DropAll(_)
    ));
}

#[test]
fn a_missing_profile_contributes_no_rules_yet() {
    let mut graph = CalcGraph::new("h");
    let id = "0123456789abcdef";
    graph.apply(&put(
        &endpoint_key("h", "w", id),
        &endpoint_json(id, &["10.0.0.1", "fd00::1"], &["LATER"]),
    ));
    let desired = graph.desired();
    let endpoint = &desired.endpoints["cali0123456789a"];
    assert_eq!(
        endpoint.policy,
        EndpointPolicy::Profiles(vec!["LATER".into()])
    );
    assert_eq!(
        endpoint.ipv6.iter().next().unwrap().to_string(),
        "fd00::1/128"
    );
    assert!(desired.profiles.is_empty());
}

#[test]
fn host_config_overrides_global_and_bad_values_fall_back_safely() {
    let mut graph = CalcGraph::new("calico-01");
    graph.apply(&put(
        "/calico/v1/config/DefaultEndpointToHostAction",
        "ACCEPT",
    ));
    assert_eq!(graph.desired().config.endpoint_to_host, HostAction::Accept);
    graph.apply(&put(
        "/calico/v1/host/calico-01/config/DefaultEndpointToHostAction",
        "RETURN",
    ));
    graph.apply(&put(
        "/calico/v1/host/calico-02/config/DefaultEndpointToHostAction",
        "ACCEPT",
    ));
    assert_eq!(graph.desired().config.endpoint_to_host, HostAction::Return);
    graph.apply(&put(
        "/calico/v1/host/calico-01/config/DefaultEndpointToHostAction",
        "MAYBE",
    ));
    let desired = graph.desired();
    assert_eq!(desired.config.endpoint_to_host, HostAction::Drop);
    assert!(desired
        .skipped
        .keys()
        .any(|k| k.contains("DefaultEndpointToHostAction")));
}

#[test]
fn two_endpoints_claiming_one_interface_both_drop() {
    let mut graph = CalcGraph::new("h");
    let json = endpoint_json("0123456789abcdef", &["10.0.0.1"], &[]);
    graph.apply(&put(&endpoint_key("h", "w1", "0123456789abcdef"), &json));
    graph.apply(&put(
        &endpoint_key("h", "w2", "0123456789abcdeX"),
        &json.replace("10.0.0.1", "10.0.0.2"),
    ));
    let desired = graph.desired();
    assert_eq!(desired.endpoints.len(), 1);
    assert!(matches!(
        desired.endpoints["cali0123456789a"].policy,
        EndpointPolicy::DropAll(_)
    ));
}

#[test]
fn tag_members_never_overlap() {
    let mut graph = CalcGraph::new("h");
    profile(&mut graph, "P");
    let nets = [
        ("w1", "1111111111111111", "10.0.0.0/24"),
        ("w2", "2222222222222222", "10.0.0.5/32"),
        ("w3", "3333333333333333", "10.0.1.5/32"),
    ];
    for (workload, id, net) in nets {
        let value = format!(
            r#"{{"state":"active","name":"cali{}","profile_ids":["P"],"ipv4_nets":["{net}"]}}"#,
            &id[..11]
        );
        graph.apply(&put(&endpoint_key("h", workload, id), &value));
    }
    let desired = graph.desired();
    assert_eq!(
        v4(&desired.tags["P"].ipv4),
        ["10.0.0.0/24", "10.0.1.5/32"],
        "10.0.0.5 is inside 10.0.0.0/24"
    );
}

#[test]
fn pools_give_nat_sets_and_own_blocks_are_routed_whole() {
    let mut graph = CalcGraph::new("calico-01");
    for (key, value) in [
        (
            "/calico/v1/ipam/v4/pool/192.168.0.0-16",
            r#"{"cidr":"192.168.0.0/16","masquerade":true}"#,
        ),
        (
            "/calico/v1/ipam/v4/pool/10.0.0.0-8",
            r#"{"cidr":"10.0.0.0/8","ipip":"tunl0"}"#,
        ),
        (
            "/calico/v1/ipam/v6/pool/fd80::-64",
            r#"{"cidr":"fd80::/64"}"#,
        ),
        ("/calico/v1/ipam/v4/pool/172.16.0.0-12", "{broken"),
        (
            "/calico/ipam/v2/host/calico-01/ipv4/block/192.168.0.0-26",
            "",
        ),
        ("/calico/ipam/v2/host/calico-01/ipv6/block/fd80::-122", ""),
        (
            "/calico/ipam/v2/host/calico-02/ipv4/block/192.168.0.64-26",
            "",
        ),
        (
            "/calico/ipam/v2/host/calico-01/ipv4/block/192.168.1.1-26",
            "",
        ),
    ] {
        graph.apply(&put(key, value));
    }
    let desired = graph.desired();
    let v4 = |nets: &[&str]| {
        nets.iter()
            .map(|n| n.parse().unwrap())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(desired.pools.ipv4, v4(&["10.0.0.0/8", "192.168.0.0/16"]));
    assert_eq!(desired.pools.ipv6.len(), 1);
    assert_eq!(desired.masquerade.ipv4, v4(&["192.168.0.0/16"]));
    assert!(desired.masquerade.ipv6.is_empty());
    let blocks: Vec<String> = desired.blocks.iter().map(|b| b.to_string()).collect();
    assert_eq!(
        blocks,
        ["192.168.0.0/26", "fd80::/122"],
        "only this host's, only real blocks"
    );
    assert_eq!(desired.ipip_pools.len(), 1);
    assert!(desired
        .skipped
        .contains_key("/calico/v1/ipam/v4/pool/172.16.0.0-12"));
    assert!(desired
        .skipped
        .contains_key("/calico/ipam/v2/host/calico-01/ipv4/block/192.168.1.1-26"));

    graph.apply(&Update::Delete {
        key: "/calico/ipam/v2/host/calico-01/ipv4/block/192.168.0.0-26".into(),
    });
    graph.apply(&Update::Delete {
        key: "/calico/v1/ipam/v4/pool/192.168.0.0-16".into(),
    });
    let desired = graph.desired();
    assert_eq!(desired.blocks.len(), 1);
    assert!(desired.masquerade.ipv4.is_empty());
}
