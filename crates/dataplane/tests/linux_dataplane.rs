//! LinuxDataplane in a host namespace: it brings interfaces up, sets sysctls, adds and sweeps
//! routes, programs the ruleset, and notices when someone removes its work.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use calico_dataplane::netlink::{Netlink, ROUTE_PROTOCOL};
use calico_dataplane::{netns, Dataplane, LinuxDataplane, NftCli};
use calico_felix::CalcGraph;
use common::{profile, put, OneHost};

fn endpoint(graph: &mut CalcGraph, name: &str, id: &str, ip: &str) {
    let key = format!("/calico/v1/host/h/workload/docker/{name}/endpoint/{id}");
    let value = format!(
        r#"{{"state":"active","name":"cali{}","profile_ids":["ALL"],"ipv4_nets":["{ip}/32"]}}"#,
        &id[..11]
    );
    put(graph, &key, &value);
}

/// A host with workloads A and B, and their endpoints in profile ALL.
fn workloads_a_and_b() -> (OneHost, CalcGraph) {
    let mut lab = OneHost::new(false);
    lab.add("A", "192.168.0.1", "aaaaaaaaaaaaaaaa");
    lab.add("B", "192.168.0.2", "bbbbbbbbbbbbbbbb");
    let mut graph = CalcGraph::new("h");
    profile(
        &mut graph,
        "ALL",
        r#"{"inbound_rules":[{"action":"allow","src_tag":"ALL"}],"outbound_rules":[{"action":"allow"}]}"#,
    );
    endpoint(&mut graph, "A", "aaaaaaaaaaaaaaaa", "192.168.0.1");
    endpoint(&mut graph, "B", "bbbbbbbbbbbbbbbb", "192.168.0.2");
    (lab, graph)
}

#[test]
fn the_dataplane_wires_routes_and_policy_and_repairs_drift() {
    let (lab, mut graph) = workloads_a_and_b();
    // An endpoint whose interface does not exist yet, and a stale route of ours to sweep.
    endpoint(&mut graph, "C", "cccccccccccccccc", "192.168.0.3");
    lab.host.run(
        "ip",
        &[
            "route",
            "add",
            "192.168.9.9/32",
            "dev",
            "uplink",
            "proto",
            &ROUTE_PROTOCOL.to_string(),
        ],
    );
    lab.host
        .run("ip", &["route", "add", "192.168.9.8/32", "dev", "uplink"]);

    let path = PathBuf::from(format!("/var/run/netns/{}", lab.host.name));
    let desired = graph.desired();
    let applied = netns::run_in(&path, move || async move {
        let mut dataplane = LinuxDataplane::new(Arc::new(NftCli::default())).unwrap();
        let first = dataplane.apply(&desired).await.unwrap();
        let again = dataplane.apply(&desired).await.unwrap();
        let drift_before = dataplane.drifted().await.unwrap();
        // C's interface appears (an orchestrator made it after writing the endpoint): the
        // next drift check says so, and an apply routes it.
        let made = std::process::Command::new("ip")
            .args([
                "link",
                "add",
                "caliccccccccccc",
                "type",
                "veth",
                "peer",
                "name",
                "tmpc",
            ])
            .status()
            .unwrap();
        assert!(made.success());
        let appeared = dataplane.drifted().await.unwrap();
        let routed = dataplane.apply(&desired).await.unwrap();
        (first, again, drift_before, appeared, routed)
    })
    .unwrap();
    let (first, again, drift_before, appeared, routed) = applied;
    assert!(first.ruleset_changed);
    assert_eq!(
        (first.routes_added, first.routes_removed),
        (2, 1),
        "{first:?}"
    );
    assert_eq!(first.missing_interfaces, ["caliccccccccccc"]);
    assert!(
        !again.ruleset_changed && again.routes_added == 0,
        "a second apply changes nothing: {again:?}"
    );
    assert!(!drift_before);
    assert!(appeared, "a missing interface that appeared is drift");
    assert_eq!(
        (routed.routes_added, routed.missing_interfaces.len()),
        (1, 0)
    );

    let routes = lab.host.run("ip", &["route", "show"]);
    assert!(
        routes.contains("192.168.0.1 dev caliaaaaaaaaaaa proto 80 scope link"),
        "{routes}"
    );
    assert!(
        !routes.contains("192.168.9.9"),
        "our stale route is swept: {routes}"
    );
    assert!(
        routes.contains("192.168.9.8"),
        "other routes are left alone: {routes}"
    );
    assert_eq!(
        lab.host
            .run(
                "cat",
                &["/proc/sys/net/ipv4/conf/caliaaaaaaaaaaa/proxy_arp"]
            )
            .trim(),
        "1"
    );
    assert!(lab.pings("A", "B"));

    // Someone deletes our table and a route: that is drift, and one apply repairs it.
    lab.host.run("nft", &["delete", "table", "inet", "calico"]);
    lab.host.run("ip", &["route", "del", "192.168.0.2/32"]);
    assert!(!lab.pings("A", "B"));
    let desired = graph.desired();
    let (drifted, repaired) = netns::run_in(&path, move || async move {
        let mut dataplane = LinuxDataplane::new(Arc::new(NftCli::default())).unwrap();
        dataplane.apply(&desired).await.unwrap();
        // A fresh dataplane knows nothing; make the drift again and look.
        let nl = Netlink::connect().unwrap();
        let route = nl
            .owned_routes()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.destination.to_string() == "192.168.0.1/32")
            .unwrap();
        nl.delete_route(&route).await.unwrap();
        let drifted = dataplane.drifted().await.unwrap();
        let repaired = dataplane.apply(&desired).await.unwrap();
        (drifted, repaired)
    })
    .unwrap();
    assert!(drifted);
    assert_eq!(repaired.routes_added, 1);
    assert!(lab.pings("A", "B"));

    // Someone flushes iptables' FORWARD: the drift check, which runs iptables in the
    // background so that the agent never waits for it, says so at a later check.
    let desired = graph.desired();
    let (noticed, restored) = netns::run_in(&path, move || async move {
        let mut dataplane = LinuxDataplane::new(Arc::new(NftCli::default())).unwrap();
        dataplane.apply(&desired).await.unwrap();
        let clean = !dataplane.drifted().await.unwrap();
        let flushed = std::process::Command::new("iptables")
            .args(["-w", "-F", "FORWARD"])
            .status()
            .unwrap();
        assert!(flushed.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut noticed = false;
        while !noticed && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            noticed = dataplane.drifted().await.unwrap();
        }
        dataplane.apply(&desired).await.unwrap();
        (
            clean && noticed,
            calico_dataplane::iptables::present().unwrap(),
        )
    })
    .unwrap();
    assert!(noticed, "a flushed FORWARD chain is drift");
    assert!(restored, "and an apply puts the rule back");
}

