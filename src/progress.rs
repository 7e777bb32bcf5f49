//! Progress of a copy: rows per table against the planner's estimate, drawn as one bar per
//! table (rows, rows/s, ETA) plus a line with the destination's adaptive request limit and
//! round trip when stderr is a terminal, silent otherwise; and the streaming status line.
//! Rates, sizes and times are in human units (`149,558 rows/s`, `10.2 MiB`, `152 ms`), and the
//! streaming line fits [`STREAM_LINE_WIDTH`] columns.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One table's counters.
#[derive(Debug)]
pub struct TableProgress {
    /// `schema.table`.
    pub name: String,
    /// The planner's row estimate (0 while unknown; it may arrive after the copy started).
    pub estimate: AtomicU64,
    /// Rows read so far.
    pub rows: AtomicU64,
}

/// Counters shared by the copy workers and the display.
#[derive(Debug, Default)]
pub struct CopyProgress {
    /// Per table, in task order.
    pub tables: Vec<TableProgress>,
    done: AtomicBool,
}

impl CopyProgress {
    /// Counters for these `(name, estimate)` pairs.
    pub fn new(tables: impl IntoIterator<Item = (String, u64)>) -> CopyProgress {
        CopyProgress {
            tables: tables
                .into_iter()
                .map(|(name, estimate)| TableProgress {
                    name,
                    estimate: AtomicU64::new(estimate),
                    rows: AtomicU64::new(0),
                })
                .collect(),
            done: AtomicBool::new(false),
        }
    }

    /// Adds `rows` to table `index`.
    pub fn add(&self, index: usize, rows: u64) {
        if let Some(table) = self.tables.get(index) {
            table.rows.fetch_add(rows, Ordering::Relaxed);
        }
    }

    /// Sets table `index`'s estimate once it is known (a count that arrives after the copy
    /// started).
    pub fn set_estimate(&self, index: usize, estimate: u64) {
        if let Some(table) = self.tables.get(index) {
            table.estimate.store(estimate, Ordering::Relaxed);
        }
    }

    /// Rows read for table `index`.
    pub fn rows(&self, index: usize) -> u64 {
        self.tables
            .get(index)
            .map_or(0, |table| table.rows.load(Ordering::Relaxed))
    }

