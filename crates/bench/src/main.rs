//! calico-bench: benchmarks on a calico-lab host. Each prints its figures with a baseline
//! measured in the same run. Run by scripts/bench.sh, which builds a lab and runs this on
//! calico-01 (`calico-lab exec`), where etcd and calicoctl are at hand.

mod convergence;
mod docker;
mod flows;
mod ipam;
mod latency;
mod populate;
mod stats;
mod sync;
mod throughput;
mod workloads;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "calico-bench",
    about = "Benchmarks on a calico-lab host, each figure printed with a baseline from the same run \
             (scripts/bench.sh runs them); and ipam-alloc, an orchestrator-like allocator the IPAM \
             tests run."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct OnLab {
    /// The lab this runs in (its calico-01).
    #[arg(long)]
    lab: String,
    /// Throughput rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Trials [default: 100 for latency, 50 for convergence, 30 for docker, 3 for sync].
    #[arg(long)]
    trials: Option<usize>,
    /// Remote endpoints in the datastore (on 100 hosts).
    #[arg(long, default_value_t = 10_000)]
    endpoints: usize,
    /// Profiles of 5 rules each (dst carries the first 1,000).
    #[arg(long, default_value_t = 10_000)]
    profiles: usize,
    /// The agents' log level during the run (`calicoctl config felix loglevel`): `debug` logs
    /// where each apply's time goes; scripts/bench.sh keeps the logs with BENCH_LOGS=DIR.
    #[arg(long)]
    agent_log: Option<String>,
}

impl OnLab {
    fn scale(&self) -> populate::Scale {
        populate::Scale {
            endpoints: self.endpoints,
            profiles: self.profiles,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// iperf3 and new connections/s through calico policy, against no firewall and linear
    /// iptables.
    Throughput(OnLab),
    /// calico-node start until synced and programmed, and its memory, against etcd's listing.
    Sync(OnLab),
    /// Rule written until a flow is allowed (and removed until denied); container add until ping.
    Latency(OnLab),
    /// Container add on calico-01 until calico-02 routes it and a ping from there is answered.
    Convergence(OnLab),
    /// Allocations per second, against etcd's compare-and-swap rate.
    Ipam(OnLab),
    /// docker run until a ping is answered: calico network, --net=none + calicoctl, bridge.
    Docker(OnLab),
    /// All of them but docker (which needs a lab made with --docker).
    All(OnLab),
    /// Takes COUNT addresses for HOST (handles HOST.NAME-i), writes an endpoint for each unless
    /// --no-endpoints, and prints them.
    IpamAlloc {
        #[arg(long)]
        host: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        no_endpoints: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let on = match cli.command {
            Command::IpamAlloc {
                host,
                name,
                count,
                no_endpoints,
            } => return ipam::allocate(&host, &name, count, !no_endpoints).await,
            Command::Ipam(_) => return ipam::run().await,
            Command::Docker(on) => return docker::run_all(on.trials.unwrap_or(30)),
            Command::Throughput(ref on)
            | Command::Latency(ref on)
            | Command::Convergence(ref on)
            | Command::Sync(ref on)
            | Command::All(ref on) => on,
        };
        let bench = workloads::Bench::new(&on.lab).await?;
        let scale = on.scale();
        populate::populate(&bench, scale).await?;
        if let Some(level) = &on.agent_log {
            workloads::run("calicoctl", &["config", "felix", "loglevel", level])?;
        }
        let latency_trials = on.trials.unwrap_or(100);
        let convergence_trials = on.trials.unwrap_or(50);
        match &cli.command {
            Command::Throughput(_) => throughput::run(&bench, on.rounds, scale).await,
            Command::Sync(_) => sync::run(&bench, on.trials.unwrap_or(3), scale).await,
            Command::Latency(_) => latency::run(&bench, latency_trials).await,
            Command::Convergence(_) => convergence::run_all(&bench, convergence_trials),
            _ => {
                sync::run(&bench, on.trials.unwrap_or(3).min(3), scale).await?;
                throughput::run(&bench, on.rounds, scale).await?;
                latency::run(&bench, latency_trials).await?;
                convergence::run_all(&bench, convergence_trials)?;
                ipam::run().await
            }
        }
    })
}
