//! `calico-lab demo`: seed 001 as written, with Docker containers: A, B, C on calico-01 and D,
//! E on calico-02, each host running its own Docker engine and calico-node (policy, and BGP with
//! BIRD). Every command is printed as a user would type it on that host; then the seed's own
//! ping lines, and the whole reachability matrix, checked against what the seed says.

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

/// Runs a seed command line on a host through a shell (the seed uses `$(…)`); its stdout.
fn on_host(lab: &Lab, host: &str, line: &str) -> Result<String> {
    println!("{host}$ {line}");
    let output = lab
        .host_exec(host, &["sh".into(), "-c".into(), line.into()])
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    if !output.status.success() {
        bail!(
            "'{line}' failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(stdout)
}

fn host_of(workload: &str) -> &'static str {
    WORKLOADS
        .iter()
        .find(|(_, name, _, _)| *name == workload)
        .map_or("calico-01", |(host, _, _, _)| host)
}

/// Whether any of three pings, 0.2 s apart, is answered (a lost packet is not a policy).
fn pings(lab: &Lab, from: &str, to_ip: &str) -> Result<bool> {
    let ping = [
        "docker", "exec", from, "ping", "-c", "3", "-i", "0.2", "-W", "1", to_ip,
    ]
    .map(String::from);
    Ok(lab
        .host_exec(host_of(from), &ping)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success())
}

pub fn run(lab: &Lab) -> Result<()> {
    if lab.netns_exists(&lab.fabric()) {
        bail!(
            "lab {} already exists; the demo builds its own: run 'calico-lab down --name {}' first, or give another --name",
            lab.name,
            lab.name
        );
    }
    println!("## Two hosts, each with a Docker engine and calico-node (policy, and BGP with BIRD)");
    lab.up_fabric()?;
    lab.up_etcd(None)?;
    lab.up_host(1, true)?;
    lab.up_host(2, true)?;

    println!("\n## Starting containers");
    for (host, name, _, _) in WORKLOADS {
        on_host(
            lab,
            host,
            &format!("docker run --net=none --name {name} -tid busybox"),
        )?;
    }

    println!("\n## Adding Calico networking");
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

    println!("\n## Testing it, as the seed does");
    let seed_lines = [
        ("192.168.0.3", true),
        ("192.168.0.5", true),
        ("192.168.0.2", false),
        ("192.168.0.4", false),
    ];
    // The lines run side by side (an unanswered `ping -c 4` takes seconds) and print in order.
    let results: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = seed_lines
            .iter()
            .map(|(ip, _)| {
                let line = format!("docker exec workload-A ping -c 4 {ip}");
                scope.spawn(move || {
                    let output = lab
                        .host_exec("calico-01", &["sh".into(), "-c".into(), line.clone()])
                        .stdin(Stdio::null())
                        .output();
                    (line, output)
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("ping thread"))
            .collect()
    });
    for ((line, output), (_, reachable)) in results.into_iter().zip(seed_lines) {
        let output = output?;
        println!("calico-01$ {line}");
        print!("{}", String::from_utf8_lossy(&output.stdout));
        if output.status.success() != reachable {
            bail!(
                "'{line}' {} but seed 001 says it {}",
                if output.status.success() {
                    "succeeded"
                } else {
                    "failed"
                },
                if reachable { "succeeds" } else { "fails" }
            );
        }
        if !reachable {
            println!("(no answer, as the seed says)");
        }
    }

    println!("\n## Who can ping whom (row pings column)");
    let pairs: Vec<(&str, &str, &str)> = WORKLOADS
        .iter()
        .flat_map(|(_, from, _, _)| {
            WORKLOADS
                .iter()
                .filter(move |(_, to, _, _)| to != from)
                .map(move |(_, to, ip, _)| (*from, *to, *ip))
        })
        .collect();
    let answered: Vec<bool> = std::thread::scope(|scope| {
        let runs: Vec<_> = pairs
            .iter()
            .map(|(from, _, ip)| scope.spawn(move || pings(lab, from, ip)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("ping thread"))
            .collect::<Result<_>>()
    })?;
    let matrix: Vec<((&str, &str), &str)> = pairs
        .iter()
        .zip(&answered)
        .map(|((from, to, _), yes)| ((*from, *to), if *yes { "yes" } else { "no" }))
        .collect();
    print!("{:12}", "");
    for (_, name, _, _) in WORKLOADS {
        print!("{name:>12}");
    }
    println!();
    for (_, from, _, _) in WORKLOADS {
        print!("{from:12}");
        for (_, to, _, _) in WORKLOADS {
            let cell = matrix
                .iter()
                .find(|((f, t), _)| *f == from && *t == to)
                .map_or("-", |(_, c)| c);
            print!("{cell:>12}");
        }
        println!();
    }
    let reaches = |from: &str, to: &str| {
        matrix
            .iter()
            .any(|((f, t), c)| *f == from && *t == to && *c == "yes")
    };
    let in_ace = |w: &str| ["workload-A", "workload-C", "workload-E"].contains(&w);
    let expected = WORKLOADS.iter().all(|(_, from, _, _)| {
        WORKLOADS
            .iter()
            .filter(|(_, to, _, _)| to != from)
            .all(|(_, to, _, _)| reaches(from, to) == (in_ace(from) && in_ace(to)))
    });
    if !expected {
        bail!("the reachability does not match seed 001");
    }
    println!(
        "\nAs seed 001 says: A, C and E reach each other (E across hosts); B and D reach no one."
    );
    println!(
        "The lab is still up: 'calico-lab exec calico-01 --name {} -- docker ps'; remove it with 'calico-lab down --name {}'.",
        lab.name, lab.name
    );
    Ok(())
}
