//! Where etcd is and how to talk to it, from the environment variables Calico has always used.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{DatastoreError, Result};

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub ca_cert: PathBuf,
    /// Client certificate and key, for etcd with client authentication.
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub tls: Option<Tls>,
    /// How long one request may take before etcd counts as unreachable.
    pub timeout: Duration,
    /// The most keys one request of a listing reads: a listing of any size is read in pages
    /// (all at one revision), so no gRPC message limit caps what the datastore can hold.
    pub page_size: usize,
    /// About how many bytes one page should carry: after the first page, each page's key
    /// count is sized from the last page's average entry, up to `page_size`.
    pub page_bytes: usize,
}

/// The most keys per page of a listing. etcd 3.4 walks every key from a page's start to the
/// end of the range to count them, for every page, so a listing costs the square of its
/// length over the page size: measured here at 120,000 keys, pages of 1,000 keys took 3.2 s,
/// 10,000 0.65 s, 50,000 0.38 s, and one unpaged read 0.42 s.
pub const DEFAULT_PAGE_SIZE: usize = 50_000;
/// The first page's key count, before the entries' size is known.
pub const FIRST_PAGE_KEYS: usize = 1000;
/// About 8 MiB per page: a few pages for a cluster of 100,000 endpoints, memory per page
/// bounded whatever the values' size.
pub const DEFAULT_PAGE_BYTES: usize = 8 << 20;

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            tls: None,
            timeout: Duration::from_secs(5),
            page_size: DEFAULT_PAGE_SIZE,
            page_bytes: DEFAULT_PAGE_BYTES,
        }
    }

    /// Reads `ETCD_ENDPOINTS` (comma-separated URLs), else the legacy `ETCD_AUTHORITY`
    /// (`host:port`, with `ETCD_SCHEME`), else `http://127.0.0.1:2379`; TLS files from
    /// `ETCD_CA_CERT_FILE`, `ETCD_CERT_FILE` and `ETCD_KEY_FILE`.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`Self::from_env`] with the variables supplied by `var`, so it can be tested.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let endpoints = match (var("ETCD_ENDPOINTS"), var("ETCD_AUTHORITY")) {
            (Some(list), _) => list
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|e| validate_url("ETCD_ENDPOINTS", e))
                .collect::<Result<Vec<_>>>()?,
            (None, Some(authority)) => {
                let scheme = var("ETCD_SCHEME").unwrap_or_else(|| "http".into());
                let url = format!("{}://{}", scheme.trim(), authority.trim());
                vec![validate_url("ETCD_AUTHORITY", &url)?]
            }
            (None, None) => vec![DEFAULT_ENDPOINT.to_string()],
        };
        if endpoints.is_empty() {
            return Err(DatastoreError::Config(
                "ETCD_ENDPOINTS names no endpoint; give comma-separated URLs such as http://127.0.0.1:2379".into(),
            ));
        }
        let tls = tls_from_vars(&var, &endpoints)?;
        Ok(EtcdConfig {
            tls,
            ..EtcdConfig::new(endpoints)
        })
    }

    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }
}

fn validate_url(var: &str, url: &str) -> Result<String> {
    let bad = |why: &str| {
        DatastoreError::Config(format!(
            "{var}: '{url}' {why}; expected http://HOST:PORT or https://HOST:PORT"
        ))
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("is not an http or https URL"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(bad("has a path"));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("has no port"))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("has no host"));
    }
    if port.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
        return Err(bad("has an invalid port"));
    }
    Ok(format!(
        "{}{authority}",
        if url.starts_with("https") {
            "https://"
        } else {
            "http://"
        }
    ))
}

