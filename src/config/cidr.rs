//! Networks in CIDR notation (`10.0.0.0/8`, `fd00::/8`), for `[gateway]
//! admission_cidrs`.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix`, or a bare address (one host). Host bits must be 0.
    pub fn parse(s: &str) -> Result<Cidr> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| anyhow!("{s:?} is not a network such as 10.0.0.0/8 or fd00::/8"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| anyhow!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        let cidr = Cidr { net, prefix };
        if bits(net) & !mask(net, prefix) != 0 {
            bail!("{s:?} has host bits set: write its network address");
        }
        Ok(cidr)
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_ipv4() != self.net.is_ipv4() {
            return false;
        }
        let m = mask(ip, self.prefix);
        bits(ip) & m == bits(self.net) & m
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(ip: IpAddr, prefix: u8) -> u128 {
    let width: u32 = if ip.is_ipv4() { 32 } else { 128 };
    let all: u128 = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    let host_bits = width - u32::from(prefix);
    if host_bits >= 128 {
        0
    } else {
        all & !((1u128 << host_bits) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains(ip("10.1.2.3")));
        assert!(ten.contains(ip("::ffff:10.9.9.9")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(!ten.contains(ip("fd00::1")));
        let host = Cidr::parse("127.0.0.1").unwrap();
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let any = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(any.contains(ip("192.0.2.1")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "ten/8", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
