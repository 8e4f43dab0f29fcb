//! Port reservation for the kernel's five ZMQ sockets and the comm port.
//!
//! EG's Python launcher finds kernel ports by binding and immediately closing
//! them, then picks the comm port afterwards, so the comm port can land on a
//! kernel port, and a concurrent launch can steal a port in between. Here all
//! six are held as bound listeners at once (so they are necessarily distinct)
//! and the five kernel listeners are released only when the kernel is spawned.
//!
//! Inside a bounded range EG gives up after a few random picks per socket;
//! this picks randomly the same number of times, then scans the whole range,
//! so "exhausted" means every port in the range really is taken.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};

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

/// Six bound listeners: five placeholders for the kernel, one comm listener.
#[derive(Debug)]
pub struct Reservation {
    kernel: Vec<TcpListener>,
    /// Stays bound for the launcher's lifetime.
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
}

impl Reservation {
    /// The five kernel ports, in connection-file order.
    pub fn kernel_ports(&self) -> KernelPorts {
        let p: Vec<u16> = self
            .kernel
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()).unwrap_or(0))
            .collect();
        KernelPorts {
            shell: p[0],
            iopub: p[1],
            stdin: p[2],
            control: p[3],
            hb: p[4],
        }
    }

    pub fn comm_port(&self) -> u16 {
        self.comm.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Frees the five kernel ports so the kernel can bind them.
    pub fn release_kernel_ports(&mut self) {
        self.kernel.clear();
    }
}

/// Binds six distinct ports inside `range` on `ip`.
pub fn reserve(ip: IpAddr, range: PortRange, random_tries: u32) -> Result<Reservation, PortError> {
    if let Some(size) = range.len()
        && size < 6
    {
        return Err(PortError::RangeTooSmall {
            range: describe(range),
            size,
        });
    }
    let mut bound: Vec<TcpListener> = Vec::with_capacity(6);
    for _ in 0..6 {
        let listener = bind_one(ip, range, random_tries, &bound)?;
        bound.push(listener);
    }
    let comm = bound.pop().expect("six listeners were bound");
    Ok(Reservation {
        kernel: bound,
        comm,
    })
}

fn describe(range: PortRange) -> String {
    match range {
        PortRange::Unrestricted => "0..0".to_string(),
        PortRange::Bounded { lower, upper } => format!("{lower}..{upper}"),
    }
}

fn bind_one(
    ip: IpAddr,
    range: PortRange,
    random_tries: u32,
    taken: &[TcpListener],
) -> Result<TcpListener, PortError> {
    let PortRange::Bounded { lower, upper } = range else {
        let addr = SocketAddr::new(ip, 0);
        return TcpListener::bind(addr).map_err(|source| PortError::Bind { addr, source });
    };
    let taken: Vec<u16> = taken
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect();
    let try_port = |port: u16| -> Result<Option<TcpListener>, PortError> {
        if taken.contains(&port) {
            return Ok(None);
        }
        let addr = SocketAddr::new(ip, port);
        match TcpListener::bind(addr) {
            Ok(l) => Ok(Some(l)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(PortError::Bind { addr, source }),
        }
    };
    for _ in 0..random_tries {
        if let Some(port) = range.pick(random_u32())
            && let Some(l) = try_port(port)?
        {
            return Ok(l);
        }
    }
    // Scan every port once, starting at a random offset.
    let span = u32::from(upper - lower) + 1;
    let start = random_u32() % span;
    for i in 0..span {
        let port = lower + ((start + i) % span) as u16;
        if let Some(l) = try_port(port)? {
            return Ok(l);
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
        let range = PortRange::parse("47010..47015", 0).unwrap();
        let r = reserve(LO, range, 2).unwrap();
        let k = r.kernel_ports();
        for p in [k.shell, k.iopub, k.stdin, k.control, k.hb, r.comm_port()] {
            assert!(range.contains(p), "{p}");
        }
        let err = reserve(LO, range, 2).unwrap_err();
        assert!(matches!(err, PortError::Exhausted { .. }), "{err}");
    }

    #[test]
    fn tiny_range_is_refused() {
        let range = PortRange::parse("47020..47022", 0).unwrap();
        assert!(matches!(
            reserve(LO, range, 5).unwrap_err(),
            PortError::RangeTooSmall { size: 3, .. }
        ));
    }
}
