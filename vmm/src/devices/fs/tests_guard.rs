//! Tests of the share's guard: its rules applied to the arguments the FUSE server parsed (not
//! to guest memory before it), device nodes, xattr sizes, the inode and handle bounds with
//! their accounting (READDIRPLUS included), and the error header every refused request gets.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::sync::{Arc, Mutex};

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, GetxattrReply, ListxattrReply};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{Config, PassthroughFs};
use fuse_virtio_queue::QueueT as _;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::alias_queue;
use super::guard::{Guard, Limits, Policy, MIN_HANDLES, MIN_INODES, XATTR_SIZE_MAX};
use super::memory::SharedMemory;
use super::request;
use super::tests::{name, u32_at, u64_at, Guest, TempTree, MEM_SIZE, QSIZE, REQ, RESP, ROOT};
use super::{CacheMode, Fs, ShareOptions};
use crate::devices::virtio::test_utils::{add_chain, leaked_guest_memory};

const FUSE_FORGET: u32 = 2;
const FUSE_MKNOD: u32 = 8;
const FUSE_MKDIR: u32 = 9;
const FUSE_RELEASE: u32 = 18;
const FUSE_SETXATTR: u32 = 21;
const FUSE_OPENDIR: u32 = 27;
const FUSE_DESTROY: u32 = 38;
const FUSE_NOTIFY_REPLY: u32 = 41;
const FUSE_BATCH_FORGET: u32 = 42;
const FUSE_READDIRPLUS: u32 = 44;

/// What a [`Recorder`] was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Setxattr(Vec<u8>),
    Mkdir(Vec<u8>),
    Getxattr(u32),
    Listxattr(u32),
}

/// A file system that records the calls it gets and succeeds.
#[derive(Default)]
struct Recorder(Mutex<Vec<Call>>);

impl Recorder {
    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }
}

impl FileSystem for Recorder {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _: FsOptions) -> io::Result<FsOptions> {
        Ok(FsOptions::empty())
    }

    fn setxattr(&self, _: &Context, _: u64, name: &CStr, _: &[u8], _: u32) -> io::Result<()> {
        let call = Call::Setxattr(name.to_bytes().to_vec());
        self.0.lock().unwrap().push(call);
        Ok(())
    }

    fn mkdir(&self, _: &Context, _: u64, name: &CStr, _: u32, _: u32) -> io::Result<Entry> {
        let call = Call::Mkdir(name.to_bytes().to_vec());
        self.0.lock().unwrap().push(call);
        Err(io::Error::from_raw_os_error(libc::EEXIST))
    }

    fn getxattr(&self, _: &Context, _: u64, _: &CStr, size: u32) -> io::Result<GetxattrReply> {
        self.0.lock().unwrap().push(Call::Getxattr(size));
        Ok(GetxattrReply::Count(0))
    }

    fn listxattr(&self, _: &Context, _: u64, size: u32) -> io::Result<ListxattrReply> {
        self.0.lock().unwrap().push(Call::Listxattr(size));
        Ok(ListxattrReply::Count(0))
    }
}

/// Requests served by any FUSE server through `request::serve`, over mock queue memory.
struct Direct {
    mem: GuestMemoryMmap,
    mock: MockSplitQueue<'static, GuestMemoryMmap>,
    queue: fuse_virtio_queue::Queue,
    shared: SharedMemory,
    next_desc: u16,
    unique: u64,
}

impl Direct {
    fn new() -> Direct {
        let mem = leaked_guest_memory(MEM_SIZE);
        let mock = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
        let queue = alias_queue(&mock.create_queue().unwrap()).unwrap();
        let shared = SharedMemory::new(mem.clone()).unwrap();
        Direct {
            mem: mem.clone(),
            mock,
            queue,
            shared,
            next_desc: 0,
            unique: 0,
        }
    }

