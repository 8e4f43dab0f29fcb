//! The session routes, `/api/sessions…`: the notebook-path ↔ kernel association Jupyter
//! clients keep (the store is [`crate::sessions`]).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::delivery;
use super::error::{ApiError, ApiResult};
use super::request::{AppState, json_body, optional_str};
use crate::kernels::KernelError;
use crate::sessions::Session;

fn session_model(st: &AppState, s: &Session) -> Value {
    let kernel = st
        .kernels
        .get(&s.kernel_id)
        .map(|k| k.model())
        .unwrap_or(Value::Null);
    s.model(kernel)
}

pub(super) async fn list_sessions(State(st): State<AppState>) -> Response {
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
/// `kernel.name`. The flag says whether the kernel is new.
async fn session_kernel(st: &AppState, body: &Value) -> Result<(String, bool), ApiError> {
    let k = body.get("kernel").cloned().unwrap_or(json!({}));
    if let Some(id) = optional_str(&k, "id")? {
        return Ok((st.kernels.get(id)?.id.clone(), false));
    }
    let name = optional_str(&k, "name")?.filter(|n| !n.is_empty());
    let env = k.get("env").or_else(|| body.get("env"));
    Ok((st.kernels.start(name, env).await?.id.clone(), true))
}

pub(super) async fn create_session(State(st): State<AppState>, body: Bytes) -> ApiResult {
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
    let (kernel_id, new_kernel) = session_kernel(&st, &body).await?;
    let session = Session {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.unwrap_or_default(),
        kind: kind.unwrap_or_else(|| "notebook".into()),
        path,
        kernel_id,
    };
    st.sessions.insert(session.clone());
    let location = format!("{}api/sessions/{}", st.base_url, session.id);
    let model = session_model(&st, &session);
    if new_kernel {
        // A session whose kernel is shut down is gone from the listing too.
        return Ok(delivery::created(
            &st.kernels,
            &session.kernel_id,
            &location,
            &model,
        ));
    }
    let mut resp = (StatusCode::CREATED, axum::Json(model)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn no_session(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("Session not found: {id}"))
}

pub(super) async fn get_session(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let s = st
        .sessions
        .get(&id, &st.kernels)
        .ok_or_else(|| no_session(&id))?;
    Ok(axum::Json(session_model(&st, &s)).into_response())
}

pub(super) async fn patch_session(
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
            s.kernel_id = session_kernel(&st, &body).await?.0;
            if old != s.kernel_id && st.kernels.get(&old).is_ok() {
                st.kernels.shutdown(&old).await?;
            }
        }
    }
    st.sessions.insert(s.clone());
    Ok(axum::Json(session_model(&st, &s)).into_response())
}

pub(super) async fn delete_session(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
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
