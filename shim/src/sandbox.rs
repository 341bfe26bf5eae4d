//! One pod's microVM as the shim owns it: its state directory `/run/carapace/<sid>/`, the
//! share under it, the pod's network (taps, see [`crate::network`]), the VMM child, the agent
//! connection, and teardown that leaves no process, mount, tap, qdisc, socket or directory
//! behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use carapace_protocol::agent::{CreateSandboxRequest, DestroySandboxRequest};
use carapace_protocol::agent_ttrpc::AgentServiceClient;
use carapace_protocol::types::Mount as AgentMount;
use tokio::sync::watch;

use crate::agent::{self, ctx_timeout};
use crate::config::{Config, Share};
use crate::error::{Result, ShimError};
use crate::mounts;
use crate::network::{self, PodNetwork};
use crate::sizing::VmSize;
use crate::spec::GUEST_SHARE;
use crate::vmm::{Block, FsShare, Net, Serial, VmConfig, Vmm, Vsock, GUEST_CID, SHARE_TAG};

/// Where every pod's state directory lives.
pub const STATE_ROOT: &str = "/run/carapace";

/// The state directory of pod `sid`.
pub fn state_dir(sid: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(sid)
}

/// The host directory shared with pod `sid`'s guest.
pub fn shared_dir(sid: &str) -> PathBuf {
    state_dir(sid).join("shared")
}

/// Creates the pod's state and share directories; a leftover of an earlier shim of the
/// same pod (which cannot be running: containerd groups a pod into one shim) is removed.
pub fn prepare_dirs(sid: &str) -> Result<()> {
    let dir = state_dir(sid);
    if dir.exists() {
        log::warn!("removing a leftover {}", dir.display());
        cleanup_dir(&dir)?;
    }
    let shared = shared_dir(sid);
    std::fs::create_dir_all(&shared)
        .map_err(|e| ShimError::io(format!("creating {}", shared.display()), e))
}

/// Unmounts everything under `dir` and removes it.
pub fn cleanup_dir(dir: &Path) -> Result<()> {
    mounts::unmount_under(dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShimError::io(format!("removing {}", dir.display()), e)),
    }
}

/// A booted pod VM with its agent connected.
pub struct Sandbox {
    /// The pod's id.
    pub id: String,
    /// `/run/carapace/<sid>`.
    pub dir: PathBuf,
    /// How rootfs directories reach the guest.
    pub share: Share,
    /// The VMM child.
    pub vmm: Vmm,
    /// The agent's ttrpc client.
    pub agent: AgentServiceClient,
    /// The pod's network on the host, if its spec named a network namespace.
    network: tokio::sync::Mutex<Option<PodNetwork>>,
    stopping: AtomicBool,
}

/// What the first container brings to the boot (the block-copy stop-gap needs its rootfs).
pub struct FirstContainer<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its rootfs, already mounted on the host under the share.
    pub host_rootfs: &'a Path,
    /// Where the guest expects it.
    pub guest_rootfs: &'a Path,
    /// The VM's size, from the config and this container's spec.
    pub size: VmSize,
    /// The pod's network namespace on the host (the spec's, before it was rewritten).
    pub netns: Option<PathBuf>,
    /// The pod's hostname (the spec's).
    pub hostname: Option<String>,
    /// The host file bound on the container's `/etc/resolv.conf`, whose DNS settings the
    /// guest gets.
    pub resolv_conf: Option<PathBuf>,
}

impl Sandbox {
    /// Boots the VM of pod `sid` (its directories made by [`prepare_dirs`]), with a NIC per
    /// interface of its network namespace, connects to the agent and sets the sandbox and its
    /// network up. On failure the VM is stopped and the network removed again.
    pub async fn boot(config: &Config, sid: &str, first: FirstContainer<'_>) -> Result<Self> {
        let mut network = match &first.netns {
            Some(path) => Some(PodNetwork::attach_path(path).await?),
            None => None,
        };
        let booted = Self::boot_with(config, sid, first, &mut network).await;
        match booted {
            Ok(mut s) => {
                s.network = tokio::sync::Mutex::new(network);
                Ok(s)
            }
            Err(e) => {
                if let Some(n) = network.as_mut() {
                    if let Err(d) = n.detach().await {
                        log::error!("pod {sid}: removing the network after a failed boot: {d}");
                    }
                }
                Err(e)
            }
        }
    }

