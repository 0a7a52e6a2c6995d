//! The agent's incremental changes over netlink: set and map elements, named sets, chains and
//! their rules, all in one nf_tables batch, which the kernel applies as one transaction.
//!
//! Measured on these machines: every `nft -f` costs about 16 ms before it changes anything
//! (a process, its library, and the cache it reads from the kernel), and 80-100 ms once the
//! table holds an interval set of 10,000 elements, because nft reads every interval set's
//! elements before any change. Sent from the agent, a change costs what it changes: a rule
//! of one profile, a member of one tag, an endpoint's two chains and map entries. Only the
//! base chains, which change with the agent's settings alone, still go through nft
//! ([`supported`] says which operations can come here).
//!
//! The encoding is nf_tables' netlink interface: a batch (`NFNL_MSG_BATCH_BEGIN` ...
//! `NFNL_MSG_BATCH_END`) of `NFT_MSG_*` messages in the order [`super::ops`] gives. An
//! interval set stores a network as two elements: its first address, and the address after
//! its last one flagged `NFT_SET_ELEM_INTERVAL_END` (omitted when the network reaches the
//! top of the address space), as nft itself sends them. Rules are encoded by [`super::expr`].

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::expr::{self, AnonymousSet, TYPE_IP6ADDR, TYPE_IPADDR};
use super::ops::{ordered, Op};
use super::render::{Chain, Set};
use super::{table_of, FirewallError, COMPILED_TABLE, TABLE};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLMSG_ERROR: u16 = 2;
/// The kernel's answer for a table that does not exist.
const ENOENT: i32 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

const AF_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_USERDATA: u16 = 12;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
/// A map's data type when its values are verdicts.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NFT_GOTO: i32 = -4;
const NFT_JUMP: i32 = -3;
/// Interface names in an `ifname` key take IFNAMSIZ bytes, zero-padded.
const IFNAMSIZ: usize = 16;

/// User data (libnftnl's TLVs, which nft reads back): comments, and a set key's byte order.
const UDATA_COMMENT_OF_CHAIN_OR_RULE: u8 = 0;
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_COMMENT: u8 = 7;
const BYTEORDER_BIG_ENDIAN: u32 = 2;

/// Elements per message, and bytes per batch: a batch is one `sendmsg`, so it must fit the
/// socket's send buffer, which [`Session::open`] raises to [`SEND_BUFFER`]. Each batch is a
/// transaction the kernel validates whole (every chain reachable from the base chains), so
/// fewer, larger batches cost much less: a compiled endpoint's 8 MB took 85 batches of
/// 96 KiB and 1.1 s in the kernel.
const ELEMENTS_PER_MESSAGE: usize = 512;
const BATCH_BYTES: usize = 4 * 1024 * 1024;
const SEND_BUFFER: usize = 2 * BATCH_BYTES;

/// One element, encoded as the `NFTA_LIST_ELEM` nest's contents.
pub(super) type Element = Vec<u8>;

