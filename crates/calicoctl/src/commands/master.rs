//! `calicoctl master …`: the cluster's master role (seed 002), run by calico-master in the
//! background on this host. One master at a time: a second one waits until the first ends.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use calico_model::bgp::parse_ip;

use super::{connect, parse_args};
use crate::args::{usage_error, valued, OptSpec};
use crate::local;
use crate::usage::MASTER as USAGE;

const OPTIONS: &[OptSpec] = &[valued("--ip"), valued("--log-dir")];
const PROGRAM: &str = "calico-master";

fn pid_file(node: &str) -> PathBuf {
    local::state_dir(node).join("calico-master.pid")
}

pub async fn run(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, OPTIONS, USAGE)? else {
        return Ok(());
    };
    let node = local::node_name(None)?;
    match args.words().as_slice() {
        [] => {
            args.reject_options_except(&["--ip", "--log-dir"], USAGE)?;
            let Some(ip) = args.value("--ip") else {
                return Err(usage_error(
                    USAGE,
                    "Give the master's address with --ip=<IP>.",
                ));
            };
            let ip = parse_ip("--ip address", ip)?;
            let log_dir =
                PathBuf::from(args.value("--log-dir").unwrap_or("/var/log/calico")).join(&node);
            start(&node, &ip.to_string(), &log_dir).await
        }
        ["stop"] => {
            args.reject_options_except(&[], USAGE)?;
            if local::stop(&pid_file(&node), PROGRAM)? {
                println!("calico-master stopped; another waiting master takes over.");
            } else {
                println!("calico-master is not running here.");
            }
            Ok(())
        }
        _ => Err(usage_error(USAGE, "Invalid master command.")),
    }
}

async fn start(node: &str, ip: &str, log_dir: &std::path::Path) -> Result<()> {
    let pid_file = pid_file(node);
    if let Some(pid) = local::running(&pid_file, PROGRAM) {
        println!("calico-master is already running here (pid {pid}).");
        return Ok(());
    }
    let store = connect().await?;
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    std::fs::create_dir_all(local::state_dir(node))?;
    let log_path = log_dir.join("calico-master.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut child = Command::new(local::program(PROGRAM)?)
        .args(["--ip", ip])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start calico-master")?;
    std::fs::write(&pid_file, child.id().to_string())?;
    // Until it holds the role, or another one is seen to hold it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let _ = std::fs::remove_file(&pid_file);
            bail!(
                "calico-master exited at start ({status}); see {}",
                log_path.display()
            );
        }
        let master = store
            .store()
            .get(calico_master::election::MASTER_IP)
            .await?;
        match master.map(|kv| kv.value) {
            Some(current) if current == ip => {
                println!(
                    "calico-master is running (pid {}) and is the master at {ip}; logs in {}",
                    child.id(),
                    log_path.display()
                );
                return Ok(());
            }
            Some(current) if Instant::now() > deadline => {
                println!("calico-master is running (pid {}) and waits: the master is {current}; it takes over when that one ends.", child.id());
                return Ok(());
            }
            _ if Instant::now() > deadline => bail!(
                "calico-master (pid {}) has not become the master within 10 s; see {}",
                child.id(),
                log_path.display()
            ),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
