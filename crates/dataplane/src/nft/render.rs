//! Renders a host's desired state as one nft script that replaces the agent's table
//! atomically (nft applies a script as one transaction).
//!
//! Packet path for traffic on a workload interface (prefix `cali` by default):
//!
//! ```text
//! forward ─ not ours ─▶ (untouched)
//!   │ invalid ─▶ drop;  established/related ─▶ accept
//!   ├─ from a workload ─▶ from-workload ─ vmap by iifname ─▶ fw_<if>: anti-spoofing, then its
//!   │                                     profiles' outbound rules in order; unknown ─▶ drop
//!   ├─ to a workload   ─▶ to-workload   ─ vmap by oifname ─▶ tw_<if>: its profiles' inbound rules
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

use std::fmt::Write;

use calico_felix::{DesiredState, EndpointPolicy, HostAction, LocalEndpoint};
use calico_model::ports::PortRange;
use calico_model::rule::{Action, Protocol, Rule};

use super::names::{endpoint_chain, profile_chain, tag_set};
use super::{ACCEPTED_MARK, ALLOW_MARK, TABLE};

/// Our table as a structure: what a script defines, and what a delta compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Verdict maps (`ifname : verdict`): name, then key → verdict.
    pub maps: Vec<(String, Vec<(String, String)>)>,
    /// Interval sets: name, IPv4 or not, elements (non-overlapping).
    pub sets: Vec<(String, bool, Vec<String>)>,
    /// Chains in definition order: name, base-chain header if any, rules.
    pub chains: Vec<Chain>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<&'static str>,
    pub rules: Vec<String>,
}

impl Chain {
    fn new(name: impl Into<String>, hook: Option<&'static str>) -> Self {
        Chain {
            name: name.into(),
            hook,
            rules: Vec::new(),
        }
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
            ruleset.chains.push(profile_chain_of(
                &profile_chain(name, true),
                &rules.inbound_rules,
            ));
            ruleset.chains.push(profile_chain_of(
                &profile_chain(name, false),
                &rules.outbound_rules,
            ));
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
        for (name, v4, items) in &self.sets {
            line(w, 1, &format!("set {name} {{"));
            line(w, 2, set_type(*v4));
            line(w, 2, "flags interval");
            elements(w, items.clone());
            line(w, 1, "}");
        }
        for chain in &self.chains {
            line(w, 1, &format!("chain {} {{", chain.name));
            if let Some(hook) = chain.hook {
                line(w, 2, hook);
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

fn set_type(v4: bool) -> &'static str {
    if v4 {
        "type ipv4_addr"
    } else {
        "type ipv6_addr"
    }
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

fn sets(state: &DesiredState) -> Vec<(String, bool, Vec<String>)> {
    let mut sets = Vec::new();
    for (masquerade, pools) in [(false, &state.pools), (true, &state.masquerade)] {
        sets.push((
            pool_set(masquerade, true),
            true,
            pools.ipv4.iter().map(|n| n.to_string()).collect(),
        ));
        sets.push((
            pool_set(masquerade, false),
            false,
            pools.ipv6.iter().map(|n| n.to_string()).collect(),
        ));
    }
    for (tag, members) in &state.tags {
        sets.push((
            tag_set(tag, true),
            true,
            members.ipv4.iter().map(|n| n.to_string()).collect(),
        ));
        sets.push((
            tag_set(tag, false),
            false,
            members.ipv6.iter().map(|n| n.to_string()).collect(),
        ));
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
        let mut chain = Chain::new(endpoint_chain(&e.interface, inbound), None);
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
    let comment: String = rule.to_string().chars().take(120).collect();
    parts.push(format!("comment \"{comment}\""));
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
