//! The scale the benchmarks run at (`--endpoints`, `--profiles`; the issue's two points are
//! 10,000 and 100,000 endpoints with 10,000 profiles): profiles of 5 rules each, endpoints
//! spread over 100 remote hosts, all in one tag set ("huge") besides their own; and two local
//! workloads, src and dst, where dst carries the first 1,000 profiles before the bench profile
//! that admits src.

use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use calico_datastore::{Op, Txn};
use calico_model::keys;
use calico_model::profile::ProfileRules;

use crate::workloads::{Bench, DST_IP, ONE_IP, PROFILE, SRC_IP};

/// How many profiles dst carries: every new flow to it walks this many profile chains.
pub const DST_PROFILES: usize = 1000;
/// Where the bench records the scale it populated, so a second run at another scale on the
/// same lab is refused rather than measured against the wrong data.
const SCALE_KEY: &str = "/bench/scale";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    pub endpoints: usize,
    pub profiles: usize,
}

impl Scale {
    /// The address of remote endpoint `n`: 10.192.0.1 onwards (room for 4 million).
    pub fn remote_ip(n: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 192, 0, 1)) + n as u32)
    }

    fn describe(&self) -> String {
        format!("{} endpoints/{} profiles", self.endpoints, self.profiles)
    }
}

fn profile_rules(i: usize, profiles: usize) -> Result<ProfileRules> {
    let rules = [
        format!("deny tcp from tag p-{} to ports 22", (i + 1) % profiles),
        format!(
            "allow tcp from tag p-{} to ports {}",
            (i + 2) % profiles,
            1000 + i % 60000
        ),
        format!(
            "allow udp from cidr 10.{}.{}.0/24 to ports 53",
            i / 256 % 256,
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

pub async fn populate(bench: &Bench, scale: Scale) -> Result<()> {
    let store = bench.resources.store();
    if let Some(kv) = store.get(SCALE_KEY).await? {
        if kv.value != scale.describe() {
            bail!(
                "this lab was populated with {}, not {}: run the benchmarks at another scale on a lab of their own",
                kv.value,
                scale.describe()
            );
        }
        return Ok(());
    }
    if scale.profiles < DST_PROFILES {
        bail!("--profiles must be at least {DST_PROFILES} (dst carries that many)");
    }
    println!(
        "Populating: {} profiles x 5 rules, {} remote endpoints on 100 hosts ...",
        scale.profiles, scale.endpoints
    );
    let mut ops = Vec::new();
    for i in 0..scale.profiles {
        let name = format!("p-{i}");
        ops.push(Op::put(
            keys::profile_tags(&name),
            format!(r#"["{name}","huge"]"#),
        ));
        ops.push(Op::put(
            keys::profile_rules(&name),
            profile_rules(i, scale.profiles)?.to_json(),
        ));
    }
    for n in 0..scale.endpoints {
        let id = format!("{n:011x}{:021x}", 0);
        let key = format!(
            "/calico/v1/host/remote-{:02}/workload/bench/w{n}/endpoint/{id}",
            n % 100
        );
        let value = format!(
            r#"{{"state":"active","name":"cali{}","profile_ids":["p-{}"],"ipv4_nets":["{}/32"]}}"#,
            &id[..11],
            n % scale.profiles,
            Scale::remote_ip(n)
        );
        ops.push(Op::put(key, value));
    }
    write_batches(bench, ops).await?;

    // Only what the benchmarks need: iperf3's port and the connection-rate port, and pings
    // for the container probe.
    let rules = ProfileRules {
        id: None,
        inbound_rules: vec![
            "deny tcp from tag p-1 to ports 22".parse()?,
            "allow tcp from tag huge to ports 5201:5202".parse()?,
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
    bench.add_workload("one", ONE_IP)?;
    // dst starts without a profile, so that src's pings are answered only once the agent has
    // programmed dst's whole list below (1,001 profile chains take it most of a second, and
    // no benchmark may start while it still works).
    bench.add_workload_without_profile("dst", DST_IP)?;
    // dst: the first DST_PROFILES profiles, then the one that admits src.
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
            ep.profile_ids = (0..DST_PROFILES)
                .map(|i| format!("p-{i}"))
                .chain([PROFILE.to_string()])
                .collect();
            Ok(true)
        })
        .await?;
    crate::flows::until_pinged(
        bench.netns_path("src"),
        DST_IP.parse()?,
        std::time::Instant::now() + std::time::Duration::from_secs(120),
    )
    .map_err(|e| anyhow::anyhow!("dst never answered src with its profiles programmed: {e}"))?;
    bench.wait_compiled(DST_IP)?;
    store.put(SCALE_KEY, &scale.describe()).await?;
    Ok(())
}
