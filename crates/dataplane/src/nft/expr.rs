//! A [`Rule`] as nf_tables expressions, the bytecode the kernel runs: what nft itself would
//! send for the same text (checked against `nft --debug=netlink` on these machines), so that
//! `nft list` shows a rule the same whichever path programmed it.
//!
//! nft adds the protocol tests a match depends on (`meta nfproto ipv4` before an IPv4 address
//! in an `inet` table, `meta l4proto tcp` before a TCP port) unless an earlier part of the
//! rule made them; [`Context`] does the same. Lists (`{ 80, 443 }`, an endpoint's addresses)
//! become anonymous constant sets, declared in the same batch as the rule that uses them.

use std::net::IpAddr;

use calico_model::ports::PortRange;
use calico_model::rule::Protocol;
use ipnet::IpNet;

use super::netlink::{attribute, nested, string, u32_attribute, Element};
use super::rule::{End, Family, Part, Rule, Verdict};

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFT_META_MARK: u32 = 3;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;

const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_LTE: u32 = 3;
const NFT_CMP_GTE: u32 = 5;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;

const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFT_LOOKUP_F_INV: u32 = 1;

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// nft's datatypes for set keys.
pub(super) const TYPE_IPADDR: u32 = 7;
pub(super) const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_SERVICE: u32 = 13;

/// The names the kernel replaces with a free one for an anonymous set, and map (nft's).
const ANONYMOUS_SET_NAME: &str = "__set%d";
const ANONYMOUS_MAP_NAME: &str = "__map%d";

/// An anonymous set a rule uses, to be declared (and filled) before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AnonymousSet {
    /// Its id within the batch, by which the rule's lookup finds it.
    pub id: u32,
    pub key_type: u32,
    pub key_len: u32,
    pub interval: bool,
    /// A verdict map: its elements carry a verdict.
    pub verdicts: bool,
    pub elements: Vec<Element>,
}

impl AnonymousSet {
    pub fn name(&self) -> &'static str {
        match self.verdicts {
            true => ANONYMOUS_MAP_NAME,
            false => ANONYMOUS_SET_NAME,
        }
    }
}

/// A rule ready for `NFT_MSG_NEWRULE`: the sets it needs and its expression list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Encoded {
    pub sets: Vec<AnonymousSet>,
    /// The contents of `NFTA_RULE_EXPRESSIONS`.
    pub expressions: Vec<u8>,
}

/// What earlier parts of a rule have established, as nft tracks it.
#[derive(Debug, Default)]
struct Context {
    family: Option<Family>,
    l4proto: Option<u8>,
}

/// Encodes a rule; `next_set_id` numbers its anonymous sets (unique within one batch).
/// None for a rule in nft's syntax ([`Part::Nft`]).
pub(super) fn encode(rule: &Rule, next_set_id: &mut u32) -> Option<Encoded> {
    let mut out = Encoded {
        sets: Vec::new(),
        expressions: Vec::new(),
    };
    let mut context = Context::default();
    for part in &rule.parts {
        part_expressions(part, &mut context, &mut out, next_set_id)?;
    }
    Some(out)
}

