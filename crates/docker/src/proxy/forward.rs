//! Passing calls to the engine: each over a connection of its own to the engine's socket,
//! bodies streamed both ways as they come (logs -f, events, wait, pull, build), and a call the
//! engine upgrades (attach, exec start: `Upgrade: tcp`) spliced byte for byte in both
//! directions until either side closes.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What the proxy answers with: the engine's body streamed, or one of its own.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// The most the proxy reads whole of a body it must change (a create request, an inspect
/// answer). Both are a few kilobytes; the bound only stops a client from making the agent
/// hold an unbounded body in memory.
pub const MAX_EDITED_BODY: usize = 64 << 20;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// An answer in the Docker API's error form, which the CLI prints as
/// `Error response from daemon: <message>`.
pub fn api_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A body read whole, up to [`MAX_EDITED_BODY`].
pub async fn read_whole<B>(body: B) -> Result<Bytes, String>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    Limited::new(body, MAX_EDITED_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| format!("cannot read the body: {e}"))
}

/// The engine, reached on its unix socket.
#[derive(Debug, Clone)]
pub struct Upstream {
    socket: PathBuf,
}

impl Upstream {
    pub fn new(socket: &Path) -> Upstream {
        Upstream {
            socket: socket.to_path_buf(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one call on a new connection; the connection lives as long as its answer (or its
    /// upgrade) needs it.
    pub async fn send<B>(&self, request: Request<B>) -> Result<Response<Incoming>, String>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                format!(
                    "cannot reach the Docker engine at {}: {e}",
                    self.socket.display()
                )
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("cannot talk to the Docker engine: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "engine connection ended");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("the Docker engine did not answer: {e}"))
    }

    /// Passes a call through as it is. An upgraded call is spliced: the client's connection
    /// and the engine's are joined once both have switched protocols.
    pub async fn pass(&self, mut request: Request<Incoming>) -> Response<Body> {
        let upgrade = request
            .headers()
            .contains_key(UPGRADE)
            .then(|| hyper::upgrade::on(&mut request));
        let mut response = match self.send(request).await {
            Ok(response) => response,
            Err(e) => return api_error(StatusCode::BAD_GATEWAY, &e),
        };
        if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (upgrade, response.status()) {
            let engine = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(client, engine));
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, empty());
        }
        response.map(BodyExt::boxed)
    }
}

/// Copies both ways between an upgraded client and engine connection until both are done;
/// a side that finishes writing (stdin closed) is shut down for writing on the other.
async fn splice(client: hyper::upgrade::OnUpgrade, engine: hyper::upgrade::OnUpgrade) {
    let (client, engine) = match tokio::try_join!(client, engine) {
        Ok(both) => both,
        Err(e) => return tracing::debug!(error = %e, "an upgraded call ended before it began"),
    };
    let (mut client, mut engine) = (TokioIo::new(client), TokioIo::new(engine));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut engine).await {
        tracing::debug!(error = %e, "an upgraded call ended");
    }
}

/// A JSON body the proxy rewrote, with its length set again.
pub fn with_json_body(
    mut parts: hyper::http::response::Parts,
    json: &serde_json::Value,
) -> Response<Body> {
    let body = serde_json::to_vec(json).expect("JSON values serialize");
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, full(body))
}
