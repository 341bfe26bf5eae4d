//! The agent's fuzz target's body: one ttrpc frame as the agent reads it from its socket,
//! decoded as the ttrpc server and the generated service decode it (the frame, its `Request`,
//! the service and method named, the method's request message), then put through the checks
//! the agent's handlers run on that message before they act: ids, the OCI spec (and its
//! rewrite for the guest), an exec's process, resources, interfaces, routes and neighbours,
//! hosts entries and tty sizes. Nothing is acted on: no container, mount or link is made.
//! And the corpus's seeds: one valid frame per method.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use carapace_net::{InterfacePlan, NeighborPlan, RoutePlan};
use carapace_protocol::agent::*;
use protobuf::Message as _;
use ttrpc::proto::{Codec, GenMessage, Message, MessageHeader, Request, MESSAGE_TYPE_REQUEST};

use crate::spec::{self, Placement, SandboxFiles};

/// The service every request must name (the package and service of `agent.proto`).
pub const SERVICE: &str = "carapace.agent.v1.AgentService";

/// Runs one input: a ttrpc frame (10-byte header, then the payload).
pub fn request(data: &[u8]) {
    let Some(Ok(msg)) = ready(GenMessage::read_from(data)) else {
        return;
    };
    if msg.check().is_err() || msg.header.type_ != MESSAGE_TYPE_REQUEST {
        return;
    }
    let Ok(req) = Message::<Request>::try_from(msg) else {
        return;
    };
    let req = req.payload;
    if req.service != SERVICE {
        return;
    }
    let _ = check(&req.method, &req.payload);
}

/// Decodes `payload` as method `method`'s request and checks it as its handler does.
fn check(method: &str, payload: &[u8]) -> Option<()> {
    fn decode<T: protobuf::Message>(payload: &[u8]) -> Option<T> {
        <T as Codec>::decode(payload).ok()
    }
    let id = |kind: &str, id: &str| spec::validate_id(kind, id).ok();
    match method {
        "Check" => drop(decode::<CheckRequest>(payload)?),
        "Version" => drop(decode::<VersionRequest>(payload)?),
        "GetGuestDetails" => drop(decode::<GetGuestDetailsRequest>(payload)?),
        "DestroySandbox" => drop(decode::<DestroySandboxRequest>(payload)?),
        "GetOOMEvent" => drop(decode::<GetOOMEventRequest>(payload)?),
        "CreateSandbox" => {
            let r: CreateSandboxRequest = decode(payload)?;
            if !r.hostname.is_empty() {
                id("hostname", &r.hostname)?;
            }
            for h in &r.hosts {
                h.ip.parse::<std::net::IpAddr>().ok()?;
            }
        }
        "UpdateInterface" => {
            let r: UpdateInterfaceRequest = decode(payload)?;
            InterfacePlan::try_from(&r.interface.into_option().unwrap_or_default()).ok()?;
        }
        "UpdateRoutes" => {
            let r: UpdateRoutesRequest = decode(payload)?;
            for route in &r.routes {
                RoutePlan::try_from(route).ok()?;
            }
        }
        "AddArpNeighbors" => {
            let r: AddArpNeighborsRequest = decode(payload)?;
            for n in &r.neighbors {
                NeighborPlan::try_from(n).ok()?;
            }
        }
        "CreateContainer" => {
            let r: CreateContainerRequest = decode(payload)?;
            id("container", &r.container_id)?;
            let mut s = spec::parse(&r.oci_spec).ok()?;
            let sandbox = SandboxFiles {
                files: vec![(PathBuf::from("/run/sandbox/hosts"), "/etc/hosts")],
                hostname: Some("pod".into()),
            };
            // A rootfs that exists wherever this runs; the rewrite only checks it is one.
            let place = Placement {
                rootfs: Path::new("/"),
                cgroup_path: format!("/carapace/{}", r.container_id),
                sandbox: &sandbox,
            };
            spec::adapt(&mut s, &place).ok()?;
        }
        "UpdateContainer" => {
            let r: UpdateContainerRequest = decode(payload)?;
            id("container", &r.container_id)?;
            spec::parse_resources(&r.resources).ok()?;
        }
        "ExecProcess" => {
            let r: ExecProcessRequest = decode(payload)?;
            id("container", &r.container_id)?;
            id("exec", &r.exec_id)?;
            spec::parse_process(&r.process).ok()?;
        }
        "StartContainer" => id(
            "container",
            &decode::<StartContainerRequest>(payload)?.container_id,
        )?,
        "RemoveContainer" => id(
            "container",
            &decode::<RemoveContainerRequest>(payload)?.container_id,
        )?,
        "StatsContainer" => id(
            "container",
            &decode::<StatsContainerRequest>(payload)?.container_id,
        )?,
        "PauseContainer" => id(
            "container",
            &decode::<PauseContainerRequest>(payload)?.container_id,
        )?,
        "ResumeContainer" => id(
            "container",
            &decode::<ResumeContainerRequest>(payload)?.container_id,
        )?,
        "ListProcesses" => id(
            "container",
            &decode::<ListProcessesRequest>(payload)?.container_id,
        )?,
        "SignalProcess" => drop(decode::<SignalProcessRequest>(payload)?),
        "WaitProcess" => drop(decode::<WaitProcessRequest>(payload)?),
        "WriteStdin" => drop(decode::<WriteStreamRequest>(payload)?),
        "ReadStdout" | "ReadStderr" => drop(decode::<ReadStreamRequest>(payload)?),
        "CloseStdin" => drop(decode::<CloseStdinRequest>(payload)?),
        "TtyWinResize" => {
            let r: TtyWinResizeRequest = decode(payload)?;
            u16::try_from(r.rows).ok()?;
            u16::try_from(r.columns).ok()?;
        }
        _ => return None,
    }
    Some(())
}

