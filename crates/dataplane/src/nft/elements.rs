//! Set and map elements over netlink, in one nf_tables batch (one transaction).
//!
//! Measured on these machines: one `nft -f` that adds and deletes one element costs about
//! 16 ms on a table without interval sets, and 80–100 ms once the table holds an interval
//! set of 10,000 elements, because nft reads every interval set's elements into its cache
//! before any change. The agent's most frequent changes are exactly these (a workload
//! anywhere in the cluster joins or leaves a tag; a local one gets its map entries), so it
//! sends them to the kernel itself: the cost no longer depends on the table's size. Chains
//! and rules still go through nft, whose cost for them does not grow with the table.
//!
//! The encoding is nf_tables' netlink interface: a batch (`NFNL_MSG_BATCH_BEGIN` …
//! `NFNL_MSG_BATCH_END`) of `NFT_MSG_NEWSETELEM` and `NFT_MSG_DELSETELEM` messages. An
//! interval set stores a network as two elements: its first address, and the address after
//! its last one flagged `NFT_SET_ELEM_INTERVAL_END` (omitted when the network reaches the
//! top of the address space), as nft itself sends them.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::ops::Op;
use super::{FirewallError, TABLE};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLMSG_ERROR: u16 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;

const AF_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NFT_GOTO: i32 = -4;
/// Interface names in an `ifname` key take IFNAMSIZ bytes, zero-padded.
const IFNAMSIZ: usize = 16;

/// Elements per message, and bytes per batch: well inside a netlink socket's buffers.
const ELEMENTS_PER_MESSAGE: usize = 512;
const BATCH_BYTES: usize = 96 * 1024;

/// One element, encoded as the `NFTA_LIST_ELEM` nest's contents.
type Element = Vec<u8>;

