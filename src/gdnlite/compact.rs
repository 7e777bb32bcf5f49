//! Opening the document log at startup, and compacting it when most of it is garbage.
//!
//! The log is named by a generation kept in redb (`documents.log` for 0, `documents.N.log`
//! after). Compaction copies every body still referenced (by the document index or by a stream
//! message) into the next generation's file, fsyncs it, then switches all pointers and the
//! generation in one durable redb transaction, then deletes the old file. A crash before that
//! commit leaves the old generation in force; after it, the new one; the file of the other
//! generation is an orphan that the next start deletes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable};

use super::doclog::{DocLog, Ptr};
use super::store::{DOCUMENTS, MESSAGES, META};
use super::streams::{decode_stored, encode_logged_message, MessageBody};

/// The file of log generation `generation`.
pub fn log_path(data_dir: &Path, generation: u64) -> PathBuf {
    if generation == 0 {
        data_dir.join("documents.log")
    } else {
        data_dir.join(format!("documents.{generation}.log"))
    }
}

/// Whether `name` is a document log file name of some generation.
pub fn is_log_name(name: &str) -> bool {
    name == "documents.log"
        || name
            .strip_prefix("documents.")
            .and_then(|rest| rest.strip_suffix(".log"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Opens the current log (compacting it first when it is at least `min_bytes` long and more
/// than half garbage) and returns it with its append point.
pub fn open_log(db: &Database, data_dir: &Path, min_bytes: u64) -> Result<(DocLog, u64), String> {
    let generation = {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        let meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let found = meta.get("log_generation").map_err(|e| e.to_string())?;
        found.map_or(0, |v| v.value())
    };
    remove_orphans(data_dir, generation);
    let path = log_path(data_dir, generation);
    let (log, len) = DocLog::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if len < min_bytes.max(1) {
        return Ok((log, len));
    }
    let referenced = referenced_bodies(db)?;
    let live: u64 = referenced.values().map(|len| u64::from(*len)).sum();
    if len <= 2 * live {
        return Ok((log, len));
    }
    let next = generation + 1;
    let next_path = log_path(data_dir, next);
    let (new_log, _) =
        DocLog::open(&next_path).map_err(|e| format!("{}: {e}", next_path.display()))?;
    // Copy in offset order (sequential reads), in chunks.
    let mut moved: BTreeMap<u64, Ptr> = BTreeMap::new();
    let mut chunk = Vec::with_capacity(8 * 1024 * 1024);
    let mut chunk_base = 0u64;
    for (offset, body_len) in &referenced {
        let body = log
            .read(Ptr {
                offset: *offset,
                len: *body_len,
            })
            .map_err(|e| e.message)?;
        moved.insert(
            *offset,
            Ptr {
                offset: chunk_base + chunk.len() as u64,
                len: *body_len,
            },
        );
        chunk.extend_from_slice(&body);
        if chunk.len() >= 8 * 1024 * 1024 {
            new_log
                .write_at(&chunk, chunk_base)
                .map_err(|e| e.message)?;
            chunk_base += chunk.len() as u64;
            chunk.clear();
        }
    }
    new_log
        .write_at(&chunk, chunk_base)
        .map_err(|e| e.message)?;
    new_log.sync().map_err(|e| e.message)?;
    switch_pointers(db, &moved, next)?;
    drop(log);
    let _ = std::fs::remove_file(&path);
    tracing::info!(
        before = len,
        after = chunk_base + chunk.len() as u64,
        "gdnlite: document log compacted"
    );
    drop(new_log);
    DocLog::open(&next_path).map_err(|e| format!("{}: {e}", next_path.display()))
}

/// Every body the index or a stream message points at: offset → length.
fn referenced_bodies(db: &Database) -> Result<BTreeMap<u64, u32>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    let documents = txn.open_table(DOCUMENTS).map_err(|e| e.to_string())?;
    for entry in documents.iter().map_err(|e| e.to_string())? {
        let (_, value) = entry.map_err(|e| e.to_string())?;
        let ptr = Ptr::decode(value.value()).ok_or("corrupt document index entry")?;
        out.insert(ptr.offset, ptr.len);
    }
    let messages = txn.open_table(MESSAGES).map_err(|e| e.to_string())?;
    for entry in messages.iter().map_err(|e| e.to_string())? {
        let (_, value) = entry.map_err(|e| e.to_string())?;
        if let Some((_, _, MessageBody::Logged(ptr))) = decode_stored(value.value()) {
            out.insert(ptr.offset, ptr.len);
        }
    }
    Ok(out)
}

/// Rewrites every pointer through `moved` and switches to `generation`, in one durable commit.
fn switch_pointers(
    db: &Database,
    moved: &BTreeMap<u64, Ptr>,
    generation: u64,
) -> Result<(), String> {
    let lookup = |ptr: Ptr| {
        moved
            .get(&ptr.offset)
            .copied()
            .ok_or("a referenced body was not copied")
    };
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(Durability::Immediate);
    {
        let mut documents = txn.open_table(DOCUMENTS).map_err(|e| e.to_string())?;
        let mut updates = Vec::new();
        for entry in documents.iter().map_err(|e| e.to_string())? {
            let (key, value) = entry.map_err(|e| e.to_string())?;
            let ptr = Ptr::decode(value.value()).ok_or("corrupt document index entry")?;
            updates.push((key.value().to_vec(), lookup(ptr)?));
        }
        for (key, ptr) in updates {
            documents
                .insert(key.as_slice(), ptr.encode().as_slice())
                .map_err(|e| e.to_string())?;
        }
        let mut messages = txn.open_table(MESSAGES).map_err(|e| e.to_string())?;
        let mut updates = Vec::new();
        for entry in messages.iter().map_err(|e| e.to_string())? {
            let (key, value) = entry.map_err(|e| e.to_string())?;
            if let Some((op, micros, MessageBody::Logged(ptr))) = decode_stored(value.value()) {
                updates.push((
                    key.value().to_vec(),
                    encode_logged_message(op, micros, lookup(ptr)?),
                ));
            }
        }
        for (key, message) in updates {
            messages
                .insert(key.as_slice(), message.as_slice())
                .map_err(|e| e.to_string())?;
        }
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        meta.insert("log_generation", generation)
            .map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

/// Deletes log files of other generations (left by a crash around a compaction).
fn remove_orphans(data_dir: &Path, generation: u64) {
    let current = log_path(data_dir, generation);
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_log_name);
        if is_log && path != current {
            tracing::info!(path = %path.display(), "gdnlite: removing an orphaned document log");
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names() {
        let dir = Path::new("/d");
        assert_eq!(log_path(dir, 0), PathBuf::from("/d/documents.log"));
        assert_eq!(log_path(dir, 3), PathBuf::from("/d/documents.3.log"));
        assert!(is_log_name("documents.log") && is_log_name("documents.12.log"));
        assert!(!is_log_name("documents.x.log") && !is_log_name("documents..log"));
        assert!(!is_log_name("gdnlite.redb") && !is_log_name("documents.log.bak"));
    }
}
