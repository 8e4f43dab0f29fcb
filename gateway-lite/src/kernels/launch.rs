//! Running one launcher and waiting for its payload.
//!
//! A launch registers a wait with the response listener, has the provisioner start the
//! launcher, and returns as soon as the payload arrives, the launcher exits (the error
//! carries its stderr tail), the launch timeout expires, or the caller gives up (its client
//! went away, the kernel is being shut down, the gateway stops). In every case but success
//! the launcher it started is stopped before the launch returns: an abandoned launch leaves
//! nothing running. A launcher that could not run where it was sent (an unreachable SSH host)
//! is sent elsewhere, within the same timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::net::IpAddr;

use protocol::payload::LaunchReport;
use protocol::ports::PortRange;
use protocol::wire::Signer;

use super::encryption;
use super::error::KernelError;
use super::policy::Grace;
use super::process::Process;
use super::stop;
use crate::channels::KernelEndpoints;
use crate::config::TransportEncryption;
use crate::kernelspecs::{KernelSpec, Placeholders};
use crate::provisioner::{LaunchRequest, Launched, Provisioners};
use crate::response::{Delivery, ResponseListener};

/// Most places one kernel start tries: a launcher that could not be run where it was sent
/// (an unreachable SSH host) is sent elsewhere, up to this many times in all.
const MAX_PLACEMENTS: u32 = 8;

/// What starting a launcher needs.
#[derive(Debug)]
pub struct Launcher {
    /// Where launchers run.
    pub provisioners: Provisioners,
    /// Where payloads arrive.
    pub response: ResponseListener,
    /// The kernel-launcher binary used to wrap plain kernelspecs.
    pub launcher: PathBuf,
    /// Default launch timeout.
    pub timeout: Duration,
    /// Directory for `{connection_file}` in specs that run a launcher themselves.
    pub runtime_dir: PathBuf,
    /// Shutdown waits.
    pub grace: Grace,
    /// Ports launchers may use (`--port-range`); reports outside it are refused.
    pub port_range: PortRange,
    /// `--transport-encryption`.
    pub transport_encryption: TransportEncryption,
    /// Bounds on what kernels may send (from `--max-message-bytes`).
    pub frame_limits: protocol::frame_guard::FrameLimits,
}

/// What one launch is for.
pub(super) struct Job<'a> {
    pub id: &'a str,
    pub spec: &'a KernelSpec,
    pub env: &'a BTreeMap<String, String>,
    pub timeout: Duration,
    pub generation: u64,
    pub log_file: Option<PathBuf>,
}

impl Launcher {
    /// Runs a launcher for `job` and waits for its payload, or until `abandon` completes.
    pub(super) async fn launch(
        &self,
        job: Job<'_>,
        abandon: impl Future<Output = ()>,
    ) -> Result<Process, KernelError> {
        let id = job.id;
        let curve = encryption::ask(self.transport_encryption, job.spec)?;
        let secret = job.spec.authenticated(&self.launcher).then(new_secret);
        let mut pending = self.response.expect(id, secret.clone());
        let connection_file = self.runtime_dir.join(format!("kernel-{id}.json"));
        let connection_file = connection_file.to_string_lossy();
        let response_address = self.response.address();
        let port_range = self.port_range.to_string();
        let fill = Placeholders {
            kernel_id: id,
            response_address: &response_address,
            public_key: self.response.public_key(),
            connection_file: &connection_file,
            port_range: &port_range,
            transport_encryption: curve.map_or("", TransportEncryption::as_str),
        };
        let argv = job.spec.command(&fill, &self.launcher);
        let mut launch_env = job.spec.env.clone();
        launch_env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        launch_env.insert("KERNEL_ID".into(), id.to_owned());
        // The gateway decides about CurveZMQ; a spec's own env does not.
        match curve {
            Some(policy) => {
                launch_env.insert("TRANSPORT_ENCRYPTION".into(), policy.as_str().into());
            }
            None => {
                launch_env.remove("TRANSPORT_ENCRYPTION");
            }
        }
        // The gateway decides how long the launcher gives its kernel (see `Grace`).
        launch_env.insert(
            "KERNEL_LAUNCHER_GRACE_PERIOD".into(),
            format!("{}", self.grace.launcher.as_secs_f64()),
        );
        let launch_error = |e: crate::provisioner::LaunchError| match e {
            // Refused before anything started: the request's fault (400).
            crate::provisioner::LaunchError::Request(message) => KernelError::BadEnv(message),
            e => KernelError::Launch {
                kernel_id: id.to_owned(),
                message: e.to_string(),
            },
        };
        let provisioner = self.provisioners.for_spec(job.spec).map_err(launch_error)?;
        let deadline = tokio::time::Instant::now() + job.timeout;
        tokio::pin!(abandon);
        let mut attempts = 0;
        let (launched, report) = loop {
            attempts += 1;
            let request = LaunchRequest {
                kernel_id: id.to_owned(),
                argv: argv.clone(),
                env: launch_env.clone(),
                secret: secret.clone(),
                log_file: job.log_file.clone(),
            };
            // Starting is short (a spawn, an ssh, two Engine API calls) and not interrupted,
            // so that whatever it started is known and can be stopped.
            let launched = provisioner.launch(request).await.map_err(launch_error)?;
            let mut exit = launched.exit.clone();
            let report = tokio::select! {
                r = &mut pending.report => r.map_err(|_| KernelError::Launch {
                    kernel_id: id.to_owned(),
                    message: "the payload wait was replaced".into(),
                }),
                e = exit.wait_for(Option::is_some) => {
                    let e = e.ok().and_then(|e| *e);
                    if e.is_some_and(|e| e.retry_elsewhere) && attempts < MAX_PLACEMENTS {
                        tracing::warn!(kernel_id = id, attempts, "launching elsewhere: {}", launched.log.text());
                        continue;
                    }
                    let how = e.map(|e| e.to_string()).unwrap_or_default();
                    Err(KernelError::Launch {
                        kernel_id: id.to_owned(),
                        message: format!("The launcher ended ({how}) before reporting its connection info:\n{}", launched.log.text()),
                    })
                }
                () = tokio::time::sleep_until(deadline) => Err(KernelError::Timeout {
                    kernel_id: id.to_owned(),
                    secs: job.timeout.as_secs_f64(),
                    log: launched.log.text(),
                }),
                () = &mut abandon => Err(KernelError::Cancelled(id.to_owned())),
            };
            break (launched, report);
        };
        let endpoints = report.and_then(|d| {
            self.check(id, &d, &launched).inspect_err(|_| {
                self.response
                    .refusals()
                    .mismatch
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })?;
            endpoints(
                id,
                d.report,
                curve,
                launched.host.clone(),
                job.generation,
                secret,
                self.frame_limits,
            )
        });
        let endpoints = match endpoints {
            Ok(ep) => ep,
            Err(e) => {
                if matches!(e, KernelError::Cancelled(_)) {
                    tracing::info!(kernel_id = id, "launch abandoned; stopping its launcher");
                } else {
                    tracing::warn!(kernel_id = id, "{e}");
                }
                stop::terminate(&launched, None, self.grace).await;
                return Err(e);
            }
        };
        let i = &endpoints.info;
        tracing::info!(
            kernel_id = id,
            generation = job.generation,
            shell = i.shell_port,
            iopub = i.iopub_port,
            stdin = i.stdin_port,
            control = i.control_port,
            hb = i.hb_port,
            comm_port = ?endpoints.comm_port,
            pid = ?endpoints.pid,
            transport_encryption = if endpoints.curve.is_some() { "curve" } else { "none" },
            "kernel started"
        );
        Ok(Process {
            launched,
            endpoints: Arc::new(endpoints),
        })
    }
}

