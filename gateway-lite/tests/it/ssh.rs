//! The SSH provisioner against real sshd: two "remote hosts", each a network namespace made
//! by the test with a veth pair to the root namespace and its own sshd (generated host key,
//! authorized_keys for a generated client key), reached through a generated ssh_config with
//! host aliases. Kernels run the real kernel-launcher and ipykernel inside the namespaces
//! (the file system is shared, so the kernelspec's paths are valid "remotely").
//!
//! Needs root (namespaces, sshd), `ip`, `sshd` and `ssh-keygen`; a missing piece fails the
//! test with the fix rather than skipping it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{self, Gateway, Options, WAIT, processes_of, python};

pub(crate) const DPP: &str =
    "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy";

fn run(cmd: &mut Command) -> String {
    support::run_ok(cmd, "install iproute2 and openssh-server")
}

fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// One namespace with sshd.
struct Host {
    alias: String,
    ns: String,
    veth: String,
    /// The namespace's end of the veth.
    peer: String,
    /// The namespace's address (sshd, kernels).
    addr: String,
    /// The root namespace's end of the veth.
    gw: String,
    sshd: Option<Child>,
}

impl Host {
    /// The namespace's inode, as `/proc/<pid>/ns/net` of a process inside shows it.
    fn net_ns(&self) -> String {
        let ino = std::fs::metadata(format!("/run/netns/{}", self.ns))
            .unwrap()
            .ino();
        format!("net:[{ino}]")
    }

    fn stop_sshd(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pids in the namespace other than its sshd listener.
    fn others(&self) -> Vec<i32> {
        let listener = self.sshd.as_ref().map(|c| c.id() as i32);
        let out = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| Some(*p) != listener)
            .collect()
    }
}

/// Two hosts and the client side (keys, ssh_config, kernelspecs).
pub(crate) struct Hosts {
    pub(crate) dir: PathBuf,
    hosts: Vec<Host>,
}

