#!/usr/bin/env bash
# GDN across a network: the snapshot (a FULL_TABLE copy of the bench table) and the CDC workload
# (inserts, updates, deletes in 1,000-row transactions) written into gdnlite through
# pgferry-relay at 0, 20, 50 and 150 ms round trips, and at 0 ms into a gdnlite that answers 429
# (`Retry-After: 1`) to 30% of requests. Each row's rate is given as a ratio to the 0 ms run of the
# same workload. Goals (not tests): snapshot at 50 ms >= 0.9x, at 150 ms >= 0.7x the 0 ms rate.
#
# Usage: scripts/bench-wan.sh
#   WAN_ROWS            snapshot rows (default 2000000; fewer on a small machine)
#   WAN_CDC_ROWS        CDC inserts (default 100000; updates, deletes and a big transaction follow)
#   WAN_RTTS            round trips in ms (default "0 20 50 150")
#   WAN_MAX_IN_FLIGHT   the destination's max_in_flight, the adaptive limit's bound (default 64)
#   WAN_PARALLELISM     copy workers (default: cores)
#   WAN_SKIP_429=1      leave out the 30% 429 rows (they take the longest)
#   WAN_STEADY_RTTS     round trips for the steady-load latency runs (default "0 50"; "" skips)
#   WAN_TABLES          one-row tables copied at WAN_TABLES_RTT ms (default 50 at 150; 0 skips)
#   WAN_PGFERRY         the pgferry binary to measure (default: this tree's release build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ROWS="${WAN_ROWS:-2000000}"
CDC_ROWS="${WAN_CDC_ROWS:-100000}"
RTTS="${WAN_RTTS:-0 20 50 150}"
MAX_IN_FLIGHT="${WAN_MAX_IN_FLIGHT:-64}"
PARALLELISM="${WAN_PARALLELISM:-$(nproc)}"
ensure_postgres
ensure_command curl curl
log "building pgferry and pgferry-relay (release)"
cargo build --release --quiet --bins
# WAN_PGFERRY: another build to measure (e.g. the one before a change), same relay and scripts.
PGFERRY="${WAN_PGFERRY:-$PWD/target/release/pgferry}"
RELAY="$PWD/target/release/pgferry-relay"

WORK="$(mktemp -d /tmp/pgferry-bench-wan.XXXXXX)"
GDN_PID=""
RELAY_PID=""
FAULTY_PID=""
cleanup() {
    for pid in "$RELAY_PID" "$FAULTY_PID"; do
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    done
    cleanup_run
}
trap cleanup EXIT
start_cluster

log "creating public.bench with $ROWS rows and the empty public.events"
create_bench_table postgres "$ROWS"
cluster_psql -d postgres -c "CREATE TABLE public.events (id bigint PRIMARY KEY, kind text NOT NULL, amount numeric(12,2), payload text)" >/dev/null

start_gdnlite "$PGFERRY" bench "$WORK/gdnlite"
CLEAN_URL="$GDN_URL"
CLEAN_PID="$GDN_PID"
# A second gdnlite answering 429 to 30% of fabric requests (gdnlite's own flag).
port="$(free_port)"
GDNLITE_API_KEY=bench "$PGFERRY" gdnlite --listen "127.0.0.1:$port" --data-dir "$WORK/faulty" \
    --fault-429-rate 0.3 --fault-seed 7 >"$WORK/faulty.log" 2>&1 &
FAULTY_PID=$!
FAULTY_URL="http://127.0.0.1:$port"
for _ in $(seq 1 100); do grep -q listening "$WORK/faulty.log" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$WORK/faulty.log" || die "the faulty gdnlite did not start"

seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }
api() { curl -sf -H "Authorization: apikey bench" "$@"; }

