//! The gateway as a client sees it: its URL, connections to it (TCP, or TLS with rustls and
//! the `ring` provider, as the gateway's own listener), and the REST calls a run needs.
//!
//! Each call opens its own HTTP/1.1 connection (a run makes a handful), bounded in time and
//! in response size, so a gateway that stalls or floods cannot hang or exhaust the client.
//! The token goes in the `Authorization: token T` header, never in the URL (URLs end up in
//! logs and `ps`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// A connection to the gateway.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// Largest REST response body read.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Longest a REST call other than the kernel start may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a TCP connect plus TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// What went wrong talking to the gateway.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// `--url` cannot be used.
    #[error("--url {url:?}: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong, and what to give.
        why: String,
    },
    /// `--ca-file` cannot be used.
    #[error("--ca-file {path}: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// No connection.
    #[error("cannot connect to {addr}: {why}")]
    Connect {
        /// host:port.
        addr: String,
        /// The cause.
        why: String,
    },
    /// The exchange failed or timed out.
    #[error("{method} {path}: {why}")]
    Exchange {
        /// The method.
        method: &'static str,
        /// The path.
        path: String,
        /// The cause.
        why: String,
    },
    /// The gateway answered with an error status.
    #[error("{method} {path}: the gateway answered {status}: {body}")]
    Status {
        /// The method.
        method: &'static str,
        /// The path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body (the gateway's reason).
        body: String,
    },
}

