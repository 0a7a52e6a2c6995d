//! `calicoctl endpoint`: listing and per-endpoint profile lists.

mod common;
use common::Cli;

const E1: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const E2: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn cluster() -> Cli {
    let cli = Cli::new();
    cli.put_endpoint("calico-01", "w1", E1, "192.168.0.1", &[]);
    cli.put_endpoint("calico-01", "w2", E2, "192.168.0.2", &[]);
    cli.put_endpoint("calico-02", "w3", E1, "192.168.0.3", &[]);
    for p in ["A", "B", "C"] {
        cli.ok(&format!("profile add {p}"));
    }
    cli
}

#[test]
fn show_counts_per_host_or_lists_each_endpoint() {
    let cli = cluster();
    let summary = cli.ok("endpoint show");
    assert!(
        summary.contains(
            "| calico-01 |     docker      |          2          |          2          |"
        ),
        "{summary}"
    );
    assert!(
        summary.contains(
            "| calico-02 |     docker      |          1          |          1          |"
        ),
        "{summary}"
    );
    let detailed = cli.ok("endpoint show --host=calico-02 --detailed");
    assert!(
        detailed.contains(&format!(
            "| calico-02 |     docker      |     w3      | {E1} | 192.168.0.3/32 |"
        )),
        "{detailed}"
    );
    assert!(!detailed.contains("calico-01"), "{detailed}");
    let one = cli.ok(&format!("endpoint show --endpoint {E2} --detailed"));
    assert_eq!(one.lines().filter(|l| l.contains(E2)).count(), 1, "{one}");
}

#[test]
fn append_remove_set_and_show() {
    let cli = cluster();
    assert_eq!(
        cli.ok(&format!("endpoint {E2} profile show")),
        "Endpoint has no profiles associated with it.\n"
    );
    assert_eq!(
        cli.ok(&format!("endpoint {E2} profile append A B")),
        "Profile(s) A, B appended.\n"
    );
    assert_eq!(
        cli.ok(&format!("endpoint {E2} profile append B C")),
        "Profile B is already in endpoint profile list\nProfile(s) C appended.\n"
    );
    assert_eq!(
        cli.ok(&format!("endpoint {E2} profile show")),
        "+------+\n| Name |\n+------+\n|  A   |\n|  B   |\n|  C   |\n+------+\n"
    );
    assert_eq!(
        cli.ok(&format!("endpoint {E2} profile remove B")),
        "Profile(s) B removed.\n"
    );
    let run = cli.fails(&format!("endpoint {E2} profile remove B"));
    assert!(
        run.stderr
            .contains("Profile B is not in endpoint profile list."),
        "{}",
        run.stderr
    );
    assert_eq!(
        cli.ok(&format!("endpoint {E2} profile set C A")),
        "Profile(s) set to C, A.\n"
    );
    let stored = cli
        .etcd
        .get(&format!(
            "/calico/v1/host/calico-01/workload/docker/w2/endpoint/{E2}"
        ))
        .unwrap();
    assert!(stored.contains(r#""profile_ids":["C","A"]"#), "{stored}");
    assert_eq!(
        cli.ok(&format!("endpoint {E2} profile set")),
        "Removed all profiles from endpoint.\n"
    );
}

#[test]
fn an_ambiguous_endpoint_id_needs_a_filter() {
    let cli = cluster();
    let run = cli.fails(&format!("endpoint {E1} profile append A"));
    assert!(
        run.stderr.contains("More than 1 endpoint matches"),
        "{}",
        run.stderr
    );
    cli.ok(&format!("endpoint {E1} profile append A --host=calico-02"));
    let stored = cli
        .etcd
        .get(&format!(
            "/calico/v1/host/calico-02/workload/docker/w3/endpoint/{E1}"
        ))
        .unwrap();
    assert!(stored.contains(r#""profile_ids":["A"]"#), "{stored}");
    let untouched = cli
        .etcd
        .get(&format!(
            "/calico/v1/host/calico-01/workload/docker/w1/endpoint/{E1}"
        ))
        .unwrap();
    assert!(untouched.contains(r#""profile_ids":[]"#), "{untouched}");
}

#[test]
fn unknown_endpoints_and_profiles_are_refused() {
    let cli = cluster();
    let run = cli.fails("endpoint ffffffffffffffff profile append A");
    assert!(
        run.stderr
            .contains("Endpoint ffffffffffffffff is unknown to Calico."),
        "{}",
        run.stderr
    );
    let run = cli.fails(&format!("endpoint {E2} profile append NOPE"));
    assert!(
        run.stderr.contains("Profile with name NOPE was not found."),
        "{}",
        run.stderr
    );
    let run = cli.fails(&format!("endpoint {E2} profile append A A"));
    assert!(
        run.stderr.contains("specified more than once"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_invalid_endpoint_value_is_shown_as_invalid_not_fatal() {
    let cli = cluster();
    cli.etcd.put(
        "/calico/v1/host/calico-03/workload/docker/w9/endpoint/cccccccccccccccc",
        "{broken",
    );
    let run = cli.run(&["endpoint", "show", "--detailed"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("invalid"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("endpoint cccccccccccccccc has invalid data"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_listing_quietly() {
    let cli = cluster();
    // `calicoctl endpoint show --detailed | head -0`: the reader is gone before the first
    // line (calicoctl talks to etcd first), so every print meets a broken pipe.
    let mut child = cli
        .command(&["endpoint", "show", "--detailed"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(141), "{stderr}");
}
