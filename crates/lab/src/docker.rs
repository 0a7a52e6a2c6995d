//! A Docker engine on a lab host (`calico-lab up --docker`): Debian's dockerd, started inside
//! the host's network and mount namespaces (see `host.rs`) with paths of its own, so that
//! engines side by side share nothing, and nothing of the machine's Docker paths is touched:
//!
//! ```text
//! socket      /var/run/docker.sock on the host (the host's own /run), and 127.0.0.1:2375 in
//!             the host's network namespace (seed 000; the Docker API proxy is on 2377)
//! exec root   /var/run/docker on the host; containerd is dockerd's own, under it
//! data root   /var/lib/calico-lab/<lab>/<host>/docker
//! cgroups     /calico-lab/<lab>/<host>/<container>, cgroupfs driver (no systemd here)
//! bridge      docker0 172.18.<n>.1/24 (Docker's default 172.17.0.0/16 overlaps the fabric)
//! ```
//!
//! No registry is reachable, so images are imported: `busybox` is Debian's busybox-static in a
//! root file system of applet links.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::Lab;
use crate::process::{running, start_daemon, stop};
use crate::sh::{output, run};

/// The engine's socket as the host sees it.
pub const DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// The engine on TCP too, on the host's loopback (seed 000's `DOCKER_HOST=localhost:2375`).
pub const ENGINE_TCP: &str = "127.0.0.1:2375";
const BUSYBOX: &str = "/bin/busybox";

impl Lab {
    fn engine_pid_file(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("dockerd.pid")
    }

    /// The pid of the host's dockerd, if it runs.
    pub fn engine_pid(&self, host: &str) -> Option<i32> {
        running(&self.engine_pid_file(host))
    }

    /// The engine's socket as the machine sees it (outside the host's mount namespace).
    pub fn engine_socket(&self, host: &str) -> PathBuf {
        self.host_root(host).join("run/docker.sock")
    }

    /// Starts host `n`'s engine unless it runs, and gives it the lab's images.
    pub fn up_engine(&self, host: &str, n: usize) -> Result<()> {
        if let Some(pid) = self.engine_pid(host) {
            println!("docker   {host}: engine already running (pid {pid})");
            return Ok(());
        }
        let dockerd = which("dockerd", "docker.io")?;
        which("containerd", "containerd")?;
        let data_root = self.host_root(host).join("docker");
        std::fs::create_dir_all(&data_root)?;
        let args: Vec<String> = [
            dockerd.display().to_string(),
            format!("--data-root={}", data_root.display()),
            "--exec-root=/var/run/docker".into(),
            "--pidfile=/var/run/docker.pid".into(),
            format!("--host={DOCKER_HOST}"),
            // Seed 000 reaches the engine itself on localhost:2375 (the proxy is on 2377);
            // loopback of the host's own namespace, so no other host can.
            format!("--host=tcp://{ENGINE_TCP}"),
            format!(
                "--cgroup-parent={}",
                crate::cgroups::parent(&self.name, host)
            ),
            "--exec-opt=native.cgroupdriver=cgroupfs".into(),
            "--storage-driver=overlay2".into(),
            format!("--bip=172.18.{n}.1/24"),
            // Docker's own pools include 192.168.0.0/16, Calico's default pool.
            "--default-address-pool=base=172.19.0.0/16,size=24".into(),
        ]
        .into();
        // nsenter execs dockerd in place.
        let pid = start_daemon(
            self.host_exec(host, &args),
            &format!("dockerd on {host}"),
            &self.host_dir(host).join("dockerd.log"),
            &self.engine_pid_file(host),
            Duration::from_secs(30),
            |_| self.engine_answers(host),
        )?;
        self.import_busybox(host)?;
        println!(
            "docker   {host}: engine running (pid {pid}) at {DOCKER_HOST} on the host ({} from outside), image busybox",
            self.engine_socket(host).display()
        );
        Ok(())
    }

    fn engine_answers(&self, host: &str) -> bool {
        let ping = ["docker", "version", "--format", "{{.Server.Version}}"].map(String::from);
        crate::sh::succeeds(&mut self.host_exec(host, &ping))
    }

