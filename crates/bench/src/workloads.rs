//! The bench's workloads and the commands it drives: calico-lab (next to this binary) and
//! calicoctl (on PATH on a lab host).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use calico_datastore::resources::Resources;

pub const HOST: &str = "calico-01";
pub const PROFILE: &str = "bench";
pub const SRC_IP: &str = "192.168.200.1";
pub const DST_IP: &str = "192.168.200.2";
/// A second destination beside dst, with the one profile that admits src: what a stateful
/// firewall costs a new flow at all, apart from dst's 1,000 profiles.
pub const ONE_IP: &str = "192.168.200.3";

pub struct Bench {
    pub lab: String,
    pub resources: Resources,
}

pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Bench {
    pub async fn new(lab: &str) -> Result<Bench> {
        let store = calico_datastore::connect_from_env().await?;
        Ok(Bench {
            lab: lab.to_string(),
            resources: Resources::new(store as Arc<_>),
        })
    }

    pub fn lab_binary(&self) -> Result<PathBuf> {
        Ok(std::env::current_exe()?.with_file_name("calico-lab"))
    }

    pub fn netns(&self, workload: &str) -> String {
        format!("{}-w-{workload}", self.lab)
    }

    pub fn netns_path(&self, workload: &str) -> PathBuf {
        PathBuf::from("/var/run/netns").join(self.netns(workload))
    }

    /// A workload on calico-01 with an address and the bench profile. Returns when the part
    /// the latency benchmarks time began: after the namespace exists, before `calicoctl
    /// container add`.
    pub fn add_workload(&self, name: &str, ip: &str) -> Result<Instant> {
        let started = self.add_workload_without_profile(name, ip)?;
        run("calicoctl", &["container", name, "profile", "set", PROFILE])?;
        Ok(started)
    }

    /// The same, without a profile: the workload's traffic is dropped until it gets one.
    pub fn add_workload_without_profile(&self, name: &str, ip: &str) -> Result<Instant> {
        let lab = self.lab_binary()?;
        run(
            lab.to_str().unwrap_or("calico-lab"),
            &["workload", "add", HOST, name, "--name", &self.lab],
        )?;
        let started = Instant::now();
        run("calicoctl", &["container", "add", name, ip])?;
        Ok(started)
    }

    /// Waits until the agent has routed `ip` to its workload: the state the throughput
    /// set-ups rely on once they stop the agent (the route stays when it stops).
    pub fn wait_routed(&self, ip: &str) -> Result<()> {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let protocol = calico_dataplane::netlink::ROUTE_PROTOCOL.to_string();
        loop {
            let routes = run("ip", &["-o", "route", "show", ip, "proto", &protocol])?;
            if !routes.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent on {HOST} never routed {ip}: see its log in /var/run/calico-lab/{}/logs", self.lab);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits until the agent has compiled the inbound chain of the workload at `ip` (it does
    /// once the datastore has been quiet for a moment, and then works for about a second):
    /// the state the connection rate measures, and work no other figure may overlap.
    pub fn wait_compiled(&self, ip: &str) -> Result<()> {
        self.wait_routed(ip)?;
        let protocol = calico_dataplane::netlink::ROUTE_PROTOCOL.to_string();
        let route = run("ip", &["-o", "route", "show", ip, "proto", &protocol])?;
        let interface = route
            .split_whitespace()
            .skip_while(|word| *word != "dev")
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("no interface in the route to {ip}: {route}"))?;
        let table = calico_dataplane::nft::COMPILED_TABLE;
        let map = calico_dataplane::nft::names::TO_COMPILED;
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        loop {
            // The compiled table's dispatch holds the interface once its chains are in.
            let entries = run("nft", &["list", "map", "inet", table, map]).unwrap_or_default();
            let compiled = entries.contains(&format!("\"{interface}\" : goto ce_"));
            if compiled {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent on {HOST} never compiled the policy of {ip}: see its log in /var/run/calico-lab/{}/logs", self.lab);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// A command inside a workload.
    pub fn in_workload(&self, workload: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns(workload)])
            .args(args);
        command
    }
}
