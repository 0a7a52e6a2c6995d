//! Links and routes over rtnetlink, in the network namespace the process runs in.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// The protocol number on every route the agent adds: how it recognises its own routes (and
/// leaves everyone else's alone) when it sweeps. 80 is not assigned in rtnetlink's registry.
pub const ROUTE_PROTOCOL: u8 = 80;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("netlink: {0}")]
    Request(#[from] rtnetlink::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub up: bool,
}

/// A route the agent owns: a workload address via a workload interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRoute {
    pub destination: IpNet,
    pub interface_index: u32,
    message: RouteMessage,
}

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket; its reader runs on the current tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Every link, by name.
    pub async fn links(&self) -> Result<BTreeMap<String, Link>, NetlinkError> {
        let mut links = BTreeMap::new();
        let mut stream = self.handle.link().get().execute();
        while let Some(message) = stream.try_next().await? {
            let name = message.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
            if let Some(name) = name {
                let up = message.header.flags.contains(LinkFlags::Up);
                links.insert(
                    name,
                    Link {
                        index: message.header.index,
                        up,
                    },
                );
            }
        }
        Ok(links)
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        Ok(self.handle.link().set(message).execute().await?)
    }

    /// Routes in the main table carrying [`ROUTE_PROTOCOL`].
    pub async fn owned_routes(&self) -> Result<Vec<OwnedRoute>, NetlinkError> {
        let mut owned = Vec::new();
        for query in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut stream = self.handle.route().get(query).execute();
            while let Some(message) = stream.try_next().await? {
                if message.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
                    continue;
                }
                if let Some(route) = owned_route(message) {
                    owned.push(route);
                }
            }
        }
        Ok(owned)
    }

    /// Adds (or takes over) the route to `destination` via the interface.
    pub async fn add_route(
        &self,
        destination: IpNet,
        interface_index: u32,
    ) -> Result<(), NetlinkError> {
        let protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
        let message = match destination {
            IpNet::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.addr(), net.prefix_len())
                .output_interface(interface_index)
                .protocol(protocol)
                .scope(RouteScope::Link)
                .build(),
            IpNet::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.addr(), net.prefix_len())
                .output_interface(interface_index)
                .protocol(protocol)
                .build(),
        };
        Ok(self.handle.route().add(message).replace().execute().await?)
    }

    pub async fn delete_route(&self, route: &OwnedRoute) -> Result<(), NetlinkError> {
        Ok(self
            .handle
            .route()
            .del(route.message.clone())
            .execute()
            .await?)
    }
}

fn owned_route(message: RouteMessage) -> Option<OwnedRoute> {
    let mut destination = None;
    let mut interface_index = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                destination = Some(IpAddr::V4(*a))
            }
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                destination = Some(IpAddr::V6(*a))
            }
            RouteAttribute::Oif(index) => interface_index = Some(*index),
            _ => {}
        }
    }
    let destination = IpNet::new(destination?, message.header.destination_prefix_length).ok()?;
    Some(OwnedRoute {
        destination,
        interface_index: interface_index?,
        message,
    })
}
