//! `calicoctl ipam …`: who holds an address, releasing one, block usage, and a consistency
//! check (with repair) between IPAM, the workloads and the pools.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{bail, Result};
use calico_datastore::resources::{EndpointFilter, Resources};
use calico_datastore::Datastore;
use calico_ipam::{describe, Block, Ipam, Owner};
use calico_model::bgp::parse_ip;
use calico_model::keys;
use calico_model::pool::IpPool;
use ipnet::IpNet;

use super::{connect, parse_args};
use crate::args::{flag, usage_error, valued, OptSpec};
use crate::table::Table;
use crate::usage::IPAM as USAGE;

const OPTIONS: &[OptSpec] = &[valued("--ip"), flag("--fix"), flag("--force")];

pub async fn run(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, OPTIONS, USAGE)? else {
        return Ok(());
    };
    let words = args.words();
    match words.as_slice() {
        ["info", ip] => {
            args.reject_options_except(&[], USAGE)?;
            info(parse_ip("IP address", ip)?).await
        }
        ["release", ip] => {
            args.reject_options_except(&[], USAGE)?;
            release(parse_ip("IP address", ip)?).await
        }
        ["show"] => {
            args.reject_options_except(&["--ip"], USAGE)?;
            match args.value("--ip") {
                Some(ip) => info(parse_ip("--ip address", ip)?).await,
                None => show().await,
            }
        }
        ["check"] => {
            args.reject_options_except(&["--fix", "--force"], USAGE)?;
            if args.flag("--force") && !args.flag("--fix") {
                return Err(usage_error(USAGE, "--force only goes with --fix."));
            }
            check(args.flag("--fix"), args.flag("--force")).await
        }
        _ => Err(usage_error(USAGE, "Invalid ipam command.")),
    }
}

async fn info(ip: IpAddr) -> Result<()> {
    let r = connect().await?;
    let ipam = Ipam::new(r.shared_store());
    match ipam.holder(ip).await? {
        None => println!("{ip} is not in any IPAM block: nothing has been allocated near it."),
        Some((block, None)) => println!("{ip} is not assigned (block {block})."),
        Some((block, Some(holder))) => println!(
            "{ip} is in use by {} (handle {}, block {block}).",
            describe(&holder),
            holder.handle_id.as_deref().unwrap_or("none")
        ),
    }
    Ok(())
}

/// The endpoint using `ip`, as "endpoint <id> (workload <w> on host <h>)".
async fn endpoint_using(r: &Resources, ip: IpAddr) -> Result<Option<String>> {
    for record in r.endpoints(&EndpointFilter::default()).await? {
        if record
            .endpoint
            .as_ref()
            .is_ok_and(|e| e.nets().any(|n| n.addr() == ip))
        {
            return Ok(Some(format!(
                "endpoint {} (workload {} on host {})",
                record.key.endpoint_id, record.key.workload, record.key.host
            )));
        }
    }
    Ok(None)
}

async fn release(ip: IpAddr) -> Result<()> {
    let r = connect().await?;
    if let Some(user) = endpoint_using(&r, ip).await? {
        bail!(
            "{ip} is used by {user}; remove the workload or its address ('calicoctl container <CONTAINER> ip remove {ip}') instead, so it is not handed out twice."
        );
    }
    let not_allocated = Ipam::new(r.shared_store()).release(&[ip]).await?;
    if !not_allocated.is_empty() {
        bail!("{ip} is not assigned; nothing was released.");
    }
    println!("Address successfully released");
    Ok(())
}

async fn pools(r: &Resources) -> Result<Vec<IpPool>> {
    let mut all = r.pools(true).await?.0;
    all.extend(r.pools(false).await?.0);
    Ok(all)
}

async fn all_blocks(ipam: &Ipam) -> Result<(Vec<Block>, Vec<String>)> {
    let (mut blocks, mut bad) = (Vec::new(), Vec::new());
    for v4 in [true, false] {
        let (good, unreadable) = ipam.blocks(v4).await?;
        blocks.extend(good.into_iter().map(|(_, b)| b));
        bad.extend(unreadable.into_iter().map(|(k, e)| format!("{k}: {e}")));
    }
    Ok((blocks, bad))
}

