//! The raw command line as clap sees it, and its translation into a checked [`Config`].
//!
//! Each option has an environment variable (`GATEWAY_LITE_*`, and Enterprise Gateway's own
//! names where a team migrating from it would already have set them). Every check names the
//! option and its variable, and says what to write instead.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::names::{parse_hosts, valid_image, valid_name};
use super::settings::{
    Config, ConfigError, Cull, DockerSettings, Limits, SearchEnv, SshSettings, parse_secs,
};

/// The raw command line, as clap sees it.
#[derive(Debug, Parser)]
#[command(
    name = "gateway-lite",
    version,
    about = "A small Jupyter Kernel Gateway that starts kernels through kernel-launcher",
    after_help = "Exit codes: 0 after SIGTERM/SIGINT; 64 a configuration error (the message names the \
option and the fix); 71 the async runtime could not start; 1 a failure while starting or serving \
(address in use, state directory locked by another gateway, ...), with the cause on stderr."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_LITE_IP", default_value = "127.0.0.1")]
    ip: String,
    /// Port to listen on (0 picks a free port; the chosen address is logged and printed).
    #[arg(long, env = "GATEWAY_LITE_PORT", default_value_t = 8888)]
    port: u16,
    /// Token clients must present (`Authorization: token T` or `?token=T`). Empty: no auth.
    #[arg(long, env = "GATEWAY_LITE_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Extra kernelspec directory (holding `<name>/kernel.json`); searched before the
    /// Jupyter data paths. Repeatable.
    #[arg(
        long = "kernelspec-dir",
        env = "GATEWAY_LITE_KERNELSPEC_DIRS",
        value_delimiter = ':'
    )]
    kernelspec_dirs: Vec<PathBuf>,
    /// Name of the default kernelspec (default: python3 if present, else the first by name).
    #[arg(long, env = "GATEWAY_LITE_DEFAULT_KERNEL_NAME")]
    default_kernel_name: Option<String>,
    /// The kernel-launcher binary (default: next to gateway-lite, then on PATH).
    #[arg(long, env = "GATEWAY_LITE_LAUNCHER")]
    launcher: Option<PathBuf>,
    /// Seconds to wait for a kernel's connection payload; `KERNEL_LAUNCH_TIMEOUT` in the
    /// request's env wins, as in Enterprise Gateway.
    #[arg(long, env = "GATEWAY_LITE_LAUNCH_TIMEOUT", default_value = "30")]
    launch_timeout: String,
    /// Value of `Access-Control-Allow-Origin` (`*` or one origin). Absent: no CORS headers.
    #[arg(long, env = "GATEWAY_LITE_ALLOW_ORIGIN")]
    allow_origin: Option<String>,
    /// Remote hosts for `DistributedProcessProxy` kernelspecs: ssh destinations (`host`,
    /// `user@host`, an ssh config alias), comma-separated. `EG_REMOTE_HOSTS` is read too.
    /// Launchers there report to --response-ip, so give one the hosts can reach.
    #[arg(long, env = "GATEWAY_LITE_REMOTE_HOSTS")]
    remote_hosts: Option<String>,
    /// Enterprise Gateway's spelling of --remote-hosts.
    #[arg(
        long = "EnterpriseGatewayApp.remote_hosts",
        env = "EG_REMOTE_HOSTS",
        hide = true
    )]
    eg_remote_hosts: Option<String>,
    /// ssh client configuration for remote hosts (`ssh -F FILE`). Default: ~/.ssh/config.
    #[arg(long, env = "GATEWAY_LITE_SSH_CONFIG")]
    ssh_config: Option<PathBuf>,
    /// User on the remote hosts (`ssh -l USER`). Default: ssh's choice.
    #[arg(long, env = "GATEWAY_LITE_SSH_USER")]
    ssh_user: Option<String>,
    /// How a remote host is chosen: round-robin, or least-connection (fewest live kernels).
    /// Either way, a host ssh could not reach is skipped for 30 s while another is up, and
    /// the launch that found it down is sent to another host.
    #[arg(
        long,
        env = "GATEWAY_LITE_LOAD_BALANCING",
        default_value = "round-robin"
    )]
    load_balancing: String,
    /// Seconds ssh may take to connect to a remote host (whole seconds).
    #[arg(long, env = "GATEWAY_LITE_SSH_CONNECT_TIMEOUT", default_value = "10")]
    ssh_connect_timeout: String,
    /// Directory on the remote hosts for launcher logs and pid files.
    #[arg(long, env = "GATEWAY_LITE_REMOTE_LOG_DIR", default_value = "/tmp")]
    remote_log_dir: String,
    /// Docker network kernel containers join (`DockerProcessProxy` and
    /// `DockerSwarmProcessProxy` kernelspecs). `EG_DOCKER_NETWORK` is read too. Containers
    /// report to --response-ip, so give one they can reach, e.g. this network's gateway
    /// address on the host (`docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' NET`).
    #[arg(long, env = "GATEWAY_LITE_DOCKER_NETWORK")]
    docker_network: Option<String>,
    /// Enterprise Gateway's spelling of --docker-network.
    #[arg(long = "eg-docker-network", env = "EG_DOCKER_NETWORK", hide = true)]
    eg_docker_network: Option<String>,
    /// Kernel image for Docker kernelspecs without `metadata.process_proxy.config.image_name`
    /// (a request's `KERNEL_IMAGE` wins over both). `EG_KERNEL_IMAGE` is read too.
    #[arg(long, env = "GATEWAY_LITE_DOCKER_IMAGE")]
    docker_image: Option<String>,
    /// Enterprise Gateway's spelling of --docker-image.
    #[arg(long = "eg-kernel-image", env = "EG_KERNEL_IMAGE", hide = true)]
    eg_kernel_image: Option<String>,
    /// Kernel containers are named PREFIX-<kernel id>.
    #[arg(
        long,
        env = "GATEWAY_LITE_DOCKER_NAME_PREFIX",
        default_value = "gateway-lite"
    )]
    docker_name_prefix: String,
    /// Extra label KEY=VALUE on every kernel container (besides kernel_id, component=kernel
    /// and app=gateway-lite). Repeatable; comma-separated in the environment variable.
    #[arg(
        long = "docker-label",
        env = "GATEWAY_LITE_DOCKER_LABELS",
        value_delimiter = ','
    )]
    docker_labels: Vec<String>,
    /// The Docker Engine API socket kernel containers are run through: `unix:///PATH` or a
    /// path. Default: `DOCKER_HOST` when it is a `unix://` URL, else /var/run/docker.sock.
    #[arg(long, env = "GATEWAY_LITE_DOCKER_HOST")]
    docker_host: Option<String>,
    /// Docker's own variable, read when --docker-host is not given.
    #[arg(long = "docker-host-env", env = "DOCKER_HOST", hide = true)]
    docker_host_env: Option<String>,
    /// Address the response listener binds and launchers are told to report to.
    #[arg(long, env = "GATEWAY_LITE_RESPONSE_IP", default_value = "127.0.0.1")]
    response_ip: String,
    /// Address local kernels bind their ZeroMQ and comm ports on (`KERNEL_LAUNCHER_IP`).
    #[arg(long, env = "GATEWAY_LITE_KERNEL_IP", default_value = "127.0.0.1")]
    kernel_ip: String,
    /// Largest WebSocket message accepted from a client, in bytes.
    #[arg(long, env = "GATEWAY_LITE_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Directory where running kernels are recorded, so a restarted gateway re-attaches to
    /// them (and launchers' logs are kept). Default: $XDG_STATE_HOME/gateway-lite/port-PORT
    /// (~/.local/state/...), or none with --port 0.
    #[arg(long, env = "GATEWAY_LITE_STATE_DIR", conflicts_with = "no_state_dir")]
    state_dir: Option<PathBuf>,
    /// Do not record kernels: they end with the gateway.
    #[arg(long, env = "GATEWAY_LITE_NO_STATE_DIR")]
    no_state_dir: bool,
    /// Shut every kernel down when the gateway exits (SIGTERM/SIGINT). Without it, kernels
    /// keep running for the next gateway when a state directory is in use.
    #[arg(long, env = "GATEWAY_LITE_SHUTDOWN_KERNELS_ON_EXIT")]
    shutdown_kernels_on_exit: bool,
    /// Most kernels at once (EG's max_kernels). Absent: no limit.
    #[arg(long, env = "GATEWAY_LITE_MAX_KERNELS")]
    max_kernels: Option<usize>,
    /// Most kernels at once per KERNEL_USERNAME (EG's max_kernels_per_user). Absent or -1: no limit.
    #[arg(
        long,
        env = "GATEWAY_LITE_MAX_KERNELS_PER_USER",
        allow_negative_numbers = true
    )]
    max_kernels_per_user: Option<i64>,
    /// Consecutive automatic restarts of a kernel that died; 0 turns automatic restart off.
    #[arg(long, env = "GATEWAY_LITE_RESTART_LIMIT", default_value_t = 5)]
    restart_limit: u32,
    /// Seconds of inactivity after which a kernel is shut down (Jupyter's cull_idle_timeout); 0: never.
    #[arg(long, env = "GATEWAY_LITE_CULL_IDLE_TIMEOUT", default_value = "0")]
    cull_idle_timeout: String,
    /// Seconds between idle checks (Jupyter's cull_interval).
    #[arg(long, env = "GATEWAY_LITE_CULL_INTERVAL", default_value = "300")]
    cull_interval: String,
    /// Cull kernels with open WebSocket connections too (Jupyter's cull_connected).
    #[arg(long, env = "GATEWAY_LITE_CULL_CONNECTED")]
    cull_connected: bool,
    /// Cull busy kernels too (Jupyter's cull_busy).
    #[arg(long, env = "GATEWAY_LITE_CULL_BUSY")]
    cull_busy: bool,
}

