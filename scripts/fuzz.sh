#!/usr/bin/env bash
# Long fuzzing runs with cargo-fuzz (libFuzzer) over the decoders' entry points in
# src/fuzz_targets.rs. Needs a nightly-capable compiler; on a stable toolchain,
# RUSTC_BOOTSTRAP=1 is used. The short stable stand-in runs in the tests (tests/fuzz_smoke.rs).
# Usage: scripts/fuzz.sh [seconds per target, default 60] [target ...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then TARGETS=(replication_frame copy_binary value wal2json_v1 pgoutput singer_target); fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in "${TARGETS[@]}"; do
    echo "==> fuzzing $target for ${SECONDS_PER_TARGET}s"
    # New inputs go to a scratch corpus; the committed corpus (fuzz/corpus/$target) is read-only seed.
    mkdir -p "fuzz/artifacts/$target" "/tmp/pgferry-fuzz-corpus/$target"
    cargo fuzz run "$target" "/tmp/pgferry-fuzz-corpus/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=4096
done
