//! Property: coalescing a valid change sequence per key, then writing the one operation left
//! per key, gives the same final documents as writing every change in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::{merge_objects, Op, Pending};

/// One change of a generated sequence (before it is made valid for the key's state).
#[derive(Debug, Clone)]
enum Change {
    Upsert(Map<String, Value>),
    Patch(Map<String, Value>),
    Delete,
}

fn document() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(
        prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")],
        prop_oneof![any::<i32>().prop_map(Value::from), Just(Value::Null)],
        0..4,
    )
    .prop_map(|map| map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        document().prop_map(Change::Upsert),
        document().prop_map(Change::Patch),
        Just(Change::Delete),
    ]
}

fn bytes(document: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(document).unwrap_or_default()
}

fn parse(document: &[u8]) -> Map<String, Value> {
    serde_json::from_slice(document).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn coalescing_preserves_the_final_state_of_every_key(
        initial in proptest::collection::btree_map(0u8..6, document(), 0..6),
        changes in proptest::collection::vec((0u8..6, change()), 0..60),
    ) {
        let collection: Arc<str> = Arc::from("c");
        let mut pending = Pending::default();
        // The state GDN reaches when every change is written in order.
        let mut sequential: BTreeMap<u8, Map<String, Value>> = initial.clone();
        for (key, change) in changes {
            // A PATCH (an UPDATE with unchanged TOASTed columns) only exists for a row that
            // exists; on a row that does not, PostgreSQL would have sent an INSERT first.
            let change = match change {
                Change::Patch(doc) if !sequential.contains_key(&key) => Change::Upsert(doc),
                other => other,
            };
            let op = match &change {
                Change::Upsert(doc) => {
                    sequential.insert(key, doc.clone());
                    Op::Upsert(bytes(doc))
                }
                Change::Patch(patch) => {
                    if let Some(current) = sequential.get_mut(&key) {
                        current.extend(patch.clone());
                    }
                    Op::Patch(bytes(patch))
                }
                Change::Delete => {
                    sequential.remove(&key);
                    Op::Delete
                }
            };
            prop_assert!(pending.put(&collection, "t", key.to_string(), op).is_ok());
        }
        // The state GDN reaches when only the coalesced operation of each key is written.
        let mut coalesced = initial.clone();
        let ops = pending
            .collections
            .remove(&collection)
            .map(|ops| ops.ops)
            .unwrap_or_default();
        for (key, op) in ops {
            let key: u8 = key.parse().unwrap_or(u8::MAX);
            match op {
                Op::Upsert(doc) => {
                    coalesced.insert(key, parse(&doc));
                }
                Op::Patch(patch) => {
                    let base = coalesced.get(&key).cloned();
                    prop_assert!(base.is_some(), "a PATCH of key {} that does not exist", key);
                    let merged = merge_objects(&bytes(&base.unwrap_or_default()), &patch);
                    prop_assert!(merged.is_ok());
                    coalesced.insert(key, parse(&merged.unwrap_or_default()));
                }
                Op::Delete => {
                    coalesced.remove(&key);
                }
                Op::MoveFrom(from, _) => {
                    prop_assert!(false, "no key change was generated, yet a move from {}", from);
                }
            }
        }
        prop_assert_eq!(coalesced, sequential);
    }
}
