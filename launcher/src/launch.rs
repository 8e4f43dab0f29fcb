//! The launch sequence, from a validated [`Config`] to the exit code.
//!
//! Order matters for speed and correctness: ports are reserved and the
//! connection file written first; the kernel is spawned (the launcher keeps
//! holding its ports, which the kernel's SO_REUSEADDR binds share, until it
//! exits: see `ports`); the comm port starts serving; and the payload, which
//! carries the kernel's pid, is delivered on its own thread so signals and
//! comm requests are handled while the gateway is still being reached (with
//! `--transport-encryption`, that thread first waits for the kernel's heartbeat
//! port and probes it: see `curve`). The
//! launcher is never in the kernel's message path, so after this it only
//! supervises.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::unistd::getpid;
use protocol::connection::ConnectionInfo;
use protocol::payload::{self, LaunchReport, PublicKey};
use protocol::signed;

use crate::comm::CommPort;
use crate::config::{BindAddress, Config, ResponseAddress, TransportEncryption};
use crate::connfile::ConnectionFile;
use crate::curve::{self, KeyPair, Verdict};
use crate::identity::{Identity, PrivateHome};
use crate::kernel::Kernel;
use crate::ports;
use crate::report;
use crate::route;
use crate::spark::SparkSetup;
use crate::supervise::{self, Event, Supervisor};

/// Exit code when an operating-system resource fails (BSD `EX_OSERR`).
pub const EXIT_OSERR: i32 = 71;

/// The address the kernel's ports and the comm port bind: `--ip`, else the interface that
/// routes to the response address, else any (pull mode, or no route).
fn bind_address(config: &Config) -> IpAddr {
    match (config.ip, &config.response_address) {
        (BindAddress::Given(ip), _) => ip,
        (BindAddress::Route, Some(address)) => route::towards(address).unwrap_or_else(|| {
            log::warn!("no route to {address} found; binding the kernel's ports to all addresses");
            Ipv4Addr::UNSPECIFIED.into()
        }),
        (BindAddress::Route, None) => Ipv4Addr::UNSPECIFIED.into(),
    }
}

