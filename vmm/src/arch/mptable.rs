//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI learns its CPUs,
//! its IOAPIC and how the 24 interrupt lines are wired. Written into the last KiB of base
//! memory, where Linux scans for the floating pointer.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{APIC_START, IOAPIC_START, IRQ_MAX, MPTABLE_START};

/// Most vCPUs the table (one KiB) and 8-bit APIC ids allow here.
pub const MAX_VCPUS: u8 = 32;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = 0x201; // FPU | APIC

/// Why the table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the table.
    #[error("{0} vCPUs: the MP table holds at most {MAX_VCPUS}")]
    TooManyVcpus(u8),
    /// Guest memory does not cover the table's place.
    #[error("guest memory too small for the MP table")]
    Write,
}

/// Byte sum of `bytes`; a structure is valid when it sums to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

/// Builds the configuration table (header and entries) placed at `table_addr`.
fn config_table(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus + 1;
    let mut entries = Vec::new();
    for id in 0..vcpus {
        // Processor entry (20 bytes): enabled, the first is the bootstrap processor.
        entries.extend_from_slice(&[0, id, APIC_VERSION, 1 | if id == 0 { 2 } else { 0 }]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    // Bus entry: bus 0 is ISA.
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    // IOAPIC entry: enabled, at its usual address.
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    // I/O interrupt entries: ISA IRQ n goes to IOAPIC pin n, default polarity and trigger.
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
    }
    // Local interrupts: ExtINT on LINT0 of the BSP, NMI on LINT1 of every CPU.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);

    let length = (44 + entries.len()) as u16;
    let mut table = Vec::with_capacity(length as usize);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"CARAPACE"); // OEM id
    table.extend_from_slice(b"microVM     "); // product id
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&((vcpus as u16) + 1 + 1 + 24 + 2).to_le_bytes()); // entry count
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length and checksum
    table.extend_from_slice(&entries);
    table[7] = 0u8.wrapping_sub(checksum(&table));
    table
}

/// The 16-byte floating pointer structure that points at the configuration table.
fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut mpf = [0u8; 16];
    mpf[..4].copy_from_slice(b"_MP_");
    mpf[4..8].copy_from_slice(&table_addr.to_le_bytes());
    mpf[8] = 1; // length in 16-byte paragraphs
    mpf[9] = 4; // spec revision 1.4
    mpf[10] = 0u8.wrapping_sub(checksum(&mpf));
    mpf
}

/// Writes the MP floating pointer and configuration table for `vcpus` vCPUs.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MptableError::TooManyVcpus(vcpus));
    }
    let table_addr = MPTABLE_START + 16;
    let table = config_table(vcpus);
    debug_assert!(16 + table.len() as u64 <= super::EBDA_END - MPTABLE_START);
    mem.write_slice(
        &floating_pointer(table_addr as u32),
        GuestAddress(MPTABLE_START),
    )
    .map_err(|_| MptableError::Write)?;
    mem.write_slice(&table, GuestAddress(table_addr))
        .map_err(|_| MptableError::Write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_checksum_to_zero_and_fit_in_base_memory() {
        for vcpus in [1, 2, MAX_VCPUS] {
            let table = config_table(vcpus);
            assert_eq!(checksum(&table), 0);
            assert_eq!(
                u16::from_le_bytes([table[4], table[5]]) as usize,
                table.len()
            );
            assert!(16 + table.len() as u64 <= super::super::EBDA_END - MPTABLE_START);
        }
        assert_eq!(checksum(&floating_pointer(0x9fc10)), 0);
    }

    #[test]
    fn table_lists_every_cpu_and_the_ioapic() {
        let mem = super::super::create_guest_memory(16 << 20).unwrap();
        write(&mem, 4).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
        let table = config_table(4);
        let cpus = table[44..]
            .chunks(20)
            .take(4)
            .filter(|e| e[0] == 0 && e[3] & 1 == 1)
            .count();
        assert_eq!(cpus, 4);
        assert!(matches!(write(&mem, 0), Err(MptableError::TooManyVcpus(0))));
        assert!(matches!(
            write(&mem, 33),
            Err(MptableError::TooManyVcpus(33))
        ));
    }
}
