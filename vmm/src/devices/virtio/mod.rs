//! The virtio device model: the trait every device implements, the interrupt it raises, the
//! error counters it keeps, the device status bits, and the modules every device shares: the
//! state devices embed (`common`), the descriptor-chain checks (`chain`) and the virtio-mmio
//! transport that presents a device to the guest (`mmio`).
//!
//! A device is driven from two threads: vCPU threads reach it through the MMIO transport
//! (register reads and writes, under the transport's lock), and the event loop thread calls
//! [`VirtioDevice::process_queue`] when the guest notifies a queue (ioeventfd) and
//! [`VirtioDevice::process_backend`] when one of the device's own file descriptors is ready.

pub mod chain;
pub mod common;
pub mod mmio;
#[cfg(any(test, feature = "fuzzing"))]
pub mod test_utils;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, Events};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory as devices see it.
pub type GuestMemory = vm_memory::GuestMemoryMmap;

/// Feature bit every device offers: the device follows the virtio 1.x (non-legacy) layout.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// The device status register's bits (virtio 1.2 section 2.1), written by the driver but for
/// DEVICE_NEEDS_RESET, which only the device sets.
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is set up: the device may serve its queues.
    pub const DRIVER_OK: u32 = 4;
    /// The driver accepted its features; they can no longer change.
    pub const FEATURES_OK: u32 = 8;
    /// The device cannot go on until the driver resets it.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device (the driver's bit: the device never sets it).
    pub const FAILED: u32 = 0x80;
}

/// Event data values at or above this are reserved for the transport's own events (queue
/// notifications, activation); devices register their backend fds with data below it.
pub const TRANSPORT_EVENT_BASE: u32 = 0xffff_0000;

/// Interrupt status bit: the device used buffers of a queue.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the device's configuration space changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// The interrupt line of one virtio-mmio device: an eventfd bound to a GSI with KVM's irqfd,
/// and the InterruptStatus register the guest reads to learn why it was raised.
pub struct Interrupt {
    evt: EventFd,
    status: AtomicU32,
}

impl Interrupt {
    /// A new interrupt line (not yet bound to a GSI).
    pub fn new() -> io::Result<Self> {
        Ok(Interrupt {
            evt: EventFd::new(EFD_NONBLOCK)?,
            status: AtomicU32::new(0),
        })
    }

    /// Tells the guest that buffers were placed in a used ring.
    pub fn signal_used_queue(&self) {
        self.signal(INT_USED_RING)
    }

    /// Tells the guest that the device's configuration space changed.
    pub fn signal_config_change(&self) {
        self.signal(INT_CONFIG_CHANGE)
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot raise a virtio interrupt: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The guest acknowledged `bits` (InterruptACK register).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd to bind to a GSI with KVM_IRQFD (and to watch in tests).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupt")
            .field("status", &self.status())
            .finish()
    }
}

/// Counters every device keeps; the control API reports them.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Descriptor chains the guest offered that the device refused as malformed (bad
    /// addresses or lengths, loops, wrong directions, unknown request types, ...).
    pub bad_requests: AtomicU64,
    /// Requests completed.
    pub requests: AtomicU64,
    /// Bytes moved to or from the guest.
    pub bytes: AtomicU64,
}

impl DeviceCounters {
    /// Counts one malformed request and logs why, naming the device.
    pub fn bad_request(&self, device: &str, why: impl fmt::Display) {
        let n = self.bad_requests.fetch_add(1, Ordering::Relaxed) + 1;
        // Rate-limit the log: a hostile guest must not flood the host's logs.
        if log_nth(n) {
            log::warn!("{device}: refused a malformed request from the guest ({n} so far): {why}");
        }
    }

    /// Counts one completed request of `bytes` bytes.
    pub fn completed(&self, bytes: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Whether the `n`th occurrence (from 1) of a repeated event is logged: the first ten, then
/// each power of two, so neither a hostile guest nor a failing host floods the logs.
pub fn log_nth(n: u64) -> bool {
    n <= 10 || n.is_power_of_two()
}

/// A count of repeated failures (host I/O errors, dropped frames, ...) whose logs are
/// rate-limited by [`log_nth`]; refused guest requests go to [`DeviceCounters::bad_request`].
#[derive(Debug, Default)]
pub struct LogCounter(u64);

impl LogCounter {
    /// Counts one more; returns the new count when this one should be logged.
    pub fn count(&mut self) -> Option<u64> {
        self.0 += 1;
        log_nth(self.0).then_some(self.0)
    }

    /// How many so far.
    pub fn get(&self) -> u64 {
        self.0
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("expected {expected} queues, the driver set up {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues the driver made ready.
        got: usize,
    },
    /// The device's backend failed.
    #[error("backend: {0}")]
    Backend(#[from] io::Error),
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Short name for logs ("blk", "net", ...).
    fn name(&self) -> &str;

    /// Virtio device type (virtio_bindings::virtio_ids).
    fn device_type(&self) -> u32;

    /// Maximum size of each of the device's queues (their number is the queue count).
    fn queue_max_sizes(&self) -> &[u16];

    /// Features the device offers, VIRTIO_F_VERSION_1 included.
    fn avail_features(&self) -> u64;

    /// The driver accepted `features` (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);

    /// Reads the device configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{}: ignored a {}-byte config write at {offset:#x}",
            self.name(),
            data.len()
        );
    }

    /// The driver finished setting up (DRIVER_OK): the device starts serving `queues`.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;

    /// The guest notified queue `index`; called on the event loop thread after activation.
    fn process_queue(&mut self, index: usize);

    /// Called once on the event loop thread after activation: register the backend's file
    /// descriptors (with event data below [`TRANSPORT_EVENT_BASE`]).
    fn register_backend(&mut self, _ops: &mut EventOps) {}

    /// One of the backend's file descriptors is ready.
    fn process_backend(&mut self, _events: Events, _ops: &mut EventOps) {}

    /// The driver reset the device after activation. Return false when the device cannot be
    /// reset (the transport then reports DEVICE_NEEDS_RESET).
    fn reset(&mut self) -> bool {
        false
    }

    /// The device's counters.
    fn counters(&self) -> &DeviceCounters;
}

/// Copies the bytes of a little-endian config structure at `offset` into `data`, reading
/// past the end as zero: the common shape of [`VirtioDevice::read_config`].
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let cfg = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 9, &mut out);
        assert_eq!(out, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }

    #[test]
    fn interrupt_status_is_set_by_signals_and_cleared_by_ack() {
        let irq = Interrupt::new().unwrap();
        irq.signal_used_queue();
        irq.signal_config_change();
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG_CHANGE);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG_CHANGE);
    }

    #[test]
    fn repeated_events_are_logged_ten_times_then_at_powers_of_two() {
        let mut c = LogCounter::default();
        let logged: Vec<u64> = (0..100).filter_map(|_| c.count()).collect();
        assert_eq!(logged, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64]);
        assert_eq!(c.get(), 100);
    }
}
