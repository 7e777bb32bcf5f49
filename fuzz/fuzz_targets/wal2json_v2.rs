//! libFuzzer target: `pgferry::fuzz_targets::wal2json_v2` (the same entry point `tests/fuzz_smoke.rs` runs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgferry::fuzz_targets::wal2json_v2(data));
