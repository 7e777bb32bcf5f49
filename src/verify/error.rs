//! Why a verification could not finish (as opposed to finding differences, which is its
//! result): what failed, where, and whether the input is at fault.

use crate::decode::copy_binary::CopyBinaryError;
use crate::destination::gdn::document::DocumentError;
use crate::gdn::client::GdnError;
use crate::pg::PgError;
use crate::pipeline::RunError;

use super::canonical::CanonicalError;

/// Why `pgferry verify` could not compare.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The pipeline is of a kind verify does not compare (with the reason).
    #[error("{0}")]
    Unsupported(String),
    /// Something that should not happen did (a task panicked, a server answered nonsense).
    #[error("{0}")]
    Internal(String),
    /// Choosing the tables failed (not found, nothing selected, names that collide).
    #[error(transparent)]
    Selection(Box<RunError>),
    /// A table cannot be turned into documents the way the pipeline would.
    #[error(transparent)]
    Plan(#[from] DocumentError),
    /// The source could not be read.
    #[error("PostgreSQL source, {during}: {source}")]
    Source {
        /// What was being read.
        during: String,
        /// The error.
        source: PgError,
    },
    /// The PostgreSQL destination could not be read.
    #[error("PostgreSQL destination, {during}: {source}")]
    Target {
        /// What was being read.
        during: String,
        /// The error.
        source: PgError,
    },
    /// GDN could not be reached.
    #[error("GDN destination: {0}")]
    GdnConnect(Box<GdnError>),
    /// GDN could not be read.
    #[error("GDN destination, collection {collection:?}: {source}")]
    Gdn {
        /// The collection.
        collection: String,
        /// The error.
        source: Box<GdnError>,
    },
    /// The source's COPY data could not be decoded.
    #[error("decoding the source's rows: {0}")]
    Decode(#[from] CopyBinaryError),
    /// A document (the pipeline's or GDN's) is not the JSON object it must be.
    #[error("{side} document of {place} is not a JSON object: {source}")]
    Document {
        /// `source` or `destination`.
        side: &'static str,
        /// The table or collection.
        place: String,
        /// Where the JSON broke.
        source: CanonicalError,
    },
}

impl VerifyError {
    /// Whether the input (the pipeline file, the selection) is at fault: exit code 2.
    pub fn is_config(&self) -> bool {
        match self {
            VerifyError::Unsupported(_) => true,
            VerifyError::Selection(error) => matches!(
                error.as_ref(),
                RunError::TableNotFound(_)
                    | RunError::NothingSelected { .. }
                    | RunError::Unsupported(_)
            ),
            VerifyError::Plan(error) => matches!(error, DocumentError::NoKey { .. }),
            _ => false,
        }
    }
}

impl From<RunError> for VerifyError {
    fn from(error: RunError) -> VerifyError {
        VerifyError::Selection(Box::new(error))
    }
}

/// A source error while `during`.
pub(crate) fn source(during: impl Into<String>) -> impl FnOnce(PgError) -> VerifyError {
    let during = during.into();
    move |source| VerifyError::Source { during, source }
}

/// A destination error while `during`.
pub(crate) fn target(during: impl Into<String>) -> impl FnOnce(PgError) -> VerifyError {
    let during = during.into();
    move |source| VerifyError::Target { during, source }
}
