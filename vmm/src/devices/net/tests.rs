//! Tests of the virtio-net device: a datagram socket pair stands in for the tap (one end is
//! the device's backend, the test holds the other), virtio-queue's mock driver plays the
//! guest; real taps are created where `/dev/net/tun` allows.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Net, MAX_FRAME_LEN, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use crate::devices::virtio::test_utils::{
    self, activate as activate_queues, add_chain, counter, used, used_count,
};
use crate::devices::virtio::{ActivateError, Interrupt, VirtioDevice};

const MEM_SIZE: u64 = 0x100_0000;
const BUF: u64 = 0x10_0000;
const MAC: [u8; 6] = [0x02, 0xca, 0x4a, 0x00, 0x00, 0x01];

fn guest_memory() -> GuestMemoryMmap {
    test_utils::guest_memory(MEM_SIZE)
}

/// A device whose "tap" is one end of a datagram socket pair; the other end is returned.
fn device() -> (Net, UnixDatagram) {
    let (dev_end, test_end) = UnixDatagram::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    test_end.set_nonblocking(true).unwrap();
    let file = File::from(OwnedFd::from(dev_end));
    (Net::with_backend(file, "test0".into(), Some(MAC)), test_end)
}

struct Queues<'a> {
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    irq: Arc<Interrupt>,
}

fn activate<'a>(dev: &mut Net, mem: &'a GuestMemoryMmap) -> Queues<'a> {
    let rx = MockSplitQueue::create(mem, GuestAddress(0), 256);
    let tx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 256);
    let irq = activate_queues(dev, mem, &[&rx, &tx]);
    Queues { rx, tx, irq }
}

/// An Ethernet frame of `len` bytes whose bytes are derived from `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What a tap with a 12-byte virtio-net header hands the device: a header (here with the
/// DATA_VALID flag, which the device must not pass on) and the frame.
fn from_tap(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; VNET_HDR_LEN];
    v[0] = 2;
    v.extend_from_slice(frame);
    v
}

/// The header the guest must see: all zero but num_buffers = 1.
fn rx_header() -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[10] = 1;
    h
}

