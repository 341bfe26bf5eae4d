//! Tests of the vsock device without a guest: a mock driver (`virtio_queue::mock`) fills the
//! queues in in-memory guest memory, and host processes are Unix sockets in a temporary
//! directory.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::connection::CONN_BUF_ALLOC;
use super::packet::*;
use super::*;
use crate::devices::virtio::test_utils::leaked_guest_memory;
use crate::uds::testutil::OpenTempDir;

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
const MEM_SIZE: usize = 40 << 20;
const QUEUE_ADDRS: [u64; 3] = [0x0, 0x4000, 0x8000];
/// Each descriptor index of each queue owns one buffer of BUF_STRIDE bytes.
const BUF_BASE: [u64; 3] = [0x10_0000, 0x140_0000, 0x280_0000];
const BUF_STRIDE: u64 = 0x1_1000;
/// Rx buffers the way Linux posts them: header and 4 KiB of data in one descriptor.
const RX_DATA: u32 = 4096;
/// The host port of the first host-initiated connection.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// The driver side of the three queues.
struct Guest {
    mem: &'static GuestMemoryMmap,
    queues: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
    next_desc: [u16; 3],
    avail_idx: [u16; 3],
    used_seen: [u16; 3],
    /// Chains made available and not used yet.
    outstanding: [usize; 3],
}

impl Guest {
    fn new() -> Self {
        // Leaked: the mock queues borrow it for the whole test.
        let mem = leaked_guest_memory(MEM_SIZE as u64);
        let queues = QUEUE_ADDRS
            .iter()
            .map(|&a| MockSplitQueue::create(mem, GuestAddress(a), QSIZE))
            .collect();
        Guest {
            mem,
            queues,
            next_desc: [0; 3],
            avail_idx: [0; 3],
            used_seen: [0; 3],
            outstanding: [0; 3],
        }
    }

    fn device_queues(&self) -> Vec<Queue> {
        self.queues
            .iter()
            .map(|q| q.create_queue().unwrap())
            .collect()
    }

    fn buf_addr(q: usize, index: u16) -> u64 {
        BUF_BASE[q] + u64::from(index) * BUF_STRIDE
    }

