//! A short, deterministic stand-in for the `fuzz/` targets on the stable toolchain: every corpus
//! file (the seeds and every input a fuzzing run found and fixed), then many mutations of each
//! (bit flips, truncations, splices, random bytes), through the same entry points libFuzzer
//! drives. Long runs: `scripts/fuzz.sh`; results in `RELIABILITY.md`.

use std::path::Path;

use pgferry::fuzz_targets;

/// Mutations tried per corpus file.
const MUTATIONS_PER_SEED: usize = 3_000;

/// xorshift64*: reproducible pseudo-random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
            1 => data.truncate(rng.below(data.len() + 1)),
            2 => {
                let at = rng.below(data.len() + 1);
                let byte = rng.next() as u8;
                data.insert(at, byte);
            }
            3 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] = [0x00, 0x7f, 0x80, 0xff][rng.below(4)];
            }
            4 => {
                let at = rng.below(data.len() + 1);
                let tail: Vec<u8> = data[at..].to_vec();
                data.extend_from_slice(&tail);
            }
            _ => {
                let len = rng.below(64);
                data = (0..len).map(|_| rng.next() as u8).collect();
                if let Some(first) = seed.first() {
                    data.insert(0, *first);
                }
            }
        }
    }
    data
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("corpus {}: {error}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
        .iter()
        .map(|path| std::fs::read(path).expect("corpus file"))
        .collect()
}

fn run(target: &str, entry: fn(&[u8])) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
    for seed in corpus(target) {
        entry(&seed);
        for _ in 0..MUTATIONS_PER_SEED {
            let input = mutate(&seed, &mut rng);
            let result = std::panic::catch_unwind(|| entry(&input));
            assert!(
                result.is_ok(),
                "{target} panicked on input {input:02x?} (add it to fuzz/corpus/{target} once fixed)"
            );
        }
    }
}

#[test]
fn replication_frames_never_panic() {
    run("replication_frame", fuzz_targets::replication_frame);
}

#[test]
fn copy_binary_streams_never_panic() {
    run("copy_binary", fuzz_targets::copy_binary);
}

#[test]
fn wal2json_v1_frames_never_panic() {
    run("wal2json_v1", fuzz_targets::wal2json_v1);
}

#[test]
fn pgoutput_messages_never_panic() {
    run("pgoutput", fuzz_targets::pgoutput);
}

#[test]
fn wal2json_v2_frames_never_panic() {
    run("wal2json_v2", fuzz_targets::wal2json_v2);
}

#[test]
fn singer_lines_never_panic_and_binary_copy_keeps_every_row() {
    run("singer_lines", fuzz_targets::singer_lines);
}

#[test]
fn config_files_never_panic_or_echo_a_secret() {
    run("config_file", fuzz_targets::config_file);
}

#[test]
fn gdnlite_requests_never_panic_and_both_body_parsers_agree() {
    run("gdnlite_request", fuzz_targets::gdnlite_request);
}

#[test]
fn binary_values_decode_to_valid_json_or_a_typed_error() {
    // Every codec over every seed's payload, then the mutations.
    let codecs = fuzz_targets::value_codecs().len();
    for seed in corpus("value") {
        for pick in 0..codecs {
            let mut input = seed.clone();
            if let Some(first) = input.first_mut() {
                *first = pick as u8;
            }
            fuzz_targets::value(&input);
        }
    }
    run("value", fuzz_targets::value);
}

#[test]
fn singer_target_input_never_panics() {
    run("singer_target", fuzz_targets::singer_target);
}
