//! virtio-rng (entropy device): the guest's buffers are filled with bytes from the host
//! kernel's random pool (`getrandom(2)`).

mod device;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
#[cfg(test)]
mod tests;

pub use device::Rng;

/// Size of the device's only queue.
pub const QUEUE_SIZE: u16 = 256;

/// Most bytes one request gets; the rest of a larger chain is left untouched (the used length
/// says how much was filled), so one request cannot hold the event loop for long.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Most descriptors in one chain.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