/// An incremental change reconciles routes only when an endpoint's addresses or MAC change:
/// a new profile list leaves the kernel's routes unread (a route deleted behind the agent's
/// back stays deleted until the drift check), a new address moves the route.
#[test]
fn only_changes_to_addresses_touch_routes() {
    let (lab, mut graph) = workloads_a_and_b();
    graph.take_changes();
    let path = PathBuf::from(format!("/var/run/netns/{}", lab.host.name));
    let b_key = "/calico/v1/host/h/workload/docker/B/endpoint/bbbbbbbbbbbbbbbb";
    let host = lab.host.name.clone();
    let steps = netns::run_in(&path, move || async move {
        let mut dataplane = LinuxDataplane::new(Arc::new(NftCli::default())).unwrap();
        dataplane.apply(graph.state()).await.unwrap();
        let del = std::process::Command::new("ip")
            .args(["route", "del", "192.168.0.1/32"])
            .status()
            .unwrap();
        assert!(del.success(), "in {host}");
        // B's profiles change: its chains do, its routes do not.
        put(
            &mut graph,
            b_key,
            r#"{"state":"active","name":"calibbbbbbbbbbb","profile_ids":[],"ipv4_nets":["192.168.0.2/32"]}"#,
        );
        let changes = graph.take_changes();
        let profiles = dataplane.apply_changes(graph.state(), &changes).await.unwrap();
        let drifted = dataplane.drifted().await.unwrap();
        // B's address changes: its route moves.
        put(
            &mut graph,
            b_key,
            r#"{"state":"active","name":"calibbbbbbbbbbb","profile_ids":["ALL"],"ipv4_nets":["192.168.0.7/32"]}"#,
        );
        let changes = graph.take_changes();
        let moved = dataplane.apply_changes(graph.state(), &changes).await.unwrap();
        (profiles, drifted, moved)
    })
    .unwrap();
    let (profiles, drifted, moved) = steps;
    assert!(profiles.ruleset_changed);
    assert_eq!((profiles.routes_added, profiles.routes_removed), (0, 0));
    assert!(drifted, "the deleted route is found by the drift check");
    // The address change reconciles all routes: B's moves, and A's deleted one comes back.
    assert_eq!(
        (moved.routes_added, moved.routes_removed),
        (2, 1),
        "{moved:?}"
    );
    let routes = lab.host.run("ip", &["route", "show"]);
    assert!(
        routes.contains("192.168.0.7 dev calibbbbbbbbbbb"),
        "{routes}"
    );
    assert!(!routes.contains("192.168.0.2 "), "{routes}");
}

