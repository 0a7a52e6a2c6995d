//! Hosts route to each other's workloads through BGP only: each host's calico-node runs BIRD
//! with a configuration it renders from the datastore.

mod common;
use std::time::{Duration, Instant};

use common::TestLab;

fn routes(lab: &TestLab, host: &str) -> String {
    String::from_utf8_lossy(&lab.on(host, &["ip", "route"]).stdout).into_owned()
}

/// Waits (up to 30 s) until `host`'s routing table does (or no longer does) contain `needle`.
fn until_route(lab: &TestLab, host: &str, needle: &str, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while routes(lab, host).contains(needle) != present {
        assert!(
            Instant::now() < deadline,
            "{host}: route '{needle}' should be {}:\n{}",
            if present { "there" } else { "gone" },
            routes(lab, host)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// Seed 001 as written: A, B, C on calico-01; D, E on calico-02.
#[test]
fn seed_001_across_two_hosts() {
    let lab = TestLab::up(2);
    let workloads = [
        ("calico-01", "workload-A", "192.168.0.1", "PROF_A_C_E"),
        ("calico-01", "workload-B", "192.168.0.2", "PROF_B"),
        ("calico-01", "workload-C", "192.168.0.3", "PROF_A_C_E"),
        ("calico-02", "workload-D", "192.168.0.4", "PROF_D"),
        ("calico-02", "workload-E", "192.168.0.5", "PROF_A_C_E"),
    ];
    for (host, name, ip, _) in workloads {
        lab.workload(host, name, ip);
    }
    for profile in ["PROF_A_C_E", "PROF_B", "PROF_D"] {
        lab.calicoctl("calico-01", &format!("profile add {profile}"));
    }
    for (host, name, _, profile) in workloads {
        lab.calicoctl(host, &format!("container {name} profile append {profile}"));
    }
    // Every host learns the other's workload routes from BGP, not from static routes.
    until_route(
        &lab,
        "calico-01",
        "192.168.0.5 via 172.17.8.102 dev eth0 proto bird",
        true,
    );
    until_route(
        &lab,
        "calico-02",
        "192.168.0.1 via 172.17.8.101 dev eth0 proto bird",
        true,
    );
    lab.until_reach("workload-A", "192.168.0.5", true);
    lab.until_reach("workload-E", "192.168.0.3", true);
    assert!(lab.pings("workload-A", "192.168.0.3"));
    assert!(!lab.pings("workload-A", "192.168.0.2"));
    assert!(!lab.pings("workload-A", "192.168.0.4"));
    assert!(!lab.pings("workload-D", "192.168.0.1"));
    assert!(!lab.pings("workload-B", "192.168.0.5"));
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
    until_route(&lab, "calico-01", "192.168.0.6 via 172.17.8.102", true);
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
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = String::from_utf8_lossy(
            &lab.on("calico-01", &["curl", "-s", "127.0.0.1:9099/metrics"])
                .stdout,
        )
        .into_owned();
        if metrics.contains("calico_node_invalid_datastore_values 3") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = lab.calicoctl("calico-01", "status");
        if status.contains("| 172.17.8.102 | node-to-node mesh |") && status.contains("Established")
        {
            assert!(
                status.contains("IP: 172.17.8.101    AS Number: 64511 (inherited)"),
                "{status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&config)
        .unwrap_or_default()
        .contains("protocol bgp Node_172_17_8_250")
    {
        assert!(
            Instant::now() < deadline,
            "the node peer never reached BIRD's configuration"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lab
        .calicoctl("calico-01", "status")
        .contains("| 172.17.8.250 |   node specific   |"));
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
    while !std::fs::read_to_string(&config2)
        .unwrap_or_default()
        .contains("debug protocols all")
    {
        assert!(
            Instant::now() < deadline + Duration::from_secs(20),
            "BIRD's log level never changed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !std::fs::read_to_string(&config)
            .unwrap()
            .contains("debug protocols all"),
        "calico-01 keeps its level"
    );
}
