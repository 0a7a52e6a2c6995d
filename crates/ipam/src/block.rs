//! One allocation block: 64 addresses (/26 for IPv4, /122 for IPv6) and who holds each, in the
//! JSON libcalico stored at `/calico/ipam/v2/assignment/ipv<N>/block/<cidr>`.
//!
//! `allocations[i]` is the index of the attributes of the holder of address `i` (or null when
//! free); `unallocated` lists the free addresses in the order they are handed out (a released
//! address goes to the back, so it is reused last).

use std::collections::BTreeMap;
use std::net::IpAddr;

use calico_model::pool::{block_prefix, is_block};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Who holds an address: the handle it was allocated under, and free-form details (host,
/// workload) that `ipam info` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attribute {
    pub handle_id: Option<String>,
    #[serde(default)]
    pub secondary: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    pub cidr: IpNet,
    /// `host:<name>` for the host that claimed the block.
    pub affinity: Option<String>,
    #[serde(default)]
    pub strict_affinity: bool,
    pub allocations: Vec<Option<usize>>,
    pub unallocated: Vec<usize>,
    #[serde(default)]
    pub attributes: Vec<Attribute>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("invalid IPAM block: {0}")]
    Invalid(String),
    #[error("{0} is already allocated")]
    InUse(IpAddr),
    #[error("{0} is not in block {1}")]
    Outside(IpAddr, IpNet),
}

/// The block holding `ip`.
pub fn block_of(ip: IpAddr) -> IpNet {
    let host = IpNet::from(ip);
    IpNet::new(ip, block_prefix(&host))
        .expect("block prefixes are valid")
        .trunc()
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Block {
    /// A block claimed by `host`, every address free.
    pub fn new(cidr: IpNet, host: &str) -> Block {
        let size = block_size(&cidr);
        Block {
            cidr,
            affinity: Some(format!("host:{host}")),
            strict_affinity: false,
            allocations: vec![None; size],
            unallocated: (0..size).collect(),
            attributes: vec![],
        }
    }

    pub fn from_json(json: &str) -> Result<Block, BlockError> {
        let block: Block =
            serde_json::from_str(json).map_err(|e| BlockError::Invalid(e.to_string()))?;
        block.validate()?;
        Ok(block)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("blocks always serialize")
    }

    /// The invariants every stored block must keep; a block that breaks them is not used.
    fn validate(&self) -> Result<(), BlockError> {
        let bad = |why: String| Err(BlockError::Invalid(format!("{}: {why}", self.cidr)));
        if !is_block(&self.cidr) {
            return bad(format!(
                "a block is a /{} network",
                block_prefix(&self.cidr)
            ));
        }
        let size = block_size(&self.cidr);
        if self.allocations.len() != size {
            return bad(format!(
                "{} allocations for {size} addresses",
                self.allocations.len()
            ));
        }
        if self
            .allocations
            .iter()
            .flatten()
            .any(|&a| a >= self.attributes.len())
        {
            return bad("an allocation points at no attribute".into());
        }
        let mut free = vec![false; size];
        for &ordinal in &self.unallocated {
            if ordinal >= size || free[ordinal] || self.allocations[ordinal].is_some() {
                return bad(format!("unallocated entry {ordinal} is wrong"));
            }
            free[ordinal] = true;
        }
        if free.iter().filter(|f| **f).count()
            != self.allocations.iter().filter(|a| a.is_none()).count()
        {
            return bad("a free address is missing from unallocated".into());
        }
        Ok(())
    }

    pub fn host(&self) -> Option<&str> {
        self.affinity.as_deref()?.strip_prefix("host:")
    }

    pub fn free(&self) -> usize {
        self.unallocated.len()
    }

    pub fn in_use(&self) -> usize {
        self.allocations.len() - self.unallocated.len()
    }

    fn ordinal(&self, ip: IpAddr) -> Result<usize, BlockError> {
        if !self.cidr.contains(&ip) {
            return Err(BlockError::Outside(ip, self.cidr));
        }
        Ok((to_u128(ip) - to_u128(self.cidr.network())) as usize)
    }

    fn address(&self, ordinal: usize) -> IpAddr {
        let n = to_u128(self.cidr.network()) + ordinal as u128;
        match self.cidr {
            IpNet::V4(_) => IpAddr::V4((n as u32).into()),
            IpNet::V6(_) => IpAddr::V6(n.into()),
        }
    }

    /// The index of this attribute, added if no allocation uses it yet.
    fn attribute_index(&mut self, attribute: &Attribute) -> usize {
        match self.attributes.iter().position(|a| a == attribute) {
            Some(i) => i,
            None => {
                self.attributes.push(attribute.clone());
                self.attributes.len() - 1
            }
        }
    }

    /// Takes up to `n` free addresses for `attribute`, in the block's order.
    pub fn assign(&mut self, n: usize, attribute: &Attribute) -> Vec<IpAddr> {
        let take = n.min(self.unallocated.len());
        if take == 0 {
            return vec![];
        }
        let index = self.attribute_index(attribute);
        let ordinals: Vec<usize> = self.unallocated.drain(..take).collect();
        ordinals
            .into_iter()
            .map(|o| {
                self.allocations[o] = Some(index);
                self.address(o)
            })
            .collect()
    }

    /// Takes this address for `attribute`, if it is free.
    pub fn assign_ip(&mut self, ip: IpAddr, attribute: &Attribute) -> Result<(), BlockError> {
        let ordinal = self.ordinal(ip)?;
        if self.allocations[ordinal].is_some() {
            return Err(BlockError::InUse(ip));
        }
        let index = self.attribute_index(attribute);
        self.unallocated.retain(|&o| o != ordinal);
        self.allocations[ordinal] = Some(index);
        Ok(())
    }

    /// Who holds `ip`, if anyone.
    pub fn holder(&self, ip: IpAddr) -> Option<&Attribute> {
        let ordinal = self.ordinal(ip).ok()?;
        self.allocations[ordinal].map(|i| &self.attributes[i])
    }

    /// Frees `ip`; returns the attribute it was held under, or None if it was free.
    pub fn release(&mut self, ip: IpAddr) -> Option<Attribute> {
        let ordinal = self.ordinal(ip).ok()?;
        let index = self.allocations[ordinal].take()?;
        self.unallocated.push(ordinal);
        let attribute = self.attributes[index].clone();
        self.drop_unused_attribute(index);
        Some(attribute)
    }

    /// Removes an attribute no allocation points at any more, renumbering the later ones.
    fn drop_unused_attribute(&mut self, index: usize) {
        if self.allocations.contains(&Some(index)) {
            return;
        }
        self.attributes.remove(index);
        for a in self.allocations.iter_mut().flatten() {
            if *a > index {
                *a -= 1;
            }
        }
    }

    /// Every allocated address with its holder.
    pub fn allocated(&self) -> impl Iterator<Item = (IpAddr, &Attribute)> + '_ {
        self.allocations
            .iter()
            .enumerate()
            .filter_map(|(o, a)| a.map(|i| (self.address(o), &self.attributes[i])))
    }
}

