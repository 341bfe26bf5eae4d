//! libFuzzer target `request`: [`carapace_agent::fuzz::request`] on each input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_agent::fuzz::request(data));