fn attribute(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

fn nested(out: &mut Vec<u8>, kind: u16, build: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    build(&mut inner);
    attribute(out, kind | NLA_F_NESTED, &inner);
}

fn string(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

fn key_element(key: &[u8], flags: u32, verdict: Option<&str>) -> Element {
    let mut element = Vec::new();
    nested(&mut element, NFTA_SET_ELEM_KEY, |k| {
        attribute(k, NFTA_DATA_VALUE, key)
    });
    if let Some(chain) = verdict {
        nested(&mut element, NFTA_SET_ELEM_DATA, |d| {
            nested(d, NFTA_DATA_VERDICT, |v| {
                attribute(v, NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes());
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

/// The element messages `ops` stand for: (message type, set, elements). Ops that are not
/// about elements are ignored (the caller runs them through nft).
fn messages(ops: &[Op]) -> Vec<(u16, String, Vec<Element>)> {
    let mut out = Vec::new();
    for op in ops {
        let (kind, set, elements): (u16, &str, Vec<Element>) = match op {
            Op::AddElements { set, elements } => (
                NFT_MSG_NEWSETELEM,
                set,
                elements.iter().flat_map(interval).collect(),
            ),
            Op::DeleteElements { set, elements } => (
                NFT_MSG_DELSETELEM,
                set,
                elements.iter().flat_map(interval).collect(),
            ),
            Op::AddMapEntries { map, entries } => (
                NFT_MSG_NEWSETELEM,
                map,
                entries
                    .iter()
                    .map(|(interface, chain)| key_element(&ifname(interface), 0, Some(chain)))
                    .collect(),
            ),
            Op::DeleteMapEntries { map, interfaces } => (
                NFT_MSG_DELSETELEM,
                map,
                interfaces
                    .iter()
                    .map(|interface| key_element(&ifname(interface), 0, None))
                    .collect(),
            ),
            _ => continue,
        };
        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            out.push((kind, set.to_string(), chunk.to_vec()));
        }
    }
    out
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

/// Encodes batches of at most [`BATCH_BYTES`]; returns each with the sequence number of its
/// acknowledged (last) message.
fn batches(messages: Vec<(u16, String, Vec<Element>)>) -> Vec<(Vec<u8>, Vec<u32>)> {
    let mut batches = Vec::new();
    let mut seq = 0u32;
    let mut pending = messages.into_iter().peekable();
    while pending.peek().is_some() {
        let mut buf = Vec::new();
        let mut acked = Vec::new();
        let start = buf.len();
        header(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        finish(&mut buf, start);
        seq += 1;
        // Only the batch's last message asks for an acknowledgement: the kernel reports a
        // refused message whether asked or not, and one ack per message of a large batch
        // overflowed the socket's receive buffer (ENOBUFS, seen at 10,000 endpoints).
        let mut last = None;
        while let Some((kind, set, elements)) = pending.next_if(|_| buf.len() < BATCH_BYTES) {
            let start = buf.len();
            last = Some((start, seq));
            let mut flags = NLM_F_REQUEST;
            if kind == NFT_MSG_NEWSETELEM {
                flags |= NLM_F_CREATE;
            }
            header(
                &mut buf,
                (NFNL_SUBSYS_NFTABLES << 8) | kind,
                flags,
                seq,
                NFPROTO_INET,
                0,
            );
            attribute(&mut buf, NFTA_SET_ELEM_LIST_TABLE, &string(TABLE));
            attribute(&mut buf, NFTA_SET_ELEM_LIST_SET, &string(&set));
            nested(&mut buf, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                for element in &elements {
                    attribute(list, NFTA_LIST_ELEM | NLA_F_NESTED, element);
                }
            });
            finish(&mut buf, start);
            seq += 1;
        }
        if let Some((start, last_seq)) = last {
            // The flags are the header's bytes 6 and 7.
            let flags = u16::from_ne_bytes([buf[start + 6], buf[start + 7]]) | NLM_F_ACK;
            buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
            acked.push(last_seq);
        }
        let start = buf.len();
        header(
            &mut buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        finish(&mut buf, start);
        seq += 1;
        batches.push((buf, acked));
    }
    batches
}

fn io_error(what: &str, e: std::io::Error) -> FirewallError {
    FirewallError::Rejected(format!("netlink {what}: {e}"))
}

/// Sends the element operations of `ops` to the kernel of this thread's network namespace.
pub fn apply(ops: &[Op]) -> Result<(), FirewallError> {
    let messages = messages(ops);
    if messages.is_empty() {
        return Ok(());
    }
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| io_error("socket", e))?;
    socket
        .bind(&SocketAddr::new(0, 0))
        .map_err(|e| io_error("bind", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| io_error("connect", e))?;
    for (batch, acked) in batches(messages) {
        socket.send(&batch, 0).map_err(|e| io_error("send", e))?;
        wait_for_acks(&socket, acked)?;
    }
    Ok(())
}

/// Reads answers until every acknowledged message has one; the first error wins (the
/// kernel then aborts the whole batch).
fn wait_for_acks(socket: &Socket, mut waiting: Vec<u32>) -> Result<(), FirewallError> {
    let mut error = None;
    while !waiting.is_empty() {
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
                // The request's header follows the code: its sequence number says which.
                let seq = u32::from_ne_bytes(rest[28..32].try_into().expect("4 bytes"));
                waiting.retain(|s| *s != seq);
                if code != 0 && error.is_none() {
                    error = Some(FirewallError::Rejected(format!(
                        "the kernel refused a set element change: {}",
                        std::io::Error::from_raw_os_error(-code)
                    )));
                    // An error aborts the batch: nothing more will be acknowledged.
                    waiting.clear();
                }
            }
            rest = &rest[(len + 3) & !3..];
        }
    }
    error.map_or(Ok(()), Err)
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
        let elements: Vec<IpNet> = (0..20_000u32)
            .map(|n| IpNet::V4(ipnet::Ipv4Net::new((0x0a00_0000 + n).into(), 32).unwrap()))
            .collect();
        let ops = [Op::AddElements {
            set: "s".into(),
            elements,
        }];
        let batches = batches(messages(&ops));
        assert!(batches.len() > 1);
        assert!(batches
            .iter()
            .all(|(b, _)| b.len() < BATCH_BYTES + 64 * 1024));
        let mut messages = 0;
        for (batch, acked) in &batches {
            // Every message's flags and sequence number, in order.
            let mut headers = Vec::new();
            let mut rest = batch.as_slice();
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
            assert_eq!(acked, &asking);
        }
        assert_eq!(messages, 40_000usize.div_ceil(ELEMENTS_PER_MESSAGE));
    }
}
