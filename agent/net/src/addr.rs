//! Addresses as the shim and the agent hold them: [`Cidr`] (an address with its prefix length),
//! Ethernet MACs and the IPv6 link-local check, with the parsers that check the protocol's
//! strings.
//!
//! Written here rather than taken from `ipnet` or a MAC crate: the protocol's rules are not
//! theirs (a bare address is a host route, an octet of a MAC may be one hex digit, nothing but
//! colons separates them), and `Cidr`'s `Debug` form is part of messages callers already read.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::RequestError;

/// An address with its prefix length, e.g. 10.0.0.0/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length, at most 32 (IPv4) or 128 (IPv6).
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// The address with every bit past the prefix cleared.
    pub fn network(self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

/// The longest prefix of the address's family: 32 or 128.
pub fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Parses an IPv4 or IPv6 address (surrounding blanks allowed); `what` names the field in the
/// error.
pub fn parse_ip(what: &'static str, s: &str) -> Result<IpAddr, RequestError> {
    s.trim().parse().map_err(|_| RequestError::NotAnAddress {
        what,
        value: s.to_string(),
    })
}

/// Checks a prefix length against the address family.
pub fn cidr(addr: IpAddr, prefix: u32) -> Result<Cidr, RequestError> {
    let max = max_prefix(addr);
    match u8::try_from(prefix) {
        Ok(p) if p <= max => Ok(Cidr { addr, prefix: p }),
        _ => Err(RequestError::PrefixOutOfRange { addr, prefix, max }),
    }
}

/// Parses `a.b.c.d/n` or `x::y/n`; a bare address is a host route (/32 or /128). The address
/// must have no bits set past the prefix, as the kernel requires of route destinations.
pub fn parse_cidr(what: &'static str, s: &str) -> Result<Cidr, RequestError> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => {
            let p: u32 = p.parse().map_err(|_| RequestError::MalformedPrefix {
                what,
                value: s.to_string(),
            })?;
            (parse_ip(what, a)?, Some(p))
        }
        None => (parse_ip(what, s)?, None),
    };
    let c = cidr(addr, prefix.unwrap_or(u32::from(max_prefix(addr))))?;
    if c.network() != c.addr {
        return Err(RequestError::HostBitsSet {
            what,
            value: s.to_string(),
            network: Cidr {
                addr: c.network(),
                prefix: c.prefix,
            }
            .to_string(),
        });
    }
    Ok(c)
}

/// Parses an Ethernet MAC address: six hex octets of one or two digits, separated by colons.
pub fn parse_mac(what: &'static str, s: &str) -> Result<[u8; 6], RequestError> {
    let bad = || RequestError::NotAMac {
        what,
        value: s.to_string(),
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Formats a link-layer address (of any length) as lower-case colon-separated hex.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `a` is an IPv6 link-local address (fe80::/10): each kernel makes its own, so neither
/// side hands them on or removes them.
pub fn is_ipv6_link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: fmt::Debug>(r: Result<T, RequestError>) -> String {
        r.expect_err("expected a refusal").to_string()
    }

    #[test]
    fn cidrs_print_and_mask() {
        let c = Cidr {
            addr: "10.1.2.3".parse().unwrap(),
            prefix: 16,
        };
        assert_eq!(c.to_string(), "10.1.2.3/16");
        assert_eq!(c.network().to_string(), "10.1.0.0");
        let all = Cidr { prefix: 0, ..c };
        assert_eq!(all.network().to_string(), "0.0.0.0");
        let v6 = Cidr {
            addr: "fd00::1:2".parse().unwrap(),
            prefix: 112,
        };
        assert_eq!(v6.network().to_string(), "fd00::1:0");
        let host = Cidr { prefix: 128, ..v6 };
        assert_eq!(host.network(), host.addr);
    }

    #[test]
    fn refusals_say_what_and_why() {
        assert_eq!(
            err(parse_ip("gateway", "10.0.0.x")),
            "gateway \"10.0.0.x\" is not an IP address"
        );
        assert_eq!(
            err(cidr("10.0.0.1".parse().unwrap(), 33)),
            "prefix length 33 of 10.0.0.1 is out of range (0-32)"
        );
        assert_eq!(
            err(cidr("fd00::1".parse().unwrap(), 129)),
            "prefix length 129 of fd00::1 is out of range (0-128)"
        );
        assert_eq!(
            err(parse_cidr("route destination", "10.1.0.0/x")),
            "route destination \"10.1.0.0/x\" has a malformed prefix length"
        );
        assert_eq!(
            err(parse_cidr("route destination", "10.1.2.3/24")),
            "route destination \"10.1.2.3/24\" has host bits set (the network is 10.1.2.0/24)"
        );
        // The address part alone is named when it is the bad part.
        assert_eq!(
            err(parse_cidr("d", "nope/24")),
            "d \"nope\" is not an IP address"
        );
        assert_eq!(
            err(parse_mac("hw_addr", "02:00")),
            "hw_addr \"02:00\" is not a MAC address (aa:bb:cc:dd:ee:ff)"
        );
    }

    #[test]
    fn addresses_parse_with_blanks_and_bare_ones_are_hosts() {
        assert_eq!(
            parse_ip("a", " 10.0.0.1 ").unwrap(),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(parse_cidr("d", "fd00::1").unwrap().prefix, 128);
        assert_eq!(parse_cidr("d", "10.0.0.1").unwrap().prefix, 32);
    }

    #[test]
    fn link_local_is_fe80_slash_10() {
        for a in ["fe80::1", "febf:ffff::1"] {
            assert!(is_ipv6_link_local(a.parse().unwrap()), "{a}");
        }
        for a in ["fec0::1", "fd00::1", "169.254.0.1", "::1"] {
            assert!(!is_ipv6_link_local(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn macs_of_any_length_format() {
        assert_eq!(format_mac(&[0, 0xa, 0xff]), "00:0a:ff");
        assert_eq!(format_mac(&[]), "");
    }
}
