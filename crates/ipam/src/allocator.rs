//! Allocation and release, each a compare-and-swap transaction over one block and the handles
//! it touches.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use calico_datastore::resources::Resources;
use calico_datastore::{Compare, Datastore, DatastoreError, KeyValue, Op, Txn};
use calico_model::keys;
use calico_model::pool::{IpPool, BLOCK_PREFIX_V4, BLOCK_PREFIX_V6};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::block::{block_of, Attribute, Block, BlockError};
use crate::handle::HandleRecord;

/// What one attempt to take an address from a block came to.
enum Take {
    Got(IpAddr),
    /// Another writer got there first: read again and retry.
    Lost,
    /// No free address there.
    Nothing,
}

/// Enough for dozens of allocators on one block: each round, one of them wins.
const MAX_ATTEMPTS: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    #[error(transparent)]
    Resource(#[from] calico_datastore::resources::ResourceError),
    /// No enabled pool for this request; the message says what to do.
    #[error("{0}")]
    NoPool(String),
    #[error("{ip} is already in use by {holder}.")]
    InUse { ip: IpAddr, holder: String },
    #[error("{0}")]
    Exhausted(String),
    #[error("the IPAM data at {key} is invalid ({reason}); 'calicoctl ipam check' reports what is wrong")]
    Invalid { key: String, reason: String },
    #[error("gave up after {0} attempts: other allocators kept changing the same blocks")]
    Contended(u32),
}

pub type Result<T> = std::result::Result<T, IpamError>;

/// `/calico/ipam/v2/config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConfig {
    #[serde(default)]
    pub strict_affinity: bool,
    #[serde(default = "yes")]
    pub auto_allocate_blocks: bool,
}

fn yes() -> bool {
    true
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            strict_affinity: false,
            auto_allocate_blocks: true,
        }
    }
}

/// Who an allocation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub handle: String,
    pub host: String,
    pub workload: String,
}

impl Owner {
    fn attribute(&self) -> Attribute {
        Attribute {
            handle_id: Some(self.handle.clone()),
            secondary: BTreeMap::from([
                ("host".to_string(), self.host.clone()),
                ("workload".to_string(), self.workload.clone()),
            ]),
        }
    }
}

/// How an attribute is described in messages: the workload and host when known.
pub fn describe(attribute: &Attribute) -> String {
    match (
        attribute.secondary.get("workload"),
        attribute.secondary.get("host"),
    ) {
        (Some(w), Some(h)) => format!("workload {w} on host {h}"),
        _ => format!(
            "handle {}",
            attribute.handle_id.as_deref().unwrap_or("(none)")
        ),
    }
}

fn family(v4: bool) -> u8 {
    if v4 {
        4
    } else {
        6
    }
}

pub struct Ipam {
    store: Arc<dyn Datastore>,
}

impl Ipam {
    pub fn new(store: Arc<dyn Datastore>) -> Self {
        Ipam { store }
    }

    pub async fn config(&self) -> Result<IpamConfig> {
        match self.store.get(keys::IPAM_CONFIG).await? {
            None => Ok(IpamConfig::default()),
            Some(kv) => serde_json::from_str(&kv.value).map_err(|e| IpamError::Invalid {
                key: kv.key,
                reason: e.to_string(),
            }),
        }
    }

    /// The pools addresses may come from: enabled, and meant for IPAM.
    async fn enabled_pools(&self, v4: bool) -> Result<Vec<IpPool>> {
        let (pools, _) = Resources::new(self.store.clone()).pools(v4).await?;
        Ok(pools
            .into_iter()
            .filter(|p| !p.disabled && p.ipam)
            .collect())
    }

    /// One block with its revision; None when absent, an error when unreadable.
    async fn block(&self, cidr: &IpNet) -> Result<Option<(KeyValue, Block)>> {
        let Some(kv) = self.store.get(&keys::ipam_block(cidr)).await? else {
            return Ok(None);
        };
        match Block::from_json(&kv.value) {
            Ok(block) => Ok(Some((kv, block))),
            Err(e) => Err(IpamError::Invalid {
                key: kv.key,
                reason: e.to_string(),
            }),
        }
    }

    /// Every readable block of a family, and the keys of unreadable ones with why.
    pub async fn blocks(
        &self,
        v4: bool,
    ) -> Result<(Vec<(KeyValue, Block)>, Vec<(String, BlockError)>)> {
        let listing = self.store.list(&keys::ipam_blocks_prefix(v4)).await?;
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for kv in listing.kvs {
            match Block::from_json(&kv.value) {
                Ok(block) => good.push((kv, block)),
                Err(e) => bad.push((kv.key, e)),
            }
        }
        Ok((good, bad))
    }

