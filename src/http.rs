//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the process runs)
//! and `/readyz` (every stage has joined its group and reads).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::METRICS;

/// Readiness flags, one per running stage.
#[derive(Clone, Default)]
pub struct Readiness(pub Arc<Vec<(String, Arc<AtomicBool>)>>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.iter().all(|(_, f)| f.load(Ordering::Relaxed))
    }
}

async fn metrics() -> String {
    METRICS.render()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ready): State<Readiness>) -> (StatusCode, String) {
    let detail: String = ready
        .0
        .iter()
        .map(|(name, f)| {
            format!("{name}: {}\n", if f.load(Ordering::Relaxed) { "ready" } else { "starting" })
        })
        .collect();
    if ready.is_ready() { (StatusCode::OK, detail) } else { (StatusCode::SERVICE_UNAVAILABLE, detail) }
}

/// Serves until the returned future is dropped or the listener fails.
pub async fn serve(listen: SocketAddr, ready: Readiness) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ready);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "http: serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await
}
