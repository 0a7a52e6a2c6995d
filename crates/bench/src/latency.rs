//! How long until the kernel does what the datastore says: a rule written until a new TCP
//! flow is allowed (and removed until one is denied), and `calicoctl container add` until the
//! workload answers a ping; against etcd's own write-to-watch latency, measured in the same run.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use calico_dataplane::netns::run_in;
use calico_model::rule::Rule;

use crate::stats::summary;
use crate::workloads::{Bench, DST_IP, PROFILE};

const PORT: u16 = 6000;
/// How long a connection attempt may take before the flow counts as denied (dropped SYNs
/// are never answered): the resolution of the "denied" figure.
const ATTEMPT: Duration = Duration::from_millis(50);

/// A TCP listener inside dst that accepts and closes connections for as long as we run.
fn listen_in(netns: PathBuf) {
    std::thread::spawn(move || {
        let _ = run_in(&netns, || async {
            if let Ok(listener) = TcpListener::bind(("0.0.0.0", PORT)) {
                for stream in listener.incoming() {
                    drop(stream);
                }
            }
        });
    });
}

/// From inside src: tries new connections until one succeeds (`allowed`) or one is not
/// answered (`!allowed`); returns when that was seen (for a denial: when the attempt began).
async fn probe(netns: PathBuf, allowed: bool) -> Result<Instant> {
    let target: SocketAddr = format!("{DST_IP}:{PORT}").parse()?;
    tokio::task::spawn_blocking(move || {
        run_in(&netns, move || async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let start = Instant::now();
                let connected = TcpStream::connect_timeout(&target, ATTEMPT).is_ok();
                if connected == allowed {
                    return Ok(if allowed { Instant::now() } else { start });
                }
                if connected {
                    continue;
                }
            }
            bail!(
                "the flow never became {}",
                if allowed { "allowed" } else { "denied" }
            )
        })?
    })
    .await?
}

async fn rule_latency(bench: &Bench, trials: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    listen_in(bench.netns_path("dst"));
    let rule: Rule = format!("allow tcp from tag huge to ports {PORT}").parse()?;
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    probe(bench.netns_path("src"), false).await?;
    for _ in 0..trials {
        let started = Instant::now();
        let added = rule.clone();
        bench
            .resources
            .update_rules(PROFILE, move |r| {
                r.inbound_rules.insert(0, added.clone());
                Ok(true)
            })
            .await?;
        allow.push(probe(bench.netns_path("src"), true).await? - started);
        let started = Instant::now();
        bench
            .resources
            .update_rules(PROFILE, |r| {
                r.inbound_rules.remove(0);
                Ok(true)
            })
            .await?;
        deny.push(
            probe(bench.netns_path("src"), false)
                .await?
                .saturating_duration_since(started),
        );
    }
    Ok((allow, deny))
}

async fn container_latency(bench: &Bench, trials: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for i in 0..trials.min(200) {
        let name = format!("lat{i}");
        let ip = format!("192.168.202.{}", i + 1);
        let started = bench.add_workload(&name, &ip)?;
        let deadline = started + Duration::from_secs(30);
        while !bench
            .in_workload("src", &["ping", "-c", "1", "-W", "0.05", &ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success()
        {
            if Instant::now() > deadline {
                bail!("{name} never answered");
            }
        }
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// etcd's own latency: a put until a watch on the key sees it.
async fn etcd_watch_latency(bench: &Bench, trials: usize) -> Result<Vec<Duration>> {
    let store = bench.resources.store();
    let mut watch = store.watch("/bench-latency/", 0).await?;
    let mut samples = Vec::new();
    for i in 0..trials {
        let started = Instant::now();
        store.put("/bench-latency/key", &i.to_string()).await?;
        match watch.next().await {
            Some(Ok(_)) => samples.push(started.elapsed()),
            other => bail!("the watch failed: {:?}", other.map(|r| r.err())),
        }
    }
    store.delete("/bench-latency/key").await?;
    Ok(samples)
}

pub async fn run(bench: &Bench, trials: usize) -> Result<()> {
    println!("\nLatency, {trials} trials each, with the populated datastore:");
    let etcd = etcd_watch_latency(bench, trials).await?;
    let (allow, deny) = rule_latency(bench, trials).await?;
    let added = container_latency(bench, trials).await?;
    println!(
        "  {:<52} {}",
        "etcd put -> watch event (baseline)",
        summary(&etcd)
    );
    println!(
        "  {:<52} {}",
        "rule written -> new TCP flow allowed",
        summary(&allow)
    );
    println!(
        "  {:<52} {}",
        "rule removed -> new TCP flow denied (+-50 ms)",
        summary(&deny)
    );
    println!(
        "  {:<52} {}",
        "container add + profile set -> answers ping",
        summary(&added)
    );
    let p50 = |v: &[Duration]| crate::stats::percentile(&crate::stats::millis(v), 50.0);
    println!(
        "  ratio of rule->allowed p50 to the etcd baseline p50: {:.1}",
        p50(&allow) / p50(&etcd)
    );
    Ok(())
}
