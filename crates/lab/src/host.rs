//! A lab host with Docker (`up --docker`) is a network namespace with a mount namespace of its
//! own, so that what a real host keeps in /run, /etc/docker and /opt (Docker's socket and plugin
//! directory, calico-node's state, containerd's files) is that host's alone and never the
//! machine's. Hosts without Docker are their network namespace alone.
//!
//! A small keeper process (`sleep infinity`) holds the mount namespace; every command run on the
//! host enters it and the host's network namespace with `nsenter`. In it:
//!
//! ```text
//! /sys/fs/cgroup   a tmpfs with the machine's cgroup hierarchies mounted again (`ip netns exec`
//!                  remounts /sys for the namespace, which hides them; dockerd needs them)
//! /run             /var/lib/calico-lab/<lab>/<host>/run, with the machine's /run/netns (so
//!                  namespaces made later appear) and /run/calico-lab bound into it
//! /etc/docker      /var/lib/calico-lab/<lab>/<host>/etc-docker (each engine its own key.json)
//! /opt             /var/lib/calico-lab/<lab>/<host>/opt
//! ```
//!
//! Mounts made in the namespace never propagate back to the machine's (it is a slave of it).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::Lab;
use crate::process::{running, start_daemon};

/// What a host's commands need of the machine's /run.
const SHARED_RUN: [(&str, bool); 2] = [("netns", true), ("calico-lab", false)];

impl Lab {
    /// Where a host's own files live, outside /run: its /run, /etc/docker, /opt, Docker's data.
    pub fn host_root(&self, host: &str) -> PathBuf {
        PathBuf::from("/var/lib/calico-lab")
            .join(&self.name)
            .join(host)
    }

    /// The lab's files outside /run (every host's root).
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from("/var/lib/calico-lab").join(&self.name)
    }

    /// Pid files and logs of a host's own processes (keeper, engine).
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.join("hosts").join(host)
    }

    fn keeper_pid_file(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("keeper.pid")
    }

    /// The pid of the process holding the host's mount namespace, if it runs.
    pub fn keeper_pid(&self, host: &str) -> Option<i32> {
        running(&self.keeper_pid_file(host))
    }

    /// Starts the keeper of the host's mount namespace unless it runs.
    pub fn up_keeper(&self, host: &str) -> Result<()> {
        if self.keeper_pid(host).is_some() {
            return Ok(());
        }
        let root = self.host_root(host);
        for dir in ["run/netns", "run/calico-lab", "etc-docker", "opt"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        std::fs::create_dir_all(self.host_dir(host))?;
        // Mount points must exist on the machine; both are ordinary on Debian.
        for dir in ["/etc/docker", "/opt", "/run/calico-lab"] {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
        }
        let mut keeper = Command::new("ip");
        keeper
            .args(["netns", "exec", &self.host_netns(host)])
            .args(["unshare", "--mount", "--propagation", "slave", "--"])
            .args(["sh", "-c", &mount_script(&root)?]);
        // The script execs `sleep` only once every mount is in place.
        let ready = |pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        };
        start_daemon(
            keeper,
            &format!("the mount namespace of {host}"),
            &self.host_dir(host).join("keeper.log"),
            &self.keeper_pid_file(host),
            Duration::from_secs(10),
            ready,
        )?;
        Ok(())
    }

    /// A Docker host's mounts are its own: a namespace made from inside one would exist there
    /// only, and the lab could not be removed from there. Such work is for the machine.
    pub(crate) fn refuse_inside_a_host(&self, what: &str) -> Result<()> {
        let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
        for host in self.hosts().unwrap_or_default() {
            let Some(pid) = self.keeper_pid(&host) else {
                continue;
            };
            if ours.is_some() && std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() == ours {
                bail!(
                    "calico-lab cannot {what} from inside {host}, which has mounts of its own: \
                     run it from the machine"
                );
            }
        }
        Ok(())
    }

    /// A command on a host: in its network namespace (and for a Docker host, its mount
    /// namespace), with the lab's environment.
    pub fn host_exec(&self, host: &str, command: &[String]) -> Command {
        let netns = self.host_netns(host);
        let mut cmd = match self.keeper_pid(host) {
            Some(pid) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--mount=/proc/{pid}/ns/mnt"))
                    .arg(format!("--net=/var/run/netns/{netns}"))
                    .arg(format!("--wd={}", working_dir().display()))
                    .arg("--");
                cmd
            }
            // A host whose keeper is gone still has its network.
            None => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &netns]);
                cmd
            }
        };
        cmd.args(command).envs(self.host_env(host));
        cmd.env_remove("ETCD_AUTHORITY");
        cmd
    }
}

