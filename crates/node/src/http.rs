//! calico-node's HTTP endpoint on a local port (axum): `/metrics` (Prometheus text) and
//! `/health` (200 once in sync and the last dataplane update succeeded, else 503 with the
//! reason: not in sync yet, the datastore unavailable, or a failed dataplane update).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                ([(header::CONTENT_TYPE, OPENMETRICS)], m.render())
            }),
        )
        .route(
            "/health",
            get(|State(m): State<Arc<Metrics>>| async move {
                match m.health() {
                    Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics or /health\n").into_response() })
        .with_state(metrics)
}

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    if let Err(e) = axum::serve(listener, router(metrics)).await {
        tracing::error!(error = %e, "the /metrics and /health endpoint failed");
    }
}
