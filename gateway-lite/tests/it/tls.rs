//! TLS and the base URL, end to end: HTTPS and WSS with a token, mutual TLS, a client that
//! never starts its handshake, every route under `--base-url`, and requests under it that are
//! carried out (or abandoned) when their client leaves.
//!
//! The certificates are made here, at test time (a CA, a server certificate for 127.0.0.1
//! and localhost, client certificates), and written to the test's own directory: no key is
//! ever committed. The client is rustls with the ring provider, as the gateway.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{
    self, Close, Gateway, HangUp, KernelClient, Options, parse_response, processes_with_env,
    request_text, wait_no_processes,
};

/// A CA and what it signed, as PEM files in a directory of their own.
struct Pki {
    dir: PathBuf,
}

/// A CA: its certificate (PEM) and the issuer that signs with its key.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A certificate `ca` signs for `names`, for `usage`: (certificate PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, "it");
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// `ca.pem`; `server.pem`/`server-key.pem` (127.0.0.1, localhost); `client.pem`/
    /// `client-key.pem` signed by the CA; `stranger.pem`/`stranger-key.pem` signed by
    /// another CA.
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!("gl-it-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ours = ca("gateway-lite it CA");
        let other = ca("another CA");
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write("ca.pem", &ours.pem);
        let (cert, key) = leaf(
            &ours,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", &cert);
        write("server-key.pem", &key);
        let (cert, key) = leaf(&ours, &["client"], ExtendedKeyUsagePurpose::ClientAuth);
        write("client.pem", &cert);
        write("client-key.pem", &key);
        let (cert, key) = leaf(&other, &["stranger"], ExtendedKeyUsagePurpose::ClientAuth);
        write("stranger.pem", &cert);
        write("stranger-key.pem", &key);
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Gateway options: TLS with the server certificate, then `extra`.
    fn gateway(&self, extra: &[&str]) -> Options {
        let mut args = vec![
            "--certfile".to_owned(),
            self.path("server.pem"),
            "--keyfile".to_owned(),
            self.path("server-key.pem"),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Options {
            token: Some("tls-token"),
            args,
            ..Options::default()
        }
    }

    /// A client trusting the CA, presenting `identity` (`"client"`, `"stranger"`) if any.
    fn client(&self, identity: Option<&str>) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.dir.join("ca.pem")).unwrap())
            .unwrap();
        // The gateway's provider (see its tls module for why ring).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let cert = CertificateDer::from_pem_file(self.dir.join(format!("{name}.pem")));
                let key = PrivateKeyDer::from_pem_file(self.dir.join(format!("{name}-key.pem")));
                builder
                    .with_client_auth_cert(vec![cert.unwrap()], key.unwrap())
                    .unwrap()
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Reply = (u16, HashMap<String, String>, String);

/// A TLS connection to the gateway (the server name checked is 127.0.0.1).
async fn tls_connect(
    port: u16,
    client: &Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
}

/// One HTTPS request (`Connection: close`); an error when the handshake or the exchange
/// fails, or no response comes.
async fn https(
    port: u16,
    client: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&str>,
) -> Result<Reply, String> {
    let exchange = async {
        let mut s = tls_connect(port, client)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let req = request_text(method, path, headers, body.unwrap_or(""), true);
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf).await {
            Ok(_) => {}
            // A peer that closes without close_notify: what came is the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if buf.is_empty() {
            return Err("connection closed without a response".into());
        }
        Ok(parse_response(&buf))
    };
    tokio::time::timeout(support::WAIT, exchange)
        .await
        .map_err(|_| "no answer in time".to_owned())?
}

fn token_header(gw: &Gateway) -> String {
    format!("Authorization: token {}\r\n", gw.token.as_deref().unwrap())
}

/// `https(...)` with the gateway's token; panics unless it gets an answer.
async fn call(gw: &Gateway, client: &Arc<ClientConfig>, method: &str, path: &str) -> Reply {
    call_with(gw, client, method, path, None).await
}

