//! The configuration's types: what every part of the gateway is told, checked.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use protocol::ports::PortRange;

/// Exit code for configuration errors (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// A configuration error: the option at fault and what to do instead.
#[derive(Debug, thiserror::Error)]
#[error("{option}: {problem}")]
pub struct ConfigError {
    /// The option and its environment variable.
    pub option: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// Where the Jupyter data paths come from: the environment at start-up, captured once.
#[derive(Debug, Clone, Default)]
pub struct SearchEnv {
    /// `JUPYTER_PATH`, split on `:`.
    pub jupyter_path: Vec<PathBuf>,
    /// `JUPYTER_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `XDG_DATA_HOME` (the user data dir is `$XDG_DATA_HOME/jupyter` without
    /// `JUPYTER_DATA_DIR`).
    pub data_home: Option<PathBuf>,
    /// `HOME` (never looked up through the password database).
    pub home: Option<PathBuf>,
    /// `XDG_STATE_HOME`, for the default state directory.
    pub state_home: Option<PathBuf>,
    /// `VIRTUAL_ENV`: an activated Python virtual environment.
    pub virtual_env: Option<PathBuf>,
    /// `CONDA_PREFIX`: an activated conda environment.
    pub conda_prefix: Option<PathBuf>,
    /// `CONDA_DEFAULT_ENV`: the activated conda environment's name.
    pub conda_default_env: Option<String>,
    /// `JUPYTER_PREFER_ENV_PATH`, when set at all (even empty).
    pub prefer_env_path: Option<String>,
    /// `PATH`, split on `:` (where `python3` is looked for).
    pub path: Vec<PathBuf>,
}

impl SearchEnv {
    /// Reads the variables above from the process environment.
    pub fn from_env() -> Self {
        let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let split = |k: &str| -> Vec<PathBuf> {
            non_empty(k)
                .map(|v| {
                    std::env::split_paths(&v)
                        .filter(|p| !p.as_os_str().is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        SearchEnv {
            jupyter_path: split("JUPYTER_PATH"),
            data_dir: non_empty("JUPYTER_DATA_DIR").map(PathBuf::from),
            data_home: non_empty("XDG_DATA_HOME").map(PathBuf::from),
            home: non_empty("HOME").map(PathBuf::from),
            state_home: non_empty("XDG_STATE_HOME").map(PathBuf::from),
            virtual_env: non_empty("VIRTUAL_ENV").map(PathBuf::from),
            conda_prefix: non_empty("CONDA_PREFIX").map(PathBuf::from),
            conda_default_env: non_empty("CONDA_DEFAULT_ENV")
                .map(|v| v.to_string_lossy().into_owned()),
            prefer_env_path: std::env::var_os("JUPYTER_PREFER_ENV_PATH")
                .map(|v| v.to_string_lossy().into_owned()),
            path: split("PATH"),
        }
    }
}

/// How the gateway writes its own log (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level (`jq .path`).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not a log format; use text or json")),
        }
    }
}

/// Where [`Config::state_dir`] comes from, or why there is none: the gateway tells an
/// operator's choice (logged at INFO) from a default it could not have (a WARN with the fix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateDirSource {
    /// `--state-dir` (or its variable).
    Given,
    /// Derived from `XDG_STATE_HOME` or `HOME`; it may turn out unusable.
    Default,
    /// None: `--no-state-dir`.
    Off,
    /// None: `--port 0` has no stable place for one.
    PortZero,
    /// None: neither `XDG_STATE_HOME` nor `HOME` is set (a service user, typically).
    NoHome,
}

/// Kernel limits (Enterprise Gateway's `max_kernels` and `max_kernels_per_user`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most kernels at once.
    pub max_kernels: Option<usize>,
    /// Most kernels at once per `KERNEL_USERNAME`.
    pub max_kernels_per_user: Option<usize>,
}

/// Idle culling, with Jupyter Server's `MappingKernelManager` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cull {
    /// `cull_idle_timeout`: idle this long means culled.
    pub idle_timeout: Duration,
    /// `cull_interval`: how often to look.
    pub interval: Duration,
    /// `cull_connected`: cull kernels with WebSocket connections too.
    pub connected: bool,
    /// `cull_busy`: cull busy kernels too.
    pub busy: bool,
}

/// How a remote host is chosen for a new kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balancing {
    /// Each launch takes the next host of the list.
    #[default]
    RoundRobin,
    /// The host with the fewest live kernels of this gateway (ties: the next in round-robin
    /// order).
    LeastConnection,
}

impl std::str::FromStr for Balancing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "round-robin" => Ok(Balancing::RoundRobin),
            "least-connection" => Ok(Balancing::LeastConnection),
            other => Err(format!(
                "{other:?} is not a balancing algorithm; use round-robin or least-connection"
            )),
        }
    }
}

