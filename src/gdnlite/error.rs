//! GDN error bodies and error numbers, and the server's own startup errors.
//!
//! Every error answer has the four fields GDN sends (`error`, `code`, `errorNum`,
//! `errorMessage`); pyC8 reads only `errorNum` and `errorMessage`. Error numbers follow ArangoDB,
//! GDN's lineage, so that clients that switch on them behave as they would against a fabric.

use std::path::PathBuf;

use hyper::StatusCode;

/// The request body is not valid JSON (ArangoDB `ERROR_HTTP_CORRUPTED_JSON`).
pub const CORRUPTED_JSON: u32 = 600;
/// A parameter or body has the wrong shape or type.
pub const BAD_PARAMETER: u32 = 400;
/// Missing or wrong credentials.
pub const UNAUTHORIZED: u32 = 401;
/// No such route.
pub const NOT_FOUND: u32 = 404;
/// The route exists but not with this method.
pub const METHOD_NOT_ALLOWED: u32 = 405;
/// The request body is larger than the server accepts.
pub const REQUEST_TOO_LARGE: u32 = 413;
/// Injected rate limiting.
pub const TOO_MANY_REQUESTS: u32 = 429;
/// Storage or internal failure.
pub const SERVER_ERROR: u32 = 500;
/// Injected unavailability.
pub const SERVICE_UNAVAILABLE: u32 = 503;
/// A per-document failure injected by the fault settings.
pub const INJECTED_FAULT: u32 = 1;
/// Revision precondition failed.
pub const CONFLICT: u32 = 1200;
/// No document with that key.
pub const DOCUMENT_NOT_FOUND: u32 = 1202;
/// A document handle (`collection/key`) that does not fit the request.
pub const DOCUMENT_HANDLE_BAD: u32 = 1205;
/// No collection (or fabric) with that name.
pub const DATA_SOURCE_NOT_FOUND: u32 = 1203;
/// A collection with that name exists already.
pub const DUPLICATE_NAME: u32 = 1207;
/// The collection name breaks the naming rules.
pub const ILLEGAL_NAME: u32 = 1208;
/// A document with that key exists already.
pub const UNIQUE_CONSTRAINT_VIOLATED: u32 = 1210;
/// A document that must name its `_key` does not.
pub const DOCUMENT_KEY_MISSING: u32 = 1226;
/// The `_key` breaks the key rules.
pub const DOCUMENT_KEY_BAD: u32 = 1221;
/// No fabric (database) with that name.
pub const DATABASE_NOT_FOUND: u32 = 1228;
/// A document is not a JSON object.
pub const DOCUMENT_TYPE_INVALID: u32 = 1227;
/// The query is not one of the supported forms.
pub const QUERY_PARSE: u32 = 1501;
/// No cursor with that id (never existed, exhausted, deleted or expired).
pub const CURSOR_NOT_FOUND: u32 = 1600;

/// An error answer in GDN's shape: HTTP status, error number and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// GDN / ArangoDB error number.
    pub error_num: u32,
    /// One sentence for the caller.
    pub message: String,
}

impl ApiError {
    /// An error answer with the given status, number and message.
    pub fn new(status: StatusCode, error_num: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error_num,
            message: message.into(),
        }
    }

    /// 400 with `BAD_PARAMETER`.
    pub fn bad_parameter(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, BAD_PARAMETER, message)
    }

    /// 400 with `CORRUPTED_JSON`, naming the parse error.
    pub fn corrupted_json(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            CORRUPTED_JSON,
            format!("VPackError error: the request body is not valid JSON: {detail}"),
        )
    }

    /// 404 with `DATA_SOURCE_NOT_FOUND` for a collection name.
    pub fn collection_not_found(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            DATA_SOURCE_NOT_FOUND,
            format!("collection or view not found: {name}"),
        )
    }

    /// 500 for a storage failure; the detail is logged, the caller gets one sentence.
    pub fn storage(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            SERVER_ERROR,
            format!("storage error, the write was not applied and may be retried: {detail}"),
        )
    }

    /// The JSON body `{"error":true,"code":…,"errorNum":…,"errorMessage":…}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": true,
            "code": self.status.as_u16(),
            "errorNum": self.error_num,
            "errorMessage": self.message,
        })
    }

    /// The per-document entry of a batch answer (no `code`; `errorCode` too, as the OpenAPI
    /// names it for PATCH).
    pub fn document_entry(error_num: u32, message: &str) -> serde_json::Value {
        serde_json::json!({
            "error": true,
            "errorNum": error_num,
            "errorCode": error_num,
            "errorMessage": message,
        })
    }
}

/// Why gdnlite could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum GdnLiteError {
    /// The listen address could not be bound.
    #[error("could not listen on {addr}: {source}; hint: pick a free port or use 127.0.0.1:0")]
    Bind {
        /// Requested address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The data directory could not be created or opened.
    #[error("could not use data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// redb could not open or initialise the database file.
    #[error("could not open the gdnlite database in {path}: {detail}; hint: is another gdnlite using this directory?")]
    Storage {
        /// The directory.
        path: PathBuf,
        /// redb's message.
        detail: String,
    },
    /// The configuration is not usable.
    #[error("invalid gdnlite configuration: {0}")]
    Config(String),
}
