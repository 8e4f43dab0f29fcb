//! The guard in front of every route: who may talk to the gateway, and from where.
//!
//! A gateway runs code as its user, and a web page the user visits is a client too: it can
//! send requests to `127.0.0.1:PORT` (blind, but a `text/plain` POST starts a kernel) and,
//! by rebinding a DNS name it owns to `127.0.0.1`, read the answers. So, for every request,
//! in this order:
//!
//! 1. **`Host`** must be an IP address, `localhost` (or a `*.localhost` name), or a name given
//!    with `--allow-host`: a rebound DNS name is refused (403).
//! 2. `OPTIONS` (CORS preflight) is answered here with 204, with CORS headers only for an
//!    allowed origin.
//! 3. **`Origin`**, when a browser sends one, must be the gateway's own (same host and port;
//!    `https` when the gateway serves TLS, either scheme otherwise, as a TLS-terminating proxy
//!    may stand in front) or one given with `--allow-origin`, for a WebSocket upgrade and
//!    every request that is not a GET or HEAD (403 otherwise). Clients that are not browsers
//!    send none.
//! 4. **The token** (`Authorization: token T`, `Bearer T`, or `?token=T` since browsers
//!    cannot set headers on WebSockets), compared in constant time; 401 without it, as
//!    Enterprise Gateway's `TokenAuthorizationMixin`. Off only with `--no-auth`, which the
//!    configuration allows on loopback only.
//! 5. **Bodies** of POST, PUT and PATCH must be `application/json` (415 otherwise), so no
//!    form or `text/plain` request from a page can start anything. A body without any
//!    `Content-Type` is accepted from clients that are not browsers (no `Origin`): Enterprise
//!    Gateway's own client sends its JSON that way.
//!
//! Responses to an allowed cross origin carry `Access-Control-Allow-Origin`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use protocol::signed::same;

use super::error::ApiError;

/// What the guard checks.
#[derive(Debug, Clone, Default)]
pub struct AuthPolicy {
    /// The token, when one is required.
    pub token: Option<String>,
    /// Host names allowed besides IP literals and localhost; `*` allows any.
    pub allow_hosts: Vec<String>,
    /// Origins allowed besides the gateway's own; `*` allows any.
    pub allow_origins: Vec<String>,
    /// The gateway serves TLS: its own origin is `https://…` only.
    pub https: bool,
}

/// The middleware.
pub async fn layer(State(policy): State<Arc<AuthPolicy>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    if let Some(h) = host.as_deref()
        && !host_allowed(h, &policy.allow_hosts)
    {
        tracing::warn!(host = h, path = req.uri().path(), "403: Host not allowed");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host {h:?} is not allowed (DNS-rebinding protection); start gateway-lite with --allow-host {}",
                host_name(h)
            ),
        )
        .into_response();
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(|o| o.trim_end_matches('/').to_ascii_lowercase());
    let cross = origin
        .as_deref()
        .filter(|o| !same_origin(o, host.as_deref(), policy.https));
    let cors = cross.filter(|o| origin_allowed(o, &policy.allow_origins));
    if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if let Some(o) = cors {
            preflight(req.headers(), r.headers_mut());
            allow(r.headers_mut(), o, &policy.allow_origins);
        }
        return r;
    }
    let upgrade = headers
        .get(header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if let Some(o) = cross
        && cors.is_none()
        && (upgrade || changes)
    {
        tracing::warn!(origin = o, method = %req.method(), path = req.uri().path(), "403: cross-origin request refused");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Origin {o:?} may not use this gateway; start gateway-lite with --allow-origin {o}"
            ),
        )
        .into_response();
    }
    if let Some(t) = policy.token.as_deref()
        && !authorized(&req, t)
    {
        tracing::info!(method = %req.method(), path = req.uri().path(), "401: missing or wrong token");
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid token").into_response();
    }
    if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && has_body(req.headers())
        && !is_json(req.headers())
        && (req.headers().contains_key(header::CONTENT_TYPE) || origin.is_some())
    {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request bodies must be JSON: send Content-Type: application/json",
        )
        .into_response();
    }
    let cors = cors.map(str::to_owned);
    let mut resp = next.run(req).await;
    if let Some(o) = cors {
        allow(resp.headers_mut(), &o, &policy.allow_origins);
    }
    resp
}

