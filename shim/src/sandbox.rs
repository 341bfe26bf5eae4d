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
use carapace_vmm_config::JailConfig;
use tokio::sync::watch;

use crate::agent::{self, ctx_timeout};
use crate::cgroup::PodCgroup;
use crate::config::{Config, Share};
use crate::error::{Result, ShimError};
use crate::hostfs;
use crate::limits::DeviceLimits;
use crate::mounts;
use crate::network::{self, PodNetwork};
use crate::sizing::VmSize;
use crate::spec::GUEST_SHARE;
use crate::vmm::{Block, FsShare, Net, Serial, VmConfig, Vmm, Vsock, GUEST_CID, SHARE_TAG};

/// Where every pod's state directory lives (0711: only root lists it; each pod's is 0700).
pub const STATE_ROOT: &str = "/run/carapace";

pub use crate::spec::PodId;

/// The state directory of pod `sid`.
pub fn state_dir(sid: &PodId) -> PathBuf {
    Path::new(STATE_ROOT).join(sid.as_str())
}

/// The pod's private mount tree, where the shim mounts every rootfs and bind: the guest never
/// sees it (see [`crate::hostfs`]).
pub fn mnt_dir(sid: &PodId) -> PathBuf {
    state_dir(sid).join("mnt")
}

/// The host directory shared with pod `sid`'s guest: a read-only slave bind of
/// [`mnt_dir`].
pub fn shared_dir(sid: &PodId) -> PathBuf {
    state_dir(sid).join("shared")
}

/// What pod `sid`'s VMM writes and listens on: its console log and its control and vsock
/// sockets. The one directory of the pod's that the VMM's jail keeps writable, and the
/// configured VMM user's own when the jail drops root (see [`jail_config`]).
pub fn vm_dir(sid: &PodId) -> PathBuf {
    state_dir(sid).join(VM_DIR)
}

/// [`vm_dir`]'s name in the pod's state directory.
const VM_DIR: &str = "vm";

/// The guest's serial console log, in the VMM's directory of the pod whose state directory
/// is `pod_dir`.
fn console_log(pod_dir: &Path) -> PathBuf {
    pod_dir.join(VM_DIR).join("console.log")
}

/// Creates the pod's state directory (0700), its VMM's directory (0700, see [`vm_dir`]) and its share (the private tree and its
/// read-only export); a leftover of an earlier shim of the same pod (which cannot be running:
/// containerd groups a pod into one shim) is removed.
pub fn prepare_dirs(sid: &PodId) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let root = Path::new(STATE_ROOT);
    std::fs::create_dir_all(root)
        .map_err(|e| ShimError::io(format!("creating {STATE_ROOT}"), e))?;
    let md = std::fs::symlink_metadata(root)
        .map_err(|e| ShimError::io(format!("reading {STATE_ROOT}"), e))?;
    if !md.is_dir() {
        return Err(ShimError::Internal(format!(
            "{STATE_ROOT} is not a directory"
        )));
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| ShimError::io(format!("making {STATE_ROOT} 0711"), e))?;
    let dir = state_dir(sid);
    if std::fs::symlink_metadata(&dir).is_ok() {
        log::warn!("removing a leftover {}", dir.display());
        cleanup_dir(&dir)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| ShimError::io(format!("creating {}", dir.display()), e))?;
    let made = std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.join(VM_DIR))
        .map_err(|e| ShimError::io(format!("creating {}", dir.join(VM_DIR).display()), e))
        .and_then(|()| hostfs::Dir::open(&dir))
        .and_then(|pod| hostfs::make_share(&pod, "mnt", "shared"));
    if let Err(e) = made {
        let _ = cleanup_dir(&dir);
        return Err(e);
    }
    Ok(())
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

/// Removes container `cid`'s part of pod `sid`'s share: its mounts as the guest sees them,
/// then the shim's own, then its directory.
pub fn cleanup_container(sid: &PodId, cid: &str) -> Result<()> {
    mounts::unmount_under(&shared_dir(sid).join(cid))?;
    cleanup_dir(&mnt_dir(sid).join(cid))
}

/// A booted pod VM with its agent connected.
pub struct Sandbox {
    /// The pod's id.
    pub id: PodId,
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
    /// The pod's host cgroup the VMM runs in, if the spec named one.
    cgroup: Option<PodCgroup>,
    /// The task carrying CRI port forwarding into the guest ([`network::forward`]), for a
    /// pod with a network.
    forward: Option<tokio::task::JoinHandle<()>>,
    stopping: AtomicBool,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(f) = &self.forward {
            f.abort();
        }
    }
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
    /// With no `netns`: whether the spec asks for a new network namespace, which the shim
    /// then makes, with a NIC prewired for what its caller adds after Create
    /// ([`PodNetwork::prewire`]).
    pub own_netns: bool,
    /// The pod's hostname (the spec's).
    pub hostname: Option<String>,
    /// The host file bound on the container's `/etc/resolv.conf`, whose DNS settings the
    /// guest gets.
    pub resolv_conf: Option<PathBuf>,
    /// The pod's host cgroup (the spec's `linux.cgroupsPath`), where its VMM runs.
    pub cgroup: Option<String>,
    /// Its devices' rate limits.
    pub limits: DeviceLimits,
}

