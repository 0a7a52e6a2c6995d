//! Applying nft scripts: the real `nft` binary, or a recording fake for tests of the agent.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::netlink;
use super::ops::{script, Op};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run nft (install the nftables package): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Rejected(String),
}

/// Where the agent's policy goes.
pub trait Firewall: Send + Sync {
    /// Applies a script as one transaction: all of it or none of it.
    fn apply(&self, script: &str) -> Result<(), FirewallError>;
    /// Runs operations (see [`Op`]): by default as one script.
    fn apply_ops(&self, ops: &[Op]) -> Result<(), FirewallError> {
        self.apply(&script(ops))
    }
    /// Whether the kernel would take a script, without applying it.
    fn check(&self, script: &str) -> Result<(), FirewallError>;
    /// Whether the agent's tables exist (someone may have deleted one).
    fn table_exists(&self) -> Result<bool, FirewallError>;
}

/// The kernel's nftables in the network namespace of the thread that first uses it: `nft`
/// for whole rulesets and the base chains, netlink for incremental changes and lookups.
#[derive(Debug, Default)]
pub struct NftCli {
    netlink: netlink::Connection,
}

fn run_nft(args: &[&str], input: Option<&str>) -> Result<String, FirewallError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FirewallError::Spawn)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(FirewallError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(FirewallError::Spawn)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(FirewallError::Rejected(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

impl Firewall for NftCli {
    fn apply(&self, script: &str) -> Result<(), FirewallError> {
        run_nft(&["-f", "-"], Some(script)).map(|_| ())
    }

    fn check(&self, script: &str) -> Result<(), FirewallError> {
        run_nft(&["--check", "-f", "-"], Some(script)).map(|_| ())
    }

    /// Incremental changes go to the kernel over netlink as one transaction (see
    /// `netlink.rs`: nft's own cost per change grows with the table); a change that touches the
    /// base chains, which only the agent's settings change, goes through nft.
    fn apply_ops(&self, ops: &[Op]) -> Result<(), FirewallError> {
        match netlink::supported(ops) {
            true => self.netlink.apply(ops),
            false => self.apply(&script(ops)),
        }
    }

    /// Over netlink: `nft list` builds its cache for what it lists (a third of a second
    /// with 10,000 set members when it listed the tables), and even a small object costs a
    /// process; the drift check asks every few seconds.
    fn table_exists(&self) -> Result<bool, FirewallError> {
        self.netlink.table_exists()
    }
}

/// Records every script instead of applying it; the table "exists" once one was applied.
#[derive(Debug, Default)]
pub struct RecordingFirewall {
    scripts: Mutex<Vec<String>>,
}

impl RecordingFirewall {
    pub fn scripts(&self) -> Vec<String> {
        self.scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Firewall for RecordingFirewall {
    fn check(&self, _script: &str) -> Result<(), FirewallError> {
        Ok(())
    }

    fn apply(&self, script: &str) -> Result<(), FirewallError> {
        self.scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(script.to_string());
        Ok(())
    }

    fn table_exists(&self) -> Result<bool, FirewallError> {
        Ok(!self.scripts().is_empty())
    }
}
