//! calico-node, the per-host agent. Reads the datastore location from the ETCD_* variables, like
//! calicoctl. Normally started by `calicoctl node`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use calico_dataplane::{LinuxDataplane, NftCli};
use calico_docker::proxy::{self, Containers, Listen, Proxy, ProxyConfig};
use calico_docker::{Driver, DriverConfig, Engine, PluginMetrics};
use calico_node::logging::LogControl;
use calico_node::metrics::Metrics;
use calico_node::{http, Agent, AgentConfig};
use calico_workload::Lifecycle;
use clap::Parser;

/// mimalloc gives freed memory back to the kernel on its own: a whole apply or a compile
/// builds batches of megabytes and frees them at once, and glibc's allocator kept such
/// pages, so the agent's resident memory stayed at its peak (173 MiB settled at 100,000
/// endpoints, 28 MiB of it free). It also spends less per small allocation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "calico-node",
    version,
    about = "The per-host agent: keeps this host's kernel \
    (policy, routes, links) in step with the datastore, runs BIRD, and serves Docker's \
    libnetwork drivers."
)]
struct Options {
    /// This host's name in the datastore [default: the hostname].
    #[arg(long)]
    name: Option<String>,
    /// Where /metrics and /health are served.
    #[arg(long, default_value = "127.0.0.1:9099")]
    listen: String,
    /// Where BIRD's configuration, socket and log go; without it, no BGP.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Serve Docker's libnetwork network and IPAM drivers (both "calico") for the engine at
    /// $DOCKER_HOST (else /var/run/docker.sock), sharing networks through the datastore.
    #[arg(long)]
    libnetwork: bool,
    /// Where Docker looks for plugin sockets.
    #[arg(long, default_value = calico_docker::driver::PLUGIN_DIR)]
    plugin_dir: PathBuf,
    /// Serve the Docker API proxy here (HOST:PORT, tcp://HOST:PORT or unix:///PATH), in front
    /// of the engine at $DOCKER_HOST (else /var/run/docker.sock): containers created through it
    /// with -e CALICO_IP=<IP>|auto get Calico networking. Beyond loopback only with
    /// --docker-proxy-tls.
    #[arg(long)]
    docker_proxy: Option<String>,
    /// A directory with ca.pem, cert.pem and key.pem: the proxy takes only clients with a
    /// certificate signed by ca.pem.
    #[arg(long, requires = "docker_proxy")]
    docker_proxy_tls: Option<PathBuf>,
}

/// Binds the Docker API proxy, if asked for, before anything else starts: a configuration
/// it refuses stops calico-node at once.
async fn docker_proxy(
    options: &Options,
    store: &Arc<dyn calico_datastore::Datastore>,
    name: &str,
    interfaces_changed: Arc<tokio::sync::Notify>,
) -> Result<Option<(Arc<Proxy>, proxy::Listener)>> {
    let Some(listen) = &options.docker_proxy else {
        return Ok(None);
    };
    let config = ProxyConfig {
        listen: Listen::parse(listen)?,
        tls_dir: options.docker_proxy_tls.clone(),
    };
    config.check()?;
    let engine = Engine::from_env();
    let socket = proxy::engine_socket(&engine)?;
    let mut containers = Containers::new(Lifecycle::new(store.clone(), name), engine);
    containers.tell_when_rewired(interfaces_changed);
    let proxy = Proxy::with_containers(containers)?;
    let listener = proxy::bind(&config, &socket).await?;
    Ok(Some((proxy, listener)))
}

fn host_name(options: &Options) -> Result<String> {
    let name = match &options.name {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_string(),
    };
    calico_model::names::validate_hostname(&name)?;
    Ok(name)
}

fn main() -> Result<()> {
    let options = Options::parse();
    let name = host_name(&options)?;
    let log = LogControl::init("info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = calico_datastore::connect_from_env().await?;
        let mut metrics = Metrics::default();
        let plugin_metrics = PluginMetrics::default();
        if options.libnetwork {
            plugin_metrics.register(metrics.registry_mut());
        }
        let metrics = Arc::new(metrics);
        let listener = tokio::net::TcpListener::bind(&options.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for /metrics and /health",
                    options.listen
                )
            })?;
        tokio::spawn(http::serve(listener, metrics.clone()));
        let interfaces_changed = Arc::new(tokio::sync::Notify::new());
        let proxy = docker_proxy(&options, &store, &name, interfaces_changed.clone()).await?;
        let dataplane = LinuxDataplane::new(Arc::new(NftCli::default()))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = stop.send(true);
        });
        tracing::info!(host = %name, listen = %options.listen, libnetwork = options.libnetwork,
            docker_proxy = ?options.docker_proxy, "calico-node starting");
        let driver = options.libnetwork.then(|| {
            let config = DriverConfig {
                plugin_dir: options.plugin_dir.clone(),
                ..DriverConfig::new(&name)
            };
            let driver = Driver::new(store.clone(), Engine::from_env(), config, plugin_metrics);
            tokio::spawn(driver.run(stopped.clone()))
        });
        let proxy =
            proxy.map(|(proxy, listener)| tokio::spawn(proxy.run(listener, stopped.clone())));
        let config = AgentConfig {
            state_dir: options.state_dir,
            ..AgentConfig::new(&name)
        };
        Agent::new(store, dataplane, config, metrics)
            .with_log_control(log)
            .with_interfaces_changed(interfaces_changed)
            .run(stopped)
            .await;
        for task in driver.into_iter().chain(proxy) {
            let _ = task.await;
        }
        Ok(())
    })
}
