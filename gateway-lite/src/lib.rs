//! `gateway-lite`: a small gateway that speaks the Jupyter Kernel Gateway REST and WebSocket
//! API and starts kernels through `kernel-launcher`.
//!
//! Jupyter Server (`--gateway-url`) and Enterprise Gateway's clients drive kernels through
//! this API; teams without Kubernetes or YARN should not need all of Enterprise Gateway for
//! it. The pieces, each in its own module, lowest first (a module imports only from those
//! above it in this list, and from `protocol`):
//!
//! - [`config`]: command line and environment, parsed once into typed settings (the TLS
//!   files too, checked into a rustls server configuration).
//! - [`logging`]: the gateway's own log, as text or JSON lines.
//! - [`tasks`]: the tracker every background task runs on, and the one stop signal.
//! - [`metrics`]: Prometheus counters, and the text format.
//! - [`kernelspecs`]: finding kernelspecs (re-read as they change), where each may run, and
//!   turning one into a launcher command line.
//! - [`channels`]: ZeroMQ sockets and messages to a kernel.
//! - [`response`]: the listener that receives launchers' encrypted connection payloads.
//! - [`provisioner`]: where launchers run ([`provisioner::local`], [`provisioner::ssh`],
//!   [`provisioner::docker`]).
//! - [`state`]: the state file a restarted gateway re-attaches its kernels from.
//! - [`kernels`]: the registry, one owner task per kernel, limits, restarts, culling.
//! - [`bridge`]: one WebSocket ⇄ one set of ZeroMQ sockets.
//! - [`sessions`]: the `/api/sessions` store.
//! - [`api`]: the routes, with token check and CORS in front.
//! - [`server`]: connections, bounded, and requests that finish whether or not their client
//!   waits.
//!
//! [`client`] is separate: `gateway-lite run NOTEBOOK`, a client of any Kernel Gateway
//! that runs a notebook's cells on a kernel it starts there (it uses `protocol` only).
//!
//! [`run`] puts them together and is also the shutdown sequence: stop accepting requests,
//! stop or detach every kernel (through its owner), then cancel and join every task.

#![forbid(unsafe_code)]

pub mod api;
pub mod bridge;
pub mod channels;
pub mod client;
pub mod config;
pub mod kernels;
pub mod kernelspecs;
pub mod logging;
pub mod metrics;
pub mod provisioner;
pub mod response;
pub mod server;
pub mod sessions;
pub mod state;
pub mod tasks;
pub mod token;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::payload::PrivateKey;

use crate::config::{Auth, Config, TokenSource};
use crate::kernels::policy::Grace;
use crate::kernels::{Kernels, Launcher, Rules};
use crate::kernelspecs::Catalog;
use crate::provisioner::Provisioners;
use crate::provisioner::docker::Docker;
use crate::provisioner::local::Local;
use crate::provisioner::ssh::Ssh;
use crate::response::ResponseListener;
use crate::tasks::Tasks;

/// How long the gateway's exit waits for its tasks once they are told to stop.
const TASKS_DEADLINE: Duration = Duration::from_secs(10);

/// Size of the gateway's RSA key for launch payloads.
const RSA_BITS: usize = 2048;

