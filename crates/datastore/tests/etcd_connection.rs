//! How the etcd backend meets the world: no etcd at all, and etcd over TLS.

use std::time::Duration;

use calico_datastore::{Datastore, DatastoreError, EtcdConfig, EtcdStore};
use calico_testkit::Etcd;

#[tokio::test]
async fn an_unreachable_etcd_is_a_clear_error_not_a_hang() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = EtcdConfig::new(vec![format!("http://127.0.0.1:{port}")]);
    config.timeout = Duration::from_secs(2);
    let attempt = async {
        let store = EtcdStore::connect(config).await?;
        store.get("/calico/v1/Ready").await
    };
    let error = tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .expect("the client must give up on its own")
        .unwrap_err();
    assert!(
        matches!(error, DatastoreError::Unreachable { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("ETCD_ENDPOINTS"), "{message}");
}

#[tokio::test]
async fn tls_with_client_certificates_from_the_environment() {
    let etcd = Etcd::start_tls();
    let vars = etcd.env();
    let config =
        EtcdConfig::from_vars(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .unwrap();
    assert!(config.uses_tls());
    let store = EtcdStore::connect(config).await.unwrap();
    store.put("/calico/v1/Ready", "true").await.unwrap();
    assert_eq!(
        store.get("/calico/v1/Ready").await.unwrap().unwrap().value,
        "true"
    );

    // Without a client certificate etcd refuses us; we say so instead of hanging.
    let tls = etcd.tls.as_ref().unwrap();
    let ca = tls.ca_cert.display().to_string();
    let mut anonymous = EtcdConfig::from_vars(|name| match name {
        "ETCD_ENDPOINTS" => Some(etcd.endpoint.clone()),
        "ETCD_CA_CERT_FILE" => Some(ca.clone()),
        _ => None,
    })
    .unwrap();
    anonymous.timeout = Duration::from_secs(3);
    let attempt = async {
        EtcdStore::connect(anonymous)
            .await?
            .get("/calico/v1/Ready")
            .await
    };
    let result = tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .expect("no hang");
    assert!(
        result.is_err(),
        "etcd with --client-cert-auth must refuse a client without a certificate"
    );
}

#[tokio::test]
async fn an_etcd_that_accepts_but_never_answers_times_out() {
    // The kernel completes the TCP handshake for a listening socket nobody reads from.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut config = EtcdConfig::new(vec![format!("http://127.0.0.1:{port}")]);
    config.timeout = Duration::from_secs(2);
    let attempt = async {
        EtcdStore::connect(config)
            .await?
            .get("/calico/v1/Ready")
            .await
    };
    let error = tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .expect("the client must give up on its own")
        .unwrap_err();
    assert!(error.to_string().contains("no answer within 2s"), "{error}");
    drop(silent);
}
