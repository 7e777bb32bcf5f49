#!/usr/bin/env bash
# The crash-and-fault matrix: for each of PG → GDN snapshot, PG → GDN streaming, GDN → PG, the
# Singer target and the Singer pipe `pgferry tap | pgferry target-gdn`, every iteration injects
# one fault while pgferry works (SIGKILL at a random point, of either side of the pipe; gdnlite
# SIGKILLed and restarted on its port; PostgreSQL restarted, or SIGKILLed and recovered;
# gdnlite answering 5xx/429/latency/resets/per-document errors), lets pgferry finish (the pipe
# reruns from its last STATE), and compares the final states exactly; streaming and the pipe
# also check after every fault that the slot was never confirmed past GDN's data.
# Prints a table: scenario, iterations, lost rows, extra rows, divergent rows (all must be 0).
#
# Usage: scripts/chaos.sh [iterations per scenario, default 50] [seed]
#   CHAOS_PROFILE=release builds optimized (default: the debug build the tests use).
#   CHAOS_THREADS=N runs N scenarios at once (default 4).
#   CHAOS_LOG=path keeps the full output there (default target/chaos.log).
#   CHAOS_FILTER=name runs only the scenarios whose test name contains it (e.g. singer_tap).
# The reduced version runs in the tests: cargo test --test chaos (each fault once).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
ensure_postgres

ITERATIONS="${1:-50}"
SEED="${2:-$(date +%s)}"
PROFILE_FLAG=()
if [ "${CHAOS_PROFILE:-debug}" = release ]; then PROFILE_FLAG=(--release); fi
OUT="${CHAOS_LOG:-target/chaos.log}"
mkdir -p "$(dirname "$OUT")"

log "chaos: ${ITERATIONS} iterations per scenario, seed ${SEED}"
status=0
PGFERRY_CHAOS_ITERATIONS="$ITERATIONS" PGFERRY_CHAOS_SEED="$SEED" \
    cargo test "${PROFILE_FLAG[@]}" --test chaos -- ${CHAOS_FILTER:+"$CHAOS_FILTER"} --nocapture --test-threads="${CHAOS_THREADS:-4}" \
    >"$OUT" 2>&1 || status=$?

grep -E 'panicked|lost|extra ' "$OUT" | grep -v 'CHAOS|' | head -40 >&2 || true
echo
echo "seed ${SEED} (full output: $OUT)"
# Every scenario is one #[test] in tests/chaos.rs that prints a CHAOS| line (after the test
# name when one thread runs them, so it is matched anywhere on the line).
EXPECTED=$(grep -A1 '^#\[test\]' tests/chaos.rs | grep '^fn ' | grep -c -- "${CHAOS_FILTER:-}")
grep -o 'CHAOS|.*' "$OUT" | sort | awk -F'|' -v expected="$EXPECTED" '
    BEGIN {
        printf "| %-24s | %10s | %9s | %10s | %15s | %s\n", "scenario", "iterations", "lost rows", "extra rows", "divergent rows", "faults"
        printf "|%s|%s|%s|%s|%s|%s\n", "--------------------------", "------------", "-----------", "------------", "-----------------", "---"
    }
    {
        printf "| %-24s | %10d | %9d | %10d | %15d | %s\n", $2, $3, $4, $5, $6, $7
        it += $3; lost += $4; extra += $5; div += $6; n++
    }
    END {
        printf "| %-24s | %10d | %9d | %10d | %15d |\n", "total", it, lost, extra, div
        if (n < expected) print "(" expected - n " scenario(s) did not report: see the errors above)"
    }'
if [ "$status" -ne 0 ]; then
    log "chaos FAILED (cargo test exit $status)"
else
    log "chaos passed"
fi
exit "$status"