impl Config {
    /// Parses the process's command line and environment. `--help` and `--version` print
    /// and exit 0 inside; every other problem, syntax included, is a [`ConfigError`].
    pub fn from_args() -> Result<Self, ConfigError> {
        parse(std::env::args_os(), SearchEnv::from_env(), true)
    }

    /// Parses an explicit argv (for tests); the environment is still consulted by clap.
    pub fn try_from_iter<I, T>(argv: I, search: SearchEnv) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        parse(argv, search, false)
    }
}

/// Parses `argv`; with `exit_on_help`, `--help` and `--version` print and exit 0.
fn parse<I, T>(argv: I, search: SearchEnv, exit_on_help: bool) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::try_parse_from(argv).map_err(|e| {
        use clap::error::ErrorKind;
        if exit_on_help && matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            e.exit();
        }
        ConfigError {
            option: "command line",
            problem: e.to_string(),
        }
    })?;
    from_parsed(args, search)
}

fn from_parsed(args: Args, search: SearchEnv) -> Result<Config, ConfigError> {
    let ip = parse_ip(&args.ip, "--ip (env GATEWAY_LITE_IP)")?;
    let response_ip = parse_ip(
        &args.response_ip,
        "--response-ip (env GATEWAY_LITE_RESPONSE_IP)",
    )?;
    if response_ip.is_unspecified() {
        return Err(ConfigError {
            option: "--response-ip (env GATEWAY_LITE_RESPONSE_IP)",
            problem: format!(
                "{response_ip} cannot be advertised to launchers; give the address they can reach, e.g. 127.0.0.1"
            ),
        });
    }
    let kernel_ip = parse_ip(&args.kernel_ip, "--kernel-ip (env GATEWAY_LITE_KERNEL_IP)")?;
    let ssh = ssh_settings(&args)?;
    let docker = docker_settings(&args)?;
    let launch_timeout = parse_secs(&args.launch_timeout).ok_or_else(|| ConfigError {
        option: "--launch-timeout (env GATEWAY_LITE_LAUNCH_TIMEOUT)",
        problem: format!(
            "{:?} is not a positive number of seconds; use e.g. 30",
            args.launch_timeout
        ),
    })?;
    for dir in &args.kernelspec_dirs {
        if !dir.is_dir() {
            return Err(ConfigError {
                option: "--kernelspec-dir (env GATEWAY_LITE_KERNELSPEC_DIRS)",
                problem: format!(
                    "{} is not a directory; give a directory holding <name>/kernel.json",
                    dir.display()
                ),
            });
        }
    }
    if args.max_message_bytes < 1024 {
        return Err(ConfigError {
            option: "--max-message-bytes (env GATEWAY_LITE_MAX_MESSAGE_BYTES)",
            problem: format!("{} is too small; use at least 1024", args.max_message_bytes),
        });
    }
    let secs_or_zero =
        |text: &str, option: &'static str| -> Result<Option<Duration>, ConfigError> {
            if text.trim().parse::<f64>().is_ok_and(|v| v == 0.0) {
                return Ok(None);
            }
            parse_secs(text).map(Some).ok_or_else(|| ConfigError {
                option,
                problem: format!(
                    "{text:?} is not a number of seconds; use e.g. 3600, or 0 to turn it off"
                ),
            })
        };
    let cull_idle = secs_or_zero(
        &args.cull_idle_timeout,
        "--cull-idle-timeout (env GATEWAY_LITE_CULL_IDLE_TIMEOUT)",
    )?;
    let cull_interval = parse_secs(&args.cull_interval).ok_or_else(|| ConfigError {
        option: "--cull-interval (env GATEWAY_LITE_CULL_INTERVAL)",
        problem: format!(
            "{:?} is not a positive number of seconds; use e.g. 300",
            args.cull_interval
        ),
    })?;
    if args.max_kernels == Some(0) {
        return Err(ConfigError {
            option: "--max-kernels (env GATEWAY_LITE_MAX_KERNELS)",
            problem: "0 would refuse every kernel; give at least 1, or leave it out for no limit"
                .into(),
        });
    }
    let max_kernels_per_user = match args.max_kernels_per_user {
        None | Some(-1) => None,
        Some(n) if n >= 1 => usize::try_from(n).ok(),
        Some(n) => {
            return Err(ConfigError {
                option: "--max-kernels-per-user (env GATEWAY_LITE_MAX_KERNELS_PER_USER)",
                problem: format!("{n} is not a limit; give at least 1, or -1 for no limit"),
            });
        }
    };
    let state_dir = match args.state_dir {
        _ if args.no_state_dir => None,
        Some(dir) => Some(dir),
        None if args.port == 0 => None,
        None => {
            let base = search
                .state_home
                .clone()
                .or_else(|| search.home.as_ref().map(|h| h.join(".local/state")));
            // Without XDG_STATE_HOME or HOME there is no per-user default: no persistence.
            base.map(|b| b.join("gateway-lite").join(format!("port-{}", args.port)))
        }
    };
    let limits = Limits {
        max_kernels: args.max_kernels,
        max_kernels_per_user,
    };
    let cull = cull_idle.map(|idle_timeout| Cull {
        idle_timeout,
        interval: cull_interval,
        connected: args.cull_connected,
        busy: args.cull_busy,
    });
    let launcher = match args.launcher {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError {
                        option: "--launcher (env GATEWAY_LITE_LAUNCHER)",
                        problem: format!(
                            "{} is not a file; give the path of the kernel-launcher binary",
                            path.display()
                        ),
                    });
                }
                path
            }
            None => default_launcher().ok_or_else(|| ConfigError {
                option: "--launcher (env GATEWAY_LITE_LAUNCHER)",
                problem: "kernel-launcher was found neither next to gateway-lite nor on PATH; build it (cargo build -p launcher) or pass --launcher PATH".into(),
            })?,
        };
    Ok(Config {
        ip,
        port: args.port,
        auth_token: args.auth_token.filter(|t| !t.is_empty()),
        kernelspec_dirs: args.kernelspec_dirs,
        ssh,
        docker,
        search,
        default_kernel_name: args.default_kernel_name.filter(|n| !n.is_empty()),
        launcher,
        launch_timeout,
        allow_origin: args.allow_origin.filter(|o| !o.is_empty()),
        response_ip,
        kernel_ip,
        max_message_bytes: args.max_message_bytes,
        state_dir,
        shutdown_kernels_on_exit: args.shutdown_kernels_on_exit,
        limits,
        restart_limit: args.restart_limit,
        cull,
    })
}

