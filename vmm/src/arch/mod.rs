//! x86_64 machine layout and boot: where guest RAM, boot structures and device windows live,
//! and the pieces that prepare a guest for its first instruction (kernel loading and PVH
//! start info in [`boot`], the MP table in [`mptable`], CPUID in [`cpuid`]).

pub mod boot;
pub mod cpuid;
pub mod mapload;
pub mod mptable;

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The boot GDT (flat code and data segments for PVH's 32-bit entry).
pub const BOOT_GDT_START: u64 = 0x500;
/// The PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// The PVH module list (the initramfs).
pub const MODLIST_START: u64 = 0x6040;
/// The PVH memory map.
pub const MEMMAP_START: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line the x86 kernel accepts, NUL included.
pub const CMDLINE_MAX: usize = 2048;
/// The MP floating pointer and table: the last KiB of base memory, where Linux looks.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of base (conventional) memory.
pub const EBDA_END: u64 = 0xa0000;
/// Start of high memory: RAM the kernel is loaded into.
pub const HIMEM_START: u64 = 0x10_0000;
/// Below 4 GiB, RAM stops here; the rest is for device windows, the IOAPIC and LAPICs.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the device gap: RAM resumes here for guests larger than 3 GiB.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window; each device gets `devices::virtio::mmio::MMIO_LEN`.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// First interrupt line for virtio-mmio devices (0-4 are the PIT, keyboard, cascade, COM2, COM1).
pub const VIRTIO_IRQ_START: u32 = 5;
/// Last usable IOAPIC input.
pub const IRQ_MAX: u32 = 23;
/// The IOAPIC's MMIO address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' MMIO address.
pub const APIC_START: u64 = 0xfee0_0000;
/// Where KVM's TSS (three pages) lives, just below the local APICs' window.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// Where KVM's identity-map page lives, just below the TSS.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;

/// Guest RAM ranges for a guest of `size` bytes: one range, or two around the device gap.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Allocates guest RAM of `size` bytes (anonymous, lazily backed: untouched pages cost nothing).
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, vm_memory::mmap::FromRangesError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(size))
}

/// End of RAM below the device gap.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

/// One entry of the guest's physical memory map (E820 types: 1 RAM, 2 reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type.
    pub kind: u32,
}

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The memory map the guest is told about.
pub fn memory_map(size: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: MPTABLE_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: MPTABLE_START,
            size: EBDA_END - MPTABLE_START,
            kind: E820_RESERVED,
        },
        MemoryMapEntry {
            addr: HIMEM_START,
            size: low_ram_end(size) - HIMEM_START,
            kind: E820_RAM,
        },
    ];
    if size > MMIO_GAP_START {
        map.push(MemoryMapEntry {
            addr: MMIO_GAP_END,
            size: size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn memory_above_the_gap_moves_past_4_gib() {
        let small = create_guest_memory(256 << 20).unwrap();
        assert_eq!(small.num_regions(), 1);
        let big = 4u64 << 30;
        let ranges = ram_ranges(big);
        assert_eq!(ranges[1], (GuestAddress(MMIO_GAP_END), (1usize << 30)));
        let map = memory_map(big);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, big - HIMEM_START + MPTABLE_START);
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END));
    }
}
