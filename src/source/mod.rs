//! PostgreSQL as a source: the Singer catalog, the consistent snapshot copy, change data
//! capture from a logical replication slot, and the durable bookmark.

pub mod cdc;
pub mod discover;
pub mod plugin;
pub mod plugin_choice;
pub mod publication_contract;
pub mod slot_setup;
pub mod snapshot;
pub mod state;
