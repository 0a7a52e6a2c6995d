//! The Linux dataplane: turns a [`calico_felix::DesiredState`] into kernel state. Each driver
//! sits behind a small trait with a real implementation and a recording fake, so the agent's
//! logic can be tested without a kernel and the kernel parts can be tested in namespaces.

mod dataplane;
pub mod iptables;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod sysctl;
pub mod workload;

pub use dataplane::{Applied, Dataplane, DataplaneError, LinuxDataplane, RecordingDataplane};
pub use nft::{Firewall, NftCli, RecordingFirewall, TABLE};
