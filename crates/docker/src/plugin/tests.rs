//! The plugin's HTTP surface as Docker meets it, over the in-memory store: calls that need no
//! kernel or engine (activation, capabilities, IPAM, validation of networks).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use calico_datastore::resources::Resources;
use calico_datastore::{Datastore, MemoryStore};
use calico_model::pool::IpPool;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::router;
use crate::driver::{Driver, DriverConfig};
use crate::engine::Engine;
use crate::metrics::PluginMetrics;

async fn driver(pools: &[&str]) -> Arc<Driver> {
    let store: Arc<dyn Datastore> = Arc::new(MemoryStore::new());
    let pools: Vec<IpPool> = pools
        .iter()
        .map(|p| IpPool::new(p.parse().unwrap()))
        .collect();
    Resources::new(store.clone())
        .add_pools(&pools)
        .await
        .unwrap();
    // No engine: these calls must not need one.
    let engine = Engine::new("unix:///nonexistent/docker.sock");
    Driver::new(
        store,
        engine,
        DriverConfig::new("h1"),
        PluginMetrics::default(),
    )
}

/// POSTs as Docker does (no Content-Type); the status and the JSON answer.
async fn call(driver: &Arc<Driver>, method: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let request = Request::post(format!("/{method}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router(driver.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.docker.plugins.v1+json"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).expect("every answer is JSON");
    (status, json)
}

fn err(answer: &serde_json::Value) -> &str {
    answer["Err"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn activation_and_capabilities_answer_empty_requests() {
    let d = driver(&["192.168.0.0/16"]).await;
    let (status, answer) = call(&d, "Plugin.Activate", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["Implements"],
        serde_json::json!(["NetworkDriver", "IpamDriver"])
    );
    let (_, caps) = call(&d, "NetworkDriver.GetCapabilities", "").await;
    assert_eq!(
        caps,
        serde_json::json!({"Scope": "local", "ConnectivityScope": "global"})
    );
    let (_, spaces) = call(&d, "IpamDriver.GetDefaultAddressSpaces", "").await;
    assert_eq!(
        spaces["LocalDefaultAddressSpace"],
        "CalicoLocalAddressSpace"
    );
    for method in [
        "NetworkDriver.DiscoverNew",
        "NetworkDriver.ProgramExternalConnectivity",
    ] {
        let (status, answer) = call(&d, method, r#"{"NetworkID":"n","EndpointID":"e"}"#).await;
        assert_eq!((status, answer), (StatusCode::OK, serde_json::json!({})));
    }
}

#[tokio::test]
async fn unknown_methods_and_malformed_bodies_get_json_errors() {
    let d = driver(&[]).await;
    let (status, answer) = call(&d, "NetworkDriver.Frobnicate", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err(&answer).contains("does not implement /NetworkDriver.Frobnicate"));
    let (status, answer) = call(&d, "IpamDriver.RequestPool", "{not json").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(err(&answer).contains("malformed request"), "{answer}");
}

#[tokio::test]
async fn pools_are_the_default_ones_or_subnets_inside_calico_pools() {
    let d = driver(&["192.168.0.0/16", "fd80::/64"]).await;
    let (status, default) = call(&d, "IpamDriver.RequestPool", r#"{"Pool":"","V6":false}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        default,
        serde_json::json!({"PoolID": "CalicoPoolIPv4", "Pool": "0.0.0.0/0",
            "Data": {"com.docker.network.gateway": "0.0.0.0/0"}})
    );
    let (_, v6) = call(&d, "IpamDriver.RequestPool", r#"{"V6":true}"#).await;
    assert_eq!(v6["PoolID"], "CalicoPoolIPv6");
    let (_, inside) = call(&d, "IpamDriver.RequestPool", r#"{"Pool":"192.168.4.0/24"}"#).await;
    assert_eq!(inside["PoolID"], "192.168.4.0/24");
    assert_eq!(inside["Pool"], "192.168.4.0/24");
    for (body, says) in [
        (r#"{"Pool":"10.9.0.0/16"}"#, "--subnet 10.9.0.0/16 is not a Calico IP pool nor inside one (the enabled pools: 192.168.0.0/16)"),
        (r#"{"Pool":"192.168.4.0/28"}"#, "smaller than one Calico IPAM block (/26)"),
        (r#"{"Pool":"192.168.0.0/16","SubPool":"192.168.1.0/24"}"#, "--ip-range 192.168.1.0/24 is not supported"),
        (r#"{"Options":{"x":"y"}}"#, "Calico IPAM takes no options"),
        (r#"{"Pool":"fd80::/64"}"#, "is not an IPv4 network"),
    ] {
        let (status, answer) = call(&d, "IpamDriver.RequestPool", body).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert!(err(&answer).contains(says), "{body}: {answer}");
    }
}

#[tokio::test]
async fn addresses_are_host_routes_from_the_pool_and_released_only_when_ours() {
    let d = driver(&["192.168.0.0/16"]).await;
    let request = |body: &'static str| call(&d, "IpamDriver.RequestAddress", body);
    let (_, first) = request(r#"{"PoolID":"CalicoPoolIPv4","Address":""}"#).await;
    assert_eq!(first["Address"], "192.168.0.0/32");
    let (_, within) = request(r#"{"PoolID":"192.168.8.0/24","Address":""}"#).await;
    assert_eq!(within["Address"], "192.168.8.0/32");
    let (_, fixed) = request(r#"{"PoolID":"192.168.8.0/24","Address":"192.168.8.77"}"#).await;
    assert_eq!(fixed["Address"], "192.168.8.77/32");
    let (status, taken) = request(r#"{"PoolID":"192.168.8.0/24","Address":"192.168.8.77"}"#).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        err(&taken).contains("192.168.8.77 is already in use"),
        "{taken}"
    );
    let (_, gateway) = request(
        r#"{"PoolID":"192.168.8.0/24","Address":"192.168.8.1","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
    )
    .await;
    assert!(
        err(&gateway).contains("--gateway is not supported"),
        "{gateway}"
    );

    let release = |body: &'static str| call(&d, "IpamDriver.ReleaseAddress", body);
    // The gateway Docker never took, then an address of ours.
    assert_eq!(
        release(r#"{"PoolID":"CalicoPoolIPv4","Address":"0.0.0.0"}"#)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        release(r#"{"PoolID":"192.168.8.0/24","Address":"192.168.8.77"}"#)
            .await
            .0,
        StatusCode::OK
    );
    let (_, again) = request(r#"{"PoolID":"192.168.8.0/24","Address":"192.168.8.77"}"#).await;
    assert_eq!(
        again["Address"], "192.168.8.77/32",
        "released, so free again"
    );
    // An address someone else holds is not released on Docker's word.
    let ipam = calico_ipam::Ipam::new(d.lifecycle.resources().shared_store());
    let other = calico_ipam::Owner {
        handle: "h2.w".into(),
        host: "h2".into(),
        workload: "w".into(),
    };
    ipam.assign_ip("192.168.9.9".parse().unwrap(), &other)
        .await
        .unwrap();
    release(r#"{"PoolID":"CalicoPoolIPv4","Address":"192.168.9.9"}"#).await;
    assert!(ipam
        .holder("192.168.9.9".parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .1
        .is_some());
}

#[tokio::test]
async fn networks_with_driver_options_or_another_ipam_are_refused() {
    let d = driver(&["192.168.0.0/16"]).await;
    for (body, says) in [
        (
            r#"{"NetworkID":"n1","Options":{"com.docker.network.generic":{"mtu":"1400"}},"IPv4Data":[{"AddressSpace":"CalicoLocalAddressSpace","Pool":"0.0.0.0/0"}]}"#,
            "take no driver options, but -o mtu was given",
        ),
        (
            r#"{"NetworkID":"n2","Options":{"com.docker.network.internal":true},"IPv4Data":[]}"#,
            "--internal is not supported",
        ),
        (
            r#"{"NetworkID":"n3","Options":{},"IPv4Data":[{"AddressSpace":"LocalDefault","Pool":"172.19.0.0/24"}]}"#,
            "need Calico IPAM",
        ),
    ] {
        let (status, answer) = call(&d, "NetworkDriver.CreateNetwork", body).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert!(err(&answer).contains(says), "{body}: {answer}");
    }
    assert!(
        d.networks.lock().await.is_empty(),
        "a refused network is not remembered"
    );
}