/// Usage per pool, then per block with the host it belongs to.
async fn show() -> Result<()> {
    let r = connect().await?;
    let ipam = Ipam::new(r.shared_store());
    let (blocks, bad) = all_blocks(&ipam).await?;
    let mut table = Table::new(&["Grouping", "CIDR", "Host", "Total", "In use", "Free"]);
    for pool in pools(&r).await? {
        let inside: Vec<&Block> = blocks
            .iter()
            .filter(|b| pool.cidr.contains(&b.cidr))
            .collect();
        let used: u128 = inside.iter().map(|b| b.in_use() as u128).sum();
        let total = 1u128 << (pool.cidr.max_prefix_len() - pool.cidr.prefix_len());
        table.row(vec![
            "IP Pool".into(),
            pool.cidr.to_string(),
            String::new(),
            total.to_string(),
            used.to_string(),
            (total - used).to_string(),
        ]);
        for block in inside {
            table.row(vec![
                "Block".into(),
                block.cidr.to_string(),
                block.host().unwrap_or("(none)").to_string(),
                block.allocations.len().to_string(),
                block.in_use().to_string(),
                block.free().to_string(),
            ]);
        }
    }
    print!("{}", table.render());
    for line in bad {
        eprintln!("Warning: unreadable block {line}");
    }
    Ok(())
}

/// Hosts named anywhere in the datastore (agent or BGP settings), and those whose agent is
/// alive now (a heartbeat under a lease).
async fn hosts(store: &dyn Datastore) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let name_after = |key: &str, prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|rest| rest.split('/').next())
            .map(String::from)
    };
    let mut known = BTreeSet::new();
    for prefix in [keys::HOSTS_PREFIX, keys::BGP_HOSTS_PREFIX] {
        for kv in store.list(prefix).await?.kvs {
            known.extend(name_after(&kv.key, prefix));
        }
    }
    let live_prefix = keys::FELIX_HOSTS_PREFIX;
    let live = store
        .list(live_prefix)
        .await?
        .kvs
        .iter()
        .filter(|kv| kv.key.ends_with("/status") && kv.lease != 0)
        .filter_map(|kv| name_after(&kv.key, live_prefix))
        .collect();
    Ok((known, live))
}

/// What `check` finds wrong.
#[derive(Default)]
struct Findings {
    /// Allocated, but no workload has it.
    leaked: Vec<IpAddr>,
    /// A workload has it (in a pool), but it is not allocated: (ip, host, workload).
    unallocated: Vec<(IpAddr, String, String)>,
    /// A workload's or an allocation's address that no pool covers.
    outside: Vec<String>,
    /// Blocks whose host is not in the datastore any more.
    orphaned: Vec<(IpNet, String)>,
    unreadable: Vec<String>,
}

impl Findings {
    fn count(&self) -> usize {
        self.leaked.len()
            + self.unallocated.len()
            + self.outside.len()
            + self.orphaned.len()
            + self.unreadable.len()
    }

    fn print(&self) {
        for ip in &self.leaked {
            println!("allocated to no workload:    {ip}");
        }
        for (ip, host, workload) in &self.unallocated {
            println!("not allocated in IPAM:       {ip} (workload {workload} on host {host})");
        }
        for what in &self.outside {
            println!("outside every pool:          {what}");
        }
        for (block, host) in &self.orphaned {
            println!("block of a removed host:     {block} (host {host})");
        }
        for line in &self.unreadable {
            println!("unreadable block:            {line}");
        }
    }
}

