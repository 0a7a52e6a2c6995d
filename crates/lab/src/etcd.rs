//! The lab's etcd: one member, or a cluster of three or five, in the fabric namespace.
//!
//! Member k listens at 172.17.8.k:2379 (clients) and 172.17.8.k:2380 (peers), each address
//! on the fabric's bridge, so hosts reach every member over the fabric as they would reach
//! etcd servers of their own. Agents and calicoctl on the hosts are given every member
//! (`ETCD_ENDPOINTS`). `calico-lab etcd stop K` and `etcd start K` take one member away and
//! bring it back with its data, to see the cluster lose a member or its quorum.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::{Lab, FABRIC_PREFIX};
use crate::process::{running, start_daemon, stop};
use crate::sh::{in_netns, succeeds};

/// Cluster sizes the lab runs: one member, or an odd number that survives losing members.
pub const SIZES: [usize; 3] = [1, 3, 5];

impl Lab {
    fn members_file(&self) -> PathBuf {
        self.dir.join("etcd-members")
    }

    /// How many members the lab's etcd has (1 for a lab made before clusters existed).
    pub fn etcd_members(&self) -> usize {
        std::fs::read_to_string(self.members_file())
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1)
    }

    fn member_ip(k: usize) -> String {
        format!("{FABRIC_PREFIX}.{k}")
    }

    fn member_url(k: usize, port: u16) -> String {
        format!("http://{}:{port}", Self::member_ip(k))
    }

    fn member_pid_file(&self, k: usize) -> PathBuf {
        self.dir.join(format!("etcd-{k}.pid"))
    }

    /// Every member's client URL, comma-separated, as `ETCD_ENDPOINTS` takes them.
    pub fn etcd_endpoints(&self) -> String {
        (1..=self.etcd_members())
            .map(|k| Self::member_url(k, 2379))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts every member that is not running. A lab keeps the size it was made with.
    pub fn up_etcd(&self, size: Option<usize>) -> Result<()> {
        let existing = self.members_file().exists();
        let size = match (size, existing) {
            (Some(size), _) if !SIZES.contains(&size) => {
                bail!("--etcd {size}: a lab runs 1, 3 or 5 etcd members")
            }
            (Some(size), true) if size != self.etcd_members() => bail!(
                "lab {} already has {} etcd member(s); take it down ('calico-lab down --name {}') to change that",
                self.name,
                self.etcd_members(),
                self.name
            ),
            (Some(size), _) => size,
            (None, _) => self.etcd_members(),
        };
        std::fs::write(self.members_file(), size.to_string())?;
        for k in 2..=size {
            // Member 1 has the fabric's own address; the others get theirs on the bridge.
            let address = format!("{}/24", Self::member_ip(k));
            let present = in_netns(&self.fabric(), "ip", &["-o", "addr", "show", "dev", "br0"])?
                .contains(&format!(" {address} "));
            if !present {
                in_netns(
                    &self.fabric(),
                    "ip",
                    &["addr", "add", &address, "dev", "br0"],
                )?;
            }
        }
        // Members wait for each other to form the cluster: start them all, then wait.
        let mut started = Vec::new();
        for k in 1..=size {
            match running(&self.member_pid_file(k)) {
                Some(pid) => println!(
                    "etcd     member {k} already running (pid {pid}) at {}",
                    Self::member_url(k, 2379)
                ),
                None => started.push(k),
            }
        }
        let mut children = Vec::new();
        for &k in &started {
            children.push((k, self.spawn_member(k, size)?));
        }
        for (k, pid) in children {
            self.wait_member_ready(k, pid)?;
            println!(
                "etcd     member {k} of {size} running (pid {pid}) at {}",
                Self::member_url(k, 2379)
            );
        }
        Ok(())
    }

    fn spawn_member(&self, k: usize, size: usize) -> Result<i32> {
        let cluster: Vec<String> = (1..=size)
            .map(|m| format!("etcd-{m}={}", Self::member_url(m, 2380)))
            .collect();
        let data = self.dir.join("etcd").join(k.to_string());
        let mut etcd = Command::new("ip");
        etcd.args(["netns", "exec", &self.fabric(), "etcd"])
            .arg(format!("--name=etcd-{k}"))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!(
                "--listen-client-urls={}",
                Self::member_url(k, 2379)
            ))
            .arg(format!(
                "--advertise-client-urls={}",
                Self::member_url(k, 2379)
            ))
            .arg(format!("--listen-peer-urls={}", Self::member_url(k, 2380)))
            .arg(format!(
                "--initial-advertise-peer-urls={}",
                Self::member_url(k, 2380)
            ))
            .arg(format!("--initial-cluster={}", cluster.join(",")))
            .arg(format!("--initial-cluster-token={}-etcd", self.name));
        // Ready is checked after every member started (they need each other): here, only
        // that the process is there.
        start_daemon(
            etcd,
            "etcd (install etcd-server)",
            &self.dir.join(format!("logs/etcd-{k}.log")),
            &self.member_pid_file(k),
            Duration::from_secs(5),
            |_| true,
        )
    }

    fn member_healthy(&self, k: usize) -> bool {
        succeeds(Command::new("ip").args([
            "netns",
            "exec",
            &self.fabric(),
            "etcdctl",
            &format!("--endpoints={}", Self::member_url(k, 2379)),
            "--command-timeout=2s",
            "endpoint",
            "health",
        ]))
    }

    fn wait_member_ready(&self, k: usize, pid: i32) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.member_healthy(k) {
            let log = self.dir.join(format!("logs/etcd-{k}.log"));
            if !crate::process::alive(pid) || std::time::Instant::now() > deadline {
                bail!(
                    "etcd member {k} did not become healthy; the end of {}:\n{}",
                    log.display(),
                    crate::process::tail(&log, 10)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn require_member(&self, k: usize) -> Result<()> {
        let size = self.etcd_members();
        if k == 0 || k > size {
            bail!("lab {} has etcd members 1 to {size}, not {k}", self.name);
        }
        Ok(())
    }

    /// Stops member `k` (its data stays, for `start_member`).
    pub fn stop_member(&self, k: usize) -> Result<()> {
        self.require_member(k)?;
        match running(&self.member_pid_file(k)) {
            Some(pid) => {
                stop(pid, Duration::from_secs(5));
                println!("etcd     member {k} stopped (pid {pid})");
            }
            None => println!("etcd     member {k} was not running"),
        }
        Ok(())
    }

    /// Starts member `k` again with its data. Without a quorum to join it cannot be healthy
    /// on its own: only that its process runs is checked then.
    pub fn start_member(&self, k: usize) -> Result<()> {
        self.require_member(k)?;
        if let Some(pid) = running(&self.member_pid_file(k)) {
            println!("etcd     member {k} already running (pid {pid})");
            return Ok(());
        }
        let pid = self.spawn_member(k, self.etcd_members())?;
        let others_up = (1..=self.etcd_members())
            .filter(|m| *m != k && running(&self.member_pid_file(*m)).is_some())
            .count();
        if (others_up + 1) * 2 > self.etcd_members() {
            self.wait_member_ready(k, pid)?;
        }
        println!("etcd     member {k} running (pid {pid})");
        Ok(())
    }

    /// Each member's health, as etcdctl sees it.
    pub fn etcd_status(&self) -> Result<String> {
        let mut out = String::new();
        for k in 1..=self.etcd_members() {
            let state = match running(&self.member_pid_file(k)) {
                None => "stopped".to_string(),
                Some(pid) if self.member_healthy(k) => format!("healthy (pid {pid})"),
                Some(pid) => format!("running (pid {pid}), not healthy: no quorum?"),
            };
            out.push_str(&format!(
                "etcd-{k}  {}  {state}\n",
                Self::member_url(k, 2379)
            ));
        }
        Ok(out)
    }

    /// Stops every member.
    pub fn down_etcd(&self) {
        for k in 1..=SIZES[SIZES.len() - 1] {
            if let Some(pid) = running(&self.member_pid_file(k)) {
                stop(pid, Duration::from_secs(5));
            }
        }
    }

    /// etcdctl in the fabric against every member, for the lab's own reads.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let endpoints = format!("--endpoints={}", self.etcd_endpoints());
        let mut all = vec![endpoints.as_str()];
        all.extend_from_slice(args);
        in_netns(&self.fabric(), "etcdctl", &all).context("etcdctl")
    }
}

/// Where a Docker host's etcd proxy listens, in the host's own network namespace: seed 002's
/// `localhost:4001` (`ETCD_AUTHORITY=localhost:4001`).
pub const PROXY_LISTEN: &str = "127.0.0.1:4001";

impl Lab {
    fn etcd_proxy_pid_file(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("etcd-proxy.pid")
    }

    /// An etcd proxy on the host's loopback (`etcd grpc-proxy`), in front of the lab's
    /// members, as seed 002 has one on every host that runs no member.
    pub fn up_etcd_proxy(&self, host: &str) -> Result<()> {
        if running(&self.etcd_proxy_pid_file(host)).is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(self.host_dir(host))?;
        let endpoints = self.etcd_endpoints().replace("http://", "");
        let mut proxy = Command::new("ip");
        proxy
            .args([
                "netns",
                "exec",
                &self.host_netns(host),
                "etcd",
                "grpc-proxy",
                "start",
            ])
            .arg(format!("--endpoints={endpoints}"))
            .arg(format!("--listen-addr={PROXY_LISTEN}"));
        start_daemon(
            proxy,
            &format!("the etcd proxy of {host}"),
            &self.host_dir(host).join("etcd-proxy.log"),
            &self.etcd_proxy_pid_file(host),
            Duration::from_secs(10),
            |pid| listens(pid, 4001),
        )?;
        Ok(())
    }
}

/// Whether the process's network namespace has a TCP socket listening on 127.0.0.1:`port`
/// (read from its /proc/<pid>/net/tcp: address and port in hex, state 0A is LISTEN).
fn listens(pid: i32, port: u16) -> bool {
    let wanted = format!("0100007F:{port:04X}");
    std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).is_ok_and(|table| {
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&wanted.as_str()) && fields.get(3) == Some(&"0A")
        })
    })
}
