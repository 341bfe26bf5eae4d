//! Host-level tests of the agent's network RPCs: the real binary, run as root in fresh mount
//! and network namespaces and listening on a Unix socket, configures a veth pair created in its
//! namespace; `ip -j` run there through nsenter checks what the kernel now holds. Skipped
//! unless root.

use std::path::PathBuf;
use std::process::{Child, Command};

use carapace_protocol::agent::*;
use carapace_protocol::agent_ttrpc::AgentServiceClient;
use carapace_protocol::types::{ArpNeighbor, Interface, Route};
use carapace_tests::agent::{iface, route};
use serde_json::Value;

mod common;
use ttrpc::context;
use ttrpc::Code;

fn ctx() -> context::Context {
    context::with_timeout(30 * 1_000_000_000)
}

/// One agent in its own network namespace.
struct Agent {
    child: Child,
    dir: PathBuf,
    client: AgentServiceClient,
}

impl Agent {
    async fn start(name: &str) -> Option<Self> {
        if !common::is_root() {
            eprintln!("skipped: host tests of the agent need root");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("carapace-net-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cgroup_parent = format!("/carapace-test-net-{name}-{}", std::process::id());
        let (child, client) =
            common::start_agent(&dir, &cgroup_parent, libc::CLONE_NEWNS | libc::CLONE_NEWNET).await;
        Some(Self { child, dir, client })
    }

    /// Runs `ip ARGS` in the agent's network namespace and returns its stdout.
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.child.id().to_string())
            .arg("-n")
            .arg("ip")
            .args(args)
            .output()
            .expect("running nsenter ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j ARGS`, parsed.
    fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ip(&all)).expect("ip -j output")
    }

    /// A veth pair `name` (with MAC `mac`) and its peer `name`-p, the peer up so `name` has
    /// carrier once up.
    fn veth(&self, name: &str, mac: &str) {
        let peer = format!("{name}p");
        self.ip(&[
            "link", "add", name, "address", mac, "type", "veth", "peer", "name", &peer,
        ]);
        self.ip(&["link", "set", &peer, "up"]);
    }

    async fn update_interface(&self, i: Interface) -> ttrpc::Result<Interface> {
        let req = UpdateInterfaceRequest {
            interface: Some(i).into(),
            ..Default::default()
        };
        self.client.update_interface(ctx(), &req).await
    }

    async fn update_routes(&self, routes: Vec<Route>) -> ttrpc::Result<Vec<Route>> {
        let req = UpdateRoutesRequest {
            routes,
            ..Default::default()
        };
        self.client
            .update_routes(ctx(), &req)
            .await
            .map(|r| r.routes)
    }

    async fn add_neighbors(&self, neighbors: Vec<ArpNeighbor>) -> ttrpc::Result<()> {
        let req = AddArpNeighborsRequest {
            neighbors,
            ..Default::default()
        };
        self.client.add_arp_neighbors(ctx(), &req).await.map(|_| ())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The network namespace, and the links in it, go with the agent.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn code<T>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        Err(e) => panic!("not an RPC status: {e}"),
        Ok(_) => Code::OK,
    }
}

/// The `local/prefixlen` addresses of `ip -j addr show dev DEV`, IPv6 link-local left out.
fn addresses(link: &Value) -> Vec<String> {
    let mut v: Vec<String> = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    v.sort();
    v
}

const MAC: &str = "02:00:00:00:00:01";

