//! IPAM on real hosts and a real etcd: automatic and explicit addresses, release and reuse,
//! exhaustion, and many allocators on several hosts at once.

mod common;
use std::collections::HashSet;
use std::net::IpAddr;
use std::process::Output;

use common::TestLab;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `calico-bench ipam-alloc` on a host: `count` addresses, each with an endpoint.
fn allocate(lab: &TestLab, host: &str, name: &str, count: usize) -> Output {
    lab.on(
        host,
        &[
            "calico-bench",
            "ipam-alloc",
            "--host",
            host,
            "--name",
            name,
            "--count",
            &count.to_string(),
        ],
    )
}

#[test]
fn automatic_and_explicit_addresses_across_hosts() {
    let lab = TestLab::up(2);
    let pools = lab.calicoctl("calico-01", "pool show");
    assert!(
        pools.contains("192.168.0.0/16") && pools.contains("fd80:24e2:f998:72d6::/64"),
        "{pools}"
    );
    for (host, name) in [
        ("calico-01", "a"),
        ("calico-02", "b"),
        ("calico-01", "c"),
        ("calico-02", "d"),
    ] {
        lab.lab(&["workload", "add", host, name]);
    }
    // Each host hands out addresses from a block of its own.
    assert_eq!(
        lab.calicoctl("calico-01", "container add a ipv4"),
        "IP 192.168.0.0 added to a\n"
    );
    assert_eq!(
        lab.calicoctl("calico-02", "container add b auto"),
        "IP 192.168.0.64 added to b\n"
    );
    assert_eq!(
        lab.calicoctl("calico-01", "container a ip add ipv6"),
        "IP fd80:24e2:f998:72d6:: added to a\n"
    );
    // An explicit address in another host's block, then automatic ones skip it.
    assert_eq!(
        lab.calicoctl("calico-02", "container add d 192.168.0.1"),
        "IP 192.168.0.1 added to d\n"
    );
    assert_eq!(
        lab.calicoctl("calico-01", "container add c ipv4"),
        "IP 192.168.0.2 added to c\n"
    );
    let taken = lab.calicoctl_fails("calico-01", "container c ip add 192.168.0.64");
    assert!(taken.contains("192.168.0.64 is already in use"), "{taken}");
    assert!(lab
        .calicoctl("calico-02", "ipam info 192.168.0.1")
        .contains("in use by workload d on host calico-02"));

    // The addresses route across hosts like any other.
    lab.calicoctl("calico-01", "profile add P");
    for (host, name) in [("calico-01", "a"), ("calico-02", "b")] {
        lab.calicoctl(host, &format!("container {name} profile set P"));
    }
    lab.until_reach("a", "192.168.0.64", true);

    let show = lab.calicoctl("calico-01", "ipam show");
    let row = |cidr: &str, host: &str| {
        show.lines().any(|l| {
            l.contains("Block")
                && l.contains(&format!(" {cidr} "))
                && l.contains(&format!(" {host} "))
        })
    };
    assert!(
        row("192.168.0.0/26", "calico-01") && row("192.168.0.64/26", "calico-02"),
        "{show}"
    );
    assert!(lab
        .calicoctl("calico-01", "ipam check")
        .starts_with("IPAM is consistent: 5 addresses"));

    // A pool in use is not removed, and says who holds its addresses.
    let refused = lab.calicoctl_fails("calico-01", "pool remove 192.168.0.0/16");
    assert!(
        refused.contains("4 of its addresses are in use")
            && refused.contains("workload a on host calico-01"),
        "{refused}"
    );

    // Removing a workload or an address releases it.
    lab.calicoctl("calico-02", "container remove b");
    lab.calicoctl("calico-01", "container a ip remove fd80:24e2:f998:72d6::");
    assert!(lab
        .calicoctl("calico-01", "ipam info 192.168.0.64")
        .contains("is not assigned"));
    assert!(lab
        .calicoctl("calico-01", "ipam info fd80:24e2:f998:72d6::")
        .contains("is not assigned"));
    assert!(lab
        .calicoctl("calico-01", "ipam check")
        .starts_with("IPAM is consistent: 3 addresses"));
}

