//! `calicoctl container …`: give a workload (a Docker container or a network namespace) Calico
//! networking, through the one workload lifecycle (`calico-workload`).

use anyhow::{bail, Result};
use calico_datastore::resources::{EndpointRecord, Resources};
use calico_model::bgp::parse_ip;
use calico_workload::{AddressRequest, Addresses, Lifecycle, NewWorkload};
use ipnet::IpNet;

use super::endpoint::{detailed_table, profile_action};
use super::{connect, parse_args};
use crate::args::{usage_error, valued, OptSpec};
use crate::local::{self, Container, Need};
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
            let (_, records) = lookup(container, Need::Identity, Networks::Include).await?;
            print!("{}", detailed_table(&records));
            Ok(())
        }
        // The seeds' spelling: print just the endpoint id.
        [container, "endpoint-id", "show"] => {
            let (_, records) = lookup(container, Need::Identity, Networks::Include).await?;
            records
                .iter()
                .for_each(|r| println!("{}", r.key.endpoint_id));
            Ok(())
        }
        [container, "profile", action @ ("append" | "remove" | "set"), profiles @ ..] => {
            let (lifecycle, records) = lookup(container, Need::Identity, Networks::Include).await?;
            for record in &records {
                profile_action(lifecycle.resources(), &record.key, action, profiles).await?;
            }
            Ok(())
        }
        _ => Err(usage_error(USAGE, "Invalid container command.")),
    }
}

/// This host's workload lifecycle.
async fn lifecycle() -> Result<Lifecycle> {
    let node = local::node_name(None)?;
    let resources: Resources = connect().await?;
    Ok(Lifecycle::new(resources.shared_store(), &node))
}

/// Whether a command also acts on the endpoints a Docker container has through its calico
/// networks (the libnetwork driver's): it may show them and edit their profiles, but their
/// interfaces and addresses are Docker's to take down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Networks {
    Include,
    Exclude,
}

/// The container's endpoints on this host; an error if it has none.
async fn lookup(
    arg: &str,
    need: Need,
    networks: Networks,
) -> Result<(Lifecycle, Vec<EndpointRecord>)> {
    let container = local::container(arg, need).await?;
    let lifecycle = lifecycle().await?;
    let mut records = endpoints_of(&lifecycle, &container).await?;
    let on_networks = network_endpoints(&lifecycle, &container).await?;
    if records.is_empty() && !on_networks.is_empty() && networks == Networks::Exclude {
        bail!(
            "Container {arg} has Calico networking only through its Docker networks; take it \
             off them with 'docker network disconnect <NETWORK> {arg}'."
        );
    }
    if networks == Networks::Include {
        records.extend(on_networks);
    }
    if records.is_empty() {
        bail!("Container {arg} has no Calico networking on this host; add it with 'calicoctl container add'.");
    }
    Ok((lifecycle, records))
}

async fn endpoints_of(lifecycle: &Lifecycle, container: &Container) -> Result<Vec<EndpointRecord>> {
    Ok(lifecycle
        .endpoints(container.orchestrator, &container.workload_id)
        .await?)
}

/// The libnetwork driver's endpoints of a Docker container's calico networks.
async fn network_endpoints(
    lifecycle: &Lifecycle,
    container: &Container,
) -> Result<Vec<EndpointRecord>> {
    if container.network_endpoints.is_empty() {
        return Ok(Vec::new());
    }
    let driver = calico_docker::driver::ORCHESTRATOR;
    Ok(lifecycle
        .endpoints(driver, driver)
        .await?
        .into_iter()
        .filter(|r| container.network_endpoints.contains(&r.key.endpoint_id))
        .collect())
}

async fn add(arg: &str, request: &str, interface: &str) -> Result<()> {
    let request = AddressRequest::parse(request)?;
    let container = local::container(arg, Need::Namespace).await?;
    let lifecycle = lifecycle().await?;
    let added = lifecycle
        .add(&NewWorkload {
            display_name: arg.to_string(),
            orchestrator: container.orchestrator.to_string(),
            workload_id: container.workload_id,
            netns: container.netns,
            interface: interface.to_string(),
            request,
            profiles: Vec::new(),
        })
        .await?;
    for net in added.endpoint.nets() {
        println!("IP {} added to {arg}", net.addr());
    }
    Ok(())
}

async fn remove(arg: &str) -> Result<()> {
    let (lifecycle, records) = lookup(arg, Need::Identity, Networks::Exclude).await?;
    lifecycle.teardown(&records, Addresses::Release).await?;
    println!("Removed Calico interface from {arg}");
    Ok(())
}

async fn ip_add(arg: &str, request: &str, interface: &str) -> Result<()> {
    let request = AddressRequest::parse(request)?;
    let container = local::container(arg, Need::Namespace).await?;
    let (lifecycle, records) = lookup(arg, Need::Namespace, Networks::Exclude).await?;
    let net = lifecycle
        .add_address(&records[0], &container.netns, interface, &request)
        .await?;
    println!("IP {} added to {arg}", net.addr());
    Ok(())
}

async fn ip_remove(arg: &str, ip: &str, interface: &str) -> Result<()> {
    let ip = parse_ip("IP address", ip)?;
    let container = local::container(arg, Need::Namespace).await?;
    let (lifecycle, records) = lookup(arg, Need::Namespace, Networks::Exclude).await?;
    let net = IpNet::from(ip);
    let Some(record) = records.iter().find(|rec| {
        rec.endpoint
            .as_ref()
            .is_ok_and(|e| e.nets().any(|n| *n == net))
    }) else {
        bail!("{arg} does not have the address {ip}.");
    };
    lifecycle
        .remove_address(record, &container.netns, interface, net)
        .await?;
    println!("IP {ip} removed from {arg}");
    Ok(())
}
