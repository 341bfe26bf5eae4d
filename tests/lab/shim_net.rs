//! Pod networking through the shim: a network namespace and veth pair made here as a CNI
//! plugin would (`eth0` with 10.123.0.2/24 and a default route in the pod's namespace, the
//! peer with 10.123.0.1 on the host), and `ctr run --with-ns network:PATH`: inside the microVM
//! the container's `eth0` has the veth's address and MAC, the static neighbour and the route,
//! pings the host side and fetches a page from a listener there (with `nc`: busybox-static's
//! `wget` crashes in a root with no NSS files, network or not); afterwards no tap, qdisc or
//! state is left. A namespace that does not exist, or holds only `lo`, is refused by name and
//! leaves nothing behind.
//!
//!
//! `ctr run --cni`, with runc as the reference: ctr sets CNI up after Create in
//! `/proc/<task pid>/ns/net`, which for carapace is the namespace the shim made for the pod,
//! where a NIC waits for what CNI adds; at Start the container's `eth0` has CNI's address and
//! route and reaches a listener on the CNI bridge's gateway; afterwards nothing is left.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

use carapace_tests::artifacts::{busybox_image, BUSYBOX_IMAGE};
use carapace_tests::carapace::{Carapace, RUNTIME};
use carapace_tests::containerd::Containerd;
use carapace_tests::lab_test;

const NETNS: &str = "carapace-net-test";
const EMPTY_NETNS: &str = "carapace-net-empty";
const HOST_VETH: &str = "cpnet-host";
const HOST_IP: &str = "10.123.0.1";
const POD_IP: &str = "10.123.0.2";
const POD_MAC: &str = "02:42:0a:7b:00:02";
const NEIGH_IP: &str = "10.123.0.99";
const NEIGH_MAC: &str = "02:00:00:00:00:99";

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pod's namespace and veth as a CNI bridge-less ptp plugin would leave them; removed
/// again when dropped.
struct PodNetns;

/// Removes the test's namespaces and host veth, if there (quietly: usually they are not).
fn remove_pod_netns() {
    for args in [
        &["netns", "del", NETNS][..],
        &["netns", "del", EMPTY_NETNS],
        &["link", "del", HOST_VETH],
    ] {
        let _ = Command::new("ip")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl PodNetns {
    fn new() -> Self {
        remove_pod_netns();
        sh(&format!(
            "set -e
            ip netns add {NETNS}
            ip netns add {EMPTY_NETNS}
            ip link add {HOST_VETH} type veth peer name eth0 netns {NETNS}
            ip addr add {HOST_IP}/24 dev {HOST_VETH}
            ip link set {HOST_VETH} up
            ip -n {NETNS} link set lo up
            ip -n {NETNS} link set eth0 address {POD_MAC} mtu 1400
            ip -n {NETNS} addr add {POD_IP}/24 dev eth0
            ip -n {NETNS} link set eth0 up
            ip -n {NETNS} route add default via {HOST_IP} dev eth0
            ip -n {NETNS} neigh add {NEIGH_IP} lladdr {NEIGH_MAC} dev eth0 nud permanent"
        ));
        PodNetns
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        remove_pod_netns();
    }
}

/// Answers one HTTP request on `listener` with `hello-from-host` on a thread; the thread
/// returns the client's address.
fn answer_one_request(listener: TcpListener) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 16\r\n\r\nhello-from-host\n")
            .unwrap();
        peer.ip().to_string()
    })
}

fn run_in(c: &Containerd, netns: &str, id: &str, script: &str) -> Output {
    let ns = format!("network:{netns}");
    c.ctr_output([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &ns,
        BUSYBOX_IMAGE,
        id,
        "sh",
        "-c",
        script,
    ])
}

