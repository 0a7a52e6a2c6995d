//! iperf3 between two workloads through the host, in three set-ups taken in turn each round:
//! no firewall at all; our policy (the agent running with the populated datastore); and the
//! same scale as a linear iptables chain every packet walks, as the original's rules did
//! without sets (10,000 rules, one per remote endpoint).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::populate::REMOTE_ENDPOINTS;
use crate::stats::percentile;
use crate::workloads::{run as run_command, Bench, DST_IP, HOST, SRC_IP};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    NoFirewall,
    Calico,
    LinearIptables,
}

fn clear_firewall() -> Result<()> {
    let _ = run_command("calicoctl", &["node", "stop"]);
    let _ = run_command("nft", &["delete", "table", "inet", "calico"]);
    run_command("iptables", &["-w", "-F", "FORWARD"])?;
    Ok(())
}

fn linear_iptables() -> Result<()> {
    let mut rules = String::from("*filter\n:FORWARD ACCEPT [0:0]\n");
    for n in 0..REMOTE_ENDPOINTS {
        rules.push_str(&format!(
            "-A FORWARD -s 10.200.{}.{}/32 -p tcp --dport 5201 -j DROP\n",
            n / 250,
            n % 250 + 1
        ));
    }
    rules.push_str("-A FORWARD -j ACCEPT\nCOMMIT\n");
    let mut child = std::process::Command::new("iptables-restore")
        .arg("-w")
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run iptables-restore")?;
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), rules.as_bytes())?;
    if !child.wait()?.success() {
        bail!("iptables-restore failed");
    }
    Ok(())
}

fn start_agent(bench: &Bench) -> Result<()> {
    let ip = "172.17.8.101";
    let logs = format!("/var/run/calico-lab/{}/logs", bench.lab);
    run_command(
        "calicoctl",
        &["node", "--ip", ip, "--name", HOST, "--log-dir", &logs],
    )?;
    Ok(())
}

fn set_up(bench: &Bench, setup: Setup) -> Result<()> {
    clear_firewall()?;
    match setup {
        Setup::NoFirewall => {}
        Setup::Calico => start_agent(bench)?,
        Setup::LinearIptables => linear_iptables()?,
    }
    // Wait until src reaches dst's iperf3 port through whatever is in place.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listener = bench
            .in_workload("dst", &["iperf3", "-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut listener = Server(listener);
        wait_listening(bench, "dst", 5201)?;
        let connect = bench
            .in_workload("src", &["nc", "-z", "-w", "1", DST_IP, "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let _ = listener.0.kill();
        let _ = listener.0.wait();
        if connect.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("src never reached dst:5201 in set-up {setup:?}");
        }
    }
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(bench: &Bench, workload: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = bench.in_workload(workload, &["ss", "-Hltn"]).output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {port} in {workload}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One iperf3 run; bits per second received.
fn iperf(bench: &Bench) -> Result<f64> {
    let _server = Server(
        bench
            .in_workload("dst", &["iperf3", "-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_listening(bench, "dst", 5201)?;
    let out = bench
        .in_workload(
            "src",
            &["iperf3", "-c", DST_IP, "-p", "5201", "-t", "4", "-J"],
        )
        .output()?;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 failed: {}", report["error"]))
}

pub async fn run(bench: &Bench, rounds: usize) -> Result<()> {
    // The set-ups stop the agent: it must have routed both workloads first.
    bench.wait_routed(SRC_IP)?;
    bench.wait_routed(DST_IP)?;
    let setups = [Setup::NoFirewall, Setup::Calico, Setup::LinearIptables];
    let mut results: Vec<(Setup, Vec<f64>)> = setups.iter().map(|s| (*s, Vec::new())).collect();
    for round in 1..=rounds {
        for (setup, samples) in results.iter_mut() {
            set_up(bench, *setup)?;
            let gbits = iperf(bench)? / 1e9;
            println!("  round {round}: {setup:?} {gbits:.2} Gbit/s");
            samples.push(gbits);
        }
    }
    clear_firewall()?;
    start_agent(bench)?;
    let baseline = percentile(&results[0].1, 50.0);
    println!("\nThroughput: iperf3, one TCP stream src -> dst through the host, {rounds} interleaved rounds of 4 s");
    println!("{:<40} {:>10} {:>16}", "set-up", "median", "ratio to none");
    for (setup, samples) in &results {
        let label = match setup {
            Setup::NoFirewall => "no firewall (baseline)".to_string(),
            Setup::Calico => "calico policy (nft sets and maps)".to_string(),
            Setup::LinearIptables => format!("linear iptables ({REMOTE_ENDPOINTS} rules)"),
        };
        let median = percentile(samples, 50.0);
        println!(
            "{label:<40} {median:>6.2} Gbit/s {:>10.3}",
            median / baseline
        );
    }
    Ok(())
}
