//! Talking to a booted guest's agent from tests: the hybrid-vsock handshake with carapace-vmm
//! (`CONNECT <port>` on its Unix socket) and an ext4 disk image holding a busybox rootfs for
//! containers to run from.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use carapace_protocol::agent::*;
use carapace_protocol::agent_ttrpc::AgentServiceClient;

/// The vsock port the agent serves ttrpc on.
pub const AGENT_PORT: u32 = 1024;

/// Connects to `port` in the guest through carapace-vmm's hybrid vsock socket, retrying until
/// the guest listens or `timeout` passes. Returns the connected stream after `OK <port>`.
pub fn vsock_connect(socket: &Path, port: u32, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match try_connect(socket, port) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn try_connect(socket: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte: whatever follows the newline belongs to the connection.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if s.read(&mut b)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("vsock: closed after {:?}", String::from_utf8_lossy(&line)),
            ));
        }
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "vsock: answer {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// A ttrpc client of the agent over an already connected stream (call inside a tokio runtime).
pub fn agent_client(stream: UnixStream) -> AgentServiceClient {
    stream.set_nonblocking(true).expect("non-blocking socket");
    let socket = ttrpc::r#async::transport::Socket::try_from(stream).expect("ttrpc socket");
    AgentServiceClient::new(ttrpc::r#async::Client::new(socket))
}

/// Writes a busybox rootfs (static /bin/busybox, applet links, passwd and group) into `root`.
pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// An ext4 disk image of `size_mib` holding a busybox rootfs (mkfs.ext4 -d), in `dir`.
pub fn busybox_disk(dir: &Path, size_mib: u32) -> PathBuf {
    let root = dir.join("rootfs");
    busybox_rootfs(&root);
    let img = dir.join("rootfs.ext4");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&img)
        .arg(format!("{size_mib}M"))
        .output()
        .expect("running mkfs.ext4 (e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext4 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// Where [`disk_sandbox`] mounts the busybox disk (`/dev/vda`) in the guest, the rootfs
/// [`create_and_start`] gives its containers.
pub const DISK_ROOTFS: &str = "/run/rootfs";

/// A ttrpc context with a 60 s deadline.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(60_000_000_000)
}

/// A sandbox named `id` with hostname `hostname` whose rootfs mount is the busybox disk.
pub fn disk_sandbox(id: &str, hostname: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        sandbox_id: id.into(),
        hostname: hostname.into(),
        mounts: vec![carapace_protocol::types::Mount {
            source: "/dev/vda".into(),
            destination: DISK_ROOTFS.into(),
            fstype: "ext4".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An OCI spec (JSON) running `args`, without a terminal or a hostname of its own.
pub fn container_spec(args: &[&str]) -> Vec<u8> {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec
        .process()
        .clone()
        .expect("the default spec has a process");
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    // No hostname of its own: the container's UTS namespace starts with the pod's.
    spec.set_hostname(None);
    serde_json::to_vec(&spec).expect("a spec serializes")
}

/// Everything process `exec` ("" for the container's own) of container `id` writes to
/// stdout (or stderr), until it closes the stream.
pub async fn read_all(
    c: &AgentServiceClient,
    id: &str,
    exec: &str,
    stderr: bool,
) -> ttrpc::Result<String> {
    let mut out = Vec::new();
    loop {
        let req = ReadStreamRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            len: 4096,
            ..Default::default()
        };
        let r = if stderr {
            c.read_stderr(ctx(), &req).await?
        } else {
            c.read_stdout(ctx(), &req).await?
        };
        if r.eof {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&r.data);
    }
}

/// Waits for process `exec` ("" for the container's own) of container `id` to exit.
pub async fn wait(
    c: &AgentServiceClient,
    id: &str,
    exec: &str,
) -> ttrpc::Result<WaitProcessResponse> {
    let req = WaitProcessRequest {
        container_id: id.into(),
        exec_id: exec.into(),
        ..Default::default()
    };
    c.wait_process(ctx(), &req).await
}

/// Creates and starts container `id` running `args` on [`DISK_ROOTFS`]; returns how long
/// the two calls took.
pub async fn create_and_start(
    c: &AgentServiceClient,
    id: &str,
    args: &[&str],
) -> ttrpc::Result<Duration> {
    let t = Instant::now();
    let req = CreateContainerRequest {
        container_id: id.into(),
        oci_spec: container_spec(args),
        rootfs: DISK_ROOTFS.into(),
        ..Default::default()
    };
    c.create_container(ctx(), &req).await?;
    let req = StartContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    c.start_container(ctx(), &req).await?;
    Ok(t.elapsed())
}

/// Runs `args` as process `exec_id` in running container `id`, as root with PATH=/bin.
pub async fn exec(
    c: &AgentServiceClient,
    id: &str,
    exec_id: &str,
    args: &[&str],
) -> ttrpc::Result<()> {
    let process = serde_json::json!({"args": args, "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}});
    let req = ExecProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        process: process.to_string().into_bytes(),
        ..Default::default()
    };
    c.exec_process(ctx(), &req).await.map(drop)
}

/// Removes container `id`.
pub async fn remove(c: &AgentServiceClient, id: &str) -> ttrpc::Result<()> {
    let req = RemoveContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    c.remove_container(ctx(), &req).await.map(drop)
}

/// An agent `Interface` named `name` with MAC `mac`, `mtu` and `addrs` (address, prefix).
pub fn iface(
    name: &str,
    mac: &str,
    mtu: u32,
    addrs: &[(&str, u32)],
) -> carapace_protocol::types::Interface {
    carapace_protocol::types::Interface {
        name: name.into(),
        hw_addr: mac.into(),
        mtu,
        addresses: addrs
            .iter()
            .map(|(a, p)| carapace_protocol::types::IpAddress {
                address: a.to_string(),
                prefix_len: *p,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// An agent `Route` to `dest` through `gateway` on `device` ("" for none).
pub fn route(dest: &str, gateway: &str, device: &str) -> carapace_protocol::types::Route {
    carapace_protocol::types::Route {
        dest: dest.into(),
        gateway: gateway.into(),
        device: device.into(),
        ..Default::default()
    }
}
