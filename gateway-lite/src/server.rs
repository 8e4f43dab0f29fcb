//! The HTTP server: accepting connections and serving the API on each, with a bound on both
//! and a graceful end.
//!
//! Each accepted connection gets `TCP_NODELAY` (Nagle's algorithm would hold small WebSocket
//! frames back for up to ~40 ms), a deadline for its request headers (and, with TLS, the same
//! deadline for its handshake, which runs in the connection's own task), and a place under
//! the connection cap; a connection over the cap is closed at once. Connections are served by
//! hyper's HTTP/1 with upgrades (the kernel WebSocket) as tracked tasks. When the gateway
//! closes, each connection finishes the request it is on and ends ([`serve`]).
//!
//! **Requests that are carried out once received.** hyper drops a request's future when its
//! connection closes, possibly before the handler ran at all. For a DELETE, an interrupt, a
//! restart or a session change that is the wrong outcome: a notebook tab closed right after
//! sending DELETE must still stop its kernel. So [`Eager`] hands such requests to a tracked
//! task the moment hyper has read them; the connection only waits for the task's answer. A
//! kernel start is the exception, on purpose: when its client leaves, nobody will ever learn
//! the new kernel's id, so dropping the request abandons the launch
//! ([`crate::kernels::Kernels::start`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::api::ApiError;
use crate::tasks::Tasks;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing connection may take to finish its request.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors), so the loop cannot spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The bounds of the server.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Open HTTP connections at once (WebSockets count once upgraded too).
    pub max_connections: usize,
    /// Deadline for a request's headers.
    pub header_read_timeout: Duration,
}

/// Whether `method path` is carried out even if its client leaves (see the module). `path`
/// may be under a base URL (`/prefix/api/kernels`).
pub fn carried(method: &Method, path: &str) -> bool {
    let kernel_start = path.trim_end_matches('/').ends_with("/api/kernels");
    match *method {
        Method::DELETE | Method::PATCH => true,
        Method::POST => !kernel_start,
        _ => false,
    }
}

/// The API as a hyper service that starts carried requests at once (see the module).
#[derive(Clone)]
struct Eager {
    router: Router,
    tasks: Tasks,
    /// The connection's client, handed to the API as `ConnectInfo` (for the access log).
    peer: Option<SocketAddr>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Eager {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut req = req.map(Body::new);
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        let eager = carried(req.method(), req.uri().path());
        // A Router is always ready: its `poll_ready` does nothing.
        let answer = Service::call(&mut self.router.clone(), req);
        if !eager {
            return Box::pin(answer);
        }
        let task = self.tasks.spawn(answer);
        Box::pin(async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Ok(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the request's task failed: {e}"),
                )
                .into_response()),
            }
        })
    }
}

/// Serves `router` on `listener` until the gateway closes ([`Tasks::closing`]), then lets
/// each connection finish its request (bounded) and returns. With `tls`, every connection
/// is TLS, its handshake done in the connection's own task under the header-read deadline.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tasks: Tasks,
    bounds: Bounds,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let tls = tls.map(TlsAcceptor::from);
    let service = Eager {
        router,
        tasks: tasks.clone(),
        peer: None,
    };
    let closing = tasks.closing().clone();
    let mut refused = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            () = closing.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, max = bounds.max_connections, "connection refused: too many open connections");
            }
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY failed: {e}");
        }
        let conn = Connection {
            service: Eager {
                peer: Some(peer),
                ..service.clone()
            },
            bounds,
            closing: closing.clone(),
            peer,
        };
        let tls = tls.clone();
        tasks.spawn(async move {
            match tls {
                None => conn.serve(tcp).await,
                Some(tls) => conn.serve_tls(tls, tcp).await,
            }
            drop(permit);
        });
    }
}

/// One accepted connection, served in its own task (holding its place under the cap).
struct Connection {
    service: Eager,
    bounds: Bounds,
    closing: CancellationToken,
    peer: SocketAddr,
}

impl Connection {
    /// The TLS handshake, then HTTP over it. The handshake runs here, in the connection's
    /// task, never in the accept loop, and has the header-read deadline: a client that opens
    /// the connection and never finishes its handshake holds its place that long at most.
    async fn serve_tls(self, tls: TlsAcceptor, tcp: TcpStream) {
        let peer = self.peer;
        let handshake = tokio::select! {
            r = tokio::time::timeout(self.bounds.header_read_timeout, tls.accept(tcp)) => r,
            () = self.closing.cancelled() => return,
        };
        match handshake {
            Ok(Ok(stream)) => self.serve(stream).await,
            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(%peer, "TLS handshake not finished in time"),
        }
    }

    /// HTTP/1.1 with upgrades on `io` until the client or the gateway closes it.
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.bounds.header_read_timeout);
        let conn = http
            .serve_connection(TokioIo::new(io), self.service)
            .with_upgrades();
        tokio::pin!(conn);
        let done = tokio::select! {
            r = conn.as_mut() => Some(r),
            () = self.closing.cancelled() => None,
        };
        let r = match done {
            Some(r) => r,
            None => {
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(CLOSE_DEADLINE, conn).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        if let Err(e) = r {
            tracing::debug!(peer = %self.peer, "connection ended: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_requests_are_carried_out() {
        assert!(carried(&Method::DELETE, "/api/kernels/k"));
        assert!(carried(&Method::POST, "/api/kernels/k/restart"));
        assert!(carried(&Method::POST, "/api/kernels/k/interrupt"));
        assert!(carried(&Method::PATCH, "/api/sessions/s"));
        assert!(carried(&Method::POST, "/api/sessions"));
        assert!(!carried(&Method::POST, "/api/kernels"));
        assert!(!carried(&Method::POST, "/api/kernels/"));
        assert!(!carried(&Method::GET, "/api/kernels/k"));
    }

    #[test]
    fn under_a_base_url_too() {
        assert!(carried(&Method::DELETE, "/gw/api/kernels/k"));
        assert!(carried(&Method::POST, "/a/b/api/kernels/k/interrupt"));
        assert!(carried(&Method::PATCH, "/gw/api/sessions/s"));
        assert!(carried(&Method::POST, "/gw/api/sessions"));
        assert!(!carried(&Method::POST, "/gw/api/kernels"));
        assert!(!carried(&Method::POST, "/a/b/api/kernels/"));
        assert!(!carried(&Method::GET, "/gw/api/kernels/k"));
    }
}
