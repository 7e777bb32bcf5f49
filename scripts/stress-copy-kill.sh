#!/usr/bin/env bash
# Long crash loop for the chunked LOG_BASED copy into gdnlite: a table of many chunks copied by
# two workers (each reading on while earlier chunks' writes are in flight) is SIGKILLed at
# random points again and again, with writes to the table between kills; each restart resumes
# at the chunks not recorded as durable. In the end `pgferry verify` must find the collection
# equal to the table. The reduced version runs in the tests:
# tests/run_kill_and_memory.rs (a_log_based_copy_killed_mid_way_resumes_at_the_first_chunk_not_done).
#
# Every round starts a fresh copy (no state, slot or collection) and kills its runs until one
# finishes; then the last run and verify.
# Usage: scripts/stress-copy-kill.sh [kills in all, default 20] [seed]
#   STRESS_ROWS   rows of the table (default 600000, about 16 chunks)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
ensure_postgres

KILLS="${1:-20}"
SEED="${2:-$(date +%s)}"
ROWS="${STRESS_ROWS:-600000}"
RANDOM="$SEED"
log "building pgferry (release)"
cargo build --release --quiet --bin pgferry
PGFERRY="$PWD/target/release/pgferry"
WORK="$(mktemp -d /tmp/pgferry-stress-copy.XXXXXX)"
trap cleanup_run EXIT
start_cluster
cluster_psql -d postgres -q -c "CREATE TABLE public.events (id bigint PRIMARY KEY, body text, amount numeric(12,2))" \
    -c "INSERT INTO public.events SELECT g, md5(g::text) || repeat('x', 40), g / 100.0 FROM generate_series(1, $ROWS) g"
start_gdnlite "$PGFERRY" bench "$WORK/gdnlite"
cat >"$WORK/pipeline.json" <<JSON
{
  "source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "password": "x", "dbname": "postgres",
             "sslmode": "disable", "replication_method": "LOG_BASED", "plugin": "pgoutput",
             "publication": "stress_pub"},
  "destination": {"gdn_url": "$GDN_URL", "api_key": {"env": "GDN_API_KEY"}, "batch_size_rows": 500},
  "tables": ["public.events"],
  "parallelism": 2,
  "state_file": "$WORK/state.json"
}
JSON

# Chunks the state file records as durable.
done_chunks() {
    python3 -c 'import json, sys
try:
    state = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print(0); sys.exit()
print(sum(len(t.get("done", [])) for t in state.get("chunks", {}).values()))' "$WORK/state.json"
}

log "copies killed $KILLS times in all, at random points, seed $SEED"
killed=0
round=0
while [ "$killed" -lt "$KILLS" ]; do
    round=$((round + 1))
    # A fresh copy: no state, no slot, no collection.
    rm -f "$WORK/state.json"
    cluster_psql -d postgres -q -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active" >/dev/null
    curl -sf -X DELETE -H "Authorization: apikey bench" "$GDN_URL/_fabric/_system/_api/collection/events" >/dev/null || true
    while :; do
        # Writes while pgferry is down, in chunks already copied and not yet.
        n=$((killed + round * 100))
        cluster_psql -d postgres -q -c "UPDATE public.events SET amount = amount + 1 WHERE id % 997 = $((n % 997))" \
            -c "DELETE FROM public.events WHERE id BETWEEN $((n * 1000)) AND $((n * 1000 + 9))" \
            -c "INSERT INTO public.events VALUES ($((ROWS + n)), 'late', $n) ON CONFLICT (id) DO NOTHING"
        GDN_API_KEY=bench "$PGFERRY" run --once -c "$WORK/pipeline.json" >"$WORK/run.out" 2>"$WORK/run.err" &
        pid=$!
        sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.3 + (r % 250) / 100 }')"
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || { cat "$WORK/run.err"; die "round $round: a run failed (seed $SEED)"; }
            break
        fi
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null || true
        killed=$((killed + 1))
        echo "round $round: kill $killed, chunks recorded durable: $(done_chunks)"
        [ "$killed" -lt "$KILLS" ] || break
    done
    GDN_API_KEY=bench "$PGFERRY" run --once -c "$WORK/pipeline.json" >"$WORK/run.out" 2>"$WORK/run.err" \
        || { cat "$WORK/run.err"; die "round $round: the last run failed (seed $SEED)"; }
    GDN_API_KEY=bench "$PGFERRY" verify -c "$WORK/pipeline.json" >"$WORK/verify.out" 2>&1 \
        || { cat "$WORK/verify.out"; die "round $round: the collection differs from the table after $killed kills (seed $SEED)"; }
    echo "round $round: $(grep -- '->' "$WORK/verify.out")"
done
log "every round equal, $killed kills during copies (seed $SEED)"
