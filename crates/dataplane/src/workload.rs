//! Wiring a workload to its host, as `calicoctl container add` does: a veth whose host end is
//! `cali<11 characters of the endpoint id>` and whose other end, inside the workload's network
//! namespace, carries the workload's addresses and routes:
//!
//! ```text
//! workload:  <if> 192.168.0.1/32, fd80::1/128
//!            169.254.1.1 dev <if> scope link; default via 169.254.1.1 dev <if>
//!            default via fe80::1 dev <if>
//! host:      cali… up, fe80::1/64 (the IPv6 gateway); proxy ARP answers for 169.254.1.1
//! ```
//!
//! The agent adds the host's routes to the workload and its policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{run_in, NetnsError};

/// The workload's IPv4 gateway: answered by the host's proxy ARP.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The workload's IPv6 gateway: a link-local address on the host end of every veth.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("interface {0} already exists on this host")]
    Exists(String),
    #[error("interface {0} was not found in the workload")]
    NoInterface(String),
}

#[derive(Debug, Clone)]
pub struct Wiring {
    pub netns: PathBuf,
    pub host_interface: String,
    pub workload_interface: String,
    pub nets: Vec<IpNet>,
}

/// Creates and configures the veth; on failure removes what it made. Returns the MAC of the
/// workload's interface.
pub async fn wire(wiring: &Wiring) -> Result<String, WireError> {
    let host = Netlink::connect()?;
    if host.link(&wiring.host_interface).await?.is_some() {
        return Err(WireError::Exists(wiring.host_interface.clone()));
    }
    // A temporary name for the workload end: the final name may exist on the host.
    let temporary = format!("tmp{}", &wiring.host_interface[4..]);
    host.create_veth(&wiring.host_interface, &temporary).await?;
    match finish_wiring(&host, wiring, &temporary).await {
        Ok(mac) => Ok(mac),
        Err(e) => {
            if let Ok(Some((index, _))) = host.link(&wiring.host_interface).await {
                let _ = host.delete_link(index).await;
            }
            Err(e)
        }
    }
}

async fn finish_wiring(
    host: &Netlink,
    wiring: &Wiring,
    temporary: &str,
) -> Result<String, WireError> {
    let (host_index, _) = host
        .link(&wiring.host_interface)
        .await?
        .ok_or_else(|| WireError::Exists(wiring.host_interface.clone()))?;
    let (peer_index, _) = host
        .link(temporary)
        .await?
        .ok_or_else(|| WireError::NoInterface(temporary.to_string()))?;
    let netns = std::fs::File::open(&wiring.netns).map_err(|source| NetnsError::Open {
        path: wiring.netns.display().to_string(),
        source,
    })?;
    host.move_to_netns(peer_index, &netns).await?;
    host.add_address(
        host_index,
        IpNet::new(IpAddr::V6(GATEWAY_V6), 64).expect("a /64"),
    )
    .await?;
    host.set_up(host_index).await?;
    let (temporary, wiring) = (temporary.to_string(), wiring.clone());
    let path = wiring.netns.clone();
    let mac = in_workload(&path, move |nl| async move {
        let (index, mac) = nl
            .link(&temporary)
            .await?
            .ok_or(WireError::NoInterface(temporary))?;
        nl.rename(index, &wiring.workload_interface).await?;
        for net in &wiring.nets {
            nl.add_address(index, *net).await?;
        }
        nl.set_up(index).await?;
        if wiring.nets.iter().any(|n| n.addr().is_ipv4()) {
            nl.add_default_route(IpAddr::V4(GATEWAY_V4), index).await?;
        }
        if wiring.nets.iter().any(|n| n.addr().is_ipv6()) {
            nl.add_default_route(IpAddr::V6(GATEWAY_V6), index).await?;
        }
        Ok(mac)
    })
    .await?;
    Ok(mac)
}

/// Runs netlink work inside the workload's namespace (on a thread of its own).
async fn in_workload<T, F, Fut>(path: &Path, work: F) -> Result<T, WireError>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, WireError>>,
{
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        run_in(&path, || async move {
            let nl = Netlink::connect()?;
            work(nl).await
        })
    })
    .await
    .expect("netns worker")?
}

/// Deletes the veth (both ends go); false if the host end did not exist.
pub async fn unwire(host_interface: &str) -> Result<bool, WireError> {
    let host = Netlink::connect()?;
    match host.link(host_interface).await? {
        Some((index, _)) => {
            host.delete_link(index).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Adds (`add`) or removes addresses on the workload's interface.
pub async fn change_addresses(
    netns: &Path,
    interface: &str,
    nets: Vec<IpNet>,
    add: bool,
) -> Result<(), WireError> {
    let interface = interface.to_string();
    in_workload(netns, move |nl| async move {
        let (index, _) = nl
            .link(&interface)
            .await?
            .ok_or(WireError::NoInterface(interface))?;
        for net in nets {
            if add {
                nl.add_address(index, net).await?;
                let gateway = if net.addr().is_ipv4() {
                    IpAddr::V4(GATEWAY_V4)
                } else {
                    IpAddr::V6(GATEWAY_V6)
                };
                nl.add_default_route(gateway, index).await?;
            } else {
                nl.delete_address(index, net).await?;
            }
        }
        Ok(())
    })
    .await
}
