//! Seed 002's group keyspace, read into profiles.
//!
//! ```text
//! /calico/network/group/<group-id>/name              a human-readable name
//!                                  /member/<endpoint-id>  (empty value)
//!                                  /rule/inbound/<n>     {"group", "cidr", "protocol", "port"}
//!                                  /rule/outbound/<n>
//!                                  /rule/inbound_default  "deny" (the only value v0.0.3 had)
//!                                  /rule/outbound_default
//! ```
//!
//! A group becomes a profile named by its id, with the tag of its id: its members carry the
//! tag, so another group's rule `"group": <id>` is `from tag <id>` (inbound) or `to tag <id>`
//! (outbound). Each rule allows; what no rule allows is denied, as the defaults say. Rules keep
//! their order by `<n>` (as numbers: 10 after 2). A group with any value that cannot be read is
//! closed: its profile denies everything, so its members lose what it would allow and nothing
//! else is touched.

use std::collections::{BTreeMap, BTreeSet};

use calico_model::names::validate_name;
use calico_model::ports::PortRange;
use calico_model::profile::ProfileRules;
use calico_model::rule::{Action, Protocol, Rule};
use ipnet::IpNet;
use serde::Deserialize;

pub const GROUPS_PREFIX: &str = "/calico/network/group/";

/// One group as the keyspace has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: Option<String>,
    pub members: BTreeSet<String>,
    /// Rules by their `<n>`.
    pub inbound: BTreeMap<u64, Rule>,
    pub outbound: BTreeMap<u64, Rule>,
    /// Values that could not be read: (key, why). Any of them closes the group.
    pub problems: Vec<(String, String)>,
}

impl Group {
    pub fn is_closed(&self) -> bool {
        !self.problems.is_empty()
    }

    /// The profile's tags: the group's id.
    pub fn tags(&self) -> Vec<String> {
        vec![self.id.clone()]
    }

    /// The profile's rules: the group's, in order; deny everything when it is closed.
    pub fn rules(&self) -> ProfileRules {
        if self.is_closed() {
            return ProfileRules {
                id: None,
                inbound_rules: vec![Rule::new(Action::Deny)],
                outbound_rules: vec![Rule::new(Action::Deny)],
            };
        }
        ProfileRules {
            id: None,
            inbound_rules: self.inbound.values().cloned().collect(),
            outbound_rules: self.outbound.values().cloned().collect(),
        }
    }
}

/// A rule as an orchestrator writes it. Unknown keys are ignored: the seed's own first example
/// has a stray `"port:"`.
#[derive(Debug, Deserialize)]
struct GroupRule {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    cidr: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<PortValue>,
}

/// `80` or `"80"`: the seed writes both.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortValue {
    Number(u64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Inbound,
    Outbound,
}

/// One rule's JSON as an allow rule of our model.
fn rule(json: &str, direction: Direction) -> Result<Rule, String> {
    let written: GroupRule =
        serde_json::from_str(json).map_err(|e| format!("not a rule's JSON: {e}"))?;
    if written.group.is_some() && written.cidr.is_some() {
        return Err("a rule has a group or a cidr, not both".into());
    }
    let protocol = match written.protocol.as_deref() {
        None => None,
        Some(word) => Some(
            Protocol::from_word(&word.to_ascii_lowercase()).ok_or_else(|| {
                format!("protocol '{word}' is not one of tcp, udp, icmp, icmpv6 (or null for all)")
            })?,
        ),
    };
    let port = match written.port {
        None => None,
        Some(PortValue::Number(n)) => Some(n),
        Some(PortValue::Text(text)) => Some(
            text.trim()
                .parse::<u64>()
                .map_err(|_| format!("port '{text}' is not a number"))?,
        ),
    };
    let mut rule = Rule::new(Action::Allow);
    rule.protocol = protocol;
    if let Some(port) = port {
        let port = u16::try_from(port).map_err(|_| format!("port {port} is above 65535"))?;
        if !protocol.is_some_and(Protocol::has_ports) {
            return Err(format!("port {port} needs protocol tcp or udp"));
        }
        rule.dst_ports = vec![PortRange::single(port)];
    }
    let net = written
        .cidr
        .as_deref()
        .map(|cidr| {
            cidr.parse::<IpNet>()
                .map_err(|_| format!("cidr '{cidr}' is not a CIDR"))
        })
        .transpose()?;
    if let Some(group) = &written.group {
        validate_name("group id", group).map_err(|e| e.to_string())?;
    }
    match direction {
        Direction::Inbound => {
            rule.src_tag = written.group;
            rule.src_net = net;
        }
        Direction::Outbound => {
            rule.dst_tag = written.group;
            rule.dst_net = net;
        }
    }
    rule.validate().map_err(|e| e.to_string())?;
    Ok(rule)
}

