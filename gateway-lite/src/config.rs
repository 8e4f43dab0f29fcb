//! Command line and environment, parsed once into a typed [`Config`].
//!
//! Every knob of the gateway is read here and nowhere else: after [`Config::from_args`]
//! returns, no code looks at command-line arguments, and the only environment the rest of the
//! gateway reads is the one it hands to kernels (and the Jupyter data paths, which are part of
//! the kernelspec search and are captured here too, as [`SearchEnv`]). Errors name the option
//! (and its environment variable) and say how to fix it; `main` exits 64 (`EX_USAGE`) on them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

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

/// The raw command line, as clap sees it.
#[derive(Debug, Parser)]
#[command(
    name = "gateway-lite",
    version,
    about = "A small Jupyter Kernel Gateway that starts kernels through kernel-launcher"
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
    /// Address the response listener binds and launchers are told to report to.
    #[arg(long, env = "GATEWAY_LITE_RESPONSE_IP", default_value = "127.0.0.1")]
    response_ip: String,
    /// Address local kernels bind their ZeroMQ and comm ports on (`KERNEL_LAUNCHER_IP`).
    #[arg(long, env = "GATEWAY_LITE_KERNEL_IP", default_value = "127.0.0.1")]
    kernel_ip: String,
    /// Largest WebSocket message accepted from a client, in bytes.
    #[arg(long, env = "GATEWAY_LITE_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_message_bytes: usize,
}

/// Where the Jupyter data paths come from: the environment at start-up, captured once.
#[derive(Debug, Clone, Default)]
pub struct SearchEnv {
    /// `JUPYTER_PATH`, split on `:`.
    pub jupyter_path: Vec<PathBuf>,
    /// `JUPYTER_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `HOME` (never looked up through the password database).
    pub home: Option<PathBuf>,
}

impl SearchEnv {
    /// Reads `JUPYTER_PATH`, `JUPYTER_DATA_DIR` and `HOME`.
    pub fn from_env() -> Self {
        let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        SearchEnv {
            jupyter_path: non_empty("JUPYTER_PATH")
                .map(|v| {
                    std::env::split_paths(&v)
                        .filter(|p| !p.as_os_str().is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            data_dir: non_empty("JUPYTER_DATA_DIR").map(PathBuf::from),
            home: non_empty("HOME").map(PathBuf::from),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub ip: IpAddr,
    /// Listen port (0 = any).
    pub port: u16,
    /// Token, when authentication is on.
    pub auth_token: Option<String>,
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
    /// `Access-Control-Allow-Origin`.
    pub allow_origin: Option<String>,
    /// Response listener address.
    pub response_ip: IpAddr,
    /// Address local kernels bind.
    pub kernel_ip: IpAddr,
    /// WebSocket message size limit.
    pub max_message_bytes: usize,
}

impl Config {
    /// Parses the process's command line and environment. `--help` and `--version` print
    /// and exit 0 inside; every other problem, syntax included, is a [`ConfigError`].
    pub fn from_args() -> Result<Self, ConfigError> {
        let args = Args::try_parse().map_err(|e| {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            ConfigError {
                option: "command line",
                problem: e.to_string(),
            }
        })?;
        Self::from_parsed(args, SearchEnv::from_env())
    }

    /// Parses an explicit argv (for tests); the environment is still consulted by clap.
    pub fn try_from_iter<I, T>(argv: I, search: SearchEnv) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = Args::try_parse_from(argv).map_err(|e| ConfigError {
            option: "command line",
            problem: e.to_string(),
        })?;
        Self::from_parsed(args, search)
    }

    fn from_parsed(args: Args, search: SearchEnv) -> Result<Self, ConfigError> {
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
            search,
            default_kernel_name: args.default_kernel_name.filter(|n| !n.is_empty()),
            launcher,
            launch_timeout,
            allow_origin: args.allow_origin.filter(|o| !o.is_empty()),
            response_ip,
            kernel_ip,
            max_message_bytes: args.max_message_bytes,
        })
    }
}

fn parse_ip(text: &str, option: &'static str) -> Result<IpAddr, ConfigError> {
    text.trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| ConfigError {
            option,
            problem: format!("{text:?} is not an IP address; use e.g. 127.0.0.1 or ::1"),
        })
}

/// Parses a positive, finite number of seconds (`"30"`, `"2.5"`).
pub fn parse_secs(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0 && secs < 1e9).then(|| Duration::from_secs_f64(secs))
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
    fn seconds() {
        assert_eq!(parse_secs("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_secs("0"), None);
        assert_eq!(parse_secs("-1"), None);
        assert_eq!(parse_secs("NaN"), None);
    }
}
