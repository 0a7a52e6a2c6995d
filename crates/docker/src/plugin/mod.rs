//! The plugin socket: Docker's libnetwork remote network driver and remote IPAM driver, both
//! as `calico` on one unix socket (`/run/docker/plugins/calico.sock`), over axum.
//!
//! Docker sends every call as `POST /<Interface>.<Method>` with a JSON body (or none) and no
//! Content-Type, so bodies are read as bytes and parsed here. Every answer is JSON: `{}` or the
//! method's answer on success, HTTP 500 with `{"Err": "…"}` on failure (Docker prints
//! `<Method>: <Err>`), and a method we do not implement gets a JSON error too, never a bare
//! 404.

pub mod api;
mod ipam;
mod network;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::driver::Driver;
use api::{Activated, Empty, Failure};

/// What plugin answers are sent as.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// A failed call, with the sentence Docker shows the user.
#[derive(Debug)]
pub struct PluginError(pub String);

impl<E: std::fmt::Display> From<E> for PluginError {
    fn from(error: E) -> Self {
        PluginError(error.to_string())
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let body = serde_json::to_vec(body).expect("answers serialize");
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// Parses a request body: Docker sends none for methods without arguments.
fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, PluginError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| PluginError(format!("malformed request: {e}")))
}

/// Runs one call: parse, handle, answer, and count it.
async fn call<Req, Resp, F, Fut>(
    driver: Arc<Driver>,
    method: &str,
    body: Bytes,
    handler: F,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Arc<Driver>, Req) -> Fut,
    Fut: Future<Output = Result<Resp, PluginError>>,
{
    let started = Instant::now();
    let metrics = driver.metrics.clone();
    let result = match parse::<Req>(&body) {
        Ok(request) => handler(driver, request).await,
        Err(e) => Err(e),
    };
    metrics.observe(method, result.is_ok(), started.elapsed().as_secs_f64());
    match result {
        Ok(answer) => {
            tracing::debug!(method, "plugin call answered");
            json(StatusCode::OK, &answer)
        }
        Err(PluginError(err)) => {
            tracing::warn!(method, error = %err, "plugin call refused");
            json(StatusCode::INTERNAL_SERVER_ERROR, &Failure { err })
        }
    }
}

/// One route per method: `route!(router, "NetworkDriver.Join", Driver::join)`.
macro_rules! route {
    ($router:expr, $method:literal, $handler:expr) => {
        $router.route(
            concat!("/", $method),
            post(
                |State(driver): State<Arc<Driver>>, body: Bytes| async move {
                    call(driver, $method, body, $handler).await
                },
            ),
        )
    };
}

async fn activate(_: Arc<Driver>, _: Empty) -> Result<Activated, PluginError> {
    Ok(Activated {
        implements: vec!["NetworkDriver", "IpamDriver"],
    })
}

/// Calls that need no work from a driver of local scope without cluster discovery.
async fn nothing(_: Arc<Driver>, _: Empty) -> Result<Empty, PluginError> {
    Ok(Empty {})
}

pub fn router(driver: Arc<Driver>) -> Router {
    let router = Router::new();
    let router = route!(router, "Plugin.Activate", activate);
    let router = route!(
        router,
        "NetworkDriver.GetCapabilities",
        Driver::capabilities
    );
    let router = route!(
        router,
        "NetworkDriver.CreateNetwork",
        Driver::create_network
    );
    let router = route!(
        router,
        "NetworkDriver.DeleteNetwork",
        Driver::delete_network
    );
    let router = route!(
        router,
        "NetworkDriver.CreateEndpoint",
        Driver::create_endpoint
    );
    let router = route!(
        router,
        "NetworkDriver.DeleteEndpoint",
        Driver::delete_endpoint
    );
    let router = route!(
        router,
        "NetworkDriver.EndpointOperInfo",
        Driver::endpoint_info
    );
    let router = route!(router, "NetworkDriver.Join", Driver::join);
    let router = route!(router, "NetworkDriver.Leave", Driver::leave);
    let router = route!(router, "NetworkDriver.DiscoverNew", nothing);
    let router = route!(router, "NetworkDriver.DiscoverDelete", nothing);
    let router = route!(router, "NetworkDriver.ProgramExternalConnectivity", nothing);
    let router = route!(router, "NetworkDriver.RevokeExternalConnectivity", nothing);
    let router = route!(router, "NetworkDriver.AllocateNetwork", nothing);
    let router = route!(router, "NetworkDriver.FreeNetwork", nothing);
    let router = route!(
        router,
        "IpamDriver.GetCapabilities",
        Driver::ipam_capabilities
    );
    let router = route!(
        router,
        "IpamDriver.GetDefaultAddressSpaces",
        Driver::address_spaces
    );
    let router = route!(router, "IpamDriver.RequestPool", Driver::request_pool);
    let router = route!(router, "IpamDriver.ReleasePool", Driver::release_pool);
    let router = route!(router, "IpamDriver.RequestAddress", Driver::request_address);
    let router = route!(router, "IpamDriver.ReleaseAddress", Driver::release_address);
    router
        .fallback(|uri: Uri| async move {
            let err = format!("the calico plugin does not implement {}", uri.path());
            json(StatusCode::NOT_FOUND, &Failure { err })
        })
        .with_state(driver)
}

/// Serves the plugin socket until `shutdown` turns true.
pub async fn serve(driver: Arc<Driver>, mut shutdown: watch::Receiver<bool>) {
    let socket = driver.config.socket();
    let listener = match bind(&socket) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(socket = %socket.display(), error = %e, "cannot serve the libnetwork plugin");
            return;
        }
    };
    tracing::info!(socket = %socket.display(), "serving the libnetwork network and IPAM drivers");
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = axum::serve(listener, router(driver))
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "the libnetwork plugin socket failed");
    }
}

/// Binds the socket, replacing one left by an agent that stopped.
fn bind(socket: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    tokio::net::UnixListener::bind(socket)
}

#[cfg(test)]
mod tests;
