//! A column value of a row image as a change carries it, before any destination converts it:
//! shared by the source that decodes changes and the destinations that encode them.

/// One value of a logical-decoding row image: PostgreSQL's text output (wal2json, pgoutput's
/// default) or the type's binary send form (pgoutput with `binary`), decoded by the same
/// codecs as the snapshot's text and binary COPY paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageValue<'a> {
    /// Text output.
    Text(&'a str),
    /// Binary send form (the same bytes as a binary COPY field).
    Binary(&'a [u8]),
}
