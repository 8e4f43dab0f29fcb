//! Command line and environment, parsed once into a typed [`Config`].
//!
//! The launcher is started by three kinds of callers that disagree on syntax:
//! Enterprise Gateway kernelspecs pass `--RemoteProcessProxy.kernel-id ID`,
//! gateway_provisioners passes `--kernel-id ID`, and container entrypoints pass
//! nothing and rely on the environment that EG's `bootstrap-kernel.sh` reads
//! (`KERNEL_ID`, `RESPONSE_ADDRESS`, ...). This module accepts all three.
//!
//! The parser is written by hand because it must reproduce Python argparse's
//! `nargs="?"` behaviour that EG's launchers rely on, which no CLI crate does:
//! `--x=v` and `--x v` both work; a flag followed by another option has no
//! value; an empty value or an unfilled placeholder such as `{port_range}`
//! counts as absent; and when both forms are given, the plain form wins if it
//! has a value. Unlike EG's launcher, an unknown option is a warning, not exit 2,
//! because gateways add options faster than launchers learn them
//! (gateway_provisioners PR #124 broke on `--kernel_class_name`).
//!
//! Nothing else in the launcher reads the environment for configuration.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use protocol::payload::PublicKey;
use protocol::ports::{DEFAULT_MIN_SIZE, PortRange};

use crate::command::KernelCommand;

/// Exit code for every configuration error (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// A configuration error: which option is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{option}: {problem}")]
pub struct ConfigError {
    /// The option (and its environment variable) at fault.
    pub option: String,
    /// What is wrong and what to do instead.
    pub problem: String,
}

impl ConfigError {
    fn new(option: &str, problem: impl Into<String>) -> Self {
        ConfigError {
            option: option.to_string(),
            problem: problem.into(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Action {
    /// Print the help text and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
    /// Launch a kernel.
    Run(Box<Config>),
}

/// Spark context initialization mode (`--spark-context-initialization-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparkMode {
    /// Do nothing.
    None,
    /// Create the Spark session on a side thread inside the kernel.
    Lazy,
    /// Create the Spark session before the first user cell.
    Eager,
}

/// gateway_provisioners 0.5.0's transport-encryption policy (`--transport-encryption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEncryption {
    /// CurveZMQ keys if the kernel takes them, else clear text with a warning.
    Auto,
    /// CurveZMQ keys, or the launch fails.
    Required,
}

/// Where the launcher reports the connection payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseAddress {
    /// IPv4 or IPv6 literal, or a host name.
    pub host: String,
    /// TCP port of the gateway's response listener.
    pub port: u16,
}

impl std::fmt::Display for ResponseAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Everything the launcher needs, validated before any port is bound.
#[derive(Debug)]
pub struct Config {
    pub kernel_id: String,
    /// `None` means "pull mode": write the connection file, send nothing.
    pub response_address: Option<ResponseAddress>,
    pub public_key: Option<PublicKey>,
    pub port_range: PortRange,
    /// Random picks per socket before scanning the whole range.
    pub port_retries: u32,
    pub spark_mode: SparkMode,
    /// `spark`, `dask` or `none` (EG's `--cluster-type`).
    pub cluster_type: String,
    pub kernel_class_name: Option<String>,
    pub app_name: Option<String>,
    /// GP 0.5.0 CurveZMQ policy; `None` when disabled.
    pub transport_encryption: Option<TransportEncryption>,
    pub kernel: KernelCommand,
    pub connection_file: PathBuf,
    /// Address the kernel ports and the comm port are bound on.
    pub ip: BindAddress,
    /// The per-launch secret a gateway-lite gave (env `KERNEL_LAUNCHER_SECRET`): returned in
    /// the payload, and required on every comm-port request (signed with it).
    pub secret: Option<String>,
    pub working_dir: Option<PathBuf>,
    /// `KERNEL_UID` / `KERNEL_GID` as given; `identity` checks and applies them.
    pub kernel_uid: Option<String>,
    pub kernel_gid: Option<String>,
    /// The inherited `HOME`, checked for the kernel's uid by `identity`.
    pub home: Option<PathBuf>,
    /// `TMPDIR`, else `/tmp`: where a private `HOME` goes when the inherited one is unusable.
    pub tmp_dir: PathBuf,
    /// How long a kernel gets between SIGTERM and SIGKILL, and after `{"shutdown":1}`.
    pub grace: Duration,
    /// How long to keep retrying the connect to the response address.
    pub response_timeout: Duration,
    /// Shut the kernel down when the launcher's parent goes away.
    pub exit_with_parent: bool,
    /// Started by spark-submit's PythonRunner (`PYSPARK_GATEWAY_PORT` is set).
    pub spark_submit: bool,
    pub log_level: log::LevelFilter,
    /// Warnings found while parsing, logged once logging is up.
    pub warnings: Vec<String>,
}

/// Where the kernel's ports and the comm port are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindAddress {
    /// `--ip` or `KERNEL_LAUNCHER_IP`.
    Given(IpAddr),
    /// The address of the interface that routes to the response address (the one the
    /// payload reports, and the gateway connects to); any address when there is none.
    Route,
}