    /// Sends `opcode` on `nodeid` with `body` to `server`; returns the reply's error.
    fn call<F: FileSystem + Sync>(
        &mut self,
        server: &Server<F>,
        opcode: u32,
        nodeid: u64,
        body: &[u8],
    ) -> i32 {
        self.unique += 1;
        let len = 40 + body.len() as u32;
        let mut h = Vec::new();
        for w in [len, opcode] {
            h.extend_from_slice(&w.to_le_bytes());
        }
        h.extend_from_slice(&self.unique.to_le_bytes());
        h.extend_from_slice(&nodeid.to_le_bytes());
        h.extend_from_slice(&[0u8; 16]);
        h.extend_from_slice(body);
        self.mem.write_slice(&h, GuestAddress(REQ)).unwrap();
        let first = self.next_desc;
        add_chain(&self.mock, first, &[(REQ, len, false), (RESP, 4096, true)]);
        self.next_desc = (first + 2) % QSIZE;
        let chain = self
            .queue
            .pop_descriptor_chain(self.shared.alias())
            .unwrap();
        let done = request::serve(server, self.shared.alias(), chain);
        assert!(done.used_len >= 16, "{done:?}");
        let mut reply = [0u8; 16];
        self.mem.read_slice(&mut reply, GuestAddress(RESP)).unwrap();
        assert_eq!(u64_at(&reply, 8), self.unique);
        u32_at(&reply, 4) as i32
    }
}

fn setxattr_body(n: &str) -> Vec<u8> {
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&name(n));
    body.push(b'v');
    body
}

fn mkdir_body(n: &str) -> Vec<u8> {
    let mut body = 0o755u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&name(n));
    body
}

#[test]
fn the_guard_not_a_check_on_guest_memory_refuses() {
    // Without the guard, request handling hands the server's parsed arguments straight to the
    // file system: nothing in front of the server refuses them (a check there would read guest
    // memory the guest can rewrite before the server reads it again).
    let mut d = Direct::new();
    let rec = Arc::new(Recorder::default());
    let bare = Server::new(rec.clone());
    let body = setxattr_body("security.capability");
    assert_eq!(d.call(&bare, FUSE_SETXATTR, ROOT, &body), 0);
    assert_eq!(
        d.call(&bare, FUSE_MKDIR, ROOT, &mkdir_body("d")),
        -libc::EEXIST
    );
    assert_eq!(
        rec.calls(),
        [
            Call::Setxattr(b"security.capability".to_vec()),
            Call::Mkdir(b"d".to_vec())
        ]
    );

    // With it, the same requests are refused on what the server parsed, and the file system
    // never sees them.
    let rec = Arc::new(Recorder::default());
    let ro = Policy {
        read_only: true,
        allow_devices: false,
    };
    let limits = Limits::for_nofile(0);
    let guarded = Server::new(Guard::new(rec.clone(), Policy::default(), limits));
    for n in [
        "security.capability",
        "trusted.overlay.opaque",
        "system.posix_acl_access",
    ] {
        assert_eq!(
            d.call(&guarded, FUSE_SETXATTR, ROOT, &setxattr_body(n)),
            -libc::EPERM
        );
    }
    assert_eq!(
        d.call(&guarded, FUSE_SETXATTR, ROOT, &setxattr_body("user.x")),
        0
    );
    let read_only = Server::new(Guard::new(rec.clone(), ro, limits));
    assert_eq!(
        d.call(&read_only, FUSE_MKDIR, ROOT, &mkdir_body("d")),
        -libc::EROFS
    );
    assert_eq!(
        d.call(&read_only, FUSE_SETXATTR, ROOT, &setxattr_body("user.x")),
        -libc::EROFS
    );
    assert_eq!(rec.calls(), [Call::Setxattr(b"user.x".to_vec())]);
}

#[test]
fn xattr_sizes_are_clamped_to_64_kib() {
    let rec = Arc::new(Recorder::default());
    let g = Guard::new(rec.clone(), Policy::default(), Limits::for_nofile(0));
    let ctx = Context::new();
    let n = CString::new("user.x").unwrap();
    g.getxattr(&ctx, ROOT, &n, u32::MAX).unwrap();
    g.getxattr(&ctx, ROOT, &n, 100).unwrap();
    g.listxattr(&ctx, ROOT, 0x1000_0000).unwrap();
    g.listxattr(&ctx, ROOT, 0).unwrap();
    assert_eq!(
        rec.calls(),
        [
            Call::Getxattr(XATTR_SIZE_MAX),
            Call::Getxattr(100),
            Call::Listxattr(XATTR_SIZE_MAX),
            Call::Listxattr(0),
        ]
    );
}

