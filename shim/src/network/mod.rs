//! The pod's network: for every interface the CNI plugins put in the pod's network namespace
//! (a veth, other than `lo`) a tap beside it in the same namespace, joined to it by tc ingress
//! `mirred egress redirect` filters both ways, handed to carapace-vmm as a virtio-net device with
//! the veth's MAC; then the veth's addresses, routes and static neighbours sent to the agent,
//! which gives them to the guest's NIC; and teardown of all of that.
//!
//! Choices, and why:
//! - The VMM gets each tap as an inherited file descriptor, opened by the shim from a thread that
//!   joined the pod's namespace (a tap lives in the namespace of whoever opened `/dev/net/tun`).
//!   The VMM itself stays in the host's namespace: it needs nothing else there, its sockets are
//!   paths, and it keeps no way to reach the pod's namespace at all.
//! - The tap is not persistent: the shim holds one descriptor until teardown and the VMM the
//!   other, so even if both die without cleaning up, the kernel removes the tap and its qdisc.
//!   The veth's ingress qdisc, which would outlive them, is removed by [`PodNetwork::detach`].
//! - The veth keeps its addresses (as Kata's tc-filter mode does): with every frame arriving on
//!   it redirected to the tap before the namespace's IP stack sees it, they do no harm there, and
//!   CNI's DEL and CHECK find the veth as they made it.
//! - Everything goes over rtnetlink (links, addresses, routes, neighbours, qdiscs, and u32
//!   filters with a mirred action, which the `rtnetlink` crate builds); opening the tap is one
//!   `TUNSETIFF` ioctl, written by hand as no well-kept crate wraps it for a foreign namespace.
//! - The kernel side is behind [`Netns`]; the real one is [`Netlink`], and the logic (which
//!   links, what the guest gets, rolling back a half-made set-up) is tested with a fake.
//! - Links, addresses, routes and neighbours are `carapace_net`'s types, as the agent reads
//!   them too, and become the protocol's `Interface`, `Route` and `ArpNeighbor` through its
//!   conversions, the ones whose checked inverse the agent applies to them.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use carapace_net::{
    format_mac, is_ipv6_link_local, Cidr, Link, LinkWithAddresses, Neighbour, NeighbourOnLink,
    RouteEntry, RouteOnLink, NUD_PERMANENT, RTN_UNICAST, RTPROT_KERNEL, RT_TABLE_MAIN,
};
use carapace_protocol::agent::{
    AddArpNeighborsRequest, CreateSandboxRequest, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use carapace_protocol::agent_ttrpc::AgentServiceClient;
use carapace_protocol::types::{ArpNeighbor, Interface, Route};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::agent::ctx_timeout;
use crate::error::{NetworkError, ShimError};

pub mod forward;
mod netlink;
pub use netlink::{new_namespace, Netlink};

/// Deadline of each network RPC to the agent.
const RPC: Duration = Duration::from_secs(30);

type Result<T> = std::result::Result<T, NetworkError>;

/// The kernel side: one network namespace, as the set-up needs it.
#[async_trait]
pub trait Netns: Send + Sync {
    /// Every link.
    async fn links(&self) -> Result<Vec<Link>>;
    /// The addresses of one link.
    async fn addresses(&self, index: u32) -> Result<Vec<Cidr>>;
    /// Every route (IPv4 and IPv6).
    async fn routes(&self) -> Result<Vec<RouteEntry>>;
    /// Every neighbour entry.
    async fn neighbours(&self) -> Result<Vec<Neighbour>>;
    /// Creates the tap `name` (tap, no packet information, virtio-net header) with `mtu` and
    /// brings it up; returns its descriptor (close-on-exec) and index.
    async fn create_tap(&self, name: &str, mtu: u32) -> Result<(OwnedFd, u32)>;
    /// Gives a link the Ethernet address `mac`.
    async fn set_mac(&self, index: u32, mac: &[u8]) -> Result<()>;
    /// Removes a link; gone already is fine.
    async fn delete_link(&self, index: u32) -> Result<()>;
    /// Adds an ingress qdisc to `from` and a filter redirecting every frame it receives to the
    /// egress of `to`.
    async fn redirect(&self, from: u32, to: u32) -> Result<()>;
    /// Removes the ingress qdisc of a link, and so its filters; none there is fine.
    async fn remove_ingress(&self, index: u32) -> Result<()>;
    /// Listens on the namespace's loopback for port forwarding and redirects the namespace's
    /// other local TCP connections to it ([`forward::listen_and_redirect`]).
    async fn forward_listener(&self) -> Result<std::net::TcpListener>;
}

/// The network namespace path of a spec, if it names one (the CRI's pod netns, `ctr run
/// --with-ns network:PATH`).
pub fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
}

