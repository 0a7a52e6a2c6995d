//! The host's Docker engine, through its API (bollard): the containers `calicoctl container`
//! names, and the networks calico-node keeps in step with the datastore.
//!
//! The engine is found as the Docker CLI finds it: `DOCKER_HOST` (`unix://…` or `tcp://…`),
//! else `/var/run/docker.sock`. The API version is negotiated down to the engine's (Debian's
//! Docker 20.10 speaks 1.41).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bollard::errors::Error as BollardError;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest, NetworkInspect};
use bollard::query_parameters::{
    EventsOptions, ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
};
use bollard::Docker;
use calico_model::network::DockerNetwork;
use ipnet::IpNet;
use tokio::sync::Mutex;

/// The orchestrator id of Docker containers given Calico networking by `calicoctl container`
/// (their workload id is the full container id), as the original recorded them.
pub const CONTAINER_ORCHESTRATOR: &str = "docker";

/// The driver and IPAM driver name our plugin registers as.
pub const DRIVER: &str = "calico";
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Engine calls that create networks call back into our own plugin: give them time.
const TIMEOUT_SECS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("the Docker engine at {host} refused: {message}")]
    Refused { host: String, message: String },
}

/// What `calicoctl container` needs to know of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The full id.
    pub id: String,
    /// Its name, without Docker's leading '/'.
    pub name: String,
    pub running: bool,
    /// The pid of its first process (0 when it is not running).
    pub pid: i64,
    /// `none`, `host`, `bridge`, a network name, or `container:<id>`.
    pub network_mode: String,
    /// Docker's endpoint ids of its interfaces on networks (ours among them).
    pub endpoint_ids: Vec<String>,
    /// Its environment, `NAME=value` each (where `CALICO_IP` asks the API proxy for an
    /// address).
    pub env: Vec<String>,
}

impl ContainerInfo {
    /// Its network namespace, as any process on the host can open it.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }
}

/// A network of our driver in the local engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNetwork {
    pub id: String,
    pub name: String,
    pub subnets: Vec<IpNet>,
    pub ipv6: bool,
    /// Docker's endpoint ids on it (its containers' interfaces).
    pub endpoints: BTreeSet<String>,
    /// Its containers' addresses, as Docker recorded them.
    pub addresses: BTreeSet<std::net::IpAddr>,
}

impl LocalNetwork {
    /// The same network as a datastore record would describe it.
    pub fn matches(&self, record: &DockerNetwork) -> bool {
        let mut mine = self.subnets.clone();
        let mut theirs = record.subnets.clone();
        mine.sort();
        theirs.sort();
        mine == theirs && self.ipv6 == record.ipv6
    }
}

/// One engine, connected on first use.
#[derive(Clone)]
pub struct Engine {
    host: String,
    client: Arc<Mutex<Option<Docker>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("host", &self.host).finish()
    }
}

impl Engine {
    /// The engine `DOCKER_HOST` names, else the local socket.
    pub fn from_env() -> Engine {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        Engine::new(&host)
    }

