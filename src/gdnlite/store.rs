//! Storage (redb for the index and metadata, the document log for bodies) and the
//! group-commit writer.
//!
//! Every write goes through one writer thread. It takes all the writes queued at that moment,
//! applies them in arrival order in one redb transaction (appending document bodies to the
//! log), writes the log, fsyncs it when any of them asked for `waitForSync`, commits the redb
//! transaction once (durably in that case) and then answers all of them, so concurrent requests
//! share the fsyncs. Change-stream messages are written in the same transaction as the index
//! entries they describe, so the stream holds exactly the committed changes, in commit order.
//! Reads use redb's MVCC read transactions plus positional log reads and never wait for the
//! writer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{
    Database, Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::doclog::{DocLog, Pending, Ptr};
use super::documents::{merge_patch, DocBatch, DocItem, DocOutcome, DocResult, WriteKind};
use super::error::{self, ApiError, GdnLiteError};
use super::streams::{
    decode_stored, encode_logged_message, encode_message, MessageBody, StreamOp, SubscriptionState,
};

/// Collection metadata by name.
pub const COLLECTIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("collections");
/// The document index: `collection \0 key` (see [`doc_key`]) → where the document's JSON text
/// is in the document log ([`Ptr`]). Byte keys compare with one memcmp (hot path).
pub const DOCUMENTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("documents");
/// Change-stream messages by `stream \0 sequence number (big endian)`.
pub const MESSAGES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("stream_messages");
/// Subscription positions by (stream, subscription).
pub const SUBSCRIPTIONS: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("subscriptions");
/// Counters that must survive a restart.
pub const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// `collection \0 key` into `buf`. Names and keys never contain NUL, so one collection's
/// keys are contiguous and in key order.
pub fn doc_key_into(buf: &mut Vec<u8>, collection: &str, key: &str) {
    buf.clear();
    buf.extend_from_slice(collection.as_bytes());
    buf.push(0);
    buf.extend_from_slice(key.as_bytes());
}

/// `collection \0 key`.
pub fn doc_key(collection: &str, key: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(collection.len() + key.len() + 1);
    doc_key_into(&mut buf, collection, key);
    buf
}

/// The key range `[name \0, name \1)` that holds everything of one collection or stream.
pub fn prefix_range(name: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = name.as_bytes().to_vec();
    let mut end = start.clone();
    start.push(0);
    end.push(1);
    (start, end)
}

/// `stream \0 seq` with the sequence number big endian, so messages sort in order.
pub fn message_key(stream: &str, seq: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(stream.len() + 9);
    buf.extend_from_slice(stream.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf
}

/// Most document bytes folded into one transaction (bounds the writer's memory).
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// Most writes folded into one transaction.
const MAX_GROUP: usize = 512;

/// What gdnlite knows about one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionMeta {
    /// Numeric id, unique for the life of the data directory.
    pub id: u64,
    /// Collection name.
    pub name: String,
    /// Whether changes are published to the collection's stream.
    pub stream: bool,
    /// Default `waitForSync` of writes that do not say.
    pub wait_for_sync: bool,
    /// Edge collection (type 3) rather than document collection (type 2).
    pub edge: bool,
}

/// One queued write and the channel its answer goes back on.
#[derive(Debug)]
pub enum Op {
    /// Create a collection (its id is assigned by the writer).
    CreateCollection(
        CollectionMeta,
        oneshot::Sender<Result<CollectionMeta, ApiError>>,
    ),
    /// Drop a collection with its documents, stream and subscriptions.
    DropCollection(String, oneshot::Sender<Result<CollectionMeta, ApiError>>),
    /// Remove every document of a collection.
    Truncate(String, oneshot::Sender<Result<CollectionMeta, ApiError>>),
    /// Change `stream` and/or `waitForSync` of a collection.
    SetProperties {
        /// Collection name.
        name: String,
        /// New stream flag.
        stream: Option<bool>,
        /// New waitForSync default.
        wait_for_sync: Option<bool>,
        /// Answer.
        reply: oneshot::Sender<Result<CollectionMeta, ApiError>>,
    },
    /// A batch of document writes on one collection.
    Documents(DocBatch, oneshot::Sender<Result<Vec<DocOutcome>, ApiError>>),
    /// Persist a subscription's acknowledged position.
    SaveSubscription {
        /// Stream name.
        stream: String,
        /// Subscription name.
        subscription: String,
        /// New state.
        state: SubscriptionState,
        /// Answer.
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Stop the writer after the writes queued before it.
    Shutdown,
}

/// A write and whether its caller waits for a durable commit.
#[derive(Debug)]
pub struct Job {
    /// Commit with fsync before answering.
    pub sync: bool,
    /// The write.
    pub op: Op,
}

/// A block of clock values reserved by [`Store::reserve`].
#[derive(Debug)]
pub struct Ticks<'s> {
    store: &'s Store,
    next: u64,
    end: u64,
}

impl Ticks<'_> {
    /// The next value of the block (a fresh one from the clock once the block is used up).
    pub fn take(&mut self) -> u64 {
        if self.next < self.end {
            self.next += 1;
            self.next - 1
        } else {
            self.store.tick()
        }
    }
}

