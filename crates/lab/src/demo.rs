//! `calico-lab demo [--seed 001|000]`: seed 001 (or 000) as written, with Docker containers: A,
//! B, C on calico-01 and D, E on calico-02, each host running its own Docker engine and
//! calico-node (policy, and BGP with BIRD). Seed 001 gives them networking with `calicoctl
//! container add`, seed 000 through the Docker API proxy (`-e CALICO_IP=…`, then F with
//! `CALICO_IP=auto` and `CALICO_PROFILE`). Every command is printed as a user would type it on
//! that host; then the seed's own ping lines, and the whole reachability matrix, checked
//! against what the seed says.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::lab::Lab;

/// (host, workload, address, profile), as in the seed.
type Workloads = [(&'static str, &'static str, &'static str, &'static str); 5];

/// A seed the demo runs.
#[derive(Debug)]
pub struct Seed {
    number: &'static str,
    workloads: Workloads,
    /// Through the Docker API proxy (seed 000), or `--net=none` and calicoctl (seed 001).
    proxied: bool,
}

pub const SEED_001: Seed = Seed {
    number: "001",
    workloads: [
        ("calico-01", "workload-A", "192.168.0.1", "PROF_A_C_E"),
        ("calico-01", "workload-B", "192.168.0.2", "PROF_B"),
        ("calico-01", "workload-C", "192.168.0.3", "PROF_A_C_E"),
        ("calico-02", "workload-D", "192.168.0.4", "PROF_D"),
        ("calico-02", "workload-E", "192.168.0.5", "PROF_A_C_E"),
    ],
    proxied: false,
};

pub const SEED_000: Seed = Seed {
    number: "000",
    workloads: [
        ("calico-01", "workload-A", "192.168.1.1", "PROF_A_C_E"),
        ("calico-01", "workload-B", "192.168.1.2", "PROF_B"),
        ("calico-01", "workload-C", "192.168.1.3", "PROF_A_C_E"),
        ("calico-02", "workload-D", "192.168.1.4", "PROF_D"),
        ("calico-02", "workload-E", "192.168.1.5", "PROF_A_C_E"),
    ],
    proxied: true,
};

/// The seed by its number.
pub fn seed(number: &str) -> Result<&'static Seed> {
    match number {
        "001" | "1" => Ok(&SEED_001),
        "000" | "0" => Ok(&SEED_000),
        other => bail!("the demo runs seed 001 or 000, not '{other}'"),
    }
}

/// Where seed 000 sends its docker commands.
const PROXY_ENV: &str = "export DOCKER_HOST=localhost:2377";

/// Runs a seed command line on a host through a shell (the seed uses `$(…)`); its stdout.
/// With `proxied`, after the seed's `export DOCKER_HOST=localhost:2377`.
fn on_host(lab: &Lab, host: &str, line: &str) -> Result<String> {
    run_line(lab, host, line, false)
}

fn run_line(lab: &Lab, host: &str, line: &str, proxied: bool) -> Result<String> {
    println!("{host}$ {line}");
    let script = if proxied {
        format!("{PROXY_ENV}\n{line}")
    } else {
        line.to_string()
    };
    let output = lab
        .host_exec(host, &["sh".into(), "-c".into(), script])
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

fn host_of(seed: &Seed, workload: &str) -> &'static str {
    seed.workloads
        .iter()
        .find(|(_, name, _, _)| *name == workload)
        .map_or("calico-01", |(host, _, _, _)| host)
}

/// Whether any of three pings, 0.2 s apart, is answered (a lost packet is not a policy).
fn pings(lab: &Lab, seed: &Seed, from: &str, to_ip: &str) -> Result<bool> {
    let ping = [
        "docker", "exec", from, "ping", "-c", "3", "-i", "0.2", "-W", "1", to_ip,
    ]
    .map(String::from);
    Ok(lab
        .host_exec(host_of(seed, from), &ping)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success())
}