/// A passthrough file system over `share`, imported, behind a guard.
fn guarded(share: &std::path::Path, policy: Policy, limits: Limits) -> Guard<PassthroughFs<()>> {
    let cfg = Config {
        root_dir: share.to_str().unwrap().to_string(),
        do_import: true,
        inode_file_handles: false,
        ..Config::default()
    };
    let fs: PassthroughFs<()> = PassthroughFs::new(cfg).unwrap();
    fs.import().unwrap();
    Guard::new(fs, policy, limits)
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

#[test]
fn a_read_only_guard_refuses_every_change_on_parsed_arguments() {
    let tree = TempTree::new("guard-ro");
    fs::write(tree.share().join("f"), b"data").unwrap();
    let ro = Policy {
        read_only: true,
        allow_devices: true,
    };
    let g = guarded(&tree.share(), ro, Limits::for_nofile(0));
    let ctx = Context::new();
    let f = g.lookup(&ctx, ROOT, &cstr("f")).unwrap().inode;
    let erofs = |r: io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EROFS);
    assert!(erofs(g.mkdir(&ctx, ROOT, &cstr("d"), 0o755, 0).map(drop)));
    assert!(erofs(
        g.mknod(&ctx, ROOT, &cstr("p"), libc::S_IFIFO | 0o644, 0, 0)
            .map(drop)
    ));
    assert!(erofs(
        g.symlink(&ctx, &cstr("f"), ROOT, &cstr("l")).map(drop)
    ));
    assert!(erofs(g.link(&ctx, f, ROOT, &cstr("h")).map(drop)));
    assert!(erofs(g.unlink(&ctx, ROOT, &cstr("f"))));
    assert!(erofs(g.rmdir(&ctx, ROOT, &cstr("f"))));
    assert!(erofs(g.rename(&ctx, ROOT, &cstr("f"), ROOT, &cstr("g"), 0)));
    assert!(erofs(g.setxattr(&ctx, f, &cstr("user.x"), b"1", 0)));
    assert!(erofs(g.removexattr(&ctx, f, &cstr("user.x"))));
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    assert!(erofs(g.create(&ctx, ROOT, &cstr("c"), args).map(drop)));
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert!(
            erofs(g.open(&ctx, f, flags as u32, 0).map(drop)),
            "{flags:#o}"
        );
    }
    let (fh, _, _) = g.open(&ctx, f, libc::O_RDONLY as u32, 0).unwrap();
    let fh = fh.unwrap();
    let attr = g.getattr(&ctx, f, None).unwrap().0;
    let valid = fuse_backend_rs::abi::fuse_abi::SetattrValid::MODE;
    assert!(erofs(g.setattr(&ctx, f, attr, None, valid).map(drop)));
    assert!(erofs(g.fallocate(&ctx, f, fh, 0, 0, 4096)));
    assert_eq!(fs::read(tree.share().join("f")).unwrap(), b"data");
    assert_eq!(fs::read_dir(tree.share()).unwrap().count(), 1);
}

fn mknod_body(mode: u32, rdev: u32, n: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for w in [mode, rdev, 0, 0] {
        body.extend_from_slice(&w.to_le_bytes());
    }
    body.extend_from_slice(&name(n));
    body
}