    /// Reserves `n` consecutive descriptor indices (modulo the queue size).
    fn alloc(&mut self, q: usize, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let i = self.next_desc[q];
                self.next_desc[q] = (i + 1) % QSIZE;
                i
            })
            .collect()
    }

    /// Writes raw descriptors at `indices` and makes `indices[0]` available.
    fn publish(&mut self, q: usize, indices: &[u16], descs: &[SplitDescriptor]) -> u16 {
        for (&i, d) in indices.iter().zip(descs) {
            self.queues[q]
                .desc_table()
                .store(i, RawDescriptor::from(*d))
                .unwrap();
        }
        let head = indices[0];
        let avail = self.queues[q].avail();
        let idx = self.avail_idx[q];
        avail
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(head);
        self.avail_idx[q] = idx.wrapping_add(1);
        avail.idx().store(self.avail_idx[q]);
        self.outstanding[q] += 1;
        assert!(
            self.outstanding[q] * 2 < usize::from(QSIZE),
            "test reuses busy descriptors"
        );
        head
    }

    /// Adds a chain of (addr, len, write-only) buffers, linked with NEXT.
    fn add_chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let indices = self.alloc(q, bufs.len());
        let descs: Vec<SplitDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(k, &(addr, len, write))| {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                let mut next = 0;
                if k + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                    next = indices[k + 1];
                }
                SplitDescriptor::new(addr, len, flags, next)
            })
            .collect();
        self.publish(q, &indices, &descs)
    }

    /// Posts `n` rx buffers with `data` bytes of room each.
    fn give_rx_sized(&mut self, n: usize, data: u32) {
        for _ in 0..n {
            let i = self.next_desc[RXQ];
            let addr = Self::buf_addr(RXQ, i);
            self.add_chain(RXQ, &[(addr, HDR_LEN as u32 + data, true)]);
        }
    }

    fn give_rx(&mut self, n: usize) {
        self.give_rx_sized(n, RX_DATA);
    }

    /// Queues a packet on tx: the header in one descriptor, the payload in a second.
    fn send(&mut self, hdr: Header, data: &[u8]) {
        let hdr = Header {
            len: data.len() as u32,
            ..hdr
        };
        let i = self.next_desc[TXQ];
        let addr = Self::buf_addr(TXQ, i);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .unwrap();
        if data.is_empty() {
            self.add_chain(TXQ, &[(addr, HDR_LEN as u32, false)]);
        } else {
            let daddr = addr + 0x100;
            self.mem.write_slice(data, GuestAddress(daddr)).unwrap();
            self.add_chain(
                TXQ,
                &[
                    (addr, HDR_LEN as u32, false),
                    (daddr, data.len() as u32, false),
                ],
            );
        }
    }

    /// Queues a packet on tx with the header and data spread over descriptors of the given
    /// sizes (Linux sends skb fragments this way).
    fn send_scattered(&mut self, hdr: Header, data: &[u8], sizes: &[u32]) {
        let hdr = Header {
            len: data.len() as u32,
            ..hdr
        };
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(data);
        let i = self.next_desc[TXQ];
        let base = Self::buf_addr(TXQ, i);
        let mut bufs = Vec::new();
        let mut off = 0usize;
        for (k, &len) in sizes.iter().enumerate() {
            let addr = base + 0x100 * k as u64;
            let end = (off + len as usize).min(bytes.len());
            self.mem
                .write_slice(&bytes[off..end], GuestAddress(addr))
                .unwrap();
            bufs.push((addr, len, false));
            off = end;
        }
        assert_eq!(off, bytes.len(), "the sizes must cover the packet");
        self.add_chain(TXQ, &bufs);
    }

    /// Used entries of queue `q` since the last call: (descriptor index, length).
    fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let used = self.queues[q].used();
        let idx = used.idx().load();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let e = used
                .ring()
                .ref_at(usize::from(self.used_seen[q] % QSIZE))
                .unwrap()
                .load();
            out.push((e.id() as u16, e.len()));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
            self.outstanding[q] -= 1;
        }
        out
    }

    /// Packets the device placed in rx buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.used(RXQ)
            .into_iter()
            .map(|(id, len)| {
                assert!(
                    len as usize >= HDR_LEN,
                    "rx buffer {id} used with length {len}"
                );
                let addr = Self::buf_addr(RXQ, id);
                let mut h = [0u8; HDR_LEN];
                self.mem.read_slice(&mut h, GuestAddress(addr)).unwrap();
                let hdr = Header::from_bytes(&h);
                assert_eq!(len as usize, HDR_LEN + hdr.len as usize);
                let mut data = vec![0u8; hdr.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                    .unwrap();
                (hdr, data)
            })
            .collect()
    }
}

/// A header from the guest.
fn ghdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

/// A device over a mock guest, activated.
struct Harness {
    dev: Vsock,
    guest: Guest,
    interrupt: Arc<Interrupt>,
    uds: PathBuf,
    _dir: OpenTempDir,
}

impl Harness {
    fn new() -> Self {
        let dir = OpenTempDir::new("vsock");
        let uds = dir.0.join("vsock.sock");
        let mut dev = Vsock::new(GUEST_CID, uds.clone()).unwrap();
        let guest = Guest::new();
        let interrupt = Arc::new(Interrupt::new().unwrap());
        dev.activate(guest.mem.clone(), interrupt.clone(), guest.device_queues())
            .unwrap();
        Harness {
            dev,
            guest,
            interrupt,
            uds,
            _dir: dir,
        }
    }

    fn tx(&mut self, hdr: Header, data: &[u8]) {
        self.guest.send(hdr, data);
        self.dev.process_queue(TXQ);
    }

    fn kick_rx(&mut self, n: usize) {
        self.guest.give_rx(n);
        self.dev.process_queue(RXQ);
    }

    fn backend(&mut self) {
        self.dev.process_backend_events();
    }

    fn bad_requests(&self) -> u64 {
        self.dev.counters().bad_requests.load(Ordering::Relaxed)
    }

    /// A host process connects and asks for guest `port`; returns its socket and the
    /// guest's view of the REQUEST.
    fn host_connect(&mut self, port: u32) -> (UnixStream, Header) {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.backend();
        let pkts = self.guest.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        let req = pkts[0].0;
        assert_eq!(req.op, OP_REQUEST);
        assert_eq!(
            (req.src_cid, req.dst_cid, req.dst_port),
            (HOST_CID, GUEST_CID, port)
        );
        (s, req)
    }

