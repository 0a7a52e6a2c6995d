//! The legacy `calicoctl` rule grammar:
//!
//! ```text
//! (allow|deny) [ipv4|ipv6]
//!     [(tcp|udp) | (icmp|icmpv6) [type N [code N]]]
//!     [from [ports P] [tag T] [cidr C]] [to [ports P] [tag T] [cidr C]]
//! ```
//!
//! `port` is accepted for `ports`; port lists are `80,443,8000:8080` (or `8000-8080`); the items
//! of a `from`/`to` side may come in any order. [`fmt::Display`] prints the canonical form, which
//! parses back to the same rule: what `rule show` prints can be pasted into `rule add`.
//! `ipv4`/`ipv6` is our addition: it is printed only for a rule whose JSON pins an IP version
//! that neither its protocol nor its CIDRs imply, so that such a rule also survives the trip.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

use crate::names::validate_name;
use crate::ports::{format_port_list, parse_port_list, PortRange};
use crate::rule::{Action, Protocol, Rule};
use crate::ModelError;

/// Parses the words of a rule, starting with its action, into a validated, normalized rule.
pub fn parse_rule<S: AsRef<str>>(words: &[S]) -> Result<Rule, ModelError> {
    let words: Vec<&str> = words.iter().map(AsRef::as_ref).collect();
    let mut parser = Parser {
        words: &words,
        pos: 0,
    };
    let rule = parser.rule()?;
    rule.validate()?;
    Ok(rule)
}

impl FromStr for Rule {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Rule, ModelError> {
        parse_rule(&s.split_whitespace().collect::<Vec<_>>())
    }
}

struct Parser<'a> {
    words: &'a [&'a str],
    pos: usize,
}

#[derive(Default)]
struct Side {
    ports: Vec<PortRange>,
    tag: Option<String>,
    net: Option<IpNet>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<&'a str> {
        let word = self.peek();
        self.pos += usize::from(word.is_some());
        word
    }

    fn eat(&mut self, word: &str) -> bool {
        let found = self.peek() == Some(word);
        self.pos += usize::from(found);
        found
    }

    fn value(&mut self, after: &str) -> Result<&'a str, ModelError> {
        self.next()
            .ok_or_else(|| ModelError::rule(format!("'{after}' needs a value after it")))
    }

    fn rule(&mut self) -> Result<Rule, ModelError> {
        let action = match self.next() {
            Some("allow") => Action::Allow,
            Some("deny") => Action::Deny,
            Some(other) => {
                return Err(ModelError::rule(format!(
                    "a rule starts with 'allow' or 'deny', not '{other}'"
                )))
            }
            None => return Err(ModelError::rule("a rule needs 'allow' or 'deny'")),
        };
        let mut rule = Rule::new(action);
        rule.ip_version = self.ip_version();
        rule.protocol = self.peek().and_then(Protocol::from_word);
        if let Some(protocol) = rule.protocol {
            self.pos += 1;
            if protocol.is_icmp() {
                self.icmp(&mut rule)?;
            }
        }
        let ports_allowed = rule.protocol.is_some_and(Protocol::has_ports);
        if self.eat("from") {
            let side = self.side("from", ports_allowed)?;
            (rule.src_ports, rule.src_tag, rule.src_net) = (side.ports, side.tag, side.net);
        }
        if self.eat("to") {
            let side = self.side("to", ports_allowed)?;
            (rule.dst_ports, rule.dst_tag, rule.dst_net) = (side.ports, side.tag, side.net);
        }
        if let Some(extra) = self.peek() {
            return Err(ModelError::rule(format!(
                "unexpected '{extra}' (word {}); expected {}",
                self.pos + 1,
                self.expected_here(&rule)
            )));
        }
        rule.normalize();
        Ok(rule)
    }

    fn ip_version(&mut self) -> Option<u8> {
        match self.peek() {
            Some("ipv4") => {
                self.pos += 1;
                Some(4)
            }
            Some("ipv6") => {
                self.pos += 1;
                Some(6)
            }
            _ => None,
        }
    }

    /// What could have come where parsing stopped, for the error message.
    fn expected_here(&self, rule: &Rule) -> &'static str {
        let seen = |w: &str| self.words[..self.pos].contains(&w);
        match (rule.protocol.is_some(), seen("from"), seen("to")) {
            (_, _, true) => "the end of the rule",
            (_, true, false) => "'to' or the end of the rule",
            (false, false, false) => "tcp, udp, icmp, icmpv6, 'from' or 'to'",
            (true, false, false) => "'from', 'to' or the end of the rule",
        }
    }

    fn icmp(&mut self, rule: &mut Rule) -> Result<(), ModelError> {
        if self.eat("type") {
            rule.icmp_type = Some(icmp_number("type", self.value("type")?)?);
            if self.eat("code") {
                rule.icmp_code = Some(icmp_number("code", self.value("code")?)?);
            }
        } else if self.peek() == Some("code") {
            return Err(ModelError::rule("'code' must follow 'type N'"));
        }
        Ok(())
    }

    fn side(&mut self, name: &str, ports_allowed: bool) -> Result<Side, ModelError> {
        let mut side = Side::default();
        let mut items = 0;
        while let Some(word) = self.peek() {
            match word {
                "ports" | "port" => {
                    self.pos += 1;
                    if !ports_allowed {
                        return Err(ModelError::rule(
                            "ports can only be given after protocol tcp or udp",
                        ));
                    }
                    once(&side.ports.is_empty(), name, "ports")?;
                    side.ports = parse_port_list(self.value(word)?)?;
                }
                "tag" => {
                    self.pos += 1;
                    once(&side.tag.is_none(), name, "tag")?;
                    let tag = self.value("tag")?;
                    validate_name("tag", tag)?;
                    side.tag = Some(tag.to_string());
                }
                "cidr" => {
                    self.pos += 1;
                    once(&side.net.is_none(), name, "cidr")?;
                    side.net = Some(parse_cidr(self.value("cidr")?)?);
                }
                _ => break,
            }
            items += 1;
        }
        if items == 0 {
            let hint = if ports_allowed {
                "ports, tag or cidr"
            } else {
                "tag or cidr"
            };
            return Err(ModelError::rule(format!(
                "'{name}' must be followed by {hint}"
            )));
        }
        Ok(side)
    }
}

