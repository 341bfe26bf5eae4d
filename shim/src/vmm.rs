//! The pod's `carapace-vmm` child: the VM the shim asks for, written as the VMM's `--config`
//! JSON (whose keys the shared `carapace-vmm-config` crate defines for both sides), starting
//! it, watching its exit, and stopping it (SIGTERM, then SIGKILL).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use carapace_vmm_config as schema;
use tokio::process::Child;
use tokio::sync::watch;

use crate::error::{Result, ShimError};

pub use schema::{BlockConfig as Block, Serial, VsockConfig as Vsock};

/// The guest's vsock context id (each VM has its own hybrid socket, so all can share it).
pub const GUEST_CID: u64 = 3;
/// The virtio-fs tag of the pod's share.
pub const SHARE_TAG: &str = "carapace";

/// The pod's VM as the shim builds it: the parts of carapace-vmm's configuration a pod always
/// has (initramfs, control socket, vsock) are required here, and nets are inherited taps.
/// [`VmConfig::vmm_config`] turns it into the VMM's own configuration type, the only one
/// serialized.
#[derive(Debug)]
pub struct VmConfig {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs with the agent as /init.
    pub initramfs: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Serial console (a file for pods).
    pub serial: Serial,
    /// The control socket.
    pub api_socket: PathBuf,
    /// The hybrid vsock.
    pub vsock: Vsock,
    /// virtio-fs shares.
    pub fs: Vec<FsShare>,
    /// Block devices (the block-copy stop-gap only).
    pub block: Vec<Block>,
    /// A virtio-rng device (the guest's entropy for container workloads).
    pub rng: bool,
    /// virtio-net devices, each on a tap the VMM inherits (the pod's network).
    pub net: Vec<Net>,
    /// The VMM's threads under their seccomp filters.
    pub seccomp: bool,
    /// Each NIC's limits on what it delivers to the guest.
    pub net_rx_limit: Option<schema::RateLimitConfig>,
    /// Each NIC's limits on what it takes from the guest.
    pub net_tx_limit: Option<schema::RateLimitConfig>,
    /// The jail the VMM confines itself to.
    pub jail: Option<schema::JailConfig>,
}

/// One virtio-net device on an inherited tap descriptor.
#[derive(Debug)]
pub struct Net {
    /// The tap's descriptor in the VMM (the same number as in the shim: it is inherited).
    pub tap_fd: RawFd,
    /// The guest's MAC address.
    pub mac: String,
}

/// One virtio-fs share.
#[derive(Debug, Clone, PartialEq)]
pub struct FsShare(schema::FsConfig);

impl FsShare {
    /// The pod's share of `dir` as the virtio-fs contract describes it: tag [`SHARE_TAG`], no
    /// guest cache, writable, no DAX, no device nodes.
    pub fn pod_share(dir: &Path) -> Self {
        Self(schema::FsConfig {
            tag: SHARE_TAG.into(),
            path: dir.to_path_buf(),
            cache: schema::FsCache::Auto,
            dax: false,
            read_only: false,
            allow_devices: false,
        })
    }
}

impl VmConfig {
    /// The configuration carapace-vmm reads, in the VMM's own type (every key named, so a
    /// key added to the schema is decided here).
    pub fn vmm_config(&self) -> schema::VmConfig {
        let VmConfig {
            kernel,
            initramfs,
            cmdline,
            vcpus,
            memory_mib,
            serial,
            api_socket,
            vsock,
            fs,
            block,
            rng,
            net,
            seccomp,
            jail,
            net_rx_limit,
            net_tx_limit,
        } = self;
        schema::VmConfig {
            kernel: kernel.clone(),
            initramfs: Some(initramfs.clone()),
            cmdline: cmdline.clone(),
            vcpus: *vcpus,
            memory_mib: *memory_mib,
            serial: serial.clone(),
            api_socket: Some(api_socket.clone()),
            block: block.clone(),
            net: net
                .iter()
                .map(|n| schema::NetConfig {
                    tap: None,
                    tap_fd: Some(n.tap_fd),
                    mac: Some(n.mac.clone()),
                    rx_rate_limit: net_rx_limit.clone(),
                    tx_rate_limit: net_tx_limit.clone(),
                })
                .collect(),
            vsock: Some(vsock.clone()),
            rng: *rng,
            fs: fs.iter().map(|s| s.0.clone()).collect(),
            seccomp: *seccomp,
            jail: jail.clone(),
        }
    }
}

