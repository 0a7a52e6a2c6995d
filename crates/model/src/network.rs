//! A Docker network of the `calico` driver, shared by every host through the datastore
//! (`/calico/libnetwork/v1/network/<name>`): Docker removed its cluster store in 23.0, so each
//! host's calico-node creates the same network in its own engine from this record. Everything is
//! keyed by the network's name and subnets, never by one engine's network id.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::names::{validate_hostname, validate_name};
use crate::ModelError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerNetwork {
    /// The network's name, and the name of its profile.
    pub name: String,
    /// Its `--subnet`s: Calico pools, or CIDRs inside one. None: the default pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<IpNet>,
    /// `--ipv6`: containers get an IPv6 address too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6: bool,
    /// The host whose engine it was created on first.
    pub created_by: String,
}

impl DockerNetwork {
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_name("network name", &self.name)?;
        validate_hostname(&self.created_by)?;
        for subnet in &self.subnets {
            if subnet.trunc() != *subnet {
                return Err(ModelError::invalid(
                    "subnet",
                    subnet.to_string(),
                    "it has host bits set",
                ));
            }
        }
        Ok(())
    }

    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        let network: DockerNetwork = serde_json::from_str(json).map_err(|e| ModelError::Json {
            what: "docker network",
            reason: e.to_string(),
        })?;
        network.validate()?;
        Ok(network)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("networks always serialize")
    }

    /// Whether another record describes the same network (the creator aside).
    pub fn same_as(&self, other: &DockerNetwork) -> bool {
        let mut mine = self.subnets.clone();
        let mut theirs = other.subnets.clone();
        mine.sort();
        theirs.sort();
        self.name == other.name && mine == theirs && self.ipv6 == other.ipv6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let json = r#"{"name":"client","subnets":["192.168.0.0/16"],"created_by":"calico-01"}"#;
        let network = DockerNetwork::from_json(json).unwrap();
        assert_eq!(network.to_json(), json);
        assert!(DockerNetwork::from_json(r#"{"name":"x","created_by":"h","extra":1}"#).is_err());
        assert!(DockerNetwork::from_json(r#"{"name":"-x","created_by":"h"}"#).is_err());
        assert!(DockerNetwork::from_json(
            r#"{"name":"x","subnets":["10.0.0.1/8"],"created_by":"h"}"#
        )
        .is_err());
        let other = DockerNetwork {
            created_by: "calico-02".into(),
            ..network.clone()
        };
        assert!(network.same_as(&other));
    }
}