fn block_size(cidr: &IpNet) -> usize {
    1usize << (cidr.max_prefix_len() - cidr.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(handle: &str) -> Attribute {
        Attribute {
            handle_id: Some(handle.into()),
            secondary: BTreeMap::new(),
        }
    }

    #[test]
    fn assigns_in_order_and_reuses_released_addresses_last() {
        let mut b = Block::new("192.168.0.64/26".parse().unwrap(), "h1");
        let got = b.assign(2, &attr("x"));
        assert_eq!(
            got,
            vec![
                "192.168.0.64".parse::<IpAddr>().unwrap(),
                "192.168.0.65".parse().unwrap()
            ]
        );
        assert_eq!(b.free(), 62);
        assert_eq!(b.release(got[0]).unwrap().handle_id.as_deref(), Some("x"));
        assert_eq!(b.release(got[0]), None, "already free");
        assert_eq!(b.unallocated.last(), Some(&0));
        assert_eq!(
            b.assign(1, &attr("y")),
            vec!["192.168.0.66".parse::<IpAddr>().unwrap()]
        );
        let json = b.to_json();
        assert_eq!(Block::from_json(&json).unwrap(), b);
        assert_eq!(b.host(), Some("h1"));
    }

    #[test]
    fn explicit_addresses_and_attributes_are_shared_then_dropped() {
        let mut b = Block::new("fd80:24e2:f998:72d6::/122".parse().unwrap(), "h1");
        let ip: IpAddr = "fd80:24e2:f998:72d6::3f".parse().unwrap();
        b.assign_ip(ip, &attr("a")).unwrap();
        assert_eq!(b.assign_ip(ip, &attr("b")), Err(BlockError::InUse(ip)));
        assert!(matches!(
            b.assign_ip("fd80::1".parse().unwrap(), &attr("a")),
            Err(BlockError::Outside(..))
        ));
        let more = b.assign(3, &attr("a"));
        assert_eq!(b.attributes.len(), 1, "one attribute for one holder");
        b.assign(1, &attr("b"));
        assert_eq!(b.attributes.len(), 2);
        b.release(ip);
        for ip in more {
            b.release(ip);
        }
        assert_eq!(
            b.attributes,
            vec![attr("b")],
            "a's attribute went, b's was renumbered"
        );
        assert_eq!(b.allocated().count(), 1);
        assert_eq!(b.allocated().next().unwrap().1, &attr("b"));
        Block::from_json(&b.to_json()).unwrap();
    }

    #[test]
    fn inconsistent_blocks_are_refused() {
        let good = Block::new("10.0.0.0/26".parse().unwrap(), "h");
        let mut dup = good.clone();
        dup.unallocated.push(0);
        let mut lost = good.clone();
        lost.unallocated.pop();
        let mut dangling = good.clone();
        dangling.allocations[5] = Some(0);
        dangling.unallocated.retain(|&o| o != 5);
        let mut wrong_size = good.clone();
        wrong_size.cidr = "10.0.0.0/25".parse().unwrap();
        for bad in [dup, lost, dangling, wrong_size] {
            assert!(matches!(
                Block::from_json(&bad.to_json()),
                Err(BlockError::Invalid(_))
            ));
        }
        assert!(Block::from_json(r#"{"cidr":"10.0.0.0/26"}"#).is_err());
        assert_eq!(
            block_of("10.0.0.77".parse().unwrap()),
            "10.0.0.64/26".parse().unwrap()
        );
    }
}
