//! calico-master: the cluster's master role (seed 002). Reads the datastore location from the
//! ETCD_* variables, like calicoctl. Normally started by `calicoctl master --ip=<IP>`.

use std::net::IpAddr;

use anyhow::Result;
use calico_master::{election, Translator};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "calico-master",
    version,
    about = "The cluster's master role: one at a time, elected through the datastore; \
    translates the orchestrator's group keyspace into profiles and keeps seed 002's host paths."
)]
struct Options {
    /// The master's address, written to /calico/master/ip.
    #[arg(long)]
    ip: IpAddr,
}

fn main() -> Result<()> {
    let options = Options::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = calico_datastore::connect_from_env().await?;
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
        let ip = options.ip.to_string();
        let translator = Translator::new(store.clone());
        loop {
            let mut shutdown = stopped.clone();
            let lease = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                lease = election::lead(&store, &ip) => lease?,
            };
            tracing::info!(%ip, "this is the master");
            tokio::select! {
                lost = election::keep(&store, lease) => {
                    tracing::warn!(error = %lost, "lost the master role; waiting to be elected again");
                }
                _ = translator.run(stopped.clone()) => {
                    // Stopped: give the role up at once rather than when the lease runs out.
                    let _ = store.revoke_lease(lease).await;
                    tracing::info!("master stopped");
                    return Ok(());
                }
            }
        }
    })
}