/// A running VMM.
pub struct Vmm {
    pid: u32,
    exit: watch::Receiver<Option<i32>>,
}

impl Vmm {
    /// Writes `config` to `config_path` and starts `binary --config config_path`, its output
    /// appended to `log`, inheriting the descriptors `config.net` names (the shim's are
    /// close-on-exec, so no other child gets them), born in the cgroup whose `cgroup.procs`
    /// is `procs` (the child moves itself there before it executes the VMM, so every page
    /// the VMM touches is charged to the pod), in the network namespace `netns` when given
    /// (the pod's own, see [`crate::network::PodNetwork::prewire`]: the VMM's jail moves the
    /// VMM itself on to an empty one). A task owns the child and records its exit status.
    pub async fn start(
        binary: &Path,
        config: &VmConfig,
        config_path: &Path,
        log: &Path,
        procs: Option<OwnedFd>,
        netns: Option<RawFd>,
    ) -> Result<Self> {
        let json = serde_json::to_vec_pretty(&config.vmm_config())
            .map_err(|e| ShimError::Internal(format!("serializing the VM config: {e}")))?;
        std::fs::write(config_path, json)
            .map_err(|e| ShimError::io(format!("writing {}", config_path.display()), e))?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| ShimError::io(format!("opening {}", log.display()), e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| ShimError::io("duplicating the VMM log", e))?;
        let mut command = tokio::process::Command::new(binary);
        command
            .arg("--config")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .kill_on_drop(false);
        let inherit: Vec<RawFd> = config.net.iter().map(|n| n.tap_fd).collect();
        let procs_fd = procs.as_ref().map(|p| p.as_raw_fd());
        if !inherit.is_empty() || procs_fd.is_some() || netns.is_some() {
            // SAFETY: the closure runs in the forked child before exec and only calls write(2),
            // setns(2) and fcntl(2), which are async-signal-safe, on descriptors the parent
            // keeps open across the spawn (`procs` lives until `spawn` returns, `netns` with
            // the pod's network).
            unsafe {
                command.pre_exec(move || {
                    if let Some(fd) = netns {
                        if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    if let Some(fd) = procs_fd {
                        // "0": the writing process itself.
                        if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for &fd in &inherit {
                        if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut child: Child = command
            .spawn()
            .map_err(|e| ShimError::io(format!("starting {}", binary.display()), e))?;
        drop(procs);
        let pid = child
            .id()
            .ok_or_else(|| ShimError::Internal("the VMM exited at once".into()))?;
        let (tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
                }
                Err(e) => {
                    log::error!("waiting for the VMM: {e}");
                    255
                }
            };
            log::info!(
                "carapace-vmm (pid {pid}) exited with {code}: {}",
                schema::status::describe(code)
            );
            let _ = tx.send(Some(code));
        });
        Ok(Self { pid, exit })
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A receiver that holds the exit status once the VMM has ended.
    pub fn exit_watch(&self) -> watch::Receiver<Option<i32>> {
        self.exit.clone()
    }

    /// True once the VMM has exited.
    pub fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Waits up to `grace` for the VMM to end by itself, then sends SIGTERM, then SIGKILL
    /// after another 5 s; returns once it has been reaped.
    pub async fn stop(&self, grace: Duration) {
        let mut rx = self.exit.clone();
        if tokio::time::timeout(grace, rx.wait_for(Option::is_some))
            .await
            .is_ok()
        {
            return;
        }
        for (sig, wait) in [
            (libc::SIGTERM, Duration::from_secs(5)),
            (libc::SIGKILL, Duration::from_secs(10)),
        ] {
            if self.exited() {
                return;
            }
            log::warn!("stopping carapace-vmm (pid {}) with signal {sig}", self.pid);
            // SAFETY: kill(2) on our own unreaped child (the exit watch is unset, so the
            // pid has not been reaped and cannot have been reused).
            unsafe { libc::kill(self.pid as libc::pid_t, sig) };
            if tokio::time::timeout(wait, rx.wait_for(Option::is_some))
                .await
                .is_ok()
            {
                return;
            }
        }
        log::error!("carapace-vmm (pid {}) did not die", self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_vm() -> VmConfig {
        VmConfig {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            cmdline: "console=ttyS0".into(),
            vcpus: 1,
            memory_mib: 256,
            serial: Serial::File("/s".into()),
            api_socket: "/a".into(),
            vsock: Vsock {
                cid: GUEST_CID,
                socket: "/v".into(),
            },
            fs: vec![FsShare::pod_share(Path::new("/run/carapace/p/shared"))],
            block: vec![],
            rng: true,
            net: vec![Net {
                tap_fd: 5,
                mac: "02:00:00:00:00:01".into(),
            }],
            seccomp: true,
            jail: None,
            net_rx_limit: None,
            net_tx_limit: None,
        }
    }

    #[test]
    fn config_follows_the_vmm_format() {
        let c = pod_vm();
        let v: serde_json::Value = serde_json::to_value(c.vmm_config()).unwrap();
        assert_eq!(v["serial"]["file"], "/s");
        assert_eq!(v["vsock"]["cid"], 3);
        assert_eq!(v["fs"][0]["tag"], "carapace");
        assert_eq!(v["fs"][0]["path"], "/run/carapace/p/shared");
        assert_eq!(v["fs"][0]["cache"], "auto");
        assert!(v.get("block").is_none(), "empty lists are left out");
        assert_eq!(v["net"][0]["tap_fd"], 5);
        assert_eq!(v["net"][0]["mac"], "02:00:00:00:00:01");
        assert!(
            v.get("seccomp").is_none(),
            "the filters' default (on) is left out"
        );
        let off = VmConfig {
            seccomp: false,
            ..pod_vm()
        };
        assert_eq!(
            serde_json::to_value(off.vmm_config()).unwrap()["seccomp"],
            false
        );
    }

    #[test]
    fn the_vmm_reads_what_the_shim_writes_as_before() {
        let c = pod_vm().vmm_config();
        let written = String::from_utf8(serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        assert_eq!(schema::VmConfig::from_json(&written).unwrap(), c);
        // The file the shim wrote before the schema was shared: the VMM reads the same VM.
        let before = r#"{"kernel": "/k", "initramfs": "/i", "cmdline": "console=ttyS0",
            "vcpus": 1, "memory_mib": 256, "serial": {"file": "/s"}, "api_socket": "/a",
            "vsock": {"cid": 3, "socket": "/v"},
            "fs": [{"tag": "carapace", "path": "/run/carapace/p/shared", "cache": "auto",
                    "dax": false, "read_only": false}],
            "rng": true, "net": [{"tap_fd": 5, "mac": "02:00:00:00:00:01"}]}"#;
        assert_eq!(schema::VmConfig::from_json(before).unwrap(), c);
        let mut block = pod_vm();
        block.fs.clear();
        block.block.push(Block {
            path: "/run/carapace/p/c.ext4".into(),
            read_only: false,
            rate_limit: None,
        });
        let v = serde_json::to_value(block.vmm_config()).unwrap();
        assert!(v.get("fs").is_none(), "empty lists are left out");
        assert_eq!(
            v["block"],
            serde_json::json!([{"path": "/run/carapace/p/c.ext4", "read_only": false}])
        );
    }
}