    /// Writes a changed block and the handle counts it changed, if nobody else changed any of
    /// them since they were read. `claim_for`: the block is new, claimed by this host.
    /// `new_handles`: assume the handles do not exist yet (a new workload's first address)
    /// instead of reading them; if one does, the transaction fails and the caller retries
    /// without the assumption.
    async fn commit(
        &self,
        read: Option<&KeyValue>,
        block: &Block,
        handles: &BTreeMap<String, i64>,
        claim_for: Option<&str>,
        new_handles: bool,
    ) -> Result<bool> {
        let key = keys::ipam_block(&block.cidr);
        let mut compares = vec![match read {
            Some(kv) => Compare::ModRevision(key.clone(), kv.mod_revision),
            None => Compare::Absent(key.clone()),
        }];
        let mut ops = vec![Op::put(key, block.to_json())];
        if let Some(host) = claim_for {
            ops.push(Op::put(keys::ipam_host_block(host, &block.cidr), ""));
        }
        for (handle, delta) in handles {
            let key = keys::ipam_handle(handle);
            let current = match new_handles {
                true => None,
                false => self.store.get(&key).await?,
            };
            let mut record = current
                .as_ref()
                .and_then(|kv| HandleRecord::from_json(&kv.value))
                .unwrap_or_else(|| HandleRecord::new(handle));
            record.add(&block.cidr.to_string(), *delta);
            compares.push(match &current {
                Some(kv) => Compare::ModRevision(key.clone(), kv.mod_revision),
                None => Compare::Absent(key.clone()),
            });
            ops.push(if record.is_empty() {
                Op::delete(key)
            } else {
                Op::put(key, record.to_json())
            });
        }
        Ok(self.store.txn(Txn { compares, ops }).await?.succeeded)
    }

    /// Takes one address of `block` for `owner` and writes it back; `Nothing` if the block is
    /// full, `Lost` if another writer changed the block (or the handle) first.
    async fn take_one(
        &self,
        read: Option<&KeyValue>,
        mut block: Block,
        owner: &Owner,
        claim: bool,
        new_handle: bool,
    ) -> Result<Take> {
        let Some(&ip) = block.assign(1, &owner.attribute()).first() else {
            return Ok(Take::Nothing);
        };
        let one = BTreeMap::from([(owner.handle.clone(), 1)]);
        let claim_for = claim.then_some(owner.host.as_str());
        Ok(
            match self
                .commit(read, &block, &one, claim_for, new_handle)
                .await?
            {
                true => Take::Got(ip),
                false => Take::Lost,
            },
        )
    }

    /// One address of the family for `owner` on `owner.host`: from the host's blocks, else
    /// from a newly claimed block, else (without strict affinity) borrowed from any block.
    pub async fn auto_assign(&self, v4: bool, owner: &Owner) -> Result<IpAddr> {
        self.assign_from(v4, None, owner).await
    }

    /// Like `auto_assign`, but only from blocks inside `within`, which must lie in an enabled
    /// pool (or be one) and hold whole blocks: a Docker network's subnet, or a pool named on
    /// the command line.
    pub async fn auto_assign_within(&self, within: IpNet, owner: &Owner) -> Result<IpAddr> {
        let v4 = within.addr().is_ipv4();
        let prefix = if v4 { BLOCK_PREFIX_V4 } else { BLOCK_PREFIX_V6 };
        if within.prefix_len() > prefix {
            return Err(IpamError::NoPool(format!(
                "{within} is smaller than one IPAM block (/{prefix}); give a CIDR of /{prefix} or larger."
            )));
        }
        let pools = self.enabled_pools(v4).await?;
        if !pools.iter().any(|p| p.cidr.contains(&within)) {
            return Err(IpamError::NoPool(format!(
                "{within} is not an enabled Calico IP pool nor inside one; add it with 'calicoctl pool add {within}' or choose a CIDR inside a pool."
            )));
        }
        self.assign_from(v4, Some(within), owner).await
    }

    async fn assign_from(&self, v4: bool, within: Option<IpNet>, owner: &Owner) -> Result<IpAddr> {
        // A workload's first address is the usual case: try it without reading the handle.
        let mut new_handle = true;
        for _ in 0..MAX_ATTEMPTS {
            match self.try_auto_assign(v4, within, owner, new_handle).await? {
                Take::Got(ip) => return Ok(ip),
                Take::Lost => new_handle = false,
                Take::Nothing => return Err(self.exhausted(v4, within).await?),
            }
        }
        Err(IpamError::Contended(MAX_ATTEMPTS))
    }

