//! CPUID for each vCPU: what KVM supports on this host, with the topology (APIC ids, CPU
//! count) filled in per vCPU and the hypervisor bit set.

use kvm_bindings::CpuId;

/// Fills in per-vCPU fields of `cpuid` (taken from KVM_GET_SUPPORTED_CPUID) for vCPU `index`
/// of `count`.
pub fn for_vcpu(cpuid: &mut CpuId, index: u8, count: u8) {
    make_xsave_consistent(cpuid);
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
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn avx_state_is_dropped_when_avx_is_absent() {
        let leaf = |function, index, eax, ebx, ecx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            ..Default::default()
        };
        let entries = [
            leaf(1, 0, 0, 0, 0),
            leaf(0xd, 0, 7, 576, 832),
            leaf(0xd, 2, 256, 576, 0),
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        for_vcpu(&mut cpuid, 0, 1);
        let e = cpuid.as_slice();
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx), (3, 576, 576));
        assert_eq!(e[2].eax, 0);
        // With AVX present nothing changes.
        let mut with_avx = CpuId::from_entries(&entries).unwrap();
        with_avx.as_mut_slice()[0].ecx = 1 << 28;
        for_vcpu(&mut with_avx, 0, 1);
        assert_eq!(with_avx.as_slice()[1].eax, 7);
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_cpu_count() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        for_vcpu(&mut cpuid, 2, 3);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 3);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].edx), (2, 3, 2));
        assert_eq!(e[2].ecx, (2 << 12) | 2);
    }
}
