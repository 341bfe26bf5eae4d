//! Zero-copy loading: the kernel's ELF segments and the initramfs mapped into guest memory
//! straight from the page cache (private, copy-on-write file mappings placed over the guest's
//! RAM). Nothing is copied at start-up, and pages the guest never writes (most of the
//! kernel's text and the initramfs until it is unpacked) stay shared by every VM booting the
//! same files.
//!
//! linux-loader copies segments with read(), a page fault per 4 KiB of fresh guest memory:
//! about 8 ms of CPU for a 9 MiB vmlinux, more than the whole start-up budget. It stays the
//! fallback (and the source of errors) for kernels whose segments are not page aligned.
//! The files must not be truncated while a VM runs (installing a new kernel by rename is
//! safe): a guest touching a page past the new end would stop the VM with an error.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const PAGE: u64 = 4096;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// The Xen ELF note carrying the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One loadable segment of a kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the file.
    pub offset: u64,
    /// Guest physical address.
    pub paddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zero).
    pub memsz: u64,
}

/// What the ELF headers say about a kernel that can be mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPlan {
    /// Loadable segments, page aligned in the file and in memory.
    pub segments: Vec<Segment>,
    /// The PVH entry point.
    pub entry: u64,
    /// First address past the image.
    pub end: u64,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Reads the PVH entry from a PT_NOTE segment's contents.
fn pvh_entry(notes: &[u8]) -> Option<u64> {
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at)? as usize;
        let descsz = u32_at(notes, at + 4)? as usize;
        let kind = u32_at(notes, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(namesz.checked_add(3)? & !3)?;
        let next = desc_at.checked_add(descsz.checked_add(3)? & !3)?;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && notes.get(name_at..name_at + namesz)? == b"Xen\0" {
            return match descsz {
                4 => u32_at(notes, desc_at).map(u64::from),
                8 => u64_at(notes, desc_at),
                _ => None,
            };
        }
        at = next;
    }
    None
}

/// Plans the mapping of the x86-64 vmlinux in `file`, for guest RAM below `ram_end`.
/// `None` when the image cannot be mapped page by page (the copying loader then decides).
pub fn plan_kernel(file: &File, ram_end: u64) -> Option<KernelPlan> {
    let len = file.metadata().ok()?.len();
    let mut ehdr = [0u8; 64];
    file.read_exact_at(&mut ehdr, 0).ok()?;
    // 64-bit, little-endian, x86-64 ELF.
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 || u16_at(&ehdr, 18)? != 0x3e {
        return None;
    }
    let phoff = u64_at(&ehdr, 0x20)?;
    let phentsize = u64::from(u16_at(&ehdr, 0x36)?);
    let phnum = u64::from(u16_at(&ehdr, 0x38)?);
    if phentsize < 56 || phnum > 64 || phoff.checked_add(phentsize * phnum)? > len {
        return None;
    }
    let mut phdrs = vec![0u8; (phentsize * phnum) as usize];
    file.read_exact_at(&mut phdrs, phoff).ok()?;
    let mut segments = Vec::new();
    let mut entry = None;
    for ph in phdrs.chunks(phentsize as usize) {
        let kind = u32_at(ph, 0)?;
        let seg = Segment {
            offset: u64_at(ph, 8)?,
            paddr: u64_at(ph, 0x18)?,
            filesz: u64_at(ph, 0x20)?,
            memsz: u64_at(ph, 0x28)?,
        };
        if seg.offset.checked_add(seg.filesz)? > len || seg.filesz > seg.memsz {
            return None;
        }
        match kind {
            PT_LOAD => {
                let aligned = seg.offset % PAGE == 0 && seg.paddr % PAGE == 0;
                let in_ram =
                    seg.paddr >= super::HIMEM_START && seg.paddr.checked_add(seg.memsz)? <= ram_end;
                if !aligned || !in_ram {
                    return None;
                }
                segments.push(seg);
            }
            PT_NOTE if entry.is_none() && seg.filesz <= 1 << 16 => {
                let mut notes = vec![0u8; seg.filesz as usize];
                file.read_exact_at(&mut notes, seg.offset).ok()?;
                entry = pvh_entry(&notes);
            }
            _ => {}
        }
    }
    // Segments must not share a page: each mapping would replace the previous one's tail.
    segments.sort_by_key(|s| s.paddr);
    for w in segments.windows(2) {
        if w[0].paddr + w[0].memsz.div_ceil(PAGE) * PAGE > w[1].paddr {
            return None;
        }
    }
    let end = segments.iter().map(|s| s.paddr + s.memsz).max()?;
    Some(KernelPlan {
        segments,
        entry: entry?,
        end,
    })
}

