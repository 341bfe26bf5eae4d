//! The network configuration's logic without root: requests checked into plans (with the codes
//! a caller gets), and the plans applied to a fake namespace that behaves as the kernel does
//! where the logic relies on it (renames only while down, removing an IPv4 primary removes its
//! secondaries, duplicates refused), recording every change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use carapace_net::{
    check_ifname, cidr, format_mac, parse_cidr, parse_mac, KernelError, NUD_PERMANENT,
};
use rtnetlink::packet_route::route::{RouteProtocol, RouteType};
use ttrpc::Code;

use carapace_tests::agent::{iface, route};

use super::*;

fn code<T: fmt::Debug, E: Into<AgentError>>(r: std::result::Result<T, E>) -> Code {
    r.map_err(Into::into).expect_err("expected an error").code()
}

fn c(s: &str) -> Cidr {
    let (a, p) = s.split_once('/').unwrap();
    cidr(a.parse().unwrap(), p.parse().unwrap()).unwrap()
}

#[test]
fn macs_parse_and_format() {
    assert_eq!(
        parse_mac("m", "02:AB:cd:0:1:ff").unwrap(),
        [2, 0xab, 0xcd, 0, 1, 0xff]
    );
    assert_eq!(
        format_mac(&[2, 0xab, 0xcd, 0, 1, 0xff]),
        "02:ab:cd:00:01:ff"
    );
    for bad in [
        "",
        "02:ab:cd:00:01",
        "02:ab:cd:00:01:ff:00",
        "02:ab:cd:00:01:fg",
        "02:ab:cd:00:01:123",
        "02-ab-cd-00-01-ff",
        "02:ab:cd:00::ff",
    ] {
        assert_eq!(code(parse_mac("m", bad)), Code::INVALID_ARGUMENT, "{bad}");
    }
}

#[test]
fn cidrs_check_prefix_and_host_bits() {
    let c = parse_cidr("d", "10.1.0.0/16").unwrap();
    assert_eq!(c.to_string(), "10.1.0.0/16");
    assert_eq!(parse_cidr("d", "10.1.2.3").unwrap().prefix, 32);
    assert_eq!(parse_cidr("d", "fd00::/8").unwrap().prefix, 8);
    assert_eq!(parse_cidr("d", "0.0.0.0/0").unwrap().prefix, 0);
    assert_eq!(parse_cidr("d", "fd00::1").unwrap().prefix, 128);
    for bad in [
        "10.1.0.0/33",
        "fd00::/129",
        "10.1.2.3/24",
        "10.1.0.0/",
        "10.1.0.0/x",
        "10.1.0/24",
        "nope",
        "/24",
    ] {
        assert_eq!(code(parse_cidr("d", bad)), Code::INVALID_ARGUMENT, "{bad}");
    }
    assert_eq!(
        code(cidr("10.0.0.1".parse().unwrap(), 33)),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code(cidr("10.0.0.1".parse().unwrap(), u32::MAX)),
        Code::INVALID_ARGUMENT
    );
    assert!(cidr("fd00::1".parse().unwrap(), 128).is_ok());
}

#[test]
fn interface_names_follow_the_kernel() {
    assert!(check_ifname("n", "eth0").is_ok());
    assert!(check_ifname("n", "abcdefghijklmno").is_ok());
    for bad in ["", ".", "..", "a/b", "a b", "a:b", "abcdefghijklmnop"] {
        assert_eq!(
            code(check_ifname("n", bad)),
            Code::INVALID_ARGUMENT,
            "{bad}"
        );
    }
}

#[test]
fn interface_requests_validate() {
    let p = plan_interface(&iface(
        "eth1",
        "02:00:00:00:00:01",
        1400,
        &[("10.0.0.2", 24), ("fd00::2", 64)],
    ))
    .unwrap();
    assert_eq!(p.select, LinkSelector::Mac([2, 0, 0, 0, 0, 1]));
    assert_eq!(p.name.as_deref(), Some("eth1"));
    assert_eq!(p.mtu, Some(1400));
    assert_eq!(p.addresses.len(), 2);
    let p = plan_interface(&iface("eth0", "", 0, &[])).unwrap();
    assert_eq!(p.select, LinkSelector::Name("eth0".into()));
    assert_eq!(p.mtu, None);
    let bad = [
        iface("", "", 0, &[]),
        iface("eth0", "zz", 0, &[]),
        iface("eth0/", "", 0, &[]),
        iface("eth0", "", 10, &[]),
        iface("eth0", "", 0, &[("10.0.0.300", 24)]),
        iface("eth0", "", 0, &[("10.0.0.2", 33)]),
        iface("eth0", "", 0, &[("fd00::2", 129)]),
        iface("eth0", "", 0, &[("10.0.0.2", 24), ("10.0.0.2", 16)]),
    ];
    for i in bad {
        assert_eq!(code(plan_interface(&i)), Code::INVALID_ARGUMENT, "{i:?}");
    }
}

