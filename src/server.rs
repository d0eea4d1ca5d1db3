//! `run`'s HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive), `/readyz` (a policy is loaded and the last pass reached
//! Mixpanel and every sink).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// The last pass reached Mixpanel and every sink.
    pub ready: AtomicBool,
}

/// Binds `addr` and serves until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let h = health.clone();
                async move {
                    if h.ready.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: the last pass did not reach Mixpanel or a sink\n",
                        )
                            .into_response()
                    }
                }
            }),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "The metrics and health server stopped.");
        }
    });
    Ok((local, task))
}
