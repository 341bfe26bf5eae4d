//! Tests of the virtio-blk device, driven through virtio-queue's mock driver over in-memory
//! guest memory and a temporary backing file.

use crate::scratch::Scratch;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::{Block, SECTOR_SIZE, SEG_MAX};
use crate::devices::virtio::test_utils::{self, activate, add_chain, counter, used, used_count};
use crate::devices::virtio::{ActivateError, Interrupt, VirtioDevice};

const MEM_SIZE: u64 = 0x100_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

/// A temporary backing file, removed on drop.
struct TempDisk(Scratch);

impl TempDisk {
    fn new(name: &str, sectors: u64) -> TempDisk {
        let path = Scratch::new(&format!("blk-{name}"));
        let bytes: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE) as u8)
            .collect();
        fs::write(&path, bytes).unwrap();
        TempDisk(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn contents(&self) -> Vec<u8> {
        fs::read(&self.0).unwrap()
    }
}

fn guest_memory() -> GuestMemoryMmap {
    test_utils::guest_memory(MEM_SIZE)
}

/// Writes a request header at `addr`.
fn header(mem: &GuestMemoryMmap, addr: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
}

fn status_at(mem: &GuestMemoryMmap, addr: u64) -> u32 {
    u32::from(mem.read_obj::<u8>(GuestAddress(addr)).unwrap())
}

#[test]
fn write_then_read_round_trip() {
    let disk = TempDisk::new("rw", 16);
    let mut dev = Block::new(disk.path(), false).unwrap();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    let irq = activate(&mut dev, &mem, &[&vq]);

    // OUT of two sectors at sector 2, from two data buffers.
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
    mem.write_slice(&pattern[..512], GuestAddress(DATA))
        .unwrap();
    mem.write_slice(&pattern[512..], GuestAddress(DATA + 0x1000))
        .unwrap();
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 2);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    add_chain(
        &vq,
        0,
        &[
            (HDR, 16, false),
            (DATA, 512, false),
            (DATA + 0x1000, 512, false),
            (STATUS, 1, true),
        ],
    );
    dev.process_queue(0);
    assert_eq!(used_count(&vq), 1);
    assert_eq!(used(&vq, 0), (0, 1));
    assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_OK);
    let file = disk.contents();
    assert_eq!(&file[1024..2048], &pattern[..]);
    assert_eq!(file[1023], 1, "the sector before is untouched");
    assert_eq!(file[2048], 4, "the sector after is untouched");
    assert_eq!(irq.eventfd().read().unwrap(), 1);

    // IN of the same sectors into one buffer, header and data sharing a readable buffer is
    // not needed: a plain three-descriptor chain.
    header(&mem, HDR + 0x100, VIRTIO_BLK_T_IN, 2);
    add_chain(
        &vq,
        4,
        &[
            (HDR + 0x100, 16, false),
            (DATA + 0x4000, 1024, true),
            (STATUS + 1, 1, true),
        ],
    );
    dev.process_queue(0);
    assert_eq!(used(&vq, 1), (4, 1025));
    assert_eq!(status_at(&mem, STATUS + 1), VIRTIO_BLK_S_OK);
    let mut back = vec![0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(DATA + 0x4000))
        .unwrap();
    assert_eq!(back, pattern);

    let c = dev.counters();
    assert_eq!(counter(&c.requests), 2);
    assert_eq!(counter(&c.bytes), 2048);
    assert_eq!(counter(&c.bad_requests), 0);
}

#[test]
fn header_and_status_may_share_buffers_with_data() {
    // virtio 1.x drivers may lay a request out freely: header and data in one readable
    // buffer, data and status in one writable buffer.
    let disk = TempDisk::new("layout", 4);
    let mut dev = Block::new(disk.path(), false).unwrap();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    activate(&mut dev, &mem, &[&vq]);

    header(&mem, DATA, VIRTIO_BLK_T_OUT, 1);
    mem.write_slice(&[0xabu8; 512], GuestAddress(DATA + 16))
        .unwrap();
    add_chain(&vq, 0, &[(DATA, 16 + 512, false), (STATUS, 1, true)]);
    header(&mem, HDR, VIRTIO_BLK_T_IN, 1);
    add_chain(&vq, 2, &[(HDR, 16, false), (DATA + 0x1000, 513, true)]);
    dev.process_queue(0);

    assert_eq!(used(&vq, 0), (0, 1));
    assert_eq!(used(&vq, 1), (2, 513));
    assert_eq!(status_at(&mem, DATA + 0x1000 + 512), VIRTIO_BLK_S_OK);
    let mut back = [0u8; 512];
    mem.read_slice(&mut back, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(back, [0xab; 512]);
    assert_eq!(counter(&dev.counters().bad_requests), 0);
}

#[test]
fn flush_succeeds() {
    let disk = TempDisk::new("flush", 1);
    let mut dev = Block::new(disk.path(), false).unwrap();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    activate(&mut dev, &mem, &[&vq]);

    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    add_chain(&vq, 0, &[(HDR, 16, false), (STATUS, 1, true)]);
    dev.process_queue(0);
    assert_eq!(used(&vq, 0), (0, 1));
    assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_OK);
    assert_eq!(counter(&dev.counters().requests), 1);
}

