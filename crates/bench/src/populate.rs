//! The scale the benchmarks run at: 1,000 profiles of 5 rules each, 10,000 endpoints on 100
//! remote hosts, all in one tag set ("huge") besides their own; and two local workloads, src
//! and dst, where dst carries all 1,000 profiles before the bench profile that admits src.

use anyhow::Result;
use calico_datastore::{Op, Txn};
use calico_model::keys;
use calico_model::profile::ProfileRules;

use crate::workloads::{Bench, DST_IP, PROFILE, SRC_IP};

pub const PROFILES: usize = 1000;
pub const REMOTE_ENDPOINTS: usize = 10_000;

fn profile_rules(i: usize) -> Result<ProfileRules> {
    let rules = [
        format!("deny tcp from tag p-{} to ports 22", (i + 1) % PROFILES),
        format!(
            "allow tcp from tag p-{} to ports {}",
            (i + 2) % PROFILES,
            1000 + i
        ),
        format!(
            "allow udp from cidr 10.{}.{}.0/24 to ports 53",
            i / 256,
            i % 256
        ),
        format!("allow icmp type 8 from tag p-{i}"),
        format!("deny from cidr 172.16.{}.0/24", i % 256),
    ];
    Ok(ProfileRules {
        id: None,
        inbound_rules: rules.iter().map(|r| r.parse()).collect::<Result<_, _>>()?,
        outbound_rules: vec!["allow".parse()?],
    })
}

async fn write_batches(bench: &Bench, ops: Vec<Op>) -> Result<()> {
    // etcd takes at most 128 operations per transaction.
    for chunk in ops.chunks(100) {
        bench
            .resources
            .store()
            .txn(Txn {
                compares: vec![],
                ops: chunk.to_vec(),
            })
            .await?;
    }
    Ok(())
}

pub async fn populate(bench: &Bench) -> Result<()> {
    if bench.resources.profile_exists(PROFILE).await? {
        return Ok(());
    }
    println!("Populating: {PROFILES} profiles x 5 rules, {REMOTE_ENDPOINTS} remote endpoints ...");
    let mut ops = Vec::new();
    for i in 0..PROFILES {
        let name = format!("p-{i}");
        ops.push(Op::put(
            keys::profile_tags(&name),
            format!(r#"["{name}","huge"]"#),
        ));
        ops.push(Op::put(
            keys::profile_rules(&name),
            profile_rules(i)?.to_json(),
        ));
    }
    for n in 0..REMOTE_ENDPOINTS {
        let id = format!("{n:011x}{:021x}", 0);
        let key = format!(
            "/calico/v1/host/remote-{:02}/workload/bench/w{n}/endpoint/{id}",
            n % 100
        );
        let value = format!(
            r#"{{"state":"active","name":"cali{}","profile_ids":["p-{}"],"ipv4_nets":["10.200.{}.{}/32"]}}"#,
            &id[..11],
            n % PROFILES,
            n / 250,
            n % 250 + 1
        );
        ops.push(Op::put(key, value));
    }
    write_batches(bench, ops).await?;

    // Only what the benchmarks need: iperf3's port, and pings for the container probe.
    let rules = ProfileRules {
        id: None,
        inbound_rules: vec![
            "deny tcp from tag p-1 to ports 22".parse()?,
            "allow tcp from tag huge to ports 5201".parse()?,
            "allow icmp from tag bench".parse()?,
        ],
        outbound_rules: vec!["allow".parse()?],
    };
    bench.resources.create_profile(PROFILE).await?;
    bench
        .resources
        .update_rules(PROFILE, |r| {
            *r = rules.clone();
            Ok(true)
        })
        .await?;
    bench
        .resources
        .update_tags(PROFILE, |t| {
            t.push("huge".into());
            Ok(true)
        })
        .await?;
    bench.add_workload("src", SRC_IP)?;
    bench.add_workload("dst", DST_IP)?;
    // dst: every profile first, then the one that admits src.
    let filter = calico_datastore::resources::EndpointFilter {
        workload: Some("dst".into()),
        ..Default::default()
    };
    let records = bench.resources.endpoints(&filter).await?;
    let dst = &records
        .first()
        .ok_or_else(|| anyhow::anyhow!("dst has no endpoint"))?
        .key;
    bench
        .resources
        .update_endpoint(dst, |ep| {
            ep.profile_ids = (0..PROFILES)
                .map(|i| format!("p-{i}"))
                .chain([PROFILE.to_string()])
                .collect();
            Ok(true)
        })
        .await?;
    Ok(())
}
