//! Links and routes over rtnetlink, in the network namespace the process runs in.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The protocol number on every route the agent adds: how it recognises its own routes (and
/// leaves everyone else's alone) when it sweeps, and what BGP exports.
pub const ROUTE_PROTOCOL: u8 = calico_model::WORKLOAD_ROUTE_PROTOCOL;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("netlink: {0}")]
    Request(#[from] rtnetlink::Error),
}

impl NetlinkError {
    /// Whether the kernel refused because the object exists already (EEXIST).
    pub fn is_exists(&self) -> bool {
        matches!(self, NetlinkError::Request(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub up: bool,
}

/// Where a route the agent owns leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteTarget {
    /// A workload address, via its interface.
    Interface(u32),
    /// A whole IPAM block of this host: addresses in it that no workload has go nowhere, and
    /// BGP announces the block as one route.
    Blackhole,
}

/// A route the agent owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRoute {
    pub destination: IpNet,
    pub target: RouteTarget,
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

    /// The index and MAC of the link with this name.
    pub async fn link(&self, name: &str) -> Result<Option<(u32, String)>, NetlinkError> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(Some(message)) => {
                let mac = message.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(bytes) => Some(
                        bytes
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    ),
                    _ => None,
                });
                Ok(Some((message.header.index, mac.unwrap_or_default())))
            }
            Ok(None) => Ok(None),
            // The kernel answers "no such device" for a name it does not know.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every address with its link name and whether it is global (not link or host scope).
    pub async fn addresses(&self) -> Result<Vec<(String, IpNet, bool)>, NetlinkError> {
        let names: BTreeMap<u32, String> = self
            .links()
            .await?
            .into_iter()
            .map(|(n, l)| (l.index, n))
            .collect();
        let mut found = Vec::new();
        let mut stream = self.handle.address().get().execute();
        while let Some(message) = stream.try_next().await? {
            let address = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            let (Some(address), Some(name)) = (address, names.get(&message.header.index)) else {
                continue;
            };
            if let Ok(net) = IpNet::new(address, message.header.prefix_len) {
                let global =
                    message.header.scope == netlink_packet_route::address::AddressScope::Universe;
                found.push((name.clone(), net, global));
            }
        }
        Ok(found)
    }

    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        Ok(self
            .handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await?)
    }

    /// A veth whose `peer` end is created inside the network namespace open as `netns`,
    /// with `peer_mac`.
    pub async fn create_veth_into(
        &self,
        name: &str,
        peer: &str,
        peer_mac: [u8; 6],
        netns: &std::fs::File,
    ) -> Result<(), NetlinkError> {
        use netlink_packet_route::link::{InfoData, InfoVeth};
        use std::os::fd::AsRawFd;
        let peer = LinkUnspec::new_with_name(peer)
            .address(peer_mac.to_vec())
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let message = LinkVeth::new(name, "unused")
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        Ok(self.handle.link().add(message).execute().await?)
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        Ok(self.handle.link().del(index).execute().await?)
    }

    /// Moves a link into the network namespace open as `netns`.
    pub async fn move_to_netns(
        &self,
        index: u32,
        netns: &std::fs::File,
    ) -> Result<(), NetlinkError> {
        use std::os::fd::AsRawFd;
        let message = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        Ok(self.handle.link().set(message).execute().await?)
    }

    /// A permanent neighbour entry: `ip` on link `index` is at `mac` (added or replaced).
    pub async fn set_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        use netlink_packet_route::neighbour::NeighbourState;
        Ok(self
            .handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await?)
    }

    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        Ok(self.handle.link().set(message).execute().await?)
    }

    pub async fn rename(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .name(name.to_string())
            .build();
        Ok(self.handle.link().set(message).execute().await?)
    }

    /// Adds an address; IPv6 ones skip duplicate address detection (the address is ours alone,
    /// and DAD would keep it unusable for a second or two).
    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let mut request = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len());
        if net.addr().is_ipv6() {
            request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        Ok(request.replace().execute().await?)
    }

    /// Removes an address; false if the link did not have it.
    pub async fn delete_address(&self, index: u32, net: IpNet) -> Result<bool, NetlinkError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(net.addr())
            .execute();
        while let Some(message) = stream.try_next().await? {
            let matches = message.header.prefix_len == net.prefix_len()
                && message
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(a) if *a == net.addr()));
            if matches {
                self.handle.address().del(message).execute().await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `default via <gateway> dev <index>`, with the gateway reachable on the link itself.
    pub async fn add_default_route(&self, gateway: IpAddr, index: u32) -> Result<(), NetlinkError> {
        let message = match gateway {
            IpAddr::V4(gw) => {
                // The gateway first needs a link-scope route of its own.
                let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(gw, 32)
                    .output_interface(index)
                    .scope(RouteScope::Link)
                    .build();
                self.handle
                    .route()
                    .add(to_gateway)
                    .replace()
                    .execute()
                    .await?;
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gw)
                    .output_interface(index)
                    .build()
            }
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
        };
        Ok(self.handle.route().add(message).replace().execute().await?)
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

    /// Adds (or takes over) the route to `destination`.
    pub async fn add_route(
        &self,
        destination: IpNet,
        target: RouteTarget,
    ) -> Result<(), NetlinkError> {
        let protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
        let mut message = match destination {
            IpNet::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.addr(), net.prefix_len())
                .protocol(protocol)
                .build(),
            IpNet::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.addr(), net.prefix_len())
                .protocol(protocol)
                .build(),
        };
        match target {
            RouteTarget::Interface(index) => {
                message.attributes.push(RouteAttribute::Oif(index));
                if destination.addr().is_ipv4() {
                    message.header.scope = RouteScope::Link;
                }
            }
            RouteTarget::Blackhole => message.header.kind = RouteType::BlackHole,
        }
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
    let target = match message.header.kind {
        RouteType::BlackHole => RouteTarget::Blackhole,
        _ => RouteTarget::Interface(interface_index?),
    };
    Some(OwnedRoute {
        destination,
        target,
        message,
    })
}
