//! Stopping one incarnation of a kernel, politely first.
//!
//! A stop asks the kernel (`shutdown_request` on control), then the launcher (the comm
//! port's `{"shutdown":1}`), then signals the launcher's process group (SIGTERM, then
//! SIGKILL), waiting the [`Grace`] between steps and ending as soon as the launcher has
//! exited. Only a kernel's owner stops it.
//!
//! **Acknowledged, then gone.** The caller learns (its `acknowledged` callback) as soon as
//! the kernel is sure to end: its `shutdown_reply` came, or the launcher acknowledged a
//! shutdown on its comm port (`protocol::comm::SHUTDOWN_ACK`, sent alongside the
//! `shutdown_request` when the kernel is not restarting), or it exited. The stop itself goes
//! on until the launcher has exited, killing what does not end; a kernel that acknowledges
//! nothing is reported only then. That is what lets a DELETE answer in milliseconds: an
//! ipykernel takes a good part of a second of CPU to exit, and 100 DELETEs at once that
//! waited for the exits took ~5 s on a 2-core machine.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::comm::{CommRequest, SHUTDOWN_ACK, SHUTDOWN_ACK_MAX};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::policy::Grace;
use super::process::Process;
use crate::channels::{self, Channel, KernelEndpoints};
use crate::provisioner::Launched;

