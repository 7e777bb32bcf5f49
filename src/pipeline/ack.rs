//! The acknowledgement rule, the one place a LOG_BASED pipeline's watermark moves.
//!
//! A destination says "durable up to this flush" (`ChangeSink::apply` returned), and the
//! stream reports the last commit it received before that flush ([`Acknowledge::durable`]).
//! Only then does the watermark move, in this order: the state file is saved, then the stream
//! sends the position to PostgreSQL as flushed (the standby status update). A crash between
//! the two leaves the slot behind the state file — a replay of idempotent writes, never a lost
//! change. While joining tables are copied beside the stream the watermark stops where the
//! join began (`hold_at`, see [`super::join`]), and how far the stream wrote past it is saved
//! as a replay to come (`replay_until`): until the watermark passes it, a partial update of a
//! row the destination does not hold is expected.

use crate::pg::Lsn;
use crate::source::cdc::Acknowledge;
use crate::source::state::{CdcState, StateError, StateFile};

/// The pipeline's watermark: the state it saves and where it may move.
#[derive(Debug)]
pub(crate) struct Acknowledger<'a> {
    /// The bookmark as saved (`lsn` is the watermark).
    state: CdcState,
    /// Where it is saved.
    file: &'a StateFile,
    /// While joining tables are copied: the watermark moves no further.
    hold_at: Option<Lsn>,
}

impl<'a> Acknowledger<'a> {
    /// The watermark of `state` (as saved in `file`), held at `hold_at` when set.
    pub(crate) fn new(state: CdcState, file: &'a StateFile, hold_at: Option<Lsn>) -> Self {
        Acknowledger {
            state,
            file,
            hold_at,
        }
    }

    /// The bookmark as last saved.
    pub(crate) fn into_state(self) -> CdcState {
        self.state
    }
}

impl Acknowledge for Acknowledger<'_> {
    fn watermark(&self) -> Lsn {
        self.state.lsn
    }

    fn replaying(&self) -> bool {
        self.state.lsn < self.state.replay_until
    }

    fn durable(&mut self, written: Lsn) -> Result<Option<Lsn>, StateError> {
        let lsn = held(written, self.hold_at);
        let replays = written > lsn && written > self.state.replay_until;
        let moves = lsn > self.state.lsn;
        if !moves && !replays {
            return Ok(None);
        }
        if replays {
            self.state.replay_until = written;
        }
        // The state file first: the server hears of the position only once it is saved.
        self.state.lsn = self.state.lsn.max(lsn);
        self.file.save(&self.state)?;
        Ok(moves.then_some(lsn))
    }

    fn copy_again(&mut self, table: &str) -> Result<(), StateError> {
        self.state.resnapshot.insert(table.to_owned());
        self.file.save(&self.state)
    }
}

/// Where the watermark may move once everything up to `written` is durable: no further than
/// `hold` while joining tables are copied beside the stream.
fn held(written: Lsn, hold: Option<Lsn>) -> Lsn {
    match hold {
        Some(hold) => written.min(hold),
        None => written,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(at: u64) -> Lsn {
        Lsn::from_u64(at)
    }

    #[test]
    fn the_watermark_moves_once_saved_and_never_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        let mut ack = Acknowledger::new(CdcState::new("s", lsn(100)), &file, None);
        assert_eq!(ack.durable(lsn(250)).unwrap(), Some(lsn(250)));
        assert_eq!(file.load().unwrap().unwrap().lsn, lsn(250), "saved first");
        assert_eq!(ack.durable(lsn(200)).unwrap(), None, "never back");
        assert_eq!(ack.watermark(), lsn(250));
        assert!(!ack.replaying());
    }

    #[test]
    fn a_held_watermark_stops_and_records_what_was_written_past_it_as_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        let mut ack = Acknowledger::new(CdcState::new("s", lsn(100)), &file, Some(lsn(300)));
        assert_eq!(ack.durable(lsn(200)).unwrap(), Some(lsn(200)));
        assert_eq!(
            ack.durable(lsn(500)).unwrap(),
            Some(lsn(300)),
            "stops at the hold"
        );
        assert_eq!(ack.durable(lsn(700)).unwrap(), None);
        let saved = file.load().unwrap().unwrap();
        assert_eq!((saved.lsn, saved.replay_until), (lsn(300), lsn(700)));
        assert!(
            ack.replaying(),
            "changes up to 700 come again after the restart"
        );
    }

    #[test]
    fn a_table_to_copy_again_is_saved_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        let mut ack = Acknowledger::new(CdcState::new("s", lsn(100)), &file, None);
        ack.copy_again("public.t").unwrap();
        assert!(file
            .load()
            .unwrap()
            .unwrap()
            .resnapshot
            .contains("public.t"));
    }
}