/// Launches and supervises the kernel; returns the launcher's exit code.
pub fn run(config: Config) -> i32 {
    for w in &config.warnings {
        log::warn!("{w}");
    }
    // The identity comes first: ports, the connection file and the kernel all belong to the
    // kernel's user, and no thread has been started yet.
    match Identity::from_env(config.kernel_uid.as_deref(), config.kernel_gid.as_deref()) {
        Ok(Some(identity)) => {
            if let Err(e) = identity.apply() {
                log::error!(
                    "cannot switch to KERNEL_UID {} / KERNEL_GID {}: {e}",
                    identity.uid,
                    identity.gid
                );
                return EXIT_OSERR;
            }
        }
        Ok(None) => {}
        Err(e) => {
            log::error!("{e}");
            return e.exit_code();
        }
    }
    let ip = bind_address(&config);
    log::info!(
        "kernel-launcher {} starting kernel {} (pid {}, ip {}, port range {:?}, spark mode {:?}, cluster type {}, kernel class {:?}, app name {:?}, transport encryption {:?}, response {})",
        env!("CARGO_PKG_VERSION"),
        config.kernel_id,
        std::process::id(),
        ip,
        config.port_range,
        config.spark_mode,
        config.cluster_type,
        config.kernel_class_name,
        config.app_name,
        config.transport_encryption,
        config
            .response_address
            .as_ref()
            .map_or_else(|| "none".to_string(), ToString::to_string),
    );

    let (tx, rx) = mpsc::channel::<Event>();
    if let Err(e) = supervise::watch_signals(tx.clone()) {
        log::error!("cannot install signal handlers: {e}");
        return EXIT_OSERR;
    }
    become_subreaper();

    let reservation = match ports::reserve(ip, config.port_range, config.port_retries) {
        Ok(r) => r,
        Err(e) => {
            log::error!("{e}");
            return EXIT_OSERR;
        }
    };
    let kp = reservation.kernel_ports();
    let mut info = ConnectionInfo {
        shell_port: kp.shell,
        iopub_port: kp.iopub,
        stdin_port: kp.stdin,
        control_port: kp.control,
        hb_port: kp.hb,
        ip: ip.to_string(),
        key: uuid::Uuid::new_v4().to_string(),
        transport: "tcp".to_string(),
        signature_scheme: "hmac-sha256".to_string(),
        kernel_name: String::new(),
        extra: Default::default(),
    };
    if config.transport_encryption.is_some() {
        match KeyPair::generate() {
            Ok(keys) => keys.insert_into(&mut info.extra),
            Err(e) => {
                log::error!(
                    "cannot make a CurveZMQ key pair: the random number generator failed: {e}"
                );
                return EXIT_OSERR;
            }
        }
    }
    let connfile = match ConnectionFile::write(&config.connection_file, &info) {
        Ok(f) => f,
        Err(e) => {
            log::error!(
                "cannot write the connection file {}: {e}; pass a writable location as CONNECTION_FILE or set TMPDIR",
                config.connection_file.display()
            );
            return EXIT_OSERR;
        }
    };

    let app_name = config.app_name.as_deref().unwrap_or(&config.kernel_id);
    let spark = match SparkSetup::prepare(
        config.spark_mode,
        &config.cluster_type,
        &config.kernel,
        connfile.path(),
        app_name,
    ) {
        Ok(s) => s,
        Err(e) => {
            log::error!(
                "cannot prepare Spark initialization next to {}: {e}",
                connfile.path().display()
            );
            connfile.remove();
            return EXIT_OSERR;
        }
    };
    let mut argv = config.kernel.argv_for(connfile.path(), &config.kernel_id);
    argv.extend(spark.args.iter().cloned());
    let working_dir = config.working_dir.as_deref().filter(|d| {
        let ok = d.is_dir();
        if !ok {
            log::warn!(
                "KERNEL_WORKING_DIR {} is not a directory here; keeping the current directory",
                d.display()
            );
        }
        ok
    });
    let mut env = spark.env.clone();
    let home = match PrivateHome::ensure(config.home.as_deref(), &config.tmp_dir) {
        Ok(home) => home,
        Err(e) => {
            log::warn!(
                "HOME is not writable and no private HOME could be made under {}: {e}; the kernel keeps HOME as it is",
                config.tmp_dir.display()
            );
            None
        }
    };
    if let Some(h) = &home {
        env.push(("HOME".into(), h.path().display().to_string()));
    }
    log::info!("starting kernel: {argv:?}");
    let kernel = match Kernel::spawn(&argv, working_dir, &env) {
        Ok(k) => k,
        Err(e) => {
            log::error!("{e}; check the kernel argv after `--` or --interpreter");
            connfile.remove();
            spark.remove();
            home.iter().for_each(PrivateHome::remove);
            return e.exit_code();
        }
    };
    let comm_port = reservation.comm_port();
    // The kernel ports stay held until the launcher exits, so no concurrent
    // launch is handed one while the kernel is still binding them.
    let ports::Reservation {
        kernel: held_kernel_ports,
        comm,
    } = reservation;
    let comm = match CommPort::serve(comm, tx.clone(), config.secret.clone()) {
        Ok(c) => Some(c),
        Err(e) => {
            log::error!("cannot serve the comm port: {e}");
            None
        }
    };
    log::info!(
        "kernel pid {} (process group {}), ports shell {} iopub {} stdin {} control {} hb {}, comm port {comm_port}",
        kernel.pid,
        kernel.pid,
        kp.shell,
        kp.iopub,
        kp.stdin,
        kp.control,
        kp.hb
    );

    let reporter = Reporter {
        kernel_id: config.kernel_id.clone(),
        kernel,
        comm_port,
        secret: config.secret.clone(),
        target: config
            .response_address
            .clone()
            .zip(config.public_key.clone()),
        timeout: config.response_timeout,
        from: (!ip.is_unspecified()).then_some(ip),
        curve: config
            .transport_encryption
            .map(|policy| (policy, curve::local_address(ip, kp.hb))),
        connection_file: connfile.path().to_path_buf(),
    };
    if reporter.has_work() {
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("report".into())
            .spawn(move || reporter.run(info, &tx));
        if let Err(e) = spawned {
            log::error!("cannot start the payload thread: {e}");
        }
    }

    if config.exit_with_parent
        && config.spark_submit
        && let Err(e) = supervise::watch_stdin(tx.clone())
    {
        log::warn!("cannot watch stdin for the driver's exit: {e}");
    }
    drop(tx);

    let code = Supervisor::new(
        kernel,
        comm,
        config.grace,
        config.exit_with_parent,
        config.kernel.runs_ipykernel(),
    )
    .run(&rx);
    drop(held_kernel_ports);
    connfile.remove();
    spark.remove();
    home.iter().for_each(PrivateHome::remove);
    log::info!("kernel-launcher exiting with code {code}");
    code
}

