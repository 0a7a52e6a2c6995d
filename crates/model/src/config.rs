//! The settings `calicoctl config` knows: their CLI names, datastore keys and allowed values.
//! Values are stored as raw strings, as Calico v1 did.

use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/calico/v1/config/<Param>`: every host's agent.
    Felix,
    /// `/calico/bgp/v1/global/<name>`: every host's BGP daemon.
    Bgp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// One of these words (case-insensitive on input, stored as listed).
    OneOf(&'static [&'static str]),
    /// A TCP port, 1-65535.
    Port,
    /// A whole number of seconds, 0 or more.
    Seconds,
    /// A prefix of interface names: 1-10 letters or digits.
    InterfacePrefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigOption {
    pub scope: Scope,
    /// What users type: `loglevel`, or a Felix parameter name.
    pub name: &'static str,
    /// The last segment of the datastore key.
    pub key: &'static str,
    pub kind: ValueKind,
    /// What the agent uses when nothing is stored.
    pub default: &'static str,
}

const FELIX_LOG_LEVELS: &[&str] = &["none", "debug", "info", "warning", "error", "critical"];
const BGP_LOG_LEVELS: &[&str] = &["none", "debug", "info"];
const BOOLS: &[&str] = &["true", "false"];

const fn felix(name: &'static str, kind: ValueKind, default: &'static str) -> ConfigOption {
    ConfigOption {
        scope: Scope::Felix,
        name,
        key: name,
        kind,
        default,
    }
}

/// Every option `calicoctl config` accepts without `--force`.
pub const OPTIONS: &[ConfigOption] = &[
    ConfigOption {
        scope: Scope::Felix,
        name: "loglevel",
        key: "LogSeverityScreen",
        kind: ValueKind::OneOf(FELIX_LOG_LEVELS),
        default: "info",
    },
    felix(
        "LogSeverityScreen",
        ValueKind::OneOf(FELIX_LOG_LEVELS),
        "info",
    ),
    felix(
        "LogSeverityFile",
        ValueKind::OneOf(FELIX_LOG_LEVELS),
        "none",
    ),
    felix(
        "DefaultEndpointToHostAction",
        ValueKind::OneOf(&["DROP", "RETURN", "ACCEPT"]),
        "DROP",
    ),
    felix("InterfacePrefix", ValueKind::InterfacePrefix, "cali"),
    felix("PrometheusMetricsEnabled", ValueKind::OneOf(BOOLS), "false"),
    felix("PrometheusMetricsPort", ValueKind::Port, "9091"),
    felix("HealthPort", ValueKind::Port, "9099"),
    felix("ReportingIntervalSecs", ValueKind::Seconds, "30"),
    felix("ReportingTTLSecs", ValueKind::Seconds, "90"),
    ConfigOption {
        scope: Scope::Bgp,
        name: "loglevel",
        key: "loglevel",
        kind: ValueKind::OneOf(BGP_LOG_LEVELS),
        default: "none",
    },
];

pub fn lookup(scope: Scope, name: &str) -> Option<&'static ConfigOption> {
    OPTIONS.iter().find(|o| o.scope == scope && o.name == name)
}

pub fn names(scope: Scope) -> Vec<&'static str> {
    OPTIONS
        .iter()
        .filter(|o| o.scope == scope)
        .map(|o| o.name)
        .collect()
}

impl ConfigOption {
    /// Checks a value and returns the form to store.
    pub fn canonical_value(&self, value: &str) -> Result<String, ModelError> {
        let invalid =
            |reason: String| ModelError::invalid("value", value, format!("{} {reason}", self.name));
        match self.kind {
            ValueKind::OneOf(words) => words
                .iter()
                .find(|w| w.eq_ignore_ascii_case(value))
                .map(|w| w.to_string())
                .ok_or_else(|| invalid(format!("takes one of: {}", words.join(", ")))),
            ValueKind::Port => value
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .map(|p| p.to_string())
                .ok_or_else(|| invalid("takes a port from 1 to 65535".into())),
            ValueKind::Seconds => value
                .parse::<u32>()
                .map(|s| s.to_string())
                .map_err(|_| invalid("takes a whole number of seconds".into())),
            ValueKind::InterfacePrefix => {
                let ok = (1..=10).contains(&value.len())
                    && value.chars().all(|c| c.is_ascii_alphanumeric());
                ok.then(|| value.to_string())
                    .ok_or_else(|| invalid("takes 1 to 10 letters or digits".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loglevel_maps_to_felix_log_severity_screen() {
        let option = lookup(Scope::Felix, "loglevel").unwrap();
        assert_eq!(option.key, "LogSeverityScreen");
        assert_eq!(option.canonical_value("DEBUG").unwrap(), "debug");
        assert!(option.canonical_value("verbose").is_err());
        assert!(option.canonical_value("infoX").is_err());
    }

    #[test]
    fn bgp_loglevel_has_fewer_levels() {
        let option = lookup(Scope::Bgp, "loglevel").unwrap();
        assert!(option.canonical_value("warning").is_err());
        assert_eq!(option.canonical_value("info").unwrap(), "info");
    }

    #[test]
    fn typed_values_are_checked() {
        let port = lookup(Scope::Felix, "PrometheusMetricsPort").unwrap();
        assert!(port.canonical_value("0").is_err());
        assert_eq!(port.canonical_value("9091").unwrap(), "9091");
        let action = lookup(Scope::Felix, "DefaultEndpointToHostAction").unwrap();
        assert_eq!(action.canonical_value("accept").unwrap(), "ACCEPT");
        let prefix = lookup(Scope::Felix, "InterfacePrefix").unwrap();
        assert!(prefix.canonical_value("ca/li").is_err());
    }
}
