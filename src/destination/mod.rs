//! Where data goes: GDN, PostgreSQL, or nowhere (null). Each destination takes the snapshot
//! copy as chunks and the stream as flushes of coalesced row changes, and converts rows into
//! its own form; sources know no destination.

pub mod gdn;
pub mod postgres;