#[test]
fn get_id_returns_the_file_name_cut_to_20_bytes() {
    let disk = TempDisk::new("a-rather-long-disk-name.img", 1);
    let name = disk
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut dev = Block::new(disk.path(), false).unwrap();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    activate(&mut dev, &mem, &[&vq]);

    header(&mem, HDR, VIRTIO_BLK_T_GET_ID, 0);
    add_chain(
        &vq,
        0,
        &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
    );
    // A buffer shorter than 20 bytes gets the start of the serial.
    header(&mem, HDR + 0x100, VIRTIO_BLK_T_GET_ID, 0);
    add_chain(
        &vq,
        3,
        &[
            (HDR + 0x100, 16, false),
            (DATA + 0x100, 5, true),
            (STATUS + 1, 1, true),
        ],
    );
    dev.process_queue(0);

    assert_eq!(used(&vq, 0), (0, 21));
    assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_OK);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..], &name.as_bytes()[..20]);
    assert_eq!(used(&vq, 1), (3, 6));
    let mut short = [0u8; 5];
    mem.read_slice(&mut short, GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(&short[..], &name.as_bytes()[..5]);
}

#[test]
fn read_only_disk_refuses_writes() {
    let disk = TempDisk::new("ro", 4);
    let before = disk.contents();
    let mut dev = Block::new(disk.path(), true).unwrap();
    assert!(dev.read_only());
    assert_ne!(dev.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    activate(&mut dev, &mem, &[&vq]);

    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    add_chain(
        &vq,
        0,
        &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
    );
    // Reads still work.
    header(&mem, HDR + 0x100, VIRTIO_BLK_T_IN, 3);
    add_chain(
        &vq,
        3,
        &[
            (HDR + 0x100, 16, false),
            (DATA + 0x1000, 512, true),
            (STATUS + 1, 1, true),
        ],
    );
    dev.process_queue(0);

    assert_eq!(used(&vq, 0), (0, 1));
    assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_IOERR);
    assert_eq!(disk.contents(), before);
    assert_eq!(used(&vq, 1), (3, 513));
    assert_eq!(status_at(&mem, STATUS + 1), VIRTIO_BLK_S_OK);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 0x1000)).unwrap(), 3);
    assert_eq!(counter(&dev.counters().bad_requests), 1);
}

#[test]
fn sectors_past_the_end_fail_with_ioerr() {
    let disk = TempDisk::new("range", 4);
    let mut dev = Block::new(disk.path(), false).unwrap();
    assert_eq!(dev.capacity(), 4);
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    activate(&mut dev, &mem, &[&vq]);

    // Straddles the end.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 3);
    add_chain(
        &vq,
        0,
        &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
    );
    // Starts past the end.
    header(&mem, HDR + 0x100, VIRTIO_BLK_T_OUT, 4);
    add_chain(
        &vq,
        3,
        &[
            (HDR + 0x100, 16, false),
            (DATA, 512, false),
            (STATUS + 1, 1, true),
        ],
    );
    // Sector number that overflows.
    header(&mem, HDR + 0x200, VIRTIO_BLK_T_IN, u64::MAX);
    add_chain(
        &vq,
        6,
        &[
            (HDR + 0x200, 16, false),
            (DATA, 512, true),
            (STATUS + 2, 1, true),
        ],
    );
    dev.process_queue(0);

    for i in 0..3 {
        assert_eq!(used(&vq, i).1, 1);
        assert_eq!(status_at(&mem, STATUS + i as u64), VIRTIO_BLK_S_IOERR);
    }
    assert_eq!(disk.contents().len(), 4 * 512, "the file did not grow");
    assert_eq!(counter(&dev.counters().bad_requests), 0);
}