/// Maps `len` bytes of `file` at `offset` (page aligned) over guest memory at `guest` (page
/// aligned), private and copy-on-write. The rest of the last page reads as zero.
pub fn map_file(
    mem: &GuestMemoryMmap,
    file: &File,
    guest: u64,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
    if guest % PAGE != 0 || offset % PAGE != 0 {
        return Err(bad("unaligned mapping"));
    }
    if len == 0 {
        return Ok(());
    }
    let span = len.div_ceil(PAGE) * PAGE;
    // The whole span must lie in one guest memory region (one host mapping).
    let region = mem
        .find_region(GuestAddress(guest))
        .ok_or_else(|| bad("outside guest memory"))?;
    let start = region
        .to_region_addr(GuestAddress(guest))
        .ok_or_else(|| bad("outside guest memory"))?;
    if start.0.checked_add(span).map_or(true, |e| e > region.len()) {
        return Err(bad("crosses the end of a guest memory region"));
    }
    let host = region
        .get_host_address(start)
        .map_err(|_| bad("no host address"))?;
    // SAFETY: `host..host + span` lies inside the guest memory mapping owned by `mem` (checked
    // above), which nothing else references as Rust memory; MAP_FIXED replaces those pages
    // with a private view of the file. The mapping lives until `mem` unmaps its region.
    let p = unsafe {
        libc::mmap(
            host.cast(),
            span as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // Past `len`, the last page holds whatever follows in the file (bytes past the file's end
    // read as zero): zero it, which copies that one page.
    let tail = span - len;
    if tail > 0 && offset + len < file.metadata()?.len() {
        use vm_memory::Bytes;
        mem.write_slice(&vec![0u8; tail as usize], GuestAddress(guest + len))
            .map_err(|_| bad("cannot zero the last page"))?;
    }
    Ok(())
}

/// Maps every segment of `plan`. Memory past each segment's file size (its bss) must read as
/// zero already: load into fresh guest memory.
pub fn map_kernel(mem: &GuestMemoryMmap, file: &File, plan: &KernelPlan) -> std::io::Result<()> {
    for s in &plan.segments {
        map_file(mem, file, s.paddr, s.offset, s.filesz)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    /// A minimal ELF: two page-aligned PT_LOADs and a PVH note.
    fn tiny_elf(entry_note: bool, misaligned: bool) -> Vec<u8> {
        let mut f = vec![0u8; 0x3000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[18] = 0x3e;
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        let ph = |f: &mut Vec<u8>,
                  i: usize,
                  kind: u32,
                  off: u64,
                  paddr: u64,
                  filesz: u64,
                  memsz: u64| {
            let b = 64 + i * 56;
            f[b..b + 4].copy_from_slice(&kind.to_le_bytes());
            f[b + 8..b + 16].copy_from_slice(&off.to_le_bytes());
            f[b + 0x18..b + 0x20].copy_from_slice(&paddr.to_le_bytes());
            f[b + 0x20..b + 0x28].copy_from_slice(&filesz.to_le_bytes());
            f[b + 0x28..b + 0x30].copy_from_slice(&memsz.to_le_bytes());
        };
        let paddr = if misaligned { 0x100_0010 } else { 0x100_0000 };
        ph(&mut f, 0, PT_LOAD, 0x1000, paddr, 0x10, 0x10);
        ph(&mut f, 1, PT_LOAD, 0x2000, 0x100_2000, 0x800, 0x3000);
        ph(&mut f, 2, PT_NOTE, 0x400, 0, 24, 24);
        if entry_note {
            let n = 0x400;
            f[n..n + 4].copy_from_slice(&4u32.to_le_bytes());
            f[n + 4..n + 8].copy_from_slice(&8u32.to_le_bytes());
            f[n + 8..n + 12].copy_from_slice(&18u32.to_le_bytes());
            f[n + 12..n + 16].copy_from_slice(b"Xen\0");
            f[n + 16..n + 24].copy_from_slice(&0x100_0004u64.to_le_bytes());
        }
        f[0x1000..0x1010].copy_from_slice(b"kernel-text-here");
        f[0x2000..0x2800].fill(0xaa);
        f[0x2800..0x3000].fill(0xbb); // not part of the segment: must read as zero
        f
    }

    fn temp(bytes: &[u8], name: &str) -> (std::path::PathBuf, File) {
        let p =
            std::env::temp_dir().join(format!("carapace-mapload-{name}-{}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        let f = File::open(&p).unwrap();
        (p, f)
    }

    #[test]
    fn a_page_aligned_kernel_is_mapped_with_its_bss_zeroed() {
        let (path, file) = temp(&tiny_elf(true, false), "ok");
        let plan = plan_kernel(&file, 64 << 20).expect("mappable");
        assert_eq!(plan.entry, 0x100_0004);
        assert_eq!(plan.end, 0x100_5000);
        let mem = super::super::create_guest_memory(64 << 20).unwrap();
        map_kernel(&mem, &file, &plan).unwrap();
        let mut text = [0u8; 16];
        mem.read_slice(&mut text, GuestAddress(0x100_0000)).unwrap();
        assert_eq!(&text, b"kernel-text-here");
        let mut data = vec![0u8; 0x3000];
        mem.read_slice(&mut data, GuestAddress(0x100_2000)).unwrap();
        assert!(data[..0x800].iter().all(|&b| b == 0xaa));
        // The rest of the mapped page is zeroed, and the bss past it is fresh memory.
        assert!(data[0x800..].iter().all(|&b| b == 0));
        // Guest writes stay private to the guest.
        mem.write_slice(b"X", GuestAddress(0x100_0000)).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[0x1000..0x1001], b"k");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn unmappable_kernels_are_left_to_the_copying_loader() {
        let (p1, f1) = temp(&tiny_elf(false, false), "noentry");
        assert_eq!(plan_kernel(&f1, 64 << 20), None);
        let (p2, f2) = temp(&tiny_elf(true, true), "misaligned");
        assert_eq!(plan_kernel(&f2, 64 << 20), None);
        let (p3, f3) = temp(b"not an elf", "junk");
        assert_eq!(plan_kernel(&f3, 64 << 20), None);
        let (p4, f4) = temp(&tiny_elf(true, false), "small");
        assert_eq!(plan_kernel(&f4, 0x100_1000), None, "beyond guest RAM");
        for p in [p1, p2, p3, p4] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
