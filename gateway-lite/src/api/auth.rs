//! Token authentication and CORS, as one middleware in front of every route.
//!
//! When a token is configured, every request except `OPTIONS` must carry it as
//! `Authorization: token <T>` (Jupyter Server's gateway client sends this; `Bearer` is
//! accepted too) or `?token=<T>` (browsers cannot set headers on WebSockets); otherwise the
//! answer is 401 with a JSON error, as Enterprise Gateway's `TokenAuthorizationMixin`.
//! The comparison is constant-time. `OPTIONS` (CORS preflight) is answered here with 204.
//! With `--allow-origin`, responses carry `Access-Control-Allow-Origin`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// What the middleware checks.
#[derive(Debug, Clone, Default)]
pub struct AuthPolicy {
    /// The token, when required.
    pub token: Option<String>,
    /// `Access-Control-Allow-Origin` value.
    pub allow_origin: Option<String>,
}

/// The middleware.
pub async fn layer(State(policy): State<Arc<AuthPolicy>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        preflight(req.headers(), r.headers_mut(), &policy);
        r
    } else if policy
        .token
        .as_deref()
        .is_some_and(|t| !authorized(&req, t))
    {
        tracing::info!(method = %req.method(), path = req.uri().path(), "401: missing or wrong token");
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid token").into_response()
    } else {
        next.run(req).await
    };
    if let Some(allowed) = &policy.allow_origin {
        let value = if allowed == "*" {
            HeaderValue::from_static("*")
        } else if origin
            .as_ref()
            .is_some_and(|o| o.as_bytes() == allowed.as_bytes())
        {
            origin.unwrap_or(HeaderValue::from_static(""))
        } else {
            return resp;
        };
        resp.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    resp
}

fn preflight(req: &HeaderMap, resp: &mut HeaderMap, policy: &AuthPolicy) {
    if policy.allow_origin.is_none() {
        return;
    }
    resp.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
    );
    let headers = req
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static("Authorization, Content-Type"));
    resp.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, headers);
}

fn authorized(req: &Request, token: &str) -> bool {
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, value) = v.trim().split_once(' ')?;
            (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
                .then(|| value.trim())
        });
    if from_header.is_some_and(|t| same(t.as_bytes(), token.as_bytes())) {
        return true;
    }
    Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| {
            q.0.get("token")
                .map(|t| same(t.as_bytes(), token.as_bytes()))
        })
        .unwrap_or(false)
}

/// Constant-time equality (the length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
