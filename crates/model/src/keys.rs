//! The datastore keyspace: where every resource lives, and the parse back from a key to what it
//! names (the agent's watch sees keys, not resources). The layout is Calico's v1 data model;
//! `docs/datastore.md` shows an example value for each key.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::endpoint::EndpointKey;

pub const ROOT: &str = "/calico/";
pub const V1: &str = "/calico/v1/";
pub const READY: &str = "/calico/v1/Ready";
pub const FELIX_CONFIG_PREFIX: &str = "/calico/v1/config/";
pub const HOSTS_PREFIX: &str = "/calico/v1/host/";
pub const PROFILES_PREFIX: &str = "/calico/v1/policy/profile/";
/// BGP's settings: global and per host.
pub const BGP_PREFIX: &str = "/calico/bgp/v1/";
pub const BGP_GLOBAL_PREFIX: &str = "/calico/bgp/v1/global/";
pub const BGP_HOSTS_PREFIX: &str = "/calico/bgp/v1/host/";

pub fn felix_config(param: &str) -> String {
    format!("{FELIX_CONFIG_PREFIX}{param}")
}

pub fn host_prefix(host: &str) -> String {
    format!("{HOSTS_PREFIX}{host}/")
}

pub fn host_bird_ip(host: &str) -> String {
    format!("{HOSTS_PREFIX}{host}/bird_ip")
}

pub fn host_config(host: &str, param: &str) -> String {
    format!("{HOSTS_PREFIX}{host}/config/{param}")
}

pub fn endpoint(key: &EndpointKey) -> String {
    format!(
        "{HOSTS_PREFIX}{}/workload/{}/{}/endpoint/{}",
        key.host, key.orchestrator, key.workload, key.endpoint_id
    )
}

/// The narrowest prefix that holds every endpoint matching the given filters. Filters apply
/// outermost first: a workload filter narrows the prefix only when host and orchestrator are
/// known too (the rest is left to the caller to filter).
pub fn endpoints_prefix(
    host: Option<&str>,
    orchestrator: Option<&str>,
    workload: Option<&str>,
) -> String {
    match (host, orchestrator, workload) {
        (Some(h), Some(o), Some(w)) => format!("{HOSTS_PREFIX}{h}/workload/{o}/{w}/endpoint/"),
        (Some(h), Some(o), None) => format!("{HOSTS_PREFIX}{h}/workload/{o}/"),
        (Some(h), None, _) => format!("{HOSTS_PREFIX}{h}/workload/"),
        (None, _, _) => HOSTS_PREFIX.to_string(),
    }
}

pub fn profile_prefix(name: &str) -> String {
    format!("{PROFILES_PREFIX}{name}/")
}

pub fn profile_tags(name: &str) -> String {
    format!("{PROFILES_PREFIX}{name}/tags")
}

pub fn profile_rules(name: &str) -> String {
    format!("{PROFILES_PREFIX}{name}/rules")
}

fn family(v4: bool) -> &'static str {
    if v4 {
        "4"
    } else {
        "6"
    }
}

/// `/calico/v1/ipam/v4/pool/` or `.../v6/pool/`.
pub fn pools_prefix(v4: bool) -> String {
    format!("{V1}ipam/v{}/pool/", family(v4))
}

/// A pool's key: its CIDR with `/` written as `-`, e.g. `192.168.0.0-16`.
pub fn pool(cidr: &IpNet) -> String {
    format!(
        "{}{}",
        pools_prefix(cidr.addr().is_ipv4()),
        cidr.to_string().replace('/', "-")
    )
}

// ---- IPAM (v2 keyspace, as libcalico wrote it) ----

pub const IPAM_PREFIX: &str = "/calico/ipam/v2/";
pub const IPAM_CONFIG: &str = "/calico/ipam/v2/config";

/// A CIDR as it appears in a key: `/` written as `-`.
fn cidr_segment(cidr: &IpNet) -> String {
    cidr.to_string().replace('/', "-")
}

/// `/calico/ipam/v2/assignment/ipv4/block/`: every IPv4 block.
pub fn ipam_blocks_prefix(v4: bool) -> String {
    format!("{IPAM_PREFIX}assignment/ipv{}/block/", family(v4))
}

pub fn ipam_block(cidr: &IpNet) -> String {
    format!(
        "{}{}",
        ipam_blocks_prefix(cidr.addr().is_ipv4()),
        cidr_segment(cidr)
    )
}

/// `/calico/ipam/v2/host/`: every host's claimed blocks.
pub const IPAM_HOSTS_PREFIX: &str = "/calico/ipam/v2/host/";

/// `/calico/ipam/v2/host/<host>/ipv4/block/`: the blocks a host has claimed.
pub fn ipam_host_blocks_prefix(host: &str, v4: bool) -> String {
    format!("{IPAM_HOSTS_PREFIX}{host}/ipv{}/block/", family(v4))
}