fn tls_from_vars(
    var: &impl Fn(&str) -> Option<String>,
    endpoints: &[String],
) -> Result<Option<Tls>> {
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https != 0 && https != endpoints.len() {
        return Err(DatastoreError::Config(
            "ETCD_ENDPOINTS mixes http and https endpoints; use one scheme".into(),
        ));
    }
    let file = |name: &str| -> Result<Option<PathBuf>> {
        match var(name) {
            None => Ok(None),
            Some(path) => {
                let path = PathBuf::from(path);
                std::fs::metadata(&path).map_err(|e| {
                    DatastoreError::Config(format!("{name}: cannot read {}: {e}", path.display()))
                })?;
                Ok(Some(path))
            }
        }
    };
    let (ca, cert, key) = (
        file("ETCD_CA_CERT_FILE")?,
        file("ETCD_CERT_FILE")?,
        file("ETCD_KEY_FILE")?,
    );
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(DatastoreError::Config(
                "ETCD_CERT_FILE and ETCD_KEY_FILE must be given together".into(),
            ))
        }
    };
    match (https > 0, ca) {
        (true, Some(ca_cert)) => Ok(Some(Tls { ca_cert, identity })),
        (true, None) => Err(DatastoreError::Config(
            "https etcd endpoints need ETCD_CA_CERT_FILE (the CA that signed etcd's certificate)"
                .into(),
        )),
        (false, None) if identity.is_none() => Ok(None),
        (false, _) => Err(DatastoreError::Config(
            "ETCD_CA_CERT_FILE, ETCD_CERT_FILE and ETCD_KEY_FILE are for https endpoints; \
             set ETCD_ENDPOINTS to https://… URLs"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<EtcdConfig> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EtcdConfig::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_to_local_etcd() {
        assert_eq!(config(&[]).unwrap().endpoints, [DEFAULT_ENDPOINT]);
    }

    #[test]
    fn endpoints_win_over_the_legacy_authority() {
        let c = config(&[
            (
                "ETCD_ENDPOINTS",
                "http://10.0.0.1:2379, http://10.0.0.2:2379/",
            ),
            ("ETCD_AUTHORITY", "127.0.0.1:4001"),
        ])
        .unwrap();
        assert_eq!(
            c.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
    }

    #[test]
    fn legacy_authority_is_host_and_port() {
        let c = config(&[("ETCD_AUTHORITY", "127.0.0.1:4001")]).unwrap();
        assert_eq!(c.endpoints, ["http://127.0.0.1:4001"]);
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (vars, needle) in [
            (
                vec![("ETCD_ENDPOINTS", "127.0.0.1:2379")],
                "ETCD_ENDPOINTS: '127.0.0.1:2379'",
            ),
            (vec![("ETCD_ENDPOINTS", "http://h")], "has no port"),
            (vec![("ETCD_ENDPOINTS", "http://h:99999")], "invalid port"),
            (vec![("ETCD_ENDPOINTS", ",")], "names no endpoint"),
            (vec![("ETCD_AUTHORITY", "h:x")], "ETCD_AUTHORITY"),
            (
                vec![("ETCD_ENDPOINTS", "https://h:1")],
                "need ETCD_CA_CERT_FILE",
            ),
            (vec![("ETCD_ENDPOINTS", "https://h:1,http://h:2")], "mixes"),
            (
                vec![("ETCD_CA_CERT_FILE", "/nonexistent/ca.pem")],
                "cannot read",
            ),
        ] {
            let err = config(&vars).unwrap_err().to_string();
            assert!(err.contains(needle), "{vars:?}: {err}");
        }
    }

    #[test]
    fn tls_needs_https_and_both_halves_of_an_identity() {
        let dir = std::env::temp_dir();
        let f = dir.to_str().unwrap();
        let err = config(&[("ETCD_CA_CERT_FILE", f)]).unwrap_err().to_string();
        assert!(err.contains("are for https endpoints"), "{err}");
        let err = config(&[
            ("ETCD_ENDPOINTS", "https://h:1"),
            ("ETCD_CA_CERT_FILE", f),
            ("ETCD_CERT_FILE", f),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("together"), "{err}");
        let ok = config(&[("ETCD_ENDPOINTS", "https://h:1"), ("ETCD_CA_CERT_FILE", f)]).unwrap();
        assert!(ok.uses_tls());
    }
}
