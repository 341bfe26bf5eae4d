//! The pod network's logic against a fake namespace: which links get a NIC, what the guest
//! gets, and that a failure half-way leaves nothing behind.

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::{Arc, Mutex};

use oci_spec::runtime::{LinuxNamespaceBuilder, MountBuilder};

use super::*;

const VETH_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x02];

fn link(index: u32, name: &str, mac: &[u8]) -> Link {
    Link {
        index,
        name: name.into(),
        mac: mac.to_vec(),
        mtu: 1450,
        loopback: name == "lo",
        ..Default::default()
    }
}

fn cidr(s: &str) -> Cidr {
    let (a, p) = s.split_once('/').unwrap();
    Cidr {
        addr: a.parse().unwrap(),
        prefix: p.parse().unwrap(),
    }
}

/// A namespace in memory: records what exists, fails the `fail_at`-th change.
#[derive(Default)]
struct Fake {
    links: Vec<Link>,
    fail_at: Option<usize>,
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    changes: usize,
    taps: BTreeSet<u32>,
    ingress: BTreeSet<u32>,
    redirects: Vec<(u32, u32)>,
    macs: Vec<(u32, Vec<u8>)>,
}

impl Fake {
    fn change(&self) -> Result<std::sync::MutexGuard<'_, FakeState>> {
        let mut s = self.state.lock().unwrap();
        s.changes += 1;
        if Some(s.changes) == self.fail_at {
            return Err(NetworkError::Netlink {
                what: "a change".into(),
                message: "refused".into(),
            });
        }
        Ok(s)
    }
}

#[async_trait]
impl Netns for std::sync::Arc<Fake> {
    async fn links(&self) -> Result<Vec<Link>> {
        Ok(self.links.clone())
    }
    async fn addresses(&self, index: u32) -> Result<Vec<Cidr>> {
        Ok(if index == 2 {
            vec![cidr("10.88.0.2/16"), cidr("fe80::42:aff:fe58:2/64")]
        } else {
            vec![]
        })
    }
    async fn routes(&self) -> Result<Vec<RouteEntry>> {
        Ok(vec![
            RouteEntry {
                table: RT_TABLE_MAIN,
                protocol: 3,
                kind: RTN_UNICAST,
                gateway: Some("10.88.0.1".parse().unwrap()),
                oif: Some(2),
                ..Default::default()
            },
            RouteEntry {
                table: RT_TABLE_MAIN,
                protocol: RTPROT_KERNEL,
                kind: RTN_UNICAST,
                dest: Some(cidr("10.88.0.0/16")),
                oif: Some(2),
                scope: 253,
                ..Default::default()
            },
        ])
    }
    async fn neighbours(&self) -> Result<Vec<Neighbour>> {
        Ok(vec![
            Neighbour {
                index: 2,
                ip: Some("10.88.0.1".parse().unwrap()),
                mac: vec![2, 0, 0, 0, 0, 1],
                state: NUD_PERMANENT,
            },
            Neighbour {
                index: 2,
                ip: Some("10.88.0.7".parse().unwrap()),
                mac: vec![2, 0, 0, 0, 0, 7],
                state: 0x02,
            },
        ])
    }
    async fn create_tap(&self, _name: &str, _mtu: u32) -> Result<(OwnedFd, u32)> {
        let mut s = self.change()?;
        let index = 100 + s.taps.len() as u32;
        s.taps.insert(index);
        let fd = File::open("/dev/null").unwrap().into();
        Ok((fd, index))
    }
    async fn set_mac(&self, index: u32, mac: &[u8]) -> Result<()> {
        self.change()?.macs.push((index, mac.to_vec()));
        Ok(())
    }
    async fn delete_link(&self, index: u32) -> Result<()> {
        self.state.lock().unwrap().taps.remove(&index);
        Ok(())
    }
    async fn redirect(&self, from: u32, to: u32) -> Result<()> {
        let mut s = self.change()?;
        s.ingress.insert(from);
        s.redirects.push((from, to));
        Ok(())
    }
    async fn remove_ingress(&self, index: u32) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        s.ingress.remove(&index);
        s.redirects.retain(|(f, _)| *f != index);
        Ok(())
    }

    async fn forward_listener(&self) -> Result<std::net::TcpListener> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    }
}

