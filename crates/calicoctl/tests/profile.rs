//! `calicoctl profile`: tags, rule ordering, removal, JSON in and out.

mod common;
use common::Cli;

fn inbound(cli: &Cli, profile: &str) -> Vec<String> {
    let out = cli.ok(&format!("profile {profile} rule show"));
    let section = out.split("Outbound rules:").next().unwrap();
    section
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn tags_are_added_once_and_removed() {
    let cli = Cli::new();
    cli.ok("profile add WEB");
    assert_eq!(cli.ok("profile WEB tag show"), "WEB\n");
    assert_eq!(
        cli.ok("profile WEB tag add frontend"),
        "Tag frontend added to profile WEB\n"
    );
    assert_eq!(
        cli.ok("profile WEB tag add frontend"),
        "Tag frontend is already on profile WEB\n"
    );
    assert_eq!(cli.ok("profile WEB tag show"), "WEB\nfrontend\n");
    cli.ok("profile WEB tag remove WEB");
    assert_eq!(cli.ok("profile WEB tag show"), "frontend\n");
    let run = cli.fails("profile WEB tag remove WEB");
    assert!(
        run.stderr.contains("Tag WEB is not on profile WEB"),
        "{}",
        run.stderr
    );
}

#[test]
fn rules_go_where_at_says_and_duplicates_are_skipped() {
    let cli = Cli::new();
    cli.ok("profile add P");
    cli.ok("profile P rule add inbound allow tcp to ports 80");
    cli.ok("profile P rule add inbound --at=1 deny tcp from cidr 10.0.0.0/8 to ports 80");
    cli.ok("profile P rule add inbound --at 3 allow icmp type 8");
    assert_eq!(
        inbound(&cli, "P"),
        [
            "1 deny tcp from cidr 10.0.0.0/8 to ports 80",
            "2 allow from tag P",
            "3 allow icmp type 8",
            "4 allow tcp to ports 80",
        ]
    );
    // The same rule, written differently, is the same rule.
    let out = cli.ok("profile P rule add inbound allow tcp to port 80");
    assert_eq!(out, "Rule already present, skipping.\n");
    assert_eq!(inbound(&cli, "P").len(), 4);

    cli.ok("profile P rule remove inbound --at=2");
    cli.ok("profile P rule remove inbound allow icmp type 8");
    assert_eq!(
        inbound(&cli, "P"),
        [
            "1 deny tcp from cidr 10.0.0.0/8 to ports 80",
            "2 allow tcp to ports 80"
        ]
    );
    cli.ok("profile P rule add outbound deny udp to ports 53,5353,1000:2000 cidr 8.8.8.0/24");
    let out = cli.ok("profile P rule show");
    assert!(out.ends_with("Outbound rules:\n   1 allow\n   2 deny udp to ports 53,5353,1000:2000 cidr 8.8.8.0/24\n"), "{out}");
}

#[test]
fn rule_json_round_trips_through_rule_update() {
    let cli = Cli::new();
    cli.ok("profile add A");
    cli.ok("profile add B");
    cli.ok("profile A rule add inbound deny icmpv6 type 128 code 0 from cidr fd00::/8");
    cli.ok("profile A rule add outbound allow ipv6 to tag B");
    let json = cli.ok("profile A rule json");
    let run = cli.run_with_input(&["profile", "B", "rule", "update"], &json);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "Successfully updated rules on profile B\n");
    assert_eq!(cli.ok("profile B rule json"), json);
    assert!(cli
        .ok("profile B rule show")
        .contains("   2 allow ipv6 to tag B\n"));

    // The older form with "id" is accepted when it names the profile.
    let with_id = json.replacen('{', r#"{"id": "B","#, 1);
    assert_eq!(
        cli.run_with_input(&["profile", "B", "rule", "update"], &with_id)
            .code,
        0
    );
    let run = cli.run_with_input(&["profile", "A", "rule", "update"], &with_id);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("does not match profile name A"),
        "{}",
        run.stderr
    );
}

#[test]
fn profiles_in_use_are_kept_unless_no_check() {
    let cli = Cli::new();
    cli.ok("profile add P");
    cli.put_endpoint(
        "h1",
        "w1",
        "1234567890abcdef1234567890abcdef",
        "192.168.0.1",
        &["P"],
    );
    let run = cli.fails("profile remove P");
    assert!(
        run.stderr.contains("in use by 1 endpoint(s)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--no-check"), "{}", run.stderr);
    assert!(cli.etcd.get("/calico/v1/policy/profile/P/rules").is_some());
    assert_eq!(cli.ok("profile remove P --no-check"), "Deleted profile P\n");
    assert!(cli.etcd.dump("/calico/v1/policy/profile/P/").is_empty());
    let run = cli.fails("profile remove P");
    assert!(
        run.stderr.contains("Profile P not found."),
        "{}",
        run.stderr
    );
}

#[test]
fn profiles_written_by_an_orchestrator_are_read() {
    let cli = Cli::new();
    // Only tags, and rules in the pre-v0.23 form with "id" and a port range.
    cli.etcd
        .put("/calico/v1/policy/profile/ORCH/tags", r#"["ORCH","db"]"#);
    cli.etcd.put(
        "/calico/v1/policy/profile/ORCH/rules",
        r#"{"id":"ORCH","inbound_rules":[{"action":"allow","protocol":"tcp","dst_ports":[5432,"6000:6010"],"src_tag":"db"}],"outbound_rules":[]}"#,
    );
    assert_eq!(
        cli.ok("profile ORCH rule show"),
        "Inbound rules:\n   1 allow tcp from tag db to ports 5432,6000:6010\nOutbound rules:\n"
    );
    assert_eq!(cli.ok("profile ORCH tag show"), "ORCH\ndb\n");
    // A broken value is reported with its key, not trusted and not overwritten.
    cli.etcd.put(
        "/calico/v1/policy/profile/ORCH/rules",
        r#"{"inbound_rules":[{"action":"allow","dst_ports":[80]}]}"#,
    );
    let run = cli.fails("profile ORCH rule add inbound deny");
    assert!(
        run.stderr.contains("/calico/v1/policy/profile/ORCH/rules"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("ports can only be given"),
        "{}",
        run.stderr
    );
}

#[test]
fn every_command_has_help() {
    let cli = Cli::new();
    for group in ["profile", "endpoint", "pool", "bgp", "config"] {
        let out = cli.ok(&format!("{group} --help"));
        assert!(out.starts_with("Usage:"), "{group}: {out}");
        assert!(
            out.contains(&format!("calicoctl {group}")),
            "{group}: {out}"
        );
    }
    assert!(cli.ok("--help").contains("Commands:"));
    assert!(cli
        .ok("profile P rule add --help")
        .contains("rule add (inbound|outbound)"));
    assert_eq!(
        cli.ok("version"),
        format!("{}\n", env!("CARGO_PKG_VERSION"))
    );
}
