//! The comparison engine: rows of both sides go into buckets by a hash of their key; a bucket's
//! digest is the count of its rows and the sum (mod 2¹²⁸) of their 128-bit hashes, which does
//! not depend on the order rows arrive in. Equal buckets are equal row sets (up to a 2⁻¹²⁸
//! chance per bucket); only the rows of differing buckets are looked at again ([`Detail`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};

use foldhash::quality::FixedState;

/// The most keys of each kind a report names.
pub const SAMPLE_KEYS: usize = 5;

/// A 128-bit hash of `bytes` (two independent 64-bit foldhash halves), the same in every run.
pub fn hash128(bytes: &[u8]) -> u128 {
    let half = |seed: u64| {
        let mut hasher = FixedState::with_seed(seed).build_hasher();
        hasher.write(bytes);
        hasher.finish()
    };
    (u128::from(half(0x9e37_79b9_7f4a_7c15)) << 64) | u128::from(half(0x2545_f491_4f6c_dd1d))
}

/// The bucket of a row of `buckets`: by its key's hash (keyed tables), else by the row's own
/// hash (keyless tables, whose rows are compared as a multiset).
pub fn bucket_of(key: Option<&str>, row_hash: u128, buckets: usize) -> usize {
    let spread = match key {
        Some(key) => hash128(key.as_bytes()) >> 64,
        None => row_hash >> 64,
    };
    (spread % buckets.max(1) as u128) as usize
}

/// How many buckets a table of about `rows` rows gets so that a bucket holds about
/// `bucket_rows` (at least 16, at most 2²⁰: 48 MiB of digests for both sides).
pub fn bucket_count(rows: u64, bucket_rows: u64) -> usize {
    let wanted = rows.div_ceil(bucket_rows.max(1));
    usize::try_from(wanted.clamp(16, 1 << 20)).unwrap_or(1 << 20)
}

/// One side's digests: per bucket, its rows' count and hash sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    sums: Vec<u128>,
    counts: Vec<u64>,
}

impl Tally {
    /// Empty digests of `buckets` buckets.
    pub fn new(buckets: usize) -> Tally {
        Tally {
            sums: vec![0; buckets.max(1)],
            counts: vec![0; buckets.max(1)],
        }
    }

    /// Number of buckets.
    pub fn buckets(&self) -> usize {
        self.sums.len()
    }

    /// Counts one row.
    pub fn add(&mut self, key: Option<&str>, row_hash: u128) {
        let bucket = bucket_of(key, row_hash, self.sums.len());
        self.sums[bucket] = self.sums[bucket].wrapping_add(row_hash);
        self.counts[bucket] += 1;
    }

    /// Rows counted in `bucket`.
    pub fn count(&self, bucket: usize) -> u64 {
        self.counts.get(bucket).copied().unwrap_or(0)
    }

    /// The buckets whose digests differ from `other`'s, each with `other`'s row count (the
    /// rows a detail pass holds for it).
    pub fn differing(&self, other: &Tally) -> Vec<(usize, u64)> {
        (0..self.sums.len())
            .filter(|&bucket| {
                self.sums[bucket] != other.sums[bucket]
                    || self.counts[bucket] != other.counts[bucket]
            })
            .map(|bucket| (bucket, other.counts[bucket]))
            .collect()
    }
}

/// Splits differing buckets into groups whose destination rows stay within `most_rows` (a
/// single larger bucket is a group of its own): each group is one more read of both sides.
pub fn groups(differing: &[(usize, u64)], most_rows: u64) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut held = 0u64;
    for &(bucket, rows) in differing {
        match out.last_mut() {
            Some(group) if held + rows <= most_rows => {
                group.push(bucket);
                held += rows;
            }
            _ => {
                out.push(vec![bucket]);
                held = rows;
            }
        }
    }
    out
}

/// Tells which attributes of a source row and a destination row differ.
pub type Describe<'a> = &'a (dyn Fn(&[u8], &[u8]) -> Vec<AttributeDiff> + Sync);

/// One attribute (or column) whose values differ, both shortened for display.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttributeDiff {
    /// The attribute or column.
    pub name: String,
    /// Its value in the source (as the pipeline converts it), `None` when absent.
    pub source: Option<String>,
    /// Its value in the destination, `None` when absent.
    pub destination: Option<String>,
}

/// A key whose row differs, with what differs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DifferentRow {
    /// The key (a document `_key`, or the key columns' text joined by `, `).
    pub key: String,
    /// The attributes that differ.
    pub attributes: Vec<AttributeDiff>,
}

/// How a key differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// In the source only.
    Missing,
    /// In the destination only.
    Extra,
    /// In both, with different values.
    Different,
}

