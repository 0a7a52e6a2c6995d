//! iperf3 between two workloads through the host, and new TCP connections per second, in
//! set-ups taken in turn each round: no firewall at all; a stateful table that accepts
//! everything, with and without a nat hook (the floor of any stateful firewall); our policy
//! (the agent running with the populated datastore), to dst (1,001 profiles) and to `one`
//! beside it (one profile); and a linear iptables chain every packet walks, as the
//! original's rules did without sets (one rule per remote endpoint, up to 10,000).
//!
//! iperf3's one stream is established traffic, which takes the `ct state established` path;
//! every new connection walks dst's profile chains, so the connection rate is where the cost
//! of policy shows.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::flows::{self, Listener};
use crate::populate::Scale;
use crate::stats::percentile;
use crate::workloads::{run as run_command, Bench, DST_IP, HOST, ONE_IP, SRC_IP};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    NoFirewall,
    /// A stateful table that accepts everything: what conntrack costs a new flow.
    ConntrackOnly,
    /// The same with a nat hook (as ours has for nat-outgoing), which every new flow meets.
    ConntrackNat,
    Calico,
    CalicoOneProfile,
    LinearIptables,
}

impl Setup {
    /// The workload the set-up's flows go to.
    fn destination(self) -> (&'static str, &'static str) {
        match self {
            Setup::CalicoOneProfile => ("one", ONE_IP),
            _ => ("dst", DST_IP),
        }
    }
}

pub fn clear_firewall() -> Result<()> {
    let _ = run_command("calicoctl", &["node", "stop"]);
    for table in [
        calico_dataplane::nft::TABLE,
        calico_dataplane::nft::COMPILED_TABLE,
    ] {
        let _ = run_command("nft", &["delete", "table", "inet", table]);
    }
    let _ = run_command("nft", &["delete", "table", "inet", FLOOR_TABLE]);
    run_command("iptables", &["-w", "-F", "FORWARD"])?;
    Ok(())
}

/// The linear chain's length: one rule per remote endpoint, at most this many (beyond it
/// the chain only shows the same thing more slowly).
const LINEAR_RULES: usize = 10_000;
/// Where the connection rate is measured (the bench profile admits src there).
const CONNECT_PORT: u16 = 5202;
/// The table of the conntrack-only set-ups.
const FLOOR_TABLE: &str = "bench-floor";
/// How long each connection-rate sample runs.
const CONNECT_PERIOD: Duration = Duration::from_secs(1);

/// A table that accepts everything after a conntrack test, as a stateful firewall's floor;
/// with `nat`, also a postrouting nat chain that masquerades nothing (empty sets).
fn conntrack_only(nat: bool) -> Result<()> {
    let mut script = format!(
        "table inet {FLOOR_TABLE} {{\n\
         chain forward {{ type filter hook forward priority filter - 5; policy accept;\n\
         ct state invalid drop\nct state established,related accept\naccept\n}}\n"
    );
    if nat {
        script.push_str(
            "set masq4 { type ipv4_addr; flags interval; }\n\
             set pools4 { type ipv4_addr; flags interval; }\n\
             chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n\
             ip saddr @masq4 ip daddr != @pools4 masquerade\n}\n",
        );
    }
    script.push_str("}\n");
    run_with_input("nft", &["-f", "-"], &script)
}

/// Runs `program` with `input` on its stdin; an error if it fails.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), input.as_bytes())?;
    if !child.wait()?.success() {
        bail!("{program} {} refused its input", args.join(" "));
    }
    Ok(())
}

fn linear_iptables(scale: Scale) -> Result<()> {
    let mut rules = String::from("*filter\n:FORWARD ACCEPT [0:0]\n");
    for n in 0..scale.endpoints.min(LINEAR_RULES) {
        rules.push_str(&format!(
            "-A FORWARD -s {}/32 -p tcp --dport 5201:5202 -j DROP\n",
            Scale::remote_ip(n)
        ));
    }
    rules.push_str("-A FORWARD -j ACCEPT\nCOMMIT\n");
    run_with_input("iptables-restore", &["-w"], &rules)
}

pub fn start_agent(bench: &Bench) -> Result<()> {
    let ip = "172.17.8.101";
    let logs = format!("/var/run/calico-lab/{}/logs", bench.lab);
    run_command(
        "calicoctl",
        &["node", "--ip", ip, "--name", HOST, "--log-dir", &logs],
    )?;
    Ok(())
}

