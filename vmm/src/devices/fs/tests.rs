//! Tests of the virtio-fs device, driven through virtio-queue's mock driver over in-memory
//! guest memory and a temporary shared directory: FUSE requests built by hand, as the guest's
//! driver builds them.

use crate::scratch::Scratch;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{CacheMode, Fs, FsError, QUEUE_SIZE};
use crate::devices::virtio::test_utils::{add_chain, counter, leaked_guest_memory};
use crate::devices::virtio::{ActivateError, Interrupt, VirtioDevice};

pub(super) const MEM_SIZE: u64 = 0x100_0000;
pub(super) const QSIZE: u16 = 256;
const HIPRIO_RING: u64 = 0;
pub(super) const REQUEST_RING: u64 = 0x1_0000;
pub(super) const REQ: u64 = 0x10_0000;
pub(super) const RESP: u64 = 0x20_0000;
pub(super) const RESP_LEN: u32 = 0x2_0000;

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_READLINK: u32 = 5;
const FUSE_MKDIR: u32 = 9;
const FUSE_LINK: u32 = 13;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_SETXATTR: u32 = 21;
const FUSE_GETXATTR: u32 = 22;
const FUSE_INIT: u32 = 26;
const FUSE_STATX: u32 = 52;
pub(super) const ROOT: u64 = 1;

/// A temporary directory tree, removed on drop: `share/` is what the device serves and
/// `outside` a file next to it the guest must never reach.
pub(super) struct TempTree(pub(super) Scratch);

impl TempTree {
    pub(super) fn new(name: &str) -> TempTree {
        let path = Scratch::new(&format!("fs-{name}"));
        fs::create_dir_all(path.join("share")).unwrap();
        fs::write(path.join("outside"), b"host secret outside the share").unwrap();
        TempTree(path)
    }

    pub(super) fn share(&self) -> PathBuf {
        self.0.join("share")
    }
}

/// A device activated over mock queues, and the bookkeeping to send it requests.
pub(super) struct Guest {
    pub(super) dev: Fs,
    pub(super) mem: GuestMemoryMmap,
    irq: Arc<Interrupt>,
    queues: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
    next_desc: [u16; 2],
    served: [u16; 2],
    unique: u64,
}

/// One FUSE reply: the header's error and length, and the body after it.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) used_len: u32,
    pub(super) error: i32,
    pub(super) len: u32,
    pub(super) unique: u64,
    pub(super) body: Vec<u8>,
}

pub(super) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

pub(super) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

pub(super) fn name(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}

impl Guest {
    pub(super) fn new(share: &Path, read_only: bool) -> Guest {
        Guest::with_device(Fs::new("carapace", share, CacheMode::Never, read_only).unwrap())
    }

    /// A guest of `dev`.
    pub(super) fn with_device(mut dev: Fs) -> Guest {
        // The mock queues borrow the memory for their lifetime; leak one per test.
        let mem = leaked_guest_memory(MEM_SIZE);
        let queues: Vec<_> = [HIPRIO_RING, REQUEST_RING]
            .iter()
            .map(|&a| MockSplitQueue::create(mem, GuestAddress(a), QSIZE))
            .collect();
        let qs: Vec<Queue> = queues.iter().map(|q| q.create_queue().unwrap()).collect();
        let irq = Arc::new(Interrupt::new().unwrap());
        dev.activate(mem.clone(), irq.clone(), qs).unwrap();
        Guest {
            dev,
            mem: mem.clone(),
            irq,
            queues,
            next_desc: [0; 2],
            served: [0; 2],
            unique: 0,
        }
    }

    /// Adds a chain of (addr, len, device-writable) buffers on queue `q` and serves it;
    /// returns the used length.
    pub(super) fn raw_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u32 {
        let first = self.next_desc[q];
        add_chain(&self.queues[q], first, descs);
        self.next_desc[q] = (first + descs.len() as u16) % QSIZE;
        self.dev.process_queue(q);
        let used = self.queues[q].used();
        assert_eq!(
            used.idx().load(),
            self.served[q] + 1,
            "the chain was returned"
        );
        let e = used.ring().ref_at(self.served[q] as usize).unwrap().load();
        assert_eq!(e.id(), u32::from(first), "the used entry names the head");
        self.served[q] += 1;
        e.len()
    }

