//! Renders a host's desired state as one nft script that replaces the agent's table
//! atomically (nft applies a script as one transaction).
//!
//! Packet path for traffic on a workload interface (prefix `cali` by default):
//!
//! ```text
//! forward ─ not ours ─▶ (untouched)
//!   │ invalid ─▶ drop;  established/related ─▶ accept
//!   ├─ from a workload ─▶ from-workload ─ vmap by iifname ─▶ fw_<h>: anti-spoofing, then its
//!   │                                     profiles' outbound rules in order; unknown ─▶ drop
//!   ├─ to a workload   ─▶ to-workload   ─ vmap by oifname ─▶ tw_<h>: its profiles' inbound rules
//!   └─ accept
//! input (workload → this host) ─▶ from-workload as above, then DefaultEndpointToHostAction
//! postrouting (nat) ─ from a nat-outgoing pool to outside every pool ─▶ masquerade
//! ```
//!
//! A profile rule's `allow` sets [`ALLOW_MARK`] and returns; the endpoint chain returns once the
//! mark is set, else tries the next profile, and drops at the end. So a packet between two
//! workloads on one host must pass the sender's outbound and the receiver's inbound policy.
//! Every packet the forward chain accepts also gets [`ACCEPTED_MARK`], which an iptables rule
//! accepts in FORWARD: Docker sets that chain's policy to DROP, and a drop in any base chain
//! is final, so our accept alone would not be enough.
//!
//! Per-packet cost does not grow with the number of endpoints or tag members: interfaces are
//! found through verdict maps and tag members through interval sets.
//!
//! Chains and sets made for endpoints, profiles and tags are named by a hash of what they
//! stand for (`pi_<h>` a profile's inbound rules, `po_<h>` its outbound ones, `tag4_<h>` and
//! `tag6_<h>` a tag's members, `fw_<h>`/`tw_<h>` an endpoint), with the readable name in
//! their comment: see [`super::names`].

use std::fmt::Write;

use calico_felix::{DesiredState, EndpointPolicy, HostAction, LocalEndpoint};
use calico_model::ports::PortRange;
use calico_model::rule::{Action, Protocol, Rule};

use super::names::{comment, endpoint_chain, profile_chain, tag_set};
use super::{ACCEPTED_MARK, ALLOW_MARK, TABLE};

/// Our table as a structure: what a script defines, and what a delta compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Verdict maps (`ifname : verdict`): name, then key → verdict.
    pub maps: Vec<(String, Vec<(String, String)>)>,
    /// Interval sets of addresses.
    pub sets: Vec<Set>,
    /// Chains in definition order: name, base-chain header if any, rules.
    pub chains: Vec<Chain>,
}

/// An interval set of IPv4 or IPv6 networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub v4: bool,
    /// What it holds, as an nft comment (quoted), if its name does not say.
    pub comment: Option<String>,
    /// Non-overlapping networks.
    pub elements: Vec<String>,
}