# Starts the relay to $1 (host:port) with a round trip of $2 ms; sets RELAY_PID and RELAY_URL.
start_relay() {
    stop_relay
    "$RELAY" --upstream "$1" --rtt-ms "$2" >"$WORK/relay.log" 2>&1 &
    RELAY_PID=$!
    for _ in $(seq 1 200); do grep -q listening "$WORK/relay.log" 2>/dev/null && break; sleep 0.05; done
    RELAY_URL="http://$(sed -n 's/^relay listening on //p' "$WORK/relay.log")"
    [ "$RELAY_URL" != "http://" ] || { cat "$WORK/relay.log" >&2; die "the relay did not start"; }
}
stop_relay() {
    if [ -n "$RELAY_PID" ]; then kill "$RELAY_PID" 2>/dev/null || true; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=""; fi
}

destination() { # url [collection]
    local collection=""
    [ -n "${2:-}" ] && collection=", \"target_collection\": \"$2\""
    echo "{\"gdn_url\": \"$1\", \"api_key\": {\"env\": \"GDN_API_KEY\"}, \"max_in_flight\": $MAX_IN_FLIGHT, \"max_retries\": 100$collection}"
}

# Each snapshot run writes a fresh collection (dropping a large one costs gdnlite a minute).
snapshot_pipeline() { # url collection
    cat >"$WORK/snapshot.json" <<JSON
{
  "source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "password": "x",
             "dbname": "postgres", "sslmode": "disable"},
  "destination": $(destination "$1" "$2"),
  "tables": ["public.bench"],
  "full_table_mirror": false,
  "parallelism": $PARALLELISM
}
JSON
}

cdc_pipeline() { # name url
    cat >"$WORK/cdc_$1.json" <<JSON
{
  "source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "password": "x", "dbname": "postgres",
             "sslmode": "disable", "replication_method": "LOG_BASED", "replication_slot": "wan_$1",
             "plugin": "pgoutput", "publication": "wan_pub"},
  "destination": $(destination "$2"),
  "tables": ["public.events"],
  "state_file": "$WORK/cdc_$1.state.json"
}
JSON
}

# One slot per run, all created before the workload: every run drains the same WAL.
CDC_RUNS=""
for rtt in $RTTS; do CDC_RUNS="$CDC_RUNS ${rtt}ms"; done
CDC_RUNS="$CDC_RUNS 429"
log "creating the slots:$CDC_RUNS"
for name in $CDC_RUNS; do
    url="$CLEAN_URL"; [ "$name" = 429 ] && url="$FAULTY_URL"
    cdc_pipeline "$name" "$url"
    GDN_API_KEY=bench "$PGFERRY" run -c "$WORK/cdc_$name.json" --once >/dev/null
done

log "writing the CDC workload: $CDC_ROWS inserts, $((CDC_ROWS / 2)) updates, $((CDC_ROWS / 4)) deletes in 1,000-row transactions"
BATCHES=$((CDC_ROWS / 1000))
{
    for i in $(seq 0 $((BATCHES - 1))); do
        echo "INSERT INTO public.events SELECT g, 'k' || (g % 10), (g % 100000) / 100.0, md5(g::text) FROM generate_series($((i * 1000 + 1)), $((i * 1000 + 1000))) g;"
    done
    for i in $(seq 0 $((BATCHES / 2 - 1))); do
        echo "UPDATE public.events SET amount = amount + 1 WHERE id BETWEEN $((i * 1000 + 1)) AND $((i * 1000 + 1000));"
    done
    for i in $(seq 0 $((BATCHES / 4 - 1))); do
        echo "DELETE FROM public.events WHERE id BETWEEN $((i * 1000 + 1)) AND $((i * 1000 + 1000));"
    done
} | cluster_psql -d postgres >/dev/null
CHANGES=$((CDC_ROWS + CDC_ROWS / 2 + CDC_ROWS / 4))
EXPECTED=$(cluster_psql -d postgres -At -c "SELECT count(*) FROM public.events")
cluster_psql -d postgres -q -c "VACUUM" -c "CHECKPOINT"

RESULTS="$WORK/results.txt"
: >"$RESULTS"

