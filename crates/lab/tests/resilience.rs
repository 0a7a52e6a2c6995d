//! The agent under faults: restarted under traffic, stopped, fed bad data.

mod common;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{until, Server, TestLab};

const HOST: &str = "calico-01";

fn two_workloads_and_an_outsider() -> TestLab {
    let lab = TestLab::up(1);
    lab.workload(HOST, "a", "192.168.0.1");
    lab.workload(HOST, "c", "192.168.0.3");
    lab.workload(HOST, "x", "192.168.0.9");
    lab.calicoctl(HOST, "profile add P");
    lab.calicoctl(HOST, "profile add X");
    lab.calicoctl(HOST, "container a profile set P");
    lab.calicoctl(HOST, "container c profile set P");
    lab.calicoctl(HOST, "container x profile set X");
    lab.until_reach("a", "192.168.0.3", true);
    lab
}

/// Waits until `lines` grows by `more` (a live flow keeps delivering).
fn flow_delivers(lines: &AtomicUsize, more: usize, what: &str) {
    let start = lines.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.load(Ordering::SeqCst) < start + more {
        assert!(
            Instant::now() < deadline,
            "the flow stopped delivering {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counts the lines a command prints, in a thread of its own.
fn count_lines(child: &mut std::process::Child) -> Arc<AtomicUsize> {
    let lines = Arc::new(AtomicUsize::new(0));
    let counter = lines.clone();
    let output = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for _ in BufReader::new(output).lines() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    lines
}

#[test]
fn twenty_restarts_keep_a_live_flow_and_let_nothing_denied_through() {
    let lab = two_workloads_and_an_outsider();
    // A long TCP flow from a to c: a line every 100 ms.
    let mut receiver = lab
        .in_workload("c", &["nc", "-l", "9000"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let lines = count_lines(&mut receiver);
    let _receiver = Server(receiver);
    // What x (profile X, which P does not admit) gets through to c: nothing, ever.
    let mut breach_listener = lab
        .in_workload("c", &["nc", "-lk", "9001"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let breaches = count_lines(&mut breach_listener);
    let _breach_listener = Server(breach_listener);
    // The sender's nc gives up at once if nothing listens yet.
    lab.until_listening("c", 9000, false);
    lab.until_listening("c", 9001, false);
    let generator =
        "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done | nc 192.168.0.3 9000";
    let _sender = Server(
        lab.in_workload("a", &["sh", "-c", generator])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // x starts a new connection attempt every 50 ms (each waits up to 1 s for an answer that
    // never comes), and says so each time.
    let prober = "while true; do echo try; (echo breach | nc -w 1 -q 0 192.168.0.3 9001 &); sleep 0.05; done";
    let mut probing = lab
        .in_workload("x", &["sh", "-c", prober])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tries = count_lines(&mut probing);
    let _prober = Server(probing);
    flow_delivers(&lines, 5, "before the restarts");

    lab.calicoctl(HOST, "node stop");
    assert!(lab.agent_pid(HOST).is_none());
    flow_delivers(&lines, 5, "while the agent is stopped");
    // Stopped, the agent's ruleset still polices: x stays out, a still reaches c.
    assert!(!lab.pings("x", "192.168.0.3"));
    assert!(lab.pings("a", "192.168.0.3"));
    lab.lab(&["up"]);
    assert!(lab.agent_pid(HOST).is_some());
    flow_delivers(&lines, 5, "after the first restart");

    for restart in 2..=20 {
        let before = lab.agent_pid(HOST);
        lab.calicoctl(HOST, "node stop");
        lab.lab(&["up"]);
        assert_ne!(
            lab.agent_pid(HOST),
            before,
            "restart {restart} started a new agent"
        );
        flow_delivers(&lines, 2, &format!("after restart {restart}"));
    }
    let tried = tries.load(Ordering::SeqCst);
    assert!(
        tried > 100,
        "x kept trying through the restarts ({tried} tries)"
    );
    assert_eq!(
        breaches.load(Ordering::SeqCst),
        0,
        "a connection policy denies got through during a restart"
    );
    assert!(
        !lab.pings("x", "192.168.0.3"),
        "nothing opened by the restarts"
    );
}

#[test]
fn malformed_datastore_values_are_skipped_and_the_agent_keeps_running() {
    let lab = two_workloads_and_an_outsider();
    let pid = lab.agent_pid(HOST).unwrap();
    lab.etcdctl(&[
        "put",
        "/calico/v1/host/calico-01/workload/namespace/ghost/endpoint/0123456789abcdef",
        "{not json",
    ]);
    lab.etcdctl(&[
        "put",
        "/calico/v1/policy/profile/X/rules",
        r#"{"inbound_rules":[{"action":"allow","!src_tag":"P"}]}"#,
    ]);
    lab.etcdctl(&["put", "/calico/v1/policy/profile/P/tags", r#"["P", 7]"#]);
    lab.etcdctl(&["put", "/calico/v1/policy/profile/P/tags", r#"["P"]"#]);
    // The bad profile X puts x's endpoint in error: all its traffic dropped, nothing else hurt.
    let status_key = lab.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/calico/felix/v1/host/calico-01/workload/namespace/x/",
    ]);
    until("x's endpoint reports an error", 20, || {
        lab.etcdctl(&["get", "--print-value-only", status_key.trim()])
            .contains("error")
    });
    assert!(lab.pings("a", "192.168.0.3"));
    assert!(!lab.pings("x", "192.168.0.1"));
    assert_eq!(
        lab.agent_pid(HOST),
        Some(pid),
        "the agent did not restart or die"
    );
    let metrics = lab.on(HOST, &["curl", "-s", "127.0.0.1:9099/metrics"]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("calico_node_invalid_datastore_values 2"),
        "{metrics}"
    );
    let health = lab.on(HOST, &["curl", "-s", "127.0.0.1:9099/health"]);
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok\n");
}

/// Deleting the agent's table or a workload route by hand is repaired within seconds.
#[test]
fn hand_made_drift_is_repaired() {
    let lab = two_workloads_and_an_outsider();
    let nft = |args: &[&str]| lab.on(HOST, &[&["nft"][..], args].concat());
    assert!(nft(&["delete", "table", "inet", "calico"]).status.success());
    assert!(lab
        .on(HOST, &["ip", "route", "del", "192.168.0.3/32"])
        .status
        .success());
    until("the table and the route are repaired", 20, || {
        let table = nft(&["list", "table", "inet", "calico"]).status.success();
        let routes = String::from_utf8_lossy(&lab.on(HOST, &["ip", "route"]).stdout).into_owned();
        table && routes.contains("192.168.0.3 dev cali")
    });
    assert!(lab.pings("a", "192.168.0.3"));
    assert!(!lab.pings("x", "192.168.0.3"));
    // (Any apply repairs, the periodic drift check or one a late datastore event triggers; the
    // drift counter itself is covered by the agent's unit tests.)
}

/// `calicoctl config felix loglevel` changes what the running agent logs.
#[test]
fn the_log_level_follows_config_felix_loglevel() {
    let lab = TestLab::up(1);
    let log = format!(
        "/var/run/calico-lab/{}/logs/{HOST}/calico-node.log",
        lab.name
    );
    let debug_lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("DEBUG")
            .count()
    };
    lab.calicoctl(HOST, "profile add before");
    assert_eq!(debug_lines(), 0, "info by default");
    lab.calicoctl(HOST, "config felix loglevel debug");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while debug_lines() == 0 {
        // Each change is logged at debug level once the new level is in force.
        lab.calicoctl(HOST, &format!("profile add p{n}"));
        n += 1;
        assert!(Instant::now() < deadline, "no debug lines in {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