#[tokio::test]
async fn update_interface_sets_mtu_name_addresses_and_up() {
    let Some(a) = Agent::start("iface").await else {
        return;
    };
    a.veth("v0", MAC);
    let got = a
        .update_interface(iface(
            "eth0",
            MAC,
            1400,
            &[("10.0.0.2", 24), ("fd00::2", 64)],
        ))
        .await
        .expect("UpdateInterface");
    assert_eq!(
        (got.name.as_str(), got.hw_addr.as_str(), got.mtu),
        ("eth0", MAC, 1400)
    );
    let mut reported: Vec<String> = got
        .addresses
        .iter()
        .map(|x| format!("{}/{}", x.address, x.prefix_len))
        .collect();
    reported.sort();
    assert_eq!(reported, ["10.0.0.2/24", "fd00::2/64"]);

    let link = &a.ip_json(&["addr", "show", "dev", "eth0"])[0];
    assert_eq!(link["mtu"], 1400);
    assert_eq!(link["address"], MAC);
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "eth0 is not up: {link}"
    );
    assert_eq!(addresses(link), ["10.0.0.2/24", "fd00::2/64"]);
    assert!(
        !a.ip(&["-o", "link", "show"]).contains(" v0:"),
        "v0 was not renamed"
    );

    // Found by name now (no MAC): the addresses are replaced, the MTU left alone.
    let got = a
        .update_interface(iface("eth0", "", 0, &[("10.0.1.5", 16)]))
        .await
        .expect("UpdateInterface by name");
    assert_eq!((got.name.as_str(), got.mtu), ("eth0", 1400));
    let link = &a.ip_json(&["addr", "show", "dev", "eth0"])[0];
    assert_eq!(addresses(link), ["10.0.1.5/16"]);

    // Bad requests and missing links get precise codes and change nothing.
    let bad = [
        (
            iface("eth0", "02:00:00:00:00", 0, &[]),
            Code::INVALID_ARGUMENT,
        ),
        (
            iface("eth0", "", 0, &[("10.0.0.300", 24)]),
            Code::INVALID_ARGUMENT,
        ),
        (
            iface("eth0", "", 0, &[("10.0.0.2", 33)]),
            Code::INVALID_ARGUMENT,
        ),
        (
            iface("eth0", "", 0, &[("fd00::2", 129)]),
            Code::INVALID_ARGUMENT,
        ),
        (iface("eth0", "", 0, &[("", 24)]), Code::INVALID_ARGUMENT),
        (iface("bad name", "", 0, &[]), Code::INVALID_ARGUMENT),
        (iface("eth9", "", 0, &[]), Code::NOT_FOUND),
        (iface("x", "02:00:00:00:00:99", 0, &[]), Code::NOT_FOUND),
        // Renaming onto the peer's name.
        (iface("v0p", MAC, 0, &[]), Code::ALREADY_EXISTS),
        // Above the veth's maximum MTU: the kernel refuses (with a rename, too).
        (iface("eth0", "", 70000, &[]), Code::INVALID_ARGUMENT),
        (iface("eth1", MAC, 70000, &[]), Code::INVALID_ARGUMENT),
    ];
    for (i, want) in bad {
        assert_eq!(code(a.update_interface(i.clone()).await), want, "{i:?}");
    }
    let link = &a.ip_json(&["addr", "show", "dev", "eth0"])[0];
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "a refused request left eth0 down: {link}"
    );
    assert_eq!(
        (link["mtu"].as_u64(), addresses(link)),
        (Some(1400), vec!["10.0.1.5/16".to_string()])
    );
}