async fn check(fix: bool, force: bool) -> Result<()> {
    let r = connect().await?;
    let ipam = Ipam::new(r.shared_store());
    let pools = pools(&r).await?;
    let in_pool = |ip: &IpAddr| pools.iter().any(|p| p.cidr.contains(ip));
    let (blocks, unreadable) = all_blocks(&ipam).await?;
    let (known_hosts, live_hosts) = hosts(r.store()).await?;

    // Every workload address, with its holder.
    let mut used: BTreeMap<IpAddr, (String, String)> = BTreeMap::new();
    for record in r.endpoints(&EndpointFilter::default()).await? {
        if let Ok(endpoint) = &record.endpoint {
            for net in endpoint.nets() {
                used.insert(
                    net.addr(),
                    (record.key.host.clone(), record.key.workload.clone()),
                );
            }
        }
    }
    let allocated: BTreeSet<IpAddr> = blocks
        .iter()
        .flat_map(|b| b.allocated().map(|(ip, _)| ip))
        .collect();
    let mut findings = Findings {
        unreadable,
        ..Default::default()
    };
    for ip in &allocated {
        if !used.contains_key(ip) {
            findings.leaked.push(*ip);
        }
        if !in_pool(ip) {
            findings.outside.push(format!("{ip} (allocated in IPAM)"));
        }
    }
    for (ip, (host, workload)) in &used {
        if !in_pool(ip) {
            findings
                .outside
                .push(format!("{ip} (workload {workload} on host {host})"));
        } else if !allocated.contains(ip) {
            findings
                .unallocated
                .push((*ip, host.clone(), workload.clone()));
        }
    }
    for block in &blocks {
        if let Some(host) = block.host() {
            if !known_hosts.contains(host) {
                findings.orphaned.push((block.cidr, host.to_string()));
            }
        }
    }

    let total = findings.count();
    if total == 0 {
        println!(
            "IPAM is consistent: {} addresses allocated in {} blocks, {} workload addresses.",
            allocated.len(),
            blocks.len(),
            used.len()
        );
        return Ok(());
    }
    findings.print();
    if !fix {
        bail!("IPAM check found {total} problem(s); 'calicoctl ipam check --fix' repairs what it can.");
    }
    if !live_hosts.is_empty() && !force {
        let live: Vec<&str> = live_hosts.iter().map(String::as_str).collect();
        bail!(
            "Not repairing: the agents of {} are running, and an address being handed out right now would look leaked. Stop them ('calicoctl node stop') or add --force.",
            live.join(", ")
        );
    }
    repair(&ipam, &findings).await
}

async fn repair(ipam: &Ipam, findings: &Findings) -> Result<()> {
    if !findings.leaked.is_empty() {
        ipam.release(&findings.leaked).await?;
        println!("released {} leaked address(es)", findings.leaked.len());
    }
    for (ip, host, workload) in &findings.unallocated {
        let owner = Owner {
            handle: format!("{host}.{workload}"),
            host: host.clone(),
            workload: workload.clone(),
        };
        match ipam.assign_ip(*ip, &owner).await {
            Ok(()) => println!("allocated {ip} to workload {workload} on host {host}"),
            Err(e) => println!("could not allocate {ip}: {e}"),
        }
    }
    for (block, host) in &findings.orphaned {
        ipam.release_affinity(block).await?;
        println!("took block {block} away from removed host {host}");
    }
    let left = findings.outside.len() + findings.unreadable.len();
    if left > 0 {
        bail!("{left} problem(s) need a person: add a pool covering the addresses outside every pool, or re-address those workloads; fix or delete unreadable blocks with etcdctl.");
    }
    Ok(())
}

/// The addresses allocated inside `pool`, with who holds them (for `pool remove`).
pub async fn allocations_in(r: &Resources, pool: &IpNet) -> Result<Vec<(IpAddr, String)>> {
    let ipam = Ipam::new(r.shared_store());
    let (blocks, _) = ipam.blocks(pool.addr().is_ipv4()).await?;
    Ok(blocks
        .iter()
        .filter(|(_, b)| pool.contains(&b.cidr))
        .flat_map(|(_, b)| b.allocated().map(|(ip, a)| (ip, describe(a))))
        .collect())
}