fn pod_links() -> Vec<Link> {
    vec![link(1, "lo", &[0; 6]), link(2, "eth0", &VETH_MAC)]
}

#[tokio::test]
async fn a_veth_gets_a_tap_redirects_both_ways_and_the_guest_its_config() {
    let fake = Arc::new(Fake {
        links: pod_links(),
        ..Default::default()
    });
    let mut net = PodNetwork::attach(Path::new("/ns"), Box::new(fake.clone()))
        .await
        .unwrap();
    {
        let s = fake.state.lock().unwrap();
        assert_eq!(s.taps, BTreeSet::from([100]));
        assert_eq!(s.redirects, vec![(2, 100), (100, 2)]);
    }
    let nics = net.vm_nics();
    assert_eq!(nics.len(), 1);
    assert_eq!(nics[0].mac, "02:42:0a:58:00:02");
    let i = &net.interfaces()[0];
    assert_eq!(
        (i.name.as_str(), i.hw_addr.as_str(), i.mtu),
        ("eth0", "02:42:0a:58:00:02", 1450)
    );
    let addrs: Vec<_> = i
        .addresses
        .iter()
        .map(|a| (a.address.as_str(), a.prefix_len))
        .collect();
    assert_eq!(addrs, vec![("10.88.0.2", 16)], "link-local left out");
    let routes: Vec<_> = net
        .routes()
        .iter()
        .map(|r| (r.dest.as_str(), r.gateway.as_str(), r.device.as_str()))
        .collect();
    assert_eq!(
        routes,
        vec![("default", "10.88.0.1", "eth0")],
        "kernel routes left out"
    );
    let n = net.neighbours();
    assert_eq!(n.len(), 1, "only static entries");
    assert_eq!(
        (
            n[0].ip_address.as_str(),
            n[0].ll_addr.as_str(),
            n[0].device.as_str()
        ),
        ("10.88.0.1", "02:00:00:00:00:01", "eth0")
    );

    net.detach().await.unwrap();
    {
        let s = fake.state.lock().unwrap();
        assert!(s.taps.is_empty() && s.ingress.is_empty() && s.redirects.is_empty());
    }
    net.detach().await.unwrap();
}

const GUEST_MAC: [u8; 6] = [0x02, 0xca, 0xfe, 0, 0, 1];

#[tokio::test]
async fn a_prewired_nic_is_joined_at_start_to_the_interface_added_after_create() {
    // The namespace as CNI left it after Create (the fake lists the links it is given: the
    // prewired tap is named as ours and never taken for the pod's interface).
    let fake = Arc::new(Fake {
        links: pod_links(),
        ..Default::default()
    });
    let mut net = PodNetwork::prewire_in(Path::new("/ns"), Box::new(fake.clone()), None, GUEST_MAC)
        .await
        .unwrap();
    let nics = net.vm_nics();
    assert_eq!(nics.len(), 1);
    assert_eq!(nics[0].mac, "02:ca:fe:00:00:01");
    assert!(
        fake.state.lock().unwrap().redirects.is_empty(),
        "nothing joined before Start"
    );

    assert!(net.adopt().await.unwrap());
    {
        let s = fake.state.lock().unwrap();
        assert_eq!(
            s.macs,
            vec![(2, GUEST_MAC.to_vec())],
            "the veth takes the guest's MAC"
        );
        assert_eq!(s.redirects, vec![(2, 100), (100, 2)]);
    }
    let i = &net.interfaces()[0];
    assert_eq!(
        (i.name.as_str(), i.hw_addr.as_str(), i.mtu),
        ("eth0", "02:ca:fe:00:00:01", 1450)
    );
    assert_eq!(i.addresses[0].address, "10.88.0.2");
    assert_eq!(net.routes()[0].gateway, "10.88.0.1");
    assert!(!net.adopt().await.unwrap(), "once only");

    net.detach().await.unwrap();
    let s = fake.state.lock().unwrap();
    assert!(s.taps.is_empty() && s.ingress.is_empty() && s.redirects.is_empty());
}

