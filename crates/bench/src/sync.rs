//! The full sync: calico-node started on a host whose kernel holds none of its state, until it
//! reports healthy (it has read the datastore and programmed the kernel), and its memory then;
//! against the time etcd takes to hand the same keys to a client (paged listing, same
//! connection kind), measured in the same run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::populate::Scale;
use crate::stats::{millis, percentile};
use crate::throughput::{clear_firewall, start_agent};
use crate::workloads::{Bench, HOST};

/// The agent's resident memory now and at its peak, in KiB, from /proc.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("calico-node (pid {pid}) is not running"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn agent_pid() -> Result<u32> {
    let base = std::env::var("CALICO_STATE_DIR").unwrap_or_else(|_| "/var/run/calico".into());
    let file = std::path::Path::new(&base)
        .join(HOST)
        .join("calico-node.pid");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    Ok(text.trim().parse()?)
}

pub async fn run(bench: &Bench, trials: usize, scale: Scale) -> Result<()> {
    let store = bench.resources.store();
    let mut listing = Vec::new();
    let mut keys = 0;
    for _ in 0..trials {
        let started = Instant::now();
        keys = store.list("/calico/v1/").await?.kvs.len();
        listing.push(started.elapsed());
    }
    let mut sync = Vec::new();
    let mut rss = Vec::new();
    let mut peak = Vec::new();
    for _ in 0..trials {
        clear_firewall()?;
        let started = Instant::now();
        start_agent(bench)?;
        sync.push(started.elapsed());
        let (now, high) = memory_kib(agent_pid()?)?;
        rss.push(now as f64);
        peak.push(high as f64);
    }
    let ms = |v: &[Duration]| percentile(&millis(v), 50.0);
    let endpoints = (scale.endpoints + 2) as f64;
    println!(
        "\nFull sync: {keys} keys under /calico/v1/ ({} endpoints, {} profiles), {trials} trials, medians:",
        scale.endpoints, scale.profiles
    );
    println!(
        "  {:<58} {:>9.0} ms",
        "etcd: paged listing of the same keys (baseline)",
        ms(&listing)
    );
    println!(
        "  {:<58} {:>9.0} ms   ratio {:.1}",
        "calico-node start -> healthy (synced and programmed)",
        ms(&sync),
        ms(&sync) / ms(&listing)
    );
    let (rss, peak) = (percentile(&rss, 50.0), percentile(&peak, 50.0));
    println!(
        "  {:<58} {:>9.0} MiB  {:.2} KiB per endpoint (peak {:.0} MiB, {:.2} KiB)",
        "calico-node resident memory after the sync",
        rss / 1024.0,
        rss / endpoints,
        peak / 1024.0,
        peak / endpoints
    );
    Ok(())
}
