//! virtio-net backed by a host tap device: the device model, the frame path between the
//! guest's queues and the tap, and the tap set-up (`/dev/net/tun`).
//!
//! No offloads are offered: every frame crosses with a 12-byte `virtio_net_hdr_v1` whose
//! flags and GSO fields are zero, and the tap is opened with `IFF_VNET_HDR` and a 12-byte
//! header so the same layout holds on the host side (the device zeroes the header in both
//! directions, so neither side can smuggle checksum or GSO requests past the negotiation).
//!
//! Transmit (queue 1) copies each chain into a frame buffer and writes it to the tap. Receive
//! (queue 0) reads frames from the tap when it is readable and the guest has buffers; when
//! the guest has none, the frame read is kept and reading stops until the guest kicks the rx
//! queue. The tap is watched edge-triggered, so a full rx queue never spins the event loop.

mod device;
mod tap;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
#[cfg(test)]
mod tests;

pub use device::Net;

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;

/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;

/// Size of the virtio-net header that precedes every frame (`virtio_net_hdr_v1`, virtio 1.x).
pub const VNET_HDR_LEN: usize = 12;

/// Largest header plus frame the device moves: a 64 KiB packet with Ethernet and VLAN
/// headers, as other VMMs use.
pub const MAX_FRAME_LEN: usize = 65562;

/// Ethernet header length: the shortest frame worth sending.
const ETH_HLEN: usize = 14;

/// Most descriptors in one chain.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// Event data of the tap fd in the event loop.
const TAP_EVENT: u32 = 0;
