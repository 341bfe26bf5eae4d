//! libFuzzer target `rng`: [`carapace_vmm::fuzz::rng`] on each input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_vmm::fuzz::rng(data));
