//! The command line of `gateway-lite run`, and its exit codes.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Every code cell ran without an error.
pub const EXIT_OK: i32 = 0;
/// A cell raised an error: the notebook is saved up to it, the traceback is on stderr.
pub const EXIT_CELL_ERROR: i32 = 1;
/// A cell ran longer than `--cell-timeout`: it was interrupted and the notebook saved.
pub const EXIT_CELL_TIMEOUT: i32 = 3;
/// Bad usage or input: an option, a parameter or the notebook itself (message on stderr).
pub const EXIT_USAGE: i32 = 64;
/// The gateway or the kernel failed: unreachable, refused the request, the kernel did not
/// start or died, the connection was lost.
pub const EXIT_UNAVAILABLE: i32 = 69;
/// An internal error (the async runtime could not start).
pub const EXIT_SOFTWARE: i32 = 70;
/// The output notebook could not be written.
pub const EXIT_CANT_CREATE: i32 = 73;
/// Interrupted by SIGINT (Ctrl-C): the running cell was interrupted, what ran is saved.
pub const EXIT_SIGINT: i32 = 130;
/// Stopped by SIGTERM: as SIGINT.
pub const EXIT_SIGTERM: i32 = 143;

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "Exit codes: 0 every cell ran; 1 a cell raised an error (the \
notebook is saved with the outputs so far, the cell number and traceback are printed); 3 a cell \
ran longer than --cell-timeout (the kernel was interrupted, the notebook saved); 64 bad usage or \
input (option, parameter, notebook); 69 the gateway or kernel failed (unreachable, refused, \
kernel did not start or died, connection lost); 70 internal error; 73 the output notebook could \
not be written; 130 Ctrl-C / SIGINT and 143 SIGTERM (the running cell is interrupted and what \
ran is saved). In every case the kernel started for the run is deleted before the exit.";

/// `gateway-lite run NOTEBOOK.ipynb --url URL …`.
#[derive(Debug, Parser)]
#[command(
    name = "gateway-lite run",
    version,
    about = "Run every code cell of a notebook on a kernel started through a Kernel Gateway \
(gateway-lite or Jupyter Enterprise Gateway), with papermill's parameter conventions",
    after_help = EXIT_CODES
)]
pub struct RunArgs {
    /// The notebook to run (nbformat 4).
    pub notebook: PathBuf,
    /// The gateway's base URL: http[s]://HOST:PORT[/BASE_URL/].
    #[arg(long, env = "GATEWAY_LITE_URL")]
    pub url: String,
    /// The gateway's token (sent as `Authorization: token T`). Prefer the environment:
    /// GATEWAY_LITE_AUTH_TOKEN, or JUPYTER_GATEWAY_AUTH_TOKEN (Jupyter Server's name).
    #[arg(long, env = "GATEWAY_LITE_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Kernelspec to start; default: the notebook's `metadata.kernelspec.name`, else the
    /// gateway's default.
    #[arg(short = 'k', long = "kernel")]
    pub kernel: Option<String>,
    /// A parameter, typed as papermill types it: True/False, None, an integer, a float, else a
    /// string. Repeatable.
    #[arg(short = 'p', long = "parameters", num_args = 2, value_names = ["NAME", "VALUE"], action = clap::ArgAction::Append)]
    pub parameters: Vec<String>,
    /// A parameter kept as a string whatever it looks like. Repeatable.
    #[arg(short = 'r', long = "parameters-raw", num_args = 2, value_names = ["NAME", "VALUE"], action = clap::ArgAction::Append)]
    pub parameters_raw: Vec<String>,
    /// Where to write the executed notebook; default: NOTEBOOK with `.out.ipynb` for its
    /// `.ipynb`, next to it.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Longest a cell may run, in seconds; then the kernel is interrupted, the notebook saved
    /// and the run ends with exit code 3. Default: no limit.
    #[arg(long, value_parser = parse_seconds)]
    pub cell_timeout: Option<Duration>,
    /// Longest the kernel may take to start and answer `kernel_info`, in seconds.
    #[arg(long, value_parser = parse_seconds, default_value = "120")]
    pub startup_timeout: Duration,
    /// An environment variable for the kernel, in the start request's `env` (Enterprise
    /// Gateway passes on only `KERNEL_*` names and those it allows). Repeatable.
    /// KERNEL_USERNAME defaults to $KERNEL_USERNAME, else $USER (Enterprise Gateway refuses
    /// root unless configured otherwise).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The kernel's working directory (sent as KERNEL_WORKING_DIR).
    #[arg(long)]
    pub cwd: Option<String>,
    /// Copy the cells' stdout/stderr streams to this process's stdout/stderr as they arrive.
    #[arg(long)]
    pub log_output: bool,
    /// No progress bar or progress lines.
    #[arg(long)]
    pub no_progress: bool,
    /// CA certificates (PEM) to trust for an https gateway, besides the built-in roots.
    #[arg(long, env = "GATEWAY_LITE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Longest `--cell-timeout` / `--startup-timeout`: a week.
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 600 or 2.5)"))?;
    if !(secs > 0.0 && secs <= MAX_SECONDS) {
        return Err(format!(
            "{s} is out of range: give more than 0 and at most {MAX_SECONDS} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} has no '=': give NAME=VALUE"))?;
    let valid = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{k:?} is not an environment variable name (letters, digits, '_', not starting with a digit)"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

impl RunArgs {
    /// The token: `--token`, GATEWAY_LITE_AUTH_TOKEN, then JUPYTER_GATEWAY_AUTH_TOKEN.
    pub fn token(&self) -> Option<String> {
        self.token
            .clone()
            .or_else(|| std::env::var("JUPYTER_GATEWAY_AUTH_TOKEN").ok())
            .filter(|t| !t.is_empty())
    }

    /// The output path: `-o`, else NOTEBOOK.out.ipynb.
    pub fn output_path(&self) -> PathBuf {
        if let Some(o) = &self.output {
            return o.clone();
        }
        let stem = self
            .notebook
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "notebook".to_owned());
        self.notebook.with_file_name(format!("{stem}.out.ipynb"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_come_in_pairs_in_order() {
        let a = RunArgs::try_parse_from([
            "run",
            "nb.ipynb",
            "--url",
            "http://h:1",
            "-p",
            "a",
            "1",
            "-p",
            "b",
            "x y",
            "-r",
            "c",
            "2",
        ])
        .unwrap();
        assert_eq!(a.parameters, ["a", "1", "b", "x y"]);
        assert_eq!(a.parameters_raw, ["c", "2"]);
        assert_eq!(a.output_path(), PathBuf::from("nb.out.ipynb"));
    }

    #[test]
    fn bad_timeouts_and_env_are_refused_with_the_fix() {
        let e =
            RunArgs::try_parse_from(["run", "n.ipynb", "--url", "http://h", "--cell-timeout", "0"])
                .unwrap_err()
                .to_string();
        assert!(e.contains("more than 0"), "{e}");
        let e = RunArgs::try_parse_from(["run", "n.ipynb", "--url", "http://h", "--env", "1A=b"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an environment variable name"), "{e}");
    }
}
