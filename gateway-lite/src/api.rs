//! The REST and WebSocket routes of the Jupyter Kernel Gateway API.
//!
//! These are the routes Jupyter Server's `--gateway-url` client and Enterprise Gateway's
//! clients call (`eg-contract.md` §8), with EG's status codes and JSON error bodies
//! `{"reason", "message"}`. Handlers only translate between HTTP and the registry in
//! [`crate::kernels`]; request bodies are parsed here by hand so that bad JSON is a JSON 400,
//! not a framework's plain-text rejection. One deliberate difference from EG: an unknown
//! kernelspec name is 404, not 500.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::auth::{self, AuthPolicy};
use crate::bridge;
use crate::kernels::{KernelError, Kernels};
use crate::sessions::{Session, Sessions};
use crate::wsframe::{Framing, V1_PROTOCOL};

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The kernels.
    pub kernels: Arc<Kernels>,
    /// The sessions.
    pub sessions: Arc<Sessions>,
    /// WebSocket message size limit.
    pub max_message_bytes: usize,
}

/// An HTTP error with EG's JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let reason = self.status.canonical_reason().unwrap_or("Error");
        let body = json!({"reason": reason, "message": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<KernelError> for ApiError {
    fn from(e: KernelError) -> Self {
        let status = match &e {
            KernelError::NoSuchSpec(_) | KernelError::NoSuchKernel(_) => StatusCode::NOT_FOUND,
            KernelError::BadEnv(_) => StatusCode::BAD_REQUEST,
            KernelError::NotRunning(_) => StatusCode::CONFLICT,
            KernelError::Limit(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!("{e}");
        }
        ApiError::new(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Builds the router, with authentication and CORS in front.
pub fn router(state: AppState, policy: AuthPolicy) -> Router {
    Router::new()
        .route("/api", get(api_info))
        .route("/api/", get(api_info))
        .route("/api/kernelspecs", get(list_specs))
        .route("/api/kernelspecs/{name}", get(get_spec))
        .route("/kernelspecs/{name}/{*resource}", get(spec_resource))
        .route("/api/kernels", get(list_kernels).post(start_kernel))
        .route("/api/kernels/{id}", get(get_kernel).delete(delete_kernel))
        .route(
            "/api/kernels/{id}/interrupt",
            axum::routing::post(interrupt_kernel),
        )
        .route(
            "/api/kernels/{id}/restart",
            axum::routing::post(restart_kernel),
        )
        .route("/api/kernels/{id}/channels", get(channels))
        .route("/metrics", get(metrics))
        .route("/api/sessions", get(list_sessions).post(create_session))
        .route(
            "/api/sessions/{id}",
            get(get_session).patch(patch_session).delete(delete_session),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(policy),
            auth::layer,
        ))
}

/// Parses an optional JSON object body.
fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "invalid JSON in the request body: {e}"
        ))),
    }
}

fn optional_str<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("\"{key}\" must be a string"))),
    }
}

async fn api_info() -> Response {
    let v = env!("CARGO_PKG_VERSION");
    axum::Json(json!({"version": v, "gateway_version": v})).into_response()
}

async fn list_specs(State(st): State<AppState>) -> Response {
    let specs = st.kernels.specs();
    let all: serde_json::Map<String, Value> = specs
        .iter()
        .map(|s| (s.name.clone(), s.model("/")))
        .collect();
    axum::Json(json!({"default": specs.default_name(), "kernelspecs": all})).into_response()
}

async fn get_spec(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let spec = st.kernels.specs().get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Kernel spec {name} not found"),
        )
    })?;
    Ok(axum::Json(spec.model("/")).into_response())
}