    /// A host-initiated connection the guest accepted (guest buf_alloc `buf_alloc`).
    fn established(&mut self, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
        let (mut s, req) = self.host_connect(port);
        let resp = Header {
            buf_alloc,
            ..ghdr(OP_RESPONSE, port, req.src_port)
        };
        self.tx(resp, &[]);
        let line = format!("OK {}\n", req.src_port);
        let mut got = vec![0u8; line.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), line);
        (s, req.src_port)
    }
}

fn read_available(s: &mut UnixStream) -> Vec<u8> {
    s.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    out
}

#[test]
fn identity_config_and_features() {
    let h = Harness::new();
    assert_eq!(h.dev.device_type(), 19);
    assert_eq!(h.dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(h.dev.avail_features(), VIRTIO_F_VERSION_1);
    let mut cfg = [0u8; 8];
    h.dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), GUEST_CID);
    let mut hi = [0xffu8; 4];
    h.dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
}

#[test]
fn new_refuses_existing_paths_and_reserved_cids_and_drop_removes_the_socket() {
    let dir = OpenTempDir::new("vsock");
    let path = dir.0.join("v.sock");
    std::fs::write(&path, b"").unwrap();
    let e = Vsock::new(GUEST_CID, path.clone()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    std::fs::remove_file(&path).unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(Vsock::new(cid, path.clone()).is_err(), "cid {cid}");
    }
    let dev = Vsock::new(GUEST_CID, path.clone()).unwrap();
    assert!(path.exists());
    assert_eq!(dev.uds_path(), path.as_path());
    drop(dev);
    assert!(!path.exists());
}

#[test]
fn activation_needs_three_queues() {
    let dir = OpenTempDir::new("vsock");
    let mut dev = Vsock::new(GUEST_CID, dir.0.join("v.sock")).unwrap();
    let guest = Guest::new();
    let mut queues = guest.device_queues();
    queues.pop();
    let irq = Arc::new(Interrupt::new().unwrap());
    assert!(matches!(
        dev.activate(guest.mem.clone(), irq, queues),
        Err(ActivateError::QueueCount {
            expected: 3,
            got: 2
        })
    ));
}

#[test]
fn host_initiated_connection_carries_data_both_ways_and_closes() {
    let mut h = Harness::new();
    h.kick_rx(16);
    let (mut s, host_port) = h.established(52, 64 * 1024);
    assert_eq!(host_port, FIRST_HOST_PORT);
    let _ = h.interrupt.eventfd().read();

    // Host to guest.
    s.write_all(b"hello").unwrap();
    h.backend();
    let pkts = h.guest.recv();
    assert_eq!(pkts.len(), 1);
    let (hdr, data) = &pkts[0];
    assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (OP_RW, host_port, 52));
    assert_eq!(hdr.buf_alloc, CONN_BUF_ALLOC);
    assert_eq!(data, b"hello");
    assert_eq!(h.interrupt.eventfd().read().unwrap(), 1);

    // Guest to host.
    h.tx(ghdr(OP_RW, 52, host_port), b"world");
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"world");
    assert_eq!(h.guest.used(TXQ).last().unwrap().1, 0);

    // The host half-closes: the guest hears SHUTDOWN(SEND) and can still send.
    s.shutdown(Shutdown::Write).unwrap();
    h.backend();
    let pkts = h.guest.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.flags),
        (OP_SHUTDOWN, SHUTDOWN_SEND)
    );
    h.tx(ghdr(OP_RW, 52, host_port), b"more");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"more");

    // The guest closes: the device resets and the host reads end-of-file.
    h.tx(
        Header {
            flags: SHUTDOWN_BOTH,
            ..ghdr(OP_SHUTDOWN, 52, host_port)
        },
        &[],
    );
    let pkts = h.guest.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (OP_RST, 52));
    assert_eq!(s.read(&mut got).unwrap(), 0);
    assert_eq!(h.dev.muxer.connection_count(), 0);
    assert_eq!(h.bad_requests(), 0);
}

