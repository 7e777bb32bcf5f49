//! Pure decoders: bytes in, typed values out. No I/O and no async here, so that every decoder
//! can be unit-tested from byte fixtures, benchmarked with criterion and fuzzed alone.

pub mod civil;
pub mod commit_time;
pub mod copy_binary;
pub mod image;
pub mod json_out;
pub mod pgoutput;
pub mod replication;
pub mod text_value;
pub mod value;
pub mod wal2json;
pub mod wal2json_v1;
