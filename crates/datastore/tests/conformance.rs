//! One set of behaviours, checked against both backends: the in-memory store must behave like
//! etcd, or unit tests built on it would prove nothing.

use std::sync::Arc;
use std::time::Duration;

use calico_datastore::update::{update, Change};
use calico_datastore::{
    Compare, Datastore, DatastoreError, EtcdConfig, EtcdStore, ListPage, MemoryStore, Op, Txn,
    Watch, WatchEvent, MAX_TXN_OPS,
};
use calico_testkit::Etcd;

struct Backend {
    store: Arc<dyn Datastore>,
    compact: Box<dyn Fn(i64) + Send + Sync>,
    _etcd: Option<Arc<Etcd>>,
}

fn memory() -> Backend {
    let store = MemoryStore::new();
    let compactor = store.clone();
    Backend {
        store: Arc::new(store),
        compact: Box::new(move |rev| compactor.compact(rev)),
        _etcd: None,
    }
}

async fn etcd() -> Backend {
    let etcd = Etcd::start();
    let store = EtcdStore::connect(EtcdConfig::new(vec![etcd.endpoint.clone()]))
        .await
        .unwrap();
    let etcd = Arc::new(etcd);
    let compactor = etcd.clone();
    Backend {
        store: Arc::new(store),
        compact: Box::new(move |rev| compactor.compact(rev)),
        _etcd: Some(etcd),
    }
}

/// The next batch of a watch, or a failure after a generous deadline (never a hang).
async fn next(watch: &mut Watch) -> Result<Vec<WatchEvent>, DatastoreError> {
    tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("watch delivered nothing within 20s")
        .expect("watch stream ended")
}

/// Collects events until `count` have arrived.
async fn events(watch: &mut Watch, count: usize) -> Vec<WatchEvent> {
    let mut all = Vec::new();
    while all.len() < count {
        all.extend(next(watch).await.unwrap());
    }
    all
}

async fn put_get_delete(b: Backend) {
    let s = &b.store;
    assert_eq!(s.get("/t/a").await.unwrap(), None);
    let rev = s.put("/t/a", "1").await.unwrap();
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_str(), kv.mod_revision, kv.create_revision),
        ("1", rev, rev)
    );
    let rev2 = s.put("/t/a", "2").await.unwrap();
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert!(rev2 > rev);
    assert_eq!(
        (kv.value.as_str(), kv.mod_revision, kv.create_revision),
        ("2", rev2, rev)
    );
    assert!(s.delete("/t/a").await.unwrap());
    assert!(!s.delete("/t/a").await.unwrap());
    assert_eq!(s.get("/t/a").await.unwrap(), None);
}

async fn list_and_delete_by_prefix(b: Backend) {
    let s = &b.store;
    for key in ["/t/b", "/t/a", "/t/c/d", "/u/a", "/t"] {
        s.put(key, key).await.unwrap();
    }
    let listing = s.list("/t/").await.unwrap();
    let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b", "/t/c/d"]);
    assert!(listing.revision >= listing.kvs.iter().map(|kv| kv.mod_revision).max().unwrap());
    assert_eq!(s.delete_prefix("/t/").await.unwrap(), 3);
    assert!(s.list("/t/").await.unwrap().kvs.is_empty());
    assert!(
        s.get("/t").await.unwrap().is_some(),
        "a key equal to the prefix minus '/' stays"
    );
}