fn parse_ip(text: &str, option: &'static str) -> Result<IpAddr, ConfigError> {
    text.trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| ConfigError {
            option,
            problem: format!("{text:?} is not an IP address; use e.g. 127.0.0.1 or ::1"),
        })
}

/// The Docker provisioner's options.
fn docker_settings(args: &Args) -> Result<DockerSettings, ConfigError> {
    let (network, option) = match (&args.docker_network, &args.eg_docker_network) {
        (Some(n), _) => (
            n.clone(),
            "--docker-network (env GATEWAY_LITE_DOCKER_NETWORK)",
        ),
        (None, Some(n)) => (n.clone(), "EG_DOCKER_NETWORK (--docker-network)"),
        (None, None) => ("bridge".to_owned(), "--docker-network"),
    };
    if !valid_name(&network) {
        return Err(ConfigError {
            option,
            problem: format!(
                "{network:?} is not a Docker network name; use letters, digits, '_', '.', '-' (e.g. bridge)"
            ),
        });
    }
    let (image, option) = match (&args.docker_image, &args.eg_kernel_image) {
        (Some(i), _) => (
            Some(i.clone()),
            "--docker-image (env GATEWAY_LITE_DOCKER_IMAGE)",
        ),
        (None, i) => (i.clone(), "EG_KERNEL_IMAGE (--docker-image)"),
    };
    let image = image.filter(|i| !i.is_empty());
    if let Some(i) = image.as_deref().filter(|i| !valid_image(i)) {
        return Err(ConfigError {
            option,
            problem: format!(
                "{i:?} is not an image reference; use e.g. gateway-lite/python-kernel:latest"
            ),
        });
    }
    if !valid_name(&args.docker_name_prefix) {
        return Err(ConfigError {
            option: "--docker-name-prefix (env GATEWAY_LITE_DOCKER_NAME_PREFIX)",
            problem: format!(
                "{:?} cannot start a container name; use letters, digits, '_', '.', '-' (e.g. gateway-lite)",
                args.docker_name_prefix
            ),
        });
    }
    let mut labels = Vec::new();
    for l in args.docker_labels.iter().filter(|l| !l.is_empty()) {
        match l.split_once('=') {
            Some((k, v))
                if !k.is_empty() && !k.contains(char::is_whitespace) && !v.contains('\0') =>
            {
                labels.push((k.to_owned(), v.to_owned()));
            }
            _ => {
                return Err(ConfigError {
                    option: "--docker-label (env GATEWAY_LITE_DOCKER_LABELS)",
                    problem: format!("{l:?} is not KEY=VALUE; use e.g. team=data"),
                });
            }
        }
    }
    let socket = docker_socket(args)?;
    Ok(DockerSettings {
        socket,
        network,
        image,
        name_prefix: args.docker_name_prefix.clone(),
        labels,
    })
}

