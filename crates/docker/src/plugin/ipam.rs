//! The IPAM driver: Calico's pools and blocks behind Docker's pools and addresses.
//!
//! Pool ids carry everything needed to serve them, because Docker does not ask for its pools
//! again after an engine restart: `CalicoPoolIPv4` / `CalicoPoolIPv6` (no `--subnet`: the
//! default pools, any enabled one) or the subnet's CIDR itself. Every pool's gateway is given
//! in the answer (`0.0.0.0/0`), so Docker takes no address for one: containers route through
//! 169.254.1.1 whatever the subnet. Addresses are /32 and /128.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use calico_ipam::{Ipam, Owner};
use calico_model::pool::{BLOCK_PREFIX_V4, BLOCK_PREFIX_V6};
use calico_workload::AddressRequest;
use ipnet::IpNet;

use super::api::{
    options, AddressGranted, AddressSpaces, Empty, IpamCapabilities, PoolGranted, PoolOnly,
    ReleaseAddress, RequestAddress, RequestPool,
};
use super::PluginError;
use crate::driver::Driver;

type Reply<T> = Result<T, PluginError>;

const LOCAL_SPACE: &str = "CalicoLocalAddressSpace";
const GLOBAL_SPACE: &str = "CalicoGlobalAddressSpace";
/// The address spaces Docker's requests name when they come through our IPAM.
pub(super) const ADDRESS_SPACES: [&str; 2] = [LOCAL_SPACE, GLOBAL_SPACE];
const DEFAULT_V4: &str = "CalicoPoolIPv4";
const DEFAULT_V6: &str = "CalicoPoolIPv6";

fn any(v4: bool) -> &'static str {
    if v4 {
        "0.0.0.0/0"
    } else {
        "::/0"
    }
}

impl Driver {
    pub(super) async fn ipam_capabilities(self: Arc<Self>, _: Empty) -> Reply<IpamCapabilities> {
        Ok(IpamCapabilities {
            requires_mac_address: false,
            requires_request_replay: false,
        })
    }

    pub(super) async fn address_spaces(self: Arc<Self>, _: Empty) -> Reply<AddressSpaces> {
        Ok(AddressSpaces {
            local_default_address_space: LOCAL_SPACE,
            global_default_address_space: GLOBAL_SPACE,
        })
    }

    pub(super) async fn request_pool(self: Arc<Self>, request: RequestPool) -> Reply<PoolGranted> {
        if !request.sub_pool.is_empty() {
            return Err(PluginError(format!(
                "--ip-range {} is not supported: give the range as --subnet (a Calico pool, or a \
                 CIDR inside one)",
                request.sub_pool
            )));
        }
        if let Some(given) = request.options.as_ref().filter(|o| !o.is_empty()) {
            let names: Vec<&str> = given.keys().map(String::as_str).collect();
            return Err(PluginError(format!(
                "Calico IPAM takes no options, but --ipam-opt {} was given",
                names.join(", --ipam-opt ")
            )));
        }
        let v4 = !request.v6;
        let (pool_id, pool) = if request.pool.is_empty() {
            let id = if v4 { DEFAULT_V4 } else { DEFAULT_V6 };
            (id.to_string(), any(v4).to_string())
        } else {
            let subnet = self.check_subnet(&request.pool, v4).await?;
            (subnet.to_string(), subnet.to_string())
        };
        Ok(PoolGranted {
            pool_id,
            pool,
            data: HashMap::from([(options::GATEWAY, any(v4).to_string())]),
        })
    }

