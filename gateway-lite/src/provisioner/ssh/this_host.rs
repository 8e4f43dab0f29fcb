//! Whether an ssh destination is this machine.
//!
//! Enterprise Gateway's `DistributedProcessProxy` starts a kernel locally, not over ssh, when
//! the host it chose is the gateway's own (host lists often start with `localhost`, or are
//! every node of a small cluster, the gateway's included). Teams moving to gateway-lite keep
//! those lists, and the gateway's machine need not run sshd. So a destination that names this
//! machine is recognised here: by name first (`localhost`, the host name, an address
//! literal), which needs neither ssh nor DNS, and otherwise by the address ssh resolves it to
//! (the caller's job), compared with the machine's interface addresses.

use std::net::IpAddr;

/// `Some(true)` when `host` names this machine by itself (`localhost`, this machine's host
/// name, a loopback or own address literal), `Some(false)` for an address literal of another
/// machine, `None` when only resolving the name can tell.
pub(super) fn by_name(host: &str) -> Option<bool> {
    let name = host
        .trim_matches(|c| c == '[' || c == ']')
        .trim_end_matches('.');
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(is_own_address(ip));
    }
    if name.eq_ignore_ascii_case("localhost") {
        return Some(true);
    }
    let own = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let own = own.trim();
    if !own.is_empty() && name.eq_ignore_ascii_case(own) {
        return Some(true);
    }
    None
}

/// Whether `ip` is a loopback or unspecified address, or one of this machine's interfaces'.
pub(super) fn is_own_address(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    addrs.filter_map(|a| a.address).any(|a| {
        let own = if let Some(v4) = a.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = a.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            return false;
        };
        own == ip
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_this_machine() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.0.1.1",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(by_name(host), Some(true), "{host}");
        }
        let own = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(by_name(own.trim()), Some(true), "the host name");
        // An address of another machine, and a name only resolution can tell.
        assert_eq!(by_name("192.0.2.1"), Some(false));
        assert_eq!(by_name("node-7"), None);
    }

    #[test]
    fn interface_addresses_are_own() {
        let addrs = nix::ifaddrs::getifaddrs().unwrap();
        for a in addrs.filter_map(|a| a.address) {
            if let Some(v4) = a.as_sockaddr_in() {
                assert!(is_own_address(IpAddr::V4(v4.ip())), "{v4}");
            }
        }
        assert!(!is_own_address("192.0.2.1".parse().unwrap()), "TEST-NET-1");
    }
}