/// The Engine API socket: `--docker-host`, else `DOCKER_HOST`, else the default path. Only
/// Unix sockets are spoken (a TCP daemon would need TLS settings this gateway does not take).
fn docker_socket(args: &Args) -> Result<PathBuf, ConfigError> {
    let (value, option) = match (&args.docker_host, &args.docker_host_env) {
        (Some(v), _) if !v.is_empty() => {
            (v.as_str(), "--docker-host (env GATEWAY_LITE_DOCKER_HOST)")
        }
        (_, Some(v)) if !v.is_empty() => (v.as_str(), "DOCKER_HOST (--docker-host)"),
        _ => return Ok(DockerSettings::default().socket),
    };
    let path = value.strip_prefix("unix://").unwrap_or(value);
    if !path.starts_with('/') {
        return Err(ConfigError {
            option,
            problem: format!(
                "{value:?} is not a Unix socket; give unix:///var/run/docker.sock or a socket path"
            ),
        });
    }
    Ok(PathBuf::from(path))
}

/// The SSH provisioner's options.
fn ssh_settings(args: &Args) -> Result<SshSettings, ConfigError> {
    let hosts = match (&args.remote_hosts, &args.eg_remote_hosts) {
        (Some(h), _) => parse_hosts(h).map_err(|problem| ConfigError {
            option: "--remote-hosts (env GATEWAY_LITE_REMOTE_HOSTS)",
            problem: format!("{problem}; give ssh destinations separated by commas"),
        })?,
        (None, Some(h)) => parse_hosts(h).map_err(|problem| ConfigError {
            option: "EG_REMOTE_HOSTS (--EnterpriseGatewayApp.remote_hosts)",
            problem: format!("{problem}; give ssh destinations separated by commas"),
        })?,
        (None, None) => Vec::new(),
    };
    if let Some(f) = &args.ssh_config
        && !f.is_file()
    {
        return Err(ConfigError {
            option: "--ssh-config (env GATEWAY_LITE_SSH_CONFIG)",
            problem: format!("{} is not a file; give an ssh_config file", f.display()),
        });
    }
    let user = args.ssh_user.clone().filter(|u| !u.is_empty());
    if let Some(u) = &user
        && (u.starts_with('-') || u.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(ConfigError {
            option: "--ssh-user (env GATEWAY_LITE_SSH_USER)",
            problem: format!("{u:?} is not a user name"),
        });
    }
    let balancing = args.load_balancing.parse().map_err(|problem| ConfigError {
        option: "--load-balancing (env GATEWAY_LITE_LOAD_BALANCING)",
        problem,
    })?;
    let connect_timeout = args
        .ssh_connect_timeout
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=3600).contains(s))
        .ok_or_else(|| ConfigError {
            option: "--ssh-connect-timeout (env GATEWAY_LITE_SSH_CONNECT_TIMEOUT)",
            problem: format!(
                "{:?} is not a whole number of seconds from 1 to 3600; use e.g. 10",
                args.ssh_connect_timeout
            ),
        })?;
    let dir = &args.remote_log_dir;
    if !dir.starts_with('/') || dir.chars().any(char::is_control) {
        return Err(ConfigError {
            option: "--remote-log-dir (env GATEWAY_LITE_REMOTE_LOG_DIR)",
            problem: format!("{dir:?} is not an absolute path; use e.g. /tmp"),
        });
    }
    Ok(SshSettings {
        hosts,
        ssh_config: args.ssh_config.clone(),
        user,
        balancing,
        connect_timeout: Duration::from_secs(connect_timeout),
        remote_log_dir: dir.clone(),
        ..SshSettings::default()
    })
}

