//! The kernel and kernelspec routes: `/api`, `/api/kernelspecs`, `/kernelspecs/…`,
//! `/api/kernels…` (REST and the channels WebSocket), `/metrics`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::wsframe::{Framing, V1_PROTOCOL};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::request::{AppState, json_body, optional_str};
use super::{access, delivery};
use crate::bridge;

pub(super) async fn api_info() -> Response {
    let v = env!("CARGO_PKG_VERSION");
    axum::Json(json!({"version": v, "gateway_version": v})).into_response()
}

pub(super) async fn list_specs(State(st): State<AppState>) -> Response {
    let specs = st.kernels.specs().await;
    let all: serde_json::Map<String, Value> = specs
        .iter()
        .map(|s| (s.name.clone(), s.model(&st.base_url)))
        .collect();
    axum::Json(json!({"default": specs.default_name(), "kernelspecs": all})).into_response()
}

pub(super) async fn get_spec(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let specs = st.kernels.specs().await;
    let spec = specs.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Kernel spec {name} not found"),
        )
    })?;
    Ok(axum::Json(spec.model(&st.base_url)).into_response())
}

pub(super) async fn spec_resource(
    State(st): State<AppState>,
    Path((name, resource)): Path<(String, String)>,
) -> ApiResult {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No resource {resource:?} for kernelspec {name:?}"),
        )
    };
    let path = st
        .kernels
        .specs()
        .await
        .get(&name)
        .and_then(|s| s.resource(&resource))
        .ok_or_else(not_found)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| not_found())?;
    let mime = match path.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("js") => "application/javascript",
        Some("css") => "text/css",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, mime)], bytes).into_response())
}

pub(super) async fn metrics(State(st): State<AppState>) -> Response {
    let body = st.kernels.metrics_text();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub(super) async fn list_kernels(State(st): State<AppState>) -> Response {
    let models: Vec<Value> = st.kernels.list().iter().map(|k| k.model()).collect();
    axum::Json(Value::Array(models)).into_response()
}

pub(super) async fn start_kernel(State(st): State<AppState>, body: Bytes) -> ApiResult {
    let body = json_body(&body)?;
    let started = async {
        let name = optional_str(&body, "name")?.filter(|n| !n.is_empty());
        let kernel = st.kernels.start(name, body.get("env")).await?;
        let location = format!("{}api/kernels/{}", st.base_url, kernel.id);
        ApiResult::Ok(delivery::created(
            &st.kernels,
            &kernel.id,
            &location,
            &kernel.model(),
        ))
    }
    .await;
    // The access log names the user the kernel is for, whether or not it started.
    Ok(access::acted_for(
        started.into_response(),
        access::kernel_username(&body),
    ))
}

pub(super) async fn get_kernel(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    Ok(axum::Json(st.kernels.get(&id)?.model()).into_response())
}

pub(super) async fn delete_kernel(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    st.kernels.shutdown(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn interrupt_kernel(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
    st.kernels.interrupt(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn restart_kernel(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
    let kernel = st.kernels.restart(&id).await?;
    Ok(axum::Json(kernel.model()).into_response())
}

pub(super) async fn channels(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> ApiResult {
    let kernel = st.kernels.get(&id)?;
    let ws = ws
        .protocols([V1_PROTOCOL])
        .max_message_size(st.max_message_bytes)
        .max_frame_size(st.max_message_bytes);
    let framing = if ws.selected_protocol().is_some() {
        Framing::V1
    } else {
        Framing::Legacy
    };
    let session_id = query.get("session_id").cloned().unwrap_or_default();
    let tasks = st.kernels.tasks().clone();
    let max = st.max_message_bytes;
    Ok(ws
        .on_failed_upgrade(|e| tracing::warn!("websocket upgrade failed: {e}"))
        .on_upgrade(move |socket| async move {
            // The bridge runs as a tracked task of the gateway, not in the server's own.
            let serve = bridge::serve(socket, kernel, framing, session_id, max, tasks.clone());
            let _ = tasks.spawn(serve).await;
        }))
}
