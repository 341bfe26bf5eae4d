//! The virtio-blk device: opening the backing file, features and configuration space, and
//! the queue handler that serves request chains.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};

use super::request::{self, Disk, Outcome};
use super::{QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, SERIAL_LEN};
use event_manager::{EventOps, EventSet, Events};

use crate::config::RateLimitConfig;
use crate::devices::rate_limiter::RateLimiter;
use crate::devices::virtio::common::VirtioCommon;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, DeviceCounters, GuestMemory, Interrupt, LogCounter,
    VirtioDevice, VIRTIO_F_VERSION_1,
};

/// Size of the configuration space we expose: capacity, size_max, seg_max, geometry and
/// blk_size of struct virtio_blk_config.
const CONFIG_LEN: usize = 24;

/// A virtio-blk device backed by a file (or a host block device).
#[derive(Debug)]
pub struct Block {
    disk: Disk,
    common: VirtioCommon,
    config: [u8; CONFIG_LEN],
    counters: DeviceCounters,
    /// Host-side failures so far, to rate-limit their logs.
    io_errors: LogCounter,
    /// Limits on the guest's requests, if any.
    limiter: Option<RateLimiter>,
    /// The limiter's timer is in the event loop (registrations outlive resets).
    registered: bool,
}

/// Event data of the rate limiter's timer.
const RATE_EVENT: u32 = 1;

impl Block {
    /// Opens `path` as the disk, for reading and writing unless `read_only`. Its capacity is
    /// the file size rounded down to whole 512-byte sectors; the GET_ID serial is the file
    /// name, cut to 20 bytes.
    pub fn new(path: &Path, read_only: bool) -> io::Result<Block> {
        let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let mut file: File = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(with_path)?;
        // Seeking to the end measures block devices too, whose metadata says 0 bytes.
        let size = file.seek(SeekFrom::End(0)).map_err(with_path)?;
        let capacity = size / SECTOR_SIZE;

        let mut serial = [0u8; SERIAL_LEN];
        if let Some(name) = path.file_name() {
            let name = name.as_bytes();
            let n = name.len().min(SERIAL_LEN);
            serial[..n].copy_from_slice(&name[..n]);
        }

        let mut avail_features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }

        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        // size_max (8..12) stays 0: VIRTIO_BLK_F_SIZE_MAX is not offered.
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // geometry (16..20) stays 0: VIRTIO_BLK_F_GEOMETRY is not offered.
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());

        Ok(Block {
            disk: Disk {
                file,
                capacity,
                read_only,
                serial,
            },
            common: VirtioCommon::new(avail_features, 1),
            config,
            counters: DeviceCounters::default(),
            io_errors: LogCounter::default(),
            limiter: None,
            registered: false,
        })
    }

    /// Limits the guest's requests as `config` says.
    pub fn with_rate_limit(mut self, config: &RateLimitConfig) -> io::Result<Block> {
        self.limiter = RateLimiter::new(config)?;
        Ok(self)
    }

    /// Size of the disk in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    /// Whether the guest sees the disk read-only.
    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    /// Serves every chain the guest made available, then raises one interrupt.
    fn process_requests(&mut self) {
        let Some(active) = self.common.active_mut() else {
            return;
        };
        let queue = &mut active.queues[0];
        let mem = &active.mem;
        let mut used_any = false;
        loop {
            // Over its limit, the queue waits for the limiter's timer.
            if self.limiter.as_mut().is_some_and(|l| !l.ready()) {
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let done = request::serve(&self.disk, mem, chain);
            if let Some(l) = self.limiter.as_mut() {
                let bytes = match done.outcome {
                    Outcome::Done { bytes } => bytes,
                    _ => 0,
                };
                l.charge(bytes);
            }
            match done.outcome {
                Outcome::Done { bytes } => self.counters.completed(bytes),
                Outcome::Failed(e) => {
                    self.counters.completed(0);
                    if let Some(n) = self.io_errors.count() {
                        log::warn!("blk: request failed ({n} so far): {e}");
                    }
                }
                Outcome::Refused(why) => self.counters.bad_request("blk", why),
            }
            if let Err(e) = queue.add_used(mem, head, done.used_len) {
                // Only a head index beyond the queue size gets here (already counted as an
                // empty chain): there is nothing to give back.
                log::debug!("blk: cannot return chain {head}: {e}");
                continue;
            }
            used_any = true;
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Block {
    fn name(&self) -> &str {
        "blk"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
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
        self.common.activate(mem, interrupt, queues)
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 {
            log::warn!("blk: notification for queue {index}, which does not exist");
            return;
        }
        self.process_requests();
    }

    fn register_backend(&mut self, ops: &mut EventOps) {
        let Some(l) = self.limiter.as_ref().filter(|_| !self.registered) else {
            return;
        };
        match ops.add(Events::with_data(l.timer(), RATE_EVENT, EventSet::IN)) {
            Ok(()) => self.registered = true,
            Err(e) => log::error!("blk: cannot watch the rate limiter's timer: {e}"),
        }
    }

    fn process_backend(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() != RATE_EVENT {
            return;
        }
        if let Some(l) = self.limiter.as_mut() {
            l.timer_fired();
        }
        self.process_requests();
    }

    fn reset(&mut self) -> bool {
        self.common.reset();
        true
    }

    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }
}
