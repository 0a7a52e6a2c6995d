//! Allocation and release, each a compare-and-swap transaction over one block and the handles
//! it touches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use calico_datastore::{Compare, Datastore, DatastoreError, KeyValue, Op, Txn};
use calico_model::keys;
use calico_model::pool::{IpPool, BLOCK_PREFIX_V4, BLOCK_PREFIX_V6};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::block::{block_of, Attribute, Block, BlockError};
use crate::handle::HandleRecord;

/// What one attempt to take an address from a block came to.
enum Take {
    /// The address, and the block as written with the revision it was written at.
    Got(IpAddr, Recent),
    /// The transaction failed: read again and retry. `contended`: because another allocator
    /// changed the block (not because the handle already existed).
    Lost { contended: bool },
    /// No free address there.
    Nothing,
}

/// What an allocator knows of the block it last took an address from, so that its next
/// allocation for the same host needs one transaction and no reads. The transaction checks
/// that the block, the host's affinity to it and the pool holding it are all unchanged since;
/// if any changed, the allocator reads everything again.
#[derive(Debug, Clone)]
struct Recent {
    block: Block,
    revision: i64,
    /// Whether the block is this host's own (a borrowed one is not used again unasked).
    affine: bool,
    /// The keys (affinity, pool) the choice of this block rested on, and their revisions.
    guards: Vec<(String, i64)>,
}

/// Which allocations may use a [`Recent`] block: the same host, family and range.
type RecentKey = (String, bool, Option<IpNet>);

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
    recent: std::sync::Mutex<HashMap<RecentKey, Recent>>,
}

impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam").finish_non_exhaustive()
    }
}

impl Ipam {
    pub fn new(store: Arc<dyn Datastore>) -> Self {
        Ipam {
            store,
            recent: Default::default(),
        }
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
        let pools = self.enabled_pools_read(v4).await?;
        Ok(pools.into_iter().map(|(pool, _)| pool).collect())
    }

