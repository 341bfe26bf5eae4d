//! libFuzzer target `net`: [`carapace_vmm::fuzz::net`] on each input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_vmm::fuzz::net(data));