#[tokio::test]
async fn a_failed_join_is_undone_and_a_retried_start_joins_afresh() {
    // Changes: 1 the tap, 2 the MAC, 3 and 4 the redirects: the second redirect fails.
    let fake = Arc::new(Fake {
        links: pod_links(),
        fail_at: Some(4),
        ..Default::default()
    });
    let mut net = PodNetwork::prewire_in(Path::new("/ns"), Box::new(fake.clone()), None, GUEST_MAC)
        .await
        .unwrap();
    assert!(net.adopt().await.is_err());
    {
        let s = fake.state.lock().unwrap();
        assert!(
            s.ingress.is_empty() && s.redirects.is_empty(),
            "{:?}",
            s.redirects
        );
    }
    assert!(net.interfaces().is_empty());
    assert!(net.adopt().await.unwrap(), "the retry joins");
    assert_eq!(
        fake.state.lock().unwrap().redirects,
        vec![(2, 100), (100, 2)]
    );
    // The guest could not be configured: undone again, and joined once more on the next try.
    net.unadopt().await;
    assert!(fake.state.lock().unwrap().redirects.is_empty());
    assert!(net.adopt().await.unwrap());
    net.detach().await.unwrap();
    assert!(fake.state.lock().unwrap().taps.is_empty());
}

#[tokio::test]
async fn a_prewired_nic_with_nothing_added_stays_unplugged() {
    let fake = Arc::new(Fake {
        links: vec![link(1, "lo", &[0; 6])],
        ..Default::default()
    });
    let mut net = PodNetwork::prewire_in(Path::new("/ns"), Box::new(fake.clone()), None, GUEST_MAC)
        .await
        .unwrap();
    assert!(!net.adopt().await.unwrap());
    assert!(net.interfaces().is_empty());
    {
        let s = fake.state.lock().unwrap();
        assert!(s.macs.is_empty() && s.redirects.is_empty());
        assert_eq!(s.taps, BTreeSet::from([100]));
    }
    net.detach().await.unwrap();
    assert!(fake.state.lock().unwrap().taps.is_empty());
}

#[tokio::test]
async fn a_failure_half_way_leaves_nothing() {
    for fail_at in 1..=3 {
        let fake = Arc::new(Fake {
            links: pod_links(),
            fail_at: Some(fail_at),
            ..Default::default()
        });
        let err = PodNetwork::attach(Path::new("/ns"), Box::new(fake.clone()))
            .await
            .err()
            .expect("the set-up fails");
        assert!(matches!(err, NetworkError::Netlink { .. }), "{err}");
        let s = fake.state.lock().unwrap();
        assert!(s.taps.is_empty(), "step {fail_at}: taps {:?}", s.taps);
        assert!(
            s.ingress.is_empty(),
            "step {fail_at}: qdiscs {:?}",
            s.ingress
        );
    }
}

#[tokio::test]
async fn a_namespace_with_only_lo_is_refused_by_name() {
    let fake = Arc::new(Fake {
        links: vec![link(1, "lo", &[0; 6])],
        ..Default::default()
    });
    let err = PodNetwork::attach(Path::new("/var/run/netns/empty"), Box::new(fake.clone()))
        .await
        .err()
        .expect("refused");
    assert!(err.is_invalid_argument());
    assert!(err.to_string().contains("/var/run/netns/empty"), "{err}");
    assert_eq!(fake.state.lock().unwrap().changes, 0);
}

#[tokio::test]
async fn a_missing_namespace_is_refused_by_name() {
    let err = PodNetwork::attach_path(Path::new("/nonexistent/netns"))
        .await
        .err()
        .expect("refused");
    assert!(err.is_invalid_argument());
    assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
}

