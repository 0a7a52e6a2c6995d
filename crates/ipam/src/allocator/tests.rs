use std::collections::HashSet;

use calico_datastore::resources::Resources;
use calico_datastore::MemoryStore;

use super::*;

fn owner(host: &str, workload: &str) -> Owner {
    Owner {
        handle: format!("{host}.{workload}"),
        host: host.into(),
        workload: workload.into(),
    }
}

async fn ipam_with_pools(pools: &[&str]) -> Ipam {
    let store: Arc<dyn Datastore> = Arc::new(MemoryStore::new());
    let pools: Vec<IpPool> = pools
        .iter()
        .map(|p| IpPool::new(p.parse().unwrap()))
        .collect();
    Resources::new(store.clone())
        .add_pools(&pools)
        .await
        .unwrap();
    Ipam::new(store)
}

async fn disable_pool(ipam: &Ipam, cidr: &str) {
    let mut disabled = IpPool::new(cidr.parse().unwrap());
    disabled.disabled = true;
    Resources::new(ipam.store.clone())
        .add_pools(&[disabled])
        .await
        .unwrap();
}

async fn handle(ipam: &Ipam, handle: &str) -> Option<HandleRecord> {
    let kv = ipam.store.get(&keys::ipam_handle(handle)).await.unwrap()?;
    HandleRecord::from_json(&kv.value)
}

#[tokio::test]
async fn hosts_take_addresses_from_their_own_blocks() {
    let ipam = ipam_with_pools(&["10.0.0.0/24"]).await;
    let a = ipam.auto_assign(true, &owner("h1", "a")).await.unwrap();
    let b = ipam.auto_assign(true, &owner("h1", "b")).await.unwrap();
    let c = ipam.auto_assign(true, &owner("h2", "c")).await.unwrap();
    assert_eq!(a, "10.0.0.0".parse::<IpAddr>().unwrap());
    assert_eq!(b, "10.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(
        c,
        "10.0.0.64".parse::<IpAddr>().unwrap(),
        "h2 claims its own block"
    );
    let marker = keys::ipam_host_block("h2", &"10.0.0.64/26".parse().unwrap());
    assert!(ipam.store.get(&marker).await.unwrap().is_some());
    let (cidr, holder) = ipam.holder(c).await.unwrap().unwrap();
    assert_eq!(cidr, "10.0.0.64/26".parse().unwrap());
    assert_eq!(describe(&holder.unwrap()), "workload c on host h2");
    assert_eq!(handle(&ipam, "h1.a").await.unwrap().block["10.0.0.0/26"], 1);
}

#[tokio::test]
async fn full_blocks_lead_to_new_blocks_then_borrowing_then_exhaustion() {
    let ipam = ipam_with_pools(&["10.0.0.0/25"]).await;
    let mut seen = HashSet::new();
    for i in 0..64 {
        assert!(seen.insert(
            ipam.auto_assign(true, &owner("h1", &format!("w{i}")))
                .await
                .unwrap()
        ));
    }
    // h1's block is full: it claims the second.
    let next = ipam.auto_assign(true, &owner("h1", "w64")).await.unwrap();
    assert_eq!(next, "10.0.0.64".parse::<IpAddr>().unwrap());
    // No block left to claim: h2 borrows from h1's.
    let borrowed = ipam.auto_assign(true, &owner("h2", "x")).await.unwrap();
    assert!(seen.insert(borrowed) && borrowed != next);
    for i in 0..62 {
        ipam.auto_assign(true, &owner("h2", &format!("y{i}")))
            .await
            .unwrap();
    }
    let err = ipam.auto_assign(true, &owner("h2", "z")).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no free IPv4 address left in the enabled pools (10.0.0.0/25)"),
        "{err}"
    );
    // A released address is handed out again.
    assert!(ipam.release(&[borrowed]).await.unwrap().is_empty());
    assert_eq!(
        ipam.auto_assign(true, &owner("h2", "z")).await.unwrap(),
        borrowed
    );
}

