//! The view of guest memory that fuse-backend-rs reads and writes: the same host mappings as
//! the VMM's own [`GuestMemory`], described with the vm-memory version fuse-backend-rs is built
//! on.
//!
//! Why a second vm-memory: fuse-backend-rs 0.14 (the newest release) depends on
//! `vm-memory = "=0.17.1"` and `virtio-queue = "0.17"`, while the workspace is on 0.18 of both.
//! Its virtio-fs `Reader` and `Writer` are only built from a 0.17 `DescriptorChain` over a 0.17
//! `GuestMemory`, so the fs device keeps its queues in virtio-queue 0.17 and hands it this
//! alias. No memory is mapped or copied here: each region is the 0.18 region's host mapping,
//! wrapped without ownership (vm-memory's `build_raw`), and the alias is only ever held next to
//! the [`GuestMemory`] that owns the mappings. When fuse-backend-rs moves to vm-memory 0.18
//! this file goes away.

use fuse_vm_memory::mmap::MmapRegion;
use fuse_vm_memory::{GuestAddress as AliasAddress, GuestRegionMmap};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::FsError;
use crate::devices::virtio::GuestMemory;

/// Guest memory in fuse-backend-rs's vm-memory version.
pub type AliasMemory = fuse_vm_memory::GuestMemoryMmap;

/// Guest memory and its alias, kept together so the alias never outlives the mappings.
#[derive(Debug)]
pub struct SharedMemory {
    /// The alias fuse-backend-rs and virtio-queue 0.17 read and write through.
    alias: AliasMemory,
    /// The owner of the mappings the alias points into (declared last: dropped after it).
    _owner: GuestMemory,
}

impl SharedMemory {
    /// Describes every region of `mem` again for fuse-backend-rs.
    pub fn new(mem: GuestMemory) -> Result<SharedMemory, FsError> {
        let mut regions = Vec::new();
        for region in mem.iter() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| FsError::Memory(e.to_string()))?;
            let len = usize::try_from(region.len())
                .map_err(|_| FsError::Memory("a region larger than the address space".into()))?;
            // SAFETY: `host` is the start of a live mapping of `len` bytes owned by `mem`, which
            // this struct keeps (and drops after the alias). `build_raw` does not take ownership:
            // the alias never unmaps it. Both views only do volatile accesses, as guest memory
            // requires, since the guest itself writes the same bytes concurrently.
            let mapping = unsafe {
                MmapRegion::build_raw(
                    host,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                )
            }
            .map_err(|e| FsError::Memory(e.to_string()))?;
            let r = GuestRegionMmap::new(mapping, AliasAddress(region.start_addr().0))
                .ok_or_else(|| FsError::Memory("a region wraps the address space".into()))?;
            regions.push(r);
        }
        let alias =
            AliasMemory::from_regions(regions).map_err(|e| FsError::Memory(e.to_string()))?;
        Ok(SharedMemory { alias, _owner: mem })
    }

    /// The alias.
    pub fn alias(&self) -> &AliasMemory {
        &self.alias
    }
}
