//! calico-node: the per-host agent. It keeps this host's kernel (policy, routes, links) in
//! step with the datastore, and reports what it did.
//!
//! - [`agent`]: the sync loop: full sync, then watch; bursts coalesced; resync on compaction
//!   or a lost watch; periodic drift repair. Nothing touches the kernel before the first full
//!   sync, so a restart never programs a half-known state (and the previous ruleset, still in
//!   the kernel, keeps policing traffic meanwhile).
//! - [`bird`]: this host's BIRD, configured from the datastore's BGP settings.
//! - [`status`]: the host heartbeat (under a lease) and per-endpoint status in the datastore.
//! - [`metrics`] and [`http`]: Prometheus metrics and a health check on a local port.
//! - [`logging`]: log output, with the level following `calicoctl config felix loglevel`.

pub mod agent;
pub mod bird;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod status;

pub use agent::{Agent, AgentConfig};
