//! Port lists of rules: single ports and ranges.
//!
//! In the datastore a single port is a JSON number and a range is the string `"low:high"`, as in
//! Calico's v1 data model. On the command line ranges may also be written `low-high`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            low: port,
            high: port,
        }
    }

    pub fn new(low: u16, high: u16) -> Result<Self, ModelError> {
        if low > high {
            return Err(ModelError::invalid(
                "port range",
                format!("{low}:{high}"),
                "the first port must not be larger than the second",
            ));
        }
        Ok(PortRange { low, high })
    }

    pub fn is_single(&self) -> bool {
        self.low == self.high
    }
}

fn parse_port(text: &str, whole: &str) -> Result<u16, ModelError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ModelError::invalid(
            "port",
            whole,
            "ports are numbers from 0 to 65535, ranges are written low:high",
        ));
    }
    text.parse::<u16>()
        .map_err(|_| ModelError::invalid("port", whole, "ports are numbers from 0 to 65535"))
}

impl FromStr for PortRange {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.split_once([':', '-']) {
            Some((low, high)) => PortRange::new(parse_port(low, s)?, parse_port(high, s)?),
            None => Ok(PortRange::single(parse_port(s, s)?)),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}:{}", self.low, self.high)
        }
    }
}

/// Parses a comma-separated list such as `80,443,8000:8080`.
pub fn parse_port_list(text: &str) -> Result<Vec<PortRange>, ModelError> {
    text.split(',').map(PortRange::from_str).collect()
}

pub fn format_port_list(ports: &[PortRange]) -> String {
    ports
        .iter()
        .map(PortRange::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_single() {
            serializer.serialize_u16(self.low)
        } else {
            serializer.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => u16::try_from(n)
                .map(PortRange::single)
                .map_err(|_| serde::de::Error::custom(format!("port {n} is outside 0-65535"))),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_ports_and_ranges_parse_and_print() {
        let ports = parse_port_list("80,443,8000:8080,9000-9010").unwrap();
        assert_eq!(format_port_list(&ports), "80,443,8000:8080,9000:9010");
    }

    #[test]
    fn bad_ports_are_refused() {
        for bad in ["65536", "-1", "a", "", "80,", "10:5", "1:2:3", "8o"] {
            assert!(parse_port_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_form_is_number_or_colon_string() {
        let ports = parse_port_list("22,1000:2000").unwrap();
        let json = serde_json::to_string(&ports).unwrap();
        assert_eq!(json, r#"[22,"1000:2000"]"#);
        let back: Vec<PortRange> = serde_json::from_str(r#"[22,"1000:2000","7"]"#).unwrap();
        assert_eq!(format_port_list(&back), "22,1000:2000,7");
        assert!(serde_json::from_str::<Vec<PortRange>>("[70000]").is_err());
    }
}
