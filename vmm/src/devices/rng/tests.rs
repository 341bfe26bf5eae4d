//! Tests of the virtio-rng device, driven through virtio-queue's mock driver over in-memory
//! guest memory.

use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Rng, MAX_REQUEST_BYTES};
use crate::devices::virtio::test_utils::{self, activate, add_chain, counter, used};
use crate::devices::virtio::{ActivateError, Interrupt, VirtioDevice};

const MEM_SIZE: u64 = 0x100_0000;
const BUF: u64 = 0x10_0000;
const FILL: u8 = 0xa5;

fn guest_memory() -> GuestMemoryMmap {
    let mem = test_utils::guest_memory(MEM_SIZE);
    mem.write_slice(&vec![FILL; 0x10_0000], GuestAddress(BUF))
        .unwrap();
    mem
}

/// Whether the `len` bytes at `addr` still hold the initial fill.
fn untouched(mem: &GuestMemoryMmap, addr: u64, len: usize) -> bool {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v.iter().all(|&b| b == FILL)
}

#[test]
fn writable_buffers_are_filled_and_counted() {
    let mut dev = Rng::new();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    let irq = activate(&mut dev, &mem, &[&vq]);

    add_chain(&vq, 0, &[(BUF, 256, true), (BUF + 0x1000, 128, true)]);
    add_chain(&vq, 2, &[(BUF + 0x2000, 64, true)]);
    dev.process_queue(0);

    assert_eq!(vq.used().idx().load(), 2);
    assert_eq!(used(&vq, 0), (0, 384));
    assert_eq!(used(&vq, 1), (2, 64));
    assert!(!untouched(&mem, BUF, 256));
    assert!(!untouched(&mem, BUF + 0x1000, 128));
    assert!(
        untouched(&mem, BUF + 0x1000 + 128, 64),
        "nothing past the buffer"
    );
    assert!(!untouched(&mem, BUF + 0x2000, 64));
    let c = dev.counters();
    assert_eq!(counter(&c.requests), 2);
    assert_eq!(counter(&c.bytes), 448);
    assert_eq!(irq.eventfd().read().unwrap(), 1);
}

#[test]
fn requests_are_capped() {
    let mut dev = Rng::new();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    activate(&mut dev, &mem, &[&vq]);

    add_chain(&vq, 0, &[(BUF, 0xc000, true), (BUF + 0xc000, 0xc000, true)]);
    dev.process_queue(0);
    assert_eq!(used(&vq, 0), (0, MAX_REQUEST_BYTES as u32));
    let end = BUF + MAX_REQUEST_BYTES as u64;
    assert!(!untouched(&mem, end - 64, 64));
    assert!(untouched(&mem, end, 0x18000 - MAX_REQUEST_BYTES));
}

#[test]
fn malformed_chains_are_counted_and_returned_empty() {
    let mut dev = Rng::new();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    let irq = activate(&mut dev, &mem, &[&vq]);

    // A device-readable buffer, alone and after a writable one.
    add_chain(&vq, 0, &[(BUF, 64, false)]);
    add_chain(
        &vq,
        1,
        &[(BUF + 0x1000, 64, true), (BUF + 0x2000, 64, false)],
    );
    // Outside guest memory.
    add_chain(&vq, 3, &[(MEM_SIZE - 8, 64, true)]);
    // A loop.
    let raw = [
        RawDescriptor::from(SplitDescriptor::new(
            BUF + 0x3000,
            8,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            5,
        )),
        RawDescriptor::from(SplitDescriptor::new(
            BUF + 0x3000,
            8,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            4,
        )),
    ];
    vq.add_desc_chains(&raw, 4).unwrap();
    // A good one after them.
    add_chain(&vq, 6, &[(BUF + 0x4000, 32, true)]);
    dev.process_queue(0);

    assert_eq!(vq.used().idx().load(), 5);
    for (i, head) in [0, 1, 3, 4].into_iter().enumerate() {
        assert_eq!(used(&vq, i), (head, 0));
    }
    assert_eq!(used(&vq, 4), (6, 32));
    assert!(
        untouched(&mem, BUF + 0x1000, 64),
        "refused chains are not written"
    );
    assert!(untouched(&mem, BUF + 0x3000, 8));
    let c = dev.counters();
    assert_eq!(counter(&c.bad_requests), 4);
    assert_eq!(counter(&c.requests), 1);
    assert_eq!(irq.eventfd().read().unwrap(), 1);
}

#[test]
fn activation_reset_and_config() {
    let mut dev = Rng::default();
    assert_eq!(dev.device_type(), 4);
    assert_eq!(dev.queue_max_sizes(), &[256]);
    let mut cfg = [0xffu8; 4];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0; 4]);

    let mem = guest_memory();
    let irq = Arc::new(Interrupt::new().unwrap());
    let err = dev.activate(mem.clone(), irq, Vec::new()).unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 1,
            got: 0
        }
    ));

    let vq = MockSplitQueue::new(&mem, 256);
    activate(&mut dev, &mem, &[&vq]);
    assert!(dev.reset());
    add_chain(&vq, 0, &[(BUF, 16, true)]);
    dev.process_queue(0);
    assert_eq!(vq.used().idx().load(), 0, "nothing served after a reset");
}
