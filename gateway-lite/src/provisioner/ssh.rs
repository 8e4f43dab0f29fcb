//! The SSH provisioner: launchers run on a list of remote hosts, reached with the user's own
//! OpenSSH client (`ssh`, their keys, their `~/.ssh/config` or `--ssh-config`), balanced
//! across the hosts round-robin or by the fewest live kernels.
//!
//! This is what Enterprise Gateway's `DistributedProcessProxy` does, for teams whose kernels
//! must run on a few plain machines. Kernelspecs whose `metadata.process_proxy.class_name`
//! ends with `DistributedProcessProxy` come here (see [`super::Provisioners::for_spec`]).
//!
//! How a launcher is run, and why:
//!
//! - One `ssh HOST sh -c SCRIPT` per launch. The script starts the launcher *detached*:
//!   `setsid` makes it a session and process-group leader with no terminal, stdin is
//!   `/dev/null` and its output is appended to a log file on the remote host, so it outlives
//!   both the SSH connection and the gateway (a restarted gateway re-attaches to it). The
//!   script writes `<pid> <start time>` to a pid file next to the log, prints the pid, and then
//!   *stays* as a watcher: it streams the log to its stderr (into the gateway's log and the
//!   [`LogTail`]), waits for the launcher, and prints its exit status and the last lines of the
//!   log. So a death is noticed at once, and a launcher that fails early fails the `POST`
//!   at once with its own stderr.
//! - The watcher also reads its stdin (our pipe): when the gateway dies, ssh sees EOF on that
//!   pipe, the remote side sees EOF, and the watcher (not the launcher) ends. No orphaned
//!   watchers pile up across gateway restarts.
//! - [`Provisioner::reattach`] starts a new watcher from the pid file, which polls
//!   `/proc/<pid>/stat` and compares the start time (field 22), so a recycled pid is never
//!   taken for the launcher. The remote hosts must therefore be Linux.
//! - Signals go over a separate ssh as `kill -s SIG -- -<pgid>`, after the same pid-file and
//!   start-time check.
//! - The kernel binds the address the gateway connects to (`KERNEL_LAUNCHER_IP`): the host's
//!   address as `ssh -G` resolves it (its `HostName`), resolved to an IP once and cached. The
//!   launcher reports to `--response-ip`, which must therefore be reachable from the hosts.
//!   The gateway's own environment is *not* forwarded: the remote launcher gets the
//!   kernelspec's and the request's variables only (as in EG). The launcher and the kernel
//!   must exist at the kernelspec's paths on every host.
//!
//! Every value that reaches the remote shell (argv, environment, paths) goes through
//! [`quote`]; the script itself is quoted once more for the login shell, whatever it is,
//! which runs `sh -c`.
//!
//! SSH always runs with `BatchMode=yes` (never a password prompt, which would hang a
//! launch) and a `ConnectTimeout`. A host that cannot be reached (ssh exits 255 before the
//! launcher started) is marked down for [`DOWN_FOR`] and skipped by the balancing while
//! another host is up; the launch that found it down ends with
//! [`ExitInfo::retry_elsewhere`], so the kernel manager launches again on another host and
//! the client never sees the failure. Only when no other host is up does the launch fail,
//! with ssh's own error. A host marked down is tried again when its mark expires or when
//! every host is down, and a launcher that starts on it clears the mark.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::{
    ExitInfo, LaunchError, LaunchRequest, Launched, LogTail, Placement, ProcessControl, Provisioner,
};

/// Longest log line kept whole; longer ones are split.
const MAX_LINE: usize = 8 * 1024;

/// How long a host whose ssh connection failed is skipped by the balancing.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// How many times a lost watcher connection is re-established before the kernel is given up
/// for dead (one second apart, plus the connect timeout each).
const RECONNECTS: u32 = 5;

/// Marker lines the remote script prints on stdout. Anything else there (a chatty shell rc
/// file) is ignored.
const STARTED: &str = "gateway-lite:started ";
const EXITED: &str = "gateway-lite:exit ";
const GONE: &str = "gateway-lite:gone";

/// How a host is chosen for a new kernel.
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

