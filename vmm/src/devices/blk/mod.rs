//! virtio-blk backed by a host file (or block device): the device model, the parsing of the
//! guest's request chains and the synchronous file I/O that serves them.
//!
//! Requests are served on the event loop thread as the guest kicks the queue: reads and
//! writes go straight between the file and guest memory (`pread`/`pwrite` into the guest's
//! buffers, no bounce buffer), flushes are `fdatasync`. Every request chain is checked before
//! it is served; malformed ones are counted in [`DeviceCounters`] and returned to the guest
//! (with status IOERR when the chain has a writable status byte).
//!
//! [`DeviceCounters`]: crate::devices::virtio::DeviceCounters

mod device;
mod request;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
#[cfg(test)]
mod tests;

pub use device::Block;

/// Size of the device's only queue.
pub const QUEUE_SIZE: u16 = 256;

/// Sector size of the virtio-blk protocol: request offsets and the capacity count in these.
pub const SECTOR_SIZE: u64 = 512;

/// Longest serial number GET_ID returns (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = 20;

/// Most descriptors one request may use: the header, the status and `SEG_MAX` data buffers.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// Most data buffers of one request, advertised to the guest as seg_max.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
