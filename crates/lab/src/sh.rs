//! Running the tools the lab is built with (ip, etcd, calicoctl), with errors that say what
//! failed and what it printed.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs a command to completion; its stdout on success, an error with its stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    output(Command::new(program).args(args))
}

pub fn output(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a command succeeds (its output is discarded).
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command inside a network namespace.
pub fn in_netns(netns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", netns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}