    async fn boot_with(
        config: &Config,
        sid: &str,
        first: FirstContainer<'_>,
        network: &mut Option<PodNetwork>,
    ) -> Result<Self> {
        let dir = state_dir(sid);
        let mut vm = VmConfig {
            kernel: config.kernel.clone(),
            initramfs: config.initramfs.clone(),
            cmdline: format!(
                "console=ttyS0 quiet reboot=k panic=1 {}",
                config.kernel_params
            )
            .trim_end()
            .to_string(),
            vcpus: first.size.vcpus,
            memory_mib: first.size.memory_mib,
            serial: Serial::File(dir.join("console.log")),
            api_socket: dir.join("api.sock"),
            vsock: Vsock {
                cid: GUEST_CID,
                socket: dir.join("vsock.sock"),
            },
            fs: Vec::new(),
            block: Vec::new(),
            rng: true,
            net: network
                .iter()
                .flat_map(PodNetwork::vm_nics)
                .map(|n| Net {
                    tap_fd: n.tap_fd,
                    mac: n.mac,
                })
                .collect(),
        };
        let mut guest_mounts = Vec::new();
        match config.share {
            Share::Virtiofs => {
                vm.fs.push(FsShare::pod_share(&shared_dir(sid)));
                guest_mounts.push(AgentMount {
                    source: SHARE_TAG.into(),
                    destination: GUEST_SHARE.into(),
                    fstype: "virtiofs".into(),
                    ..Default::default()
                });
            }
            Share::BlockCopy => {
                let image = dir.join(format!("{}.ext4", first.id));
                mounts::ext4_image(first.host_rootfs, &image).await?;
                vm.block.push(Block {
                    path: image,
                    read_only: false,
                });
                guest_mounts.push(AgentMount {
                    source: "/dev/vda".into(),
                    destination: first.guest_rootfs.display().to_string(),
                    fstype: "ext4".into(),
                    ..Default::default()
                });
            }
        }
        let vmm = Vmm::start(&config.vmm, &vm, &dir.join("vm.json"), &dir.join("vmm.log")).await?;
        let _ = std::fs::write(dir.join("vmm.pid"), vmm.pid().to_string());
        log::info!("pod {sid}: carapace-vmm pid {}", vmm.pid());
        let exit = vmm.exit_watch();
        let connected = agent::connect(
            &dir.join("vsock.sock"),
            Duration::from_secs(config.agent_timeout_secs),
            move || exit.borrow().is_none(),
        )
        .await;
        let agent = match connected {
            Ok(a) => a,
            Err(e) => {
                let console = tail(&dir.join("console.log"), 2000);
                let vmm_log = tail(&dir.join("vmm.log"), 1000);
                vmm.stop(Duration::ZERO).await;
                return Err(ShimError::Internal(format!(
                    "{e}\n--- vmm log ---\n{vmm_log}\n--- guest console ---\n{console}"
                )));
            }
        };
        let mut req = CreateSandboxRequest {
            sandbox_id: sid.to_string(),
            hostname: first.hostname.clone().unwrap_or_default(),
            mounts: guest_mounts,
            ..Default::default()
        };
        if let Some(path) = &first.resolv_conf {
            match std::fs::read_to_string(path) {
                Ok(text) => network::dns_from_resolv_conf(&text, &mut req),
                Err(e) => log::warn!("pod {sid}: reading {}: {e}", path.display()),
            }
        }
        if let Err(e) = agent
            .create_sandbox(ctx_timeout(Duration::from_secs(30)), &req)
            .await
        {
            vmm.stop(Duration::ZERO).await;
            return Err(ShimError::agent("CreateSandbox", e));
        }
        if let Some(n) = network.as_ref() {
            if let Err(e) = n.configure_guest(&agent).await {
                vmm.stop(Duration::ZERO).await;
                return Err(e.into());
            }
        }
        Ok(Self {
            id: sid.to_string(),
            dir,
            share: config.share,
            vmm,
            agent,
            network: tokio::sync::Mutex::new(None),
            stopping: AtomicBool::new(false),
        })
    }

    /// A watch of the VMM's exit status.
    pub fn vmm_exit(&self) -> watch::Receiver<Option<i32>> {
        self.vmm.exit_watch()
    }

    /// Whether [`Sandbox::teardown`] has begun (a VMM exit after that is expected).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The end of the VMM's log, for error reports.
    pub fn vmm_log_tail(&self) -> String {
        tail(&self.dir.join("vmm.log"), 3000)
    }

    /// The end of the guest's serial console, for error reports.
    pub fn console_tail(&self) -> String {
        tail(&self.dir.join("console.log"), 3000)
    }

    /// Stops the VM (DestroySandbox, then signals) and removes every host-side trace.
    pub async fn teardown(&self) -> Result<()> {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        log::info!("pod {}: tearing down", self.id);
        if !self.vmm.exited() {
            let r = self
                .agent
                .destroy_sandbox(
                    ctx_timeout(Duration::from_secs(5)),
                    &DestroySandboxRequest::new(),
                )
                .await;
            if let Err(e) = r {
                log::warn!("pod {}: DestroySandbox: {e}", self.id);
            }
        }
        self.vmm.stop(Duration::from_secs(5)).await;
        let detached = match self.network.lock().await.as_mut() {
            Some(n) => n.detach().await.map_err(ShimError::from),
            None => Ok(()),
        };
        let cleaned = cleanup_dir(&self.dir);
        detached.and(cleaned)
    }
}

/// The last `max` bytes of a log file, for error messages.
fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[start..]).into_owned()
}
