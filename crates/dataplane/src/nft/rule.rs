//! The rules of the agent's chains as structures: what a rule tests and does, in the order nft
//! runs it. One structure, two renderings: nft's syntax (for whole-table scripts and readers
//! of `nft list`) and nf_tables expressions sent over netlink ([`super::netlink`]), so the
//! incremental path and the full replacement cannot disagree about what a rule means.

use std::fmt;

use calico_model::ports::PortRange;
use calico_model::rule::Protocol;
use ipnet::IpNet;

/// One rule: its parts in order, and what it stands for as a comment (plain text).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub parts: Vec<Part>,
    pub comment: Option<String>,
}

/// Which end of a packet a test looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    Source,
    Destination,
}

/// IP version of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    /// `meta nfproto ipv4|ipv6`
    Family(Family),
    /// `meta l4proto <protocol>`
    L4Proto(Protocol),
    /// `<tcp|udp> sport|dport <ports>`: one port, one range, or a set of them.
    Ports {
        protocol: Protocol,
        end: End,
        ports: Vec<PortRange>,
    },
    /// `<tcp|udp> dport vmap { <range> : jump <chain>, … }`: one lookup sends the packet to
    /// the chain of the range holding its destination port. The ranges are in order and cover
    /// every port.
    PortMap {
        protocol: Protocol,
        targets: Vec<(PortRange, String)>,
    },
    /// `icmp|icmpv6 type <n>` (or `code <n>`).
    Icmp {
        v6: bool,
        code: bool,
        value: u8,
    },
    /// `ip|ip6 saddr|daddr <network>`
    Net {
        end: End,
        net: IpNet,
    },
    /// `ip|ip6 saddr|daddr @<set>`: a named set of the table.
    InSet {
        family: Family,
        end: End,
        set: String,
    },
    /// `ip|ip6 saddr != { … }`: outside every network of a list (anti-spoofing).
    OutsideAll {
        family: Family,
        nets: Vec<IpNet>,
    },
    /// `meta mark and <bit> == <bit>`
    MarkHas(u32),
    /// `meta mark set meta mark or <bit>`
    SetMark(u32),
    Verdict(Verdict),
    /// A rule of a base chain in nft's syntax. Base chains change only with the agent's
    /// settings and are always programmed through nft, so they are not encoded here.
    Nft(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
}

impl Rule {
    pub fn new(parts: Vec<Part>) -> Rule {
        Rule {
            parts,
            comment: None,
        }
    }

    /// A rule written in nft's syntax (base chains only: see [`Part::Nft`]).
    pub fn nft(text: impl Into<String>) -> Rule {
        Rule::new(vec![Part::Nft(text.into())])
    }

    /// Whether every part has a netlink encoding.
    pub fn is_structured(&self) -> bool {
        !self.parts.iter().any(|p| matches!(p, Part::Nft(_)))
    }
}

impl From<Verdict> for Rule {
    fn from(verdict: Verdict) -> Rule {
        Rule::new(vec![Part::Verdict(verdict)])
    }
}

impl Family {
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

impl End {
    fn address(self) -> &'static str {
        match self {
            End::Source => "saddr",
            End::Destination => "daddr",
        }
    }

    fn port(self) -> &'static str {
        match self {
            End::Source => "sport",
            End::Destination => "dport",
        }
    }
}

/// nft's name for a protocol after `meta l4proto`.
fn l4proto_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::Icmpv6 => "ipv6-icmp",
    }
}

fn port_text(p: &PortRange) -> String {
    match p.is_single() {
        true => p.low.to_string(),
        false => format!("{}-{}", p.low, p.high),
    }
}

fn braced(items: Vec<String>) -> String {
    match items.len() {
        1 => items.into_iter().next().unwrap_or_default(),
        _ => format!("{{ {} }}", items.join(", ")),
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Family(Family::V4) => f.write_str("meta nfproto ipv4"),
            Part::Family(Family::V6) => f.write_str("meta nfproto ipv6"),
            Part::L4Proto(p) => write!(f, "meta l4proto {}", l4proto_name(*p)),
            Part::Ports {
                protocol,
                end,
                ports,
            } => {
                let items = ports.iter().map(port_text).collect();
                write!(f, "{} {} {}", protocol.as_str(), end.port(), braced(items))
            }
            Part::PortMap { protocol, targets } => {
                let items: Vec<String> = targets
                    .iter()
                    .map(|(range, chain)| format!("{} : jump {chain}", port_text(range)))
                    .collect();
                write!(
                    f,
                    "{} dport vmap {{ {} }}",
                    protocol.as_str(),
                    items.join(", ")
                )
            }
            Part::Icmp { v6, code, value } => write!(
                f,
                "{} {} {value}",
                if *v6 { "icmpv6" } else { "icmp" },
                if *code { "code" } else { "type" }
            ),
            Part::Net { end, net } => {
                write!(f, "{} {} {net}", Family::of(net).keyword(), end.address())
            }
            Part::InSet { family, end, set } => {
                write!(f, "{} {} @{set}", family.keyword(), end.address())
            }
            Part::OutsideAll { family, nets } => {
                let items: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
                write!(
                    f,
                    "{} saddr != {{ {} }}",
                    family.keyword(),
                    items.join(", ")
                )
            }
            Part::MarkHas(bit) => write!(f, "meta mark and {bit:#010x} == {bit:#010x}"),
            Part::SetMark(bit) => write!(f, "meta mark set meta mark or {bit:#010x}"),
            Part::Verdict(v) => v.fmt(f),
            Part::Nft(text) => f.write_str(text),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(chain) => write!(f, "jump {chain}"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for part in &self.parts {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            part.fmt(f)?;
        }
        if let Some(text) = &self.comment {
            write!(f, " comment \"{text}\"")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_print_as_nft_reads_them() {
        let mut rule = Rule::new(vec![
            Part::Family(Family::V4),
            Part::L4Proto(Protocol::Tcp),
            Part::Ports {
                protocol: Protocol::Tcp,
                end: End::Destination,
                ports: vec![PortRange::single(80), PortRange::new(8000, 8080).unwrap()],
            },
            Part::InSet {
                family: Family::V4,
                end: End::Source,
                set: "tag4_x".into(),
            },
            Part::SetMark(0x10_0000),
            Part::Verdict(Verdict::Accept),
        ]);
        rule.comment = Some("allow tcp".into());
        assert_eq!(
            rule.to_string(),
            "meta nfproto ipv4 meta l4proto tcp tcp dport { 80, 8000-8080 } ip saddr @tag4_x \
             meta mark set meta mark or 0x00100000 accept comment \"allow tcp\""
        );
        assert!(rule.is_structured());
        assert!(!Rule::nft("ct state invalid drop").is_structured());
    }
}
