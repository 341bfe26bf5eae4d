//! The pod's network configuration (UpdateInterface, UpdateRoutes, AddArpNeighbors, and `lo` at
//! boot): requests are checked into plans by `carapace_net`'s conversions (the inverse of the
//! ones the shim builds them with), then [`Network`] applies them in the agent's own network
//! namespace through [`Netns`], the kernel side: over rtnetlink in the agent ([`Netlink`]), a
//! fake in the unit tests of this logic. Links, addresses and routes are `carapace_net`'s types.

use std::collections::HashSet;

use async_trait::async_trait;
use carapace_net::{
    is_ipv6_link_local, Cidr, KernelError, Link, LinkWithAddresses, RouteEntry, RouteOnLink,
    RTN_UNICAST, RTPROT_KERNEL, RT_TABLE_MAIN,
};
pub use carapace_net::{InterfacePlan, LinkSelector, NeighborPlan, RoutePlan};
use carapace_protocol::types::{ArpNeighbor, Interface, Route};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::route::RouteMessage;

use crate::error::{AgentError, Result};

mod netlink;
use netlink::route_message;
pub use netlink::Rtnetlink;

/// Checks an UpdateInterface request.
pub fn plan_interface(i: &Interface) -> Result<InterfacePlan> {
    Ok(InterfacePlan::try_from(i)?)
}

/// Checks UpdateRoutes' routes and orders them so that routes without a gateway (which make
/// gateways reachable) are added before routes through a gateway.
pub fn plan_routes(routes: &[Route]) -> Result<Vec<RoutePlan>> {
    let mut plans = routes
        .iter()
        .map(RoutePlan::try_from)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    plans.sort_by_key(|p| p.gateway.is_some());
    Ok(plans)
}

/// Checks AddArpNeighbors' entries.
pub fn plan_neighbors(neighbors: &[ArpNeighbor]) -> Result<Vec<NeighborPlan>> {
    Ok(neighbors
        .iter()
        .map(NeighborPlan::try_from)
        .collect::<std::result::Result<Vec<_>, _>>()?)
}

/// Something the kernel listed, decoded, with the message it came in: deleting it sends that
/// message back as it was, so the kernel removes exactly the entry it listed.
#[derive(Debug, Clone)]
pub struct Listed<T, M> {
    /// What the logic reads of it.
    pub value: T,
    /// The kernel's message (a fake leaves it empty).
    pub message: M,
}

/// An address of a link, as listed.
pub type ListedAddress = Listed<Option<Cidr>, AddressMessage>;
/// A route, as listed.
pub type ListedRoute = Listed<RouteEntry, RouteMessage>;

/// What the kernel side answers: its failures are the kernel's own; the logic says what was
/// being done, and which refusals are no failure.
pub type KernelResult<T> = std::result::Result<T, KernelError>;

/// The kernel side: the agent's own network namespace, as the configuration RPCs need it.
#[async_trait]
pub trait Netns: Send + Sync {
    /// Every link.
    async fn links(&self) -> KernelResult<Vec<Link>>;
    /// Sets a link administratively up or down.
    async fn set_up(&self, index: u32, up: bool) -> KernelResult<()>;
    /// Renames a link and sets its MTU (either may be `None`), in one request.
    async fn configure(&self, index: u32, name: Option<&str>, mtu: Option<u32>)
        -> KernelResult<()>;
    /// The addresses of one link.
    async fn addresses(&self, index: u32) -> KernelResult<Vec<ListedAddress>>;
    /// Adds an address to a link.
    async fn add_address(&self, index: u32, address: Cidr) -> KernelResult<()>;
    /// Removes a listed address.
    async fn delete_address(&self, address: ListedAddress) -> KernelResult<()>;
    /// Every route (IPv4 and IPv6, every table).
    async fn routes(&self) -> KernelResult<Vec<ListedRoute>>;
    /// Adds the route of an RTM_NEWROUTE message.
    async fn add_route(&self, route: RouteMessage) -> KernelResult<()>;
    /// Removes a listed route.
    async fn delete_route(&self, route: ListedRoute) -> KernelResult<()>;
    /// Adds a neighbour entry on a link, replacing one for the same address.
    async fn add_neighbour(&self, index: u32, neighbour: &NeighborPlan) -> KernelResult<()>;
}

