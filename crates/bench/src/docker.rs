//! Docker: how long from `docker run` until another container's ping is answered.
//!
//! - calico network: `docker run --net <calico network> --ip …` (the libnetwork drivers, the
//!   agent programming the endpoint);
//! - `--net=none` + calicoctl: `docker run --net=none`, `calicoctl container add`, `calicoctl
//!   container … profile append` (seed 001's way);
//! - the Docker API proxy: `DOCKER_HOST=localhost:2377 docker run -e CALICO_IP=… -e
//!   CALICO_PROFILE=…` (seed 000's way);
//! - the baseline, in the same host and run: the same `docker run` on a Docker bridge network.
//!
//! Each trial starts a pinger (`ping -i 0.01` from a container already on the network, its ARP
//! retrying every 10 ms) before the clock starts, and stops the clock at its first answer. Trials of the four kinds are
//! interleaved, so a slower moment of the machine costs each the same. The lab is not populated:
//! this measures the Docker path, not the agent at scale.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::stats::{millis, percentile, summary};
use crate::workloads::run;

const CALICO_NET: &str = "bench-calico";
const CALICO_SUBNET: &str = "192.168.210.0/24";
const BRIDGE_NET: &str = "bench-bridge";
const BRIDGE_SUBNET: &str = "172.31.210.0/24";
const PROFILE: &str = CALICO_NET;
/// The address each trial's container gets (it is removed after the trial).
const CALICO_IP: &str = "192.168.210.10";
const NONE_IP: &str = "192.168.210.11";
const PROXY_IP: &str = "192.168.210.12";
/// calico-node's Docker API proxy on the lab host.
const PROXY: &str = "localhost:2377";
const BRIDGE_IP: &str = "172.31.210.10";
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    CalicoNetwork,
    NoneThenCalicoctl,
    Proxy,
    Bridge,
}

impl Kind {
    fn pinger(self) -> &'static str {
        match self {
            Kind::Bridge => "bench-pinger-bridge",
            _ => "bench-pinger-calico",
        }
    }

    fn target(self) -> &'static str {
        match self {
            Kind::CalicoNetwork => CALICO_IP,
            Kind::NoneThenCalicoctl => NONE_IP,
            Kind::Proxy => PROXY_IP,
            Kind::Bridge => BRIDGE_IP,
        }
    }
}

fn docker(args: &[&str]) -> Result<String> {
    run("docker", args)
}

/// A docker command through calico-node's proxy.
fn proxied(args: &[&str]) -> Result<String> {
    let mut all = vec![format!("DOCKER_HOST={PROXY}"), "docker".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    run("env", &all)
}

/// The two networks and a pinger container on each; idempotent.
fn set_up() -> Result<()> {
    tear_down();
    docker(&[
        "network",
        "create",
        "--driver",
        "calico",
        "--ipam-driver",
        "calico",
        "--subnet",
        CALICO_SUBNET,
        CALICO_NET,
    ])?;
    docker(&["network", "create", "--subnet", BRIDGE_SUBNET, BRIDGE_NET])?;
    // ARP retries every 10 ms instead of every second: a bridge neighbour being resolved
    // while its container starts must not wait on a timer (Calico's host resolves its side only
    // once the route exists, so it never does).
    for (name, net) in [
        (Kind::CalicoNetwork.pinger(), CALICO_NET),
        (Kind::Bridge.pinger(), BRIDGE_NET),
    ] {
        docker(&[
            "run",
            "-tid",
            "--net",
            net,
            "--sysctl",
            "net.ipv4.neigh.eth0.retrans_time_ms=10",
            "--name",
            name,
            "busybox",
        ])?;
    }
    Ok(())
}

fn tear_down() {
    let _ = docker(&[
        "rm",
        "-f",
        Kind::CalicoNetwork.pinger(),
        Kind::Bridge.pinger(),
        "bench-trial",
    ]);
    let _ = docker(&["network", "rm", CALICO_NET, BRIDGE_NET]);
}

/// Starts pinging `ip` from `pinger` every 10 ms; the receiver gets a message at the first
/// answer. Returns once the pinger is sending.
fn start_pinger(pinger: &str, ip: &str) -> Result<(std::process::Child, mpsc::Receiver<Instant>)> {
    let mut child = Command::new("docker")
        // A terminal, so busybox writes each line as it comes (into a pipe it would buffer).
        .args(["exec", "-t", pinger, "ping", "-i", "0.01", "-W", "30", ip])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the pinger")?;
    let stdout = child.stdout.take().context("the pinger's output")?;
    let (started_tx, started_rx) = mpsc::channel();
    let (answered_tx, answered_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("PING ") {
                let _ = started_tx.send(());
            } else if line.contains("bytes from") {
                let _ = answered_tx.send(Instant::now());
                return;
            }
        }
    });
    started_rx
        .recv_timeout(TIMEOUT)
        .context("the pinger never started")?;
    Ok((child, answered_rx))
}

