//! Listing a network namespace's links, addresses, routes and neighbours over an rtnetlink
//! handle, as both sides do; what is listed is decoded with [`crate::kernel`]'s types (the raw
//! messages are returned where a caller sends one back to delete it).

use std::net::{Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::NeighbourMessage;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::kernel::{Link, Neighbour};

/// Every link.
pub async fn links(handle: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    let msgs: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    Ok(msgs.iter().map(Link::from).collect())
}

/// The address messages of the link `index`.
pub async fn addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
    handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
}

/// Every route message, of every table: IPv4's, then IPv6's.
pub async fn routes(handle: &Handle) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
    let mut all = Vec::new();
    for family in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let msgs: Vec<RouteMessage> = handle.route().get(family).execute().try_collect().await?;
        all.extend(msgs);
    }
    Ok(all)
}

/// Every neighbour entry.
pub async fn neighbours(handle: &Handle) -> Result<Vec<Neighbour>, rtnetlink::Error> {
    let msgs: Vec<NeighbourMessage> = handle.neighbours().get().execute().try_collect().await?;
    Ok(msgs.iter().map(Neighbour::from).collect())
}
