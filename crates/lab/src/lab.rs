//! One lab: its names, its files, and building or removing its parts.
//!
//! ```text
//! <lab>-fabric      bridge br0 172.17.8.1/24 fd00:8::1/64, etcd on 172.17.8.1:2379 (with
//!                   `--etcd 3`, also on 172.17.8.2 and .3)
//!   ├─ <lab>-calico-01   eth0 172.17.8.101/24 fd00:8::101/64, default via 172.17.8.1, calico-node
//!   ├─ <lab>-calico-02   eth0 172.17.8.102/24 fd00:8::102/64, …
//!   ├─ <lab>-router      eth0 172.17.8.254/24 fd00:8::fe/64, FRR (only after `router up`)
//!   └─ <lab>-outside     eth0 172.17.8.200/24 fd00:8::c8/64 (only after `outside up`)
//! <lab>-w-<name>    a workload: a bare namespace until `calicoctl container add` wires it
//! /var/run/calico-lab/<lab>/   etcd data, logs, pid files, netns/<name> links to workloads,
//!                              hosts/<host>/ (the host's keeper and engine: pid files, logs)
//! /var/lib/calico-lab/<lab>/<host>/   the host's own /run, /etc/docker, /opt, Docker's data
//! ```
//!
//! Each host also has a mount namespace of its own (`host.rs`), and with `--docker` a Docker
//! engine in it (`docker.rs`).
//!
//! The fabric has no way out: traffic to anything but lab addresses ends there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{running, stop};
use crate::sh::{in_netns, run};

pub const FABRIC_PREFIX: &str = "172.17.8";
pub const FABRIC_IP: &str = "172.17.8.1";
/// Locally administered, so it can be no port's.
const FABRIC_MAC: &str = "02:00:ac:11:08:01";
/// The fabric's IPv6 network is fd00:8::/64; host n is fd00:8::10n, like its IPv4 address.
pub const FABRIC_PREFIX6: &str = "fd00:8::";
pub const FABRIC_IP6: &str = "fd00:8::1";

pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    /// Where calicoctl and calico-node are (next to calico-lab).
    pub bin: PathBuf,
}

pub fn host_name(n: usize) -> String {
    format!("calico-{n:02}")
}