#[test]
fn a_small_pool_runs_out_clearly_and_released_addresses_are_reused() {
    let lab = TestLab::up(1);
    lab.calicoctl("calico-01", "pool remove 192.168.0.0/16");
    lab.calicoctl("calico-01", "pool add 10.5.0.0/26");
    let filled = allocate(&lab, "calico-01", "fill", 64);
    assert!(
        filled.status.success(),
        "{}",
        String::from_utf8_lossy(&filled.stderr)
    );
    lab.lab(&["workload", "add", "calico-01", "x"]);
    // What calicoctl could write: IPAM, and the endpoints of its orchestrator.
    let written = || {
        lab.etcdctl(&["get", "--prefix", "/calico/ipam/"])
            + &lab.etcdctl(&[
                "get",
                "--prefix",
                "/calico/v1/host/calico-01/workload/namespace/",
            ])
    };
    let before = written();
    let error = lab.calicoctl_fails("calico-01", "container add x ipv4");
    assert!(
        error.contains("no free IPv4 address left in the enabled pools (10.5.0.0/26)"),
        "{error}"
    );
    assert!(before == written(), "a failed add writes nothing");
    assert!(lab
        .on("calico-01", &["sh", "-c", "ip -o link | grep -c cali"])
        .stdout
        .starts_with(b"0"));

    // One address freed (its holder's endpoint gone first, as an orchestrator would), then reused.
    let last: IpAddr = stdout(&filled).lines().last().unwrap().parse().unwrap();
    let still_used = lab.calicoctl_fails("calico-01", &format!("ipam release {last}"));
    assert!(still_used.contains("is used by endpoint"), "{still_used}");
    lab.etcdctl(&[
        "del",
        "--prefix",
        "/calico/v1/host/calico-01/workload/bench/fill-63/",
    ]);
    assert_eq!(
        lab.calicoctl("calico-01", &format!("ipam release {last}")),
        "Address successfully released\n"
    );
    assert_eq!(
        lab.calicoctl("calico-01", "container add x ipv4"),
        format!("IP {last} added to x\n")
    );
    assert!(lab
        .calicoctl("calico-01", "ipam check")
        .starts_with("IPAM is consistent: 64 addresses"));
}

