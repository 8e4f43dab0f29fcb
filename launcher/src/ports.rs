//! Port reservation for the kernel's five ZMQ sockets and the comm port.
//!
//! EG's Python launcher finds kernel ports by binding and immediately closing
//! them, then picks the comm port afterwards, so the comm port can land on a
//! kernel port, and a concurrent launch can steal a port in between. Here all
//! six are held at once (so they are necessarily distinct), and the five
//! kernel ports stay held for as long as the launcher runs, so no concurrent
//! launch can be handed one while the kernel is still starting.
//!
//! How a kernel port is held (Linux semantics, each point covered by a test):
//! - The socket is bound *without* SO_REUSEADDR, so the bind is exclusive
//!   against anything already bound there, including another launcher's held
//!   port (a `--port-range` search never shares a port).
//! - SO_REUSEADDR is set *after* the bind and the socket never listens. The
//!   kernel's own bind on the same port then succeeds, because for TCP two
//!   bound sockets may share a port when both have SO_REUSEADDR and neither
//!   listens (the kernel's socket listens afterwards, which is allowed while
//!   ours does not). This relies on the kernel's ZMQ library setting
//!   SO_REUSEADDR on its TCP listeners before binding: libzmq does (ipykernel
//!   via pyzmq, IRkernel via pbdZMQ, xeus, IJulia), and so does JeroMQ (Toree)
//!   on everything but Windows. A kernel that did not would fail to bind with
//!   "Address already in use".
//! - The comm listener is bound the same exclusive way before it listens (a
//!   listener bound with SO_REUSEADDR, like std's, could otherwise land on
//!   another launcher's held kernel port and then block that kernel's bind).
//! - Linux's port-0 autobind treats any existing bind on a port as taken, so a
//!   concurrent launcher (or anything else binding port 0) is never handed a
//!   held port, whether or not it sets SO_REUSEADDR itself.
//!
//! Because the exclusive bind does not override TIME_WAIT, a port whose
//! previous kernel exited in the last minute is skipped (as EG's launcher
//! skips it); a tiny `--port-range` under fast churn can run out sooner.
//!
//! Inside a bounded range EG gives up after a few random picks per socket;
//! this picks randomly the same number of times, then scans the whole range,
//! so "exhausted" means every port in the range really is taken.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, SockaddrStorage, bind, getsockname,
    listen, setsockopt, socket, sockopt,
};
use protocol::ports::PortRange;

/// The five kernel ports, named as in the connection file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPorts {
    pub shell: u16,
    pub iopub: u16,
    pub stdin: u16,
    pub control: u16,
    pub hb: u16,
}

/// One kernel port, held by a bound, never-listening socket with SO_REUSEADDR
/// set after the bind (see the module doc). Closing it frees the port.
#[derive(Debug)]
struct HeldPort {
    _socket: OwnedFd,
    port: u16,
}

/// The five held kernel ports. Keep this alive while the kernel runs.
#[derive(Debug)]
pub struct HeldKernelPorts {
    held: Vec<HeldPort>,
}

impl HeldKernelPorts {
    /// The five kernel ports, in connection-file order.
    pub fn ports(&self) -> KernelPorts {
        let p: Vec<u16> = self.held.iter().map(|h| h.port).collect();
        KernelPorts {
            shell: p[0],
            iopub: p[1],
            stdin: p[2],
            control: p[3],
            hb: p[4],
        }
    }
}

/// Five held kernel ports and the comm listener (both bound exclusively).
#[derive(Debug)]
pub struct Reservation {
    /// Held for the launcher's lifetime; the kernel binds them alongside.
    pub kernel: HeldKernelPorts,
    /// A listener, served by the launcher for its lifetime.
    pub comm: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("port range {range} holds {size} ports; 6 are needed (5 kernel ports + the comm port)")]
    RangeTooSmall { range: String, size: u32 },
    #[error(
        "no free port left in {range} (every port was tried); widen --port-range or free ports"
    )]
    Exhausted { range: String },
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot set up the socket for {addr}: {step}: {source}")]
    Hold {
        addr: SocketAddr,
        step: &'static str,
        source: io::Error,
    },
}

impl Reservation {
    /// The five kernel ports, in connection-file order.
    pub fn kernel_ports(&self) -> KernelPorts {
        self.kernel.ports()
    }

