//! `calicoctl container …`: give a workload (a network namespace) Calico networking.

use std::net::IpAddr;

use anyhow::{bail, Result};
use calico_dataplane::workload::{change_addresses, unwire, wire, Wiring};
use calico_datastore::resources::{EndpointFilter, EndpointRecord, Resources};
use calico_datastore::{Compare, Op, Txn};
use calico_model::bgp::parse_ip;
use calico_model::endpoint::{interface_name_for, Endpoint, EndpointKey, EndpointState};
use calico_model::keys;
use ipnet::IpNet;

use super::endpoint::{detailed_table, profile_action};
use super::{connect, parse_args};
use crate::args::{usage_error, valued, OptSpec};
use crate::local::{self, Container, ORCHESTRATOR};
use crate::usage::CONTAINER as USAGE;

const OPTIONS: &[OptSpec] = &[valued("--interface")];

/// The workload side's name unless --interface says otherwise (as in the original).
const DEFAULT_INTERFACE: &str = "eth1";

pub async fn run(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, OPTIONS, USAGE)? else {
        return Ok(());
    };
    let words = args.words();
    let interface = args.value("--interface").unwrap_or(DEFAULT_INTERFACE);
    let takes_interface = matches!(words.as_slice(), ["add", ..] | [_, "ip", ..]);
    if !takes_interface {
        args.reject_options_except(&[], USAGE)?;
    }
    match words.as_slice() {
        ["add", container, ip] => add(container, ip, interface).await,
        ["remove", container] => remove(container).await,
        [container, "ip", "add", ip] => ip_add(container, ip, interface).await,
        [container, "ip", "remove", ip] => ip_remove(container, ip, interface).await,
        [container, "endpoint", "show"] => {
            let (_, records) = lookup(container).await?;
            print!("{}", detailed_table(&records));
            Ok(())
        }
        // The seeds' spelling: print just the endpoint id.
        [container, "endpoint-id", "show"] => {
            let (_, records) = lookup(container).await?;
            records
                .iter()
                .for_each(|r| println!("{}", r.key.endpoint_id));
            Ok(())
        }
        [container, "profile", action @ ("append" | "remove" | "set"), profiles @ ..] => {
            let (r, records) = lookup(container).await?;
            for record in &records {
                profile_action(&r, &record.key, action, profiles).await?;
            }
            Ok(())
        }
        _ => Err(usage_error(USAGE, "Invalid container command.")),
    }
}

fn workload_key(node: &str, container: &Container, endpoint_id: &str) -> EndpointKey {
    EndpointKey {
        host: node.to_string(),
        orchestrator: ORCHESTRATOR.to_string(),
        workload: container.workload_id.clone(),
        endpoint_id: endpoint_id.to_string(),
    }
}

/// The container's endpoints on this host; an error if it has none.
async fn lookup(arg: &str) -> Result<(Resources, Vec<EndpointRecord>)> {
    let container = local::container(arg)?;
    let r = connect().await?;
    let records = endpoints_of(&r, &container).await?;
    if records.is_empty() {
        bail!("Container {arg} has no Calico networking on this host; add it with 'calicoctl container add'.");
    }
    Ok((r, records))
}

async fn endpoints_of(r: &Resources, container: &Container) -> Result<Vec<EndpointRecord>> {
    let filter = EndpointFilter {
        host: Some(local::node_name(None)?),
        orchestrator: Some(ORCHESTRATOR.into()),
        workload: Some(container.workload_id.clone()),
        endpoint_id: None,
    };
    Ok(r.endpoints(&filter).await?)
}

/// An address a workload may take: inside an enabled pool and used by no endpoint.
async fn check_address(r: &Resources, ip: IpAddr) -> Result<IpNet> {
    let (pools, _) = r.pools(ip.is_ipv4()).await?;
    if !pools.iter().any(|p| !p.disabled && p.cidr.contains(&ip)) {
        let cidrs: Vec<String> = pools
            .iter()
            .filter(|p| !p.disabled)
            .map(|p| p.cidr.to_string())
            .collect();
        bail!(
            "{ip} is not in any enabled IP pool ({}); choose an address in a pool or add one with 'calicoctl pool add'.",
            if cidrs.is_empty() { "there are none".to_string() } else { cidrs.join(", ") }
        );
    }
    let net = IpNet::from(ip);
    for record in r.endpoints(&EndpointFilter::default()).await? {
        if record
            .endpoint
            .as_ref()
            .is_ok_and(|e| e.nets().any(|n| n.contains(&ip)))
        {
            bail!(
                "{ip} is already in use by endpoint {} (workload {} on host {}).",
                record.key.endpoint_id,
                record.key.workload,
                record.key.host
            );
        }
    }
    Ok(net)
}

