//! The virtio-rng device: checks each request chain (device-writable buffers in guest memory)
//! and fills it with random bytes.

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use super::{MAX_DESCRIPTORS, MAX_REQUEST_BYTES, QUEUE_SIZE};
use crate::devices::virtio::{
    ActivateError, DeviceCounters, GuestMemory, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// Why a request chain was refused.
#[derive(Debug, thiserror::Error)]
enum RngRequestError {
    /// The chain has no descriptor at all.
    #[error("the descriptor chain is empty (bad head index or descriptor table)")]
    Empty,
    /// A loop, a bad next index, or too many descriptors.
    #[error("the descriptor chain loops, has a bad next index or is longer than {MAX_DESCRIPTORS} descriptors")]
    Unterminated,
    /// The device only writes.
    #[error("a device-readable descriptor in an entropy request")]
    Readable,
    /// A descriptor points outside guest memory.
    #[error("a {len}-byte descriptor at {addr:#x} lies outside guest memory")]
    OutsideMemory {
        /// Guest physical address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
}

/// A virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    acked_features: u64,
    counters: DeviceCounters,
    /// Random bytes on their way to the guest.
    buf: Vec<u8>,
    /// getrandom failures so far, to rate-limit their logs.
    errors: u64,
    active: Option<Active>,
}

/// What the device holds between activation and reset.
#[derive(Debug)]
struct Active {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queue: Queue,
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
            acked_features: 0,
            counters: DeviceCounters::default(),
            buf: vec![0; MAX_REQUEST_BYTES],
            errors: 0,
            active: None,
        }
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Serves every chain the guest made available, then raises one interrupt.
    fn process_requests(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let used_len = match checked_descriptors(&active.mem, chain) {
                Ok(descs) => match fill(&active.mem, &descs, &mut self.buf) {
                    Ok(n) => {
                        self.counters.completed(u64::from(n));
                        n
                    }
                    Err(e) => {
                        self.errors += 1;
                        if self.errors <= 10 || self.errors.is_power_of_two() {
                            log::error!(
                                "rng: cannot get random bytes ({} so far): {e}",
                                self.errors
                            );
                        }
                        0
                    }
                },
                Err(why) => {
                    self.counters.bad_request("rng", why);
                    0
                }
            };
            match active.queue.add_used(&active.mem, head, used_len) {
                Ok(()) => used_any = true,
                Err(e) => log::debug!("rng: cannot return chain {head}: {e}"),
            }
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
    }
}

/// The descriptors of `chain`, checked to end properly, to be device-writable and to lie in
/// guest memory. virtio-queue's iterator stops silently on loops, bad next indices and
/// unreadable descriptors; a chain cut short by any of these ends on a descriptor that still
/// says NEXT.
fn checked_descriptors(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Result<Vec<Descriptor>, RngRequestError> {
    let descs: Vec<Descriptor> = chain.take(MAX_DESCRIPTORS + 1).collect();
    match descs.last() {
        None => return Err(RngRequestError::Empty),
        Some(last) if last.has_next() || descs.len() > MAX_DESCRIPTORS => {
            return Err(RngRequestError::Unterminated)
        }
        Some(_) => {}
    }
    for d in &descs {
        if !d.is_write_only() {
            return Err(RngRequestError::Readable);
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err(RngRequestError::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
    }
    Ok(descs)
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
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & VIRTIO_F_VERSION_1;
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
        let got = queues.len();
        let Ok([queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 {
            log::warn!("rng: notification for queue {index}, which does not exist");
            return;
        }
        self.process_requests();
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        true
    }

    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }
}