/// Stops one incarnation: `shutdown_request` on control (with the comm port's
/// `{"shutdown":1}` alongside unless `restart`), waiting [`Grace::shutdown_request`] for the
/// reply and again for the exit; then the comm port's `{"shutdown":1}` and
/// [`Grace::comm_shutdown`]; then SIGTERM and SIGKILL of the launcher's group
/// ([`terminate`]). Calls `acknowledged` once, as soon as the kernel is sure to end (see
/// the module notes), at the latest when it has.
pub(super) async fn stop(
    p: &Process,
    kernel_id: &str,
    restart: bool,
    grace: Grace,
    acknowledged: impl FnOnce(),
) {
    let mut acknowledged = Some(acknowledged);
    let mut ack = move || {
        if let Some(f) = acknowledged.take() {
            f();
        }
    };
    let ep = &p.endpoints;
    let mut exit = p.launched.exit.clone();
    if exit.borrow().is_some() {
        return ack();
    }
    let began = Instant::now();
    let comm_port = ep.comm_port.filter(|_| !restart);
    // The launcher is asked first and the kernel right after its answer: a kernel on its way
    // out burns CPU that the acknowledgements of other kernels stopping at the same time
    // need.
    let comm_answered = tokio::sync::Notify::new();
    let request = async {
        if comm_port.is_some() {
            let _ = tokio::time::timeout(grace.comm_connect, comm_answered.notified()).await;
        }
        let wait = grace.shutdown_request.saturating_sub(began.elapsed());
        let content = json!({ "restart": restart });
        channels::request(ep, Channel::Control, "shutdown_request", content, wait).await
    };
    let comm = async {
        match comm_port {
            Some(port) => {
                let answer = comm_shutdown(ep, port, grace.comm_connect).await;
                comm_answered.notify_one();
                answer
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(request, comm);
    let (mut replied, mut comm_sent) = (None, false);
    let (mut request_done, mut comm_done) = (false, comm_port.is_none());
    let deadline = began + grace.shutdown_request;
    loop {
        tokio::select! {
            r = &mut request, if !request_done => {
                request_done = true;
                match r {
                    Ok(_) => {
                        tracing::debug!(kernel_id, ms = began.elapsed().as_secs_f64() * 1e3, "shutdown_reply");
                        replied = Some(Instant::now());
                        ack();
                        break;
                    }
                    Err(e) => tracing::debug!(kernel_id, "shutdown_request: {e}"),
                }
            }
            r = &mut comm, if !comm_done => {
                comm_done = true;
                comm_sent = true;
                match r {
                    Ok(true) => {
                        tracing::debug!(kernel_id, ms = began.elapsed().as_secs_f64() * 1e3, "the launcher acknowledged the shutdown");
                        ack();
                    }
                    Ok(false) => tracing::debug!(kernel_id, "the launcher took the shutdown without acknowledging it"),
                    Err(e) => tracing::debug!(kernel_id, "comm port shutdown: {e}"),
                }
            }
            // Exited; or its follower ended without a report (the gateway is stopping): no
            // exit is coming to wait for.
            _ = exit.wait_for(Option::is_some) => return ack(),
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    // Only an acknowledging kernel gets the time to exit on its own.
    let until = replied.map_or(deadline, |t| t + grace.shutdown_request);
    if tokio::time::timeout_at(until, exit.wait_for(Option::is_some))
        .await
        .is_ok()
    {
        return ack();
    }
    match replied {
        Some(_) => tracing::warn!(
            kernel_id,
            "the kernel acknowledged its shutdown but still runs after {:?}",
            grace.shutdown_request
        ),
        None => tracing::warn!(
            kernel_id,
            "no shutdown_reply within {:?}",
            grace.shutdown_request
        ),
    }
    if let Some(port) = ep.comm_port.filter(|_| !comm_sent) {
        if let Err(e) = comm_shutdown(ep, port, grace.comm_connect).await {
            tracing::debug!(kernel_id, "comm port shutdown: {e}");
        }
        if tokio::time::timeout(grace.comm_shutdown, exit.wait_for(Option::is_some))
            .await
            .is_ok()
        {
            return ack();
        }
    }
    terminate(&p.launched, ep.pgid.map(|g| (g, kernel_id)), grace).await;
    ack();
}

/// Sends `{"shutdown":1}` to the launcher's comm port and reads its answer until the
/// launcher closes the connection: whether it acknowledged (see [`SHUTDOWN_ACK`]). Bounded
/// by `wait` for the connect and again for the answer.
async fn comm_shutdown(ep: &KernelEndpoints, port: u16, wait: Duration) -> std::io::Result<bool> {
    let req = CommRequest {
        signum: None,
        shutdown: true,
    };
    let s = comm_connect(ep, port, req, wait).await?;
    let mut answer = Vec::with_capacity(SHUTDOWN_ACK.len());
    let mut limited = s.take(SHUTDOWN_ACK_MAX as u64);
    let read = limited.read_to_end(&mut answer);
    match tokio::time::timeout(wait, read).await {
        Ok(r) => r?,
        Err(_) => return Ok(false),
    };
    Ok(answer.trim_ascii() == SHUTDOWN_ACK.trim_ascii())
}

/// SIGTERM to the launcher's group, then SIGKILL (of the kernel's group too).
pub(super) async fn terminate(launched: &Launched, kernel_pgid: Option<(i64, &str)>, grace: Grace) {
    let mut exit = launched.exit.clone();
    if exit.borrow().is_some() {
        return;
    }
    launched.control.signal(Signal::SIGTERM).await;
    if tokio::time::timeout(grace.terminate, exit.wait_for(Option::is_some))
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(
        "launcher ignored SIGTERM for {:?}; killing it",
        grace.terminate
    );
    if let Some((pgid, kernel_id)) = kernel_pgid {
        kill_group_of(launched, pgid, kernel_id).await;
    }
    launched.control.signal(Signal::SIGKILL).await;
    let _ = tokio::time::timeout(grace.kill, exit.wait_for(Option::is_some)).await;
}

/// Writes one request to a launcher's comm port and closes (no reply is read): signed with
/// the incarnation's launch secret when it has one, in Enterprise Gateway's plain form
/// otherwise.
pub(super) async fn comm_send(
    ep: &KernelEndpoints,
    port: u16,
    req: CommRequest,
    connect: Duration,
) -> std::io::Result<()> {
    comm_connect(ep, port, req, connect).await.map(drop)
}

/// Connects to a launcher's comm port, writes `req` (signed as [`comm_send`] says) and
/// half-closes: the stream is left for the answer.
async fn comm_connect(
    ep: &KernelEndpoints,
    port: u16,
    req: CommRequest,
    connect: Duration,
) -> std::io::Result<TcpStream> {
    let host = ep.host.as_str();
    let addr: SocketAddr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("host has no address"))?,
    };
    let bytes = match &ep.secret {
        Some(secret) => {
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let nonce = *uuid::Uuid::new_v4().as_bytes();
            protocol::signed::sign(&req, secret.as_bytes(), time, &nonce)
        }
        None => req.to_json(),
    };
    let mut s = tokio::time::timeout(connect, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.write_all(&bytes).await?;
    s.shutdown().await?;
    Ok(s)
}

/// Kills what is left of a kernel whose launcher has exited: a launcher killed with SIGKILL
/// cannot take its kernel down, and the kernel (in its own process group) would run on as
/// an orphan, here or on its SSH host.
pub(super) async fn kill_orphaned_group(p: &Process, kernel_id: &str) {
    if let Some(pgid) = p.endpoints.pgid {
        kill_group_of(&p.launched, pgid, kernel_id).await;
    }
}

async fn kill_group_of(launched: &Launched, pgid: i64, kernel_id: &str) {
    if let Some(pgid) = i32::try_from(pgid).ok().filter(|p| *p > 1) {
        launched.control.kill_group(pgid, kernel_id).await;
    }
}