/// Eight allocators on four hosts against one etcd: 2,000 addresses, none twice, none lost.
#[test]
fn eight_allocators_on_four_hosts_never_share_an_address() {
    let lab = TestLab::up(4);
    let children: Vec<_> = (0..8)
        .map(|i| {
            let host = format!("calico-0{}", i % 4 + 1);
            let name = format!("p{i}");
            std::process::Command::new(env!("CARGO_BIN_EXE_calico-lab"))
                .args(["exec", &host, "--name", &lab.name, "--"])
                .args([
                    "calico-bench",
                    "ipam-alloc",
                    "--host",
                    &host,
                    "--name",
                    &name,
                    "--count",
                    "250",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut all = HashSet::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in stdout(&output).lines() {
            let ip: IpAddr = line.parse().unwrap();
            assert!(all.insert(ip), "{ip} was handed out twice");
        }
    }
    assert_eq!(all.len(), 2000);
    let check = lab.calicoctl("calico-01", "ipam check");
    assert!(
        check.starts_with("IPAM is consistent: 2000 addresses"),
        "{check}"
    );
    // Every host drew from blocks of its own: 500 addresses each is 8 blocks of 64.
    let show = lab.calicoctl("calico-01", "ipam show");
    for n in 1..=4 {
        let blocks = show
            .lines()
            .filter(|l| l.contains(&format!(" calico-0{n} ")))
            .count();
        assert!(blocks >= 8, "calico-0{n} has {blocks} blocks:\n{show}");
    }
}

/// nat-outgoing: traffic from the pool to outside every pool leaves with the host's address
/// (the outside has no route back to the pool). IP-in-IP pools are stored and reported.
#[test]
fn nat_outgoing_reaches_the_outside_and_ipip_is_reported() {
    let lab = TestLab::up(1);
    lab.lab(&["outside", "up"]);
    lab.lab(&["workload", "add", "calico-01", "a"]);
    lab.calicoctl("calico-01", "container add a ipv4");
    lab.calicoctl("calico-01", "profile add P");
    lab.calicoctl("calico-01", "container a profile set P");
    assert!(!lab.pings("a", "172.17.8.200"), "no way back without NAT");
    lab.calicoctl("calico-01", "pool add 192.168.0.0/16 --nat-outgoing");
    lab.until_reach("a", "172.17.8.200", true);
    lab.calicoctl("calico-01", "pool add 192.168.0.0/16");
    lab.until_reach("a", "172.17.8.200", false);

    let added = lab.on(
        "calico-01",
        &["calicoctl", "pool", "add", "10.20.0.0/16", "--ipip"],
    );
    assert!(added.status.success());
    assert!(lab.calicoctl("calico-01", "pool show").contains("ipip"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = lab.calicoctl("calico-01", "status");
        if status.contains("Problem: pool 10.20.0.0/16 asks for IP-in-IP") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let metrics = stdout(&lab.on("calico-01", &["curl", "-s", "127.0.0.1:9099/metrics"]));
    assert!(
        metrics.contains("calico_node_unsupported_pools 1"),
        "{metrics}"
    );
}

/// Each host announces its blocks whole (a blackhole route at home); an address taken from
/// another host's block is announced on its own, and wins by being more specific.
#[test]
fn blocks_are_announced_whole_and_borrowed_addresses_alone() {
    let lab = TestLab::up(2);
    for (host, name) in [("calico-01", "a"), ("calico-02", "b"), ("calico-02", "c")] {
        lab.lab(&["workload", "add", host, name]);
    }
    lab.calicoctl("calico-01", "container add a ipv4");
    lab.calicoctl("calico-02", "container add b ipv4");
    lab.calicoctl("calico-02", "container add c 192.168.0.10");
    lab.calicoctl("calico-01", "profile add P");
    for (host, name) in [("calico-01", "a"), ("calico-02", "b"), ("calico-02", "c")] {
        lab.calicoctl(host, &format!("container {name} profile set P"));
    }
    let routes = |host: &str| stdout(&lab.on(host, &["ip", "route"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (one, two) = (routes("calico-01"), routes("calico-02"));
        let ready = two.contains("192.168.0.0/26 via 172.17.8.101 dev eth0 proto bird")
            && one.contains("192.168.0.64/26 via 172.17.8.102 dev eth0 proto bird")
            && one.contains("192.168.0.10 via 172.17.8.102 dev eth0 proto bird");
        if ready {
            assert!(one.contains("blackhole 192.168.0.0/26 proto 80"), "{one}");
            assert!(
                !two.contains("192.168.0.0 via"),
                "a's own route stays home: {two}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "calico-01:\n{one}\ncalico-02:\n{two}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    lab.until_reach("a", "192.168.0.64", true);
    lab.until_reach("a", "192.168.0.10", true);
    lab.until_reach("c", "192.168.0.0", true);
}

/// `ipam check` finds each kind of inconsistency, `--fix` waits for the agents unless forced,
/// then repairs what it can and leaves the rest to a person.
#[test]
fn ipam_check_finds_and_fixes_inconsistencies() {
    let lab = TestLab::up(1);
    // Leaked: allocated, no endpoint. A removed host's block: claimed by a host nobody knows.
    let leaked = lab.on(
        "calico-01",
        &[
            "calico-bench",
            "ipam-alloc",
            "--host",
            "calico-01",
            "--name",
            "leak",
            "--count",
            "2",
            "--no-endpoints",
        ],
    );
    assert!(leaked.status.success());
    let ghost = lab.on(
        "calico-01",
        &[
            "calico-bench",
            "ipam-alloc",
            "--host",
            "ghost",
            "--name",
            "g",
            "--count",
            "1",
            "--no-endpoints",
        ],
    );
    assert!(ghost.status.success());
    // Endpoints an orchestrator wrote without IPAM: one in a pool, one outside every pool.
    for (workload, ip) in [("unallocated", "192.168.7.7"), ("stray", "10.99.0.1")] {
        let key = format!(
            "/calico/v1/host/calico-01/workload/orch/{workload}/endpoint/{:0>32}",
            workload.len()
        );
        let value = format!(
            r#"{{"state":"active","name":"cali{:0>11}","profile_ids":[],"ipv4_nets":["{ip}/32"]}}"#,
            workload.len()
        );
        lab.etcdctl(&["put", &key, &value]);
    }

    let found = lab.on("calico-01", &["calicoctl", "ipam", "check"]);
    assert!(!found.status.success(), "problems exit non-zero");
    let report = stdout(&found);
    for line in [
        "allocated to no workload:    192.168.0.0",
        "allocated to no workload:    192.168.0.1",
        "allocated to no workload:    192.168.0.64",
        "not allocated in IPAM:       192.168.7.7 (workload unallocated on host calico-01)",
        "outside every pool:          10.99.0.1 (workload stray on host calico-01)",
        "block of a removed host:     192.168.0.64/26 (host ghost)",
    ] {
        assert!(report.contains(line), "missing '{line}' in:\n{report}");
    }
    let refused = lab.calicoctl_fails("calico-01", "ipam check --fix");
    assert!(
        refused.contains("the agents of calico-01 are running"),
        "{refused}"
    );

    let fixed = lab.on(
        "calico-01",
        &["calicoctl", "ipam", "check", "--fix", "--force"],
    );
    let fixed_out = stdout(&fixed);
    assert!(!fixed.status.success(), "the stray address needs a person");
    assert!(
        fixed_out.contains("released 3 leaked address(es)"),
        "{fixed_out}"
    );
    assert!(
        fixed_out.contains("allocated 192.168.7.7 to workload unallocated on host calico-01"),
        "{fixed_out}"
    );
    assert!(
        fixed_out.contains("took block 192.168.0.64/26 away from removed host ghost"),
        "{fixed_out}"
    );
    lab.etcdctl(&[
        "del",
        "--prefix",
        "/calico/v1/host/calico-01/workload/orch/stray/",
    ]);
    let clean = lab.calicoctl("calico-01", "ipam check");
    assert!(
        clean.starts_with("IPAM is consistent: 1 addresses"),
        "{clean}"
    );
    assert!(lab
        .calicoctl("calico-01", "ipam info 192.168.7.7")
        .contains("in use by workload unallocated on host calico-01"));
}

/// `node remove --remove-endpoints` gives the host's addresses and blocks back.
#[test]
fn a_removed_node_gives_its_addresses_back() {
    let lab = TestLab::up(2);
    lab.lab(&["workload", "add", "calico-02", "b"]);
    lab.calicoctl("calico-02", "container add b ipv4");
    lab.calicoctl("calico-02", "container b ip add ipv6");
    lab.calicoctl("calico-02", "node stop");
    let kept = lab.calicoctl_fails("calico-01", "node remove --hostname calico-02");
    assert!(kept.contains("still has 1 endpoint(s)"), "{kept}");
    lab.calicoctl(
        "calico-01",
        "node remove --hostname calico-02 --remove-endpoints",
    );
    assert!(lab
        .calicoctl("calico-01", "ipam info 192.168.0.0")
        .contains("is not in any IPAM block"));
    assert_eq!(
        lab.etcdctl(&["get", "--prefix", "/calico/ipam/v2/"]),
        "",
        "no block, affinity or handle left"
    );
    assert!(lab
        .calicoctl("calico-01", "ipam check")
        .starts_with("IPAM is consistent: 0 addresses"));
}