/// What the detail passes found in one table.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Source rows with no destination row (keyless: surplus source copies).
    pub missing: u64,
    /// Destination rows with no source row (keyless: surplus destination copies).
    pub extra: u64,
    /// Keys whose rows differ (keyed only).
    pub different: u64,
    /// The smallest missing keys.
    pub missing_keys: BTreeMap<String, ()>,
    /// The smallest extra keys.
    pub extra_keys: BTreeMap<String, ()>,
    /// The smallest different keys, with their differences.
    pub different_rows: BTreeMap<String, Vec<AttributeDiff>>,
    /// Fingerprints ([`hash128`]) of every differing key and how it differs, for the
    /// re-check after the pipeline settles.
    pub keys: HashMap<u128, Kind>,
}

impl Found {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }

    /// Keeps only the keys that also differed in `earlier` (a key that differs only now was
    /// written meanwhile), and counts again.
    pub fn retain_keys(&mut self, earlier: &Found) {
        self.keys.retain(|key, _| earlier.keys.contains_key(key));
        let kept = |key: &String| earlier.keys.contains_key(&hash128(key.as_bytes()));
        self.missing_keys.retain(|key, _| kept(key));
        self.extra_keys.retain(|key, _| kept(key));
        self.different_rows.retain(|key, _| kept(key));
        let count = |kind: Kind| self.keys.values().filter(|&&k| k == kind).count() as u64;
        self.missing = count(Kind::Missing);
        self.extra = count(Kind::Extra);
        self.different = count(Kind::Different);
    }

    /// The buckets (of `buckets`) the differing keys fall into.
    pub fn buckets(&self, buckets: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .keys
            .keys()
            .map(|fingerprint| ((fingerprint >> 64) % buckets.max(1) as u128) as usize)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Keeps the `SAMPLE_KEYS` smallest keys.
fn sample<V>(samples: &mut BTreeMap<String, V>, key: &str, value: impl FnOnce() -> V) {
    if samples.len() < SAMPLE_KEYS {
        samples.insert(key.to_owned(), value());
    } else if samples
        .last_key_value()
        .is_some_and(|(last, _)| key < last.as_str())
    {
        samples.pop_last();
        samples.insert(key.to_owned(), value());
    }
}

/// A detail pass over one group of buckets: the destination's rows of the group are held
/// (key → hash and row), then the source's rows of the group are matched against them.
#[derive(Debug)]
pub struct Detail {
    buckets: usize,
    group: Vec<bool>,
    keyed: HashMap<String, (u128, Box<[u8]>)>,
    keyless: HashMap<u128, i64>,
}

impl Detail {
    /// A pass over `group`, of a table split into `buckets` buckets.
    pub fn new(buckets: usize, group: &[usize]) -> Detail {
        let mut wanted = vec![false; buckets.max(1)];
        for &bucket in group {
            if let Some(slot) = wanted.get_mut(bucket) {
                *slot = true;
            }
        }
        Detail {
            buckets,
            group: wanted,
            keyed: HashMap::new(),
            keyless: HashMap::new(),
        }
    }

    /// Whether a row falls into this pass's buckets.
    pub fn wants(&self, key: Option<&str>, row_hash: u128) -> bool {
        self.group
            .get(bucket_of(key, row_hash, self.buckets))
            .copied()
            .unwrap_or(false)
    }

    /// Holds a destination row (of this pass's buckets). A key seen twice keeps the first row
    /// and counts the second as extra (a collection cannot hold two, a target table should not).
    pub fn destination(
        &mut self,
        key: Option<&str>,
        row_hash: u128,
        row: &[u8],
        found: &mut Found,
    ) {
        match key {
            Some(key) => {
                if self.keyed.contains_key(key) {
                    found.extra += 1;
                    found.keys.insert(hash128(key.as_bytes()), Kind::Extra);
                    sample(&mut found.extra_keys, key, || ());
                } else {
                    self.keyed.insert(key.to_owned(), (row_hash, row.into()));
                }
            }
            None => *self.keyless.entry(row_hash).or_default() -= 1,
        }
    }

    /// Matches a source row (of this pass's buckets) with the destination's; `describe`
    /// tells which attributes of two rows differ.
    pub fn source(
        &mut self,
        key: Option<&str>,
        row_hash: u128,
        row: &[u8],
        found: &mut Found,
        describe: Describe<'_>,
    ) {
        let Some(key) = key else {
            *self.keyless.entry(row_hash).or_default() += 1;
            return;
        };
        match self.keyed.remove(key) {
            None => {
                found.missing += 1;
                found.keys.insert(hash128(key.as_bytes()), Kind::Missing);
                sample(&mut found.missing_keys, key, || ());
            }
            Some((hash, _)) if hash == row_hash => {}
            Some((_, held)) => {
                found.different += 1;
                found.keys.insert(hash128(key.as_bytes()), Kind::Different);
                sample(&mut found.different_rows, key, || describe(row, &held));
            }
        }
    }

    /// Ends the pass: destination rows no source row matched are extra.
    pub fn finish(self, found: &mut Found) {
        for key in self.keyed.keys() {
            found.extra += 1;
            found.keys.insert(hash128(key.as_bytes()), Kind::Extra);
            sample(&mut found.extra_keys, key, || ());
        }
        for surplus in self.keyless.values() {
            if *surplus > 0 {
                found.missing += surplus.unsigned_abs();
            } else {
                found.extra += surplus.unsigned_abs();
            }
        }
    }
}

/// Shortens a value for display: at most `MAX` characters, with `…` when cut.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX - 1).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_do_not_depend_on_order() {
        let rows = [("a", 1u128), ("b", 2), ("c", u128::MAX)];
        let mut forward = Tally::new(4);
        let mut backward = Tally::new(4);
        for (key, hash) in rows {
            forward.add(Some(key), hash);
        }
        for (key, hash) in rows.iter().rev() {
            backward.add(Some(key), *hash);
        }
        assert_eq!(forward, backward);
        assert!(forward.differing(&backward).is_empty());
        backward.add(Some("d"), 5);
        assert_eq!(forward.differing(&backward).len(), 1);
    }

    #[test]
    fn detail_names_missing_extra_and_different_keys() {
        let mut found = Found::default();
        let mut detail = Detail::new(1, &[0]);
        detail.destination(Some("same"), 1, b"s", &mut found);
        detail.destination(Some("changed"), 2, b"old", &mut found);
        detail.destination(Some("extra"), 3, b"e", &mut found);
        let describe = |a: &[u8], b: &[u8]| {
            vec![AttributeDiff {
                name: "v".into(),
                source: Some(String::from_utf8_lossy(a).into()),
                destination: Some(String::from_utf8_lossy(b).into()),
            }]
        };
        detail.source(Some("same"), 1, b"s", &mut found, &describe);
        detail.source(Some("changed"), 9, b"new", &mut found, &describe);
        detail.source(Some("missing"), 4, b"m", &mut found, &describe);
        detail.finish(&mut found);
        assert_eq!((found.missing, found.extra, found.different), (1, 1, 1));
        assert!(found.missing_keys.contains_key("missing"));
        assert!(found.extra_keys.contains_key("extra"));
        assert_eq!(
            found.different_rows["changed"][0].destination.as_deref(),
            Some("old")
        );
        assert_eq!(found.keys.len(), 3);
        assert_eq!(found.buckets(1), vec![0]);
        // Only "changed" still differs later: the others were in flight.
        let mut later = Found::default();
        let mut again = Detail::new(1, &[0]);
        again.destination(Some("changed"), 2, b"old", &mut later);
        again.destination(Some("new"), 7, b"n", &mut later);
        again.source(Some("changed"), 9, b"new", &mut later, &describe);
        again.finish(&mut later);
        later.retain_keys(&found);
        assert_eq!((later.missing, later.extra, later.different), (0, 0, 1));
        assert!(later.extra_keys.is_empty());
    }

    #[test]
    fn keyless_rows_compare_as_multisets() {
        let mut found = Found::default();
        let mut detail = Detail::new(1, &[0]);
        for hash in [1u128, 1, 2] {
            detail.destination(None, hash, b"", &mut found);
        }
        for hash in [1u128, 2, 2, 3] {
            detail.source(None, hash, b"", &mut found, &|_, _| Vec::new());
        }
        detail.finish(&mut found);
        assert_eq!((found.missing, found.extra), (2, 1));
    }

    #[test]
    fn samples_keep_the_smallest_keys_and_groups_respect_the_bound() {
        let mut samples = BTreeMap::new();
        for key in ["k9", "k1", "k8", "k2", "k7", "k3", "k0"] {
            sample(&mut samples, key, || ());
        }
        let kept: Vec<&str> = samples.keys().map(String::as_str).collect();
        assert_eq!(kept, ["k0", "k1", "k2", "k3", "k7"]);
        assert_eq!(
            groups(&[(0, 5), (1, 5), (2, 20), (3, 1)], 10),
            vec![vec![0, 1], vec![2], vec![3]]
        );
        assert_eq!(bucket_count(0, 10_000), 16);
        assert_eq!(bucket_count(2_000_000, 10_000), 200);
    }
}
