//! Progress of a copy: rows per table against the planner's estimate, drawn as one bar per
//! table (rows, rows/s, ETA) when stderr is a terminal, silent otherwise.

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

/// Draws bars for `progress` until it finishes, when stderr is a terminal; else does nothing.
pub fn spawn_display(progress: Arc<CopyProgress>) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(tokio::spawn(async move {
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
        let style = ProgressStyle::with_template(
            "{prefix:>24} {bar:30} {human_pos:>11}/{human_len:11} {per_sec:>14} eta {eta}",
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
        loop {
            for (index, bar) in handles.iter().enumerate() {
                let rows = progress.rows(index);
                let estimate = progress.tables[index].estimate.load(Ordering::Relaxed);
                bar.set_length(rows.max(estimate).max(1));
                bar.set_position(rows);
            }
            if progress.done.load(Ordering::Relaxed) {
                for bar in &handles {
                    bar.finish();
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
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

/// The text of the streaming status line.
fn stream_status(metrics: &crate::metrics::Metrics, changes: u64, rate: f64) -> String {
    format!(
        "{changes} changes ({rate:.0}/s), {} transactions, lag {:.2} s, {} WAL bytes behind, confirmed {}, {} reconnects",
        metrics.transactions.load(Ordering::Relaxed),
        metrics.ingest_lag.last_seconds(),
        metrics.replication_lag_bytes.load(Ordering::Relaxed),
        crate::pg::Lsn::from_u64(metrics.confirmed_lsn.load(Ordering::Relaxed)),
        metrics.reconnects.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_status_line_names_rate_lag_and_position() {
        let metrics = crate::metrics::Metrics::new(crate::metrics::Labels::from_env());
        metrics.transactions.store(12, Ordering::Relaxed);
        metrics.replication_lag_bytes.store(4096, Ordering::Relaxed);
        metrics
            .confirmed_lsn
            .store(0x1_0000_0010, Ordering::Relaxed);
        metrics.ingest_lag.observe(Duration::from_millis(120));
        assert_eq!(
            stream_status(&metrics, 345, 99.6),
            "345 changes (100/s), 12 transactions, lag 0.12 s, 4096 WAL bytes behind, confirmed 1/10, 0 reconnects"
        );
    }
}