#[test]
fn tx_data_spread_over_several_descriptors_is_gathered() {
    let mut h = Harness::new();
    h.kick_rx(16);
    let (mut s, host_port) = h.established(53, 64 * 1024);
    // Header split 20 + 24, data in pieces of 3, 4 and 5 bytes.
    h.guest.send_scattered(
        ghdr(OP_RW, 53, host_port),
        b"scatter-gath",
        &[20, 24, 3, 4, 5],
    );
    h.dev.process_queue(TXQ);
    let mut got = [0u8; 12];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"scatter-gath");
    // Data shorter than the header's len is refused and counted.
    let before = h.bad_requests();
    let mut hdr = ghdr(OP_RW, 53, host_port);
    hdr.len = 100;
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(b"short");
    let i = h.guest.next_desc[TXQ];
    let base = Guest::buf_addr(TXQ, i);
    h.guest
        .mem
        .write_slice(&bytes[..30], GuestAddress(base))
        .unwrap();
    h.guest
        .mem
        .write_slice(&bytes[30..], GuestAddress(base + 0x100))
        .unwrap();
    h.guest.add_chain(
        TXQ,
        &[
            (base, 30, false),
            (base + 0x100, (bytes.len() - 30) as u32, false),
        ],
    );
    h.dev.process_queue(TXQ);
    assert_eq!(h.bad_requests(), before + 1);
}

#[test]
fn host_ports_are_unique_and_the_guest_can_refuse() {
    let mut h = Harness::new();
    h.kick_rx(8);
    let (mut a, ra) = h.host_connect(52);
    let (_b, rb) = h.host_connect(52);
    assert_eq!(ra.src_port, FIRST_HOST_PORT);
    assert_eq!(rb.src_port, FIRST_HOST_PORT + 1);
    // No listener in the guest: it answers RST and the host socket is closed.
    h.tx(ghdr(OP_RST, 52, ra.src_port), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(a.read(&mut buf).unwrap(), 0);
    assert_eq!(h.dev.muxer.connection_count(), 1);
    assert!(h.guest.recv().is_empty(), "no reply to an RST");
}

#[test]
fn connect_line_in_pieces_and_malformed_lines() {
    let mut h = Harness::new();
    h.kick_rx(8);
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONN").unwrap();
    h.backend();
    assert!(h.guest.recv().is_empty());
    s.write_all(b"ECT 1024\n").unwrap();
    h.backend();
    let pkts = h.guest.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (OP_REQUEST, 1024));

    for bad in [&b"HELLO 52\n"[..], b"CONNECT x\n", &[b'A'; 64][..]] {
        let mut s = UnixStream::connect(&h.uds).unwrap();
        s.write_all(bad).unwrap();
        h.backend();
        // Closed: end-of-file, or a reset when the device left bytes unread.
        let mut buf = [0u8; 8];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            r => panic!("{:?}: {r:?}", String::from_utf8_lossy(bad)),
        }
    }
    // Connects and leaves without a word.
    drop(UnixStream::connect(&h.uds).unwrap());
    h.backend();
    assert_eq!(h.dev.muxer.pending_host_count(), 0);
    assert!(h.guest.recv().is_empty());
    assert_eq!(h.dev.muxer.connection_count(), 1);
}

#[test]
fn bytes_after_the_connect_line_reach_the_guest_once_connected() {
    let mut h = Harness::new();
    h.kick_rx(8);
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 52\nearly").unwrap();
    h.backend();
    let pkts = h.guest.recv();
    assert_eq!(pkts.len(), 1);
    let host_port = pkts[0].0.src_port;
    h.tx(ghdr(OP_RESPONSE, 52, host_port), &[]);
    let pkts = h.guest.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].1.as_slice()), (OP_RW, &b"early"[..]));
    let line = format!("OK {host_port}\n");
    assert_eq!(read_available(&mut s), line.as_bytes());
}

#[test]
fn guest_initiated_connection_reaches_the_port_socket() {
    let mut h = Harness::new();
    h.kick_rx(8);
    let listener = UnixListener::bind(format!("{}_1024", h.uds.display())).unwrap();
    h.tx(ghdr(OP_REQUEST, 5000, 1024), &[]);
    let (mut s, _) = listener.accept().unwrap();
    let pkts = h.guest.recv();
    assert_eq!(pkts.len(), 1);
    let hdr = pkts[0].0;
    assert_eq!(
        (hdr.op, hdr.src_cid, hdr.dst_cid, hdr.src_port, hdr.dst_port),
        (OP_RESPONSE, HOST_CID, GUEST_CID, 1024, 5000)
    );
    h.tx(ghdr(OP_RW, 5000, 1024), b"ping");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s.write_all(b"pong").unwrap();
    h.backend();
    let pkts = h.guest.recv();
    assert_eq!(pkts[0].1, b"pong");

    // The host closes: SHUTDOWN with both flags, the guest resets, the connection goes.
    drop(s);
    h.backend();
    let pkts = h.guest.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.flags),
        (OP_SHUTDOWN, SHUTDOWN_BOTH)
    );
    h.tx(ghdr(OP_RST, 5000, 1024), &[]);
    assert_eq!(h.dev.muxer.connection_count(), 0);
    assert!(h.guest.recv().is_empty());
}

