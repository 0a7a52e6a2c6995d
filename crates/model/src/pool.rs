//! IP pools: the address ranges workloads may use.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// IPAM hands out addresses in blocks of this prefix length; a pool must hold at least one.
pub const BLOCK_PREFIX_V4: u8 = 26;
pub const BLOCK_PREFIX_V6: u8 = 122;

/// The interface name Calico v1 stores for an IP-in-IP pool.
pub const IPIP_INTERFACE: &str = "tunl0";

/// The value at `/calico/v1/ipam/v<N>/pool/<cidr>`. Options are written only when set, as the
/// original did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpPool {
    pub cidr: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub masquerade: bool,
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub ipam: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

fn yes() -> bool {
    true
}

impl IpPool {
    pub fn new(cidr: IpNet) -> Self {
        IpPool {
            cidr,
            ipip: None,
            masquerade: false,
            ipam: true,
            disabled: false,
        }
    }

    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        let pool: IpPool = serde_json::from_str(json).map_err(|e| ModelError::Json {
            what: "IP pool",
            reason: e.to_string(),
        })?;
        validate_pool_cidr(&pool.cidr)?;
        if pool.cidr.addr().is_ipv6() && pool.ipip.is_some() {
            return Err(ModelError::invalid(
                "IP pool",
                pool.cidr.to_string(),
                "IPv6 pools cannot use IP-in-IP",
            ));
        }
        Ok(pool)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("pools always serialize")
    }

    /// Options as `pool show` lists them.
    pub fn options(&self) -> String {
        let mut options = Vec::new();
        if self.ipip.is_some() {
            options.push("ipip");
        }
        if self.masquerade {
            options.push("nat-outgoing");
        }
        if self.disabled {
            options.push("disabled");
        }
        options.join(",")
    }
}

pub fn block_prefix(cidr: &IpNet) -> u8 {
    if cidr.addr().is_ipv4() {
        BLOCK_PREFIX_V4
    } else {
        BLOCK_PREFIX_V6
    }
}

/// Whether `net` is exactly one IPAM block: a /26 (or /122) network address.
pub fn is_block(net: &IpNet) -> bool {
    net.prefix_len() == block_prefix(net) && net.trunc() == *net
}

/// A pool must be given as its network address and hold at least one IPAM block.
pub fn validate_pool_cidr(cidr: &IpNet) -> Result<(), ModelError> {
    if cidr.trunc() != *cidr {
        return Err(ModelError::invalid(
            "pool CIDR",
            cidr.to_string(),
            format!("host bits are set; did you mean {}?", cidr.trunc()),
        ));
    }
    let block = block_prefix(cidr);
    if cidr.prefix_len() > block {
        let family = if cidr.addr().is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        return Err(ModelError::invalid(
            "pool CIDR",
            cidr.to_string(),
            format!(
                "an {family} pool must have a prefix length of {block} or lower (one IPAM block)"
            ),
        ));
    }
    Ok(())
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The fewest CIDRs that cover `start..=end` exactly, as `pool range add` stores them.
pub fn range_to_cidrs(start: IpAddr, end: IpAddr) -> Result<Vec<IpNet>, ModelError> {
    let range = format!("{start} - {end}");
    match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) if s <= e => {
            Ok(Ipv4Subnets::new(s, e, 0).map(IpNet::V4).collect())
        }
        (IpAddr::V6(s), IpAddr::V6(e)) if s <= e => {
            Ok(Ipv6Subnets::new(s, e, 0).map(IpNet::V6).collect())
        }
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            Err(ModelError::invalid(
                "address range",
                range,
                "the start address must not be above the end address",
            ))
        }
        _ => Err(ModelError::invalid(
            "address range",
            range,
            "start and end must be of the same IP version",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn json_writes_only_options_that_are_set() {
        let mut pool = IpPool::new(net("192.168.0.0/16"));
        assert_eq!(pool.to_json(), r#"{"cidr":"192.168.0.0/16"}"#);
        pool.ipip = Some(IPIP_INTERFACE.into());
        pool.masquerade = true;
        assert_eq!(
            pool.to_json(),
            r#"{"cidr":"192.168.0.0/16","ipip":"tunl0","masquerade":true}"#
        );
        assert_eq!(IpPool::from_json(&pool.to_json()).unwrap(), pool);
        assert_eq!(pool.options(), "ipip,nat-outgoing");
    }

    #[test]
    fn pools_smaller_than_a_block_are_refused() {
        validate_pool_cidr(&net("10.0.0.0/26")).unwrap();
        assert!(validate_pool_cidr(&net("10.0.0.0/27")).is_err());
        validate_pool_cidr(&net("fd00::/122")).unwrap();
        assert!(validate_pool_cidr(&net("fd00::/123")).is_err());
        assert!(validate_pool_cidr(&net("10.0.0.1/24")).is_err());
    }

    #[test]
    fn overlap_is_containment_either_way() {
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.0.0/16")));
        assert!(overlaps(&net("10.1.0.0/16"), &net("10.0.0.0/8")));
        assert!(!overlaps(&net("10.0.0.0/16"), &net("10.1.0.0/16")));
    }

    #[test]
    fn ranges_become_minimal_cidrs() {
        let cidrs =
            range_to_cidrs("10.0.0.0".parse().unwrap(), "10.0.1.127".parse().unwrap()).unwrap();
        let text: Vec<String> = cidrs.iter().map(IpNet::to_string).collect();
        assert_eq!(text, ["10.0.0.0/24", "10.0.1.0/25"]);
        assert!(range_to_cidrs("10.0.0.9".parse().unwrap(), "10.0.0.1".parse().unwrap()).is_err());
        assert!(range_to_cidrs("10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()).is_err());
    }
}
