//! calico-bench: benchmarks on a calico-lab host. Each prints its figures with a baseline
//! measured in the same run. Run by scripts/bench.sh, which builds a lab and runs this on
//! calico-01 (`calico-lab exec`), where etcd and calicoctl are at hand.

mod convergence;
mod latency;
mod populate;
mod stats;
mod throughput;
mod workloads;

use anyhow::{bail, Result};

const USAGE: &str = "Usage: calico-bench (throughput|latency|convergence|all) --lab <LAB> [--rounds <N>] [--trials <N>]
  --trials defaults to 100 for latency and 50 for convergence, which needs calico-02.";

pub struct Options {
    pub lab: String,
    pub rounds: usize,
    /// None: each benchmark's own default.
    pub trials: Option<usize>,
}

fn options(args: &[String]) -> Result<(String, Options)> {
    let mut words = Vec::new();
    let mut options = Options {
        lab: String::new(),
        rounds: 3,
        trials: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--lab" => options.lab = value()?,
            "--rounds" => options.rounds = value()?.parse()?,
            "--trials" => options.trials = Some(value()?.parse()?),
            _ => words.push(arg.clone()),
        }
    }
    match (words.as_slice(), options.lab.is_empty()) {
        ([what], false) => Ok((what.clone(), options)),
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
    let latency_trials = options.trials.unwrap_or(100);
    let convergence_trials = options.trials.unwrap_or(50);
    runtime.block_on(async {
        let bench = workloads::Bench::new(&options.lab).await?;
        populate::populate(&bench).await?;
        match what.as_str() {
            "throughput" => throughput::run(&bench, options.rounds).await,
            "latency" => latency::run(&bench, latency_trials).await,
            "convergence" => convergence::run_all(&bench, convergence_trials),
            "all" => {
                throughput::run(&bench, options.rounds).await?;
                latency::run(&bench, latency_trials).await?;
                convergence::run_all(&bench, convergence_trials)
            }
            _ => bail!("{USAGE}"),
        }
    })
}