/// The SSH provisioner's configuration (see `gateway-lite --help`).
#[derive(Debug, Clone)]
pub struct Settings {
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

impl Default for Settings {
    fn default() -> Self {
        Settings {
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

/// Why a host name or a remote directory is unacceptable.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > 255 {
        return Err(format!("{host:?} is not a host name"));
    }
    if host.starts_with('-') {
        return Err(format!(
            "{host:?} starts with '-' (it would be read as an option)"
        ));
    }
    if let Some(c) = host.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{host:?} contains the character {c:?}"));
    }
    Ok(())
}

/// Splits a host list: commas (and the brackets and quotes of EG's traitlets list syntax,
/// `['a','b']`, are dropped), empty entries skipped, each checked.
pub fn parse_hosts(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let h = part
            .trim()
            .trim_matches(|c| matches!(c, '[' | ']' | '\'' | '"'));
        let h = h.trim();
        if h.is_empty() {
            continue;
        }
        check_host(h)?;
        out.push(h.to_owned());
    }
    Ok(out)
}

/// Quotes `s` for a POSIX shell: safe words stay as they are, anything else is wrapped in
/// single quotes, with each `'` written as `'\''`.
pub fn quote(s: &str) -> String {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"-_./:,+@%".contains(&b);
    if !s.is_empty() && s.bytes().all(safe) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Shell functions every script uses: `st PID` prints the start time of a live, non-zombie
/// process (fields after the last `) ` of `/proc/PID/stat`, as the command name may hold
/// spaces and parentheses); `nap` sleeps half a second where `sleep` takes fractions.
const PRELUDE: &str = r#"st() { s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*") "}; set -- $s; [ "$1" != Z ] && [ "$1" != X ] || return 1; echo "${20}"; }
nap() { sleep 0.5 2>/dev/null || sleep 1; }
"#;

/// The watcher's common part once the launcher's `$pid` and `$t` are known: stream the log
/// to stderr, end this shell (never the launcher) when our stdin reaches EOF, and drop fd 3.
fn follow(from_start: bool) -> String {
    let lines = if from_start { "+1" } else { "0" };
    format!(
        "tail -n {lines} -f \"$log\" >&2 3<&- & tp=$!\n\
         (exec <&3 >/dev/null 2>&1; while read -r _; do :; done; kill -s TERM $tp $$) & cp=$!\n\
         exec 3<&-\n"
    )
}

/// The end of a watcher: `$rc` is the exit status or `?`.
const FINISH: &str = r#"kill -s TERM $tp $cp 2>/dev/null
rm -f "$pidf"
echo "gateway-lite:exit $rc"
tail -n 20 "$log"
"#;

/// Starts `argv` detached with `env` and watches it.
fn launch_script(
    log: &str,
    pid_file: &str,
    kernel_ip: &str,
    env: &[(String, String)],
    argv: &[String],
) -> String {
    let mut cmd = format!("env KERNEL_LAUNCHER_IP={}", quote(kernel_ip));
    for (k, v) in env {
        cmd.push(' ');
        cmd.push_str(&quote(&format!("{k}={v}")));
    }
    cmd.push_str(" setsid");
    for a in argv {
        cmd.push(' ');
        cmd.push_str(&quote(a));
    }
    format!(
        "{PRELUDE}log={log}; pidf={pidf}\n\
         umask 077\n\
         mkdir -p {dir} 2>/dev/null\n\
         : >>\"$log\" || {{ echo \"cannot write the launcher log $log on $(hostname)\" >&2; exit 125; }}\n\
         exec 3<&0 </dev/null\n\
         {cmd} >>\"$log\" 2>&1 3<&- &\n\
         pid=$!; t=$(st $pid)\n\
         echo \"$pid $t\" >\"$pidf.tmp\" && mv -f \"$pidf.tmp\" \"$pidf\"\n\
         echo \"{STARTED}$pid $t\"\n\
         {follow}\
         wait $pid; rc=$?\n\
         {FINISH}",
        log = quote(log),
        pidf = quote(pid_file),
        dir = quote(
            log.rsplit_once('/')
                .map_or(".", |(d, _)| if d.is_empty() { "/" } else { d })
        ),
        follow = follow(true),
    )
}

/// Watches the launcher recorded in `pid_file`, or says it is gone.
fn reattach_script(log: &str, pid_file: &str) -> String {
    format!(
        "{PRELUDE}log={log}; pidf={pidf}\n\
         set -- $(cat \"$pidf\" 2>/dev/null); pid=${{1:-}}; t=${{2:-}}\n\
         if [ -z \"$pid\" ] || [ -z \"$t\" ] || [ \"$(st \"$pid\")\" != \"$t\" ]; then echo {GONE}; exit 0; fi\n\
         echo \"{STARTED}$pid $t\"\n\
         exec 3<&0 </dev/null\n\
         {follow}\
         while [ \"$(st \"$pid\")\" = \"$t\" ]; do nap; done\n\
         rc='?'\n\
         {FINISH}",
        log = quote(log),
        pidf = quote(pid_file),
        follow = follow(false),
    )
}

/// Sends `signal` to the recorded launcher's process group if it is still the same process.
fn signal_script(pid_file: &str, signal: Signal) -> String {
    let name = signal.as_str().trim_start_matches("SIG");
    format!(
        "{PRELUDE}set -- $(cat {pidf} 2>/dev/null)\n\
         [ -n \"${{1:-}}\" ] && [ -n \"${{2:-}}\" ] && [ \"$(st \"$1\")\" = \"$2\" ] && kill -s {name} -- \"-$1\"\n",
        pidf = quote(pid_file),
    )
}

/// What every ssh invocation shares.
#[derive(Debug)]
struct Client {
    settings: Settings,
}

impl Client {
    /// `ssh` with the common options.
    fn base(&self) -> std::process::Command {
        let s = &self.settings;
        let mut cmd = std::process::Command::new(&s.program);
        if let Some(f) = &s.ssh_config {
            cmd.arg("-F").arg(f);
        }
        if let Some(u) = &s.user {
            cmd.args(["-l", u]);
        }
        cmd.args(["-T", "-o", "BatchMode=yes", "-o"])
            .arg(format!(
                "ConnectTimeout={}",
                s.connect_timeout.as_secs().max(1)
            ))
            // A half-open connection is noticed in ~15 s, then the watcher reconnects.
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
            // Keeps "Warning: Permanently added ..." out of the launchers' log tails.
            .args(["-o", "LogLevel=ERROR"]);
        cmd
    }

    /// `ssh ... -- host sh -c SCRIPT`, in its own process group (a Ctrl-C at the gateway's
    /// terminal must not cut watchers), stdin piped (see the module doc).
    fn remote(&self, host: &str, script: &str) -> Command {
        let mut cmd = self.base();
        cmd.arg("--")
            .arg(host)
            .arg(format!("sh -c {}", quote(script)));
        let mut cmd = Command::from(cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        cmd
    }

    /// The IP of `host` as ssh would reach it: an IP literal as is, else `ssh -G`'s
    /// `hostname` (which applies `~/.ssh/config` aliases), resolved (IPv4 first).
    /// Blocking: `ssh -G` reads configuration only, and a name is resolved once per host.
    fn resolve(&self, host: &str) -> Result<IpAddr, String> {
        let bare = host.rsplit('@').next().unwrap_or(host);
        if let Ok(ip) = bare.trim_matches(|c| c == '[' || c == ']').parse() {
            return Ok(ip);
        }
        let out = self
            .base()
            .arg("-G")
            .arg("--")
            .arg(host)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.settings.program.display()))?;
        if !out.status.success() {
            return Err(format!(
                "ssh -G {host} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("hostname "))
            .map(str::trim)
            .unwrap_or(bare);
        if let Ok(ip) = name.parse() {
            return Ok(ip);
        }
        let addrs: Vec<IpAddr> = (name, 22)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {name} (host {host}): {e}"))?
            .map(|a| a.ip())
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("{name} (host {host}) has no address"))
    }
}

/// Where one launcher runs: the fields of [`Placement::Ssh`].
struct Where {
    host: String,
    address: String,
    log_file: String,
    pid_file: String,
}

impl Where {
    fn placement(&self) -> Placement {
        Placement::Ssh {
            host: self.host.clone(),
            address: self.address.clone(),
            log_file: self.log_file.clone(),
            pid_file: self.pid_file.clone(),
        }
    }
}

/// Live kernels per host, for least-connection balancing.
type Live = Arc<Mutex<HashMap<String, usize>>>;

/// Hosts whose ssh connection failed, and when.
#[derive(Debug, Clone, Default)]
struct Down(Arc<Mutex<HashMap<String, Instant>>>);

impl Down {
    fn mark(&self, host: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(host.to_owned(), Instant::now());
        }
    }

    fn clear(&self, host: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(host);
        }
    }

    fn is_down(&self, host: &str) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(host).map(|t| t.elapsed() < DOWN_FOR))
            .unwrap_or(false)
    }
}