/// The output of a future that never waits (reading a frame from a byte slice), or `None`.
fn ready<F: Future>(f: F) -> Option<F::Output> {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    match pin!(f).poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// A ttrpc request frame for `method` carrying `msg`.
fn frame(method: &str, msg: &impl protobuf::Message) -> Vec<u8> {
    let req = Request {
        service: SERVICE.into(),
        method: method.into(),
        payload: msg.write_to_bytes().unwrap(),
        timeout_nano: 5_000_000_000,
        ..Default::default()
    };
    let payload = req.write_to_bytes().unwrap();
    let mut out: Vec<u8> = MessageHeader::new_request(1, payload.len() as u32).into();
    out.extend_from_slice(&payload);
    out
}

/// One valid frame per method, as the shim sends them, to start the fuzzer from.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use carapace_protocol::types::{ArpNeighbor, Interface, IpAddress, Route};
    let spec = br#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["sh","-c","echo hi"],"env":["PATH=/bin"],"cwd":"/"},"root":{"path":"rootfs","readonly":false},"hostname":"c1","mounts":[{"destination":"/proc","type":"proc","source":"proc"}],"linux":{"namespaces":[{"type":"pid"},{"type":"network"}],"resources":{"memory":{"limit":67108864}}}}"#;
    let process = br#"{"user":{"uid":0,"gid":0},"args":["ls","/"],"cwd":"/","terminal":false}"#;
    let resources = br#"{"memory":{"limit":33554432},"cpu":{"quota":50000,"period":100000},"pids":{"limit":64}}"#;
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |m: &str, msg: &dyn Fn() -> Vec<u8>| v.push((m.to_string(), msg()));
    add("Check", &|| frame("Check", &CheckRequest::new()));
    add("Version", &|| frame("Version", &VersionRequest::new()));
    add("CreateSandbox", &|| {
        let mut r = CreateSandboxRequest::new();
        r.sandbox_id = "pod1".into();
        r.hostname = "pod1".into();
        r.dns_servers = vec!["10.0.0.10".into()];
        r.dns_searches = vec!["svc.cluster.local".into()];
        let mut h = HostEntry::new();
        h.ip = "10.0.0.5".into();
        h.names = vec!["db".into()];
        r.hosts = vec![h];
        frame("CreateSandbox", &r)
    });
    add("UpdateInterface", &|| {
        let mut i = Interface::new();
        i.name = "eth0".into();
        i.hw_addr = "02:ca:4a:00:00:01".into();
        i.mtu = 1500;
        let mut a = IpAddress::new();
        a.address = "10.0.0.2".into();
        a.prefix_len = 24;
        i.addresses = vec![a];
        let mut r = UpdateInterfaceRequest::new();
        r.interface = Some(i).into();
        frame("UpdateInterface", &r)
    });
    add("UpdateRoutes", &|| {
        let mut rt = Route::new();
        rt.dest = "0.0.0.0/0".into();
        rt.gateway = "10.0.0.1".into();
        rt.device = "eth0".into();
        let mut r = UpdateRoutesRequest::new();
        r.routes = vec![rt];
        frame("UpdateRoutes", &r)
    });
    add("AddArpNeighbors", &|| {
        let mut n = ArpNeighbor::new();
        n.ip_address = "10.0.0.1".into();
        n.device = "eth0".into();
        n.ll_addr = "02:00:00:00:00:01".into();
        let mut r = AddArpNeighborsRequest::new();
        r.neighbors = vec![n];
        frame("AddArpNeighbors", &r)
    });
    add("CreateContainer", &|| {
        let mut r = CreateContainerRequest::new();
        r.container_id = "c1".into();
        r.oci_spec = spec.to_vec();
        r.rootfs = "/run/carapace/shared/c1/rootfs".into();
        frame("CreateContainer", &r)
    });
    add("UpdateContainer", &|| {
        let mut r = UpdateContainerRequest::new();
        r.container_id = "c1".into();
        r.resources = resources.to_vec();
        frame("UpdateContainer", &r)
    });
    add("ExecProcess", &|| {
        let mut r = ExecProcessRequest::new();
        r.container_id = "c1".into();
        r.exec_id = "e1".into();
        r.process = process.to_vec();
        frame("ExecProcess", &r)
    });
    add("SignalProcess", &|| {
        let mut r = SignalProcessRequest::new();
        r.container_id = "c1".into();
        r.signal = 15;
        frame("SignalProcess", &r)
    });
    add("TtyWinResize", &|| {
        let mut r = TtyWinResizeRequest::new();
        r.container_id = "c1".into();
        r.rows = 24;
        r.columns = 80;
        frame("TtyWinResize", &r)
    });
    add("WriteStdin", &|| {
        let mut r = WriteStreamRequest::new();
        r.container_id = "c1".into();
        r.data = b"input\n".to_vec();
        frame("WriteStdin", &r)
    });
    add("StartContainer", &|| {
        let mut r = StartContainerRequest::new();
        r.container_id = "c1".into();
        frame("StartContainer", &r)
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request")
    }

    /// Every input of the corpus goes through [`request`] without a panic; the seeds are in it.
    #[test]
    fn the_request_corpus_replays() {
        let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(corpus())
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        inputs.sort();
        for (name, bytes) in seeds() {
            assert!(
                inputs.iter().any(|(_, b)| *b == bytes),
                "the seed {name} is not in the corpus (run the ignored test write_seeds)"
            );
        }
        for (path, bytes) in inputs {
            eprintln!("replaying {}", path.display());
            request(&bytes);
        }
    }

    /// The seeds pass every check: they reach the end of their handler's checks.
    #[test]
    fn the_seeds_are_valid_requests() {
        for (name, bytes) in seeds() {
            let msg = ready(GenMessage::read_from(&bytes[..])).unwrap().unwrap();
            let req = Message::<Request>::try_from(msg).unwrap().payload;
            assert_eq!(check(&req.method, &req.payload), Some(()), "{name}");
        }
    }

    /// Writes the seeds into the corpus (`seed-<method>`), after a change of the protocol:
    /// `cargo test -p carapace-agent --lib write_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_seeds() {
        std::fs::create_dir_all(corpus()).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(corpus().join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}
