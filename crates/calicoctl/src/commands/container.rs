//! `calicoctl container …`: give a workload (a network namespace) Calico networking.

use std::net::IpAddr;

use anyhow::{bail, Result};
use calico_dataplane::workload::{change_addresses, unwire, wire, Wiring};
use calico_datastore::resources::{EndpointFilter, EndpointRecord, Resources};
use calico_datastore::{Compare, Op, Txn};
use calico_ipam::{Ipam, Owner};
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

/// What an `<IP>` argument asks for: an automatic address of a family, or this one.
enum Request {
    Auto { v4: bool },
    Explicit(IpAddr),
}

fn parse_request(text: &str) -> Result<Request> {
    Ok(match text {
        "ipv4" | "auto" => Request::Auto { v4: true },
        "ipv6" => Request::Auto { v4: false },
        _ => Request::Explicit(parse_ip("IP address (or ipv4, ipv6, auto)", text)?),
    })
}

/// The IPAM owner of a container's addresses: one handle per workload on this host.
fn owner(node: &str, container: &Container) -> Owner {
    Owner {
        handle: format!("{node}.{}", container.workload_id),
        host: node.to_string(),
        workload: container.workload_id.clone(),
    }
}

/// Takes an address in IPAM: the one asked for (which must be in an enabled pool and free,
/// in IPAM and among endpoints written without it), or the next free one of the family.
async fn allocate(r: &Resources, request: &Request, owner: &Owner) -> Result<IpNet> {
    let ipam = Ipam::new(r.shared_store());
    let ip = match *request {
        Request::Auto { v4 } => ipam.auto_assign(v4, owner).await?,
        Request::Explicit(ip) => {
            used_by_no_endpoint(r, ip).await?;
            ipam.assign_ip(ip, owner).await?;
            ip
        }
    };
    Ok(IpNet::from(ip))
}

/// Gives addresses back to IPAM; addresses it never handed out are ignored.
async fn release(r: &Resources, nets: &[IpNet]) -> Result<()> {
    let ips: Vec<IpAddr> = nets.iter().map(|n| n.addr()).collect();
    Ipam::new(r.shared_store()).release(&ips).await?;
    Ok(())
}

async fn used_by_no_endpoint(r: &Resources, ip: IpAddr) -> Result<()> {
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
    Ok(())
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

async fn add(arg: &str, request: &str, interface: &str) -> Result<()> {
    let request = parse_request(request)?;
    let container = local::container(arg)?;
    let node = local::node_name(None)?;
    let r = connect().await?;
    if !endpoints_of(&r, &container).await?.is_empty() {
        bail!("{arg} has already been configured with Calico Networking.");
    }
    require_policy_in_place(&node)?;
    let net = allocate(&r, &request, &owner(&node, &container)).await?;
    let result = wire_endpoint(&r, &node, &container, interface, net).await;
    if result.is_err() {
        // Leave nothing behind: the address goes back to the pool.
        let _ = release(&r, &[net]).await;
    }
    result?;
    println!("IP {} added to {arg}", net.addr());
    Ok(())
}

/// The veth into the container and the endpoint that describes it; neither stays if the
/// other cannot be made.
async fn wire_endpoint(
    r: &Resources,
    node: &str,
    container: &Container,
    interface: &str,
    net: IpNet,
) -> Result<()> {
    let endpoint_id = uuid::Uuid::new_v4().simple().to_string();
    let host_interface = interface_name_for(&endpoint_id);
    let wiring = Wiring {
        netns: container.netns.clone(),
        host_interface: host_interface.clone(),
        workload_interface: interface.to_string(),
        nets: vec![net],
    };
    let mac = wire(&wiring).await?;
    let v4 = net.addr().is_ipv4();
    let endpoint = Endpoint {
        state: EndpointState::Active,
        name: host_interface.clone(),
        mac: Some(mac),
        profile_ids: vec![],
        profile_id: None,
        ipv4_nets: if v4 { vec![net] } else { vec![] },
        ipv6_nets: if v4 { vec![] } else { vec![net] },
        ipv4_gateway: None,
        ipv6_gateway: None,
        labels: Default::default(),
    };
    let key = keys::endpoint(&workload_key(node, container, &endpoint_id));
    let written = r
        .store()
        .txn(Txn {
            compares: vec![Compare::Absent(key.clone())],
            ops: vec![Op::put(key, endpoint.to_json())],
        })
        .await;
    if !matches!(written, Ok(ref outcome) if outcome.succeeded) {
        let _ = unwire(&host_interface).await;
        written?;
        bail!("another writer created endpoint {endpoint_id} first; nothing was changed");
    }
    Ok(())
}

async fn remove(arg: &str) -> Result<()> {
    let (r, records) = lookup(arg).await?;
    for record in records {
        if let Ok(endpoint) = &record.endpoint {
            unwire(&endpoint.name).await?;
        }
        r.store().delete(&keys::endpoint(&record.key)).await?;
        if let Ok(endpoint) = &record.endpoint {
            let nets: Vec<IpNet> = endpoint.nets().copied().collect();
            release(&r, &nets).await?;
        }
    }
    println!("Removed Calico interface from {arg}");
    Ok(())
}

async fn ip_add(arg: &str, request: &str, interface: &str) -> Result<()> {
    let request = parse_request(request)?;
    let (r, records) = lookup(arg).await?;
    let container = local::container(arg)?;
    let node = local::node_name(None)?;
    let net = allocate(&r, &request, &owner(&node, &container)).await?;
    let result = async {
        change_addresses(&container.netns, interface, vec![net], true).await?;
        r.update_endpoint(&records[0].key, |endpoint| {
            let nets = if net.addr().is_ipv4() {
                &mut endpoint.ipv4_nets
            } else {
                &mut endpoint.ipv6_nets
            };
            nets.push(net);
            Ok(true)
        })
        .await?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        let _ = change_addresses(&container.netns, interface, vec![net], false).await;
        let _ = release(&r, &[net]).await;
    }
    result?;
    println!("IP {} added to {arg}", net.addr());
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
    release(&r, &[net]).await?;
    println!("IP {ip} removed from {arg}");
    Ok(())
}
