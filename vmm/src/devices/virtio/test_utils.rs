//! What the devices' unit tests and fuzz targets share: guest memory, descriptor chains on
//! virtio-queue's mock queues, the used ring read back, counters, activation over mock queues,
//! and the generic scheme the fuzz targets read their inputs with (queues and guest memory
//! from the input's bytes, guest memory between guard pages, seeds built from mock queues).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{Interrupt, VirtioDevice};

/// `size` bytes of guest memory from address 0.
pub fn guest_memory(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
}

/// `size` bytes of guest memory from address 0 that live for the whole test: mock queues
/// borrow the memory for their lifetime, so a test's harness can hold both.
pub fn leaked_guest_memory(size: u64) -> &'static GuestMemoryMmap {
    Box::leak(Box::new(guest_memory(size)))
}

/// Adds a chain of (addr, len, device-writable) buffers at descriptor index `first`.
pub fn add_chain(vq: &MockSplitQueue<GuestMemoryMmap>, first: u16, descs: &[(u64, u32, bool)]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, writable))| {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let mut next = 0;
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                next = first + i as u16 + 1;
            }
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    vq.add_desc_chains(&raw, first).unwrap();
}

/// The (head, len) of used ring entry `i`.
pub fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

/// The used ring's index: how many chains the device gave back.
pub fn used_count(vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    vq.used().idx().load()
}

/// A counter's value.
pub fn counter(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Activates `dev` with one queue per mock queue, in order; returns its interrupt.
pub fn activate(
    dev: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    vqs: &[&MockSplitQueue<GuestMemoryMmap>],
) -> Arc<Interrupt> {
    let irq = Arc::new(Interrupt::new().unwrap());
    let queues: Vec<Queue> = vqs.iter().map(|vq| vq.create_queue().unwrap()).collect();
    dev.activate(mem.clone(), irq.clone(), queues).unwrap();
    irq
}

/// Size of the guest memory a fuzz input describes: every address a 16-bit field can name.
pub const FUZZ_MEM_SIZE: usize = 0x1_0000;

/// Bytes of one queue's set-up in a fuzz input: size, descriptor table, available ring and
/// used ring, each a little-endian u16.
pub const FUZZ_QUEUE_LEN: usize = 8;

/// A fuzz input read front to back, the generic scheme of every device target (Cloud
/// Hypervisor's): a control byte, the set-up of each queue, what the target's host side needs,
/// then the image of guest memory from address 0. Reads past the end give zeros, so every
/// input means something.
pub struct FuzzInput<'a> {
    data: &'a [u8],
}

impl<'a> FuzzInput<'a> {
    /// The input `data`.
    pub fn new(data: &'a [u8]) -> Self {
        FuzzInput { data }
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// The next byte, or 0.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// The next little-endian u16, zero-padded.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let got = self.bytes(2);
        b[..got.len()].copy_from_slice(got);
        u16::from_le_bytes(b)
    }

    /// The next little-endian u32, zero-padded.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    /// A queue of `max_size` configured by the next [`FUZZ_QUEUE_LEN`] bytes and made ready,
    /// as a driver would through the transport's registers (the size is refused by
    /// virtio-queue unless it is a power of two up to `max_size`, as for a real driver).
    pub fn queue(&mut self, max_size: u16) -> Queue {
        let mut q = Queue::new(max_size).expect("device queue sizes are valid");
        q.set_size(self.u16());
        q.set_desc_table_address(Some(u32::from(self.u16())), Some(0));
        q.set_avail_ring_address(Some(u32::from(self.u16())), Some(0));
        q.set_used_ring_address(Some(u32::from(self.u16())), Some(0));
        q.set_ready(true);
        q
    }

    /// One queue per maximum size, in order.
    pub fn queues(&mut self, max_sizes: &[u16]) -> Vec<Queue> {
        max_sizes.iter().map(|&m| self.queue(m)).collect()
    }

    /// A length-prefixed chunk: a u16 length, then that many bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }

