//! Calico for Docker.
//!
//! - [`engine`]: the host's Docker engine through its API: the containers `calicoctl container`
//!   names, and the networks of our driver.
//! - [`driver`]: the libnetwork driver calico-node serves with `--libnetwork`: a network driver
//!   and an IPAM driver, both `calico`, on `/run/docker/plugins/calico.sock` ([`plugin`]),
//!   networks shared through the datastore ([`networks`]), and clean-up of what went away while
//!   calico-node or the engine was down ([`reconcile`]). Every workload step goes through the
//!   one workload lifecycle (`calico-workload`).
//! - [`proxy`]: the Docker API proxy calico-node serves on `localhost:2377` (seeds 000, 002):
//!   containers created through it with `CALICO_IP` get Calico networking, through the same
//!   lifecycle; every other call passes through, attach and exec included.

pub mod driver;
pub mod engine;
pub mod metrics;
pub mod networks;
pub mod plugin;
pub mod proxy;
pub mod reconcile;

pub use driver::{Driver, DriverConfig};
pub use engine::{ContainerInfo, Engine, EngineError};
pub use metrics::PluginMetrics;