/// The SSH provisioner's settings (`DistributedProcessProxy` kernelspecs).
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Default hosts (ssh destinations: `host`, `user@host`, or a `~/.ssh/config` alias).
    pub hosts: Vec<String>,
    /// `ssh -F FILE`.
    pub ssh_config: Option<PathBuf>,
    /// `ssh -l USER`.
    pub user: Option<String>,
    /// How hosts are chosen.
    pub balancing: Balancing,
    /// `ssh -o ConnectTimeout`.
    pub connect_timeout: Duration,
    /// Directory on the remote hosts for launcher logs and pid files.
    pub remote_log_dir: String,
    /// The ssh client.
    pub program: PathBuf,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            hosts: Vec::new(),
            ssh_config: None,
            user: None,
            balancing: Balancing::RoundRobin,
            connect_timeout: Duration::from_secs(10),
            remote_log_dir: "/tmp".into(),
            program: PathBuf::from("ssh"),
        }
    }
}

/// The Docker provisioner's settings (`DockerProcessProxy` and `DockerSwarmProcessProxy`
/// kernelspecs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    /// The Engine API socket (`--docker-host`; `DOCKER_HOST` when it is a `unix://` URL).
    pub socket: PathBuf,
    /// The network containers join (`--docker-network`; EG's `EG_DOCKER_NETWORK`).
    pub network: String,
    /// Image for specs without `image_name` (`--docker-image`; EG's `EG_KERNEL_IMAGE`).
    pub image: Option<String>,
    /// Container names are `<prefix>-<kernel id>`.
    pub name_prefix: String,
    /// Extra labels on every container.
    pub labels: Vec<(String, String)>,
    /// Images a request's `KERNEL_IMAGE` may name (besides the kernelspecs' own).
    pub allowed_images: Vec<String>,
    /// A network per `KERNEL_USERNAME`.
    pub network_per_user: bool,
    /// Read-only root filesystem for kernel containers.
    pub read_only: bool,
    /// The overlay network Swarm kernels join (`--swarm-network`; default `network`).
    pub swarm_network: Option<String>,
    /// Per-kernel resource defaults and maximums.
    pub resources: ResourcePolicy,
}

/// The gateway's defaults and maximums for the resources a Docker or Swarm kernel asks for
/// with `KERNEL_CPUS`, `KERNEL_MEMORY`, `KERNEL_GPUS` and their `_LIMIT` forms. CPUs are in
/// thousandths, memory in bytes. `None`: no default (nothing reserved or limited) or no
/// maximum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourcePolicy {
    /// CPU reservation without `KERNEL_CPUS` (`--kernel-cpus-default`).
    pub cpus_default: Option<u64>,
    /// CPU limit without `KERNEL_CPUS_LIMIT` (`--kernel-cpus-limit-default`).
    pub cpus_limit_default: Option<u64>,
    /// Most CPUs a request may name (`--kernel-cpus-max`).
    pub cpus_max: Option<u64>,
    /// Memory reservation without `KERNEL_MEMORY` (`--kernel-memory-default`).
    pub memory_default: Option<u64>,
    /// Memory limit without `KERNEL_MEMORY_LIMIT` (`--kernel-memory-limit-default`).
    pub memory_limit_default: Option<u64>,
    /// Most memory a request may name (`--kernel-memory-max`).
    pub memory_max: Option<u64>,
    /// Most GPUs a request may name (`--kernel-gpus-max`).
    pub gpus_max: Option<u32>,
}

impl Default for DockerSettings {
    fn default() -> Self {
        DockerSettings {
            socket: PathBuf::from("/var/run/docker.sock"),
            network: "bridge".into(),
            image: None,
            name_prefix: "gateway-lite".into(),
            labels: Vec::new(),
            allowed_images: Vec::new(),
            network_per_user: false,
            read_only: true,
            swarm_network: None,
            resources: ResourcePolicy::default(),
        }
    }
}

/// Where the token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--auth-token` or `GATEWAY_LITE_AUTH_TOKEN`.
    Given,
    /// `--auth-token-file`.
    File(PathBuf),
    /// Made at start (none was configured).
    Generated,
}

/// How HTTP clients authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// A token is required.
    Token {
        /// The token.
        value: String,
        /// Where it came from.
        source: TokenSource,
    },
    /// `--no-auth` (loopback only).
    Off,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Token { source, .. } => write!(f, "Token(<redacted>, {source:?})"),
            Auth::Off => f.write_str("Off"),
        }
    }
}