    /// Writes a FUSE header and `body` at REQ, with `len` in the header (normally the sum).
    pub(super) fn write_request(&mut self, opcode: u32, nodeid: u64, body: &[u8], len: u32) -> u64 {
        self.unique += 2;
        let mut h = Vec::with_capacity(40 + body.len());
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&opcode.to_le_bytes());
        h.extend_from_slice(&self.unique.to_le_bytes());
        h.extend_from_slice(&nodeid.to_le_bytes());
        // SAFETY: getuid/getgid only return the caller's ids.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        h.extend_from_slice(&uid.to_le_bytes());
        h.extend_from_slice(&gid.to_le_bytes());
        h.extend_from_slice(&std::process::id().to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(body);
        self.mem.write_slice(&h, GuestAddress(REQ)).unwrap();
        self.unique
    }

    pub(super) fn read_reply(&self, used_len: u32) -> Reply {
        let mut b = vec![0u8; used_len as usize];
        self.mem.read_slice(&mut b, GuestAddress(RESP)).unwrap();
        assert!(b.len() >= 16, "a reply has a header: used {used_len}");
        Reply {
            used_len,
            len: u32_at(&b, 0),
            error: u32_at(&b, 4) as i32,
            unique: u64_at(&b, 8),
            body: b[16..].to_vec(),
        }
    }

    /// Sends one well-formed request on the request queue and returns its reply.
    pub(super) fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        let len = 40 + body.len() as u32;
        let unique = self.write_request(opcode, nodeid, body, len);
        let used = self.raw_chain(1, &[(REQ, len, false), (RESP, RESP_LEN, true)]);
        let r = self.read_reply(used);
        assert_eq!(r.unique, unique, "the reply answers this request");
        assert_eq!(r.len, used, "the header's length is the used length");
        r
    }

    pub(super) fn init(&mut self) -> Reply {
        let mut body = Vec::new();
        for v in [7u32, 31, 0x2_0000, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        self.call(FUSE_INIT, 0, &body)
    }

    /// LOOKUP: (errno, nodeid, size, mode).
    pub(super) fn lookup(&mut self, parent: u64, n: &str) -> (i32, u64, u64, u32) {
        let r = self.call(FUSE_LOOKUP, parent, &name(n));
        if r.error != 0 {
            return (-r.error, 0, 0, 0);
        }
        (
            0,
            u64_at(&r.body, 0),
            u64_at(&r.body, 48),
            u32_at(&r.body, 100),
        )
    }

    pub(super) fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let mut body = (flags as u32).to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        let r = self.call(FUSE_OPEN, nodeid, &body);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(u64_at(&r.body, 0))
    }

    pub(super) fn read(&mut self, nodeid: u64, fh: u64, size: u32) -> Reply {
        let mut body = Vec::new();
        body.extend_from_slice(&fh.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&size.to_le_bytes());
        body.extend_from_slice(&[0u8; 20]);
        self.call(FUSE_READ, nodeid, &body)
    }

    pub(super) fn bad(&self) -> u64 {
        counter(&self.dev.counters().bad_requests)
    }
}