#[test]
fn unreachable_ports_and_unknown_connections_get_rst() {
    let mut h = Harness::new();
    h.kick_rx(8);
    // No socket at <uds>_999.
    h.tx(ghdr(OP_REQUEST, 5000, 999), &[]);
    // Data for no connection.
    h.tx(ghdr(OP_RW, 5001, 998), b"x");
    // A peer other than the host.
    h.tx(
        Header {
            dst_cid: 7,
            ..ghdr(OP_REQUEST, 5002, 52)
        },
        &[],
    );
    // An RST for no connection gets nothing.
    h.tx(ghdr(OP_RST, 5003, 997), &[]);
    let pkts = h.guest.recv();
    let got: Vec<_> = pkts
        .iter()
        .map(|(p, _)| (p.op, p.src_cid, p.src_port, p.dst_port))
        .collect();
    assert_eq!(
        got,
        vec![
            (OP_RST, HOST_CID, 999, 5000),
            (OP_RST, HOST_CID, 998, 5001),
            (OP_RST, 7, 52, 5002)
        ]
    );
    assert_eq!(h.bad_requests(), 0);
}

#[test]
fn the_guest_gets_no_more_than_its_credit() {
    let mut h = Harness::new();
    h.kick_rx(32);
    let (mut s, host_port) = h.established(52, 1000);
    s.write_all(&[7u8; 5000]).unwrap();
    h.backend();
    let pkts = h.guest.recv();
    let total: usize = pkts.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 1000);
    // More buffers do not mean more credit.
    h.kick_rx(4);
    h.backend();
    assert!(h.guest.recv().is_empty());
    // The guest consumed 600: 600 more may come.
    h.tx(
        Header {
            buf_alloc: 1000,
            fwd_cnt: 600,
            ..ghdr(OP_CREDIT_UPDATE, 52, host_port)
        },
        &[],
    );
    let pkts = h.guest.recv();
    let total: usize = pkts.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 600);
    // A CREDIT_REQUEST gets our credit.
    h.tx(
        Header {
            buf_alloc: 1000,
            fwd_cnt: 600,
            ..ghdr(OP_CREDIT_REQUEST, 52, host_port)
        },
        &[],
    );
    let pkts = h.guest.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_CREDIT_UPDATE);
    assert_eq!(pkts[0].0.buf_alloc, CONN_BUF_ALLOC);
    assert_eq!(h.bad_requests(), 0);
}

#[test]
fn packets_are_cut_to_the_rx_buffer() {
    let mut h = Harness::new();
    h.guest.give_rx_sized(8, 1000);
    h.dev.process_queue(RXQ);
    let (mut s, _) = h.established(52, 64 * 1024);
    s.write_all(&[1u8; 2500]).unwrap();
    h.backend();
    let lens: Vec<_> = h.guest.recv().iter().map(|(_, d)| d.len()).collect();
    assert_eq!(lens, vec![1000, 1000, 500]);
}

#[test]
fn host_data_waits_for_rx_buffers() {
    let mut h = Harness::new();
    h.kick_rx(2);
    let (mut s, _) = h.established(52, 64 * 1024);
    // The REQUEST took one buffer; this takes the other.
    s.write_all(b"one").unwrap();
    h.backend();
    assert_eq!(h.guest.recv()[0].1, b"one");
    s.write_all(b"two").unwrap();
    h.backend();
    assert!(h.guest.recv().is_empty());
    h.kick_rx(1);
    assert_eq!(h.guest.recv()[0].1, b"two");
}

