//! What the pod's lifecycle does outside the shim's own state, behind narrow traits the unit
//! tests fake: the host ([`Host`]: the pod's directories, a container's mounts, booting the
//! VM), the booted VM ([`Vm`]), and containerd's event sink ([`EventSink`]); with their real
//! implementations ([`System`], [`Sandbox`], [`Events`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::Mount;
use containerd_shim_protos::protobuf::MessageDyn;
use oci_spec::runtime::Spec;
use tokio::sync::watch;

use crate::agent::Agent;
use crate::config::{Config, Share};
use crate::error::Result;
use crate::events::Events;
use crate::hostfs;
use crate::mounts;
use crate::sandbox::{self, FirstContainer, PodId, Sandbox};
use crate::spec;

/// The host side of a pod's containers.
#[async_trait]
pub trait Host: Send + Sync {
    /// Creates the pod's state directory and its share ([`sandbox::prepare_dirs`]).
    fn prepare_dirs(&self, sid: &PodId) -> Result<()>;

    /// Mounts container `id`'s rootfs (containerd's `rootfs` mounts, or the bundle's own
    /// directory) in the pod's private tree, rewrites `oci` for the guest and binds its host
    /// paths into the share; returns the rootfs's host path.
    async fn mount_container(
        &self,
        sid: &PodId,
        id: &str,
        rootfs: &[Mount],
        bundle: &Path,
        oci: &mut Spec,
        share: Share,
    ) -> Result<PathBuf>;

    /// Boots the pod's VM for its first container ([`Sandbox::boot`]).
    async fn boot(
        &self,
        config: &Config,
        sid: &PodId,
        first: FirstContainer<'_>,
    ) -> Result<Arc<dyn Vm>>;

    /// Removes the state directory of a pod whose VM never booted.
    fn remove_dirs(&self, sid: &PodId) -> Result<()>;

    /// Removes container `id`'s part of the pod's share ([`sandbox::cleanup_container`]).
    fn cleanup_container(&self, sid: &PodId, id: &str) -> Result<()>;
}

/// A booted pod VM with its agent connected.
#[async_trait]
pub trait Vm: Send + Sync {
    /// The pod's id.
    fn id(&self) -> &PodId;
    /// How rootfs directories reach the guest.
    fn share(&self) -> Share;
    /// The agent.
    fn agent(&self) -> Arc<dyn Agent>;
    /// The VMM's host pid: the pid every task of the pod reports.
    fn pid(&self) -> u32;
    /// Whether the VMM has exited.
    fn exited(&self) -> bool;
    /// A watch of the VMM's exit status.
    fn exit_watch(&self) -> watch::Receiver<Option<i32>>;
    /// Whether teardown has begun (a VMM exit after that is expected).
    fn stopping(&self) -> bool;
    /// The end of the guest's serial console, for error reports.
    fn console_tail(&self) -> String;
    /// The end of the VMM's log, for error reports.
    fn vmm_log_tail(&self) -> String;
    /// Joins the pod's prewired NIC to what its caller added after Create, if anything
    /// ([`Sandbox::adopt_network`]); before the first container starts.
    async fn adopt_network(&self) -> Result<()>;
    /// Stops the VM and removes every host-side trace of the pod.
    async fn teardown(&self) -> Result<()>;
}

/// Where task events go.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// The containerd namespace of the shim's tasks.
    fn namespace(&self) -> &str;
    /// Queues one event (a failure is logged, not returned).
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

/// The real host: this machine's file systems and `carapace-vmm`.
pub struct System;

#[async_trait]
impl Host for System {
    fn prepare_dirs(&self, sid: &PodId) -> Result<()> {
        sandbox::prepare_dirs(sid)
    }

    async fn mount_container(
        &self,
        sid: &PodId,
        id: &str,
        rootfs: &[Mount],
        bundle: &Path,
        oci: &mut Spec,
        share: Share,
    ) -> Result<PathBuf> {
        // Everything is mounted in the pod's private tree, never seen by the guest (it sees
        // the read-only export of it); no path under it is followed through a link.
        let mnt = hostfs::Dir::open(&sandbox::mnt_dir(sid))?;
        let rootfs_rel = spec::container_dir(id).join("rootfs");
        let root_dir = spec::host_root_dir(oci, bundle);
        let host_rootfs = mounts::mount_rootfs(rootfs, &root_dir, &mnt, &rootfs_rel).await?;
        let binds = spec::for_guest(oci, id, share == Share::Virtiofs)?;
        for b in &binds {
            hostfs::bind(&mnt, &b.source, &b.share_path, b.flags)?;
        }
        Ok(host_rootfs)
    }

    async fn boot(
        &self,
        config: &Config,
        sid: &PodId,
        first: FirstContainer<'_>,
    ) -> Result<Arc<dyn Vm>> {
        Ok(Arc::new(Sandbox::boot(config, sid, first).await?))
    }

    fn remove_dirs(&self, sid: &PodId) -> Result<()> {
        sandbox::cleanup_dir(&sandbox::state_dir(sid))
    }

    fn cleanup_container(&self, sid: &PodId, id: &str) -> Result<()> {
        sandbox::cleanup_container(sid, id)
    }
}

#[async_trait]
impl Vm for Sandbox {
    fn id(&self) -> &PodId {
        &self.id
    }
    fn share(&self) -> Share {
        self.share
    }
    fn agent(&self) -> Arc<dyn Agent> {
        Arc::new(self.agent.clone())
    }
    fn pid(&self) -> u32 {
        self.vmm.pid()
    }
    fn exited(&self) -> bool {
        self.vmm.exited()
    }
    fn exit_watch(&self) -> watch::Receiver<Option<i32>> {
        self.vmm_exit()
    }
    fn stopping(&self) -> bool {
        Sandbox::stopping(self)
    }
    fn console_tail(&self) -> String {
        Sandbox::console_tail(self)
    }
    fn vmm_log_tail(&self) -> String {
        Sandbox::vmm_log_tail(self)
    }
    async fn adopt_network(&self) -> Result<()> {
        Sandbox::adopt_network(self).await
    }
    async fn teardown(&self) -> Result<()> {
        Sandbox::teardown(self).await
    }
}

#[async_trait]
impl EventSink for Events {
    fn namespace(&self) -> &str {
        Events::namespace(self)
    }
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        Events::publish(self, topic, event).await
    }
}