fn is_root() -> bool {
    // SAFETY: geteuid only returns the caller's id.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn device_nodes_are_refused_unless_the_share_allows_them() {
    let tree = TempTree::new("mknod");
    let mut g = Guest::new(&tree.share(), false);
    g.init();
    let null = libc::makedev(1, 3) as u32;
    let sda = libc::makedev(8, 0) as u32;
    let mknod = |g: &mut Guest, mode, rdev, n: &str| {
        g.call(FUSE_MKNOD, ROOT, &mknod_body(mode, rdev, n)).error
    };
    assert_eq!(
        mknod(&mut g, libc::S_IFBLK | 0o600, sda, "sda"),
        -libc::EPERM
    );
    assert_eq!(
        mknod(&mut g, libc::S_IFCHR | 0o666, null, "null"),
        -libc::EPERM
    );
    assert_eq!(mknod(&mut g, libc::S_IFBLK | 0o600, 0, "b00"), -libc::EPERM);
    assert!(!tree.share().join("sda").exists() && !tree.share().join("null").exists());
    // FIFOs, sockets and regular files are not devices.
    assert_eq!(mknod(&mut g, libc::S_IFIFO | 0o644, 0, "fifo"), 0);
    assert!(fs::metadata(tree.share().join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(mknod(&mut g, libc::S_IFREG | 0o644, 0, "reg"), 0);
    // overlayfs's whiteout, a character device 0:0, needs CAP_MKNOD on the host.
    let whiteout = mknod(&mut g, libc::S_IFCHR, 0, "wh");
    if is_root() {
        assert_eq!(whiteout, 0);
        assert!(fs::metadata(tree.share().join("wh"))
            .unwrap()
            .file_type()
            .is_char_device());
    } else {
        eprintln!("not root: the host answered the whiteout with {whiteout}");
    }
    assert_eq!(g.bad(), 0);

    let options = ShareOptions {
        allow_devices: true,
        ..ShareOptions::default()
    };
    let mut g = Guest::with_device(Fs::with_options("t", &tree.share(), options).unwrap());
    g.init();
    let err = mknod(&mut g, libc::S_IFCHR | 0o666, null, "null");
    if is_root() {
        assert_eq!(err, 0);
        assert!(fs::metadata(tree.share().join("null"))
            .unwrap()
            .file_type()
            .is_char_device());
    } else {
        eprintln!("not root: the host refused the allowed device node with {err}");
    }
}

/// A device over `share` with small bounds.
fn bounded(share: &std::path::Path, inodes: usize, handles: usize) -> Guest {
    let options = ShareOptions {
        cache: CacheMode::Never,
        limits: Some(Limits { inodes, handles }),
        ..ShareOptions::default()
    };
    let mut g = Guest::with_device(Fs::with_options("t", share, options).unwrap());
    g.init();
    g
}

fn forget(g: &mut Guest, node: u64, count: u64) {
    g.write_request(FUSE_FORGET, node, &count.to_le_bytes(), 48);
    assert_eq!(g.raw_chain(0, &[(REQ, 48, false)]), 0);
}

#[test]
fn lookups_past_the_inode_bound_get_enfile_until_forgotten() {
    let tree = TempTree::new("inode-bound");
    for i in 0..5 {
        fs::write(tree.share().join(format!("f{i}")), b"x").unwrap();
    }
    let mut g = bounded(&tree.share(), 3, 2);
    let mut nodes = Vec::new();
    for i in 0..3 {
        let (err, node, _, _) = g.lookup(ROOT, &format!("f{i}"));
        assert_eq!(err, 0);
        nodes.push(node);
    }
    assert_eq!(g.lookup(ROOT, "f3").0, libc::ENFILE);
    assert_eq!(g.lookup(ROOT, "f4").0, libc::ENFILE);
    assert_eq!(g.dev.live().0, 3);
    // What the guest already holds can be looked up again, the root always.
    for _ in 0..2 {
        let (err, node, _, _) = g.lookup(ROOT, "f0");
        assert_eq!((err, node), (0, nodes[0]));
    }
    assert_eq!(g.lookup(ROOT, "..").0, 0);
    assert_eq!(g.bad(), 0);

    // f0 is held three times now: two forgets leave it held.
    forget(&mut g, nodes[0], 2);
    assert_eq!(g.lookup(ROOT, "f3").0, libc::ENFILE);
    forget(&mut g, nodes[0], 1);
    assert_eq!(g.dev.live().0, 2);
    let (err, f3, _, _) = g.lookup(ROOT, "f3");
    assert_eq!(err, 0);
    assert_eq!(g.lookup(ROOT, "f4").0, libc::ENFILE);

    // BATCH_FORGET: count, dummy, then (nodeid, nlookup) pairs.
    let mut body = 2u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    for n in [nodes[1], f3] {
        body.extend_from_slice(&n.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
    }
    let len = 40 + body.len() as u32;
    g.write_request(FUSE_BATCH_FORGET, 0, &body, len);
    assert_eq!(g.raw_chain(0, &[(REQ, len, false)]), 0);
    assert_eq!(g.dev.live().0, 1);
    assert_eq!(g.lookup(ROOT, "f4").0, 0);
    // Forgetting what was never handed out changes nothing.
    forget(&mut g, 0xdead_beef, 5);
    assert_eq!(g.dev.live().0, 2);
    assert_eq!(g.bad(), 0);
}

fn release(g: &mut Guest, opcode: u32, node: u64, fh: u64) -> i32 {
    let mut body = fh.to_le_bytes().to_vec();
    body.extend_from_slice(&[0u8; 16]);
    g.call(opcode, node, &body).error
}

#[test]
fn handles_past_the_bound_get_emfile_until_released() {
    let tree = TempTree::new("handle-bound");
    fs::write(tree.share().join("f"), b"x").unwrap();
    let mut g = bounded(&tree.share(), 8, 2);
    let (_, f, _, _) = g.lookup(ROOT, "f");
    let a = g.open(f, libc::O_RDONLY).unwrap();
    let opendir = |g: &mut Guest| g.call(FUSE_OPENDIR, ROOT, &[0u8; 8]);
    let r = opendir(&mut g);
    assert_eq!(r.error, 0);
    let dir = u64_at(&r.body, 0);
    assert_eq!(g.open(f, libc::O_RDONLY), Err(libc::EMFILE));
    assert_eq!(opendir(&mut g).error, -libc::EMFILE);
    assert_eq!(g.dev.live().1, 2);
    // A release naming another inode is refused by the passthrough and frees nothing.
    assert_eq!(release(&mut g, FUSE_RELEASE, ROOT, a), -libc::EBADF);
    assert_eq!(g.open(f, libc::O_RDONLY), Err(libc::EMFILE));
    assert_eq!(release(&mut g, FUSE_RELEASE, f, a), 0);
    let b = g.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(f, b, 8).body, b"x");
    assert_eq!(release(&mut g, 29, ROOT, dir), 0, "RELEASEDIR");
    assert_eq!(opendir(&mut g).error, 0);
    assert_eq!(g.bad(), 0);
}

#[test]
fn create_past_the_bounds_is_undone() {
    let tree = TempTree::new("create-bound");
    let g = guarded(
        &tree.share(),
        Policy::default(),
        Limits {
            inodes: 1,
            handles: 1,
        },
    );
    let ctx = Context::new();
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = g.create(&ctx, ROOT, &cstr("a"), args).unwrap();
    assert_eq!(g.live(), (1, 1));
    let errno = |r: io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        errno(g.create(&ctx, ROOT, &cstr("b"), args).map(drop)),
        Some(libc::EMFILE)
    );
    g.release(&ctx, e.inode, 0, fh.unwrap(), false, false, None)
        .unwrap();
    assert_eq!(
        errno(g.create(&ctx, ROOT, &cstr("b"), args).map(drop)),
        Some(libc::ENFILE)
    );
    assert_eq!(
        errno(g.mkdir(&ctx, ROOT, &cstr("d"), 0o755, 0).map(drop)),
        Some(libc::ENFILE)
    );
    assert!(
        !tree.share().join("d").exists(),
        "refused before the host saw it"
    );
    assert_eq!(g.live(), (1, 0));
    g.forget(&ctx, e.inode, 1);
    g.mkdir(&ctx, ROOT, &cstr("d"), 0o755, 0).unwrap();
    assert_eq!(g.live(), (1, 0));
}

/// READDIRPLUS on `dh` from `offset`: (errno, [(nodeid, name, next offset)]).
fn readdirplus(g: &mut Guest, dh: u64, offset: u64) -> (i32, Vec<(u64, String, u64)>) {
    let mut body = dh.to_le_bytes().to_vec();
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&4096u32.to_le_bytes());
    body.extend_from_slice(&[0u8; 20]);
    let r = g.call(FUSE_READDIRPLUS, ROOT, &body);
    let mut out = Vec::new();
    let mut at = 0;
    // fuse_direntplus: fuse_entry_out (128 bytes, nodeid first), then fuse_dirent (ino, off,
    // namelen, type, name padded to 8).
    while at + 152 <= r.body.len() {
        let node = u64_at(&r.body, at);
        let off = u64_at(&r.body, at + 136);
        let len = u32_at(&r.body, at + 144) as usize;
        let n = String::from_utf8(r.body[at + 152..at + 152 + len].to_vec()).unwrap();
        out.push((node, n, off));
        at += 152 + len.div_ceil(8) * 8;
    }
    (-r.error, out)
}