impl Lab {
    pub fn new(name: &str) -> Result<Lab> {
        let valid = !name.is_empty()
            && name.len() <= 16
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            bail!("invalid lab name '{name}': use 1 to 16 lowercase letters, digits or '-'");
        }
        let bin = std::env::current_exe()?
            .parent()
            .context("calico-lab has no directory")?
            .to_path_buf();
        Ok(Lab {
            name: name.to_string(),
            dir: Path::new("/var/run/calico-lab").join(name),
            bin,
        })
    }

    pub fn fabric(&self) -> String {
        format!("{}-fabric", self.name)
    }

    pub fn host_netns(&self, host: &str) -> String {
        format!("{}-{host}", self.name)
    }

    pub fn workload_netns(&self, workload: &str) -> String {
        format!("{}-w-{workload}", self.name)
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }

    /// The lab's namespaces that exist now.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        let prefix = format!("{}-", self.name);
        Ok(run("ip", &["netns", "list"])?
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(String::from)
            .collect())
    }

    pub fn hosts(&self) -> Result<Vec<String>> {
        let prefix = format!("{}-calico-", self.name);
        let mut hosts: Vec<String> = self
            .namespaces()?
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(|rest| format!("calico-{rest}")))
            .collect();
        hosts.sort();
        Ok(hosts)
    }

    pub(crate) fn netns_exists(&self, netns: &str) -> bool {
        Path::new("/var/run/netns").join(netns).exists()
    }

    pub(crate) fn add_netns(&self, netns: &str) -> Result<()> {
        self.refuse_inside_a_host("make a namespace")?;
        run("ip", &["netns", "add", netns])?;
        in_netns(netns, "ip", &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The fabric namespace with its bridge (etcd runs in it: see `etcd.rs`).
    pub fn up_fabric(&self) -> Result<()> {
        for dir in [
            self.dir.clone(),
            self.netns_dir(),
            self.dir.join("logs"),
            self.dir.join("workloads"),
        ] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let fabric = self.fabric();
        if !self.netns_exists(&fabric) {
            self.add_netns(&fabric)?;
            // A fixed MAC: a bridge without one takes the lowest of its ports', so plugging in
            // a host, the router or the outside could change it, and every host's ARP entry for
            // etcd's address would point nowhere until it expired.
            in_netns(
                &fabric,
                "ip",
                &[
                    "link", "add", "br0", "address", FABRIC_MAC, "type", "bridge",
                ],
            )?;
            in_netns(
                &fabric,
                "ip",
                &["addr", "add", &format!("{FABRIC_IP}/24"), "dev", "br0"],
            )?;
            in_netns(
                &fabric,
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{FABRIC_IP6}/64"),
                    "dev",
                    "br0",
                    "nodad",
                ],
            )?;
            in_netns(&fabric, "ip", &["link", "set", "br0", "up"])?;
            println!("fabric   {fabric}: bridge br0 {FABRIC_IP}/24 {FABRIC_IP6}/64");
        }
        Ok(())
    }

    /// Host `n`: its namespace on the fabric with a mount namespace of its own, a Docker
    /// engine with `docker`, and calico-node started by `calicoctl node`.
    pub fn up_host(&self, n: usize, docker: bool) -> Result<()> {
        let host = host_name(n);
        let netns = self.host_netns(&host);
        let ip = format!("{FABRIC_PREFIX}.{}", 100 + n);
        let ip6 = format!("{FABRIC_PREFIX6}{}", 100 + n);
        if !self.netns_exists(&netns) {
            self.plug_into_fabric(&netns, &host, &ip, &ip6)?;
        }
        if docker {
            self.up_keeper(&host)?;
            self.up_engine(&host, n)?;
            self.up_etcd_proxy(&host)?;
        }
        let log_dir = self.dir.join("logs").display().to_string();
        let mut node = vec![
            "node",
            "--ip",
            &ip,
            "--ip6",
            &ip6,
            "--name",
            &host,
            "--log-dir",
            &log_dir,
        ];
        if docker {
            node.push("--libnetwork");
        } else {
            // Such a host shares the machine's /run: never reach for an engine there.
            node.push("--no-docker-proxy");
        }
        let out = self.host_command(&host, "calicoctl", &node)?;
        print!("host     {host} ({netns}) {ip} {ip6}: {out}");
        Ok(())
    }

    /// A new namespace with an `eth0` on the fabric's bridge, holding these addresses.
    pub fn plug_into_fabric(
        &self,
        netns: &str,
        short_name: &str,
        ip: &str,
        ip6: &str,
    ) -> Result<()> {
        self.add_netns(netns)?;
        let fabric_end = format!("v-{short_name}");
        run(
            "ip",
            &[
                "-n",
                netns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &fabric_end,
                "netns",
                &self.fabric(),
            ],
        )?;
        in_netns(
            &self.fabric(),
            "ip",
            &["link", "set", &fabric_end, "master", "br0", "up"],
        )?;
        in_netns(
            netns,
            "ip",
            &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        // No duplicate address detection, for the link-local address either: the lab picks
        // unique addresses, and BGP over IPv6 can start at once (FRR refuses IPv6 sessions
        // while its interface has no usable link-local address).
        in_netns(netns, "sysctl", &["-qw", "net.ipv6.conf.eth0.accept_dad=0"])?;
        in_netns(
            netns,
            "ip",
            &["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"],
        )?;
        in_netns(netns, "ip", &["link", "set", "eth0", "up"])?;
        in_netns(netns, "ip", &["route", "add", "default", "via", FABRIC_IP])?;
        Ok(())
    }

    /// The environment calicoctl and calico-node need on a lab host.
    pub fn host_env(&self, host: &str) -> Vec<(String, String)> {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        vec![
            ("ETCD_ENDPOINTS".into(), self.etcd_endpoints()),
            ("CALICO_NODENAME".into(), host.into()),
            (
                "CALICO_STATE_DIR".into(),
                self.dir.join("state").display().to_string(),
            ),
            (
                "CALICO_NETNS_DIR".into(),
                self.netns_dir().display().to_string(),
            ),
            ("DOCKER_HOST".into(), crate::docker::DOCKER_HOST.into()),
            ("PATH".into(), path),
        ]
    }

    pub fn host_command(&self, host: &str, program: &str, args: &[&str]) -> Result<String> {
        let mut command: Vec<String> = vec![program.into()];
        command.extend(args.iter().map(|a| a.to_string()));
        crate::sh::output(&mut self.host_exec(host, &command))
    }

    pub fn require_host(&self, host: &str) -> Result<()> {
        if self.netns_exists(&self.host_netns(host)) {
            Ok(())
        } else {
            bail!(
                "lab {} has no host {host}; start it with 'calico-lab up --name {}'",
                self.name,
                self.name
            )
        }
    }

    pub fn add_workload(&self, host: &str, workload: &str) -> Result<PathBuf> {
        self.require_host(host)?;
        let valid = !workload.is_empty()
            && workload.len() <= 32
            && workload
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !workload.starts_with(['-', '.']);
        if !valid {
            bail!("invalid workload name '{workload}': use letters, digits, '-', '_' and '.'");
        }
        let netns = self.workload_netns(workload);
        if self.netns_exists(&netns) {
            bail!("workload {workload} already exists in lab {}", self.name);
        }
        self.add_netns(&netns)?;
        let link = self.netns_dir().join(workload);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new("/var/run/netns").join(&netns), &link)?;
        std::fs::write(self.dir.join("workloads").join(workload), host)?;
        Ok(link)
    }

    /// A command in one of the lab's extra namespaces (`router`, `outside`), which must exist.
    pub fn extra_exec(&self, which: &str, command: &[String]) -> Result<Command> {
        let netns = format!("{}-{which}", self.name);
        self.require_netns(&netns, which)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns]).args(command);
        Ok(cmd)
    }

    pub(crate) fn require_netns(&self, netns: &str, which: &str) -> Result<()> {
        if self.netns_exists(netns) {
            Ok(())
        } else {
            bail!(
                "lab {} has no {which}; start it with 'calico-lab {which} up --name {}'",
                self.name,
                self.name
            )
        }
    }

    pub fn workload_exec(&self, workload: &str, command: &[String]) -> Result<Command> {
        let netns = self.workload_netns(workload);
        if !self.netns_exists(&netns) {
            bail!("lab {} has no workload {workload}; add it with 'calico-lab workload add <HOST> {workload}'", self.name);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns]).args(command);
        Ok(cmd)
    }

    /// Stops every process of the lab, deletes its namespaces, cgroups and files. Carries on
    /// past a failure and reports them all at the end.
    pub fn down(&self) -> Result<()> {
        self.refuse_inside_a_host("remove the lab")?;
        let namespaces = self.namespaces()?;
        let hosts = self.hosts()?;
        let mut problems = Vec::new();
        // Containers first, while the agents still run to take their networking down.
        for host in &hosts {
            problems.extend(self.remove_containers(host));
        }
        // Agents and masters next, so they stop cleanly (revoking their leases) while etcd
        // still runs.
        for host in &hosts {
            for program in ["calico-master", "calico-node"] {
                let pid_file = self
                    .dir
                    .join("state")
                    .join(host)
                    .join(format!("{program}.pid"));
                if let Some(pid) = running(&pid_file) {
                    stop(pid, Duration::from_secs(5));
                    println!("stopped  {program} of {host} (pid {pid})");
                }
            }
        }
        for host in &hosts {
            self.stop_engine(host);
        }
        // Whatever else runs in the lab's namespaces (BIRD, containerd, shims, keepers, FRR).
        for netns in &namespaces {
            for pid in run("ip", &["netns", "pids", netns])
                .unwrap_or_default()
                .lines()
            {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    stop(pid, Duration::from_secs(5));
                }
            }
        }
        // Container processes live in namespaces of their own, but in the lab's cgroups.
        problems.extend(crate::cgroups::remove(&self.name));
        self.down_etcd();
        for netns in &namespaces {
            match run("ip", &["netns", "del", netns]) {
                Ok(_) => println!("removed  {netns}"),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        for dir in [&self.dir, &self.data_dir()] {
            if dir.exists() {
                match std::fs::remove_dir_all(dir) {
                    Ok(()) => println!("removed  {}", dir.display()),
                    Err(e) => problems.push(format!("cannot remove {}: {e}", dir.display())),
                }
            }
        }
        if !problems.is_empty() {
            bail!(
                "lab {} is down, but not everything went:\n  {}",
                self.name,
                problems.join("\n  ")
            );
        }
        Ok(())
    }
}
