//! The Docker API proxy (seeds 000 and 002): calico-node serves the Docker API on
//! `localhost:2377` of its host, in front of the host's engine, and networks the containers
//! created through it with `-e CALICO_IP=<ip>|auto` (and `-e CALICO_PROFILE=<name>`).
//!
//! Every call passes to the engine as it comes, streamed both ways; calls the engine upgrades
//! (`docker attach`, `docker exec -it`) are spliced byte for byte, so they work through the
//! proxy (the original's Powerstrip broke them). The proxy has a part in four calls only
//! ([`routes`]): create (network mode none, the address taken), start and restart (the
//! interface and endpoint once the engine has started the container), inspect (the answer shows
//! the Calico address) and remove (the addresses go back). Containers without `CALICO_IP` pass
//! through untouched. What Calico refuses reaches the client as a Docker API error
//! (`{"message": …}`), which the CLI prints, and leaves nothing behind.
//!
//! **Whoever reaches the proxy has the engine's full power: root on this host.** It listens on
//! loopback unless told otherwise, and beyond loopback only with TLS client certificates
//! ([`tls`]), as Docker's own TCP socket; on a unix socket it takes the engine socket's owner,
//! group and mode.

mod containers;
mod forward;
pub mod routes;
mod tls;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use calico_workload::{Lifecycle, WorkloadError};

use crate::engine::Engine;
pub use containers::{wanted, Containers, Networking, Wanted, ENV_IP, ENV_PROFILE, INTERFACE};
use forward::{api_error, full, read_whole, with_json_body, Body, Upstream};
use routes::Route;

/// Where seed 000 finds the proxy.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2377";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "refusing to serve the Docker API proxy on {listen} without TLS: whoever reaches it has \
         the Docker engine's full power (root on this host). Listen on loopback \
         ({DEFAULT_LISTEN}) or a unix socket (unix:///PATH), or give a directory with ca.pem, \
         cert.pem and key.pem so only clients with a certificate signed by that CA get in."
    )]
    Insecure { listen: String },
    #[error("'{0}' is not a place to listen: give HOST:PORT, tcp://HOST:PORT or unix:///PATH")]
    BadListen(String),
    #[error("cannot listen on {listen} for the Docker API proxy: {reason}")]
    Listen { listen: String, reason: String },
    #[error("cannot use {path} for the proxy's TLS: {reason}")]
    Tls { path: String, reason: String },
    #[error("the Docker API proxy needs the engine's unix socket, but DOCKER_HOST is {0}")]
    EngineNotUnix(String),
}

/// Where the proxy listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl Listen {
    /// `HOST:PORT` (`localhost` is 127.0.0.1), `tcp://HOST:PORT` or `unix:///PATH`.
    pub fn parse(text: &str) -> Result<Listen, ProxyError> {
        let bad = || ProxyError::BadListen(text.to_string());
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        let hostport = text.strip_prefix("tcp://").unwrap_or(text);
        let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = match host {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            host => host.parse().map_err(|_| bad())?,
        };
        Ok(Listen::Tcp(SocketAddr::new(ip, port)))
    }
}

/// How the proxy is served.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Listen,
    /// ca.pem, cert.pem and key.pem: TLS with client certificates.
    pub tls_dir: Option<PathBuf>,
}

