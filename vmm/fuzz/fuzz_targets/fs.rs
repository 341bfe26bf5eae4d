//! libFuzzer target `fs`: [`carapace_vmm::fuzz::fs`] on each input, under the limits of
//! [`carapace_vmm::fuzz::fs_init`].
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: carapace_vmm::fuzz::fs_init(),
    |data: &[u8]| carapace_vmm::fuzz::fs(data)
);
