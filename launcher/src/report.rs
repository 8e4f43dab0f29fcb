//! Delivery of the encrypted connection payload to the gateway's response
//! address.
//!
//! EG reads each connection to EOF and sends nothing back, so delivery is:
//! connect, write everything, half-close, close. Connecting is retried with
//! backoff until a deadline (the gateway may still be binding, or a route may
//! flap), which EG's launcher does not do: it hangs or dies on the first
//! failure, a common complaint in EG's issue tracker when the response address
//! is unreachable (NAT, VPN routes, several interfaces). Once a write has
//! completed the payload is never sent again. The address may be IPv4,
//! `[IPv6]`, or a host name, resolved again on every attempt.
//!
//! When the kernel's ports are bound to one address, the payload is sent from that address
//! too, so the gateway sees it come from where the kernel listens (gateway-lite refuses a
//! payload from anywhere else).

use std::io::{self, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};

use crate::config::ResponseAddress;

#[derive(Debug, thiserror::Error)]
#[error(
    "could not deliver the connection payload to {address} within {waited:.1?} ({attempts} attempts); last error: {last}. Check that the gateway's response address is reachable from this host"
)]
pub struct ReportError {
    pub address: String,
    pub attempts: u32,
    pub waited: Duration,
    pub last: io::Error,
}

/// Sends `payload` to `address` (from local address `from`, when given), retrying connects
/// until `timeout` has passed.
pub fn deliver(
    address: &ResponseAddress,
    from: Option<IpAddr>,
    payload: &[u8],
    timeout: Duration,
) -> Result<u32, ReportError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut delay = Duration::from_millis(20);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match try_once(address, from, payload, deadline) {
            Ok(()) => return Ok(attempts),
            Err(e) => e,
        };
        let now = Instant::now();
        if now + delay >= deadline {
            return Err(ReportError {
                address: address.to_string(),
                attempts,
                waited: now - start,
                last: err,
            });
        }
        log::debug!("payload attempt {attempts} to {address} failed: {err}; retrying in {delay:?}");
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

fn try_once(
    address: &ResponseAddress,
    from: Option<IpAddr>,
    payload: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    let addrs: Vec<SocketAddr> = (address.host.as_str(), address.port)
        .to_socket_addrs()?
        .filter(|a| from.is_none_or(|f| f.is_ipv4() == a.is_ipv4()))
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host name resolved to no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        let per_try = left.clamp(Duration::from_millis(50), Duration::from_secs(5));
        let connected = match from {
            Some(ip) => connect_from(ip, addr, per_try),
            None => TcpStream::connect_timeout(&addr, per_try),
        };
        match connected {
            Ok(mut s) => {
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(payload)?;
                s.shutdown(Shutdown::Write)?;
                return Ok(());
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `connect_timeout` from local address `from` (any port): std cannot bind before it
/// connects, so the socket is made, bound and connected (non-blocking, then polled) here.
fn connect_from(from: IpAddr, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(SocketAddr::new(from, 0)),
    )?;
    match socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(to),
    ) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    if poll(&mut fds, PollTimeout::from(millis))? == 0 {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
    }
    let err = socket::getsockopt(&fd, sockopt::SocketError)?;
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn delivers_once_and_half_closes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            v
        });
        let addr = ResponseAddress {
            host: "localhost".into(),
            port,
        };
        assert_eq!(
            deliver(&addr, None, b"hello", Duration::from_secs(5)).unwrap(),
            1
        );
        assert_eq!(t.join().unwrap(), b"hello");
    }

    #[test]
    fn delivers_from_the_bound_address() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, peer) = l.accept().unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            (v, peer.ip())
        });
        let addr = ResponseAddress {
            host: "127.0.0.1".into(),
            port,
        };
        let from: IpAddr = "127.0.0.7".parse().unwrap();
        assert_eq!(
            deliver(&addr, Some(from), b"hi", Duration::from_secs(5)).unwrap(),
            1
        );
        assert_eq!(t.join().unwrap(), (b"hi".to_vec(), from));
    }

    #[test]
    fn unreachable_gives_up_after_the_deadline() {
        // Bind then drop to get a port that refuses connections.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = ResponseAddress {
            host: "127.0.0.1".into(),
            port,
        };
        let e = deliver(&addr, None, b"x", Duration::from_millis(300)).unwrap_err();
        assert!(e.attempts >= 2, "{e}");
        assert!(e.to_string().contains("127.0.0.1"));
    }
}