#[test]
fn init_lookup_getattr_and_read_a_file() {
    let tree = TempTree::new("read");
    fs::write(tree.share().join("hello.txt"), b"hello from the host\n").unwrap();
    let mut g = Guest::new(&tree.share(), false);

    let r = g.init();
    assert_eq!(r.error, 0, "{r:?}");
    assert_eq!(
        (u32_at(&r.body, 0), u32_at(&r.body, 4)),
        (7, 33),
        "FUSE 7.33"
    );

    let (err, node, size, mode) = g.lookup(ROOT, "hello.txt");
    assert_eq!(err, 0);
    assert!(node > ROOT);
    assert_eq!(size, 20);
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);

    let r = g.call(FUSE_GETATTR, node, &[0u8; 16]);
    assert_eq!(r.error, 0, "{r:?}");
    // struct fuse_attr_out: attr_valid, attr_valid_nsec, dummy, then the attr (size at 8).
    assert_eq!(u64_at(&r.body, 24), 20);

    let fh = g.open(node, libc::O_RDONLY).unwrap();
    let r = g.read(node, fh, 4096);
    assert_eq!(r.error, 0, "{r:?}");
    assert_eq!(r.body, b"hello from the host\n");
    assert_eq!(r.used_len, 16 + 20);

    assert_eq!(g.lookup(ROOT, "missing").0, libc::ENOENT);
    let c = g.dev.counters();
    assert_eq!(counter(&c.requests), 6);
    assert_eq!(counter(&c.bad_requests), 0);
    assert!(
        g.irq.eventfd().read().unwrap() >= 1,
        "the guest was interrupted"
    );
}

#[test]
fn dotdot_never_leaves_the_share() {
    let tree = TempTree::new("dotdot");
    fs::create_dir(tree.share().join("sub")).unwrap();
    let mut g = Guest::new(&tree.share(), false);
    g.init();

    // `..` at the root is the root itself.
    let (err, node, _, mode) = g.lookup(ROOT, "..");
    assert_eq!((err, node), (0, ROOT));
    assert_eq!(mode & libc::S_IFMT, libc::S_IFDIR);
    // From a subdirectory, `..` leads back to the root and no further.
    let (_, sub, _, _) = g.lookup(ROOT, "sub");
    let (err, up, _, _) = g.lookup(sub, "..");
    assert_eq!((err, up), (0, ROOT));
    let (err, up2, _, _) = g.lookup(up, "..");
    assert_eq!((err, up2), (0, ROOT));
    // The file next to the share is not there, by name or by path.
    assert_eq!(g.lookup(ROOT, "outside").0, libc::ENOENT);
    assert_eq!(g.lookup(ROOT, "../outside").0, libc::EINVAL);
    assert_eq!(g.lookup(sub, "../../outside").0, libc::EINVAL);
    assert_eq!(g.bad(), 0);
}

#[test]
fn symlinks_are_never_followed_on_the_host() {
    let tree = TempTree::new("symlink");
    let outside = tree.0.join("outside");
    std::os::unix::fs::symlink(&outside, tree.share().join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", tree.share().join("rel")).unwrap();
    std::os::unix::fs::symlink("/", tree.share().join("hostroot")).unwrap();
    let mut g = Guest::new(&tree.share(), false);
    g.init();

    for link in ["abs", "rel"] {
        let (err, node, _, mode) = g.lookup(ROOT, link);
        assert_eq!(err, 0);
        assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK, "{link} is a link");
        // Opening the link itself (the guest kernel never does; a hostile one may) fails
        // instead of opening its target.
        let e = g.open(node, libc::O_RDONLY).unwrap_err();
        assert_ne!(e, 0);
        // READLINK gives the text of the link; the guest resolves it in its own tree.
        let r = g.call(FUSE_READLINK, node, &[]);
        assert_eq!(r.error, 0);
        assert!(!r.body.starts_with(b"host secret"));
    }
    let (_, root_link, _, _) = g.lookup(ROOT, "hostroot");
    assert_eq!(g.lookup(root_link, "etc").0, libc::ENOTDIR);
}

