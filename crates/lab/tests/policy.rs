//! Policy on a lab host, through calicoctl, enforced by the agent in the kernel.

mod common;
use common::TestLab;

const HOST: &str = "calico-01";

/// Seed 001 with all five workloads on one host, then rule edits.
#[test]
fn seed_001_on_one_host_and_rule_edits() {
    let lab = TestLab::up(1);
    let workloads = [
        ("workload-A", "192.168.0.1", "PROF_A_C_E"),
        ("workload-B", "192.168.0.2", "PROF_B"),
        ("workload-C", "192.168.0.3", "PROF_A_C_E"),
        ("workload-D", "192.168.0.4", "PROF_D"),
        ("workload-E", "192.168.0.5", "PROF_A_C_E"),
    ];
    for (name, ip, _) in workloads {
        lab.workload(HOST, name, ip);
    }
    for profile in ["PROF_A_C_E", "PROF_B", "PROF_D"] {
        lab.calicoctl(HOST, &format!("profile add {profile}"));
    }
    for (name, _, profile) in workloads {
        let id = lab.calicoctl(HOST, &format!("container {name} endpoint-id show"));
        lab.calicoctl(
            HOST,
            &format!("endpoint {} profile append {profile}", id.trim()),
        );
    }
    // E's profile was written last: once A reaches E, every earlier write is in effect.
    lab.until_reach("workload-A", "192.168.0.5", true);
    assert!(lab.pings("workload-A", "192.168.0.3"));
    assert!(!lab.pings("workload-A", "192.168.0.2"));
    assert!(!lab.pings("workload-A", "192.168.0.4"));
    for (from, own, _) in [workloads[1], workloads[3]] {
        for (_, to, _) in workloads.iter().filter(|(_, ip, _)| *ip != own) {
            assert!(
                !lab.pings(from, to),
                "{from} must reach no one, but reaches {to}"
            );
        }
    }
    // B admits pings from anyone; A's profile denies pings from D before its own allow.
    lab.calicoctl(HOST, "profile PROF_B rule add inbound allow icmp");
    lab.until_reach("workload-A", "192.168.0.2", true);
    lab.until_reach("workload-D", "192.168.0.2", true);
    lab.calicoctl(
        HOST,
        "profile PROF_A_C_E rule add inbound --at=1 deny icmp from cidr 192.168.0.5/32",
    );
    lab.until_reach("workload-E", "192.168.0.1", false);
    assert!(lab.pings("workload-C", "192.168.0.1"));
    lab.calicoctl(HOST, "profile PROF_A_C_E rule remove inbound --at=1");
    lab.until_reach("workload-E", "192.168.0.1", true);
}