#[test]
fn routes_validate_and_order_gateways_last() {
    let plans = plan_routes(&[
        route("default", "10.0.0.1", "eth0"),
        route("10.0.0.0/24", "", "eth0"),
        route("", "fd00::1", "eth0"),
    ])
    .unwrap();
    assert_eq!(plans[0].dest.unwrap().to_string(), "10.0.0.0/24");
    assert_eq!(plans[1].dest, None);
    assert!(!plans[1].ipv6);
    assert!(plans[2].ipv6);
    let bad = [
        route("10.0.0.0/33", "", "eth0"),
        route("10.0.0.1/24", "", "eth0"),
        route("default", "10.0.0.x", "eth0"),
        route("default", "10.0.0.1", ""),
        route("default", "fd00::1", "eth0").tap(|r| r.source = "10.0.0.2".into()),
        route("fd00::/64", "10.0.0.1", "eth0"),
        route("default", "10.0.0.1", "eth0").tap(|r| r.scope = 256),
    ];
    for r in bad {
        assert_eq!(
            code(plan_routes(std::slice::from_ref(&r))),
            Code::INVALID_ARGUMENT,
            "{r:?}"
        );
    }
}

trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
impl Tap for Route {}

#[test]
fn neighbors_validate() {
    let n = |ip: &str, mac: &str, dev: &str, state: u32| ArpNeighbor {
        ip_address: ip.into(),
        ll_addr: mac.into(),
        device: dev.into(),
        state,
        ..Default::default()
    };
    let p = plan_neighbors(&[n("10.0.0.9", "02:00:00:00:00:09", "eth0", 0)]).unwrap();
    assert_eq!(p[0].state, NUD_PERMANENT);
    assert_eq!(p[0].mac, [2, 0, 0, 0, 0, 9]);
    let p = plan_neighbors(&[n("fd00::9", "02:00:00:00:00:09", "eth0", 0x04)]).unwrap();
    assert_eq!(p[0].state, 0x04);
    for bad in [
        n("10.0.0", "02:00:00:00:00:09", "eth0", 0),
        n("10.0.0.9", "02:00:00:00:00", "eth0", 0),
        n("10.0.0.9", "02:00:00:00:00:09", "", 0),
        n("10.0.0.9", "02:00:00:00:00:09", "eth0", 0x81),
        n("10.0.0.9", "02:00:00:00:00:09", "eth0", 0x100),
    ] {
        assert_eq!(code(plan_neighbors(&[bad])), Code::INVALID_ARGUMENT);
    }
}

#[test]
fn links_are_found_by_mac_or_name() {
    let links = vec![
        Link {
            index: 1,
            name: "lo".into(),
            mac: vec![0; 6],
            mtu: 65536,
            up: true,
            loopback: true,
        },
        Link {
            index: 7,
            name: "eth0".into(),
            mac: vec![2, 0, 0, 0, 0, 1],
            mtu: 1500,
            up: false,
            loopback: false,
        },
    ];
    let by_mac = LinkSelector::Mac([2, 0, 0, 0, 0, 1]);
    assert_eq!(find_link(&links, &by_mac).unwrap().index, 7);
    assert_eq!(link_index(&links, "lo").unwrap(), 1);
    assert_eq!(
        code(find_link(&links, &LinkSelector::Mac([2, 0, 0, 0, 0, 2]))),
        Code::NOT_FOUND
    );
    assert_eq!(code(link_index(&links, "eth9")), Code::NOT_FOUND);
}

