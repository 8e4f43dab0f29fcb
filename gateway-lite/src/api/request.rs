//! What every handler shares: the application state, and the parsers of request bodies.

use std::sync::Arc;

use axum::body::Bytes;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::kernels::Kernels;
use crate::sessions::Sessions;

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The kernels.
    pub kernels: Kernels,
    /// The sessions.
    pub sessions: Arc<Sessions>,
    /// WebSocket message size limit.
    pub max_message_bytes: usize,
    /// The path prefix of every route, starting and ending with `/` (`/` for none).
    pub base_url: String,
}

/// Parses an optional JSON object body.
pub(super) fn json_body(body: &Bytes) -> Result<Value, ApiError> {
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

pub(super) fn optional_str<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("\"{key}\" must be a string"))),
    }
}
