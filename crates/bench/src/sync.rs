//! The full sync: calico-node started on a host whose kernel holds none of its state, until it
//! reports healthy (it has read the datastore and programmed the kernel), and its memory then
//! and once it has compiled `dst`'s policy;
//! against the time etcd takes to hand the same keys to a client (paged listing, same
//! connection kind), measured in the same run, with the lab's other agent stopped meanwhile.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::populate::Scale;
use crate::stats::{millis, percentile};
use crate::throughput::{clear_firewall, start_agent};
use crate::workloads::{run as run_command, Bench, DST_IP, HOST};

/// The lab's other host, whose agent is stopped while the sync is timed: right after the
/// datastore is populated it is still taking in the same keys, and on a 2-core machine it
/// would time-share with the agent being measured (4.6 s of a 5 s sync, seen).
const OTHER_HOST: &str = "calico-02";
const OTHER_IP: &str = "172.17.8.102";
const OTHER_IP6: &str = "fd00:8::102";

/// The other host's agent, stopped until this is dropped; then started as the lab starts it,
/// and waited for (`calicoctl node` returns once it is healthy).
struct OtherAgentStopped<'a> {
    bench: &'a Bench,
}

impl<'a> OtherAgentStopped<'a> {
    fn new(bench: &'a Bench) -> Result<Self> {
        other_calicoctl(bench, &["node", "stop"])?;
        Ok(OtherAgentStopped { bench })
    }
}

impl Drop for OtherAgentStopped<'_> {
    fn drop(&mut self) {
        let logs = format!("/var/run/calico-lab/{}/logs", self.bench.lab);
        let started = other_calicoctl(
            self.bench,
            &[
                "node",
                "--ip",
                OTHER_IP,
                "--ip6",
                OTHER_IP6,
                "--name",
                OTHER_HOST,
                "--log-dir",
                &logs,
            ],
        );
        if let Err(e) = started {
            eprintln!("cannot restart the agent on {OTHER_HOST}: {e:#}");
        }
    }
}

fn other_calicoctl(bench: &Bench, args: &[&str]) -> Result<String> {
    let lab = bench.lab_binary()?;
    let mut all = vec!["exec", OTHER_HOST, "--name", &bench.lab, "--", "calicoctl"];
    all.extend_from_slice(args);
    run_command(lab.to_str().unwrap_or("calico-lab"), &all)
}

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
    let mut settled = Vec::new();
    let quiet = OtherAgentStopped::new(bench)?;
    for _ in 0..trials {
        clear_firewall()?;
        let started = Instant::now();
        start_agent(bench)?;
        sync.push(started.elapsed());
        let (now, high) = memory_kib(agent_pid()?)?;
        rss.push(now as f64);
        peak.push(high as f64);
        // Once the datastore has been quiet a moment, the agent compiles `dst`'s policy (and
        // copies the tag sets it uses into the compiled table): the memory it then keeps.
        bench.wait_compiled(DST_IP)?;
        settled.push(memory_kib(agent_pid()?)?.0 as f64);
    }
    drop(quiet);
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
    let settled = percentile(&settled, 50.0);
    println!(
        "  {:<58} {:>9.0} MiB  {:.2} KiB per endpoint",
        "  and once dst's policy is compiled",
        settled / 1024.0,
        settled / endpoints
    );
    Ok(())
}
