//! `--response-ip` given as a subnet: the address this host (or container) has in it.
//!
//! A gateway run as a Swarm service cannot be given a fixed address on its overlay network,
//! yet kernels must be told one to report to. With `--response-ip 10.202.0.0/24` the gateway
//! takes the address of its own network interface inside that subnet, found once at start
//! from the interface list (`getifaddrs`). The same serves a host with several interfaces.

use std::net::IpAddr;

/// A subnet `ADDRESS/PREFIX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// Parses `10.202.0.0/24` or `fd00::/64`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Subnet> {
        let (base, prefix) = text.split_once('/')?;
        let base: IpAddr = base.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Subnet { base, prefix })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> u128 {
            match ip {
                IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        if self.base.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let host_bits = u32::from(width - self.prefix) + if ip.is_ipv4() { 96 } else { 0 };
        let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
        bits(ip) & mask == bits(self.base) & mask
    }

    /// The first of `addresses` inside, skipping the subnet's own address.
    pub fn pick(&self, addresses: impl IntoIterator<Item = IpAddr>) -> Option<IpAddr> {
        addresses
            .into_iter()
            .find(|a| self.contains(*a) && *a != self.base)
    }
}

/// This host's interface addresses.
pub fn interface_addresses() -> std::io::Result<Vec<IpAddr>> {
    let list = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(list
        .filter_map(|i| {
            let a = i.address?;
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn subnets() {
        let s = Subnet::parse("10.202.0.0/24").unwrap();
        assert!(s.contains(ip("10.202.0.7")));
        assert!(!s.contains(ip("10.202.1.7")));
        assert!(!s.contains(ip("::1")));
        assert_eq!(
            s.pick([
                ip("127.0.0.1"),
                ip("10.202.0.0"),
                ip("172.18.0.3"),
                ip("10.202.0.9")
            ]),
            Some(ip("10.202.0.9"))
        );
        assert_eq!(s.pick([ip("127.0.0.1")]), None);
        assert!(Subnet::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        let v6 = Subnet::parse("fd00::/64").unwrap();
        assert!(v6.contains(ip("fd00::5")) && !v6.contains(ip("fd01::5")));
        for bad in ["10.0.0.1", "10.0.0.0/33", "x/8", "10.0.0.0/", "::/129"] {
            assert_eq!(Subnet::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn this_host_has_loopback() {
        let found = Subnet::parse("127.0.0.0/8")
            .unwrap()
            .pick(interface_addresses().unwrap());
        assert_eq!(found, Some(ip("127.0.0.1")));
    }
}
