//! The net fuzz target's body: a guest's two queues and memory from the input (the generic
//! scheme of `test_utils`), frames from the host side, the device activated and notified; and
//! the corpus's seeds.
//!
//! The tap is a datagram socket pair, the seam the unit tests use ([`Net::with_backend`]): it
//! carries one frame per read and write as a tap does, needs no `/dev/net/tun` or privileges,
//! and costs two descriptors per input, closed when it ends.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::{Net, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use crate::devices::virtio::test_utils::{
    add_chain, fuzz_activate, fuzz_seed, guest_memory, with_fuzz_memory, FuzzInput, FUZZ_MEM_SIZE,
};
use crate::devices::virtio::VirtioDevice;

/// A device over one end of a datagram socket pair; the other end plays the host.
pub(crate) fn device() -> Option<(Net, UnixDatagram)> {
    let (dev_end, host_end) = UnixDatagram::pair().ok()?;
    dev_end.set_nonblocking(true).ok()?;
    host_end.set_nonblocking(true).ok()?;
    let file = File::from(OwnedFd::from(dev_end));
    let mac = Some([0x02, 0xca, 0x4a, 0, 0, 1]);
    Some((Net::with_backend(file, "fuzz0".into(), mac), host_end))
}

/// Runs one input: control byte (bits 0-1: frames the host sends; bit 2: notify tx before
/// rx; bit 3: notify rx again at the end), the rx and tx queues, the host's frames (each a
/// u16 length and its bytes, header included), guest memory.
pub fn run(data: &[u8]) {
    let mut input = FuzzInput::new(data);
    let control = input.u8();
    let queues = input.queues(&[QUEUE_SIZE, QUEUE_SIZE]);
    let frames: Vec<&[u8]> = (0..control & 3).map(|_| input.chunk()).collect();
    let Some((mut dev, host)) = device() else {
        return;
    };
    for f in frames {
        // A full socket buffer drops the frame, as a tap's queue would.
        let _ = host.send(f);
    }
    with_fuzz_memory(input.rest(), move |mem| {
        if fuzz_activate(&mut dev, mem, queues).is_none() {
            return;
        }
        let order = if control & 4 != 0 {
            [TX_QUEUE, RX_QUEUE]
        } else {
            [RX_QUEUE, TX_QUEUE]
        };
        for q in order {
            dev.process_queue(q);
        }
        if control & 8 != 0 {
            dev.process_queue(RX_QUEUE);
        }
        drop(dev);
    });
}

/// Valid traffic, as the Linux driver and a tap make it, to start the fuzzer from.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mem = guest_memory(FUZZ_MEM_SIZE as u64);
    let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x400), 16);
    // Two rx buffers of 1526 bytes; one frame of 60 bytes to send, header apart from it.
    add_chain(&rx, 0, &[(0x1000, 1526, true)]);
    add_chain(&rx, 1, &[(0x1800, 12, true), (0x1900, 1514, true)]);
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(0x2000))
        .unwrap();
    let frame: Vec<u8> = (0..60u8).map(|i| i.wrapping_mul(7) | 1).collect();
    mem.write_slice(&frame, GuestAddress(0x2100)).unwrap();
    add_chain(
        &tx,
        0,
        &[(0x2000, VNET_HDR_LEN as u32, false), (0x2100, 60, false)],
    );
    // Two frames from the host: header and frame.
    let mut host = Vec::new();
    for len in [60usize, 100] {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend((0..len).map(|i| i as u8));
        host.extend_from_slice(&(f.len() as u16).to_le_bytes());
        host.extend_from_slice(&f);
    }
    vec![("rx-and-tx", fuzz_seed(2, &[&rx, &tx], &host, &mem))]
}
