//! What every ssh invocation shares: the client's options, and the one place that turns an
//! ssh destination into the IP address the kernel binds and the gateway connects to.

use std::net::IpAddr;
use std::process::Stdio;

use tokio::process::Command;

use super::script::quote;
use crate::config::SshSettings;

/// What every ssh invocation shares.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) settings: SshSettings,
}

impl Client {
    /// `ssh` with the common options.
    pub(super) fn base(&self) -> Command {
        let s = &self.settings;
        let mut cmd = Command::new(&s.program);
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
    pub(super) fn remote(&self, host: &str, script: &str) -> Command {
        let mut cmd = self.base();
        cmd.arg("--")
            .arg(host)
            .arg(format!("sh -c {}", quote(script)));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        cmd
    }

    /// The IP of `host` as ssh would reach it: an IP literal as is, else `ssh -G`'s
    /// `hostname` (which applies `~/.ssh/config` aliases), resolved (IPv4 first). Both run
    /// off the runtime's workers: `ssh -G` as a child process, the name through tokio's
    /// resolver.
    pub(super) async fn resolve(&self, host: &str) -> Result<IpAddr, String> {
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
            .kill_on_drop(true)
            .output()
            .await
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
        let addrs: Vec<IpAddr> = tokio::net::lookup_host((name, 22))
            .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_literals_need_no_lookup() {
        let c = Client {
            settings: SshSettings::default(),
        };
        assert_eq!(
            c.resolve("root@10.1.2.3").await.unwrap().to_string(),
            "10.1.2.3"
        );
        assert_eq!(c.resolve("[::1]").await.unwrap().to_string(), "::1");
    }
}