#[tokio::test]
async fn update_routes_replaces_the_devices_routes() {
    let Some(a) = Agent::start("routes").await else {
        return;
    };
    a.veth("eth0", MAC);
    a.update_interface(iface("eth0", MAC, 0, &[("10.0.0.2", 24), ("fd00::2", 64)]))
        .await
        .expect("UpdateInterface");
    // A route from before, which UpdateRoutes replaces.
    a.ip(&["route", "add", "192.168.9.0/24", "dev", "eth0"]);

    let routes = vec![
        route("default", "10.0.0.1", "eth0"),
        route("10.1.0.0/24", "10.0.0.254", "eth0"),
        Route {
            source: "10.0.0.2".into(),
            scope: 253,
            ..route("10.2.0.0/24", "", "eth0")
        },
        route("", "fd00::1", "eth0"),
    ];
    let reported = a.update_routes(routes).await.expect("UpdateRoutes");
    let has = |dest: &str, gw: &str| {
        reported
            .iter()
            .any(|r| r.dest == dest && r.gateway == gw && r.device == "eth0")
    };
    assert!(has("default", "10.0.0.1"), "{reported:?}");
    assert!(has("10.1.0.0/24", "10.0.0.254"), "{reported:?}");
    assert!(has("10.2.0.0/24", ""), "{reported:?}");
    assert!(has("default", "fd00::1"), "{reported:?}");
    assert!(
        has("10.0.0.0/24", ""),
        "the connected route is missing: {reported:?}"
    );
    assert!(
        !reported.iter().any(|r| r.dest == "192.168.9.0/24"),
        "{reported:?}"
    );

    let v4 = a.ip_json(&["route", "show"]);
    let find = |dst: &str| v4.iter().find(|r| r["dst"] == dst).cloned();
    let default = find("default").expect("no IPv4 default route");
    assert_eq!(
        (&default["gateway"], &default["dev"]),
        (&"10.0.0.1".into(), &"eth0".into())
    );
    let r = find("10.1.0.0/24").expect("no route to 10.1.0.0/24");
    assert_eq!(r["gateway"], "10.0.0.254");
    let r = find("10.2.0.0/24").expect("no route to 10.2.0.0/24");
    assert_eq!(
        (&r["scope"], &r["prefsrc"]),
        (&"link".into(), &"10.0.0.2".into())
    );
    let r = find("10.0.0.0/24").expect("the kernel's connected route went");
    assert_eq!(r["protocol"], "kernel");
    assert!(
        find("192.168.9.0/24").is_none(),
        "the old route stayed: {v4:?}"
    );
    let v6 = a.ip_json(&["-6", "route", "show"]);
    let d6 = v6
        .iter()
        .find(|r| r["dst"] == "default")
        .expect("no IPv6 default route");
    assert_eq!(d6["gateway"], "fd00::1");

    // A second call replaces the first's routes on the device.
    let reported = a
        .update_routes(vec![route("default", "10.0.0.3", "eth0")])
        .await
        .expect("UpdateRoutes again");
    let mut dests: Vec<(&str, &str)> = reported
        .iter()
        .filter(|r| !r.dest.starts_with("fe80") && !r.dest.starts_with("fd00"))
        .map(|r| (r.dest.as_str(), r.gateway.as_str()))
        .collect();
    dests.sort();
    assert_eq!(dests, [("10.0.0.0/24", ""), ("default", "10.0.0.3")]);

    let bad = [
        (route("10.3.0.0/24", "", "eth9"), Code::NOT_FOUND),
        (route("10.3.0.0/33", "", "eth0"), Code::INVALID_ARGUMENT),
        (route("10.3.0.1/24", "", "eth0"), Code::INVALID_ARGUMENT),
        (route("default", "10.0.0.x", "eth0"), Code::INVALID_ARGUMENT),
        (
            route("fd01::/64", "10.0.0.1", "eth0"),
            Code::INVALID_ARGUMENT,
        ),
        (route("10.3.0.0/24", "", ""), Code::INVALID_ARGUMENT),
        // The kernel's own connected route is already there.
        (route("10.0.0.0/24", "", "eth0"), Code::ALREADY_EXISTS),
    ];
    for (r, want) in bad {
        assert_eq!(code(a.update_routes(vec![r.clone()]).await), want, "{r:?}");
    }
    let r = a.client.check(ctx(), &CheckRequest::new()).await.unwrap();
    assert!(r.serving);
}

#[tokio::test]
async fn arp_neighbors_are_permanent() {
    let Some(a) = Agent::start("arp").await else {
        return;
    };
    a.veth("eth0", MAC);
    a.update_interface(iface("eth0", MAC, 0, &[("10.0.0.2", 24)]))
        .await
        .expect("UpdateInterface");
    let n = |ip: &str, mac: &str, dev: &str| ArpNeighbor {
        ip_address: ip.into(),
        ll_addr: mac.into(),
        device: dev.into(),
        ..Default::default()
    };
    a.add_neighbors(vec![
        n("10.0.0.9", "02:00:00:00:00:09", "eth0"),
        n("10.0.0.10", "02:00:00:00:00:0a", "eth0"),
    ])
    .await
    .expect("AddArpNeighbors");
    // Again: entries are replaced, not refused.
    a.add_neighbors(vec![n("10.0.0.9", "02:00:00:00:00:19", "eth0")])
        .await
        .expect("AddArpNeighbors again");
    let neigh = a.ip_json(&["neigh", "show", "dev", "eth0"]);
    let entry = |ip: &str| {
        neigh
            .iter()
            .find(|e| e["dst"] == ip)
            .unwrap_or_else(|| panic!("no neighbour {ip}: {neigh:?}"))
            .clone()
    };
    for (ip, mac) in [
        ("10.0.0.9", "02:00:00:00:00:19"),
        ("10.0.0.10", "02:00:00:00:00:0a"),
    ] {
        let e = entry(ip);
        assert_eq!(e["lladdr"], mac);
        assert_eq!(e["state"], serde_json::json!(["PERMANENT"]));
    }

    let bad = [
        (
            n("10.0.0.11", "02:00:00:00:00", "eth0"),
            Code::INVALID_ARGUMENT,
        ),
        (
            n("10.0.0", "02:00:00:00:00:0b", "eth0"),
            Code::INVALID_ARGUMENT,
        ),
        (n("10.0.0.11", "02:00:00:00:00:0b", "eth9"), Code::NOT_FOUND),
    ];
    for (x, want) in bad {
        assert_eq!(code(a.add_neighbors(vec![x.clone()]).await), want, "{x:?}");
    }
}
