//! libFuzzer target: `pgferry::fuzz_targets::config_file` (the same entry point `tests/fuzz_smoke.rs` runs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgferry::fuzz_targets::config_file(data));
