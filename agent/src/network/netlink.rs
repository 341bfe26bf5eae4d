//! [`Netlink`]: applies the validated plans of the parent module to the agent's own network
//! namespace over rtnetlink.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carapace_protocol::types::{Interface, IpAddress, Route};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::{
    address_of, errno_error, find_link, format_mac, invalid, is_ipv6_link_local, is_replaced,
    link_index, to_proto_route, Cidr, InterfacePlan, LinkInfo, NeighborPlan, RouteEntry, RoutePlan,
    RT_TABLE_MAIN,
};
use crate::error::{AgentError, Result};

fn nl_error(what: &str, e: rtnetlink::Error) -> AgentError {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => {
            errno_error(what, m.raw_code().saturating_abs())
        }
        e => AgentError::Internal(format!("{what}: {e}")),
    }
}

/// The agent's rtnetlink connection to its own network namespace. Requests are serialized so
/// that two configuration RPCs never interleave their steps.
pub struct Netlink {
    handle: rtnetlink::Handle,
    lock: tokio::sync::Mutex<()>,
}

impl Netlink {
    /// Opens the rtnetlink socket and spawns its connection task on the current runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| AgentError::io("opening rtnetlink", e))?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    async fn links(&self) -> Result<Vec<LinkInfo>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error("listing links", e))?;
        Ok(msgs.iter().map(LinkInfo::from).collect())
    }

    async fn set_link(&self, what: &str, msg: LinkMessage) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_error(what, e))
    }

    async fn addresses(&self, index: u32) -> Result<Vec<AddressMessage>> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error("listing addresses", e))
    }

    async fn routes(&self) -> Result<Vec<RouteMessage>> {
        let mut all = Vec::new();
        for family in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(family)
                .execute()
                .try_collect()
                .await
                .map_err(|e| nl_error("listing routes", e))?;
            all.extend(msgs);
        }
        Ok(all)
    }

    /// Brings the named link up (used for `lo` at boot).
    pub async fn link_up(&self, name: &str) -> Result<()> {
        let _serial = self.lock.lock().await;
        let index = link_index(&self.links().await?, name)?;
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(&format!("bringing {name} up"), msg).await
    }

    /// Applies an UpdateInterface plan and reports the link as it now is.
    pub async fn update_interface(&self, plan: &InterfacePlan) -> Result<Interface> {
        let _serial = self.lock.lock().await;
        let links = self.links().await?;
        let link = find_link(&links, &plan.select)?.clone();
        let rename = plan.name.as_ref().filter(|n| **n != link.name);
        if let Some(n) = rename {
            if links.iter().any(|l| &l.name == n) {
                return Err(AgentError::AlreadyExists(format!("interface {n:?}")));
            }
            // The kernel renames only links that are down.
            let down = LinkUnspec::new_with_index(link.index).down().build();
            self.set_link(&format!("setting {} down", link.name), down)
                .await?;
        }
        if rename.is_some() || plan.mtu.is_some() {
            let mut b = LinkUnspec::new_with_index(link.index);
            if let Some(n) = rename {
                b = b.name(n.clone());
            }
            if let Some(m) = plan.mtu {
                b = b.mtu(m);
            }
            let configured = self
                .set_link(&format!("configuring {}", link.name), b.build())
                .await;
            if let Err(e) = configured {
                // A refused MTU or name leaves the link as it was, up if it was up.
                if rename.is_some() && link.up {
                    let up = LinkUnspec::new_with_index(link.index).up().build();
                    let _ = self.set_link("bringing the link back up", up).await;
                }
                return Err(e);
            }
        }
        let present = self.addresses(link.index).await?;
        for m in present {
            let keep = address_of(&m)
                .is_some_and(|c| is_ipv6_link_local(c.addr) || plan.addresses.contains(&c));
            if !keep {
                let what = format!("removing {:?} from {}", address_of(&m), link.name);
                match self.handle.address().del(m).execute().await {
                    Ok(()) => {}
                    // Removing an IPv4 primary also removes its secondaries.
                    Err(rtnetlink::Error::NetlinkError(e))
                        if e.raw_code() == -libc::EADDRNOTAVAIL => {}
                    Err(e) => return Err(nl_error(&what, e)),
                }
            }
        }
        let present: Vec<Cidr> = self
            .addresses(link.index)
            .await?
            .iter()
            .filter_map(address_of)
            .collect();
        for c in plan.addresses.iter().filter(|c| !present.contains(c)) {
            self.handle
                .address()
                .add(link.index, c.addr, c.prefix)
                .execute()
                .await
                .map_err(|e| nl_error(&format!("adding {c} to {}", link.name), e))?;
        }
        let up = LinkUnspec::new_with_index(link.index).up().build();
        self.set_link(&format!("bringing {} up", link.name), up)
            .await?;
        self.interface(link.index).await
    }

    async fn interface(&self, index: u32) -> Result<Interface> {
        let links = self.links().await?;
        let link = links
            .iter()
            .find(|l| l.index == index)
            .ok_or_else(|| AgentError::NotFound(format!("interface {index}")))?;
        let addresses = self
            .addresses(index)
            .await?
            .iter()
            .filter_map(address_of)
            .filter(|c| !is_ipv6_link_local(c.addr))
            .map(|c| IpAddress {
                address: c.addr.to_string(),
                prefix_len: u32::from(c.prefix),
                ..Default::default()
            })
            .collect();
        Ok(Interface {
            name: link.name.clone(),
            hw_addr: format_mac(&link.mac),
            mtu: link.mtu,
            addresses,
            ..Default::default()
        })
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
        for m in self.routes().await? {
            if is_replaced(&RouteEntry::from(&m), &devices) {
                match self.handle.route().del(m).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                    Err(e) => return Err(nl_error("removing a route", e)),
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
            self.handle
                .route()
                .add(msg)
                .execute()
                .await
                .map_err(|e| nl_error(&what, e))?;
        }
        let links = self.links().await?;
        Ok(self
            .routes()
            .await?
            .iter()
            .map(RouteEntry::from)
            .filter(|e| e.table == RT_TABLE_MAIN && e.kind == u8::from(RouteType::Unicast))
            .map(|e| to_proto_route(&e, &links))
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
            self.handle
                .neighbours()
                .add(index, p.ip)
                .link_layer_address(&p.mac)
                .state(NeighbourState::from(p.state))
                .replace()
                .execute()
                .await
                .map_err(|e| nl_error(&format!("adding neighbour {} on {}", p.ip, p.device), e))?;
        }
        Ok(())
    }
}

