//! The vsock fuzz target's body: a guest's three queues and memory from the input (the generic
//! scheme of `test_utils`), a host side of real Unix sockets in a directory of its own (a host
//! process connecting with `CONNECT`, and a host service listening on port 1024 for the
//! guest's connections), the device activated and notified; and the corpus's seeds.

use crate::scratch::Scratch;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::packet::{Header, HDR_LEN, HOST_CID, OP_REQUEST, OP_RW, TYPE_STREAM};
use super::{Vsock, EVQ, QUEUE_SIZES, RXQ, TXQ};
use crate::devices::virtio::test_utils::{
    add_chain, fuzz_activate, fuzz_seed, guest_memory, with_fuzz_memory, FuzzInput, FUZZ_MEM_SIZE,
};
use crate::devices::virtio::VirtioDevice;

/// The guest's CID.
const GUEST_CID: u64 = 3;
/// The host port a service listens on.
const HOST_PORT: u32 = 1024;

/// A directory for one input's sockets, removed on drop.
struct SocketDir(Scratch);

impl SocketDir {
    fn new() -> Option<SocketDir> {
        Scratch::dir("fuzz-vsock").map(SocketDir)
    }
}

/// Runs one input: control byte (bit 0: a host process connects and sends the host section;
/// bit 1: tx is notified before rx; bit 2: a second round of backend events and tx), the rx,
/// tx and event queues, the host section (the bytes the host process sends, `CONNECT` line
/// included, as a u16 length and its bytes), guest memory.
pub fn run(data: &[u8]) {
    let mut input = FuzzInput::new(data);
    let control = input.u8();
    let queues = input.queues(&QUEUE_SIZES);
    let host_bytes = input.chunk();
    let Some(dir) = SocketDir::new() else {
        return;
    };
    let uds = dir.0.join("v.sock");
    let Ok(service) = UnixListener::bind(dir.0.join(format!("v.sock_{HOST_PORT}"))) else {
        return;
    };
    let Ok(mut dev) = Vsock::new(GUEST_CID, uds.clone()) else {
        return;
    };
    with_fuzz_memory(input.rest(), move |mem| {
        if fuzz_activate(&mut dev, mem, queues).is_none() {
            return;
        }
        let mut host = None;
        if control & 1 != 0 {
            if let Ok(mut s) = UnixStream::connect(&uds) {
                let _ = s.set_nonblocking(true);
                let _ = s.write(host_bytes);
                host = Some(s);
            }
            dev.process_backend_events();
        }
        let order = if control & 2 != 0 {
            [TXQ, RXQ, EVQ]
        } else {
            [RXQ, TXQ, EVQ]
        };
        for q in order {
            dev.process_queue(q);
        }
        if control & 4 != 0 {
            dev.process_backend_events();
            dev.process_queue(TXQ);
        }
        drop(dev);
        drop(host);
    });
    // The guest's connections, if any, wait in the service's backlog; they go with it.
    drop(service);
}

/// The header of a guest packet.
fn guest_header(op: u16, len: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 5000,
        dst_port: HOST_PORT,
        len,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

/// Valid traffic, as the Linux driver and a host process make it, to start the fuzzer from.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mem = guest_memory(FUZZ_MEM_SIZE as u64);
    let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x400), 16);
    let ev = MockSplitQueue::create(&mem, GuestAddress(0x800), 16);
    // Rx buffers: header and 256 bytes of data each.
    for i in 0..4u16 {
        let addr = 0x1000 + 0x200 * u64::from(i);
        add_chain(&rx, i, &[(addr, HDR_LEN as u32 + 256, true)]);
    }
    // The guest connects to the host service, then sends 5 bytes in two descriptors.
    mem.write_slice(
        &guest_header(OP_REQUEST, 0).to_bytes(),
        GuestAddress(0x2000),
    )
    .unwrap();
    add_chain(&tx, 0, &[(0x2000, HDR_LEN as u32, false)]);
    mem.write_slice(&guest_header(OP_RW, 5).to_bytes(), GuestAddress(0x2100))
        .unwrap();
    mem.write_slice(b"hello", GuestAddress(0x2200)).unwrap();
    add_chain(
        &tx,
        1,
        &[(0x2100, HDR_LEN as u32, false), (0x2200, 5, false)],
    );
    let no_host = fuzz_seed(4, &[&rx, &tx, &ev], &[0, 0], &mem);
    // A host process connects to guest port 1234 and sends a line after CONNECT.
    let line = b"CONNECT 1234\nping\n";
    let mut host = (line.len() as u16).to_le_bytes().to_vec();
    host.extend_from_slice(line);
    let with_host = fuzz_seed(1 | 4, &[&rx, &tx, &ev], &host, &mem);
    vec![("guest-connects", no_host), ("host-connects", with_host)]
}
