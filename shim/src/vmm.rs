//! The pod's `carapace-vmm` child: its JSON configuration (the VMM's `--config` format),
//! starting it, watching its exit, and stopping it (SIGTERM, then SIGKILL).

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::process::Child;
use tokio::sync::watch;

use crate::error::{Result, ShimError};

/// The guest's vsock context id (each VM has its own hybrid socket, so all can share it).
pub const GUEST_CID: u64 = 3;
/// The virtio-fs tag of the pod's share.
pub const SHARE_TAG: &str = "carapace";

/// `VmConfig` of carapace-vmm, the keys the shim sets (the VMM refuses unknown keys, so this
/// mirrors its `vmm/src/config.rs`; `fs` follows the virtio-fs contract).
#[derive(Debug, Serialize)]
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
    /// Serial console to a file.
    pub serial: Serial,
    /// The control socket.
    pub api_socket: PathBuf,
    /// The hybrid vsock.
    pub vsock: Vsock,
    /// virtio-fs shares (omitted when empty, so a VMM without virtio-fs accepts the config).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsShare>,
    /// Block devices (the block-copy stop-gap only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<Block>,
    /// A virtio-rng device (the guest's entropy for container workloads).
    pub rng: bool,
    /// virtio-net devices, each on a tap the VMM inherits (the pod's network).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<Net>,
}

/// One virtio-net device on an inherited tap descriptor.
#[derive(Debug, Serialize)]
pub struct Net {
    /// The tap's descriptor in the VMM (the same number as in the shim: it is inherited).
    pub tap_fd: RawFd,
    /// The guest's MAC address.
    pub mac: String,
}

/// The serial console's destination.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Serial {
    /// Appended to this file.
    File(PathBuf),
}

/// The hybrid vsock device.
#[derive(Debug, Serialize)]
pub struct Vsock {
    /// Guest context id.
    pub cid: u64,
    /// Host-side Unix socket.
    pub socket: PathBuf,
}

/// One virtio-fs share.
#[derive(Debug, Serialize)]
pub struct FsShare {
    /// The tag the guest mounts.
    pub tag: String,
    /// The host directory.
    pub path: PathBuf,
    /// Cache mode.
    pub cache: String,
    /// DAX window.
    pub dax: bool,
    /// Read-only share.
    pub read_only: bool,
}

/// One virtio-blk device.
#[derive(Debug, Serialize)]
pub struct Block {
    /// Backing file.
    pub path: PathBuf,
    /// Refuse writes.
    pub read_only: bool,
}

impl FsShare {
    /// The pod's share of `dir` as the virtio-fs contract describes it.
    pub fn pod_share(dir: &Path) -> Self {
        Self {
            tag: SHARE_TAG.into(),
            path: dir.to_path_buf(),
            cache: "never".into(),
            dax: false,
            read_only: false,
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
    /// close-on-exec, so no other child gets them). A task owns the child and records its exit
    /// status.
    pub async fn start(
        binary: &Path,
        config: &VmConfig,
        config_path: &Path,
        log: &Path,
    ) -> Result<Self> {
        let json = serde_json::to_vec_pretty(config)
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
        if !inherit.is_empty() {
            // SAFETY: the closure runs in the forked child before exec and only calls fcntl(2),
            // which is async-signal-safe, on descriptors the parent keeps open across the spawn.
            unsafe {
                command.pre_exec(move || {
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
            log::info!("carapace-vmm (pid {pid}) exited with {code}");
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

    #[test]
    fn config_follows_the_vmm_format() {
        let c = VmConfig {
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
        };
        let v: serde_json::Value = serde_json::to_value(&c).unwrap();
        assert_eq!(v["serial"]["file"], "/s");
        assert_eq!(v["vsock"]["cid"], 3);
        assert_eq!(v["fs"][0]["tag"], "carapace");
        assert_eq!(v["fs"][0]["path"], "/run/carapace/p/shared");
        assert_eq!(v["fs"][0]["cache"], "never");
        assert!(v.get("block").is_none(), "empty lists are left out");
        assert_eq!(v["net"][0]["tap_fd"], 5);
        assert_eq!(v["net"][0]["mac"], "02:00:00:00:00:01");
    }
}
