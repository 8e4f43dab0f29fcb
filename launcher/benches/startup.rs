//! Benchmark: kernel-launcher against EG 3.3.0's own `launch_ipykernel.py`,
//! in the same run on the same machine.
//!
//! Measures, for each launcher, with the same real ipykernel:
//! - exec → payload fully received by a response listener (median, p90 of N runs);
//! - the launcher's own RSS and the whole kernel tree's RSS once the kernel answers;
//! - the static binary's size.
//!
//! Run with `bench/launcher.sh` (builds the static binary, prepares the peers)
//! or directly: `KL_PY_KERNEL=... KL_EG_SDIST=... KL_STATIC_LAUNCHER=...
//! cargo bench -p launcher --bench startup -- [RUNS]`.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::payload::{self, LaunchReport, PrivateKey};

fn env_path(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set; run bench/launcher.sh"))
}

/// A launcher command: `before` + the EG options (legacy form) + `after`.
struct Peer {
    name: &'static str,
    before: Vec<String>,
    after: Vec<String>,
}

impl Peer {
    fn argv(&self, id: &str, addr: &str, key: &str) -> Vec<String> {
        let mut v = self.before.clone();
        for (opt, val) in [
            ("kernel-id", id),
            ("response-address", addr),
            ("public-key", key),
            ("port-range", "0..0"),
        ] {
            v.push(format!("--RemoteProcessProxy.{opt}"));
            v.push(val.to_string());
        }
        v.extend(self.after.iter().cloned());
        v
    }
}

fn receive(listener: &TcpListener, deadline: Instant) -> Option<Vec<u8>> {
    listener.set_nonblocking(true).ok()?;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => std::thread::yield_now(),
            Err(_) => return None,
        }
    };
    stream.set_nonblocking(false).ok()?;
    let mut v = Vec::new();
    stream.read_to_end(&mut v).ok()?;
    Some(v)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            all.extend(c.split_whitespace().filter_map(|s| s.parse::<u32>().ok()));
        }
        i += 1;
    }
    all
}

/// Waits until the kernel answers on its heartbeat port (the ZMTP greeting).
fn kernel_listening(port: u16, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let mut b = [0u8; 10];
            s.set_read_timeout(Some(Duration::from_millis(500))).ok();
            std::io::Write::write_all(&mut s, &[0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f]).ok();
            if s.read_exact(&mut b).is_ok() && b[0] == 0xff {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn stop(child: &mut Child) {
    // Each launcher runs in its own process group (EG's forks a comm listener,
    // ours starts the kernel in a group of its own): kill every group in the tree.
    for p in tree(child.id()) {
        let _ = Command::new("kill").arg("-9").arg(format!("-{p}")).status();
        let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
    }
    let _ = child.wait();
}

struct Sample {
    payload_ms: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let python = env_path("KL_PY_KERNEL");
    let sdist = env_path("KL_EG_SDIST");
    let ours = env_path("KL_STATIC_LAUNCHER");
    let eg_script = format!("{sdist}/etc/kernel-launchers/python/scripts/launch_ipykernel.py");
    let key = PrivateKey::generate(1024).unwrap();
    let public = key.public_key().to_eg_string();
    let dir = std::env::temp_dir().join(format!("kl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let peers = [
        Peer {
            name: "kernel-launcher (static)",
            before: vec![ours.clone()],
            after: [
                "--",
                &python,
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
            ]
            .map(String::from)
            .to_vec(),
        },
        Peer {
            name: "EG 3.3.0 launch_ipykernel.py",
            before: vec![python.clone(), eg_script],
            after: vec![],
        },
    ];

    println!("# kernel-launcher startup benchmark ({runs} runs per launcher, interleaved)");
    let mut samples: Vec<Vec<Sample>> = peers.iter().map(|_| Vec::new()).collect();
    let mut mem: Vec<(u64, u64, usize)> = vec![(0, 0, 0); peers.len()];
    for run in 0..runs {
        for (i, peer) in peers.iter().enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let id = format!("bench-{run}-{i}");
            let argv = peer.argv(&id, &addr, &public);
            let start = Instant::now();
            let mut child = Command::new(&argv[0])
                .args(&argv[1..])
                .current_dir(&dir)
                .env("LOG_LEVEL", "40")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap();
            let bytes = receive(&listener, start + Duration::from_secs(60));
            let elapsed = start.elapsed();
            let Some(bytes) = bytes else {
                stop(&mut child);
                panic!("{}: no payload within 60 s", peer.name);
            };
            let report = LaunchReport::from_json(&payload::decrypt(&key, &bytes).unwrap()).unwrap();
            samples[i].push(Sample {
                payload_ms: elapsed.as_secs_f64() * 1e3,
            });
            // Memory once, on the last run, after the kernel answers.
            if run == runs - 1 {
                assert!(
                    kernel_listening(
                        report.connection.hb_port,
                        Instant::now() + Duration::from_secs(60)
                    ),
                    "{}: kernel never answered",
                    peer.name
                );
                std::thread::sleep(Duration::from_secs(2));
                let pids = tree(child.id());
                let total: u64 = pids.iter().map(|p| rss_kb(*p)).sum();
                mem[i] = (rss_kb(child.id()), total, pids.len());
            }
            stop(&mut child);
        }
    }
    println!();
    println!(
        "{:<32} {:>12} {:>12} {:>12}",
        "launcher", "median ms", "p90 ms", "min ms"
    );
    let mut medians = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let mut v: Vec<f64> = samples[i].iter().map(|s| s.payload_ms).collect();
        let (med, p90) = (median(&mut v), pct(&mut v, 0.9));
        medians.push(med);
        println!(
            "{:<32} {:>12.2} {:>12.2} {:>12.2}",
            peer.name, med, p90, v[0]
        );
    }
    println!(
        "exec -> payload received: EG / ours = {:.1}x",
        medians[1] / medians[0]
    );
    println!();
    println!(
        "{:<32} {:>16} {:>16} {:>10}",
        "launcher", "launcher RSS", "tree RSS", "processes"
    );
    for (i, peer) in peers.iter().enumerate() {
        let (own, total, n) = mem[i];
        println!(
            "{:<32} {:>13.1} MB {:>13.1} MB {:>10}",
            peer.name,
            own as f64 / 1024.0,
            total as f64 / 1024.0,
            n
        );
    }
    println!(
        "launcher RSS: EG / ours = {:.1}x; tree RSS: EG / ours = {:.2}x",
        mem[1].0 as f64 / mem[0].0.max(1) as f64,
        mem[1].1 as f64 / mem[0].1.max(1) as f64
    );
    let size = std::fs::metadata(&ours).map(|m| m.len()).unwrap_or(0);
    println!();
    println!(
        "static binary: {ours}: {size} bytes ({:.2} MB)",
        size as f64 / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