/// The host name of a `Host` value (without port or brackets).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether `host` (a `Host` header, lower case) may be used: an IP address, localhost, or an
/// allowed name.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host);
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.iter().any(|a| a == "*" || a == name || a == host)
}

/// Whether `origin` (lower case, no trailing slash) is the gateway's own: its host and port
/// are those of the request's `Host`, and its scheme is `https` for a gateway serving TLS
/// (`https`), `http` or `https` otherwise (TLS may end at a proxy in front).
fn same_origin(origin: &str, host: Option<&str>, https: bool) -> bool {
    let Some(host) = host else { return false };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme {
        "http" if !https => ":80",
        "https" => ":443",
        _ => return false,
    };
    rest == host || format!("{rest}{default}") == host || rest == format!("{host}{default}")
}

/// Whether a cross origin may use the API.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    origin != "null" && allowed.iter().any(|a| a == "*" || a == origin)
}

fn allow(headers: &mut HeaderMap, origin: &str, allowed: &[String]) {
    let value = if allowed.iter().any(|a| a == "*") {
        HeaderValue::from_static("*")
    } else {
        match HeaderValue::from_str(origin) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

fn preflight(req: &HeaderMap, resp: &mut HeaderMap) {
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

fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| t == "application/json")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let none: Vec<String> = Vec::new();
        for ok in [
            "127.0.0.1:8888",
            "127.0.0.1",
            "[::1]:8888",
            "10.1.2.3:80",
            "localhost:8888",
            "lab.localhost",
        ] {
            assert!(host_allowed(ok, &none), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8888",
            "localhost.evil.example",
        ] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        assert!(host_allowed("gw.example:8888", &["gw.example".into()]));
        assert!(host_allowed("anything", &["*".into()]));
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("a.b:8888"), "a.b");
    }

    #[test]
    fn origins() {
        // (origin, Host, same origin for a plain-HTTP gateway, for a TLS one)
        let cases = [
            ("https://127.0.0.1:8888", Some("127.0.0.1:8888"), true, true),
            ("https://gw.example", Some("gw.example:443"), true, true),
            ("https://gw.example:443", Some("gw.example"), true, true),
            ("https://gw.example:8443", Some("gw.example"), false, false),
            ("https://evil.example", Some("127.0.0.1:8888"), false, false),
            ("http://127.0.0.1:8888", Some("127.0.0.1:8888"), true, false),
            ("http://gw.example:80", Some("gw.example"), true, false),
            ("http://gw.example", Some("gw.example:80"), true, false),
            ("http://evil.example", Some("127.0.0.1:8888"), false, false),
            ("ftp://127.0.0.1:8888", Some("127.0.0.1:8888"), false, false),
            ("null", Some("127.0.0.1:8888"), false, false),
            ("https://127.0.0.1:8888", None, false, false),
        ];
        for (origin, host, plain, tls) in cases {
            assert_eq!(same_origin(origin, host, false), plain, "{origin} {host:?}");
            assert_eq!(
                same_origin(origin, host, true),
                tls,
                "{origin} {host:?} (TLS)"
            );
        }
        let allowed = vec!["https://lab.example".to_owned()];
        assert!(origin_allowed("https://lab.example", &allowed));
        assert!(!origin_allowed("https://evil.example", &allowed));
        assert!(!origin_allowed("null", &["*".to_owned()]));
    }

    #[test]
    fn bodies() {
        let mut h = HeaderMap::new();
        assert!(!has_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!has_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(has_body(&h));
        assert!(!is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(is_json(&h));
    }
}