/// Version of the on-disk layout (documents in the log, pointers in redb).
const FORMAT: u64 = 2;

/// A consistent read view: a redb snapshot and the log its pointers refer to.
pub struct Snapshot {
    txn: ReadTransaction,
    log: Arc<DocLog>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Job {
    /// Bytes of document bodies this job appends (for the group size limit).
    fn body_bytes(&self) -> usize {
        match &self.op {
            Op::Documents(batch, _) => batch
                .items
                .iter()
                .map(|item| match item {
                    DocItem::Ready(p) => p.body.len(),
                    DocItem::Failed(..) => 0,
                })
                .sum(),
            _ => 0,
        }
    }
}

/// The database, the writer queue and the commit counter streams wait on.
#[derive(Debug)]
pub struct Store {
    db: Arc<Database>,
    log: Arc<DocLog>,
    queue: mpsc::UnboundedSender<Job>,
    commits: watch::Receiver<u64>,
    clock: Arc<AtomicU64>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) `data_dir/gdnlite.redb` and `data_dir/documents.log` and starts the
    /// writer thread.
    pub fn open(data_dir: &Path, compaction_min_bytes: u64) -> Result<Store, GdnLiteError> {
        std::fs::create_dir_all(data_dir).map_err(|source| GdnLiteError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let storage = |detail: String| GdnLiteError::Storage {
            path: data_dir.to_path_buf(),
            detail,
        };
        let db =
            Database::create(data_dir.join("gdnlite.redb")).map_err(|e| storage(e.to_string()))?;
        let clock_start;
        {
            let txn = db.begin_write().map_err(|e| storage(e.to_string()))?;
            {
                txn.open_table(COLLECTIONS)
                    .map_err(|e| storage(e.to_string()))?;
                txn.open_table(DOCUMENTS)
                    .map_err(|e| storage(e.to_string()))?;
                txn.open_table(MESSAGES)
                    .map_err(|e| storage(e.to_string()))?;
                txn.open_table(SUBSCRIPTIONS)
                    .map_err(|e| storage(e.to_string()))?;
                let mut meta = txn.open_table(META).map_err(|e| storage(e.to_string()))?;
                let format = meta
                    .get("format")
                    .map_err(|e| storage(e.to_string()))?
                    .map(|v| v.value());
                let has_collections = !txn
                    .open_table(COLLECTIONS)
                    .map_err(|e| storage(e.to_string()))?
                    .is_empty()
                    .map_err(|e| storage(e.to_string()))?;
                match format {
                    Some(FORMAT) => {}
                    None if !has_collections => {
                        meta.insert("format", FORMAT)
                            .map_err(|e| storage(e.to_string()))?;
                    }
                    other => {
                        return Err(storage(format!(
                            "the data directory has layout {other:?}, this gdnlite reads layout {FORMAT}; use a fresh --data-dir"
                        )))
                    }
                }
                let stored = meta
                    .get("clock")
                    .map_err(|e| storage(e.to_string()))?
                    .map(|v| v.value())
                    .unwrap_or(0);
                clock_start = stored.max(now_micros()) + 1;
            }
            txn.commit().map_err(|e| storage(e.to_string()))?;
        }
        let (log, log_end) = super::compact::open_log(&db, data_dir, compaction_min_bytes)
            .map_err(|detail| storage(format!("document log: {detail}")))?;
        let log = Arc::new(log);
        let db = Arc::new(db);
        let clock = Arc::new(AtomicU64::new(clock_start));
        let (queue, receiver) = mpsc::unbounded_channel();
        let (commit_tx, commits) = watch::channel(0u64);
        let writer_db = Arc::clone(&db);
        let writer_clock = Arc::clone(&clock);
        let writer_log = Arc::clone(&log);
        let writer = std::thread::Builder::new()
            .name("gdnlite-writer".into())
            .spawn(move || {
                Writer::new(writer_db, writer_log, log_end, writer_clock, commit_tx).run(receiver)
            })
            .map_err(|source| GdnLiteError::DataDir {
                path: data_dir.to_path_buf(),
                source,
            })?;
        Ok(Store {
            db,
            log,
            queue,
            commits,
            clock,
            writer: std::sync::Mutex::new(Some(writer)),
        })
    }

    /// A fresh revision / generated key value: strictly increasing, also across restarts.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves `n` consecutive clock values for one request, so that the keys it generates
    /// are adjacent in the index (concurrent requests would otherwise interleave them and turn
    /// appends into inserts in the middle of index pages).
    pub fn reserve(&self, n: u64) -> Ticks<'_> {
        let next = self.clock.fetch_add(n, Ordering::Relaxed);
        Ticks {
            store: self,
            next,
            end: next + n,
        }
    }

    /// Queues a write; the answer arrives on the op's channel after its commit.
    pub fn submit(&self, sync: bool, op: Op) -> Result<(), ApiError> {
        self.queue
            .send(Job { sync, op })
            .map_err(|_| ApiError::storage("the writer has stopped (server shutting down)"))
    }

