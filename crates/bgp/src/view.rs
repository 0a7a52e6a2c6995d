//! The datastore's BGP settings, parsed and validated key by key. A bad value is skipped and
//! reported (BIRD keeps running with what is valid).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use calico_model::bgp::{AsNumber, BgpPeer, NodeMesh, DEFAULT_AS};
use calico_model::keys::{self, BGP_GLOBAL_PREFIX, BGP_HOSTS_PREFIX};
use calico_model::pool::is_block;

/// One host's BGP settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostBgp {
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
    pub as_num: Option<AsNumber>,
    pub peers: BTreeMap<IpAddr, AsNumber>,
    pub log_level: Option<String>,
    /// The IPAM blocks the host has claimed: announced whole.
    pub blocks: BTreeSet<IpNet>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BgpView {
    pub as_num: Option<AsNumber>,
    pub node_mesh: Option<bool>,
    pub peers: BTreeMap<IpAddr, AsNumber>,
    pub log_level: Option<String>,
    pub hosts: BTreeMap<String, HostBgp>,
    /// Keys whose values were ignored, with the reason.
    pub skipped: BTreeMap<String, String>,
}

const LOG_LEVELS: [&str; 3] = ["none", "debug", "info"];

/// The block named by an affinity key, if it is one.
fn block_in_key(key: &str) -> Option<IpNet> {
    keys::cidr_of_key(key).filter(is_block)
}

impl BgpView {
    /// The AS a host uses: its own, else the global default.
    pub fn as_of(&self, host: &str) -> AsNumber {
        self.hosts
            .get(host)
            .and_then(|h| h.as_num)
            .or(self.as_num)
            .unwrap_or(AsNumber(DEFAULT_AS))
    }

    pub fn mesh(&self) -> bool {
        self.node_mesh.unwrap_or(true)
    }

    /// Takes in one key (`None` value: deleted): BGP settings under `/calico/bgp/v1/`, and
    /// hosts' IPAM blocks under `/calico/ipam/v2/host/`. Other keys are ignored.
    pub fn apply(&mut self, key: &str, value: Option<&str>) {
        self.skipped.remove(key);
        if let Some(rest) = key.strip_prefix(keys::IPAM_HOSTS_PREFIX) {
            let Some((host, _)) = rest.split_once('/') else {
                return;
            };
            match block_in_key(key) {
                Some(block) => {
                    let entry = self.hosts.entry(host.to_string()).or_default();
                    if value.is_some() {
                        entry.blocks.insert(block);
                    } else {
                        entry.blocks.remove(&block);
                    }
                    if *entry == HostBgp::default() {
                        self.hosts.remove(host);
                    }
                }
                None => {
                    self.skipped
                        .insert(key.to_string(), "not an IPAM block (/26 or /122)".into());
                }
            }
            return;
        }
        if let Some(name) = key.strip_prefix(BGP_GLOBAL_PREFIX) {
            if let Err(reason) = self.apply_global(name, value) {
                self.skipped.insert(key.to_string(), reason);
            }
        } else if let Some(rest) = key.strip_prefix(BGP_HOSTS_PREFIX) {
            let Some((host, name)) = rest.split_once('/') else {
                return;
            };
            let entry = self.hosts.entry(host.to_string()).or_default();
            let result = apply_host(entry, name, value);
            if *entry == HostBgp::default() {
                self.hosts.remove(host);
            }
            if let Err(reason) = result {
                self.skipped.insert(key.to_string(), reason);
            }
        }
    }

    fn apply_global(&mut self, name: &str, value: Option<&str>) -> Result<(), String> {
        match name {
            "as_num" => {
                self.as_num = parse(value, |v| {
                    v.trim().parse::<AsNumber>().map_err(|e| e.to_string())
                })?
            }
            "node_mesh" => {
                self.node_mesh = parse(value, |v| {
                    NodeMesh::from_json(v)
                        .map(|m| m.enabled)
                        .map_err(|e| e.to_string())
                })?
            }
            "loglevel" => self.log_level = parse(value, log_level)?,
            _ => {
                if let Some(ip) = name
                    .strip_prefix("peer_v4/")
                    .or_else(|| name.strip_prefix("peer_v6/"))
                {
                    set_peer(&mut self.peers, ip, value)?;
                }
            }
        }
        Ok(())
    }
}

