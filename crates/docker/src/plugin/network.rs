//! The network driver: networks, and endpoints joining containers to them.
//!
//! - CreateNetwork checks what was asked (no driver options, Calico IPAM) and remembers the
//!   network by Docker's id; its name is learnt from the engine once Docker has stored it,
//!   and then the network is recorded in the datastore for every host (`networks.rs`).
//! - CreateEndpoint learns the container's addresses (already taken by our IPAM driver) and
//!   answers with a MAC of ours; Join makes the `cali…` interface, writes the endpoint (profile:
//!   the network's name) and tells Docker to move the other end in as `eth0` with a /32 and
//!   /128, gateways 169.254.1.1 and fe80::1 through link routes.
//! - Leave and DeleteEndpoint remove the interface and the endpoint; the addresses go back
//!   when Docker calls ReleaseAddress.

use std::net::IpAddr;
use std::sync::Arc;

use calico_dataplane::workload::{format_mac, unwire, GATEWAY_V4, GATEWAY_V6};
use calico_datastore::resources::EndpointRecord;
use calico_model::endpoint::EndpointKey;
use calico_workload::{mac_for, Addresses};
use ipnet::IpNet;

use super::api::{
    self, Capabilities, CreateEndpoint, CreateNetwork, CreatedInterface, Empty, EndpointCreated,
    EndpointOnly, InterfaceName, Join, Joined, NetworkOnly, OperInfo, StaticRoute,
};
use super::PluginError;
use crate::driver::{Driver, KnownNetwork, PendingEndpoint, ORCHESTRATOR};
use crate::plugin::ipam::ADDRESS_SPACES;

type Reply<T> = Result<T, PluginError>;

impl Driver {
    pub(super) async fn capabilities(self: Arc<Self>, _: Empty) -> Reply<Capabilities> {
        // "global" would need Docker's swarm mode or cluster store; the networks are shared
        // through our datastore instead.
        Ok(Capabilities {
            scope: "local",
            connectivity_scope: "global",
        })
    }

    pub(super) async fn create_network(self: Arc<Self>, request: CreateNetwork) -> Reply<Empty> {
        let options = request.options.unwrap_or_default();
        if let Some(generic) = options.get(api::options::GENERIC) {
            let given: Vec<String> = generic
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            if !given.is_empty() {
                return Err(PluginError(format!(
                    "calico networks take no driver options, but -o {} was given; their policy is \
                     the network's Calico profile ('calicoctl profile <NETWORK> rule …')",
                    given.join(", -o ")
                )));
            }
        }
        if options.get(api::options::INTERNAL) == Some(&serde_json::Value::Bool(true)) {
            return Err(PluginError(
                "--internal is not supported by calico networks: limit a network's traffic with \
                 the rules of its profile instead"
                    .into(),
            ));
        }
        let ipv6 = options.get(api::options::ENABLE_IPV6) == Some(&serde_json::Value::Bool(true));
        let mut subnets = Vec::new();
        let pools = request
            .ipv4_data
            .unwrap_or_default()
            .into_iter()
            .chain(request.ipv6_data.unwrap_or_default());
        for data in pools {
            if !ADDRESS_SPACES.contains(&data.address_space.as_str()) {
                return Err(PluginError(
                    "calico networks need Calico IPAM: create the network with --ipam-driver calico"
                        .into(),
                ));
            }
            let pool: Option<IpNet> = data.pool.as_deref().and_then(|p| p.parse().ok());
            subnets.extend(pool.filter(|p| p.prefix_len() > 0));
        }
        self.networks.lock().await.insert(
            request.network_id.clone(),
            KnownNetwork {
                name: None,
                subnets,
                ipv6,
                published: false,
            },
        );
        // Docker stores the network once we answer; its name can be read back only then.
        tokio::spawn(crate::networks::publish(self.clone(), request.network_id));
        Ok(Empty {})
    }

    pub(super) async fn delete_network(self: Arc<Self>, request: NetworkOnly) -> Reply<Empty> {
        let known = self.networks.lock().await.remove(&request.network_id);
        // Docker has already released the network's pools: refusing now would leave it half
        // deleted. The record goes; other hosts follow.
        if let Some(name) = known.and_then(|n| n.name) {
            crate::networks::unpublish(&self, &name).await;
        }
        Ok(Empty {})
    }

    /// The network's name: known since it was published, else read from the engine.
    async fn network_name(&self, id: &str) -> Reply<String> {
        if let Some(name) = self
            .networks
            .lock()
            .await
            .get(id)
            .and_then(|n| n.name.clone())
        {
            return Ok(name);
        }
        match self.engine.network(id).await? {
            Some(local) => Ok(local.name),
            None => Err(PluginError(format!(
                "network {id} is not a calico network of this host's engine"
            ))),
        }
    }