fn set_up(bench: &Bench, setup: Setup, scale: Scale) -> Result<()> {
    clear_firewall()?;
    match setup {
        Setup::NoFirewall => {}
        Setup::ConntrackOnly => conntrack_only(false)?,
        Setup::ConntrackNat => conntrack_only(true)?,
        Setup::Calico | Setup::CalicoOneProfile => start_agent(bench)?,
        Setup::LinearIptables => linear_iptables(scale)?,
    }
    // Wait until src reaches the destination's iperf3 port through whatever is in place.
    let (workload, ip) = setup.destination();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listener = bench
            .in_workload(workload, &["iperf3", "-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut listener = Server(listener);
        wait_listening(bench, workload, 5201)?;
        let connect = bench
            .in_workload("src", &["nc", "-z", "-w", "1", ip, "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let _ = listener.0.kill();
        let _ = listener.0.wait();
        if connect.success() {
            // What is measured is dst's compiled policy, and nothing may overlap compiling.
            if matches!(setup, Setup::Calico | Setup::CalicoOneProfile) {
                bench.wait_compiled(DST_IP)?;
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("src never reached {workload}:5201 in set-up {setup:?}");
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

/// One iperf3 run to `(workload, ip)`; bits per second received.
fn iperf(bench: &Bench, (workload, ip): (&str, &str)) -> Result<f64> {
    let _server = Server(
        bench
            .in_workload(workload, &["iperf3", "-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_listening(bench, workload, 5201)?;
    let out = bench
        .in_workload("src", &["iperf3", "-c", ip, "-p", "5201", "-t", "4", "-J"])
        .output()?;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 failed: {}", report["error"]))
}

/// New connections per second from src to `(workload, ip)`, through whatever is in place.
fn connection_rate(bench: &Bench, (workload, ip): (&str, &str)) -> Result<flows::Rate> {
    let target = format!("{ip}:{CONNECT_PORT}").parse()?;
    let _listener = Listener::start(bench.netns_path(workload), target)?;
    flows::rate(bench.netns_path("src"), target, CONNECT_PERIOD)
}

pub async fn run(bench: &Bench, rounds: usize, scale: Scale) -> Result<()> {
    // The set-ups stop the agent: it must have routed both workloads first.
    bench.wait_routed(SRC_IP)?;
    bench.wait_routed(DST_IP)?;
    bench.wait_routed(ONE_IP)?;
    let setups = [
        Setup::NoFirewall,
        Setup::ConntrackOnly,
        Setup::ConntrackNat,
        Setup::Calico,
        Setup::CalicoOneProfile,
        Setup::LinearIptables,
    ];
    let mut results: Vec<(Setup, Vec<f64>, Vec<f64>)> = setups
        .iter()
        .map(|s| (*s, Vec::new(), Vec::new()))
        .collect();
    for round in 1..=rounds {
        // Every other round in the reverse order, so that no set-up always follows the same
        // one (what the one before leaves behind, such as its conntrack entries expiring,
        // would otherwise count against it every time).
        let mut order: Vec<usize> = (0..results.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for index in order {
            let (setup, throughput, connections) = &mut results[index];
            set_up(bench, *setup, scale)?;
            let gbits = iperf(bench, setup.destination())? / 1e9;
            let rate = connection_rate(bench, setup.destination())?;
            println!(
                "  round {round}: {setup:?} {gbits:.2} Gbit/s, {:.0} new connections/s ({} unanswered)",
                rate.per_second, rate.unanswered
            );
            throughput.push(gbits);
            connections.push(rate.per_second);
        }
    }
    clear_firewall()?;
    start_agent(bench)?;
    let baseline = percentile(&results[0].1, 50.0);
    let connect_baseline = percentile(&results[0].2, 50.0);
    println!("\nThroughput: iperf3, one TCP stream src -> dst through the host, {rounds} interleaved rounds of 4 s;");
    println!("new connections src -> dst (dst carries {} profiles), one after another for 1 s each round", crate::populate::DST_PROFILES + 1);
    println!(
        "{:<40} {:>13} {:>8} {:>16} {:>8}",
        "set-up", "median", "ratio", "connections/s", "ratio"
    );
    for (setup, throughput, connections) in &results {
        let label = match setup {
            Setup::NoFirewall => "no firewall (baseline)".to_string(),
            Setup::ConntrackOnly => "conntrack, accept all".to_string(),
            Setup::ConntrackNat => "conntrack and a nat hook, accept all".to_string(),
            Setup::Calico => "calico policy (nft sets and maps)".to_string(),
            Setup::CalicoOneProfile => "calico policy, to `one` (1 profile)".to_string(),
            Setup::LinearIptables => format!(
                "linear iptables ({} rules)",
                scale.endpoints.min(LINEAR_RULES)
            ),
        };
        let median = percentile(throughput, 50.0);
        let rate = percentile(connections, 50.0);
        println!(
            "{label:<40} {median:>6.2} Gbit/s {:>8.3} {rate:>16.0} {:>8.3}",
            median / baseline,
            rate / connect_baseline
        );
    }
    Ok(())
}
