//! Kubernetes' CRI against a private containerd, as a kubelet drives it: containerd's CRI
//! plugin with two runtime handlers (`runc`, the reference, and `carapace`), the reference
//! CNI plugins (bridge, host-local, portmap, loopback) on a private bridge, the busybox and
//! pause images, and a blocking CRI client (Kubernetes' CRI protos through `k8s-cri`).

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::artifacts;
use crate::carapace::Carapace;

pub use k8s_cri::v1;

/// The containerd namespace the CRI plugin keeps its pods, containers and images in.
pub const NAMESPACE: &str = "k8s.io";
/// The runtime handlers every CRI test runs its pods with: runc first, as the reference.
pub const HANDLERS: [&str; 2] = ["runc", "carapace"];
/// The sandbox (pause) image, from images/build-busybox-image.
pub const PAUSE_IMAGE: &str = "localhost/carapace/pause:latest";
/// The CNI network's bridge on the host and its subnet.
pub const BRIDGE: &str = "cri-test0";
/// The subnet pods get their addresses from; the bridge (the pods' gateway) has `.1`.
pub const SUBNET: &str = "10.99.0.0/24";

/// The cgroup the test pods' parent cgroups are made under (a kubelet's `/kubepods`).
pub const CGROUP_PARENTS: &str = "/kubepods";

/// The paths a kubelet masks in a container (Kubernetes' default proc mount).
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
/// The paths a kubelet makes read-only in a container.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The longest a CRI call of a test may take (a carapace sandbox boots its VM in it).
const CALL_TIMEOUT: Duration = Duration::from_secs(240);

/// containerd with its CRI plugin, and a client of it.
pub struct Cri {
    carapace: Carapace,
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

fn cri_config(dir: &Path) -> String {
    let cni = dir.join("cni");
    std::fs::create_dir_all(&cni).expect("make the CNI config directory");
    std::fs::write(
        cni.join("10-cri-test.conflist"),
        format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "cri-test",
  "plugins": [
    {{ "type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false,
       "ipam": {{ "type": "host-local", "ranges": [[{{ "subnet": "{SUBNET}" }}]],
                  "dataDir": "{ipam}" }} }},
    {{ "type": "portmap", "capabilities": {{ "portMappings": true }} }}
  ]
}}"#,
            ipam = dir.join("cni-ipam").display()
        ),
    )
    .expect("write the CNI config");
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.carapace]
      runtime_type = "{runtime}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
    max_conf_num = 1
"#,
        runtime = crate::carapace::RUNTIME,
        cni = cni.display()
    )
}