#[test]
fn guest_data_waits_for_a_slow_host_within_the_credit() {
    let mut h = Harness::new();
    h.kick_rx(64);
    let listener = UnixListener::bind(format!("{}_1024", h.uds.display())).unwrap();
    h.tx(ghdr(OP_REQUEST, 5000, 1024), &[]);
    let (mut s, _) = listener.accept().unwrap();
    let resp = h.guest.recv();
    assert_eq!(resp[0].0.op, OP_RESPONSE);

    // A well-behaved driver: it sends while its view of our credit allows.
    let total = 1 << 20;
    let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let (mut sent, mut peer_fwd, mut received) = (0usize, 0u32, Vec::new());
    let mut max_buffered = 0;
    let mut rounds = 0;
    while received.len() < total {
        rounds += 1;
        assert!(rounds < 1000, "no progress");
        while sent < total {
            let credit = CONN_BUF_ALLOC as usize - (sent - peer_fwd as usize);
            let n = credit.min(MAX_PKT_DATA as usize).min(total - sent);
            if n == 0 {
                break;
            }
            h.tx(ghdr(OP_RW, 5000, 1024), &payload[sent..sent + n]);
            sent += n;
        }
        if let Some(c) = h.dev.muxer.connection((1024, 5000)) {
            max_buffered = max_buffered.max(c.buffered());
        }
        // The host reads a little, which makes room: EPOLLOUT, flush, CREDIT_UPDATE.
        s.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 48 * 1024];
        if let Ok(n) = s.read(&mut buf) {
            received.extend_from_slice(&buf[..n]);
        }
        h.backend();
        if h.guest.outstanding[RXQ] < 8 {
            h.kick_rx(8);
        }
        for (hdr, _) in h.guest.recv() {
            assert_eq!(hdr.buf_alloc, CONN_BUF_ALLOC);
            peer_fwd = hdr.fwd_cnt;
        }
    }
    assert!(received == payload, "data corrupted or reordered");
    assert!(max_buffered > 0, "the host socket never filled up");
    assert!(max_buffered <= CONN_BUF_ALLOC as usize);
    assert_eq!(h.bad_requests(), 0);
}

#[test]
fn a_guest_exceeding_its_credit_is_reset_and_counted() {
    let mut h = Harness::new();
    h.kick_rx(16);
    let listener = UnixListener::bind(format!("{}_1024", h.uds.display())).unwrap();
    h.tx(ghdr(OP_REQUEST, 5000, 1024), &[]);
    let (mut s, _) = listener.accept().unwrap();
    h.guest.recv();
    let chunk = vec![0u8; MAX_PKT_DATA as usize];
    // The host never reads: the socket fills, then the buffer, then the credit runs out.
    for _ in 0..64 {
        h.tx(ghdr(OP_RW, 5000, 1024), &chunk);
        if h.dev.muxer.connection_count() == 0 {
            break;
        }
    }
    assert_eq!(h.dev.muxer.connection_count(), 0);
    assert_eq!(h.bad_requests(), 1);
    let pkts = h.guest.recv();
    assert_eq!(pkts.last().unwrap().0.op, OP_RST);
    // The host gets what fit, then end-of-file.
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert!(!all.is_empty());
}