#[test]
fn only_non_kernel_main_routes_of_the_devices_are_replaced() {
    let devices: HashSet<u32> = [7].into();
    let base = RouteEntry {
        table: RT_TABLE_MAIN,
        protocol: u8::from(RouteProtocol::Static),
        kind: u8::from(RouteType::Unicast),
        oif: Some(7),
        ..Default::default()
    };
    assert!(is_replaced(&base, &devices));
    let kernel = RouteEntry {
        protocol: u8::from(RouteProtocol::Kernel),
        ..base.clone()
    };
    assert!(!is_replaced(&kernel, &devices));
    let other_dev = RouteEntry {
        oif: Some(8),
        ..base.clone()
    };
    assert!(!is_replaced(&other_dev, &devices));
    let local_table = RouteEntry {
        table: 255,
        ..base.clone()
    };
    assert!(!is_replaced(&local_table, &devices));
}

#[test]
fn kernel_routes_convert_to_the_protocol() {
    let links = vec![Link {
        index: 7,
        name: "eth0".into(),
        ..Default::default()
    }];
    let e = RouteEntry {
        dest: Some(Cidr {
            addr: "10.1.0.0".parse().unwrap(),
            prefix: 24,
        }),
        gateway: Some("10.0.0.1".parse().unwrap()),
        oif: Some(7),
        scope: 0,
        ..Default::default()
    };
    let r = to_proto_route(&e, &links);
    assert_eq!(
        (r.dest.as_str(), r.gateway.as_str(), r.device.as_str()),
        ("10.1.0.0/24", "10.0.0.1", "eth0")
    );
    let d = to_proto_route(&RouteEntry::default(), &links);
    assert_eq!((d.dest.as_str(), d.device.as_str()), ("default", ""));
}

/// One change the logic asked of the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    SetUp(u32, bool),
    Configure(u32, Option<String>, Option<u32>),
    AddAddress(u32, Cidr),
    DeleteAddress(Option<Cidr>),
    AddRoute(RouteEntry),
    DeleteRoute(RouteEntry),
    AddNeighbour(u32, NeighborPlan),
}

/// A network namespace in memory.
#[derive(Default)]
struct Fake {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    links: Vec<Link>,
    addresses: BTreeMap<u32, Vec<Cidr>>,
    routes: Vec<RouteEntry>,
    neighbours: Vec<(u32, NeighborPlan)>,
    changes: Vec<Change>,
    /// Changes refused, by the name of the method, with this errno (after being recorded).
    refuse: HashMap<&'static str, i32>,
    /// Listing links fails with something that is no errno.
    broken_links: bool,
}

impl FakeState {
    fn link(&mut self, index: u32) -> KernelResult<&mut Link> {
        self.links
            .iter_mut()
            .find(|l| l.index == index)
            .ok_or(KernelError::Errno(libc::ENODEV))
    }

    fn change(&mut self, method: &'static str, c: Change) -> KernelResult<()> {
        self.changes.push(c);
        match self.refuse.get(method) {
            Some(&errno) => Err(KernelError::Errno(errno)),
            None => Ok(()),
        }
    }
}

