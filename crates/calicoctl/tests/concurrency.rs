//! Read-modify-write commands racing from many processes: every change lands.

mod common;
use std::process::Child;

use common::Cli;

fn wait_all(children: Vec<Child>) {
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn concurrent_rule_adds_on_one_profile_all_land() {
    let cli = Cli::new();
    cli.ok("profile add RACE");
    let writers = 24;
    let children: Vec<Child> = (0..writers)
        .map(|i| {
            let port = (9000 + i).to_string();
            cli.command(&[
                "profile", "RACE", "rule", "add", "inbound", "allow", "tcp", "to", "ports", &port,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    wait_all(children);
    let shown = cli.ok("profile RACE rule show");
    for i in 0..writers {
        let rule = format!(" allow tcp to ports {}\n", 9000 + i);
        assert_eq!(
            shown.matches(&rule).count(),
            1,
            "rule for port {} in:\n{shown}",
            9000 + i
        );
    }
    assert_eq!(shown.lines().count(), 2 + 1 + writers + 1, "{shown}");
}

#[test]
fn concurrent_tag_and_endpoint_profile_edits_all_land() {
    let cli = Cli::new();
    let endpoint = "feedfacefeedfacefeedfacefeedface";
    cli.put_endpoint("h1", "w1", endpoint, "192.168.0.9", &[]);
    let count = 12;
    for i in 0..count {
        cli.ok(&format!("profile add P{i}"));
    }
    let mut children = Vec::new();
    for i in 0..count {
        let (profile, tag) = (format!("P{i}"), format!("t{i}"));
        for args in [
            vec!["profile", "P0", "tag", "add", tag.as_str()],
            vec!["endpoint", endpoint, "profile", "append", profile.as_str()],
        ] {
            children.push(
                cli.command(&args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
    }
    wait_all(children);
    let tags = cli.ok("profile P0 tag show");
    assert_eq!(tags.lines().count(), count + 1, "{tags}");
    let profiles = cli.ok(&format!("endpoint {endpoint} profile show"));
    for i in 0..count {
        assert!(
            profiles.contains(&format!(" P{i} ")),
            "P{i} missing in:\n{profiles}"
        );
    }
}
