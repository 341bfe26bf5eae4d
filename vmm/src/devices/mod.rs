//! Devices the guest sees: legacy x86 ones on the port I/O bus (serial console, i8042 reset)
//! and virtio devices over MMIO, each virtio device in a folder of its own.

pub mod blk;
pub mod fs;
pub mod legacy;
pub mod net;
pub mod rate_limiter;
pub mod rng;
pub mod virtio;
pub mod vsock;
