//! Calico with real Docker engines in lab hosts: seed 001 with containers, seed 004's shared
//! networks, policy across hosts, bad input, restarts, and a lab that leaves nothing behind.

mod common;
use std::process::Command;

use common::{until, TestLab};

const ONE: &str = "calico-01";
const TWO: &str = "calico-02";

fn etcd_keys(lab: &TestLab, prefix: &str) -> String {
    lab.etcdctl(&["get", "--prefix", "--keys-only", prefix])
}

/// The calico networks an engine has.
fn calico_networks(lab: &TestLab, host: &str) -> Vec<String> {
    let mut names: Vec<String> = lab
        .docker(host, "network ls --filter driver=calico --format {{.Name}}")
        .lines()
        .map(String::from)
        .collect();
    names.sort();
    names
}

/// The host's `cali…` interfaces.
fn cali_links(lab: &TestLab, host: &str) -> Vec<String> {
    let out = lab.on(host, &["ip", "-o", "link"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("cali") || n.starts_with("tmp"))
        .collect()
}

/// The host end of a container's veth on its calico network: `cali` + 11 of its endpoint id.
fn interface_of(lab: &TestLab, container: &str) -> String {
    let format = "{{range .NetworkSettings.Networks}}{{.EndpointID}}{{end}}";
    let id = lab.docker_argv(ONE, &["inspect", "-f", format, container]);
    format!("cali{}", &id.trim()[..11])
}

/// One Docker host with a calico network `net`.
fn one_host_with_network() -> TestLab {
    let lab = TestLab::up_docker(1);
    lab.docker(
        ONE,
        "network create --driver calico --ipam-driver calico net",
    );
    lab
}

fn ipam_check_clean(lab: &TestLab, host: &str) {
    let out = lab.on(host, &["calicoctl", "ipam", "check"]);
    assert!(
        out.status.success(),
        "ipam check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_demo_runs_seed_001_with_docker_containers_on_two_hosts() {
    let lab = TestLab::reserve();
    let stdout = lab.demo(&[]);
    for line in [
        "calico-01$ docker run --net=none --name workload-A -tid busybox",
        "calico-02$ calicoctl container add workload-E 192.168.0.5",
        "IP 192.168.0.5 added to workload-E",
        "calico-01$ docker exec workload-A ping -c 4 192.168.0.5",
        "workload-A             -          no         yes          no         yes",
        "workload-B            no           -          no          no          no",
    ] {
        assert!(stdout.contains(line), "missing '{line}' in\n{stdout}");
    }
    // The endpoint is the container's: orchestrator docker, workload its full id.
    let id = lab.docker(ONE, "inspect -f {{.Id}} workload-A");
    let shown = lab.calicoctl(ONE, "container workload-A endpoint show");
    assert!(shown.contains(" docker "), "{shown}");
    assert!(shown.contains(id.trim()), "{shown}");
    assert!(shown.contains("192.168.0.1/32"), "{shown}");
    let inside = lab.docker(ONE, "exec workload-A ip -o addr show eth1");
    assert!(inside.contains("inet 192.168.0.1/32"), "{inside}");
}

#[test]
fn seed_004_networks_are_shared_and_policy_follows_their_profiles() {
    let lab = TestLab::up_docker(2);
    for line in [
        "network create --driver calico --ipam-driver calico --subnet=192.168.0.0/16 management-ui",
        "network create --driver calico --ipam-driver calico client",
        "network create --driver calico --ipam-driver calico frontend",
        "network create --driver calico --ipam-driver calico backend",
    ] {
        lab.docker(ONE, line);
    }
    let all = ["backend", "client", "frontend", "management-ui"];
    assert_eq!(calico_networks(&lab, ONE), all);
    until("the other host has the four networks", 30, || {
        calico_networks(&lab, TWO) == all
    });
    let subnet = lab.docker_argv(
        TWO,
        &[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            "management-ui",
        ],
    );
    assert_eq!(subnet.trim(), "192.168.0.0/16");
    assert_eq!(
        lab.calicoctl(TWO, "profile management-ui rule show"),
        "Inbound rules:\n   1 allow from tag management-ui\nOutbound rules:\n   1 allow\n"
    );

    // Containers on both hosts; a static address on the subnet network.
    lab.docker(ONE, "run -tid --net client --name c1 busybox");
    lab.docker(TWO, "run -tid --net client --name c2 busybox");
    lab.docker(TWO, "run -tid --net frontend --name f2 busybox");
    lab.docker(
        ONE,
        "run -tid --net management-ui --ip 192.168.255.254 --name ui busybox",
    );
    assert_eq!(lab.container_ip(ONE, "ui"), "192.168.255.254");
    let c2 = lab.container_ip(TWO, "c2");
    let f2 = lab.container_ip(TWO, "f2");
    let inside = lab.docker(ONE, "exec c1 ip -o addr show eth0");
    assert!(
        inside.contains("/32 "),
        "a host route per container: {inside}"
    );
    let routes = lab.docker(ONE, "exec c1 ip route");
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("169.254.1.1 dev eth0 scope link"),
        "{routes}"
    );
    let mac = lab.docker(ONE, "exec c1 cat /sys/class/net/eth0/address");
    assert!(mac.starts_with("ee:"), "a MAC of ours: {mac}");
    // calicoctl finds a container's endpoints on its networks, but leaves them to Docker.
    let shown = lab.calicoctl(ONE, "container c1 endpoint show");
    assert!(
        shown.contains(" libnetwork ") && shown.contains(" client "),
        "{shown}"
    );
    let refused = lab.calicoctl_fails(ONE, "container remove c1");
    assert!(refused.contains("docker network disconnect"), "{refused}");

    // Inside a network, across hosts; not across networks until a rule allows it.
    lab.until_container_reach(ONE, "c1", &c2, true);
    lab.until_container_reach(ONE, "c1", &f2, false);
    lab.calicoctl(
        ONE,
        "profile frontend rule add inbound allow from tag client",
    );
    lab.until_container_reach(ONE, "c1", &f2, true);
    assert!(!lab.container_pings(TWO, "f2", &lab.container_ip(ONE, "c1")));

    // IPv6 too: a /128 on each container, reached across hosts through fe80::1.
    lab.docker(
        TWO,
        "network create --ipv6 --driver calico --ipam-driver calico v6net",
    );
    until("calico-01 has v6net", 30, || {
        calico_networks(&lab, ONE).contains(&"v6net".to_string())
    });
    lab.docker(ONE, "run -tid --net v6net --name v1 busybox");
    lab.docker(TWO, "run -tid --net v6net --name v2 busybox");
    let v6 = |host, container| {
        let format = "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}";
        lab.docker_argv(host, &["inspect", "-f", format, container])
            .trim()
            .to_string()
    };
    let v2 = v6(TWO, "v2");
    assert!(
        v2.starts_with("fd80:"),
        "an address from the default IPv6 pool: {v2}"
    );
    let inside = lab.docker(TWO, "exec v2 ip -o -6 addr show eth0 scope global");
    assert!(inside.contains(&format!("{v2}/128")), "{inside}");
    lab.until_container_reach(ONE, "v1", &v2, true);
    lab.docker(ONE, "rm -f v1");
    lab.docker(TWO, "rm -f v2");

    // A network removed on one host goes everywhere; its profile too, unless in use.
    lab.docker(ONE, "rm -f c1");
    lab.docker(TWO, "rm -f c2");
    lab.docker(TWO, "network rm client");
    until("calico-01 removes client", 30, || {
        !calico_networks(&lab, ONE).contains(&"client".to_string())
    });
    assert!(etcd_keys(&lab, "/calico/libnetwork/v1/network/client")
        .trim()
        .is_empty());
    assert!(lab
        .calicoctl_fails(ONE, "profile client rule show")
        .contains("not found"));
    // frontend is still used by f2 on calico-02: removed from calico-01 and the cluster, kept
    // on calico-02 (with its profile) until f2 goes.
    lab.docker(ONE, "network rm frontend");
    assert!(lab
        .calicoctl(ONE, "profile frontend rule show")
        .contains("allow from tag client"));
    lab.docker(TWO, "rm -f f2");
    until("calico-02 removes frontend once unused", 30, || {
        !calico_networks(&lab, TWO).contains(&"frontend".to_string())
    });
    ipam_check_clean(&lab, ONE);
}

#[test]
fn bad_input_gets_clear_errors_and_leaves_nothing() {
    let lab = TestLab::up_docker(1);
    // What the drivers could write (the agents' own status keys come and go by themselves).
    let written = || {
        ["/calico/v1/", "/calico/libnetwork/", "/calico/ipam/"]
            .map(|prefix| etcd_keys(&lab, prefix))
            .join("")
    };
    let before = written();
    for (line, says) in [
        (
            "network create --driver calico --ipam-driver calico --subnet 10.99.0.0/16 outside",
            "--subnet 10.99.0.0/16 is not a Calico IP pool nor inside one",
        ),
        (
            "network create --driver calico --ipam-driver calico --subnet 192.168.7.0/28 small",
            "smaller than one Calico IPAM block",
        ),
        (
            "network create --driver calico --ipam-driver calico -o mtu=1400 opts",
            "calico networks take no driver options, but -o mtu was given",
        ),
        (
            "network create --driver calico --ipam-driver calico --subnet 192.168.0.0/16 --gateway 192.168.0.1 gw",
            "--gateway is not supported",
        ),
        (
            "network create --driver calico noipam",
            "calico networks need Calico IPAM",
        ),
    ] {
        let error = lab.docker_fails(ONE, line);
        assert!(error.contains(says), "{line}: {error}");
    }
    assert!(calico_networks(&lab, ONE).is_empty());
    assert_eq!(written(), before, "nothing written");

    // A taken --ip: the second container does not start, and nothing of it is left.
    lab.docker(
        ONE,
        "network create --driver calico --ipam-driver calico --subnet 192.168.0.0/16 net",
    );
    lab.docker(
        ONE,
        "run -tid --net net --ip 192.168.3.3 --name first busybox",
    );
    let taken = lab.docker_fails(
        ONE,
        "run -tid --net net --ip 192.168.3.3 --name second busybox",
    );
    assert!(taken.contains("192.168.3.3 is already in use"), "{taken}");
    let endpoints = etcd_keys(&lab, "/calico/v1/host/calico-01/workload/");
    assert_eq!(
        endpoints.lines().filter(|l| !l.is_empty()).count(),
        1,
        "{endpoints}"
    );
    assert_eq!(
        cali_links(&lab, ONE).len(),
        1,
        "{:?}",
        cali_links(&lab, ONE)
    );
    ipam_check_clean(&lab, ONE);

    // calicoctl container add: a --net=host, a stopped and an unknown container.
    lab.docker(ONE, "run -tid --net=host --name hostnet busybox");
    lab.docker(ONE, "create --net=none --name stopped busybox");
    for (name, says) in [
        ("hostnet", "uses the host's network (--net=host)"),
        ("stopped", "is not running"),
        (
            "nosuch",
            "the Docker engine at unix:///var/run/docker.sock has no such container",
        ),
    ] {
        let error = lab.calicoctl_fails(ONE, &format!("container add {name} 192.168.9.9"));
        assert!(error.contains(says), "{name}: {error}");
    }
    assert!(
        etcd_keys(&lab, "/calico/v1/host/calico-01/workload/docker/")
            .trim()
            .is_empty()
    );
    assert!(etcd_keys(&lab, "/calico/ipam/v2/handle/calico-01.")
        .trim()
        .is_empty());
}

#[test]
fn restarts_of_calico_node_and_the_engine_leave_nothing_stale() {
    let lab = one_host_with_network();
    lab.docker(ONE, "run -tid --net net --name keep busybox");
    lab.docker(ONE, "run -tid --net net --name gone busybox");
    lab.docker(ONE, "run -tid --net net --name probe busybox");
    let keep = lab.container_ip(ONE, "keep");
    lab.until_container_reach(ONE, "probe", &keep, true);

    // calico-node down; a container goes meanwhile (Docker gives up on each plugin call after
    // about 15 s, so this takes a minute); calico-node comes back and cleans up after it.
    let gone = interface_of(&lab, "gone");
    lab.calicoctl(ONE, "node stop");
    lab.docker(ONE, "rm -f gone");
    assert!(
        cali_links(&lab, ONE).contains(&gone),
        "with the plugin down, {gone} stays"
    );
    lab.lab(&["up", "--docker"]);
    until(
        "the gone container's endpoint, interface and address go",
        30,
        || {
            !cali_links(&lab, ONE).contains(&gone)
                && etcd_keys(&lab, "/calico/v1/host/calico-01/workload/libnetwork/")
                    .lines()
                    .filter(|l| !l.is_empty())
                    .count()
                    == 2
        },
    );
    ipam_check_clean(&lab, ONE);
    assert!(
        lab.container_pings(ONE, "probe", &keep),
        "the running ones keep their networking"
    );

    // The engine restarts (its containers stop with it): no endpoint, interface or address
    // stays; started again, the container gets networking again.
    let pid = std::fs::read_to_string(format!(
        "/var/run/calico-lab/{}/hosts/calico-01/dockerd.pid",
        lab.name
    ))
    .unwrap();
    Command::new("kill").arg(pid.trim()).status().unwrap();
    until("dockerd stops", 60, || {
        !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
    });
    lab.lab(&["up", "--docker"]);
    assert!(
        cali_links(&lab, ONE).is_empty(),
        "{:?}",
        cali_links(&lab, ONE)
    );
    assert!(etcd_keys(&lab, "/calico/v1/host/calico-01/workload/")
        .trim()
        .is_empty());
    ipam_check_clean(&lab, ONE);
    assert_eq!(calico_networks(&lab, ONE), ["net"]);
    lab.docker(ONE, "start keep probe");
    let keep = lab.container_ip(ONE, "keep");
    lab.until_container_reach(ONE, "probe", &keep, true);
}

#[test]
fn down_removes_containers_engines_cgroups_mounts_and_files() {
    let lab = one_host_with_network();
    lab.docker(ONE, "run -tid --net net --name web busybox");
    lab.docker(ONE, "run -tid --net=none --name db busybox");
    lab.calicoctl(ONE, "container add db auto");
    // Everything the lab runs: what is in the host's namespace (keeper, agent, BIRD, dockerd,
    // containerd, shims) and the containers' processes.
    let mut pids: Vec<String> = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "pids", &format!("{}-calico-01", lab.name)])
            .output()
            .unwrap()
            .stdout,
    )
    .lines()
    .map(String::from)
    .collect();
    for container in ["web", "db"] {
        pids.push(
            lab.docker(ONE, &format!("inspect -f {{{{.State.Pid}}}} {container}"))
                .trim()
                .into(),
        );
    }
    assert!(pids.len() >= 8, "{pids:?}");
    // A process's start time, while it runs (a zombie has exited; its reaper is not ours).
    let started = |pid: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
        (fields.first() != Some(&"Z")).then(|| fields.get(19).map(|s| s.to_string()))?
    };
    let before: Vec<(String, Option<String>)> =
        pids.iter().map(|p| (p.clone(), started(p))).collect();
    let name = lab.name.clone();
    drop(lab);
    for (pid, at) in before {
        let now = started(&pid);
        assert!(
            now.is_none() || now != at,
            "process {pid} of the lab still runs"
        );
    }
    let lab_path = format!("calico-lab/{name}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&lab_path), "{mounts}");
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = hierarchy.path().join("calico-lab").join(&name);
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    for dir in ["/var/run/calico-lab", "/var/lib/calico-lab"] {
        assert!(!std::path::Path::new(dir).join(&name).exists());
    }
    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(&format!("{name}-")));
}