impl Fake {
    fn new(links: Vec<Link>) -> Self {
        Self {
            state: Mutex::new(FakeState {
                links,
                ..Default::default()
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut FakeState)) -> Self {
        f(&mut self.state.lock().unwrap());
        self
    }
}

fn listed<T, M: Default>(value: T) -> Listed<T, M> {
    Listed {
        value,
        message: M::default(),
    }
}

#[async_trait]
impl Netns for Fake {
    async fn links(&self) -> KernelResult<Vec<Link>> {
        let s = self.state.lock().unwrap();
        if s.broken_links {
            return Err(KernelError::Netlink(rtnetlink::Error::RequestFailed));
        }
        Ok(s.links.clone())
    }

    async fn set_up(&self, index: u32, up: bool) -> KernelResult<()> {
        let mut s = self.state.lock().unwrap();
        s.change("set_up", Change::SetUp(index, up))?;
        s.link(index)?.up = up;
        Ok(())
    }

    async fn configure(
        &self,
        index: u32,
        name: Option<&str>,
        mtu: Option<u32>,
    ) -> KernelResult<()> {
        let mut s = self.state.lock().unwrap();
        let change = Change::Configure(index, name.map(String::from), mtu);
        s.change("configure", change)?;
        let link = s.link(index)?;
        if name.is_some() && link.up {
            return Err(KernelError::Errno(libc::EBUSY));
        }
        if let Some(n) = name {
            link.name = n.to_string();
        }
        if let Some(m) = mtu {
            link.mtu = m;
        }
        Ok(())
    }

    async fn addresses(&self, index: u32) -> KernelResult<Vec<ListedAddress>> {
        let s = self.state.lock().unwrap();
        let present = s.addresses.get(&index).cloned().unwrap_or_default();
        Ok(present.into_iter().map(|c| listed(Some(c))).collect())
    }

    async fn add_address(&self, index: u32, address: Cidr) -> KernelResult<()> {
        let mut s = self.state.lock().unwrap();
        s.change("add_address", Change::AddAddress(index, address))?;
        let present = s.addresses.entry(index).or_default();
        if present.contains(&address) {
            return Err(KernelError::Errno(libc::EEXIST));
        }
        present.push(address);
        Ok(())
    }

    async fn delete_address(&self, address: ListedAddress) -> KernelResult<()> {
        let mut s = self.state.lock().unwrap();
        s.change("delete_address", Change::DeleteAddress(address.value))?;
        let gone = address.value.expect("the fake lists only addresses");
        let index = s
            .addresses
            .iter()
            .find(|(_, v)| v.contains(&gone))
            .map(|(i, _)| *i);
        let Some(index) = index else {
            return Err(KernelError::Errno(libc::EADDRNOTAVAIL));
        };
        let present = s.addresses.get_mut(&index).unwrap();
        let first_of_subnet = present
            .iter()
            .find(|p| p.prefix == gone.prefix && p.network() == gone.network())
            == Some(&gone);
        present.retain(|p| {
            // Removing an IPv4 primary (the first of its subnet) removes its secondaries.
            let secondary = first_of_subnet
                && gone.addr.is_ipv4()
                && p.prefix == gone.prefix
                && p.network() == gone.network();
            *p != gone && !secondary
        });
        Ok(())
    }

    async fn routes(&self) -> KernelResult<Vec<ListedRoute>> {
        let s = self.state.lock().unwrap();
        Ok(s.routes.iter().cloned().map(listed).collect())
    }

    async fn add_route(&self, route: RouteMessage) -> KernelResult<()> {
        let mut s = self.state.lock().unwrap();
        let e = RouteEntry::from(&route);
        s.change("add_route", Change::AddRoute(e.clone()))?;
        let same = |r: &RouteEntry| (r.table, r.dest) == (e.table, e.dest);
        if s.routes.iter().any(same) {
            return Err(KernelError::Errno(libc::EEXIST));
        }
        s.routes.push(e);
        Ok(())
    }

    async fn delete_route(&self, route: ListedRoute) -> KernelResult<()> {
        let mut s = self.state.lock().unwrap();
        s.change("delete_route", Change::DeleteRoute(route.value.clone()))?;
        let before = s.routes.len();
        s.routes.retain(|r| *r != route.value);
        if s.routes.len() == before {
            return Err(KernelError::Errno(libc::ESRCH));
        }
        Ok(())
    }

    async fn add_neighbour(&self, index: u32, n: &NeighborPlan) -> KernelResult<()> {
        let mut s = self.state.lock().unwrap();
        s.change("add_neighbour", Change::AddNeighbour(index, n.clone()))?;
        s.link(index)?;
        s.neighbours.retain(|(i, m)| (*i, m.ip) != (index, n.ip));
        s.neighbours.push((index, n.clone()));
        Ok(())
    }
}

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// `lo` (1, up) and the VM's NIC `v0` (2, up, with `MAC`), as the guest kernel names them.
fn guest_links() -> Vec<Link> {
    vec![
        Link {
            index: 1,
            name: "lo".into(),
            mac: vec![0; 6],
            mtu: 65536,
            up: true,
            loopback: true,
        },
        Link {
            index: 2,
            name: "v0".into(),
            mac: MAC.to_vec(),
            mtu: 1500,
            up: true,
            loopback: false,
        },
    ]
}

fn changes(net: &Network<Fake>) -> Vec<Change> {
    net.ns.state.lock().unwrap().changes.clone()
}

fn addresses_of(net: &Network<Fake>, index: u32) -> Vec<String> {
    let s = net.ns.state.lock().unwrap();
    let mut v: Vec<String> = s.addresses[&index].iter().map(Cidr::to_string).collect();
    v.sort();
    v
}

/// The code and whole message a caller of the RPC gets.
fn answer<T: fmt::Debug>(r: Result<T>) -> (Code, String) {
    let e = r.expect_err("expected an error");
    (e.code(), e.message())
}

#[tokio::test]
async fn update_interface_renames_the_link_found_by_mac_while_down_and_sets_it_up() {
    let fake = Fake::new(guest_links()).with(|s| {
        s.addresses
            .insert(2, vec![c("fe80::1/64"), c("192.168.9.5/24")]);
    });
    let net = Network::new(fake);
    let plan = plan_interface(&iface(
        "eth0",
        "02:00:00:00:00:01",
        1400,
        &[("10.0.0.2", 24), ("fd00::2", 64)],
    ))
    .unwrap();
    let got = net.update_interface(&plan).await.unwrap();
    assert_eq!(
        changes(&net),
        [
            Change::SetUp(2, false),
            Change::Configure(2, Some("eth0".into()), Some(1400)),
            Change::DeleteAddress(Some(c("192.168.9.5/24"))),
            Change::AddAddress(2, c("10.0.0.2/24")),
            Change::AddAddress(2, c("fd00::2/64")),
            Change::SetUp(2, true),
        ],
        "the kernel's link-local address stays"
    );
    assert_eq!(
        addresses_of(&net, 2),
        ["10.0.0.2/24", "fd00::2/64", "fe80::1/64"]
    );
    // The answer is the link as it now is, its link-local address left out.
    assert_eq!(
        (got.name.as_str(), got.hw_addr.as_str(), got.mtu),
        ("eth0", "02:00:00:00:00:01", 1400)
    );
    let reported: Vec<_> = got
        .addresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefix_len))
        .collect();
    assert_eq!(reported, ["10.0.0.2/24", "fd00::2/64"]);