fn part_expressions(
    part: &Part,
    context: &mut Context,
    out: &mut Encoded,
    next_set_id: &mut u32,
) -> Option<()> {
    let e = &mut out.expressions;
    match part {
        Part::Family(family) => {
            need_family(e, context, *family);
        }
        Part::L4Proto(protocol) => {
            need_l4proto(e, context, protocol_number(*protocol));
        }
        Part::Ports {
            protocol,
            end,
            ports,
        } => {
            need_l4proto(e, context, protocol_number(*protocol));
            let offset = match end {
                End::Source => 0,
                End::Destination => 2,
            };
            payload(e, NFT_PAYLOAD_TRANSPORT_HEADER, offset, 2);
            match ports.as_slice() {
                [one] if one.is_single() => cmp(e, NFT_CMP_EQ, &one.low.to_be_bytes()),
                [range] => {
                    cmp(e, NFT_CMP_GTE, &range.low.to_be_bytes());
                    cmp(e, NFT_CMP_LTE, &range.high.to_be_bytes());
                }
                many => {
                    let set = port_set(many, next_set_id);
                    lookup(e, ANONYMOUS_SET_NAME, Some(set.id), Lookup::Member);
                    out.sets.push(set);
                }
            }
        }
        Part::PortMap { protocol, targets } => {
            need_l4proto(e, context, protocol_number(*protocol));
            payload(e, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
            let map = port_map(targets, next_set_id);
            lookup(e, map.name(), Some(map.id), Lookup::Verdict);
            out.sets.push(map);
        }
        Part::Icmp { v6, code, value } => {
            let protocol = if *v6 {
                Protocol::Icmpv6
            } else {
                Protocol::Icmp
            };
            need_l4proto(e, context, protocol_number(protocol));
            payload(e, NFT_PAYLOAD_TRANSPORT_HEADER, u32::from(*code), 1);
            cmp(e, NFT_CMP_EQ, &[*value]);
        }
        Part::Net { end, net } => {
            need_family(e, context, Family::of(net));
            network(e, *end, net, NFT_CMP_EQ);
        }
        Part::InSet { family, end, set } => {
            need_family(e, context, *family);
            address(e, *family, *end);
            lookup(e, set, None, Lookup::Member);
        }
        Part::OutsideAll { family, nets } => {
            need_family(e, context, *family);
            match nets.as_slice() {
                [one] => network(e, End::Source, one, NFT_CMP_NEQ),
                many => {
                    address(e, *family, End::Source);
                    let set = address_set(*family, many, next_set_id);
                    lookup(e, ANONYMOUS_SET_NAME, Some(set.id), Lookup::NotMember);
                    out.sets.push(set);
                }
            }
        }
        Part::MarkHas(bit) => {
            meta_load(e, NFT_META_MARK);
            bitwise(e, &bit.to_ne_bytes(), &[0; 4]);
            cmp(e, NFT_CMP_EQ, &bit.to_ne_bytes());
        }
        Part::SetMark(bit) => {
            // (mark & !bit) ^ bit: the mark with `bit` set.
            meta_load(e, NFT_META_MARK);
            bitwise(e, &(!bit).to_ne_bytes(), &bit.to_ne_bytes());
            expression(e, "meta", |d| {
                u32_attribute(d, NFTA_META_KEY, NFT_META_MARK);
                u32_attribute(d, NFTA_META_SREG, NFT_REG_1);
            });
        }
        Part::Verdict(verdict) => immediate(e, verdict),
        Part::Nft(_) => return None,
    }
    Some(())
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Icmp => 1,
        Protocol::Icmpv6 => 58,
    }
}

fn need_family(e: &mut Vec<u8>, context: &mut Context, family: Family) {
    if context.family != Some(family) {
        meta_load(e, NFT_META_NFPROTO);
        let number = match family {
            Family::V4 => NFPROTO_IPV4,
            Family::V6 => NFPROTO_IPV6,
        };
        cmp(e, NFT_CMP_EQ, &[number]);
        context.family = Some(family);
    }
}

fn need_l4proto(e: &mut Vec<u8>, context: &mut Context, number: u8) {
    if context.l4proto != Some(number) {
        meta_load(e, NFT_META_L4PROTO);
        cmp(e, NFT_CMP_EQ, &[number]);
        context.l4proto = Some(number);
    }
}

/// Loads a packet's whole source or destination address.
fn address(e: &mut Vec<u8>, family: Family, end: End) {
    let (offset, len) = address_field(family, end);
    payload(e, NFT_PAYLOAD_NETWORK_HEADER, offset, len);
}

fn address_field(family: Family, end: End) -> (u32, u32) {
    match (family, end) {
        (Family::V4, End::Source) => (12, 4),
        (Family::V4, End::Destination) => (16, 4),
        (Family::V6, End::Source) => (8, 16),
        (Family::V6, End::Destination) => (24, 16),
    }
}