    /// A docker command on a host, which must succeed; its output.
    pub fn docker(&self, host: &str, args: &[&str]) -> Result<String> {
        let mut command = vec!["docker".to_string()];
        command.extend(args.iter().map(|a| a.to_string()));
        output(&mut self.host_exec(host, &command))
    }

    fn import_busybox(&self, host: &str) -> Result<()> {
        if self.docker(host, &["image", "inspect", "busybox"]).is_ok() {
            return Ok(());
        }
        let tarball = self.busybox_tarball()?;
        self.docker(
            host,
            &[
                "import",
                "--change",
                r#"CMD ["sh"]"#,
                &tarball.display().to_string(),
                "busybox:latest",
            ],
        )?;
        Ok(())
    }

    /// A root file system of busybox applets, as a tarball for `docker import` (made once).
    fn busybox_tarball(&self) -> Result<PathBuf> {
        let dir = self.dir.join("images");
        let tarball = dir.join("busybox.tar");
        if tarball.exists() {
            return Ok(tarball);
        }
        let binary = std::fs::read(BUSYBOX)
            .with_context(|| format!("cannot read {BUSYBOX}: install busybox-static"))?;
        // A dynamically linked busybox would not start in an image without its libraries.
        if has_interpreter(&binary) {
            bail!(
                "{BUSYBOX} is dynamically linked: install busybox-static (scripts/setup.sh does)"
            );
        }
        let rootfs = dir.join("busybox-rootfs");
        let _ = std::fs::remove_dir_all(&rootfs);
        for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
            std::fs::create_dir_all(rootfs.join(sub))?;
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox"))?;
        for applet in run(BUSYBOX, &["--list"])?.lines().map(str::trim) {
            if !applet.is_empty() && applet != "busybox" {
                std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
            }
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
        let partial = dir.join("busybox.tar.part");
        run(
            "tar",
            &[
                "-C",
                &rootfs.display().to_string(),
                "-cf",
                &partial.display().to_string(),
                ".",
            ],
        )?;
        std::fs::rename(&partial, &tarball)?;
        std::fs::remove_dir_all(&rootfs)?;
        Ok(tarball)
    }

    /// Removes a host's containers (while its calico-node still runs, so their networking is
    /// taken down properly); errors are reported and the teardown carries on.
    pub fn remove_containers(&self, host: &str) -> Vec<String> {
        if self.engine_pid(host).is_none() {
            return Vec::new();
        }
        let ids = match self.docker(host, &["ps", "-aq"]) {
            Ok(ids) => ids,
            Err(e) => return vec![format!("{host}: cannot list containers: {e:#}")],
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["rm", "-f"];
        args.extend(&ids);
        match self.docker(host, &args) {
            Ok(_) => {
                println!("removed  {} container(s) on {host}", ids.len());
                Vec::new()
            }
            Err(e) => vec![format!("{host}: {e:#}")],
        }
    }

    /// Stops a host's engine (it stops its containerd).
    pub fn stop_engine(&self, host: &str) {
        if let Some(pid) = self.engine_pid(host) {
            stop(pid, Duration::from_secs(20));
            println!("stopped  dockerd of {host} (pid {pid})");
        }
    }
}

/// Where a program is, on PATH or in the system directories.
fn which(program: &str, package: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|path| path.exists())
        .with_context(|| {
            format!("{program} is not installed (apt-get install {package}; scripts/setup.sh does)")
        })
}

/// Whether an ELF executable names a dynamic loader (a PT_INTERP program header).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // 64-bit little-endian ELF only (what Debian's amd64 and arm64 packages hold).
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (Some(offset), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..usize::from(count)).any(|i| {
        let header = offset as usize + i * usize::from(size);
        u32_at(header) == Some(PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_busybox_has_no_interpreter_and_a_dynamic_program_has_one() {
        let busybox = std::fs::read(BUSYBOX).expect("busybox-static is installed");
        assert!(!has_interpreter(&busybox));
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(has_interpreter(&sh));
        assert!(!has_interpreter(b"not an ELF file"));
    }
}
