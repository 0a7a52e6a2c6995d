//! Whatever rule the model can hold, printing it in the legacy grammar and parsing the text
//! back gives the same rule and the same JSON: `rule show` output can be pasted into `rule add`.

use calico_model::arbitrary;
use calico_model::grammar::parse_rule;
use calico_model::rule::{rule_from_json, Rule};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn printed_rules_parse_back_to_the_same_json(rule in arbitrary::rule()) {
        rule.validate().unwrap();
        let text = rule.to_string();
        let words: Vec<&str> = text.split_whitespace().collect();
        let parsed = parse_rule(&words).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&parsed, &rule, "{}", text);
        let json = serde_json::to_string(&rule).unwrap();
        prop_assert_eq!(serde_json::to_string(&parsed).unwrap(), json.clone());
        prop_assert_eq!(rule_from_json(&json).unwrap(), rule);
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_words(words in proptest::collection::vec(
        prop_oneof![
            Just("allow".to_string()), Just("deny".to_string()), Just("tcp".to_string()),
            Just("icmp".to_string()), Just("from".to_string()), Just("to".to_string()),
            Just("ports".to_string()), Just("tag".to_string()), Just("cidr".to_string()),
            Just("type".to_string()), Just("code".to_string()), "[ -~]{0,8}",
        ],
        0..10,
    )) {
        if let Ok(rule) = parse_rule(&words) {
            // Anything accepted is valid and prints to something that parses to itself.
            rule.validate().unwrap();
            prop_assert_eq!(rule.to_string().parse::<Rule>().unwrap(), rule);
        }
    }
}