    /// A watch that changes after every commit; streams wait on it for new messages.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// A consistent snapshot for reads.
    pub fn read(&self) -> Result<Snapshot, ApiError> {
        Ok(Snapshot {
            txn: self.db.begin_read().map_err(ApiError::storage)?,
            log: Arc::clone(&self.log),
        })
    }

    /// Stops the writer after the queued writes and waits for it.
    pub fn shutdown(&self) {
        let _ = self.queue.send(Job {
            sync: true,
            op: Op::Shutdown,
        });
        let handle = match self.writer.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Metadata of `name` in a read snapshot.
pub fn collection(snap: &Snapshot, name: &str) -> Result<Option<CollectionMeta>, ApiError> {
    let table = snap
        .txn
        .open_table(COLLECTIONS)
        .map_err(ApiError::storage)?;
    let found = table.get(name).map_err(ApiError::storage)?;
    match found {
        Some(bytes) => Ok(Some(decode_meta(bytes.value())?)),
        None => Ok(None),
    }
}

/// Every collection, by name.
pub fn collections(snap: &Snapshot) -> Result<Vec<CollectionMeta>, ApiError> {
    let table = snap
        .txn
        .open_table(COLLECTIONS)
        .map_err(ApiError::storage)?;
    let mut out = Vec::new();
    for entry in table.iter().map_err(ApiError::storage)? {
        let (_, value) = entry.map_err(ApiError::storage)?;
        out.push(decode_meta(value.value())?);
    }
    Ok(out)
}

/// One document's stored JSON.
pub fn document(snap: &Snapshot, collection: &str, key: &str) -> Result<Option<Vec<u8>>, ApiError> {
    let table = snap.txn.open_table(DOCUMENTS).map_err(ApiError::storage)?;
    let found = table
        .get(doc_key(collection, key).as_slice())
        .map_err(ApiError::storage)?;
    match found {
        Some(ptr) => Ok(Some(snap.log.read(decode_ptr(ptr.value())?)?)),
        None => Ok(None),
    }
}

/// A page of a collection's documents by where they lie in the log.
#[derive(Debug, Default)]
pub struct PagePtrs {
    /// The documents' places in the log, in key order.
    pub ptrs: Vec<Ptr>,
    /// The last document's key.
    pub last_key: Option<String>,
    /// Whether more documents follow.
    pub more: bool,
}

/// Where the documents of `collection` with keys after `after` (or from the start) lie in
/// the log, at most `limit` of them in key order.
pub fn document_ptrs_after(
    snap: &Snapshot,
    collection: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<PagePtrs, ApiError> {
    let table = snap.txn.open_table(DOCUMENTS).map_err(ApiError::storage)?;
    let (start, end) = prefix_range(collection);
    let start = match after {
        Some(a) => doc_key(collection, a),
        None => start,
    };
    let prefix = collection.len() + 1;
    let mut page = PagePtrs {
        ptrs: Vec::with_capacity(limit.min(4096)),
        ..PagePtrs::default()
    };
    let mut last: Option<Vec<u8>> = None;
    for entry in table
        .range(start.as_slice()..end.as_slice())
        .map_err(ApiError::storage)?
    {
        let (key, value) = entry.map_err(ApiError::storage)?;
        let key = key.value().get(prefix..).unwrap_or_default();
        if after.is_some_and(|a| a.as_bytes() == key) {
            continue;
        }
        if page.ptrs.len() >= limit {
            page.more = true;
            break;
        }
        page.ptrs.push(decode_ptr(value.value())?);
        match last.as_mut() {
            Some(buffer) => {
                buffer.clear();
                buffer.extend_from_slice(key);
            }
            None => last = Some(key.to_vec()),
        }
    }
    page.last_key = last.map(|key| String::from_utf8_lossy(&key).into_owned());
    Ok(page)
}

/// The keys of `collection` after `after` (or from the start), at most `limit` in key order,
/// and whether more follow: a keys-only page (`RETURN d._key`) reads no document.
pub fn keys_after(
    snap: &Snapshot,
    collection: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<String>, bool), ApiError> {
    let table = snap.txn.open_table(DOCUMENTS).map_err(ApiError::storage)?;
    let (start, end) = prefix_range(collection);
    let start = match after {
        Some(a) => doc_key(collection, a),
        None => start,
    };
    let prefix = collection.len() + 1;
    let mut keys = Vec::with_capacity(limit.min(4096));
    for entry in table
        .range(start.as_slice()..end.as_slice())
        .map_err(ApiError::storage)?
    {
        let (key, _) = entry.map_err(ApiError::storage)?;
        let key = key.value().get(prefix..).unwrap_or_default();
        if after.is_some_and(|a| a.as_bytes() == key) {
            continue;
        }
        if keys.len() >= limit {
            return Ok((keys, true));
        }
        keys.push(String::from_utf8_lossy(key).into_owned());
    }
    Ok((keys, false))
}

/// Longest stretch of the log read in one call when joining documents.
const MAX_READ_RUN: u64 = 4 << 20;

/// Appends the bodies at `ptrs` to `out`, separated by commas (a JSON array's elements).
/// Bodies that lie next to each other in the log — documents written in key order — are read
/// with one call instead of one each.
pub fn read_documents_joined(
    snap: &Snapshot,
    ptrs: &[Ptr],
    out: &mut Vec<u8>,
) -> Result<(), ApiError> {
    let mut scratch = Vec::new();
    let mut first = 0;
    while first < ptrs.len() {
        let start = ptrs[first].offset;
        let mut end = start + u64::from(ptrs[first].len);
        let mut next = first + 1;
        while next < ptrs.len() && ptrs[next].offset == end && end - start < MAX_READ_RUN {
            end += u64::from(ptrs[next].len);
            next += 1;
        }
        let len = usize::try_from(end - start)
            .map_err(|_| ApiError::storage("a document log stretch beyond the address space"))?;
        snap.log.read_range_into(start, len, &mut scratch)?;
        let mut at = 0;
        for (index, ptr) in ptrs[first..next].iter().enumerate() {
            if first + index > 0 {
                out.push(b',');
            }
            let len = ptr.len as usize;
            out.extend_from_slice(&scratch[at..at + len]);
            at += len;
        }
        first = next;
    }
    Ok(())
}

/// Number of documents in `collection`.
pub fn count(snap: &Snapshot, collection: &str) -> Result<u64, ApiError> {
    let table = snap.txn.open_table(DOCUMENTS).map_err(ApiError::storage)?;
    let (start, end) = prefix_range(collection);
    let mut n = 0u64;
    for entry in table
        .range(start.as_slice()..end.as_slice())
        .map_err(ApiError::storage)?
    {
        entry.map_err(ApiError::storage)?;
        n += 1;
    }
    Ok(n)
}

/// Stream messages with sequence numbers `>= from`, at most `limit`.
pub fn messages_from(
    snap: &Snapshot,
    stream: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, ApiError> {
    let table = snap.txn.open_table(MESSAGES).map_err(ApiError::storage)?;
    let start = message_key(stream, from);
    let (_, end) = prefix_range(stream);
    let prefix = stream.len() + 1;
    let mut out = Vec::new();
    for entry in table
        .range(start.as_slice()..end.as_slice())
        .map_err(ApiError::storage)?
    {
        if out.len() >= limit {
            break;
        }
        let (key, value) = entry.map_err(ApiError::storage)?;
        let seq = key
            .value()
            .get(prefix..)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| ApiError::storage("corrupt stream message key"))?;
        // Messages whose payload is a logged document are returned with it inline.
        let message = match decode_stored(value.value()) {
            Some((op, micros, MessageBody::Logged(ptr))) => {
                encode_message(op, micros, &snap.log.read(ptr)?)
            }
            _ => value.value().to_vec(),
        };
        out.push((seq, message));
    }
    Ok(out)
}

/// The sequence number of a stream's newest message (0 when it has none).
pub fn last_message_seq(snap: &Snapshot, stream: &str) -> Result<u64, ApiError> {
    let table = snap.txn.open_table(MESSAGES).map_err(ApiError::storage)?;
    let (start, end) = prefix_range(stream);
    let last = table
        .range(start.as_slice()..end.as_slice())
        .map_err(ApiError::storage)?
        .next_back()
        .transpose()
        .map_err(ApiError::storage)?
        .and_then(|(key, _)| {
            key.value()
                .get(stream.len() + 1..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
        });
    Ok(last.unwrap_or(0))
}

/// Every saved subscription of a stream, by name.
pub fn subscriptions_of(
    snap: &Snapshot,
    stream: &str,
) -> Result<Vec<(String, SubscriptionState)>, ApiError> {
    let table = snap
        .txn
        .open_table(SUBSCRIPTIONS)
        .map_err(ApiError::storage)?;
    let mut out = Vec::new();
    for entry in table.iter().map_err(ApiError::storage)? {
        let (key, value) = entry.map_err(ApiError::storage)?;
        let (owner, name) = key.value();
        if owner != stream {
            continue;
        }
        let state = serde_json::from_slice(value.value())
            .map_err(|e| ApiError::storage(format!("corrupt subscription state: {e}")))?;
        out.push((name.to_owned(), state));
    }
    Ok(out)
}

/// A subscription's persisted state, if it was ever saved.
pub fn subscription(
    snap: &Snapshot,
    stream: &str,
    name: &str,
) -> Result<Option<SubscriptionState>, ApiError> {
    let table = snap
        .txn
        .open_table(SUBSCRIPTIONS)
        .map_err(ApiError::storage)?;
    let found = table.get((stream, name)).map_err(ApiError::storage)?;
    match found {
        Some(bytes) => serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| ApiError::storage(format!("corrupt subscription state: {e}"))),
        None => Ok(None),
    }
}

fn decode_ptr(bytes: &[u8]) -> Result<Ptr, ApiError> {
    Ptr::decode(bytes).ok_or_else(|| ApiError::storage("corrupt document index entry"))
}

/// The `_rev` of a stored document.
pub fn stored_rev(doc: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Rev {
        #[serde(rename = "_rev")]
        rev: Option<String>,
    }
    serde_json::from_slice::<Rev>(doc).ok().and_then(|r| r.rev)
}

fn decode_meta(bytes: &[u8]) -> Result<CollectionMeta, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::storage(format!("corrupt collection metadata: {e}")))
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The answer of one job, sent only after the transaction commits.
enum Reply {
    Meta(
        oneshot::Sender<Result<CollectionMeta, ApiError>>,
        Result<CollectionMeta, ApiError>,
    ),
    Docs(
        oneshot::Sender<Result<Vec<DocOutcome>, ApiError>>,
        Result<Vec<DocOutcome>, ApiError>,
    ),
    Unit(oneshot::Sender<Result<(), ApiError>>, Result<(), ApiError>),
}

impl Reply {
    fn send(self, failure: Option<&ApiError>) {
        match self {
            Reply::Meta(tx, r) => {
                let _ = tx.send(failure.map_or(r, |e| Err(e.clone())));
            }
            Reply::Docs(tx, r) => {
                let _ = tx.send(failure.map_or(r, |e| Err(e.clone())));
            }
            Reply::Unit(tx, r) => {
                let _ = tx.send(failure.map_or(r, |e| Err(e.clone())));
            }
        }
    }
}

/// The open tables of one group transaction.
struct Tables<'t> {
    collections: Table<'t, &'static str, &'static [u8]>,
    documents: Table<'t, &'static [u8], &'static [u8]>,
    messages: Table<'t, &'static [u8], &'static [u8]>,
    subscriptions: Table<'t, (&'static str, &'static str), &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
}

struct Writer {
    db: Arc<Database>,
    log: Arc<DocLog>,
    /// Where the next group's bodies go in the log.
    log_end: u64,
    /// The log holds writes not yet fsynced (from non-durable groups).
    log_unsynced: bool,
    /// Bodies appended by the group being applied.
    pending: Pending,
    clock: Arc<AtomicU64>,
    commits: watch::Sender<u64>,
    commit_count: u64,
    /// Next sequence number per stream, loaded lazily; cleared when a transaction aborts.
    next_seq: HashMap<String, u64>,
}

impl Writer {
    fn new(
        db: Arc<Database>,
        log: Arc<DocLog>,
        log_end: u64,
        clock: Arc<AtomicU64>,
        commits: watch::Sender<u64>,
    ) -> Writer {
        Writer {
            db,
            log,
            log_end,
            log_unsynced: false,
            pending: Pending::default(),
            clock,
            commits,
            commit_count: 0,
            next_seq: HashMap::new(),
        }
    }

    fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Job>) {
        let mut stop = false;
        while !stop {
            let Some(first) = receiver.blocking_recv() else {
                break;
            };
            let mut bytes = first.body_bytes();
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                match receiver.try_recv() {
                    Ok(job) => {
                        bytes += job.body_bytes();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let durable = jobs.iter().any(|j| j.sync);
            let mut ops = Vec::with_capacity(jobs.len());
            for job in jobs {
                if matches!(job.op, Op::Shutdown) {
                    stop = true;
                } else {
                    ops.push(job.op);
                }
            }
            if ops.is_empty() {
                continue;
            }
            let (replies, outcome) = self.apply_group(ops, durable);
            match outcome {
                Ok(()) => {
                    self.commit_count += 1;
                    self.commits.send_replace(self.commit_count);
                    replies.into_iter().for_each(|r| r.send(None));
                }
                Err(e) => {
                    tracing::error!(error = %e.message, "gdnlite: group commit failed");
                    self.next_seq.clear();
                    replies.into_iter().for_each(|r| r.send(Some(&e)));
                }
            }
        }
        // Make the non-durable (202) commits durable before the database closes.
        if self.log_unsynced {
            if let Err(e) = self.log.sync() {
                tracing::error!(error = %e.message, "gdnlite: final log fsync failed");
                return;
            }
        }
        match self.db.begin_write() {
            Ok(mut txn) => {
                txn.set_durability(Durability::Immediate);
                if let Err(e) = txn.commit() {
                    tracing::error!(error = %e, "gdnlite: final durable commit failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "gdnlite: final durable commit failed"),
        }
    }

    fn apply_group(&mut self, ops: Vec<Op>, durable: bool) -> (Vec<Reply>, Result<(), ApiError>) {
        let mut replies = Vec::with_capacity(ops.len());
        let txn = match self.db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                let err = ApiError::storage(e);
                let replies = ops
                    .into_iter()
                    .filter_map(|op| pending_reply(op, &err))
                    .collect();
                return (replies, Err(err));
            }
        };
        let mut txn = txn;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        self.pending.base = self.log_end;
        self.pending.bytes.clear();
        let result = (|| -> Result<(), ApiError> {
            let mut tables = Tables {
                collections: txn.open_table(COLLECTIONS).map_err(ApiError::storage)?,
                documents: txn.open_table(DOCUMENTS).map_err(ApiError::storage)?,
                messages: txn.open_table(MESSAGES).map_err(ApiError::storage)?,
                subscriptions: txn.open_table(SUBSCRIPTIONS).map_err(ApiError::storage)?,
                meta: txn.open_table(META).map_err(ApiError::storage)?,
            };
            let mut ops = ops.into_iter();
            for op in ops.by_ref() {
                match self.apply(&mut tables, op) {
                    Ok(reply) => replies.push(reply),
                    Err((fatal, reply)) => {
                        if let Some(reply) = reply {
                            replies.push(reply);
                        }
                        return Err(fatal);
                    }
                }
            }
            let clock = self.clock.load(Ordering::Relaxed);
            tables
                .meta
                .insert("clock", clock)
                .map_err(ApiError::storage)?;
            Ok(())
        })();
        // The bodies reach the log (and the disk, for a durable group) before the commit
        // that makes pointers to them visible and durable.
        let result = match result.and_then(|()| self.flush_log(durable)) {
            Ok(()) => txn.commit().map_err(ApiError::storage),
            Err(e) => {
                let _ = txn.abort();
                Err(e)
            }
        };
        (replies, result)
    }

    /// Writes the group's bodies to the log; fsyncs it for a durable group.
    fn flush_log(&mut self, durable: bool) -> Result<(), ApiError> {
        if !self.pending.bytes.is_empty() {
            let written = self.log.write_at(&self.pending.bytes, self.pending.base);
            // Even a failed write may have left bytes: never write over them.
            self.log_end = self.pending.base + self.pending.bytes.len() as u64;
            self.pending.bytes.clear();
            if self.pending.bytes.capacity() > 64 * 1024 * 1024 {
                self.pending.bytes.shrink_to(64 * 1024 * 1024);
            }
            written?;
            self.log_unsynced = true;
        }
        if durable && self.log_unsynced {
            self.log.sync()?;
            self.log_unsynced = false;
        }
        Ok(())
    }

    /// A stored body: from this group's appends or from the log.
    fn load(&self, ptr_bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
        let ptr = decode_ptr(ptr_bytes)?;
        match self.pending.get(ptr) {
            Some(bytes) => Ok(bytes.to_vec()),
            None => self.log.read(ptr),
        }
    }

    /// Applies one op. A logical error (no such collection, duplicate key) is part of the
    /// reply; a storage error is fatal for the whole group.
    fn apply(&mut self, t: &mut Tables<'_>, op: Op) -> Result<Reply, (ApiError, Option<Reply>)> {
        match op {
            Op::CreateCollection(meta, reply) => match self.create(t, meta) {
                Ok(r) => Ok(Reply::Meta(reply, r)),
                Err(e) => Err((e.clone(), Some(Reply::Meta(reply, Err(e))))),
            },
            Op::DropCollection(name, reply) => match self.drop_collection(t, &name) {
                Ok(r) => Ok(Reply::Meta(reply, r)),
                Err(e) => Err((e.clone(), Some(Reply::Meta(reply, Err(e))))),
            },
            Op::Truncate(name, reply) => match truncate(t, &name) {
                Ok(r) => Ok(Reply::Meta(reply, r)),
                Err(e) => Err((e.clone(), Some(Reply::Meta(reply, Err(e))))),
            },
            Op::SetProperties {
                name,
                stream,
                wait_for_sync,
                reply,
            } => match set_properties(t, &name, stream, wait_for_sync) {
                Ok(r) => Ok(Reply::Meta(reply, r)),
                Err(e) => Err((e.clone(), Some(Reply::Meta(reply, Err(e))))),
            },
            Op::Documents(batch, reply) => match self.documents(t, batch) {
                Ok(r) => Ok(Reply::Docs(reply, r)),
                Err(e) => Err((e.clone(), Some(Reply::Docs(reply, Err(e))))),
            },
            Op::SaveSubscription {
                stream,
                subscription,
                state,
                reply,
            } => {
                let bytes = serde_json::to_vec(&state).map_err(|e| (ApiError::storage(e), None))?;
                match t
                    .subscriptions
                    .insert((stream.as_str(), subscription.as_str()), bytes.as_slice())
                {
                    Ok(_) => Ok(Reply::Unit(reply, Ok(()))),
                    Err(e) => {
                        let e = ApiError::storage(e);
                        Err((e.clone(), Some(Reply::Unit(reply, Err(e)))))
                    }
                }
            }
            Op::Shutdown => Err((ApiError::storage("shutdown is not a write"), None)),
        }
    }

    fn create(
        &mut self,
        t: &mut Tables<'_>,
        mut meta: CollectionMeta,
    ) -> Result<Result<CollectionMeta, ApiError>, ApiError> {
        if t.collections
            .get(meta.name.as_str())
            .map_err(ApiError::storage)?
            .is_some()
        {
            return Ok(Err(ApiError::new(
                hyper::StatusCode::CONFLICT,
                error::DUPLICATE_NAME,
                format!(
                    "duplicate name: a collection named '{}' exists already",
                    meta.name
                ),
            )));
        }
        let id = t
            .meta
            .get("collection_id")
            .map_err(ApiError::storage)?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
        t.meta
            .insert("collection_id", id)
            .map_err(ApiError::storage)?;
        meta.id = id;
        let bytes = serde_json::to_vec(&meta).map_err(ApiError::storage)?;
        t.collections
            .insert(meta.name.as_str(), bytes.as_slice())
            .map_err(ApiError::storage)?;
        Ok(Ok(meta))
    }

    fn drop_collection(
        &mut self,
        t: &mut Tables<'_>,
        name: &str,
    ) -> Result<Result<CollectionMeta, ApiError>, ApiError> {
        let Some(meta) = load_meta(t, name)? else {
            return Ok(Err(ApiError::collection_not_found(name)));
        };
        t.collections.remove(name).map_err(ApiError::storage)?;
        remove_documents(t, name)?;
        let (start, end) = prefix_range(name);
        t.messages
            .retain_in(start.as_slice()..end.as_slice(), |_, _| false)
            .map_err(ApiError::storage)?;
        let subs: Vec<String> = {
            let mut subs = Vec::new();
            for entry in t
                .subscriptions
                .range((name, "")..)
                .map_err(ApiError::storage)?
            {
                let (key, _) = entry.map_err(ApiError::storage)?;
                let (stream, sub) = key.value();
                if stream != name {
                    break;
                }
                subs.push(sub.to_string());
            }
            subs
        };
        for sub in &subs {
            t.subscriptions
                .remove((name, sub.as_str()))
                .map_err(ApiError::storage)?;
        }
        self.next_seq.remove(name);
        Ok(Ok(meta))
    }

    fn documents(
        &mut self,
        t: &mut Tables<'_>,
        batch: DocBatch,
    ) -> Result<Result<Vec<DocOutcome>, ApiError>, ApiError> {
        let Some(meta) = load_meta(t, &batch.collection)? else {
            return Ok(Err(ApiError::collection_not_found(&batch.collection)));
        };
        let coll = batch.collection.as_str();
        let mut outcomes = Vec::with_capacity(batch.items.len());
        let mut kbuf = Vec::with_capacity(coll.len() + 64);
        for item in batch.items {
            let prepared = match item {
                DocItem::Failed(num, message) => {
                    outcomes.push(DocOutcome::Err(num, message));
                    continue;
                }
                DocItem::Ready(p) => p,
            };
            let key = prepared.key.as_str();
            doc_key_into(&mut kbuf, coll, key);
            // (change, previous document, new document and where it is in the log)
            let (op, old, new_doc) = if let WriteKind::Insert { overwrite } = batch.kind {
                // One index traversal: insert, and put the old pointer back on a key conflict.
                let mark = self.pending.bytes.len();
                let ptr = self.pending.append(&prepared.body);
                let previous = t
                    .documents
                    .insert(kbuf.as_slice(), ptr.encode().as_slice())
                    .map_err(ApiError::storage)?
                    .map(|g| g.value().to_vec());
                match previous {
                    Some(old_ptr) if !overwrite => {
                        t.documents
                            .insert(kbuf.as_slice(), old_ptr.as_slice())
                            .map_err(ApiError::storage)?;
                        self.pending.bytes.truncate(mark);
                        outcomes.push(DocOutcome::Err(
                            error::UNIQUE_CONSTRAINT_VIOLATED,
                            format!("unique constraint violated - in index primary of type primary over '_key'; conflicting key: {key}"),
                        ));
                        continue;
                    }
                    Some(old_ptr) => (
                        StreamOp::Update,
                        Some(self.load(&old_ptr)?),
                        Some((prepared.body, ptr)),
                    ),
                    None => (StreamOp::Insert, None, Some((prepared.body, ptr))),
                }
            } else {
                let Some(old_ptr) = t
                    .documents
                    .get(kbuf.as_slice())
                    .map_err(ApiError::storage)?
                    .map(|v| v.value().to_vec())
                else {
                    outcomes.push(DocOutcome::Err(
                        error::DOCUMENT_NOT_FOUND,
                        "document not found".into(),
                    ));
                    continue;
                };
                let old = self.load(&old_ptr)?;
                if let Some(expected) = &prepared.expected_rev {
                    if stored_rev(&old).as_deref() != Some(expected.as_str()) {
                        outcomes.push(DocOutcome::Err(
                            error::CONFLICT,
                            "conflict, _rev values do not match".into(),
                        ));
                        continue;
                    }
                }
                let new_body = match &batch.kind {
                    WriteKind::Remove => None,
                    WriteKind::Update {
                        keep_null,
                        merge_objects,
                    } => {
                        let mut base: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_slice(&old).map_err(|e| {
                                ApiError::storage(format!(
                                    "corrupt stored document {coll}/{key}: {e}"
                                ))
                            })?;
                        merge_patch(
                            &mut base,
                            prepared.patch.clone().unwrap_or_default(),
                            *keep_null,
                            *merge_objects,
                        );
                        base.insert("_key".into(), key.into());
                        base.insert("_id".into(), format!("{coll}/{key}").into());
                        base.insert("_rev".into(), prepared.rev.clone().into());
                        Some(serde_json::to_vec(&base).map_err(ApiError::storage)?)
                    }
                    WriteKind::Replace | WriteKind::Insert { .. } => Some(prepared.body),
                };
                match new_body {
                    None => {
                        t.documents
                            .remove(kbuf.as_slice())
                            .map_err(ApiError::storage)?;
                        (StreamOp::Delete, Some(old), None)
                    }
                    Some(body) => {
                        let ptr = self.pending.append(&body);
                        t.documents
                            .insert(kbuf.as_slice(), ptr.encode().as_slice())
                            .map_err(ApiError::storage)?;
                        (StreamOp::Update, Some(old), Some((body, ptr)))
                    }
                }
            };
            let old_rev = old.as_deref().and_then(stored_rev);
            if meta.stream {
                let seq = self.next_seq(t, coll)?;
                let message = match &new_doc {
                    Some((_, ptr)) => encode_logged_message(op, now_micros(), *ptr),
                    None => {
                        let payload = serde_json::to_vec(&serde_json::json!({
                            "_key": key,
                            "_id": format!("{coll}/{key}"),
                            "_rev": old_rev,
                            "_delete": true,
                        }))
                        .map_err(ApiError::storage)?;
                        encode_message(op, now_micros(), &payload)
                    }
                };
                t.messages
                    .insert(message_key(coll, seq).as_slice(), message.as_slice())
                    .map_err(ApiError::storage)?;
            }
            outcomes.push(DocOutcome::Ok(DocResult {
                key: prepared.key,
                rev: if op == StreamOp::Delete {
                    old_rev.clone().unwrap_or_default()
                } else {
                    prepared.rev
                },
                old_rev,
                old: if batch.return_old { old } else { None },
                new: if batch.return_new {
                    new_doc.map(|(body, _)| body)
                } else {
                    None
                },
            }));
        }
        Ok(Ok(outcomes))
    }

    fn next_seq(&mut self, t: &mut Tables<'_>, stream: &str) -> Result<u64, ApiError> {
        let next = match self.next_seq.get(stream) {
            Some(n) => *n,
            None => {
                let (start, end) = prefix_range(stream);
                let last = t
                    .messages
                    .range(start.as_slice()..end.as_slice())
                    .map_err(ApiError::storage)?
                    .next_back()
                    .transpose()
                    .map_err(ApiError::storage)?
                    .and_then(|(k, _)| {
                        k.value()
                            .get(stream.len() + 1..)
                            .and_then(|b| <[u8; 8]>::try_from(b).ok())
                            .map(u64::from_be_bytes)
                    });
                last.map_or(1, |l| l + 1)
            }
        };
        self.next_seq.insert(stream.to_string(), next + 1);
        Ok(next)
    }
}

fn pending_reply(op: Op, err: &ApiError) -> Option<Reply> {
    match op {
        Op::CreateCollection(_, tx) | Op::DropCollection(_, tx) | Op::Truncate(_, tx) => {
            Some(Reply::Meta(tx, Err(err.clone())))
        }
        Op::SetProperties { reply, .. } => Some(Reply::Meta(reply, Err(err.clone()))),
        Op::Documents(_, tx) => Some(Reply::Docs(tx, Err(err.clone()))),
        Op::SaveSubscription { reply, .. } => Some(Reply::Unit(reply, Err(err.clone()))),
        Op::Shutdown => None,
    }
}

fn load_meta(t: &Tables<'_>, name: &str) -> Result<Option<CollectionMeta>, ApiError> {
    let found = t.collections.get(name).map_err(ApiError::storage)?;
    match found {
        Some(bytes) => Ok(Some(decode_meta(bytes.value())?)),
        None => Ok(None),
    }
}

fn remove_documents(t: &mut Tables<'_>, name: &str) -> Result<(), ApiError> {
    let (start, end) = prefix_range(name);
    t.documents
        .retain_in(start.as_slice()..end.as_slice(), |_, _| false)
        .map_err(ApiError::storage)?;
    Ok(())
}

fn truncate(t: &mut Tables<'_>, name: &str) -> Result<Result<CollectionMeta, ApiError>, ApiError> {
    let Some(meta) = load_meta(t, name)? else {
        return Ok(Err(ApiError::collection_not_found(name)));
    };
    remove_documents(t, name)?;
    Ok(Ok(meta))
}

fn set_properties(
    t: &mut Tables<'_>,
    name: &str,
    stream: Option<bool>,
    wait_for_sync: Option<bool>,
) -> Result<Result<CollectionMeta, ApiError>, ApiError> {
    let Some(mut meta) = load_meta(t, name)? else {
        return Ok(Err(ApiError::collection_not_found(name)));
    };
    if let Some(s) = stream {
        meta.stream = s;
    }
    if let Some(w) = wait_for_sync {
        meta.wait_for_sync = w;
    }
    let bytes = serde_json::to_vec(&meta).map_err(ApiError::storage)?;
    t.collections
        .insert(name, bytes.as_slice())
        .map_err(ApiError::storage)?;
    Ok(Ok(meta))
}
