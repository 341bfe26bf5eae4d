//! [`Netlink`]: the real [`Netns`], one pod network namespace reached over an rtnetlink socket
//! opened inside it (what it lists decoded by `carapace_net`), and taps opened inside it by a
//! short-lived thread that joins it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use carapace_net::{address_of, dump, errno_of, Cidr, Link, Neighbour, RouteEntry};
use futures_util::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::LinkUnspec;
use tokio::task::JoinHandle;

use super::{Netns, Result};
use crate::error::NetworkError;

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: u32 = 0xffff_0000;

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |e| NetworkError::netlink(what, e.into())
}

/// Whether a netlink failure is one of the errnos in `codes`.
fn is_errno(e: &rtnetlink::Error, codes: &[i32]) -> bool {
    errno_of(e).is_some_and(|errno| codes.contains(&errno))
}

/// Runs `f` on a new thread that has joined the network namespace `ns` (a thread of its own,
/// so no thread of the shim's runtime ever changes namespace); the thread ends with `f`.
async fn in_netns<T: Send + 'static>(
    ns: &OwnedFd,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = ns.try_clone()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("carapace-netns".into())
        .spawn(move || {
            let r = nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .and_then(|()| f());
            let _ = tx.send(r);
        })?;
    rx.await
        .map_err(|_| io::Error::other("the thread in the pod's network namespace died"))?
}

/// Makes a new, empty network namespace (on a thread of its own that unshares it, so no
/// thread of the shim changes namespace) and returns a descriptor of it: the namespace lives
/// while the descriptor or a process in it does.
pub fn new_namespace() -> io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("carapace-netns".into())
        .spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let ns: OwnedFd = File::options()
                .read(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/proc/thread-self/ns/net")?
                .into();
            Ok(ns)
        })?
        .join()
        .map_err(|_| io::Error::other("the thread making a network namespace died"))?
}

/// Opens `/dev/net/tun` (in the calling thread's network namespace) as the tap `name`, with no
/// packet information and a virtio-net header, as carapace-vmm's net device takes it.
fn open_tap(name: &str) -> io::Result<OwnedFd> {
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the name is too long for an interface",
        ));
    }
    let file = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain C data for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq; `ifr` is one and outlives the call,
    // and the descriptor is owned by `file`.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// One pod network namespace over rtnetlink.
pub struct Netlink {
    path: PathBuf,
    ns: OwnedFd,
    handle: rtnetlink::Handle,
    connection: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    /// Opens the network namespace at `path` and an rtnetlink socket inside it.
    pub async fn open(path: &Path) -> Result<Self> {
        let bad = |source| NetworkError::Namespace {
            path: path.to_path_buf(),
            source,
        };
        let ns: OwnedFd = File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(bad)?
            .into();
        let runtime = tokio::runtime::Handle::current();
        // The socket belongs to the namespace it was made in, whichever thread uses it later.
        let (conn, handle, _) = in_netns(&ns, move || {
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })
        .await
        .map_err(bad)?;
        Ok(Self {
            path: path.to_path_buf(),
            ns,
            handle,
            connection: tokio::spawn(conn),
        })
    }

    async fn link_by_name(&self, name: &str) -> Result<u32> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("finding {name}")))?;
        links
            .first()
            .map(|l| l.header.index)
            .ok_or_else(|| NetworkError::Netlink {
                what: format!("finding {name}"),
                message: "no such link".into(),
            })
    }
}

#[async_trait]
impl Netns for Netlink {
    async fn links(&self) -> Result<Vec<Link>> {
        dump::links(&self.handle)
            .await
            .map_err(nl(format!("listing the links of {}", self.path.display())))
    }

    async fn addresses(&self, index: u32) -> Result<Vec<Cidr>> {
        let msgs = dump::addresses(&self.handle, index)
            .await
            .map_err(nl("listing addresses"))?;
        Ok(msgs.iter().filter_map(address_of).collect())
    }

