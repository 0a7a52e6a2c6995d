//! Seed 002 end to end: `calicoctl master`, containers through the Docker API proxy, and an
//! orchestrator that manages policy by writing the group keyspace with etcdctl alone.

mod common;
use common::{until, TestLab};

const ONE: &str = "calico-01";
const TWO: &str = "calico-02";
const WEB: &str = "6f1d7d0e-1111-4c3b-9c55-2f9a0c000001";
const CLIENTS: &str = "6f1d7d0e-2222-4c3b-9c55-2f9a0c000002";
const OTHERS: &str = "6f1d7d0e-3333-4c3b-9c55-2f9a0c000003";

fn log_dir(lab: &TestLab) -> String {
    format!("--log-dir=/var/run/calico-lab/{}/logs", lab.name)
}

/// `docker` through the proxy on a host; its stdout.
fn proxied(lab: &TestLab, host: &str, args: &[&str]) -> String {
    let mut command = vec!["env", "DOCKER_HOST=localhost:2377", "docker"];
    command.extend_from_slice(args);
    let out = lab.on(host, &command);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a TCP connection from a container to `ip:port` opens within 2 s.
fn connects(lab: &TestLab, host: &str, container: &str, ip: &str, port: u16) -> bool {
    let script = format!("nc -w 2 {ip} {port} </dev/null");
    let command = ["docker", "exec", container, "sh", "-c", &script];
    lab.on(host, &command).status.success()
}

fn until_connects(lab: &TestLab, host: &str, container: &str, ip: &str, port: u16, open: bool) {
    until(
        &format!(
            "{container} -> {ip}:{port} {}",
            if open { "open" } else { "closed" }
        ),
        20,
        || connects(lab, host, container, ip, port) == open,
    );
}

/// What an orchestrator does to find a container's endpoint (seed 002): list
/// `/calico/host/<hostname>/workload/docker/<container-id>/endpoint/`.
fn endpoint_id(lab: &TestLab, host: &str, container: &str) -> String {
    let id = proxied(lab, host, &["inspect", "-f", "{{.Id}}", container]);
    let dir = format!(
        "/calico/host/{host}/workload/docker/{}/endpoint/",
        id.trim()
    );
    let mut found = String::new();
    until(&format!("{dir} is listed"), 20, || {
        let keys = lab.etcdctl(&["get", "--prefix", "--keys-only", &dir]);
        found = keys
            .lines()
            .find_map(|k| k.strip_prefix(&dir))
            .unwrap_or_default()
            .to_string();
        !found.is_empty()
    });
    found
}

fn put(lab: &TestLab, group: &str, field: &str, value: &str) {
    lab.etcdctl(&[
        "put",
        &format!("/calico/network/group/{group}/{field}"),
        value,
    ]);
}

fn master_ip(lab: &TestLab) -> String {
    lab.etcdctl(&["get", "--print-value-only", "/calico/master/ip"])
        .trim()
        .to_string()
}

#[test]
fn seed_002_an_orchestrator_manages_policy_through_the_group_keyspace() {
    let lab = TestLab::up_docker(2);
    let first = lab.calicoctl(ONE, &format!("master --ip=172.17.8.101 {}", log_dir(&lab)));
    assert!(first.contains("is the master"), "{first}");
    let second = lab.calicoctl(TWO, &format!("master --ip=172.17.8.102 {}", log_dir(&lab)));
    assert!(
        second.contains("waits: the master is 172.17.8.101"),
        "{second}"
    );
    assert_eq!(master_ip(&lab), "172.17.8.101");

    proxied(
        &lab,
        ONE,
        &[
            "run",
            "-e",
            "CALICO_IP=192.168.7.10",
            "--name",
            "web",
            "-tid",
            "busybox",
        ],
    );
    for port in ["80", "81"] {
        proxied(
            &lab,
            ONE,
            &["exec", "-d", "web", "httpd", "-p", port, "-h", "/"],
        );
    }
    proxied(
        &lab,
        TWO,
        &[
            "run",
            "-e",
            "CALICO_IP=192.168.7.20",
            "--name",
            "client",
            "-tid",
            "busybox",
        ],
    );
    proxied(
        &lab,
        TWO,
        &[
            "run",
            "-e",
            "CALICO_IP=192.168.7.30",
            "--name",
            "other",
            "-tid",
            "busybox",
        ],
    );
    let bird = lab.etcdctl(&[
        "get",
        "--print-value-only",
        "/calico/host/calico-02/bird_ip",
    ]);
    assert_eq!(bird.trim(), "172.17.8.102");

    // The orchestrator: three groups, members found through the seed's path.
    let (web, client, other) = (
        endpoint_id(&lab, ONE, "web"),
        endpoint_id(&lab, TWO, "client"),
        endpoint_id(&lab, TWO, "other"),
    );
    let everywhere = r#"{"group": null, "cidr": "0.0.0.0/0", "protocol": null, "port": null}"#;
    for (group, name, member) in [
        (WEB, "web", &web),
        (CLIENTS, "clients", &client),
        (OTHERS, "others", &other),
    ] {
        put(&lab, group, "name", name);
        put(&lab, group, "rule/inbound_default", "deny");
        put(&lab, group, "rule/outbound_default", "deny");
        put(&lab, group, "rule/outbound/1", everywhere);
        put(&lab, group, &format!("member/{member}"), "");
    }
    put(
        &lab,
        WEB,
        "rule/inbound/1",
        &format!(r#"{{"group": "{CLIENTS}", "cidr": null, "protocol": null, "port": null}}"#),
    );
    lab.until_container_reach(TWO, "client", "192.168.7.10", true);
    assert!(!lab.container_pings(TWO, "other", "192.168.7.10"));
    assert!(
        !lab.container_pings(ONE, "web", "192.168.7.30"),
        "others take nothing in"
    );

    // A CIDR rule, written as the seed's first example (with its stray "port:").
    put(
        &lab,
        WEB,
        "rule/inbound/2",
        r#"{"group": null, "cidr": "192.168.7.30/32", "protocol": null, "port:": null}"#,
    );
    lab.until_container_reach(TWO, "other", "192.168.7.10", true);
    // A port rule instead, with the port as a string as the seed writes it.
    put(
        &lab,
        WEB,
        "rule/inbound/2",
        r#"{"group": null, "cidr": "0.0.0.0/0", "protocol": "tcp", "port": "80"}"#,
    );
    until_connects(&lab, TWO, "other", "192.168.7.10", 80, true);
    lab.until_container_reach(TWO, "other", "192.168.7.10", false);
    assert!(!connects(&lab, TWO, "other", "192.168.7.10", 81));
    assert!(
        connects(&lab, TWO, "client", "192.168.7.10", 81),
        "clients reach every port"
    );

    // A value that cannot be read closes that group's members only.
    put(
        &lab,
        OTHERS,
        "rule/outbound/2",
        r#"{"protocol": "tcp", "port": "eighty"}"#,
    );
    until_connects(&lab, TWO, "other", "192.168.7.10", 80, false);
    assert!(lab.container_pings(TWO, "client", "192.168.7.10"));

    // The master ends; the waiting one takes over and keeps translating.
    lab.calicoctl(ONE, "master stop");
    until("the second master takes over", 30, || {
        master_ip(&lab) == "172.17.8.102"
    });
    put(
        &lab,
        OTHERS,
        "rule/outbound/2",
        r#"{"protocol": "tcp", "port": 80}"#,
    );
    until_connects(&lab, TWO, "other", "192.168.7.10", 80, true);

    // Deleting a group's directory removes what it made.
    lab.etcdctl(&["del", "--prefix", &format!("/calico/network/group/{WEB}/")]);
    lab.until_container_reach(TWO, "client", "192.168.7.10", false);
    let profiles = lab.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        &format!("/calico/v1/policy/profile/{WEB}/"),
    ]);
    assert!(profiles.trim().is_empty(), "{profiles}");
    let shown = lab.calicoctl(ONE, "endpoint show --detailed");
    assert!(!shown.contains(WEB), "{shown}");
    lab.calicoctl(TWO, "master stop");
}