/// A fresh per-launch secret: 256 random bits from the OS, as 64 hex digits.
fn new_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Launcher {
    /// Whether a report (its secret already checked by the listener) fits its launch: sent
    /// from where the launcher runs, with every port inside the configured range.
    fn check(&self, id: &str, d: &Delivery, launched: &Launched) -> Result<(), KernelError> {
        let fail = |message: String| KernelError::Launch {
            kernel_id: id.to_owned(),
            message,
        };
        let peer = d.peer.ip();
        let expected: Option<IpAddr> = launched.host.parse().ok();
        // A local launcher reports over loopback or from this host's address facing the
        // listener; a remote one from the address the gateway connects to.
        let local =
            launched.control.is_local() && (peer.is_loopback() || peer == self.response.ip());
        if !local && expected.is_some_and(|e| e != peer) {
            return Err(fail(format!(
                "the connection payload came from {peer}, but the launcher runs at {}; refused",
                launched.host
            )));
        }
        let c = &d.report.connection;
        let ports = [
            c.shell_port,
            c.iopub_port,
            c.stdin_port,
            c.control_port,
            c.hb_port,
        ];
        let outside: Vec<u16> = ports
            .into_iter()
            .chain(d.report.comm_port)
            .filter(|p| !self.port_range.contains(*p))
            .collect();
        if !outside.is_empty() {
            return Err(fail(format!(
                "the connection payload names ports {outside:?} outside --port-range {}; refused",
                self.port_range
            )));
        }
        Ok(())
    }
}

/// The endpoints a payload reports, if they are usable.
fn endpoints(
    id: &str,
    report: LaunchReport,
    asked: Option<TransportEncryption>,
    host: String,
    generation: u64,
    secret: Option<String>,
    limits: protocol::frame_guard::FrameLimits,
) -> Result<KernelEndpoints, KernelError> {
    let fail = |message: String| KernelError::Launch {
        kernel_id: id.to_owned(),
        message,
    };
    let mut info = report.connection;
    // First: the secret key leaves the connection info whatever else is wrong with it.
    let curve = encryption::server_key(id, asked, &mut info)?;
    if info.transport != "tcp" {
        return Err(fail(format!(
            "unsupported transport {:?} in the connection info",
            info.transport
        )));
    }
    if info.signature_scheme != "hmac-sha256" {
        return Err(fail(format!(
            "unsupported signature scheme {:?}",
            info.signature_scheme
        )));
    }
    if info.key.is_empty() {
        return Err(fail(
            "the connection info has an empty key; unsigned kernels are refused".into(),
        ));
    }
    let curve = curve
        .map(crate::channels::curve::CurveLink::new)
        .transpose()
        .map_err(|e| fail(format!("cannot set up the CurveZMQ link: {e}")))?;
    Ok(KernelEndpoints {
        signer: Signer::new(info.key.as_bytes()),
        info,
        host,
        comm_port: report.comm_port.filter(|p| *p != 0),
        pid: report.pid,
        pgid: report.pgid,
        generation,
        secret: secret.map(Into::into),
        curve,
        limits,
    })
}