/// Runs launchers on remote hosts over SSH.
#[derive(Debug)]
pub struct Ssh {
    client: Arc<Client>,
    next: AtomicUsize,
    live: Live,
    down: Down,
    addresses: Mutex<HashMap<String, IpAddr>>,
}

impl Ssh {
    /// A provisioner with these settings.
    pub fn new(settings: Settings) -> Self {
        if !settings.hosts.is_empty() {
            tracing::info!(hosts = ?settings.hosts, balancing = ?settings.balancing, ssh_config = ?settings.ssh_config, "remote hosts for DistributedProcessProxy kernelspecs");
        }
        Ssh {
            client: Arc::new(Client { settings }),
            next: AtomicUsize::new(0),
            live: Live::default(),
            down: Down::default(),
            addresses: Mutex::default(),
        }
    }

    /// The configured default hosts.
    pub fn hosts(&self) -> &[String] {
        &self.client.settings.hosts
    }

    /// Live kernels of this provisioner per host.
    pub fn live(&self) -> HashMap<String, usize> {
        self.live.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Chooses the host for the next kernel among `hosts`: among those not marked down, or
    /// among all of them when every one is down.
    fn pick(&self, hosts: &[String]) -> Option<String> {
        let up: Vec<&String> = hosts.iter().filter(|h| !self.down.is_down(h)).collect();
        let hosts: Vec<&String> = if up.is_empty() {
            hosts.iter().collect()
        } else {
            up
        };
        if hosts.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % hosts.len();
        let order = (0..hosts.len()).map(|i| hosts[(start + i) % hosts.len()]);
        let chosen = match self.client.settings.balancing {
            Balancing::RoundRobin => order.into_iter().next(),
            Balancing::LeastConnection => {
                let live = self.live();
                // min_by_key keeps the first of equal minima, i.e. round-robin order.
                order.min_by_key(|h| live.get(*h).copied().unwrap_or(0))
            }
        };
        chosen.cloned()
    }

    fn address(&self, host: &str) -> Result<IpAddr, LaunchError> {
        if let Some(ip) = self
            .addresses
            .lock()
            .ok()
            .and_then(|m| m.get(host).copied())
        {
            return Ok(ip);
        }
        let ip = self
            .client
            .resolve(host)
            .map_err(|message| LaunchError::Remote {
                host: host.to_owned(),
                message,
            })?;
        if let Ok(mut m) = self.addresses.lock() {
            m.insert(host.to_owned(), ip);
        }
        Ok(ip)
    }

    /// Launches on one of `hosts`.
    pub fn launch_on(
        &self,
        hosts: &[String],
        request: LaunchRequest,
    ) -> Result<Launched, LaunchError> {
        if request.argv.is_empty() {
            return Err(LaunchError::EmptyArgv);
        }
        for h in hosts {
            check_host(h).map_err(|message| LaunchError::Remote {
                host: h.clone(),
                message,
            })?;
        }
        let host = self.pick(hosts).ok_or(LaunchError::Remote {
            host: String::new(),
            message: "no remote hosts are configured".into(),
        })?;
        let address = self.address(&host)?;
        let dir = self.client.settings.remote_log_dir.trim_end_matches('/');
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let base = format!("{dir}/gateway-lite-{}-{}", request.kernel_id, &nonce[..12]);
        let log_file = format!("{base}.log");
        let pid_file = format!("{base}.pid");
        let env: Vec<(String, String)> = request.env.into_iter().collect();
        let script = launch_script(
            &log_file,
            &pid_file,
            &address.to_string(),
            &env,
            &request.argv,
        );
        let child = self
            .client
            .remote(&host, &script)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                program: self.client.settings.program.to_string_lossy().into_owned(),
                source,
            })?;
        tracing::info!(kernel_id = %request.kernel_id, %host, %address, argv = ?request.argv, log_file, "launcher starting over ssh");
        let at = Where {
            host,
            address: address.to_string(),
            log_file,
            pid_file,
        };
        Ok(self.follow(&request.kernel_id, child, at, Some(hosts)))
    }

    /// Follows a launcher through `child` (a launch or re-attach session), reconnecting
    /// when the connection is lost after the launcher was seen running. `candidates` are
    /// the hosts a fresh launch could have gone to; `None` for a re-attach.
    fn follow(
        &self,
        kernel_id: &str,
        child: Child,
        at: Where,
        candidates: Option<&[String]>,
    ) -> Launched {
        let placement = at.placement();
        let Where {
            host,
            address,
            log_file,
            pid_file,
        } = at;
        let log = LogTail::default();
        let exited = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(None);
        if let Ok(mut m) = self.live.lock() {
            *m.entry(host.clone()).or_default() += 1;
        }
        let task = Watch {
            client: self.client.clone(),
            kernel_id: kernel_id.to_owned(),
            host: host.clone(),
            log_file,
            pid_file: pid_file.clone(),
            log: log.clone(),
            down: self.down.clone(),
            others: candidates
                .unwrap_or_default()
                .iter()
                .filter(|h| **h != host)
                .cloned()
                .collect(),
        };
        let fresh = candidates.is_some();
        let live = self.live.clone();
        let flag = exited.clone();
        tokio::spawn(async move {
            let info = task.run(child, fresh).await;
            if let Ok(mut m) = live.lock()
                && let Some(n) = m.get_mut(&task.host)
            {
                *n = n.saturating_sub(1);
            }
            flag.store(true, Ordering::SeqCst);
            tracing::info!(kernel_id = %task.kernel_id, host = %task.host, "remote launcher ended: {info}");
            let _ = tx.send(Some(info));
        });
        Launched {
            exit: rx,
            log,
            control: Arc::new(SshControl {
                client: self.client.clone(),
                host,
                pid_file,
                exited,
            }),
            host: address,
            placement,
        }
    }
}