/// A gateway: where it is and how to authenticate.
#[derive(Clone)]
pub struct Gateway {
    tls: Option<Arc<ClientConfig>>,
    host: String,
    port: u16,
    /// The base path, starting and ending with '/'.
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("tls", &self.tls.is_some())
            .field("host", &self.host)
            .field("port", &self.port)
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Gateway {
    /// Parses `url` (http or https; a path is the gateway's base URL).
    pub fn new(
        url: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<Gateway, HttpError> {
        let bad = |why: &str| HttpError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| bad("not a URL; give http[s]://HOST:PORT[/BASE/]"))?;
        let tls = match uri.scheme_str() {
            Some("http" | "ws") => false,
            Some("https" | "wss") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if uri.query().is_some() {
            return Err(bad(
                "has a query; give the token with --token or GATEWAY_LITE_AUTH_TOKEN instead",
            ));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path();
        let base = format!("/{}/", path.trim_matches('/')).replace("//", "/");
        let tls = if tls {
            Some(Arc::new(client_config(ca_file)?))
        } else {
            None
        };
        Ok(Gateway {
            tls,
            host,
            port,
            base,
            token,
        })
    }

    /// `host:port`, as a Host header and in messages.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL of `path` (relative to the base) with the ws/wss scheme.
    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}{}{path}", self.authority(), self.base)
    }

    /// The `Authorization` header value, if a token is set.
    pub fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("token {t}"))
    }

    /// Opens a connection (TLS if the URL is https).
    pub async fn connect(&self) -> Result<Stream, HttpError> {
        let addr = self.authority();
        let fail = |why: String| HttpError::Connect {
            addr: addr.clone(),
            why,
        };
        let open = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let Some(config) = &self.tls else {
                return Ok(Either::Left(tcp));
            };
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| fail(format!("not a TLS server name: {e}")))?;
            let tls = TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS handshake: {e} (a private CA? give --ca-file)")))?;
            Ok(Either::Right(tls))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| fail(format!("no connection within {CONNECT_TIMEOUT:?}")))?
    }

    /// One REST call: `method` on `path` (relative to the base) with an optional JSON body,
    /// within `timeout`. Returns the parsed JSON body (Null when empty) of a 2xx answer.
    pub async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, HttpError> {
        let full = format!("{}{path}", self.base);
        let fail = |why: String| HttpError::Exchange {
            method,
            path: full.clone(),
            why,
        };
        let exchange = async {
            let stream = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let driver = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(&full)
                .header("host", self.authority())
                .header("accept", "application/json");
            if let Some(a) = self.authorization() {
                req = req.header("authorization", a);
            }
            let payload = match body {
                Some(b) => {
                    req = req.header("content-type", "application/json");
                    Bytes::from(serde_json::to_vec(b).expect("a Value always serializes"))
                }
                None => Bytes::new(),
            };
            let req = req
                .body(Full::new(payload))
                .map_err(|e| fail(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| fail(format!("reading the answer: {e}")))?
                .to_bytes();
            driver.abort();
            if !(200..300).contains(&status) {
                let text = String::from_utf8_lossy(&bytes);
                let body: String = text.chars().take(500).collect();
                return Err(HttpError::Status {
                    method,
                    path: full.clone(),
                    status,
                    body,
                });
            }
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("the answer is not JSON: {e}")))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| fail(format!("no answer within {timeout:?}")))?
    }

    /// `POST /api/kernels`: starts a kernel; returns its id.
    pub async fn start_kernel(
        &self,
        name: Option<&str>,
        env: &serde_json::Map<String, Value>,
        timeout: Duration,
    ) -> Result<String, HttpError> {
        let mut body = serde_json::Map::new();
        if let Some(n) = name {
            body.insert("name".into(), Value::String(n.to_owned()));
        }
        body.insert("env".into(), Value::Object(env.clone()));
        let model = self
            .call("POST", "api/kernels", Some(&Value::Object(body)), timeout)
            .await?;
        model
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| valid_id(id))
            .map(str::to_owned)
            .ok_or_else(|| HttpError::Exchange {
                method: "POST",
                path: format!("{}api/kernels", self.base),
                why: format!("the answer has no usable kernel id: {model}"),
            })
    }

    /// `POST /api/kernels/{id}/interrupt`.
    pub async fn interrupt(&self, id: &str) -> Result<(), HttpError> {
        self.call(
            "POST",
            &format!("api/kernels/{id}/interrupt"),
            None,
            CALL_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// `DELETE /api/kernels/{id}`.
    pub async fn delete(&self, id: &str) -> Result<(), HttpError> {
        self.call("DELETE", &format!("api/kernels/{id}"), None, CALL_TIMEOUT)
            .await
            .map(drop)
    }
}

/// A kernel id as gateways make them (a UUID); anything else is not put into a URL.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The TLS client configuration: the built-in web roots plus `--ca-file`.
fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, HttpError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let ca = |why: String| HttpError::CaFile {
            path: path.display().to_string(),
            why,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca("holds no PEM certificate".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| ca(e.to_string()))?;
        }
    }
    // ring, as the gateway's listener (no aws-lc build); rustls marks it deprecated for its
    // lack of post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Url {
            url: String::new(),
            why: format!("TLS setup: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_base() {
        let g = Gateway::new("http://127.0.0.1:8888", None, None).unwrap();
        assert_eq!(g.authority(), "127.0.0.1:8888");
        assert_eq!(
            g.ws_url("api/kernels/x/channels"),
            "ws://127.0.0.1:8888/api/kernels/x/channels"
        );
        let g = Gateway::new("https://[::1]/gw/", Some("t".into()), None).unwrap();
        assert_eq!(g.ws_url("api"), "wss://[::1]:443/gw/api");
        assert_eq!(g.authorization().as_deref(), Some("token t"));
        assert!(!format!("{g:?}").contains("\"t\""));
        let e = Gateway::new("ftp://h", None, None).unwrap_err().to_string();
        assert!(e.contains("http or https"), "{e}");
        let e = Gateway::new("http://h/?token=x", None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--token"), "{e}");
    }

    #[test]
    fn ids_that_could_change_the_url_are_refused() {
        assert!(valid_id("0b6f2c3e-1d2e-4c5b-9a8b-7c6d5e4f3a2b"));
        assert!(!valid_id("../x"));
        assert!(!valid_id("a?b"));
        assert!(!valid_id(""));
    }
}
