//! Property tests (proptest) of the invariants the pipelines rely on:
//!
//! * key encoding is injective: distinct key column values give distinct `_key`s, and every
//!   derived key is one GDN accepts;
//! * the Singer target's STATE watermark never passes a record that is not committed, under any
//!   interleaving of records, STATE messages, batch loads and their completions, and the last
//!   STATE comes out once everything is committed.
//!
//! Coalescing (the final state per key is preserved) is tested beside its private code, in
//! `src/source/cdc/pending_props.rs`. Failing cases are shrunk and printed with their seed;
//! `PROPTEST_CASES` raises the number of cases.

use std::collections::{BTreeSet, HashMap};

use pgferry::gdn::keys::{is_valid_key, DocumentKey};
use pgferry::singer::target_postgres::state::StateTracker;
use proptest::prelude::*;

/// Key column text from a small alphabet full of the characters the encoding must escape
/// (`:` joins parts, `%` escapes) and ones it keeps, so near-collisions are common.
fn part() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('a'),
            Just('A'),
            Just('3'),
            Just(':'),
            Just('%'),
            Just('_'),
            Just(' '),
            Just('/'),
            Just('é'),
            Just('\u{0}'),
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn composite_keys_are_injective_and_valid(
        columns in 2usize..4,
        a in proptest::collection::vec(part(), 4),
        b in proptest::collection::vec(part(), 4),
        long in proptest::bool::ANY,
    ) {
        let mut a = a[..columns].to_vec();
        let mut b = b[..columns].to_vec();
        if long {
            // Past 254 characters the joined key is hashed: still injective.
            a[0] = a[0].repeat(40);
            b[0] = b[0].repeat(40);
        }
        let (key_a, key_b) = (DocumentKey::derive(&a), DocumentKey::derive(&b));
        prop_assert!(is_valid_key(key_a.as_str()), "{:?} → {:?}", a, key_a);
        prop_assert_eq!(a == b, key_a == key_b, "{:?} and {:?} → {:?}, {:?}", a, b, key_a, key_b);
    }

    #[test]
    fn keys_that_differ_only_in_where_parts_split_differ(
        left in part(), middle in part(), right in part(),
    ) {
        // "x:" + "y" and "x" + ":y" must not meet once joined with ':'.
        let one = [format!("{left}{middle}"), right.clone()];
        let two = [left.clone(), format!("{middle}{right}")];
        prop_assert_eq!(
            one == two,
            DocumentKey::derive(&one) == DocumentKey::derive(&two)
        );
    }

    #[test]
    fn single_column_keys_are_injective_and_valid(a in part(), b in part()) {
        let (key_a, key_b) = (DocumentKey::derive(&[&a]), DocumentKey::derive(&[&b]));
        prop_assert!(is_valid_key(key_a.as_str()));
        prop_assert_eq!(a == b, key_a == key_b, "{:?} and {:?}", a, b);
    }
}

#[test]
fn a_single_key_that_is_itself_a_hash_is_the_one_documented_collision() {
    // The old target's rule, kept so its collections keep their keys: an invalid single key
    // becomes its SHA-256 in hex, which is also a valid key text of its own. Only a key column
    // holding exactly that hex string could meet it (see RELIABILITY.md).
    let hashed = DocumentKey::derive(&["a b"]);
    assert_eq!(hashed.as_str().len(), 64);
    assert_eq!(DocumentKey::derive(&[hashed.as_str()]), hashed);
}

/// One step of a Singer target run.
#[derive(Debug, Clone)]
enum Event {
    /// A RECORD of stream `n` arrives (buffered in the stream's batch).
    Record(usize),
    /// A STATE arrives.
    State,
    /// The batch of stream `n` starts loading (at most one load runs at a time).
    Load(usize),
    /// The running load commits.
    Commit,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0usize..3).prop_map(Event::Record),
        2 => Just(Event::State),
        2 => (0usize..3).prop_map(Event::Load),
        2 => Just(Event::Commit),
    ]
}

/// The target's view: batches per stream and the load in flight, as `target/run.rs` keeps them.
#[derive(Default)]
struct Model {
    batches: HashMap<usize, Vec<u64>>,
    in_flight: Option<Vec<u64>>,
    committed: BTreeSet<u64>,
    records: u64,
}

impl Model {
    /// The oldest record not yet committed, computed as `target/run.rs` does.
    fn oldest_pending(&self) -> Option<u64> {
        self.batches
            .values()
            .filter_map(|batch| batch.first().copied())
            .chain(
                self.in_flight
                    .as_ref()
                    .and_then(|load| load.first().copied()),
            )
            .min()
    }
}

/// Checks a released STATE: every record before it is committed, and STATEs come out in order.
fn check_release(
    value: Option<String>,
    states: &[u64],
    model: &Model,
    released: &mut Vec<usize>,
) -> Result<(), TestCaseError> {
    let Some(value) = value else {
        return Ok(());
    };
    let index: usize = value.parse().unwrap_or(usize::MAX);
    prop_assert!(index < states.len(), "unknown STATE {}", value);
    let before = states[index];
    for record in 1..=before {
        prop_assert!(
            model.committed.contains(&record),
            "STATE {} (after {} records) released while record {} is not committed",
            index,
            before,
            record
        );
    }
    if let Some(last) = released.last() {
        prop_assert!(
            index > *last,
            "STATE {} released after STATE {}",
            index,
            last
        );
    }
    released.push(index);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_state_is_released_only_after_every_record_before_it_commits(
        events in proptest::collection::vec(event(), 0..120),
    ) {
        let mut model = Model::default();
        let mut tracker = StateTracker::default();
        // STATE number → records received before it.
        let mut states: Vec<u64> = Vec::new();
        let mut released: Vec<usize> = Vec::new();
        for event in events {
            match event {
                Event::Record(stream) => {
                    model.records += 1;
                    let seq = model.records;
                    model.batches.entry(stream).or_default().push(seq);
                }
                Event::State => {
                    states.push(model.records);
                    tracker.push(model.records, (states.len() - 1).to_string());
                }
                Event::Load(stream) => {
                    if model.in_flight.is_none() {
                        if let Some(batch) = model.batches.remove(&stream) {
                            model.in_flight = Some(batch);
                        }
                    }
                }
                Event::Commit => {
                    if let Some(load) = model.in_flight.take() {
                        model.committed.extend(load);
                    }
                }
            }
            let value = tracker.release(model.oldest_pending());
            check_release(value, &states, &model, &mut released)?;
        }
        // Drain: every batch loads and commits; then the latest STATE must come out.
        if let Some(load) = model.in_flight.take() {
            model.committed.extend(load);
        }
        let streams: Vec<usize> = model.batches.keys().copied().collect();
        for stream in streams {
            if let Some(batch) = model.batches.remove(&stream) {
                model.committed.extend(batch);
            }
        }
        let value = tracker.release(model.oldest_pending());
        check_release(value, &states, &model, &mut released)?;
        prop_assert_eq!(tracker.waiting(), 0);
        if !states.is_empty() {
            prop_assert_eq!(released.last().copied(), Some(states.len() - 1));
        }
    }
}