fn recv_nothing(sock: &UnixDatagram) {
    let mut buf = [0u8; 16];
    let err = sock.recv(&mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
}

#[test]
fn tx_frame_reaches_the_tap_with_a_zeroed_header() {
    let (mut dev, peer) = device();
    let mem = guest_memory();
    let q = activate(&mut dev, &mem);

    let f = frame(60, 1);
    // The guest sets header bits it did not negotiate: they must not reach the host.
    mem.write_slice(&[0xff; VNET_HDR_LEN], GuestAddress(BUF))
        .unwrap();
    mem.write_slice(&f[..20], GuestAddress(BUF + 0x100))
        .unwrap();
    mem.write_slice(&f[20..], GuestAddress(BUF + 0x200))
        .unwrap();
    add_chain(
        &q.tx,
        0,
        &[
            (BUF, VNET_HDR_LEN as u32, false),
            (BUF + 0x100, 20, false),
            (BUF + 0x200, 40, false),
        ],
    );
    dev.process_queue(TX_QUEUE);

    let mut got = vec![0u8; 2048];
    let n = peer.recv(&mut got).unwrap();
    assert_eq!(n, VNET_HDR_LEN + 60);
    assert_eq!(&got[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
    assert_eq!(&got[VNET_HDR_LEN..n], &f[..]);
    assert_eq!(used_count(&q.tx), 1);
    assert_eq!(used(&q.tx, 0), (0, 0));
    assert_eq!(q.irq.eventfd().read().unwrap(), 1);
    assert_eq!(counter(&dev.counters().requests), 1);
    assert_eq!(counter(&dev.counters().bytes), 60);
}

#[test]
fn rx_frame_lands_in_the_guest_buffer() {
    let (mut dev, peer) = device();
    let mem = guest_memory();
    let q = activate(&mut dev, &mem);

    let f = frame(100, 7);
    peer.send(&from_tap(&f)).unwrap();
    // Header and frame spread over two buffers, the header split across them.
    add_chain(&q.rx, 0, &[(BUF, 8, true), (BUF + 0x1000, 1518, true)]);
    dev.process_queue(RX_QUEUE);

    assert_eq!(used_count(&q.rx), 1);
    assert_eq!(used(&q.rx, 0), (0, (VNET_HDR_LEN + 100) as u32));
    let mut got = [0u8; VNET_HDR_LEN + 100];
    mem.read_slice(&mut got[..8], GuestAddress(BUF)).unwrap();
    mem.read_slice(&mut got[8..], GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(&got[..VNET_HDR_LEN], &rx_header());
    assert_eq!(&got[VNET_HDR_LEN..], &f[..]);
    assert_eq!(q.irq.eventfd().read().unwrap(), 1);
    assert_eq!(counter(&dev.counters().bytes), 100);
    assert!(!dev.rx_deferred());
}

#[test]
fn rx_without_buffers_defers_until_the_guest_kicks() {
    let (mut dev, peer) = device();
    let mem = guest_memory();
    let q = activate(&mut dev, &mem);

    let (f1, f2) = (frame(64, 1), frame(80, 2));
    peer.send(&from_tap(&f1)).unwrap();
    peer.send(&from_tap(&f2)).unwrap();
    dev.process_queue(RX_QUEUE);
    assert!(dev.rx_deferred());
    assert_eq!(used_count(&q.rx), 0);
    assert!(
        q.irq.eventfd().read().is_err(),
        "no interrupt without used buffers"
    );

    add_chain(&q.rx, 0, &[(BUF, 1526, true)]);
    add_chain(&q.rx, 1, &[(BUF + 0x1000, 1526, true)]);
    dev.process_queue(RX_QUEUE);
    assert!(!dev.rx_deferred());
    assert_eq!(used_count(&q.rx), 2);
    let mut got = vec![0u8; VNET_HDR_LEN + 80];
    mem.read_slice(&mut got[..VNET_HDR_LEN + 64], GuestAddress(BUF))
        .unwrap();
    assert_eq!(&got[VNET_HDR_LEN..VNET_HDR_LEN + 64], &f1[..]);
    mem.read_slice(&mut got, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(&got[VNET_HDR_LEN..], &f2[..]);
    assert_eq!(q.irq.eventfd().read().unwrap(), 1);
}

#[test]
fn a_frame_larger_than_the_buffer_is_dropped_and_the_buffer_kept() {
    let (mut dev, peer) = device();
    let mem = guest_memory();
    let q = activate(&mut dev, &mem);

    let big = frame(3000, 3);
    let small = frame(60, 4);
    peer.send(&from_tap(&big)).unwrap();
    peer.send(&from_tap(&small)).unwrap();
    add_chain(&q.rx, 0, &[(BUF, 1526, true)]);
    dev.process_queue(RX_QUEUE);

    assert_eq!(used_count(&q.rx), 1);
    assert_eq!(used(&q.rx, 0), (0, (VNET_HDR_LEN + 60) as u32));
    let mut got = vec![0u8; 60];
    mem.read_slice(&mut got, GuestAddress(BUF + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, small);
    assert_eq!(counter(&dev.counters().bad_requests), 1);
    assert_eq!(counter(&dev.counters().requests), 1);
}

#[test]
fn malformed_rx_chains_are_counted_and_the_frame_goes_to_the_next() {
    let (mut dev, peer) = device();
    let mem = guest_memory();
    let q = activate(&mut dev, &mem);

    let f = frame(60, 5);
    peer.send(&from_tap(&f)).unwrap();
    // Device-readable buffer.
    add_chain(&q.rx, 0, &[(BUF, 1526, false)]);
    // Too small for the header.
    add_chain(&q.rx, 1, &[(BUF, 8, true)]);
    // Outside guest memory.
    add_chain(&q.rx, 2, &[(MEM_SIZE - 100, 1526, true)]);
    // A loop.
    let raw = [
        RawDescriptor::from(SplitDescriptor::new(
            BUF,
            100,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            4,
        )),
        RawDescriptor::from(SplitDescriptor::new(
            BUF,
            100,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            3,
        )),
    ];
    q.rx.add_desc_chains(&raw, 3).unwrap();
    // A good one.
    add_chain(&q.rx, 5, &[(BUF + 0x1000, 1526, true)]);
    dev.process_queue(RX_QUEUE);

    assert_eq!(used_count(&q.rx), 5);
    for (i, head) in [0, 1, 2, 3].into_iter().enumerate() {
        assert_eq!(used(&q.rx, i), (head, 0));
    }
    assert_eq!(used(&q.rx, 4), (5, (VNET_HDR_LEN + 60) as u32));
    let mut got = vec![0u8; 60];
    mem.read_slice(&mut got, GuestAddress(BUF + 0x1000 + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, f);
    assert_eq!(counter(&dev.counters().bad_requests), 4);
    assert_eq!(q.irq.eventfd().read().unwrap(), 1);
}

#[test]
fn malformed_tx_chains_are_counted_and_not_sent() {
    let (mut dev, peer) = device();
    let mem = guest_memory();
    let q = activate(&mut dev, &mem);

    // Device-writable buffer.
    add_chain(&q.tx, 0, &[(BUF, 12, false), (BUF + 0x100, 60, true)]);
    // Shorter than the headers.
    add_chain(&q.tx, 2, &[(BUF, 20, false)]);
    // Longer than the largest frame.
    add_chain(
        &q.tx,
        3,
        &[(BUF, MAX_FRAME_LEN as u32, false), (BUF, 1, false)],
    );
    // Outside guest memory.
    add_chain(&q.tx, 5, &[(BUF, 12, false), (MEM_SIZE - 10, 60, false)]);
    // A next index past the queue.
    let raw = [RawDescriptor::from(SplitDescriptor::new(
        BUF,
        100,
        VRING_DESC_F_NEXT as u16,
        999,
    ))];
    q.tx.add_desc_chains(&raw, 7).unwrap();
    dev.process_queue(TX_QUEUE);

    assert_eq!(used_count(&q.tx), 5);
    assert_eq!(counter(&dev.counters().bad_requests), 5);
    assert_eq!(counter(&dev.counters().requests), 0);
    recv_nothing(&peer);
    assert_eq!(q.irq.eventfd().read().unwrap(), 1);
}

#[test]
fn tap_write_errors_drop_the_frame() {
    let (mut dev, peer) = device();
    drop(peer);
    let mem = guest_memory();
    let q = activate(&mut dev, &mem);
    add_chain(&q.tx, 0, &[(BUF, 100, false)]);
    dev.process_queue(TX_QUEUE);
    assert_eq!(used(&q.tx, 0), (0, 0));
    assert_eq!(dev.dropped_frames(), 1);
    assert_eq!(counter(&dev.counters().bad_requests), 0);
}

/// The transport's part in the event loop, reduced to the device's backend.
struct Backend(Net);

impl MutEventSubscriber for Backend {
    fn init(&mut self, ops: &mut EventOps) {
        self.0.register_backend(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0.process_backend(events, ops);
    }
}

#[test]
fn the_event_loop_delivers_frames_and_does_not_spin_without_buffers() {
    let (mut dev, peer) = device();
    let mem = guest_memory();
    let q = activate(&mut dev, &mem);
    add_chain(&q.rx, 0, &[(BUF, 1526, true)]);

    let backend = Arc::new(Mutex::new(Backend(dev)));
    let mut em = EventManager::<Arc<Mutex<Backend>>>::new().unwrap();
    em.add_subscriber(backend.clone());
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);

    // One buffer, two frames: the first is delivered, the second waits.
    peer.send(&from_tap(&frame(60, 1))).unwrap();
    peer.send(&from_tap(&frame(70, 2))).unwrap();
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(used_count(&q.rx), 1);
    assert!(backend.lock().unwrap().0.rx_deferred());
    // Frames are pending but the guest has no buffer: the loop stays quiet.
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);

    // The guest posts a buffer and kicks: the waiting frame goes in.
    add_chain(&q.rx, 1, &[(BUF + 0x1000, 1526, true)]);
    backend.lock().unwrap().0.process_queue(RX_QUEUE);
    assert_eq!(used_count(&q.rx), 2);
    assert_eq!(used(&q.rx, 1), (1, (VNET_HDR_LEN + 70) as u32));

    // A reset forgets the waiting frame; the loop stays quiet.
    peer.send(&from_tap(&frame(80, 3))).unwrap();
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert!(backend.lock().unwrap().0.rx_deferred());
    assert!(backend.lock().unwrap().0.reset());
    assert!(!backend.lock().unwrap().0.rx_deferred());
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
}

#[test]
fn features_and_config() {
    let (dev, _peer) = device();
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), &[256, 256]);
    assert_ne!(dev.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
    let mut cfg = [0u8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");

    let (a, _b) = UnixDatagram::pair().unwrap();
    let dev = Net::with_backend(File::from(OwnedFd::from(a)), "t".into(), None);
    assert_eq!(dev.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
    assert_eq!(dev.mac(), None);
}

#[test]
fn activation_needs_two_queues() {
    let (mut dev, _peer) = device();
    let mem = guest_memory();
    let irq = Arc::new(Interrupt::new().unwrap());
    let q = MockSplitQueue::new(&mem, 256).create_queue().unwrap();
    let err = dev.activate(mem.clone(), irq, vec![q]).unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 2,
            got: 1
        }
    ));
}

#[test]
fn a_socket_is_not_a_tap() {
    let (a, _b) = UnixDatagram::pair().unwrap();
    let err = Net::with_tap_fd(OwnedFd::from(a), None).unwrap_err();
    assert!(err.to_string().contains("not a tap"), "{err}");
}

#[test]
fn bad_tap_names_are_refused_by_name() {
    let err = Net::with_tap_name("a-name-far-too-long-for-linux", None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("a-name-far-too-long-for-linux"),
        "{err}"
    );
}

#[test]
fn real_taps_by_name_and_by_fd() {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "cvt{}x{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let dev = match Net::with_tap_name(&name, Some(MAC)) {
        Ok(dev) => dev,
        Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::NotFound) => {
            eprintln!("skipped: cannot create a tap here: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(dev.tap_name(), name);
    assert_eq!(dev.mac(), Some(MAC));

    drop(dev);

    // A tap opened elsewhere, handed over as an fd.
    let (file, _) = super::tap::open_named(&name).unwrap();
    let dev = Net::with_tap_fd(OwnedFd::from(file), None).unwrap();
    assert_eq!(dev.tap_name(), name);
    // Nothing arrives on a tap whose link is down: a kick reads nothing and defers nothing.
    let mut dev = dev;
    let mem = guest_memory();
    let q = activate(&mut dev, &mem);
    add_chain(&q.rx, 0, &[(BUF, 1526, true)]);
    dev.process_queue(RX_QUEUE);
    assert_eq!(used_count(&q.rx), 0);
    assert!(!dev.rx_deferred());
}

/// A raw packet socket on interface `name` (which is brought up first), for the host's side
/// of a real tap.
fn packet_socket_on(name: &str) -> std::io::Result<File> {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;

    // Keep IPv6 autoconfiguration traffic off the test link; a missing knob is no matter.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let cname = CString::new(name).unwrap();

    // SAFETY: plain socket creation; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let ctl = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain C data for which all-zero bytes are valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &s) in ifr.ifr_name.iter_mut().zip(cname.as_bytes()) {
        *d = s as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS reads and writes one ifreq, alive for the call.
    if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled ifr_flags, the member read and written here.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads one ifreq, alive for the call.
    if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }

    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain C data for which all-zero bytes are valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    // SAFETY: `cname` is a NUL-terminated string alive for the call.
    addr.sll_ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as libc::c_int;
    // SAFETY: `addr` is a sockaddr_ll of the size passed, alive for the call.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(File::from(sock))
}

/// A broadcast frame of a local experimental ethertype, tagged with `tag`.
fn test_frame(tag: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| tag ^ i as u8));
    f
}

#[test]
fn frames_cross_a_real_tap_both_ways() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "cvf{}x{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut dev = match Net::with_tap_name(&name, Some(MAC)) {
        Ok(dev) => dev,
        Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::NotFound) => {
            eprintln!("skipped: cannot create a tap here: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let host = match packet_socket_on(&name) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: cannot open a packet socket on {name}: {e}");
            return;
        }
    };
    let mem = guest_memory();
    let q = activate(&mut dev, &mem);
    let deadline = Instant::now() + Duration::from_secs(5);

    // Host to guest: the frame the host sends out of the tap lands in a guest buffer, after
    // a 12-byte header with num_buffers = 1.
    for i in 0..8u16 {
        add_chain(&q.rx, i, &[(BUF + u64::from(i) * 0x1000, 1526, true)]);
    }
    let to_guest = test_frame(0x5a, 100);
    (&host).write_all(&to_guest).unwrap();
    let mut found = false;
    while !found && Instant::now() < deadline {
        dev.process_queue(RX_QUEUE);
        for i in 0..usize::from(used_count(&q.rx)) {
            let (head, len) = used(&q.rx, i);
            let mut got = vec![0u8; len as usize];
            mem.read_slice(&mut got, GuestAddress(BUF + u64::from(head) * 0x1000))
                .unwrap();
            if got.len() == VNET_HDR_LEN + to_guest.len() && got[VNET_HDR_LEN..] == to_guest[..] {
                assert_eq!(&got[..VNET_HDR_LEN], &rx_header());
                found = true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(found, "the host's frame did not reach the guest");

    // Guest to host: the guest's frame comes out of the tap without its header.
    let to_host = test_frame(0xa5, 90);
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(BUF))
        .unwrap();
    mem.write_slice(&to_host, GuestAddress(BUF + VNET_HDR_LEN as u64))
        .unwrap();
    add_chain(
        &q.tx,
        0,
        &[(BUF, (VNET_HDR_LEN + to_host.len()) as u32, false)],
    );
    dev.process_queue(TX_QUEUE);
    assert_eq!(dev.dropped_frames(), 0);
    let mut buf = vec![0u8; 2048];
    let mut found = false;
    while !found && Instant::now() < deadline {
        match (&host).read(&mut buf) {
            Ok(n) => found = buf[..n] == to_host[..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(found, "the guest's frame did not reach the host");
}
