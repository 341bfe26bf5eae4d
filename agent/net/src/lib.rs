//! carapace-net: the one network model of the shim and the agent. It owns the kernel's network
//! objects as both read them from rtnetlink ([`kernel`], listed by [`dump`]), addresses with
//! their prefixes and MACs ([`addr`]), and the conversions between that model and the protocol's
//! string-typed `Interface`, `Route` and `ArpNeighbor`: to the protocol as the shim sends them
//! and the agent reports them ([`to_proto`]), and from it, checked, as the agent takes them
//! ([`from_proto`]), so that what one side writes is what the other side reads.

pub mod addr;
pub mod dump;
pub mod error;
pub mod from_proto;
pub mod kernel;
pub mod to_proto;

pub use addr::{
    cidr, format_mac, is_ipv6_link_local, max_prefix, parse_cidr, parse_ip, parse_mac, Cidr,
};
pub use error::{errno_of, KernelError, RequestError};
pub use from_proto::{
    check_ifname, InterfacePlan, LinkSelector, NeighborPlan, RoutePlan, MAX_IFNAME,
};
pub use kernel::{
    address_of, Link, Neighbour, RouteEntry, NUD_PERMANENT, RTN_UNICAST, RTPROT_KERNEL,
    RT_TABLE_MAIN,
};
pub use to_proto::{LinkWithAddresses, NeighbourOnLink, RouteOnLink};
