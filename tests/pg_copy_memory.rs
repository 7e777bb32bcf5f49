//! COPY streams hold a bounded amount of memory: a million rows flow out of one connection and
//! into another while the process's resident set stays flat.

mod support;

use pgferry::pg::copy::CopyFormat;
use pgferry::pg::Connection;
use support::PgCluster;

const ROWS: u64 = 1_000_000;
/// About 140 bytes per row: ~140 MB cross the process in total.
const ROW_SQL: &str = "SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 1000000) g";
/// Allowed growth of the resident set between the first 10% of rows and the end.
const MAX_GROWTH_BYTES: u64 = 32 * 1024 * 1024;

/// This process's resident set size, from `/proc/self/status`.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test]
async fn a_million_rows_copy_out_and_in_with_flat_memory() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE TABLE public.sink (id bigint, payload text)");
    let mut reader = Connection::connect(&cluster.options("postgres"))
        .await
        .expect("reader");
    let mut writer = Connection::connect(&cluster.options("postgres"))
        .await
        .expect("writer");

    let mut copy_out = reader
        .copy_out(&format!("COPY ({ROW_SQL}) TO STDOUT"))
        .await
        .expect("COPY TO STDOUT");
    assert_eq!(copy_out.format(), CopyFormat::Text);
    let mut copy_in = writer
        .copy_in("COPY public.sink FROM STDIN")
        .await
        .expect("COPY FROM STDIN");

    let mut chunks = 0u64;
    let mut bytes = 0u64;
    let mut baseline = None;
    let mut peak_after_baseline = 0u64;
    while let Some(chunk) = copy_out.next().await.expect("COPY data") {
        bytes += chunk.len() as u64;
        copy_in.send(&chunk).await.expect("send COPY data");
        chunks += 1;
        if chunks == ROWS / 10 {
            baseline = Some(resident_bytes());
        }
        if chunks % 50_000 == 0 && baseline.is_some() {
            peak_after_baseline = peak_after_baseline.max(resident_bytes());
        }
    }
    assert_eq!(copy_out.rows(), Some(ROWS), "COPY reported every row");
    assert_eq!(chunks, ROWS, "text COPY sends one message per row");
    let written = copy_in.finish().await.expect("COPY FROM STDIN completes");
    assert_eq!(written, ROWS);
    peak_after_baseline = peak_after_baseline.max(resident_bytes());

    let baseline = baseline.expect("baseline taken");
    let growth = peak_after_baseline.saturating_sub(baseline);
    assert!(
        growth < MAX_GROWTH_BYTES,
        "resident set grew by {growth} bytes while streaming {bytes} bytes (baseline {baseline})"
    );
    assert!(bytes > 100_000_000, "the test moved {bytes} bytes");
    assert_eq!(
        cluster.psql("SELECT count(*), sum(length(payload)) FROM public.sink"),
        format!("{ROWS}|{}", ROWS * 128)
    );
}
