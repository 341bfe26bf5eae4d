//! The virtio-rng device: checks each request chain (device-writable buffers in guest memory,
//! by the shared chain checks) and fills it with random bytes.

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::{MAX_DESCRIPTORS, MAX_REQUEST_BYTES, QUEUE_SIZE};
use crate::devices::virtio::chain::{check_chain, in_guest_memory, Layout};
use crate::devices::virtio::common::VirtioCommon;
use crate::devices::virtio::{
    ActivateError, DeviceCounters, GuestMemory, Interrupt, LogCounter, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// A virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    common: VirtioCommon,
    counters: DeviceCounters,
    /// Random bytes on their way to the guest.
    buf: Vec<u8>,
    /// getrandom failures so far, to rate-limit their logs.
    errors: LogCounter,
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> Rng {
        Rng {
            common: VirtioCommon::new(VIRTIO_F_VERSION_1, 1),
            counters: DeviceCounters::default(),
            buf: vec![0; MAX_REQUEST_BYTES],
            errors: LogCounter::default(),
        }
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
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            // The device only writes: every buffer must be device-writable.
            let checked = check_chain(
                chain,
                MAX_DESCRIPTORS,
                in_guest_memory(mem),
                Layout::WriteOnly,
            );
            let used_len = match checked {
                Ok(checked) => match fill(mem, &checked.descs, &mut self.buf) {
                    Ok(n) => {
                        self.counters.completed(u64::from(n));
                        n
                    }
                    Err(e) => {
                        if let Some(n) = self.errors.count() {
                            log::error!("rng: cannot get random bytes ({n} so far): {e}");
                        }
                        0
                    }
                },
                Err(why) => {
                    self.counters.bad_request("rng", why);
                    0
                }
            };
            match queue.add_used(mem, head, used_len) {
                Ok(()) => used_any = true,
                Err(e) => log::debug!("rng: cannot return chain {head}: {e}"),
            }
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
    }
}

/// Fills the buffers in order with up to `buf.len()` random bytes; returns how many.
fn fill(mem: &GuestMemory, descs: &[Descriptor], buf: &mut [u8]) -> io::Result<u32> {
    let want: usize = descs
        .iter()
        .map(|d| d.len() as usize)
        .fold(0usize, usize::saturating_add)
        .min(buf.len());
    let random = &mut buf[..want];
    getrandom(random)?;
    let mut off = 0;
    for d in descs {
        if off == want {
            break;
        }
        let n = (d.len() as usize).min(want - off);
        mem.write_slice(&random[off..off + n], d.addr())
            .map_err(io::Error::other)?;
        off += n;
    }
    // want <= MAX_REQUEST_BYTES.
    Ok(want as u32)
}

/// Fills `buf` from the kernel's random pool.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, exclusively borrowed byte buffer of `rest.len()` bytes,
        // which getrandom(2) only writes into.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // n >= 0 and at most rest.len().
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn name(&self) -> &str {
        "rng"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
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

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
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
            log::warn!("rng: notification for queue {index}, which does not exist");
            return;
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