impl ProxyConfig {
    /// Refuses what would hand the engine to anyone who can reach this host.
    pub fn check(&self) -> Result<(), ProxyError> {
        match (&self.listen, &self.tls_dir) {
            (Listen::Tcp(addr), None) if !addr.ip().is_loopback() => Err(ProxyError::Insecure {
                listen: addr.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// A bound proxy socket.
pub enum Listener {
    Tcp(tokio::net::TcpListener, Option<tokio_rustls::TlsAcceptor>),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listener::Tcp(l, tls) => write!(f, "Tcp({:?}, tls: {})", l.local_addr(), tls.is_some()),
            Listener::Unix(_, path) => write!(f, "Unix({})", path.display()),
        }
    }
}

/// The engine's socket path, from `DOCKER_HOST` as the engine client read it.
pub fn engine_socket(engine: &Engine) -> Result<PathBuf, ProxyError> {
    engine
        .host()
        .strip_prefix("unix://")
        .map(PathBuf::from)
        .ok_or_else(|| ProxyError::EngineNotUnix(engine.host().to_string()))
}

/// Binds the proxy's socket (after [`ProxyConfig::check`]), so a bad configuration fails
/// calico-node's start rather than later.
pub async fn bind(config: &ProxyConfig, engine_socket: &Path) -> Result<Listener, ProxyError> {
    config.check()?;
    let failed = |reason: String| ProxyError::Listen {
        listen: config.listen.to_string(),
        reason,
    };
    let tls = config.tls_dir.as_deref().map(tls::acceptor).transpose()?;
    match &config.listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| failed(e.to_string()))?;
            Ok(Listener::Tcp(listener, tls))
        }
        Listen::Unix(path) => {
            if tls.is_some() {
                return Err(failed(
                    "TLS is for TCP; a unix socket is guarded by its owner, group and mode".into(),
                ));
            }
            // A socket left by an earlier run; anything else at the path is not ours.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    return Err(failed(format!(
                        "{} exists and is not a socket",
                        path.display()
                    )));
                }
                std::fs::remove_file(path).map_err(|e| failed(e.to_string()))?;
            }
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|e| failed(e.to_string()))?;
            let engine = std::fs::metadata(engine_socket).map_err(|e| {
                failed(format!(
                    "cannot read the engine socket {}: {e}",
                    engine_socket.display()
                ))
            })?;
            std::os::unix::fs::chown(path, Some(engine.uid()), Some(engine.gid()))
                .and_then(|()| {
                    std::fs::set_permissions(
                        path,
                        std::fs::Permissions::from_mode(engine.mode() & 0o777),
                    )
                })
                .map_err(|e| {
                    let _ = std::fs::remove_file(path);
                    failed(e.to_string())
                })?;
            Ok(Listener::Unix(listener, path.clone()))
        }
    }
}

/// The proxy of one host.
#[derive(Debug)]
pub struct Proxy {
    upstream: Upstream,
    containers: Arc<Containers>,
}

impl Proxy {
    pub fn new(lifecycle: Lifecycle, engine: Engine) -> Result<Arc<Proxy>, ProxyError> {
        Self::with_containers(Containers::new(lifecycle, engine))
    }

    /// A proxy for these containers (see [`Containers::tell_when_rewired`]).
    pub fn with_containers(containers: Containers) -> Result<Arc<Proxy>, ProxyError> {
        let socket = engine_socket(containers.engine())?;
        Ok(Arc::new(Proxy {
            upstream: Upstream::new(&socket),
            containers: Arc::new(containers),
        }))
    }

    pub fn containers(&self) -> Arc<Containers> {
        self.containers.clone()
    }

    /// Serves until `shutdown`, and follows the engine's events meanwhile.
    pub async fn run(self: Arc<Self>, listener: Listener, shutdown: watch::Receiver<bool>) {
        let follower = tokio::spawn(self.containers().follow(shutdown.clone()));
        self.serve(listener, shutdown).await;
        let _ = follower.await;
    }

