//! The chunked copy keeps a distant destination busy: a worker reads its next chunks while the
//! writes of the ones before are still in flight, and stops at once when one of those writes
//! fails for good. Driven through `copy_tables_into` with a scripted destination.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgferry::pg::catalog::discover;
use pgferry::pg::Connection;
use pgferry::progress::CopyProgress;
use pgferry::source::snapshot::{
    copy_tables_into, pages_per_chunk, plan_ranges, BatchLimits, Chunk, ChunkSink, CopyPlan,
    CopyTask, SnapshotError,
};
use support::PgCluster;
use tokio::sync::watch;

/// How long a chunk's writes wait for the other chunks to be read before giving up on it.
const OVERLAP_WAIT: Duration = Duration::from_secs(5);

/// A destination whose writes finish only once the worker has read every chunk of the table
/// (or after [`OVERLAP_WAIT`]), and which can fail the first chunk's writes.
struct Scripted {
    /// Chunks read so far.
    read: watch::Sender<usize>,
    /// The table's chunks.
    total: usize,
    /// Per chunk, in reading order: its rows, and whether every chunk was read before its
    /// writes finished.
    chunks: Mutex<Vec<(u64, Option<bool>)>>,
    /// Fail the first chunk's writes, and never finish reading the second.
    fail_first: bool,
}

impl Scripted {
    fn new(total: usize, fail_first: bool) -> Scripted {
        Scripted {
            read: watch::Sender::new(0),
            total,
            chunks: Mutex::default(),
            fail_first,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the scripted destination refused the chunk")]
struct Refused;

impl pgferry::source::snapshot::SinkError for Refused {
    fn is_transient(&self) -> bool {
        false
    }
}

impl ChunkSink for Scripted {
    type Worker = ();
    /// The chunk's place in reading order.
    type Pending = usize;

    async fn open_worker(&self, _worker: usize) -> Result<(), SnapshotError> {
        Ok(())
    }

    async fn copy_chunk<'a>(
        &'a self,
        _worker: &'a mut (),
        source: &'a mut Connection,
        task: &'a CopyTask,
        chunk: &'a Chunk,
        _progress: &'a CopyProgress,
    ) -> Result<usize, SnapshotError> {
        let place = self.chunks.lock().unwrap().len();
        if self.fail_first && place == 1 {
            // A long read: only the failure of the first chunk's writes can end it.
            std::future::pending::<()>().await;
        }
        let rows: u64 = source
            .query_one(&format!(
                "SELECT count(*) FROM {}{}",
                task.table.qualified_name(),
                task.chunk_condition(chunk)
            ))
            .await
            .expect("count the chunk's rows")
            .and_then(|row| row.get(0).and_then(|count| count.parse().ok()))
            .expect("a count");
        self.chunks.lock().unwrap().push((rows, None));
        self.read.send_modify(|read| *read += 1);
        Ok(place)
    }

    async fn chunk_durable(&self, place: usize) -> Result<(), SnapshotError> {
        if self.fail_first && place == 0 {
            return Err(Refused.into());
        }
        let mut read = self.read.subscribe();
        let overlapped =
            tokio::time::timeout(OVERLAP_WAIT, read.wait_for(|read| *read == self.total))
                .await
                .is_ok();
        self.chunks.lock().unwrap()[place].1 = Some(overlapped);
        Ok(())
    }

    async fn close_worker(&self, _worker: ()) {}
}

/// A table of about 2,600 pages (three chunks for one worker): its rows and chunks.
fn big_table(cluster: &PgCluster) -> (u64, usize) {
    cluster.psql(
        "CREATE TABLE public.big (id bigint PRIMARY KEY, payload text);
         INSERT INTO public.big SELECT g, repeat('x', 200) FROM generate_series(1, 90000) g;",
    );
    let pages: u64 = cluster
        .psql("SELECT pg_relation_size('public.big') / current_setting('block_size')::bigint")
        .parse()
        .expect("pages");
    let chunks = plan_ranges(pages, pages_per_chunk(pages, 1)).len();
    (90_000, chunks)
}

async fn copy(cluster: &PgCluster, sink: Arc<Scripted>) -> Result<(), SnapshotError> {
    let options = cluster.options("postgres");
    let mut connection = Connection::connect(&options).await.expect("connect");
    let tables = discover(&mut connection, &["public".into()], Some("big"))
        .await
        .expect("discover");
    let task = CopyTask {
        name: tables[0].qualified_name().into(),
        table: tables[0].clone(),
        row_filter: None,
    };
    let plan = CopyPlan {
        workers: 1,
        limits: BatchLimits {
            rows: 1000,
            bytes: 1 << 20,
        },
        snapshot: None,
        progress: Arc::new(CopyProgress::new([("public.big".to_owned(), 0)])),
        ledger: None,
    };
    copy_tables_into(&options, vec![task], sink, plan)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_worker_reads_every_chunk_while_the_first_ones_writes_are_still_in_flight() {
    let cluster = PgCluster::start_default();
    let (rows, total) = big_table(&cluster);
    assert!(total >= 3, "the table is cut in {total} chunk(s)");
    let sink = Arc::new(Scripted::new(total, false));
    copy(&cluster, Arc::clone(&sink)).await.expect("the copy");

    let chunks = sink.chunks.lock().unwrap().clone();
    assert_eq!(chunks.len(), total);
    assert_eq!(chunks.iter().map(|(rows, _)| rows).sum::<u64>(), rows);
    for (place, (_, overlapped)) in chunks.iter().enumerate() {
        assert_eq!(
            *overlapped,
            Some(true),
            "chunk {place}'s writes had to finish before the other chunks were read: {chunks:?}"
        );
    }
}

#[tokio::test]
async fn a_failed_write_ends_the_copy_while_the_next_chunk_is_still_being_read() {
    let cluster = PgCluster::start_default();
    let (_, total) = big_table(&cluster);
    let sink = Arc::new(Scripted::new(total, true));
    let result = tokio::time::timeout(Duration::from_secs(60), copy(&cluster, sink))
        .await
        .expect("the copy ended instead of waiting for the chunk being read");
    let error = result.expect_err("the refused write fails the copy");
    assert!(
        error.to_string().contains("refused the chunk"),
        "unexpected error: {error}"
    );
}