/// The caller's working directory if the host sees it too (all but the host's own /run).
fn working_dir() -> PathBuf {
    std::env::current_dir()
        .ok()
        .filter(|d| !d.starts_with("/run") && !d.starts_with("/var/run"))
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The shell script that builds the host's mounts, then becomes the keeper.
fn mount_script(root: &std::path::Path) -> Result<String> {
    let mut lines = vec!["set -e".to_string()];
    lines.extend(cgroup_mounts()?);
    let run = root.join("run");
    for (dir, recursive) in SHARED_RUN {
        let bind = if recursive { "--rbind" } else { "--bind" };
        lines.push(format!("mount {bind} /run/{dir} {}/{dir}", run.display()));
    }
    // Recursive, so the binds just made inside come along.
    lines.push(format!("mount --rbind {} /run", run.display()));
    for (dir, target) in [("etc-docker", "/etc/docker"), ("opt", "/opt")] {
        lines.push(format!(
            "mount --bind {} {target}",
            root.join(dir).display()
        ));
    }
    lines.push("exec sleep infinity".into());
    Ok(lines.join("\n"))
}

/// Mounts that rebuild the machine's /sys/fs/cgroup (every hierarchy, as mounted there).
fn cgroup_mounts() -> Result<Vec<String>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut lines = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = before.split_whitespace().nth(4).unwrap_or_default();
        if mount_point != "/sys/fs/cgroup" && !mount_point.starts_with("/sys/fs/cgroup/") {
            continue;
        }
        let mut fields = after.split_whitespace();
        let (Some(fstype), Some(_source), Some(options)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let options: Vec<&str> = options
            .split(',')
            .filter(|o| !matches!(*o, "rw" | "ro"))
            .collect();
        let mut options = options.join(",");
        // A named hierarchy without controllers must say so.
        if fstype == "cgroup" && options.split(',').all(|o| o.starts_with("name=")) {
            options = format!("none,{options}");
        }
        let with_options = if options.is_empty() {
            String::new()
        } else {
            format!(" -o {options}")
        };
        lines.push(format!(
            "mkdir -p {mount_point} && mount -t {fstype}{with_options} cgroup {mount_point}"
        ));
    }
    if lines.is_empty() {
        bail!("this machine has no cgroup file system under /sys/fs/cgroup, which dockerd needs");
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_rebuilds_cgroups_before_covering_run_and_ends_as_the_keeper() {
        let script = mount_script(std::path::Path::new("/var/lib/calico-lab/l/calico-01")).unwrap();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "set -e");
        assert!(
            lines.iter().any(|l| l.contains("/sys/fs/cgroup")),
            "{script}"
        );
        let rbind_run = lines
            .iter()
            .position(|l| *l == "mount --rbind /var/lib/calico-lab/l/calico-01/run /run")
            .expect(&script);
        let netns = lines
            .iter()
            .position(|l| l.contains("--rbind /run/netns"))
            .expect(&script);
        assert!(netns < rbind_run, "the machine's /run is hidden afterwards");
        assert_eq!(lines.last(), Some(&"exec sleep infinity"));
    }
}