# Runs pipeline $2 (label $1, workload $3) and records its rate; checks the count in $4 ($5 expected).
measure() {
    local label=$1 config=$2 workload=$3 base=$4 collection=$5 expected=$6 amount=$7 start out
    out="$WORK/run.out"
    local port; port="$(free_port)"
    start=$(seconds)
    # The end is stamped by the run's own subshell, so the sampling below adds nothing to it.
    (GDN_API_KEY=bench "$PGFERRY" run -c "$config" --once --metrics-addr "127.0.0.1:$port" >"$out" 2>"$WORK/run.err" && seconds >"$WORK/end") &
    local pid=$!
    # The adaptive limit and round trip, sampled every 0.2 s while the run lasts.
    : >"$WORK/samples.txt"
    while kill -0 "$pid" 2>/dev/null; do
        curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null \
            | awk '/^pgferry_concurrency_limit\{/ { l = $NF } /^pgferry_round_trip_seconds\{/ { r = $NF } END { if (l > 0) print l, r }' >>"$WORK/samples.txt" || true
        sleep 0.2
    done
    wait "$pid" || { cat "$out" "$WORK/run.err"; die "$label failed"; }
    local took; took=$(elapsed "$start" "$(cat "$WORK/end")")
    local count=""
    # The faulty gdnlite answers 429 to this too: ask again.
    for _ in $(seq 1 50); do
        count=$(api "$base/_fabric/_system/_api/collection/$collection/count" | sed -n 's/.*"count":\([0-9]*\).*/\1/p') && [ -n "$count" ] && break
        sleep 0.2
    done
    [ "$count" = "$expected" ] || die "$label: gdnlite holds $count documents of $collection, expected $expected"
    local retries; retries=$(sed -n 's/.*rows\/s, \([0-9]*\) retries.*/\1/p' "$out" | head -1)
    local limits; limits=$(sort -n "$WORK/samples.txt" | awk '{ l[NR] = $1; r += $2 } END { if (NR == 0) { print "-\t-"; exit } printf "%d/%d\t%.0f ms\n", l[int((NR + 1) / 2)], l[NR], r / NR * 1000 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$label" "$amount" "$took" "${retries:--}" "$limits" >>"$RESULTS"
    log "$workload $label: $amount in $took s"
}

for rtt in $RTTS; do
    host="${CLEAN_URL#http://}"
    start_relay "$host" "$rtt"
    snapshot_pipeline "$RELAY_URL" "bench_${rtt}ms"
    measure "${rtt} ms" "$WORK/snapshot.json" snapshot "$CLEAN_URL" "bench_${rtt}ms" "$ROWS" "$ROWS"
    api -X PUT "$CLEAN_URL/_fabric/_system/_api/collection/events/truncate" >/dev/null || true
    cdc_pipeline "${rtt}ms" "$RELAY_URL"
    measure "${rtt} ms" "$WORK/cdc_${rtt}ms.json" cdc "$CLEAN_URL" events "$EXPECTED" "$CHANGES"
done

if [ "${WAN_SKIP_429:-0}" != 1 ]; then
    start_relay "${FAULTY_URL#http://}" 0
    snapshot_pipeline "$RELAY_URL" bench
    measure "0 ms, 30% 429" "$WORK/snapshot.json" snapshot "$FAULTY_URL" bench "$ROWS" "$ROWS"
    cdc_pipeline 429 "$RELAY_URL"
    measure "0 ms, 30% 429" "$WORK/cdc_429.json" cdc "$FAULTY_URL" events "$EXPECTED" "$CHANGES"
    stop_relay
fi

STEADY_RTTS="${WAN_STEADY_RTTS-0 50}"
LATENCY="$WORK/latency.txt"
: >"$LATENCY"
if [ -n "$STEADY_RTTS" ]; then
    cluster_psql -d postgres -c "CREATE SEQUENCE IF NOT EXISTS steady_ids START 100000000" >/dev/null
    cat >"$WORK/steady.sql" <<'SQL'
INSERT INTO public.events (id, kind, amount, payload)
SELECT nextval('steady_ids'), 'steady', 1, md5(g::text) FROM generate_series(1, 100) g;
SQL
fi
for rtt in $STEADY_RTTS; do
    start_relay "${CLEAN_URL#http://}" "$rtt"
    name="steady_${rtt}ms"
    cdc_pipeline "$name" "$RELAY_URL"
    # The first run makes the slot and copies the table; the measured one only streams.
    GDN_API_KEY=bench "$PGFERRY" run -c "$WORK/cdc_$name.json" --once >/dev/null
    port="$(free_port)"
    GDN_API_KEY=bench "$PGFERRY" run -c "$WORK/cdc_$name.json" --metrics-addr "127.0.0.1:$port" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    steady_pid=$!
    sleep 2
    log "steady load at $rtt ms: 10,000 changes/s for 20 s"
    "/usr/lib/postgresql/${PG_MAJOR}/bin/pgbench" -h "$PG_DIR" -p "$PG_PORT" -U postgres -n -f "$WORK/steady.sql" -R 100 -T 20 -c 2 postgres >"$WORK/pgbench.out" 2>&1 \
        || { cat "$WORK/pgbench.out"; die "pgbench failed"; }
    sleep 3
    curl -sf "http://127.0.0.1:$port/metrics" >"$WORK/$name.metrics" || die "no metrics from pgferry"
    kill -TERM "$steady_pid"; wait "$steady_pid" || { cat "$WORK/$name.err"; die "pgferry did not stop cleanly on SIGTERM"; }
    ingest_lag_percentiles "$WORK/$name.metrics" "steady 10,000 changes/s, $rtt ms" >>"$LATENCY"
    grep -E "^tps" "$WORK/pgbench.out" | sed "s/^/  pgbench: /" >>"$LATENCY"
done
stop_relay

# Many small tables: what is per table (collections made ready, one chunk each) at a distance.
TABLES="${WAN_TABLES:-50}"
TABLES_RTT="${WAN_TABLES_RTT:-150}"
STARTUP="$WORK/startup.txt"
: >"$STARTUP"
if [ "$TABLES" -gt 0 ]; then
    log "$TABLES one-row tables through $TABLES_RTT ms"
    for i in $(seq 1 "$TABLES"); do
        echo "CREATE TABLE many.t$i (id int PRIMARY KEY, v text); INSERT INTO many.t$i VALUES (1, 'x');"
    done | { echo "CREATE SCHEMA many;"; cat; } | cluster_psql -d postgres -q
    start_relay "${CLEAN_URL#http://}" "$TABLES_RTT"
    cat >"$WORK/many.json" <<JSON
{
  "source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "password": "x",
             "dbname": "postgres", "sslmode": "disable", "filter_schemas": "many"},
  "destination": $(destination "$RELAY_URL"),
  "full_table_mirror": false
}
JSON
    start=$(seconds)
    GDN_API_KEY=bench "$PGFERRY" run -c "$WORK/many.json" --once >"$WORK/many.out" 2>"$WORK/many.err" \
        || { cat "$WORK/many.err"; die "the many-tables run failed"; }
    took=$(elapsed "$start" "$(seconds)")
    copy=$(sed -n 's/^copied .* in \([0-9.]*\) s:.*/\1/p' "$WORK/many.out")
    echo "$TABLES one-row tables at $TABLES_RTT ms: $took s in all, the copy $copy s of it" >>"$STARTUP"
    stop_relay
fi

echo
echo "snapshot rows: $ROWS, CDC changes: $CHANGES, max_in_flight: $MAX_IN_FLIGHT, parallelism: $PARALLELISM, cores: $(nproc)"
printf '%-9s %-16s %12s %10s %12s %9s %14s %10s\n' "workload" "link" "per second" "seconds" "vs 0 ms" "retries" "limit med/max" "mean RTT"
awk -F'\t' '
    { rate = $3 / $4; if ($2 == "0 ms") base[$1] = rate; rows[NR] = $0; r[NR] = rate }
    END {
        for (i = 1; i <= NR; i++) {
            split(rows[i], f, "\t")
            printf "%-9s %-16s %12.0f %10.2f %11.2fx %9s %14s %10s\n", f[1], f[2], r[i], f[4], r[i] / base[f[1]], f[5], f[6], f[7]
        }
    }' "$RESULTS"
cat "$LATENCY" "$STARTUP"
