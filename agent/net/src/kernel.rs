//! The kernel's network objects as the shim and the agent read them from rtnetlink: [`Link`],
//! [`RouteEntry`] and [`Neighbour`] decoded from their messages, an address from an
//! `RTM_NEWADDR` message ([`address_of`]), and the rtnetlink constants both sides test them
//! against.

use std::net::IpAddr;

use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};

use crate::addr::Cidr;

/// Routing table `main`.
pub const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;
/// `RTPROT_KERNEL`: a route the kernel made itself for an address.
pub const RTPROT_KERNEL: u8 = 2;
/// `RTN_UNICAST`: a route to a gateway or a directly attached network.
pub const RTN_UNICAST: u8 = 1;
/// `NUD_PERMANENT`: a static neighbour entry.
pub const NUD_PERMANENT: u16 = 0x80;

/// A link (network interface).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its link-layer address (six bytes for Ethernet; none or other lengths for the rest).
    pub mac: Vec<u8>,
    /// Its MTU.
    pub mtu: u32,
    /// Whether it is administratively up (IFF_UP).
    pub up: bool,
    /// Whether it is a loopback (IFF_LOOPBACK).
    pub loopback: bool,
}

impl From<&LinkMessage> for Link {
    fn from(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            loopback: m.header.flags.contains(LinkFlags::Loopback),
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

/// The address of an `RTM_NEWADDR` message with its prefix length; `None` if it has none.
pub fn address_of(m: &AddressMessage) -> Option<Cidr> {
    let mut addr = None;
    for a in &m.attributes {
        match a {
            // IFA_LOCAL is the interface's own address where it differs from IFA_ADDRESS (the
            // peer's, on a point-to-point link).
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

/// A route (IPv4 or IPv6).
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
    /// RT_SCOPE_*.
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
                // RTA_TABLE, where present, holds tables past 255 too.
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

/// A neighbour (ARP or NDP) entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Neighbour {
    /// The index of the link it is on.
    pub index: u32,
    /// Its IP address.
    pub ip: Option<IpAddr>,
    /// Its link-layer address.
    pub mac: Vec<u8>,
    /// NUD_* state.
    pub state: u16,
}

impl From<&NeighbourMessage> for Neighbour {
    fn from(m: &NeighbourMessage) -> Self {
        let mut n = Neighbour {
            index: m.header.ifindex,
            state: u16::from(m.header.state),
            ..Default::default()
        };
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    n.ip = Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    n.ip = Some(IpAddr::V6(*v6))
                }
                NeighbourAttribute::LinkLayerAddress(mac) => n.mac = mac.clone(),
                _ => {}
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rtnetlink::packet_route::neighbour::NeighbourState;
    use rtnetlink::packet_route::route::{RouteProtocol, RouteScope, RouteType};
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::{LinkUnspec, RouteMessageBuilder};

    use super::*;

    #[test]
    fn the_constants_are_rtnetlinks() {
        assert_eq!(RT_TABLE_MAIN, 254);
        assert_eq!(RTPROT_KERNEL, u8::from(RouteProtocol::Kernel));
        assert_eq!(RTN_UNICAST, u8::from(RouteType::Unicast));
        assert_eq!(NUD_PERMANENT, u16::from(NeighbourState::Permanent));
    }

    #[test]
    fn links_decode_name_mac_mtu_and_flags() {
        let mut m = LinkUnspec::new_with_index(7)
            .name("eth0")
            .mtu(1400)
            .address(vec![2, 0, 0, 0, 0, 1])
            .up()
            .build();
        let l = Link::from(&m);
        assert_eq!(
            l,
            Link {
                index: 7,
                name: "eth0".into(),
                mac: vec![2, 0, 0, 0, 0, 1],
                mtu: 1400,
                up: true,
                loopback: false,
            }
        );
        m.header.flags = LinkFlags::Loopback;
        let lo = Link::from(&m);
        assert!(lo.loopback && !lo.up);
    }

    #[test]
    fn addresses_prefer_the_local_one() {
        let mut m = AddressMessage::default();
        m.header.prefix_len = 24;
        assert_eq!(address_of(&m), None);
        let peer: IpAddr = Ipv4Addr::new(10, 0, 0, 1).into();
        let own: IpAddr = Ipv4Addr::new(10, 0, 0, 2).into();
        m.attributes.push(AddressAttribute::Address(peer));
        assert_eq!(address_of(&m).unwrap().to_string(), "10.0.0.1/24");
        m.attributes.push(AddressAttribute::Local(own));
        assert_eq!(address_of(&m).unwrap().to_string(), "10.0.0.2/24");
        // Whichever order the attributes come in.
        m.attributes.reverse();
        assert_eq!(address_of(&m).unwrap().to_string(), "10.0.0.2/24");
    }

    #[test]
    fn routes_decode_from_the_builders_messages() {
        let m = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(10, 1, 0, 0), 16)
            .gateway(Ipv4Addr::new(10, 0, 0, 1))
            .pref_source(Ipv4Addr::new(10, 0, 0, 2))
            .output_interface(7)
            .scope(RouteScope::Link)
            .build();
        let e = RouteEntry::from(&m);
        assert_eq!(e.dest.unwrap().to_string(), "10.1.0.0/16");
        assert_eq!(e.gateway, Some(Ipv4Addr::new(10, 0, 0, 1).into()));
        assert_eq!(e.source, Some(Ipv4Addr::new(10, 0, 0, 2).into()));
        assert_eq!((e.oif, e.scope), (Some(7), 253));
        assert_eq!((e.table, e.kind), (RT_TABLE_MAIN, RTN_UNICAST));
        let d = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway("fd00::1".parse().unwrap())
            .build();
        let e = RouteEntry::from(&d);
        assert_eq!(d.header.address_family, AddressFamily::Inet6);
        assert_eq!(e.dest, None);
        assert_eq!(e.gateway, Some("fd00::1".parse().unwrap()));
        // A table past 255 is in RTA_TABLE only.
        let mut big = d.clone();
        big.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(RouteEntry::from(&big).table, 1000);
    }

    #[test]
    fn neighbours_decode_ip_mac_and_state() {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = 3;
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(
                "fd00::9".parse().unwrap(),
            )));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 9]));
        assert_eq!(
            Neighbour::from(&m),
            Neighbour {
                index: 3,
                ip: Some("fd00::9".parse().unwrap()),
                mac: vec![2, 0, 0, 0, 0, 9],
                state: NUD_PERMANENT,
            }
        );
    }
}
