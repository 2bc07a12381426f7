//! The admin endpoint: `/healthz`, `/readyz`, `/metrics`.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::sync::Mutex;

use crate::dataplane::Dataplane;

/// What the handlers read.
#[derive(Clone)]
struct AdminState {
    dataplane: Arc<Mutex<Dataplane>>,
}

/// Binds `addr` and serves the admin routes until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    dataplane: Arc<Mutex<Dataplane>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { dataplane });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin endpoint on {addr}"))?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    }))
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let dp = state.dataplane.lock().await;
    if dp.attachments().is_empty() {
        (
            StatusCode::OK,
            "ready (no interfaces attached)\n".to_string(),
        )
    } else {
        let list: Vec<String> = dp
            .attachments()
            .iter()
            .map(|a| format!("{} {}", a.interface, a.mode))
            .collect();
        (StatusCode::OK, format!("ready: {}\n", list.join(", ")))
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let stats = state.dataplane.lock().await.stats();
    match stats {
        Ok(stats) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            crate::metrics::render(stats),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading counters: {e:#}\n"),
        )
            .into_response(),
    }
}