    /// One pass of `auto_assign`, from what the datastore holds now.
    async fn try_auto_assign(
        &self,
        v4: bool,
        within: Option<IpNet>,
        owner: &Owner,
        new_handle: bool,
    ) -> Result<Take> {
        let pools = self.enabled_pools(v4).await?;
        if pools.is_empty() {
            return Err(IpamError::NoPool(format!(
                "there is no enabled IPv{} pool to take an address from; add one with 'calicoctl pool add'.",
                family(v4)
            )));
        }
        let in_pools = |cidr: &IpNet| {
            pools.iter().any(|p| p.cidr.contains(cidr)) && within.is_none_or(|w| w.contains(cidr))
        };

        // This host's own blocks first.
        let affine = self
            .store
            .list(&keys::ipam_host_blocks_prefix(&owner.host, v4))
            .await?;
        for cidr in affine
            .kvs
            .iter()
            .filter_map(|kv| keys::cidr_of_key(&kv.key))
        {
            if !in_pools(&cidr) {
                continue;
            }
            let Ok(Some((kv, block))) = self.block(&cidr).await else {
                continue;
            };
            match self
                .take_one(Some(&kv), block, owner, false, new_handle)
                .await?
            {
                Take::Nothing => {}
                done => return Ok(done),
            }
        }

        let config = self.config().await?;
        let (blocks, unreadable) = self.blocks(v4).await?;
        // A new block, claimed by this host.
        if config.auto_allocate_blocks {
            let existing: HashSet<IpNet> = blocks
                .iter()
                .map(|(_, b)| b.cidr)
                .chain(unreadable.iter().filter_map(|(k, _)| keys::cidr_of_key(k)))
                .collect();
            let prefix = if v4 { BLOCK_PREFIX_V4 } else { BLOCK_PREFIX_V6 };
            // Where new blocks may come from: each pool, or the part of `within` in it.
            let ranges = pools.iter().filter_map(|p| match within {
                None => Some(p.cidr),
                Some(w) if p.cidr.contains(&w) => Some(w),
                Some(w) if w.contains(&p.cidr) => Some(p.cidr),
                Some(_) => None,
            });
            let unclaimed = ranges
                .into_iter()
                .find_map(|r| r.subnets(prefix).ok()?.find(|c| !existing.contains(c)));
            if let Some(cidr) = unclaimed {
                let mut block = Block::new(cidr, &owner.host);
                block.strict_affinity = config.strict_affinity;
                return self.take_one(None, block, owner, true, new_handle).await;
            }
        }
        // Borrowing from other hosts' blocks.
        if !config.strict_affinity {
            for (kv, block) in blocks.into_iter().filter(|(_, b)| in_pools(&b.cidr)) {
                match self
                    .take_one(Some(&kv), block, owner, false, new_handle)
                    .await?
                {
                    Take::Nothing => {}
                    done => return Ok(done),
                }
            }
        }
        Ok(Take::Nothing)
    }

    /// Why no address could be had.
    async fn exhausted(&self, v4: bool, within: Option<IpNet>) -> Result<IpamError> {
        let pools = self.enabled_pools(v4).await?;
        let cidrs: Vec<String> = pools.iter().map(|p| p.cidr.to_string()).collect();
        let place = match within {
            Some(w) => format!("in {w}"),
            None => format!("in the enabled pools ({})", cidrs.join(", ")),
        };
        let why = if self.config().await?.strict_affinity {
            " (strict affinity: this host borrows from no other host's blocks)"
        } else {
            ""
        };
        Ok(IpamError::Exhausted(format!(
            "no free IPv{} address left {place}{why}; add a pool with 'calicoctl pool add' or release addresses.",
            family(v4),
        )))
    }

