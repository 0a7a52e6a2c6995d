//! The lab's contract, and workloads coming and going.

mod common;
use common::TestLab;

#[test]
fn up_builds_hosts_with_agents_and_down_leaves_nothing() {
    let lab = TestLab::up(2);
    lab.calicoctl("calico-01", "node bgp peer add 172.17.8.254 as 64512");
    let shown = lab.calicoctl("calico-02", "node show");
    assert!(shown.contains("| calico-01 | 172.17.8.101 |"), "{shown}");
    let header = shown.lines().nth(1).unwrap_or_default();
    for column in ["BGP Peers v4", "BGP Peers v6", "Agent"] {
        assert!(header.contains(column), "{shown}");
    }
    let row = shown.lines().find(|l| l.contains("| calico-01 ")).unwrap();
    assert!(
        row.contains("| 172.17.8.254 |"),
        "the host's own peer: {shown}"
    );
    assert!(shown.contains("| calico-02 | 172.17.8.102 |"), "{shown}");
    let agents = [
        lab.agent_pid("calico-01").expect("agent 1"),
        lab.agent_pid("calico-02").expect("agent 2"),
    ];
    // `up` again changes nothing.
    let again = lab.lab(&["up", "--hosts", "2"]);
    assert!(again.contains("already running"), "{again}");
    assert_eq!(lab.agent_pid("calico-01"), Some(agents[0]));
    let path = lab.lab(&["workload", "add", "calico-01", "w1"]);
    assert!(path.trim().ends_with("/netns/w1"), "{path}");

    let name = lab.name.clone();
    drop(lab);
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(!namespaces.contains(&format!("{name}-")), "{namespaces}");
    assert!(!std::path::Path::new(&format!("/var/run/calico-lab/{name}")).exists());
    for pid in agents {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "agent {pid} still runs"
        );
    }
}

#[test]
fn container_add_checks_addresses_and_remove_cleans_up() {
    let lab = TestLab::up(1);
    lab.workload("calico-01", "a", "192.168.0.1");
    lab.lab(&["workload", "add", "calico-01", "b"]);
    let taken = lab.calicoctl_fails("calico-01", "container add b 192.168.0.1");
    assert!(
        taken.contains("192.168.0.1 is already in use by endpoint"),
        "{taken}"
    );
    let outside = lab.calicoctl_fails("calico-01", "container add b 10.1.2.3");
    assert!(outside.contains("not in any enabled IP pool"), "{outside}");
    let again = lab.calicoctl_fails("calico-01", "container add a 192.168.0.9");
    assert!(again.contains("already been configured"), "{again}");
    let missing = lab.calicoctl_fails("calico-01", "container add nosuch 192.168.0.9");
    assert!(missing.contains("Container nosuch not found"), "{missing}");
    assert!(
        lab.etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/calico/v1/host/calico-01/workload/namespace/b/"
        ])
        .trim()
        .is_empty(),
        "nothing written for refused adds"
    );

    lab.calicoctl("calico-01", "container add b 192.168.0.2");
    lab.calicoctl("calico-01", "profile add P");
    for w in ["a", "b"] {
        lab.calicoctl("calico-01", &format!("container {w} profile append P"));
    }
    lab.until_reach("a", "192.168.0.2", true);
    // A second address, then removal of the workload's networking.
    lab.calicoctl("calico-01", "container b ip add 192.168.0.22");
    lab.until_reach("a", "192.168.0.22", true);
    lab.calicoctl("calico-01", "container b ip remove 192.168.0.22");
    lab.until_reach("a", "192.168.0.22", false);
    let id = lab.calicoctl("calico-01", "container b endpoint-id show");
    let interface = format!("cali{}", &id.trim()[..11]);
    assert_eq!(
        lab.calicoctl("calico-01", "container remove b"),
        "Removed Calico interface from b\n"
    );
    let links = lab.on("calico-01", &["ip", "link"]);
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&interface));
    assert!(lab
        .etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/calico/v1/host/calico-01/workload/namespace/b/"
        ])
        .trim()
        .is_empty());
    // The agent withdraws the route.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while String::from_utf8_lossy(&lab.on("calico-01", &["ip", "route"]).stdout)
        .contains("192.168.0.2 ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "route to the removed workload stays"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn checksystem_and_diags_on_a_lab_host() {
    let lab = TestLab::up(1);
    lab.workload("calico-01", "a", "192.168.0.1");
    let check = lab.calicoctl("calico-01", "checksystem");
    assert!(check.contains("OK    etcd is reachable"), "{check}");
    assert!(check.contains("OK    nftables"), "{check}");
    let log_dir = format!("/var/run/calico-lab/{}/logs", lab.name);
    let out = lab.calicoctl("calico-01", &format!("diags --log-dir {log_dir}"));
    let archive = out
        .lines()
        .find_map(|l| l.strip_prefix("Diagnostics saved to "))
        .expect(&out)
        .to_string();
    let listing = std::process::Command::new("tar")
        .args(["-xzOf", &archive])
        .output()
        .unwrap();
    std::fs::remove_file(&archive).unwrap();
    let contents = String::from_utf8_lossy(&listing.stdout);
    assert!(
        contents.contains("table inet calico"),
        "the ruleset is in the archive"
    );
    assert!(
        contents.contains("/calico/v1/host/calico-01/workload/namespace/a/endpoint/"),
        "the datastore dump is in it"
    );
    assert!(
        contents.contains("dataplane updated"),
        "the agent's log is in it"
    );
}

#[test]
fn node_remove_refuses_a_running_host_and_removes_a_stopped_one() {
    let lab = TestLab::up(2);
    lab.workload("calico-02", "w", "192.168.0.7");
    let running = lab.calicoctl_fails("calico-02", "node remove");
    assert!(running.contains("stop it first"), "{running}");
    lab.calicoctl("calico-02", "node stop");
    let busy = lab.calicoctl_fails("calico-02", "node remove");
    assert!(busy.contains("still has 1 endpoint(s)"), "{busy}");
    // From another host, by name, with its endpoints.
    assert_eq!(
        lab.calicoctl(
            "calico-01",
            "node remove --hostname calico-02 --remove-endpoints"
        ),
        "Node calico-02 removed.\n"
    );
    assert!(lab
        .etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/calico/v1/host/calico-02/"
        ])
        .trim()
        .is_empty());
    assert!(lab
        .etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/calico/bgp/v1/host/calico-02/"
        ])
        .trim()
        .is_empty());
    assert!(!lab
        .calicoctl("calico-01", "node show")
        .contains("calico-02"));
}

#[test]
fn container_add_refuses_a_host_without_policy() {
    let lab = TestLab::up(1);
    lab.lab(&["workload", "add", "calico-01", "w"]);
    lab.calicoctl("calico-01", "node stop");
    assert!(lab
        .on("calico-01", &["nft", "delete", "table", "inet", "calico"])
        .status
        .success());
    let refused = lab.calicoctl_fails("calico-01", "container add w 192.168.0.5");
    assert!(refused.contains("has not programmed policy"), "{refused}");
    let links = String::from_utf8_lossy(&lab.on("calico-01", &["ip", "link"]).stdout).into_owned();
    assert!(!links.contains("cali"), "nothing wired: {links}");
}