impl Hosts {
    pub(crate) fn start() -> Hosts {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let dir = std::env::temp_dir().join(format!("gl-ssh-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let key = |name: &str| {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "gl-it", "-f"])
                .arg(dir.join(name)));
            std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap()
        };
        let host_pub = key("host_key");
        let client_pub = key("client_key");
        std::fs::write(dir.join("authorized_keys"), &client_pub).unwrap();
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let taken = ip(&["-4", "-o", "addr", "show"]);
        let mut octets = Vec::new();
        while octets.len() < 2 {
            let x = 1 + (uuid::Uuid::new_v4().as_u128() % 250) as u8;
            if !octets.contains(&x) && !taken.contains(&format!("10.201.{x}.")) {
                octets.push(x);
            }
        }
        let mut known = String::new();
        let mut config = String::new();
        // Drops (and so cleans up) whatever was made if a step below fails.
        let mut made = Hosts {
            dir: dir.clone(),
            hosts: Vec::new(),
        };
        for (i, x) in octets.iter().enumerate() {
            let h = Host {
                alias: format!("gl-host-{i}"),
                ns: format!("gl-ssh-{tag}-{i}"),
                veth: format!("gl{tag}{i}r"),
                peer: format!("gl{tag}{i}n"),
                addr: format!("10.201.{x}.2"),
                gw: format!("10.201.{x}.1"),
                sshd: None,
            };
            ip(&["netns", "add", &h.ns]);
            made.hosts.push(h);
            let h = made.hosts.last_mut().unwrap();
            let peer = h.peer.clone();
            ip(&[
                "link", "add", &h.veth, "type", "veth", "peer", "name", &peer,
            ]);
            ip(&["link", "set", &peer, "netns", &h.ns]);
            ip(&["addr", "add", &format!("{}/24", h.gw), "dev", &h.veth]);
            ip(&["link", "set", &h.veth, "up"]);
            ip(&[
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/24", h.addr),
                "dev",
                &peer,
            ]);
            ip(&["-n", &h.ns, "link", "set", &peer, "up"]);
            ip(&["-n", &h.ns, "link", "set", "lo", "up"]);
            // The gateway's response address is on the *other* veth: reach it through the root
            // namespace, which owns that address.
            ip(&["-n", &h.ns, "route", "add", "default", "via", &h.gw]);
            let conf = dir.join(format!("sshd_{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "ListenAddress {addr}\nPort 22\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                     PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
                     AllowTcpForwarding no\nX11Forwarding no\nPrintMotd no\nLogLevel VERBOSE\n",
                    addr = h.addr,
                    d = dir.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.join(format!("sshd_{i}.log"))).unwrap();
            let sshd = Command::new("ip")
                .args(["netns", "exec", &h.ns, "/usr/sbin/sshd", "-D", "-e", "-f"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting sshd (install openssh-server)");
            h.sshd = Some(sshd);
            known.push_str(&format!("{} {}", h.addr, host_pub));
            config.push_str(&format!(
                "Host {alias}\n  HostName {addr}\n\n",
                alias = h.alias,
                addr = h.addr
            ));
        }
        config.push_str(&format!(
            "Host *\n  User root\n  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n  \
             UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n",
            d = dir.display()
        ));
        std::fs::write(dir.join("known_hosts"), known).unwrap();
        std::fs::write(dir.join("ssh_config"), config).unwrap();
        made.write_specs();
        // sshd listens once it accepts a TCP connection.
        for h in &made.hosts {
            let deadline = std::time::Instant::now() + WAIT;
            while std::net::TcpStream::connect_timeout(
                &format!("{}:22", h.addr).parse().unwrap(),
                Duration::from_secs(1),
            )
            .is_err()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "sshd in {} never listened: {}",
                    h.ns,
                    std::fs::read_to_string(made.dir.join("sshd_0.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        made
    }

    fn write_specs(&self) {
        let py = python();
        let ipy = json!([py, "-m", "ipykernel_launcher", "-f", "{connection_file}"]);
        let specs = [
            ("dist", ipy.clone(), json!({})),
            (
                "dist_broken",
                json!(["/nonexistent/remote-kernel", "{connection_file}"]),
                json!({}),
            ),
            // Pinned to the second host (EG's per-spec config, a comma-separated string).
            (
                "dist_second",
                ipy,
                json!({"remote_hosts": self.hosts[1].alias}),
            ),
        ];
        for (name, argv, config) in specs {
            let d = self.dir.join("specs").join(name);
            std::fs::create_dir_all(&d).unwrap();
            let spec = json!({"argv": argv, "display_name": name, "language": "python",
                "metadata": {"process_proxy": {"class_name": DPP, "config": config}}});
            std::fs::write(d.join("kernel.json"), spec.to_string()).unwrap();
        }
    }

    /// Gateway arguments for these hosts.
    pub(crate) fn args(&self, extra: &[&str]) -> Vec<String> {
        let aliases: Vec<&str> = self.hosts.iter().map(|h| h.alias.as_str()).collect();
        let mut v = vec![
            "--remote-hosts".to_owned(),
            aliases.join(","),
            "--ssh-config".into(),
            self.dir.join("ssh_config").to_string_lossy().into_owned(),
            "--response-ip".into(),
            self.hosts[0].gw.clone(),
            "--kernelspec-dir".into(),
            self.dir.join("specs").to_string_lossy().into_owned(),
            // Made by the launch script; removed with the test's files.
            "--remote-log-dir".into(),
            self.dir.join("remote logs").to_string_lossy().into_owned(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// The ssh_config alias of host `i`.
    pub(crate) fn alias(&self, i: usize) -> &str {
        &self.hosts[i].alias
    }

    /// Host `i`'s network namespace, its end of the veth and its address there (what the
    /// gateway connects to).
    pub(crate) fn wire(&self, i: usize) -> (&str, &str, std::net::IpAddr) {
        let h = &self.hosts[i];
        (&h.ns, &h.peer, h.addr.parse().unwrap())
    }

    /// The host whose namespace is `net_ns`.
    pub(crate) fn index_of(&self, net_ns: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.net_ns() == net_ns)
            .unwrap_or_else(|| panic!("{net_ns} is none of the test's namespaces"))
    }

    /// Waits (bounded) until no process but sshd's listener is left in any namespace.
    pub(crate) async fn wait_empty(&self) -> Vec<i32> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left: Vec<i32> = self.hosts.iter().flat_map(Host::others).collect();
            if left.is_empty() || tokio::time::Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.stop_sshd();
            for pid in h.others() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = Command::new("ip")
                .args(["link", "del", &h.veth])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("ip")
                .args(["netns", "del", &h.ns])
                .stderr(Stdio::null())
                .status();
        }
        if std::thread::panicking() {
            eprintln!("ssh test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The network namespace a kernel runs in, asked from the kernel itself.
pub(crate) async fn kernel_ns(gw: &Gateway, id: &str) -> String {
    let mut c = gw.connect(id, false).await;
    let out = c
        .execute("import os; print(os.readlink('/proc/self/ns/net'))")
        .await;
    assert_eq!(out.status, "ok", "{out:?}");
    out.text.trim().to_owned()
}

async fn model(gw: &Gateway, id: &str) -> Value {
    gw.json("GET", &format!("/api/kernels/{id}"), None).await.1
}

/// Lines of any process (launchers, watchers, ssh clients) mentioning `kernel_id`.
fn mentions(kernel_id: &str) -> Vec<String> {
    let me = std::process::id() as i32;
    support::pids()
        .into_iter()
        .filter(|p| *p != me)
        .filter_map(|p| {
            let cmd = support::cmdline(p);
            cmd.contains(kernel_id).then(|| format!("{p}: {cmd}"))
        })
        .collect()
}

pub(crate) async fn wait_gone(kernel_id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = processes_of(kernel_id);
        let named = mentions(kernel_id);
        if left.is_empty() && named.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes of {kernel_id} left: {left:?} {named:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_kernels_are_balanced_and_fully_managed() {
    let hosts = Hosts::start();
    let gw = Gateway::start(Options {
        args: hosts.args(&[]),
        ..Options::default()
    });

    // Four kernels, round-robin: two on each host.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(gw.start_kernel("dist").await);
    }
    let mut per_host = [0, 0];
    let mut placed = Vec::new();
    for id in &ids {
        let h = hosts.index_of(&kernel_ns(&gw, id).await);
        per_host[h] += 1;
        placed.push(h);
    }
    assert_eq!(per_host, [2, 2], "placements {placed:?}\n{}", gw.log());
    assert_ne!(placed[0], placed[1], "round-robin alternates: {placed:?}");

    // Code runs on each; an interrupt reaches the remote kernel through its comm port.
    for id in &ids {
        let mut c = gw.connect(id, false).await;
        assert_eq!(c.execute("6*7").await.text, "42");
    }
    let mut c = gw.connect(&ids[0], false).await;
    c.execute("x = 5").await;
    let sleep_id = c.start_sleep().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body) = gw
        .http("POST", &format!("/api/kernels/{}/interrupt", ids[0]), None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(c.collect(&sleep_id).await.ename, "KeyboardInterrupt");
    assert_eq!(c.execute("x").await.text, "5", "survives the interrupt");

    // Restart: same id, a fresh kernel (still on one of the hosts), the socket keeps working.
    let before = processes_of(&ids[0]);
    let (status, m) = gw
        .json("POST", &format!("/api/kernels/{}/restart", ids[0]), None)
        .await;
    assert_eq!(status, 200, "{m}\n{}", gw.log());
    assert_eq!(m["id"], ids[0].as_str());
    assert!(processes_of(&ids[0]).iter().all(|p| !before.contains(p)));
    assert_eq!(c.execute("x").await.ename, "NameError");
    hosts.index_of(&kernel_ns(&gw, &ids[0]).await);

    // Shutdown leaves nothing: no launcher or kernel, no watcher, no ssh session, on
    // either host or here.
    for id in &ids {
        let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
        assert_eq!(status, 204, "{body}");
    }
    for id in &ids {
        wait_gone(id).await;
    }
    let left = hosts.wait_empty().await;
    assert!(
        left.is_empty(),
        "processes left in the namespaces: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_failures_are_reported() {
    let mut hosts = Hosts::start();
    // No automatic restart: the death itself is under test.
    let gw = Gateway::start(Options {
        args: hosts.args(&["--restart-limit", "0"]),
        ..Options::default()
    });

    // A launcher that fails on the remote host fails the POST with its own stderr.
    let (status, err) = gw
        .json("POST", "/api/kernels", Some(r#"{"name":"dist_broken"}"#))
        .await;
    assert_eq!(status, 500, "{err}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("/nonexistent/remote-kernel") && !message.contains("timeout"),
        "{message}"
    );

    // A kernel killed on its host is reported dead.
    let id = gw.start_kernel("dist_second").await;
    assert_eq!(
        hosts.index_of(&kernel_ns(&gw, &id).await),
        1,
        "remote_hosts in the spec pins the host"
    );
    let mut c = gw.connect(&id, false).await;
    let pid: i32 = c
        .execute("import os; print(os.getpid())")
        .await
        .text
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while model(&gw, &id).await["execution_state"] != "dead" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reported dead: {}\n{}",
            model(&gw, &id).await,
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    wait_gone(&id).await;

    // A host whose sshd is down is failed over: of round-robin launches over both hosts,
    // the one sent to the down host is launched again on the other, and the client never
    // sees the failure. The host is then skipped.
    hosts.hosts[1].stop_sshd();
    let mut started = Vec::new();
    for _ in 0..3 {
        let (status, body) = gw
            .json("POST", "/api/kernels", Some(r#"{"name":"dist"}"#))
            .await;
        assert_eq!(status, 201, "{body}\n{}", gw.log());
        started.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &started {
        assert_eq!(hosts.index_of(&kernel_ns(&gw, id).await), 0, "{id}");
    }
    let log = gw.log();
    assert_eq!(
        log.matches("launching elsewhere").count(),
        1,
        "one launch hit the down host, later ones skip it:\n{log}"
    );
    assert!(log.contains(&hosts.hosts[1].alias), "{log}");

    // A kernelspec pinned to the down host alone fails with ssh's error, naming the host.
    let (status, err) = gw
        .json("POST", "/api/kernels", Some(r#"{"name":"dist_second"}"#))
        .await;
    assert_eq!(status, 500, "{err}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Connection refused") && message.contains(&hosts.hosts[1].alias),
        "{message}"
    );
    for id in &started {
        let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
        assert_eq!(status, 204);
        wait_gone(id).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_least_connection_fills_the_emptiest_host() {
    let hosts = Hosts::start();
    let gw = Gateway::start(Options {
        args: hosts.args(&["--load-balancing", "least-connection"]),
        ..Options::default()
    });
    let a = gw.start_kernel("dist").await;
    let b = gw.start_kernel("dist").await;
    let ha = hosts.index_of(&kernel_ns(&gw, &a).await);
    let hb = hosts.index_of(&kernel_ns(&gw, &b).await);
    assert_ne!(ha, hb, "one kernel per host first");
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{b}"), None).await;
    assert_eq!(status, 204);
    // The DELETE is answered once the kernel acknowledged its shutdown; its host counts it
    // until its process has gone.
    wait_gone(&b).await;
    // Round-robin would now pick `ha`'s host again; least-connection picks the empty one.
    let c = gw.start_kernel("dist").await;
    assert_eq!(hosts.index_of(&kernel_ns(&gw, &c).await), hb);
    for id in [&a, &c] {
        gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
        wait_gone(id).await;
    }
    let left = hosts.wait_empty().await;
    assert!(left.is_empty(), "{left:?}");
}

/// Path helper for the kill -9 scenario's state directory.
fn state_dir(dir: &Path) -> String {
    dir.join("state").to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_kernels_survive_a_gateway_kill() {
    let hosts = Hosts::start();
    let state = state_dir(&hosts.dir);
    let gw = Gateway::start(Options {
        args: hosts.args(&["--state-dir", &state]),
        ..Options::default()
    });
    let id = gw.start_kernel("dist").await;
    let ns = kernel_ns(&gw, &id).await;
    let mut c = gw.connect(&id, false).await;
    c.execute("y = 'kept'").await;
    drop(c);
    let launcher_pids = processes_of(&id);
    let dir = gw.stop_with(nix::sys::signal::Signal::SIGKILL);

    let gw = Gateway::start(Options {
        args: hosts.args(&["--state-dir", &state]),
        dir: Some(dir),
        ..Options::default()
    });
    let (status, m) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 200, "{m}\n{}", gw.log());
    assert_eq!(
        processes_of(&id),
        launcher_pids,
        "the same launcher and kernel"
    );
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("y").await.text, "'kept'");
    assert_eq!(kernel_ns(&gw, &id).await, ns);
    drop(c);
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{}", gw.log());
    wait_gone(&id).await;
    let left = hosts.wait_empty().await;
    assert!(left.is_empty(), "{left:?}");
}

/// A remote launcher killed with SIGKILL cannot take its kernel down; the kernel, in its own
/// process group, would run on as an orphan on the host. The gateway kills that group over
/// ssh (checked by the kernel id in its environment) and restarts the kernel; and a kernel
/// stopped cold (SIGSTOP) is still gone from its host after DELETE, since the gateway
/// outwaits the launcher's own grace.
#[tokio::test(flavor = "multi_thread")]
async fn ssh_kernels_leave_no_orphans_on_their_host() {
    let hosts = Hosts::start();
    let gw = Gateway::start(Options {
        args: hosts.args(&[]),
        ..Options::default()
    });
    let id = gw.start_kernel("dist").await;
    let mut c = gw.connect(&id, false).await;
    let out = c.execute("import os; print(os.getpid())").await;
    let kernel: i32 = out.text.trim().parse().unwrap();
    let launcher = processes_of(&id)
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "kernel-launcher")
        })
        .expect("the remote launcher");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(launcher), Signal::SIGKILL);
    // The orphaned kernel goes, and a new one takes the id.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = processes_of(&id);
        if !now.contains(&kernel) && now.len() >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the orphaned kernel {kernel} still runs ({now:?})\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.wait_log("killed the kernel's process group on its host")
        .await;

    // Stopped cold: no answer to shutdown_request, SIGTERM pending forever. DELETE still
    // leaves nothing on the host.
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("1").await.status, "ok");
    c.send(
        "shell",
        "execute_request",
        json!({"code": "import os, signal; os.kill(os.getpid(), signal.SIGSTOP)", "silent": false}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    wait_gone(&id).await;
}