impl Set {
    /// The declaration's body: `type …; flags interval; [comment …;]`.
    pub fn properties(&self) -> String {
        let kind = if self.v4 { "ipv4_addr" } else { "ipv6_addr" };
        match &self.comment {
            Some(c) => format!("type {kind}; flags interval; comment {c};"),
            None => format!("type {kind}; flags interval;"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<&'static str>,
    /// What it is for, as an nft comment (quoted), if its name does not say.
    pub comment: Option<String>,
    pub rules: Vec<String>,
}

impl Chain {
    fn new(name: impl Into<String>, hook: Option<&'static str>) -> Self {
        Chain {
            name: name.into(),
            hook,
            comment: None,
            rules: Vec::new(),
        }
    }

    fn described(mut self, text: &str) -> Self {
        self.comment = Some(comment(text));
        self
    }

    /// The declaration's body: its hook and comment (empty for a plain chain without one).
    pub fn properties(&self) -> String {
        let hook = self.hook.map(str::to_string);
        let comment = self.comment.as_ref().map(|c| format!("comment {c};"));
        [hook, comment]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn rule(&mut self, text: impl Into<String>) {
        self.rules.push(text.into());
    }
}

const FORWARD_HOOK: &str = "type filter hook forward priority filter - 5; policy accept;";
const INPUT_HOOK: &str = "type filter hook input priority filter - 5; policy accept;";
const NAT_HOOK: &str = "type nat hook postrouting priority srcnat; policy accept;";

/// The sets of IP pools (every pool; pools with nat-outgoing), per IP version.
fn pool_set(masquerade: bool, v4: bool) -> String {
    format!(
        "{}pools{}",
        if masquerade { "masq-" } else { "" },
        if v4 { 4 } else { 6 }
    )
}

impl Ruleset {
    pub fn new(state: &DesiredState) -> Ruleset {
        let mut ruleset = Ruleset::default();
        let prefix = format!("{}*", state.config.interface_prefix);
        ruleset.maps = maps(state);
        ruleset.sets = sets(state);
        ruleset.chains = base_chains(state, &prefix);
        ruleset.chains.push(nat_chain());
        for endpoint in state.endpoints.values() {
            if let EndpointPolicy::Profiles(profiles) = &endpoint.policy {
                ruleset
                    .chains
                    .extend(endpoint_chains(state, endpoint, profiles));
            }
        }
        for (name, rules) in &state.profiles {
            for (inbound, rules) in [(true, &rules.inbound_rules), (false, &rules.outbound_rules)] {
                let direction = if inbound { "inbound" } else { "outbound" };
                let chain = profile_chain_of(&profile_chain(name, inbound), rules)
                    .described(&format!("profile {name} {direction}"));
                ruleset.chains.push(chain);
            }
        }
        ruleset
    }

    /// The complete script: creates the table if absent, deletes it, and defines it anew, in
    /// one transaction (conntrack is untouched, so established flows carry on).
    pub fn full_script(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        line(w, 0, &format!("table inet {TABLE}"));
        line(w, 0, &format!("delete table inet {TABLE}"));
        line(w, 0, &format!("table inet {TABLE} {{"));
        for (name, entries) in &self.maps {
            line(w, 1, &format!("map {name} {{"));
            line(w, 2, "type ifname : verdict");
            elements(
                w,
                entries.iter().map(|(k, v)| format!("{k} : {v}")).collect(),
            );
            line(w, 1, "}");
        }
        for set in &self.sets {
            line(w, 1, &format!("set {} {{", set.name));
            line(w, 2, &set.properties());
            elements(w, set.elements.clone());
            line(w, 1, "}");
        }
        for chain in &self.chains {
            line(w, 1, &format!("chain {} {{", chain.name));
            let properties = chain.properties();
            if !properties.is_empty() {
                line(w, 2, &properties);
            }
            for rule in &chain.rules {
                line(w, 2, rule);
            }
            line(w, 1, "}");
        }
        line(w, 0, "}");
        out
    }
}

/// The complete script for a state (see [`Ruleset::full_script`]).
pub fn render(state: &DesiredState) -> String {
    Ruleset::new(state).full_script()
}

fn line(out: &mut String, indent: usize, text: &str) {
    let _ = writeln!(out, "{}{text}", "\t".repeat(indent));
}

fn elements(out: &mut String, items: Vec<String>) {
    if !items.is_empty() {
        line(out, 2, &format!("elements = {{ {} }}", items.join(", ")));
    }
}

fn maps(state: &DesiredState) -> Vec<(String, Vec<(String, String)>)> {
    // Endpoints whose policy cannot be known have no entry: their traffic meets the drop.
    let programmed: Vec<&LocalEndpoint> = state
        .endpoints
        .values()
        .filter(|e| matches!(e.policy, EndpointPolicy::Profiles(_)))
        .collect();
    [("from-endpoint", false), ("to-endpoint", true)]
        .into_iter()
        .map(|(map, inbound)| {
            let entries = programmed
                .iter()
                .map(|e| {
                    (
                        format!("\"{}\"", e.interface),
                        format!("goto {}", endpoint_chain(&e.interface, inbound)),
                    )
                })
                .collect();
            (map.to_string(), entries)
        })
        .collect()
}

fn sets(state: &DesiredState) -> Vec<Set> {
    let mut sets = Vec::new();
    let texts = |nets: &mut dyn Iterator<Item = String>| nets.collect::<Vec<_>>();
    for (masquerade, pools) in [(false, &state.pools), (true, &state.masquerade)] {
        for v4 in [true, false] {
            let elements = match v4 {
                true => texts(&mut pools.ipv4.iter().map(|n| n.to_string())),
                false => texts(&mut pools.ipv6.iter().map(|n| n.to_string())),
            };
            sets.push(Set {
                name: pool_set(masquerade, v4),
                v4,
                comment: None,
                elements,
            });
        }
    }
    for (tag, members) in &state.tags {
        for v4 in [true, false] {
            let elements = match v4 {
                true => texts(&mut members.ipv4.iter().map(|n| n.to_string())),
                false => texts(&mut members.ipv6.iter().map(|n| n.to_string())),
            };
            sets.push(Set {
                name: tag_set(tag, v4),
                v4,
                comment: Some(comment(&format!("tag {tag}"))),
                elements,
            });
        }
    }
    sets
}

fn clear_mark() -> String {
    format!("meta mark set meta mark and {:#010x}", !ALLOW_MARK)
}

fn base_chains(state: &DesiredState, prefix: &str) -> Vec<Chain> {
    let accepted = format!("meta mark set meta mark or {ACCEPTED_MARK:#010x} accept");
    let mut forward = Chain::new("forward", Some(FORWARD_HOOK));
    forward.rule(format!(
        "iifname != \"{prefix}\" oifname != \"{prefix}\" return"
    ));
    forward.rule("ct state invalid drop");
    forward.rule(format!("ct state established,related {accepted}"));
    forward.rule(clear_mark());
    forward.rule(format!("iifname \"{prefix}\" jump from-workload"));
    forward.rule(clear_mark());
    forward.rule(format!("oifname \"{prefix}\" jump to-workload"));
    forward.rule(accepted);

    let mut input = Chain::new("input", Some(INPUT_HOOK));
    input.rule(format!("iifname != \"{prefix}\" return"));
    input.rule("ct state invalid drop");
    input.rule("ct state established,related accept");
    // IPv6 needs neighbour discovery with the host, whatever the policy.
    input.rule("icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept");
    input.rule(clear_mark());
    input.rule("jump from-workload");
    input.rule(match state.config.endpoint_to_host {
        HostAction::Drop => "drop",
        HostAction::Return => "return",
        HostAction::Accept => "accept",
    });

    let mut chains = vec![forward, input];
    for (chain, map, key) in [
        ("from-workload", "from-endpoint", "iifname"),
        ("to-workload", "to-endpoint", "oifname"),
    ] {
        let mut c = Chain::new(chain, None);
        c.rule(format!("{key} vmap @{map}"));
        c.rule("drop");
        chains.push(c);
    }
    chains
}

/// nat-outgoing: traffic from a pool that has it, to anywhere outside every pool, leaves with
/// the host's address. Always present (with empty sets when no pool asks for it), so turning
/// it on or off is a change of set members.
fn nat_chain() -> Chain {
    let mut chain = Chain::new("nat-postrouting", Some(NAT_HOOK));
    for (ip, v4) in [("ip", true), ("ip6", false)] {
        chain.rule(format!(
            "{ip} saddr @{} {ip} daddr != @{} masquerade",
            pool_set(true, v4),
            pool_set(false, v4)
        ));
    }
    chain
}

fn allowed_return() -> String {
    format!("meta mark and {ALLOW_MARK:#010x} == {ALLOW_MARK:#010x} return")
}

fn endpoint_chains(state: &DesiredState, e: &LocalEndpoint, profiles: &[String]) -> Vec<Chain> {
    let existing: Vec<&String> = profiles
        .iter()
        .filter(|p| state.profiles.contains_key(*p))
        .collect();
    let mut chains = Vec::new();
    for inbound in [false, true] {
        let direction = if inbound { "to" } else { "from" };
        let mut chain = Chain::new(endpoint_chain(&e.interface, inbound), None)
            .described(&format!("{direction} endpoint {}", e.interface));
        if !inbound {
            // Anti-spoofing: a workload sends only from its own addresses.
            chain.rule(match anonymous_set(e.ipv4.iter().map(|n| n.to_string())) {
                Some(set) => format!("ip saddr != {set} drop"),
                None => "meta nfproto ipv4 drop".to_string(),
            });
            chain.rule(match anonymous_set(e.ipv6.iter().map(|n| n.to_string())) {
                Some(set) => format!("ip6 saddr != {set} drop"),
                None => "meta nfproto ipv6 drop".to_string(),
            });
        }
        for profile in &existing {
            chain.rule(format!("jump {}", profile_chain(profile, inbound)));
            chain.rule(allowed_return());
        }
        chain.rule("drop");
        chains.push(chain);
    }
    chains
}

fn anonymous_set(items: impl Iterator<Item = String>) -> Option<String> {
    let items: Vec<String> = items.collect();
    (!items.is_empty()).then(|| format!("{{ {} }}", items.join(", ")))
}

fn profile_chain_of(name: &str, rules: &[Rule]) -> Chain {
    let mut chain = Chain::new(name, None);
    for rule in rules {
        rule_lines(rule)
            .into_iter()
            .for_each(|text| chain.rule(text));
    }
    chain
}

/// One nft rule per IP version the rule applies to (a tag has a set per version).
fn rule_lines(rule: &Rule) -> Vec<String> {
    let version = rule.ip_version.or_else(|| rule.implied_ip_version());
    let family_specific = rule.src_tag.is_some() || rule.dst_tag.is_some();
    let versions: Vec<Option<u8>> = match version {
        Some(v) => vec![Some(v)],
        None if family_specific => vec![Some(4), Some(6)],
        None => vec![None],
    };
    versions.into_iter().map(|v| rule_line(rule, v)).collect()
}

fn rule_line(rule: &Rule, version: Option<u8>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let (ip, v4) = match version {
        Some(6) => ("ip6", false),
        _ => ("ip", true),
    };
    if let Some(v) = version {
        parts.push(format!("meta nfproto ipv{v}"));
    }
    if let Some(protocol) = rule.protocol {
        parts.push(format!(
            "meta l4proto {}",
            match protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Icmp => "icmp",
                Protocol::Icmpv6 => "ipv6-icmp",
            }
        ));
    }
    for (dir, net, tag, ports) in [
        ("saddr", &rule.src_net, &rule.src_tag, &rule.src_ports),
        ("daddr", &rule.dst_net, &rule.dst_tag, &rule.dst_ports),
    ] {
        if let Some(net) = net {
            parts.push(format!("{ip} {dir} {net}"));
        }
        if let Some(tag) = tag {
            parts.push(format!("{ip} {dir} @{}", tag_set(tag, v4)));
        }
        if !ports.is_empty() {
            let proto = rule.protocol.map_or("tcp", Protocol::as_str);
            let port_dir = if dir == "saddr" { "sport" } else { "dport" };
            parts.push(format!("{proto} {port_dir} {}", ports_text(ports)));
        }
    }
    if let Some(icmp_type) = rule.icmp_type {
        let keyword = if rule.protocol == Some(Protocol::Icmpv6) {
            "icmpv6"
        } else {
            "icmp"
        };
        parts.push(format!("{keyword} type {icmp_type}"));
        if let Some(code) = rule.icmp_code {
            parts.push(format!("{keyword} code {code}"));
        }
    }
    parts.push(match rule.action {
        Action::Allow => format!("meta mark set meta mark or {ALLOW_MARK:#010x} return"),
        Action::Deny => "drop".to_string(),
    });
    // The rule as users wrote it, for `nft list` readers.
    parts.push(format!("comment {}", comment(&rule.to_string())));
    parts.join(" ")
}

fn ports_text(ports: &[PortRange]) -> String {
    let items: Vec<String> = ports
        .iter()
        .map(|p| {
            if p.is_single() {
                p.low.to_string()
            } else {
                format!("{}-{}", p.low, p.high)
            }
        })
        .collect();
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

#[cfg(test)]
mod tests;
