//! The SSH provisioner: launchers run on a list of remote hosts, reached with the user's own
//! OpenSSH client (`ssh`, their keys, their `~/.ssh/config` or `--ssh-config`), balanced
//! across the hosts round-robin or by the fewest live kernels.
//!
//! This is what Enterprise Gateway's `DistributedProcessProxy` does, for teams whose kernels
//! must run on a few plain machines. Kernelspecs whose `metadata.process_proxy.class_name`
//! ends with `DistributedProcessProxy` (or whose `metadata.kernel_provisioner` is
//! gateway_provisioners' `distributed-provisioner`) come here (see
//! [`super::Provisioners::for_spec`]).
//! A host that is this machine ([`this_host`]) is not reached over ssh: the dispatch in
//! [`super::Distributed`] runs that kernel through the local provisioner, as EG does.
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
//! - [`Provision::reattach`] starts a new watcher from the pid file, which polls
//!   `/proc/<pid>/stat` and compares the start time (field 22), so a recycled pid is never
//!   taken for the launcher. The remote hosts must therefore be Linux.
//! - Signals go over a separate ssh as `kill -s SIG -- -<pgid>`, after the same pid-file and
//!   start-time check.
//! - The kernel binds the address the gateway connects to (`KERNEL_LAUNCHER_IP`): the host's
//!   address as `ssh -G` resolves it (its `HostName`), resolved to an IP once and cached (both
//!   without blocking a runtime worker). The
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

mod client;
mod down;
mod script;
mod this_host;
mod watch;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::process::Child;
use tokio::sync::watch as watch_channel;

use super::launched::{LaunchError, LaunchRequest, Launched, Placement, Provision};
use super::output::LogTail;
use crate::config::names::check_host;
use crate::config::{Balancing, SshSettings};
use crate::tasks::Tasks;
use client::Client;
pub use down::DOWN_FOR;
use down::Down;
use script::{launch_script, reattach_script};
pub use watch::SshControl;
use watch::Watch;

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

/// Runs launchers on remote hosts over SSH.
#[derive(Debug)]
pub struct Ssh {
    client: Arc<Client>,
    next: AtomicUsize,
    live: Live,
    down: Down,
    addresses: Mutex<HashMap<String, IpAddr>>,
    tasks: Tasks,
}

impl Ssh {
    /// A provisioner with these settings; its watchers run on `tasks`.
    pub fn new(settings: SshSettings, tasks: Tasks) -> Self {
        if !settings.hosts.is_empty() {
            tracing::info!(hosts = ?settings.hosts, balancing = ?settings.balancing, ssh_config = ?settings.ssh_config, "remote hosts for DistributedProcessProxy kernelspecs");
        }
        Ssh {
            client: Arc::new(Client { settings }),
            next: AtomicUsize::new(0),
            live: Live::default(),
            down: Down::default(),
            addresses: Mutex::default(),
            tasks,
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

    async fn address(&self, host: &str) -> Result<IpAddr, LaunchError> {
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
            .await
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
    pub async fn launch_on(
        &self,
        hosts: &[String],
        request: LaunchRequest,
    ) -> Result<Launched, LaunchError> {
        let host = self.choose(hosts)?;
        self.launch_at(host, hosts, request).await
    }

    /// Chooses the host for the next kernel among `hosts`, after checking every name.
    pub fn choose(&self, hosts: &[String]) -> Result<String, LaunchError> {
        for h in hosts {
            check_host(h).map_err(|message| LaunchError::Remote {
                host: h.clone(),
                message,
            })?;
        }
        self.pick(hosts).ok_or(LaunchError::Remote {
            host: String::new(),
            message: "no remote hosts are configured".into(),
        })
    }

    /// Whether `host` is this machine, reached without asking for another login: its name is
    /// `localhost`, this machine's host name or one of its addresses, or it resolves (as ssh
    /// would resolve it) to one of them. A destination naming a user (`user@host`, or
    /// `--ssh-user`) asks for that user's login, which only ssh gives, so it never is.
    pub async fn is_this_machine(&self, host: &str) -> bool {
        if host.contains('@') || self.client.settings.user.is_some() {
            return false;
        }
        if let Some(answer) = this_host::by_name(host) {
            return answer;
        }
        match self.address(host).await {
            Ok(ip) => this_host::is_own_address(ip),
            Err(_) => false,
        }
    }

    /// Counts a kernel that `host` was chosen for but that runs through another provisioner
    /// (the host is this machine) as one of the host's live kernels until its launcher ends.
    pub fn count_while_running(&self, host: &str, launched: &Launched) {
        if let Ok(mut m) = self.live.lock() {
            *m.entry(host.to_owned()).or_default() += 1;
        }
        let (live, host, mut exit) = (self.live.clone(), host.to_owned(), launched.exit.clone());
        self.tasks.spawn_until_stopped(async move {
            let _ = exit.wait_for(Option::is_some).await;
            if let Ok(mut m) = live.lock()
                && let Some(n) = m.get_mut(&host)
            {
                *n = n.saturating_sub(1);
            }
        });
    }

    /// Launches on `host`, chosen among `hosts` (the others are where a launch that cannot
    /// reach `host` is sent next).
    pub async fn launch_at(
        &self,
        host: String,
        hosts: &[String],
        request: LaunchRequest,
    ) -> Result<Launched, LaunchError> {
        if request.argv.is_empty() {
            return Err(LaunchError::EmptyArgv);
        }
        let address = self.address(&host).await?;
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
            request.secret.is_some(),
        );
        let mut child = self
            .client
            .remote(&host, &script)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                program: self.client.settings.program.to_string_lossy().into_owned(),
                source,
            })?;
        if let (Some(secret), Some(stdin)) = (&request.secret, child.stdin.as_mut()) {
            use tokio::io::AsyncWriteExt;
            // The pipe takes one short line at once; a failure shows as the launch's own.
            if let Err(e) = stdin.write_all(format!("{secret}\n").as_bytes()).await {
                tracing::warn!(kernel_id = %request.kernel_id, %host, "could not hand the launch secret to ssh: {e}");
            }
        }
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
        let (tx, rx) = watch_channel::channel(None);
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
            tasks: self.tasks.clone(),
        };
        let fresh = candidates.is_some();
        let live = self.live.clone();
        let flag = exited.clone();
        // Ends with the launcher, or with the gateway (the remote watcher then sees EOF and
        // ends too, leaving the launcher running for the next gateway).
        self.tasks.spawn_until_stopped(async move {
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
            control: Box::new(SshControl {
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

impl Provision for Ssh {
    async fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        let hosts = self.client.settings.hosts.clone();
        self.launch_on(&hosts, request).await
    }

    /// Never fails with [`LaunchError::Gone`] itself: whether the launcher still runs is
    /// only known once the remote side answers, so a launcher found gone is reported through
    /// the exit channel right after (the kernel then shows as dead).
    async fn reattach(
        &self,
        kernel_id: &str,
        placement: &Placement,
    ) -> Result<Launched, LaunchError> {
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

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

    fn ssh(balancing: Balancing) -> Ssh {
        Ssh::new(
            SshSettings {
                balancing,
                ..SshSettings::default()
            },
            Tasks::new(),
        )
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
}
