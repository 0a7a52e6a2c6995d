//! Every rule `rule show` prints, fed back to `rule add` on a new profile, gives the same JSON.
//! The rules are generated, stored as JSON (as an orchestrator would write them), then shown.

mod common;
use std::sync::atomic::{AtomicUsize, Ordering};

use calico_model::arbitrary;
use calico_model::profile::ProfileRules;
use common::Cli;
use proptest::prelude::*;

static CASE: AtomicUsize = AtomicUsize::new(0);

fn shown_rules(text: &str) -> Vec<(String, String)> {
    let mut direction = "";
    let mut rules = Vec::new();
    for line in text.lines() {
        match line {
            "Inbound rules:" => direction = "inbound",
            "Outbound rules:" => direction = "outbound",
            numbered => {
                let (_, rule) = numbered.trim_start().split_once(' ').expect("'N rule'");
                rules.push((direction.to_string(), rule.to_string()));
            }
        }
    }
    rules
}

#[test]
fn rule_show_output_pasted_into_rule_add_gives_the_same_json() {
    let cli = Cli::new();
    let strategy = (
        proptest::collection::vec(arbitrary::rule(), 0..4),
        proptest::collection::vec(arbitrary::rule(), 0..4),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&strategy, |(inbound, outbound)| {
            let case = CASE.fetch_add(1, Ordering::SeqCst);
            let (src, dst) = (format!("src{case}"), format!("dst{case}"));
            cli.ok(&format!("profile add {src}"));
            cli.ok(&format!("profile add {dst}"));
            let rules = ProfileRules {
                id: None,
                inbound_rules: inbound,
                outbound_rules: outbound,
            };
            let update = cli.run_with_input(&["profile", &src, "rule", "update"], &rules.to_json());
            prop_assert_eq!(update.code, 0, "{}", update.stderr);
            cli.run_with_input(&["profile", &dst, "rule", "update"], "{}");

            for (direction, rule) in shown_rules(&cli.ok(&format!("profile {src} rule show"))) {
                let mut args = vec!["profile", &dst, "rule", "add", &direction];
                args.extend(rule.split_whitespace());
                let run = cli.run(&args);
                prop_assert_eq!(run.code, 0, "rule add {}: {}", rule, run.stderr);
            }
            let (a, b) = (
                cli.ok(&format!("profile {src} rule json")),
                cli.ok(&format!("profile {dst} rule json")),
            );
            prop_assert_eq!(a, b);
            Ok(())
        })
        .unwrap();
}
