//! The typed model to the protocol's strings: a link with its addresses becomes an
//! `Interface`, a route on a named link a `Route`, a neighbour on a named link an `ArpNeighbor`.
//! The shim builds its requests to the agent this way, and the agent its answers.

use std::net::IpAddr;

use carapace_protocol::types::{ArpNeighbor, Interface, IpAddress, Route};

use crate::addr::{format_mac, is_ipv6_link_local, Cidr};
use crate::kernel::{Link, RouteEntry};

/// A link with its addresses, as UpdateInterface carries it.
#[derive(Debug, Clone, Copy)]
pub struct LinkWithAddresses<'a> {
    /// The link: its name, MAC and MTU.
    pub link: &'a Link,
    /// Its addresses (IPv6 link-local ones are left out: each kernel makes its own).
    pub addresses: &'a [Cidr],
}

impl From<LinkWithAddresses<'_>> for Interface {
    fn from(l: LinkWithAddresses<'_>) -> Self {
        Interface {
            name: l.link.name.clone(),
            hw_addr: format_mac(&l.link.mac),
            mtu: l.link.mtu,
            addresses: l
                .addresses
                .iter()
                .filter(|c| !is_ipv6_link_local(c.addr))
                .map(|c| IpAddress {
                    address: c.addr.to_string(),
                    prefix_len: u32::from(c.prefix),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// A route with the name of its output link.
#[derive(Debug, Clone, Copy)]
pub struct RouteOnLink<'a> {
    /// The route.
    pub route: &'a RouteEntry,
    /// The name of the link it goes out of (empty if unknown).
    pub device: &'a str,
}

impl From<RouteOnLink<'_>> for Route {
    fn from(r: RouteOnLink<'_>) -> Self {
        let e = r.route;
        Route {
            // A /0 destination is the default route too.
            dest: e
                .dest
                .filter(|d| d.prefix != 0)
                .map_or_else(|| "default".to_string(), |d| d.to_string()),
            gateway: e.gateway.map(|g| g.to_string()).unwrap_or_default(),
            device: r.device.to_string(),
            source: e.source.map(|s| s.to_string()).unwrap_or_default(),
            scope: u32::from(e.scope),
            ..Default::default()
        }
    }
}

/// A static neighbour entry on a named link.
#[derive(Debug, Clone, Copy)]
pub struct NeighbourOnLink<'a> {
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its link-layer address.
    pub mac: &'a [u8],
    /// The name of the link it is reached through.
    pub device: &'a str,
}

impl From<NeighbourOnLink<'_>> for ArpNeighbor {
    fn from(n: NeighbourOnLink<'_>) -> Self {
        ArpNeighbor {
            ip_address: n.ip.to_string(),
            device: n.device.to_string(),
            ll_addr: format_mac(n.mac),
            // 0 is NUD_PERMANENT to the agent.
            state: 0,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::from_proto::{InterfacePlan, LinkSelector, NeighborPlan, RoutePlan};

    fn cidr(s: &str) -> Cidr {
        let (a, p) = s.split_once('/').unwrap();
        Cidr {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    fn eth0() -> Link {
        Link {
            index: 2,
            name: "eth0".into(),
            mac: vec![0x02, 0x42, 0x0a, 0x58, 0, 2],
            mtu: 1450,
            ..Default::default()
        }
    }

    #[test]
    fn an_interface_carries_name_mac_mtu_and_addresses_but_link_local() {
        let link = eth0();
        let addresses = [cidr("10.88.0.2/16"), cidr("fe80::1/64"), cidr("fd00::2/64")];
        let i = Interface::from(LinkWithAddresses {
            link: &link,
            addresses: &addresses,
        });
        assert_eq!(
            (i.name.as_str(), i.hw_addr.as_str(), i.mtu),
            ("eth0", "02:42:0a:58:00:02", 1450)
        );
        let got: Vec<_> = i
            .addresses
            .iter()
            .map(|a| (a.address.as_str(), a.prefix_len))
            .collect();
        assert_eq!(got, [("10.88.0.2", 16), ("fd00::2", 64)]);
        // What the shim sends, the agent takes: found by MAC, named, same MTU and addresses.
        let plan = InterfacePlan::try_from(&i).unwrap();
        assert_eq!(
            plan.select,
            LinkSelector::Mac([0x02, 0x42, 0x0a, 0x58, 0, 2])
        );
        assert_eq!(plan.name.as_deref(), Some("eth0"));
        assert_eq!(plan.mtu, Some(1450));
        assert_eq!(plan.addresses, [addresses[0], addresses[2]]);
    }

    #[test]
    fn a_route_carries_its_fields_and_the_default_is_named() {
        let e = RouteEntry {
            dest: Some(cidr("10.1.0.0/24")),
            gateway: Some("10.0.0.1".parse().unwrap()),
            source: Some("10.0.0.2".parse().unwrap()),
            oif: Some(2),
            scope: 253,
            ..Default::default()
        };
        let r = Route::from(RouteOnLink {
            route: &e,
            device: "eth0",
        });
        assert_eq!(
            (
                r.dest.as_str(),
                r.gateway.as_str(),
                r.device.as_str(),
                r.source.as_str(),
                r.scope
            ),
            ("10.1.0.0/24", "10.0.0.1", "eth0", "10.0.0.2", 253)
        );
        let back = RoutePlan::try_from(&r).unwrap();
        assert_eq!(
            (back.dest, back.gateway, back.source, back.scope),
            (e.dest, e.gateway, e.source, e.scope)
        );
        for dest in [None, Some(cidr("0.0.0.0/0")), Some(cidr("::/0"))] {
            let d = RouteEntry {
                dest,
                ..Default::default()
            };
            let r = Route::from(RouteOnLink {
                route: &d,
                device: "",
            });
            assert_eq!(
                (r.dest.as_str(), r.gateway.as_str(), r.source.as_str()),
                ("default", "", "")
            );
        }
    }

    #[test]
    fn a_neighbour_is_sent_as_permanent() {
        let n = ArpNeighbor::from(NeighbourOnLink {
            ip: "10.88.0.1".parse().unwrap(),
            mac: &[2, 0, 0, 0, 0, 1],
            device: "eth0",
        });
        assert_eq!(
            (
                n.ip_address.as_str(),
                n.ll_addr.as_str(),
                n.device.as_str(),
                n.state
            ),
            ("10.88.0.1", "02:00:00:00:00:01", "eth0", 0)
        );
        let back = NeighborPlan::try_from(&n).unwrap();
        assert_eq!(back.state, crate::kernel::NUD_PERMANENT);
        assert_eq!(back.mac, [2, 0, 0, 0, 0, 1]);
    }
}
