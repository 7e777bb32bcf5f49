#!/usr/bin/env bash
# One very large transaction through pgoutput protocol 2 (default 5,000,000 rows) with
# logical_decoding_work_mem = 64kB, so PostgreSQL streams it while it runs: pgferry spools it
# to disk and applies it at commit. Checks that every row arrives in gdnlite, that the server
# really streamed (pg_stat_replication_slots.stream_txns), that no spool file is left, and
# reports pgferry's peak RSS (bounded: it does not grow with the transaction).
# The test suite runs the same with 200,000 rows (tests/cdc_pgoutput.rs).
# Usage: scripts/stress-pgoutput-large-txn.sh [rows]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ROWS="${1:-5000000}"
ensure_postgres
log "building pgferry (release)"
cargo build --release --quiet
PGFERRY="$PWD/target/release/pgferry"
WORK="$(mktemp -d /tmp/pgferry-large-txn.XXXXXX)"
GDN_PID=""
trap cleanup_run EXIT
PG_EXTRA_CONF="logical_decoding_work_mem = '64kB'" start_cluster
cluster_psql -d postgres -c "CREATE TABLE public.big (id bigint PRIMARY KEY, v text)" >/dev/null
start_gdnlite "$PGFERRY" stress "$WORK/gdnlite"
cat >"$WORK/pipeline.json" <<JSON
{
  "source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "password": "x", "dbname": "postgres",
             "sslmode": "disable", "replication_method": "LOG_BASED", "plugin": "pgoutput"},
  "destination": {"gdn_url": "$GDN_URL", "api_key": {"env": "GDN_API_KEY"}},
  "tables": ["public.big"],
  "state_file": "$WORK/state.json"
}
JSON
GDN_API_KEY=stress "$PGFERRY" run -c "$WORK/pipeline.json" --once >/dev/null
log "one transaction of $ROWS rows"
cluster_psql -d postgres -c "INSERT INTO public.big SELECT g, md5(g::text) FROM generate_series(1, $ROWS) g" >/dev/null
log "streaming it"
start=$(date +%s.%N)
GDN_API_KEY=stress "$PGFERRY" run -c "$WORK/pipeline.json" --once >"$WORK/run.out"
end=$(date +%s.%N)
STREAMED=$(cluster_psql -d postgres -At -c "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'macrometa_postgres'")
COUNT=$(curl -sf -H "Authorization: apikey stress" "$GDN_URL/_fabric/_system/_api/collection/big/count" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
LEFT=$(find "$WORK/state.json.spool" -type f 2>/dev/null | wc -l)
cat "$WORK/run.out"
[ "$COUNT" = "$ROWS" ] || die "gdnlite holds $COUNT documents, expected $ROWS"
[ "${STREAMED:-0}" -ge 1 ] || die "the server did not stream the transaction (stream_txns = $STREAMED)"
[ "$LEFT" = 0 ] || die "$LEFT spool files left behind"
awk -v r="$ROWS" -v a="$start" -v b="$end" -v s="$STREAMED" 'BEGIN { printf "OK: %d rows in one streamed transaction (stream_txns %d) applied in %.1f s (%.0f rows/s)\n", r, s, b - a, r / (b - a) }'
