//! Workload endpoints: one interface of one workload on one host.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::names::{validate_hostname, validate_key_segment, validate_name};
use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    Active,
    Inactive,
}

/// Where an endpoint lives in the keyspace; also how users filter `endpoint show`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub host: String,
    pub orchestrator: String,
    pub workload: String,
    pub endpoint_id: String,
}

impl EndpointKey {
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_hostname(&self.host)?;
        validate_key_segment("orchestrator id", &self.orchestrator)?;
        validate_key_segment("workload id", &self.workload)?;
        validate_key_segment("endpoint id", &self.endpoint_id)
    }
}

/// The value stored at an endpoint key (Calico v1 field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub state: EndpointState,
    /// The host-side interface, `cali` + the first 11 characters of the endpoint id.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default)]
    pub profile_ids: Vec<String>,
    /// Early Calico v1 endpoints had a single profile; read into `profile_ids`, never written.
    #[serde(default, skip_serializing)]
    pub profile_id: Option<String>,
    #[serde(default)]
    pub ipv4_nets: Vec<IpNet>,
    #[serde(default)]
    pub ipv6_nets: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Linux limits interface names to 15 bytes.
pub const IFNAME_MAX: usize = 15;

/// The host-side interface name Calico gives an endpoint.
pub fn interface_name_for(endpoint_id: &str) -> String {
    let short: String = endpoint_id.chars().take(11).collect();
    format!("cali{short}")
}

impl Endpoint {
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_interface_name(&self.name)?;
        if let Some(mac) = &self.mac {
            validate_mac(mac)?;
        }
        for profile in &self.profile_ids {
            validate_name("profile name", profile)?;
        }
        check_family("ipv4_nets", &self.ipv4_nets, true)?;
        check_family("ipv6_nets", &self.ipv6_nets, false)?;
        if self.ipv4_gateway.is_some_and(|g| !g.is_ipv4()) {
            return Err(ModelError::invalid(
                "ipv4_gateway",
                format!("{:?}", self.ipv4_gateway),
                "not IPv4",
            ));
        }
        if self.ipv6_gateway.is_some_and(|g| !g.is_ipv6()) {
            return Err(ModelError::invalid(
                "ipv6_gateway",
                format!("{:?}", self.ipv6_gateway),
                "not IPv6",
            ));
        }
        Ok(())
    }

    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        let mut endpoint: Endpoint = serde_json::from_str(json).map_err(|e| ModelError::Json {
            what: "endpoint",
            reason: e.to_string(),
        })?;
        if let Some(legacy) = endpoint.profile_id.take() {
            if !endpoint.profile_ids.contains(&legacy) {
                endpoint.profile_ids.insert(0, legacy);
            }
        }
        endpoint.validate()?;
        Ok(endpoint)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("endpoints always serialize")
    }

    /// All addresses, v4 first.
    pub fn nets(&self) -> impl Iterator<Item = &IpNet> {
        self.ipv4_nets.iter().chain(self.ipv6_nets.iter())
    }
}

fn check_family(field: &'static str, nets: &[IpNet], v4: bool) -> Result<(), ModelError> {
    match nets.iter().find(|n| n.addr().is_ipv4() != v4) {
        Some(net) => Err(ModelError::invalid(
            field,
            net.to_string(),
            "wrong address family",
        )),
        None => Ok(()),
    }
}

pub fn validate_interface_name(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ModelError::invalid(
            "interface name",
            name,
            "use 1 to 15 letters, digits, '_', '.' or '-'",
        ))
    }
}

pub fn validate_mac(mac: &str) -> Result<(), ModelError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(ModelError::invalid(
            "MAC address",
            mac,
            "expected six hex pairs such as ee:ee:ee:ee:ee:ee",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"state":"active","name":"cali1234567890a","mac":"ee:ee:ee:ee:ee:ee","profile_ids":["PROF_A_C_E"],"ipv4_nets":["192.168.0.1/32"],"ipv6_nets":[]}"#;

    #[test]
    fn endpoint_json_round_trips() {
        let endpoint = Endpoint::from_json(SAMPLE).unwrap();
        assert_eq!(endpoint.to_json(), SAMPLE);
        assert_eq!(endpoint.nets().count(), 1);
    }

    #[test]
    fn the_legacy_single_profile_field_is_read() {
        let legacy = SAMPLE.replace(r#""profile_ids":["PROF_A_C_E"]"#, r#""profile_id":"P""#);
        let endpoint = Endpoint::from_json(&legacy).unwrap();
        assert_eq!(endpoint.profile_ids, ["P"]);
        assert!(!endpoint.to_json().contains("profile_id\""));
    }

    #[test]
    fn interface_names_are_cali_plus_eleven() {
        assert_eq!(interface_name_for("1234567890abcdef"), "cali1234567890a");
        assert_eq!(interface_name_for("1234567890abcdef").len(), IFNAME_MAX);
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for bad in [
            SAMPLE.replace("192.168.0.1/32", "fd00::1/128"),
            SAMPLE.replace("cali1234567890a", "cali1234567890ab"),
            SAMPLE.replace("ee:ee:ee:ee:ee:ee", "ee:ee"),
            SAMPLE.replace("PROF_A_C_E", "a b"),
            SAMPLE.replace("active", "running"),
            SAMPLE.replace(r#""ipv6_nets":[]"#, r#""ipv6_nets":[],"extra":1"#),
            "[]".to_string(),
        ] {
            assert!(Endpoint::from_json(&bad).is_err(), "{bad}");
        }
    }
}
