//! libFuzzer target `blk`: [`carapace_vmm::fuzz::blk`] on each input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_vmm::fuzz::blk(data));