impl Provisioner for Ssh {
    fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        let hosts = self.client.settings.hosts.clone();
        self.launch_on(&hosts, request)
    }

    /// Never fails with [`LaunchError::Gone`] itself: whether the launcher still runs is
    /// only known once the remote side answers, so a launcher found gone is reported through
    /// the exit channel right after (the kernel then shows as dead).
    fn reattach(&self, kernel_id: &str, placement: &Placement) -> Result<Launched, LaunchError> {
        let Placement::Ssh {
            host,
            address,
            log_file,
            pid_file,
        } = placement
        else {
            return Err(LaunchError::Unsupported("non-ssh"));
        };
        check_host(host).map_err(|message| LaunchError::Remote {
            host: host.clone(),
            message,
        })?;
        let child = self
            .client
            .remote(host, &reattach_script(log_file, pid_file))
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                program: self.client.settings.program.to_string_lossy().into_owned(),
                source,
            })?;
        tracing::info!(kernel_id, %host, "re-attaching to a remote launcher");
        let at = Where {
            host: host.clone(),
            address: address.clone(),
            log_file: log_file.clone(),
            pid_file: pid_file.clone(),
        };
        Ok(self.follow(kernel_id, child, at, None))
    }
}

/// Runs a launch with a per-kernelspec host list (`metadata.process_proxy.config.remote_hosts`)
/// on the shared provisioner, so balancing counts stay global.
#[derive(Debug)]
pub struct SshOn {
    /// The shared provisioner.
    pub ssh: Arc<Ssh>,
    /// The kernelspec's hosts.
    pub hosts: Vec<String>,
}

