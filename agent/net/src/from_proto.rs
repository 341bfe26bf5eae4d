//! The protocol's strings to the typed model, checked: an `Interface` becomes an
//! [`InterfacePlan`], a `Route` a [`RoutePlan`], an `ArpNeighbor` a [`NeighborPlan`]. The agent
//! takes its requests this way; what the shim (or a hostile caller) sends is refused with a
//! [`RequestError`] naming the bad field before anything reaches the kernel.

use std::net::IpAddr;

use carapace_protocol::types::{ArpNeighbor, Interface, Route};

use crate::addr::{cidr, parse_cidr, parse_ip, parse_mac, Cidr};
use crate::error::RequestError;
use crate::kernel::NUD_PERMANENT;

/// Longest interface name the kernel accepts (IFNAMSIZ less the terminating NUL).
pub const MAX_IFNAME: usize = 15;

/// Checks an interface name as the kernel would (dev_valid_name).
pub fn check_ifname(what: &'static str, s: &str) -> Result<(), RequestError> {
    if s.is_empty()
        || s.len() > MAX_IFNAME
        || s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(RequestError::BadInterfaceName {
            what,
            value: s.to_string(),
            max: MAX_IFNAME,
        });
    }
    Ok(())
}

/// How UpdateInterface finds its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSelector {
    /// By MAC address.
    Mac([u8; 6]),
    /// By name (when the request has no MAC).
    Name(String),
}

/// A checked UpdateInterface request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    /// Which link to configure.
    pub select: LinkSelector,
    /// The name to give the link (a link found by MAC is renamed when this differs).
    pub name: Option<String>,
    /// The MTU to set, when non-zero in the request.
    pub mtu: Option<u32>,
    /// The addresses the link ends up with.
    pub addresses: Vec<Cidr>,
}

impl TryFrom<&Interface> for InterfacePlan {
    type Error = RequestError;

    fn try_from(i: &Interface) -> Result<Self, RequestError> {
        let name = (!i.name.is_empty()).then(|| i.name.clone());
        if let Some(n) = &name {
            check_ifname("interface name", n)?;
        }
        let select = if !i.hw_addr.is_empty() {
            LinkSelector::Mac(parse_mac("hw_addr", &i.hw_addr)?)
        } else if let Some(n) = &name {
            LinkSelector::Name(n.clone())
        } else {
            return Err(RequestError::NoLinkSelector);
        };
        let mtu = match i.mtu {
            0 => None,
            m if m < 68 => return Err(RequestError::MtuTooSmall(m)),
            m => Some(m),
        };
        let mut addresses: Vec<Cidr> = Vec::new();
        for a in &i.addresses {
            let c = cidr(parse_ip("address", &a.address)?, a.prefix_len)?;
            if addresses.iter().any(|x| x.addr == c.addr) {
                return Err(RequestError::DuplicateAddress(c.addr));
            }
            addresses.push(c);
        }
        Ok(Self {
            select,
            name,
            mtu,
            addresses,
        })
    }
}

/// A checked route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// The destination; `None` is the default route.
    pub dest: Option<Cidr>,
    /// The next hop, if any.
    pub gateway: Option<IpAddr>,
    /// The output device's name.
    pub device: String,
    /// The preferred source address, if any.
    pub source: Option<IpAddr>,
    /// The rtnetlink scope.
    pub scope: u8,
    /// True for IPv6.
    pub ipv6: bool,
}

impl TryFrom<&Route> for RoutePlan {
    type Error = RequestError;

    fn try_from(r: &Route) -> Result<Self, RequestError> {
        let dest = match r.dest.trim() {
            "" | "default" => None,
            d => Some(parse_cidr("route destination", d)?),
        };
        let opt_ip = |what, s: &str| {
            (!s.trim().is_empty())
                .then(|| parse_ip(what, s))
                .transpose()
        };
        let gateway = opt_ip("gateway", &r.gateway)?;
        let source = opt_ip("source", &r.source)?;
        check_ifname("route device", &r.device)?;
        let scope = u8::try_from(r.scope).map_err(|_| RequestError::ScopeOutOfRange(r.scope))?;
        // The family comes from the first address given; every other must agree.
        let addrs = [dest.map(|d| d.addr), gateway, source];
        let ipv6 = addrs.iter().flatten().next().is_some_and(IpAddr::is_ipv6);
        if addrs.iter().flatten().any(|a| a.is_ipv6() != ipv6) {
            return Err(RequestError::MixedFamilies(r.dest.clone()));
        }
        Ok(Self {
            dest,
            gateway,
            device: r.device.clone(),
            source,
            scope,
            ipv6,
        })
    }
}

/// A checked ARP (or NDP) neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborPlan {
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// The device it is reached through.
    pub device: String,
    /// NUD_* state (NUD_PERMANENT when the request says 0).
    pub state: u16,
}

