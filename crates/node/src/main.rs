//! calico-node: `calico-node [--name HOST] [--listen ADDR]`. Reads the datastore location from
//! the ETCD_* variables, like calicoctl. Normally started by `calicoctl node`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use calico_dataplane::{LinuxDataplane, NftCli};
use calico_node::logging::LogControl;
use calico_node::metrics::Metrics;
use calico_node::{http, Agent, AgentConfig};

const USAGE: &str = "Usage: calico-node [--name=<HOSTNAME>] [--listen=<ADDR>] [--state-dir=<DIR>]

  --name=<HOSTNAME>   This host's name in the datastore [default: the hostname]
  --listen=<ADDR>     Where /metrics and /health are served [default: 127.0.0.1:9099]
  --state-dir=<DIR>   Where BIRD's configuration, socket and log go; without it, no BGP
";

struct Options {
    name: String,
    listen: String,
    state_dir: Option<std::path::PathBuf>,
}

fn options() -> Result<Options> {
    let mut name = None;
    let mut listen = "127.0.0.1:9099".to_string();
    let mut state_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "--name" => name = Some(value()?),
            "--listen" => listen = value()?,
            "--state-dir" => state_dir = Some(value()?.into()),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n\n{USAGE}"),
        }
    }
    let name = match name {
        Some(name) => name,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_string(),
    };
    calico_model::names::validate_hostname(&name)?;
    Ok(Options {
        name,
        listen,
        state_dir,
    })
}

fn main() -> Result<()> {
    let options = options()?;
    let log = LogControl::init("info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = calico_datastore::connect_from_env().await?;
        let metrics = Arc::new(Metrics::default());
        let listener = tokio::net::TcpListener::bind(&options.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for /metrics and /health",
                    options.listen
                )
            })?;
        tokio::spawn(http::serve(listener, metrics.clone()));
        let dataplane = LinuxDataplane::new(Arc::new(NftCli))?;
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
        tracing::info!(host = %options.name, listen = %options.listen, "calico-node starting");
        let config = AgentConfig {
            state_dir: options.state_dir,
            ..AgentConfig::new(&options.name)
        };
        Agent::new(store, dataplane, config, metrics)
            .with_log_control(log)
            .run(stopped)
            .await;
        Ok(())
    })
}