impl Cri {
    /// Starts containerd with its CRI plugin and both handlers, imports the images and waits
    /// until the CRI reports its runtime and network ready.
    pub fn start() -> Cri {
        let carapace = Carapace::start_with_cri(&cri_config);
        carapace.import_in(NAMESPACE, &artifacts::busybox_image());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let socket = carapace.socket();
        let channel = rt
            .block_on(async move {
                Endpoint::try_from("http://[::]")
                    .expect("a fixed URI")
                    .timeout(CALL_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    }))
                    .await
            })
            .expect("connect to containerd's CRI");
        let c = Cri {
            carapace,
            rt,
            channel,
        };
        let mut last = String::new();
        let ready = crate::lab::wait_for(Duration::from_secs(60), || {
            let status = c
                .call(|mut r| async move { r.status(cri::StatusRequest { verbose: false }).await });
            match status {
                Ok(s) => {
                    let conditions = s.status.map(|s| s.conditions).unwrap_or_default();
                    last = format!("{conditions:?}");
                    let images =
                        c.image_present(PAUSE_IMAGE) && c.image_present(artifacts::BUSYBOX_IMAGE);
                    (conditions.len() >= 2 && conditions.iter().all(|c| c.status) && images)
                        .then_some(())
                }
                Err(e) => {
                    last = e.to_string();
                    None
                }
            }
        });
        assert!(
            ready.is_some(),
            "the CRI did not become ready within 60 s: {last}\n{}",
            c.log()
        );
        c
    }

    /// Runs one call of the CRI's runtime service on this test's runtime.
    pub fn call<T, F>(
        &self,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = RuntimeServiceClient::new(self.channel.clone());
        self.rt.block_on(f(client)).map(|r| r.into_inner())
    }

    /// CRI PortForward to `port` of pod `pod`, as kubectl port-forward does it: the URL
    /// containerd's streaming server hands out, over WebSocket ([`ChannelStream`]; channel 0
    /// the port's data, 1 its errors; the server first sends the port on both). Sends
    /// `request` and returns what came back until the stream closed or `timeout` passed.
    pub fn port_forward(
        &self,
        pod: &str,
        port: u16,
        request: &[u8],
        timeout: Duration,
    ) -> Result<String, String> {
        let url = self
            .call(|mut c| {
                let request = cri::PortForwardRequest {
                    pod_sandbox_id: pod.into(),
                    port: vec![port.into()],
                };
                async move { c.port_forward(request).await }
            })
            .map_err(|e| format!("PortForward: {e}"))?
            .url;
        let mut ws = ChannelStream::open(&format!("{url}?port={port}"))?;
        let mut data = Vec::new();
        let (mut sent, mut error_port) = (false, false);
        let deadline = std::time::Instant::now() + timeout;
        while let Some((channel, bytes)) = ws.recv(deadline)? {
            match channel {
                // The port, first, on both channels; then the data.
                0 if !sent => {
                    ws.send(0, request)?;
                    sent = true;
                }
                0 => data.extend_from_slice(&bytes),
                1 if !error_port => error_port = true,
                1 => {
                    return Err(format!(
                        "the port's error channel: {}",
                        String::from_utf8_lossy(&bytes)
                    ))
                }
                _ => {}
            }
        }
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    /// CRI Exec with a terminal and stdin, as `kubectl exec -it` does it: the URL of
    /// containerd's streaming server over WebSocket ([`ChannelStream`]: 0 stdin, 1 stdout,
    /// 3 the exit status). Writes `input` to the process's terminal and returns what the
    /// terminal printed and the status message until the stream closed or `timeout` passed.
    pub fn exec_tty(
        &self,
        id: &str,
        cmd: &[&str],
        input: &[u8],
        timeout: Duration,
    ) -> Result<(String, String), String> {
        let request = cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        };
        let url = self
            .call(|mut c| async move { c.exec(request).await })
            .map_err(|e| format!("Exec: {e}"))?
            .url;
        terminal_session(&url, input, timeout)
    }

    /// CRI Attach to the terminal and stdin of container `id` (started with `tty` and
    /// `stdin`), as `kubectl attach -it` does it; what [`Cri::exec_tty`] returns.
    pub fn attach_tty(
        &self,
        id: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<(String, String), String> {
        let request = cri::AttachRequest {
            container_id: id.into(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        };
        let url = self
            .call(|mut c| async move { c.attach(request).await })
            .map_err(|e| format!("Attach: {e}"))?
            .url;
        terminal_session(&url, input, timeout)
    }

    /// Whether the CRI's image service knows `image`.
    pub fn image_present(&self, image: &str) -> bool {
        let mut client = ImageServiceClient::new(self.channel.clone());
        let spec = image_spec(image);
        self.rt
            .block_on(client.image_status(cri::ImageStatusRequest {
                image: Some(spec),
                verbose: false,
            }))
            .is_ok_and(|r| r.into_inner().image.is_some())
    }

    /// Where pods' CRI logs go: `<containerd dir>/pod-logs/<pod name>`.
    pub fn log_directory(&self, pod: &str) -> PathBuf {
        self.dir().join("pod-logs").join(pod)
    }

    /// A pod's configuration as a kubelet sends it: metadata, hostname, log directory, a
    /// pod-scoped network, IPC and UTS, the container's own PID namespace.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let logs = self.log_directory(name);
        std::fs::create_dir_all(&logs).expect("make the pod's log directory");
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.to_string_lossy().into_owned(),
            linux: Some(cri::LinuxPodSandboxConfig {
                // As a kubelet with the cgroupfs driver names it; emptied by `remove_pod`.
                cgroup_parent: format!("{CGROUP_PARENTS}/pod-uid-{name}"),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(kubelet_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with `handler`; returns the pod's id.
    pub fn run_pod(
        &self,
        handler: &str,
        config: &cri::PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let request = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.call(|mut r| async move { r.run_pod_sandbox(request).await })
            .map(|r| r.pod_sandbox_id)
    }

    /// A container's configuration: the busybox image running `command`, logging to
    /// `<name>.log` in the pod's log directory, with the masked and read-only paths a kubelet
    /// sends (its default proc mount).
    pub fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(image_spec(artifacts::BUSYBOX_IMAGE)),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(kubelet_namespaces()),
                    masked_paths: MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
                    readonly_paths: READONLY_PATHS.iter().map(|p| p.to_string()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// CreateContainer then StartContainer; returns the container's id.
    pub fn start_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = self
            .call(|mut r| async move { r.create_container(request).await })?
            .container_id;
        let start = cri::StartContainerRequest {
            container_id: id.clone(),
        };
        self.call(|mut r| async move { r.start_container(start).await })?;
        Ok(id)
    }

    /// ExecSync of `cmd` in container `id`: its exit code, stdout and stderr.
    pub fn exec(&self, id: &str, cmd: &[&str]) -> (i32, String, String) {
        let request = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        };
        let r = self
            .call(|mut r| async move { r.exec_sync(request).await })
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {e}\n{}", self.log()));
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    /// ExecSync that must exit 0; its stdout, trimmed.
    pub fn exec_ok(&self, id: &str, cmd: &[&str]) -> String {
        let (code, out, err) = self.exec(id, cmd);
        assert_eq!(code, 0, "{cmd:?} in {id}: stdout {out:?} stderr {err:?}");
        out.trim().to_string()
    }

    /// The status of container `id`.
    pub fn container_status(&self, id: &str) -> cri::ContainerStatus {
        let request = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call(|mut r| async move { r.container_status(request).await })
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
            .status
            .expect("a status")
    }

    /// StopContainer with `timeout` seconds of grace.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let request = cri::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.call(|mut r| async move { r.stop_container(request).await })
            .map(drop)
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let request = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call(|mut r| async move { r.remove_container(request).await })
            .map(drop)
    }

    /// StopPodSandbox then RemovePodSandbox, as a kubelet ends a pod; both must succeed.
    pub fn remove_pod(&self, pod: &str) {
        let stop = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.call(|mut r| async move { r.stop_pod_sandbox(stop).await })
            .unwrap_or_else(|e| panic!("StopPodSandbox {pod}: {e}\n{}", self.log()));
        let remove = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.call(|mut r| async move { r.remove_pod_sandbox(remove).await })
            .unwrap_or_else(|e| panic!("RemovePodSandbox {pod}: {e}\n{}", self.log()));
        // The pods' parent cgroups, which a kubelet would remove (runc leaves them).
        let parents = Path::new("/sys/fs/cgroup").join(CGROUP_PARENTS.trim_start_matches('/'));
        if let Ok(entries) = std::fs::read_dir(&parents) {
            for e in entries.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&parents);
    }

    /// The pod's IPv4 address on the CNI network.
    pub fn pod_ip(&self, pod: &str) -> String {
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        self.call(|mut r| async move { r.pod_sandbox_status(request).await })
            .unwrap_or_else(|e| panic!("PodSandboxStatus {pod}: {e}"))
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for container `id` to exit; its exit code.
    pub fn wait_exit(&self, id: &str, timeout: Duration) -> Option<i32> {
        crate::lab::wait_for(timeout, || {
            let s = self.container_status(id);
            (s.state == cri::ContainerState::ContainerExited as i32).then_some(s.exit_code)
        })
    }
}

/// The namespaces a kubelet asks for by default, for a pod and each of its containers: the
/// pod's network and IPC, a PID namespace of the container's own.
fn kubelet_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The security context of a pod's configuration (every [`Cri::pod_config`] has one).
pub fn pod_security(pod: &mut cri::PodSandboxConfig) -> &mut cri::LinuxSandboxSecurityContext {
    pod.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The namespace options of a pod's configuration.
pub fn pod_namespaces(pod: &mut cri::PodSandboxConfig) -> &mut cri::NamespaceOption {
    pod_security(pod)
        .namespace_options
        .get_or_insert_with(Default::default)
}

/// An image reference as the CRI takes it.
pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        annotations: HashMap::new(),
        ..Default::default()
    }
}

impl Deref for Cri {
    type Target = Carapace;

    fn deref(&self) -> &Carapace {
        &self.carapace
    }
}

/// A WebSocket to containerd's streaming server (the Kubernetes streaming library's), with
/// Kubernetes' channel protocol `v4.channel.k8s.io`: each binary message is a channel byte
/// followed by that channel's data.
pub struct ChannelStream {
    ws: tungstenite::WebSocket<std::net::TcpStream>,
}

impl ChannelStream {
    /// Opens the stream at the `http://` URL a CRI Exec, Attach or PortForward answered.
    pub fn open(url: &str) -> Result<Self, String> {
        use tungstenite::client::IntoClientRequest;
        let ws_url = url.replacen("http://", "ws://", 1);
        let mut req = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("{ws_url}: {e}"))?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "v4.channel.k8s.io".parse().expect("a header value"),
        );
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let tcp =
            std::net::TcpStream::connect(&authority).map_err(|e| format!("{authority}: {e}"))?;
        // Reads wake up to check the caller's deadline.
        tcp.set_read_timeout(Some(Duration::from_secs(2))).ok();
        let (ws, _) =
            tungstenite::client(req, tcp).map_err(|e| format!("WebSocket to {ws_url}: {e}"))?;
        Ok(Self { ws })
    }

    /// Sends `data` on `channel`.
    pub fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), String> {
        let mut message = vec![channel];
        message.extend_from_slice(data);
        self.ws
            .send(tungstenite::Message::Binary(message))
            .map_err(|e| format!("sending on channel {channel}: {e}"))
    }

    /// The next message as its channel and data; `None` once the stream closed or
    /// `deadline` passed.
    pub fn recv(&mut self, deadline: std::time::Instant) -> Result<Option<(u8, Vec<u8>)>, String> {
        use tungstenite::{Error, Message};
        while std::time::Instant::now() < deadline {
            let message = match self.ws.read() {
                Ok(m) => m,
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => return Ok(None),
                Err(e) => return Err(format!("reading the stream: {e}")),
            };
            match message {
                Message::Binary(b) => {
                    if let Some((&channel, data)) = b.split_first() {
                        return Ok(Some((channel, data.to_vec())));
                    }
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }
}

/// A memory emptyDir as a kubelet lays one out on the node: a tmpfs at
/// `<root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<volume>`, and a subPath of it bound at
/// `<root>/pods/<uid>/volume-subpaths/<volume>/<container>/0`. Unmounted when dropped.
pub struct KubeletMemoryVolume {
    /// The volume's host path (what a container mounting the whole volume gets).
    pub volume: PathBuf,
    /// The subPath's bind (what a container mounting the subPath gets).
    pub subpath: PathBuf,
    root: PathBuf,
}

impl KubeletMemoryVolume {
    /// Lays out `volume` of pod `uid` under `root`, with directory `sub` of it bound as the
    /// subPath of `container`.
    pub fn new(root: &Path, uid: &str, volume: &str, sub: &str, container: &str) -> Self {
        let pod = root.join("pods").join(uid);
        let v = Self {
            volume: pod.join("volumes/kubernetes.io~empty-dir").join(volume),
            subpath: pod
                .join("volume-subpaths")
                .join(volume)
                .join(container)
                .join("0"),
            root: root.to_path_buf(),
        };
        std::fs::create_dir_all(&v.volume).unwrap();
        std::fs::create_dir_all(&v.subpath).unwrap();
        let run = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new("mount")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "tmpfs".as_ref(),
            v.volume.as_os_str(),
        ]);
        std::fs::create_dir_all(v.volume.join(sub)).unwrap();
        run(&[
            "--bind".as_ref(),
            v.volume.join(sub).as_os_str(),
            v.subpath.as_os_str(),
        ]);
        v
    }
}

impl Drop for KubeletMemoryVolume {
    fn drop(&mut self) {
        for m in [&self.subpath, &self.volume] {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `config` with `mounts` (container path, host path) added, read-write.
pub fn with_mounts(
    mut config: cri::ContainerConfig,
    mounts: &[(&str, &Path)],
) -> cri::ContainerConfig {
    for (container_path, host_path) in mounts {
        config.mounts.push(cri::Mount {
            container_path: container_path.to_string(),
            host_path: host_path.display().to_string(),
            ..Default::default()
        });
    }
    config
}

/// Writes `input` to the stdin channel of the streaming URL `url` (an Exec's or an Attach's
/// with a terminal) and collects the terminal's output (channels 1 and 2) and the status
/// (channel 3) until the stream closes or `timeout` passes.
fn terminal_session(
    url: &str,
    input: &[u8],
    timeout: Duration,
) -> Result<(String, String), String> {
    let mut ws = ChannelStream::open(url)?;
    ws.send(0, input)?;
    let (mut out, mut status) = (Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + timeout;
    while let Some((channel, bytes)) = ws.recv(deadline)? {
        match channel {
            1 | 2 => out.extend_from_slice(&bytes),
            3 => status.extend_from_slice(&bytes),
            _ => {}
        }
    }
    Ok((
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&status).into_owned(),
    ))
}
