//! The durable bookmark of a LOG_BASED pipeline: which slot, where its snapshot began, whether
//! the snapshot copy finished, and the LSN up to which GDN durably holds every change.
//! (GDN → PostgreSQL pipelines keep a state of their own kind in the same kind of file, through
//! [`StateFile::load_json`] / [`StateFile::save_json`]; see `pipeline/gdn_to_pg.rs`.)
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves
//! either the old or the new state, never a torn one. The LSN written here is never ahead of
//! what GDN has committed: it is the same watermark sent to PostgreSQL as the flush position.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::pg::Lsn;

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}\nHINT: check that the directory exists and is writable")]
    Io {
        /// The file.
        path: String,
        /// The reason.
        source: std::io::Error,
    },
    /// The file is not a state this version understands.
    #[error("state file {path} is not valid: {detail}\nHINT: move it away to start over (the run then re-copies the tables; nothing is lost)")]
    Invalid {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

/// A LOG_BASED pipeline's bookmark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdcState {
    /// Format version of this file.
    pub version: u32,
    /// The replication slot.
    pub slot: String,
    /// Where the slot's snapshot was taken (streaming starts here after a copy).
    pub consistent_point: Lsn,
    /// Whether the table copy finished.
    pub snapshot_done: bool,
    /// Highest commit LSN durably applied in GDN (with everything before it).
    pub lsn: Lsn,
    /// Changes before this LSN may refer to documents the copy already saw deleted: a
    /// "not found" on PATCH is expected for them (the resume rule), after it an error.
    #[serde(default)]
    pub replay_until: Lsn,
    /// Copy progress per `schema.table` while the copy runs (cleared when it is done).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub chunks: BTreeMap<String, TableChunks>,
    /// The tables copied and streaming, by `schema.table`: a selected table missing here joins
    /// the pipeline (it is copied first). `None` in files of earlier versions, which did not
    /// record them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<BTreeMap<String, SyncedTable>>,
    /// Tables to copy again at the next start (`--resnapshot`, or a column added with a default
    /// while streaming), by `schema.table`; cleared once copied.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub resnapshot: BTreeSet<String>,
}

/// A table that joined a running pipeline: its copy was taken under a snapshot whose changes
/// end at `copied_at`, so the stream applies its changes only from transactions committing at
/// or after that position (the earlier ones are in the copy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedTable {
    /// The copy's consistent point; `None` for tables copied under the slot's own snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_at: Option<Lsn>,
    /// The table's columns when it was copied: a column added since with a default (which
    /// older rows hold without a change in the WAL) makes the table be copied again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// A partitioned table's leaf partitions when it was copied (`schema.table`, sorted): one
    /// attached or detached since (which writes no row changes) makes the table be copied
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<String>>,
}

/// How a table is cut into chunks and which are durably copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChunks {
    /// Pages per chunk, fixed at the first plan so resumed runs cut the same chunks.
    pub pages_per_chunk: u64,
    /// First pages of the chunks whose documents GDN durably holds.
    pub done: BTreeSet<u64>,
}

/// The copy's view of the state: chunk plans and completions, saved as they happen.
#[derive(Debug)]
pub struct ChunkLedger {
    inner: Mutex<(CdcState, StateFile)>,
}

impl ChunkLedger {
    /// A ledger writing into `file`, starting from `state`.
    pub fn new(state: CdcState, file: StateFile) -> ChunkLedger {
        ChunkLedger {
            inner: Mutex::new((state, file)),
        }
    }

    /// The pages per chunk for `table` (the recorded one, else `proposed`, recorded now) and
    /// the chunks already done.
    pub fn plan(&self, table: &str, proposed: u64) -> (u64, BTreeSet<u64>) {
        match self.inner.lock() {
            Ok(mut inner) => {
                let entry = inner
                    .0
                    .chunks
                    .entry(table.to_owned())
                    .or_insert(TableChunks {
                        pages_per_chunk: proposed,
                        done: BTreeSet::new(),
                    });
                (entry.pages_per_chunk, entry.done.clone())
            }
            Err(_) => (proposed, BTreeSet::new()),
        }
    }

    /// Records that the chunk of `table` starting at `start_page` is durably copied.
    pub fn chunk_done(&self, table: &str, start_page: u64) -> Result<(), StateError> {
        let mut inner = self.inner.lock().map_err(|_| StateError::Invalid {
            path: String::new(),
            detail: "the state lock was poisoned by a failed copy worker".into(),
        })?;
        let (state, file) = &mut *inner;
        state
            .chunks
            .entry(table.to_owned())
            .or_default()
            .done
            .insert(start_page);
        file.save(state)
    }

    /// A copy of the state with everything recorded so far.
    pub fn state(&self) -> CdcState {
        match self.inner.lock() {
            Ok(inner) => inner.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// The state with everything recorded so far.
    pub fn into_state(self) -> CdcState {
        match self.inner.into_inner() {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

impl CdcState {
    /// A fresh state for a slot whose snapshot starts at `consistent_point`.
    pub fn new(slot: &str, consistent_point: Lsn) -> CdcState {
        CdcState {
            version: 1,
            slot: slot.to_owned(),
            consistent_point,
            snapshot_done: false,
            lsn: consistent_point,
            replay_until: Lsn::ZERO,
            chunks: BTreeMap::new(),
            tables: None,
            resnapshot: BTreeSet::new(),
        }
    }
}

/// Where the state lives.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state at `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into() }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        move |source| StateError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Reads the state; `None` when there is none yet.
    pub fn load(&self) -> Result<Option<CdcState>, StateError> {
        let Some(state) = self.load_json::<CdcState>()? else {
            return Ok(None);
        };
        if state.version != 1 {
            return Err(StateError::Invalid {
                path: self.path.display().to_string(),
                detail: format!("version {} is not supported", state.version),
            });
        }
        Ok(Some(state))
    }

    /// Reads a state of any kind (the caller checks its version); `None` when there is none.
    pub fn load_json<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, StateError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.io()(error)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|error| StateError::Invalid {
                path: self.path.display().to_string(),
                detail: error.to_string(),
            })
    }

    /// Replaces the state atomically and durably.
    pub fn save(&self, state: &CdcState) -> Result<(), StateError> {
        self.save_json(state)
    }

    /// Replaces the file with a state of any kind, atomically and durably (temporary file,
    /// fsync, rename, fsync of the directory).
    pub fn save_json<T: Serialize>(&self, state: &T) -> Result<(), StateError> {
        let text = serde_json::to_vec_pretty(state).map_err(|error| StateError::Invalid {
            path: self.path.display().to_string(),
            detail: error.to_string(),
        })?;
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        {
            let mut file = std::fs::File::create(&temporary).map_err(self.io())?;
            file.write_all(&text).map_err(self.io())?;
            file.sync_all().map_err(self.io())?;
        }
        std::fs::rename(&temporary, &self.path).map_err(self.io())?;
        let directory = match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Ok(directory) = std::fs::File::open(directory) {
            let _ = directory.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        assert_eq!(file.load().unwrap(), None);
        let mut state = CdcState::new("macrometa_shop", "0/16B3748".parse().unwrap());
        file.save(&state).unwrap();
        state.snapshot_done = true;
        state.lsn = "0/16B3800".parse().unwrap();
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), Some(state));
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_damaged_file_says_how_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        let error = StateFile::new(&path).load().unwrap_err().to_string();
        assert!(error.contains("move it away"), "{error}");
    }
}
