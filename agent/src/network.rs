//! The pod's network configuration (UpdateInterface, UpdateRoutes, AddArpNeighbors, and `lo` at
//! boot): requests are validated into plans by pure functions, unit-tested without root, and
//! applied to the agent's own network namespace over rtnetlink by [`Netlink`].

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carapace_protocol::types::{ArpNeighbor, Interface, Route};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};

use crate::error::{AgentError, Result};

mod netlink;
pub use netlink::Netlink;

/// Longest interface name the kernel accepts (IFNAMSIZ less the terminating NUL).
const MAX_IFNAME: usize = 15;

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

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn invalid(msg: impl Into<String>) -> AgentError {
    AgentError::InvalidArgument(msg.into())
}

/// Parses an IPv4 or IPv6 address; `what` names the field in the error.
pub fn parse_ip(what: &str, s: &str) -> Result<IpAddr> {
    s.trim()
        .parse()
        .map_err(|_| invalid(format!("{what} {s:?} is not an IP address")))
}

/// Checks a prefix length against the address family.
pub fn cidr(addr: IpAddr, prefix: u32) -> Result<Cidr> {
    let max = max_prefix(addr);
    match u8::try_from(prefix) {
        Ok(p) if p <= max => Ok(Cidr { addr, prefix: p }),
        _ => Err(invalid(format!(
            "prefix length {prefix} of {addr} is out of range (0-{max})"
        ))),
    }
}

/// Parses `a.b.c.d/n` or `x::y/n`; a bare address is a host route (/32 or /128). The address
/// must have no bits set past the prefix, as the kernel requires of route destinations.
pub fn parse_cidr(what: &str, s: &str) -> Result<Cidr> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => {
            let p: u32 = p
                .parse()
                .map_err(|_| invalid(format!("{what} {s:?} has a malformed prefix length")))?;
            (parse_ip(what, a)?, Some(p))
        }
        None => (parse_ip(what, s)?, None),
    };
    let c = cidr(addr, prefix.unwrap_or(u32::from(max_prefix(addr))))?;
    if network_of(c) != c.addr {
        return Err(invalid(format!(
            "{what} {s:?} has host bits set (the network is {}/{})",
            network_of(c),
            c.prefix
        )));
    }
    Ok(c)
}