async fn transactions_compare_and_swap(b: Backend) {
    let s = &b.store;
    let create = |v: &str| Txn {
        compares: vec![Compare::Absent("/t/k".into())],
        ops: vec![Op::put("/t/k", v), Op::put("/t/other", v)],
    };
    assert!(s.txn(create("first")).await.unwrap().succeeded);
    assert!(!s.txn(create("second")).await.unwrap().succeeded);
    assert_eq!(s.get("/t/other").await.unwrap().unwrap().value, "first");
    let rev = s.get("/t/k").await.unwrap().unwrap().mod_revision;
    let swap = |v: &str| Txn {
        compares: vec![Compare::ModRevision("/t/k".into(), rev)],
        ops: vec![Op::put("/t/k", v)],
    };
    let outcome = s.txn(swap("swapped")).await.unwrap();
    assert!(outcome.succeeded);
    assert_eq!(
        s.get("/t/k").await.unwrap().unwrap().mod_revision,
        outcome.revision
    );
    assert!(
        !s.txn(swap("stale")).await.unwrap().succeeded,
        "a stale revision must fail"
    );
    assert_eq!(s.get("/t/k").await.unwrap().unwrap().value, "swapped");
    let clear = Txn {
        compares: vec![],
        ops: vec![Op::DeletePrefix {
            prefix: "/t/".into(),
        }],
    };
    assert!(s.txn(clear).await.unwrap().succeeded);
    assert!(s.list("/t/").await.unwrap().kvs.is_empty());
}

async fn watch_replays_from_a_revision_then_follows(b: Backend) {
    let s = &b.store;
    let first = s.put("/w/a", "1").await.unwrap();
    s.put("/other/x", "ignored").await.unwrap();
    s.put("/w/b", "2").await.unwrap();
    let mut watch = s.watch(&["/w/"], first).await.unwrap();
    let replay = events(&mut watch, 2).await;
    let keys: Vec<&str> = replay.iter().map(WatchEvent::key).collect();
    assert_eq!(keys, ["/w/a", "/w/b"]);
    s.put("/other/y", "ignored").await.unwrap();
    let rev = s.put("/w/c", "3").await.unwrap();
    s.delete("/w/a").await.unwrap();
    let live = events(&mut watch, 2).await;
    match &live[..] {
        [WatchEvent::Put(kv), WatchEvent::Delete { key, revision }] => {
            assert_eq!(
                (kv.key.as_str(), kv.value.as_str(), kv.mod_revision),
                ("/w/c", "3", rev)
            );
            assert_eq!(key, "/w/a");
            assert!(*revision > rev);
        }
        other => panic!("unexpected events {other:?}"),
    }
}

async fn watch_from_now_sees_only_new_changes(b: Backend) {
    let s = &b.store;
    s.put("/w/old", "x").await.unwrap();
    let mut watch = s.watch(&["/w/"], 0).await.unwrap();
    s.put("/w/new", "y").await.unwrap();
    let seen = events(&mut watch, 1).await;
    assert_eq!(seen[0].key(), "/w/new");
}

async fn watch_from_a_compacted_revision_asks_for_resync(b: Backend) {
    let s = &b.store;
    let old = s.put("/w/a", "1").await.unwrap();
    s.put("/w/a", "2").await.unwrap();
    let latest = s.put("/w/a", "3").await.unwrap();
    (b.compact)(latest);
    let error = match s.watch(&["/w/"], old).await {
        Err(e) => e,
        Ok(mut watch) => next(&mut watch).await.unwrap_err(),
    };
    assert!(
        matches!(error, DatastoreError::Compacted { .. }),
        "{error:?}"
    );
}

/// Every key `list_each` hands out, and the revision it read at.
async fn list_each_keys(s: &dyn Datastore, prefixes: &[&str]) -> (Vec<String>, i64) {
    let mut keys = Vec::new();
    let revision = s
        .list_each(prefixes, &mut |page| match page {
            ListPage::Keys(kvs) => keys.extend(kvs.into_iter().map(|kv| kv.key)),
            ListPage::Restart => keys.clear(),
        })
        .await
        .unwrap();
    (keys, revision)
}