/// A malformed chain: what is wrong, its (addr, len, writable) buffers, the used length
/// expected and the status byte expected to say IOERR.
type Case = (&'static str, Vec<(u64, u32, bool)>, u32, Option<u64>);

#[test]
fn malformed_chains_are_counted_and_returned() {
    let disk = TempDisk::new("malformed", 4);
    let before = disk.contents();
    let mut dev = Block::new(disk.path(), false).unwrap();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    let irq = activate(&mut dev, &mem, &[&vq]);

    let out = |i: u64| {
        header(&mem, HDR + i * 0x100, VIRTIO_BLK_T_OUT, 0);
        HDR + i * 0x100
    };
    let inn = |i: u64| {
        header(&mem, HDR + i * 0x100, VIRTIO_BLK_T_IN, 0);
        HDR + i * 0x100
    };
    let st = |i: u64| STATUS + i;
    // (chain, expected used len, status byte to check)
    let cases: Vec<Case> = vec![
        (
            "header too short",
            vec![(inn(0), 8, false), (st(0), 1, true)],
            1,
            Some(st(0)),
        ),
        (
            "header not readable",
            vec![(inn(1), 16, true), (st(1), 1, true)],
            1,
            Some(st(1)),
        ),
        (
            "status missing",
            vec![(out(2), 16, false), (DATA, 512, false)],
            0,
            None,
        ),
        (
            "status not writable",
            vec![(inn(3), 16, false), (DATA, 512, true), (st(3), 1, false)],
            0,
            None,
        ),
        (
            "status zero length",
            vec![(out(4), 16, false), (st(4), 0, true)],
            0,
            None,
        ),
        (
            "IN data readable",
            vec![(inn(5), 16, false), (DATA, 512, false), (st(5), 1, true)],
            1,
            Some(st(5)),
        ),
        (
            "OUT data writable",
            vec![(out(6), 16, false), (DATA, 512, true), (st(6), 1, true)],
            1,
            Some(st(6)),
        ),
        (
            "data not whole sectors",
            vec![(inn(7), 16, false), (DATA, 100, true), (st(7), 1, true)],
            1,
            Some(st(7)),
        ),
        (
            "data outside memory",
            vec![
                (inn(8), 16, false),
                (MEM_SIZE - 256, 512, true),
                (st(8), 1, true),
            ],
            1,
            Some(st(8)),
        ),
        (
            "header outside memory",
            vec![(MEM_SIZE + 0x1000, 16, false), (st(9), 1, true)],
            1,
            Some(st(9)),
        ),
    ];
    let mut first = 0u16;
    for (_, descs, _, status) in &cases {
        if let Some(s) = status {
            mem.write_obj(0xffu8, GuestAddress(*s)).unwrap();
        }
        add_chain(&vq, first, descs);
        first += descs.len() as u16;
    }
    // A loop: 0 -> 1 -> 0.
    let loop_start = first;
    let raw = [
        RawDescriptor::from(SplitDescriptor::new(
            inn(10),
            16,
            VRING_DESC_F_NEXT as u16,
            loop_start + 1,
        )),
        RawDescriptor::from(SplitDescriptor::new(
            st(10),
            1,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            loop_start,
        )),
    ];
    vq.add_desc_chains(&raw, loop_start).unwrap();
    // A next index beyond the queue.
    let bad_next = loop_start + 2;
    let raw = [RawDescriptor::from(SplitDescriptor::new(
        inn(11),
        16,
        VRING_DESC_F_NEXT as u16,
        300,
    ))];
    vq.add_desc_chains(&raw, bad_next).unwrap();
    // An unknown request type: answered UNSUPP.
    header(&mem, HDR + 12 * 0x100, 99, 0);
    add_chain(
        &vq,
        bad_next + 1,
        &[(HDR + 12 * 0x100, 16, false), (st(12), 1, true)],
    );

    dev.process_queue(0);

    let n = cases.len();
    assert_eq!(usize::from(used_count(&vq)), n + 3);
    for (i, (why, _, len, status)) in cases.iter().enumerate() {
        assert_eq!(used(&vq, i).1, *len, "{why}");
        if let Some(s) = status {
            assert_eq!(status_at(&mem, *s), VIRTIO_BLK_S_IOERR, "{why}");
        }
    }
    assert_eq!(used(&vq, n), (u32::from(loop_start), 0), "loop");
    assert_eq!(used(&vq, n + 1), (u32::from(bad_next), 0), "bad next");
    assert_eq!(
        used(&vq, n + 2),
        (u32::from(bad_next) + 1, 1),
        "unknown type"
    );
    assert_eq!(status_at(&mem, st(12)), VIRTIO_BLK_S_UNSUPP);

    let c = dev.counters();
    assert_eq!(counter(&c.bad_requests), n as u64 + 3);
    assert_eq!(counter(&c.requests), 0);
    assert_eq!(disk.contents(), before);
    // One interrupt for the whole batch.
    assert_eq!(irq.eventfd().read().unwrap(), 1);
}

#[test]
fn a_readable_descriptor_after_an_empty_writable_one_is_refused() {
    let disk = TempDisk::new("order", 4);
    let before = disk.contents();
    let mut dev = Block::new(disk.path(), false).unwrap();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    activate(&mut dev, &mem, &[&vq]);
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    // A zero-length device-writable descriptor still ends the device-readable part.
    add_chain(
        &vq,
        0,
        &[
            (HDR, 16, false),
            (DATA, 0, true),
            (DATA, 512, false),
            (STATUS, 1, true),
        ],
    );
    dev.process_queue(0);
    assert_eq!(used(&vq, 0), (0, 1));
    assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_IOERR);
    assert_eq!(counter(&dev.counters().bad_requests), 1);
    assert_eq!(disk.contents(), before);
}

