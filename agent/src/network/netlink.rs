//! [`Rtnetlink`]: the real [`Netns`], the agent's own network namespace over an rtnetlink
//! socket (what it lists decoded by `carapace_net`); and [`route_message`], the RTM_NEWROUTE
//! message of a route plan.

use std::fmt;
use std::net::IpAddr;

use async_trait::async_trait;
use carapace_net::{address_of, dump, Cidr, Link, NeighborPlan, RoutePlan};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::{KernelResult, Listed, ListedAddress, ListedRoute, Netns};
use crate::error::{AgentError, Result};

/// The agent's rtnetlink connection to its own network namespace.
pub struct Rtnetlink {
    handle: rtnetlink::Handle,
}

impl Rtnetlink {
    /// Opens the rtnetlink socket and spawns its connection task on the current runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| AgentError::io("opening rtnetlink", e))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    async fn set_link(&self, msg: LinkMessage) -> KernelResult<()> {
        Ok(self.handle.link().set(msg).execute().await?)
    }
}

#[async_trait]
impl Netns for Rtnetlink {
    async fn links(&self) -> KernelResult<Vec<Link>> {
        Ok(dump::links(&self.handle).await?)
    }

    async fn set_up(&self, index: u32, up: bool) -> KernelResult<()> {
        let b = LinkUnspec::new_with_index(index);
        let b = if up { b.up() } else { b.down() };
        self.set_link(b.build()).await
    }

    async fn configure(
        &self,
        index: u32,
        name: Option<&str>,
        mtu: Option<u32>,
    ) -> KernelResult<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(n) = name {
            b = b.name(n);
        }
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.set_link(b.build()).await
    }

    async fn addresses(&self, index: u32) -> KernelResult<Vec<ListedAddress>> {
        let msgs = dump::addresses(&self.handle, index).await?;
        Ok(msgs
            .into_iter()
            .map(|m| Listed {
                value: address_of(&m),
                message: m,
            })
            .collect())
    }

    async fn add_address(&self, index: u32, address: Cidr) -> KernelResult<()> {
        Ok(self
            .handle
            .address()
            .add(index, address.addr, address.prefix)
            .execute()
            .await?)
    }

    async fn delete_address(&self, address: ListedAddress) -> KernelResult<()> {
        Ok(self.handle.address().del(address.message).execute().await?)
    }

    async fn routes(&self) -> KernelResult<Vec<ListedRoute>> {
        let msgs = dump::routes(&self.handle).await?;
        Ok(msgs
            .into_iter()
            .map(|m| Listed {
                value: (&m).into(),
                message: m,
            })
            .collect())
    }

    async fn add_route(&self, route: RouteMessage) -> KernelResult<()> {
        Ok(self.handle.route().add(route).execute().await?)
    }

    async fn delete_route(&self, route: ListedRoute) -> KernelResult<()> {
        Ok(self.handle.route().del(route.message).execute().await?)
    }

    async fn add_neighbour(&self, index: u32, n: &NeighborPlan) -> KernelResult<()> {
        Ok(self
            .handle
            .neighbours()
            .add(index, n.ip)
            .link_layer_address(&n.mac)
            .state(NeighbourState::from(n.state))
            .replace()
            .execute()
            .await?)
    }
}

/// The RTM_NEWROUTE message of a plan (main table, static protocol).
pub(super) fn route_message(p: &RoutePlan, index: u32) -> Result<RouteMessage> {
    // The builder's own checks repeat the plan's; its refusal would be a bad argument too.
    let bad =
        |e: &dyn fmt::Display| AgentError::InvalidArgument(format!("route to {:?}: {e}", p.dest));
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
    use carapace_net::{RouteEntry, RT_TABLE_MAIN};
    use carapace_protocol::types::Route;

    use super::*;
    use crate::network::{plan_routes, Netlink};

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
                let lo = |links: Vec<Link>| links.into_iter().find(|l| l.name == "lo");
                assert!(!lo(net.ns.links().await.unwrap()).unwrap().up);
                net.link_up("lo").await.unwrap();
                assert!(lo(net.ns.links().await.unwrap()).unwrap().up);
                let err = net.link_up("nope0").await.unwrap_err();
                assert_eq!(err.code(), ttrpc::Code::NOT_FOUND);
            });
        })
        .join()
        .unwrap();
    }
}
