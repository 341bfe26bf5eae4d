//! CPUID for each vCPU, normalised the way Firecracker and Cloud Hypervisor do it: what KVM
//! supports on this host, made consistent and complete for a guest (one package of `count`
//! cores with the extended topology leaf present, the TSC-deadline timer KVM emulates, a
//! brand string, XSAVE sizes that match the features), with the per-vCPU fields (APIC ids)
//! filled in and the hypervisor bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// What the host's KVM offers beyond KVM_GET_SUPPORTED_CPUID.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostFacts {
    /// KVM_CAP_TSC_DEADLINE_TIMER: KVM emulates the LAPIC's TSC-deadline mode, though the
    /// supported CPUID does not say so (the VMM must).
    pub tsc_deadline: bool,
}

/// CPUID.1:ECX bit 24, TSC-deadline timer. With it (and ARAT, which KVM reports) the guest
/// needs neither the PIT to calibrate its LAPIC timer nor the IO-APIC timer check at boot.
const TSC_DEADLINE: u32 = 1 << 24;

/// Leaf 0 EAX: the highest basic leaf.
fn max_basic_leaf(cpuid: &CpuId) -> u32 {
    entry(cpuid, 0, 0).map_or(0, |e| e.eax)
}

fn entry(cpuid: &CpuId, function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
}

fn entry_mut(cpuid: &mut CpuId, function: u32, index: u32) -> Option<&mut kvm_cpuid_entry2> {
    cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == function && e.index == index)
}

/// Makes KVM's supported CPUID (`cpuid`) a complete guest CPUID, the same for every vCPU:
/// TSC-deadline when KVM has it, a brand string when the host's KVM reports none (the lab's
/// does not: its guests named their CPU "AMD 17/01"), the extended topology leaf 0xB with
/// its subleaves (KVM reports only subleaf 0, and without subleaf 1 the guest counts one
/// package per vCPU and declares its TSCs unsynchronized), and consistent XSAVE sizes.
pub fn normalize(cpuid: &mut CpuId, host: HostFacts) -> Result<(), String> {
    make_xsave_consistent(cpuid);
    if host.tsc_deadline {
        if let Some(e) = entry_mut(cpuid, 1, 0) {
            e.ecx |= TSC_DEADLINE;
        }
    }
    set_brand_string(cpuid)?;
    // Leaf 0xB: the subleaves `for_vcpu` fills in, SMT (0), core (1) and the end (2).
    let keep: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function != 0xb)
        .copied()
        .collect();
    let mut rebuilt = CpuId::from_entries(&keep).map_err(|e| format!("CPUID: {e:?}"))?;
    for index in 0..3 {
        rebuilt
            .push(kvm_cpuid_entry2 {
                function: 0xb,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            })
            .map_err(|e| format!("CPUID: no room for leaf 0xB: {e:?}"))?;
    }
    if max_basic_leaf(&rebuilt) < 0xb {
        if let Some(e) = entry_mut(&mut rebuilt, 0, 0) {
            e.eax = 0xb;
        }
    }
    *cpuid = rebuilt;
    Ok(())
}

/// The brand string leaves 0x8000_0002..4: kept when KVM reports one, else the host CPU's own
/// (as QEMU's `-cpu host` does), else a name of ours.
fn set_brand_string(cpuid: &mut CpuId) -> Result<(), String> {
    let max_ext = entry(cpuid, 0x8000_0000, 0).map_or(0, |e| e.eax);
    if max_ext < 0x8000_0004 {
        return Ok(());
    }
    let leaves = [0x8000_0002u32, 0x8000_0003, 0x8000_0004];
    let reported = leaves
        .iter()
        .any(|&f| entry(cpuid, f, 0).is_some_and(|e| (e.eax | e.ebx | e.ecx | e.edx) != 0));
    if reported {
        return Ok(());
    }
    let mut brand = host_brand_string();
    if brand.iter().all(|&b| b == 0 || b == b' ') {
        brand = [0; 48];
        brand[..20].copy_from_slice(b"carapace virtual CPU");
    }
    for (i, &f) in leaves.iter().enumerate() {
        let word = |w: usize| {
            let at = i * 16 + w * 4;
            u32::from_le_bytes(brand[at..at + 4].try_into().expect("4 bytes"))
        };
        let (eax, ebx, ecx, edx) = (word(0), word(1), word(2), word(3));
        match entry_mut(cpuid, f, 0) {
            Some(e) => (e.eax, e.ebx, e.ecx, e.edx) = (eax, ebx, ecx, edx),
            None => cpuid
                .push(kvm_cpuid_entry2 {
                    function: f,
                    eax,
                    ebx,
                    ecx,
                    edx,
                    ..Default::default()
                })
                .map_err(|e| format!("CPUID: no room for the brand string: {e:?}"))?,
        }
    }
    Ok(())
}

