//! libFuzzer target `vsock`: [`carapace_vmm::fuzz::vsock`] on each input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_vmm::fuzz::vsock(data));
