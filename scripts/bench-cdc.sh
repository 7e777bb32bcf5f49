#!/usr/bin/env bash
# End-to-end change data capture benchmark: the same WAL (1M row changes: inserts, updates and
# deletes in 1,000-row transactions, then one 200,000-row transaction) drained from three slots by
#   1. pg_recvlogical (wal2json, to /dev/null)      — the ceiling: the server's decoding alone
#   2. pgferry run --once --destination null          — decode, convert, coalesce; nothing sent
#   3. pgferry run --once into gdnlite (waitForSync)  — the whole path, durable
#   3b. pgferry run --once --destination null with pgoutput (protocol 2, text) — the same changes
#       through PostgreSQL's own plugin (goal: >= 1.5x the wal2json decode rate)
# reporting changes/s and peak RSS. Every client connects over TCP to 127.0.0.1 (the same
# transport; a Unix socket is markedly cheaper per message on this VM); then
#   4. a steady 10,000 changes/s load (pgbench -R) streamed by a continuous pgferry into gdnlite,
#      reporting commit-to-GDN latency p50/p99 from its `pgferry_ingest_lag_seconds` histogram
#      (bucket upper bounds, as Prometheus' histogram_quantile would report at a bucket edge).
# Usage: scripts/bench-cdc.sh [rows per phase, default 400000]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ROWS="${1:-400000}"
ensure_postgres
log "building pgferry (release)"
cargo build --release --quiet
PGFERRY="$PWD/target/release/pgferry"
BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"

WORK="$(mktemp -d /tmp/pgferry-bench-cdc.XXXXXX)"
GDN_PID=""
trap cleanup_run EXIT
start_cluster
cluster_psql -d postgres -c "CREATE TABLE public.events (id bigint PRIMARY KEY, kind text NOT NULL, amount numeric(12,2), payload text, at timestamptz DEFAULT now())" >/dev/null

start_gdnlite "$PGFERRY" bench "$WORK/gdnlite"

pipeline() { # name destination-json
    cat >"$WORK/$1.json" <<JSON
{
  "source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "password": "x", "dbname": "postgres",
             "sslmode": "disable", "replication_method": "LOG_BASED", "replication_slot": "bench_$1",
             "plugin": "wal2json"},
  "destination": $2,
  "tables": ["public.events"],
  "state_file": "$WORK/$1.state.json"
}
JSON
}
pipeline null '{"type": "null"}'
cat >"$WORK/pgout.json" <<JSON
{
  "source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "password": "x", "dbname": "postgres",
             "sslmode": "disable", "replication_method": "LOG_BASED", "replication_slot": "bench_pgout",
             "plugin": "pgoutput", "publication": "bench_pub"},
  "destination": {"type": "null"},
  "tables": ["public.events"],
  "state_file": "$WORK/pgout.state.json"
}
JSON
pipeline gdn "{\"gdn_url\": \"$GDN_URL\", \"api_key\": {\"env\": \"GDN_API_KEY\"}}"

log "creating the slots (pgferry's with their snapshot copies of the empty table)"
"$PGFERRY" run -c "$WORK/null.json" --once --destination null >/dev/null
"$PGFERRY" run -c "$WORK/pgout.json" --once --destination null >/dev/null
GDN_API_KEY=bench "$PGFERRY" run -c "$WORK/gdn.json" --once >/dev/null
cluster_psql -d postgres -c "SELECT pg_create_logical_replication_slot('bench_recv', 'wal2json')" >/dev/null

log "writing the workload: $ROWS inserts, $ROWS/2 updates, $ROWS/4 deletes in 1,000-row transactions, one $((ROWS / 2))-row transaction"
BATCHES=$((ROWS / 1000))
{
    for i in $(seq 0 $((BATCHES - 1))); do
        lo=$((i * 1000 + 1)); hi=$((i * 1000 + 1000))
        echo "INSERT INTO public.events (id, kind, amount, payload) SELECT g, 'k' || (g % 10), (g % 100000) / 100.0, md5(g::text) FROM generate_series($lo, $hi) g;"
    done
    for i in $(seq 0 $((BATCHES / 2 - 1))); do
        lo=$((i * 1000 + 1)); hi=$((i * 1000 + 1000))
        echo "UPDATE public.events SET amount = amount + 1 WHERE id BETWEEN $lo AND $hi;"
    done
    for i in $(seq 0 $((BATCHES / 4 - 1))); do
        lo=$((i * 1000 + 1)); hi=$((i * 1000 + 1000))
        echo "DELETE FROM public.events WHERE id BETWEEN $lo AND $hi;"
    done
    echo "INSERT INTO public.events (id, kind, amount, payload) SELECT g, 'big', 1, md5(g::text) FROM generate_series(10000001, $((10000000 + ROWS / 2))) g;"
} | cluster_psql -d postgres >/dev/null
CHANGES=$((ROWS + ROWS / 2 + ROWS / 4 + ROWS / 2))
# The workload's dead rows vacuumed and its WAL checkpointed before any timed run, so the first
# readers do not share the cores with autovacuum and the checkpointer while the later ones
# have them to themselves.
cluster_psql -d postgres -q -c "VACUUM" -c "CHECKPOINT"
sync
END_LSN=$(cluster_psql -d postgres -At -c "SELECT pg_current_wal_lsn()")

seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }

log "1/3 pg_recvlogical to /dev/null"
start=$(seconds)
"$BIN/pg_recvlogical" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -S bench_recv --start --endpos "$END_LSN" \
    -o format-version=2 -o include-transaction=true -o include-lsn=true -o add-tables=public.events -f /dev/null
RECV_S=$(elapsed "$start" "$(seconds)")

run() { # name [flags]
    local name=$1; shift
    start=$(seconds)
    GDN_API_KEY=bench "$PGFERRY" run -c "$WORK/$name.json" --once "$@" >"$WORK/$name.out"
    RUN_S=$(elapsed "$start" "$(seconds)")
    RUN_RSS=$(sed -n 's/^peak RSS \(.*\) MB$/\1/p' "$WORK/$name.out")
    grep -q "streamed $CHANGES changes" "$WORK/$name.out" || { cat "$WORK/$name.out"; die "$name did not stream $CHANGES changes"; }
}
log "2/3 pgferry --destination null"
run null --destination null
NULL_S=$RUN_S; NULL_RSS=$RUN_RSS
log "pgferry --destination null through pgoutput"
run pgout --destination null
PGOUT_S=$RUN_S; PGOUT_RSS=$RUN_RSS
log "3/3 pgferry into gdnlite"
run gdn
GDN_S=$RUN_S; GDN_RSS=$RUN_RSS
COUNT=$(curl -sf -H "Authorization: apikey bench" "$GDN_URL/_fabric/_system/_api/collection/events/count" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
EXPECTED=$(cluster_psql -d postgres -At -c "SELECT count(*) FROM public.events")
[ "$COUNT" = "$EXPECTED" ] || die "gdnlite holds $COUNT documents, the table $EXPECTED rows"

echo
echo "changes: $CHANGES (rows now: $EXPECTED), cores: $(nproc)"
printf '%-36s %12s %10s %10s\n' "path" "changes/s" "seconds" "peak RSS"
printf '%-36s %12.0f %10.2f %10s\n' "pg_recvlogical -> /dev/null" "$(awk -v c=$CHANGES -v s=$RECV_S 'BEGIN{print c/s}')" "$RECV_S" "-"
printf '%-36s %12.0f %10.2f %10s\n' "pgferry -> null" "$(awk -v c=$CHANGES -v s=$NULL_S 'BEGIN{print c/s}')" "$NULL_S" "$NULL_RSS MB"
printf '%-36s %12.0f %10.2f %10s\n' "pgferry (pgoutput) -> null" "$(awk -v c=$CHANGES -v s=$PGOUT_S 'BEGIN{print c/s}')" "$PGOUT_S" "$PGOUT_RSS MB"
printf '%-36s %12.0f %10.2f %10s\n' "pgferry -> gdnlite (waitForSync)" "$(awk -v c=$CHANGES -v s=$GDN_S 'BEGIN{print c/s}')" "$GDN_S" "$GDN_RSS MB"
awk -v r="$RECV_S" -v n="$NULL_S" 'BEGIN { printf "pgferry -> null / pg_recvlogical changes/s ratio: %.2f (goal >= 1.0)\n", r / n }'
awk -v w="$NULL_S" -v p="$PGOUT_S" 'BEGIN { printf "pgoutput / wal2json changes/s ratio (both to null): %.2f (goal >= 1.5)\n", w / p }'

log "4/4 latency under a steady 10,000 changes/s (100 transactions/s x 100 rows, 20 s)"
METRICS_PORT="$(free_port)"
GDN_API_KEY=bench "$PGFERRY" run -c "$WORK/gdn.json" --metrics-addr "127.0.0.1:$METRICS_PORT" >"$WORK/steady.out" 2>"$WORK/steady.err" &
STEADY_PID=$!
sleep 2
cat >"$WORK/steady.sql" <<'SQL'
INSERT INTO public.events (id, kind, amount, payload)
SELECT nextval('steady_ids'), 'steady', 1, md5(g::text) FROM generate_series(1, 100) g;
SQL
cluster_psql -d postgres -c "CREATE SEQUENCE steady_ids START 100000000" >/dev/null
"$BIN/pgbench" -h "$PG_DIR" -p "$PG_PORT" -U postgres -n -f "$WORK/steady.sql" -R 100 -T 20 -c 2 postgres >"$WORK/pgbench.out" 2>&1 \
    || { cat "$WORK/pgbench.out"; die "pgbench failed"; }
sleep 3
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.txt" || die "no metrics from pgferry"
kill -TERM "$STEADY_PID"; wait "$STEADY_PID" || die "pgferry did not stop cleanly on SIGTERM"
ingest_lag_percentiles "$WORK/metrics.txt" "steady load"
grep -E "^tps|latency average" "$WORK/pgbench.out" | sed 's/^/pgbench: /'