    /// What is left: the image of guest memory.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Runs `f` over [`FUZZ_MEM_SIZE`] bytes of guest memory holding `image` from address 0 (the
/// rest zero), mapped between two inaccessible guard pages: a device that reached past guest
/// memory through a raw pointer or a system call (instead of vm-memory's checked accesses)
/// faults at once instead of going unnoticed. Everything `f` makes from the memory (devices,
/// queues, clones) must be dropped when it returns; the mapping is then unmapped.
pub fn with_fuzz_memory(image: &[u8], f: impl FnOnce(&GuestMemoryMmap)) {
    use vm_memory::mmap::MmapRegion;
    use vm_memory::{Bytes, GuestRegionMmap};

    const PAGE: usize = 4096;
    let total = FUZZ_MEM_SIZE + 2 * PAGE;
    // SAFETY: a new anonymous mapping at an address the kernel picks; nothing else refers to
    // it. It is inaccessible until the middle is opened below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "cannot map fuzz guest memory");
    // SAFETY: `base + PAGE .. base + PAGE + FUZZ_MEM_SIZE` lies inside the mapping just made.
    let inner = unsafe { base.cast::<u8>().add(PAGE) };
    // SAFETY: as above; only the protection of our own mapping changes.
    let r = unsafe {
        libc::mprotect(
            inner.cast(),
            FUZZ_MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    assert_eq!(r, 0, "cannot open fuzz guest memory");
    {
        // SAFETY: `inner` is the start of FUZZ_MEM_SIZE readable and writable bytes that stay
        // mapped until after `mem` and everything made from it are dropped (end of this
        // block; `f` keeps nothing, see above). The region does not own the mapping.
        let region = unsafe {
            MmapRegion::build_raw(
                inner,
                FUZZ_MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            )
        }
        .expect("a page-aligned region");
        let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("does not wrap");
        let mem = GuestMemoryMmap::from_regions(vec![region]).expect("one region");
        let n = image.len().min(FUZZ_MEM_SIZE);
        mem.write_slice(&image[..n], GuestAddress(0))
            .expect("inside guest memory");
        f(&mem);
    }
    // SAFETY: our own mapping, no longer referred to (see above).
    unsafe { libc::munmap(base, total) };
}

/// Activates `dev` over `queues` as the transport does at DRIVER_OK: only when every queue
/// is valid in `mem`. Returns the interrupt, or `None` when the transport would have refused
/// (an invalid queue) or the device did.
pub fn fuzz_activate(
    dev: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    queues: Vec<Queue>,
) -> Option<Arc<Interrupt>> {
    if !queues.iter().all(|q| q.is_valid(mem)) {
        return None;
    }
    let irq = Arc::new(Interrupt::new().ok()?);
    dev.activate(mem.clone(), irq.clone(), queues).ok()?;
    Some(irq)
}

/// A fuzz input (a seed of the corpus) from guest memory a test set up with mock queues:
/// `control`, the mock queues' set-up, `host` (the target's host-side section), and the image
/// of `mem` up to its last non-zero byte. Queues and buffers must lie in the first 64 KiB.
pub fn fuzz_seed(
    control: u8,
    vqs: &[&MockSplitQueue<GuestMemoryMmap>],
    host: &[u8],
    mem: &GuestMemoryMmap,
) -> Vec<u8> {
    use vm_memory::Bytes;
    let mut out = vec![control];
    for vq in vqs {
        let addr = |a: GuestAddress| u16::try_from(a.0).expect("queues in the first 64 KiB");
        for v in [
            vq.create_queue::<Queue>().unwrap().size(),
            addr(vq.desc_table_addr()),
            addr(vq.avail_addr()),
            addr(vq.used_addr()),
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(host);
    let mut image = vec![0u8; FUZZ_MEM_SIZE];
    mem.read_slice(&mut image, GuestAddress(0)).unwrap();
    let end = image.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    out.extend_from_slice(&image[..end]);
    out
}
