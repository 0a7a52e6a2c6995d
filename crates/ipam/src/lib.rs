//! IP address management over the datastore, in libcalico's v2 keyspace.
//!
//! Pools are cut into blocks of 64 addresses. A host claims a block (affinity) and hands out
//! its addresses; when its blocks are full it claims another, and only when every pool is out
//! of unclaimed blocks does it borrow a free address from another host's block (unless strict
//! affinity is set). Every change is one etcd transaction that compares the revisions of the
//! block and of the handles it touches, retried when another allocator got there first: two
//! allocators can never take the same address, and a handle always counts what it holds.

mod allocator;
pub mod block;
mod handle;

pub use allocator::{describe, Ipam, IpamConfig, IpamError, Owner};
pub use block::{block_of, Attribute, Block, BlockError};
pub use handle::HandleRecord;
