//! Wiring a workload to its host, in two halves, because Docker's libnetwork does the second
//! half itself:
//!
//! 1. [`create_host_side`]: a veth whose host end is `cali<11 characters of the endpoint id>`
//!    (up, holding `fe80::1/64`, the workload's IPv6 gateway) and whose other end, still on the
//!    host under a temporary name, has the MAC the workload will use.
//! 2. Docker moves that other end into the container's namespace and renames it; we give it
//!    the workload's addresses and routes.
//!
//! Without Docker, [`wire`] does both at once: the workload end is created inside the
//! workload's namespace (no move), with this layout:
//!
//! ```text
//! workload:  <if> 192.168.0.1/32, fd80::1/128
//!            169.254.1.1 dev <if> scope link; default via 169.254.1.1 dev <if>
//!            default via fe80::1 dev <if>
//! host:      cali… up, fe80::1/64 (the IPv6 gateway); proxy ARP answers for 169.254.1.1
//! ```
//!
//! Each half removes what it made when it fails. The agent adds the host's routes to the
//! workload and its policy.

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
    #[error("interface {0} already exists in the workload's namespace")]
    ExistsInWorkload(String),
    #[error("interface {0} was not found in the workload")]
    NoInterface(String),
}

/// The two ends of a workload's veth while both are still on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSide {
    /// The host end, `cali…`, which stays.
    pub host_interface: String,
    /// The workload end's temporary name on the host, until it is moved into the workload.
    pub peer: String,
    /// The workload end's MAC.
    pub mac: [u8; 6],
}

impl HostSide {
    /// The ends for a host interface name: the peer is `tmp` + the same 11 characters.
    pub fn named(host_interface: &str, mac: [u8; 6]) -> HostSide {
        let suffix: String = host_interface.chars().skip(4).collect();
        HostSide {
            host_interface: host_interface.to_string(),
            peer: format!("tmp{suffix}"),
            mac,
        }
    }
}

/// `aa:bb:…` for a MAC.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Creates the veth with its host end configured and the other end left on the host for
/// Docker to move (libnetwork); on failure removes what it made.
pub async fn create_host_side(side: &HostSide) -> Result<(), WireError> {
    let host = Netlink::connect()?;
    for name in [&side.host_interface, &side.peer] {
        if host.link(name).await?.is_some() {
            return Err(WireError::Exists(name.clone()));
        }
    }
    host.create_veth(&side.host_interface, &side.peer).await?;
    let configured = async {
        let (peer_index, _) = host
            .link(&side.peer)
            .await?
            .ok_or_else(|| WireError::NoInterface(side.peer.clone()))?;
        host.set_mac(peer_index, side.mac).await?;
        configure_host_end(&host, &side.host_interface).await
    }
    .await;
    if configured.is_err() {
        let _ = unwire(&side.host_interface).await;
    }
    configured
}

/// The host end of a veth: up, holding the workload's IPv6 gateway.
async fn configure_host_end(host: &Netlink, host_interface: &str) -> Result<(), WireError> {
    let (index, _) = host
        .link(host_interface)
        .await?
        .ok_or_else(|| WireError::NoInterface(host_interface.to_string()))?;
    host.add_address(
        index,
        IpNet::new(IpAddr::V6(GATEWAY_V6), 64).expect("a /64"),
    )
    .await?;
    host.set_up(index).await?;
    Ok(())
}

/// A whole workload interface, as `calicoctl container add` makes it.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub netns: PathBuf,
    pub side: HostSide,
    pub workload_interface: String,
    pub nets: Vec<IpNet>,
}

/// Creates the veth with its workload end already in the workload's namespace, under its
/// final name and MAC, then gives it its addresses and routes; on failure the whole veth
/// goes. Made in place because moving a link between namespaces waits for the kernel to
/// quiesce (20-30 ms measured here, most of a `container add`), and creating it there
/// costs nothing more than creating it on the host.
pub async fn wire(wiring: &Wiring) -> Result<(), WireError> {
    let host = Netlink::connect()?;
    let side = &wiring.side;
    if host.link(&side.host_interface).await?.is_some() {
        return Err(WireError::Exists(side.host_interface.clone()));
    }
    let netns = std::fs::File::open(&wiring.netns).map_err(|source| NetnsError::Open {
        path: wiring.netns.display().to_string(),
        source,
    })?;
    host.create_veth_into(
        &side.host_interface,
        &wiring.workload_interface,
        side.mac,
        &netns,
    )
    .await
    .map_err(|e| match e.is_exists() {
        // The host end was absent, so the name taken is the workload's.
        true => WireError::ExistsInWorkload(wiring.workload_interface.clone()),
        false => e.into(),
    })?;
    let configured = async {
        configure_host_end(&host, &side.host_interface).await?;
        let (name, nets) = (wiring.workload_interface.clone(), wiring.nets.clone());
        in_workload(&wiring.netns, move |nl| async move {
            let (index, _) = nl.link(&name).await?.ok_or(WireError::NoInterface(name))?;
            for net in &nets {
                nl.add_address(index, *net).await?;
            }
            nl.set_up(index).await?;
            if nets.iter().any(|n| n.addr().is_ipv4()) {
                nl.add_default_route(IpAddr::V4(GATEWAY_V4), index).await?;
            }
            if nets.iter().any(|n| n.addr().is_ipv6()) {
                nl.add_default_route(IpAddr::V6(GATEWAY_V6), index).await?;
            }
            Ok(())
        })
        .await
    }
    .await;
    if configured.is_err() {
        let _ = unwire(&side.host_interface).await;
    }
    configured
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