    pub fn new(host: &str) -> Engine {
        Engine {
            host: host.to_string(),
            client: Arc::new(Mutex::new(None)),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> EngineError {
        EngineError::Unreachable {
            host: self.host.clone(),
            reason: reason.to_string(),
        }
    }

    fn error(&self, error: BollardError) -> EngineError {
        match error {
            BollardError::DockerResponseServerError { message, .. } => EngineError::Refused {
                host: self.host.clone(),
                message,
            },
            other => self.unreachable(other),
        }
    }

    /// The client, connecting (and negotiating the API version) if not yet done.
    async fn client(&self) -> Result<Docker, EngineError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = if let Some(path) = self.host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        } else if self.host.starts_with("tcp://")
            || self.host.starts_with("http://")
            // As the Docker CLI: a bare HOST:PORT is TCP (seed 000's DOCKER_HOST=localhost:2377).
            || !self.host.contains("://")
        {
            Docker::connect_with_http(&self.host, TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(self.unreachable("DOCKER_HOST must be unix://PATH or tcp://HOST:PORT"));
        };
        let client = client
            .map_err(|e| self.unreachable(e))?
            .negotiate_version()
            .await
            .map_err(|e| self.unreachable(e))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Whether the engine answers.
    pub async fn ping(&self) -> Result<(), EngineError> {
        let client = self.client().await?;
        client.ping().await.map_err(|e| self.error(e))?;
        Ok(())
    }

    /// A container by name or id (a unique prefix of one); None if the engine has none such.
    pub async fn container(&self, name_or_id: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let client = self.client().await?;
        let inspect = match client.inspect_container(name_or_id, None).await {
            Ok(inspect) => inspect,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let state = inspect.state.unwrap_or_default();
        let endpoint_ids = inspect
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_values()
            .filter_map(|e| e.endpoint_id.filter(|id| !id.is_empty()))
            .collect();
        Ok(Some(ContainerInfo {
            id: inspect.id.unwrap_or_default(),
            name: inspect
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            running: state.running.unwrap_or(false),
            pid: state.pid.unwrap_or(0),
            network_mode: inspect
                .host_config
                .and_then(|h| h.network_mode)
                .unwrap_or_default(),
            endpoint_ids,
            env: inspect.config.and_then(|c| c.env).unwrap_or_default(),
        }))
    }

    /// The full ids of every container, running or not.
    pub async fn container_ids(&self) -> Result<Vec<String>, EngineError> {
        let client = self.client().await?;
        let listed = client
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| self.error(e))?;
        Ok(listed.into_iter().filter_map(|c| c.id).collect())
    }

    /// Removes a container, running or not; false if it was not there.
    pub async fn remove_container(&self, id: &str) -> Result<bool, EngineError> {
        let client = self.client().await?;
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match client.remove_container(id, Some(options)).await {
            Ok(()) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Kills a running container (SIGKILL).
    pub async fn kill_container(&self, id: &str) -> Result<(), EngineError> {
        let client = self.client().await?;
        client
            .kill_container(id, None)
            .await
            .map_err(|e| self.error(e))
    }

    /// The engine's container events from now on: (action, full container id). The stream
    /// ends when the connection does.
    pub async fn container_events(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<(String, String), EngineError>>, EngineError>
    {
        use futures::StreamExt;
        let client = self.client().await?;
        let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
        let engine = self.clone();
        let events = client
            .events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .filter_map(move |event| {
                let engine = engine.clone();
                async move {
                    match event {
                        Ok(event) => {
                            let id = event.actor.and_then(|a| a.id)?;
                            Some(Ok((event.action?, id)))
                        }
                        Err(e) => Some(Err(engine.error(e))),
                    }
                }
            });
        Ok(events)
    }

    /// Every network of our driver, with its endpoints.
    pub async fn calico_networks(&self) -> Result<Vec<LocalNetwork>, EngineError> {
        let client = self.client().await?;
        let filters = HashMap::from([("driver".to_string(), vec![DRIVER.to_string()])]);
        let listed = client
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| self.error(e))?;
        let mut networks = Vec::new();
        for network in listed {
            let Some(id) = network.id else { continue };
            // The list leaves the endpoints out; inspect has them.
            if let Some(local) = self.network(&id).await? {
                networks.push(local);
            }
        }
        Ok(networks)
    }

    /// One network of our driver by id or name; None if absent or of another driver.
    pub async fn network(&self, id_or_name: &str) -> Result<Option<LocalNetwork>, EngineError> {
        let client = self.client().await?;
        match client.inspect_network(id_or_name, None).await {
            Ok(inspect) => Ok(local_network(inspect)),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Creates a network of our driver as a record describes it.
    pub async fn create_network(&self, record: &DockerNetwork) -> Result<String, EngineError> {
        let client = self.client().await?;
        let config = record
            .subnets
            .iter()
            .map(|subnet| IpamConfig {
                subnet: Some(subnet.to_string()),
                ..Default::default()
            })
            .collect();
        let request = NetworkCreateRequest {
            name: record.name.clone(),
            driver: Some(DRIVER.into()),
            enable_ipv6: Some(record.ipv6),
            ipam: Some(Ipam {
                driver: Some(DRIVER.into()),
                config: Some(config),
                options: None,
            }),
            ..Default::default()
        };
        let created = client
            .create_network(request)
            .await
            .map_err(|e| self.error(e))?;
        Ok(created.id)
    }

    /// Removes a network; false if it was not there.
    pub async fn remove_network(&self, id_or_name: &str) -> Result<bool, EngineError> {
        let client = self.client().await?;
        match client.remove_network(id_or_name).await {
            Ok(()) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }
}

fn local_network(inspect: NetworkInspect) -> Option<LocalNetwork> {
    if inspect.driver.as_deref() != Some(DRIVER) {
        return None;
    }
    let subnets = inspect
        .ipam
        .and_then(|ipam| ipam.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.subnet?.parse::<IpNet>().ok())
        // The default pools show as 0.0.0.0/0 and ::/0: no subnet was asked for.
        .filter(|subnet| subnet.prefix_len() > 0)
        .collect();
    let containers: BTreeMap<String, _> =
        inspect.containers.unwrap_or_default().into_iter().collect();
    let endpoints = containers
        .values()
        .filter_map(|c| c.endpoint_id.clone())
        .collect();
    let addresses = containers
        .values()
        .flat_map(|c| [c.ipv4_address.clone(), c.ipv6_address.clone()])
        .flatten()
        .filter_map(|a| a.parse::<IpNet>().ok().map(|n| n.addr()))
        .collect();
    Some(LocalNetwork {
        id: inspect.id?,
        name: inspect.name?,
        subnets,
        ipv6: inspect.enable_ipv6.unwrap_or(false),
        endpoints,
        addresses,
    })
}