impl Provisioner for SshOn {
    fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        self.ssh.launch_on(&self.hosts, request)
    }

    fn reattach(&self, kernel_id: &str, placement: &Placement) -> Result<Launched, LaunchError> {
        self.ssh.reattach(kernel_id, placement)
    }
}

/// How one watcher session ended.
enum Ended {
    /// The remote script reported the launcher's end (`rc` when it was our child).
    Exited { rc: Option<i32>, tail: Vec<String> },
    /// The pid file names no running launcher.
    Gone,
    /// The connection ended without a report.
    Lost {
        started: bool,
        status: Option<std::process::ExitStatus>,
    },
}

/// One kernel's watcher task.
struct Watch {
    client: Arc<Client>,
    kernel_id: String,
    host: String,
    log_file: String,
    pid_file: String,
    log: LogTail,
    /// Where hosts are marked down.
    down: Down,
    /// The other hosts a fresh launch could have gone to.
    others: Vec<String>,
}

impl Watch {
    async fn run(&self, mut child: Child, fresh: bool) -> ExitInfo {
        let mut failures = 0;
        let mut seen_running = false;
        loop {
            let ended = self.session(child).await;
            match ended {
                Ended::Exited { rc, tail } => {
                    self.log.replace(tail);
                    return match rc {
                        Some(rc) if (129..160).contains(&rc) => ExitInfo {
                            code: None,
                            signal: Some(rc - 128),
                            retry_elsewhere: false,
                        },
                        rc => ExitInfo {
                            code: rc,
                            signal: None,
                            retry_elsewhere: false,
                        },
                    };
                }
                Ended::Gone => {
                    self.log.push(format!(
                        "the launcher recorded in {}:{} is no longer running",
                        self.host, self.pid_file
                    ));
                    return ExitInfo {
                        code: None,
                        signal: None,
                        retry_elsewhere: false,
                    };
                }
                Ended::Lost { started, status } => {
                    seen_running |= started;
                    if started {
                        failures = 0;
                    }
                    let how = status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown status".into());
                    // A launch whose launcher never showed up is a failed launch: ssh's own
                    // error (e.g. "connect to host ... Connection refused") is in the tail.
                    if (fresh && !seen_running) || failures >= RECONNECTS {
                        self.log.push(format!(
                            "ssh to {} ended ({how}) without the launcher's exit status",
                            self.host
                        ));
                        use std::os::unix::process::ExitStatusExt;
                        let code = status.and_then(|s| s.code());
                        // ssh's own failures (connect, auth) are exit status 255; the script
                        // itself never ends with 255 without its exit marker.
                        let unreachable = fresh && !seen_running && code == Some(255);
                        if unreachable {
                            self.down.mark(&self.host);
                            tracing::warn!(kernel_id = %self.kernel_id, host = %self.host, "ssh cannot reach the host; it is skipped for {}s", DOWN_FOR.as_secs());
                        }
                        return ExitInfo {
                            code,
                            signal: status.and_then(|s| s.signal()),
                            retry_elsewhere: unreachable
                                && self.others.iter().any(|h| !self.down.is_down(h)),
                        };
                    }
                    failures += 1;
                    tracing::warn!(kernel_id = %self.kernel_id, host = %self.host, "lost the ssh watcher ({how}); reconnecting ({failures}/{RECONNECTS})");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let script = reattach_script(&self.log_file, &self.pid_file);
                    match self.client.remote(&self.host, &script).spawn() {
                        Ok(c) => child = c,
                        Err(e) => {
                            self.log.push(format!("cannot run ssh: {e}"));
                            return ExitInfo {
                                code: None,
                                signal: None,
                                retry_elsewhere: false,
                            };
                        }
                    }
                }
            }
        }
    }

