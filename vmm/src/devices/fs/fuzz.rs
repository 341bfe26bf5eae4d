//! The fs fuzz target's body: a guest's two queues and memory from the input (the generic
//! scheme of `test_utils`), a fresh shared directory per input (with a file in it, and one
//! beside it that the guest must never reach), the device activated and notified; the limits
//! the fuzzing process runs under; and the corpus's seeds.

use crate::scratch::Scratch;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::{CacheMode, Fs, Limits, ShareOptions, MIN_HANDLES, MIN_INODES, QUEUE_SIZE};
use crate::devices::virtio::test_utils::{
    add_chain, fuzz_activate, fuzz_seed, guest_memory, with_fuzz_memory, FuzzInput, FUZZ_MEM_SIZE,
};
use crate::devices::virtio::VirtioDevice;

/// What the file beside the share holds; checked after every input.
const OUTSIDE: &[u8] = b"host file outside the share";

/// Largest file the guest can make while fuzzing (RLIMIT_FSIZE, as the jail sets one).
pub const FUZZ_FSIZE: u64 = 1 << 20;

/// Puts the process under the limits the VMM's jail sets and the fuzzer needs: files of at
/// most [`FUZZ_FSIZE`] bytes, a larger write failing with EFBIG instead of SIGXFSZ. Called
/// once by the fuzz target before any input, and by the corpus replay in its own child.
pub fn init() {
    // SAFETY: ignoring a signal has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let lim = libc::rlimit {
        rlim_cur: FUZZ_FSIZE,
        rlim_max: FUZZ_FSIZE,
    };
    // SAFETY: setrlimit only reads the struct it is given, which lives on this stack.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) };
    assert_eq!(r, 0, "cannot limit file sizes");
}

/// One input's directory tree, removed on drop: `share/` is served, `outside` lies beside it.
struct Tree(Scratch);

impl Tree {
    fn new() -> Option<Tree> {
        let dir = Scratch::new("fuzz-fs");
        std::fs::create_dir_all(dir.join("share")).ok()?;
        std::fs::write(dir.join("share/hello.txt"), b"hello from the host\n").ok()?;
        std::fs::write(dir.join("outside"), OUTSIDE).ok()?;
        Some(Tree(dir))
    }
}

/// Runs one input: control byte (bit 0: a read-only share; bit 1: notify the request queue
/// before the high-priority one; bit 2: notify the request queue twice), the high-priority
/// and request queues, guest memory. Panics if the guest changed anything beside the share.
pub fn run(data: &[u8]) {
    let mut input = FuzzInput::new(data);
    let control = input.u8();
    let queues = input.queues(&[QUEUE_SIZE, QUEUE_SIZE]);
    let Some(tree) = Tree::new() else {
        return;
    };
    let options = ShareOptions {
        cache: CacheMode::Never,
        read_only: control & 1 != 0,
        // Never device nodes: the fuzzer runs as root on the host.
        allow_devices: false,
        limits: Some(Limits {
            inodes: MIN_INODES,
            handles: MIN_HANDLES,
        }),
    };
    let Ok(mut dev) = Fs::with_options("fuzz", &tree.0.join("share"), options) else {
        return;
    };
    with_fuzz_memory(input.rest(), move |mem| {
        if fuzz_activate(&mut dev, mem, queues).is_none() {
            return;
        }
        let order = if control & 2 != 0 { [1, 0] } else { [0, 1] };
        for q in order {
            dev.process_queue(q);
        }
        if control & 4 != 0 {
            dev.process_queue(1);
        }
        drop(dev);
    });
    let outside = std::fs::read(tree.0.join("outside"));
    assert_eq!(
        outside.as_deref().ok(),
        Some(OUTSIDE),
        "the guest reached a file beside the share"
    );
}

/// A FUSE request: header (uid and gid 0, as the guest's root) and body.
fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    r.extend_from_slice(&opcode.to_le_bytes());
    r.extend_from_slice(&unique.to_le_bytes());
    r.extend_from_slice(&nodeid.to_le_bytes());
    r.extend_from_slice(&[0u8; 16]);
    r.extend_from_slice(body);
    r
}

fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Valid requests, as the Linux driver sends them at a mount and after, to start from.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    const INIT: u32 = 26;
    const LOOKUP: u32 = 1;
    const GETATTR: u32 = 3;
    const MKDIR: u32 = 9;
    const OPEN: u32 = 14;
    const READ: u32 = 15;
    const WRITE: u32 = 16;
    const CREATE: u32 = 35;
    const OPENDIR: u32 = 27;
    const READDIR: u32 = 28;
    const FORGET: u32 = 2;

    let mut read_in = Vec::new();
    read_in.extend_from_slice(&0u64.to_le_bytes()); // fh
    read_in.extend_from_slice(&0u64.to_le_bytes()); // offset
    read_in.extend_from_slice(&le(&[4096, 0, 0, 0]));
    read_in.extend_from_slice(&[0u8; 8]);
    let mut write_in = Vec::new();
    write_in.extend_from_slice(&1u64.to_le_bytes()); // fh
    write_in.extend_from_slice(&0u64.to_le_bytes()); // offset
    write_in.extend_from_slice(&le(&[5, 0]));
    write_in.extend_from_slice(&0u64.to_le_bytes()); // lock owner
    write_in.extend_from_slice(&le(&[0, 0]));
    write_in.extend_from_slice(b"hello");
    let mut mkdir_in = le(&[0o755, 0o022]);
    mkdir_in.extend_from_slice(b"dir\0");
    let mut create_in = le(&[libc::O_RDWR as u32, 0o644, 0o022, 0]);
    create_in.extend_from_slice(b"new.txt\0");
    let requests = [
        request(INIT, 2, 0, &le(&[7, 31, 0x2_0000, 0, 0, 0, 0, 0])),
        request(LOOKUP, 4, 1, b"hello.txt\0"),
        request(GETATTR, 6, 2, &[0u8; 16]),
        request(OPEN, 8, 2, &le(&[libc::O_RDONLY as u32, 0])),
        request(READ, 10, 2, &read_in),
        request(MKDIR, 12, 1, &mkdir_in),
        request(CREATE, 14, 1, &create_in),
        request(WRITE, 16, 4, &write_in),
        request(OPENDIR, 18, 1, &le(&[0, 0])),
        request(READDIR, 20, 1, &read_in),
    ];

    let mem = guest_memory(FUZZ_MEM_SIZE as u64);
    let hiprio = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let reqq = MockSplitQueue::create(&mem, GuestAddress(0x400), 32);
    for (i, r) in requests.iter().enumerate() {
        let req = 0x1000 + 0x100 * i as u64;
        let resp = 0x3000 + 0x200 * i as u64;
        mem.write_slice(r, GuestAddress(req)).unwrap();
        add_chain(
            &reqq,
            2 * i as u16,
            &[(req, r.len() as u32, false), (resp, 0x200, true)],
        );
    }
    // FORGET goes on the high-priority queue and has no reply.
    let forget = request(FORGET, 22, 2, &1u64.to_le_bytes());
    mem.write_slice(&forget, GuestAddress(0x2000)).unwrap();
    add_chain(&hiprio, 0, &[(0x2000, forget.len() as u32, false)]);
    vec![(
        "mount-and-file-ops",
        fuzz_seed(2, &[&hiprio, &reqq], &[], &mem),
    )]
}
