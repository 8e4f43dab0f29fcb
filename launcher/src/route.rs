//! Which local address faces the gateway.
//!
//! By default the kernel's ports and the comm port are bound to one address only: the one of
//! the interface that routes to the gateway's response address. That is the address the
//! payload reports and the gateway connects to, so nothing else on other networks of the
//! host (or container) can reach the kernel. The route is asked of the kernel without sending
//! a packet: a UDP socket "connected" to the response address learns its local address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use crate::config::ResponseAddress;

/// The local address that routes to `address`, if the name resolves and a route exists.
pub fn towards(address: &ResponseAddress) -> Option<IpAddr> {
    let target: SocketAddr = (address.host.as_str(), address.port)
        .to_socket_addrs()
        .ok()?
        .next()?;
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0)).ok()?;
    socket.connect(target).ok()?;
    let local = socket.local_addr().ok()?.ip();
    (!local.is_unspecified()).then_some(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_routes_through_loopback() {
        let a = ResponseAddress {
            host: "127.0.0.1".into(),
            port: 9,
        };
        assert_eq!(towards(&a), Some(IpAddr::from([127, 0, 0, 1])));
        let none = ResponseAddress {
            host: "no-such-host.invalid".into(),
            port: 9,
        };
        assert_eq!(towards(&none), None);
    }
}