/// Finds the link a selector names.
pub fn find_link<'a>(links: &'a [Link], select: &LinkSelector) -> Result<&'a Link> {
    let found = match select {
        LinkSelector::Mac(mac) => links.iter().find(|l| l.mac == mac),
        LinkSelector::Name(name) => links.iter().find(|l| &l.name == name),
    };
    found.ok_or_else(|| {
        AgentError::NotFound(match select {
            LinkSelector::Mac(mac) => {
                format!("interface with MAC {}", carapace_net::format_mac(mac))
            }
            LinkSelector::Name(name) => format!("interface {name:?}"),
        })
    })
}

/// The index of the link named `name`.
pub fn link_index(links: &[Link], name: &str) -> Result<u32> {
    find_link(links, &LinkSelector::Name(name.to_string())).map(|l| l.index)
}

/// Whether UpdateRoutes replaces this route: a route of the main table on one of the request's
/// devices that the kernel did not install itself (those follow the addresses).
pub fn is_replaced(e: &RouteEntry, devices: &HashSet<u32>) -> bool {
    e.table == RT_TABLE_MAIN
        && e.protocol != RTPROT_KERNEL
        && e.oif.is_some_and(|i| devices.contains(&i))
}

/// A kernel route as the protocol reports it (its device named if it is one of `links`).
pub fn to_proto_route(e: &RouteEntry, links: &[Link]) -> Route {
    let device = e
        .oif
        .and_then(|i| links.iter().find(|l| l.index == i))
        .map_or("", |l| l.name.as_str());
    Route::from(RouteOnLink { route: e, device })
}

/// The agent's network configuration over a kernel side. Requests are serialized so that two
/// configuration RPCs never interleave their steps.
pub struct Network<N> {
    ns: N,
    lock: tokio::sync::Mutex<()>,
}

/// The agent's network configuration over rtnetlink.
pub type Netlink = Network<Rtnetlink>;

impl Netlink {
    /// Opens the rtnetlink socket and spawns its connection task on the current runtime.
    pub fn connect() -> Result<Self> {
        Ok(Network::new(Rtnetlink::connect()?))
    }
}

