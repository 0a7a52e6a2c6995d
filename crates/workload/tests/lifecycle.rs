//! The lifecycle against a real kernel (a host and a workload namespace) and the in-memory
//! store: what it makes, that a failed step leaves nothing behind, and that teardown carries on
//! past errors and reports them all.

use std::path::PathBuf;
use std::sync::Arc;

use calico_dataplane::netns;
use calico_datastore::resources::{EndpointFilter, Resources};
use calico_datastore::{Datastore, MemoryStore};
use calico_model::pool::IpPool;
use calico_testkit::Netns;
use calico_workload::{AddressRequest, Addresses, Lifecycle, NewWorkload, WorkloadError};

fn path(ns: &Netns) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{}", ns.name))
}

/// A host with the agent's tables in place, a store with a pool, the host's lifecycle.
fn host() -> (Netns, Arc<dyn Datastore>) {
    let host = Netns::new("wlhost");
    host.run_with_input(
        "nft",
        &["-f", "-"],
        "table inet calico { map from-endpoint { type ifname : verdict; }; }\n\
         table inet calico-compiled { map to-compiled { type ifname : verdict; }; }",
    );
    let store: Arc<dyn Datastore> = Arc::new(MemoryStore::new());
    (host, store)
}

/// Runs lifecycle work inside the host namespace, on a runtime of its own.
fn on_host<T: Send + 'static>(
    host: &Netns,
    store: &Arc<dyn Datastore>,
    work: impl FnOnce(Lifecycle) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
        + Send
        + 'static,
) -> T {
    let lifecycle = Lifecycle::new(store.clone(), "h1");
    netns::run_in(&path(host), move || work(lifecycle)).unwrap()
}

fn new_workload(netns: PathBuf, request: &str) -> NewWorkload {
    NewWorkload {
        display_name: "w".into(),
        orchestrator: "namespace".into(),
        workload_id: "w".into(),
        netns,
        interface: "eth1".into(),
        request: AddressRequest::parse(request).unwrap(),
        profiles: vec!["P".into()],
    }
}

async fn pools(store: &Arc<dyn Datastore>) {
    Resources::new(store.clone())
        .add_pools(&[IpPool::new("192.168.0.0/16".parse().unwrap())])
        .await
        .unwrap();
}

#[test]
fn add_wires_and_records_and_teardown_removes_it_all() {
    let (host, store) = host();
    let workload = Netns::new("wlw");
    let netns = path(&workload);
    let added = on_host(&host, &store, move |l| {
        Box::pin(async move {
            pools(&l.resources().shared_store()).await;
            l.add(&new_workload(netns, "192.168.0.0/16")).await.unwrap()
        })
    });
    assert_eq!(added.endpoint.profile_ids, ["P"]);
    let ip = added.endpoint.ipv4_nets[0];
    assert!(workload
        .run("ip", &["-o", "addr", "show", "eth1"])
        .contains(&format!("inet {ip}")));
    assert!(host.run("ip", &["link"]).contains(&added.endpoint.name));
    let mac = added.endpoint.mac.clone().unwrap();
    assert!(workload.run("ip", &["link", "show", "eth1"]).contains(&mac));

    let records = on_host(&host, &store, |l| {
        Box::pin(async move { l.endpoints("namespace", "w").await.unwrap() })
    });
    on_host(&host, &store, move |l| {
        Box::pin(async move { l.teardown(&records, Addresses::Release).await.unwrap() })
    });
    assert!(!host.run("ip", &["link"]).contains(&added.endpoint.name));
    let left = on_host(&host, &store, move |l| {
        Box::pin(async move {
            let endpoints = l
                .resources()
                .endpoints(&EndpointFilter::default())
                .await
                .unwrap();
            let held = calico_ipam::Ipam::new(l.resources().shared_store())
                .holder(ip.addr())
                .await
                .unwrap()
                .and_then(|(_, holder)| holder);
            (endpoints.len(), held.is_some())
        })
    });
    assert_eq!(left, (0, false), "no endpoint, the address free");
}

#[test]
fn a_failed_step_undoes_the_earlier_ones() {
    let (host, store) = host();
    // The namespace does not exist: the address is taken and the host side made first.
    let missing = PathBuf::from("/var/run/netns/no-such-workload-namespace");
    let (error, endpoints, blocks) = on_host(&host, &store, move |l| {
        Box::pin(async move {
            pools(&l.resources().shared_store()).await;
            let error = l.add(&new_workload(missing, "ipv4")).await.unwrap_err();
            let endpoints = l
                .resources()
                .endpoints(&EndpointFilter::default())
                .await
                .unwrap();
            let (blocks, _) = calico_ipam::Ipam::new(l.resources().shared_store())
                .blocks(true)
                .await
                .unwrap();
            let in_use: usize = blocks.iter().map(|(_, b)| b.in_use()).sum();
            (error.to_string(), endpoints.len(), in_use)
        })
    });
    assert!(error.contains("no-such-workload-namespace"), "{error}");
    assert_eq!(
        (endpoints, blocks),
        (0, 0),
        "nothing recorded, no address held"
    );
    let links = host.run("ip", &["-o", "link"]);
    assert!(!links.contains("cali") && !links.contains("tmp"), "{links}");

    // Without the agent's table, nothing is even tried.
    host.run("nft", &["delete", "table", "inet", "calico"]);
    let workload = Netns::new("wlw2");
    let netns = path(&workload);
    let refused = on_host(&host, &store, move |l| {
        Box::pin(async move { l.add(&new_workload(netns, "ipv4")).await.unwrap_err() })
    });
    assert!(
        matches!(refused, WorkloadError::Refused(ref m) if m.contains("has not programmed policy"))
    );
}

