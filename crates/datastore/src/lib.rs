//! One interface to Calico's datastore, with two backends:
//!
//! - [`EtcdStore`]: etcd v3, what every binary uses (configured from `ETCD_*` variables);
//! - [`MemoryStore`]: revisions, watches and leases in memory, for unit tests of the code above.
//!
//! On top of the raw key-value interface, [`update`] gives read-modify-write with
//! compare-and-swap and retry, and [`resources`] reads and writes Calico's typed resources.

mod config;
mod error;
mod etcd;
mod memory;
pub mod resources;
mod store;
pub mod update;

pub use config::{EtcdConfig, DEFAULT_PAGE_SIZE};
pub use error::{DatastoreError, Result};
pub use etcd::EtcdStore;
pub use memory::MemoryStore;
pub use store::{
    Compare, Datastore, KeyValue, LeaseId, ListPage, Listing, Op, Revision, Txn, TxnOutcome, Watch,
    WatchEvent, MAX_TXN_OPS,
};

use std::sync::Arc;

/// Connects to the etcd named by the environment (see [`EtcdConfig::from_env`]).
pub async fn connect_from_env() -> Result<Arc<dyn Datastore>> {
    let config = EtcdConfig::from_env()?;
    Ok(Arc::new(EtcdStore::connect(config).await?))
}
