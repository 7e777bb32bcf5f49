//! PostgreSQL as a source: the Singer catalog and the consistent snapshot copy (change data
//! capture follows).

pub mod discover;
pub mod snapshot;
