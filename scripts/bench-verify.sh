#!/usr/bin/env bash
# End-to-end verify benchmark: the bench table (~200 B/row, mixed types) copied into gdnlite,
# then, in the same run,
#   1. psql \copy (SELECT …) TO /dev/null   — one read of the table: PostgreSQL's own text COPY
#   2. pgferry verify                        — both sides read, converted, hashed and compared
# reporting both times and their ratio (goal: verify within 3x of \copy), and verify's peak RSS.
# Usage: scripts/bench-verify.sh [rows, default $BENCH_ROWS or 2000000]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ROWS="${1:-${BENCH_ROWS:-2000000}}"
ensure_postgres
ensure_command curl curl
log "building pgferry (release)"
cargo build --release --quiet
PGFERRY="$PWD/target/release/pgferry"

WORK="$(mktemp -d /tmp/pgferry-bench.XXXXXX)"
GDN_PID=""
trap cleanup_run EXIT
start_cluster

log "creating public.bench with $ROWS rows"
create_bench_table postgres "$ROWS"

seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }
rate() { awk -v r="$1" -v s="$2" 'BEGIN { printf "%.0f", r / s }'; }

start_gdnlite "$PGFERRY" bench "$WORK/gdnlite"
cat >"$WORK/pipeline.json" <<JSON
{
  "source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "password": "x",
             "dbname": "postgres", "sslmode": "disable"},
  "destination": {"gdn_url": "$GDN_URL", "api_key": {"env": "GDN_API_KEY"}},
  "tables": ["public.bench"]
}
JSON

log "copying public.bench into gdnlite"
GDN_API_KEY=bench "$PGFERRY" run -c "$WORK/pipeline.json" >/dev/null

log "1/2 psql \\copy to /dev/null"
start=$(seconds)
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "\\copy (SELECT * FROM public.bench) TO '/dev/null'" >/dev/null
PSQL_S=$(elapsed "$start" "$(seconds)")

log "2/2 pgferry verify"
start=$(seconds)
set +e
GDN_API_KEY=bench /usr/bin/time -f '%M' -o "$WORK/verify.rss" "$PGFERRY" verify -c "$WORK/pipeline.json" >"$WORK/verify.out"
CODE=$?
set -e
VERIFY_S=$(elapsed "$start" "$(seconds)")
cat "$WORK/verify.out"
[ "$CODE" = 0 ] || die "pgferry verify exited $CODE: the copy and the table differ"
RSS_MB=$(awk '{ printf "%.1f", $1 / 1024 }' "$WORK/verify.rss" 2>/dev/null || echo "?")

echo
echo "rows: $ROWS, cores: $(nproc)"
printf '%-34s %12s %10s %10s\n' "path" "rows/s" "seconds" "peak RSS"
printf '%-34s %12s %10.2f %10s\n' "psql \\copy to /dev/null" "$(rate "$ROWS" "$PSQL_S")" "$PSQL_S" "-"
printf '%-34s %12s %10.2f %10s\n' "pgferry verify (gdnlite)" "$(rate "$ROWS" "$VERIFY_S")" "$VERIFY_S" "$RSS_MB MB"
awk -v p="$PSQL_S" -v v="$VERIFY_S" 'BEGIN { printf "verify / psql \\copy time ratio: %.2f (goal <= 3)\n", v / p }'