#[tokio::test]
async fn strict_affinity_never_borrows() {
    let ipam = ipam_with_pools(&["10.0.0.0/26"]).await;
    ipam.auto_assign(true, &owner("h1", "a")).await.unwrap();
    ipam.store
        .put(keys::IPAM_CONFIG, r#"{"strict_affinity":true}"#)
        .await
        .unwrap();
    let err = ipam.auto_assign(true, &owner("h2", "b")).await.unwrap_err();
    assert!(err.to_string().contains("strict affinity"), "{err}");
}

#[tokio::test]
async fn explicit_addresses_disabled_pools_and_release() {
    let ipam = ipam_with_pools(&["10.0.0.0/24", "fd80::/64"]).await;
    let ip: IpAddr = "10.0.0.200".parse().unwrap();
    ipam.assign_ip(ip, &owner("h1", "a")).await.unwrap();
    let err = ipam.assign_ip(ip, &owner("h2", "b")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "10.0.0.200 is already in use by workload a on host h1."
    );
    let outside = ipam
        .assign_ip("10.9.0.1".parse().unwrap(), &owner("h1", "a"))
        .await
        .unwrap_err();
    assert!(
        outside
            .to_string()
            .contains("not in any enabled IP pool (10.0.0.0/24)"),
        "{outside}"
    );
    // Automatic addresses skip the explicitly taken one; IPv6 works the same way.
    let v6 = ipam.auto_assign(false, &owner("h1", "a")).await.unwrap();
    assert_eq!(v6, "fd80::".parse::<IpAddr>().unwrap());
    assert_eq!(handle(&ipam, "h1.a").await.unwrap().block.len(), 2);
    let released = ipam
        .release(&[ip, v6, "10.0.0.5".parse().unwrap()])
        .await
        .unwrap();
    assert_eq!(
        released,
        vec!["10.0.0.5".parse::<IpAddr>().unwrap()],
        "was not allocated"
    );
    assert!(
        handle(&ipam, "h1.a").await.is_none(),
        "an empty handle is deleted"
    );

    disable_pool(&ipam, "10.0.0.0/24").await;
    let err = ipam.auto_assign(true, &owner("h1", "c")).await.unwrap_err();
    assert!(err.to_string().contains("no enabled IPv4 pool"), "{err}");
    assert!(ipam.assign_ip(ip, &owner("h1", "c")).await.is_err());
}

#[tokio::test]
async fn a_block_taken_from_its_host_keeps_its_addresses() {
    let ipam = ipam_with_pools(&["10.0.0.0/24"]).await;
    let a = ipam.auto_assign(true, &owner("gone", "a")).await.unwrap();
    let cidr = block_of(a);
    ipam.release_affinity(&cidr).await.unwrap();
    let marker = keys::ipam_host_block("gone", &cidr);
    assert!(ipam.store.get(&marker).await.unwrap().is_none());
    let (_, holder) = ipam.holder(a).await.unwrap().unwrap();
    assert!(holder.is_some(), "a's address is still allocated");
    // Another host claims a new block rather than the orphan.
    let b = ipam.auto_assign(true, &owner("h2", "b")).await.unwrap();
    assert_eq!(block_of(b), "10.0.0.64/26".parse().unwrap());
    ipam.release(&[a]).await.unwrap();
    ipam.release_affinity(&cidr).await.unwrap();
    assert!(
        ipam.holder(a).await.unwrap().is_none(),
        "the empty block is gone"
    );
}

#[tokio::test]
async fn invalid_blocks_are_skipped_not_trusted() {
    let ipam = ipam_with_pools(&["10.0.0.0/25"]).await;
    let first: IpNet = "10.0.0.0/26".parse().unwrap();
    ipam.store
        .put(&keys::ipam_block(&first), "{garbage")
        .await
        .unwrap();
    ipam.store
        .put(&keys::ipam_host_block("h1", &first), "")
        .await
        .unwrap();
    // h1's own block is unreadable: it claims the next one instead of overwriting it.
    let a = ipam.auto_assign(true, &owner("h1", "a")).await.unwrap();
    assert_eq!(block_of(a), "10.0.0.64/26".parse().unwrap());
    let err = ipam
        .assign_ip("10.0.0.3".parse().unwrap(), &owner("h1", "b"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is invalid"), "{err}");
}

/// Many allocators at once on one store: every address handed out once, every handle right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocators_never_share_an_address() {
    let ipam = Arc::new(ipam_with_pools(&["10.0.0.0/22"]).await);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let ipam = ipam.clone();
        tasks.push(tokio::spawn(async move {
            let host = format!("h{}", i % 4);
            let mut got = Vec::new();
            for n in 0..40 {
                let owner = owner(&host, &format!("a{i}-{n}"));
                got.push(ipam.auto_assign(true, &owner).await.unwrap());
            }
            got
        }));
    }
    let mut all = HashSet::new();
    for task in tasks {
        for ip in task.await.unwrap() {
            assert!(all.insert(ip), "{ip} handed out twice");
        }
    }
    assert_eq!(all.len(), 320);
    let (blocks, bad) = ipam.blocks(true).await.unwrap();
    assert!(bad.is_empty());
    let in_use: usize = blocks.iter().map(|(_, b)| b.in_use()).sum();
    assert_eq!(in_use, 320, "none lost");
    let handles = ipam
        .store
        .list(&format!("{}handle/", keys::IPAM_PREFIX))
        .await
        .unwrap();
    assert_eq!(handles.kvs.len(), 320);
}

#[tokio::test]
async fn without_auto_allocated_blocks_hosts_only_borrow() {
    let ipam = ipam_with_pools(&["10.0.0.0/24"]).await;
    ipam.store
        .put(keys::IPAM_CONFIG, r#"{"auto_allocate_blocks":false}"#)
        .await
        .unwrap();
    let err = ipam.auto_assign(true, &owner("h1", "a")).await.unwrap_err();
    assert!(
        err.to_string().contains("no free IPv4 address left"),
        "{err}"
    );
    // A block claimed by an explicit address is borrowed from; no new block is claimed.
    ipam.assign_ip("10.0.0.130".parse().unwrap(), &owner("h2", "x"))
        .await
        .unwrap();
    let a = ipam.auto_assign(true, &owner("h1", "a")).await.unwrap();
    assert_eq!(block_of(a), "10.0.0.128/26".parse().unwrap());
    assert_eq!(ipam.blocks(true).await.unwrap().0.len(), 1);
    ipam.store.put(keys::IPAM_CONFIG, "{bad").await.unwrap();
    assert!(
        ipam.auto_assign(true, &owner("h1", "b")).await.is_err(),
        "bad config is an error, not a default"
    );
}

#[tokio::test]
async fn addresses_within_a_subnet_come_from_blocks_inside_it_only() {
    let ipam = ipam_with_pools(&["10.0.0.0/24", "10.9.0.0/24"]).await;
    // The host already has a block outside the subnet: it must not be used.
    let outside = ipam.auto_assign(true, &owner("h1", "a")).await.unwrap();
    assert_eq!(outside, "10.0.0.0".parse::<IpAddr>().unwrap());
    let subnet: IpNet = "10.0.0.128/25".parse().unwrap();
    let mut seen = HashSet::new();
    for i in 0..128 {
        let ip = ipam
            .auto_assign_within(subnet, &owner("h1", &format!("s{i}")))
            .await
            .unwrap();
        assert!(subnet.contains(&ip), "{ip} is outside {subnet}");
        assert!(seen.insert(ip));
    }
    let full = ipam
        .auto_assign_within(subnet, &owner("h1", "more"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        full.contains("no free IPv4 address left in 10.0.0.128/25"),
        "{full}"
    );
    // A whole pool works as the subnet too; a CIDR outside every pool, or smaller than a
    // block, is refused with what to do.
    let other = ipam
        .auto_assign_within("10.9.0.0/24".parse().unwrap(), &owner("h1", "o"))
        .await
        .unwrap();
    assert_eq!(other, "10.9.0.0".parse::<IpAddr>().unwrap());
    let refused = ipam
        .auto_assign_within("172.30.0.0/24".parse().unwrap(), &owner("h1", "x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("not an enabled Calico IP pool nor inside one"),
        "{refused}"
    );
    let small = ipam
        .auto_assign_within("10.9.0.64/28".parse().unwrap(), &owner("h1", "x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(small.contains("smaller than one IPAM block"), "{small}");
}

#[tokio::test]
async fn the_recent_block_is_given_up_when_its_pool_is_disabled() {
    let ipam = ipam_with_pools(&["10.0.0.0/24", "10.1.0.0/24"]).await;
    let first = ipam.auto_assign(true, &owner("h1", "a")).await.unwrap();
    assert_eq!(first, "10.0.0.0".parse::<IpAddr>().unwrap());
    disable_pool(&ipam, "10.0.0.0/24").await;
    let next = ipam.auto_assign(true, &owner("h1", "b")).await.unwrap();
    assert_eq!(next, "10.1.0.0".parse::<IpAddr>().unwrap());
}

#[tokio::test]
async fn the_recent_block_is_given_up_when_the_host_loses_it() {
    let ipam = ipam_with_pools(&["10.0.0.0/24"]).await;
    ipam.auto_assign(true, &owner("h1", "a")).await.unwrap();
    // An operator (or `calicoctl node remove`) takes the block's affinity away.
    let affinity = keys::ipam_host_block("h1", &"10.0.0.0/26".parse().unwrap());
    assert!(ipam.store.delete(&affinity).await.unwrap());
    let next = ipam.auto_assign(true, &owner("h1", "b")).await.unwrap();
    assert_eq!(
        next,
        "10.0.0.64".parse::<IpAddr>().unwrap(),
        "a block of its own again"
    );
}

#[tokio::test]
async fn another_allocators_write_to_the_recent_block_costs_no_new_block() {
    let a = ipam_with_pools(&["10.0.0.0/24"]).await;
    let b = Ipam::new(a.store.clone());
    let mut got = Vec::new();
    got.push(a.auto_assign(true, &owner("h1", "a0")).await.unwrap());
    got.push(b.auto_assign(true, &owner("h1", "b0")).await.unwrap());
    // a's recent block changed under it: it reads again and stays in the block.
    got.push(a.auto_assign(true, &owner("h1", "a1")).await.unwrap());
    got.push(a.auto_assign(true, &owner("h1", "a2")).await.unwrap());
    let expected: Vec<IpAddr> = (0..4)
        .map(|i| format!("10.0.0.{i}").parse().unwrap())
        .collect();
    assert_eq!(got, expected);
    let affinities = a
        .store
        .list(&keys::ipam_host_blocks_prefix("h1", true))
        .await
        .unwrap();
    assert_eq!(affinities.kvs.len(), 1);
}

/// The block a claim on an empty pool takes for `handle`.
async fn claimed_block(handle: &str, spread: bool) -> IpNet {
    let ipam = ipam_with_pools(&["10.0.0.0/22"]).await;
    let pools = ipam.enabled_pools_read(true).await.unwrap();
    let owner = Owner {
        handle: handle.into(),
        host: "h1".into(),
        workload: handle.into(),
    };
    match ipam
        .claim_new(true, None, &owner, &pools, true, spread)
        .await
        .unwrap()
    {
        Some(Take::Got(_, recent)) => recent.block.cidr,
        _ => panic!("no block claimed for {handle}"),
    }
}

/// Allocators that lost the same race pick different next blocks; an uncontended claim
/// takes the pool's first free block, as before.
#[tokio::test]
async fn allocators_that_lost_a_race_spread_over_the_next_blocks() {
    let mut spread = HashSet::new();
    for i in 0..8 {
        let handle = format!("h1.a{i}");
        assert_eq!(
            claimed_block(&handle, false).await,
            "10.0.0.0/26".parse::<IpNet>().unwrap()
        );
        spread.insert(claimed_block(&handle, true).await);
    }
    assert!(spread.len() >= 4, "8 handles took only {spread:?}");
    assert!(spread.iter().all(|b| b.prefix_len() == 26));
    assert_eq!(spread_index("any", 0), 0);
    assert_eq!(spread_index("any", 1), 0);
}