impl TryFrom<&ArpNeighbor> for NeighborPlan {
    type Error = RequestError;

    fn try_from(n: &ArpNeighbor) -> Result<Self, RequestError> {
        let ip = parse_ip("neighbour address", &n.ip_address)?;
        let mac = parse_mac("neighbour ll_addr", &n.ll_addr)?;
        check_ifname("neighbour device", &n.device)?;
        let state = match n.state {
            0 => NUD_PERMANENT,
            // One of the NUD_* bits, INCOMPLETE (0x01) to PERMANENT (0x80).
            s if s <= 0xff && s.is_power_of_two() => s as u16,
            s => return Err(RequestError::BadNeighbourState(s)),
        };
        Ok(Self {
            ip,
            mac,
            device: n.device.clone(),
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use carapace_protocol::types::IpAddress;

    use super::*;

    fn refusal<T: std::fmt::Debug>(r: Result<T, RequestError>) -> String {
        r.expect_err("expected a refusal").to_string()
    }

    fn iface(name: &str, mac: &str, mtu: u32, addrs: &[(&str, u32)]) -> Interface {
        Interface {
            name: name.into(),
            hw_addr: mac.into(),
            mtu,
            addresses: addrs
                .iter()
                .map(|(a, p)| IpAddress {
                    address: a.to_string(),
                    prefix_len: *p,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn interface_refusals_name_the_field() {
        let cases = [
            (
                iface("eth0/", "", 0, &[]),
                "interface name \"eth0/\" is not a valid interface name (1-15 bytes, no '/', ':' or spaces)",
            ),
            (
                iface("", "", 0, &[]),
                "the interface needs a hw_addr or a name",
            ),
            (
                iface("eth0", "zz", 0, &[]),
                "hw_addr \"zz\" is not a MAC address (aa:bb:cc:dd:ee:ff)",
            ),
            (
                iface("eth0", "", 10, &[]),
                "MTU 10 is below the minimum of 68",
            ),
            (
                iface("eth0", "", 0, &[("", 24)]),
                "address \"\" is not an IP address",
            ),
            (
                iface("eth0", "", 0, &[("10.0.0.2", 24), ("10.0.0.2", 16)]),
                "address 10.0.0.2 is given twice",
            ),
        ];
        for (i, want) in cases {
            assert_eq!(refusal(InterfacePlan::try_from(&i)), want, "{i:?}");
        }
    }

    #[test]
    fn route_refusals_name_the_field() {
        let route = |dest: &str, gw: &str, src: &str, dev: &str, scope| Route {
            dest: dest.into(),
            gateway: gw.into(),
            source: src.into(),
            device: dev.into(),
            scope,
            ..Default::default()
        };
        let cases = [
            (
                route("fd00::/64", "10.0.0.1", "", "eth0", 0),
                "route to \"fd00::/64\" mixes IPv4 and IPv6 addresses",
            ),
            (
                route("default", "", "", "eth0", 256),
                "route scope 256 is out of range (0-255)",
            ),
            (
                route("default", "", "x", "eth0", 0),
                "source \"x\" is not an IP address",
            ),
            (
                route("default", "", "", "", 0),
                "route device \"\" is not a valid interface name (1-15 bytes, no '/', ':' or spaces)",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(refusal(RoutePlan::try_from(&r)), want, "{r:?}");
        }
        // Blanks around the destination are no part of it.
        let p = RoutePlan::try_from(&route(" 10.0.0.0/8 ", "", "", "eth0", 0)).unwrap();
        assert_eq!(p.dest.unwrap().to_string(), "10.0.0.0/8");
        let p = RoutePlan::try_from(&route(" default ", "", "", "eth0", 0)).unwrap();
        assert_eq!((p.dest, p.ipv6), (None, false));
    }

    #[test]
    fn neighbour_refusals_name_the_field() {
        let n = |ip: &str, mac: &str, state| ArpNeighbor {
            ip_address: ip.into(),
            ll_addr: mac.into(),
            device: "eth0".into(),
            state,
            ..Default::default()
        };
        assert_eq!(
            refusal(NeighborPlan::try_from(&n(
                "10.0.0.9",
                "02:00:00:00:00:09",
                0x81
            ))),
            "neighbour state 0x81 is not a NUD_* state"
        );
        assert_eq!(
            refusal(NeighborPlan::try_from(&n("10.0.0", "02:00:00:00:00:09", 0))),
            "neighbour address \"10.0.0\" is not an IP address"
        );
        assert_eq!(
            refusal(NeighborPlan::try_from(&n("10.0.0.9", "02:00:00:00:00", 0))),
            "neighbour ll_addr \"02:00:00:00:00\" is not a MAC address (aa:bb:cc:dd:ee:ff)"
        );
    }
}