    /// This address for `owner`, if it lies in an enabled pool and is free.
    pub async fn assign_ip(&self, ip: IpAddr, owner: &Owner) -> Result<()> {
        let pools = self.enabled_pools(ip.is_ipv4()).await?;
        if !pools.iter().any(|p| p.cidr.contains(&ip)) {
            let cidrs: Vec<String> = pools.iter().map(|p| p.cidr.to_string()).collect();
            return Err(IpamError::NoPool(format!(
                "{ip} is not in any enabled IP pool ({}); choose an address in a pool or add one with 'calicoctl pool add'.",
                if cidrs.is_empty() { "there are none".to_string() } else { cidrs.join(", ") }
            )));
        }
        let attribute = owner.attribute();
        let one = BTreeMap::from([(owner.handle.clone(), 1)]);
        let cidr = block_of(ip);
        for _ in 0..MAX_ATTEMPTS {
            let (read, mut block, claim) = match self.block(&cidr).await? {
                Some((kv, block)) => (Some(kv), block, None),
                None => (
                    None,
                    Block::new(cidr, &owner.host),
                    Some(owner.host.as_str()),
                ),
            };
            if let Err(e) = block.assign_ip(ip, &attribute) {
                return Err(match e {
                    BlockError::InUse(ip) => IpamError::InUse {
                        ip,
                        holder: block.holder(ip).map(describe).unwrap_or_default(),
                    },
                    other => IpamError::Invalid {
                        key: keys::ipam_block(&cidr),
                        reason: other.to_string(),
                    },
                });
            }
            if self
                .commit(read.as_ref(), &block, &one, claim, false)
                .await?
            {
                return Ok(());
            }
        }
        Err(IpamError::Contended(MAX_ATTEMPTS))
    }

    /// Frees these addresses; returns those that were not allocated.
    pub async fn release(&self, ips: &[IpAddr]) -> Result<Vec<IpAddr>> {
        let mut by_block: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
        for ip in ips {
            by_block.entry(block_of(*ip)).or_default().push(*ip);
        }
        let mut not_allocated = Vec::new();
        for (cidr, ips) in by_block {
            not_allocated.extend(self.release_in_block(&cidr, &ips).await?);
        }
        Ok(not_allocated)
    }

    async fn release_in_block(&self, cidr: &IpNet, ips: &[IpAddr]) -> Result<Vec<IpAddr>> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((kv, mut block)) = self.block(cidr).await? else {
                return Ok(ips.to_vec());
            };
            let mut handles: BTreeMap<String, i64> = BTreeMap::new();
            let mut not_allocated = Vec::new();
            for ip in ips {
                match block.release(*ip) {
                    Some(attribute) => {
                        if let Some(handle) = attribute.handle_id {
                            *handles.entry(handle).or_default() -= 1;
                        }
                    }
                    None => not_allocated.push(*ip),
                }
            }
            if not_allocated.len() == ips.len() {
                return Ok(not_allocated);
            }
            if self
                .commit(Some(&kv), &block, &handles, None, false)
                .await?
            {
                return Ok(not_allocated);
            }
        }
        Err(IpamError::Contended(MAX_ATTEMPTS))
    }

    /// The addresses a handle holds, as its blocks record them.
    pub async fn addresses_of(&self, handle: &str) -> Result<Vec<IpAddr>> {
        let Some(kv) = self.store.get(&keys::ipam_handle(handle)).await? else {
            return Ok(Vec::new());
        };
        let Some(record) = HandleRecord::from_json(&kv.value) else {
            return Err(IpamError::Invalid {
                key: kv.key,
                reason: "not a handle".into(),
            });
        };
        let mut ips = Vec::new();
        for cidr in record.block.keys().filter_map(|c| c.parse::<IpNet>().ok()) {
            if let Some((_, block)) = self.block(&cidr).await? {
                ips.extend(
                    block
                        .allocated()
                        .filter(|(_, a)| a.handle_id.as_deref() == Some(handle))
                        .map(|(ip, _)| ip),
                );
            }
        }
        Ok(ips)
    }

    /// Who holds `ip`: its block, and the holder's attribute if allocated.
    pub async fn holder(&self, ip: IpAddr) -> Result<Option<(IpNet, Option<Attribute>)>> {
        let cidr = block_of(ip);
        Ok(self
            .block(&cidr)
            .await?
            .map(|(_, block)| (cidr, block.holder(ip).cloned())))
    }

    /// Takes a block away from its host: the affinity marker goes, and the block too if it
    /// holds no address (else it stays, with no affinity, for its holders to release).
    pub async fn release_affinity(&self, cidr: &IpNet) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((kv, mut block)) = self.block(cidr).await? else {
                return Ok(());
            };
            let mut ops = Vec::new();
            if let Some(host) = block.host() {
                ops.push(Op::delete(keys::ipam_host_block(host, cidr)));
            }
            if block.in_use() == 0 {
                ops.push(Op::delete(kv.key.clone()));
            } else {
                block.affinity = None;
                ops.push(Op::put(kv.key.clone(), block.to_json()));
            }
            let compares = vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
            if self.store.txn(Txn { compares, ops }).await?.succeeded {
                return Ok(());
            }
        }
        Err(IpamError::Contended(MAX_ATTEMPTS))
    }
}

#[cfg(test)]
mod tests;
