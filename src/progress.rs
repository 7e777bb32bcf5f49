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
    /// The planner's row estimate (0 when unknown).
    pub estimate: u64,
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
                    estimate,
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
                let bar = bars.add(ProgressBar::new(table.estimate.max(1)));
                bar.set_style(style.clone());
                bar.set_prefix(table.name.clone());
                bar
            })
            .collect();
        loop {
            for (index, bar) in handles.iter().enumerate() {
                let rows = progress.rows(index);
                if rows > bar.length().unwrap_or(0) {
                    bar.set_length(rows);
                }
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
