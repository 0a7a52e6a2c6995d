//! `calico-lab demo`: seed 001's scenario as written (A, B, C on calico-01; D, E on calico-02,
//! the hosts routing to each other with BGP), every command printed, then the reachability
//! matrix, checked against the seed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::lab::Lab;

/// (host, workload, address, profile), as in seed 001.
const WORKLOADS: [(&str, &str, &str, &str); 5] = [
    ("calico-01", "workload-A", "192.168.0.1", "PROF_A_C_E"),
    ("calico-01", "workload-B", "192.168.0.2", "PROF_B"),
    ("calico-01", "workload-C", "192.168.0.3", "PROF_A_C_E"),
    ("calico-02", "workload-D", "192.168.0.4", "PROF_D"),
    ("calico-02", "workload-E", "192.168.0.5", "PROF_A_C_E"),
];

/// Runs a seed command line on a host through a shell (the seed uses `$(…)`).
fn on_host(lab: &Lab, host: &str, line: &str) -> Result<()> {
    println!("{host}$ {line}");
    let output = lab
        .host_exec(host, &["sh".into(), "-c".into(), line.into()])
        .output()?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    if !output.status.success() {
        bail!(
            "'{line}' failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Whether any of three pings, 0.2 s apart, is answered (a lost packet is not a policy).
fn pings(lab: &Lab, from: &str, to_ip: &str) -> Result<bool> {
    let ping = ["ping", "-c", "3", "-i", "0.2", "-W", "1", to_ip].map(String::from);
    Ok(lab
        .workload_exec(from, &ping)?
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success())
}

pub fn run(lab: &Lab) -> Result<()> {
    if lab
        .namespaces()?
        .iter()
        .any(|n| n == &lab.workload_netns(WORKLOADS[0].1))
    {
        bail!(
            "lab {} already has the demo's workloads; run 'calico-lab down --name {}' first",
            lab.name,
            lab.name
        );
    }
    println!("## A lab with two hosts, each running calico-node (policy, and BGP with BIRD)");
    lab.up_fabric()?;
    lab.up_host(1)?;
    lab.up_host(2)?;

    println!("\n## Five workloads without networking (like docker run --net=none)");
    for (host, name, _, _) in WORKLOADS {
        println!("$ calico-lab workload add {host} {name}");
        lab.add_workload(host, name)?;
    }

    println!("\n## Seed 001: add Calico networking, profiles, and assign them");
    for (host, name, ip, _) in WORKLOADS {
        on_host(lab, host, &format!("calicoctl container add {name} {ip}"))?;
    }
    for profile in ["PROF_A_C_E", "PROF_B", "PROF_D"] {
        on_host(
            lab,
            "calico-01",
            &format!("calicoctl profile add {profile}"),
        )?;
    }
    for (host, name, _, profile) in WORKLOADS {
        let line = format!("calicoctl endpoint $(calicoctl container {name} endpoint-id show) profile append {profile}");
        on_host(lab, host, &line)?;
    }

    // Policy is programmed and routes are exchanged within moments: wait for it, not guess.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pings(lab, "workload-A", "192.168.0.5")? {
        if Instant::now() > deadline {
            bail!(
                "workload-A never reached workload-E; see the agents' logs in {}/logs",
                lab.dir.display()
            );
        }
    }

    println!("\n## Who can ping whom (row pings column)");
    print!("{:12}", "");
    for (_, name, _, _) in WORKLOADS {
        print!("{name:>12}");
    }
    println!();
    let mut matrix = Vec::new();
    for (_, from, _, _) in WORKLOADS {
        print!("{from:12}");
        for (_, to, ip, _) in WORKLOADS {
            let cell = if from == to {
                "-"
            } else if pings(lab, from, ip)? {
                "yes"
            } else {
                "no"
            };
            matrix.push(((from, to), cell));
            print!("{cell:>12}");
        }
        println!();
    }
    let reaches = |from: &str, to: &str| {
        matrix
            .iter()
            .any(|((f, t), c)| *f == from && *t == to && *c == "yes")
    };
    let expected = reaches("workload-A", "workload-C")
        && reaches("workload-A", "workload-E")
        && !reaches("workload-A", "workload-B")
        && !reaches("workload-A", "workload-D")
        && WORKLOADS
            .iter()
            .all(|(_, to, _, _)| !reaches("workload-B", to) && !reaches("workload-D", to));
    if !expected {
        bail!("the reachability does not match seed 001");
    }
    println!(
        "\nAs seed 001 says: A, C and E reach each other (E across hosts); B and D reach no one."
    );
    println!(
        "The lab is still up: 'calico-lab exec calico-01 --name {} -- calicoctl …'; remove it with 'calico-lab down --name {}'.",
        lab.name, lab.name
    );
    Ok(())
}