    // Again, by name: nothing to rename, addresses already there are not added twice.
    let again = plan_interface(&iface("eth0", "", 0, &[("10.0.0.2", 24)])).unwrap();
    net.update_interface(&again).await.unwrap();
    assert_eq!(
        changes(&net)[6..],
        [
            Change::DeleteAddress(Some(c("fd00::2/64"))),
            Change::SetUp(2, true),
        ]
    );
}

#[tokio::test]
async fn a_rename_onto_a_taken_name_or_a_missing_link_changes_nothing() {
    let net = Network::new(Fake::new(guest_links()));
    let onto_lo = plan_interface(&iface("lo", "02:00:00:00:00:01", 0, &[])).unwrap();
    assert_eq!(
        answer(net.update_interface(&onto_lo).await),
        (
            Code::ALREADY_EXISTS,
            "interface \"lo\" already exists".into()
        )
    );
    let missing = plan_interface(&iface("eth0", "02:00:00:00:00:99", 0, &[])).unwrap();
    assert_eq!(
        answer(net.update_interface(&missing).await),
        (
            Code::NOT_FOUND,
            "interface with MAC 02:00:00:00:00:99 not found".into()
        )
    );
    assert_eq!(changes(&net), []);
}

#[tokio::test]
async fn a_refused_configuration_brings_a_renamed_link_back_up() {
    let fake = Fake::new(guest_links()).with(|s| {
        s.refuse.insert("configure", libc::EINVAL);
    });
    let net = Network::new(fake);
    let plan = plan_interface(&iface("eth0", "02:00:00:00:00:01", 70000, &[])).unwrap();
    assert_eq!(
        answer(net.update_interface(&plan).await),
        (
            Code::INVALID_ARGUMENT,
            "invalid argument: configuring v0: Invalid argument".into()
        )
    );
    assert_eq!(
        changes(&net),
        [
            Change::SetUp(2, false),
            Change::Configure(2, Some("eth0".into()), Some(70000)),
            Change::SetUp(2, true),
        ]
    );
    assert!(net.ns.state.lock().unwrap().links[1].up);

    // A link that was down stays down; without a rename it is never taken down.
    let fake = Fake::new(guest_links()).with(|s| {
        s.links[1].up = false;
        s.refuse.insert("configure", libc::EINVAL);
    });
    let net = Network::new(fake);
    assert!(net.update_interface(&plan).await.is_err());
    assert_eq!(
        changes(&net),
        [
            Change::SetUp(2, false),
            Change::Configure(2, Some("eth0".into()), Some(70000)),
        ]
    );
    let mtu_only = plan_interface(&iface("v0", "", 9000, &[])).unwrap();
    let net = Network::new(Fake::new(guest_links()).with(|s| {
        s.refuse.insert("configure", libc::EINVAL);
    }));
    assert!(net.update_interface(&mtu_only).await.is_err());
    assert_eq!(changes(&net), [Change::Configure(2, None, Some(9000))]);
}

