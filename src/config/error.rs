//! Configuration errors: what is wrong, where, and how to fix it. Never the secret values.

/// A configuration file or value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("config file {path} is not valid JSON at line {line}, column {column}: {detail}")]
    Json {
        /// The file.
        path: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's message.
        detail: String,
    },
    /// A key the program does not know.
    #[error("unknown config key {key:?}{suggestion}\nHINT: known keys are: {known}")]
    UnknownKey {
        /// The unknown key.
        key: String,
        /// `; did you mean "…"?` or empty.
        suggestion: String,
        /// The known keys, comma separated.
        known: String,
    },
    /// A required key is missing.
    #[error("missing required config key {key:?}: {hint}")]
    Missing {
        /// The missing key.
        key: &'static str,
        /// What it is for.
        hint: &'static str,
    },
    /// A key has a value of the wrong type or out of range.
    #[error("invalid value for config key {key:?}: {detail}")]
    Invalid {
        /// The key at fault.
        key: String,
        /// What was expected.
        detail: String,
    },
}