fn apply_host(host: &mut HostBgp, name: &str, value: Option<&str>) -> Result<(), String> {
    let ip = |v: &str| {
        v.trim()
            .parse::<IpAddr>()
            .map_err(|_| format!("'{v}' is not an IP address"))
    };
    match name {
        "ip_addr_v4" => {
            host.ipv4 = parse(value, |v| {
                ip(v).and_then(|a| {
                    if a.is_ipv4() {
                        Ok(a)
                    } else {
                        Err(format!("{a} is not IPv4"))
                    }
                })
            })?
        }
        "ip_addr_v6" => {
            host.ipv6 = parse(value, |v| {
                ip(v).and_then(|a| {
                    if a.is_ipv6() {
                        Ok(a)
                    } else {
                        Err(format!("{a} is not IPv6"))
                    }
                })
            })?
        }
        "as_num" => {
            host.as_num = parse(value, |v| {
                v.trim().parse::<AsNumber>().map_err(|e| e.to_string())
            })?
        }
        "loglevel" => host.log_level = parse(value, log_level)?,
        _ => {
            if let Some(peer_ip) = name
                .strip_prefix("peer_v4/")
                .or_else(|| name.strip_prefix("peer_v6/"))
            {
                set_peer(&mut host.peers, peer_ip, value)?;
            }
        }
    }
    Ok(())
}

/// A setting's new value: absent when deleted, or when invalid (with the reason).
fn parse<T>(
    value: Option<&str>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    value.map(parse).transpose()
}

fn log_level(value: &str) -> Result<String, String> {
    let level = value.trim().to_ascii_lowercase();
    if LOG_LEVELS.contains(&level.as_str()) {
        Ok(level)
    } else {
        Err(format!("'{value}' is not one of none, debug, info"))
    }
}

fn set_peer(
    peers: &mut BTreeMap<IpAddr, AsNumber>,
    key_ip: &str,
    value: Option<&str>,
) -> Result<(), String> {
    let ip: IpAddr = key_ip
        .parse()
        .map_err(|_| format!("'{key_ip}' is not an IP address"))?;
    peers.remove(&ip);
    if let Some(value) = value {
        let peer = BgpPeer::from_json(value).map_err(|e| e.to_string())?;
        if peer.ip != ip {
            return Err(format!(
                "the peer's ip {} does not match its key {ip}",
                peer.ip
            ));
        }
        peers.insert(ip, peer.as_num);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(keys: &[(&str, &str)]) -> BgpView {
        let mut view = BgpView::default();
        for (k, v) in keys {
            view.apply(k, Some(v));
        }
        view
    }

    #[test]
    fn settings_and_defaults() {
        let v = view(&[
            ("/calico/bgp/v1/global/as_num", "64512"),
            ("/calico/bgp/v1/host/h1/ip_addr_v4", "172.17.8.101"),
            ("/calico/bgp/v1/host/h2/ip_addr_v4", "172.17.8.102"),
            ("/calico/bgp/v1/host/h2/as_num", "65000"),
            (
                "/calico/bgp/v1/global/peer_v4/10.0.0.9",
                r#"{"ip":"10.0.0.9","as_num":"64600"}"#,
            ),
        ]);
        assert_eq!(v.as_of("h1"), AsNumber(64512));
        assert_eq!(v.as_of("h2"), AsNumber(65000));
        assert!(v.mesh());
        assert_eq!(v.peers.len(), 1);
        assert!(v.skipped.is_empty());
    }

    #[test]
    fn bad_values_are_skipped_and_deletes_undo() {
        let mut v = view(&[
            ("/calico/bgp/v1/host/h1/ip_addr_v4", "300.1.1.1"),
            ("/calico/bgp/v1/global/as_num", "banana"),
            (
                "/calico/bgp/v1/global/peer_v4/10.0.0.9",
                r#"{"ip":"10.0.0.8","as_num":"1"}"#,
            ),
            ("/calico/bgp/v1/global/node_mesh", "{"),
        ]);
        assert_eq!(v.skipped.len(), 4, "{:?}", v.skipped);
        assert!(v.hosts.is_empty() && v.peers.is_empty() && v.as_num.is_none());
        v.apply("/calico/bgp/v1/global/as_num", Some("64513"));
        v.apply(
            "/calico/bgp/v1/global/node_mesh",
            Some(r#"{"enabled":false}"#),
        );
        assert_eq!(v.skipped.len(), 2);
        assert!(!v.mesh());
        v.apply("/calico/bgp/v1/global/node_mesh", None);
        assert!(v.mesh());
    }
}
