//! A policy rule as stored in a profile: Calico's v1 rule JSON.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::names::validate_name;
use crate::ports::PortRange;
use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Icmp,
        Protocol::Icmpv6,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
        }
    }

    pub fn from_word(word: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == word)
    }

    /// Only TCP and UDP carry ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }

    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmpv6)
    }

    /// The IP version an ICMP flavour implies.
    pub fn implied_ip_version(self) -> Option<u8> {
        match self {
            Protocol::Icmp => Some(4),
            Protocol::Icmpv6 => Some(6),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The largest ICMP type or code a rule may name (255 means "any" to the kernel).
pub const ICMP_MAX: u8 = 254;

/// One rule. Absent fields match anything. Unknown fields are refused rather than ignored: a
/// field we do not understand may narrow a rule (think of a negation), and ignoring it would
/// widen what an `allow` lets through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_net: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src_ports: Vec<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_net: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst_ports: Vec<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
}

impl Rule {
    /// A rule with only an action: matches all traffic.
    pub fn new(action: Action) -> Self {
        Rule {
            action,
            protocol: None,
            src_tag: None,
            src_net: None,
            src_ports: Vec::new(),
            dst_tag: None,
            dst_net: None,
            dst_ports: Vec::new(),
            icmp_type: None,
            icmp_code: None,
            ip_version: None,
        }
    }

    /// `allow from tag <tag>`: the default inbound rule of a new profile.
    pub fn allow_from_tag(tag: &str) -> Self {
        Rule {
            src_tag: Some(tag.to_string()),
            ..Rule::new(Action::Allow)
        }
    }

    /// The IP version the rule's contents imply (ICMP flavour or CIDR family), if any.
    pub fn implied_ip_version(&self) -> Option<u8> {
        let from_net = |net: &Option<IpNet>| net.map(|n| if n.addr().is_ipv4() { 4 } else { 6 });
        self.protocol
            .and_then(Protocol::implied_ip_version)
            .or_else(|| from_net(&self.src_net))
            .or_else(|| from_net(&self.dst_net))
    }

    /// Brings CIDRs to their network address, so that equal rules have equal JSON however they
    /// were written. `ip_version` is left as given: like the original calicoctl we never write
    /// one that the rule's protocol or CIDRs already imply.
    pub fn normalize(&mut self) {
        self.src_net = self.src_net.map(|n| n.trunc());
        self.dst_net = self.dst_net.map(|n| n.trunc());
    }

    /// Checks that the rule is internally consistent and every value is in range.
    pub fn validate(&self) -> Result<(), ModelError> {
        for tag in [&self.src_tag, &self.dst_tag].into_iter().flatten() {
            validate_name("tag", tag)?;
        }
        self.validate_ports()?;
        self.validate_icmp()?;
        self.validate_ip_version()
    }

    fn validate_ports(&self) -> Result<(), ModelError> {
        let has_ports = !self.src_ports.is_empty() || !self.dst_ports.is_empty();
        if has_ports && !self.protocol.is_some_and(Protocol::has_ports) {
            return Err(ModelError::rule(
                "ports can only be given with protocol tcp or udp",
            ));
        }
        Ok(())
    }

    fn validate_icmp(&self) -> Result<(), ModelError> {
        let is_icmp = self.protocol.is_some_and(Protocol::is_icmp);
        if (self.icmp_type.is_some() || self.icmp_code.is_some()) && !is_icmp {
            return Err(ModelError::rule(
                "an ICMP type or code can only be given with protocol icmp or icmpv6",
            ));
        }
        if self.icmp_code.is_some() && self.icmp_type.is_none() {
            return Err(ModelError::rule("an ICMP code needs an ICMP type"));
        }
        for (what, value) in [("type", self.icmp_type), ("code", self.icmp_code)] {
            if value.is_some_and(|v| v > ICMP_MAX) {
                return Err(ModelError::rule(format!(
                    "ICMP {what} {} is out of range 0-{ICMP_MAX}",
                    value.unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    fn validate_ip_version(&self) -> Result<(), ModelError> {
        if let Some(v) = self.ip_version {
            if v != 4 && v != 6 {
                return Err(ModelError::rule(format!("ip_version {v} is not 4 or 6")));
            }
        }
        let versions = [
            self.ip_version,
            self.protocol.and_then(Protocol::implied_ip_version),
            self.src_net.map(|n| if n.addr().is_ipv4() { 4 } else { 6 }),
            self.dst_net.map(|n| if n.addr().is_ipv4() { 4 } else { 6 }),
        ];
        let mut known = versions.into_iter().flatten();
        if let Some(first) = known.next() {
            if known.any(|v| v != first) {
                return Err(ModelError::rule(
                    "mixes IPv4 and IPv6 (check the protocol, the CIDRs and ip_version)",
                ));
            }
        }
        Ok(())
    }
}

/// Parses a rule from its JSON form and validates it.
pub fn rule_from_json(json: &str) -> Result<Rule, ModelError> {
    let rule: Rule = serde_json::from_str(json).map_err(|e| ModelError::Json {
        what: "rule",
        reason: e.to_string(),
    })?;
    rule.validate()?;
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_the_v1_field_names_and_omits_empty_fields() {
        let json = serde_json::to_string(&Rule::allow_from_tag("web")).unwrap();
        assert_eq!(json, r#"{"action":"allow","src_tag":"web"}"#);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = rule_from_json(r#"{"action":"allow","!src_tag":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn inconsistent_rules_are_refused() {
        for bad in [
            r#"{"action":"allow","protocol":"icmp","dst_ports":[80]}"#,
            r#"{"action":"allow","dst_ports":[80]}"#,
            r#"{"action":"allow","protocol":"tcp","icmp_type":8}"#,
            r#"{"action":"allow","protocol":"icmp","icmp_code":1}"#,
            r#"{"action":"allow","protocol":"icmp","icmp_type":255}"#,
            r#"{"action":"allow","protocol":"icmpv6","src_net":"10.0.0.0/8"}"#,
            r#"{"action":"allow","src_net":"10.0.0.0/8","dst_net":"fd00::/64"}"#,
            r#"{"action":"allow","ip_version":5}"#,
            r#"{"action":"allow","src_tag":"a b"}"#,
            r#"{"action":"maybe"}"#,
        ] {
            assert!(rule_from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalize_truncates_nets_and_keeps_ip_version_implicit() {
        let mut rule = rule_from_json(r#"{"action":"deny","src_net":"10.1.2.3/8"}"#).unwrap();
        rule.normalize();
        assert_eq!(rule.ip_version, None);
        assert_eq!(rule.implied_ip_version(), Some(4));
        assert_eq!(rule.src_net.unwrap().to_string(), "10.0.0.0/8");
    }
}