#[test]
fn readdirplus_entries_are_counted_and_bounded() {
    let tree = TempTree::new("readdirplus");
    for i in 0..5 {
        fs::write(tree.share().join(format!("f{i}")), b"x").unwrap();
    }
    let mut g = bounded(&tree.share(), 3, 4);
    let r = g.call(FUSE_OPENDIR, ROOT, &[0u8; 8]);
    let dh = u64_at(&r.body, 0);
    let (err, first) = readdirplus(&mut g, dh, 0);
    assert_eq!(err, 0);
    assert_eq!(first.len(), 3, "a short listing at the bound: {first:?}");
    assert_eq!(g.dev.live().0, 3);
    // Each entry is a lookup the guest holds: looking one up again needs no new inode.
    let (err, node, _, _) = g.lookup(ROOT, &first[0].1);
    assert_eq!((err, node), (0, first[0].0));
    // The rest of the listing does not fit.
    let (err, rest) = readdirplus(&mut g, dh, first[2].2);
    assert_eq!((err, rest.len()), (libc::ENFILE, 0));
    assert_eq!(g.dev.live().0, 3);
    // After the guest forgets them, the listing goes on.
    forget(&mut g, first[0].0, 2);
    forget(&mut g, first[1].0, 1);
    forget(&mut g, first[2].0, 1);
    assert_eq!(g.dev.live().0, 0);
    let (err, rest) = readdirplus(&mut g, dh, first[2].2);
    assert_eq!((err, rest.len()), (0, 2), "{rest:?}");
    assert_eq!(g.dev.live().0, 2);
    for (n, _, _) in rest {
        forget(&mut g, n, 1);
    }
    assert_eq!(g.dev.live().0, 0);
    // Every inode is free again for lookups.
    for i in 0..3 {
        assert_eq!(g.lookup(ROOT, &format!("f{i}")).0, 0);
    }
    assert_eq!(g.bad(), 0);
}