/// The host's IPAM blocks become blackhole routes (workload routes inside them are more
/// specific), and go when the block does.
#[test]
fn blocks_of_this_host_are_blackhole_routes() {
    let mut lab = OneHost::new(false);
    lab.add("A", "192.168.0.1", "aaaaaaaaaaaaaaaa");
    let mut graph = CalcGraph::new("h");
    profile(
        &mut graph,
        "ALL",
        r#"{"inbound_rules":[{"action":"allow"}],"outbound_rules":[{"action":"allow"}]}"#,
    );
    endpoint(&mut graph, "A", "aaaaaaaaaaaaaaaa", "192.168.0.1");
    for block in ["192.168.0.0-26", "192.168.5.64-26"] {
        put(
            &mut graph,
            &format!("/calico/ipam/v2/host/h/ipv4/block/{block}"),
            "",
        );
    }
    put(
        &mut graph,
        "/calico/ipam/v2/host/h/ipv6/block/fd80::-122",
        "",
    );
    let with_blocks = graph.desired();
    graph.apply(&calico_felix::Update::Delete {
        key: "/calico/ipam/v2/host/h/ipv4/block/192.168.5.64-26".into(),
    });
    let fewer = graph.desired();
    let path = PathBuf::from(format!("/var/run/netns/{}", lab.host.name));
    let host = lab.host.name.clone();
    let show = move || {
        let out = std::process::Command::new("ip")
            .args(["-n", &host, "route", "show", "type", "blackhole"])
            .output()
            .unwrap();
        let v6 = std::process::Command::new("ip")
            .args(["-n", &host, "-6", "route", "show", "type", "blackhole"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&v6.stdout)
    };
    let show_in = show.clone();
    let (first, after_first, second) = netns::run_in(&path, move || async move {
        let mut dataplane = LinuxDataplane::new(Arc::new(NftCli::default())).unwrap();
        let first = dataplane.apply(&with_blocks).await.unwrap();
        let after_first = show_in();
        let drifted = dataplane.drifted().await.unwrap();
        assert!(!drifted, "blackholes are ours, not drift");
        let second = dataplane.apply(&fewer).await.unwrap();
        (first, after_first, second)
    })
    .unwrap();
    assert_eq!(first.routes_added, 4, "{first:?}");
    assert!(
        after_first.contains("blackhole 192.168.0.0/26 proto 80"),
        "{after_first}"
    );
    assert!(
        after_first.contains("blackhole 192.168.5.64/26 proto 80"),
        "{after_first}"
    );
    assert!(
        after_first.contains("blackhole fd80::/122 dev lo proto 80"),
        "{after_first}"
    );
    assert_eq!((second.routes_added, second.routes_removed), (0, 1));
    let after = show();
    assert!(!after.contains("192.168.5.64"), "{after}");
    let routes = lab.host.run("ip", &["route", "show"]);
    assert!(
        routes.contains("192.168.0.1 dev caliaaaaaaaaaaa proto 80"),
        "{routes}"
    );
}

/// A container restarted faster than its stop was seen: its endpoint never changed, but its
/// interface is a new link under the old name. The drift check finds the route gone, and the
/// repair configures the new link as it did the old one (proxy ARP above all: without it the
/// workload's ARP for its gateway goes unanswered).
#[test]
fn an_interface_made_again_under_its_name_is_configured_again() {
    let (lab, graph) = workloads_a_and_b();
    let path = PathBuf::from(format!("/var/run/netns/{}", lab.host.name));
    let (drifted, proxy_arp) = netns::run_in(&path, move || async move {
        let mut dataplane = LinuxDataplane::new(Arc::new(NftCli::default())).unwrap();
        dataplane.apply(graph.state()).await.unwrap();
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["link", "del", "caliaaaaaaaaaaa"]);
        ip(&[
            "link",
            "add",
            "caliaaaaaaaaaaa",
            "type",
            "veth",
            "peer",
            "name",
            "tmpa",
        ]);
        let drifted = dataplane.drifted().await.unwrap();
        dataplane.apply(graph.state()).await.unwrap();
        let proxy_arp =
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/caliaaaaaaaaaaa/proxy_arp").unwrap();
        (drifted, proxy_arp)
    })
    .unwrap();
    assert!(drifted, "the route went with the old link");
    assert_eq!(proxy_arp.trim(), "1");
    let routes = lab.host.run("ip", &["route", "show"]);
    assert!(
        routes.contains("192.168.0.1 dev caliaaaaaaaaaaa"),
        "{routes}"
    );
}
