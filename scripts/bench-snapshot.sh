#!/usr/bin/env bash
# End-to-end snapshot benchmark: a 2M-row table (~200 B/row, mixed types) copied by
#   1. psql \copy (SELECT …) TO /dev/null        — the ceiling: PostgreSQL's own text COPY
#   2. pgferry run --destination null             — decode + JSON encode + batch, nothing sent
#   3. pgferry run into gdnlite (waitForSync=true, h2c) — the whole path, durable
# in the same run, reporting rows/s, MB/s and pgferry's peak RSS.
# Usage: scripts/bench-snapshot.sh [rows, default 2000000] [parallelism, default: cores]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ROWS="${1:-2000000}"
PARALLELISM="${2:-$(nproc)}"
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
TABLE_BYTES=$(cluster_psql -d postgres -At -c "SELECT pg_relation_size('public.bench')")

seconds() { date +%s.%N; }
rate() { awk -v r="$1" -v s="$2" 'BEGIN { printf "%.0f", r / s }'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1e6 }'; }

log "1/3 psql \\copy to /dev/null"
start=$(seconds)
# Over TCP like pgferry: the same transport for both.
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "\\copy (SELECT * FROM public.bench) TO '/dev/null'" >/dev/null
end=$(seconds)
PSQL_S=$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')

write_pipeline() {
    cat >"$WORK/pipeline.json" <<JSON
{
  "source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "password": "x",
             "dbname": "postgres", "sslmode": "disable"},
  "destination": $1,
  "tables": ["public.bench"],
  "parallelism": $PARALLELISM
}
JSON
}

run_pgferry() {
    local out="$WORK/run.out"
    start=$(seconds)
    GDN_API_KEY=bench "$PGFERRY" run -c "$WORK/pipeline.json" "$@" >"$out"
    end=$(seconds)
    RUN_S=$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')
    RUN_RSS=$(sed -n 's/^peak RSS \(.*\) MB$/\1/p' "$out")
    RUN_BYTES=$(sed -n 's/.*(\([0-9.]*\) MB of documents).*/\1/p' "$out")
}

log "2/3 pgferry run --destination null"
write_pipeline '{"type": "null"}'
run_pgferry --destination null
NULL_S=$RUN_S; NULL_RSS=$RUN_RSS; NULL_MB=$RUN_BYTES

log "3/3 pgferry run into gdnlite"
start_gdnlite "$PGFERRY" bench "$WORK/gdnlite"
write_pipeline "{\"gdn_url\": \"$GDN_URL\", \"api_key\": {\"env\": \"GDN_API_KEY\"}}"
run_pgferry
GDN_S=$RUN_S; GDN_RSS=$RUN_RSS; GDN_MB=$RUN_BYTES
COUNT=$(curl -sf -H "Authorization: apikey bench" "$GDN_URL/_fabric/_system/_api/collection/bench/count" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
[ "$COUNT" = "$ROWS" ] || die "gdnlite holds $COUNT documents, expected $ROWS"

echo
echo "rows: $ROWS, table: $(mbps "$TABLE_BYTES" 1) MB on disk, parallelism: $PARALLELISM, cores: $(nproc)"
printf '%-34s %12s %10s %14s %10s\n' "path" "rows/s" "seconds" "MB/s" "peak RSS"
printf '%-34s %12s %10.2f %14s %10s\n' "psql \\copy to /dev/null" "$(rate "$ROWS" "$PSQL_S")" "$PSQL_S" "$(mbps "$TABLE_BYTES" "$PSQL_S") (table)" "-"
printf '%-34s %12s %10.2f %14s %10s\n' "pgferry -> null" "$(rate "$ROWS" "$NULL_S")" "$NULL_S" "$(awk -v m="$NULL_MB" -v s="$NULL_S" 'BEGIN{printf "%.1f", m/s}') (JSON)" "$NULL_RSS MB"
printf '%-34s %12s %10.2f %14s %10s\n' "pgferry -> gdnlite (waitForSync)" "$(rate "$ROWS" "$GDN_S")" "$GDN_S" "$(awk -v m="$GDN_MB" -v s="$GDN_S" 'BEGIN{printf "%.1f", m/s}') (JSON)" "$GDN_RSS MB"
awk -v p="$PSQL_S" -v n="$NULL_S" 'BEGIN { printf "pgferry -> null / psql \\copy rows/s ratio: %.2f (goal >= 0.8)\n", p / n }'