    /// Tells the display to finish.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Draws bars for `progress` (and the destination's request limit and round trip from
/// `metrics`) until it finishes, when stderr is a terminal; else does nothing.
pub fn spawn_display(
    progress: Arc<CopyProgress>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(tokio::spawn(async move {
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
        let style = ProgressStyle::with_template(
            "{prefix:>24} {bar:30} {human_pos:>11}/{human_len:11} {msg:>15} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let handles: Vec<ProgressBar> = progress
            .tables
            .iter()
            .map(|table| {
                let bar = bars.add(ProgressBar::new(1));
                bar.set_style(style.clone());
                bar.set_prefix(table.name.clone());
                bar
            })
            .collect();
        let status = bars.add(ProgressBar::new(1));
        status.set_style(
            ProgressStyle::with_template("{prefix:>24} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        loop {
            for (index, bar) in handles.iter().enumerate() {
                let rows = progress.rows(index);
                let estimate = progress.tables[index].estimate.load(Ordering::Relaxed);
                bar.set_length(rows.max(estimate).max(1));
                bar.set_position(rows);
                bar.set_message(rate(bar.per_sec(), "rows"));
            }
            if let Some(line) = requests_status(&metrics) {
                status.set_prefix("destination");
                status.set_message(line);
            }
            if progress.done.load(Ordering::Relaxed) {
                for bar in &handles {
                    bar.finish();
                }
                status.finish();
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}

/// `16 requests in flight allowed, round trip 152 ms`: the adaptive limit and what it reacts
/// to; `None` before a GDN client reported (a null or PostgreSQL destination).
fn requests_status(metrics: &crate::metrics::Metrics) -> Option<String> {
    let limit = metrics.concurrency_limit();
    (limit > 0).then(|| {
        format!(
            "{limit} requests in flight allowed, round trip {}",
            round_trip(metrics.round_trip())
        )
    })
}

/// A count with thousands separators: `1,234,567`.
pub fn count(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A rate rounded to a whole number with separators: `149,558 rows/s` (`0 rows/s` for
/// nothing, NaN or negative).
pub fn rate(per_second: f64, unit: &str) -> String {
    format!("{} {unit}/s", count(whole(per_second)))
}

/// A rate as a whole number (0 for nothing, NaN or negative).
fn whole(per_second: f64) -> u64 {
    if per_second.is_finite() && per_second > 0.0 {
        per_second.round() as u64
    } else {
        0
    }
}

/// A size in binary units with one decimal: `512 B`, `1.5 KiB`, `10.2 MiB`, `3.0 GiB`.
pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if value < 1024 {
        return format!("{value} B");
    }
    let mut scaled = value as f64 / 1024.0;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    format!("{scaled:.1} {}", UNITS[unit])
}

/// A round trip: `0.4 ms`, `152 ms`, `1.25 s`, or `-` before one was measured.
pub fn round_trip(value: Option<Duration>) -> String {
    match value {
        None => "-".into(),
        Some(value) if value < Duration::from_millis(10) => {
            format!("{:.1} ms", value.as_secs_f64() * 1e3)
        }
        Some(value) if value < Duration::from_secs(1) => format!("{} ms", value.as_millis()),
        Some(value) => format!("{:.2} s", value.as_secs_f64()),
    }
}

/// The streaming status line's task; `finish` stops it.
#[derive(Debug)]
pub struct StreamDisplay {
    done: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl StreamDisplay {
    /// Draws the line a last time and stops.
    pub async fn finish(self) {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

/// One status line while streaming (changes, rate, commit-to-GDN lag, WAL behind, confirmed
/// position), when stderr is a terminal; `None` otherwise.
pub fn spawn_stream_display(metrics: Arc<crate::metrics::Metrics>) -> Option<StreamDisplay> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let done = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&done);
    let task = tokio::spawn(async move {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(2));
        bar.set_style(
            ProgressStyle::with_template("{spinner} streaming {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let mut last = (std::time::Instant::now(), 0u64);
        loop {
            let changes = metrics.changes.load(Ordering::Relaxed);
            let elapsed = last.0.elapsed().as_secs_f64().max(1e-3);
            let rate = changes.saturating_sub(last.1) as f64 / elapsed;
            last = (std::time::Instant::now(), changes);
            bar.set_message(stream_status(&metrics, changes, rate));
            bar.tick();
            if stop.load(Ordering::Relaxed) {
                bar.finish();
                return;
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    });
    Some(StreamDisplay { done, task })
}

/// The widest the streaming line gets, spinner and `streaming ` included: it fits a
/// 100-column terminal without wrapping (a wrapped line is redrawn as garbage).
pub const STREAM_LINE_WIDTH: usize = 100;

/// Columns the template puts before the message (`⠋ streaming `).
const STREAM_PREFIX_WIDTH: usize = 12;

/// The text of the streaming status line: changes and rate, commit-to-GDN lag, WAL behind,
/// the request limit and round trip, then (room permitting) reconnects and the confirmed
/// position, each dropped from the end rather than wrapping the line.
fn stream_status(metrics: &crate::metrics::Metrics, changes: u64, per_second: f64) -> String {
    let mut parts = vec![
        format!("{} changes {}/s", count(changes), count(whole(per_second))),
        format!("lag {:.2} s", metrics.ingest_lag.last_seconds()),
        format!(
            "{} behind",
            bytes(metrics.replication_lag_bytes.load(Ordering::Relaxed))
        ),
    ];
    let limit = metrics.concurrency_limit();
    if limit > 0 {
        parts.push(format!("{limit} req {}", round_trip(metrics.round_trip())));
    }
    let reconnects = metrics.reconnects.load(Ordering::Relaxed);
    if reconnects > 0 {
        parts.push(format!("{reconnects} reconnects"));
    }
    parts.push(format!(
        "at {}",
        crate::pg::Lsn::from_u64(metrics.confirmed_lsn.load(Ordering::Relaxed))
    ));
    let room = STREAM_LINE_WIDTH - STREAM_PREFIX_WIDTH;
    let mut line = parts.join(", ");
    while line.chars().count() > room && parts.len() > 1 {
        parts.pop();
        line = parts.join(", ");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_status_line_names_rate_lag_and_position_in_human_units() {
        let metrics = crate::metrics::Metrics::new(crate::metrics::Labels::from_env());
        metrics.transactions.store(12, Ordering::Relaxed);
        metrics
            .replication_lag_bytes
            .store(10_662_984, Ordering::Relaxed);
        metrics
            .confirmed_lsn
            .store(0x1_0000_0010, Ordering::Relaxed);
        metrics.ingest_lag.observe(Duration::from_millis(120));
        assert_eq!(
            stream_status(&metrics, 345, 99.6),
            "345 changes 100/s, lag 0.12 s, 10.2 MiB behind, at 1/10"
        );
        metrics.concurrency.limit.store(16, Ordering::Relaxed);
        metrics
            .concurrency
            .round_trip_micros
            .store(152_400, Ordering::Relaxed);
        metrics.reconnects.store(2, Ordering::Relaxed);
        assert_eq!(
            stream_status(&metrics, 1_234_567, 149_557.974_8),
            "1,234,567 changes 149,558/s, lag 0.12 s, 10.2 MiB behind, 16 req 152 ms, 2 reconnects"
        );
        metrics.reconnects.store(0, Ordering::Relaxed);
        metrics
            .confirmed_lsn
            .store(0x1A_2B3C_4D5E, Ordering::Relaxed);
        assert_eq!(
            stream_status(&metrics, 1_234_567, 149_557.974_8),
            "1,234,567 changes 149,558/s, lag 0.12 s, 10.2 MiB behind, 16 req 152 ms, at 1A/2B3C4D5E"
        );
    }

    #[test]
    fn the_stream_line_fits_100_columns_with_the_largest_values() {
        let metrics = crate::metrics::Metrics::new(crate::metrics::Labels::from_env());
        metrics
            .replication_lag_bytes
            .store(1023 * 1024 * 1024 * 1024, Ordering::Relaxed);
        metrics.confirmed_lsn.store(u64::MAX, Ordering::Relaxed);
        metrics.reconnects.store(12_345, Ordering::Relaxed);
        metrics.concurrency.limit.store(1024, Ordering::Relaxed);
        metrics
            .concurrency
            .round_trip_micros
            .store(12_345_678, Ordering::Relaxed);
        metrics.ingest_lag.observe(Duration::from_secs(299));
        let line = stream_status(&metrics, 999_999_999_999, 9_999_999.0);
        assert!(
            line.chars().count() + STREAM_PREFIX_WIDTH <= STREAM_LINE_WIDTH,
            "{} columns: {line}",
            line.chars().count() + STREAM_PREFIX_WIDTH
        );
        assert!(
            line.contains("req 12.35 s"),
            "the request limit stays: {line}"
        );
    }

    #[test]
    fn counts_rates_sizes_and_round_trips_read_as_people_write_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(149_558), "149,558");
        assert_eq!(count(12_345_678), "12,345,678");
        assert_eq!(rate(149_557.974_8, "rows"), "149,558 rows/s");
        assert_eq!(rate(f64::NAN, "rows"), "0 rows/s");
        assert_eq!(rate(-3.0, "rows"), "0 rows/s");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10_662_984), "10.2 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(round_trip(None), "-");
        assert_eq!(round_trip(Some(Duration::from_micros(420))), "0.4 ms");
        assert_eq!(round_trip(Some(Duration::from_micros(152_400))), "152 ms");
        assert_eq!(round_trip(Some(Duration::from_millis(1250))), "1.25 s");
    }

    #[test]
    fn the_copy_display_names_the_request_limit_once_a_client_reported() {
        let metrics = crate::metrics::Metrics::new(crate::metrics::Labels::from_env());
        assert_eq!(requests_status(&metrics), None);
        metrics.concurrency.limit.store(24, Ordering::Relaxed);
        metrics
            .concurrency
            .round_trip_micros
            .store(51_000, Ordering::Relaxed);
        assert_eq!(
            requests_status(&metrics).as_deref(),
            Some("24 requests in flight allowed, round trip 51 ms")
        );
    }
}
