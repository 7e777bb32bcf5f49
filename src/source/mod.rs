//! PostgreSQL as a source: the consistent snapshot copy (change data capture follows).

pub mod snapshot;