impl<N: Netns> Network<N> {
    /// Configuration through `ns`.
    pub fn new(ns: N) -> Self {
        Self {
            ns,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn links(&self) -> Result<Vec<Link>> {
        self.ns
            .links()
            .await
            .map_err(|e| AgentError::kernel("listing links", e))
    }

    async fn addresses(&self, index: u32) -> Result<Vec<ListedAddress>> {
        self.ns
            .addresses(index)
            .await
            .map_err(|e| AgentError::kernel("listing addresses", e))
    }

    async fn routes(&self) -> Result<Vec<ListedRoute>> {
        self.ns
            .routes()
            .await
            .map_err(|e| AgentError::kernel("listing routes", e))
    }

    async fn set_up(&self, what: &str, index: u32, up: bool) -> Result<()> {
        self.ns
            .set_up(index, up)
            .await
            .map_err(|e| AgentError::kernel(what, e))
    }

    /// Brings the named link up (used for `lo` at boot).
    pub async fn link_up(&self, name: &str) -> Result<()> {
        let _serial = self.lock.lock().await;
        let index = link_index(&self.links().await?, name)?;
        self.set_up(&format!("bringing {name} up"), index, true)
            .await
    }

    /// Applies an UpdateInterface plan and reports the link as it now is.
    pub async fn update_interface(&self, plan: &InterfacePlan) -> Result<Interface> {
        let _serial = self.lock.lock().await;
        let links = self.links().await?;
        let link = find_link(&links, &plan.select)?.clone();
        let rename = plan.name.as_deref().filter(|n| *n != link.name);
        if let Some(n) = rename {
            if links.iter().any(|l| l.name == n) {
                return Err(AgentError::AlreadyExists(format!("interface {n:?}")));
            }
            // The kernel renames only links that are down.
            self.set_up(&format!("setting {} down", link.name), link.index, false)
                .await?;
        }
        if rename.is_some() || plan.mtu.is_some() {
            let configured = self.ns.configure(link.index, rename, plan.mtu).await;
            if let Err(e) = configured {
                // A refused MTU or name leaves the link as it was, up if it was up.
                if rename.is_some() && link.up {
                    let _ = self
                        .set_up("bringing the link back up", link.index, true)
                        .await;
                }
                return Err(AgentError::kernel(&format!("configuring {}", link.name), e));
            }
        }
        for a in self.addresses(link.index).await? {
            let keep = a
                .value
                .is_some_and(|c| is_ipv6_link_local(c.addr) || plan.addresses.contains(&c));
            if !keep {
                let what = format!("removing {:?} from {}", a.value, link.name);
                match self.ns.delete_address(a).await {
                    Ok(()) => {}
                    // Removing an IPv4 primary also removes its secondaries.
                    Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => {}
                    Err(e) => return Err(AgentError::kernel(&what, e)),
                }
            }
        }
        let present: Vec<Cidr> = self
            .addresses(link.index)
            .await?
            .into_iter()
            .filter_map(|a| a.value)
            .collect();
        for c in plan.addresses.iter().filter(|c| !present.contains(c)) {
            self.ns
                .add_address(link.index, *c)
                .await
                .map_err(|e| AgentError::kernel(&format!("adding {c} to {}", link.name), e))?;
        }
        self.set_up(&format!("bringing {} up", link.name), link.index, true)
            .await?;
        self.interface(link.index).await
    }

    async fn interface(&self, index: u32) -> Result<Interface> {
        let links = self.links().await?;
        let link = links
            .iter()
            .find(|l| l.index == index)
            .ok_or_else(|| AgentError::NotFound(format!("interface {index}")))?;
        let addresses: Vec<Cidr> = self
            .addresses(index)
            .await?
            .into_iter()
            .filter_map(|a| a.value)
            .collect();
        Ok(Interface::from(LinkWithAddresses {
            link,
            addresses: &addresses,
        }))
    }

    /// Replaces the routes of the plans' devices and reports the main table.
    pub async fn update_routes(&self, plans: &[RoutePlan]) -> Result<Vec<Route>> {
        let _serial = self.lock.lock().await;
        let links = self.links().await?;
        let indexes = plans
            .iter()
            .map(|p| link_index(&links, &p.device))
            .collect::<Result<Vec<u32>>>()?;
        let devices: HashSet<u32> = indexes.iter().copied().collect();
        for r in self.routes().await? {
            if is_replaced(&r.value, &devices) {
                match self.ns.delete_route(r).await {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(AgentError::kernel("removing a route", e)),
                }
            }
        }
        for (p, index) in plans.iter().zip(indexes) {
            let what = format!(
                "adding the route to {} on {}",
                p.dest.map_or_else(|| "default".into(), |d| d.to_string()),
                p.device
            );
            let msg = route_message(p, index)?;
            self.ns
                .add_route(msg)
                .await
                .map_err(|e| AgentError::kernel(&what, e))?;
        }
        let links = self.links().await?;
        Ok(self
            .routes()
            .await?
            .iter()
            .map(|r| &r.value)
            .filter(|e| e.table == RT_TABLE_MAIN && e.kind == RTN_UNICAST)
            .map(|e| to_proto_route(e, &links))
            .collect())
    }

    /// Adds (or replaces) neighbour entries.
    pub async fn add_neighbors(&self, plans: &[NeighborPlan]) -> Result<()> {
        let _serial = self.lock.lock().await;
        let links = self.links().await?;
        let indexes = plans
            .iter()
            .map(|p| link_index(&links, &p.device))
            .collect::<Result<Vec<u32>>>()?;
        for (p, index) in plans.iter().zip(indexes) {
            self.ns.add_neighbour(index, p).await.map_err(|e| {
                AgentError::kernel(&format!("adding neighbour {} on {}", p.ip, p.device), e)
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