#[test]
fn head_index_beyond_the_queue_is_counted_once() {
    let disk = TempDisk::new("head", 1);
    let mut dev = Block::new(disk.path(), false).unwrap();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    activate(&mut dev, &mem, &[&vq]);

    // Avail ring entry 0 names descriptor 1000 of a 256-entry table.
    mem.write_obj(1000u16, vq.avail_addr().unchecked_add(4))
        .unwrap();
    mem.write_obj(1u16, vq.avail_addr().unchecked_add(2))
        .unwrap();
    dev.process_queue(0);
    assert_eq!(used_count(&vq), 0);
    assert_eq!(counter(&dev.counters().bad_requests), 1);
}

#[test]
fn features_and_config() {
    let disk = TempDisk::new("cfg", 8);
    let mut dev = Block::new(disk.path(), false).unwrap();
    assert_eq!(dev.device_type(), 2);
    assert_eq!(dev.queue_max_sizes(), &[256]);
    assert_eq!(dev.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let mut seg_max = [0u8; 4];
    dev.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), SEG_MAX);
    let mut blk_size = [0u8; 4];
    dev.read_config(20, &mut blk_size);
    assert_eq!(u32::from_le_bytes(blk_size), 512);
    dev.set_acked_features(u64::MAX);
    assert_eq!(dev.acked_features(), dev.avail_features());
}

#[test]
fn a_partial_last_sector_is_not_exposed() {
    let disk = TempDisk::new("partial", 2);
    fs::OpenOptions::new()
        .append(true)
        .open(disk.path())
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[1; 100]))
        .unwrap();
    let dev = Block::new(disk.path(), false).unwrap();
    assert_eq!(dev.capacity(), 2);
}

#[test]
fn open_errors_name_the_path() {
    let path = std::env::temp_dir().join("carapace-blk-does-not-exist.img");
    let err = Block::new(&path, true).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string().contains("carapace-blk-does-not-exist.img"),
        "{err}"
    );
}

#[test]
fn activation_needs_one_queue_and_reset_drops_it() {
    let disk = TempDisk::new("reset", 1);
    let mut dev = Block::new(disk.path(), false).unwrap();
    let mem = guest_memory();
    let irq = Arc::new(Interrupt::new().unwrap());
    let err = dev
        .activate(mem.clone(), irq.clone(), Vec::new())
        .unwrap_err();
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
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    add_chain(&vq, 0, &[(HDR, 16, false), (STATUS, 1, true)]);
    // After a reset nothing is served until the next activation.
    dev.process_queue(0);
    assert_eq!(used_count(&vq), 0);
    activate(&mut dev, &mem, &[&vq]);
    dev.process_queue(0);
    assert_eq!(used_count(&vq), 1);
}

#[test]
fn a_rate_limited_disk_serves_no_more_than_its_operations_per_refill() {
    let disk = TempDisk::new("rate", 1);
    let limit = crate::config::RateLimitConfig {
        bandwidth: None,
        ops: Some(crate::config::BucketConfig {
            size: 2,
            refill_time_ms: 300,
        }),
    };
    let mut dev = Block::new(disk.path(), false)
        .unwrap()
        .with_rate_limit(&limit)
        .unwrap();
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, 256);
    activate(&mut dev, &mem, &[&vq]);
    for i in 0..3u64 {
        let (hdr, status) = (HDR + i * 0x100, STATUS + i * 0x100);
        header(&mem, hdr, VIRTIO_BLK_T_FLUSH, 0);
        add_chain(&vq, (i * 2) as u16, &[(hdr, 16, false), (status, 1, true)]);
    }
    dev.process_queue(0);
    assert_eq!(used_count(&vq), 2, "two operations in the bucket");
    dev.process_queue(0);
    assert_eq!(
        used_count(&vq),
        2,
        "a kick before the refill changes nothing"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    dev.process_queue(0);
    assert_eq!(used_count(&vq), 3, "a token after a third of the refill");
    assert_eq!(counter(&dev.counters().requests), 3);
}