/// The address with every bit past the prefix cleared.
fn network_of(c: Cidr) -> IpAddr {
    match c.addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(c.prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(c.prefix))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// Parses an Ethernet MAC address, six hex octets separated by colons.
pub fn parse_mac(what: &str, s: &str) -> Result<[u8; 6]> {
    let bad = || {
        invalid(format!(
            "{what} {s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"
        ))
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

/// Formats a link-layer address as lower-case colon-separated hex.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks an interface name as the kernel would (dev_valid_name).
pub fn check_ifname(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > MAX_IFNAME
        || s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!(
            "{what} {s:?} is not a valid interface name (1-{MAX_IFNAME} bytes, no '/', ':' or spaces)"
        )));
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

/// A validated UpdateInterface request.
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

impl InterfacePlan {
    /// Validates an UpdateInterface request.
    pub fn from_request(i: &Interface) -> Result<Self> {
        let name = (!i.name.is_empty()).then(|| i.name.clone());
        if let Some(n) = &name {
            check_ifname("interface name", n)?;
        }
        let select = if !i.hw_addr.is_empty() {
            LinkSelector::Mac(parse_mac("hw_addr", &i.hw_addr)?)
        } else if let Some(n) = &name {
            LinkSelector::Name(n.clone())
        } else {
            return Err(invalid("the interface needs a hw_addr or a name"));
        };
        let mtu = match i.mtu {
            0 => None,
            m if m < 68 => {
                return Err(invalid(format!("MTU {m} is below the minimum of 68")));
            }
            m => Some(m),
        };
        let mut addresses: Vec<Cidr> = Vec::new();
        for a in &i.addresses {
            let c = cidr(parse_ip("address", &a.address)?, a.prefix_len)?;
            if addresses.iter().any(|x| x.addr == c.addr) {
                return Err(invalid(format!("address {} is given twice", c.addr)));
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

/// A validated route.
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

impl RoutePlan {
    fn from_request(r: &Route) -> Result<Self> {
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
        let scope = u8::try_from(r.scope)
            .map_err(|_| invalid(format!("route scope {} is out of range (0-255)", r.scope)))?;
        // The family comes from the first address given; every other must agree.
        let addrs = [dest.map(|d| d.addr), gateway, source];
        let ipv6 = addrs.iter().flatten().next().is_some_and(IpAddr::is_ipv6);
        if addrs.iter().flatten().any(|a| a.is_ipv6() != ipv6) {
            return Err(invalid(format!(
                "route to {:?} mixes IPv4 and IPv6 addresses",
                r.dest
            )));
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

/// Validates UpdateRoutes' routes and orders them so that routes without a gateway (which make
/// gateways reachable) are added before routes through a gateway.
pub fn plan_routes(routes: &[Route]) -> Result<Vec<RoutePlan>> {
    let mut plans = routes
        .iter()
        .map(RoutePlan::from_request)
        .collect::<Result<Vec<_>>>()?;
    plans.sort_by_key(|p| p.gateway.is_some());
    Ok(plans)
}

/// A validated ARP (or NDP) neighbour entry.
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

/// NUD_PERMANENT.
const NUD_PERMANENT: u16 = 0x80;

/// Validates AddArpNeighbors' entries.
pub fn plan_neighbors(neighbors: &[ArpNeighbor]) -> Result<Vec<NeighborPlan>> {
    neighbors
        .iter()
        .map(|n| {
            let ip = parse_ip("neighbour address", &n.ip_address)?;
            let mac = parse_mac("neighbour ll_addr", &n.ll_addr)?;
            check_ifname("neighbour device", &n.device)?;
            let state = match n.state {
                0 => NUD_PERMANENT,
                // One of the NUD_* bits, INCOMPLETE (0x01) to PERMANENT (0x80).
                s if s <= 0xff && s.is_power_of_two() => s as u16,
                s => {
                    return Err(invalid(format!(
                        "neighbour state {s:#x} is not a NUD_* state"
                    )))
                }
            };
            Ok(NeighborPlan {
                ip,
                mac,
                device: n.device.clone(),
                state,
            })
        })
        .collect()
}

/// What the agent needs to know of a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its link-layer address.
    pub mac: Vec<u8>,
    /// Its MTU.
    pub mtu: u32,
    /// Whether it is administratively up.
    pub up: bool,
}

impl From<&LinkMessage> for LinkInfo {
    fn from(m: &LinkMessage) -> Self {
        let mut l = LinkInfo {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            ..Default::default()
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) => l.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
                _ => {}
            }
        }
        l
    }
}

/// Finds the link a selector names.
pub fn find_link<'a>(links: &'a [LinkInfo], select: &LinkSelector) -> Result<&'a LinkInfo> {
    let found = match select {
        LinkSelector::Mac(mac) => links.iter().find(|l| l.mac == mac),
        LinkSelector::Name(name) => links.iter().find(|l| &l.name == name),
    };
    found.ok_or_else(|| {
        AgentError::NotFound(match select {
            LinkSelector::Mac(mac) => format!("interface with MAC {}", format_mac(mac)),
            LinkSelector::Name(name) => format!("interface {name:?}"),
        })
    })
}

/// The index of the link named `name`.
pub fn link_index(links: &[LinkInfo], name: &str) -> Result<u32> {
    find_link(links, &LinkSelector::Name(name.to_string())).map(|l| l.index)
}

/// IPv6 link-local addresses (fe80::/10) are the kernel's own; UpdateInterface leaves them.
fn is_ipv6_link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn address_of(m: &AddressMessage) -> Option<Cidr> {
    let mut addr = None;
    for a in &m.attributes {
        match a {
            // IFA_LOCAL is the interface's own address where it differs from IFA_ADDRESS.
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    addr.map(|addr| Cidr {
        addr,
        prefix: m.header.prefix_len,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The fields of a kernel route the agent reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteEntry {
    /// The routing table.
    pub table: u32,
    /// RTPROT_* of who installed it.
    pub protocol: u8,
    /// RTN_* type.
    pub kind: u8,
    /// The destination; `None` for the default route.
    pub dest: Option<Cidr>,
    /// The gateway.
    pub gateway: Option<IpAddr>,
    /// The output link's index.
    pub oif: Option<u32>,
    /// The preferred source.
    pub source: Option<IpAddr>,
    /// The scope.
    pub scope: u8,
}

impl From<&RouteMessage> for RouteEntry {
    fn from(m: &RouteMessage) -> Self {
        let h = &m.header;
        let mut e = RouteEntry {
            table: u32::from(h.table),
            protocol: h.protocol.into(),
            kind: h.kind.into(),
            scope: h.scope.into(),
            ..Default::default()
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Table(t) => e.table = *t,
                RouteAttribute::Destination(d) => {
                    e.dest = route_ip(d).map(|addr| Cidr {
                        addr,
                        prefix: h.destination_prefix_length,
                    })
                }
                RouteAttribute::Gateway(g) => e.gateway = route_ip(g),
                RouteAttribute::Oif(i) => e.oif = Some(*i),
                RouteAttribute::PrefSource(s) => e.source = route_ip(s),
                _ => {}
            }
        }
        e
    }
}

const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Whether UpdateRoutes replaces this route: a route of the main table on one of the request's
/// devices that the kernel did not install itself (those follow the addresses).
pub fn is_replaced(e: &RouteEntry, devices: &HashSet<u32>) -> bool {
    e.table == RT_TABLE_MAIN
        && e.protocol != u8::from(RouteProtocol::Kernel)
        && e.oif.is_some_and(|i| devices.contains(&i))
}

/// A kernel route as the protocol reports it.
pub fn to_proto_route(e: &RouteEntry, links: &[LinkInfo]) -> Route {
    Route {
        dest: e
            .dest
            .filter(|d| d.prefix != 0)
            .map_or_else(|| "default".to_string(), |d| d.to_string()),
        gateway: e.gateway.map(|g| g.to_string()).unwrap_or_default(),
        device: e
            .oif
            .and_then(|i| links.iter().find(|l| l.index == i))
            .map(|l| l.name.clone())
            .unwrap_or_default(),
        source: e.source.map(|s| s.to_string()).unwrap_or_default(),
        scope: u32::from(e.scope),
        ..Default::default()
    }
}

/// Maps a kernel refusal (a positive errno) to the agent's error, keeping the kernel's words.
pub fn errno_error(what: &str, errno: i32) -> AgentError {
    let desc = nix::errno::Errno::from_raw(errno).desc();
    let msg = format!("{what}: {desc}");
    match errno {
        libc::EEXIST => AgentError::AlreadyExists(format!("what {what} adds")),
        libc::ENODEV | libc::ENOENT | libc::ESRCH => {
            AgentError::NotFound(format!("what {what} needs ({desc})"))
        }
        libc::EPERM | libc::EACCES => AgentError::PermissionDenied(msg),
        libc::EINVAL | libc::ERANGE | libc::EAFNOSUPPORT => AgentError::InvalidArgument(msg),
        libc::ENETUNREACH | libc::ENETDOWN | libc::EADDRNOTAVAIL => {
            AgentError::FailedPrecondition(msg)
        }
        _ => AgentError::Internal(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carapace_protocol::types::IpAddress;
    use rtnetlink::packet_route::route::RouteType;
    use ttrpc::Code;

    fn code<T: fmt::Debug>(r: Result<T>) -> Code {
        r.expect_err("expected an error").code()
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

    fn route(dest: &str, gw: &str, dev: &str) -> Route {
        Route {
            dest: dest.into(),
            gateway: gw.into(),
            device: dev.into(),
            ..Default::default()
        }
    }

    #[test]
    fn macs_parse_and_format() {
        assert_eq!(
            parse_mac("m", "02:AB:cd:0:1:ff").unwrap(),
            [2, 0xab, 0xcd, 0, 1, 0xff]
        );
        assert_eq!(
            format_mac(&[2, 0xab, 0xcd, 0, 1, 0xff]),
            "02:ab:cd:00:01:ff"
        );
        for bad in [
            "",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:ff:00",
            "02:ab:cd:00:01:fg",
            "02:ab:cd:00:01:123",
            "02-ab-cd-00-01-ff",
            "02:ab:cd:00::ff",
        ] {
            assert_eq!(code(parse_mac("m", bad)), Code::INVALID_ARGUMENT, "{bad}");
        }
    }

    #[test]
    fn cidrs_check_prefix_and_host_bits() {
        let c = parse_cidr("d", "10.1.0.0/16").unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert_eq!(parse_cidr("d", "10.1.2.3").unwrap().prefix, 32);
        assert_eq!(parse_cidr("d", "fd00::/8").unwrap().prefix, 8);
        assert_eq!(parse_cidr("d", "0.0.0.0/0").unwrap().prefix, 0);
        assert_eq!(parse_cidr("d", "fd00::1").unwrap().prefix, 128);
        for bad in [
            "10.1.0.0/33",
            "fd00::/129",
            "10.1.2.3/24",
            "10.1.0.0/",
            "10.1.0.0/x",
            "10.1.0/24",
            "nope",
            "/24",
        ] {
            assert_eq!(code(parse_cidr("d", bad)), Code::INVALID_ARGUMENT, "{bad}");
        }
        assert_eq!(
            code(cidr("10.0.0.1".parse().unwrap(), 33)),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            code(cidr("10.0.0.1".parse().unwrap(), u32::MAX)),
            Code::INVALID_ARGUMENT
        );
        assert!(cidr("fd00::1".parse().unwrap(), 128).is_ok());
    }

    #[test]
    fn interface_names_follow_the_kernel() {
        assert!(check_ifname("n", "eth0").is_ok());
        assert!(check_ifname("n", "abcdefghijklmno").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "abcdefghijklmnop"] {
            assert_eq!(
                code(check_ifname("n", bad)),
                Code::INVALID_ARGUMENT,
                "{bad}"
            );
        }
    }

    #[test]
    fn interface_requests_validate() {
        let p = InterfacePlan::from_request(&iface(
            "eth1",
            "02:00:00:00:00:01",
            1400,
            &[("10.0.0.2", 24), ("fd00::2", 64)],
        ))
        .unwrap();
        assert_eq!(p.select, LinkSelector::Mac([2, 0, 0, 0, 0, 1]));
        assert_eq!(p.name.as_deref(), Some("eth1"));
        assert_eq!(p.mtu, Some(1400));
        assert_eq!(p.addresses.len(), 2);
        let p = InterfacePlan::from_request(&iface("eth0", "", 0, &[])).unwrap();
        assert_eq!(p.select, LinkSelector::Name("eth0".into()));
        assert_eq!(p.mtu, None);
        let bad = [
            iface("", "", 0, &[]),
            iface("eth0", "zz", 0, &[]),
            iface("eth0/", "", 0, &[]),
            iface("eth0", "", 10, &[]),
            iface("eth0", "", 0, &[("10.0.0.300", 24)]),
            iface("eth0", "", 0, &[("10.0.0.2", 33)]),
            iface("eth0", "", 0, &[("fd00::2", 129)]),
            iface("eth0", "", 0, &[("10.0.0.2", 24), ("10.0.0.2", 16)]),
        ];
        for i in bad {
            assert_eq!(
                code(InterfacePlan::from_request(&i)),
                Code::INVALID_ARGUMENT,
                "{i:?}"
            );
        }
    }

    #[test]
    fn routes_validate_and_order_gateways_last() {
        let plans = plan_routes(&[
            route("default", "10.0.0.1", "eth0"),
            route("10.0.0.0/24", "", "eth0"),
            route("", "fd00::1", "eth0"),
        ])
        .unwrap();
        assert_eq!(plans[0].dest.unwrap().to_string(), "10.0.0.0/24");
        assert_eq!(plans[1].dest, None);
        assert!(!plans[1].ipv6);
        assert!(plans[2].ipv6);
        let bad = [
            route("10.0.0.0/33", "", "eth0"),
            route("10.0.0.1/24", "", "eth0"),
            route("default", "10.0.0.x", "eth0"),
            route("default", "10.0.0.1", ""),
            route("default", "fd00::1", "eth0").tap(|r| r.source = "10.0.0.2".into()),
            route("fd00::/64", "10.0.0.1", "eth0"),
            route("default", "10.0.0.1", "eth0").tap(|r| r.scope = 256),
        ];
        for r in bad {
            assert_eq!(
                code(plan_routes(std::slice::from_ref(&r))),
                Code::INVALID_ARGUMENT,
                "{r:?}"
            );
        }
    }

    trait Tap: Sized {
        fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
            f(&mut self);
            self
        }
    }
    impl Tap for Route {}

    #[test]
    fn neighbors_validate() {
        let n = |ip: &str, mac: &str, dev: &str, state: u32| ArpNeighbor {
            ip_address: ip.into(),
            ll_addr: mac.into(),
            device: dev.into(),
            state,
            ..Default::default()
        };
        let p = plan_neighbors(&[n("10.0.0.9", "02:00:00:00:00:09", "eth0", 0)]).unwrap();
        assert_eq!(p[0].state, NUD_PERMANENT);
        assert_eq!(p[0].mac, [2, 0, 0, 0, 0, 9]);
        let p = plan_neighbors(&[n("fd00::9", "02:00:00:00:00:09", "eth0", 0x04)]).unwrap();
        assert_eq!(p[0].state, 0x04);
        for bad in [
            n("10.0.0", "02:00:00:00:00:09", "eth0", 0),
            n("10.0.0.9", "02:00:00:00:00", "eth0", 0),
            n("10.0.0.9", "02:00:00:00:00:09", "", 0),
            n("10.0.0.9", "02:00:00:00:00:09", "eth0", 0x81),
            n("10.0.0.9", "02:00:00:00:00:09", "eth0", 0x100),
        ] {
            assert_eq!(code(plan_neighbors(&[bad])), Code::INVALID_ARGUMENT);
        }
    }

    #[test]
    fn links_are_found_by_mac_or_name() {
        let links = vec![
            LinkInfo {
                index: 1,
                name: "lo".into(),
                mac: vec![0; 6],
                mtu: 65536,
                up: true,
            },
            LinkInfo {
                index: 7,
                name: "eth0".into(),
                mac: vec![2, 0, 0, 0, 0, 1],
                mtu: 1500,
                up: false,
            },
        ];
        let by_mac = LinkSelector::Mac([2, 0, 0, 0, 0, 1]);
        assert_eq!(find_link(&links, &by_mac).unwrap().index, 7);
        assert_eq!(link_index(&links, "lo").unwrap(), 1);
        assert_eq!(
            code(find_link(&links, &LinkSelector::Mac([2, 0, 0, 0, 0, 2]))),
            Code::NOT_FOUND
        );
        assert_eq!(code(link_index(&links, "eth9")), Code::NOT_FOUND);
    }

    #[test]
    fn only_non_kernel_main_routes_of_the_devices_are_replaced() {
        let devices: HashSet<u32> = [7].into();
        let base = RouteEntry {
            table: RT_TABLE_MAIN,
            protocol: u8::from(RouteProtocol::Static),
            kind: u8::from(RouteType::Unicast),
            oif: Some(7),
            ..Default::default()
        };
        assert!(is_replaced(&base, &devices));
        let kernel = RouteEntry {
            protocol: u8::from(RouteProtocol::Kernel),
            ..base.clone()
        };
        assert!(!is_replaced(&kernel, &devices));
        let other_dev = RouteEntry {
            oif: Some(8),
            ..base.clone()
        };
        assert!(!is_replaced(&other_dev, &devices));
        let local_table = RouteEntry {
            table: 255,
            ..base.clone()
        };
        assert!(!is_replaced(&local_table, &devices));
    }

    #[test]
    fn kernel_routes_convert_to_the_protocol() {
        let links = vec![LinkInfo {
            index: 7,
            name: "eth0".into(),
            ..Default::default()
        }];
        let e = RouteEntry {
            dest: Some(Cidr {
                addr: "10.1.0.0".parse().unwrap(),
                prefix: 24,
            }),
            gateway: Some("10.0.0.1".parse().unwrap()),
            oif: Some(7),
            scope: 0,
            ..Default::default()
        };
        let r = to_proto_route(&e, &links);
        assert_eq!(
            (r.dest.as_str(), r.gateway.as_str(), r.device.as_str()),
            ("10.1.0.0/24", "10.0.0.1", "eth0")
        );
        let d = to_proto_route(&RouteEntry::default(), &links);
        assert_eq!((d.dest.as_str(), d.device.as_str()), ("default", ""));
    }

    #[test]
    fn kernel_refusals_map_to_codes() {
        assert_eq!(errno_error("x", libc::EEXIST).code(), Code::ALREADY_EXISTS);
        assert_eq!(
            errno_error("x", libc::EPERM).code(),
            Code::PERMISSION_DENIED
        );
        assert_eq!(errno_error("x", libc::ENODEV).code(), Code::NOT_FOUND);
        assert_eq!(
            errno_error("x", libc::EINVAL).code(),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            errno_error("x", libc::ENETUNREACH).code(),
            Code::FAILED_PRECONDITION
        );
        let e = errno_error("adding", libc::EBUSY);
        assert_eq!(e.code(), Code::INTERNAL);
        assert_eq!(e.to_string(), "adding: Device or resource busy");
        let e = errno_error("adding the route", libc::EEXIST);
        assert_eq!(e.to_string(), "what adding the route adds already exists");
    }
}