#[test]
fn every_request_that_waits_gets_a_reply_header() {
    let tree = TempTree::new("replies");
    let mut g = Guest::new(&tree.share(), false);
    g.init();
    // DESTROY: the server answers nothing, the guest waits for a reply.
    let r = g.call(FUSE_DESTROY, 0, &[]);
    assert_eq!((r.used_len, r.error), (16, 0));
    // NOTIFY_REPLY answers a notification the device never sends: no reply.
    g.write_request(FUSE_NOTIFY_REPLY, 0, &[], 40);
    assert_eq!(g.raw_chain(1, &[(REQ, 40, false)]), 0);
    // The share still works after the guest's new INIT.
    g.init();
    assert_eq!(g.lookup(ROOT, "missing").0, libc::ENOENT);
}

#[test]
fn the_bounds_follow_rlimit_nofile() {
    let l = Limits::for_nofile(131072);
    assert_eq!((l.inodes, l.handles), (86698, 43349));
    let l = Limits::for_nofile(1024);
    assert_eq!((l.inodes, l.handles), (MIN_INODES, MIN_HANDLES));
    let l = Limits::for_nofile(u64::MAX);
    assert!(l.inodes > 86698 && l.inodes < 1 << 24);
    let l = Limits::from_rlimit();
    assert!(l.inodes >= MIN_INODES && l.handles >= MIN_HANDLES);
}
