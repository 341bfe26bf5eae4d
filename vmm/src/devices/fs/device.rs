//! The virtio-fs device: the passthrough file system over the shared directory behind the
//! share's guard, features and configuration space (tag and request queue count), and the
//! queue handler.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_virtio_queue::QueueT as _;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_queue::Queue;

use super::guard::{Guard, Limits, Policy};
use super::memory::SharedMemory;
use super::request::{self, FsServer, Outcome, SharedGuard};
use super::{CacheMode, FsError, NUM_REQUEST_QUEUES, QUEUE_SIZE, TAG_LEN};
use crate::devices::virtio::common::{split_address, QueueConfig, VirtioCommon};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, DeviceCounters, GuestMemory, Interrupt, LogCounter,
    VirtioDevice, VIRTIO_F_VERSION_1,
};

/// struct virtio_fs_config: tag[36] and num_request_queues.
const CONFIG_LEN: usize = TAG_LEN + 4;

/// The high-priority queue and the request queues.
const QUEUES: [u16; 1 + NUM_REQUEST_QUEUES as usize] =
    [QUEUE_SIZE; 1 + NUM_REQUEST_QUEUES as usize];

/// A virtio-fs device sharing one host directory.
pub struct Fs {
    tag: String,
    config: [u8; CONFIG_LEN],
    /// Features and activation; the queues are virtio-queue 0.17's (see memory.rs for why),
    /// configured like the transport's, over the memory alias.
    common: VirtioCommon<SharedMemory, fuse_virtio_queue::Queue>,
    server: Arc<FsServer>,
    /// The share's rules and accounting, which the server calls through.
    guard: Arc<SharedGuard>,
    policy: Policy,
    counters: DeviceCounters,
    /// Requests answered ENOSYS so far, to rate-limit their logs.
    denials: LogCounter,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("policy", &self.policy)
            .field("active", &self.common.is_active())
            .finish()
    }
}

/// How one directory is shared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShareOptions {
    /// The guest's cache policy.
    pub cache: CacheMode,
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// Let the guest create block and character device nodes on the host.
    pub allow_devices: bool,
    /// Bounds on the inodes and handles the guest can make the VMM hold; `None`: from the
    /// process's RLIMIT_NOFILE when the device is created ([`Limits::from_rlimit`]).
    pub limits: Option<Limits>,
}

impl Fs {
    /// Shares `path` under `tag` with the default options but `cache` and `read_only` (no
    /// device nodes, bounds from RLIMIT_NOFILE).
    pub fn new(tag: &str, path: &Path, cache: CacheMode, read_only: bool) -> Result<Fs, FsError> {
        Fs::with_options(
            tag,
            path,
            ShareOptions {
                cache,
                read_only,
                ..ShareOptions::default()
            },
        )
    }

