//! `calicoctl pool …`: the IP pools workloads take their addresses from.

use anyhow::{bail, Result};
use calico_model::bgp::parse_ip;
use calico_model::grammar::parse_cidr;
use calico_model::pool::{block_prefix, range_to_cidrs, IpPool, IPIP_INTERFACE};
use ipnet::IpNet;

use super::{connect, parse_args};
use crate::args::{flag, usage_error, Args, OptSpec};
use crate::table::Table;
use crate::usage::POOL as USAGE;

const OPTIONS: &[OptSpec] = &[
    flag("--ipip"),
    flag("--nat-outgoing"),
    flag("--ipv4"),
    flag("--ipv6"),
    flag("--force"),
];

pub async fn run(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, OPTIONS, USAGE)? else {
        return Ok(());
    };
    let words = args.words();
    match words.as_slice() {
        ["add", cidrs @ ..] if !cidrs.is_empty() => {
            args.reject_options_except(&["--ipip", "--nat-outgoing"], USAGE)?;
            let nets = cidrs
                .iter()
                .map(|c| parse_pool_cidr(c))
                .collect::<Result<Vec<_>>>()?;
            add(&args, nets).await
        }
        ["range", "add", start, end] => {
            args.reject_options_except(&["--ipip", "--nat-outgoing"], USAGE)?;
            let (start, end) = (parse_ip("START_IP", start)?, parse_ip("END_IP", end)?);
            let nets = range_to_cidrs(start, end)?;
            if let Some(small) = nets.iter().find(|n| n.prefix_len() > block_prefix(n)) {
                bail!(
                    "The range {start} - {end} includes {small}, which is smaller than an IPAM block \
                     (/{}); start and end the range on block boundaries. No pools added.",
                    block_prefix(small)
                );
            }
            add(&args, nets).await
        }
        ["remove", cidrs @ ..] if !cidrs.is_empty() => {
            args.reject_options_except(&["--force"], USAGE)?;
            let nets = cidrs
                .iter()
                .map(|c| parse_pool_cidr(c))
                .collect::<Result<Vec<_>>>()?;
            remove(nets, args.flag("--force")).await
        }
        ["show"] => {
            args.reject_options_except(&["--ipv4", "--ipv6"], USAGE)?;
            if args.flag("--ipv4") && args.flag("--ipv6") {
                return Err(usage_error(USAGE, "Give --ipv4 or --ipv6, not both."));
            }
            show(!args.flag("--ipv6"), !args.flag("--ipv4")).await
        }
        _ => Err(usage_error(USAGE, "Invalid pool command.")),
    }
}

/// A pool CIDR as typed: a network with its prefix length, no host bits.
fn parse_pool_cidr(text: &str) -> Result<IpNet> {
    let net = parse_cidr(text)?;
    if text.parse::<IpNet>().is_ok_and(|given| given != net) {
        bail!("Invalid CIDR {text}: host bits are set; did you mean {net}?");
    }
    Ok(net)
}

async fn add(args: &Args, nets: Vec<IpNet>) -> Result<()> {
    let pools: Vec<IpPool> = nets
        .into_iter()
        .map(|cidr| IpPool {
            ipip: args.flag("--ipip").then(|| IPIP_INTERFACE.to_string()),
            masquerade: args.flag("--nat-outgoing"),
            ..IpPool::new(cidr)
        })
        .collect();
    connect().await?.add_pools(&pools).await?;
    if args.flag("--ipip") && !std::path::Path::new("/sys/module/ipip").exists() {
        eprintln!(
            "Note: this host's kernel has no IP-in-IP support (no ipip module); calico-node \
             reports the pool as one it cannot program, and routes its workloads without \
             encapsulation."
        );
    }
    Ok(())
}

async fn remove(nets: Vec<IpNet>, force: bool) -> Result<()> {
    let r = connect().await?;
    for net in &nets {
        let v4 = net.addr().is_ipv4();
        if !r.pools(v4).await?.0.iter().any(|p| p.cidr == *net) {
            bail!("{net} is not a configured pool. No pools removed.");
        }
        let in_use = super::ipam::allocations_in(&r, net).await?;
        if !in_use.is_empty() && !force {
            let shown: Vec<String> = in_use
                .iter()
                .take(5)
                .map(|(ip, holder)| format!("{ip} ({holder})"))
                .collect();
            let more = if in_use.len() > 5 { ", …" } else { "" };
            bail!(
                "Cannot remove pool {net}: {} of its addresses are in use: {}{more}. Remove those workloads first, or use --force. No pools removed.",
                in_use.len(),
                shown.join(", ")
            );
        }
    }
    for net in &nets {
        r.remove_pool(net).await?;
    }
    Ok(())
}

async fn show(v4: bool, v6: bool) -> Result<()> {
    let r = connect().await?;
    for (wanted, is_v4, title) in [(v4, true, "IPv4 CIDR"), (v6, false, "IPv6 CIDR")] {
        if !wanted {
            continue;
        }
        let (pools, invalid) = r.pools(is_v4).await?;
        let mut table = Table::new(&[title, "Options"]);
        for pool in pools {
            table.row(vec![pool.cidr.to_string(), pool.options()]);
        }
        print!("{}", table.render());
        for (key, error) in invalid {
            eprintln!("Warning: ignoring the invalid pool at {key}: {error}");
        }
    }
    Ok(())
}