#[test]
fn a_rename_race_and_hard_links_stay_inside_the_share() {
    use std::os::unix::fs::MetadataExt;
    let tree = TempTree::new("race");
    fs::create_dir(tree.share().join("d")).unwrap();
    fs::write(tree.share().join("d/f"), b"inside").unwrap();
    std::os::unix::fs::symlink(tree.0.join("outside"), tree.share().join("abs")).unwrap();
    let mut g = Guest::new(&tree.share(), false);
    g.init();

    // The guest holds `d`; the directory is then swapped for a symlink to the tree outside
    // the share (as a racing rename would). Lookups under the held inode stay in the real
    // directory, and the new `d` is a link that is never followed.
    let (_, d, _, _) = g.lookup(ROOT, "d");
    fs::rename(tree.share().join("d"), tree.share().join("d2")).unwrap();
    std::os::unix::fs::symlink(&tree.0, tree.share().join("d")).unwrap();
    assert_eq!(g.lookup(d, "f").0, 0);
    assert_eq!(g.lookup(d, "outside").0, libc::ENOENT);
    let (err, swapped, _, mode) = g.lookup(ROOT, "d");
    assert_eq!((err, mode & libc::S_IFMT), (0, libc::S_IFLNK));
    assert_eq!(g.lookup(swapped, "outside").0, libc::ENOTDIR);

    // Hard links: only inodes the device handed out can be linked, and linking a symlink to
    // an outside file links the symlink, never its target.
    let link = |g: &mut Guest, old: u64, n: &str| {
        let mut body = old.to_le_bytes().to_vec();
        body.extend_from_slice(&name(n));
        g.call(FUSE_LINK, ROOT, &body).error
    };
    assert_ne!(link(&mut g, 0xdead_beef, "forged"), 0);
    assert!(!tree.share().join("forged").exists());
    let (_, abs, _, _) = g.lookup(ROOT, "abs");
    // (As root the link is made; without CAP_DAC_READ_SEARCH linking through an O_PATH
    // descriptor may be refused. Either way the outside file gains no name.)
    let err = link(&mut g, abs, "hl");
    if err == 0 {
        let m = fs::symlink_metadata(tree.share().join("hl")).unwrap();
        assert!(
            m.file_type().is_symlink(),
            "the new name is the link itself"
        );
    }
    assert_eq!(fs::metadata(tree.0.join("outside")).unwrap().nlink(), 1);
    assert_eq!(
        fs::read(tree.0.join("outside")).unwrap(),
        b"host secret outside the share"
    );
}

#[test]
fn malformed_requests_are_answered_with_errors_and_counted() {
    let tree = TempTree::new("malformed");
    let mut g = Guest::new(&tree.share(), false);
    g.init();

    // A header cut short.
    g.write_request(FUSE_GETATTR, ROOT, &[], 40);
    let used = g.raw_chain(1, &[(REQ, 20, false), (RESP, 64, true)]);
    assert_eq!(g.read_reply(used).error, -libc::EINVAL);
    assert_eq!(g.bad(), 1);

    // A length past the chain.
    g.write_request(FUSE_LOOKUP, ROOT, &name("x"), 4096);
    let used = g.raw_chain(1, &[(REQ, 42, false), (RESP, 64, true)]);
    assert_eq!(g.read_reply(used).error, -libc::EINVAL);
    assert_eq!(g.bad(), 2);

    // Opcodes FUSE does not define: a gap in the server's enum, and one far past its end.
    for opcode in [7, 19, 0, 4096, u32::MAX] {
        let r = g.call(opcode, ROOT, &[]);
        assert_eq!(r.error, -libc::ENOSYS, "opcode {opcode}");
    }
    assert_eq!(g.bad(), 7);

    // A newer opcode the server lacks is answered ENOSYS without counting as malformed.
    assert_eq!(g.call(FUSE_STATX, ROOT, &[0u8; 24]).error, -libc::ENOSYS);
    assert_eq!(g.bad(), 7);

    // No room for the reply.
    let len = 40 + 2;
    g.write_request(FUSE_LOOKUP, ROOT, &name("x"), len);
    assert_eq!(g.raw_chain(1, &[(REQ, len, false)]), 0);
    assert_eq!(g.bad(), 8);

    // A buffer outside guest memory, and a readable buffer after a writable one.
    assert_eq!(
        g.raw_chain(1, &[(MEM_SIZE - 8, 64, false), (RESP, 64, true)]),
        0
    );
    assert_eq!(g.raw_chain(1, &[(RESP, 64, true), (REQ, 64, false)]), 0);
    assert_eq!(g.bad(), 10);

    // A body the server cannot decode (a READ without its arguments), and a name without NUL.
    let r = g.call(FUSE_READ, ROOT, &[1, 2, 3]);
    assert!(r.error < 0, "{r:?}");
    let r = g.call(FUSE_LOOKUP, ROOT, b"abc");
    assert!(r.error < 0, "{r:?}");
    assert_eq!(g.bad(), 12);

    // The device still serves well-formed requests.
    assert_eq!(g.call(FUSE_GETATTR, ROOT, &[0u8; 16]).error, 0);
    assert_eq!(g.bad(), 12);
}

