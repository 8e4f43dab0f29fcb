//! Stopping one incarnation of a kernel, politely first.
//!
//! A stop asks the kernel (`shutdown_request` on control), then the launcher (the comm
//! port's `{"shutdown":1}`), then signals the launcher's process group (SIGTERM, then
//! SIGKILL), waiting the [`Grace`] between steps and ending as soon as the launcher has
//! exited. Only a kernel's owner stops it.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::comm::CommRequest;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::policy::Grace;
use super::process::Process;
use crate::channels::{self, Channel, KernelEndpoints};
use crate::provisioner::Launched;

/// Stops one incarnation: `shutdown_request` on control, then the comm port's
/// `{"shutdown":1}`, then SIGTERM and SIGKILL of the launcher's group, waiting [`Grace`]
/// between steps and stopping as soon as the launcher has exited.
pub(super) async fn stop(p: &Process, kernel_id: &str, restart: bool, grace: Grace) {
    let ep = &p.endpoints;
    let mut exit = p.launched.exit.clone();
    if exit.borrow().is_some() {
        return;
    }
    let wait = grace.shutdown_request;
    let asked = tokio::time::timeout(wait, async {
        let request = channels::request(
            ep,
            Channel::Control,
            "shutdown_request",
            json!({ "restart": restart }),
            wait,
        );
        tokio::select! {
            r = request => if let Err(e) = r {
                tracing::debug!("shutdown_request: {e}");
            },
            _ = exit.wait_for(Option::is_some) => return,
        }
        let _ = exit.wait_for(Option::is_some).await;
    })
    .await;
    if asked.is_ok() {
        return;
    }
    if let Some(port) = ep.comm_port {
        let req = CommRequest {
            signum: None,
            shutdown: true,
        };
        if let Err(e) = comm_send(ep, port, req, grace.comm_connect).await {
            tracing::debug!("comm port shutdown: {e}");
        }
        if tokio::time::timeout(grace.comm_shutdown, exit.wait_for(Option::is_some))
            .await
            .is_ok()
        {
            return;
        }
    }
    terminate(&p.launched, ep.pgid.map(|g| (g, kernel_id)), grace).await;
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

/// Writes one request to a launcher's comm port and closes (no reply comes): signed with
/// the incarnation's launch secret when it has one, in Enterprise Gateway's plain form
/// otherwise.
pub(super) async fn comm_send(
    ep: &KernelEndpoints,
    port: u16,
    req: CommRequest,
    connect: Duration,
) -> std::io::Result<()> {
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
    let mut s = tokio::time::timeout(connect, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.write_all(&bytes).await?;
    s.shutdown().await?;
    Ok(())
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
