//! A capture with tcpdump, of the loopback interface or of a network namespace's veth (a
//! "remote host" of the SSH tests), and a reader of the pcap file it writes: the TCP bytes
//! between gateway-lite and its kernels as anyone with `CAP_NET_RAW` on that host sees them.
//! The capture tests look for a cell's output in them.
//!
//! Facts this relies on (tcpdump 4.99 / libpcap 1.10, Debian 12):
//! - tcpdump prints `listening on lo, ...` to stderr once the capture and its filter are
//!   active: packets sent after that line reach it.
//! - Debian's tcpdump drops to the user `tcpdump` after opening the interface, and that user
//!   cannot write into a root-owned test directory: it runs with `-Z root`.
//! - libpcap's TPACKET_V3 ring hands packets to tcpdump a block at a time, when a block fills
//!   or its timeout (1 s) passes; a SIGINT loses the block in flight ("450 packets received by
//!   filter", "0 packets captured", an empty file). So before the SIGINT a sentinel (a fresh
//!   token sent over a throw-away loopback connection) is sent and the file watched until it
//!   holds the token: with `-U` tcpdump writes each packet it gets at once, so everything
//!   delivered before the sentinel is in the file then.
//! - `--immediate-mode` would avoid the blocks, but libpcap then falls back to TPACKET_V2 with
//!   fixed slots of the snapshot length (256 KiB with `-s 0`): a 2 MiB ring holds 8 packets,
//!   and bursts were dropped ("6 packets dropped by kernel"). The ring is also enlarged (`-B`),
//!   since other tests' traffic on `lo` shares it.
//! - On SIGINT tcpdump prints `N packets dropped by kernel` and exits 0. That count covers all
//!   of `lo`; what the tests need is checked per connection instead ([`Pcap::incomplete`]).
//! - `lo` is captured with Ethernet framing (link type 1); the "any" pseudo-interface would
//!   give Linux cooked headers (113, 276), which the reader takes too. A veth is Ethernet too.
//! - In a namespace, tcpdump runs under `ip netns exec`, which execs it (the child's pid is
//!   tcpdump's, for the SIGINT). The sentinel cannot go over `lo` there: it is a UDP datagram
//!   sent from this namespace to the far end's address, which crosses the veth whether or not
//!   anything listens on its port.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::WAIT;

/// The UDP port the sentinel of a namespace capture goes to (RFC 863's discard port).
const DISCARD: u16 = 9;

/// A running tcpdump writing a pcap file.
pub struct Capture {
    child: Child,
    file: PathBuf,
    stderr: JoinHandle<String>,
    sentinel: Sentinel,
    iface: String,
}

/// How [`Capture::stop`] sends its sentinel through the captured interface.
enum Sentinel {
    /// A TCP connection on 127.0.0.1.
    Loopback,
    /// A UDP datagram to the discard port of this address.
    Udp(IpAddr),
}

/// What a stopped capture holds.
pub struct Pcap {
    /// The file as tcpdump wrote it.
    pub bytes: Vec<u8>,
    /// Every TCP segment, in capture order.
    pub segments: Vec<Segment>,
    /// tcpdump's stderr (its statistics at the end).
    pub said: String,
    /// The interface captured.
    pub iface: String,
}

/// One captured TCP segment. Its ports tell the connections apart: on `lo` both ends are on
/// this host, and on a veth the kernel's ports are its own.
#[derive(Debug, Clone)]
pub struct Segment {
    pub src: u16,
    pub dst: u16,
    pub seq: u32,
    /// The acknowledgement number, when the ACK flag is set.
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub payload: Vec<u8>,
}

fn tcpdump_binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("tcpdump"))
        .find(|p| p.is_file());
    found.expect("tcpdump not found: run scripts/setup-env.sh (it installs the Debian package)")
}

impl Capture {
    /// Starts tcpdump on `lo`, writing every TCP packet except those to or from port `except`
    /// (the gateway's HTTP/WebSocket port) to `file`; returns once it is capturing.
    pub fn start(file: &Path, except: u16) -> Capture {
        let mut cmd = Command::new(tcpdump_binary());
        cmd.args(["-i", "lo"]);
        Capture::run(
            cmd,
            "lo",
            file,
            &format!("tcp and not port {except}"),
            Sentinel::Loopback,
        )
    }

    /// Starts tcpdump inside network namespace `ns` on its interface `iface`, writing every
    /// TCP packet to `file`; `addr` is the namespace's address on `iface`, reachable from
    /// here (the sentinel goes there). Returns once it is capturing.
    pub fn start_in(ns: &str, iface: &str, addr: IpAddr, file: &Path) -> Capture {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(tcpdump_binary())
            .args(["-i", iface]);
        Capture::run(
            cmd,
            iface,
            file,
            &format!("tcp or (udp and dst port {DISCARD})"),
            Sentinel::Udp(addr),
        )
    }

