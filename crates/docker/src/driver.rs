//! The libnetwork driver calico-node runs with `--libnetwork`: what the network and IPAM
//! handlers share, and its life: reconcile with the engine, serve the plugin socket, keep the
//! networks in step with the datastore.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use calico_datastore::Datastore;
use calico_workload::Lifecycle;
use ipnet::IpNet;
use tokio::sync::{watch, Mutex, Notify};

use crate::engine::Engine;
use crate::metrics::PluginMetrics;

/// Where Docker looks for plugin sockets.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";
/// The orchestrator and workload id of endpoints the driver makes (as Calico's own plugin).
pub const ORCHESTRATOR: &str = "libnetwork";

/// How calico-node runs the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub host: String,
    /// The plugin directory; the socket is `calico.sock` in it.
    pub plugin_dir: PathBuf,
}

impl DriverConfig {
    pub fn new(host: &str) -> Self {
        DriverConfig {
            host: host.to_string(),
            plugin_dir: PathBuf::from(PLUGIN_DIR),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.plugin_dir
            .join(format!("{}.sock", crate::engine::DRIVER))
    }
}

/// A network the engine told the driver about (CreateNetwork), by Docker's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownNetwork {
    /// Learnt from the engine once the network exists there (CreateNetwork does not say).
    pub name: Option<String>,
    pub subnets: Vec<IpNet>,
    pub ipv6: bool,
    /// Whether the datastore has its record (written here, or found there).
    pub published: bool,
}

/// An endpoint between CreateEndpoint and Join: its record is written at Join, once its
/// interface exists, so the agent can program it at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEndpoint {
    pub network: String,
    pub nets: Vec<IpNet>,
    pub mac: Option<String>,
}

/// What the handlers and the sync loops share.
pub struct Driver {
    pub config: DriverConfig,
    pub lifecycle: Lifecycle,
    pub engine: Engine,
    /// Docker network id → what we know of it.
    pub networks: Mutex<HashMap<String, KnownNetwork>>,
    /// Docker endpoint id → its addresses until Join.
    pub pending: Mutex<HashMap<String, PendingEndpoint>>,
    pub metrics: PluginMetrics,
    /// Wakes the network sync (a network was created or removed here).
    pub nudge: Notify,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("config", &self.config)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Driver {
    pub fn new(
        store: Arc<dyn Datastore>,
        engine: Engine,
        config: DriverConfig,
        metrics: PluginMetrics,
    ) -> Arc<Driver> {
        Arc::new(Driver {
            lifecycle: Lifecycle::new(store, &config.host),
            config,
            engine,
            networks: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            metrics,
            nudge: Notify::new(),
        })
    }

    /// Runs until `shutdown` turns true: reconciles with the engine, then serves the plugin
    /// socket and keeps the networks in step with the datastore.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        // Before serving: no plugin call can race the clean-up of what went away meanwhile.
        crate::reconcile::at_start(&self).await;
        let server = tokio::spawn(crate::plugin::serve(self.clone(), shutdown.clone()));
        let sync = tokio::spawn(crate::networks::sync(self.clone(), shutdown.clone()));
        let engine = tokio::spawn(crate::reconcile::follow_engine(self.clone(), shutdown));
        for task in [server, sync, engine] {
            let _ = task.await;
        }
        let _ = std::fs::remove_file(self.config.socket());
    }
}
