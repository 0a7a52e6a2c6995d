//! Hosts route to each other's workloads through BGP only: each host's calico-node runs BIRD
//! with a configuration it renders from the datastore.

mod common;

use common::TestLab;

const V6_A: &str = "fd80:24e2:f998:72d6::1";
const V6_D: &str = "fd80:24e2:f998:72d6::4";

/// A host's IPv4 and IPv6 routes.
fn routes(lab: &TestLab, host: &str) -> String {
    String::from_utf8_lossy(&lab.on(host, &["sh", "-c", "ip route; ip -6 route"]).stdout)
        .into_owned()
}

/// Waits (up to 30 s) until `host`'s routing table does (or no longer does) contain `needle`.
fn until_route(lab: &TestLab, host: &str, needle: &str, present: bool) {
    until(
        &format!("{host}: route '{needle}' present={present}"),
        || routes(lab, host).contains(needle) == present,
    );
}

/// Waits (up to 30 s) until `host` routes `ip` via `via` with a route BGP brought: the
/// workload's own route or its block's, whichever the announcing host sends.
fn until_routed(lab: &TestLab, host: &str, ip: &str, via: &str) {
    let family = if ip.contains(':') { "-6" } else { "-4" };
    let show = format!("ip {family} route show match {ip} proto bird");
    until(&format!("{host}: {ip} routed via {via} by BGP"), || {
        let out = lab.on(host, &["sh", "-c", &show]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("via {via} dev eth0"))
    });
}

/// Polls `condition` every 100 ms for up to 30 s.
fn until(what: &str, condition: impl FnMut() -> bool) {
    common::until(what, 30, condition);
}

/// Two hosts with one workload each (a on calico-01, d on calico-02) in one profile, once a
/// reaches d.
fn a_and_d_across_hosts() -> TestLab {
    let lab = TestLab::up(2);
    lab.workload("calico-01", "a", "192.168.0.1");
    lab.workload("calico-02", "d", "192.168.0.4");
    lab.calicoctl("calico-01", "profile add P");
    lab.calicoctl("calico-01", "container a profile set P");
    lab.calicoctl("calico-02", "container d profile set P");
    lab.until_reach("a", "192.168.0.4", true);
    lab
}

/// Seed 001's workloads (A to E, 192.168.0.1 to .5), on the hosts given, with the seed's
/// profiles; then its whole reachability matrix: A, C and E reach each other, B and D reach
/// no one.
fn seed_001(hosts: usize, placement: [&str; 5]) {
    let lab = TestLab::up(hosts);
    let names = ["A", "B", "C", "D", "E"];
    let profiles = ["PROF_A_C_E", "PROF_B", "PROF_A_C_E", "PROF_D", "PROF_A_C_E"];
    for (i, name) in names.iter().enumerate() {
        let ip = format!("192.168.0.{}", i + 1);
        lab.workload(placement[i], &format!("workload-{name}"), &ip);
    }
    for profile in ["PROF_A_C_E", "PROF_B", "PROF_D"] {
        lab.calicoctl("calico-01", &format!("profile add {profile}"));
    }
    for (i, name) in names.iter().enumerate() {
        let line = format!("container workload-{name} profile append {}", profiles[i]);
        lab.calicoctl(placement[i], &line);
    }
    // Every host learns the others' workload routes from BGP, not from static routes.
    for (i, owner) in placement.iter().enumerate() {
        let via = format!("172.17.8.10{}", &owner[8..]);
        for host in (1..=hosts).map(|n| format!("calico-0{n}")) {
            if host != *owner {
                until_routed(&lab, &host, &format!("192.168.0.{}", i + 1), &via);
            }
        }
    }
    lab.until_reach("workload-A", "192.168.0.5", true);
    let lab = &lab;
    std::thread::scope(|scope| {
        for (i, from) in names.iter().enumerate() {
            for (j, to) in names.iter().enumerate().filter(|(j, _)| *j != i) {
                scope.spawn(move || {
                    let allowed = profiles[i] == "PROF_A_C_E" && profiles[j] == "PROF_A_C_E";
                    let to_ip = format!("192.168.0.{}", j + 1);
                    if allowed {
                        lab.until_reach(&format!("workload-{from}"), &to_ip, true);
                    } else {
                        assert!(
                            !lab.pings(&format!("workload-{from}"), &to_ip),
                            "{from} must not reach {to}"
                        );
                    }
                });
            }
        }
    });
}