/// Whether the spec asks for a new network namespace (one without a path).
pub fn wants_new_netns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
        })
}

/// Refuses the namespace at `path` when it is the one at `own` (the shim's, which is the
/// host's: the CRI never hands a pod the host namespace, and `--with-ns network:/proc/1/ns/net`
/// must not put taps and redirects on the host's NICs).
pub fn refuse_host_namespace(path: &Path, own: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = |p: &Path| {
        std::fs::metadata(p).map_err(|source| NetworkError::Namespace {
            path: p.to_path_buf(),
            source,
        })
    };
    let (theirs, ours) = (md(path)?, md(own)?);
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(NetworkError::HostNamespace(path.to_path_buf()));
    }
    Ok(())
}

/// The MTU of a prewired NIC (CNI's usual): a link added later with a larger one is capped.
const PREWIRED_MTU: u32 = 1500;

/// A random locally administered unicast MAC.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        // Never on Linux for 6 bytes; a fixed address still works for one NIC per namespace.
        mac = [0x02, 0, 0, 0, 0, 1];
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// The name of the pod's `i`-th tap (under IFNAMSIZ for any realistic count).
pub fn tap_name(i: usize) -> String {
    format!("tap{i}_carapace")
}

fn is_our_tap(name: &str) -> bool {
    name.starts_with("tap") && name.ends_with("_carapace")
}

/// The links that get a NIC in the guest: not loopback, not one of our taps, with an Ethernet
/// address (tunnels and such have none a virtio-net device could take), in index order.
pub fn guest_links(links: &[Link]) -> Vec<Link> {
    let mut chosen: Vec<Link> = links
        .iter()
        .filter(|l| !l.loopback && !is_our_tap(&l.name) && l.mac.len() == 6)
        .filter(|l| l.mac.iter().any(|&b| b != 0))
        .cloned()
        .collect();
    chosen.sort_by_key(|l| l.index);
    chosen
}

/// The guest's interface for a link: same name, MAC and MTU, its addresses but IPv6 link-local
/// ones (the guest's kernel makes its own).
pub fn interface_for(link: &Link, addresses: &[Cidr]) -> Interface {
    Interface::from(LinkWithAddresses { link, addresses })
}

/// The routes the guest gets: unicast routes of the main table through one of `links` that the
/// kernel did not make itself for an address (the guest's kernel makes those when the agent
/// adds the address), IPv6 link-local destinations left out. Link routes come first so that a
/// gateway is reachable when the route through it is added.
pub fn routes_for(routes: &[RouteEntry], links: &[Link]) -> Vec<Route> {
    let mut out: Vec<(bool, Route)> = Vec::new();
    for r in routes {
        let Some(link) = r.oif.and_then(|i| links.iter().find(|l| l.index == i)) else {
            continue;
        };
        if r.table != RT_TABLE_MAIN
            || r.kind != RTN_UNICAST
            || r.protocol == RTPROT_KERNEL
            || r.dest.is_some_and(|d| is_ipv6_link_local(d.addr))
        {
            continue;
        }
        let route = Route::from(RouteOnLink {
            route: r,
            device: &link.name,
        });
        out.push((r.gateway.is_some(), route));
    }
    out.sort_by_key(|(via_gateway, _)| *via_gateway);
    out.into_iter().map(|(_, r)| r).collect()
}

/// The static (NUD_PERMANENT) neighbour entries on `links`: dynamic ones the guest learns.
pub fn neighbours_for(neighbours: &[Neighbour], links: &[Link]) -> Vec<ArpNeighbor> {
    neighbours
        .iter()
        .filter(|n| n.state & NUD_PERMANENT != 0 && n.mac.len() == 6)
        .filter_map(|n| {
            let link = links.iter().find(|l| l.index == n.index)?;
            Some(ArpNeighbor::from(NeighbourOnLink {
                ip: n.ip?,
                mac: &n.mac,
                device: &link.name,
            }))
        })
        .collect()
}

/// The source of the container's `/etc/resolv.conf` bind mount, if it has one (the CRI's).
pub fn resolv_conf_source(spec: &Spec) -> Option<PathBuf> {
    spec.mounts()
        .as_ref()?
        .iter()
        .find(|m| m.destination() == Path::new("/etc/resolv.conf"))
        .and_then(|m| m.source().clone())
}

