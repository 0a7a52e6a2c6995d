//! calico-lab: a Calico cluster on one machine, for demos, tests and benchmarks.

mod cgroups;
mod demo;
mod docker;
mod etcd;
mod host;
mod lab;
mod outside;
mod process;
mod router;
mod sh;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lab::Lab;

const ABOUT: &str = "\
A Calico cluster on one machine. A lab is a fabric namespace (a bridge, and etcd at
172.17.8.1:2379) with hosts calico-01 … calico-0N (172.17.8.101 …), each a network namespace
running calico-node (with --docker, also a mount namespace of its own and a Docker engine), and
workloads: Docker containers, or bare network namespaces that 'calicoctl container add' wires to
a host. The lab never touches the machine's own interfaces, routes, firewall or Docker paths;
'down' removes every namespace, process, container, cgroup and file of the lab.";

#[derive(Debug, Parser)]
#[command(name = "calico-lab", version, about = ABOUT)]
struct Cli {
    /// Which lab; several labs can run side by side.
    #[arg(long, global = true, default_value = "calico")]
    name: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Builds what is missing: the fabric and etcd, then the hosts with their agents.
    Up {
        /// How many hosts (calico-01 … calico-0N).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=9))]
        hosts: u8,
        /// A Docker engine on every host, with the busybox image, and calico-node serving
        /// the libnetwork network and IPAM drivers.
        #[arg(long)]
        docker: bool,
        /// etcd members: 1, or a cluster of 3 or 5 (172.17.8.1, .2, …) [default: 1, or what
        /// the lab has].
        #[arg(long, value_name = "MEMBERS")]
        etcd: Option<usize>,
    },
    /// The lab's etcd members: stop one, start it again, or see how each is.
    Etcd {
        #[command(subcommand)]
        action: EtcdCommand,
    },
    /// Removes the lab: containers, engines, agents, etcd, namespaces, cgroups and files.
    Down,
    /// Runs a command on a host, with ETCD_ENDPOINTS, CALICO_NODENAME, DOCKER_HOST … set and the
    /// project's binaries first on PATH; its exit status is the command's.
    Exec {
        host: String,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Workloads without Docker: bare network namespaces.
    Workload {
        #[command(subcommand)]
        action: WorkloadCommand,
    },
    /// An external BGP router (FRR) at 172.17.8.254 / fd00:8::fe that accepts sessions from
    /// every host: in the cluster's AS a route reflector, in another an eBGP peer.
    Router {
        #[command(subcommand)]
        action: RouterCommand,
    },
    /// A namespace at 172.17.8.200 / fd00:8::c8 with no route to any pool, for nat-outgoing.
    Outside {
        #[command(subcommand)]
        action: OutsideCommand,
    },
    /// Seed 001 (or 000, through the Docker API proxy) as written, with Docker containers on
    /// two hosts, checked against the seed.
    Demo {
        /// Which seed: 001 (calicoctl container add) or 000 (docker run -e CALICO_IP).
        #[arg(long, default_value = "001")]
        seed: String,
    },
}

#[derive(Debug, Subcommand)]
enum EtcdCommand {
    /// Stops member K (its data stays).
    Stop { member: usize },
    /// Starts member K again.
    Start { member: usize },
    /// Each member's address and health.
    Status,
}

#[derive(Debug, Subcommand)]
enum WorkloadCommand {
    /// A workload without networking (like `docker run --net=none`); prints its netns path.
    Add { host: String, workload: String },
    /// Runs a command inside a workload.
    Exec {
        workload: String,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RouterCommand {
    Up {
        /// The router's AS number [default: the cluster's].
        #[arg(long = "as", value_parser = clap::value_parser!(u32).range(1..))]
        as_num: Option<u32>,
    },
    /// The router's sessions and BGP tables.
    Show,
    /// Runs a command in the router's namespace.
    Exec {
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum OutsideCommand {
    Up,
    /// Runs a command in the outside namespace.
    Exec {
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

fn run(cli: Cli) -> Result<()> {
    let lab = Lab::new(&cli.name)?;
    match cli.command {
        Command::Up {
            hosts,
            docker,
            etcd,
        } => {
            lab.up_fabric()?;
            lab.up_etcd(etcd)?;
            for n in 1..=usize::from(hosts) {
                lab.up_host(n, docker)?;
            }
            println!("lab {} is up; run commands on a host with: calico-lab exec calico-01 --name {} -- calicoctl …", lab.name, lab.name);
        }
        Command::Down => lab.down()?,
        Command::Etcd { action } => match action {
            EtcdCommand::Stop { member } => lab.stop_member(member)?,
            EtcdCommand::Start { member } => lab.start_member(member)?,
            EtcdCommand::Status => print!("{}", lab.etcd_status()?),
        },
        Command::Exec { host, command } => {
            lab.require_host(&host)?;
            // Replaces this process, so the command's exit status is ours.
            return Err(lab.host_exec(&host, &command).exec().into());
        }
        Command::Workload { action } => match action {
            WorkloadCommand::Add { host, workload } => {
                println!("{}", lab.add_workload(&host, &workload)?.display())
            }
            WorkloadCommand::Exec { workload, command } => {
                return Err(lab.workload_exec(&workload, &command)?.exec().into())
            }
        },
        Command::Router { action } => match action {
            RouterCommand::Up { as_num } => lab.up_router(as_num)?,
            RouterCommand::Show => print!(
                "{}",
                lab.router_vtysh(&[
                    "show bgp summary",
                    "show bgp ipv4 unicast",
                    "show bgp ipv6 unicast"
                ])?
            ),
            RouterCommand::Exec { command } => {
                return Err(lab.extra_exec("router", &command)?.exec().into())
            }
        },
        Command::Outside { action } => match action {
            OutsideCommand::Up => lab.up_outside()?,
            OutsideCommand::Exec { command } => {
                return Err(lab.extra_exec("outside", &command)?.exec().into())
            }
        },
        Command::Demo { seed } => demo::run(&lab, demo::seed(&seed)?)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calico-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