    async fn routes(&self) -> Result<Vec<RouteEntry>> {
        let msgs = dump::routes(&self.handle)
            .await
            .map_err(nl("listing routes"))?;
        Ok(msgs.iter().map(RouteEntry::from).collect())
    }

    async fn neighbours(&self) -> Result<Vec<Neighbour>> {
        dump::neighbours(&self.handle)
            .await
            .map_err(nl("listing neighbours"))
    }

    async fn create_tap(&self, name: &str, mtu: u32) -> Result<(OwnedFd, u32)> {
        let owned = name.to_string();
        let fd = in_netns(&self.ns, move || open_tap(&owned))
            .await
            .map_err(|source| NetworkError::Tap {
                name: name.to_string(),
                source,
            })?;
        // From here on, dropping `fd` removes the tap again (it is not persistent).
        let index = self.link_by_name(name).await?;
        let mut b = LinkUnspec::new_with_index(index).up();
        if mtu != 0 {
            b = b.mtu(mtu);
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(nl(format!("bringing {name} up")))?;
        Ok((fd, index))
    }

    async fn set_mac(&self, index: u32, mac: &[u8]) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!(
                "setting the MAC of link {index} to {}",
                carapace_net::format_mac(mac)
            )))
    }

    async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Err(e) if !is_errno(&e, &[libc::ENODEV]) => {
                Err(nl(format!("removing link {index}"))(e))
            }
            _ => Ok(()),
        }
    }

    async fn redirect(&self, from: u32, to: u32) -> Result<()> {
        let what = || format!("redirecting link {from} to link {to}");
        let from_i32 = i32::try_from(from).map_err(|_| NetworkError::Netlink {
            what: what(),
            message: "link index out of range".into(),
        })?;
        self.handle
            .qdisc()
            .add(from_i32)
            .ingress()
            .execute()
            .await
            .map_err(nl(format!("adding an ingress qdisc to link {from}")))?;
        // tcm_info carries the protocol in network byte order (as `tc ... protocol all`).
        let all = (libc::ETH_P_ALL as u16).to_be();
        self.handle
            .traffic_filter(from_i32)
            .add()
            .parent(INGRESS_HANDLE)
            .protocol(all)
            .redirect(to)
            .map_err(nl(what()))?
            .execute()
            .await
            .map_err(nl(what()))
    }

    async fn forward_listener(&self) -> Result<std::net::TcpListener> {
        in_netns(&self.ns, super::forward::listen_and_redirect)
            .await
            .map_err(|source| NetworkError::Forward {
                path: self.path.clone(),
                source,
            })
    }

    async fn remove_ingress(&self, index: u32) -> Result<()> {
        let Ok(index_i32) = i32::try_from(index) else {
            return Ok(());
        };
        let mut req = self.handle.qdisc().del(index_i32);
        req.message_mut().header.parent = TcHandle::INGRESS;
        req.message_mut().header.handle = TcHandle::from(INGRESS_HANDLE);
        match req.execute().await {
            // No such link, or no ingress qdisc on it: nothing to remove.
            Err(e) if !is_errno(&e, &[libc::ENODEV, libc::ENOENT, libc::EINVAL]) => {
                Err(nl(format!("removing the ingress qdisc of link {index}"))(e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::process::Command;

    use rtnetlink::packet_route::neighbour::NeighbourState;
    use rtnetlink::{LinkVeth, RouteMessageBuilder};

    use super::*;
    use crate::network::PodNetwork;

    /// A fresh network namespace, held by a parked thread until dropped.
    struct FreshNetns {
        path: PathBuf,
        done: std::sync::mpsc::Sender<()>,
    }

    impl FreshNetns {
        fn new() -> Self {
            let (path_tx, path_rx) = std::sync::mpsc::channel();
            let (done, done_rx) = std::sync::mpsc::channel::<()>();
            std::thread::spawn(move || {
                // SAFETY: unshare has no memory preconditions; CLONE_NEWNET moves this thread.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
                let tid = nix::unistd::gettid();
                let path = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
                path_tx.send(PathBuf::from(path)).unwrap();
                let _ = done_rx.recv();
            });
            Self {
                path: path_rx.recv().unwrap(),
                done,
            }
        }

        fn run(&self, args: &[&str]) -> String {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", self.path.display()))
                .args(args)
                .output()
                .expect("nsenter");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    impl Drop for FreshNetns {
        fn drop(&mut self) {
            let _ = self.done.send(());
        }
    }

    /// As root, in a fresh namespace with a veth as a CNI plugin leaves it: the tap is made,
    /// both redirects exist (seen by `tc`), the guest's configuration is read, and detaching
    /// removes the tap and both qdiscs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn taps_and_redirects_in_a_real_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/net/tun").exists() {
            eprintln!("skipped: needs root and /dev/net/tun");
            return;
        }
        let ns = FreshNetns::new();
        let nl = Netlink::open(&ns.path).await.unwrap();
        let h = &nl.handle;
        h.link()
            .add(LinkVeth::new("eth0", "peer0").mtu(1400).build())
            .execute()
            .await
            .unwrap();
        let eth0 = nl.link_by_name("eth0").await.unwrap();
        let peer = nl.link_by_name("peer0").await.unwrap();
        for i in [eth0, peer] {
            let up = LinkUnspec::new_with_index(i).up().build();
            h.link().set(up).execute().await.unwrap();
        }
        h.address()
            .add(eth0, "10.77.0.2".parse().unwrap(), 24)
            .execute()
            .await
            .unwrap();
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway("10.77.0.1".parse().unwrap())
            .output_interface(eth0)
            .build();
        h.route().add(default).execute().await.unwrap();
        h.neighbours()
            .add(eth0, "10.77.0.9".parse().unwrap())
            .link_layer_address(&[2, 0, 0, 0, 0, 9])
            .state(NeighbourState::Permanent)
            .execute()
            .await
            .unwrap();

        let mut net = PodNetwork::attach_path(&ns.path).await.unwrap();
        // Both peers of the veth are guest links here (a CNI plugin leaves only one in the pod).
        assert_eq!(net.vm_nics().len(), 2);
        let i = net.interfaces().iter().find(|i| i.name == "eth0").unwrap();
        assert_eq!((i.name.as_str(), i.mtu), ("eth0", 1400));
        assert_eq!(i.addresses[0].address, "10.77.0.2");
        let routes: Vec<_> = net
            .routes()
            .iter()
            .map(|r| (r.dest.as_str(), r.gateway.as_str(), r.device.as_str()))
            .collect();
        assert_eq!(routes, vec![("default", "10.77.0.1", "eth0")]);
        assert_eq!(net.neighbours()[0].ip_address, "10.77.0.9");

        // Taps are numbered in link index order.
        let tap = if eth0 < peer {
            "tap0_carapace"
        } else {
            "tap1_carapace"
        };
        let filters = ns.run(&["tc", "filter", "show", "dev", "eth0", "ingress"]);
        assert!(
            filters.contains("protocol all")
                && filters.contains(&format!("Egress Redirect to device {tap}")),
            "{filters}"
        );
        let filters = ns.run(&["tc", "filter", "show", "dev", tap, "ingress"]);
        assert!(
            filters.contains("Egress Redirect to device eth0"),
            "{filters}"
        );
        let links = ns.run(&["ip", "-o", "link", "show", tap]);
        assert!(
            links.contains("mtu 1400") && links.contains(",UP"),
            "{links}"
        );

        net.detach().await.unwrap();
        let links = ns.run(&["ip", "-o", "link"]);
        assert!(!links.contains("_carapace"), "{links}");
        let qdiscs = ns.run(&["tc", "qdisc", "show", "ingress"]);
        assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    }
}