/// Fills the DNS fields of CreateSandbox from resolv.conf text (`nameserver`, `search`,
/// `domain`, `options`; comments and anything else ignored).
pub fn dns_from_resolv_conf(text: &str, req: &mut CreateSandboxRequest) {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => req.dns_servers.extend(words.next().map(String::from)),
            Some("search") | Some("domain") => {
                req.dns_searches = words.map(String::from).collect();
            }
            Some("options") => req.dns_options.extend(words.map(String::from)),
            _ => {}
        }
    }
}

/// One guest NIC and what makes it on the host.
struct Nic {
    /// The veth (or other CNI link) it stands for.
    link: Link,
    /// The tap's name and index.
    tap: String,
    tap_index: u32,
    /// The shim's descriptor of the tap (the VMM inherits it).
    tap_fd: Option<OwnedFd>,
    /// Which of the two redirects exist.
    link_redirect: bool,
    tap_redirect: bool,
}

/// A virtio-net device for the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    /// The tap's descriptor, to be inherited by the VMM.
    pub tap_fd: RawFd,
    /// The guest's MAC.
    pub mac: String,
}

/// The pod's network as set up on the host, and what the guest is to get.
pub struct PodNetwork {
    path: PathBuf,
    ns: Box<dyn Netns>,
    /// The namespace when the shim made it ([`PodNetwork::prewire`]): the VMM's supervisor is
    /// put in it, so that `/proc/<task pid>/ns/net` names it to whoever sets its network up.
    own: Option<OwnedFd>,
    /// A NIC made before its link exists ([`PodNetwork::prewire`]), joined to the link when
    /// [`PodNetwork::adopt`] finds it.
    prewired: bool,
    nics: Vec<Nic>,
    interfaces: Vec<Interface>,
    routes: Vec<Route>,
    neighbours: Vec<ArpNeighbor>,
}

impl PodNetwork {
    /// Opens the namespace at `path` and sets up one tap per interface.
    pub async fn attach_path(path: &Path) -> Result<Self> {
        refuse_host_namespace(path, Path::new("/proc/self/ns/net"))?;
        let ns = Netlink::open(path).await?;
        Self::attach(path, Box::new(ns)).await
    }

    /// Sets up one tap per guest link of `ns` and reads what the guest gets. On failure,
    /// whatever was made is removed again.
    pub async fn attach(path: &Path, ns: Box<dyn Netns>) -> Result<Self> {
        let mut net = Self {
            path: path.to_path_buf(),
            ns,
            own: None,
            prewired: false,
            nics: Vec::new(),
            interfaces: Vec::new(),
            routes: Vec::new(),
            neighbours: Vec::new(),
        };
        match net.set_up().await {
            Ok(()) => Ok(net),
            Err(e) => {
                if let Err(d) = net.detach().await {
                    log::error!("removing a half-made pod network: {d}");
                }
                Err(e)
            }
        }
    }

    async fn set_up(&mut self) -> Result<()> {
        let links = guest_links(&self.ns.links().await?);
        if links.is_empty() {
            return Err(NetworkError::NoInterface(self.path.clone()));
        }
        for (i, link) in links.iter().enumerate() {
            let name = tap_name(i);
            let (fd, index) = self.ns.create_tap(&name, link.mtu).await?;
            self.nics.push(Nic {
                link: link.clone(),
                tap: name,
                tap_index: index,
                tap_fd: Some(fd),
                link_redirect: false,
                tap_redirect: false,
            });
            let nic = self.nics.last_mut().expect("just pushed");
            self.ns.redirect(link.index, index).await?;
            nic.link_redirect = true;
            self.ns.redirect(index, link.index).await?;
            nic.tap_redirect = true;
            let addresses = self.ns.addresses(link.index).await?;
            self.interfaces.push(interface_for(link, &addresses));
            log::info!(
                "pod network: {} ({}) joined to {} in {}",
                link.name,
                format_mac(&link.mac),
                nic.tap,
                self.path.display()
            );
        }
        self.routes = routes_for(&self.ns.routes().await?, &links);
        self.neighbours = neighbours_for(&self.ns.neighbours().await?, &links);
        Ok(())
    }