    /// A `--subnet` must be an enabled Calico pool or lie inside one, and hold whole blocks.
    async fn check_subnet(&self, text: &str, v4: bool) -> Reply<IpNet> {
        let subnet: IpNet = text
            .parse()
            .map_err(|_| PluginError(format!("--subnet {text} is not a CIDR")))?;
        if subnet.addr().is_ipv4() != v4 {
            return Err(PluginError(format!(
                "--subnet {subnet} is not an IPv{} network",
                if v4 { 4 } else { 6 }
            )));
        }
        let (pools, _) = self.lifecycle.resources().pools(v4).await?;
        let enabled: Vec<String> = pools
            .iter()
            .filter(|p| !p.disabled)
            .map(|p| p.cidr.to_string())
            .collect();
        if !pools
            .iter()
            .any(|p| !p.disabled && p.cidr.contains(&subnet))
        {
            return Err(PluginError(format!(
                "--subnet {subnet} is not a Calico IP pool nor inside one (the enabled pools: {}); \
                 add it with 'calicoctl pool add {subnet}' or choose a subnet inside a pool",
                if enabled.is_empty() {
                    "none".to_string()
                } else {
                    enabled.join(", ")
                }
            )));
        }
        let block = if v4 { BLOCK_PREFIX_V4 } else { BLOCK_PREFIX_V6 };
        if subnet.prefix_len() > block {
            return Err(PluginError(format!(
                "--subnet {subnet} is smaller than one Calico IPAM block (/{block}); give a /{block} \
                 or larger"
            )));
        }
        Ok(subnet)
    }

    pub(super) async fn release_pool(self: Arc<Self>, _: PoolOnly) -> Reply<Empty> {
        // Pools are Calico's; Docker holding one or not changes nothing.
        Ok(Empty {})
    }

    /// Who holds the addresses the driver takes: one handle per host.
    fn owner(&self) -> Owner {
        Owner {
            handle: format!("libnetwork.{}", self.config.host),
            host: self.config.host.clone(),
            workload: crate::driver::ORCHESTRATOR.into(),
        }
    }

    pub(super) async fn request_address(
        self: Arc<Self>,
        request: RequestAddress,
    ) -> Reply<AddressGranted> {
        let kind = request
            .options
            .as_ref()
            .and_then(|o| o.get(options::REQUEST_ADDRESS_TYPE));
        if kind.map(String::as_str) == Some(options::GATEWAY) {
            return Err(PluginError(
                "--gateway is not supported: containers on calico networks route through \
                 169.254.1.1 (and fe80::1), their host"
                    .into(),
            ));
        }
        let wanted = match request.pool_id.as_str() {
            DEFAULT_V4 => AddressRequest::Auto { v4: true },
            DEFAULT_V6 => AddressRequest::Auto { v4: false },
            cidr => AddressRequest::Within(
                cidr.parse()
                    .map_err(|_| PluginError(format!("unknown pool id {cidr}")))?,
            ),
        };
        let wanted = match request.address.as_str() {
            "" => wanted,
            ip => AddressRequest::Explicit(
                ip.parse()
                    .map_err(|_| PluginError(format!("--ip {ip} is not an IP address")))?,
            ),
        };
        let net = self.lifecycle.allocate(&wanted, &self.owner()).await?;
        Ok(AddressGranted {
            address: net.to_string(),
            data: HashMap::new(),
        })
    }

    pub(super) async fn release_address(self: Arc<Self>, request: ReleaseAddress) -> Reply<Empty> {
        let text = request.address.split('/').next().unwrap_or_default();
        let ip: IpAddr = text
            .parse()
            .map_err(|_| PluginError(format!("{} is not an IP address", request.address)))?;
        // The gateway Docker never took from us.
        if ip.is_unspecified() {
            return Ok(Empty {});
        }
        self.release_if_ours(ip).await?;
        Ok(Empty {})
    }

    /// Releases an address this host's driver took, unless an endpoint uses it (Docker may
    /// ask twice, and the address may have gone to someone else in between).
    pub(crate) async fn release_if_ours(&self, ip: IpAddr) -> Reply<bool> {
        let ipam = Ipam::new(self.lifecycle.resources().shared_store());
        let ours = ipam
            .holder(ip)
            .await?
            .and_then(|(_, holder)| holder)
            .is_some_and(|h| h.handle_id.as_deref() == Some(self.owner().handle.as_str()));
        if !ours {
            tracing::info!(%ip, "not releasing an address this host's driver does not hold");
            return Ok(false);
        }
        let in_use = self
            .lifecycle
            .resources()
            .endpoints(&Default::default())
            .await?
            .iter()
            .any(|r| {
                r.endpoint
                    .as_ref()
                    .is_ok_and(|e| e.nets().any(|n| n.addr() == ip))
            });
        if in_use {
            tracing::warn!(%ip, "not releasing an address an endpoint uses");
            return Ok(false);
        }
        self.lifecycle.release(&[IpNet::from(ip)]).await?;
        Ok(true)
    }
}