/// Every group under [`GROUPS_PREFIX`], from its keys and values.
pub fn parse<'a>(kvs: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, Group> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for (key, value) in kvs {
        let Some(rest) = key.strip_prefix(GROUPS_PREFIX) else {
            continue;
        };
        let (id, field) = rest.split_once('/').unwrap_or((rest, ""));
        if id.is_empty() {
            continue;
        }
        let group = groups.entry(id.to_string()).or_insert_with(|| Group {
            id: id.to_string(),
            ..Default::default()
        });
        if let Err(e) = read_field(group, field, value) {
            group.problems.push((key.to_string(), e));
        }
    }
    for group in groups.values_mut() {
        if let Err(e) = validate_name("group id", &group.id) {
            group
                .problems
                .push((format!("{GROUPS_PREFIX}{}", group.id), e.to_string()));
        }
    }
    groups
}

fn read_field(group: &mut Group, field: &str, value: &str) -> Result<(), String> {
    let parts: Vec<&str> = field.split('/').collect();
    match parts.as_slice() {
        ["name"] => group.name = Some(value.to_string()),
        ["member", endpoint] if !endpoint.is_empty() => {
            group.members.insert(endpoint.to_string());
        }
        ["rule", default @ ("inbound_default" | "outbound_default")] => {
            let value = value.trim().trim_matches('"');
            if !value.eq_ignore_ascii_case("deny") {
                return Err(format!(
                    "{default} is '{value}'; only \"deny\" is supported"
                ));
            }
        }
        ["rule", direction @ ("inbound" | "outbound"), n] => {
            let n: u64 = n
                .parse()
                .map_err(|_| format!("rule number '{n}' is not a number"))?;
            let (direction, rules) = match *direction {
                "inbound" => (Direction::Inbound, &mut group.inbound),
                _ => (Direction::Outbound, &mut group.outbound),
            };
            rules.insert(n, rule(value, direction)?);
        }
        // Directories some etcd tools write, and keys of later versions: not ours to refuse.
        _ => tracing::debug!(group = %group.id, field, "ignoring a group key"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "a935e8e1-008a-4e05-af4b-4b5701df417e";
    const H: &str = "0b0c7a6c-2b2f-4d53-9a3e-6f0c6d8f1a11";

    fn key(group: &str, field: &str) -> String {
        format!("{GROUPS_PREFIX}{group}/{field}")
    }

    fn groups(entries: &[(String, &str)]) -> BTreeMap<String, Group> {
        parse(entries.iter().map(|(k, v)| (k.as_str(), *v)))
    }

    #[test]
    fn the_seeds_examples_read_as_written() {
        let parsed = groups(&[
            (key(H, "name"), "web"),
            (key(H, "member/ep1"), ""),
            (key(H, "member/ep2"), ""),
            (key(H, "rule/inbound_default"), "deny"),
            (key(H, "rule/outbound_default"), "deny"),
            (
                key(H, "rule/inbound/1"),
                r#"{"group": null, "cidr": "10.65.0.0/24", "protocol": null, "port:": null}"#,
            ),
            (
                key(H, "rule/inbound/2"),
                &format!(r#"{{"group": "{G}", "cidr": null, "protocol": null, "port": null}}"#),
            ),
            (
                key(H, "rule/inbound/10"),
                r#"{"group": null, "cidr": "0.0.0.0/0", "protocol": "tcp", "port": "80"}"#,
            ),
            (
                key(H, "rule/outbound/1"),
                r#"{"group": null, "cidr": null, "protocol": "udp", "port": 53}"#,
            ),
        ]);
        let group = &parsed[H];
        assert!(!group.is_closed(), "{:?}", group.problems);
        assert_eq!(group.name.as_deref(), Some("web"));
        assert_eq!(group.members, BTreeSet::from(["ep1".into(), "ep2".into()]));
        let rules = group.rules();
        let inbound: Vec<String> = rules.inbound_rules.iter().map(|r| r.to_string()).collect();
        // In the order of their numbers: 10 after 2.
        assert_eq!(
            inbound,
            [
                "allow from cidr 10.65.0.0/24".to_string(),
                format!("allow from tag {G}"),
                "allow tcp from cidr 0.0.0.0/0 to ports 80".to_string(),
            ]
        );
        assert_eq!(rules.outbound_rules[0].to_string(), "allow udp to ports 53");
        assert_eq!(group.tags(), [H]);
    }

    #[test]
    fn a_value_that_cannot_be_read_closes_its_group_only() {
        let parsed = groups(&[
            (
                key(G, "rule/inbound/1"),
                r#"{"group": null, "cidr": "10.0.0/8"}"#,
            ),
            (key(G, "member/ep1"), ""),
            (key(H, "rule/inbound/1"), r#"{"cidr": "10.0.0.0/8"}"#),
        ]);
        assert!(parsed[G].is_closed());
        assert!(parsed[G].problems[0].0.ends_with("rule/inbound/1"));
        assert!(parsed[G].problems[0].1.contains("10.0.0/8"));
        let closed = parsed[G].rules();
        assert_eq!(closed.inbound_rules, [Rule::new(Action::Deny)]);
        assert_eq!(closed.outbound_rules, [Rule::new(Action::Deny)]);
        assert!(!parsed[H].is_closed());
        for (value, why) in [
            ("not json", "not a rule's JSON"),
            (r#"{"group": "x", "cidr": "10.0.0.0/8"}"#, "not both"),
            (r#"{"protocol": "sctp"}"#, "sctp"),
            (
                r#"{"protocol": null, "port": 80}"#,
                "needs protocol tcp or udp",
            ),
            (
                r#"{"protocol": "icmp", "port": 80}"#,
                "needs protocol tcp or udp",
            ),
            (r#"{"protocol": "tcp", "port": "http"}"#, "not a number"),
            (r#"{"protocol": "tcp", "port": 70000}"#, "above 65535"),
        ] {
            let parsed = groups(&[(key(G, "rule/outbound/1"), value)]);
            let problem = &parsed[G].problems[0].1;
            assert!(problem.contains(why), "{value}: {problem}");
        }
        let parsed = groups(&[(key(G, "rule/inbound_default"), "allow")]);
        assert!(parsed[G].problems[0].1.contains("only \"deny\""));
        let parsed = groups(&[(key(G, "rule/inbound/first"), "{}")]);
        assert!(parsed[G].problems[0].1.contains("not a number"));
        let parsed = groups(&[(key("bad id", "name"), "x")]);
        assert!(parsed["bad id"].is_closed());
    }

    #[test]
    fn outbound_rules_name_their_destination() {
        let parsed = groups(&[(
            key(G, "rule/outbound/1"),
            &format!(r#"{{"group": "{H}", "protocol": "TCP", "port": 443}}"#),
        )]);
        assert_eq!(
            parsed[G].rules().outbound_rules[0].to_string(),
            format!("allow tcp to ports 443 tag {H}")
        );
    }
}