    /// A network namespace of the pod's own, for a container whose spec asks for a new one
    /// (no path: `ctr run`, nerdctl, Docker), which its caller may set up after Create
    /// (`ctr run --cni` runs CNI on `/proc/<task pid>/ns/net`), as Kata does: the VMM boots
    /// with one NIC whose tap waits in the namespace, and at Start [`PodNetwork::adopt`]
    /// joins it to the interface the caller added.
    pub async fn prewire() -> Result<Self> {
        let own = tokio::task::spawn_blocking(new_namespace)
            .await
            .map_err(|e| NetworkError::OwnNamespace(std::io::Error::other(e)))?
            .map_err(NetworkError::OwnNamespace)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", own.as_raw_fd()));
        let ns = Netlink::open(&path).await.map_err(|e| match e {
            NetworkError::Namespace { source, .. } => NetworkError::OwnNamespace(source),
            other => other,
        })?;
        Self::prewire_in(&path, Box::new(ns), Some(own), random_mac()).await
    }

    /// [`PodNetwork::prewire`] in `ns`, the guest's NIC taking `mac`.
    pub async fn prewire_in(
        path: &Path,
        ns: Box<dyn Netns>,
        own: Option<OwnedFd>,
        mac: [u8; 6],
    ) -> Result<Self> {
        let mut net = Self {
            path: path.to_path_buf(),
            ns,
            own,
            prewired: true,
            nics: Vec::new(),
            interfaces: Vec::new(),
            routes: Vec::new(),
            neighbours: Vec::new(),
        };
        let name = tap_name(0);
        let (fd, index) = net.ns.create_tap(&name, PREWIRED_MTU).await?;
        net.nics.push(Nic {
            link: Link {
                name: "eth0".into(),
                mac: mac.to_vec(),
                mtu: PREWIRED_MTU,
                ..Default::default()
            },
            tap: name,
            tap_index: index,
            tap_fd: Some(fd),
            link_redirect: false,
            tap_redirect: false,
        });
        Ok(net)
    }

    /// The listener that carries CRI port forwarding into the guest
    /// ([`forward::listen_and_redirect`]).
    pub async fn forward_listener(&self) -> Result<std::net::TcpListener> {
        self.ns.forward_listener().await
    }

