//! `gateway-lite`: a small gateway that speaks the Jupyter Kernel Gateway REST and WebSocket
//! API and starts kernels through `kernel-launcher`.
//!
//! Jupyter Server (`--gateway-url`) and Enterprise Gateway's clients drive kernels through
//! this API; teams without Kubernetes or YARN should not need all of Enterprise Gateway for
//! it. The pieces, each in its own module:
//!
//! - [`config`]: command line and environment, parsed once.
//! - [`kernelspecs`]: finding kernelspecs and turning one into a launcher command line.
//! - [`response`]: the listener that receives launchers' encrypted connection payloads.
//! - [`provisioner`]: where launchers run ([`provisioner::local`], [`provisioner::docker`], ...).
//! - [`kernels`]: the registry and each kernel's lifecycle, limits, restarts, culling.
//! - [`state`]: the state file a restarted gateway re-attaches its kernels from.
//! - [`metrics`]: Prometheus counters and gauges.
//! - [`channels`]: ZeroMQ sockets and messages to a kernel.
//! - [`wsframe`]: the two WebSocket framings of kernel messages.
//! - [`bridge`]: one WebSocket ⇄ one set of ZeroMQ sockets.
//! - [`sessions`]: the `/api/sessions` store.
//! - [`auth`]: token check and CORS.
//! - [`api`]: the routes.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod bridge;
pub mod channels;
pub mod config;
pub mod kernels;
pub mod kernelspecs;
pub mod metrics;
pub mod provisioner;
pub mod response;
pub mod sessions;
pub mod state;
pub mod wsframe;

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use protocol::payload::PrivateKey;

use crate::config::Config;
use crate::kernels::{Grace, Kernels, Launcher};
use crate::kernelspecs::KernelSpecs;
use crate::provisioner::Provisioners;
use crate::provisioner::local::Local;
use crate::response::ResponseListener;
use crate::state::StateStore;

/// Size of the gateway's RSA key for launch payloads.
const RSA_BITS: usize = 2048;

/// Runs the gateway until SIGINT or SIGTERM, then shuts every kernel down.
pub async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        ip = %config.ip,
        port = config.port,
        auth = config.auth_token.is_some(),
        launcher = %config.launcher.display(),
        launch_timeout = ?config.launch_timeout,
        kernelspec_dirs = ?config.kernelspec_dirs,
        allow_origin = ?config.allow_origin,
        "starting gateway-lite"
    );
    let state = match &config.state_dir {
        Some(dir) => {
            let store = StateStore::open(dir)?;
            tracing::info!(state_dir = %dir.display(), "kernels are recorded for restarts");
            Some(store)
        }
        None => {
            tracing::info!("no state directory: kernels end with the gateway");
            None
        }
    };
    let key = tokio::task::spawn_blocking(|| PrivateKey::generate(RSA_BITS))
        .await
        .context("key generation task")?
        .context("generating the RSA key for launch payloads")?;
    let response = ResponseListener::start(config.response_ip, key)
        .await
        .with_context(|| format!("binding the response listener on {}", config.response_ip))?;
    let specs = Arc::new(KernelSpecs::discover(
        &config.kernelspec_dirs,
        &config.search,
        config.default_kernel_name.as_deref(),
    ));
    for spec in specs.iter() {
        tracing::info!(name = %spec.name, wrapped = !spec.runs_launcher(), "kernelspec");
    }
    let kernels = Arc::new(Kernels::new(
        specs,
        Launcher {
            provisioners: Provisioners {
                local: Arc::new(Local {
                    kernel_ip: config.kernel_ip,
                }),
                ssh: Some(Arc::new(provisioner::ssh::Ssh::new(config.ssh.clone()))),
                docker: Some(Arc::new(provisioner::docker::Docker::new(
                    config.docker.clone(),
                ))),
            },
            response,
            launcher: config.launcher.clone(),
            timeout: config.launch_timeout,
            runtime_dir: std::env::temp_dir(),
            grace: Grace::default(),
        },
        config.policy.clone(),
        state,
    ));
    kernels.restore().await;
    kernels.spawn_tasks();
    let state = api::AppState {
        kernels: kernels.clone(),
        sessions: Arc::default(),
        max_message_bytes: config.max_message_bytes,
    };
    let app = api::router(
        state,
        auth::AuthPolicy {
            token: config.auth_token.clone(),
            allow_origin: config.allow_origin.clone(),
        },
    );
    let listener = tokio::net::TcpListener::bind((config.ip, config.port))
        .await
        .with_context(|| format!("binding {}:{} (--ip/--port)", config.ip, config.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    // One machine-readable line on stdout, so callers using --port 0 learn the port.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "gateway-lite listening on http://{addr}/");
    let _ = out.flush();
    // Nagle's algorithm would hold small WebSocket frames back for up to ~40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY failed: {e}");
        }
    });
    let stopping = kernels.clone();
    let shutdown_kernels = config.shutdown_kernels_on_exit;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            if shutdown_kernels || !stopping.persistent() {
                tracing::info!("shutting down every kernel");
                stopping.shutdown_all().await;
            } else {
                tracing::info!(
                    kernels = stopping.list().len(),
                    "leaving kernels running for the next gateway (--shutdown-kernels-on-exit stops them)"
                );
            }
        })
        .await
        .context("serving HTTP")?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