/// The entrypoint script of EG's kernel images, which the launcher stands in for.
const BOOTSTRAP_SCRIPT: &str = "bootstrap-kernel.sh";

/// Shortest accepted `KERNEL_LAUNCHER_SECRET`.
pub const MIN_SECRET_LEN: usize = 16;

/// An option the launcher understands; `legacy` is EG's `--RemoteProcessProxy.` form.
struct OptSpec {
    name: &'static str,
    legacy: bool,
    takes_value: bool,
}

const fn opt(name: &'static str, legacy: bool, takes_value: bool) -> OptSpec {
    OptSpec {
        name,
        legacy,
        takes_value,
    }
}

const OPTIONS: &[OptSpec] = &[
    opt("kernel-id", true, true),
    opt("response-address", true, true),
    opt("public-key", true, true),
    opt("port-range", true, true),
    opt("spark-context-initialization-mode", true, true),
    opt("cluster-type", true, true),
    opt("kernel-class-name", true, true),
    opt("transport-encryption", false, true),
    opt("customAppName", true, true),
    // Toree's launcher options, accepted so Toree kernelspecs can switch over.
    opt("alternate-sigint", false, true),
    opt("profile", false, true),
    // Our own.
    opt("language", false, true),
    opt("interpreter", false, true),
    opt("ip", false, true),
    opt("grace-period", false, true),
    opt("response-timeout", false, true),
    opt("exit-with-parent", false, false),
    opt("no-exit-with-parent", false, false),
];

const LEGACY_PREFIX: &str = "RemoteProcessProxy.";

/// Raw values seen on the command line, before defaults and environment.
#[derive(Default)]
struct RawArgs {
    plain: HashMap<&'static str, String>,
    legacy: HashMap<&'static str, String>,
    flags: Vec<&'static str>,
    positionals: Vec<String>,
    kernel_argv: Option<Vec<String>>,
    help: bool,
    version: bool,
    warnings: Vec<String>,
}

impl RawArgs {
    /// The plain form if it has a value, else the legacy form (EG's merge rule).
    fn get(&self, name: &str) -> Option<&str> {
        self.plain
            .get(name)
            .or_else(|| self.legacy.get(name))
            .map(String::as_str)
    }
}