async fn spec_resource(
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

async fn metrics(State(st): State<AppState>) -> Response {
    let body = st.kernels.metrics.render(&st.kernels.list());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn list_kernels(State(st): State<AppState>) -> Response {
    let models: Vec<Value> = st.kernels.list().iter().map(|k| k.model()).collect();
    axum::Json(Value::Array(models)).into_response()
}

async fn start_kernel(State(st): State<AppState>, body: Bytes) -> ApiResult {
    let body = json_body(&body)?;
    let name = optional_str(&body, "name")?.filter(|n| !n.is_empty());
    let kernel = st.kernels.start(name, body.get("env")).await?;
    let location = format!("/api/kernels/{}", kernel.id);
    let mut resp = (StatusCode::CREATED, axum::Json(kernel.model())).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn get_kernel(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    Ok(axum::Json(st.kernels.get(&id)?.model()).into_response())
}

async fn delete_kernel(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    st.kernels.shutdown(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn interrupt_kernel(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    st.kernels.interrupt(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn restart_kernel(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let kernel = st.kernels.restart(&id).await?;
    Ok(axum::Json(kernel.model()).into_response())
}

async fn channels(
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
    Ok(ws
        .on_failed_upgrade(|e| tracing::warn!("websocket upgrade failed: {e}"))
        .on_upgrade(move |socket| bridge::serve(socket, kernel, framing, session_id)))
}

fn session_model(st: &AppState, s: &Session) -> Value {
    let kernel = st
        .kernels
        .get(&s.kernel_id)
        .map(|k| k.model())
        .unwrap_or(Value::Null);
    s.model(kernel)
}

async fn list_sessions(State(st): State<AppState>) -> Response {
    let models: Vec<Value> = st
        .sessions
        .list(&st.kernels)
        .iter()
        .map(|s| session_model(&st, s))
        .collect();
    axum::Json(Value::Array(models)).into_response()
}

/// `path`, `name` and `type` of a session body, each optional.
type SessionFields = (Option<String>, Option<String>, Option<String>);

/// The `path`, `name` and `type` of a session body (`notebook.path` for old clients).
fn session_fields(body: &Value) -> Result<SessionFields, ApiError> {
    let path = match optional_str(body, "path")? {
        Some(p) => Some(p.to_owned()),
        None => body
            .get("notebook")
            .map(|n| optional_str(n, "path"))
            .transpose()?
            .flatten()
            .map(str::to_owned),
    };
    let name = optional_str(body, "name")?.map(str::to_owned);
    let kind = optional_str(body, "type")?.map(str::to_owned);
    Ok((path, name, kind))
}

/// The kernel a session body asks for: an existing `kernel.id`, or a new kernel of
/// `kernel.name`.
async fn session_kernel(st: &AppState, body: &Value) -> Result<String, ApiError> {
    let k = body.get("kernel").cloned().unwrap_or(json!({}));
    if let Some(id) = optional_str(&k, "id")? {
        return Ok(st.kernels.get(id)?.id.clone());
    }
    let name = optional_str(&k, "name")?.filter(|n| !n.is_empty());
    let env = k.get("env").or_else(|| body.get("env"));
    Ok(st.kernels.start(name, env).await?.id.clone())
}

async fn create_session(State(st): State<AppState>, body: Bytes) -> ApiResult {
    let body = json_body(&body)?;
    let (path, name, kind) = session_fields(&body)?;
    let path = path.ok_or_else(|| ApiError::bad_request("\"path\" is required"))?;
    if let Some(existing) = st.sessions.by_path(&path, &st.kernels) {
        return Ok((
            StatusCode::CREATED,
            axum::Json(session_model(&st, &existing)),
        )
            .into_response());
    }
    let kernel_id = session_kernel(&st, &body).await?;
    let session = Session {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.unwrap_or_default(),
        kind: kind.unwrap_or_else(|| "notebook".into()),
        path,
        kernel_id,
    };
    st.sessions.insert(session.clone());
    let mut resp = (
        StatusCode::CREATED,
        axum::Json(session_model(&st, &session)),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/sessions/{}", session.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn no_session(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("Session not found: {id}"))
}

async fn get_session(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let s = st
        .sessions
        .get(&id, &st.kernels)
        .ok_or_else(|| no_session(&id))?;
    Ok(axum::Json(session_model(&st, &s)).into_response())
}

async fn patch_session(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = json_body(&body)?;
    let mut s = st
        .sessions
        .get(&id, &st.kernels)
        .ok_or_else(|| no_session(&id))?;
    let (path, name, kind) = session_fields(&body)?;
    if let Some(p) = path {
        s.path = p;
    }
    if let Some(n) = name {
        s.name = n;
    }
    if let Some(t) = kind {
        s.kind = t;
    }
    if let Some(k) = body.get("kernel") {
        let wanted_id = optional_str(k, "id")?;
        let wanted_name = optional_str(k, "name")?;
        let current = st.kernels.get(&s.kernel_id).ok();
        let changes = match (wanted_id, wanted_name) {
            (Some(kid), _) => kid != s.kernel_id,
            (None, Some(n)) => current.as_ref().is_none_or(|c| c.name != n),
            (None, None) => false,
        };
        if changes {
            let old = s.kernel_id.clone();
            s.kernel_id = session_kernel(&st, &body).await?;
            if old != s.kernel_id && st.kernels.get(&old).is_ok() {
                st.kernels.shutdown(&old).await?;
            }
        }
    }
    st.sessions.insert(s.clone());
    Ok(axum::Json(session_model(&st, &s)).into_response())
}

async fn delete_session(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let s = st
        .sessions
        .get(&id, &st.kernels)
        .ok_or_else(|| no_session(&id))?;
    st.sessions.remove(&id);
    match st.kernels.shutdown(&s.kernel_id).await {
        Ok(()) | Err(KernelError::NoSuchKernel(_)) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(e.into()),
    }
}
