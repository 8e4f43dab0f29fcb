//! The API's errors: Enterprise Gateway's JSON body `{"reason", "message"}` with its status
//! codes, and how kernel errors map to them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::kernels::KernelError;

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

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
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
            KernelError::BadEnv(_) | KernelError::EncryptionUnsupported { .. } => {
                StatusCode::BAD_REQUEST
            }
            KernelError::NotRunning(_) => StatusCode::CONFLICT,
            KernelError::Cancelled(_) => StatusCode::SERVICE_UNAVAILABLE,
            KernelError::Limit(_) => StatusCode::FORBIDDEN,
            // A permanent property of the spec, not a failure: 501, which Jupyter Server's
            // own sessions API answers for a kernel it cannot start; its gateway client does
            // not retry it (502-504 only) and relays the message, which says what to use
            // instead.
            KernelError::Refused { .. } => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
            tracing::warn!("{e}");
        }
        ApiError::new(status, e.to_string())
    }
}

/// What a handler returns.
pub type ApiResult = Result<Response, ApiError>;
