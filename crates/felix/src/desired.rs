//! What one host's dataplane should look like.

use std::collections::{BTreeMap, BTreeSet};

use calico_model::endpoint::EndpointKey;
use calico_model::profile::ProfileRules;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What happens to traffic from a workload to its own host (DefaultEndpointToHostAction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostAction {
    /// Dropped.
    #[default]
    Drop,
    /// Goes on to the host's own firewall rules (our policy does not decide).
    Return,
    /// Accepted.
    Accept,
}

impl HostAction {
    pub fn parse(value: &str) -> Option<HostAction> {
        match value.to_ascii_uppercase().as_str() {
            "DROP" => Some(HostAction::Drop),
            "RETURN" => Some(HostAction::Return),
            "ACCEPT" => Some(HostAction::Accept),
            _ => None,
        }
    }
}

/// Agent settings, merged from global and per-host config (the host's value wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub endpoint_to_host: HostAction,
    pub interface_prefix: String,
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoint_to_host: HostAction::Drop,
            interface_prefix: "cali".into(),
            log_level: "info".into(),
        }
    }
}

/// The policy of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointPolicy {
    /// Its profiles, in order (profiles that do not exist yet contribute no rules).
    Profiles(Vec<String>),
    /// Its policy cannot be known (the reason says why): drop all of its traffic.
    DropAll(String),
}

/// A workload endpoint on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// Where the endpoint lives in the datastore (its status is reported next to it).
    pub key: EndpointKey,
    /// The host-side interface.
    pub interface: String,
    pub mac: Option<String>,
    pub ipv4: BTreeSet<Ipv4Net>,
    pub ipv6: BTreeSet<Ipv6Net>,
    pub policy: EndpointPolicy,
}

/// IPv4 and IPv6 networks, none inside another (as nftables interval sets need them): a tag's
/// members, or the IP pools.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetSet {
    pub ipv4: BTreeSet<Ipv4Net>,
    pub ipv6: BTreeSet<Ipv6Net>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Active endpoints on this host, by interface name.
    pub endpoints: BTreeMap<String, LocalEndpoint>,
    /// The rules of every profile a local endpoint uses (and that exists and is valid).
    pub profiles: BTreeMap<String, ProfileRules>,
    /// Every tag those profiles' rules refer to, with its members.
    pub tags: BTreeMap<String, NetSet>,
    /// Every IP pool: traffic between pools is never masqueraded.
    pub pools: NetSet,
    /// The pools with nat-outgoing: their workloads' traffic to anywhere outside all pools
    /// leaves with this host's address.
    pub masquerade: NetSet,
    /// The IPAM blocks this host has claimed: each is routed (and announced) whole.
    pub blocks: BTreeSet<IpNet>,
    /// Pools that ask for IP-in-IP, which the agent does not program.
    pub ipip_pools: BTreeSet<IpNet>,
    pub config: Config,
    /// Keys whose values were ignored, with the reason.
    pub skipped: BTreeMap<String, String>,
}

/// How a tag's set changed since the changes were last taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagChange {
    /// The set appeared, went, or must be made whole again: read it from the state (absent
    /// there means delete it).
    Whole,
    /// Only these members joined or left.
    Members { added: NetSet, removed: NetSet },
}

/// What changed in the desired state since the changes were last taken: the dataplane
/// programs these parts and leaves the rest alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Endpoints (by interface) added, changed or removed, or whose chains must be rendered
    /// again because a profile they list appeared or went.
    pub endpoints: BTreeSet<String>,
    /// Profiles whose rules changed, or that appeared or went.
    pub profiles: BTreeSet<String>,
    pub tags: BTreeMap<String, TagChange>,
    /// The pool sets (`pools`, `masquerade`, `ipip_pools`).
    pub pools: bool,
    pub blocks: bool,
    /// The agent's settings: everything may render differently.
    pub config: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}