/// The RTM_NEWROUTE message of a plan (main table, static protocol).
fn route_message(p: &RoutePlan, index: u32) -> Result<RouteMessage> {
    // The builder's own checks repeat the plan's; its refusal would be a bad argument too.
    let bad = |e: &dyn fmt::Display| invalid(format!("route to {:?}: {e}", p.dest));
    let mut b = RouteMessageBuilder::<IpAddr>::new();
    b.get_mut().header.address_family = if p.ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    if let Some(d) = p.dest {
        b = b
            .destination_prefix(d.addr, d.prefix)
            .map_err(|e| bad(&e))?;
    }
    if let Some(g) = p.gateway {
        b = b.gateway(g).map_err(|e| bad(&e))?;
    }
    if let Some(s) = p.source {
        b = b.pref_source(s).map_err(|e| bad(&e))?;
    }
    Ok(b.output_interface(index)
        .scope(RouteScope::from(p.scope))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::plan_routes;

    fn route(dest: &str, gw: &str, dev: &str) -> Route {
        Route {
            dest: dest.into(),
            gateway: gw.into(),
            device: dev.into(),
            ..Default::default()
        }
    }

    #[test]
    fn route_messages_carry_the_plan() {
        let p = &plan_routes(&[Route {
            source: "10.0.0.2".into(),
            scope: 253,
            ..route("10.1.0.0/24", "10.0.0.1", "eth0")
        }])
        .unwrap()[0];
        let e = RouteEntry::from(&route_message(p, 7).unwrap());
        assert_eq!(e.dest, p.dest);
        assert_eq!(e.gateway, p.gateway);
        assert_eq!(e.source, p.source);
        assert_eq!((e.oif, e.scope, e.table), (Some(7), 253, RT_TABLE_MAIN));
        let d = &plan_routes(&[route("default", "fd00::1", "eth0")]).unwrap()[0];
        let m = route_message(d, 7).unwrap();
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.destination_prefix_length, 0);
    }

    /// As root: in a fresh network namespace (this test's own thread) `lo` starts down and
    /// `link_up` brings it up, as the agent does at boot.
    #[test]
    fn link_up_brings_lo_up_in_a_fresh_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare has no memory preconditions; CLONE_NEWNET moves only this thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let net = Netlink::connect().unwrap();
                let lo = |links: Vec<LinkInfo>| links.into_iter().find(|l| l.name == "lo");
                assert!(!lo(net.links().await.unwrap()).unwrap().up);
                net.link_up("lo").await.unwrap();
                assert!(lo(net.links().await.unwrap()).unwrap().up);
                let err = net.link_up("nope0").await.unwrap_err();
                assert_eq!(err.code(), ttrpc::Code::NOT_FOUND);
            });
        })
        .join()
        .unwrap();
    }
}
