//! The cgroups a lab's engines put their containers in: `/calico-lab/<lab>/<host>/<container>`
//! in every hierarchy (dockerd's `--cgroup-parent`). Removing a lab kills what is still in them
//! and removes the directories, which nothing else would: the machine has no systemd to do it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where the machine mounts its cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup parent of a host's containers, as dockerd takes it.
pub fn parent(lab: &str, host: &str) -> String {
    format!("/calico-lab/{lab}/{host}")
}

/// The lab's directory in every hierarchy that has one.
fn lab_dirs(lab: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) else {
        return Vec::new();
    };
    let mut hierarchies: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    // A machine with only cgroup v2 has the hierarchy at the root itself.
    hierarchies.push(PathBuf::from(CGROUP_ROOT));
    hierarchies
        .into_iter()
        .map(|h| h.join("calico-lab").join(lab))
        .filter(|d| d.is_dir())
        .collect()
}

/// Every directory below (and including) `dir`, deepest first.
fn depth_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(depth_first(&entry.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// The processes in these cgroups.
fn members(dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|procs| {
            procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Kills whatever still runs in the lab's cgroups, then removes them. Returns what could not
/// be removed (an empty list when all went).
pub fn remove(lab: &str) -> Vec<String> {
    let dirs: Vec<PathBuf> = lab_dirs(lab).iter().flat_map(|d| depth_first(d)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = members(&dirs);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut left = Vec::new();
    for dir in dirs {
        // A cgroup is gone the moment its last process is reaped; retry briefly for that.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = std::fs::remove_dir(&dir) {
            if e.kind() == std::io::ErrorKind::NotFound {
                break;
            }
            if Instant::now() > deadline {
                left.push(format!("{}: {e}", dir.display()));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The shared top directory goes once no lab uses it.
    for hierarchy in lab_dirs_parents() {
        let _ = std::fs::remove_dir(hierarchy);
    }
    left
}

fn lab_dirs_parents() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path().join("calico-lab"))
        .chain([Path::new(CGROUP_ROOT).join("calico-lab")])
        .filter(|d| d.is_dir())
        .collect()
}
