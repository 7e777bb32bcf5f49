//! STATE ordering: a STATE is released only when every record received before it is committed.
//!
//! Each record gets a sequence number; a STATE remembers how many records came before it. It
//! may be written once the oldest still-pending record (over all streams) is newer than that.
//! Of several releasable STATEs only the latest is written: it supersedes the others.

use std::collections::VecDeque;

/// STATE values waiting for their records to be committed.
#[derive(Debug, Default)]
pub struct StateTracker {
    waiting: VecDeque<(u64, String)>,
}

impl StateTracker {
    /// Queues a STATE that followed `records_before` records.
    pub fn push(&mut self, records_before: u64, value: String) {
        self.waiting.push_back((records_before, value));
    }

    /// The latest STATE whose records are all committed, given the sequence number of the
    /// oldest pending record (`None`: nothing pending); older ones are dropped.
    pub fn release(&mut self, oldest_pending: Option<u64>) -> Option<String> {
        let mut released = None;
        while let Some((before, _)) = self.waiting.front() {
            if oldest_pending.is_some_and(|oldest| oldest <= *before) {
                break;
            }
            released = self.waiting.pop_front().map(|(_, value)| value);
        }
        released
    }

    /// STATEs still waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_waits_for_every_record_before_it() {
        let mut states = StateTracker::default();
        states.push(0, "s0".into());
        assert_eq!(states.release(Some(1)).as_deref(), Some("s0"));
        // records 1..=3 pending, then s3, then record 4, then s4
        states.push(3, "s3".into());
        states.push(4, "s4".into());
        assert_eq!(states.release(Some(1)), None);
        assert_eq!(states.release(Some(3)), None);
        assert_eq!(states.release(Some(4)).as_deref(), Some("s3"));
        assert_eq!(states.waiting(), 1);
        assert_eq!(states.release(None).as_deref(), Some("s4"));
        assert_eq!(states.release(None), None);
        states.push(9, "a".into());
        states.push(9, "b".into());
        assert_eq!(
            states.release(Some(10)).as_deref(),
            Some("b"),
            "only the latest"
        );
    }
}
