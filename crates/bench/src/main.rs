//! calico-bench: benchmarks on a calico-lab host. Each prints its figures with a baseline
//! measured in the same run. Run by scripts/bench.sh, which builds a lab and runs this on
//! calico-01 (`calico-lab exec`), where etcd and calicoctl are at hand.

mod convergence;
mod docker;
mod ipam;
mod latency;
mod populate;
mod stats;
mod throughput;
mod workloads;

use anyhow::{bail, Result};

const USAGE: &str = "\
Usage:
  calico-bench (throughput|latency|convergence|ipam|all) --lab <LAB> [--rounds <N>] [--trials <N>]
  calico-bench docker --lab <LAB> [--trials <N>]
  calico-bench ipam-alloc --host <HOST> --name <NAME> --count <N> [--no-endpoints]

--trials defaults to 100 for latency, 50 for convergence (which needs calico-02) and 30 for
docker (which needs a lab made with --docker).
ipam-alloc takes <N> addresses for <HOST> (handles <HOST>.<NAME>-<i>), writes an endpoint
for each unless --no-endpoints, and prints them: an orchestrator's allocator, for tests.";

#[derive(Default)]
pub struct Options {
    pub lab: String,
    pub rounds: Option<usize>,
    /// None: each benchmark's own default.
    pub trials: Option<usize>,
    host: String,
    name: String,
    count: usize,
    no_endpoints: bool,
}

fn options(args: &[String]) -> Result<(String, Options)> {
    let mut words = Vec::new();
    let mut options = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--lab" => options.lab = value()?,
            "--rounds" => options.rounds = Some(value()?.parse()?),
            "--trials" => options.trials = Some(value()?.parse()?),
            "--host" => options.host = value()?,
            "--name" => options.name = value()?,
            "--count" => options.count = value()?.parse()?,
            "--no-endpoints" => options.no_endpoints = true,
            _ => words.push(arg.clone()),
        }
    }
    let complete = match words.first().map(String::as_str) {
        Some("ipam-alloc") => !options.host.is_empty() && !options.name.is_empty(),
        _ => !options.lab.is_empty(),
    };
    match words.as_slice() {
        [what] if complete => Ok((what.clone(), options)),
        _ => bail!("{USAGE}"),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (what, options) = options(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rounds = options.rounds.unwrap_or(3);
    let latency_trials = options.trials.unwrap_or(100);
    let convergence_trials = options.trials.unwrap_or(50);
    runtime.block_on(async {
        match what.as_str() {
            "ipam-alloc" => {
                let endpoints = !options.no_endpoints;
                return ipam::allocate(&options.host, &options.name, options.count, endpoints)
                    .await;
            }
            "ipam" => return ipam::run().await,
            "docker" => return docker::run_all(options.trials.unwrap_or(30)),
            _ => {}
        }
        let bench = workloads::Bench::new(&options.lab).await?;
        populate::populate(&bench).await?;
        match what.as_str() {
            "throughput" => throughput::run(&bench, rounds).await,
            "latency" => latency::run(&bench, latency_trials).await,
            "convergence" => convergence::run_all(&bench, convergence_trials),
            "all" => {
                throughput::run(&bench, rounds).await?;
                latency::run(&bench, latency_trials).await?;
                convergence::run_all(&bench, convergence_trials)?;
                ipam::run().await
            }
            _ => bail!("{USAGE}"),
        }
    })
}