pub fn ipam_host_block(host: &str, cidr: &IpNet) -> String {
    format!(
        "{}{}",
        ipam_host_blocks_prefix(host, cidr.addr().is_ipv4()),
        cidr_segment(cidr)
    )
}

pub fn ipam_handle(handle: &str) -> String {
    format!("{IPAM_PREFIX}handle/{handle}")
}

/// The CIDR in the last segment of a block or affinity key.
pub fn cidr_of_key(key: &str) -> Option<IpNet> {
    let last = key.rsplit('/').next()?;
    let (addr, len) = last.rsplit_once('-')?;
    format!("{addr}/{len}").parse().ok()
}

pub fn bgp_global(name: &str) -> String {
    format!("{BGP_GLOBAL_PREFIX}{name}")
}

pub fn bgp_global_as_num() -> String {
    bgp_global("as_num")
}

pub fn bgp_global_node_mesh() -> String {
    bgp_global("node_mesh")
}

pub fn bgp_global_peers_prefix(v4: bool) -> String {
    format!("{BGP_GLOBAL_PREFIX}peer_v{}/", family(v4))
}

pub fn bgp_global_peer(ip: &IpAddr) -> String {
    format!("{}{ip}", bgp_global_peers_prefix(ip.is_ipv4()))
}

pub fn bgp_host(host: &str, name: &str) -> String {
    format!("{BGP_HOSTS_PREFIX}{host}/{name}")
}

pub fn bgp_host_peers_prefix(host: &str, v4: bool) -> String {
    format!("{BGP_HOSTS_PREFIX}{host}/peer_v{}/", family(v4))
}

pub fn bgp_host_peer(host: &str, ip: &IpAddr) -> String {
    format!("{}{ip}", bgp_host_peers_prefix(host, ip.is_ipv4()))
}

// ---- Docker networks (libnetwork), shared by every host ----

pub const DOCKER_NETWORKS_PREFIX: &str = "/calico/libnetwork/v1/network/";

pub fn docker_network(name: &str) -> String {
    format!("{DOCKER_NETWORKS_PREFIX}{name}")
}

/// The network a key under [`DOCKER_NETWORKS_PREFIX`] names.
pub fn docker_network_name(key: &str) -> Option<&str> {
    key.strip_prefix(DOCKER_NETWORKS_PREFIX)
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

/// `/calico/felix/v1/host/`: what each agent reports of itself (heartbeat, endpoint statuses).
pub const FELIX_HOSTS_PREFIX: &str = "/calico/felix/v1/host/";

/// Everything an agent reports of itself.
pub fn felix_host_prefix(host: &str) -> String {
    format!("{FELIX_HOSTS_PREFIX}{host}/")
}

pub fn felix_status(host: &str) -> String {
    format!("{FELIX_HOSTS_PREFIX}{host}/status")
}

/// Where an agent reports one of its endpoints' status.
pub fn felix_endpoint_status(host: &str, key: &EndpointKey) -> String {
    format!(
        "{FELIX_HOSTS_PREFIX}{host}/workload/{}/{}/endpoint/{}",
        key.orchestrator, key.workload, key.endpoint_id
    )
}

/// What a key under `/calico/v1/` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V1Key {
    Ready,
    FelixConfig(String),
    HostBirdIp(String),
    HostConfig { host: String, param: String },
    Endpoint(EndpointKey),
    ProfileTags(String),
    ProfileRules(String),
    Pool(IpNet),
}

