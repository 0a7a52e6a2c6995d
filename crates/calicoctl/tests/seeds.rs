//! The seeds' calicoctl commands, typed as the seeds write them.

mod common;
use common::Cli;

/// Seed 004 (the stars demo): the profile rules, as the seed shows them.
#[test]
fn seed_004_rule_commands_give_the_rules_the_seed_shows() {
    let cli = Cli::new();
    for network in ["management-ui", "client", "frontend", "backend"] {
        cli.ok(&format!("profile add {network}"));
    }
    assert_eq!(
        cli.ok("profile management-ui rule show"),
        "Inbound rules:\n   1 allow from tag management-ui\nOutbound rules:\n   1 allow\n"
    );
    cli.ok("profile management-ui rule remove inbound allow from tag management-ui");
    cli.ok("profile management-ui rule add inbound allow tcp to ports 9001");
    cli.ok("profile client rule add inbound allow tcp from tag management-ui to ports 9000");
    cli.ok("profile backend rule add inbound allow tcp from tag management-ui to ports 9000");
    cli.ok("profile frontend rule add inbound allow tcp from tag management-ui to ports 9000");
    cli.ok("profile frontend rule add inbound allow tcp from tag client to port 9001");
    cli.ok("profile backend rule add inbound allow tcp from tag frontend to port 9001");

    assert_eq!(
        cli.ok("profile management-ui rule show"),
        "Inbound rules:\n   1 allow tcp to ports 9001\nOutbound rules:\n   1 allow\n"
    );
    assert_eq!(
        cli.ok("profile client rule show"),
        "Inbound rules:\n   1 allow from tag client\n   2 allow tcp from tag management-ui to ports 9000\n\
         Outbound rules:\n   1 allow\n"
    );
    assert_eq!(
        cli.ok("profile frontend rule show"),
        "Inbound rules:\n   1 allow from tag frontend\n   2 allow tcp from tag management-ui to ports 9000\n   \
         3 allow tcp from tag client to ports 9001\nOutbound rules:\n   1 allow\n"
    );
    assert_eq!(
        cli.ok("profile backend rule show"),
        "Inbound rules:\n   1 allow from tag backend\n   2 allow tcp from tag management-ui to ports 9000\n   \
         3 allow tcp from tag frontend to ports 9001\nOutbound rules:\n   1 allow\n"
    );
    // What is stored is Calico's v1 JSON.
    assert_eq!(
        cli.etcd
            .get("/calico/v1/policy/profile/frontend/rules")
            .unwrap(),
        r#"{"inbound_rules":[{"action":"allow","src_tag":"frontend"},{"action":"allow","protocol":"tcp","src_tag":"management-ui","dst_ports":[9000]},{"action":"allow","protocol":"tcp","src_tag":"client","dst_ports":[9001]}],"outbound_rules":[{"action":"allow"}]}"#
    );
}

/// Seeds 000/001: profiles, and endpoints (written by an orchestrator here; the
/// `container` commands come with the agent) given profiles by id.
#[test]
fn seed_001_profiles_and_endpoint_profile_append() {
    let cli = Cli::new();
    let ids = [
        (
            "workload-A",
            "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
            "192.168.0.1",
        ),
        (
            "workload-B",
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            "192.168.0.2",
        ),
        (
            "workload-C",
            "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c",
            "192.168.0.3",
        ),
    ];
    for (workload, id, ip) in ids {
        cli.put_endpoint("calico-01", workload, id, ip, &[]);
    }
    assert_eq!(
        cli.ok("profile add PROF_A_C_E"),
        "Created profile PROF_A_C_E\n"
    );
    cli.ok("profile add PROF_B");
    cli.ok("profile add PROF_D");
    let out = cli.ok(&format!("endpoint {} profile append PROF_A_C_E", ids[0].1));
    assert_eq!(out, "Profile(s) PROF_A_C_E appended.\n");
    cli.ok(&format!("endpoint {} profile append PROF_B", ids[1].1));
    cli.ok(&format!("endpoint {} profile append PROF_A_C_E", ids[2].1));

    let stored = cli
        .etcd
        .get(&format!(
            "/calico/v1/host/calico-01/workload/docker/workload-A/endpoint/{}",
            ids[0].1
        ))
        .unwrap();
    assert!(
        stored.contains(r#""profile_ids":["PROF_A_C_E"]"#),
        "{stored}"
    );
    assert_eq!(
        cli.ok("profile show"),
        "+------------+\n|    Name    |\n+------------+\n| PROF_A_C_E |\n|   PROF_B   |\n|   PROF_D   |\n+------------+\n"
    );
    let detailed = cli.ok("profile show --detailed");
    assert!(
        detailed.contains("| PROF_A_C_E | calico-01 |"),
        "{detailed}"
    );
    assert!(
        detailed.contains("|   PROF_D   |   None    |"),
        "{detailed}"
    );
}