/// Runs the gateway until SIGINT or SIGTERM, then shuts every kernel down.
pub async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        ip = %config.ip,
        port = config.port,
        auth = ?config.edge.auth,
        allow_hosts = ?config.edge.allow_hosts,
        allow_origins = ?config.edge.allow_origins,
        tls = config.edge.tls.is_some(),
        base_url = %config.edge.base_url,
        port_range = %config.port_range,
        launcher = %config.launcher.display(),
        launch_timeout = ?config.launch_timeout,
        kernelspec_dirs = ?config.kernelspec_dirs,
        limits = ?config.limits,
        restart_limit = config.restart_limit,
        cull = ?config.cull,
        "starting gateway-lite"
    );
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    raise_open_files_limit();
    channels::relay::check_temp_dir()?;
    let state = state::open_configured(config.state_dir.as_deref(), config.state_dir_source)?;
    let state_dir = state.as_ref().map(|s| s.dir().to_owned());
    let tasks = Tasks::new();
    let key = tasks
        .spawn_blocking(|| PrivateKey::generate(RSA_BITS))
        .await
        .context("key generation task")?
        .context("generating the RSA key for launch payloads")?;
    let response = ResponseListener::start(config.response_ip, key, &tasks)
        .await
        .with_context(|| format!("binding the response listener on {}", config.response_ip))?;
    let roots = kernelspecs::search::spec_roots(&config.kernelspec_dirs, &config.search);
    tracing::info!(dirs = ?roots, "kernelspec directories, in search order (re-read as they change)");
    let specs = Arc::new(Catalog::new(
        roots,
        config.default_kernel_name.clone(),
        config.launcher.clone(),
        tasks.clone(),
    ));
    // The first scan logs every spec, and warns about those whose launches are refused.
    specs.current().await;
    if !config.ssh.hosts.is_empty() {
        tracing::info!(hosts = ?config.ssh.hosts, balancing = ?config.ssh.balancing, ssh_config = ?config.ssh.ssh_config, "remote hosts for DistributedProcessProxy kernelspecs");
    }
    let launcher = Launcher {
        provisioners: Provisioners {
            local: Arc::new(Local {
                kernel_ip: config.kernel_ip,
                base_env: config.kernel_base_env.clone(),
                tasks: tasks.clone(),
            }),
            ssh: Arc::new(Ssh::new(config.ssh.clone(), tasks.clone())),
            docker: Arc::new(Docker::new(config.docker.clone(), tasks.clone())),
        },
        response,
        launcher: config.launcher.clone(),
        timeout: config.launch_timeout,
        runtime_dir: std::env::temp_dir(),
        grace: Grace::default(),
        port_range: config.port_range,
        transport_encryption: config.transport_encryption,
        frame_limits: channels::frame_limits(config.max_message_bytes),
    };
    let rules = Rules {
        limits: config.limits,
        restart_limit: config.restart_limit,
        cull: config.cull,
        log_retention: config.kernel_log_retention,
        pools: config.pools.clone(),
    };
    let kernels = Kernels::open(specs, launcher, rules, state, tasks.clone()).await;
    let state = api::AppState {
        kernels: kernels.clone(),
        sessions: Arc::default(),
        max_message_bytes: config.max_message_bytes,
        base_url: config.edge.base_url.clone(),
    };
    let app = api::router(
        state,
        api::auth::AuthPolicy {
            token: match &config.edge.auth {
                Auth::Token { value, .. } => Some(value.clone()),
                Auth::Off => None,
            },
            allow_hosts: config.edge.allow_hosts.clone(),
            allow_origins: config.edge.allow_origins.clone(),
            https: config.edge.tls.is_some(),
        },
    );
    let listener = tokio::net::TcpListener::bind((config.ip, config.port))
        .await
        .with_context(|| format!("binding {}:{} (--ip/--port)", config.ip, config.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    // One machine-readable line on stdout, so callers using --port 0 learn the port; a
    // token made here is shown once, in the URL, and kept in a private file.
    let query = match &config.edge.auth {
        Auth::Token {
            value,
            source: TokenSource::Generated,
        } => {
            match token::write(value, state_dir.as_deref(), addr.port()) {
                Ok(path) => tracing::info!(file = %path.display(), "generated token written"),
                Err(e) => tracing::warn!("could not write the generated token to a file: {e}"),
            }
            format!("?token={value}")
        }
        Auth::Token { .. } => String::new(),
        Auth::Off => {
            tracing::warn!("--no-auth: every local user and process can run code as this user");
            String::new()
        }
    };
    let mut out = std::io::stdout();
    let scheme = if config.edge.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let base = &config.edge.base_url;
    let _ = writeln!(
        out,
        "gateway-lite listening on {scheme}://{addr}{base}{query}"
    );
    let _ = out.flush();
    let closing = tasks.clone();
    tasks.spawn_until_stopped(async move {
        shutdown_signal().await;
        // WebSockets end and launches in flight are abandoned, so the wait for open requests
        // is short.
        closing.close();
    });
    server::serve(
        listener,
        app,
        tasks.clone(),
        server::Bounds {
            max_connections: config.edge.max_connections,
            header_read_timeout: server::HEADER_READ_TIMEOUT,
        },
        config.edge.tls.clone(),
    )
    .await;
    // No new requests: now every kernel, then every task.
    let stop_kernels = config.shutdown_kernels_on_exit || !kernels.persistent();
    if stop_kernels {
        tracing::info!("shutting down every kernel");
    } else {
        tracing::info!(
            kernels = kernels.list().len(),
            "leaving kernels running for the next gateway (--shutdown-kernels-on-exit stops them)"
        );
    }
    kernels.close(stop_kernels).await;
    let left = tasks.shutdown(TASKS_DEADLINE).await;
    tracing::info!(left, "gateway-lite stopped");
    Ok(())
}

/// Raises the soft limit of open files to the hard one: every kernel holds a few sockets, and
/// idle connections to the listeners must not run the gateway out of descriptors.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "open-files limit raised"),
            Err(e) => tracing::debug!("cannot raise the open-files limit: {e}"),
        },
        Ok(_) => {}
        Err(e) => tracing::debug!("cannot read the open-files limit: {e}"),
    }
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