    /// [`Self::enabled_pools`] with each pool's key and revision, sorted by CIDR.
    async fn enabled_pools_read(&self, v4: bool) -> Result<Vec<(IpPool, KeyValue)>> {
        let listing = self.store.list(&keys::pools_prefix(v4)).await?;
        let mut pools: Vec<(IpPool, KeyValue)> = listing
            .kvs
            .into_iter()
            .filter_map(|kv| Some((IpPool::from_json(&kv.value).ok()?, kv)))
            .filter(|(p, _)| !p.disabled && p.ipam)
            .collect();
        pools.sort_by_key(|(p, _)| p.cidr);
        Ok(pools)
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
    /// them since they were read (the block at revision `read`, or absent) and each of `guards`
    /// (key, revision) is unchanged; the revision it wrote at, if it did. `claim_for`: the block
    /// is new, claimed by this host. `new_handles`: assume the handles do not exist yet (a new
    /// workload's first address) instead of reading them; if one does, the transaction fails
    /// and the caller retries without the assumption.
    async fn commit(
        &self,
        read: Option<i64>,
        block: &Block,
        handles: &BTreeMap<String, i64>,
        claim_for: Option<&str>,
        new_handles: bool,
        guards: &[(String, i64)],
    ) -> Result<Option<i64>> {
        let key = keys::ipam_block(&block.cidr);
        let mut compares = vec![match read {
            Some(revision) => Compare::ModRevision(key.clone(), revision),
            None => Compare::Absent(key.clone()),
        }];
        compares.extend(
            guards
                .iter()
                .map(|(key, revision)| Compare::ModRevision(key.clone(), *revision)),
        );
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
        let outcome = self.store.txn(Txn { compares, ops }).await?;
        Ok(outcome.succeeded.then_some(outcome.revision))
    }

    /// Takes one address of `block` for `owner` and writes it back, if the block is still at
    /// revision `read` (absent for a new block) and each of `guards` unchanged; `Nothing` if
    /// the block is full, `Lost` if the transaction failed.
    async fn take_one(
        &self,
        read: Option<i64>,
        mut block: Block,
        owner: &Owner,
        claim: bool,
        new_handle: bool,
        guards: Vec<(String, i64)>,
    ) -> Result<Take> {
        let Some(&ip) = block.assign(1, &owner.attribute()).first() else {
            return Ok(Take::Nothing);
        };
        let one = BTreeMap::from([(owner.handle.clone(), 1)]);
        let claim_for = claim.then_some(owner.host.as_str());
        let written = self
            .commit(read, &block, &one, claim_for, new_handle, &guards)
            .await?;
        Ok(match written {
            Some(revision) => {
                let guards = match claim {
                    // The affinity was written by the same transaction.
                    true => guards
                        .into_iter()
                        .chain([(keys::ipam_host_block(&owner.host, &block.cidr), revision)])
                        .collect(),
                    false => guards,
                };
                Take::Got(
                    ip,
                    Recent {
                        block,
                        revision,
                        affine: true,
                        guards,
                    },
                )
            }
            None => {
                // Whether another allocator wrote the block, or only the handle existed.
                let now = self.store.get(&keys::ipam_block(&block.cidr)).await?;
                let contended = now.map(|kv| kv.mod_revision) != read;
                Take::Lost { contended }
            }
        })
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
        let recent_key: RecentKey = (owner.host.clone(), v4, within);
        // A workload's first address is the usual case: try it without reading the handle.
        let mut new_handle = true;
        let mut contended = false;
        let recent = self.recent().remove(&recent_key);
        for attempt in 0..MAX_ATTEMPTS {
            let take = match (&recent, attempt) {
                // The block this allocator used last, in one transaction.
                (Some(recent), 0) => {
                    self.take_one(
                        Some(recent.revision),
                        recent.block.clone(),
                        owner,
                        false,
                        new_handle,
                        recent.guards.clone(),
                    )
                    .await?
                }
                _ => {
                    self.try_auto_assign(v4, within, owner, new_handle, contended)
                        .await?
                }
            };
            match take {
                Take::Got(ip, recent) => {
                    if recent.affine {
                        self.recent().insert(recent_key, recent);
                    }
                    return Ok(ip);
                }
                Take::Lost { contended: lost } => {
                    new_handle = false;
                    // Losing the recent block once says little (anyone may have written it
                    // since); losing a block just read says another allocator is at work.
                    contended = lost && !(attempt == 0 && recent.is_some());
                }
                // A full recent block: look at everything else.
                Take::Nothing if attempt == 0 && recent.is_some() => {}
                Take::Nothing => return Err(self.exhausted(v4, within).await?),
            }
        }
        Err(IpamError::Contended(MAX_ATTEMPTS))
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, HashMap<RecentKey, Recent>> {
        // The map holds hints only: a panic elsewhere cannot leave it wrong, only stale.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One pass of `auto_assign`, from what the datastore holds now. `contended`: the last
    /// pass lost a race with another allocator for one of this host's blocks; rather than
    /// queue behind it, this pass claims a new block for the host when it can, so that
    /// allocators working for one host at once each end up with a block of their own.
    async fn try_auto_assign(
        &self,
        v4: bool,
        within: Option<IpNet>,
        owner: &Owner,
        new_handle: bool,
        contended: bool,
    ) -> Result<Take> {
        let pools = self.enabled_pools_read(v4).await?;
        if pools.is_empty() {
            return Err(IpamError::NoPool(format!(
                "there is no enabled IPv{} pool to take an address from; add one with 'calicoctl pool add'.",
                family(v4)
            )));
        }
        let pool_of = |cidr: &IpNet| {
            pools
                .iter()
                .find(|(p, _)| p.cidr.contains(cidr))
                .filter(|_| within.is_none_or(|w| w.contains(cidr)))
                .map(|(_, kv)| (kv.key.clone(), kv.mod_revision))
        };
        if contended {
            if let Some(take) = self
                .claim_new(v4, within, owner, &pools, new_handle, true)
                .await?
            {
                return Ok(take);
            }
        }

        // This host's own blocks first.
        let affine = self
            .store
            .list(&keys::ipam_host_blocks_prefix(&owner.host, v4))
            .await?;
        for affinity in &affine.kvs {
            let Some(cidr) = keys::cidr_of_key(&affinity.key) else {
                continue;
            };
            let Some(pool) = pool_of(&cidr) else {
                continue;
            };
            let Ok(Some((kv, block))) = self.block(&cidr).await else {
                continue;
            };
            let guards = vec![(affinity.key.clone(), affinity.mod_revision), pool];
            match self
                .take_one(
                    Some(kv.mod_revision),
                    block,
                    owner,
                    false,
                    new_handle,
                    guards,
                )
                .await?
            {
                Take::Nothing => {}
                done => return Ok(done),
            }
        }
        // A new block, claimed by this host.
        if let Some(take) = self
            .claim_new(v4, within, owner, &pools, new_handle, false)
            .await?
        {
            return Ok(take);
        }
        // Borrowing from other hosts' blocks.
        let config = self.config().await?;
        if !config.strict_affinity {
            let (blocks, _) = self.blocks(v4).await?;
            for (kv, block) in blocks
                .into_iter()
                .filter(|(_, b)| pool_of(&b.cidr).is_some())
            {
                match self
                    .take_one(
                        Some(kv.mod_revision),
                        block,
                        owner,
                        false,
                        new_handle,
                        vec![],
                    )
                    .await?
                {
                    // A borrowed block is not this host's: the next allocation looks again.
                    Take::Got(ip, mut recent) => {
                        recent.affine = false;
                        return Ok(Take::Got(ip, recent));
                    }
                    Take::Nothing => {}
                    done => return Ok(done),
                }
            }
        }
        Ok(Take::Nothing)
    }

    /// Claims a block of the pools (or of `within`) that no host has claimed, and takes an
    /// address from it; None if blocks may not be claimed or none is left. The first such
    /// block, unless `spread`: an allocator that just lost a race for a block picks one of
    /// the first few by its handle, so that allocators losing the same race do not all
    /// race again for the same next block (with 8 allocators they did, one after another).
    async fn claim_new(
        &self,
        v4: bool,
        within: Option<IpNet>,
        owner: &Owner,
        pools: &[(IpPool, KeyValue)],
        new_handle: bool,
        spread: bool,
    ) -> Result<Option<Take>> {
        let config = self.config().await?;
        if !config.auto_allocate_blocks {
            return Ok(None);
        }
        let (blocks, unreadable) = self.blocks(v4).await?;
        let existing: HashSet<IpNet> = blocks
            .iter()
            .map(|(_, b)| b.cidr)
            .chain(unreadable.iter().filter_map(|(k, _)| keys::cidr_of_key(k)))
            .collect();
        let prefix = if v4 { BLOCK_PREFIX_V4 } else { BLOCK_PREFIX_V6 };
        let choices = if spread { SPREAD_OVER } else { 1 };
        // Where new blocks may come from: each pool, or the part of `within` in it.
        let unclaimed = pools.iter().find_map(|(p, kv)| {
            let range = match within {
                None => p.cidr,
                Some(w) if p.cidr.contains(&w) => w,
                Some(w) if w.contains(&p.cidr) => p.cidr,
                Some(_) => return None,
            };
            let candidates: Vec<IpNet> = range
                .subnets(prefix)
                .ok()?
                .filter(|c| !existing.contains(c))
                .take(choices)
                .collect();
            let cidr = *candidates.get(spread_index(&owner.handle, candidates.len()))?;
            Some((cidr, (kv.key.clone(), kv.mod_revision)))
        });
        let Some((cidr, pool)) = unclaimed else {
            return Ok(None);
        };
        let mut block = Block::new(cidr, &owner.host);
        block.strict_affinity = config.strict_affinity;
        Ok(Some(
            self.take_one(None, block, owner, true, new_handle, vec![pool])
                .await?,
        ))
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
                .commit(
                    read.as_ref().map(|kv| kv.mod_revision),
                    &block,
                    &one,
                    claim,
                    false,
                    &[],
                )
                .await?
                .is_some()
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
                .commit(Some(kv.mod_revision), &block, &handles, None, false, &[])
                .await?
                .is_some()
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

/// How many of the first unclaimed blocks an allocator that lost a race picks among.
const SPREAD_OVER: usize = 16;

/// An index below `len` (0 if `len` is 0 or 1) that differs between handles: FNV-1a of the
/// handle. Stable, so a retry of the same allocation picks the same block.
fn spread_index(handle: &str, len: usize) -> usize {
    if len <= 1 {
        return 0;
    }
    let hash = handle.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % len as u64) as usize
}

#[cfg(test)]
mod tests;
