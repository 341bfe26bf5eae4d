//! libFuzzer target `mmio`: [`carapace_vmm::fuzz::mmio`] on each input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_vmm::fuzz::mmio(data));
