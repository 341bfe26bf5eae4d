//! The rng fuzz target's body: a guest's queue and memory from the input (the generic scheme
//! of `test_utils`), the device activated and notified; and the corpus's seeds.

use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::{Rng, QUEUE_SIZE};
use crate::devices::virtio::test_utils::{
    add_chain, fuzz_activate, fuzz_seed, guest_memory, with_fuzz_memory, FuzzInput, FUZZ_MEM_SIZE,
};
use crate::devices::virtio::VirtioDevice;

/// Runs one input: control byte (bit 0: notify twice), the queue, guest memory.
pub fn run(data: &[u8]) {
    let mut input = FuzzInput::new(data);
    let control = input.u8();
    let queues = input.queues(&[QUEUE_SIZE]);
    with_fuzz_memory(input.rest(), |mem| {
        let mut dev = Rng::new();
        if fuzz_activate(&mut dev, mem, queues).is_none() {
            return;
        }
        for _ in 0..1 + (control & 1) {
            dev.process_queue(0);
        }
    });
}

/// Valid requests, as the Linux driver sends them, to start the fuzzer from.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mem = guest_memory(FUZZ_MEM_SIZE as u64);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    add_chain(&vq, 0, &[(0x1000, 64, true)]);
    add_chain(&vq, 1, &[(0x1100, 16, true), (0x1200, 32, true)]);
    vec![("two-requests", fuzz_seed(0, &[&vq], &[], &mem))]
}
