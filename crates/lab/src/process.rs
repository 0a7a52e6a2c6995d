//! The lab's long-running processes (etcd, host keepers, Docker engines): started in a process
//! group of their own with their output in a log and their pid in a file, waited for until
//! ready, and stopped by that pid.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Starts `command` (which must exec the daemon in place: `ip netns exec`, `nsenter` and
/// `unshare` do), records its pid and polls `ready` until it holds. Fails with the end of the
/// log if the process exits first or is not ready `within`.
pub fn start_daemon(
    mut command: Command,
    what: &str,
    log: &Path,
    pid_file: &Path,
    within: Duration,
    mut ready: impl FnMut(i32) -> bool,
) -> Result<i32> {
    let output =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let pid = child.id() as i32;
    std::fs::write(pid_file, pid.to_string())?;
    let deadline = Instant::now() + within;
    while !ready(pid) {
        if !alive(pid) || Instant::now() > deadline {
            bail!(
                "{what} did not start; the end of {}:\n{}",
                log.display(),
                tail(log, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

/// The last lines of a log.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The pid a pid file holds.
pub fn read_pid(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// The pid in the file, if that process runs.
pub fn running(pid_file: &Path) -> Option<i32> {
    read_pid(pid_file).filter(|pid| alive(*pid))
}

/// Whether the process exists and has not exited (a zombie waiting to be reaped has).
pub fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next());
    kill(Pid::from_raw(pid), None).is_ok() && !matches!(state, Some("Z") | Some("X") | None)
}

/// SIGTERM, then SIGKILL if it is still there after `grace`.
pub fn stop(pid_number: i32, grace: Duration) {
    let pid = Pid::from_raw(pid_number);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while alive(pid_number) && Instant::now() < deadline {
        // Reap it if it is our child (etcd started by this process); ignore otherwise.
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}
