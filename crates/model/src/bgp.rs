//! BGP settings: AS numbers, peers and the node-to-node mesh switch.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

/// The AS every host uses unless told otherwise.
pub const DEFAULT_AS: u32 = 64511;

/// An AS number: plain (`64512`) or dotted (`1.10` = 1 * 65536 + 10), stored plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AsNumber(pub u32);

impl std::str::FromStr for AsNumber {
    type Err = ModelError;

    fn from_str(text: &str) -> Result<Self, ModelError> {
        let invalid = || {
            ModelError::invalid(
                "AS number",
                text,
                "expected 1 to 4294967295, or dotted notation such as 1.10",
            )
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let value = match text.split_once('.') {
            Some((high, low)) if digits(high) && digits(low) => {
                let high: u32 = high
                    .parse()
                    .ok()
                    .filter(|h| *h <= 0xffff)
                    .ok_or_else(invalid)?;
                let low: u32 = low
                    .parse()
                    .ok()
                    .filter(|l| *l <= 0xffff)
                    .ok_or_else(invalid)?;
                (high << 16) | low
            }
            None if digits(text) => text.parse().map_err(|_| invalid())?,
            _ => return Err(invalid()),
        };
        if value == 0 {
            return Err(ModelError::invalid("AS number", text, "AS 0 is reserved"));
        }
        Ok(AsNumber(value))
    }
}

impl std::fmt::Display for AsNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Calico v1 writes AS numbers in peer JSON as strings; numbers are accepted too.
impl Serialize for AsNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A BGP peer, global or per host: `{"ip":"192.0.2.10","as_num":"64555"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpPeer {
    pub ip: IpAddr,
    pub as_num: AsNumber,
}

impl BgpPeer {
    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        serde_json::from_str(json).map_err(|e| ModelError::Json {
            what: "BGP peer",
            reason: e.to_string(),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("peers always serialize")
    }
}

/// `/calico/bgp/v1/global/node_mesh`: whether all hosts peer with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMesh {
    pub enabled: bool,
}

impl NodeMesh {
    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        serde_json::from_str(json).map_err(|e| ModelError::Json {
            what: "node mesh setting",
            reason: e.to_string(),
        })
    }
}

pub fn parse_ip(what: &'static str, text: &str) -> Result<IpAddr, ModelError> {
    text.parse()
        .map_err(|_| ModelError::invalid(what, text, "expected an IPv4 or IPv6 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_numbers_plain_and_dotted() {
        assert_eq!("64512".parse::<AsNumber>().unwrap().0, 64512);
        assert_eq!("1.10".parse::<AsNumber>().unwrap().0, 65546);
        assert_eq!("4294967295".parse::<AsNumber>().unwrap().0, u32::MAX);
        for bad in [
            "0",
            "4294967296",
            "-1",
            "1.65536",
            "a",
            "",
            "1.",
            ".1",
            "1.2.3",
        ] {
            assert!(bad.parse::<AsNumber>().is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_store_as_strings_and_read_numbers_too() {
        let peer = BgpPeer {
            ip: "192.0.2.10".parse().unwrap(),
            as_num: AsNumber(64555),
        };
        assert_eq!(peer.to_json(), r#"{"ip":"192.0.2.10","as_num":"64555"}"#);
        let read = BgpPeer::from_json(r#"{"ip":"192.0.2.10","as_num":64555}"#).unwrap();
        assert_eq!(read, peer);
        assert!(BgpPeer::from_json(r#"{"ip":"192.0.2.300","as_num":1}"#).is_err());
    }
}