/// One trial: the container started the way `kind` says, until the pinger's first answer.
fn trial(kind: Kind) -> Result<Duration> {
    let (mut pinger, answered) = start_pinger(kind.pinger(), kind.target())?;
    let started = Instant::now();
    let result = (|| {
        match kind {
            Kind::CalicoNetwork => {
                docker(&[
                    "run",
                    "-tid",
                    "--net",
                    CALICO_NET,
                    "--ip",
                    CALICO_IP,
                    "--name",
                    "bench-trial",
                    "busybox",
                ])?;
            }
            Kind::Bridge => {
                docker(&[
                    "run",
                    "-tid",
                    "--net",
                    BRIDGE_NET,
                    "--ip",
                    BRIDGE_IP,
                    "--name",
                    "bench-trial",
                    "busybox",
                ])?;
            }
            Kind::Proxy => {
                let ip = format!("CALICO_IP={PROXY_IP}");
                let profile = format!("CALICO_PROFILE={PROFILE}");
                proxied(&[
                    "run",
                    "-e",
                    &ip,
                    "-e",
                    &profile,
                    "-tid",
                    "--name",
                    "bench-trial",
                    "busybox",
                ])?;
            }
            Kind::NoneThenCalicoctl => {
                docker(&[
                    "run",
                    "-tid",
                    "--net=none",
                    "--name",
                    "bench-trial",
                    "busybox",
                ])?;
                run("calicoctl", &["container", "add", "bench-trial", NONE_IP])?;
                run(
                    "calicoctl",
                    &["container", "bench-trial", "profile", "append", PROFILE],
                )?;
            }
        }
        let at = answered
            .recv_timeout(TIMEOUT)
            .with_context(|| format!("{kind:?}: no answer from {}", kind.target()))?;
        Ok(at - started)
    })();
    let _ = pinger.kill();
    let _ = pinger.wait();
    if kind == Kind::NoneThenCalicoctl {
        let _ = run("calicoctl", &["container", "remove", "bench-trial"]);
    }
    // Through the proxy, the address is free again once `rm` returns.
    proxied(&["rm", "-f", "bench-trial"])?;
    result
}

pub fn run_all(trials: usize) -> Result<()> {
    if docker(&["version", "--format", "{{.Server.Version}}"]).is_err() {
        bail!("no Docker engine on this host: run the benchmark on a lab made with --docker");
    }
    set_up()?;
    if proxied(&["version", "--format", "{{.Server.Version}}"]).is_err() {
        bail!("calico-node serves no Docker API proxy on {PROXY} here (calicoctl node --docker-proxy)");
    }
    let kinds = [
        Kind::Bridge,
        Kind::CalicoNetwork,
        Kind::NoneThenCalicoctl,
        Kind::Proxy,
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    // One untimed round: images, blocks and first-use caches warm.
    for kind in kinds {
        trial(kind)?;
    }
    for _ in 0..trials {
        for (i, kind) in kinds.iter().enumerate() {
            samples[i].push(trial(*kind)?);
        }
    }
    tear_down();
    let p50 = |s: &[Duration]| percentile(&millis(s), 50.0);
    let bridge = p50(&samples[0]);
    println!("\n## docker run until another container's ping is answered ({trials} trials each)");
    println!(
        "docker bridge network (baseline)       {}",
        summary(&samples[0])
    );
    for (i, label) in [
        (1, "calico network (libnetwork)          "),
        (2, "--net=none + calicoctl container add "),
        (3, "API proxy, -e CALICO_IP (seed 000)   "),
    ] {
        println!(
            "{label}  {}   ratio {:.2}",
            summary(&samples[i]),
            p50(&samples[i]) / bridge
        );
    }
    Ok(())
}
