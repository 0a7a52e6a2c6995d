//! `calicoctl checksystem` and `calicoctl diags`: is this host ready, and what to send when
//! something is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use calico_model::keys;

use super::{connect, parse_args};
use crate::args::{usage_error, valued, OptSpec};
use crate::local;
use crate::usage::{CHECKSYSTEM, DIAGS};

fn tool_works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

pub async fn checksystem(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, &[], CHECKSYSTEM)? else {
        return Ok(());
    };
    if !args.words.is_empty() {
        return Err(usage_error(CHECKSYSTEM, "checksystem takes no arguments."));
    }
    let root = nix::unistd::geteuid().is_root();
    let checks: Vec<(&str, bool, &str)> = vec![
        (
            "running as root",
            root,
            "calicoctl node and container need root",
        ),
        (
            "ip (iproute2)",
            tool_works("ip", &["-V"]),
            "install iproute2",
        ),
        (
            "network namespaces",
            Path::new("/proc/self/ns/net").exists(),
            "the kernel lacks network namespaces",
        ),
        (
            "IPv4 forwarding sysctl",
            Path::new("/proc/sys/net/ipv4/ip_forward").exists(),
            "the kernel lacks IPv4 forwarding",
        ),
        (
            "IPv6",
            Path::new("/proc/sys/net/ipv6").exists(),
            "the kernel lacks IPv6",
        ),
        (
            "nftables (nft list tables)",
            tool_works("nft", &["list", "tables"]),
            "install nftables; the kernel needs nf_tables",
        ),
    ];
    let mut failed = 0;
    for (what, ok, hint) in &checks {
        if *ok {
            println!("OK    {what}");
        } else {
            println!("FAIL  {what}: {hint}");
            failed += 1;
        }
    }
    match tool_works("iptables", &["-w", "-S", "FORWARD"]) {
        true => println!("OK    iptables (FORWARD rule for coexisting with Docker)"),
        false => println!("NOTE  iptables is not available: nothing to coexist with"),
    }
    let ipip = Path::new("/sys/module/ipip").exists()
        || std::fs::read_to_string("/proc/net/dev").is_ok_and(|d| d.contains("tunl0"));
    match ipip {
        true => println!("OK    IP-in-IP (pools with --ipip)"),
        false => println!("NOTE  IP-in-IP is not available in this kernel: pools with --ipip cannot be programmed"),
    }
    match connect().await {
        Ok(r) => match r.store().get(keys::READY).await {
            Ok(_) => println!("OK    etcd is reachable"),
            Err(e) => {
                println!("FAIL  etcd: {e}");
                failed += 1;
            }
        },
        Err(e) => {
            println!("FAIL  etcd: {e}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    println!("System looks OK for Calico.");
    Ok(())
}

const DIAG_OPTIONS: &[OptSpec] = &[valued("--log-dir")];

/// Runs a command and stores what it printed (or why it failed) in `dir/name`.
fn capture(dir: &Path, name: &str, program: &str, args: &[&str]) -> Result<()> {
    let text = match Command::new(program).args(args).output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("cannot run {program}: {e}\n"),
    };
    std::fs::write(dir.join(name), text)?;
    Ok(())
}

pub async fn diags(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, DIAG_OPTIONS, DIAGS)? else {
        return Ok(());
    };
    if !args.words.is_empty() {
        return Err(usage_error(DIAGS, "diags takes no arguments."));
    }
    let node = local::node_name(None)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let name = format!("calico-diags-{node}-{stamp}");
    let base = std::env::temp_dir();
    let dir = base.join(&name);
    std::fs::create_dir_all(&dir)?;
    println!("Collecting diagnostics for {node} into {}", dir.display());
    for (file, program, args) in [
        ("links.txt", "ip", &["-d", "link", "show"][..]),
        ("addresses.txt", "ip", &["addr", "show"][..]),
        (
            "routes-v4.txt",
            "ip",
            &["-4", "route", "show", "table", "all"][..],
        ),
        (
            "routes-v6.txt",
            "ip",
            &["-6", "route", "show", "table", "all"][..],
        ),
        ("nft-ruleset.txt", "nft", &["list", "ruleset"][..]),
        ("iptables.txt", "iptables-save", &[][..]),
        ("ip6tables.txt", "ip6tables-save", &[][..]),
        (
            "sysctl-net.txt",
            "sysctl",
            &["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"][..],
        ),
    ] {
        capture(&dir, file, program, args)?;
    }
    let socket = local::state_dir(&node)
        .join("bird.ctl")
        .display()
        .to_string();
    capture(
        &dir,
        "bird.txt",
        "birdc",
        &["-s", &socket, "show", "protocols", "all"],
    )?;
    let log_dir = PathBuf::from(args.value("--log-dir").unwrap_or("/var/log/calico")).join(&node);
    let log = log_dir.join("calico-node.log");
    match std::fs::copy(&log, dir.join("calico-node.log")) {
        Ok(_) => {}
        Err(e) => std::fs::write(
            dir.join("calico-node.log"),
            format!("cannot read {}: {e}\n", log.display()),
        )?,
    }
    let dump = match connect().await {
        Ok(r) => match r.store().list(keys::ROOT).await {
            Ok(listing) => listing
                .kvs
                .iter()
                .map(|kv| format!("{}\n{}\n", kv.key, kv.value))
                .collect::<String>(),
            Err(e) => format!("cannot read the datastore: {e}\n"),
        },
        Err(e) => format!("cannot reach the datastore: {e}\n"),
    };
    std::fs::write(dir.join("datastore.txt"), dump)?;
    let archive = base.join(format!("{name}.tar.gz"));
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&base)
        .arg(&name)
        .status()
        .context("cannot run tar")?;
    std::fs::remove_dir_all(&dir)?;
    if !status.success() {
        bail!("tar failed to write {}", archive.display());
    }
    println!("Diagnostics saved to {}", archive.display());
    // The original also uploaded the archive and printed a download URL: there is no upload
    // service for this project, and these machines reach no outside network anyway.
    println!("No upload URL: this calicoctl does not upload diagnostics; send the file above.");
    Ok(())
}