/// `""` and unfilled placeholders like `{port_range}` count as "not given".
fn is_absent(value: &str) -> bool {
    let v = value.trim();
    v.is_empty()
        || (v.len() > 2
            && v.starts_with('{')
            && v.ends_with('}')
            && v[1..v.len() - 1]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

fn lex(args: &[String]) -> RawArgs {
    let mut raw = RawArgs::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            raw.kernel_argv = Some(args[i..].to_vec());
            break;
        }
        if arg == "-h" || arg == "--help" {
            raw.help = true;
            continue;
        }
        if arg == "-V" || arg == "--version" {
            raw.version = true;
            continue;
        }
        let Some(body) = arg.strip_prefix("--") else {
            raw.positionals.push(arg.clone());
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let (name, is_legacy) = match name.strip_prefix(LEGACY_PREFIX) {
            Some(n) => (n, true),
            None => (name, false),
        };
        let Some(spec) = OPTIONS
            .iter()
            .find(|s| s.name == name && (!is_legacy || s.legacy))
        else {
            // Unknown: take the next token as its value unless it looks like an option.
            let mut ignored = arg.clone();
            if inline.is_none() && i < args.len() && !args[i].starts_with('-') {
                ignored = format!("{arg} {}", args[i]);
                i += 1;
            }
            raw.warnings
                .push(format!("ignoring unknown option `{ignored}`"));
            continue;
        };
        if !spec.takes_value {
            if inline.is_some() {
                raw.warnings
                    .push(format!("--{} takes no value; ignoring `{arg}`", spec.name));
            } else {
                raw.flags.push(spec.name);
            }
            continue;
        }
        // argparse nargs="?": a following option means "no value".
        let value = match inline {
            Some(v) => Some(v),
            None if i < args.len() && !args[i].starts_with("--") => {
                i += 1;
                Some(args[i - 1].clone())
            }
            None => None,
        };
        if let Some(v) = value.filter(|v| !is_absent(v)) {
            let map = if is_legacy {
                &mut raw.legacy
            } else {
                &mut raw.plain
            };
            map.insert(spec.name, v);
        }
    }
    raw
}

/// Reads configuration from `args` (without the program name) and `env`.
///
/// `env` is a lookup function so tests can pass a map; `main` passes the
/// process environment.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Action, ConfigError> {
    let raw = lex(args);
    if raw.help {
        return Ok(Action::Help);
    }
    if raw.version {
        return Ok(Action::Version);
    }
    // Environment values obey the same "empty means absent" rule.
    let env_get = |name: &str| env(name).filter(|v| !is_absent(v));
    let first_env = |names: &[&str]| names.iter().find_map(|n| env_get(n));
    let mut warnings = raw.warnings.clone();

    let kernel_id = raw
        .get("kernel-id")
        .map(str::to_string)
        .or_else(|| env_get("KERNEL_ID"))
        .ok_or_else(|| {
            ConfigError::new(
                "--kernel-id (env KERNEL_ID)",
                "missing; the gateway fills it from {kernel_id}, e.g. `--kernel-id {kernel_id}` in the kernelspec argv",
            )
        })?;
    if kernel_id.contains(['/', '\0']) || kernel_id.starts_with('.') {
        return Err(ConfigError::new(
            "--kernel-id",
            format!(
                "`{kernel_id}` is not a valid kernel id (no `/`, NUL or leading `.`); gateways use a UUID"
            ),
        ));
    }

    let response_address = match raw
        .get("response-address")
        .map(str::to_string)
        .or_else(|| first_env(&["RESPONSE_ADDRESS", "EG_RESPONSE_ADDRESS"]))
    {
        Some(s) => Some(parse_response_address(&s)?),
        None => None,
    };

    let public_key = match raw
        .get("public-key")
        .map(str::to_string)
        .or_else(|| first_env(&["PUBLIC_KEY", "EG_PUBLIC_KEY"]))
    {
        Some(s) => Some(PublicKey::parse(&s).map_err(|e| {
            ConfigError::new(
                "--public-key (env PUBLIC_KEY)",
                format!("{e}; pass the gateway's key as EG fills {{public_key}} (base64 of the DER SubjectPublicKeyInfo) or a PEM public key"),
            )
        })?),
        None => None,
    };
    if response_address.is_some() && public_key.is_none() {
        return Err(ConfigError::new(
            "--public-key (env PUBLIC_KEY)",
            "missing; it is needed to encrypt the payload sent to --response-address (the gateway fills it from {public_key})",
        ));
    }
    if response_address.is_none() {
        warnings.push(
            "no --response-address: not reporting to a gateway (pull mode); the connection file is the only output"
                .to_string(),
        );
    }

    let min_size = match first_env(&["MIN_PORT_RANGE_SIZE", "EG_MIN_PORT_RANGE_SIZE"]) {
        Some(s) => s.trim().parse::<u32>().map_err(|_| {
            ConfigError::new(
                "env MIN_PORT_RANGE_SIZE",
                format!("`{s}` is not a non-negative integer"),
            )
        })?,
        None => DEFAULT_MIN_SIZE,
    };
    let port_range = match raw
        .get("port-range")
        .map(str::to_string)
        .or_else(|| first_env(&["PORT_RANGE", "EG_PORT_RANGE"]))
    {
        Some(s) => PortRange::parse(&s, min_size).map_err(|e| {
            ConfigError::new(
                "--port-range (env PORT_RANGE)",
                format!("{e}; use `LOWER..UPPER` (e.g. 40000..41000) or `0..0` for any port"),
            )
        })?,
        None => PortRange::Unrestricted,
    };
    let port_retries = match first_env(&["MAX_PORT_RANGE_RETRIES", "EG_MAX_PORT_RANGE_RETRIES"]) {
        Some(s) => s.trim().parse::<u32>().map_err(|_| {
            ConfigError::new(
                "env MAX_PORT_RANGE_RETRIES",
                format!("`{s}` is not a non-negative integer"),
            )
        })?,
        None => 5,
    };

    let spark_mode = match raw
        .get("spark-context-initialization-mode")
        .map(str::to_string)
        .or_else(|| env_get("KERNEL_SPARK_CONTEXT_INIT_MODE"))
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("none") => SparkMode::None,
        Some("lazy") => SparkMode::Lazy,
        Some("eager") => SparkMode::Eager,
        Some(other) => {
            return Err(ConfigError::new(
                "--spark-context-initialization-mode (env KERNEL_SPARK_CONTEXT_INIT_MODE)",
                format!("`{other}` is not one of none, lazy, eager"),
            ));
        }
    };
    let cluster_type = raw
        .get("cluster-type")
        .unwrap_or("spark")
        .to_ascii_lowercase();
    if !matches!(cluster_type.as_str(), "spark" | "dask" | "none") {
        warnings.push(format!(
            "--cluster-type `{cluster_type}` is not one of spark, dask, none; treating it as none"
        ));
    }

    let transport_encryption = match raw
        .get("transport-encryption")
        .map(str::to_string)
        .or_else(|| env_get("TRANSPORT_ENCRYPTION"))
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        // gateway_provisioners' own word for "off"; "" and the unfilled placeholder are absent.
        None | Some("none" | "disabled") => None,
        Some("auto") => Some(TransportEncryption::Auto),
        Some("required") => Some(TransportEncryption::Required),
        Some(other) => {
            return Err(ConfigError::new(
                "--transport-encryption (env TRANSPORT_ENCRYPTION)",
                format!(
                    "`{other}` is not one of none, auto, required (or empty for none); gateway_provisioners fills it from {{transport_encryption}}"
                ),
            ));
        }
    };

    let spark_submit = env("PYSPARK_GATEWAY_PORT").is_some();
    let mut positionals = raw.positionals.clone();
    // Under spark-submit, PythonRunner passes the primary resource first; it is not ours to run.
    if spark_submit && positionals.first().is_some_and(|p| p.ends_with(".py")) {
        let primary = positionals.remove(0);
        warnings.push(format!(
            "running under spark-submit; ignoring the primary resource `{primary}`"
        ));
    }
    // Interop quirk: images built for EG run /usr/local/bin/bootstrap-kernel.sh as their
    // command; with kernel-launcher as the entrypoint, a deployment that still names that
    // script as the command (Docker's CMD, a pod's args) hands its path to the launcher, which
    // is what the script would have started. It is not a connection-file location.
    if positionals
        .first()
        .is_some_and(|p| p.rsplit('/').next() == Some(BOOTSTRAP_SCRIPT))
    {
        let script = positionals.remove(0);
        warnings.push(format!(
            "ignoring `{script}`: EG's kernel entrypoint script, given as an argument; kernel-launcher takes its place"
        ));
    }
    if positionals.len() > 1 {
        warnings.push(format!(
            "ignoring extra positional arguments {:?}",
            &positionals[1..]
        ));
    }

    let language = raw
        .get("language")
        .map(str::to_string)
        .or_else(|| env_get("KERNEL_LANGUAGE"));
    let interpreter = raw
        .get("interpreter")
        .map(str::to_string)
        .or_else(|| env_get("KERNEL_LAUNCHER_INTERPRETER"));
    let kernel_class_name = raw
        .get("kernel-class-name")
        .map(str::to_string)
        .or_else(|| env_get("KERNEL_CLASS_NAME"));
    let kernel = KernelCommand::resolve(
        raw.kernel_argv.clone(),
        language.as_deref(),
        interpreter.as_deref(),
        kernel_class_name.as_deref(),
    )
    .map_err(|problem| ConfigError::new("kernel command (after `--`)", problem))?;
    warnings.extend(kernel.warnings(&kernel_id));

    let connection_file = connection_file_path(
        positionals.first().map(String::as_str),
        &kernel_id,
        env_get("TMPDIR"),
    );

    let ip = match raw
        .get("ip")
        .map(str::to_string)
        .or_else(|| env_get("KERNEL_LAUNCHER_IP"))
    {
        Some(s) => BindAddress::Given(s.trim().parse::<IpAddr>().map_err(|_| {
            ConfigError::new(
                "--ip (env KERNEL_LAUNCHER_IP)",
                format!("`{s}` is not an IP address; use e.g. 0.0.0.0, 127.0.0.1 or ::"),
            )
        })?),
        None => BindAddress::Route,
    };
    // Never from the command line, which every local user can read.
    let secret = match env("KERNEL_LAUNCHER_SECRET").filter(|v| !v.is_empty()) {
        Some(s) if s.len() >= MIN_SECRET_LEN && s.bytes().all(|b| b.is_ascii_graphic()) => Some(s),
        Some(_) => {
            return Err(ConfigError::new(
                "env KERNEL_LAUNCHER_SECRET",
                format!(
                    "must be at least {MIN_SECRET_LEN} printable ASCII characters without spaces (gateway-lite sets it)"
                ),
            ));
        }
        None => None,
    };

    let working_dir = env_get("KERNEL_WORKING_DIR").map(PathBuf::from);
    let kernel_uid = env_get("KERNEL_UID");
    let kernel_gid = env_get("KERNEL_GID");
    let home = env_get("HOME").map(PathBuf::from);
    let tmp_dir = PathBuf::from(env_get("TMPDIR").unwrap_or_else(|| "/tmp".to_string()));
    let grace = parse_seconds(
        "--grace-period (env KERNEL_LAUNCHER_GRACE_PERIOD)",
        raw.get("grace-period")
            .map(str::to_string)
            .or_else(|| env_get("KERNEL_LAUNCHER_GRACE_PERIOD")),
        5.0,
    )?;
    let response_timeout = parse_seconds(
        "--response-timeout (env KERNEL_LAUNCHER_RESPONSE_TIMEOUT)",
        raw.get("response-timeout")
            .map(str::to_string)
            .or_else(|| env_get("KERNEL_LAUNCHER_RESPONSE_TIMEOUT")),
        30.0,
    )?;
    let exit_with_parent = if raw.flags.contains(&"no-exit-with-parent") {
        false
    } else if raw.flags.contains(&"exit-with-parent") {
        true
    } else {
        match env_get("KERNEL_LAUNCHER_EXIT_WITH_PARENT").as_deref() {
            Some("1" | "true" | "yes") => true,
            Some("0" | "false" | "no") => false,
            Some(other) => {
                return Err(ConfigError::new(
                    "env KERNEL_LAUNCHER_EXIT_WITH_PARENT",
                    format!("`{other}` is not one of 1, 0, true, false"),
                ));
            }
            None => spark_submit,
        }
    };

    let log_level = parse_log_level(first_env(&["LOG_LEVEL", "EG_LOG_LEVEL"]))?;

    Ok(Action::Run(Box::new(Config {
        kernel_id,
        response_address,
        public_key,
        port_range,
        port_retries,
        spark_mode,
        cluster_type,
        kernel_class_name,
        app_name: raw.get("customAppName").map(str::to_string),
        transport_encryption,
        kernel,
        connection_file,
        ip,
        secret,
        working_dir,
        kernel_uid,
        kernel_gid,
        home,
        tmp_dir,
        grace,
        response_timeout,
        exit_with_parent,
        spark_submit,
        log_level,
        warnings,
    })))
}