lab_test! {
    fn a_container_in_a_microvm_reaches_the_host_through_the_pods_veth() {
        let _ns = PodNetns::new();
        // A listener on the host side of the veth answering one HTTP request.
        let server = answer_one_request(TcpListener::bind((HOST_IP, 8123)).expect("bind the host listener"));

        let c = Carapace::start();
        c.import(&busybox_image());
        let script = format!(
            "ip -o addr show dev eth0; ip -o link show dev eth0; ip route; ip neigh; \
             ping -c 1 -W 10 {HOST_IP} && echo PING-OK; \
             printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 20 {HOST_IP} 8123"
        );
        let out = run_in(&c, &format!("/var/run/netns/{NETNS}"), "net1", &script);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "ctr run failed: {}", c.explain("ctr run", &out));
        println!("{stdout}");
        assert!(stdout.contains(&format!("inet {POD_IP}/24")), "eth0 has the veth's address: {}", c.explain("ctr run", &out));
        assert!(stdout.contains(POD_MAC) && stdout.contains("mtu 1400"), "eth0 has the veth's MAC and MTU: {}", c.explain("ctr run", &out));
        assert!(stdout.contains(&format!("default via {HOST_IP} dev eth0")), "the default route: {}", c.explain("ctr run", &out));
        assert!(stdout.contains(&format!("{NEIGH_IP} dev eth0 lladdr {NEIGH_MAC}")), "the static neighbour: {}", c.explain("ctr run", &out));
        assert!(stdout.contains("PING-OK"), "ping of the host side: {}", c.explain("ctr run", &out));
        assert!(stdout.contains("hello-from-host"), "TCP to the host side: {}", c.explain("ctr run", &out));
        assert_eq!(server.join().expect("the listener"), POD_IP, "the host sees the pod's address");

        c.assert_nothing_left();
        // The veth is as the CNI plugin left it: address kept, no qdisc.
        let addr = sh(&format!("ip -n {NETNS} -o addr show dev eth0"));
        assert!(addr.contains(POD_IP), "{addr}");

        // Bad namespaces: refused by name, nothing left.
        let out = run_in(&c, "/var/run/netns/carapace-no-such-netns", "net2", "true");
        assert!(!out.status.success(), "a missing netns is refused: {}", c.explain("ctr run", &out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("carapace-no-such-netns"), "{}", c.explain("ctr run", &out));
        let out = run_in(&c, &format!("/var/run/netns/{EMPTY_NETNS}"), "net3", "true");
        assert!(!out.status.success(), "a netns with only lo is refused: {}", c.explain("ctr run", &out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no interface other than lo"), "{}", c.explain("ctr run", &out));
        let _ = c.ctr_output(["containers", "rm", "net2", "net3"]);
        let left = c.leftovers();
        assert!(left.is_empty(), "carapace left traces after refusals: {left:?}\n{}", c.log());
    }
}

/// `ctr run --cni`'s CNI network (ctr reads /etc/cni/net.d and /opt/cni/bin; the lab's root is
/// a tmpfs overlay): a bridge with host-local addresses; removed again when dropped.
struct CtrCni {
    ipam: std::path::PathBuf,
}

const CNI_BRIDGE: &str = "ctr-cni0";
const CNI_GATEWAY: &str = "10.124.0.1";
const CNI_CONF: &str = "/etc/cni/net.d/10-carapace-ctr.conflist";

impl CtrCni {
    fn new() -> Self {
        let ipam = carapace_tests::containerd::make_temp_dir("carapace-cni-ipam");
        std::fs::create_dir_all("/etc/cni/net.d").unwrap();
        std::fs::write(
            CNI_CONF,
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "carapace-ctr", "plugins": [
                  {{"type": "bridge", "bridge": "{CNI_BRIDGE}", "isGateway": true,
                    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.124.0.0/24"}}]],
                              "routes": [{{"dst": "0.0.0.0/0"}}],
                              "dataDir": "{}"}}}}]}}"#,
                ipam.display()
            ),
        )
        .unwrap();
        if !std::path::Path::new("/opt/cni/bin").exists() {
            std::fs::create_dir_all("/opt/cni").unwrap();
            std::os::unix::fs::symlink("/usr/lib/cni", "/opt/cni/bin").unwrap();
        }
        CtrCni { ipam }
    }

    /// The addresses host-local still has leased.
    fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam.join("carapace-ctr"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for CtrCni {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(CNI_CONF);
        let _ = Command::new("ip")
            .args(["link", "del", CNI_BRIDGE])
            .status();
        let _ = std::fs::remove_dir_all(&self.ipam);
    }
}

lab_test! {
    fn ctr_run_cni_gives_the_container_the_network_cni_sets_up_after_create() {
        let cni = CtrCni::new();
        let c = Carapace::start();
        c.import(&busybox_image());
        for (runtime, id) in [("io.containerd.runc.v2", "cni-runc"), (RUNTIME, "cni-carapace")] {
            // The bridge's gateway address exists once CNI made the bridge: listen on all.
            let server = answer_one_request(TcpListener::bind(("0.0.0.0", 8124)).expect("bind the host listener"));
            let script = format!(
                "ip -o -4 addr show dev eth0; ip route; \
                 printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 20 {CNI_GATEWAY} 8124"
            );
            let out = c.ctr_output([
                "run", "--rm", "--cni", "--runtime", runtime, BUSYBOX_IMAGE, id, "sh", "-c", &script,
            ]);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{runtime}: {}", c.explain("ctr run --cni", &out));
            assert!(stdout.contains("inet 10.124.0."), "{runtime}: CNI's address on eth0: {stdout}");
            assert!(stdout.contains(&format!("default via {CNI_GATEWAY} dev eth0")), "{runtime}: CNI's route: {stdout}");
            assert!(stdout.contains("hello-from-host"), "{runtime}: TCP to the gateway: {}", c.explain("ctr run --cni", &out));
            let peer = server.join().expect("the listener");
            assert!(peer.starts_with("10.124.0."), "{runtime}: the host sees the pod's address, not {peer}");
            assert_eq!(cni.leases(), Vec::<String>::new(), "{runtime}: ctr's CNI DEL released the address");
        }
        c.assert_nothing_left();
    }
}