/// An address compared with a network, as nft does it: a byte-aligned prefix loads only its
/// bytes; any other prefix loads the whole address and masks it.
fn network(e: &mut Vec<u8>, end: End, net: &IpNet, op: u32) {
    let (offset, full) = address_field(Family::of(net), end);
    let bytes = address_bytes(net.network());
    let prefix = u32::from(net.prefix_len());
    if prefix != 0 && prefix % 8 == 0 {
        let len = prefix / 8;
        payload(e, NFT_PAYLOAD_NETWORK_HEADER, offset, len);
        cmp(e, op, &bytes[..len as usize]);
    } else {
        payload(e, NFT_PAYLOAD_NETWORK_HEADER, offset, full);
        bitwise(e, &address_bytes(net.netmask()), &vec![0; full as usize]);
        cmp(e, op, &bytes);
    }
}

fn address_bytes(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A port list as nft makes it: single ports in a plain set, anything with a range in an
/// interval set with overlaps merged.
fn port_set(ports: &[PortRange], next_set_id: &mut u32) -> AnonymousSet {
    let id = take_id(next_set_id);
    if ports.iter().all(PortRange::is_single) {
        let mut singles: Vec<u16> = ports.iter().map(|p| p.low).collect();
        singles.sort_unstable();
        singles.dedup();
        return AnonymousSet {
            id,
            key_type: TYPE_INET_SERVICE,
            key_len: 2,
            interval: false,
            verdicts: false,
            elements: singles
                .iter()
                .map(|p| super::netlink::key_element(&p.to_be_bytes(), 0, None))
                .collect(),
        };
    }
    let ranges = ports
        .iter()
        .map(|p| (u128::from(p.low), u128::from(p.high)))
        .collect();
    AnonymousSet {
        id,
        key_type: TYPE_INET_SERVICE,
        key_len: 2,
        interval: true,
        verdicts: false,
        elements: interval_elements(merged(ranges), 2),
    }
}

/// A map from ports to jumps: of exact ports (a hash) when every target is one port, else of
/// intervals in order, where a range that follows the one before with no gap starts where it
/// ends (nft sends them the same way).
fn port_map(targets: &[(PortRange, String)], next_set_id: &mut u32) -> AnonymousSet {
    if targets.iter().all(|(range, _)| range.is_single()) {
        return AnonymousSet {
            id: take_id(next_set_id),
            key_type: TYPE_INET_SERVICE,
            key_len: 2,
            interval: false,
            verdicts: true,
            elements: targets
                .iter()
                .map(|(range, chain)| super::netlink::jump_element(&range.low.to_be_bytes(), chain))
                .collect(),
        };
    }
    let mut elements = Vec::new();
    let mut next = 0u32;
    for (range, chain) in targets {
        if u32::from(range.low) != next {
            // A gap before this range: no verdict there.
            elements.push(super::netlink::key_element(
                &(next as u16).to_be_bytes(),
                super::netlink::NFT_SET_ELEM_INTERVAL_END,
                None,
            ));
        }
        elements.push(super::netlink::jump_element(
            &range.low.to_be_bytes(),
            chain,
        ));
        next = u32::from(range.high) + 1;
    }
    if next <= u32::from(u16::MAX) {
        elements.push(super::netlink::key_element(
            &(next as u16).to_be_bytes(),
            super::netlink::NFT_SET_ELEM_INTERVAL_END,
            None,
        ));
    }
    AnonymousSet {
        id: take_id(next_set_id),
        key_type: TYPE_INET_SERVICE,
        key_len: 2,
        interval: true,
        verdicts: true,
        elements,
    }
}

fn address_set(family: Family, nets: &[IpNet], next_set_id: &mut u32) -> AnonymousSet {
    let (key_type, key_len) = match family {
        Family::V4 => (TYPE_IPADDR, 4),
        Family::V6 => (TYPE_IP6ADDR, 16),
    };
    let ranges = nets
        .iter()
        .map(|n| (address_number(n.network()), address_number(n.broadcast())))
        .collect();
    AnonymousSet {
        id: take_id(next_set_id),
        key_type,
        key_len,
        interval: true,
        verdicts: false,
        elements: interval_elements(merged(ranges), key_len as usize),
    }
}

fn address_number(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn take_id(next: &mut u32) -> u32 {
    *next += 1;
    *next
}

/// Inclusive ranges sorted, with overlapping and adjacent ones joined (an interval set
/// refuses overlaps).
fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (low, high) in ranges {
        match out.last_mut() {
            Some(last) if low <= last.1.saturating_add(1) => last.1 = last.1.max(high),
            _ => out.push((low, high)),
        }
    }
    out
}

/// Interval set elements for inclusive ranges of `len`-byte big-endian keys: as nft sends
/// them, an end marker at zero when the first range starts above it, then each range's first
/// key and the key after its last (flagged as an end; none past the top of the key space).
fn interval_elements(ranges: Vec<(u128, u128)>, len: usize) -> Vec<Element> {
    let key = |n: u128| n.to_be_bytes()[16 - len..].to_vec();
    let top = if len >= 16 {
        u128::MAX
    } else {
        (1u128 << (8 * len)) - 1
    };
    let end = super::netlink::NFT_SET_ELEM_INTERVAL_END;
    let mut elements = Vec::new();
    if ranges.first().is_some_and(|(low, _)| *low > 0) {
        elements.push(super::netlink::key_element(&key(0), end, None));
    }
    for (low, high) in ranges {
        elements.push(super::netlink::key_element(&key(low), 0, None));
        if high < top {
            elements.push(super::netlink::key_element(&key(high + 1), end, None));
        }
    }
    elements
}

fn expression(e: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    nested(e, NFTA_LIST_ELEM, |x| {
        attribute(x, NFTA_EXPR_NAME, &string(name));
        nested(x, NFTA_EXPR_DATA, data);
    });
}

fn value(d: &mut Vec<u8>, kind: u16, bytes: &[u8]) {
    nested(d, kind, |v| attribute(v, NFTA_DATA_VALUE, bytes));
}

fn meta_load(e: &mut Vec<u8>, key: u32) {
    expression(e, "meta", |d| {
        u32_attribute(d, NFTA_META_DREG, NFT_REG_1);
        u32_attribute(d, NFTA_META_KEY, key);
    });
}

fn cmp(e: &mut Vec<u8>, op: u32, bytes: &[u8]) {
    expression(e, "cmp", |d| {
        u32_attribute(d, NFTA_CMP_SREG, NFT_REG_1);
        u32_attribute(d, NFTA_CMP_OP, op);
        value(d, NFTA_CMP_DATA, bytes);
    });
}

fn payload(e: &mut Vec<u8>, base: u32, offset: u32, len: u32) {
    expression(e, "payload", |d| {
        u32_attribute(d, NFTA_PAYLOAD_DREG, NFT_REG_1);
        u32_attribute(d, NFTA_PAYLOAD_BASE, base);
        u32_attribute(d, NFTA_PAYLOAD_OFFSET, offset);
        u32_attribute(d, NFTA_PAYLOAD_LEN, len);
    });
}

fn bitwise(e: &mut Vec<u8>, mask: &[u8], xor: &[u8]) {
    expression(e, "bitwise", |d| {
        u32_attribute(d, NFTA_BITWISE_SREG, NFT_REG_1);
        u32_attribute(d, NFTA_BITWISE_DREG, NFT_REG_1);
        u32_attribute(d, NFTA_BITWISE_LEN, mask.len() as u32);
        value(d, NFTA_BITWISE_MASK, mask);
        value(d, NFTA_BITWISE_XOR, xor);
    });
}

/// What a lookup of register 1 in a set does with its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// The rule goes on if the value is in the set.
    Member,
    /// ... if it is not.
    NotMember,
    /// The map's verdict for the value becomes the rule's (none: the rule goes on).
    Verdict,
}