pub fn run(lab: &Lab, seed: &Seed) -> Result<()> {
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

    let proxied = seed.proxied;
    if proxied {
        println!("\n## Routing through the Docker API proxy (on both hosts)");
        for host in ["calico-01", "calico-02"] {
            println!("{host}$ {PROXY_ENV}");
        }
    }
    println!("\n## Starting containers");
    for (host, name, ip, _) in seed.workloads {
        let line = if proxied {
            format!("docker run -e CALICO_IP={ip} --name {name} -tid busybox")
        } else {
            format!("docker run --net=none --name {name} -tid busybox")
        };
        run_line(lab, host, &line, proxied)?;
    }

    if !proxied {
        println!("\n## Adding Calico networking");
        for (host, name, ip, _) in seed.workloads {
            on_host(lab, host, &format!("calicoctl container add {name} {ip}"))?;
        }
    }
    println!("\n## Profiles");
    for profile in ["PROF_A_C_E", "PROF_B", "PROF_D"] {
        run_line(
            lab,
            "calico-01",
            &format!("calicoctl profile add {profile}"),
            proxied,
        )?;
    }
    for (host, name, _, profile) in seed.workloads {
        let line = format!("calicoctl endpoint $(calicoctl container {name} endpoint-id show) profile append {profile}");
        run_line(lab, host, &line, proxied)?;
    }

    // Policy is programmed and routes are exchanged within moments: wait for it, not guess.
    let deadline = Instant::now() + Duration::from_secs(30);
    let e_ip = seed.workloads[4].2;
    while !pings(lab, seed, "workload-A", e_ip)? {
        if Instant::now() > deadline {
            bail!(
                "workload-A never reached workload-E; see the agents' logs in {}/logs",
                lab.dir.display()
            );
        }
    }

    println!("\n## Testing it, as the seed does");
    let ip = |i: usize| seed.workloads[i].2;
    let seed_lines = [(ip(2), true), (ip(4), true), (ip(1), false), (ip(3), false)];
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
                "'{line}' {} but seed {} says it {}",
                if output.status.success() {
                    "succeeded"
                } else {
                    "failed"
                },
                seed.number,
                if reachable { "succeeds" } else { "fails" }
            );
        }
        if !reachable {
            println!("(no answer, as the seed says)");
        }
    }

    println!("\n## Who can ping whom (row pings column)");
    let workloads = &seed.workloads;
    let pairs: Vec<(&str, &str, &str)> = workloads
        .iter()
        .flat_map(|(_, from, _, _)| {
            workloads
                .iter()
                .filter(move |(_, to, _, _)| to != from)
                .map(move |(_, to, ip, _)| (*from, *to, *ip))
        })
        .collect();
    let answered: Vec<bool> = std::thread::scope(|scope| {
        let runs: Vec<_> = pairs
            .iter()
            .map(|(from, _, ip)| scope.spawn(move || pings(lab, seed, from, ip)))
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
    for (_, name, _, _) in workloads {
        print!("{name:>12}");
    }
    println!();
    for (_, from, _, _) in workloads {
        print!("{from:12}");
        for (_, to, _, _) in workloads {
            let cell = matrix
                .iter()
                .find(|((f, t), _)| f == from && t == to)
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
    let expected = workloads.iter().all(|(_, from, _, _)| {
        workloads
            .iter()
            .filter(|(_, to, _, _)| to != from)
            .all(|(_, to, _, _)| reaches(from, to) == (in_ace(from) && in_ace(to)))
    });
    if !expected {
        bail!("the reachability does not match seed {}", seed.number);
    }
    println!(
        "\nAs seed {} says: A, C and E reach each other (E across hosts); B and D reach no one.",
        seed.number
    );
    if proxied {
        streamlined(lab, seed)?;
    }
    println!(
        "The lab is still up: 'calico-lab exec calico-01 --name {} -- docker ps'; remove it with 'calico-lab down --name {}'.",
        lab.name, lab.name
    );
    Ok(())
}

/// Seed 000's last part: an address from IPAM and a profile given at creation.
fn streamlined(lab: &Lab, seed: &Seed) -> Result<()> {
    println!("\n## Streamlining container creation");
    run_line(
        lab,
        "calico-01",
        "docker run -e CALICO_IP=auto -e CALICO_PROFILE=PROF_A_C_E --name workload-F -tid busybox",
        true,
    )?;
    let f = run_line(
        lab,
        "calico-01",
        "docker inspect -f '{{.NetworkSettings.IPAddress}}' workload-F",
        true,
    )?;
    let f = f.trim().to_string();
    println!(
        "(The seed's original printed 192.168.1.6; IPAM gives the lowest free address of the \
         host's block, which is {f} here: docker inspect says which.)"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pings(lab, seed, "workload-A", &f)? {
        if Instant::now() > deadline {
            bail!("workload-A never reached workload-F at {f}");
        }
    }
    run_line(
        lab,
        "calico-01",
        &format!("docker exec workload-A ping -c 4 {f}"),
        true,
    )?;
    println!("As seed 000 says: A reaches F, which got its address and profile at creation.");
    Ok(())
}
