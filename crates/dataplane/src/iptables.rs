//! Coexistence with iptables' FORWARD chain (Docker sets its policy to DROP): one rule per IP
//! version that accepts what our nftables policy accepted (marked [`ACCEPTED_MARK`]). Nothing
//! unmarked is accepted, so if our table were deleted, iptables' own policy still applies.

use std::process::{Command, Stdio};

use crate::nft::ACCEPTED_MARK;

const COMMENT: &str = "calico: accepted by workload policy";

fn rule() -> Vec<String> {
    let mark = format!("{ACCEPTED_MARK:#x}/{ACCEPTED_MARK:#x}");
    [
        "-m",
        "mark",
        "--mark",
        &mark,
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        "ACCEPT",
    ]
    .map(String::from)
    .to_vec()
}

fn iptables(tool: &str, action: &[&str]) -> std::io::Result<bool> {
    let status = Command::new(tool)
        .arg("-w")
        .args(action)
        .args(rule())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    Ok(status.success())
}

/// Tools present on this machine (without iptables there is no FORWARD chain to pass).
fn tools() -> Vec<&'static str> {
    ["iptables", "ip6tables"]
        .into_iter()
        .filter(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect()
}

/// Whether every rule is in place.
pub fn present() -> std::io::Result<bool> {
    for tool in tools() {
        if !iptables(tool, &["-C", "FORWARD"])? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Inserts the rules that are missing, at the top of FORWARD; true if it inserted any.
pub fn ensure() -> std::io::Result<bool> {
    let mut inserted = false;
    for tool in tools() {
        if !iptables(tool, &["-C", "FORWARD"])? {
            if !iptables(tool, &["-I", "FORWARD", "1"])? {
                return Err(std::io::Error::other(format!(
                    "{tool} could not insert the FORWARD rule"
                )));
            }
            inserted = true;
        }
    }
    Ok(inserted)
}