/// The jail of the pod's VMM (none when the configuration turns it off): its root an empty
/// directory in the pod's state directory, which the VMM mounts its private tmpfs on. It
/// holds the pod's [`vm_dir`], its share and the files the VM opens, not the rest of the
/// pod's state directory.
fn jail_config(config: &Config, dir: &Path) -> Result<Option<JailConfig>> {
    use std::os::unix::fs::DirBuilderExt;
    if !config.vmm_jail {
        return Ok(None);
    }
    let root = dir.join("jail");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&root)
        .map_err(|e| ShimError::io(format!("creating {}", root.display()), e))?;
    let limit = |n: u64| (n > 0).then_some(n);
    // A VMM without shares may drop root for the configured user; with one, the passthrough
    // acts for the guest's users and stays root with a few capabilities.
    let ids = (config.share == Share::BlockCopy)
        .then(|| config.vmm_ids())
        .flatten();
    // That user's VMM rotates its console log in its directory: the directory becomes its
    // own (still 0700, inside the root-only pod directory, which the jail does not hold).
    if let Some((uid, gid)) = ids {
        let vm = dir.join(VM_DIR);
        std::os::unix::fs::chown(&vm, Some(uid), Some(gid))
            .map_err(|e| ShimError::io(format!("giving {} to {uid}:{gid}", vm.display()), e))?;
    }
    Ok(Some(JailConfig {
        root,
        uid: ids.map(|(u, _)| u),
        gid: ids.map(|(_, g)| g),
        max_file_size: limit(config.vmm_max_file_size),
        max_processes: limit(config.vmm_max_processes),
        max_open_files: limit(config.vmm_max_open_files),
    }))
}

impl Sandbox {
    /// Boots the VM of pod `sid` (its directories made by [`prepare_dirs`]), with a NIC per
    /// interface of its network namespace, connects to the agent and sets the sandbox and its
    /// network up. On failure the VM is stopped and the network removed again.
    pub async fn boot(config: &Config, sid: &PodId, first: FirstContainer<'_>) -> Result<Self> {
        let mut network = match &first.netns {
            Some(path) => Some(PodNetwork::attach_path(path).await?),
            None if first.own_netns => Some(PodNetwork::prewire().await?),
            None => None,
        };
        let cgroup = match first.cgroup.as_deref().map(PodCgroup::make).transpose() {
            Ok(c) => c,
            Err(e) => {
                if let Some(n) = network.as_mut() {
                    if let Err(d) = n.detach().await {
                        log::error!("pod {sid}: removing the network after a failed boot: {d}");
                    }
                }
                return Err(e);
            }
        };
        let booted = Self::boot_with(config, sid, first, &mut network, cgroup.as_ref()).await;
        match booted {
            Ok(mut s) => {
                s.network = tokio::sync::Mutex::new(network);
                s.cgroup = cgroup;
                Ok(s)
            }
            Err(e) => {
                if let Some(n) = network.as_mut() {
                    if let Err(d) = n.detach().await {
                        log::error!("pod {sid}: removing the network after a failed boot: {d}");
                    }
                }
                // Every failure after the VMM started stopped it: the cgroup is empty.
                if let Some(c) = &cgroup {
                    c.remove();
                }
                Err(e)
            }
        }
    }