/// What guards the HTTP edge, and how it is reached.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Token or none.
    pub auth: Auth,
    /// Host names allowed in `Host` besides IP literals and localhost; `*` allows any.
    pub allow_hosts: Vec<String>,
    /// Web origins allowed besides the gateway's own; `*` allows any.
    pub allow_origins: Vec<String>,
    /// Open HTTP connections at once.
    pub max_connections: usize,
    /// TLS, when `--certfile` and `--keyfile` are given: the checked server configuration.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// The path prefix of every route, starting and ending with `/` (`/` for none).
    pub base_url: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub ip: IpAddr,
    /// Listen port (0 = any).
    pub port: u16,
    /// Authentication, Host and Origin checks, connection cap.
    pub edge: Edge,
    /// `--kernelspec-dir` values, in order.
    pub kernelspec_dirs: Vec<PathBuf>,
    /// Jupyter data path inputs.
    pub search: SearchEnv,
    /// `--default-kernel-name`.
    pub default_kernel_name: Option<String>,
    /// The kernel-launcher binary.
    pub launcher: PathBuf,
    /// Default launch timeout.
    pub launch_timeout: Duration,
    /// The SSH provisioner's settings.
    pub ssh: SshSettings,
    /// The Docker provisioner's settings.
    pub docker: DockerSettings,
    /// Ports launchers may use.
    pub port_range: PortRange,
    /// What local kernels get of the gateway's environment (captured at start): the
    /// standard variables ([`KERNEL_ENV_STANDARD`]) and the `--kernel-env` ones.
    pub kernel_base_env: std::collections::BTreeMap<String, String>,
    /// Problems that are no errors, logged at start (e.g. a token on the command line).
    pub warnings: Vec<String>,
    /// Response listener address.
    pub response_ip: IpAddr,
    /// Address local kernels bind.
    pub kernel_ip: IpAddr,
    /// WebSocket message size limit.
    pub max_message_bytes: usize,
    /// CurveZMQ to kernels whose spec supports it (`--transport-encryption`).
    pub transport_encryption: TransportEncryption,
    /// Where kernels are recorded; `None`: no persistence.
    pub state_dir: Option<PathBuf>,
    /// Where `state_dir` comes from, or why there is none.
    pub state_dir_source: StateDirSource,
    /// How long a kernel's log file is kept after the kernel ended; zero: deleted at once.
    pub kernel_log_retention: Duration,
    /// The format of the gateway's own log.
    pub log_format: LogFormat,
    /// Shut kernels down at exit.
    pub shutdown_kernels_on_exit: bool,
    /// Kernel limits.
    pub limits: Limits,
    /// Consecutive automatic restarts of a kernel that died; 0 turns them off.
    pub restart_limit: u32,
    /// Idle culling, when on.
    pub cull: Option<Cull>,
    /// Warm pools (`--pool`).
    pub pools: Pools,
}

/// `--transport-encryption`: whether gateway-lite asks launchers for CurveZMQ between itself
/// and kernels whose kernelspec lists "curve" in `metadata.supported_encryption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEncryption {
    /// Never ask; every kernel runs in clear text.
    None,
    /// Ask; a kernel that cannot do CurveZMQ runs in clear text.
    Auto,
    /// Ask; a spec without CurveZMQ, or a kernel that cannot do it, fails its start.
    Required,
}

impl TransportEncryption {
    /// `none`, `auto` or `required` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "auto" => Some(Self::Auto),
            "required" => Some(Self::Required),
            _ => None,
        }
    }

    /// The option's value, as the launcher's `TRANSPORT_ENCRYPTION` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Auto => "auto",
            Self::Required => "required",
        }
    }
}

/// Most kernels one pool keeps (`--pool NAME=N`).
pub const MAX_POOL_SIZE: usize = 256;
/// Most pooled launches at once (`--pool-refill-concurrency`).
pub const MAX_POOL_REFILL_CONCURRENCY: usize = 64;

/// Warm pools: started, idle kernels kept per kernelspec for requests to claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pools {
    /// Kernels to keep per kernelspec name (each at least 1, names unique).
    pub sizes: std::collections::BTreeMap<String, usize>,
    /// Pooled launches at once across all pools (at least 1).
    pub refill_concurrency: usize,
    /// How long a refill waits before it launches.
    pub refill_delay: Duration,
}

/// Variables of the gateway's environment every local kernel gets (`PREFIX*` for a prefix):
/// what a process needs to find programs, files, language and time, and the usual homes of
/// Jupyter, Java and Spark. Nothing else passes unless `--kernel-env` names it; in
/// particular no `GATEWAY_LITE_*` (the token is one).
pub const KERNEL_ENV_STANDARD: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "TERM",
    "JUPYTER_*",
    "XDG_RUNTIME_DIR",
    "XDG_DATA_HOME",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "JAVA_HOME",
    "SPARK_HOME",
    "HADOOP_CONF_DIR",
    "YARN_CONF_DIR",
];

/// Whether `name` is matched by one of `patterns` (a name, or `PREFIX*`).
pub fn env_matches(patterns: &[impl AsRef<str>], name: &str) -> bool {
    patterns.iter().any(|p| {
        let p = p.as_ref();
        match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        }
    })
}

/// Parses a positive, finite number of seconds (`"30"`, `"2.5"`).
pub fn parse_secs(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0 && secs < 1e9).then(|| Duration::from_secs_f64(secs))
}