    async fn session(&self, mut child: Child) -> Ended {
        // Held until the session ends: closing it tells the remote watcher to stop.
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().map(|s| {
            let (id, log) = (self.kernel_id.clone(), self.log.clone());
            tokio::spawn(async move {
                let mut lines = Lines::new(s);
                while let Some(line) = lines.next().await {
                    tracing::info!(target: "kernel", kernel_id = %id, "{line}");
                    log.push(line);
                }
            })
        });
        let (mut started, mut gone, mut rc, mut tail) = (false, false, None, Vec::new());
        if let Some(out) = child.stdout.take() {
            let mut lines = Lines::new(out);
            while let Some(line) = lines.next().await {
                if rc.is_some() {
                    tail.push(line);
                    if tail.len() > LogTail::LINES {
                        tail.remove(0);
                    }
                } else if let Some(rest) = line.strip_prefix(STARTED) {
                    started = true;
                    self.down.clear(&self.host);
                    tracing::info!(kernel_id = %self.kernel_id, host = %self.host, "remote launcher pid and start time: {rest}");
                } else if line == GONE {
                    gone = true;
                } else if let Some(code) = line.strip_prefix(EXITED) {
                    rc = Some(code.trim().parse::<i32>().ok());
                } else {
                    tracing::debug!(kernel_id = %self.kernel_id, "ssh stdout: {line}");
                }
            }
        }
        let status = child.wait().await.ok();
        if let Some(task) = stderr {
            let _ = tokio::time::timeout(Duration::from_millis(300), task).await;
        }
        drop(stdin);
        match rc {
            Some(rc) => Ended::Exited { rc, tail },
            None if gone => Ended::Gone,
            None => Ended::Lost { started, status },
        }
    }
}

