#!/usr/bin/env bash
# Long fuzzing runs with cargo-fuzz (libFuzzer, AddressSanitizer) over the entry points in
# src/fuzz_targets.rs, one target after the other (never two at once), each for a given time.
# The committed corpus (fuzz/corpus/<target>) seeds each run and is not modified; new inputs go
# to a scratch corpus; a crash, hang (> 10 s per input) or allocation over 512 MiB is saved in
# fuzz/artifacts/<target>/ and fails the script. Prints the executions per target at the end.
#
# Only a stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it accept the -Z flags cargo-fuzz
# passes (sanitizer, coverage). cargo-fuzz itself is installed from crates.io when missing.
# The short stable stand-in runs in the tests: cargo test --test fuzz_smoke.
#
# Usage: scripts/fuzz.sh [seconds per target, default 600] [target ...]
#   FUZZ_NICE=19 (default) runs the fuzzer at the lowest CPU priority.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-600}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(replication_frame copy_binary value wal2json_v1 wal2json_v2 pgoutput
             singer_lines singer_target config_file gdnlite_request)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
SCRATCH="${FUZZ_SCRATCH:-/tmp/pgferry-fuzz-corpus}"
LOGS="$(mktemp -d -t pgferry-fuzz.XXXXXX)"
(cd fuzz && nice -n "${FUZZ_NICE:-19}" cargo fuzz build -O)
failed=0
for target in "${TARGETS[@]}"; do
    echo "==> fuzzing $target for ${SECONDS_PER_TARGET}s (log: $LOGS/$target.log)"
    mkdir -p "fuzz/artifacts/$target" "$SCRATCH/$target"
    if ! (cd fuzz && nice -n "${FUZZ_NICE:-19}" cargo fuzz run -O "$target" \
            "$SCRATCH/$target" "corpus/$target" -- \
            -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -timeout=10 \
            -malloc_limit_mb=512 -rss_limit_mb=2048 -print_final_stats=1 \
            >"$LOGS/$target.log" 2>&1); then
        echo "    FINDING: see $LOGS/$target.log and fuzz/artifacts/$target/"
        failed=1
    fi
    grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "$LOGS/$target.log" | sed 's/^/    /' || true
done
echo
printf '%-20s %16s\n' target executions
for target in "${TARGETS[@]}"; do
    printf '%-20s %16s\n' "$target" \
        "$(grep -E '^stat::number_of_executed_units' "$LOGS/$target.log" | awk '{print $2}')"
done
exit "$failed"
