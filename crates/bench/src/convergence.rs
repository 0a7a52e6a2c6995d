//! Route convergence between hosts: `calicoctl container add` on calico-01 until calico-02 has
//! the route, and until a workload on calico-02 gets a ping answer from the new container.
//! The baseline, measured in the same run on the same two BIRDs: a kernel route added by hand
//! on calico-01 until it is in calico-02's kernel.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::flows;
use crate::stats::{millis, percentile, summary};
use crate::workloads::{run, Bench, HOST, PROFILE, SRC_IP};

const FAR_HOST: &str = "calico-02";
const FAR: &str = "far";
const FAR_IP: &str = "192.168.204.1";
/// calico-01's side of a veth pair that the baseline's routes point at.
const BASELINE_LINK: &str = "conv0";
const TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the lab host routes `ip` as the benchmark waits for: on calico-01, the address's
/// own route with protocol 80 (the agent's, or the baseline's); on calico-02, any route BGP
/// brought that covers it (the address's, or its block's).
fn has_route(bench: &Bench, host: &str, ip: &str) -> Result<bool> {
    let netns = format!("{}-{host}", bench.lab);
    let args: &[&str] = if host == HOST {
        &["-n", &netns, "route", "show", ip, "proto", "80"]
    } else {
        &["-n", &netns, "route", "show", "match", ip, "proto", "bird"]
    };
    Ok(!run("ip", args)?.trim().is_empty())
}

/// Polls until `host` has (or no longer has) the route; false if `give_up` says to stop first.
fn until_route(
    bench: &Bench,
    host: &str,
    destination: &str,
    present: bool,
    mut give_up: impl FnMut() -> Result<bool>,
) -> Result<bool> {
    let deadline = Instant::now() + TIMEOUT;
    while has_route(bench, host, destination)? != present {
        if give_up()? {
            return Ok(false);
        }
        if Instant::now() > deadline {
            bail!("{host}: the route to {destination} never became present={present}");
        }
    }
    Ok(true)
}

/// The far workload on calico-02, in the bench profile, once it reaches src on calico-01.
fn add_far_workload(bench: &Bench) -> Result<()> {
    let lab = bench.lab_binary()?;
    let lab = lab.to_str().unwrap_or("calico-lab");
    run(
        lab,
        &["workload", "add", FAR_HOST, FAR, "--name", &bench.lab],
    )?;
    let on_far_host = |args: &[&str]| {
        let mut all = vec!["exec", FAR_HOST, "--name", &bench.lab, "--", "calicoctl"];
        all.extend_from_slice(args);
        run(lab, &all)
    };
    on_far_host(&["container", "add", FAR, FAR_IP])?;
    on_far_host(&["container", FAR, "profile", "set", PROFILE])?;
    flows::until_pinged(
        bench.netns_path(FAR),
        SRC_IP.parse()?,
        Instant::now() + TIMEOUT,
    )
    .map_err(|e| {
        anyhow::anyhow!("{FAR} on {FAR_HOST} never reached src on {HOST} ({e}): is BGP up?")
    })?;
    Ok(())
}

/// Samples of one container trial's milestones.
#[derive(Default)]
struct Milestones {
    local_route: Vec<Duration>,
    remote_route: Vec<Duration>,
    answered: Vec<Duration>,
}

/// container add + profile set on calico-01 until calico-01 routes to it (the agent's part),
/// until calico-02 does (BGP's part), and until a ping from calico-02's workload is answered.
fn container_convergence(bench: &Bench, trials: usize) -> Result<Milestones> {
    let mut m = Milestones::default();
    for i in 0..trials.min(160) {
        let name = format!("conv{i}");
        // An address in a block of its own (192.168.208.0/26, .64/26, …): calico-01 claims a
        // new block each trial, and BGP must carry it to calico-02.
        let ip = format!("192.168.{}.{}", 208 + i / 4, (i % 4) * 64 + 1);
        let started = bench.add_workload(&name, &ip)?;
        until_route(bench, HOST, &ip, true, || Ok(false))?;
        m.local_route.push(started.elapsed());
        until_route(bench, FAR_HOST, &ip, true, || Ok(false))?;
        m.remote_route.push(started.elapsed());
        let answered = flows::until_pinged(bench.netns_path(FAR), ip.parse()?, started + TIMEOUT)
            .map_err(|e| anyhow::anyhow!("{name} never answered {FAR}: {e}"))?;
        m.answered.push(answered - started);
    }
    Ok(m)
}

/// A route added by hand on calico-01 (protocol 80, which its BIRD exports) until calico-02's
/// kernel has it. calico-node removes protocol-80 routes it did not make when it next checks
/// for drift; a trial it wins is run again.
fn bird_baseline(bench: &Bench, trials: usize) -> Result<Vec<Duration>> {
    run(
        "ip",
        &[
            "link",
            "add",
            BASELINE_LINK,
            "type",
            "veth",
            "peer",
            "name",
            "conv1",
        ],
    )?;
    let result = (|| {
        run("ip", &["link", "set", BASELINE_LINK, "up"])?;
        run("ip", &["link", "set", "conv1", "up"])?;
        let mut samples = Vec::new();
        let mut n = 0;
        while samples.len() < trials {
            n += 1;
            let destination = format!("10.251.{}.{}", n / 250, n % 250 + 1);
            let started = Instant::now();
            run(
                "ip",
                &[
                    "route",
                    "add",
                    &destination,
                    "dev",
                    BASELINE_LINK,
                    "proto",
                    "80",
                ],
            )?;
            let removed_early = || Ok(!has_route(bench, HOST, &destination)?);
            if until_route(bench, FAR_HOST, &destination, true, removed_early)? {
                samples.push(started.elapsed());
            }
            let _ = run("ip", &["route", "del", &destination]);
            until_route(bench, FAR_HOST, &destination, false, || Ok(false))?;
        }
        Ok(samples)
    })();
    let _ = run("ip", &["link", "del", BASELINE_LINK]);
    result
}

pub fn run_all(bench: &Bench, trials: usize) -> Result<()> {
    println!("\nRoute convergence between two hosts, {trials} trials each:");
    add_far_workload(bench)?;
    let baseline = bird_baseline(bench, trials)?;
    let m = container_convergence(bench, trials)?;
    println!(
        "  {:<60} {}",
        "kernel route on calico-01 -> on calico-02 (BIRD, baseline)",
        summary(&baseline)
    );
    println!(
        "  {:<60} {}",
        "container add + profile set -> route on calico-01",
        summary(&m.local_route)
    );
    println!(
        "  {:<60} {}",
        "container add + profile set -> route on calico-02",
        summary(&m.remote_route)
    );
    println!(
        "  {:<60} {}",
        "container add + profile set -> ping from calico-02 answered",
        summary(&m.answered)
    );
    let p50 = |v: &[Duration]| percentile(&millis(v), 50.0);
    println!(
        "  ratio of ping-answered p50 to the BIRD baseline p50: {:.1}",
        p50(&m.answered) / p50(&baseline)
    );
    Ok(())
}
