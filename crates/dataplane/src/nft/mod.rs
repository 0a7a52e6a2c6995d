//! Policy in nftables: two `inet` tables owned by the agent (see [`COMPILED_TABLE`]), replaced
//! atomically.

mod compile;
mod expr;
mod firewall;
pub mod isolate;
pub mod names;
mod netlink;
pub mod ops;
mod render;
pub mod rule;

pub use firewall::{Firewall, FirewallError, NftCli, RecordingFirewall};
pub use ops::{delta_script, diff, script, Op};
pub use render::{render, Chain, Ruleset, Set};

/// The agent's table (family `inet`: one table for IPv4 and IPv6).
pub const TABLE: &str = "calico";

/// The table of compiled endpoints' inbound policy (see `compile.rs`). The kernel checks a
/// table whole (every chain reachable from its base chains) at each commit that adds a jump,
/// so the thousands of rules of a compiled endpoint live apart: a container add or a rule
/// change elsewhere on the host costs what a small table costs.
pub const COMPILED_TABLE: &str = "calico-compiled";

/// The bit of the packet mark a profile's `allow` sets. Felix's iptables dataplane used mark
/// bits the same way; this one is outside the bits Docker and kube-proxy use.
pub const ALLOW_MARK: u32 = 0x0010_0000;

/// The bit set on every packet our forward chain accepts, so that iptables' FORWARD chain
/// (where Docker sets policy DROP) can accept exactly those: see [`crate::iptables`].
pub const ACCEPTED_MARK: u32 = 0x0020_0000;

/// The bit set on a new flow to a compiled endpoint as our table accepts it: the compiled
/// table's forward chain, which comes next, decides only the flows that carry it.
pub const COMPILED_MARK: u32 = 0x0040_0000;

/// The table an object of ours is in, by its name.
pub fn table_of(name: &str) -> &'static str {
    match names::in_compiled_table(name) {
        true => COMPILED_TABLE,
        false => TABLE,
    }
}
