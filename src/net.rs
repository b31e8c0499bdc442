//! IP prefixes (CIDRs) as the configuration and the planner use them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix whose host bits are zero, e.g. `10.244.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a CIDR; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("expected ADDRESS/PREFIX, like 10.244.0.0/16 or fd00:10:244::/56")]
    Syntax,
    #[error("prefix length {0} is too long for this address family (max {1})")]
    PrefixTooLong(u8, u8),
    #[error("host bits are set; did you mean {0}?")]
    HostBits(Cidr),
}

/// The tailnet's IPv4 range (CGNAT) and Tailscale's IPv6 ULA range.
pub const TAILNET_V4: Cidr = Cidr {
    addr: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)),
    prefix: 10,
};
pub const TAILNET_V6: Cidr = Cidr {
    addr: IpAddr::V6(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0)),
    prefix: 48,
};

impl Cidr {
    /// Every IPv4 / IPv6 address.
    pub const ANY_V4: Cidr = Cidr {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        prefix: 0,
    };
    pub const ANY_V6: Cidr = Cidr {
        addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        prefix: 0,
    };

    /// A prefix from an address and a length; host bits are cleared.
    pub fn new_truncating(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = max_prefix(&addr);
        if prefix > max {
            return Err(CidrError::PrefixTooLong(prefix, max));
        }
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    /// True when the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

fn max_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.trim().split_once('/').ok_or(CidrError::Syntax)?;
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Syntax)?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 3 {
            return Err(CidrError::Syntax);
        }
        let prefix: u8 = p.parse().map_err(|_| CidrError::Syntax)?;
        let cidr = Cidr::new_truncating(addr, prefix)?;
        if cidr.addr != addr {
            return Err(CidrError::HostBits(cidr));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_families() {
        let v4: Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(v4.to_string(), "10.244.0.0/16");
        assert!(v4.is_ipv4());
        let v6: Cidr = "fd00:10:244::/56".parse().unwrap();
        assert_eq!(v6.to_string(), "fd00:10:244::/56");
        assert_eq!(v6.prefix_len(), 56);
    }

    #[test]
    fn rejects_host_bits_with_a_suggestion() {
        let err = "10.244.1.7/16".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "host bits are set; did you mean 10.244.0.0/16?"
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "nonsense",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn containment_and_overlap() {
        let pods: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(pods.contains("10.244.3.4".parse().unwrap()));
        assert!(!pods.contains("10.245.0.1".parse().unwrap()));
        assert!(!pods.contains("::1".parse().unwrap()));
        assert!(TAILNET_V4.contains("100.100.100.100".parse().unwrap()));
        assert!(TAILNET_V6.contains("fd7a:115c:a1e0::53".parse().unwrap()));
        let wide: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(wide.overlaps(&pods) && pods.overlaps(&wide));
        assert!(!pods.overlaps(&"10.96.0.0/12".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
    }
}