/// The work of the `report` thread: the CurveZMQ probe (when asked for), then the payload.
struct Reporter {
    kernel_id: String,
    kernel: Kernel,
    comm_port: u16,
    secret: Option<String>,
    /// The gateway's response address and key; `None` in pull mode.
    target: Option<(ResponseAddress, PublicKey)>,
    timeout: Duration,
    /// Local address to send the payload from.
    from: Option<IpAddr>,
    /// The policy and the kernel's heartbeat address, with `--transport-encryption`.
    curve: Option<(TransportEncryption, SocketAddr)>,
    connection_file: PathBuf,
}

impl Reporter {
    fn has_work(&self) -> bool {
        self.target.is_some() || self.curve.is_some()
    }

    /// Probes (with keys), then reports `info` (its keys removed unless the kernel uses them).
    /// The connection file is left as the kernel read it.
    fn run(self, mut info: ConnectionInfo, events: &mpsc::Sender<Event>) {
        let mut refused = false;
        if let Some((policy, hb)) = self.curve {
            let kernel = self.kernel;
            let probe = curve::probe(hb, &|| kernel.is_running(), curve::PROBE_PATIENCE);
            match curve::decide(policy, &self.kernel_id, &probe) {
                Verdict::Encrypted => log::info!(
                    "kernel {} binds its sockets as CurveZMQ servers; the payload carries the curve keys",
                    self.kernel_id
                ),
                Verdict::KernelGone => {
                    log::info!(
                        "the kernel exited before it bound its heartbeat port; nothing to report"
                    );
                    return;
                }
                Verdict::Clear(warning) => {
                    log::warn!("{warning}");
                    if self.target.is_none() {
                        log::warn!(
                            "the connection file {} keeps the curve keys the kernel ignored (rewriting it would race with the kernel's own rewrite); clients reading it must leave them out",
                            self.connection_file.display()
                        );
                    }
                    curve::remove_from(&mut info.extra);
                }
                Verdict::Refused(error) => {
                    log::error!("{error}");
                    curve::remove_from(&mut info.extra);
                    refused = true;
                }
            }
        }
        if let Some((address, key)) = &self.target {
            let result = self.deliver(info, address, key);
            // The refusal only after the delivery: the gateway hears of it before the kernel stops.
            if refused {
                let _ = events.send(Event::CurveRefused);
            }
            let _ = events.send(Event::Reported(result));
        } else if refused {
            let _ = events.send(Event::CurveRefused);
        }
    }

    fn deliver(
        &self,
        connection: ConnectionInfo,
        address: &ResponseAddress,
        key: &PublicKey,
    ) -> Result<u32, report::ReportError> {
        let report = LaunchReport {
            connection,
            kernel_id: self.kernel_id.clone(),
            pid: Some(i64::from(self.kernel.pid)),
            pgid: Some(i64::from(self.kernel.pid)),
            comm_port: Some(self.comm_port),
            launch_secret: self.secret.clone(),
        };
        let payload =
            payload::encrypt(key, &report.to_json()).map_err(|e| report::ReportError {
                address: address.to_string(),
                attempts: 0,
                waited: Duration::ZERO,
                last: std::io::Error::other(format!("cannot encrypt the payload: {e}")),
            })?;
        // gateway-lite checks the seal before it decrypts anything.
        let sealed = match &self.secret {
            Some(secret) => signed::seal_payload(secret.as_bytes(), payload.as_bytes()),
            None => payload.into_bytes(),
        };
        report::deliver(address, self.from, &sealed, self.timeout)
    }
}

/// Orphaned grandchildren must come back to the launcher to be reaped. As
/// PID 1 they do anyway; elsewhere (YARN container, `docker run --init`,
/// a plain shell) the launcher asks to be their subreaper.
fn become_subreaper() {
    if getpid().as_raw() == 1 {
        return;
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!(
            "cannot become a child subreaper ({e}); orphaned kernel helpers will not be reaped here"
        );
    }
}
