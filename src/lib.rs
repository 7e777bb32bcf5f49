//! pgferry moves data between PostgreSQL and Macrometa's Global Data Network (GDN).
//!
//! The crate is one library with a thin CLI on top (`src/main.rs`). The map of the parts and
//! the rules that keep data correct live in `DESIGN.md`; each module's header says what it
//! holds and which invariants it keeps.

pub mod check;
pub mod config;
pub mod console;
pub mod decode;
pub mod destination;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod gdn;
pub mod gdnlite;
pub mod metrics;
pub mod pg;
pub mod pipeline;
pub mod progress;
pub mod secret;
pub mod singer;
pub mod source;
pub mod verify;