    pub(super) async fn create_endpoint(
        self: Arc<Self>,
        request: CreateEndpoint,
    ) -> Reply<EndpointCreated> {
        let interface = request.interface.unwrap_or_default();
        let mut nets = Vec::new();
        for address in [&interface.address, &interface.address_ipv6] {
            if address.is_empty() {
                continue;
            }
            let net: IpNet = address
                .parse()
                .map_err(|_| PluginError(format!("Docker gave a malformed address {address}")))?;
            // Each workload address is a host route: the container holds a /32 (/128).
            nets.push(IpNet::from(net.addr()));
        }
        if nets.is_empty() {
            return Err(PluginError(
                "the endpoint has no address: calico networks need --ipam-driver calico".into(),
            ));
        }
        let network = self.network_name(&request.network_id).await?;
        // Its policy: the network's profile (made when the network was recorded, and again
        // here if someone removed it since).
        self.lifecycle.resources().create_profile(&network).await?;
        let mac = (!interface.mac_address.is_empty()).then(|| interface.mac_address.clone());
        let answer_mac = match &mac {
            // Docker already has the user's MAC: saying one back is an error.
            Some(_) => String::new(),
            None => format_mac(mac_for(&request.endpoint_id)),
        };
        self.pending
            .lock()
            .await
            .insert(request.endpoint_id, PendingEndpoint { network, nets, mac });
        Ok(EndpointCreated {
            interface: CreatedInterface {
                mac_address: answer_mac,
            },
        })
    }

    pub(super) async fn endpoint_info(self: Arc<Self>, _: EndpointOnly) -> Reply<OperInfo> {
        Ok(OperInfo {
            value: Default::default(),
        })
    }

    fn key(&self, endpoint_id: &str) -> EndpointKey {
        EndpointKey {
            host: self.config.host.clone(),
            orchestrator: ORCHESTRATOR.into(),
            workload: ORCHESTRATOR.into(),
            endpoint_id: endpoint_id.to_string(),
        }
    }

    pub(super) async fn join(self: Arc<Self>, request: Join) -> Reply<Joined> {
        let Some(pending) = self.pending.lock().await.get(&request.endpoint_id).cloned() else {
            return Err(PluginError(format!(
                "endpoint {} is unknown to calico-node (was it restarted since the endpoint \
                 was created?); start the container again",
                request.endpoint_id
            )));
        };
        self.lifecycle.require_policy_in_place()?;
        let side = self
            .lifecycle
            .create_host_side(&request.endpoint_id)
            .await?;
        let mut endpoint = self.lifecycle.endpoint(
            &request.endpoint_id,
            &pending.nets,
            std::slice::from_ref(&pending.network),
        );
        if pending.mac.is_some() {
            endpoint.mac = pending.mac.clone();
        }
        // The interface exists before the endpoint does, so the agent programs both at once.
        if let Err(e) = self
            .lifecycle
            .create_endpoint(&self.key(&request.endpoint_id), &endpoint)
            .await
        {
            let _ = unwire(&side.host_interface).await;
            return Err(e.into());
        }
        self.pending.lock().await.remove(&request.endpoint_id);
        let has = |v4: bool| pending.nets.iter().any(|n| n.addr().is_ipv4() == v4);
        let mut static_routes = Vec::new();
        let (mut gateway, mut gateway_ipv6) = (String::new(), String::new());
        if has(true) {
            gateway = GATEWAY_V4.to_string();
            static_routes.push(link_route(IpAddr::V4(GATEWAY_V4)));
        }
        if has(false) {
            gateway_ipv6 = GATEWAY_V6.to_string();
            static_routes.push(link_route(IpAddr::V6(GATEWAY_V6)));
        }
        Ok(Joined {
            interface_name: InterfaceName {
                src_name: side.peer,
                dst_prefix: "eth",
            },
            gateway,
            gateway_ipv6,
            static_routes,
            disable_gateway_service: true,
        })
    }

    /// Removes the endpoint's interface and record (not its addresses: Docker releases them).
    async fn remove_endpoint(&self, endpoint_id: &str) -> Reply<()> {
        let key = self.key(endpoint_id);
        let stored = self
            .lifecycle
            .resources()
            .store()
            .get(&calico_model::keys::endpoint(&key))
            .await?;
        let Some(kv) = stored else {
            // Never joined, or already gone: the interface may still be there.
            unwire(&calico_model::endpoint::interface_name_for(endpoint_id)).await?;
            return Ok(());
        };
        let record = EndpointRecord {
            key,
            endpoint: calico_model::endpoint::Endpoint::from_json(&kv.value),
        };
        self.lifecycle.teardown(&[record], Addresses::Keep).await?;
        Ok(())
    }

    pub(super) async fn leave(self: Arc<Self>, request: EndpointOnly) -> Reply<Empty> {
        self.remove_endpoint(&request.endpoint_id).await?;
        Ok(Empty {})
    }

    pub(super) async fn delete_endpoint(self: Arc<Self>, request: EndpointOnly) -> Reply<Empty> {
        self.pending.lock().await.remove(&request.endpoint_id);
        self.remove_endpoint(&request.endpoint_id).await?;
        Ok(Empty {})
    }
}

/// A route Docker adds in the container to reach a gateway on the link: RouteType 1.
fn link_route(gateway: IpAddr) -> StaticRoute {
    StaticRoute {
        destination: IpNet::from(gateway).to_string(),
        route_type: 1,
        next_hop: String::new(),
    }
}
