//! Listings of any size against a real etcd: read in pages, all at one revision.

use std::sync::Arc;

use calico_datastore::{Datastore, EtcdConfig, EtcdStore, Op, Txn};
use calico_testkit::Etcd;

async fn store(etcd: &Etcd, page_size: usize) -> EtcdStore {
    let mut config = EtcdConfig::new(vec![etcd.endpoint.clone()]);
    config.page_size = page_size;
    EtcdStore::connect(config).await.unwrap()
}

/// gRPC's default message limit, which one unpaged response of the listing below would pass.
const GRPC_DEFAULT_LIMIT: usize = 4 * 1024 * 1024;

#[tokio::test]
async fn a_listing_larger_than_one_grpc_message_is_read_whole() {
    let etcd = Etcd::start();
    let store = store(&etcd, calico_datastore::DEFAULT_PAGE_SIZE).await;
    // 6,000 values of 1 KiB: 6 MiB, written in transactions of 100 keys.
    let value = "x".repeat(1024);
    for batch in 0..60 {
        let ops = (0..100)
            .map(|i| Op::put(format!("/calico/big/{:05}", batch * 100 + i), value.clone()))
            .collect();
        let outcome = store
            .txn(Txn {
                compares: vec![],
                ops,
            })
            .await
            .unwrap();
        assert!(outcome.succeeded);
    }
    store
        .put("/calico/bigger", "outside the prefix")
        .await
        .unwrap();
    let listing = store.list("/calico/big/").await.unwrap();
    let bytes: usize = listing
        .kvs
        .iter()
        .map(|kv| kv.key.len() + kv.value.len())
        .sum();
    assert!(bytes > GRPC_DEFAULT_LIMIT, "only {bytes} bytes listed");
    assert_eq!(listing.kvs.len(), 6000);
    let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(keys, sorted, "keys in order, each once");
    assert_eq!(keys.first(), Some(&"/calico/big/00000"));
    assert_eq!(keys.last(), Some(&"/calico/big/05999"));
}

#[tokio::test]
async fn one_large_value_is_read_like_any_other() {
    let etcd = Etcd::start();
    let store = store(&etcd, 10).await;
    // etcd's default request limit is 1.5 MiB; one value close to it.
    let value = "v".repeat(1_400_000);
    store.put("/calico/one/large", &value).await.unwrap();
    assert_eq!(
        store
            .get("/calico/one/large")
            .await
            .unwrap()
            .unwrap()
            .value
            .len(),
        value.len()
    );
    assert_eq!(store.list("/calico/one/").await.unwrap().kvs.len(), 1);
}

#[tokio::test]
async fn pages_are_one_snapshot_while_others_write() {
    let etcd = Etcd::start();
    let store = Arc::new(store(&etcd, 3).await);
    for i in 0..60 {
        store
            .put(&format!("/calico/snap/{i:03}"), "old")
            .await
            .unwrap();
    }
    // A writer changes and adds keys while the listing reads its 20+ pages.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..60 {
                let key = format!("/calico/snap/{i:03}");
                revisions.push((key.clone(), store.put(&key, "new").await.unwrap()));
                let added = format!("/calico/snap/{i:03}-added");
                revisions.push((added.clone(), store.put(&added, "new").await.unwrap()));
            }
            revisions
        })
    };
    let listing = store.list("/calico/snap/").await.unwrap();
    let written = writer.await.unwrap();
    // Exactly what the store held at the listing's revision: each write is in the listing
    // if and only if it happened at or before that revision.
    for (key, revision) in written {
        let listed = listing.kvs.iter().find(|kv| kv.key == key);
        match (revision <= listing.revision, listed) {
            (true, Some(kv)) => assert_eq!(kv.value, "new", "{key}"),
            (false, Some(kv)) => assert_eq!(kv.value, "old", "{key}: a later write leaked in"),
            (false, None) => {}
            (true, None) => panic!(
                "{key}, written at {revision}, missing at {}",
                listing.revision
            ),
        }
    }
    assert!(listing
        .kvs
        .iter()
        .all(|kv| kv.mod_revision <= listing.revision));
}

#[tokio::test]
async fn an_empty_listing_and_the_whole_keyspace() {
    let etcd = Etcd::start();
    let store = store(&etcd, 2).await;
    assert!(store.list("/calico/none/").await.unwrap().kvs.is_empty());
    for key in ["/a/1", "/a/2", "/a/3", "/a/4", "/a/5", "/b/1"] {
        store.put(key, "v").await.unwrap();
    }
    let listing = store.list("/a/").await.unwrap();
    let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/a/1", "/a/2", "/a/3", "/a/4", "/a/5"]);
    assert_eq!(
        store.list("").await.unwrap().kvs.len(),
        6,
        "the empty prefix is every key"
    );
}

#[tokio::test]
async fn pages_are_sized_by_bytes_and_handed_over_one_at_a_time() {
    let etcd = Etcd::start();
    let mut config = EtcdConfig::new(vec![etcd.endpoint.clone()]);
    // A first page of 10 keys; after it, pages of what about 360 bytes hold: three of the
    // entries below (a 17-byte key and a 100-byte value each).
    config.page_size = 10;
    config.page_bytes = 360;
    let store = EtcdStore::connect(config).await.unwrap();
    let ops = (0..100)
        .map(|i| Op::put(format!("/calico/sized/{i:03}"), "v".repeat(100)))
        .collect();
    store
        .txn(Txn {
            compares: vec![],
            ops,
        })
        .await
        .unwrap();
    let mut pages = Vec::new();
    let revision = store
        .list_each(&["/calico/sized/"], &mut |page| match page {
            calico_datastore::ListPage::Keys(kvs) => pages.push(kvs),
            calico_datastore::ListPage::Restart => panic!("nothing was compacted"),
        })
        .await
        .unwrap();
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes[0], 10);
    assert!(sizes[1..].iter().all(|&n| n == 3 || n == 0), "{sizes:?}");
    assert_eq!(sizes.len(), 1 + 30);
    let keys: Vec<String> = pages.iter().flatten().map(|kv| kv.key.clone()).collect();
    let whole = store.list("/calico/sized/").await.unwrap();
    assert_eq!(
        keys,
        whole
            .kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(revision, whole.revision);
    assert_eq!(keys.len(), 100);
}
