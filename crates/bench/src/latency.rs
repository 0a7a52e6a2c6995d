//! How long until the kernel does what the datastore says: a rule written until a new TCP
//! flow is allowed (and removed until one is denied), and `calicoctl container add` until the
//! workload answers a ping; against etcd's own write-to-watch latency and the CNI reference
//! plugins (ptp + host-local), measured in the same run.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use calico_model::rule::Rule;

use crate::flows::{self, Listener};

use crate::stats::summary;
use crate::workloads::{run as run_command, Bench, DST_IP, PROFILE};

const PORT: u16 = 6000;

fn target() -> Result<SocketAddr> {
    Ok(format!("{DST_IP}:{PORT}").parse()?)
}

/// Rule written → allowed and removed → denied, each from the start of the write (a read and
/// a compare-and-swap, as calicoctl does); and how long the writes themselves took.
struct RuleLatency {
    allow: Vec<Duration>,
    deny: Vec<Duration>,
    writes: Vec<Duration>,
}

async fn rule_latency(bench: &Bench, trials: usize) -> Result<RuleLatency> {
    let _listener = Listener::start(bench.netns_path("dst"), target()?)?;
    let rule: Rule = format!("allow tcp from tag huge to ports {PORT}").parse()?;
    let (mut allow, mut deny, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    flows::until(bench.netns_path("src"), target()?, false).await?;
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
        writes.push(started.elapsed());
        allow.push(flows::until(bench.netns_path("src"), target()?, true).await? - started);
        let started = Instant::now();
        bench
            .resources
            .update_rules(PROFILE, |r| {
                r.inbound_rules.remove(0);
                Ok(true)
            })
            .await?;
        writes.push(started.elapsed());
        deny.push(
            flows::until(bench.netns_path("src"), target()?, false)
                .await?
                .saturating_duration_since(started),
        );
    }
    Ok(RuleLatency {
        allow,
        deny,
        writes,
    })
}

fn container_latency(bench: &Bench, trials: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for i in 0..trials.min(200) {
        let name = format!("lat{i}");
        let ip = format!("192.168.202.{}", i + 1);
        let started = bench.add_workload(&name, &ip)?;
        samples.push(until_answers(bench, &ip, started)?);
    }
    Ok(samples)
}

/// Where Debian's containernetworking-plugins puts the reference plugins.
const CNI_PATH: &str = "/usr/lib/cni";

/// One CNI call of the reference `ptp` plugin (host-local IPAM) for namespace `netns`;
/// its stdout.
fn cni(command: &str, netns: &str, container: &str, data_dir: &str) -> Result<String> {
    let config = format!(
        r#"{{"cniVersion":"0.4.0","name":"bench-ptp","type":"ptp","ipMasq":false,"ipam":{{"type":"host-local","subnet":"10.252.0.0/16","routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{data_dir}"}}}}"#
    );
    let mut child = std::process::Command::new(format!("{CNI_PATH}/ptp"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/var/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot run {CNI_PATH}/ptp (Debian's containernetworking-plugins): {e}")
        })?;
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), config.as_bytes())?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ptp {command}: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pings from src (an attempt every millisecond) until `ip` answers.
fn until_answers(bench: &Bench, ip: &str, started: Instant) -> Result<Duration> {
    let answered = flows::until_pinged(
        bench.netns_path("src"),
        ip.parse()?,
        started + Duration::from_secs(30),
    )?;
    Ok(answered - started)
}

/// The reference: a namespace wired by the CNI `ptp` plugin with `host-local` IPAM (no
/// datastore, no policy) until it answers the same pings from src.
fn cni_latency(bench: &Bench, trials: usize) -> Result<Vec<Duration>> {
    let data_dir = format!("/var/run/calico-lab/{}/cni-host-local", bench.lab);
    let mut samples = Vec::new();
    for i in 0..trials.min(200) {
        let netns = format!("{}-cni{i}", bench.lab);
        let container = format!("bench-cni-{i}");
        run_command("ip", &["netns", "add", &netns])?;
        let trial = (|| {
            let started = Instant::now();
            let result: serde_json::Value =
                serde_json::from_str(&cni("ADD", &netns, &container, &data_dir)?)?;
            let address = result["ips"][0]["address"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("ptp gave no address: {result}"))?;
            let ip = address.split('/').next().unwrap_or(address).to_string();
            until_answers(bench, &ip, started)
        })();
        let _ = cni("DEL", &netns, &container, &data_dir);
        let _ = run_command("ip", &["netns", "del", &netns]);
        samples.push(trial?);
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(samples)
}

/// etcd's own latency: a put until a watch on the key sees it.
async fn etcd_watch_latency(bench: &Bench, trials: usize) -> Result<Vec<Duration>> {
    let store = bench.resources.store();
    let mut watch = store.watch(&["/bench-latency/"], 0).await?;
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
    let RuleLatency {
        allow,
        deny,
        writes,
    } = rule_latency(bench, trials).await?;
    // The rule changes leave dst's policy to be compiled again: not while anything is timed.
    bench.wait_compiled(DST_IP)?;
    let reference = cni_latency(bench, trials)?;
    let added = container_latency(bench, trials)?;
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
        "rule removed -> new TCP flow denied",
        summary(&deny)
    );
    println!(
        "  {:<52} {}",
        "  of which the writes (read + compare-and-swap)",
        summary(&writes)
    );
    // The writes alternate: an add's is at 2i, its removal's at 2i + 1.
    if let Some((i, slowest)) = allow.iter().enumerate().max_by_key(|(_, d)| **d) {
        println!(
            "  slowest allowed: {:.1} ms, of which its write {:.1} ms",
            slowest.as_secs_f64() * 1e3,
            writes[2 * i].as_secs_f64() * 1e3
        );
    }
    println!(
        "  {:<52} {}",
        "container add + profile set -> answers ping",
        summary(&added)
    );
    println!(
        "  {:<52} {}",
        "CNI ptp + host-local ADD -> answers ping (reference)",
        summary(&reference)
    );
    let p50 = |v: &[Duration]| crate::stats::percentile(&crate::stats::millis(v), 50.0);
    println!(
        "  ratio of rule->allowed p50 to the etcd baseline p50: {:.1}",
        p50(&allow) / p50(&etcd)
    );
    println!(
        "  ratio of container add p50 to the CNI reference p50: {:.1}",
        p50(&added) / p50(&reference)
    );
    Ok(())
}