    async fn boot_with(
        config: &Config,
        sid: &PodId,
        first: FirstContainer<'_>,
        network: &mut Option<PodNetwork>,
        cgroup: Option<&PodCgroup>,
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
            serial: Serial::File(console_log(&dir)),
            api_socket: vm_dir(sid).join("api.sock"),
            vsock: Vsock {
                cid: GUEST_CID,
                socket: vm_dir(sid).join("vsock.sock"),
            },
            fs: Vec::new(),
            block: Vec::new(),
            rng: true,
            seccomp: config.vmm_seccomp,
            net_rx_limit: first.limits.net_rx.clone(),
            net_tx_limit: first.limits.net_tx.clone(),
            jail: jail_config(config, &dir)?,
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
                    rate_limit: first.limits.blk.clone(),
                });
                guest_mounts.push(AgentMount {
                    source: "/dev/vda".into(),
                    destination: first.guest_rootfs.display().to_string(),
                    fstype: "ext4".into(),
                    ..Default::default()
                });
            }
        }
        let procs = cgroup.map(PodCgroup::procs).transpose()?;
        let vmm = Vmm::start(
            &config.vmm,
            &vm,
            &dir.join("vm.json"),
            &dir.join("vmm.log"),
            procs,
            network.as_ref().and_then(PodNetwork::own_namespace),
        )
        .await?;
        let _ = std::fs::write(dir.join("vmm.pid"), vmm.pid().to_string());
        match cgroup {
            Some(c) => log::info!(
                "pod {sid}: carapace-vmm pid {} in cgroup {}",
                vmm.pid(),
                c.dir().display()
            ),
            None => log::info!("pod {sid}: carapace-vmm pid {}", vmm.pid()),
        }
        let exit = vmm.exit_watch();
        let connected = agent::connect(
            &vm_dir(sid).join("vsock.sock"),
            Duration::from_secs(config.agent_timeout_secs),
            move || exit.borrow().is_none(),
        )
        .await;
        let agent = match connected {
            Ok(a) => a,
            Err(e) => {
                let console = tail(&console_log(&dir), 2000);
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
        // A pod runs without port forwarding rather than not at all (a host without iptables).
        let forward = match network.as_ref() {
            Some(n) => match n.forward_listener().await {
                Ok(l) => {
                    network::forward::spawn(l, vm_dir(sid).join("vsock.sock"), sid.to_string())
                        .map_err(|e| log::warn!("pod {sid}: port forwarding unavailable: {e}"))
                        .ok()
                }
                Err(e) => {
                    let why = std::error::Error::source(&e).map(|s| format!(": {s}"));
                    log::warn!(
                        "pod {sid}: port forwarding unavailable: {e}{}",
                        why.unwrap_or_default()
                    );
                    None
                }
            },
            None => None,
        };
        Ok(Self {
            id: sid.clone(),
            dir,
            share: config.share,
            vmm,
            agent,
            network: tokio::sync::Mutex::new(None),
            cgroup: None,
            forward,
            stopping: AtomicBool::new(false),
        })
    }

    /// Joins a prewired NIC to the interface the pod's caller added to its namespace after
    /// Create (`ctr run --cni`), and configures the guest's NIC; nothing for any other pod,
    /// or a second time.
    pub async fn adopt_network(&self) -> Result<()> {
        let mut network = self.network.lock().await;
        let Some(n) = network.as_mut() else {
            return Ok(());
        };
        if n.adopt().await? {
            if let Err(e) = n.configure_guest(&self.agent).await {
                n.unadopt().await;
                return Err(e.into());
            }
        }
        Ok(())
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
        tail(&console_log(&self.dir), 3000)
    }

    /// Stops the VM (DestroySandbox, then signals) and removes every host-side trace.
    pub async fn teardown(&self) -> Result<()> {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        log::info!("pod {}: tearing down", self.id);
        if let Some(f) = &self.forward {
            f.abort();
        }
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
        if let Some(c) = &self.cgroup {
            c.remove();
        }
        let detached = match self.network.lock().await.as_mut() {
            Some(n) => n.detach().await.map_err(ShimError::from),
            None => Ok(()),
        };
        let cleaned = cleanup_dir(&self.dir);
        detached.and(cleaned)
    }
}

/// The last `max` bytes of a log file, for error messages: read from the end, so a guest
/// that filled its console costs no more than `max` bytes of the shim's memory.
/// The last `max` bytes of the regular file at `path` ("" for anything else). The VMM (a
/// hostile guest's next stop, and the owner of `vm/` when it runs as `vmm_user`) can put
/// what it likes at its console log's path: no link is followed, a FIFO does not block the
/// open, and only a regular file is read.
fn tail(path: &Path, max: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let Ok(mut f) = opened else {
        return String::new();
    };
    let Ok(md) = f.metadata() else {
        return String::new();
    };
    if !md.is_file() {
        return String::new();
    }
    let len = md.len();
    let start = len.saturating_sub(max as u64);
    let mut text = Vec::with_capacity(max.min(len as usize));
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.take(max as u64).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_follows_no_link_and_reads_only_a_regular_file() {
        let dir = std::env::temp_dir().join(format!("carapace-tail-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), "host secret").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("link")).unwrap();
        let fifo =
            std::ffi::CString::new(dir.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(tail(&dir.join("secret"), 6), "secret");
        assert_eq!(tail(&dir.join("link"), 100), "", "a link is not followed");
        assert_eq!(
            tail(&dir.join("fifo"), 100),
            "",
            "a FIFO neither blocks nor is read"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pod_ids_that_would_leave_the_state_root_are_refused() {
        for bad in ["../../tmp/victim", "..", ".", "", "a/b", "/etc"] {
            let e = PodId::new(bad).unwrap_err();
            assert!(matches!(e, ShimError::InvalidArgument(_)), "{bad:?}: {e}");
        }
        let ok = PodId::new("4f2a9c-pod_1.x").unwrap();
        assert_eq!(state_dir(&ok), Path::new("/run/carapace/4f2a9c-pod_1.x"));
        assert_eq!(state_dir(&ok).parent(), Some(Path::new(STATE_ROOT)));
    }

    #[test]
    fn a_tail_reads_only_the_end() {
        let p = std::env::temp_dir().join(format!("carapace-tail-links-{}", std::process::id()));
        let mut big = vec![b'a'; 5 << 20];
        big.extend_from_slice(b"the end");
        std::fs::write(&p, &big).unwrap();
        assert_eq!(tail(&p, 7), "the end");
        assert_eq!(tail(&p, 9), "aathe end");
        assert_eq!(tail(&p.with_extension("missing"), 10), "");
        std::fs::remove_file(&p).unwrap();
    }
}
