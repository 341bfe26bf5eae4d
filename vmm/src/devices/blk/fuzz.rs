//! The blk fuzz target's body: a guest's queue and memory from the input (the generic scheme
//! of `test_utils`), a fresh 8 KiB backing file per input, the device activated and notified;
//! and the corpus's seeds.

use crate::scratch::Scratch;
use std::fs::File;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::{Block, QUEUE_SIZE, SECTOR_SIZE};
use crate::devices::virtio::test_utils::{
    add_chain, fuzz_activate, fuzz_seed, guest_memory, with_fuzz_memory, FuzzInput, FUZZ_MEM_SIZE,
};
use crate::devices::virtio::VirtioDevice;

/// Sectors of the backing file.
const DISK_SECTORS: u64 = 16;

/// A backing file of `DISK_SECTORS` sectors for one input, removed on drop (a fresh one each
/// time: inputs do not see each other's writes, and nothing is left behind).
pub(crate) struct FuzzDisk(pub(crate) Scratch);

impl FuzzDisk {
    pub(crate) fn new() -> FuzzDisk {
        let path = Scratch::new("fuzz-blk");
        let file = File::create(&path).expect("cannot create the fuzz disk");
        file.set_len(DISK_SECTORS * SECTOR_SIZE)
            .expect("cannot size the fuzz disk");
        FuzzDisk(path)
    }
}

/// Runs one input: control byte (bit 0: notify twice; bit 1: read-only disk), the queue,
/// guest memory.
pub fn run(data: &[u8]) {
    let mut input = FuzzInput::new(data);
    let control = input.u8();
    let queues = input.queues(&[QUEUE_SIZE]);
    let disk = FuzzDisk::new();
    let Ok(mut dev) = Block::new(&disk.0, control & 2 != 0) else {
        return;
    };
    with_fuzz_memory(input.rest(), |mem| {
        if fuzz_activate(&mut dev, mem, queues).is_none() {
            return;
        }
        for _ in 0..1 + (control & 1) {
            dev.process_queue(0);
        }
        // The device (and its clone of guest memory) goes before the memory.
        drop(dev);
    });
}

/// A request header at `addr`.
fn header(mem: &vm_memory::GuestMemoryMmap, addr: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
}

/// Valid requests, as the Linux driver sends them, to start the fuzzer from.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mem = guest_memory(FUZZ_MEM_SIZE as u64);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    // A write of two sectors, a read of them back, a flush, a GET_ID.
    header(&mem, 0x1000, VIRTIO_BLK_T_OUT, 2);
    mem.write_slice(&[0x5a; 1024], GuestAddress(0x2000))
        .unwrap();
    add_chain(
        &vq,
        0,
        &[
            (0x1000, 16, false),
            (0x2000, 1024, false),
            (0x1010, 1, true),
        ],
    );
    header(&mem, 0x1020, VIRTIO_BLK_T_IN, 2);
    add_chain(
        &vq,
        3,
        &[(0x1020, 16, false), (0x3000, 1024, true), (0x1030, 1, true)],
    );
    header(&mem, 0x1040, VIRTIO_BLK_T_FLUSH, 0);
    add_chain(&vq, 6, &[(0x1040, 16, false), (0x1050, 1, true)]);
    header(&mem, 0x1060, VIRTIO_BLK_T_GET_ID, 0);
    add_chain(
        &vq,
        8,
        &[(0x1060, 16, false), (0x1080, 20, true), (0x1070, 1, true)],
    );
    vec![("out-in-flush-getid", fuzz_seed(0, &[&vq], &[], &mem))]
}