/// Seed 001 as written: A, B, C on calico-01; D, E on calico-02.
#[test]
fn seed_001_across_two_hosts() {
    let [one, two] = ["calico-01", "calico-02"];
    seed_001(2, [one, one, one, two, two]);
}

/// The same scenario spread over three hosts.
#[test]
fn seed_001_across_three_hosts() {
    let [one, two, three] = ["calico-01", "calico-02", "calico-03"];
    seed_001(3, [one, two, three, one, three]);
}

/// Workloads a (calico-01) and d (calico-02) with IPv4 and IPv6 addresses, in one profile.
fn dual_stack_a_and_d(lab: &TestLab) {
    lab.workload("calico-01", "a", "192.168.0.1");
    lab.workload("calico-02", "d", "192.168.0.4");
    lab.calicoctl("calico-01", &format!("container a ip add {V6_A}"));
    lab.calicoctl("calico-02", &format!("container d ip add {V6_D}"));
    lab.calicoctl("calico-01", "profile add P");
    lab.calicoctl("calico-01", "container a profile set P");
    lab.calicoctl("calico-02", "container d profile set P");
}

#[test]
fn ipv6_routes_cross_hosts_and_a_dead_bird_is_restarted() {
    let lab = TestLab::up(2);
    dual_stack_a_and_d(&lab);
    until_routed(&lab, "calico-01", V6_D, "fd00:8::102");
    lab.until_reach("a", V6_D, true);
    lab.until_reach("d", V6_A, true);
    let status = lab.calicoctl("calico-01", "status");
    assert!(
        status.contains("IPv6 BGP status\nIP: fd00:8::101    AS Number: 64511 (inherited)"),
        "{status}"
    );
    assert!(
        status.contains("| fd00:8::102  | node-to-node mesh |"),
        "{status}"
    );

    // BIRD killed behind calico-node's back: calico-node starts a new one, sessions and routes
    // come back.
    let pid_file = format!("/var/run/calico-lab/{}/state/calico-02/bird.pid", lab.name);
    let bird_pid =
        || -> Option<u32> { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
    let old = bird_pid().expect("calico-node writes BIRD's pid file");
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &old.to_string()])
        .status()
        .unwrap()
        .success());
    until("a new BIRD on calico-02", || {
        bird_pid()
            .is_some_and(|pid| pid != old && std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
    until("the IPv6 session re-established", || {
        lab.calicoctl("calico-02", "status")
            .contains("| fd00:8::101  | node-to-node mesh |  up   |")
    });
    until_routed(&lab, "calico-02", V6_A, "fd00:8::101");
    lab.until_reach("d", V6_A, true);
    lab.until_reach("d", "192.168.0.1", true);
}

/// The router's routing table (zebra installs what bgpd learns).
fn router_routes(lab: &TestLab) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_calico-lab"))
        .args([
            "router",
            "exec",
            "--name",
            &lab.name,
            "--",
            "sh",
            "-c",
            "ip route; ip -6 route",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `bgp node-mesh off` and global peers to an FRR route reflector in the cluster's AS: FRR
/// learns every workload route, and the hosts reach each other's workloads through what it
/// reflects, in both families.
#[test]
fn node_mesh_off_with_a_route_reflector() {
    let lab = TestLab::up(2);
    let out = lab.lab(&["router", "up"]);
    assert!(out.contains("AS 64511, route reflector"), "{out}");
    dual_stack_a_and_d(&lab);
    lab.calicoctl("calico-01", "bgp node-mesh off");
    lab.calicoctl("calico-01", "bgp peer add 172.17.8.254 as 64511");
    lab.calicoctl("calico-02", "bgp peer add fd00:8::fe as 64511");
    until("the router's kernel routes to every workload", || {
        let table = router_routes(&lab);
        let has = |prefix: &str, via: &str| {
            table
                .lines()
                .any(|l| l.starts_with(prefix) && l.contains(via) && l.contains("proto bgp"))
        };
        // calico-01's blocks whole; d's addresses, borrowed from them, on their own.
        has("192.168.0.0/26 ", "via 172.17.8.101 dev eth0")
            && has("192.168.0.4 ", "via 172.17.8.102 dev eth0")
            && has("fd80:24e2:f998:72d6::/122 ", "via")
            && has(&format!("{V6_D} "), "via")
    });
    until("only global sessions, established", || {
        let status = lab.calicoctl("calico-01", "status");
        let up = |peer: &str| {
            status
                .lines()
                .any(|l| l.contains(peer) && l.contains(" global ") && l.contains(" up "))
        };
        !status.contains("node-to-node mesh") && up(" 172.17.8.254 ") && up(" fd00:8::fe ")
    });
    until_routed(&lab, "calico-01", "192.168.0.4", "172.17.8.102");
    until_routed(&lab, "calico-02", V6_A, "fd00:8::101");
    lab.until_reach("a", "192.168.0.4", true);
    lab.until_reach("d", V6_A, true);
    let show = lab.lab(&["router", "show"]);
    assert!(show.contains("*>i192.168.0.4/32   172.17.8.102"), "{show}");

    // A workload removed: its route leaves the router and the other host.
    lab.calicoctl("calico-02", "container remove d");
    until("the router withdraws d", || {
        !router_routes(&lab).contains("192.168.0.4 ")
    });
    until_route(&lab, "calico-01", "192.168.0.4 ", false);
}

/// The router in an AS of its own (eBGP), peered through an address that is not on the fabric
/// (multihop): it overrides the cluster's AS in the paths it passes on, so hosts that share one
/// AS accept each other's routes.
#[test]
fn node_mesh_off_with_an_ebgp_router_behind_a_hop() {
    let lab = TestLab::up(2);
    let out = lab.lab(&["router", "up", "--as", "64600"]);
    assert!(out.contains("AS 64600, eBGP peer"), "{out}");
    // The router's loopback address, reached through its fabric address.
    let router = |command: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_calico-lab"))
            .args([
                "router", "exec", "--name", &lab.name, "--", "sh", "-c", command,
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{command}");
    };
    router("ip addr add 10.99.0.254/32 dev lo");
    for host in ["calico-01", "calico-02"] {
        let route = lab.on(
            host,
            &[
                "ip",
                "route",
                "add",
                "10.99.0.254/32",
                "via",
                "172.17.8.254",
            ],
        );
        assert!(route.status.success());
    }
    dual_stack_a_and_d(&lab);
    lab.calicoctl("calico-01", "bgp node-mesh off");
    lab.calicoctl("calico-01", "bgp peer add 10.99.0.254 as 64600");
    until_routed(&lab, "calico-01", "192.168.0.4", "172.17.8.102");
    until_routed(&lab, "calico-02", "192.168.0.1", "172.17.8.101");
    lab.until_reach("a", "192.168.0.4", true);
    let show = lab.lab(&["router", "show"]);
    assert!(show.contains("192.168.0.0/26   172.17.8.101"), "{show}");
    assert!(lab
        .calicoctl("calico-02", "status")
        .lines()
        .any(|l| l.contains(" 10.99.0.254 ")
            && l.contains(" global ")
            && l.contains("Established")),);
}

#[test]
fn routes_follow_workloads_and_agents() {
    let lab = a_and_d_across_hosts();

    // Removed on one host: withdrawn on the other.
    lab.calicoctl("calico-02", "container remove d");
    until_route(&lab, "calico-01", "192.168.0.4 ", false);
    lab.lab(&["workload", "add", "calico-02", "d2"]);
    lab.calicoctl("calico-02", "container add d2 192.168.0.6");
    lab.calicoctl("calico-02", "container d2 profile set P");
    lab.until_reach("a", "192.168.0.6", true);

    // An agent stopped: its BIRD goes, and the other host withdraws its routes (hold time).
    lab.calicoctl("calico-02", "node stop");
    until_route(&lab, "calico-01", "192.168.0.6 ", false);
    lab.lab(&["up", "--hosts", "2"]);
    until_routed(&lab, "calico-01", "192.168.0.6", "172.17.8.102");
    lab.until_reach("a", "192.168.0.6", true);
}

#[test]
fn malformed_bgp_data_is_skipped_and_bird_keeps_running() {
    let lab = a_and_d_across_hosts();
    lab.etcdctl(&["put", "/calico/bgp/v1/global/peer_v4/10.9.9.9", "{broken"]);
    lab.etcdctl(&[
        "put",
        "/calico/bgp/v1/host/calico-09/ip_addr_v4",
        "not-an-ip",
    ]);
    lab.etcdctl(&["put", "--", "/calico/bgp/v1/global/as_num", "-3"]);
    // The agents count the bad values and keep routing with what is valid.
    until("calico-01 counts three invalid values", || {
        String::from_utf8_lossy(
            &lab.on("calico-01", &["curl", "-s", "127.0.0.1:9099/metrics"])
                .stdout,
        )
        .contains("calico_node_invalid_datastore_values 3")
    });
    let socket = format!("/var/run/calico-lab/{}/state/calico-01/bird.ctl", lab.name);
    let protocols = String::from_utf8_lossy(
        &lab.on("calico-01", &["birdc", "-s", &socket, "show", "protocols"])
            .stdout,
    )
    .into_owned();
    assert!(protocols.contains("Established"), "{protocols}");
    assert!(lab.pings("a", "192.168.0.4"));
}

#[test]
fn status_node_peers_and_node_bgp_loglevel() {
    let lab = TestLab::up(2);
    // The mesh session's row: its "Since" column tells whether a reload dropped it.
    let mesh_row = || {
        let status = lab.calicoctl("calico-01", "status");
        status
            .lines()
            .find(|l| {
                l.contains("| 172.17.8.102 | node-to-node mesh |") && l.contains("Established")
            })
            .map(String::from)
    };
    until("calico-01's mesh session established", || {
        mesh_row().is_some()
    });
    let established = mesh_row().unwrap();
    assert!(lab
        .calicoctl("calico-01", "status")
        .contains("IP: 172.17.8.101    AS Number: 64511 (inherited)"));
    lab.calicoctl("calico-01", "node bgp peer add 172.17.8.250 as 64600");
    assert_eq!(
        lab.etcdctl(&[
            "get",
            "--print-value-only",
            "/calico/bgp/v1/host/calico-01/peer_v4/172.17.8.250"
        ])
        .trim(),
        r#"{"ip":"172.17.8.250","as_num":"64600"}"#
    );
    assert!(lab
        .calicoctl("calico-01", "node bgp peer show")
        .contains("| 172.17.8.250                | 64600  |"));
    assert!(lab
        .calicoctl("calico-02", "node bgp peer show --ipv4")
        .contains("No IPv4 BGP Peers defined for this node."));
    // The session to the (absent) peer appears in BIRD, on calico-01 only.
    let config = format!("/var/run/calico-lab/{}/state/calico-01/bird.conf", lab.name);
    until("the node peer reaches BIRD's configuration", || {
        std::fs::read_to_string(&config)
            .unwrap_or_default()
            .contains("protocol bgp Node_172_17_8_250")
    });
    assert!(lab
        .calicoctl("calico-01", "status")
        .contains("| 172.17.8.250 |   node specific   |"));
    // BIRD took the new session by a reload: the established one was not dropped.
    assert_eq!(mesh_row().as_ref(), Some(&established));
    assert_eq!(
        lab.calicoctl("calico-01", "node bgp peer remove 172.17.8.250"),
        "BGP peer removed from node configuration\n"
    );
    let missing = lab.calicoctl_fails("calico-01", "node bgp peer remove 172.17.8.250");
    assert!(
        missing.contains("is not a configured peer for this node"),
        "{missing}"
    );

    lab.calicoctl("calico-02", "config node bgp loglevel debug");
    assert_eq!(
        lab.etcdctl(&[
            "get",
            "--print-value-only",
            "/calico/bgp/v1/host/calico-02/loglevel"
        ])
        .trim(),
        "debug"
    );
    let config2 = format!("/var/run/calico-lab/{}/state/calico-02/bird.conf", lab.name);
    until("BIRD's log level changes on calico-02", || {
        std::fs::read_to_string(&config2)
            .unwrap_or_default()
            .contains("debug protocols all")
    });
    assert!(
        !std::fs::read_to_string(&config)
            .unwrap()
            .contains("debug protocols all"),
        "calico-01 keeps its level"
    );
}
