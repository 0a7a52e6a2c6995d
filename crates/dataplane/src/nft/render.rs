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

/// The complete script: creates the table if absent, deletes it, and defines it anew, in one
/// transaction (conntrack is untouched, so established flows carry on).
pub fn render(state: &DesiredState) -> String {
    let mut out = String::new();
    let w = &mut out;
    let prefix = format!("{}*", state.config.interface_prefix);
    line(w, 0, &format!("table inet {TABLE}"));
    line(w, 0, &format!("delete table inet {TABLE}"));
    line(w, 0, &format!("table inet {TABLE} {{"));
    render_maps(w, state);
    render_sets(w, state);
    render_base_chains(w, state, &prefix);
    for endpoint in state.endpoints.values() {
        if let EndpointPolicy::Profiles(profiles) = &endpoint.policy {
            render_endpoint_chains(w, state, endpoint, profiles);
        }
    }
    for (name, rules) in &state.profiles {
        render_profile_chain(w, &profile_chain(name, true), &rules.inbound_rules);
        render_profile_chain(w, &profile_chain(name, false), &rules.outbound_rules);
    }
    line(w, 0, "}");
    out
}

fn line(out: &mut String, indent: usize, text: &str) {
    let _ = writeln!(out, "{}{text}", "\t".repeat(indent));
}

fn elements(out: &mut String, items: Vec<String>) {
    if !items.is_empty() {
        line(out, 2, &format!("elements = {{ {} }}", items.join(", ")));
    }
}

fn render_maps(w: &mut String, state: &DesiredState) {
    // Endpoints whose policy cannot be known have no entry: their traffic meets the drop.
    let programmed: Vec<&LocalEndpoint> = state
        .endpoints
        .values()
        .filter(|e| matches!(e.policy, EndpointPolicy::Profiles(_)))
        .collect();
    for (map, inbound) in [("from-endpoint", false), ("to-endpoint", true)] {
        line(w, 1, &format!("map {map} {{"));
        line(w, 2, "type ifname : verdict");
        let entries = programmed
            .iter()
            .map(|e| {
                format!(
                    "\"{}\" : goto {}",
                    e.interface,
                    endpoint_chain(&e.interface, inbound)
                )
            })
            .collect();
        elements(w, entries);
        line(w, 1, "}");
    }
}

fn render_sets(w: &mut String, state: &DesiredState) {
    for (tag, members) in &state.tags {
        let families: [(bool, Vec<String>); 2] = [
            (true, members.ipv4.iter().map(|n| n.to_string()).collect()),
            (false, members.ipv6.iter().map(|n| n.to_string()).collect()),
        ];
        for (v4, items) in families {
            line(w, 1, &format!("set {} {{", tag_set(tag, v4)));
            line(
                w,
                2,
                if v4 {
                    "type ipv4_addr"
                } else {
                    "type ipv6_addr"
                },
            );
            line(w, 2, "flags interval");
            line(w, 2, "auto-merge");
            elements(w, items);
            line(w, 1, "}");
        }
    }
}

fn clear_mark() -> String {
    format!("meta mark set meta mark and {:#010x}", !ALLOW_MARK)
}

fn render_base_chains(w: &mut String, state: &DesiredState, prefix: &str) {
    let accepted = format!("meta mark set meta mark or {ACCEPTED_MARK:#010x} accept");
    line(w, 1, "chain forward {");
    line(
        w,
        2,
        "type filter hook forward priority filter - 5; policy accept;",
    );
    line(
        w,
        2,
        &format!("iifname != \"{prefix}\" oifname != \"{prefix}\" return"),
    );
    line(w, 2, "ct state invalid drop");
    line(w, 2, &format!("ct state established,related {accepted}"));
    line(w, 2, &clear_mark());
    line(w, 2, &format!("iifname \"{prefix}\" jump from-workload"));
    line(w, 2, &clear_mark());
    line(w, 2, &format!("oifname \"{prefix}\" jump to-workload"));
    line(w, 2, &accepted);
    line(w, 1, "}");

    line(w, 1, "chain input {");
    line(
        w,
        2,
        "type filter hook input priority filter - 5; policy accept;",
    );
    line(w, 2, &format!("iifname != \"{prefix}\" return"));
    line(w, 2, "ct state invalid drop");
    line(w, 2, "ct state established,related accept");
    // IPv6 needs neighbour discovery with the host, whatever the policy.
    line(
        w,
        2,
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept",
    );
    line(w, 2, &clear_mark());
    line(w, 2, "jump from-workload");
    line(
        w,
        2,
        match state.config.endpoint_to_host {
            HostAction::Drop => "drop",
            HostAction::Return => "return",
            HostAction::Accept => "accept",
        },
    );
    line(w, 1, "}");

    for (chain, map, key) in [
        ("from-workload", "from-endpoint", "iifname"),
        ("to-workload", "to-endpoint", "oifname"),
    ] {
        line(w, 1, &format!("chain {chain} {{"));
        line(w, 2, &format!("{key} vmap @{map}"));
        line(w, 2, "drop");
        line(w, 1, "}");
    }
}

fn allowed_return() -> String {
    format!("meta mark and {ALLOW_MARK:#010x} == {ALLOW_MARK:#010x} return")
}

fn render_endpoint_chains(
    w: &mut String,
    state: &DesiredState,
    e: &LocalEndpoint,
    profiles: &[String],
) {
    let existing: Vec<&String> = profiles
        .iter()
        .filter(|p| state.profiles.contains_key(*p))
        .collect();
    for inbound in [false, true] {
        line(
            w,
            1,
            &format!("chain {} {{", endpoint_chain(&e.interface, inbound)),
        );
        if !inbound {
            // Anti-spoofing: a workload sends only from its own addresses.
            match anonymous_set(e.ipv4.iter().map(|n| n.to_string())) {
                Some(set) => line(w, 2, &format!("ip saddr != {set} drop")),
                None => line(w, 2, "meta nfproto ipv4 drop"),
            }
            match anonymous_set(e.ipv6.iter().map(|n| n.to_string())) {
                Some(set) => line(w, 2, &format!("ip6 saddr != {set} drop")),
                None => line(w, 2, "meta nfproto ipv6 drop"),
            }
        }
        for profile in &existing {
            line(w, 2, &format!("jump {}", profile_chain(profile, inbound)));
            line(w, 2, &allowed_return());
        }
        line(w, 2, "drop");
        line(w, 1, "}");
    }
}

fn anonymous_set(items: impl Iterator<Item = String>) -> Option<String> {
    let items: Vec<String> = items.collect();
    (!items.is_empty()).then(|| format!("{{ {} }}", items.join(", ")))
}

fn render_profile_chain(w: &mut String, chain: &str, rules: &[Rule]) {
    line(w, 1, &format!("chain {chain} {{"));
    for rule in rules {
        for text in rule_lines(rule) {
            line(w, 2, &text);
        }
    }
    line(w, 1, "}");
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