/// FUSE_INIT flags the Linux driver offers that matter for request sizes.
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;

#[test]
fn init_lets_the_guest_send_1_mib_reads_and_writes() {
    let tree = TempTree::new("init-sizes");
    fs::write(tree.share().join("big.bin"), b"").unwrap();
    let mut g = Guest::new(&tree.share(), false);

    // A guest that offers neither flag keeps the server's 4 KiB writes.
    let r = g.init();
    assert_eq!(r.error, 0, "{r:?}");
    // struct fuse_init_out: flags at 12, max_write at 20, max_pages at 28.
    assert_eq!(u32_at(&r.body, 20), 4096);
    assert_eq!(u32_at(&r.body, 12) & (FUSE_BIG_WRITES | FUSE_MAX_PAGES), 0);

    // Linux offers both; the reply is split over two buffers, as a driver may do.
    let mut body = Vec::new();
    for v in [7u32, 31, 0x2_0000, FUSE_BIG_WRITES | FUSE_MAX_PAGES | 1] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let unique = g.write_request(FUSE_INIT, 0, &body, 56);
    let used = g.raw_chain(
        1,
        &[(REQ, 56, false), (RESP, 30, true), (RESP + 30, 4096, true)],
    );
    let r = g.read_reply(used);
    assert_eq!((r.error, r.unique), (0, unique), "{r:?}");
    assert_eq!(
        u32_at(&r.body, 12) & (FUSE_BIG_WRITES | FUSE_MAX_PAGES),
        FUSE_BIG_WRITES | FUSE_MAX_PAGES
    );
    assert_eq!(u32_at(&r.body, 20), 1 << 20, "max_write");
    assert_eq!(
        u16::from_le_bytes([r.body[28], r.body[29]]),
        256,
        "max_pages"
    );

    // A 1 MiB write in 8 KiB buffers, and a 1 MiB read back, each one request.
    let (_, node, _, _) = g.lookup(ROOT, "big.bin");
    let fh = g.open(node, libc::O_RDWR).unwrap();
    const DATA: u64 = 0x40_0000;
    const MIB: u32 = 1 << 20;
    let data: Vec<u8> = (0..MIB)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    g.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let mut write_in = Vec::new();
    write_in.extend_from_slice(&fh.to_le_bytes());
    write_in.extend_from_slice(&0u64.to_le_bytes());
    write_in.extend_from_slice(&MIB.to_le_bytes());
    write_in.extend_from_slice(&[0u8; 20]);
    g.write_request(FUSE_WRITE, node, &write_in, 80 + MIB);
    let mut descs = vec![(REQ, 80, false)];
    descs.extend((0..u64::from(MIB) / 8192).map(|i| (DATA + i * 8192, 8192, false)));
    descs.push((RESP, 64, true));
    let used = g.raw_chain(1, &descs);
    let r = g.read_reply(used);
    assert_eq!(r.error, 0, "{r:?}");
    assert_eq!(u32_at(&r.body, 0), MIB, "fuse_write_out.size");
    assert!(
        fs::read(tree.share().join("big.bin")).unwrap() == data,
        "the host file holds the write"
    );

    let mut read_in = Vec::new();
    read_in.extend_from_slice(&fh.to_le_bytes());
    read_in.extend_from_slice(&0u64.to_le_bytes());
    read_in.extend_from_slice(&MIB.to_le_bytes());
    read_in.extend_from_slice(&[0u8; 20]);
    g.write_request(FUSE_READ, node, &read_in, 80);
    const BACK: u64 = 0x60_0000;
    let used = g.raw_chain(1, &[(REQ, 80, false), (RESP, 16, true), (BACK, MIB, true)]);
    assert_eq!(used, 16 + MIB);
    let mut back = vec![0u8; MIB as usize];
    g.mem.read_slice(&mut back, GuestAddress(BACK)).unwrap();
    assert!(back == data, "the read returns what was written");
    assert_eq!(g.bad(), 0);
}

