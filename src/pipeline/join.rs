//! Tables that join a running LOG_BASED pipeline (newly selected, added to the publication, or
//! asked for again with `--resnapshot`) are copied without a new slot and without copying the
//! others again.
//!
//! The invariant (PostgreSQL's own table sync, `tablesync.c`, works the same way): a temporary
//! slot is created beside the pipeline's slot; its consistent point `J` splits the joining
//! table's history in two. Its exported snapshot holds exactly the transactions that committed
//! before `J`, and the table is copied under it; the pipeline's stream then skips the table's
//! changes of transactions committing before `J` (they are in the copy) and applies those at
//! or after `J`, in commit order, after the copy. What the destination held of the table
//! before and the snapshot no longer has (rows deleted since an earlier copy) is removed under
//! the same snapshot. `J` is saved in the state file with the table only once the copy is
//! durable, so a crash at any point copies the table again under a fresh snapshot.
//!
//! In a run without end the other tables keep streaming while the snapshot is taken (which
//! waits for transactions in progress) and the copy runs: the stream skips every change of the
//! joining tables, and the pipeline holds the watermark where it was when the join began,
//! `W ≤ J` (`hold_at` of [`super::ack::Acknowledger`]), while the others' changes are written
//! as usual and how far they were written is recorded (`replay_until`). Once the copy is
//! durable the joined tables are recorded with `J` and the stream starts again from `W`: the joined tables' changes from `J` on arrive in commit
//! order, and the others' changes since `W` are applied a second time, which leaves them as
//! they were (a replay, as after a reconnect). A batch run (`--once`) copies first, then
//! streams.

use std::sync::Arc;

use super::mirror;
use super::{copy_step, Prepared, RunError};
use crate::config::PipelineConfig;
use crate::metrics::Metrics;
use crate::pg::replication::{ReplicationClient, SlotSnapshot};
use crate::pg::{ConnectOptions, Lsn};
use crate::source::snapshot::CopySummary;

/// What copying the joining tables gave: where their changes start, and the copy's summary.
pub(crate) struct Joined {
    /// The consistent point: their changes from transactions committing at or after it are
    /// streamed, the earlier ones are in the copy.
    pub(crate) copied_at: Lsn,
    /// The copy.
    pub(crate) copy: CopySummary,
}

impl Prepared {
    /// The same preparation restricted to the tasks `keep` marks.
    pub(crate) fn only(&self, keep: &[bool]) -> Prepared {
        let pick = |index: usize| keep.get(index).copied().unwrap_or(false);
        Prepared {
            destination: self.destination.only(keep),
            limits: self.limits,
            tasks: self
                .tasks
                .iter()
                .enumerate()
                .filter(|(index, _)| pick(*index))
                .map(|(_, task)| task.clone())
                .collect(),
        }
    }
}

/// A temporary slot's name beside `slot`: valid (lowercase letters, digits, `_`), at most 63
/// bytes, unique per process.
fn temporary_slot(slot: &str) -> String {
    let suffix = format!("_join_{}", std::process::id());
    let mut base: String = slot
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() {
                ch.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    base.truncate(63 - suffix.len());
    base + &suffix
}

/// A joining tables' copy whose snapshot is taken: the temporary slot that holds it open,
/// and what to copy under it.
pub(crate) struct JoinCopy {
    /// The connection that created the temporary slot; its snapshot lives while it is idle,
    /// and the slot goes with it.
    holder: ReplicationClient,
    /// The joining tables' part of the preparation.
    subset: Prepared,
    /// The temporary slot's consistent point.
    copied_at: Lsn,
    /// The exported snapshot the copy runs under.
    snapshot: Option<String>,
}

/// Takes the snapshot the joining tables (`subset`, see [`Prepared::only`]) are copied under:
/// a temporary slot beside the pipeline's, whose consistent point splits their history.
pub(crate) async fn begin(
    config: &PipelineConfig,
    subset: Prepared,
    options: &ConnectOptions,
) -> Result<JoinCopy, RunError> {
    let mut holder = ReplicationClient::connect(options).await?;
    // pgoutput is in every server's allow-list; the slot is never read, only its snapshot.
    let name = temporary_slot(&config.source.replication_slot);
    let created = holder
        .create_logical_slot(&name, "pgoutput", SlotSnapshot::Export, true)
        .await?;
    let names: Vec<String> = subset
        .tasks
        .iter()
        .map(|task| task.table.qualified_name())
        .collect();
    tracing::info!(tables = %names.join(", "), copied_at = %created.consistent_point, "tables join the pipeline: copying them under a snapshot of their own while the slot keeps their later changes");
    Ok(JoinCopy {
        holder,
        subset,
        copied_at: created.consistent_point,
        snapshot: created.snapshot_name,
    })
}

impl JoinCopy {
    /// Copies the joining tables and removes what their destinations hold that the snapshot
    /// does not; dropping the future before it ends drops the temporary slot, and nothing is
    /// recorded.
    pub(crate) async fn copy(
        self,
        config: &PipelineConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<Joined, RunError> {
        let JoinCopy {
            holder,
            subset,
            copied_at,
            snapshot,
        } = self;
        let destination = mirror::Copied::of(&subset);
        let copy = copy_step(config, subset, metrics, snapshot.clone(), None).await?;
        let removed = destination
            .remove_stale(
                &config.source.connect_options(),
                config.numeric_mode,
                snapshot.as_deref(),
            )
            .await?;
        if removed.total() > 0 {
            tracing::info!(
                removed = removed.total(),
                "removed what the joining tables' destinations held that their snapshot does not"
            );
        }
        holder.into_inner().close().await;
        Ok(Joined { copied_at, copy })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_slot_names_are_valid_and_short() {
        let name = temporary_slot("macrometa_Shop-DB");
        assert!(name.starts_with("macrometa_shop_db_join_"), "{name}");
        let long = temporary_slot(&"x".repeat(80));
        assert!(long.len() <= 63, "{long}");
        assert!(long
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'));
    }
}
