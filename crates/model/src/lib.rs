//! Calico's data model: the resources users and orchestrators write, the legacy rule grammar of
//! `calicoctl`, the etcd keyspace those resources live in, and their validation.
//!
//! Nothing here does I/O: the datastore, the CLI and the agent all build on these types, so
//! that one definition of "a valid rule" or "the key of an endpoint" serves every part.

#[cfg(feature = "arbitrary")]
pub mod arbitrary;
pub mod bgp;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod grammar;
pub mod keys;
pub mod names;
pub mod network;
pub mod pool;
pub mod ports;
pub mod profile;
pub mod rule;

pub use error::ModelError;

/// The kernel route protocol number on every workload route the agent adds: the dataplane
/// sweeps only routes with it, and BGP exports only routes with it.
pub const WORKLOAD_ROUTE_PROTOCOL: u8 = 80;