#[tokio::test]
async fn secondaries_gone_with_their_primary_are_no_error_but_other_refusals_are() {
    let start = |s: &mut FakeState| {
        s.addresses
            .insert(2, vec![c("192.168.9.5/24"), c("192.168.9.6/24")]);
    };
    let net = Network::new(Fake::new(guest_links()).with(start));
    let plan = plan_interface(&iface("v0", "", 0, &[("10.0.0.2", 24)])).unwrap();
    net.update_interface(&plan).await.unwrap();
    assert_eq!(addresses_of(&net, 2), ["10.0.0.2/24"]);
    assert_eq!(
        changes(&net)[..2],
        [
            Change::DeleteAddress(Some(c("192.168.9.5/24"))),
            Change::DeleteAddress(Some(c("192.168.9.6/24"))),
        ],
        "the secondary was tried, and found gone"
    );

    let net = Network::new(Fake::new(guest_links()).with(|s| {
        start(s);
        s.refuse.insert("delete_address", libc::EPERM);
    }));
    assert_eq!(
        answer(net.update_interface(&plan).await),
        (
            Code::PERMISSION_DENIED,
            "permission denied: removing Some(Cidr { addr: 192.168.9.5, prefix: 24 }) from v0: \
             Operation not permitted"
                .into()
        )
    );
    let net = Network::new(Fake::new(guest_links()).with(|s| {
        s.refuse.insert("add_address", libc::EADDRNOTAVAIL);
    }));
    assert_eq!(
        answer(net.update_interface(&plan).await),
        (
            Code::FAILED_PRECONDITION,
            "failed precondition: adding 10.0.0.2/24 to v0: Cannot assign requested address".into()
        )
    );
}

fn static_route(dest: Option<&str>, gateway: Option<&str>, oif: u32) -> RouteEntry {
    RouteEntry {
        table: RT_TABLE_MAIN,
        protocol: u8::from(RouteProtocol::Static),
        kind: RTN_UNICAST,
        dest: dest.map(c),
        gateway: gateway.map(|g| g.parse().unwrap()),
        oif: Some(oif),
        ..Default::default()
    }
}