    /// Accepts connections until `shutdown`; each is served on a task of its own.
    pub async fn serve(self: Arc<Self>, listener: Listener, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(?listener, engine = %self.upstream.socket().display(), "Docker API proxy listening");
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = accept(&listener) => match accepted {
                    Ok(Accepted::Plain(stream)) => { tokio::spawn(self.clone().connection(stream)); }
                    Ok(Accepted::Tls(stream, acceptor)) => {
                        let proxy = self.clone();
                        tokio::spawn(async move {
                            match acceptor.accept(stream).await {
                                Ok(stream) => proxy.connection(stream).await,
                                Err(e) => tracing::info!(error = %e, "refused a proxy client without a valid certificate"),
                            }
                        });
                    }
                    Ok(Accepted::Unix(stream)) => { tokio::spawn(self.clone().connection(stream)); }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a proxy connection");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
            }
        }
        if let Listener::Unix(_, path) = &listener {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn connection<I>(self: Arc<Self>, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request| {
            let proxy = self.clone();
            async move { Ok::<_, Infallible>(proxy.handle(request).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "proxy connection ended");
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        match Route::of(request.method(), request.uri().path()) {
            Route::Create => self.create(request).await,
            Route::Start(id) => self.start(&id, request).await,
            Route::Inspect(_) => self.inspect(request).await,
            Route::Remove(id) => self.remove(&id, request).await,
            Route::Other => self.upstream.pass(request).await,
        }
    }

    /// `POST /containers/create`: a container with `CALICO_IP` gets network mode none, and
    /// its address once the engine has created it; if the address cannot be had, the
    /// container goes again and the client is told why.
    async fn create(&self, request: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let bytes = match read_whole(body).await {
            Ok(bytes) => bytes,
            Err(e) => return api_error(StatusCode::BAD_REQUEST, &e),
        };
        let mut config: Value = match serde_json::from_slice(&bytes) {
            Ok(config) => config,
            // The engine says what is wrong with it.
            Err(_) => return self.send(Request::from_parts(parts, full(bytes))).await,
        };
        let env = env_of(&config["Env"]);
        let wanted = match wanted(&env) {
            Ok(Some(wanted)) => wanted,
            Ok(None) => return self.send(Request::from_parts(parts, full(bytes))).await,
            Err(message) => return api_error(StatusCode::BAD_REQUEST, &message),
        };
        if let Err(message) = networking_none(&mut config) {
            return api_error(StatusCode::BAD_REQUEST, &message);
        }
        let body = serde_json::to_vec(&config).expect("JSON values serialize");
        parts.headers.remove(TRANSFER_ENCODING);
        parts.headers.insert(CONTENT_LENGTH, body.len().into());
        let request = Request::from_parts(parts, full(body));
        let (parts, answer) = match self.answer_whole(request, StatusCode::CREATED).await {
            Ok(answered) => answered,
            Err(response) => return response,
        };
        let id = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v["Id"].as_str().map(String::from))
            .unwrap_or_default();
        match self.containers.created(&id, &wanted).await {
            Ok(record) => {
                tracing::info!(container = %id, endpoint = %record.key.endpoint_id,
                    "container created with a Calico address");
                Response::from_parts(parts, full(answer))
            }
            Err(e) => {
                let undone = match self.containers.engine().remove_container(&id).await {
                    Ok(_) => "the container was not created".to_string(),
                    Err(undo) => format!("removing the container {id} failed too: {undo}"),
                };
                api_error(status_of(&e), &format!("Calico: {e} ({undone})"))
            }
        }
    }

    /// `POST /containers/{id}/start|restart`: once the engine has started it, a Calico
    /// container gets its interface and endpoint before the client hears back. If that fails,
    /// the container is stopped again, so none runs half-wired.
    async fn start(&self, id: &str, request: Request<Incoming>) -> Response<Body> {
        let response = self.upstream.pass(request).await;
        if !matches!(
            response.status(),
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        ) {
            return response;
        }
        match self.containers.started(id).await {
            Ok(_) => response,
            Err(e) => {
                let stopped = match self.containers.engine().kill_container(id).await {
                    Ok(()) => "it was stopped again".to_string(),
                    Err(kill) => format!("stopping it failed too: {kill}"),
                };
                api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("Calico could not network container {id}: {e} ({stopped})"),
                )
            }
        }
    }

    /// `GET /containers/{id}/json`: a Calico container shows its Calico address where tools
    /// look for a container's address (`NetworkSettings.IPAddress`).
    async fn inspect(&self, request: Request<Incoming>) -> Response<Body> {
        let (parts, bytes) = match self.answer_whole(request, StatusCode::OK).await {
            Ok(answered) => answered,
            Err(response) => return response,
        };
        let Ok(mut inspect) = serde_json::from_slice::<Value>(&bytes) else {
            return Response::from_parts(parts, full(bytes));
        };
        let env = env_of(&inspect["Config"]["Env"]);
        let id = inspect["Id"].as_str().unwrap_or_default().to_string();
        if !matches!(wanted(&env), Ok(Some(_))) || id.is_empty() {
            return Response::from_parts(parts, full(bytes));
        }
        match self.containers.networking(&id).await {
            Ok(networking) => {
                show_networking(&mut inspect, &networking);
                with_json_body(parts, &inspect)
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "cannot read a container's networking for inspect");
                Response::from_parts(parts, full(bytes))
            }
        }
    }

    /// `DELETE /containers/{id}`: once the engine has removed it, its endpoint and addresses
    /// go before the client hears back.
    async fn remove(&self, id_or_name: &str, request: Request<Incoming>) -> Response<Body> {
        let id = match self.containers.engine().container(id_or_name).await {
            Ok(Some(info)) => Some(info.id),
            _ => None,
        };
        let response = self.upstream.pass(request).await;
        if let (Some(id), true) = (id, response.status().is_success()) {
            self.containers.removed(&id).await;
        }
        response
    }