/// Parses a key under `/calico/v1/`; `None` for keys we do not model (which callers ignore).
pub fn parse_v1(key: &str) -> Option<V1Key> {
    let rest = key.strip_prefix(V1)?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let owned = |s: &str| s.to_string();
    match parts.as_slice() {
        ["Ready"] => Some(V1Key::Ready),
        ["config", param] => Some(V1Key::FelixConfig(owned(param))),
        ["host", host, "bird_ip"] => Some(V1Key::HostBirdIp(owned(host))),
        ["host", host, "config", param] => Some(V1Key::HostConfig {
            host: owned(host),
            param: owned(param),
        }),
        ["host", host, "workload", orchestrator, workload, "endpoint", id] => {
            Some(V1Key::Endpoint(EndpointKey {
                host: owned(host),
                orchestrator: owned(orchestrator),
                workload: owned(workload),
                endpoint_id: owned(id),
            }))
        }
        ["policy", "profile", name, "tags"] => Some(V1Key::ProfileTags(owned(name))),
        ["policy", "profile", name, "rules"] => Some(V1Key::ProfileRules(owned(name))),
        ["ipam", version @ ("v4" | "v6"), "pool", cidr] => {
            let net: IpNet = cidr.replacen('-', "/", 1).parse().ok()?;
            (net.addr().is_ipv4() == (*version == "v4")).then_some(V1Key::Pool(net))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipam_keys_round_trip_their_cidr() {
        let block: IpNet = "192.168.0.64/26".parse().unwrap();
        assert_eq!(
            ipam_block(&block),
            "/calico/ipam/v2/assignment/ipv4/block/192.168.0.64-26"
        );
        assert_eq!(
            ipam_host_block("calico-01", &block),
            "/calico/ipam/v2/host/calico-01/ipv4/block/192.168.0.64-26"
        );
        let v6: IpNet = "fd80:24e2:f998:72d6::40/122".parse().unwrap();
        assert_eq!(cidr_of_key(&ipam_block(&v6)), Some(v6));
        assert_eq!(cidr_of_key(&ipam_host_block("h", &block)), Some(block));
        assert_eq!(
            cidr_of_key("/calico/ipam/v2/assignment/ipv4/block/junk"),
            None
        );
    }

    use super::*;

    fn ep() -> EndpointKey {
        EndpointKey {
            host: "calico-01".into(),
            orchestrator: "docker".into(),
            workload: "abc".into(),
            endpoint_id: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn an_agents_reports_live_under_its_own_prefix() {
        let key = EndpointKey {
            host: "h".into(),
            orchestrator: "docker".into(),
            workload: "w".into(),
            endpoint_id: "e".into(),
        };
        assert_eq!(
            felix_endpoint_status("h", &key),
            "/calico/felix/v1/host/h/workload/docker/w/endpoint/e"
        );
        for key in [felix_endpoint_status("h", &key), felix_status("h")] {
            assert!(key.starts_with(&felix_host_prefix("h")), "{key}");
        }
        assert!(ipam_host_blocks_prefix("h", true).starts_with(IPAM_HOSTS_PREFIX));
        assert!(
            BGP_HOSTS_PREFIX.starts_with(BGP_PREFIX) && BGP_GLOBAL_PREFIX.starts_with(BGP_PREFIX)
        );
    }

    #[test]
    fn keys_parse_back_to_what_they_name() {
        let pool_net: IpNet = "fd80:24e2:f998:72d6::/64".parse().unwrap();
        let cases = [
            (READY.to_string(), V1Key::Ready),
            (
                felix_config("LogSeverityScreen"),
                V1Key::FelixConfig("LogSeverityScreen".into()),
            ),
            (host_bird_ip("h"), V1Key::HostBirdIp("h".into())),
            (
                host_config("h", "P"),
                V1Key::HostConfig {
                    host: "h".into(),
                    param: "P".into(),
                },
            ),
            (endpoint(&ep()), V1Key::Endpoint(ep())),
            (profile_tags("p"), V1Key::ProfileTags("p".into())),
            (profile_rules("p"), V1Key::ProfileRules("p".into())),
            (pool(&pool_net), V1Key::Pool(pool_net)),
        ];
        for (key, expected) in cases {
            assert_eq!(parse_v1(&key), Some(expected), "{key}");
        }
    }

    #[test]
    fn the_documented_layout_holds() {
        assert_eq!(
            endpoint(&ep()),
            "/calico/v1/host/calico-01/workload/docker/abc/endpoint/0123456789abcdef"
        );
        assert_eq!(
            pool(&"192.168.0.0/16".parse().unwrap()),
            "/calico/v1/ipam/v4/pool/192.168.0.0-16"
        );
        assert_eq!(
            bgp_global_peer(&"fd00::1".parse().unwrap()),
            "/calico/bgp/v1/global/peer_v6/fd00::1"
        );
        assert_eq!(
            bgp_host_peer("h", &"10.0.0.1".parse().unwrap()),
            "/calico/bgp/v1/host/h/peer_v4/10.0.0.1"
        );
    }

    #[test]
    fn foreign_or_malformed_keys_are_not_modelled() {
        for key in [
            "/calico/v1/host/h/workload/docker/w/endpoint",
            "/calico/v1/policy/profile/p/labels",
            "/calico/v1/ipam/v4/pool/fd00::-64",
            "/calico/v1/ipam/v4/pool/bogus",
            "/calico/v1//config",
            "/other/v1/Ready",
        ] {
            assert_eq!(parse_v1(key), None, "{key}");
        }
    }

    #[test]
    fn endpoint_search_narrows_with_filters() {
        assert_eq!(endpoints_prefix(None, Some("docker"), None), HOSTS_PREFIX);
        assert_eq!(
            endpoints_prefix(Some("h"), None, Some("w")),
            "/calico/v1/host/h/workload/"
        );
        assert_eq!(
            endpoints_prefix(Some("h"), Some("docker"), Some("w")),
            "/calico/v1/host/h/workload/docker/w/endpoint/"
        );
    }
}
