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
