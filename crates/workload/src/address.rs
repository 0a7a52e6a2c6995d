//! Addresses: what a request asks for, and taking it in IPAM.

use std::net::IpAddr;

use calico_datastore::resources::{EndpointFilter, Resources};
use calico_ipam::{Ipam, Owner};
use ipnet::IpNet;

use crate::{Result, WorkloadError};

/// What an `<IP>` argument (or a Docker IPAM request) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRequest {
    /// The next free address of a family, from this host's blocks first.
    Auto { v4: bool },
    /// The next free address inside a pool (or a subnet of one).
    Within(IpNet),
    /// This address.
    Explicit(IpAddr),
}

impl AddressRequest {
    /// `ipv4` (or `auto`), `ipv6`, a pool's CIDR, or an address.
    pub fn parse(text: &str) -> Result<AddressRequest> {
        Ok(match text {
            "ipv4" | "auto" => AddressRequest::Auto { v4: true },
            "ipv6" => AddressRequest::Auto { v4: false },
            cidr if cidr.contains('/') => {
                let net: IpNet = cidr.parse().map_err(|_| {
                    WorkloadError::Refused(format!(
                        "'{cidr}' is not a CIDR; give an IP address, a pool's CIDR, ipv4 or ipv6."
                    ))
                })?;
                if net.trunc() != net {
                    return Err(WorkloadError::Refused(format!(
                        "{cidr} has host bits set; did you mean {}?",
                        net.trunc()
                    )));
                }
                AddressRequest::Within(net)
            }
            ip => AddressRequest::Explicit(ip.parse().map_err(|_| {
                WorkloadError::Refused(format!(
                    "'{ip}' is not an IP address; give an IP address, a pool's CIDR, ipv4 or ipv6."
                ))
            })?),
        })
    }
}

/// Takes the address a request asks for, for `owner`.
pub async fn allocate(
    resources: &Resources,
    request: &AddressRequest,
    owner: &Owner,
) -> Result<IpNet> {
    let ipam = Ipam::new(resources.shared_store());
    let ip = match *request {
        AddressRequest::Auto { v4 } => ipam.auto_assign(v4, owner).await?,
        AddressRequest::Within(cidr) => ipam.auto_assign_within(cidr, owner).await?,
        AddressRequest::Explicit(ip) => {
            used_by_no_endpoint(resources, ip, &owner.host).await?;
            ipam.assign_ip(ip, owner).await?;
            ip
        }
    };
    Ok(IpNet::from(ip))
}

/// Gives addresses back to IPAM; addresses it never handed out are ignored.
pub async fn release(resources: &Resources, nets: &[IpNet]) -> Result<()> {
    let ips: Vec<IpAddr> = nets.iter().map(|n| n.addr()).collect();
    Ipam::new(resources.shared_store()).release(&ips).await?;
    Ok(())
}

/// An orchestrator may write endpoints without IPAM: an explicit address must not be one of
/// this host's endpoints' either (two of them with one address would fight over its route).
/// Only this host's: reading every endpoint of the cluster for each new workload cost half a
/// second at 100,000 endpoints; other hosts' addresses are IPAM's to guard, as in the original.
async fn used_by_no_endpoint(resources: &Resources, ip: IpAddr, host: &str) -> Result<()> {
    let here = EndpointFilter {
        host: Some(host.to_string()),
        ..Default::default()
    };
    for record in resources.endpoints(&here).await? {
        if record
            .endpoint
            .as_ref()
            .is_ok_and(|e| e.nets().any(|n| n.contains(&ip)))
        {
            return Err(WorkloadError::Refused(format!(
                "{ip} is already in use by endpoint {} (workload {} on host {}).",
                record.key.endpoint_id, record.key.workload, record.key.host
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_the_original_took_them() {
        assert_eq!(
            AddressRequest::parse("auto").unwrap(),
            AddressRequest::Auto { v4: true }
        );
        assert_eq!(
            AddressRequest::parse("ipv6").unwrap(),
            AddressRequest::Auto { v4: false }
        );
        assert_eq!(
            AddressRequest::parse("192.168.0.0/16").unwrap(),
            AddressRequest::Within("192.168.0.0/16".parse().unwrap())
        );
        assert_eq!(
            AddressRequest::parse("fd80::5").unwrap(),
            AddressRequest::Explicit("fd80::5".parse().unwrap())
        );
        for bad in ["192.168.0.1/16", "300.1.1.1", "10.0.0.0/33", "web"] {
            assert!(AddressRequest::parse(bad).is_err(), "{bad}");
        }
    }
}
