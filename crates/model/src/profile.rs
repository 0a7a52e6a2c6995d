//! Profiles: a set of tags and two ordered rule lists.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::validate_name;
use crate::rule::Rule;
use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn from_word(word: &str) -> Option<Direction> {
        match word {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

/// The value of `/calico/v1/policy/profile/<name>/rules`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRules {
    /// Calico before v0.23 also stored the profile's name here; accepted, never written.
    #[serde(default, skip_serializing)]
    pub id: Option<String>,
    #[serde(default)]
    pub inbound_rules: Vec<Rule>,
    #[serde(default)]
    pub outbound_rules: Vec<Rule>,
}

impl ProfileRules {
    /// A new profile's rules: members of its own tag may come in; everything may go out.
    pub fn default_for(name: &str) -> Self {
        ProfileRules {
            id: None,
            inbound_rules: vec![Rule::allow_from_tag(name)],
            outbound_rules: vec![Rule::new(crate::rule::Action::Allow)],
        }
    }

    pub fn get(&self, direction: Direction) -> &Vec<Rule> {
        match direction {
            Direction::Inbound => &self.inbound_rules,
            Direction::Outbound => &self.outbound_rules,
        }
    }

    pub fn get_mut(&mut self, direction: Direction) -> &mut Vec<Rule> {
        match direction {
            Direction::Inbound => &mut self.inbound_rules,
            Direction::Outbound => &mut self.outbound_rules,
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        for direction in [Direction::Inbound, Direction::Outbound] {
            for (i, rule) in self.get(direction).iter().enumerate() {
                rule.validate()
                    .map_err(|e| ModelError::rule(format!("{direction} rule {}: {e}", i + 1)))?;
            }
        }
        Ok(())
    }

    /// Parses and validates the JSON form; rules are normalized so that equal rules compare
    /// equal whichever way they were written.
    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        let mut rules: ProfileRules = serde_json::from_str(json).map_err(|e| ModelError::Json {
            what: "profile rules",
            reason: e.to_string(),
        })?;
        rules.validate()?;
        rules
            .inbound_rules
            .iter_mut()
            .chain(rules.outbound_rules.iter_mut())
            .for_each(Rule::normalize);
        // Parsing grows each list by doubling: five rules take room for eight, which at
        // 10,000 profiles in an agent is about 4 MiB of nothing.
        rules.inbound_rules.shrink_to_fit();
        rules.outbound_rules.shrink_to_fit();
        Ok(rules)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("rules always serialize")
    }
}

/// Parses and validates the JSON list stored at `/calico/v1/policy/profile/<name>/tags`.
pub fn tags_from_json(json: &str) -> Result<Vec<String>, ModelError> {
    let tags: Vec<String> = serde_json::from_str(json).map_err(|e| ModelError::Json {
        what: "profile tags",
        reason: e.to_string(),
    })?;
    for tag in &tags {
        validate_name("tag", tag)?;
    }
    Ok(tags)
}

/// A whole profile as read from the datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub tags: Vec<String>,
    pub rules: ProfileRules,
}

impl Profile {
    /// A new profile: tag `<name>`, inbound `allow from tag <name>`, outbound `allow`.
    pub fn new(name: &str) -> Result<Self, ModelError> {
        validate_name("profile name", name)?;
        Ok(Profile {
            name: name.to_string(),
            tags: vec![name.to_string()],
            rules: ProfileRules::default_for(name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_profile_admits_its_own_tag_and_sends_anywhere() {
        let profile = Profile::new("PROF_B").unwrap();
        assert_eq!(profile.tags, ["PROF_B"]);
        assert_eq!(
            profile.rules.to_json(),
            r#"{"inbound_rules":[{"action":"allow","src_tag":"PROF_B"}],"outbound_rules":[{"action":"allow"}]}"#
        );
    }

    #[test]
    fn rules_json_errors_name_the_rule() {
        let err = ProfileRules::from_json(
            r#"{"inbound_rules":[{"action":"allow"},{"action":"allow","dst_ports":[1]}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("inbound rule 2"), "{err}");
        assert!(ProfileRules::from_json("{").is_err());
        assert!(ProfileRules::from_json(r#"{"inbound":[]}"#).is_err());
    }

    #[test]
    fn tags_are_validated() {
        assert_eq!(tags_from_json(r#"["a","b"]"#).unwrap(), ["a", "b"]);
        assert!(tags_from_json(r#"["a b"]"#).is_err());
        assert!(tags_from_json(r#"{"a":1}"#).is_err());
    }
}
