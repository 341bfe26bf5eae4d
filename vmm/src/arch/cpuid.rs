//! CPUID for each vCPU: what KVM supports on this host, with the topology (APIC ids, CPU
//! count) filled in per vCPU and the hypervisor bit set.

use kvm_bindings::CpuId;

/// Fills in per-vCPU fields of `cpuid` (taken from KVM_GET_SUPPORTED_CPUID) for vCPU `index`
/// of `count`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

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
