//! calico-lab: a Calico cluster on one machine, for demos, tests and benchmarks.

mod demo;
mod lab;
mod outside;
mod router;
mod sh;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use anyhow::{bail, Result};
use lab::Lab;

const USAGE: &str = "\
Usage:
  calico-lab up [--hosts=<N>] [--name=<LAB>]
  calico-lab down [--name=<LAB>]
  calico-lab exec <HOST> [--name=<LAB>] -- <COMMAND>...
  calico-lab workload add <HOST> <NAME> [--name=<LAB>]
  calico-lab workload exec <NAME> [--name=<LAB>] -- <COMMAND>...
  calico-lab router up [--as=<AS>] [--name=<LAB>]
  calico-lab router show [--name=<LAB>]
  calico-lab router exec [--name=<LAB>] -- <COMMAND>...
  calico-lab outside up [--name=<LAB>]
  calico-lab outside exec [--name=<LAB>] -- <COMMAND>...
  calico-lab demo [--name=<LAB>]

A lab is a fabric namespace (a bridge, and etcd at 172.17.8.1:2379) with hosts calico-01 …
calico-0N (172.17.8.101 …), each running calico-node, and workloads: bare network namespaces
that 'calicoctl container add' wires to a host. 'exec' runs a command on a host with the
environment calicoctl needs; 'down' removes every namespace, process and file of the lab.
'router up' adds an external BGP router (FRR) at 172.17.8.254 / fd00:8::fe that accepts
sessions from every host: in the cluster's AS a route reflector, in another an eBGP peer.
'router show' prints its sessions and routes. 'outside up' adds a namespace at 172.17.8.200 /
fd00:8::c8 with no route to any pool, for nat-outgoing. The lab never touches the machine's own
interfaces, routes or firewall.

Options:
  --hosts=<N>   How many hosts [default: 1].
  --name=<LAB>  Which lab [default: calico]; several labs can run side by side.
  --as=<AS>     The router's AS number [default: the cluster's].
";

struct Cli {
    words: Vec<String>,
    name: String,
    hosts: Option<usize>,
    as_num: Option<u32>,
    command: Vec<String>,
}

fn parse(argv: Vec<String>) -> Result<Cli> {
    let (before, command) = match argv.iter().position(|a| a == "--") {
        Some(i) => (argv[..i].to_vec(), argv[i + 1..].to_vec()),
        None => (argv, Vec::new()),
    };
    let mut cli = Cli {
        words: vec![],
        name: "calico".into(),
        hosts: None,
        as_num: None,
        command,
    };
    let mut args = before.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--name" => cli.name = value()?,
            "--hosts" => {
                let text = value()?;
                let n: usize = text
                    .parse()
                    .ok()
                    .filter(|n| (1..=9).contains(n))
                    .ok_or_else(|| anyhow::anyhow!("--hosts takes 1 to 9, not '{text}'"))?;
                cli.hosts = Some(n);
            }
            "--as" => {
                let text = value()?;
                let n: u32 = text.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    anyhow::anyhow!("--as takes an AS number from 1 to 4294967295, not '{text}'")
                })?;
                cli.as_num = Some(n);
            }
            "-h" | "--help" => cli.words.push("help".into()),
            f if f.starts_with("--") => bail!("unknown option {f}"),
            _ => cli.words.push(arg),
        }
    }
    Ok(cli)
}

fn run(cli: Cli) -> Result<()> {
    let lab = Lab::new(&cli.name)?;
    let words: Vec<&str> = cli.words.iter().map(String::as_str).collect();
    let needs_command = matches!(
        words.as_slice(),
        ["exec", _] | ["workload", "exec", _] | [_, "exec"]
    );
    if cli.as_num.is_some() && words != ["router", "up"] {
        bail!("--as is an option of 'router up' only\n\n{USAGE}");
    }
    if cli.hosts.is_some() && words != ["up"] {
        bail!("--hosts is an option of 'up' only\n\n{USAGE}");
    }
    if needs_command && cli.command.is_empty() {
        bail!("give the command after '--'\n\n{USAGE}");
    }
    match words.as_slice() {
        ["help"] | [] => print!("{USAGE}"),
        ["up"] => {
            lab.up_fabric()?;
            for n in 1..=cli.hosts.unwrap_or(1) {
                lab.up_host(n)?;
            }
            println!("lab {} is up; run commands on a host with: calico-lab exec calico-01 --name {} -- calicoctl …", lab.name, lab.name);
        }
        ["down"] => lab.down()?,
        ["exec", host] => {
            lab.require_host(host)?;
            // Replaces this process, so the command's exit status is ours.
            return Err(lab.host_exec(host, &cli.command).exec().into());
        }
        ["workload", "add", host, name] => println!("{}", lab.add_workload(host, name)?.display()),
        ["workload", "exec", name] => {
            return Err(lab.workload_exec(name, &cli.command)?.exec().into())
        }
        ["router", "up"] => lab.up_router(cli.as_num)?,
        ["router", "show"] => print!(
            "{}",
            lab.router_vtysh(&[
                "show bgp summary",
                "show bgp ipv4 unicast",
                "show bgp ipv6 unicast"
            ])?
        ),
        [which @ ("router" | "outside"), "exec"] => {
            return Err(lab.extra_exec(which, &cli.command)?.exec().into())
        }
        ["outside", "up"] => lab.up_outside()?,
        ["demo"] => demo::run(&lab)?,
        _ => bail!("unknown command\n\n{USAGE}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = parse(std::env::args().skip(1).collect()).and_then(run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calico-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