async fn call_with(
    gw: &Gateway,
    client: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    https(gw.port, client, method, path, &token_header(gw), body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", gw.log()))
}

/// A WebSocket over TLS to `path` (under the base URL), with the token and `origin`.
async fn wss(
    gw: &Gateway,
    client: &Arc<ClientConfig>,
    path: &str,
    origin: Option<&str>,
) -> Result<KernelClient, String> {
    let url = format!("wss://127.0.0.1:{}{path}", gw.port);
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert(
        "Authorization",
        format!("token {}", gw.token.as_deref().unwrap())
            .parse()
            .unwrap(),
    );
    if let Some(o) = origin {
        h.insert("Origin", o.parse().unwrap());
    }
    let tls = tls_connect(gw.port, client)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let stream = tokio_tungstenite::MaybeTlsStream::Rustls(tls);
    let (ws, _) = tokio::time::timeout(support::WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .map_err(|_| "websocket handshake in time".to_owned())?
        .map_err(|e| format!("websocket: {e}"))?;
    Ok(KernelClient {
        ws,
        v1: false,
        session: uuid::Uuid::new_v4().to_string(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_the_token_and_no_plain_http() {
    let pki = Pki::new();
    let gw = Gateway::start(pki.gateway(&[]));
    assert_eq!(gw.url, format!("https://127.0.0.1:{}/", gw.port));
    let client = pki.client(None);
    let (status, _, body) = call(&gw, &client, "GET", "/api").await;
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert!(info["version"].is_string(), "{info}");
    let (status, _, _) = https(gw.port, &client, "GET", "/api/kernels", "", None)
        .await
        .unwrap();
    assert_eq!(status, 401, "the token is still required over TLS");

    // Plain HTTP on the TLS port gets no HTTP answer: the connection ends.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let req = request_text("GET", "/api", &token_header(&gw), "", true);
    plain.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(support::WAIT, plain.read_to_end(&mut buf))
        .await
        .expect("the gateway ends a plain-HTTP connection on its TLS port");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        read.is_err() || !text.starts_with("HTTP/"),
        "plain HTTP was answered: {text:?}"
    );
    gw.wait_log("TLS handshake failed").await;
}

/// A client that opens a connection and never sends its ClientHello holds neither the
/// accept loop (others are served meanwhile) nor its place for ever (it is closed after the
/// handshake deadline, the header-read timeout).
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_client_blocks_nobody_and_is_cut_off() {
    let pki = Pki::new();
    let gw = Gateway::start(pki.gateway(&["--max-connections", "16"]));
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let opened = Instant::now();
    let client = pki.client(None);
    for _ in 0..3 {
        let (status, _, _) = call(&gw, &client, "GET", "/api").await;
        assert_eq!(status, 200);
    }
    silent
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut silent, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a handshake never begun gets nothing back");
    // The deadline is 30 s; the bound only tells "cut off" from "held until the read gave up".
    assert!(
        opened.elapsed() < Duration::from_secs(75),
        "{:?}",
        opened.elapsed()
    );
    gw.wait_log("TLS handshake not finished in time").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_wants_a_certificate_of_the_client_ca() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let gw = Gateway::start(pki.gateway(&["--client-ca", &ca]));
    let (status, _, body) = call(&gw, &pki.client(Some("client")), "GET", "/api").await;
    assert_eq!(status, 200, "{body}");
    for (identity, who) in [(None, "no certificate"), (Some("stranger"), "another CA's")] {
        let r = https(
            gw.port,
            &pki.client(identity),
            "GET",
            "/api",
            &token_header(&gw),
            None,
        )
        .await;
        assert!(r.is_err(), "a client with {who} was answered: {r:?}");
    }
    // The token is still required with a good certificate.
    let (status, _, _) = https(
        gw.port,
        &pki.client(Some("client")),
        "GET",
        "/api/kernels",
        "",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
}

/// Every route under the base URL, over TLS: REST, kernelspec resources, the kernel
/// WebSocket (with the same-origin rule taking the scheme into account), and nothing outside.
#[tokio::test(flavor = "multi_thread")]
async fn base_url_over_tls() {
    let pki = Pki::new();
    let gw = Gateway::start(pki.gateway(&["--base-url", "prefix"]));
    assert_eq!(gw.url, format!("https://127.0.0.1:{}/prefix/", gw.port));
    let client = pki.client(None);
    for path in [
        "/prefix/api",
        "/prefix/api/",
        "/prefix/api/kernels",
        "/prefix/metrics",
    ] {
        let (status, _, body) = call(&gw, &client, "GET", path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for path in [
        "/api",
        "/api/kernels",
        "/metrics",
        "/prefix",
        "/other/api",
        "/prefixapi",
    ] {
        let (status, _, body) = call(&gw, &client, "GET", path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _, body) = call(&gw, &client, "GET", "/prefix/api/kernelspecs").await;
    assert_eq!(status, 200, "{body}");
    let specs: Value = serde_json::from_str(&body).unwrap();
    let logo = specs["kernelspecs"]["py"]["resources"]["logo-64x64"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(logo, "/prefix/kernelspecs/py/logo-64x64.png");
    let (status, _, _) = call(&gw, &client, "GET", &logo).await;
    assert_eq!(status, 200);

    let body = json!({"name": "py"}).to_string();
    let (status, headers, model) =
        call_with(&gw, &client, "POST", "/prefix/api/kernels", Some(&body)).await;
    assert_eq!(status, 201, "{model}\n{}", gw.log());
    let id = serde_json::from_str::<Value>(&model).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let kernel = format!("/prefix/api/kernels/{id}");
    assert_eq!(headers.get("location"), Some(&kernel));

    let channels = format!("{kernel}/channels?session_id=s");
    let same = format!("https://127.0.0.1:{}", gw.port);
    let mut c = wss(&gw, &client, &channels, Some(&same))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
    let out = c.execute("1+1").await;
    assert_eq!(
        (out.text.as_str(), out.status.as_str()),
        ("2", "ok"),
        "{out:?}"
    );
    // A page served over plain HTTP from the same host and port is another origin.
    let plain = format!("http://127.0.0.1:{}", gw.port);
    let refused = wss(&gw, &client, &channels, Some(&plain)).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("403")),
        "{:?}",
        refused.err()
    );
    let outside = wss(&gw, &client, &format!("/api/kernels/{id}/channels"), None).await;
    assert!(
        outside.as_ref().is_err_and(|e| e.contains("404")),
        "{:?}",
        outside.err()
    );
    assert_eq!(c.execute("6*7").await.text, "42");

    let (status, _, _) = call(&gw, &client, "DELETE", &kernel).await;
    assert_eq!(status, 204);
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());
}

/// Polls `check` until it holds (bounded by WAIT); panics with what it saw otherwise.
async fn eventually<T: std::fmt::Debug>(what: &str, mut check: impl AsyncFnMut() -> (bool, T)) {
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let (ok, seen) = check().await;
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Under a base URL a DELETE whose client leaves at once is still carried out, and a kernel
/// start whose client leaves is still abandoned (both decided from the prefixed path).
#[tokio::test(flavor = "multi_thread")]
async fn requests_under_a_base_url_whose_client_leaves() {
    let gw = Gateway::start(Options {
        args: vec!["--base-url".into(), "/gw/".into()],
        ..Options::default()
    });
    let leave = |after| HangUp {
        after,
        whole: true,
        connection_close: false,
        close: Close::Fin,
    };
    let (status, model) = gw
        .json("POST", "/gw/api/kernels", Some(r#"{"name":"py"}"#))
        .await;
    assert_eq!(status, 201, "{model}");
    let id = model["id"].as_str().unwrap().to_owned();
    gw.hang_up(
        "DELETE",
        &format!("/gw/api/kernels/{id}"),
        None,
        leave(Duration::ZERO),
    )
    .await;
    eventually("the kernel removed", async || {
        let (status, _) = gw.json("GET", &format!("/gw/api/kernels/{id}"), None).await;
        (status == 404, status)
    })
    .await;
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());

    // A launcher that would wait 120 s for nothing: only the client's leaving ends it early.
    let mark = uuid::Uuid::new_v4().to_string();
    let body =
        json!({"name": "silent", "env": {"KERNEL_MARK": mark, "KERNEL_LAUNCH_TIMEOUT": "120"}});
    let body = body.to_string();
    let env = format!("KERNEL_MARK={mark}");
    let started = gw.hang_up(
        "POST",
        "/gw/api/kernels",
        Some(&body),
        leave(Duration::from_secs(2)),
    );
    let running = eventually("the launcher running", async || {
        let p = processes_with_env(&env);
        (!p.is_empty(), p)
    });
    tokio::join!(started, running);
    eventually("the launcher gone", async || {
        let p = processes_with_env(&env);
        (p.is_empty(), p)
    })
    .await;
}

/// `gateway-lite run` over HTTPS and WSS under a base URL: trusting the test CA with
/// --ca-file it runs the notebook; without it the handshake fails with the fix named, and no
/// kernel is left either way.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_lite_run_over_https_under_a_base_url() {
    let pki = Pki::new();
    let gw = Gateway::start(pki.gateway(&["--base-url", "/gw/"]));
    assert!(
        gw.url.starts_with("https://") && gw.url.ends_with("/gw/"),
        "{}",
        gw.url
    );
    let d = crate::nbrun::dir();
    let nb = crate::nbrun::write_nb(&d, "tls.ipynb", &["print('over tls')"]);
    let nb = nb.to_str().unwrap();
    let ran = crate::nbrun::run(&gw, &[nb, "--ca-file", &pki.path("ca.pem")]).await;
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let out = crate::nbrun::read(&d.join("tls.out.ipynb"));
    assert_eq!(out["cells"][0]["outputs"][0]["text"], json!(["over tls\n"]));
    let client = pki.client(None);
    let (status, _, body) = call(&gw, &client, "GET", "/gw/api/kernels").await;
    assert_eq!((status, body.trim()), (200, "[]"));
    assert!(wait_no_processes(&ran.kernel_id()).await.is_empty());
    let ran = crate::nbrun::run(&gw, &[nb]).await;
    assert_eq!(ran.code, 69, "{}", ran.stderr);
    assert!(ran.stderr.contains("give --ca-file"), "{}", ran.stderr);
    let _ = std::fs::remove_dir_all(&d);
}