#[test]
fn malformed_tx_chains_are_counted_and_returned_empty() {
    let mut h = Harness::new();
    let mem_end = MEM_SIZE as u64;
    let hdr_addr = Guest::buf_addr(TXQ, 200);
    h.guest
        .mem
        .write_slice(&ghdr(OP_REQUEST, 1, 2).to_bytes(), GuestAddress(hdr_addr))
        .unwrap();
    // Header too short.
    h.guest.add_chain(TXQ, &[(hdr_addr, 10, false)]);
    // Header past the end of memory.
    h.guest
        .add_chain(TXQ, &[(mem_end - 8, HDR_LEN as u32, false)]);
    h.guest
        .add_chain(TXQ, &[(u64::MAX - 4, HDR_LEN as u32, false)]);
    // Write-only header.
    h.guest.add_chain(TXQ, &[(hdr_addr, HDR_LEN as u32, true)]);
    // Payload longer than its descriptor, and past the end of memory.
    let rw = Header {
        len: 100,
        ..ghdr(OP_RW, 1, 2)
    };
    let rw_addr = Guest::buf_addr(TXQ, 201);
    h.guest
        .mem
        .write_slice(&rw.to_bytes(), GuestAddress(rw_addr))
        .unwrap();
    h.guest.add_chain(
        TXQ,
        &[
            (rw_addr, HDR_LEN as u32, false),
            (rw_addr + 0x100, 50, false),
        ],
    );
    h.guest.add_chain(
        TXQ,
        &[(rw_addr, HDR_LEN as u32, false), (mem_end - 10, 100, false)],
    );
    // Header says a payload, the chain has none.
    h.guest.add_chain(TXQ, &[(rw_addr, HDR_LEN as u32, false)]);
    // A descriptor loop: 0 -> 1 -> 0.
    let idx = h.guest.alloc(TXQ, 2);
    let next = VRING_DESC_F_NEXT as u16;
    h.guest.publish(
        TXQ,
        &idx,
        &[
            SplitDescriptor::new(hdr_addr, HDR_LEN as u32, next, idx[1]),
            SplitDescriptor::new(hdr_addr, HDR_LEN as u32, next, idx[0]),
        ],
    );
    // A next index past the table.
    let idx = h.guest.alloc(TXQ, 1);
    h.guest.publish(
        TXQ,
        &idx,
        &[SplitDescriptor::new(
            hdr_addr,
            HDR_LEN as u32,
            next,
            QSIZE + 5,
        )],
    );
    // Well-formed chains with bad headers.
    h.guest.send(
        Header {
            src_cid: 9,
            ..ghdr(OP_REQUEST, 1, 2)
        },
        &[],
    );
    h.guest.send(
        Header {
            type_: 2,
            ..ghdr(OP_REQUEST, 1, 2)
        },
        &[],
    );
    h.guest.send(ghdr(0, 1, 2), &[]);
    h.guest.send(ghdr(99, 1, 2), &[]);
    let big = Header {
        len: MAX_PKT_DATA + 1,
        ..ghdr(OP_RW, 1, 2)
    };
    let big_addr = Guest::buf_addr(TXQ, 202);
    h.guest
        .mem
        .write_slice(&big.to_bytes(), GuestAddress(big_addr))
        .unwrap();
    h.guest.add_chain(TXQ, &[(big_addr, HDR_LEN as u32, false)]);
    h.dev.process_queue(TXQ);

    let used = h.guest.used(TXQ);
    assert_eq!(used.len(), 14);
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(h.bad_requests(), 14);
    assert_eq!(h.dev.muxer.connection_count(), 0);
}

