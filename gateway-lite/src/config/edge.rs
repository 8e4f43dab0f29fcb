//! The options of the HTTP edge: how clients authenticate, which `Host` and `Origin`
//! headers are accepted, how many connections are open at once (TLS and the base URL are in
//! [`super::listen`]), and which ports launchers may use. Safe by default: without a token
//! one is generated; `--no-auth` is refused unless the gateway listens on loopback only.

use std::net::IpAddr;
use std::path::Path;

use protocol::ports::PortRange;

use super::args::Args;
use super::listen;
use super::settings::{Auth, ConfigError, Edge, TokenSource};

/// Longest token read from a file or the command line.
const MAX_TOKEN: usize = 4096;

/// The edge options; `token_on_command_line` says `--auth-token` was given as an argument
/// (readable by every local user), which is warned about in `warnings`.
pub(super) fn edge(
    args: &Args,
    ip: IpAddr,
    token_on_command_line: bool,
    warnings: &mut Vec<String>,
) -> Result<Edge, ConfigError> {
    let auth = if args.no_auth {
        if !ip.is_loopback() {
            return Err(ConfigError {
                option: "--no-auth (env GATEWAY_LITE_NO_AUTH)",
                problem: format!(
                    "refused while listening on {ip}: anyone who reaches the port could run code as this user; listen on 127.0.0.1 (--ip) or use a token (--auth-token-file)"
                ),
            });
        }
        Auth::Off
    } else if let Some(path) = &args.auth_token_file {
        Auth::Token {
            value: token_from_file(path, warnings)?,
            source: TokenSource::File(path.clone()),
        }
    } else if let Some(t) = args.auth_token.as_deref().filter(|t| !t.is_empty()) {
        check_token(t, "--auth-token (env GATEWAY_LITE_AUTH_TOKEN)")?;
        if token_on_command_line {
            warnings.push(
                "--auth-token on the command line is readable by every local user (ps); use GATEWAY_LITE_AUTH_TOKEN or --auth-token-file".into(),
            );
        }
        Auth::Token {
            value: t.to_owned(),
            source: TokenSource::Given,
        }
    } else {
        Auth::Token {
            value: generate_token(),
            source: TokenSource::Generated,
        }
    };
    let mut allow_hosts = Vec::new();
    for h in args
        .allow_hosts
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
    {
        if h != "*"
            && !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        {
            return Err(ConfigError {
                option: "--allow-host (env GATEWAY_LITE_ALLOW_HOSTS)",
                problem: format!("{h:?} is not a host name; give e.g. gateway.example.org"),
            });
        }
        allow_hosts.push(h.to_ascii_lowercase());
    }
    let mut allow_origins = Vec::new();
    for o in args
        .allow_origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
    {
        let shaped = o == "*"
            || ((o.starts_with("http://") || o.starts_with("https://"))
                && !o
                    .trim_end_matches('/')
                    .contains(|c: char| c.is_whitespace())
                && o.matches('/').count() <= 3);
        if !shaped {
            return Err(ConfigError {
                option: "--allow-origin (env GATEWAY_LITE_ALLOW_ORIGIN)",
                problem: format!(
                    "{o:?} is not an origin; give scheme://host[:port], e.g. https://lab.example.org, or *"
                ),
            });
        }
        allow_origins.push(o.trim_end_matches('/').to_ascii_lowercase());
    }
    if args.max_connections < 16 {
        return Err(ConfigError {
            option: "--max-connections (env GATEWAY_LITE_MAX_CONNECTIONS)",
            problem: format!("{} is too few; give at least 16", args.max_connections),
        });
    }
    Ok(Edge {
        auth,
        allow_hosts,
        allow_origins,
        max_connections: args.max_connections,
        tls: listen::tls(args, warnings)?,
        base_url: listen::base_url(args)?,
    })
}

fn check_token(t: &str, option: &'static str) -> Result<(), ConfigError> {
    if t.len() > MAX_TOKEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError {
            option,
            problem: format!(
                "the token must be at most {MAX_TOKEN} printable ASCII characters without spaces"
            ),
        });
    }
    Ok(())
}

fn token_from_file(path: &Path, warnings: &mut Vec<String>) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    const OPTION: &str = "--auth-token-file (env GATEWAY_LITE_AUTH_TOKEN_FILE)";
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        option: OPTION,
        problem: format!("cannot read {}: {e}", path.display()),
    })?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        return Err(ConfigError {
            option: OPTION,
            problem: format!("{} holds no token on its first line", path.display()),
        });
    }
    check_token(&token, OPTION)?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warnings.push(format!(
            "{} can be read by other users; chmod 600 it",
            path.display()
        ));
    }
    Ok(token)
}

/// 256 random bits from the operating system, as 64 hex digits.
fn generate_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `--port-range` (or `EG_PORT_RANGE`); any port when absent.
pub(super) fn port_range(args: &Args) -> Result<PortRange, ConfigError> {
    let (text, option) = match (&args.port_range, &args.eg_port_range) {
        (Some(r), _) => (r, "--port-range (env GATEWAY_LITE_PORT_RANGE)"),
        (None, Some(r)) => (r, "EG_PORT_RANGE (--port-range)"),
        (None, None) => return Ok(PortRange::Unrestricted),
    };
    PortRange::parse(text, 1000).map_err(|e| ConfigError {
        option,
        problem: format!("{e}; use e.g. 40000..41999 (at least 1000 ports), or 0..0 for any"),
    })
}

/// `--kernel-env` names: variable names, or `PREFIX*`; never the gateway's own.
pub(super) fn kernel_env(args: &Args) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for name in args
        .kernel_env
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
    {
        let bare = name.strip_suffix('*').unwrap_or(name);
        let valid = !bare.is_empty()
            && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !"GATEWAY_LITE_".starts_with(bare)
            && !bare.starts_with("GATEWAY_LITE_");
        if !valid {
            return Err(ConfigError {
                option: "--kernel-env (env GATEWAY_LITE_KERNEL_ENV)",
                problem: format!(
                    "{name:?} is not a variable name or PREFIX* (and GATEWAY_LITE_* never passes); give e.g. SPARK_HOME or CONDA_*"
                ),
            });
        }
        out.push(name.to_owned());
    }
    Ok(out)
}