    /// Sends a call and reads the answer whole if it has the `expected` status; any other
    /// answer, or a failure, is what the client gets as it is.
    async fn answer_whole<B>(
        &self,
        request: Request<B>,
        expected: StatusCode,
    ) -> Result<(hyper::http::response::Parts, bytes::Bytes), Response<Body>>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let response = self
            .upstream
            .send(request)
            .await
            .map_err(|e| api_error(StatusCode::BAD_GATEWAY, &e))?;
        if response.status() != expected {
            return Err(response.map(http_body_util::BodyExt::boxed));
        }
        let (parts, body) = response.into_parts();
        let bytes = read_whole(body)
            .await
            .map_err(|e| api_error(StatusCode::BAD_GATEWAY, &e))?;
        Ok((parts, bytes))
    }

    async fn send(&self, request: Request<Body>) -> Response<Body> {
        match self.upstream.send(request).await {
            Ok(response) => response.map(http_body_util::BodyExt::boxed),
            Err(e) => api_error(StatusCode::BAD_GATEWAY, &e),
        }
    }
}

/// A container's environment (`Env` of a create request, `Config.Env` of an inspect).
fn env_of(env: &Value) -> Vec<String> {
    env.as_array()
        .map(|vars| {
            vars.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// How a refusal reaches the client: the user's mistake, or Calico's trouble.
fn status_of(error: &WorkloadError) -> StatusCode {
    match error {
        WorkloadError::Datastore(_) => StatusCode::SERVICE_UNAVAILABLE,
        WorkloadError::Wire(_) | WorkloadError::Incomplete { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A Calico container has Calico's network only: network mode none. Asking for another
/// network as well is refused (seed 002: "You may not specify the --net parameter").
fn networking_none(config: &mut Value) -> Result<(), String> {
    if !config["HostConfig"].is_object() {
        config["HostConfig"] = Value::Object(Default::default());
    }
    let mode = config["HostConfig"]["NetworkMode"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !matches!(mode.as_str(), "" | "default" | "none") {
        return Err(format!(
            "{ENV_IP} gives the container its network from Calico, so it cannot also have \
             --net={mode}: leave --net out"
        ));
    }
    let networks: Vec<String> = config["NetworkingConfig"]["EndpointsConfig"]
        .as_object()
        .map(|e| e.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(other) = networks
        .iter()
        .find(|n| !matches!(n.as_str(), "default" | "none"))
    {
        return Err(format!(
            "{ENV_IP} gives the container its network from Calico, so it cannot also join \
             network {other}"
        ));
    }
    config["HostConfig"]["NetworkMode"] = Value::from("none");
    if let Some(object) = config.as_object_mut() {
        object.remove("NetworkingConfig");
    }
    Ok(())
}

/// Writes a container's Calico addresses into an inspect answer's `NetworkSettings`.
fn show_networking(inspect: &mut Value, networking: &Networking) {
    use calico_dataplane::workload::{GATEWAY_V4, GATEWAY_V6};
    if !inspect["NetworkSettings"].is_object() {
        inspect["NetworkSettings"] = Value::Object(Default::default());
    }
    let settings = &mut inspect["NetworkSettings"];
    if let Some(v4) = networking.nets.iter().find(|n| n.addr().is_ipv4()) {
        settings["IPAddress"] = Value::from(v4.addr().to_string());
        settings["IPPrefixLen"] = Value::from(v4.prefix_len());
        settings["Gateway"] = Value::from(GATEWAY_V4.to_string());
    }
    if let Some(v6) = networking.nets.iter().find(|n| n.addr().is_ipv6()) {
        settings["GlobalIPv6Address"] = Value::from(v6.addr().to_string());
        settings["GlobalIPv6PrefixLen"] = Value::from(v6.prefix_len());
        settings["IPv6Gateway"] = Value::from(GATEWAY_V6.to_string());
    }
    if let Some(mac) = &networking.mac {
        settings["MacAddress"] = Value::from(mac.clone());
    }
}

enum Accepted {
    Plain(tokio::net::TcpStream),
    Tls(tokio::net::TcpStream, tokio_rustls::TlsAcceptor),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(listener, tls) => {
            let (stream, _) = listener.accept().await?;
            // Interactive sessions (attach, exec -it) send a keystroke at a time.
            let _ = stream.set_nodelay(true);
            Ok(match tls {
                Some(acceptor) => Accepted::Tls(stream, acceptor.clone()),
                None => Accepted::Plain(stream),
            })
        }
        Listener::Unix(listener, _) => Ok(Accepted::Unix(listener.accept().await?.0)),
    }
}

#[cfg(test)]
mod tests;