    /// `cmd` is tcpdump with its interface chosen.
    fn run(
        mut cmd: Command,
        iface: &str,
        file: &Path,
        filter: &str,
        sentinel: Sentinel,
    ) -> Capture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the capture tests run tcpdump, which needs root (CAP_NET_RAW on {iface}): run them as root, as CI does"
        );
        let mut child = cmd
            .args(["-n", "-U", "-s", "0", "-B", "32768", "-Z", "root", "-w"])
            .arg(file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        if rx.recv_timeout(WAIT).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let said = stderr.join().unwrap_or_default();
            panic!("tcpdump never said it was listening on {iface}:\n{said}");
        }
        Capture {
            child,
            file: file.to_owned(),
            stderr,
            sentinel,
            iface: iface.to_owned(),
        }
    }

    /// Waits until tcpdump has written a sentinel sent now (so every packet delivered before
    /// it is in the file), stops tcpdump as Ctrl-C does (SIGINT), waits for it and reads what
    /// it wrote.
    pub fn stop(mut self) -> Pcap {
        self.flush();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let status = self.child.wait().expect("waiting for tcpdump");
        let said = self.stderr.join().unwrap_or_default();
        assert!(status.success(), "tcpdump: {status}\n{said}");
        let bytes = std::fs::read(&self.file)
            .unwrap_or_else(|e| panic!("reading {}: {e}\n{said}", self.file.display()));
        let segments =
            parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}\n{said}", self.file.display()));
        Pcap {
            bytes,
            segments,
            said,
            iface: self.iface,
        }
    }

    fn flush(&mut self) {
        let token = format!("capture-sentinel-{}", uuid::Uuid::new_v4().simple());
        // Kept open until the token is in the file.
        let _kept = match self.sentinel {
            Sentinel::Loopback => {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let mut out = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let accepted = listener.accept().unwrap();
                out.write_all(token.as_bytes()).unwrap();
                Some((out, accepted))
            }
            Sentinel::Udp(addr) => {
                let any: IpAddr = if addr.is_ipv4() {
                    Ipv4Addr::UNSPECIFIED.into()
                } else {
                    Ipv6Addr::UNSPECIFIED.into()
                };
                let socket = std::net::UdpSocket::bind((any, 0)).unwrap();
                socket
                    .send_to(token.as_bytes(), (addr, DISCARD))
                    .unwrap_or_else(|e| panic!("sending the capture sentinel to {addr}: {e}"));
                None
            }
        };
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let written = std::fs::read(&self.file).unwrap_or_default();
            if contains(&written, token.as_bytes()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tcpdump ended early: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tcpdump never wrote the sentinel to {}",
                self.file.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Pcap {
    /// What tcpdump's closing statistics say the kernel dropped (`None`: no such line).
    pub fn dropped(&self) -> Option<u64> {
        self.said.lines().find_map(|l| {
            l.strip_suffix("packets dropped by kernel")?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The byte stream of each direction of each TCP connection with an end on one of
    /// `ports`, keyed by (source port, destination port).
    pub fn streams(&self, ports: &[u16]) -> HashMap<(u16, u16), Vec<u8>> {
        self.directions(ports)
            .into_iter()
            .map(|(k, d)| (k, d.bytes))
            .collect()
    }

    /// The directions of connections on `ports` whose bytes the capture does not hold in
    /// full, and why: data came without its SYN, bytes in the middle are missing, or the peer
    /// acknowledged more than was captured (the end is missing). Empty when every byte these
    /// connections carried while the capture ran is in [`Pcap::streams`].
    pub fn incomplete(&self, ports: &[u16]) -> Vec<String> {
        let dirs = self.directions(ports);
        let mut out = Vec::new();
        for ((src, dst), d) in &dirs {
            let Some(start) = d.start else {
                // Without data, a refused attempt (RST) or a bare ACK: nothing to miss.
                if !d.bytes.is_empty() {
                    out.push(format!("{src}->{dst}: data but no SYN captured"));
                }
                continue;
            };
            if d.gaps > 0 {
                out.push(format!("{src}->{dst}: {} gaps", d.gaps));
            }
            let end = start
                .wrapping_add(d.bytes.len() as u32)
                .wrapping_add(u32::from(d.fin));
            let acked = dirs.get(&(*dst, *src)).and_then(|r| r.max_ack(start));
            if let Some(acked) = acked.filter(|a| a.wrapping_sub(start) > end.wrapping_sub(start)) {
                out.push(format!(
                    "{src}->{dst}: {} bytes acknowledged, {} captured",
                    acked.wrapping_sub(start),
                    d.bytes.len()
                ));
            }
        }
        out.sort();
        out
    }

    fn directions(&self, ports: &[u16]) -> HashMap<(u16, u16), Direction> {
        let mut out: HashMap<(u16, u16), Direction> = HashMap::new();
        for s in &self.segments {
            if !(ports.contains(&s.src) || ports.contains(&s.dst)) {
                continue;
            }
            out.entry((s.src, s.dst)).or_default().take(s);
        }
        out
    }
}

/// One direction of a TCP connection as captured.
#[derive(Default)]
struct Direction {
    /// Sequence number of the first data byte (the SYN's + 1), when the SYN was captured.
    start: Option<u32>,
    /// Sequence number of the next byte expected.
    next: Option<u32>,
    bytes: Vec<u8>,
    gaps: usize,
    fin: bool,
    /// Every acknowledgement number this side sent (about the other direction).
    acks: Vec<u32>,
}

impl Direction {
    fn take(&mut self, s: &Segment) {
        if let Some(a) = s.ack {
            self.acks.push(a);
        }
        if s.syn {
            self.start = Some(s.seq.wrapping_add(1));
            self.next = self.start;
        }
        self.fin |= s.fin;
        if s.payload.is_empty() {
            return;
        }
        let next = *self.next.get_or_insert(s.seq);
        let behind = next.wrapping_sub(s.seq);
        let skip = if behind == 0 {
            0
        } else if behind < 1 << 31 {
            // Starts before `next`: a retransmission, in whole or part.
            behind as usize
        } else {
            self.gaps += 1;
            0
        };
        if let Some(fresh) = s.payload.get(skip..).filter(|f| !f.is_empty()) {
            self.bytes.extend_from_slice(fresh);
            self.next = Some(s.seq.wrapping_add(s.payload.len() as u32));
        }
    }

    /// The highest acknowledgement, counted from the other direction's `start`.
    fn max_ack(&self, start: u32) -> Option<u32> {
        self.acks
            .iter()
            .copied()
            .filter(|a| a.wrapping_sub(start) < 1 << 31)
            .max_by_key(|a| a.wrapping_sub(start))
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn u16_at(b: &[u8], at: usize, big: bool) -> Option<u16> {
    let a: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if big {
        u16::from_be_bytes(a)
    } else {
        u16::from_le_bytes(a)
    })
}

fn u32_at(b: &[u8], at: usize, big: bool) -> Option<u32> {
    let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if big {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    })
}

/// The TCP segments of a classic pcap file (microsecond or nanosecond timestamps, either
/// byte order); packets that are not TCP over IPv4/IPv6 are skipped.
pub fn parse(b: &[u8]) -> Result<Vec<Segment>, String> {
    let big = match b.get(..4) {
        Some([0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d]) => true,
        Some([0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1]) => false,
        _ => return Err("not a pcap file (bad magic)".into()),
    };
    let link = u32_at(b, 20, big).ok_or("pcap header cut short")?;
    let mut out = Vec::new();
    let mut at = 24;
    while at < b.len() {
        let caught = u32_at(b, at + 8, big).ok_or("record header cut short")? as usize;
        let frame = b
            .get(at + 16..at + 16 + caught)
            .ok_or("record cut short (tcpdump killed mid-write?)")?;
        at += 16 + caught;
        let (ethertype, ip_at) = match link {
            1 => (u16_at(frame, 12, true), 14),
            113 => (u16_at(frame, 14, true), 16),
            276 => (u16_at(frame, 0, true), 20),
            other => return Err(format!("link type {other} is not read here")),
        };
        if let Some(seg) = ethertype.and_then(|t| tcp_segment(t, frame.get(ip_at..)?)) {
            out.push(seg);
        }
    }
    Ok(out)
}

fn tcp_segment(ethertype: u16, ip: &[u8]) -> Option<Segment> {
    let tcp = match ethertype {
        0x0800 => {
            let header = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16_at(ip, 2, true)?);
            if *ip.get(9)? != 6 {
                return None;
            }
            ip.get(header..total.min(ip.len()))?
        }
        0x86dd => {
            let total = 40 + usize::from(u16_at(ip, 4, true)?);
            if *ip.get(6)? != 6 {
                return None; // not TCP, or behind extension headers (never on lo here)
            }
            ip.get(40..total.min(ip.len()))?
        }
        _ => return None,
    };
    let data_at = usize::from(tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    Some(Segment {
        src: u16_at(tcp, 0, true)?,
        dst: u16_at(tcp, 2, true)?,
        seq: u32_at(tcp, 4, true)?,
        ack: (flags & 0x10 != 0).then_some(u32_at(tcp, 8, true)?),
        syn: flags & 0x02 != 0,
        fin: flags & 0x01 != 0,
        payload: tcp.get(data_at..)?.to_vec(),
    })
}
