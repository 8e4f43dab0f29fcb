//! The launch sequence, from a validated [`Config`] to the exit code.
//!
//! Order matters for speed and correctness: ports are reserved and the
//! connection file written first; the kernel is spawned (the launcher keeps
//! holding its ports, which the kernel's SO_REUSEADDR binds share, until it
//! exits: see `ports`); the comm port starts serving; and the payload, which
//! carries the kernel's pid, is delivered on its own thread so signals and
//! comm requests are handled while the gateway is still being reached. The
//! launcher is never in the kernel's message path, so after this it only
//! supervises.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;

use nix::unistd::getpid;
use protocol::connection::ConnectionInfo;
use protocol::payload::{self, LaunchReport};
use protocol::signed;

use crate::comm::CommPort;
use crate::config::{BindAddress, Config};
use crate::connfile::ConnectionFile;
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
    let info = ConnectionInfo {
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

    if let (Some(address), Some(key)) =
        (config.response_address.clone(), config.public_key.as_ref())
    {
        let report = LaunchReport {
            connection: info,
            kernel_id: config.kernel_id.clone(),
            pid: Some(i64::from(kernel.pid)),
            pgid: Some(i64::from(kernel.pid)),
            comm_port: Some(comm_port),
            launch_secret: config.secret.clone(),
        };
        match payload::encrypt(key, &report.to_json()) {
            Ok(payload) => {
                // gateway-lite checks the seal before it decrypts anything.
                let sealed = match &config.secret {
                    Some(secret) => signed::seal_payload(secret.as_bytes(), payload.as_bytes()),
                    None => payload.into_bytes(),
                };
                let tx = tx.clone();
                let timeout = config.response_timeout;
                let spawned = std::thread::Builder::new()
                    .name("report".into())
                    .spawn(move || {
                        let from = (!ip.is_unspecified()).then_some(ip);
                        let result = report::deliver(&address, from, &sealed, timeout);
                        let _ = tx.send(Event::Reported(result));
                    });
                if let Err(e) = spawned {
                    log::error!("cannot start the payload thread: {e}");
                }
            }
            Err(e) => {
                let _ = tx.send(Event::Reported(Err(report::ReportError {
                    address: address.to_string(),
                    attempts: 0,
                    waited: std::time::Duration::ZERO,
                    last: std::io::Error::other(format!("cannot encrypt the payload: {e}")),
                })));
            }
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