/// A workload interface must never exist without the agent's table to police it: without the
/// table, nothing would drop its traffic.
fn require_policy_in_place(node: &str) -> Result<()> {
    use calico_dataplane::{Firewall, NftCli};
    if !NftCli.table_exists()? {
        bail!(
            "calico-node has not programmed policy on this host ({node}) yet, so a new workload \
             would be unpoliced; start it with 'calicoctl node' first."
        );
    }
    Ok(())
}

async fn add(arg: &str, ip: &str, interface: &str) -> Result<()> {
    let ip = parse_ip("IP address", ip)?;
    let container = local::container(arg)?;
    let node = local::node_name(None)?;
    let r = connect().await?;
    if !endpoints_of(&r, &container).await?.is_empty() {
        bail!("{arg} has already been configured with Calico Networking.");
    }
    let net = check_address(&r, ip).await?;
    require_policy_in_place(&node)?;
    let endpoint_id = uuid::Uuid::new_v4().simple().to_string();
    let host_interface = interface_name_for(&endpoint_id);
    let wiring = Wiring {
        netns: container.netns.clone(),
        host_interface: host_interface.clone(),
        workload_interface: interface.to_string(),
        nets: vec![net],
    };
    let mac = wire(&wiring).await?;
    let endpoint = Endpoint {
        state: EndpointState::Active,
        name: host_interface.clone(),
        mac: Some(mac),
        profile_ids: vec![],
        profile_id: None,
        ipv4_nets: if ip.is_ipv4() { vec![net] } else { vec![] },
        ipv6_nets: if ip.is_ipv6() { vec![net] } else { vec![] },
        ipv4_gateway: None,
        ipv6_gateway: None,
        labels: Default::default(),
    };
    let key = keys::endpoint(&workload_key(&node, &container, &endpoint_id));
    let written = r
        .store()
        .txn(Txn {
            compares: vec![Compare::Absent(key.clone())],
            ops: vec![Op::put(key, endpoint.to_json())],
        })
        .await;
    if !matches!(written, Ok(ref outcome) if outcome.succeeded) {
        // Leave nothing behind: the interface without its endpoint would be useless.
        let _ = unwire(&host_interface).await;
        written?;
        bail!("another writer created endpoint {endpoint_id} first; nothing was changed");
    }
    println!("IP {ip} added to {arg}");
    Ok(())
}

async fn remove(arg: &str) -> Result<()> {
    let (r, records) = lookup(arg).await?;
    for record in records {
        if let Ok(endpoint) = &record.endpoint {
            unwire(&endpoint.name).await?;
        }
        r.store().delete(&keys::endpoint(&record.key)).await?;
    }
    println!("Removed Calico interface from {arg}");
    Ok(())
}

async fn ip_add(arg: &str, ip: &str, interface: &str) -> Result<()> {
    let ip = parse_ip("IP address", ip)?;
    let (r, records) = lookup(arg).await?;
    let net = check_address(&r, ip).await?;
    let record = &records[0];
    change_addresses(&local::container(arg)?.netns, interface, vec![net], true).await?;
    r.update_endpoint(&record.key, |endpoint| {
        let nets = if ip.is_ipv4() {
            &mut endpoint.ipv4_nets
        } else {
            &mut endpoint.ipv6_nets
        };
        nets.push(net);
        Ok(true)
    })
    .await?;
    println!("IP {ip} added to {arg}");
    Ok(())
}

async fn ip_remove(arg: &str, ip: &str, interface: &str) -> Result<()> {
    let ip = parse_ip("IP address", ip)?;
    let (r, records) = lookup(arg).await?;
    let net = IpNet::from(ip);
    let Some(record) = records.iter().find(|rec| {
        rec.endpoint
            .as_ref()
            .is_ok_and(|e| e.nets().any(|n| *n == net))
    }) else {
        bail!("{arg} does not have the address {ip}.");
    };
    r.update_endpoint(&record.key, |endpoint| {
        endpoint.ipv4_nets.retain(|n| *n != net);
        endpoint.ipv6_nets.retain(|n| *n != net);
        Ok(true)
    })
    .await?;
    change_addresses(&local::container(arg)?.netns, interface, vec![net], false).await?;
    println!("IP {ip} removed from {arg}");
    Ok(())
}