#[test]
fn links_for_the_guest() {
    let links = vec![
        link(3, "eth1", &[2, 0, 0, 0, 0, 3]),
        link(1, "lo", &[0; 6]),
        link(2, "eth0", &VETH_MAC),
        link(4, "tap0_carapace", &[2, 0, 0, 0, 0, 4]),
        link(5, "tunl0", &[0, 0, 0, 0]),
    ];
    let names: Vec<_> = guest_links(&links).into_iter().map(|l| l.name).collect();
    assert_eq!(names, vec!["eth0", "eth1"]);
    assert_eq!(tap_name(0), "tap0_carapace");
    assert!(tap_name(99).len() < libc::IFNAMSIZ);
}

#[test]
fn link_routes_come_before_gateway_routes() {
    let links = vec![link(2, "eth0", &VETH_MAC)];
    let r = |dest: Option<&str>, gw: Option<&str>, table, protocol| RouteEntry {
        table,
        protocol,
        kind: RTN_UNICAST,
        dest: dest.map(cidr),
        gateway: gw.map(|g| g.parse().unwrap()),
        oif: Some(2),
        ..Default::default()
    };
    let routes = routes_for(
        &[
            r(None, Some("10.0.0.1"), RT_TABLE_MAIN, 4),
            r(Some("10.0.0.1/32"), None, RT_TABLE_MAIN, 4),
            r(Some("10.9.0.0/16"), None, 255, 4),
            r(Some("fe80::/64"), None, RT_TABLE_MAIN, 4),
            RouteEntry {
                oif: Some(9),
                ..r(Some("10.8.0.0/16"), None, RT_TABLE_MAIN, 4)
            },
        ],
        &links,
    );
    let got: Vec<_> = routes
        .iter()
        .map(|r| (r.dest.as_str(), r.gateway.as_str()))
        .collect();
    assert_eq!(got, vec![("10.0.0.1/32", ""), ("default", "10.0.0.1")]);
}

#[test]
fn netns_path_and_resolv_conf_come_from_the_spec() {
    let mut spec = Spec::default();
    assert_eq!(
        netns_path(&spec),
        None,
        "the default spec has a new netns, no path"
    );
    let mut linux = spec.linux().clone().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
    ns.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path("/var/run/netns/pod")
            .build()
            .unwrap(),
    );
    linux.set_namespaces(Some(ns));
    spec.set_linux(Some(linux));
    assert_eq!(netns_path(&spec), Some(PathBuf::from("/var/run/netns/pod")));

    assert_eq!(resolv_conf_source(&spec), None);
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/etc/resolv.conf")
            .typ("bind")
            .source("/var/lib/pod/resolv.conf")
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    assert_eq!(
        resolv_conf_source(&spec),
        Some(PathBuf::from("/var/lib/pod/resolv.conf"))
    );
}

#[test]
fn resolv_conf_is_parsed() {
    let mut req = CreateSandboxRequest::default();
    dns_from_resolv_conf(
        "# generated\nnameserver 10.96.0.10\nnameserver  fd00::a \nsearch ns.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\nbogus line\n",
        &mut req,
    );
    assert_eq!(req.dns_servers, vec!["10.96.0.10", "fd00::a"]);
    assert_eq!(
        req.dns_searches,
        vec!["ns.svc.cluster.local", "svc.cluster.local"]
    );
    assert_eq!(req.dns_options, vec!["ndots:5", "edns0"]);
}

#[test]
fn the_host_namespace_is_refused_by_name() {
    let own = Path::new("/proc/self/ns/net");
    // The shim's own namespace under another name (what `--with-ns network:/proc/1/ns/net`
    // gives when the shim runs in the host's).
    let e = refuse_host_namespace(Path::new("/proc/thread-self/ns/net"), own).unwrap_err();
    assert!(matches!(e, NetworkError::HostNamespace(_)), "{e}");
    assert!(e.is_invalid_argument());
    assert!(
        e.to_string().contains("host's own network namespace"),
        "{e}"
    );
    // Another namespace (any other file stands for one here: the check is by identity).
    refuse_host_namespace(Path::new("/proc/self/ns/mnt"), own).unwrap();
    let e = refuse_host_namespace(Path::new("/nonexistent/netns"), own).unwrap_err();
    assert!(matches!(e, NetworkError::Namespace { .. }), "{e}");
}
