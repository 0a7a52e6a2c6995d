//! A handle: what one holder (a workload) has, as counts per block, at
//! `/calico/ipam/v2/handle/<handle>`. Releasing a workload starts from here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandleRecord {
    pub id: String,
    /// Block CIDR → how many of its addresses this handle holds.
    pub block: BTreeMap<String, u64>,
}

impl HandleRecord {
    pub fn new(id: &str) -> Self {
        HandleRecord {
            id: id.to_string(),
            block: BTreeMap::new(),
        }
    }

    pub fn from_json(json: &str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("handles always serialize")
    }

    /// Adds `delta` addresses of `block` (negative: released); a count never goes below zero.
    pub fn add(&mut self, block: &str, delta: i64) {
        let count = self.block.entry(block.to_string()).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.block.remove(block);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_block() {
        let mut h = HandleRecord::new("calico-01.a");
        h.add("10.0.0.0/26", 2);
        h.add("10.0.0.0/26", -1);
        assert_eq!(h.block["10.0.0.0/26"], 1);
        h.add("10.0.0.0/26", -5);
        assert!(h.is_empty());
        h.add("10.0.0.64/26", 1);
        assert_eq!(HandleRecord::from_json(&h.to_json()), Some(h));
    }
}