/// `kernel-launcher` next to our own binary, else the first on `PATH`.
fn default_launcher() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("kernel-launcher")));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kernel-launcher"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let exe = std::env::current_exe().unwrap();
        let launcher = exe.to_string_lossy().into_owned();
        let mut argv = vec!["gateway-lite", "--launcher", &launcher];
        argv.extend_from_slice(extra);
        Config::try_from_iter(argv, SearchEnv::default())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.launch_timeout, Duration::from_secs(30));
        assert!(c.auth_token.is_none());
        assert_eq!(c.ip.to_string(), "127.0.0.1");
    }

    #[test]
    fn errors_name_the_option() {
        let e = parse(&["--launch-timeout", "soon"]).unwrap_err();
        assert!(e.option.starts_with("--launch-timeout"), "{e}");
        let e = parse(&["--ip", "nowhere"]).unwrap_err();
        assert!(e.option.starts_with("--ip"), "{e}");
        let e = parse(&["--response-ip", "0.0.0.0"]).unwrap_err();
        assert!(e.option.starts_with("--response-ip"), "{e}");
        let e = parse(&["--kernelspec-dir", "/definitely/not/here"]).unwrap_err();
        assert!(e.option.starts_with("--kernelspec-dir"), "{e}");
    }

    #[test]
    fn policy_options() {
        let c = parse(&["--port", "0"]).unwrap();
        assert!(c.state_dir.is_none(), "no default state with --port 0");
        assert!(c.cull.is_none());
        assert_eq!(c.restart_limit, 5);
        let c = parse(&[
            "--cull-idle-timeout",
            "60",
            "--cull-interval",
            "5",
            "--max-kernels",
            "3",
            "--max-kernels-per-user",
            "-1",
            "--state-dir",
            "/tmp/x",
        ])
        .unwrap();
        let cull = c.cull.unwrap();
        assert_eq!(cull.idle_timeout, Duration::from_secs(60));
        assert_eq!(cull.interval, Duration::from_secs(5));
        assert_eq!(c.limits.max_kernels, Some(3));
        assert_eq!(c.limits.max_kernels_per_user, None);
        assert_eq!(c.state_dir.as_deref(), Some(Path::new("/tmp/x")));
        let c = parse(&["--port", "9999", "--no-state-dir"]).unwrap();
        assert!(
            c.state_dir.is_none(),
            "--no-state-dir turns persistence off"
        );
        for (args, option) in [
            (&["--cull-idle-timeout", "soon"][..], "--cull-idle-timeout"),
            (&["--cull-interval", "0"][..], "--cull-interval"),
            (&["--max-kernels", "0"][..], "--max-kernels "),
            (
                &["--max-kernels-per-user", "0"][..],
                "--max-kernels-per-user",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.option.starts_with(option), "{args:?}: {e}");
        }
    }

    #[test]
    fn docker_options() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.docker.network, "bridge");
        assert_eq!(c.docker.name_prefix, "gateway-lite");
        assert_eq!(c.docker.socket, Path::new("/var/run/docker.sock"));
        let c = parse(&["--docker-host", "unix:///run/d.sock"]).unwrap();
        assert_eq!(c.docker.socket, Path::new("/run/d.sock"));
        let c = parse(&[
            "--docker-network",
            "kernels",
            "--docker-image",
            "gateway-lite/python-kernel:latest",
            "--docker-label",
            "a=b",
            "--docker-label",
            "c=",
        ])
        .unwrap();
        assert_eq!(c.docker.network, "kernels");
        assert_eq!(
            c.docker.image.as_deref(),
            Some("gateway-lite/python-kernel:latest")
        );
        assert_eq!(
            c.docker.labels,
            vec![("a".into(), "b".into()), ("c".into(), String::new())]
        );
        for (args, option) in [
            (&["--docker-network=-x"][..], "--docker-network"),
            (&["--docker-image=--privileged"][..], "--docker-image"),
            (&["--docker-name-prefix", "a b"][..], "--docker-name-prefix"),
            (&["--docker-label", "novalue"][..], "--docker-label"),
            (&["--docker-host", "tcp://h:2375"][..], "--docker-host"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.option.starts_with(option), "{args:?}: {e}");
        }
    }

    #[test]
    fn ssh_options_are_checked_and_named() {
        use crate::config::settings::Balancing;
        let c = parse(&[
            "--remote-hosts",
            "a, root@b",
            "--load-balancing",
            "least-connection",
        ])
        .unwrap();
        assert_eq!(c.ssh.hosts, ["a", "root@b"]);
        assert_eq!(c.ssh.balancing, Balancing::LeastConnection);
        for (args, option) in [
            (&["--remote-hosts=a,-oProxyCommand=x"][..], "--remote-hosts"),
            (&["--load-balancing", "random"][..], "--load-balancing"),
            (
                &["--ssh-config", "/definitely/not/here"][..],
                "--ssh-config",
            ),
            (&["--ssh-user=-x"][..], "--ssh-user"),
            (&["--ssh-connect-timeout", "0"][..], "--ssh-connect-timeout"),
            (&["--remote-log-dir", "relative"][..], "--remote-log-dir"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.option.starts_with(option), "{args:?}: {e}");
        }
        assert!("fastest".parse::<Balancing>().is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_secs("0"), None);
        assert_eq!(parse_secs("-1"), None);
        assert_eq!(parse_secs("NaN"), None);
    }
}
