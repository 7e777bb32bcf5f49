//! Singer messages (SCHEMA, RECORD, STATE, ACTIVATE_VERSION) and a bounded line reader.
//!
//! Records are parsed without copying: field names and values borrow from the input line, and
//! each value stays as its raw JSON text ([`RawValue`]), so a number keeps every digit it was
//! written with (`0.07` stays `0.07`, a 38-digit numeric stays 38 digits) — never an `f64`.

mod message;
mod reader;
pub mod tap;
pub mod target_gdn;
pub mod target_postgres;

pub use message::{object_fields, parse_line, Message, RecordMessage, SchemaMessage, SingerError};
pub use reader::{LineBlock, LineReader};

pub use serde_json::value::RawValue;