#[test]
fn malformed_rx_chains_are_counted_and_skipped() {
    let mut h = Harness::new();
    let a = Guest::buf_addr(RXQ, 100);
    // Read-only, too short, past the end of memory, no room for data, a loop.
    h.guest.add_chain(RXQ, &[(a, 4096, false)]);
    h.guest.add_chain(RXQ, &[(a, 20, true)]);
    h.guest
        .add_chain(RXQ, &[(MEM_SIZE as u64 - 16, 4096, true)]);
    h.guest
        .add_chain(RXQ, &[(a, HDR_LEN as u32, true), (a + 0x100, 0, true)]);
    let idx = h.guest.alloc(RXQ, 1);
    let flags = (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16;
    h.guest
        .publish(RXQ, &idx, &[SplitDescriptor::new(a, 4096, flags, idx[0])]);
    h.guest.give_rx(1);
    h.dev.process_queue(RXQ);
    assert!(
        h.guest.used(RXQ).is_empty(),
        "rx buffers are taken only when needed"
    );

    h.tx(ghdr(OP_REQUEST, 5000, 999), &[]);
    let used = h.guest.used(RXQ);
    assert_eq!(used.len(), 6);
    assert!(used[..5].iter().all(|&(_, len)| len == 0));
    assert_eq!(used[5].1, HDR_LEN as u32);
    assert_eq!(h.bad_requests(), 5);
}

#[test]
fn guest_shutdowns_half_close_and_close_after_the_data_is_written() {
    let mut h = Harness::new();
    h.kick_rx(16);
    let listener = UnixListener::bind(format!("{}_1024", h.uds.display())).unwrap();

    // SHUTDOWN(SEND): the host reads end-of-file and can still answer.
    h.tx(ghdr(OP_REQUEST, 5000, 1024), &[]);
    let (mut s, _) = listener.accept().unwrap();
    h.tx(ghdr(OP_RW, 5000, 1024), b"last words");
    h.tx(
        Header {
            flags: SHUTDOWN_SEND,
            ..ghdr(OP_SHUTDOWN, 5000, 1024)
        },
        &[],
    );
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last words");
    s.write_all(b"reply").unwrap();
    h.backend();
    let pkts = h.guest.recv();
    assert_eq!(pkts.last().unwrap().1, b"reply");
    assert!(pkts.iter().all(|(p, _)| p.op != OP_RST));

    // SHUTDOWN(both) while data waits for a full host socket: RST only once it is written.
    h.tx(ghdr(OP_REQUEST, 5001, 1024), &[]);
    let (mut s, _) = listener.accept().unwrap();
    h.guest.recv();
    let chunk = vec![9u8; MAX_PKT_DATA as usize];
    let mut sent = 0;
    while h.dev.muxer.connection((1024, 5001)).unwrap().buffered() == 0 {
        h.tx(ghdr(OP_RW, 5001, 1024), &chunk);
        sent += chunk.len();
    }
    h.tx(
        Header {
            flags: SHUTDOWN_BOTH,
            ..ghdr(OP_SHUTDOWN, 5001, 1024)
        },
        &[],
    );
    assert!(h.guest.recv().iter().all(|(p, _)| p.op != OP_RST));
    assert_eq!(h.dev.muxer.connection_count(), 2);
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut rounds = 0;
    while h.dev.muxer.connection((1024, 5001)).is_some() {
        rounds += 1;
        assert!(rounds < 1000, "no progress");
        got += s.read(&mut buf).unwrap();
        h.backend();
    }
    let pkts = h.guest.recv();
    assert_eq!(pkts.last().unwrap().0.op, OP_RST);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(got + rest.len(), sent);
    assert_eq!(h.bad_requests(), 0);
}

#[test]
fn protocol_violations_reset_the_connection() {
    let mut h = Harness::new();
    h.kick_rx(8);
    let (mut s, host_port) = h.host_connect(52);
    let host_port = host_port.src_port;
    // Data before the RESPONSE.
    h.tx(ghdr(OP_RW, 52, host_port), b"early");
    let pkts = h.guest.recv();
    assert_eq!(pkts[0].0.op, OP_RST);
    let mut buf = [0u8; 4];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    assert_eq!(h.dev.muxer.connection_count(), 0);
}

#[test]
fn reset_closes_every_connection_and_the_device_can_start_again() {
    let mut h = Harness::new();
    h.kick_rx(8);
    let (mut s, _) = h.established(52, 64 * 1024);
    let mut waiting = UnixStream::connect(&h.uds).unwrap();
    h.backend();
    assert!(h.dev.reset());
    let mut buf = [0u8; 4];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    assert_eq!(waiting.read(&mut buf).unwrap(), 0);
    assert_eq!(h.dev.muxer.connection_count(), 0);

    // While inactive, connections wait in the backlog and nothing is ready.
    let mut early = UnixStream::connect(&h.uds).unwrap();
    early.write_all(b"CONNECT 53\n").unwrap();
    h.backend();

    let guest = Guest::new();
    h.dev
        .activate(
            guest.mem.clone(),
            h.interrupt.clone(),
            guest.device_queues(),
        )
        .unwrap();
    h.guest = guest;
    h.kick_rx(4);
    h.backend();
    let pkts = h.guest.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (OP_REQUEST, 53));
}

/// The device as the transport drives it: activation then registration on the event loop.
struct Subscriber {
    dev: Vsock,
    activation: Option<(GuestMemory, Arc<Interrupt>, Vec<Queue>)>,
}

impl MutEventSubscriber for Subscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let (mem, irq, queues) = self.activation.take().unwrap();
        self.dev.activate(mem, irq, queues).unwrap();
        self.dev.register_backend(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.dev.process_backend(events, ops);
    }
}

#[test]
fn the_event_loop_drives_the_backend() {
    let dir = OpenTempDir::new("vsock");
    let uds = dir.0.join("v.sock");
    let mut guest = Guest::new();
    let irq = Arc::new(Interrupt::new().unwrap());
    let sub = Subscriber {
        dev: Vsock::new(GUEST_CID, uds.clone()).unwrap(),
        activation: Some((guest.mem.clone(), irq.clone(), guest.device_queues())),
    };
    let mut em = EventManager::<Subscriber>::new().unwrap();
    let id = em.add_subscriber(sub);
    guest.give_rx(4);

    let mut s = UnixStream::connect(&uds).unwrap();
    s.write_all(b"CONNECT 52\n").unwrap();
    // One turn: the epoll fd is ready (accept and the line are handled in it).
    assert!(em.run_with_timeout(100).unwrap() >= 1);
    let pkts = guest.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_REQUEST);
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    // Nothing left: the loop is idle, not spinning on a level-triggered fd.
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);

    let mut sub = em.remove_subscriber(id).unwrap();
    sub.dev.reset();
    drop(s);
    drop(sub);
    assert!(!Path::new(&uds).exists());
}

mod host_access;
