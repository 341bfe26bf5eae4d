//! Direct boot through the kernel's PVH entry: loading the `vmlinux` ELF and the initramfs,
//! the command line, the `hvm_start_info` handed to the kernel, and the boot CPU's state
//! (flat 32-bit protected mode, as the PVH ABI requires).

use std::fs::File;
use std::path::Path;

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{Cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    low_ram_end, mapload, memory_map, BOOT_GDT_START, CMDLINE_START, HIMEM_START, MEMMAP_START,
    MODLIST_START, PVH_INFO_START,
};

/// Why the guest could not be prepared for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened.
    #[error("kernel {path}")]
    KernelOpen {
        /// The kernel's path.
        path: String,
        /// Why it could not be opened.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not a loadable ELF.
    #[error("kernel {path}: not a loadable vmlinux ELF image")]
    KernelLoad {
        /// The kernel's path.
        path: String,
        /// The loader's complaint.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The kernel has no PVH entry note (CONFIG_PVH is off).
    #[error("kernel {0}: no PVH entry point (build it with CONFIG_PVH=y)")]
    NoPvhEntry(String),
    /// The initramfs cannot be read or does not fit.
    #[error("initramfs {path}: {why}")]
    Initramfs {
        /// The initramfs's path.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The command line cannot be written.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// A boot structure could not be written to guest memory.
    #[error("writing {0} to guest memory failed")]
    Write(&'static str),
}

/// Where a loaded kernel starts running and where its image ends.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The PVH entry point.
    pub entry: GuestAddress,
    /// First guest address past the kernel image.
    pub end: u64,
}

/// Loads the `vmlinux` at `path` into fresh guest memory of `mem_size` bytes: mapped from
/// the page cache when its segments allow it ([`super::mapload`]), copied otherwise.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
) -> Result<LoadedKernel, BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::KernelOpen {
        path: name.clone(),
        source,
    })?;
    if let Some(plan) = mapload::plan_kernel(&file, low_ram_end(mem_size)) {
        match mapload::map_kernel(mem, &file, &plan) {
            Ok(()) => {
                return Ok(LoadedKernel {
                    entry: GuestAddress(plan.entry),
                    end: plan.end,
                })
            }
            Err(e) => log::warn!("kernel {name}: cannot map it ({e}); copying it instead"),
        }
    }
    let loaded =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::KernelLoad {
                path: name.clone(),
                source,
            }
        })?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
            entry,
            end: loaded.kernel_end,
        }),
        _ => Err(BootError::NoPvhEntry(name)),
    }
}

/// Loads the initramfs at the top of low RAM (page aligned, above the kernel) and returns
/// where it lies: mapped from the page cache, or copied if that fails.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<(GuestAddress, u64), BootError> {
    let err = |why: String| BootError::Initramfs {
        path: path.display().to_string(),
        why,
    };
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let top = low_ram_end(mem_size);
    let start = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end)
        .ok_or_else(|| {
            err(format!(
                "{size} bytes do not fit in guest memory above the kernel; give the guest more memory"
            ))
        })?;
    if let Err(e) = mapload::map_file(mem, &file, start, 0, size) {
        log::warn!(
            "initramfs {}: cannot map it ({e}); copying it instead",
            path.display()
        );
        mem.read_exact_volatile_from(GuestAddress(start), &mut file, size as usize)
            .map_err(|e| err(format!("cannot copy into guest memory: {e}")))?;
    }
    Ok((GuestAddress(start), size))
}

/// Writes the command line and the PVH start info (memory map, initramfs module).
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &Cmdline,
    initramfs: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(format!("{e:?}")))?;

    let map = memory_map(mem_size);
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(|_| BootError::Write("the PVH memory map"))?;
    }

    let mut info = hvm_start_info {
        magic: 0x336e_c578, // XEN_HVM_START_MAGIC_VALUE
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = initramfs {
        let module = hvm_modlist_entry {
            paddr: addr.raw_value(),
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(MODLIST_START))
            .map_err(|_| BootError::Write("the PVH module list"))?;
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(|_| BootError::Write("the PVH start info"))?;
    Ok(())
}

/// A GDT entry from its flags (access byte and granularity nibble), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT: null, flat 32-bit code, flat data, and a TSS (KVM insists on a usable TR).
const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The KVM segment a GDT entry at `index` describes.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the boot GDT into guest memory.
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|_| BootError::Write("the boot GDT"))?;
    }
    // A zero IDT right after it: no exceptions are expected before the kernel sets its own.
    mem.write_obj(
        0u64,
        GuestAddress(BOOT_GDT_START + 8 * BOOT_GDT.len() as u64),
    )
    .map_err(|_| BootError::Write("the boot IDT"))?;
    Ok(())
}

/// Special registers for the PVH entry: protected mode, paging off, flat segments.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment(BOOT_GDT[1], 1);
    let data = segment(BOOT_GDT[2], 2);
    let tss = segment(BOOT_GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (8 * BOOT_GDT.len() - 1) as u16;
    sregs.idt.base = BOOT_GDT_START + 8 * BOOT_GDT.len() as u64;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = 1; // PE
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// General registers for the PVH entry: %rbx points at the start info.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rip: entry.raw_value(),
        rbx: PVH_INFO_START,
        rflags: 2,
        ..Default::default()
    }
}

/// The FPU as a reset CPU has it.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSRs a freshly reset CPU would have (syscall MSRs cleared, write-back MTRR default, fast
/// strings enabled). The TSC is left alone: writing it per vCPU, at different moments,
/// makes the guest find its TSCs unsynchronized.
pub fn boot_msrs() -> Msrs {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_MISC_ENABLE, 1),          // fast strings
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, write-back default
    ];
    Msrs::from_entries(&entries).expect("a fixed, small MSR list fits")
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in a local APIC's register page, as a BIOS would.
pub fn set_lint(lapic: &mut kvm_bindings::kvm_lapic_state) {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 7;
    const MODE_NMI: u32 = 4;
    for (reg, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let v = u32::from_le_bytes(bytes);
        let v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_segments_are_flat_32_bit() {
        let cs = segment(BOOT_GDT[1], 1);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!((cs.type_, cs.db, cs.l, cs.present, cs.s), (0xb, 1, 0, 1, 1));
        let ds = segment(BOOT_GDT[2], 2);
        assert_eq!((ds.type_, ds.selector, ds.limit), (3, 16, 0xffff_ffff));
        let tr = segment(BOOT_GDT[3], 3);
        assert_eq!((tr.type_, tr.s, tr.selector), (0xb, 0, 24));
    }

    #[test]
    fn start_info_describes_memory_and_initramfs() {
        let size = 128u64 << 20;
        let mem = super::super::create_guest_memory(size).unwrap();
        let mut cmdline = Cmdline::new(super::super::CMDLINE_MAX).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        write_boot_info(&mem, size, &cmdline, Some((GuestAddress(0x700_0000), 4096))).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries, 3);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (0x700_0000, 4096));
        let mut s = [0u8; 14];
        mem.read_slice(&mut s, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&s, b"console=ttyS0\0");
    }

    #[test]
    fn a_file_that_is_not_elf_is_refused_with_its_name() {
        let mem = super::super::create_guest_memory(64 << 20).unwrap();
        let path = std::env::temp_dir().join(format!("carapace-not-elf-{}", std::process::id()));
        std::fs::write(&path, b"not a kernel at all, just some bytes............").unwrap();
        let err = load_kernel(&mem, 64 << 20, &path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