    pub fn comm_port(&self) -> u16 {
        self.comm.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

/// Holds five distinct kernel ports and binds a comm listener, all inside
/// `range` on `ip`.
pub fn reserve(ip: IpAddr, range: PortRange, random_tries: u32) -> Result<Reservation, PortError> {
    if let Some(size) = range.len()
        && size < 6
    {
        return Err(PortError::RangeTooSmall {
            range: describe(range),
            size,
        });
    }
    let mut taken: Vec<u16> = Vec::with_capacity(6);
    let mut held: Vec<HeldPort> = Vec::with_capacity(5);
    for _ in 0..5 {
        let h = find_port(ip, range, random_tries, &taken, hold)?;
        taken.push(h.port);
        held.push(h);
    }
    let comm = find_port(ip, range, random_tries, &taken, comm_listener)?;
    Ok(Reservation {
        kernel: HeldKernelPorts { held },
        comm,
    })
}

/// Binds `addr` exclusively (no SO_REUSEADDR yet), then sets SO_REUSEADDR so
/// the kernel's libzmq listener can bind the same port; never listens.
fn hold(addr: SocketAddr) -> Result<HeldPort, PortError> {
    let socket = bind_exclusive(addr)?;
    // After the bind, so the bind itself stayed exclusive. The TCP bind
    // conflict check reads this flag live, so it now lets the kernel's
    // SO_REUSEADDR listener share the port.
    setsockopt(&socket, sockopt::ReuseAddr, &true)
        .map_err(hold_error(addr, "setsockopt SO_REUSEADDR"))?;
    let port = bound_port(&socket, addr)?;
    Ok(HeldPort {
        _socket: socket,
        port,
    })
}

/// The comm listener, bound exclusively too: std's `TcpListener::bind` sets
/// SO_REUSEADDR first, which would let it bind (and then listen on) another
/// launcher's held kernel port.
fn comm_listener(addr: SocketAddr) -> Result<TcpListener, PortError> {
    let socket = bind_exclusive(addr)?;
    listen(&socket, Backlog::MAXCONN).map_err(hold_error(addr, "listen"))?;
    Ok(TcpListener::from(socket))
}

/// A close-on-exec TCP socket bound to `addr` without SO_REUSEADDR, so the
/// bind fails if anything at all is bound to that port.
fn bind_exclusive(addr: SocketAddr) -> Result<OwnedFd, PortError> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let socket = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(hold_error(addr, "socket"))?;
    bind(socket.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| PortError::Bind {
        addr,
        source: e.into(),
    })?;
    Ok(socket)
}

fn bound_port(socket: &OwnedFd, addr: SocketAddr) -> Result<u16, PortError> {
    if addr.port() != 0 {
        return Ok(addr.port());
    }
    let local: SockaddrStorage =
        getsockname(socket.as_raw_fd()).map_err(hold_error(addr, "getsockname"))?;
    port_of(&local).ok_or_else(|| PortError::Hold {
        addr,
        step: "getsockname",
        source: io::Error::other(format!("unexpected address family {:?}", local.family())),
    })
}

fn hold_error(addr: SocketAddr, step: &'static str) -> impl Fn(nix::Error) -> PortError {
    move |e| PortError::Hold {
        addr,
        step,
        source: e.into(),
    }
}

fn port_of(addr: &SockaddrStorage) -> Option<u16> {
    addr.as_sockaddr_in()
        .map(|a| a.port())
        .or_else(|| addr.as_sockaddr_in6().map(|a| a.port()))
}

fn describe(range: PortRange) -> String {
    match range {
        PortRange::Unrestricted => "0..0".to_string(),
        PortRange::Bounded { lower, upper } => format!("{lower}..{upper}"),
    }
}

/// Binds one port with `bind_at`: port 0 when unrestricted, else a free port
/// of the range other than `taken`.
fn find_port<T>(
    ip: IpAddr,
    range: PortRange,
    random_tries: u32,
    taken: &[u16],
    bind_at: impl Fn(SocketAddr) -> Result<T, PortError>,
) -> Result<T, PortError> {
    let PortRange::Bounded { lower, upper } = range else {
        return bind_at(SocketAddr::new(ip, 0));
    };
    let try_port = |port: u16| -> Result<Option<T>, PortError> {
        if taken.contains(&port) {
            return Ok(None);
        }
        match bind_at(SocketAddr::new(ip, port)) {
            Ok(bound) => Ok(Some(bound)),
            Err(PortError::Bind { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    };
    for _ in 0..random_tries {
        if let Some(port) = range.pick(random_u32())
            && let Some(bound) = try_port(port)?
        {
            return Ok(bound);
        }
    }
    // Scan every port once, starting at a random offset.
    let span = u32::from(upper - lower) + 1;
    let start = random_u32() % span;
    for i in 0..span {
        let port = lower + ((start + i) % span) as u16;
        if let Some(bound) = try_port(port)? {
            return Ok(bound);
        }
    }
    Err(PortError::Exhausted {
        range: describe(range),
    })
}

fn random_u32() -> u32 {
    // Port choice needs spread, not secrecy; a clock-derived fallback is fine.
    getrandom::u32().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn unrestricted_gives_six_distinct_ports() {
        let r = reserve(LO, PortRange::Unrestricted, 5).unwrap();
        let k = r.kernel_ports();
        let mut all = vec![k.shell, k.iopub, k.stdin, k.control, k.hb, r.comm_port()];
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6);
        assert!(all.iter().all(|p| *p != 0));
    }

    #[test]
    fn bounded_range_is_respected_and_fully_used() {
        // Find a free window of exactly 6 ports, then reserve it twice.
        let range = PortRange::parse("23010..23015", 0).unwrap();
        let r = reserve(LO, range, 2).unwrap();
        let k = r.kernel_ports();
        for p in [k.shell, k.iopub, k.stdin, k.control, k.hb, r.comm_port()] {
            assert!(range.contains(p), "{p}");
        }
        let err = reserve(LO, range, 2).unwrap_err();
        assert!(matches!(err, PortError::Exhausted { .. }), "{err}");
    }

    fn all_ports(r: &Reservation) -> Vec<u16> {
        let k = r.kernel_ports();
        vec![k.shell, k.iopub, k.stdin, k.control, k.hb, r.comm_port()]
    }

    fn held_ports(r: &Reservation) -> Vec<u16> {
        let mut all = all_ports(r);
        all.pop();
        all
    }

    #[test]
    fn port_zero_binds_never_get_a_held_port() {
        // std's TcpListener sets SO_REUSEADDR before binding, the case in
        // which a held port would be most likely to be shared. Dropping each
        // listener frees its port again, so the autobind keeps roaming the
        // whole ephemeral range: with the ports released instead of held,
        // this loop hands out one of them almost surely.
        let r = reserve(LO, PortRange::Unrestricted, 5).unwrap();
        let held = held_ports(&r);
        for _ in 0..20_000 {
            let l = TcpListener::bind((LO, 0)).unwrap();
            let port = l.local_addr().unwrap().port();
            assert!(!held.contains(&port), "bind(0) was handed held port {port}");
        }
    }

    #[test]
    fn held_port_is_exclusive_against_plain_binds() {
        // Another launcher's range search binds without SO_REUSEADDR.
        let r = reserve(LO, PortRange::Unrestricted, 5).unwrap();
        for port in held_ports(&r) {
            let err = hold(SocketAddr::new(LO, port)).unwrap_err();
            assert!(
                matches!(&err, PortError::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse),
                "{err}"
            );
        }
    }

    /// What libzmq does: SO_REUSEADDR, bind, listen; std's listener does the same.
    fn kernel_style_listen_on_held_ports(ip: IpAddr) {
        let r = reserve(ip, PortRange::Unrestricted, 5).unwrap();
        let listeners: Vec<TcpListener> = held_ports(&r)
            .into_iter()
            .map(|port| {
                TcpListener::bind((ip, port))
                    .unwrap_or_else(|e| panic!("kernel-style bind of held port {port}: {e}"))
            })
            .collect();
        // The kernel's listener really works while the port is still held.
        let addr = listeners[0].local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listeners[0].accept().unwrap();
        drop(r);
    }

    #[test]
    fn a_reuseaddr_listener_can_bind_a_held_port_ipv4() {
        kernel_style_listen_on_held_ports(LO);
    }

    #[test]
    fn a_reuseaddr_listener_can_bind_a_held_port_ipv6() {
        let v6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        if TcpListener::bind((v6, 0)).is_err() {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        }
        kernel_style_listen_on_held_ports(v6);
    }

    #[test]
    fn reservations_in_a_small_range_never_share_a_port() {
        // 12 ports, outside the ephemeral range so port-0 binds elsewhere
        // cannot interfere: room for exactly two reservations.
        let range = PortRange::parse("31030..31041", 0).unwrap();
        let disjoint = |rs: &[&Reservation]| {
            let mut ports: Vec<u16> = rs.iter().flat_map(|r| all_ports(r)).collect();
            assert!(ports.iter().all(|p| range.contains(*p)), "{ports:?}");
            let n = ports.len();
            ports.sort();
            ports.dedup();
            assert_eq!(ports.len(), n, "a port was reserved twice: {ports:?}");
        };
        // Concurrent: reservations racing for a full range may both come up
        // short, but those that succeed never share a port.
        for _ in 0..20 {
            let results: Vec<Result<Reservation, PortError>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..3)
                    .map(|_| s.spawn(move || reserve(LO, range, 2)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let ok: Vec<&Reservation> = results
                .iter()
                .filter_map(|r| match r {
                    Ok(r) => Some(r),
                    Err(PortError::Exhausted { .. }) => None,
                    Err(e) => panic!("{e}"),
                })
                .collect();
            assert!(ok.len() <= 2);
            disjoint(&ok);
        }
        // One after the other: two fit, and since none is shared a third
        // finds every port taken.
        let first = reserve(LO, range, 2).unwrap();
        let second = reserve(LO, range, 2).unwrap();
        disjoint(&[&first, &second]);
        let err = reserve(LO, range, 2).unwrap_err();
        assert!(matches!(err, PortError::Exhausted { .. }), "{err}");
    }

    #[test]
    fn tiny_range_is_refused() {
        let range = PortRange::parse("23020..23022", 0).unwrap();
        assert!(matches!(
            reserve(LO, range, 5).unwrap_err(),
            PortError::RangeTooSmall { size: 3, .. }
        ));
    }
}