#[test]
fn teardown_carries_on_past_errors_and_reports_them_all() {
    let (host, store) = host();
    let workload = Netns::new("wlw3");
    let netns = path(&workload);
    let added = on_host(&host, &store, move |l| {
        Box::pin(async move {
            pools(&l.resources().shared_store()).await;
            l.add(&new_workload(netns, "ipv4")).await.unwrap()
        })
    });
    // Someone broke the workload's IPAM block: releasing its address must fail, but the
    // interface and the endpoint still go.
    let block_key =
        calico_model::keys::ipam_block(&calico_ipam::block_of(added.endpoint.ipv4_nets[0].addr()));
    let broken = store.clone();
    let result = on_host(&host, &store, move |l| {
        Box::pin(async move {
            broken.put(&block_key, "not a block").await.unwrap();
            let records = l.endpoints("namespace", "w").await.unwrap();
            let result = l.teardown(&records, Addresses::Release).await;
            let left = l
                .resources()
                .endpoints(&EndpointFilter::default())
                .await
                .unwrap();
            (result, left.len())
        })
    });
    match result {
        (Err(WorkloadError::Teardown(failed)), 0) => {
            assert_eq!(failed.len(), 1, "{failed:?}");
            assert!(failed[0].contains("releasing the addresses"), "{failed:?}");
        }
        other => panic!("expected one reported failure and no endpoint left: {other:?}"),
    }
    assert!(!host.run("ip", &["link"]).contains(&added.endpoint.name));
}

#[test]
fn a_detached_workload_comes_back_with_the_same_endpoint_in_a_new_namespace() {
    use calico_model::endpoint::EndpointState;
    use calico_workload::Attach;
    let (host, store) = host();
    let first = Netns::new("wlw1");
    let netns = path(&first);
    let added = on_host(&host, &store, move |l| {
        Box::pin(async move {
            pools(&l.resources().shared_store()).await;
            l.add(&new_workload(netns, "ipv4")).await.unwrap()
        })
    });
    // Stopped: no interface, the endpoint inactive, its address still held.
    let records = on_host(&host, &store, |l| {
        Box::pin(async move { l.endpoints("namespace", "w").await.unwrap() })
    });
    on_host(&host, &store, move |l| {
        Box::pin(async move { l.detach(&records).await.unwrap() })
    });
    assert!(!host.run("ip", &["link"]).contains(&added.endpoint.name));
    let (records, held) = on_host(&host, &store, |l| {
        Box::pin(async move {
            (
                l.endpoints("namespace", "w").await.unwrap(),
                l.held("w").await.unwrap(),
            )
        })
    });
    assert_eq!(records.len(), 1);
    let stored = records[0].endpoint.as_ref().unwrap();
    assert_eq!(stored.state, EndpointState::Inactive);
    assert_eq!(held, added.endpoint.ipv4_nets);
    drop(first);

    // Started again in a namespace of its own: the same endpoint, interface, MAC, address.
    let second = Netns::new("wlw2");
    let attach = Attach {
        orchestrator: "namespace".into(),
        workload_id: "w".into(),
        netns: path(&second),
        interface: "eth1".into(),
        nets: Vec::new(),
        profiles: Vec::new(),
    };
    let record = records[0].clone();
    let back = on_host(&host, &store, move |l| {
        Box::pin(async move { l.attach(&attach, Some(&record)).await.unwrap() })
    });
    assert_eq!(back.key, added.key);
    assert_eq!(back.endpoint.state, EndpointState::Active);
    assert_eq!(back.endpoint.profile_ids, ["P"]);
    assert!(host.run("ip", &["link"]).contains(&added.endpoint.name));
    let inside = second.run("ip", &["-o", "addr", "show", "eth1"]);
    assert!(
        inside.contains(&format!("inet {}", added.endpoint.ipv4_nets[0])),
        "{inside}"
    );
    assert!(second
        .run("ip", &["link", "show", "eth1"])
        .contains(added.endpoint.mac.as_deref().unwrap()));
    let stored = on_host(&host, &store, |l| {
        Box::pin(async move { l.endpoints("namespace", "w").await.unwrap() })
    });
    assert_eq!(
        stored[0].endpoint.as_ref().unwrap().state,
        EndpointState::Active
    );
}
