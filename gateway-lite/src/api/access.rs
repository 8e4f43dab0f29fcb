//! The access log: one line per HTTP request, on its own target ([`TARGET`]), so an operator
//! can see who asked for what, and filter or ship those lines apart from the rest.
//!
//! The layer sits outside every other one, so refusals (401, 403, 415), unknown endpoints
//! (404) and WebSocket upgrades (101) are logged like any answer. Each line carries the
//! method, the path, the status, the time to the answer in milliseconds, the client's
//! address and the user the request acted for (the `KERNEL_USERNAME` of a kernel start, set
//! by its handler as a [`User`] on the response; `-` otherwise). A request whose client hung
//! up before the answer is logged with status 499, as nginx does.
//!
//! What is never logged: the query string (`?token=` is one way to send the token) and any
//! header (`Authorization` is another). The path and the user come from the client, so they
//! are recorded as tracing string fields, which both log formats quote and escape (no forged
//! lines), and cut at [`MAX_FIELD`] bytes. Nothing reads a body here.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

/// The tracing target of access lines (`GATEWAY_LITE_LOG=info,gateway_lite::access=off`
/// turns them off).
pub const TARGET: &str = "gateway_lite::access";

/// Longest path or user logged, in bytes; longer ones are cut and end with `…`.
pub const MAX_FIELD: usize = 512;

/// Status logged for a request whose client hung up before the answer.
const CLIENT_CLOSED: u16 = 499;

/// The identity a request acted for, put on its response by the handler that knows it.
#[derive(Debug, Clone)]
pub struct User(pub String);

/// The `KERNEL_USERNAME` of a kernel start's JSON body, when it is a string.
pub fn kernel_username(body: &Value) -> Option<User> {
    body.get("env")?
        .get("KERNEL_USERNAME")?
        .as_str()
        .map(|u| User(u.to_owned()))
}

/// `resp`, marked as acting for `user`.
pub fn acted_for(mut resp: Response, user: Option<User>) -> Response {
    if let Some(u) = user {
        resp.extensions_mut().insert(u);
    }
    resp
}

/// The middleware.
pub async fn layer(req: Request, next: Next) -> Response {
    let mut line = Line {
        began: Instant::now(),
        method: req.method().clone(),
        path: capped(req.uri().path()).into_owned(),
        client: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
        done: false,
    };
    let resp = next.run(req).await;
    let user = resp.extensions().get::<User>().map(|u| u.0.as_str());
    line.write(resp.status().as_u16(), user);
    resp
}

/// One request's line, written when its answer is ready, or with 499 if the request is
/// dropped first (the client hung up).
struct Line {
    began: Instant,
    method: Method,
    path: String,
    client: Option<SocketAddr>,
    done: bool,
}

impl Line {
    fn write(&mut self, status: u16, user: Option<&str>) {
        self.done = true;
        let micros = u64::try_from(self.began.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Milliseconds with three decimals.
        let duration_ms = micros as f64 / 1000.0;
        let client = self
            .client
            .map_or_else(|| "-".to_owned(), |c| c.to_string());
        let user = user.map_or(Cow::Borrowed("-"), capped);
        // The method is a validated HTTP token and the client an address, shown as they are;
        // path and user are string fields, quoted and escaped.
        tracing::info!(
            target: TARGET,
            method = %self.method,
            path = self.path.as_str(),
            status,
            duration_ms,
            client = %client,
            user = user.as_ref(),
            "request"
        );
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.done {
            self.write(CLIENT_CLOSED, None);
        }
    }
}

/// `text` cut to at most [`MAX_FIELD`] bytes (on a character boundary), marked when cut.
fn capped(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_FIELD {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        assert_eq!(capped("/api/kernels"), "/api/kernels");
        let long = format!("/{}", "é".repeat(600));
        let cut = capped(&long);
        assert!(cut.len() <= MAX_FIELD + "…".len(), "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(long.starts_with(cut.trim_end_matches('…')));
    }

    #[test]
    fn the_user_is_the_kernel_username_of_the_body() {
        let body = serde_json::json!({"name": "py", "env": {"KERNEL_USERNAME": "ada"}});
        assert_eq!(kernel_username(&body).map(|u| u.0).as_deref(), Some("ada"));
        for none in [
            serde_json::json!({}),
            serde_json::json!({"env": {"KERNEL_USERNAME": 7}}),
            serde_json::json!({"env": "x"}),
        ] {
            assert!(kernel_username(&none).is_none(), "{none}");
        }
    }
}
