//! Policy in nftables: one `inet` table owned by the agent, replaced atomically.

mod compile;
mod expr;
mod firewall;
pub mod isolate;
pub mod names;
mod netlink;
pub mod ops;
mod render;
pub mod rule;

pub use compile::is_compiled;
pub use firewall::{Firewall, FirewallError, NftCli, RecordingFirewall};
pub use ops::{delta_script, diff, script, Op};
pub use render::{render, Chain, Ruleset, Set};

/// The agent's table (family `inet`: one table for IPv4 and IPv6).
pub const TABLE: &str = "calico";

/// The bit of the packet mark a profile's `allow` sets. Felix's iptables dataplane used mark
/// bits the same way; this one is outside the bits Docker and kube-proxy use.
pub const ALLOW_MARK: u32 = 0x0010_0000;

/// The bit set on every packet our forward chain accepts, so that iptables' FORWARD chain
/// (where Docker sets policy DROP) can accept exactly those: see [`crate::iptables`].
pub const ACCEPTED_MARK: u32 = 0x0020_0000;