pub(super) fn attribute(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

/// nf_tables' numbers are big-endian.
pub(super) fn u32_attribute(out: &mut Vec<u8>, kind: u16, value: u32) {
    attribute(out, kind, &value.to_be_bytes());
}

pub(super) fn nested(out: &mut Vec<u8>, kind: u16, build: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    build(&mut inner);
    attribute(out, kind | NLA_F_NESTED, &inner);
}

pub(super) fn string(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// A set element, or with `verdict`, a map element whose data is a goto to that chain.
pub(super) fn key_element(key: &[u8], flags: u32, verdict: Option<&str>) -> Element {
    element(key, flags, verdict.map(|chain| (NFT_GOTO, chain)))
}

/// A verdict map element whose data is a jump to `chain`.
pub(super) fn jump_element(key: &[u8], chain: &str) -> Element {
    element(key, 0, Some((NFT_JUMP, chain)))
}

fn element(key: &[u8], flags: u32, verdict: Option<(i32, &str)>) -> Element {
    let mut element = Vec::new();
    nested(&mut element, NFTA_SET_ELEM_KEY, |k| {
        attribute(k, NFTA_DATA_VALUE, key)
    });
    if let Some((code, chain)) = verdict {
        nested(&mut element, NFTA_SET_ELEM_DATA, |d| {
            nested(d, NFTA_DATA_VERDICT, |v| {
                attribute(v, NFTA_VERDICT_CODE, &code.to_be_bytes());
                attribute(v, NFTA_VERDICT_CHAIN, &string(chain));
            })
        });
    }
    if flags != 0 {
        attribute(&mut element, NFTA_SET_ELEM_FLAGS, &flags.to_be_bytes());
    }
    element
}

fn address_bytes(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The address after `address`, or None at the top of the address space.
fn next_address(address: IpAddr) -> Option<IpAddr> {
    match address {
        IpAddr::V4(a) => u32::from(a).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(a) => u128::from(a).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}

/// A network in an interval set: its start, and its end (the address after the last).
fn interval(net: &IpNet) -> Vec<Element> {
    let mut elements = vec![key_element(&address_bytes(net.network()), 0, None)];
    if let Some(end) = next_address(net.broadcast()) {
        elements.push(key_element(
            &address_bytes(end),
            NFT_SET_ELEM_INTERVAL_END,
            None,
        ));
    }
    elements
}

fn ifname(interface: &str) -> Vec<u8> {
    let mut key = interface.as_bytes().to_vec();
    key.resize(IFNAMSIZ, 0);
    key
}

/// One message of a batch: its type, flags and attributes, and what it does (for errors).
#[derive(Debug)]
struct Message {
    kind: u16,
    flags: u16,
    body: Vec<u8>,
    what: String,
}

/// Messages that must share a batch: a rule with the anonymous sets it declares (they are
/// found by their id, which only holds within one batch).
type Unit = Vec<Message>;

/// Whether every operation can be sent here; the others need nft (base chains, with hooks
/// and rules in nft's syntax).
pub fn supported(ops: &[Op]) -> bool {
    ops.iter().all(|op| match op {
        Op::AddChain(chain) | Op::ReplaceChain(chain) => {
            chain.hook.is_none() && chain.rules.iter().all(|r| r.is_structured())
        }
        _ => true,
    })
}

/// The messages for `ops`, in the order the kernel must see them: declarations (so any rule
/// may jump to any new chain), set members, chains' rules, map entries, removals.
fn units(ops: &[Op]) -> Result<Vec<Unit>, FirewallError> {
    let ops = ordered(ops.to_vec());
    let mut set_id = 0u32;
    let mut units: Vec<Unit> = Vec::new();
    for op in &ops {
        match op {
            Op::AddSet(set) => units.push(vec![new_set(set, &mut set_id)]),
            Op::AddChain(chain) => units.push(vec![new_chain(chain)]),
            _ => {}
        }
    }
    for op in &ops {
        match op {
            Op::AddElements { set, elements } | Op::DeleteElements { set, elements } => {
                let kind = match op {
                    Op::AddElements { .. } => NFT_MSG_NEWSETELEM,
                    _ => NFT_MSG_DELSETELEM,
                };
                let elements: Vec<Element> = match super::names::is_host_set(set) {
                    true => elements
                        .iter()
                        .map(|net| key_element(&address_bytes(net.addr()), 0, None))
                        .collect(),
                    false => elements.iter().flat_map(interval).collect(),
                };
                units.extend(
                    element_messages(kind, table_of(set), set, None, &elements).map(|m| vec![m]),
                );
            }
            _ => {}
        }
    }
    for op in &ops {
        let (chain, flush) = match op {
            Op::AddChain(chain) => (chain, false),
            Op::ReplaceChain(chain) => (chain, true),
            _ => continue,
        };
        if flush {
            units.push(vec![flush_chain(&chain.name)]);
        }
        for (n, rule) in chain.rules.iter().enumerate() {
            let encoded = expr::encode(rule, &mut set_id).ok_or_else(|| {
                FirewallError::Rejected(format!(
                    "rule {n} of chain {} has no netlink encoding: {rule}",
                    chain.name
                ))
            })?;
            units.push(rule_unit(chain, n, rule, encoded));
        }
    }
    for op in &ops {
        match op {
            Op::DeleteMapEntries { map, interfaces } => {
                let elements: Vec<Element> = interfaces
                    .iter()
                    .map(|i| key_element(&ifname(i), 0, None))
                    .collect();
                units.extend(
                    element_messages(NFT_MSG_DELSETELEM, table_of(map), map, None, &elements)
                        .map(|m| vec![m]),
                );
            }
            Op::AddMapEntries { map, entries } => {
                let elements: Vec<Element> = entries
                    .iter()
                    .map(|(i, chain)| key_element(&ifname(i), 0, Some(chain)))
                    .collect();
                units.extend(
                    element_messages(NFT_MSG_NEWSETELEM, table_of(map), map, None, &elements)
                        .map(|m| vec![m]),
                );
            }
            Op::DeleteChain(name) => units.push(vec![named(
                NFT_MSG_DELCHAIN,
                NFTA_CHAIN_TABLE,
                NFTA_CHAIN_NAME,
                name,
                format!("delete chain {name}"),
            )]),
            Op::DeleteSet(name) => units.push(vec![named(
                NFT_MSG_DELSET,
                NFTA_SET_TABLE,
                NFTA_SET_NAME,
                name,
                format!("delete set {name}"),
            )]),
            _ => {}
        }
    }
    Ok(units)
}

/// A message naming one object of our tables (a rule message names its chain).
fn named(kind: u16, table_attr: u16, name_attr: u16, name: &str, what: String) -> Message {
    let mut body = Vec::new();
    attribute(&mut body, table_attr, &string(table_of(name)));
    attribute(&mut body, name_attr, &string(name));
    Message {
        kind,
        flags: 0,
        body,
        what,
    }
}

/// libnftnl's user data: type, length, value.
fn udata(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// A chain's or rule's comment, as the user data nft reads it from.
fn comment_attribute(body: &mut Vec<u8>, kind: u16, comment: &str) {
    let mut data = Vec::new();
    udata(&mut data, UDATA_COMMENT_OF_CHAIN_OR_RULE, &string(comment));
    attribute(body, kind, &data);
}

fn new_chain(chain: &Chain) -> Message {
    let mut message = named(
        NFT_MSG_NEWCHAIN,
        NFTA_CHAIN_TABLE,
        NFTA_CHAIN_NAME,
        &chain.name,
        format!("add chain {}", chain.name),
    );
    message.flags = NLM_F_CREATE;
    if let Some(comment) = &chain.comment {
        comment_attribute(&mut message.body, NFTA_CHAIN_USERDATA, comment);
    }
    message
}

/// Deleting a chain's rules without naming one deletes them all (`flush chain`).
fn flush_chain(chain: &str) -> Message {
    named(
        NFT_MSG_DELRULE,
        NFTA_RULE_TABLE,
        NFTA_RULE_CHAIN,
        chain,
        format!("flush chain {chain}"),
    )
}

fn new_set(set: &Set, next_id: &mut u32) -> Message {
    *next_id += 1;
    let (key_type, key_len) = match set.v4 {
        true => (TYPE_IPADDR, 4),
        false => (TYPE_IP6ADDR, 16),
    };
    let mut message = named(
        NFT_MSG_NEWSET,
        NFTA_SET_TABLE,
        NFTA_SET_NAME,
        &set.name,
        format!("add set {}", set.name),
    );
    message.flags = NLM_F_CREATE;
    let body = &mut message.body;
    let flags = match set.interval() {
        true => NFT_SET_INTERVAL,
        false => 0,
    };
    u32_attribute(body, NFTA_SET_FLAGS, flags);
    u32_attribute(body, NFTA_SET_KEY_TYPE, key_type);
    u32_attribute(body, NFTA_SET_KEY_LEN, key_len);
    u32_attribute(body, NFTA_SET_ID, *next_id);
    let mut data = Vec::new();
    udata(
        &mut data,
        UDATA_SET_KEYBYTEORDER,
        &BYTEORDER_BIG_ENDIAN.to_ne_bytes(),
    );
    if let Some(comment) = &set.comment {
        udata(&mut data, UDATA_SET_COMMENT, &string(comment));
    }
    attribute(body, NFTA_SET_USERDATA, &data);
    message
}

fn anonymous_set(set: &AnonymousSet, chain: &str) -> Vec<Message> {
    let table = table_of(chain);
    let mut body = Vec::new();
    attribute(&mut body, NFTA_SET_TABLE, &string(table));
    attribute(&mut body, NFTA_SET_NAME, &string(set.name()));
    let mut flags = NFT_SET_ANONYMOUS | NFT_SET_CONSTANT;
    if set.interval {
        flags |= NFT_SET_INTERVAL;
    }
    if set.verdicts {
        flags |= NFT_SET_MAP;
    }
    u32_attribute(&mut body, NFTA_SET_FLAGS, flags);
    u32_attribute(&mut body, NFTA_SET_KEY_TYPE, set.key_type);
    u32_attribute(&mut body, NFTA_SET_KEY_LEN, set.key_len);
    if set.verdicts {
        u32_attribute(&mut body, NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
    }
    nested(&mut body, NFTA_SET_DESC, |d| {
        u32_attribute(d, NFTA_SET_DESC_SIZE, set.elements.len() as u32)
    });
    u32_attribute(&mut body, NFTA_SET_ID, set.id);
    let mut data = Vec::new();
    udata(
        &mut data,
        UDATA_SET_KEYBYTEORDER,
        &BYTEORDER_BIG_ENDIAN.to_ne_bytes(),
    );
    attribute(&mut body, NFTA_SET_USERDATA, &data);
    let mut messages = vec![Message {
        kind: NFT_MSG_NEWSET,
        flags: NLM_F_CREATE,
        body,
        what: match set.verdicts {
            true => format!("a verdict map in a rule of chain {chain}"),
            false => format!("a list in a rule of chain {chain}"),
        },
    }];
    messages.extend(element_messages(
        NFT_MSG_NEWSETELEM,
        table,
        set.name(),
        Some(set.id),
        &set.elements,
    ));
    messages
}

fn rule_unit(chain: &Chain, n: usize, rule: &super::rule::Rule, encoded: expr::Encoded) -> Unit {
    let mut unit: Unit = encoded
        .sets
        .iter()
        .flat_map(|set| anonymous_set(set, &chain.name))
        .collect();
    let mut body = Vec::new();
    attribute(&mut body, NFTA_RULE_TABLE, &string(table_of(&chain.name)));
    attribute(&mut body, NFTA_RULE_CHAIN, &string(&chain.name));
    attribute(
        &mut body,
        NFTA_RULE_EXPRESSIONS | NLA_F_NESTED,
        &encoded.expressions,
    );
    if let Some(comment) = &rule.comment {
        comment_attribute(&mut body, NFTA_RULE_USERDATA, comment);
    }
    unit.push(Message {
        kind: NFT_MSG_NEWRULE,
        flags: NLM_F_CREATE | NLM_F_APPEND,
        body,
        what: format!("rule {n} of chain {}: {rule}", chain.name),
    });
    unit
}

/// Element messages of at most [`ELEMENTS_PER_MESSAGE`] elements each.
fn element_messages<'a>(
    kind: u16,
    table: &'a str,
    set: &'a str,
    set_id: Option<u32>,
    elements: &'a [Element],
) -> impl Iterator<Item = Message> + 'a {
    elements.chunks(ELEMENTS_PER_MESSAGE).map(move |chunk| {
        let mut body = Vec::new();
        attribute(&mut body, NFTA_SET_ELEM_LIST_TABLE, &string(table));
        attribute(&mut body, NFTA_SET_ELEM_LIST_SET, &string(set));
        if let Some(id) = set_id {
            u32_attribute(&mut body, NFTA_SET_ELEM_LIST_SET_ID, id);
        }
        nested(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
            for element in chunk {
                attribute(list, NFTA_LIST_ELEM | NLA_F_NESTED, element);
            }
        });
        let flags = match kind {
            NFT_MSG_NEWSETELEM => NLM_F_CREATE,
            _ => 0,
        };
        let verb = if kind == NFT_MSG_NEWSETELEM {
            "add"
        } else {
            "delete"
        };
        Message {
            kind,
            flags,
            body,
            what: format!("{verb} {} elements of {set}", chunk.len()),
        }
    })
}

fn header(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    // Length is patched in by `finish`.
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, resource id (big-endian).
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
}

fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// One encoded batch: its bytes, the sequence number whose acknowledgement ends it, and what
/// each sequence number does (to say which message the kernel refused).
#[derive(Debug)]
struct Batch {
    bytes: Vec<u8>,
    acked: u32,
    what: Vec<(u32, String)>,
    /// The first sequence number after this batch's.
    next_seq: u32,
}

/// Encodes batches of about [`BATCH_BYTES`] (a unit is never split). A change larger than
/// one batch is several transactions, each leaving every reference valid (the order of
/// [`units`]).
fn batches(units: Vec<Unit>, first_seq: u32) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut seq = first_seq;
    let mut pending = units.into_iter().peekable();
    while pending.peek().is_some() {
        let mut batch = Batch {
            bytes: Vec::new(),
            acked: 0,
            what: Vec::new(),
            next_seq: 0,
        };
        let buf = &mut batch.bytes;
        header(
            buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        finish(buf, 0);
        seq += 1;
        // Only the batch's last message asks for an acknowledgement: the kernel reports a
        // refused message whether asked or not, and one ack per message of a large batch
        // overflowed the socket's receive buffer (ENOBUFS, seen at 10,000 endpoints).
        let mut last = 0;
        while let Some(unit) = pending.next_if(|_| buf.len() < BATCH_BYTES) {
            for message in unit {
                let start = buf.len();
                last = start;
                header(
                    buf,
                    (NFNL_SUBSYS_NFTABLES << 8) | message.kind,
                    NLM_F_REQUEST | message.flags,
                    seq,
                    NFPROTO_INET,
                    0,
                );
                buf.extend_from_slice(&message.body);
                finish(buf, start);
                batch.what.push((seq, message.what));
                batch.acked = seq;
                seq += 1;
            }
        }
        // The flags are the header's bytes 6 and 7.
        let flags = u16::from_ne_bytes([buf[last + 6], buf[last + 7]]) | NLM_F_ACK;
        buf[last + 6..last + 8].copy_from_slice(&flags.to_ne_bytes());
        let start = buf.len();
        header(
            buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        finish(buf, start);
        seq += 1;
        batch.next_seq = seq;
        batches.push(batch);
    }
    batches
}

fn io_error(what: &str, e: std::io::Error) -> FirewallError {
    FirewallError::Rejected(format!("netlink {what}: {e}"))
}

/// The agent's nf_tables socket, kept open between changes: closing one right after a commit
/// waits for the kernel to release that commit's old objects (an RCU grace period, 8-13 ms
/// measured here at 10,000 endpoints, more than the commit itself). It speaks to the network
/// namespace of the thread that first used it.
#[derive(Default)]
pub struct Connection {
    open: std::sync::Mutex<Option<Session>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// An open socket and the next sequence number on it: numbers are never reused on one
/// socket, so no late answer can be taken for another request's.
struct Session {
    socket: Socket,
    next_seq: u32,
}

impl Session {
    fn open() -> Result<Session, FirewallError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| io_error("socket", e))?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(|e| io_error("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| io_error("connect", e))?;
        // SO_SNDBUFFORCE (the agent runs as root) goes past the system's limit.
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&socket, sockopt::SndBufForce, &SEND_BUFFER)
            .or_else(|_| setsockopt(&socket, sockopt::SndBuf, &SEND_BUFFER))
            .map_err(|e| io_error("setsockopt", e.into()))?;
        Ok(Session {
            socket,
            next_seq: 1,
        })
    }
}

impl Connection {
    /// Runs `work` on the open session (opening one if needed). A session that saw any error
    /// is closed: a refused batch may leave answers behind that the next one must not read.
    fn with<T>(
        &self,
        work: impl FnOnce(&mut Session) -> Result<T, FirewallError>,
    ) -> Result<T, FirewallError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let session = match open.as_mut() {
            Some(session) => session,
            None => open.insert(Session::open()?),
        };
        let result = work(session);
        if result.is_err() {
            *open = None;
        }
        result
    }

    /// Sends `ops` (all of them [`supported`]) as nf_tables batches.
    pub fn apply(&self, ops: &[Op]) -> Result<(), FirewallError> {
        let started = std::time::Instant::now();
        let units = units(ops)?;
        if units.is_empty() {
            return Ok(());
        }
        self.with(|session| {
            let batches = batches(units, session.next_seq);
            session.next_seq = batches.last().map_or(session.next_seq, |b| b.next_seq);
            let encoded_us = started.elapsed().as_micros() as u64;
            for batch in &batches {
                session
                    .socket
                    .send(&batch.bytes, 0)
                    .map_err(|e| io_error("send", e))?;
                wait_for_ack(&session.socket, batch)?;
            }
            // The kernel's share: a commit validates every chain reachable from the base
            // chains, so it grows with the ruleset.
            tracing::debug!(
                batches = batches.len(),
                bytes = batches.iter().map(|b| b.bytes.len()).sum::<usize>(),
                encoded_us,
                kernel_us = started.elapsed().as_micros() as u64 - encoded_us,
                "nf_tables batch applied"
            );
            Ok(())
        })
    }

    /// Whether both of the agent's tables exist: an `NFT_MSG_GETTABLE` each (no nft process,
    /// no cache).
    pub fn table_exists(&self) -> Result<bool, FirewallError> {
        for table in [TABLE, COMPILED_TABLE] {
            if !self.one_table_exists(table)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn one_table_exists(&self, table: &str) -> Result<bool, FirewallError> {
        self.with(|session| {
            let seq = session.next_seq;
            session.next_seq += 1;
            let mut request = Vec::new();
            header(
                &mut request,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
                NLM_F_REQUEST | NLM_F_ACK,
                seq,
                NFPROTO_INET,
                0,
            );
            attribute(&mut request, NFTA_TABLE_NAME, &string(table));
            finish(&mut request, 0);
            session
                .socket
                .send(&request, 0)
                .map_err(|e| io_error("send", e))?;
            match answer(&session.socket, seq)? {
                0 => Ok(true),
                code if code == -ENOENT => Ok(false),
                code => Err(FirewallError::Rejected(format!(
                    "the kernel refused to look up table {table}: {}",
                    std::io::Error::from_raw_os_error(-code)
                ))),
            }
        })
    }
}

/// The error code (0: acknowledged) the kernel answers request `seq` with, skipping the
/// data messages before it.
fn answer(socket: &Socket, seq: u32) -> Result<i32, FirewallError> {
    read_answers(socket, |code, acked| (acked == seq).then_some(code))
}

/// Reads answers until the batch's last message is acknowledged or one is refused (the
/// kernel then aborts the whole batch and says no more).
fn wait_for_ack(socket: &Socket, batch: &Batch) -> Result<(), FirewallError> {
    read_answers(socket, |code, seq| {
        if code != 0 {
            let what = batch
                .what
                .iter()
                .find(|(s, _)| *s == seq)
                .map_or("a message of the batch", |(_, w)| w.as_str());
            return Some(Err(FirewallError::Rejected(format!(
                "the kernel refused {what}: {}",
                std::io::Error::from_raw_os_error(-code)
            ))));
        }
        (seq == batch.acked).then_some(Ok(()))
    })?
}

/// Reads the kernel's answers until `decide` settles: it is given each error message's code
/// (0 for an acknowledgement) and the sequence number of the request it answers (the
/// request's header follows the code); other messages are data, passed over.
fn read_answers<T>(
    socket: &Socket,
    mut decide: impl FnMut(i32, u32) -> Option<T>,
) -> Result<T, FirewallError> {
    loop {
        let (buf, _) = socket
            .recv_from_full()
            .map_err(|e| io_error("receive", e))?;
        let mut rest = buf.as_slice();
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            if len < 16 || len > rest.len() {
                break;
            }
            if kind == NLMSG_ERROR && len >= 36 {
                let code = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
                let seq = u32::from_ne_bytes(rest[28..32].try_into().expect("4 bytes"));
                if let Some(decided) = decide(code, seq) {
                    return Ok(decided);
                }
            }
            rest = &rest[(len + 3) & !3..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_is_its_first_address_and_the_one_after_its_last() {
        let net: IpNet = "10.0.0.4/30".parse().unwrap();
        let elements = interval(&net);
        assert_eq!(elements.len(), 2);
        // Key nest, then flags on the end element only.
        assert!(elements[0].windows(4).any(|w| w == [10, 0, 0, 4]));
        assert!(elements[1].windows(4).any(|w| w == [10, 0, 0, 8]));
        assert!(elements[1].ends_with(&NFT_SET_ELEM_INTERVAL_END.to_be_bytes()));
        let top: IpNet = "255.255.255.255/32".parse().unwrap();
        assert_eq!(interval(&top).len(), 1, "no end past the top of the space");
    }

    #[test]
    fn large_changes_are_split_into_batches_a_socket_takes() {
        let elements: Vec<IpNet> = (0..400_000u32)
            .map(|n| IpNet::V4(ipnet::Ipv4Net::new((0x0a00_0000 + n).into(), 32).unwrap()))
            .collect();
        let ops = [Op::AddElements {
            set: "s".into(),
            elements,
        }];
        let batches = batches(units(&ops).unwrap(), 0);
        assert!(batches.len() > 1);
        assert!(batches
            .iter()
            .all(|b| b.bytes.len() < BATCH_BYTES + 64 * 1024));
        let mut messages = 0;
        for batch in &batches {
            // Every message's flags and sequence number, in order.
            let mut headers = Vec::new();
            let mut rest = batch.bytes.as_slice();
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                let flags = u16::from_ne_bytes(rest[6..8].try_into().unwrap());
                let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
                headers.push((flags, seq));
                rest = &rest[(len + 3) & !3..];
            }
            // Begin, the element messages, end: only the last element message asks for an ack.
            let elements = &headers[1..headers.len() - 1];
            messages += elements.len();
            let asking: Vec<u32> = elements
                .iter()
                .filter(|(flags, _)| flags & NLM_F_ACK != 0)
                .map(|(_, seq)| *seq)
                .collect();
            assert_eq!(asking, vec![elements.last().unwrap().1]);
            assert_eq!(batch.acked, asking[0]);
        }
        assert_eq!(messages, 800_000usize.div_ceil(ELEMENTS_PER_MESSAGE));
    }

    #[test]
    fn a_rule_and_the_lists_it_declares_share_a_batch() {
        use super::super::rule::{Family, Part, Rule, Verdict};
        let rule = Rule::new(vec![
            Part::OutsideAll {
                family: Family::V4,
                nets: vec![
                    "10.0.0.1/32".parse().unwrap(),
                    "10.0.0.2/32".parse().unwrap(),
                ],
            },
            Part::Verdict(Verdict::Drop),
        ]);
        let chain = Chain {
            name: "c".into(),
            hook: None,
            comment: None,
            rules: vec![rule; 40_000],
        };
        let units = units(&[Op::ReplaceChain(chain)]).unwrap();
        // The flush, then per rule: the set, its elements, the rule.
        assert_eq!(units.len(), 40_001);
        assert!(units[1..].iter().all(|u| u.len() == 3));
        let batches = batches(units, 0);
        assert!(batches.len() > 1, "large enough to need several batches");
        for batch in &batches {
            // Each batch ends with a rule: no set is left apart from the rule using it.
            assert!(
                batch.what.last().unwrap().1.starts_with("rule "),
                "{:?}",
                batch.what.last()
            );
        }
    }

    #[test]
    fn base_chains_are_left_to_nft() {
        let mut chain = Chain {
            name: "forward".into(),
            hook: Some("type filter hook forward priority 0;"),
            comment: None,
            rules: vec![],
        };
        assert!(!supported(&[Op::ReplaceChain(chain.clone())]));
        chain.hook = None;
        chain
            .rules
            .push(super::super::rule::Rule::nft("ct state invalid drop"));
        assert!(!supported(&[Op::AddChain(chain.clone())]));
        chain.rules.clear();
        assert!(supported(&[Op::AddChain(chain), Op::DeleteSet("s".into())]));
    }
}
