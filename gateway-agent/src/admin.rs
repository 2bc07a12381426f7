//! The admin endpoint: `/healthz`, `/readyz`, `/metrics`, `/debug/status`, `/debug/model`.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;
use tokio::sync::{Mutex, watch};

use crate::{dataplane::Dataplane, snapshot::Snapshot};

/// What the handlers read.
#[derive(Clone)]
struct AdminState {
    dataplane: Arc<Mutex<Dataplane>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    sources: Vec<Arc<dyn crate::metrics::MetricsSource>>,
}

/// Binds `addr` and serves the admin routes until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    dataplane: Arc<Mutex<Dataplane>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    sources: Vec<Arc<dyn crate::metrics::MetricsSource>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/status", get(debug_status))
        .route("/debug/model", get(debug_model))
        .route("/debug/dataplane", get(debug_dataplane))
        .with_state(AdminState {
            dataplane,
            snapshots,
            sources,
        });
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
    let generation = state.snapshots.borrow().generation;
    let dp = state.dataplane.lock().await;
    let attached: Vec<String> = dp
        .attachments()
        .iter()
        .map(|a| format!("{} {}", a.interface, a.mode))
        .collect();
    (
        StatusCode::OK,
        format!(
            "ready: generation {generation}; attached: [{}]\n",
            attached.join(", ")
        ),
    )
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let stats = state.dataplane.lock().await.stats();
    match stats {
        Ok(stats) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            crate::metrics::render(stats, &state.sources),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading counters: {e:#}\n"),
        )
            .into_response(),
    }
}

/// Every object's status, as `gateway-agent check --output json` prints it, plus file errors.
async fn debug_status(State(state): State<AdminState>) -> impl IntoResponse {
    let snap = state.snapshots.borrow().clone();
    let items: serde_json::Value = serde_json::from_str(&gateway_model::check::render(
        &snap.statuses,
        gateway_model::check::Format::Json,
    ))
    .unwrap_or_default();
    let errors: Vec<String> = snap.file_errors.iter().map(ToString::to_string).collect();
    Json(json!({ "generation": snap.generation, "items": items, "fileErrors": errors }))
}

/// The compiled model as JSON.
async fn debug_model(State(state): State<AdminState>) -> impl IntoResponse {
    let snap = state.snapshots.borrow().clone();
    Json(json!({ "generation": snap.generation, "model": &*snap.model }))
}

/// What the kernel programs are attached to, with program ids.
async fn debug_dataplane(State(state): State<AdminState>) -> impl IntoResponse {
    let dp = state.dataplane.lock().await;
    let attachments: Vec<serde_json::Value> = dp
        .attachments()
        .iter()
        .map(|a| json!({"interface": a.interface, "mode": a.mode.to_string(), "programId": a.program_id}))
        .collect();
    Json(json!({ "attachments": attachments }))
}