#[derive(Debug)]
struct SshControl {
    client: Arc<Client>,
    host: String,
    pid_file: String,
    exited: Arc<AtomicBool>,
}

impl ProcessControl for SshControl {
    fn signal(&self, signal: Signal) {
        if self.exited.load(Ordering::SeqCst) {
            return;
        }
        let mut cmd = self
            .client
            .remote(&self.host, &signal_script(&self.pid_file, signal));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let host = self.host.clone();
        let run = async move {
            match cmd.output().await {
                Ok(out) if !out.status.success() => tracing::debug!(
                    %host,
                    "remote {signal} not delivered ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Ok(_) => tracing::debug!(%host, "remote {signal} sent"),
                Err(e) => tracing::warn!(%host, "cannot run ssh for {signal}: {e}"),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(run);
            }
            Err(_) => tracing::warn!(host = %self.host, "no runtime to send {signal} over ssh"),
        }
    }
}

/// Bounded line reader: lines longer than [`MAX_LINE`] are split, blank lines skipped.
struct Lines<R> {
    r: R,
    buf: Vec<u8>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(r: R) -> Self {
        Lines {
            r,
            buf: Vec::new(),
            eof: false,
        }
    }

    async fn next(&mut self) -> Option<String> {
        loop {
            let head = &self.buf[..self.buf.len().min(MAX_LINE)];
            let cut = head
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| p + 1)
                .or_else(|| (self.buf.len() >= MAX_LINE).then_some(MAX_LINE))
                .or_else(|| (self.eof && !self.buf.is_empty()).then_some(self.buf.len()));
            if let Some(n) = cut {
                let line: Vec<u8> = self.buf.drain(..n).collect();
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if text.is_empty() {
                    continue;
                }
                return Some(text);
            }
            if self.eof {
                return None;
            }
            let mut chunk = [0u8; 4096];
            match self.r.read(&mut chunk).await {
                Ok(0) | Err(_) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sh` makes of `words` after quoting: each must come back as one argument.
    fn through_sh(words: &[&str]) -> Vec<String> {
        let line: Vec<String> = words.iter().map(|w| quote(w)).collect();
        let script = format!(
            "for a in {}; do printf '%s\\0' \"$a\"; done",
            line.join(" ")
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}");
        out.stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8(p.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn quoting_survives_the_shell() {
        let words = [
            "plain",
            "with space",
            "it's",
            "'",
            "$(touch /tmp/never)",
            "`id`",
            "a\"b",
            "*",
            "~",
            "a;b|c&d",
            "x=1",
            "-n",
            "tab\there",
            "\\",
            "ünïcode",
        ];
        assert_eq!(through_sh(&words), words);
        // Quoting twice (as for the login shell's `sh -c`) and unquoting twice is the identity.
        let inner = format!("printf '%s' {}", quote("it's $HOME"));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sh -c {}", quote(&inner)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn scripts_parse() {
        let env = vec![("KERNEL_USERNAME".to_owned(), "o'brien x".to_owned())];
        let argv = vec!["/opt/kl".to_owned(), "--".to_owned(), "py thon".to_owned()];
        for script in [
            launch_script("/tmp/a b.log", "/tmp/a b.pid", "10.0.0.2", &env, &argv),
            reattach_script("/tmp/x.log", "/tmp/x.pid"),
            signal_script("/tmp/x.pid", Signal::SIGTERM),
        ] {
            let st = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .status()
                .unwrap();
            assert!(st.success(), "sh -n rejects:\n{script}");
        }
        assert!(signal_script("/p", Signal::SIGINT).contains("kill -s INT -- \"-$1\""));
    }

    #[test]
    fn start_time_function_matches_proc() {
        let me = std::process::id();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{PRELUDE}st {me}; st 999999999 || echo none"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let field22 = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(19)
            .unwrap();
        assert_eq!(text, format!("{field22}\nnone\n"));
    }

    #[test]
    fn placement_round_trip() {
        let p = Placement::Ssh {
            host: "user@node-1".into(),
            address: "10.201.1.2".into(),
            log_file: "/tmp/gateway-lite-k-1.log".into(),
            pid_file: "/tmp/gateway-lite-k-1.pid".into(),
        };
        let text = serde_json::to_string(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kind"], "ssh", "{text}");
        assert_eq!(serde_json::from_str::<Placement>(&text).unwrap(), p);
    }

    #[test]
    fn hosts_are_checked() {
        assert_eq!(
            parse_hosts("a, b ,,user@c").unwrap(),
            vec!["a", "b", "user@c"]
        );
        assert_eq!(parse_hosts("['a','b']").unwrap(), vec!["a", "b"]);
        assert!(parse_hosts("-oProxyCommand=x").is_err());
        assert!(parse_hosts("a b").is_err());
        assert!(parse_hosts("a\nb").is_err());
        assert!(parse_hosts("").unwrap().is_empty());
    }

    fn ssh(balancing: Balancing) -> Ssh {
        Ssh::new(Settings {
            balancing,
            ..Settings::default()
        })
    }

    #[test]
    fn round_robin_and_least_connection() {
        let hosts = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let rr = ssh(Balancing::RoundRobin);
        let picks: Vec<_> = (0..4).map(|_| rr.pick(&hosts).unwrap()).collect();
        assert_eq!(picks, ["a", "b", "c", "a"]);
        assert_eq!(rr.pick(&[]), None);

        let lc = ssh(Balancing::LeastConnection);
        lc.live
            .lock()
            .unwrap()
            .extend([("a".into(), 2), ("b".into(), 0), ("c".into(), 1)]);
        assert_eq!(lc.pick(&hosts).unwrap(), "b");
        lc.live.lock().unwrap().insert("b".into(), 5);
        assert_eq!(lc.pick(&hosts).unwrap(), "c");
        // Ties go round-robin.
        lc.live.lock().unwrap().clear();
        let picks: Vec<_> = (0..3).map(|_| lc.pick(&hosts).unwrap()).collect();
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(sorted, ["a", "b", "c"], "{picks:?}");
        assert!("fastest".parse::<Balancing>().is_err());
    }

    #[test]
    fn hosts_marked_down_are_skipped_while_another_is_up() {
        let hosts = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        for balancing in [Balancing::RoundRobin, Balancing::LeastConnection] {
            let s = ssh(balancing);
            s.down.mark("b");
            let picks: Vec<_> = (0..4).map(|_| s.pick(&hosts).unwrap()).collect();
            assert!(!picks.contains(&"b".to_owned()), "{balancing:?}: {picks:?}");
            // Every host down: all are candidates again (a launch must try something).
            s.down.mark("a");
            s.down.mark("c");
            let mut picks: Vec<_> = (0..3).map(|_| s.pick(&hosts).unwrap()).collect();
            picks.sort();
            assert_eq!(picks, ["a", "b", "c"], "{balancing:?}");
            // A launcher that starts on a host clears its mark.
            s.down.clear("a");
            assert_eq!(s.pick(&hosts).unwrap(), "a", "{balancing:?}");
        }
        // A mark expires.
        let s = ssh(Balancing::RoundRobin);
        if let Some(t) = Instant::now().checked_sub(DOWN_FOR) {
            s.down.0.lock().unwrap().insert("a".into(), t);
            assert!(!s.down.is_down("a"));
        }
    }

    #[test]
    fn ip_literals_need_no_lookup() {
        let s = ssh(Balancing::RoundRobin);
        assert_eq!(
            s.client.resolve("root@10.1.2.3").unwrap().to_string(),
            "10.1.2.3"
        );
        assert_eq!(s.client.resolve("[::1]").unwrap().to_string(), "::1");
    }

    #[test]
    fn options_are_checked_and_named() {
        use crate::config::{Config, SearchEnv};
        let exe = std::env::current_exe().unwrap();
        let launcher = exe.to_string_lossy().into_owned();
        let parse = |extra: &[&str]| {
            let mut argv = vec!["gateway-lite", "--launcher", &launcher];
            argv.extend_from_slice(extra);
            Config::try_from_iter(argv, SearchEnv::default())
        };
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
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let data = format!("one\n\n{}\ntail", "x".repeat(MAX_LINE + 10));
        let mut l = Lines::new(data.as_bytes());
        assert_eq!(l.next().await.unwrap(), "one");
        assert_eq!(l.next().await.unwrap().len(), MAX_LINE);
        assert_eq!(l.next().await.unwrap(), "x".repeat(10));
        assert_eq!(l.next().await.unwrap(), "tail");
        assert_eq!(l.next().await, None);
    }
}