#[tokio::test]
async fn update_routes_replaces_the_devices_routes_and_adds_link_routes_first() {
    let links = {
        let mut l = guest_links();
        l.push(Link {
            index: 3,
            name: "eth1".into(),
            ..Default::default()
        });
        l
    };
    let connected = RouteEntry {
        protocol: RTPROT_KERNEL,
        scope: 253,
        ..static_route(Some("10.0.0.0/24"), None, 2)
    };
    let old = static_route(Some("192.168.9.0/24"), None, 2);
    let other_device = static_route(Some("172.16.0.0/16"), None, 3);
    let local_table = RouteEntry {
        table: 255,
        kind: 2,
        ..static_route(Some("10.0.0.2/32"), None, 2)
    };
    let routes = vec![
        connected.clone(),
        old.clone(),
        other_device.clone(),
        local_table.clone(),
    ];
    let net = Network::new(Fake::new(links).with(|s| s.routes = routes));
    let plans = plan_routes(&[
        route("default", "10.0.0.1", "v0"),
        route("10.1.0.0/24", "", "v0"),
    ])
    .unwrap();
    let reported = net.update_routes(&plans).await.unwrap();
    let route_changes: Vec<_> = changes(&net)
        .into_iter()
        .map(|ch| match ch {
            Change::AddRoute(e) => (
                "add",
                e.dest.map(|d| d.to_string()),
                e.gateway,
                e.oif,
                e.table,
            ),
            Change::DeleteRoute(e) => (
                "del",
                e.dest.map(|d| d.to_string()),
                e.gateway,
                e.oif,
                e.table,
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        route_changes,
        [
            (
                "del",
                Some("192.168.9.0/24".into()),
                None,
                Some(2),
                RT_TABLE_MAIN
            ),
            (
                "add",
                Some("10.1.0.0/24".into()),
                None,
                Some(2),
                RT_TABLE_MAIN
            ),
            (
                "add",
                None,
                Some("10.0.0.1".parse().unwrap()),
                Some(2),
                RT_TABLE_MAIN
            ),
        ],
        "only the static route of v0 goes; the link route is added before the gateway's"
    );
    // The answer is the main table's unicast routes, every device's, by name.
    let got: Vec<_> = reported
        .iter()
        .map(|r| (r.dest.as_str(), r.gateway.as_str(), r.device.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("10.0.0.0/24", "", "v0"),
            ("172.16.0.0/16", "", "eth1"),
            ("10.1.0.0/24", "", "v0"),
            ("default", "10.0.0.1", "v0"),
        ]
    );
}

#[tokio::test]
async fn routes_refused_or_on_a_missing_device_say_what() {
    let net = Network::new(Fake::new(guest_links()));
    let plans = plan_routes(&[route("10.3.0.0/24", "", "eth9")]).unwrap();
    assert_eq!(
        answer(net.update_routes(&plans).await),
        (Code::NOT_FOUND, "interface \"eth9\" not found".into())
    );
    assert_eq!(changes(&net), []);

    // A route already there: the kernel's EEXIST.
    let net = Network::new(Fake::new(guest_links()).with(|s| {
        s.routes = vec![RouteEntry {
            protocol: RTPROT_KERNEL,
            ..static_route(Some("10.0.0.0/24"), None, 2)
        }];
    }));
    let plans = plan_routes(&[route("10.0.0.0/24", "", "v0")]).unwrap();
    assert_eq!(
        answer(net.update_routes(&plans).await),
        (
            Code::ALREADY_EXISTS,
            "what adding the route to 10.0.0.0/24 on v0 adds already exists".into()
        )
    );

    // A route gone between listing and removing is no failure; another refusal is.
    let gone = static_route(Some("192.168.9.0/24"), None, 2);
    let net = Network::new(Fake::new(guest_links()).with(|s| {
        s.routes = vec![gone.clone()];
        s.refuse.insert("delete_route", libc::ESRCH);
    }));
    let plans = plan_routes(&[route("default", "10.0.0.1", "v0")]).unwrap();
    net.update_routes(&plans).await.unwrap();
    let net = Network::new(Fake::new(guest_links()).with(|s| {
        s.routes = vec![gone.clone()];
        s.refuse.insert("delete_route", libc::EPERM);
    }));
    assert_eq!(
        answer(net.update_routes(&plans).await),
        (
            Code::PERMISSION_DENIED,
            "permission denied: removing a route: Operation not permitted".into()
        )
    );
    assert_eq!(changes(&net), [Change::DeleteRoute(gone)]);
}

#[tokio::test]
async fn neighbours_go_on_their_links_and_a_missing_device_adds_none() {
    let net = Network::new(Fake::new(guest_links()));
    let n = |ip: &str, mac: &str, dev: &str| ArpNeighbor {
        ip_address: ip.into(),
        ll_addr: mac.into(),
        device: dev.into(),
        ..Default::default()
    };
    let plans = plan_neighbors(&[
        n("10.0.0.9", "02:00:00:00:00:09", "v0"),
        n("10.0.0.9", "02:00:00:00:00:19", "v0"),
    ])
    .unwrap();
    net.add_neighbors(&plans).await.unwrap();
    {
        let s = net.ns.state.lock().unwrap();
        assert_eq!(s.neighbours.len(), 1, "replaced, not added twice");
        let (index, entry) = &s.neighbours[0];
        assert_eq!(
            (*index, entry.mac, entry.state),
            (2, [2, 0, 0, 0, 0, 0x19], NUD_PERMANENT)
        );
    }
    let plans = plan_neighbors(&[
        n("10.0.0.10", "02:00:00:00:00:0a", "v0"),
        n("10.0.0.11", "02:00:00:00:00:0b", "eth9"),
    ])
    .unwrap();
    assert_eq!(
        answer(net.add_neighbors(&plans).await),
        (Code::NOT_FOUND, "interface \"eth9\" not found".into())
    );
    assert_eq!(
        changes(&net).len(),
        2,
        "every device is found before any change"
    );
}

#[tokio::test]
async fn link_up_finds_the_link_by_name() {
    let net = Network::new(Fake::new(guest_links()).with(|s| s.links[0].up = false));
    net.link_up("lo").await.unwrap();
    assert_eq!(changes(&net), [Change::SetUp(1, true)]);
    assert!(net.ns.state.lock().unwrap().links[0].up);
    assert_eq!(
        answer(net.link_up("nope0").await),
        (Code::NOT_FOUND, "interface \"nope0\" not found".into())
    );
    let net = Network::new(Fake::new(guest_links()).with(|s| s.broken_links = true));
    assert_eq!(
        answer(net.link_up("lo").await),
        (
            Code::INTERNAL,
            "listing links: A netlink request failed".into()
        )
    );
}