/// Seed 004's rule forms with TCP and UDP, ICMP types, CIDRs, order, two profiles.
#[test]
fn rule_forms_decide_tcp_udp_and_icmp() {
    let lab = TestLab::up(1);
    lab.workload(HOST, "client", "192.168.0.10");
    lab.workload(HOST, "server", "192.168.0.20");
    for p in ["client", "server", "monitor"] {
        lab.calicoctl(HOST, &format!("profile add {p}"));
    }
    lab.calicoctl(HOST, "container client profile append client");
    lab.calicoctl(HOST, "container server profile append server");
    let _tcp = lab.tcp_server("server", 9001);
    let _other = lab.tcp_server("server", 9002);
    assert!(
        !lab.tcp_connects("client", "192.168.0.20", 9001),
        "nothing allowed yet"
    );

    lab.calicoctl(
        HOST,
        "profile server rule add inbound allow tcp from tag client to port 9001",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !lab.tcp_connects("client", "192.168.0.20", 9001) {
        assert!(
            std::time::Instant::now() < deadline,
            "tcp 9001 never opened"
        );
    }
    assert!(
        !lab.tcp_connects("client", "192.168.0.20", 9002),
        "only the allowed port"
    );
    assert!(!lab.udp_delivers("client", "server", "192.168.0.20", 5353));
    lab.calicoctl(
        HOST,
        "profile server rule add inbound allow udp from cidr 192.168.0.0/24 to ports 5000:6000",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !lab.udp_delivers("client", "server", "192.168.0.20", 5353) {
        assert!(
            std::time::Instant::now() < deadline,
            "udp 5353 never opened"
        );
    }
    // ICMP: echo requests (type 8) allowed, then a deny placed before it wins.
    assert!(!lab.pings("client", "192.168.0.20"));
    lab.calicoctl(HOST, "profile server rule add inbound allow icmp type 8");
    lab.until_reach("client", "192.168.0.20", true);
    lab.calicoctl(
        HOST,
        "profile server rule add inbound --at=1 deny icmp type 8 from tag client",
    );
    lab.until_reach("client", "192.168.0.20", false);
    // A second profile on the client whose tag the server admits; order across profiles.
    lab.calicoctl(
        HOST,
        "profile server rule add inbound allow tcp from tag monitor to port 9002",
    );
    lab.calicoctl(HOST, "container client profile append monitor");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !lab.tcp_connects("client", "192.168.0.20", 9002) {
        assert!(
            std::time::Instant::now() < deadline,
            "tag of the second profile never admitted"
        );
    }
}

#[test]
fn ipv6_workloads_and_spoofed_sources() {
    let lab = TestLab::up(1);
    lab.workload(HOST, "a", "fd80:24e2:f998:72d6::1");
    lab.workload(HOST, "b", "fd80:24e2:f998:72d6::2");
    lab.calicoctl(HOST, "container a ip add 192.168.0.1");
    lab.calicoctl(HOST, "container b ip add 192.168.0.2");
    lab.calicoctl(HOST, "profile add P");
    lab.calicoctl(HOST, "container a profile set P");
    lab.calicoctl(HOST, "container b profile set P");
    lab.until_reach("a", "fd80:24e2:f998:72d6::2", true);
    lab.until_reach("a", "192.168.0.2", true);
    // a takes an address the datastore did not give it: its packets are dropped.
    let add = lab
        .in_workload(
            "a",
            &["ip", "addr", "add", "192.168.0.99/32", "dev", "eth1"],
        )
        .status()
        .unwrap();
    assert!(add.success());
    let spoofed = lab
        .in_workload(
            "a",
            &[
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                "192.168.0.99",
                "192.168.0.2",
            ],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!spoofed.success(), "a spoofed source must be dropped");
    assert!(lab.pings("a", "192.168.0.2"), "its own address still works");
}

/// Docker sets iptables' FORWARD policy to DROP; what our policy accepts must still pass, and
/// nothing else may.
#[test]
fn a_docker_style_forward_drop_does_not_block_accepted_traffic() {
    let lab = TestLab::up(1);
    lab.workload(HOST, "a", "192.168.0.1");
    lab.workload(HOST, "c", "192.168.0.3");
    lab.workload(HOST, "x", "192.168.0.9");
    let drop = lab.on(HOST, &["iptables", "-P", "FORWARD", "DROP"]);
    assert!(drop.status.success());
    lab.calicoctl(HOST, "profile add P");
    lab.calicoctl(HOST, "profile add X");
    for (w, p) in [("a", "P"), ("c", "P"), ("x", "X")] {
        lab.calicoctl(HOST, &format!("container {w} profile set {p}"));
    }
    lab.until_reach("a", "192.168.0.3", true);
    assert!(!lab.pings("x", "192.168.0.3"));
    let rules =
        String::from_utf8_lossy(&lab.on(HOST, &["iptables", "-S", "FORWARD"]).stdout).into_owned();
    assert!(
        rules.contains("calico: accepted by workload policy"),
        "{rules}"
    );
    assert!(rules.contains("-P FORWARD DROP"), "{rules}");

    // Someone flushes FORWARD: traffic stops until the agent puts its rule back.
    assert!(lab
        .on(HOST, &["iptables", "-F", "FORWARD"])
        .status
        .success());
    lab.until_reach("a", "192.168.0.3", true);
    let rules =
        String::from_utf8_lossy(&lab.on(HOST, &["iptables", "-S", "FORWARD"]).stdout).into_owned();
    assert!(
        rules.contains("calico: accepted by workload policy"),
        "the agent restored its rule: {rules}"
    );
    assert!(!lab.pings("x", "192.168.0.3"));
}

/// Workload-to-host traffic follows DefaultEndpointToHostAction, the host's value over the
/// global one (calicoctl node sets RETURN for its host; the host's own firewall accepts).
#[test]
fn workload_to_host_traffic_follows_default_endpoint_to_host_action() {
    let lab = TestLab::up(1);
    lab.workload(HOST, "a", "192.168.0.1");
    lab.calicoctl(HOST, "profile add P");
    lab.calicoctl(HOST, "container a profile set P");
    let host_ip = "172.17.8.101";
    lab.until_reach("a", host_ip, true);
    let key = "/calico/v1/host/calico-01/config/DefaultEndpointToHostAction";
    lab.etcdctl(&["put", key, "DROP"]);
    lab.until_reach("a", host_ip, false);
    lab.etcdctl(&["put", key, "ACCEPT"]);
    lab.until_reach("a", host_ip, true);
    // The host's value wins over the global one.
    lab.calicoctl(HOST, "config felix DefaultEndpointToHostAction DROP");
    assert!(lab.pings("a", host_ip));
    lab.etcdctl(&["del", key]);
    lab.until_reach("a", host_ip, false);
}