fn lookup(e: &mut Vec<u8>, set: &str, set_id: Option<u32>, how: Lookup) {
    expression(e, "lookup", |d| {
        attribute(d, NFTA_LOOKUP_SET, &string(set));
        u32_attribute(d, NFTA_LOOKUP_SREG, NFT_REG_1);
        if how == Lookup::Verdict {
            u32_attribute(d, NFTA_LOOKUP_DREG, NFT_REG_VERDICT);
        }
        if let Some(id) = set_id {
            u32_attribute(d, NFTA_LOOKUP_SET_ID, id);
        }
        if how == Lookup::NotMember {
            u32_attribute(d, NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
        }
    });
}

fn immediate(e: &mut Vec<u8>, verdict: &Verdict) {
    let (code, chain) = match verdict {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(chain) => (NFT_JUMP, Some(chain)),
    };
    expression(e, "immediate", |d| {
        u32_attribute(d, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        nested(d, NFTA_IMMEDIATE_DATA, |data| {
            nested(data, NFTA_DATA_VERDICT, |v| {
                attribute(v, NFTA_VERDICT_CODE, &code.to_be_bytes());
                if let Some(chain) = chain {
                    attribute(v, NFTA_VERDICT_CHAIN, &string(chain));
                }
            });
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_where_they_touch_or_overlap() {
        assert_eq!(
            merged(vec![(80, 90), (70, 80), (91, 95), (100, 100)]),
            vec![(70, 95), (100, 100)]
        );
        assert_eq!(merged(vec![(0, u128::MAX), (5, 6)]), vec![(0, u128::MAX)]);
    }

    #[test]
    fn an_interval_set_starts_with_an_end_at_zero_unless_a_range_starts_there() {
        assert_eq!(interval_elements(vec![(70, 90)], 2).len(), 3);
        assert_eq!(interval_elements(vec![(0, 90)], 2).len(), 2);
        assert_eq!(
            interval_elements(vec![(1, 65535)], 2).len(),
            2,
            "no end past the top"
        );
    }

    #[test]
    fn a_port_map_sends_starts_only_where_ranges_follow_each_other() {
        let target = |low, high, chain: &str| (PortRange::new(low, high).unwrap(), chain.into());
        let mut id = 0;
        let whole = port_map(
            &[
                target(0, 21, "a"),
                target(22, 22, "b"),
                target(23, 65535, "a"),
            ],
            &mut id,
        );
        assert_eq!(whole.elements.len(), 3);
        assert!(whole.verdicts && whole.interval);
        assert_eq!(whole.name(), "__map%d");
        // A gap before, between and after: an end element at each.
        let gaps = port_map(&[target(10, 20, "a"), target(30, 40, "b")], &mut id);
        assert_eq!(gaps.elements.len(), 5);
        // Exact ports: a hash, one element each.
        let exact = port_map(&[target(22, 22, "a"), target(80, 80, "b")], &mut id);
        assert!(exact.verdicts && !exact.interval);
        assert_eq!(exact.elements.len(), 2);
        assert_eq!(id, 3);
        let rule = Rule::new(vec![Part::PortMap {
            protocol: Protocol::Tcp,
            targets: vec![target(0, 21, "a"), target(22, 65535, "b")],
        }]);
        assert_eq!(
            rule.to_string(),
            "tcp dport vmap { 0-21 : jump a, 22-65535 : jump b }"
        );
    }

    #[test]
    fn protocol_tests_are_added_once_as_nft_adds_them() {
        let rule = Rule::new(vec![
            Part::L4Proto(Protocol::Tcp),
            Part::Ports {
                protocol: Protocol::Tcp,
                end: End::Destination,
                ports: vec![PortRange::single(80)],
            },
            Part::Verdict(Verdict::Accept),
        ]);
        let mut id = 0;
        let encoded = encode(&rule, &mut id).unwrap();
        let count = |name: &str| {
            let needle = string(name);
            encoded
                .expressions
                .windows(needle.len())
                .filter(|w| *w == needle.as_slice())
                .count()
        };
        // meta l4proto + cmp, payload + cmp, immediate.
        assert_eq!(count("meta"), 1);
        assert_eq!(count("cmp"), 2);
        assert_eq!(count("payload"), 1);
        assert_eq!(count("immediate"), 1);
        assert!(encoded.sets.is_empty());
        assert_eq!(id, 0);
        assert!(encode(&Rule::nft("ct state invalid drop"), &mut id).is_none());
    }
}
