//! A lab of its own per test, removed when the test ends (also when it fails).

#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct TestLab {
    pub name: String,
}

fn bin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_calico-lab")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run 'cargo build --workspace' first",
        path.display()
    );
    path
}

/// Polls `condition` every 100 ms until it holds; fails the test after `seconds`.
pub fn until(what: &str, seconds: u64, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {seconds} s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl TestLab {
    /// A lab name no other test uses, removed when dropped; nothing is built yet.
    pub fn reserve() -> TestLab {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        bin("calicoctl");
        bin("calico-node");
        let name = format!(
            "t{}-{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        TestLab { name }
    }

    /// `calico-lab up` with this many hosts, under a name no other test uses.
    pub fn up(hosts: usize) -> TestLab {
        let lab = TestLab::reserve();
        lab.lab(&["up", "--hosts", &hosts.to_string()]);
        lab
    }

    /// `calico-lab up --docker`: hosts with a Docker engine each and the libnetwork drivers.
    pub fn up_docker(hosts: usize) -> TestLab {
        let lab = TestLab::reserve();
        lab.lab(&["up", "--docker", "--hosts", &hosts.to_string()]);
        lab
    }

    /// `program args…` on a host, which must succeed (`succeed`) or fail; its stdout, or its
    /// stderr when it must fail.
    fn expect(&self, host: &str, program: &str, args: &[&str], succeed: bool) -> String {
        let mut command = vec![program];
        command.extend(args);
        let output = self.on(host, &command);
        assert_eq!(
            output.status.success(),
            succeed,
            "{host}: {program} {args:?} should {}: {}",
            if succeed { "succeed" } else { "fail" },
            String::from_utf8_lossy(&output.stderr)
        );
        let shown = if succeed {
            output.stdout
        } else {
            output.stderr
        };
        String::from_utf8_lossy(&shown).into_owned()
    }

    /// A docker command on a host (its own engine), which must succeed; its stdout.
    pub fn docker(&self, host: &str, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        self.docker_argv(host, &words)
    }

    /// As `docker`, with the arguments as given (a Go template may hold spaces).
    pub fn docker_argv(&self, host: &str, args: &[&str]) -> String {
        self.expect(host, "docker", args, true)
    }

    /// A docker command that must fail; its stderr.
    pub fn docker_fails(&self, host: &str, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        self.expect(host, "docker", &words, false)
    }

    /// Whether any of three pings from a container, 0.2 s apart, is answered.
    pub fn container_pings(&self, host: &str, container: &str, to_ip: &str) -> bool {
        let ping = [
            "docker", "exec", container, "ping", "-c", "3", "-i", "0.2", "-W", "1", to_ip,
        ];
        self.on(host, &ping).status.success()
    }

    /// Waits (up to 20 s) until a container reaches (or no longer reaches) `to_ip`.
    pub fn until_container_reach(&self, host: &str, container: &str, to_ip: &str, reach: bool) {
        until(
            &format!(
                "{container} on {host} -> {to_ip} {}",
                if reach { "reachable" } else { "blocked" }
            ),
            20,
            || self.container_pings(host, container, to_ip) == reach,
        );
    }

    /// A container's address on a network, as Docker reports it.
    pub fn container_ip(&self, host: &str, container: &str) -> String {
        let format = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
        self.docker_argv(host, &["inspect", "-f", format, container])
            .trim()
            .to_string()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("calico-lab"));
        command.args(args).arg("--name").arg(&self.name);
        command
    }

    /// `calico-lab demo` with these arguments on this lab's name, which must succeed; its
    /// stdout (the demo builds the lab itself: use it on a reserved lab).
    pub fn demo(&self, args: &[&str]) -> String {
        let output = Command::new(bin("calico-lab"))
            .arg("demo")
            .args(args)
            .args(["--name", &self.name])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// A calico-lab subcommand that must succeed; its stdout.
    pub fn lab(&self, args: &[&str]) -> String {
        let output = self.command(args).stdin(Stdio::null()).output().unwrap();
        assert!(
            output.status.success(),
            "calico-lab {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A command on a host (through `calico-lab exec`).
    pub fn on(&self, host: &str, command: &[&str]) -> Output {
        let mut args = vec!["exec", host, "--name", &self.name, "--"];
        args.extend_from_slice(command);
        Command::new(bin("calico-lab"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `calicoctl` on a host, which must succeed; its stdout.
    pub fn calicoctl(&self, host: &str, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        self.expect(host, "calicoctl", &words, true)
    }

    /// `calicoctl` on a host, which must fail; its stderr.
    pub fn calicoctl_fails(&self, host: &str, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        self.expect(host, "calicoctl", &words, false)
    }

    pub fn workload(&self, host: &str, name: &str, ip: &str) {
        self.lab(&["workload", "add", host, name]);
        self.calicoctl(host, &format!("container add {name} {ip}"));
    }

    pub fn in_workload(&self, name: &str, command: &[&str]) -> Command {
        let mut cmd = self.command(&["workload", "exec", name]);
        cmd.arg("--").args(command);
        cmd
    }

    /// Whether any of three pings, 0.2 s apart, is answered: one packet lost on a busy machine
    /// is not a policy decision, and "blocked" means all three went unanswered.
    pub fn pings(&self, from: &str, to_ip: &str) -> bool {
        let family = if to_ip.contains(':') { "-6" } else { "-4" };
        let ping = vec!["ping", family, "-c", "3", "-i", "0.2", "-W", "1", to_ip];
        self.in_workload(from, &ping)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Waits (up to 20 s) until `from` reaches (or, with `reach` false, no longer reaches) `to_ip`.
    pub fn until_reach(&self, from: &str, to_ip: &str, reach: bool) {
        until(
            &format!(
                "{from} -> {to_ip} {}",
                if reach { "reachable" } else { "blocked" }
            ),
            20,
            || self.pings(from, to_ip) == reach,
        );
    }

    /// The agent's pid on a host, if running.
    pub fn agent_pid(&self, host: &str) -> Option<i32> {
        let file = format!(
            "/var/run/calico-lab/{}/state/{host}/calico-node.pid",
            self.name
        );
        let pid: i32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (!stat.rsplit(')').next()?.trim_start().starts_with('Z')).then_some(pid)
    }

    /// etcdctl in the lab's fabric, where etcd runs.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let fabric = format!("{}-fabric", self.name);
        let mut all = vec![
            "netns",
            "exec",
            &fabric,
            "etcdctl",
            "--endpoints=http://172.17.8.1:2379",
        ];
        all.extend_from_slice(args);
        let output = Command::new("ip")
            .args(&all)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = self
            .command(&["down"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A server process inside a workload, killed when dropped.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl TestLab {
    /// Waits until something in the workload listens on the port (`ss` shows it).
    pub fn until_listening(&self, workload: &str, port: u16, udp: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let flag = if udp { "-Hlun" } else { "-Hltn" };
        loop {
            let out = self.in_workload(workload, &["ss", flag]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port} in {workload}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A TCP server that accepts any number of connections.
    pub fn tcp_server(&self, workload: &str, port: u16) -> Server {
        let child = self
            .in_workload(workload, &["nc", "-lk", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.until_listening(workload, port, false);
        Server(child)
    }

    pub fn tcp_connects(&self, from: &str, ip: &str, port: u16) -> bool {
        self.in_workload(from, &["nc", "-z", "-w", "2", ip, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Whether a UDP datagram from `from` reaches a server in `to` on `ip:port`.
    pub fn udp_delivers(&self, from: &str, to: &str, ip: &str, port: u16) -> bool {
        let server = self
            .in_workload(to, &["timeout", "3", "nc", "-u", "-l", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        self.until_listening(to, port, true);
        let send = format!("echo hello | nc -u -w 1 {ip} {port}");
        self.in_workload(from, &["sh", "-c", &send])
            .status()
            .unwrap();
        let output = server.wait_with_output().unwrap();
        String::from_utf8_lossy(&output.stdout).contains("hello")
    }
}
