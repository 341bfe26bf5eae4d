//! What the devices' unit tests share: guest memory, descriptor chains on virtio-queue's mock
//! queues, the used ring read back, counters, and activation over mock queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{Interrupt, VirtioDevice};

/// `size` bytes of guest memory from address 0.
pub fn guest_memory(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
}

/// `size` bytes of guest memory from address 0 that live for the whole test: mock queues
/// borrow the memory for their lifetime, so a test's harness can hold both.
pub fn leaked_guest_memory(size: u64) -> &'static GuestMemoryMmap {
    Box::leak(Box::new(guest_memory(size)))
}

/// Adds a chain of (addr, len, device-writable) buffers at descriptor index `first`.
pub fn add_chain(vq: &MockSplitQueue<GuestMemoryMmap>, first: u16, descs: &[(u64, u32, bool)]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, writable))| {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let mut next = 0;
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                next = first + i as u16 + 1;
            }
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    vq.add_desc_chains(&raw, first).unwrap();
}

/// The (head, len) of used ring entry `i`.
pub fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

/// The used ring's index: how many chains the device gave back.
pub fn used_count(vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    vq.used().idx().load()
}

/// A counter's value.
pub fn counter(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Activates `dev` with one queue per mock queue, in order; returns its interrupt.
pub fn activate(
    dev: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    vqs: &[&MockSplitQueue<GuestMemoryMmap>],
) -> Arc<Interrupt> {
    let irq = Arc::new(Interrupt::new().unwrap());
    let queues: Vec<Queue> = vqs.iter().map(|vq| vq.create_queue().unwrap()).collect();
    dev.activate(mem.clone(), irq.clone(), queues).unwrap();
    irq
}
