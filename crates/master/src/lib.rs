//! The master role of seed 002 (calico-docker v0.0.3): one per cluster, started with
//! `calicoctl master --ip=<IP>`.
//!
//! - [`election`]: one master at a time, elected with an etcd lease on `/calico/master/ip`
//!   (which holds the master's address); a second one waits, and takes over when the first's
//!   lease ends.
//! - [`groups`]: the orchestrator's group keyspace (`/calico/network/group/…`) read into
//!   profiles.
//! - [`translate`]: kept live: the groups' profiles, their members' profile lists, and the
//!   legacy paths orchestrators find containers by (`/calico/host/<hostname>/…`).

pub mod election;
pub mod groups;
pub mod translate;

pub use translate::Translator;
