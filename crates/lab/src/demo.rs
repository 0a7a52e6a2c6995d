//! `calico-lab demo`: seed 001's policy scenario, with every command printed and the
//! resulting reachability matrix. All five workloads run on calico-01 until hosts route to
//! each other (BGP); the seed puts D and E on calico-02.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::lab::Lab;

const HOST: &str = "calico-01";
const WORKLOADS: [(&str, &str, &str); 5] = [
    ("workload-A", "192.168.0.1", "PROF_A_C_E"),
    ("workload-B", "192.168.0.2", "PROF_B"),
    ("workload-C", "192.168.0.3", "PROF_A_C_E"),
    ("workload-D", "192.168.0.4", "PROF_D"),
    ("workload-E", "192.168.0.5", "PROF_A_C_E"),
];

/// Runs a seed command line on the host through a shell (the seed uses `$(…)`).
fn on_host(lab: &Lab, line: &str) -> Result<()> {
    println!("{HOST}$ {line}");
    let output = lab
        .host_exec(HOST, &["sh".into(), "-c".into(), line.into()])
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

fn pings(lab: &Lab, from: &str, to_ip: &str) -> Result<bool> {
    let ping = ["ping", "-c", "1", "-W", "1", to_ip].map(String::from);
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
        .any(|n| n == &lab.workload_netns(WORKLOADS[0].0))
    {
        bail!(
            "lab {} already has the demo's workloads; run 'calico-lab down --name {}' first",
            lab.name,
            lab.name
        );
    }
    println!("## A lab with one host");
    lab.up_fabric()?;
    lab.up_host(1)?;

    println!("\n## Five workloads without networking (like docker run --net=none)");
    for (name, _, _) in WORKLOADS {
        println!("$ calico-lab workload add {HOST} {name}");
        lab.add_workload(HOST, name)?;
    }

    println!("\n## Seed 001: add Calico networking, profiles, and assign them");
    for (name, ip, _) in WORKLOADS {
        on_host(lab, &format!("calicoctl container add {name} {ip}"))?;
    }
    for profile in ["PROF_A_C_E", "PROF_B", "PROF_D"] {
        on_host(lab, &format!("calicoctl profile add {profile}"))?;
    }
    for (name, _, profile) in WORKLOADS {
        on_host(lab, &format!("calicoctl endpoint $(calicoctl container {name} endpoint-id show) profile append {profile}"))?;
    }

    // The agent programs the kernel within moments; wait for it rather than guess.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pings(lab, "workload-A", "192.168.0.3")? {
        if Instant::now() > deadline {
            bail!(
                "workload-A never reached workload-C; see the agent's log in {}/logs",
                lab.dir.display()
            );
        }
    }

    println!("\n## Who can ping whom (row pings column)");
    print!("{:12}", "");
    for (name, _, _) in WORKLOADS {
        print!("{:>12}", name);
    }
    println!();
    let mut matrix = Vec::new();
    for (from, _, _) in WORKLOADS {
        print!("{from:12}");
        for (to, ip, _) in WORKLOADS {
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
            .all(|(to, _, _)| !reaches("workload-B", to) && !reaches("workload-D", to));
    if !expected {
        bail!("the reachability does not match seed 001");
    }
    println!("\nAs seed 001 says: A, C and E reach each other; B and D reach no one.");
    println!("The lab is still up: 'calico-lab exec {HOST} --name {} -- calicoctl …'; remove it with 'calico-lab down --name {}'.", lab.name, lab.name);
    Ok(())
}
