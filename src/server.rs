//! `run`'s HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive), `/readyz` (a policy is loaded and the last pass reached
//! Mixpanel and every sink), `/startupz` (every mirror has held the primary's
//! credential at least once since the start: a sidecar's startup probe, so
//! the app beside it starts with its credential file in place).

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
    /// Every mirror has been up to date at least once since the start.
    pub started: AtomicBool,
}

/// A probe: 200 with `yes` while the flag `which` picks is set, else 503 with `no`.
fn probe(
    health: Arc<Health>,
    which: fn(&Health) -> &AtomicBool,
    yes: &'static str,
    no: &'static str,
) -> axum::routing::MethodRouter {
    axum::routing::get(move || async move {
        if which(&health).load(Ordering::SeqCst) {
            (StatusCode::OK, yes).into_response()
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, no).into_response()
        }
    })
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
            "/startupz",
            probe(
                health.clone(),
                |h| &h.started,
                "started\n",
                "starting: a mirror does not hold the primary's credential yet\n",
            ),
        )
        .route(
            "/readyz",
            probe(
                health,
                |h| &h.ready,
                "ready\n",
                "not ready: the last pass did not reach Mixpanel or a sink\n",
            ),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "The metrics and health server stopped.");
        }
    });
    Ok((local, task))
}