    /// Shares `path` under `tag`. The directory is opened now, so a missing one is reported at
    /// start-up rather than at the guest's mount.
    pub fn with_options(tag: &str, path: &Path, options: ShareOptions) -> Result<Fs, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.to_string()));
        }
        let share_err = |source| FsError::Share {
            path: path.display().to_string(),
            source,
        };
        let root = path
            .to_str()
            .ok_or_else(|| {
                share_err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the path is not UTF-8",
                ))
            })?
            .to_string();
        if !path.is_dir() {
            return Err(share_err(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        let (timeout, cache_policy) = match options.cache {
            CacheMode::Never => (Duration::ZERO, CachePolicy::Never),
            CacheMode::Auto => (Duration::from_secs(1), CachePolicy::Auto),
            CacheMode::Always => (Duration::from_secs(86400), CachePolicy::Always),
        };
        let cfg = Config {
            root_dir: root,
            cache_policy,
            attr_timeout: timeout,
            entry_timeout: timeout,
            // The safe choices, spelled out rather than left to the crate's defaults:
            // O_PATH descriptors, not file handles (open_by_handle_at reaches the whole host
            // file system and needs CAP_DAC_READ_SEARCH).
            inode_file_handles: false,
            // The guest's page cache must not hold writes the host cannot see.
            writeback: false,
            // Every open goes through the server and its checks.
            no_open: false,
            no_opendir: false,
            killpriv_v2: false,
            // Needed for the xattrs the guest reads; setting is limited by the guard.
            xattr: true,
            // The root is opened at FUSE_INIT (and again after DESTROY); with import off the
            // server would also turn on no-open and writeback as if under a VFS.
            do_import: true,
            dax_file_size: None,
            ..Config::default()
        };
        let fs: PassthroughFs<()> = PassthroughFs::new(cfg).map_err(share_err)?;
        // Import once now: an unreadable directory fails here, not at the guest's mount.
        // The import (here and at each FUSE_INIT) sets the process's umask to 0, and that
        // stays: the passthrough applies the guest's umask itself (`mode & !umask` in mkdir,
        // mknod and create) and relies on the host applying none on top, or a guest's
        // `mkdir -m 1777 /tmp` would become 1755 on the host. Every file the VMM itself
        // creates (sockets included) must therefore be given explicit permissions.
        fs.import().map_err(share_err)?;
        let policy = Policy {
            read_only: options.read_only,
            allow_devices: options.allow_devices,
        };
        let limits = options.limits.unwrap_or_else(Limits::from_rlimit);
        let guard = Arc::new(Guard::new(fs, policy, limits));

        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        Ok(Fs {
            tag: tag.to_string(),
            config,
            common: VirtioCommon::new(VIRTIO_F_VERSION_1, QUEUES.len()),
            server: Arc::new(Server::new(guard.clone())),
            guard,
            policy,
            counters: DeviceCounters::default(),
            denials: LogCounter::default(),
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Inodes (the root excluded) and open handles the guest holds on the share now.
    pub fn live(&self) -> (usize, usize) {
        self.guard.live()
    }

    /// The bounds on them.
    pub fn limits(&self) -> Limits {
        self.guard.limits()
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    /// Serves every chain the guest made available on queue `index`, then raises one interrupt.
    fn process_requests(&mut self, index: usize) {
        let Some(active) = self.common.active_mut() else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index) else {
            log::warn!("fs: notification for queue {index}, which does not exist");
            return;
        };
        let mem = active.mem.alias();
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let done = request::serve(&self.server, mem, chain);
            match done.outcome {
                Outcome::Served => self.counters.completed(u64::from(done.used_len)),
                Outcome::Denied(errno) => {
                    self.counters.completed(u64::from(done.used_len));
                    if let Some(n) = self.denials.count() {
                        log::info!("fs: answered a request with errno {errno} ({n} so far)");
                    }
                }
                Outcome::Refused(why) => self.counters.bad_request("fs", why),
            }
            if let Err(e) = queue.add_used(mem, head, done.used_len) {
                log::debug!("fs: cannot return chain {head}: {e}");
                continue;
            }
            used_any = true;
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
    }
}

/// A virtio-queue 0.17 queue set up like `q` (the shared [`QueueConfig`], built in the
/// other version's type).
pub(super) fn alias_queue(q: &Queue) -> Result<fuse_virtio_queue::Queue, ActivateError> {
    let cfg = QueueConfig::of(q);
    let mut c = fuse_virtio_queue::Queue::new(cfg.max_size)
        .map_err(|e| ActivateError::Backend(std::io::Error::other(format!("queue: {e:?}"))))?;
    c.set_size(cfg.size);
    let (lo, hi) = split_address(cfg.desc_table);
    c.set_desc_table_address(lo, hi);
    let (lo, hi) = split_address(cfg.avail_ring);
    c.set_avail_ring_address(lo, hi);
    let (lo, hi) = split_address(cfg.used_ring);
    c.set_used_ring_address(lo, hi);
    c.set_ready(cfg.ready);
    Ok(c)
}

impl VirtioDevice for Fs {
    fn name(&self) -> &str {
        "fs"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUES
    }

    fn avail_features(&self) -> u64 {
        self.common.avail_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.common.ack_features(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.common.check_queue_count(&queues)?;
        let queues = queues
            .iter()
            .map(alias_queue)
            .collect::<Result<Vec<_>, _>>()?;
        let mem = SharedMemory::new(mem)
            .map_err(|e| ActivateError::Backend(std::io::Error::other(e.to_string())))?;
        self.common.set_active(mem, interrupt, queues);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        self.process_requests(index);
    }

    fn reset(&mut self) -> bool {
        // The FUSE session's inodes and handles stay until the guest's next INIT re-imports
        // the root; a reset driver starts with INIT.
        self.common.reset();
        true
    }

    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }
}