#[test]
fn a_read_only_share_refuses_changes() {
    let tree = TempTree::new("ro");
    fs::write(tree.share().join("f"), b"data").unwrap();
    let mut g = Guest::new(&tree.share(), true);
    g.init();

    let mut body = 0o755u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&name("newdir"));
    assert_eq!(g.call(FUSE_MKDIR, ROOT, &body).error, -libc::EROFS);
    assert!(!tree.share().join("newdir").exists());

    let (_, f, _, _) = g.lookup(ROOT, "f");
    assert_eq!(g.open(f, libc::O_RDWR), Err(libc::EROFS));
    assert_eq!(g.open(f, libc::O_RDONLY | libc::O_TRUNC), Err(libc::EROFS));
    let fh = g.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(f, fh, 16).body, b"data");
    assert_eq!(fs::read(tree.share().join("f")).unwrap(), b"data");
    assert_eq!(g.bad(), 0);
}

#[test]
fn only_user_xattrs_can_be_set() {
    let tree = TempTree::new("xattr");
    fs::write(tree.share().join("f"), b"x").unwrap();
    let mut g = Guest::new(&tree.share(), false);
    g.init();
    let (_, f, _, _) = g.lookup(ROOT, "f");

    let setxattr = |g: &mut Guest, n: &str, value: &[u8]| {
        let mut body = (value.len() as u32).to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&name(n));
        body.extend_from_slice(value);
        g.call(FUSE_SETXATTR, f, &body).error
    };
    for n in ["trusted.overlay.opaque", "security.capability", "system.x"] {
        assert_eq!(setxattr(&mut g, n, b"y"), -libc::EPERM, "{n}");
    }

    // user.* goes through, with whatever the host file system says about it.
    let path = CString::new(tree.share().join("f").as_os_str().as_bytes()).unwrap();
    let probe = CString::new("user.carapace.probe").unwrap();
    // SAFETY: the path, name and value are live C strings/buffers of the given lengths.
    let host = unsafe { libc::setxattr(path.as_ptr(), probe.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    let err = setxattr(&mut g, "user.carapace", b"guest-value");
    if host == 0 {
        assert_eq!(err, 0);
        let mut body = 64u32.to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&name("user.carapace"));
        let r = g.call(FUSE_GETXATTR, f, &body);
        assert_eq!(r.error, 0);
        assert_eq!(r.body, b"guest-value");
    } else {
        assert_eq!(
            -err,
            std::io::Error::last_os_error().raw_os_error().unwrap()
        );
    }
    assert_eq!(g.bad(), 0);
}

#[test]
fn configuration_space_queues_and_activation() {
    let tree = TempTree::new("config");
    let mut dev = Fs::new("carapace", &tree.share(), CacheMode::Auto, false).unwrap();
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let mut cfg = [0xffu8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..8], b"carapace");
    assert!(cfg[8..36].iter().all(|&b| b == 0));
    assert_eq!(u32_at(&cfg, 36), 1, "one request queue");

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    let err = dev.activate(mem, irq, Vec::new()).unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 2,
            got: 0
        }
    ));
    assert!(dev.reset());

    assert!(matches!(
        Fs::new("", &tree.share(), CacheMode::Never, false),
        Err(FsError::Tag(_))
    ));
    assert!(matches!(
        Fs::new(&"t".repeat(37), &tree.share(), CacheMode::Never, false),
        Err(FsError::Tag(_))
    ));
    assert!(matches!(
        Fs::new("t", &tree.0.join("outside"), CacheMode::Never, false),
        Err(FsError::Share { .. })
    ));
    assert!(matches!(
        Fs::new("t", &tree.0.join("missing"), CacheMode::Never, false),
        Err(FsError::Share { .. })
    ));
}
