//! The proxy against a fake engine on a unix socket (the lab tests meet the real one): what
//! passes through (headers, streamed bodies, upgraded connections byte for byte), and what the
//! proxy changes or refuses on the way, over the in-memory store.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use calico_datastore::resources::Resources;
use calico_datastore::{Datastore, MemoryStore};
use calico_model::pool::IpPool;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// What the fake engine was asked: method, path with query, body.
type Calls = Arc<Mutex<Vec<(Method, String, Value)>>>;

/// A fake engine: `/_ping`, `/version`, create, inspect, remove, a streamed `/events` whose
/// second chunk comes only when the test sends it, and an attach that echoes what it gets.
struct FakeEngine {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    calls: Calls,
    events: Arc<Mutex<VecDeque<mpsc::Receiver<Bytes>>>>,
}

impl FakeEngine {
    async fn start() -> FakeEngine {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let calls: Calls = Arc::default();
        let events: Arc<Mutex<VecDeque<mpsc::Receiver<Bytes>>>> = Arc::default();
        let (served_calls, served_events) = (calls.clone(), events.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (calls, events) = (served_calls.clone(), served_events.clone());
                let service = hyper::service::service_fn(move |request| {
                    engine_answer(request, calls.clone(), events.clone())
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        FakeEngine {
            _dir: dir,
            socket,
            calls,
            events,
        }
    }

    fn calls(&self) -> Vec<(Method, String, Value)> {
        self.calls.lock().unwrap().clone()
    }
}

async fn engine_answer(
    mut request: Request<hyper::body::Incoming>,
    calls: Calls,
    events: Arc<Mutex<VecDeque<mpsc::Receiver<Bytes>>>>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let unversioned = routes::unversioned(&path).to_string();
    if unversioned.ends_with("/attach") {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.unwrap();
            io.write_all(&got).await.unwrap();
            io.write_all(b"|closed").await.unwrap();
            io.shutdown().await.unwrap();
        });
        let mut response = Response::new(forward::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert("connection", "Upgrade".parse().unwrap());
        response
            .headers_mut()
            .insert("upgrade", "tcp".parse().unwrap());
        return Ok(response);
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    calls.lock().unwrap().push((method.clone(), target, json));
    let answer = |status: StatusCode, body: Value| {
        let mut response = Response::new(forward::full(body.to_string()));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert("api-version", "1.41".parse().unwrap());
        Ok(response)
    };
    match (method, unversioned.as_str()) {
        (_, "/_ping") => answer(StatusCode::OK, json!("OK")),
        (_, "/version") => answer(
            StatusCode::OK,
            json!({"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "20.10.24"}),
        ),
        (Method::POST, "/containers/create") => {
            answer(StatusCode::CREATED, json!({"Id": ID, "Warnings": []}))
        }
        (Method::GET, p) if p.ends_with("/json") => answer(
            StatusCode::OK,
            json!({
                "Id": ID,
                "Config": {"Env": ["PATH=/bin", "CALICO_IP=192.168.1.1"]},
                "NetworkSettings": {"IPAddress": "", "Networks": {"none": {}}},
            }),
        ),
        (Method::DELETE, _) => answer(StatusCode::NO_CONTENT, Value::Null),
        (Method::GET, "/events") => {
            let chunks = events
                .lock()
                .unwrap()
                .pop_front()
                .expect("an events stream");
            let stream = futures::stream::unfold(chunks, |mut chunks| async move {
                let chunk = chunks.recv().await?;
                Some((Ok::<_, hyper::Error>(Frame::data(chunk)), chunks))
            });
            Ok(Response::new(StreamBody::new(stream).boxed()))
        }
        _ => answer(StatusCode::NOT_FOUND, json!({"message": "no such call"})),
    }
}

/// A proxy on 127.0.0.1 in front of the fake engine, over an in-memory store with one pool.
async fn proxy(engine: &FakeEngine) -> (SocketAddr, Arc<dyn Datastore>) {
    let store: Arc<dyn Datastore> = Arc::new(MemoryStore::new());
    Resources::new(store.clone())
        .add_pools(&[IpPool::new("192.168.0.0/16".parse().unwrap())])
        .await
        .unwrap();
    let engine_client = Engine::new(&format!("unix://{}", engine.socket.display()));
    let proxy = Proxy::new(Lifecycle::new(store.clone(), "h1"), engine_client).unwrap();
    let config = ProxyConfig {
        listen: Listen::parse("127.0.0.1:0").unwrap(),
        tls_dir: None,
    };
    let listener = bind(&config, &engine.socket).await.unwrap();
    let Listener::Tcp(tcp, _) = &listener else {
        unreachable!()
    };
    let addr = tcp.local_addr().unwrap();
    let (_stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        let _keep = _stop;
        proxy.serve(listener, stopped).await
    });
    (addr, store)
}

/// One call through the proxy; its status, headers and body.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Value,
) -> (StatusCode, hyper::HeaderMap, Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(forward::full(body))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn create_body(env: &[&str], network_mode: &str) -> Value {
    json!({"Image": "busybox", "Env": env, "HostConfig": {"NetworkMode": network_mode}, "Tty": true})
}

#[tokio::test]
async fn pings_pass_with_the_engines_api_version_with_or_without_a_version_prefix() {
    let engine = FakeEngine::start().await;
    let (addr, _) = proxy(&engine).await;
    for path in ["/_ping", "/v1.41/_ping"] {
        for method in [Method::GET, Method::HEAD] {
            let (status, headers, _) = call(addr, method.clone(), path, Value::Null).await;
            assert_eq!(status, StatusCode::OK, "{method} {path}");
            assert_eq!(headers["api-version"], "1.41", "{method} {path}");
        }
    }
}

#[tokio::test]
async fn a_create_without_calico_ip_passes_untouched() {
    let engine = FakeEngine::start().await;
    let (addr, store) = proxy(&engine).await;
    let body = create_body(&["A=1"], "bridge");
    let (status, _, answer) = call(
        addr,
        Method::POST,
        "/v1.41/containers/create?name=x",
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(answer["Id"], ID);
    let calls = engine.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, "/v1.41/containers/create?name=x");
    assert_eq!(calls[0].2, body, "the engine got the body as sent");
    assert!(store
        .list("/calico/ipam/v2/handle/")
        .await
        .unwrap()
        .kvs
        .is_empty());
}

#[tokio::test]
async fn a_create_with_calico_ip_gets_network_mode_none_and_its_address() {
    let engine = FakeEngine::start().await;
    let (addr, store) = proxy(&engine).await;
    let body = create_body(&["CALICO_IP=192.168.1.1"], "default");
    let (status, _, answer) = call(addr, Method::POST, "/v1.41/containers/create", body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let calls = engine.calls();
    let (_, _, sent) = &calls[0];
    assert_eq!(sent["HostConfig"]["NetworkMode"], "none");
    assert_eq!(sent["Tty"], true, "everything else is kept");
    let lifecycle = Lifecycle::new(store.clone(), "h1");
    assert_eq!(
        lifecycle.held(ID).await.unwrap(),
        vec!["192.168.1.1/32".parse::<IpNet>().unwrap()]
    );

    // Inspect shows it where tools look.
    let (status, _, inspect) = call(
        addr,
        Method::GET,
        &format!("/v1.41/containers/{ID}/json"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(inspect["NetworkSettings"]["IPAddress"], "192.168.1.1");
    assert_eq!(inspect["NetworkSettings"]["IPPrefixLen"], 32);

    // The same address again: refused, and that container goes again.
    let body = create_body(&["CALICO_IP=192.168.1.1"], "default");
    let (status, headers, answer) = call(addr, Method::POST, "/containers/create", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers["content-type"], "application/json");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("192.168.1.1 is already in use"),
        "{message}"
    );
    assert!(
        message.contains("the container was not created"),
        "{message}"
    );
    let removed = engine.calls().into_iter().any(|(method, target, _)| {
        method == Method::DELETE && target.contains(ID) && target.contains("force=true")
    });
    assert!(
        removed,
        "the second container was removed: {:?}",
        engine.calls()
    );
    assert_eq!(lifecycle.held(ID).await.unwrap().len(), 1);
}

#[tokio::test]
async fn bad_requests_are_refused_before_the_engine_sees_them() {
    let engine = FakeEngine::start().await;
    let (addr, store) = proxy(&engine).await;
    for (env, mode, expected) in [
        (
            vec!["CALICO_IP=192.168.1"],
            "default",
            "CALICO_IP=192.168.1 is not",
        ),
        (
            vec!["CALICO_IP=auto"],
            "bridge",
            "cannot also have --net=bridge",
        ),
        (
            vec!["CALICO_IP=auto"],
            "host",
            "cannot also have --net=host",
        ),
        (
            vec!["CALICO_IP=auto", "CALICO_PROFILE=a b"],
            "default",
            "CALICO_PROFILE",
        ),
    ] {
        let (status, _, answer) = call(
            addr,
            Method::POST,
            "/containers/create",
            create_body(&env, mode),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{env:?} {mode}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{env:?} {mode}: {message}");
    }
    assert!(engine.calls().is_empty(), "{:?}", engine.calls());
    // Outside every pool: the engine created it, Calico refused, the container went.
    let (status, _, answer) = call(
        addr,
        Method::POST,
        "/containers/create",
        create_body(&["CALICO_IP=10.9.9.9"], "none"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["message"].as_str().unwrap().contains("10.9.9.9"),
        "{answer}"
    );
    assert!(engine.calls().iter().any(|(m, _, _)| m == Method::DELETE));
    assert!(store
        .list("/calico/ipam/v2/handle/")
        .await
        .unwrap()
        .kvs
        .is_empty());
}

#[tokio::test]
async fn streamed_answers_arrive_as_the_engine_sends_them() {
    let engine = FakeEngine::start().await;
    let (chunks, receiver) = mpsc::channel(4);
    engine.events.lock().unwrap().push_back(receiver);
    let (addr, _) = proxy(&engine).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /v1.41/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    chunks
        .send(Bytes::from_static(b"first-event"))
        .await
        .unwrap();
    // The first chunk reaches the client while the engine still holds the stream open.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first-event") {
        let mut buffer = [0u8; 1024];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    chunks
        .send(Bytes::from_static(b"second-event"))
        .await
        .unwrap();
    drop(chunks);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("second-event"));
}

#[tokio::test]
async fn an_upgraded_call_is_spliced_byte_for_byte_both_ways() {
    let engine = FakeEngine::start().await;
    let (addr, _) = proxy(&engine).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1.41/containers/x/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: localhost\r\n\
              Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Every byte value, then a half-close: the engine sees the end of input and answers.
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    stream.write_all(&payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed.len(), payload.len() + b"|closed".len());
    assert_eq!(&echoed[..payload.len()], &payload[..]);
    assert!(echoed.ends_with(b"|closed"));
}

#[tokio::test]
async fn beyond_loopback_the_proxy_needs_tls() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    for listen in ["0.0.0.0:2377", "172.17.8.101:2377", "tcp://[::]:2377"] {
        let config = ProxyConfig {
            listen: Listen::parse(listen).unwrap(),
            tls_dir: None,
        };
        let refused = bind(&config, &socket).await.unwrap_err();
        assert!(
            matches!(refused, ProxyError::Insecure { .. }),
            "{listen}: {refused}"
        );
        assert!(
            refused.to_string().contains("root on this host"),
            "{refused}"
        );
    }
    // With a TLS directory that has no certificates: refused too, naming the file.
    let config = ProxyConfig {
        listen: Listen::parse("0.0.0.0:0").unwrap(),
        tls_dir: Some(dir.path().to_path_buf()),
    };
    let refused = bind(&config, &socket).await.unwrap_err().to_string();
    assert!(refused.contains("ca.pem"), "{refused}");
    for listen in ["127.0.0.1:0", "localhost:0", "[::1]:0"] {
        let config = ProxyConfig {
            listen: Listen::parse(listen).unwrap(),
            tls_dir: None,
        };
        assert!(config.check().is_ok(), "{listen}");
    }
}

#[tokio::test]
async fn a_unix_socket_takes_the_engine_sockets_owner_group_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let engine = dir.path().join("docker.sock");
    let _engine = std::os::unix::net::UnixListener::bind(&engine).unwrap();
    std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o660)).unwrap();
    let path = dir.path().join("proxy.sock");
    let config = ProxyConfig {
        listen: Listen::parse(&format!("unix://{}", path.display())).unwrap(),
        tls_dir: None,
    };
    let listener = bind(&config, &engine).await.unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), std::fs::metadata(&engine).unwrap().uid());
    drop(listener);
    // A file that is not a socket is not the proxy's to replace.
    let file = dir.path().join("file");
    std::fs::write(&file, "keep").unwrap();
    let config = ProxyConfig {
        listen: Listen::Unix(file.clone()),
        tls_dir: None,
    };
    assert!(bind(&config, &engine).await.is_err());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

#[test]
fn listen_addresses_parse_as_docker_writes_them() {
    assert_eq!(
        Listen::parse("localhost:2377").unwrap(),
        Listen::Tcp("127.0.0.1:2377".parse().unwrap())
    );
    assert_eq!(
        Listen::parse("tcp://0.0.0.0:2377").unwrap(),
        Listen::Tcp("0.0.0.0:2377".parse().unwrap())
    );
    assert_eq!(
        Listen::parse("unix:///run/calico/docker.sock").unwrap(),
        Listen::Unix("/run/calico/docker.sock".into())
    );
    for bad in [
        "2377",
        "localhost",
        "unix://relative",
        "host:port",
        "example.com:2377",
    ] {
        assert!(Listen::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn networking_none_keeps_everything_else() {
    let mut config = json!({"Image": "busybox", "NetworkingConfig": {"EndpointsConfig": {}}});
    networking_none(&mut config).unwrap();
    assert_eq!(config["HostConfig"]["NetworkMode"], "none");
    assert_eq!(config["Image"], "busybox");
    assert!(config.get("NetworkingConfig").is_none());
    let mut config = json!({"HostConfig": {"NetworkMode": "default"},
        "NetworkingConfig": {"EndpointsConfig": {"frontend": {}}}});
    let refused = networking_none(&mut config).unwrap_err();
    assert!(refused.contains("frontend"), "{refused}");
}

#[test]
fn inspect_shows_both_families_and_the_mac() {
    let mut inspect = json!({"NetworkSettings": {"IPAddress": "", "Networks": {"none": {}}}});
    let networking = Networking {
        nets: vec![
            "192.168.1.6/32".parse().unwrap(),
            "fd80::6/128".parse().unwrap(),
        ],
        mac: Some("ee:01:02:03:04:05".into()),
    };
    show_networking(&mut inspect, &networking);
    let settings = &inspect["NetworkSettings"];
    assert_eq!(settings["IPAddress"], "192.168.1.6");
    assert_eq!(settings["Gateway"], "169.254.1.1");
    assert_eq!(settings["GlobalIPv6Address"], "fd80::6");
    assert_eq!(settings["GlobalIPv6PrefixLen"], 128);
    assert_eq!(settings["MacAddress"], "ee:01:02:03:04:05");
    assert_eq!(settings["Networks"], json!({"none": {}}));
}

/// A CA, and a certificate it signed for `name`: (CA PEM, certificate PEM, key PEM).
fn signed(ca: &(rcgen::Certificate, rcgen::KeyPair), name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn authority() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap(), key)
}

/// A TLS client: trusts `ca_pem`, and shows `identity` (certificate, key) if given.
fn tls_client(ca_pem: &str, identity: Option<(&str, &str)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A ping over TLS; the answer's first line, or the error.
async fn tls_ping(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

#[tokio::test]
async fn tls_takes_only_clients_with_a_certificate_the_ca_signed() {
    let engine = FakeEngine::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = authority();
    let (server_cert, server_key) = signed(&ca, "localhost");
    std::fs::write(dir.path().join("ca.pem"), ca.0.pem()).unwrap();
    std::fs::write(dir.path().join("cert.pem"), server_cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), server_key).unwrap();
    let store: Arc<dyn Datastore> = Arc::new(MemoryStore::new());
    let engine_client = Engine::new(&format!("unix://{}", engine.socket.display()));
    let proxy = Proxy::new(Lifecycle::new(store, "h1"), engine_client).unwrap();
    // Beyond loopback is allowed with certificates; the test reaches it on 127.0.0.1.
    let config = ProxyConfig {
        listen: Listen::parse("0.0.0.0:0").unwrap(),
        tls_dir: Some(dir.path().to_path_buf()),
    };
    let listener = bind(&config, &engine.socket).await.unwrap();
    let Listener::Tcp(tcp, _) = &listener else {
        unreachable!()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], tcp.local_addr().unwrap().port()));
    let (_stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        let _keep = _stop;
        proxy.serve(listener, stopped).await
    });

    let (cert, key) = signed(&ca, "client");
    let answer = tls_ping(addr, &tls_client(&ca.0.pem(), Some((&cert, &key)))).await;
    assert_eq!(answer.as_deref(), Ok("HTTP/1.1 200 OK"));
    // No certificate, or one another CA signed: no answer.
    let other = authority();
    let (stranger, stranger_key) = signed(&other, "client");
    for connector in [
        tls_client(&ca.0.pem(), None),
        tls_client(&ca.0.pem(), Some((&stranger, &stranger_key))),
    ] {
        let refused = tls_ping(addr, &connector).await;
        assert!(
            refused.as_ref().map_or(true, |line| !line.contains("200")),
            "{refused:?}"
        );
    }
}