/// The CPU this process runs on names itself in leaves 0x8000_0002..4.
fn host_brand_string() -> [u8; 48] {
    let mut brand = [0u8; 48];
    // SAFETY: CPUID is available on every x86_64 CPU; leaf 0x8000_0000 says whether the
    // brand string leaves exist before they are read. (`__cpuid` is safe to call from Rust
    // 1.94 on; the MSRV still needs the block.)
    #[allow(unused_unsafe)]
    unsafe {
        use std::arch::x86_64::__cpuid;
        if __cpuid(0x8000_0000).eax < 0x8000_0004 {
            return brand;
        }
        for (i, f) in (0x8000_0002u32..=0x8000_0004).enumerate() {
            let r = __cpuid(f);
            for (w, v) in [r.eax, r.ebx, r.ecx, r.edx].into_iter().enumerate() {
                brand[i * 16 + w * 4..i * 16 + w * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    brand
}

/// Fills in per-vCPU fields of `cpuid` (made by [`normalize`]) for vCPU `index` of `count`.
pub fn for_vcpu(cpuid: &mut CpuId, index: u8, count: u8) {
    // Bits needed to number `count` logical CPUs (for the APIC id layout leaves).
    let id_bits = u32::BITS - u32::from(count.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // EBX: initial APIC id [31:24], logical processor count [23:16],
                // CLFLUSH line size [15:8] (8 x 8 bytes).
                e.ebx = (u32::from(index) << 24) | (u32::from(count) << 16) | (8 << 8);
                e.ecx |= 1 << 31; // running under a hypervisor
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the count above is meaningful
                }
            }
            0xb => {
                // Extended topology: one thread per core, `count` cores in one package.
                e.edx = u32::from(index);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8; // level type SMT
                    }
                    1 => {
                        e.eax = id_bits;
                        e.ebx = u32::from(count);
                        e.ecx = (2 << 8) | 1; // level type core
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: ApicIdSize [15:12] and number of cores minus one [7:0].
                e.ecx = (id_bits << 12) | u32::from(count.max(1) - 1);
            }
            0x8000_001e => {
                // AMD: extended APIC id, one thread per compute unit, node 0.
                e.eax = u32::from(index);
                e.ebx = u32::from(index);
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// Size of the legacy XSAVE area plus its header: x87 and SSE state only.
const XSAVE_LEGACY_SIZE: u32 = 576;

/// Drops the AVX state component from leaf 0xD when leaf 1 says there is no AVX. Some CPU
/// models (QEMU's TCG, hence the lab) report AVX state without AVX; a guest then finds its
/// XSAVE sizes inconsistent and warns at boot.
fn make_xsave_consistent(cpuid: &mut CpuId) {
    let has_avx = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .is_some_and(|e| e.ecx & (1 << 28) != 0);
    if has_avx {
        return;
    }
    for e in cpuid.as_mut_slice() {
        if e.function != 0xd {
            continue;
        }
        match e.index {
            0 if e.eax & (1 << 2) != 0 => {
                e.eax &= !(1 << 2);
                // Only x87 and SSE remain below AVX's components: the legacy area.
                if e.eax & !0x3 == 0 {
                    e.ebx = XSAVE_LEGACY_SIZE;
                    e.ecx = XSAVE_LEGACY_SIZE;
                }
            }
            2 => {
                e.eax = 0;
                e.ebx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            ..Default::default()
        }
    }

    /// What the lab's KVM reports (trimmed): max basic leaf 0xd, leaf 0xB with subleaf 0
    /// only, an extended range up to 0x8000_0021 with empty brand string leaves.
    fn lab_like() -> CpuId {
        CpuId::from_entries(&[
            leaf(0, 0, 0xd, 0, 0),
            leaf(1, 0, 0, 0, 0),
            leaf(0xb, 0, 0, 0, 0),
            leaf(0x8000_0000, 0, 0x8000_0021, 0, 0),
            leaf(0x8000_0002, 0, 0, 0, 0),
            leaf(0x8000_0003, 0, 0, 0, 0),
            leaf(0x8000_0004, 0, 0, 0, 0),
            leaf(0x8000_0008, 0, 0, 0, 0),
        ])
        .unwrap()
    }

    fn get(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entry(cpuid, function, index).unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    #[test]
    fn avx_state_is_dropped_when_avx_is_absent() {
        let entries = [
            leaf(1, 0, 0, 0, 0),
            leaf(0xd, 0, 7, 576, 832),
            leaf(0xd, 2, 256, 576, 0),
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        normalize(&mut cpuid, HostFacts::default()).unwrap();
        let d0 = get(&cpuid, 0xd, 0);
        assert_eq!((d0.eax, d0.ebx, d0.ecx), (3, 576, 576));
        assert_eq!(get(&cpuid, 0xd, 2).eax, 0);
        // With AVX present nothing changes.
        let mut with_avx = CpuId::from_entries(&entries).unwrap();
        with_avx.as_mut_slice()[0].ecx = 1 << 28;
        normalize(&mut with_avx, HostFacts::default()).unwrap();
        assert_eq!(get(&with_avx, 0xd, 0).eax, 7);
    }

    #[test]
    fn the_tsc_deadline_timer_is_offered_only_when_kvm_has_it() {
        let mut cpuid = lab_like();
        normalize(&mut cpuid, HostFacts::default()).unwrap();
        assert_eq!(get(&cpuid, 1, 0).ecx & TSC_DEADLINE, 0);
        let mut cpuid = lab_like();
        normalize(&mut cpuid, HostFacts { tsc_deadline: true }).unwrap();
        assert_ne!(get(&cpuid, 1, 0).ecx & TSC_DEADLINE, 0);
    }

    #[test]
    fn the_topology_leaf_gets_its_core_subleaf_and_the_vcpus_one_package() {
        let mut cpuid = lab_like();
        normalize(&mut cpuid, HostFacts::default()).unwrap();
        assert!(max_basic_leaf(&cpuid) >= 0xb);
        for_vcpu(&mut cpuid, 2, 3);
        let (smt, core, end) = (
            get(&cpuid, 0xb, 0),
            get(&cpuid, 0xb, 1),
            get(&cpuid, 0xb, 2),
        );
        // SMT level: shift 0, one thread; core level: shift 2 covers ids 0..=2, 3 cores;
        // then the end of the list. Every subleaf names the vCPU's x2APIC id.
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8), (0, 1, 1));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8), (2, 3, 2));
        assert_eq!((end.ecx >> 8) & 0xff, 0);
        assert!([smt, core, end].iter().all(|e| e.edx == 2));
        assert!([smt, core, end]
            .iter()
            .all(|e| e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0));
        // A max basic leaf below 0xB is raised so the guest reads it.
        let mut low = CpuId::from_entries(&[leaf(0, 0, 7, 0, 0), leaf(1, 0, 0, 0, 0)]).unwrap();
        normalize(&mut low, HostFacts::default()).unwrap();
        assert_eq!(max_basic_leaf(&low), 0xb);
    }

    #[test]
    fn an_empty_brand_string_is_filled_and_a_reported_one_kept() {
        let mut cpuid = lab_like();
        normalize(&mut cpuid, HostFacts::default()).unwrap();
        let mut bytes = Vec::new();
        for f in 0x8000_0002..=0x8000_0004 {
            let e = get(&cpuid, f, 0);
            for w in [e.eax, e.ebx, e.ecx, e.edx] {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
        }
        let name = String::from_utf8_lossy(&bytes);
        assert!(
            name.trim_matches(['\0', ' ']).len() >= 3,
            "brand string {name:?}"
        );
        let mut named = lab_like();
        entry_mut(&mut named, 0x8000_0002, 0).unwrap().eax = u32::from_le_bytes(*b"Zen ");
        normalize(&mut named, HostFacts::default()).unwrap();
        let e = get(&named, 0x8000_0002, 0);
        assert_eq!((e.eax, e.ebx), (u32::from_le_bytes(*b"Zen "), 0));
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_cpu_count() {
        let mut cpuid = lab_like();
        normalize(&mut cpuid, HostFacts::default()).unwrap();
        for_vcpu(&mut cpuid, 2, 3);
        let l1 = get(&cpuid, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 3);
        assert_ne!(l1.ecx & (1 << 31), 0);
        assert_eq!(get(&cpuid, 0x8000_0008, 0).ecx, (2 << 12) | 2);
    }
}