/// `host:port`, `[v6]:port`; the host may be a name.
fn parse_response_address(s: &str) -> Result<ResponseAddress, ConfigError> {
    const OPT: &str = "--response-address (env RESPONSE_ADDRESS)";
    let s = s.trim();
    let bad = |why: &str| {
        ConfigError::new(
            OPT,
            format!("`{s}` {why}; use HOST:PORT, e.g. 10.0.0.5:8877 or [fd00::5]:8877"),
        )
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("has no closing `]`"))?;
        let port = after.strip_prefix(':').ok_or_else(|| bad("has no port"))?;
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
        if host.contains(':') {
            return Err(bad("is an IPv6 address without brackets"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("has an invalid port"))?;
    Ok(ResponseAddress {
        host: host.to_string(),
        port,
    })
}

fn parse_seconds(
    option: &str,
    value: Option<String>,
    default: f64,
) -> Result<Duration, ConfigError> {
    let Some(s) = value else {
        return Ok(Duration::from_secs_f64(default));
    };
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            ConfigError::new(
                option,
                format!("`{s}` is not a number of seconds between 0 and 86400"),
            )
        })
}

/// EG's LOG_LEVEL is a Python level: a number (10 = debug ... 50 = critical) or a name.
fn parse_log_level(value: Option<String>) -> Result<log::LevelFilter, ConfigError> {
    use log::LevelFilter as L;
    let Some(s) = value else {
        return Ok(L::Info);
    };
    let level = match s.trim().to_ascii_lowercase().as_str() {
        "trace" => L::Trace,
        "debug" => L::Debug,
        "info" => L::Info,
        "warn" | "warning" => L::Warn,
        "error" | "critical" | "fatal" => L::Error,
        "off" => L::Off,
        n => match n.parse::<u32>() {
            Ok(0..=5) => L::Trace,
            Ok(6..=10) => L::Debug,
            Ok(11..=20) => L::Info,
            Ok(21..=30) => L::Warn,
            Ok(_) => L::Error,
            Err(_) => {
                return Err(ConfigError::new(
                    "env LOG_LEVEL",
                    format!("`{s}` is not a level; use debug, info, warning, error or 10/20/30/40"),
                ));
            }
        },
    };
    Ok(level)
}

/// EG's launchers take a positional connection-file path as a location hint.
fn connection_file_path(hint: Option<&str>, kernel_id: &str, tmpdir: Option<String>) -> PathBuf {
    let name = format!("kernel-{kernel_id}.json");
    match hint {
        Some(h) if h.ends_with('/') || std::path::Path::new(h).is_dir() => {
            PathBuf::from(h).join(name)
        }
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(tmpdir.unwrap_or_else(|| "/tmp".to_string())).join(name),
    }
}

/// The text of `kernel-launcher --help`.
pub const HELP: &str = include_str!("help.txt");

#[cfg(test)]
mod tests;