async fn several_prefixes_are_listed_at_one_revision_and_watched_together(b: Backend) {
    let s = &b.store;
    let first = s.put("/p/a/1", "x").await.unwrap();
    s.put("/p/b/1", "x").await.unwrap();
    s.put("/p/ab", "not under /p/a/").await.unwrap();
    let last = s.put("/p/c/1", "x").await.unwrap();
    let (keys, revision) = list_each_keys(s.as_ref(), &["/p/c/", "/p/a/"]).await;
    assert_eq!(
        keys,
        ["/p/c/1", "/p/a/1"],
        "each prefix in turn, no other key"
    );
    assert_eq!(revision, last, "the snapshot's revision");

    let mut watch = s.watch(&["/p/a/", "/p/c/"], first).await.unwrap();
    let replay = events(&mut watch, 2).await;
    let mut keys: Vec<&str> = replay.iter().map(WatchEvent::key).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["/p/a/1", "/p/c/1"]);
    for key in ["/p/b/2", "/p/a/2", "/p/ab2", "/p/c/2", "/p/a/3"] {
        s.put(key, "y").await.unwrap();
    }
    let live = events(&mut watch, 3).await;
    let keys: Vec<&str> = live.iter().map(WatchEvent::key).collect();
    let under_a: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| k.starts_with("/p/a/"))
        .collect();
    assert_eq!(
        under_a,
        ["/p/a/2", "/p/a/3"],
        "one prefix's changes in order: {keys:?}"
    );
    assert!(keys.contains(&"/p/c/2"), "{keys:?}");
    assert_eq!(keys.len(), 3, "nothing from other prefixes: {keys:?}");
}

async fn a_transaction_of_more_operations_than_etcd_takes_is_refused(b: Backend) {
    let s = &b.store;
    let ops = |n: usize| (0..n).map(|i| Op::put(format!("/x/{i}"), "v")).collect();
    let most = Txn {
        compares: vec![],
        ops: ops(MAX_TXN_OPS),
    };
    assert!(s.txn(most).await.unwrap().succeeded);
    let more = Txn {
        compares: vec![],
        ops: ops(MAX_TXN_OPS + 1),
    };
    let error = s.txn(more).await.unwrap_err();
    assert!(error.to_string().contains("too many operations"), "{error}");
    assert_eq!(
        s.list("/x/").await.unwrap().kvs.len(),
        MAX_TXN_OPS,
        "nothing of it written"
    );
}

async fn leases_hold_keys_until_revoked(b: Backend) {
    let s = &b.store;
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    let put = Txn {
        compares: vec![],
        ops: vec![Op::Put {
            key: "/l/status".into(),
            value: "up".into(),
            lease: Some(lease),
        }],
    };
    assert!(s.txn(put).await.unwrap().succeeded);
    assert_eq!(s.get("/l/status").await.unwrap().unwrap().lease, lease);
    s.keep_lease_alive(lease).await.unwrap();
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(
        s.get("/l/status").await.unwrap(),
        None,
        "revoking drops the lease's keys"
    );
    let err = s.keep_lease_alive(lease).await.unwrap_err();
    assert!(matches!(err, DatastoreError::LeaseNotFound(_)), "{err:?}");
}

async fn concurrent_updates_all_land(b: Backend) {
    let writers = 16;
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let store = b.store.clone();
            tokio::spawn(async move {
                update::<String>(store.as_ref(), "/c/list", |current| {
                    let mut list: Vec<u32> = current
                        .map_or(Ok(vec![]), serde_json::from_str)
                        .map_err(|e| e.to_string())?;
                    list.push(i);
                    Ok(Change::Put(serde_json::to_string(&list).unwrap()))
                })
                .await
                .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stored: Vec<u32> =
        serde_json::from_str(&b.store.get("/c/list").await.unwrap().unwrap().value).unwrap();
    let mut sorted = stored.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..writers).collect::<Vec<_>>(),
        "every writer's entry, once"
    );
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod memory_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() { super::$check(super::memory()).await })*
        }
        mod etcd_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() { super::$check(super::etcd().await).await })*
        }
    };
}

conformance!(
    put_get_delete,
    list_and_delete_by_prefix,
    transactions_compare_and_swap,
    watch_replays_from_a_revision_then_follows,
    watch_from_now_sees_only_new_changes,
    watch_from_a_compacted_revision_asks_for_resync,
    several_prefixes_are_listed_at_one_revision_and_watched_together,
    a_transaction_of_more_operations_than_etcd_takes_is_refused,
    leases_hold_keys_until_revoked,
    concurrent_updates_all_land,
);
