//! IPAM under concurrency.
//!
//! - `ipam-alloc`: one allocator, as an orchestrator would run it: it takes addresses for a
//!   host and (unless told not to) writes an endpoint for each, printing every address. The
//!   IPAM lab test runs eight of these on four hosts at once.
//! - `ipam`: the benchmark. Allocations per second with 1, 4 and 8 allocators at once, each
//!   with its own etcd connection, against etcd's own rate of single-key compare-and-swap
//!   transactions with as many writers (the limit: every allocation is at least one).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use calico_datastore::resources::Resources;
use calico_datastore::{Compare, Datastore, Op, Txn};
use calico_ipam::{Ipam, Owner};
use calico_model::endpoint::{interface_name_for, Endpoint, EndpointKey, EndpointState};
use calico_model::keys;
use calico_model::pool::IpPool;
use ipnet::IpNet;

use crate::stats::percentile;

/// Where the benchmark's allocators take addresses from: a pool of its own, removed after.
const BENCH_POOL: &str = "10.128.0.0/16";
const PER_ALLOCATOR: usize = 100;
/// Rounds per allocator count, each an allocation run and a compare-and-swap run back to back
/// (in alternating order), so both meet the same stretch of this shared machine; the ratio
/// printed is the median of the rounds' ratios.
const ROUNDS: usize = 5;

/// One allocator: `count` addresses for `host`, each under its own handle `<host>.<name>-<i>`.
pub async fn allocate(host: &str, name: &str, count: usize, endpoints: bool) -> Result<()> {
    let store = calico_datastore::connect_from_env().await?;
    let ipam = Ipam::new(store.clone());
    for i in 0..count {
        let workload = format!("{name}-{i}");
        let owner = Owner {
            handle: format!("{host}.{workload}"),
            host: host.to_string(),
            workload: workload.clone(),
        };
        let ip = ipam.auto_assign(true, &owner).await?;
        if endpoints {
            write_endpoint(store.as_ref(), host, &workload, ip.into()).await?;
        }
        println!("{ip}");
    }
    Ok(())
}

/// An endpoint for the address, as an orchestrator writes one (no interface behind it).
async fn write_endpoint(
    store: &dyn Datastore,
    host: &str,
    workload: &str,
    net: IpNet,
) -> Result<()> {
    let endpoint_id = format!("{:032x}", rand_u128(workload));
    let key = EndpointKey {
        host: host.to_string(),
        orchestrator: "bench".into(),
        workload: workload.to_string(),
        endpoint_id: endpoint_id.clone(),
    };
    let endpoint = Endpoint {
        state: EndpointState::Active,
        name: interface_name_for(&endpoint_id),
        mac: None,
        profile_ids: vec![],
        profile_id: None,
        ipv4_nets: vec![net],
        ipv6_nets: vec![],
        ipv4_gateway: None,
        ipv6_gateway: None,
        labels: Default::default(),
    };
    store
        .put(&keys::endpoint(&key), &endpoint.to_json())
        .await?;
    Ok(())
}

/// A stable 128-bit id from a name (FNV-1a): endpoint ids must be unique, not secret.
fn rand_u128(name: &str) -> u128 {
    name.bytes()
        .fold(0x6c62272e07bb014262b821756295c58d, |h, b| {
            (h ^ b as u128).wrapping_mul(0x0000000001000000000000000000013B)
        })
}

/// `allocators` tasks at once, each with its own connection, `PER_ALLOCATOR` allocations
/// each; allocations per second.
async fn allocation_rate(allocators: usize) -> Result<f64> {
    let mut ipams = Vec::new();
    for _ in 0..allocators {
        ipams.push(Ipam::new(calico_datastore::connect_from_env().await?));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, ipam) in ipams.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_ALLOCATOR {
                let host = format!("bench-host-{}", i % 4);
                let owner = Owner {
                    handle: format!("{host}.bench-{i}-{n}"),
                    host,
                    workload: format!("bench-{i}-{n}"),
                };
                ipam.auto_assign(true, &owner).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((allocators * PER_ALLOCATOR) as f64 / started.elapsed().as_secs_f64())
}

/// `writers` tasks at once, each compare-and-swapping its own key; transactions per second.
async fn cas_rate(writers: usize) -> Result<f64> {
    let mut stores = Vec::new();
    for _ in 0..writers {
        stores.push(calico_datastore::connect_from_env().await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, store) in stores.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let key = format!("/bench-cas/{i}");
            let mut compare = Compare::Absent(key.clone());
            for n in 0..PER_ALLOCATOR {
                let outcome = store
                    .txn(Txn {
                        compares: vec![compare],
                        ops: vec![Op::put(&key, n.to_string())],
                    })
                    .await?;
                if !outcome.succeeded {
                    bail!("nobody else writes {key}");
                }
                compare = Compare::ModRevision(key.clone(), outcome.revision);
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((writers * PER_ALLOCATOR) as f64 / started.elapsed().as_secs_f64())
}

/// The benchmark's IPAM data: its hosts' affinities and handles, and the blocks in its pool
/// (key prefixes, so the lab's own allocations stay).
fn bench_prefixes() -> [String; 4] {
    [
        format!("{}host/bench-host-", keys::IPAM_PREFIX),
        format!("{}handle/bench-host-", keys::IPAM_PREFIX),
        format!("{}10.128.", keys::ipam_blocks_prefix(true)),
        "/bench-cas/".to_string(),
    ]
}

async fn clean(store: &Arc<dyn Datastore>) -> Result<()> {
    for prefix in bench_prefixes() {
        store.delete_prefix(&prefix).await?;
    }
    Ok(())
}

pub async fn run() -> Result<()> {
    let store = calico_datastore::connect_from_env().await?;
    let resources = Resources::new(store.clone());
    // Sorted first among the pools, so the allocators claim their blocks from it.
    resources
        .add_pools(&[IpPool::new(BENCH_POOL.parse()?)])
        .await?;
    println!(
        "\nIPAM: {PER_ALLOCATOR} allocations per allocator, each allocator with its own etcd connection; medians of {ROUNDS} rounds:"
    );
    println!("  allocators   allocations/s   etcd CAS txns/s (limit)   ratio (range)");
    for n in [1, 4, 8] {
        let (mut allocs, mut swaps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            clean(&store).await?;
            let (alloc, cas) = match round % 2 {
                0 => (allocation_rate(n).await?, cas_rate(n).await?),
                _ => {
                    let cas = cas_rate(n).await?;
                    (allocation_rate(n).await?, cas)
                }
            };
            allocs.push(alloc);
            swaps.push(cas);
            ratios.push(alloc / cas);
        }
        let median = |v: &[f64]| percentile(v, 50.0);
        let (low, high) = (percentile(&ratios, 0.0), percentile(&ratios, 100.0));
        println!(
            "  {n:>10}   {:>13.0}   {:>23.0}   {:>5.2} ({low:.2}-{high:.2})",
            median(&allocs),
            median(&swaps),
            median(&ratios)
        );
    }
    clean(&store).await?;
    resources.remove_pool(&BENCH_POOL.parse()?).await?;
    Ok(())
}