fn once(first: &bool, side: &str, item: &str) -> Result<(), ModelError> {
    if *first {
        Ok(())
    } else {
        Err(ModelError::rule(format!(
            "'{item}' appears twice after '{side}'"
        )))
    }
}

fn icmp_number(what: &str, text: &str) -> Result<u8, ModelError> {
    text.parse::<u8>()
        .ok()
        .filter(|n| *n <= crate::rule::ICMP_MAX)
        .ok_or_else(|| {
            ModelError::rule(format!(
                "ICMP {what} '{text}' is not a number from 0 to {}",
                crate::rule::ICMP_MAX
            ))
        })
}

/// A CIDR, or a bare address meaning a single host (/32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, ModelError> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| {
            ModelError::invalid(
                "CIDR",
                text,
                "expected an address with a prefix length, such as 10.0.0.0/8 or fd00::/64",
            )
        })
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.action.as_str())?;
        if let Some(version) = self
            .ip_version
            .filter(|_| self.implied_ip_version().is_none())
        {
            write!(f, " ipv{version}")?;
        }
        if let Some(protocol) = self.protocol {
            write!(f, " {protocol}")?;
        }
        if let Some(icmp_type) = self.icmp_type {
            write!(f, " type {icmp_type}")?;
            if let Some(code) = self.icmp_code {
                write!(f, " code {code}")?;
            }
        }
        write_side(f, "from", &self.src_ports, &self.src_tag, &self.src_net)?;
        write_side(f, "to", &self.dst_ports, &self.dst_tag, &self.dst_net)
    }
}

fn write_side(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    ports: &[PortRange],
    tag: &Option<String>,
    net: &Option<IpNet>,
) -> fmt::Result {
    if ports.is_empty() && tag.is_none() && net.is_none() {
        return Ok(());
    }
    write!(f, " {name}")?;
    if !ports.is_empty() {
        write!(f, " ports {}", format_port_list(ports))?;
    }
    if let Some(tag) = tag {
        write!(f, " tag {tag}")?;
    }
    if let Some(net) = net {
        write!(f, " cidr {net}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> String {
        serde_json::to_string(&text.parse::<Rule>().unwrap()).unwrap()
    }

    #[test]
    fn seed_004_rules_parse_to_v1_json() {
        assert_eq!(
            json("allow from tag management-ui"),
            r#"{"action":"allow","src_tag":"management-ui"}"#
        );
        assert_eq!(
            json("allow tcp to ports 9001"),
            r#"{"action":"allow","protocol":"tcp","dst_ports":[9001]}"#
        );
        assert_eq!(
            json("allow tcp from tag client to port 9001"),
            r#"{"action":"allow","protocol":"tcp","src_tag":"client","dst_ports":[9001]}"#
        );
    }

    #[test]
    fn icmp_rules_and_cidrs_are_stored_as_the_original_did() {
        assert_eq!(
            json("deny icmp type 8 code 0 from cidr 10.0.0.1/8"),
            r#"{"action":"deny","protocol":"icmp","src_net":"10.0.0.0/8","icmp_type":8,"icmp_code":0}"#
        );
        assert_eq!(
            json("allow icmpv6"),
            r#"{"action":"allow","protocol":"icmpv6"}"#
        );
    }

    #[test]
    fn printing_is_canonical() {
        let rule: Rule = "allow udp from tag a ports 1 to cidr 10.0.0.0/8 port 53-54"
            .parse()
            .unwrap();
        assert_eq!(
            rule.to_string(),
            "allow udp from ports 1 tag a to ports 53:54 cidr 10.0.0.0/8"
        );
        let pinned = Rule {
            ip_version: Some(6),
            ..Rule::allow_from_tag("x")
        };
        assert_eq!(pinned.to_string(), "allow ipv6 from tag x");
        assert_eq!("allow ipv6 from tag x".parse::<Rule>().unwrap(), pinned);
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (text, needle) in [
            ("", "needs 'allow' or 'deny'"),
            ("permit", "starts with 'allow' or 'deny'"),
            ("allow icmp to ports 80", "ports can only be given"),
            ("allow to ports 80", "ports can only be given"),
            ("allow tcp to ports 70000", "invalid port"),
            ("allow tcp to ports", "needs a value"),
            ("allow icmp type 255", "not a number from 0 to 254"),
            ("allow icmp code 1", "'code' must follow"),
            ("allow from", "'from' must be followed by tag or cidr"),
            ("allow from tag a tag b", "appears twice"),
            ("allow from tag a/b", "invalid tag"),
            ("allow from cidr 10.0.0.300/8", "invalid CIDR"),
            ("allow to tag a from tag b", "unexpected 'from'"),
            ("allow tcp extra", "unexpected 'extra'"),
            ("allow icmp from cidr fd00::/8", "mixes IPv4 and IPv6"),
        ] {
            let err = text.parse::<Rule>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