    /// The namespace's descriptor when the shim made it, for the VMM to join.
    pub fn own_namespace(&self) -> Option<RawFd> {
        self.own.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// For a prewired network: joins the guest's NIC to the first interface the caller added
    /// to the namespace since (giving that link the guest NIC's MAC, so frames addressed to
    /// either reach the guest), and reads what the guest gets. Returns whether there was one;
    /// a namespace left with only `lo` (`ctr run` without `--cni`) leaves the NIC unplugged.
    /// Once it succeeded, never again; a failure undoes what it did, so a retried Start
    /// tries afresh.
    pub async fn adopt(&mut self) -> Result<bool> {
        if !self.prewired {
            return Ok(false);
        }
        let placeholder = self.nics.first().map(|n| n.link.clone());
        match self.join_added_link().await {
            Ok(joined) => {
                self.prewired = false;
                Ok(joined)
            }
            Err(e) => {
                self.unjoin(placeholder).await;
                Err(e)
            }
        }
    }

    /// Undoes [`PodNetwork::adopt`] (the guest could not be configured, say): the redirects
    /// are removed and the NIC waits again, so a retried Start tries afresh.
    pub async fn unadopt(&mut self) {
        if self.interfaces.is_empty() {
            return;
        }
        let placeholder = self.nics.first().map(|n| Link {
            name: "eth0".into(),
            mac: n.link.mac.clone(),
            mtu: PREWIRED_MTU,
            ..Default::default()
        });
        self.unjoin(placeholder).await;
        self.prewired = true;
    }

    /// Removes the redirects of the prewired NIC and gives it back `placeholder` as its link.
    async fn unjoin(&mut self, placeholder: Option<Link>) {
        let Some(nic) = self.nics.first_mut() else {
            return;
        };
        for (made, index) in [
            (&mut nic.link_redirect, nic.link.index),
            (&mut nic.tap_redirect, nic.tap_index),
        ] {
            if std::mem::take(made) {
                if let Err(e) = self.ns.remove_ingress(index).await {
                    log::warn!("pod network: undoing a redirect: {e}");
                }
            }
        }
        if let Some(p) = placeholder {
            nic.link = p;
        }
        self.interfaces.clear();
        self.routes.clear();
        self.neighbours.clear();
    }

    async fn join_added_link(&mut self) -> Result<bool> {
        let tap_index = self.nics.first().map(|n| n.tap_index);
        // Our tap by its index: the caller, root in the namespace, may have renamed it.
        let links: Vec<Link> = guest_links(&self.ns.links().await?)
            .into_iter()
            .filter(|l| Some(l.index) != tap_index)
            .collect();
        let Some(link) = links.first().cloned() else {
            log::info!("pod network: no interface was added to the pod's namespace: no network");
            return Ok(false);
        };
        if links.len() > 1 {
            log::warn!(
                "pod network: {} interfaces were added after Create; only {} reaches the guest",
                links.len(),
                link.name
            );
        }
        let nic = self
            .nics
            .first_mut()
            .expect("a prewired network has its NIC");
        // Some links cannot change address (ipvlan): the redirects carry every frame the link
        // receives all the same, so go on with a warning.
        if let Err(e) = self.ns.set_mac(link.index, &nic.link.mac).await {
            log::warn!(
                "pod network: {} keeps its MAC ({e}); the guest's NIC has {}",
                link.name,
                format_mac(&nic.link.mac)
            );
        }
        let mut joined = Link {
            mac: nic.link.mac.clone(),
            ..link.clone()
        };
        // The tap was made at the link's usual MTU; the guest's NIC takes the link's.
        joined.mtu = link.mtu.min(PREWIRED_MTU);
        nic.link = joined.clone();
        self.ns.redirect(link.index, nic.tap_index).await?;
        nic.link_redirect = true;
        self.ns.redirect(nic.tap_index, link.index).await?;
        nic.tap_redirect = true;
        let addresses = self.ns.addresses(link.index).await?;
        self.interfaces = vec![interface_for(&joined, &addresses)];
        let links = [joined];
        self.routes = routes_for(&self.ns.routes().await?, &links);
        self.neighbours = neighbours_for(&self.ns.neighbours().await?, &links);
        log::info!(
            "pod network: {} added after Create, joined to {}",
            link.name,
            nic.tap
        );
        Ok(true)
    }

    /// The VMM's virtio-net devices, in the order of the interfaces.
    pub fn vm_nics(&self) -> Vec<VmNic> {
        self.nics
            .iter()
            .filter_map(|n| {
                Some(VmNic {
                    tap_fd: n.tap_fd.as_ref()?.as_raw_fd(),
                    mac: format_mac(&n.link.mac),
                })
            })
            .collect()
    }

    /// The interfaces the guest gets.
    #[cfg(test)]
    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// The routes the guest gets.
    #[cfg(test)]
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The neighbour entries the guest gets.
    #[cfg(test)]
    pub fn neighbours(&self) -> &[ArpNeighbor] {
        &self.neighbours
    }

    /// Configures the guest through the agent: each interface (found by its MAC), then the
    /// routes, then static neighbours.
    pub async fn configure_guest(&self, agent: &AgentServiceClient) -> Result<()> {
        let agent_err = |what, e| NetworkError::Agent(Box::new(ShimError::agent(what, e)));
        for i in &self.interfaces {
            let req = UpdateInterfaceRequest {
                interface: Some(i.clone()).into(),
                ..Default::default()
            };
            agent
                .update_interface(ctx_timeout(RPC), &req)
                .await
                .map_err(|e| agent_err("UpdateInterface", e))?;
        }
        if !self.routes.is_empty() {
            let req = UpdateRoutesRequest {
                routes: self.routes.clone(),
                ..Default::default()
            };
            agent
                .update_routes(ctx_timeout(RPC), &req)
                .await
                .map_err(|e| agent_err("UpdateRoutes", e))?;
        }
        if !self.neighbours.is_empty() {
            let req = AddArpNeighborsRequest {
                neighbors: self.neighbours.clone(),
                ..Default::default()
            };
            agent
                .add_arp_neighbors(ctx_timeout(RPC), &req)
                .await
                .map_err(|e| agent_err("AddArpNeighbors", e))?;
        }
        Ok(())
    }

    /// Removes the redirects and taps (each step tried even when an earlier one failed);
    /// returns the first failure. Doing it twice is harmless.
    pub async fn detach(&mut self) -> Result<()> {
        let mut first = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r {
                log::warn!("pod network teardown: {e}");
                first.get_or_insert(e);
            }
        };
        for nic in self.nics.iter_mut().rev() {
            if nic.link_redirect {
                keep(self.ns.remove_ingress(nic.link.index).await);
                nic.link_redirect = false;
            }
            if nic.tap_redirect {
                keep(self.ns.remove_ingress(nic.tap_index).await);
                nic.tap_redirect = false;
            }
            if nic.tap_fd.is_some() {
                keep(self.ns.delete_link(nic.tap_index).await);
                nic.tap_fd = None;
            }
        }
        self.nics.clear();
        match first {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
