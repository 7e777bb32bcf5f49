#!/usr/bin/env bash
# End-to-end benchmark of `pgferry target` (Singer → PostgreSQL) and of `pgferry run` from a
# gdnlite collection (GDN → PostgreSQL: cursor scan, COPY + merge) against `psql \copy` of the
# same rows as CSV, on a throwaway cluster. Reports rows/s, the ratio to \copy and peak RSS.
# Every client connects over TCP to 127.0.0.1 (the same transport).
#
#   scripts/bench-target.sh              # 2,000,000 rows
#   ROWS=200000 scripts/bench-target.sh  # a quicker run
#   BENCH_NO_GNU_TIME=1 …                # peak RSS from /proc even where GNU time exists
#   COPY_FORMAT=text …                   # pgferry's COPY format: auto (binary where exact) or text
#   PROFILE=/tmp/gdn.perf …              # perf record -g of the GDN -> PostgreSQL run (perf report -i …)
#
# Then a large-document run of GDN -> PostgreSQL: LARGE_SCAN documents of LARGE_SIZE bytes
# (pyC8-shaped: nested, odd names, one long string) scanned into a new table, then a backlog of
# LARGE_BACKLOG more (half replacing scanned ones) read from the change stream by a second
# `run --once`; reports MB/s and peak RSS of each (the budget is 200 MB).
#   LARGE_SCAN=1400 LARGE_BACKLOG=10000 LARGE_SIZE=1048576   # the defaults (~11 GB in gdnlite)
#   LARGE_ONLY=1 …                       # only the large-document run
#   LARGE_SCAN=0 …                       # no large-document run
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ROWS="${ROWS:-2000000}"
LARGE_SCAN="${LARGE_SCAN:-1400}"
LARGE_BACKLOG="${LARGE_BACKLOG:-10000}"
LARGE_SIZE="${LARGE_SIZE:-1048576}"
BATCH="${BATCH:-100000}"
# GDN -> PostgreSQL commits a batch while the next is read (two in memory): its own default.
GDN_BATCH="${GDN_BATCH:-10000}"
COPY_FORMAT="${COPY_FORMAT:-auto}"
WORK="$(mktemp -d /tmp/pgferry-bench-target.XXXXXX)"
GDN_PID=""
trap cleanup_run EXIT

ensure_postgres
log "building pgferry (release)"
cargo build --release --quiet --bin pgferry
BIN="$PWD/target/release/pgferry"

start_cluster

# Elapsed seconds and peak RSS (KiB) of a command: GNU time when present, else the kernel's
# high-water mark (VmHWM in /proc/PID/status) polled until the process exits.
# measure OUT_PREFIX STDIN_FILE STDOUT_FILE COMMAND...
measure() {
    local out="$1" input="$2" output="$3"; shift 3
    if [ -x /usr/bin/time ] && [ -z "${BENCH_NO_GNU_TIME:-}" ]; then
        /usr/bin/time -v -o "$out.time" "$@" < "$input" > "$output"
        ELAPSED=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$out.time" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
        RSS_KB=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out.time")
    else
        local t0 t1 pid hwm
        t0=$(date +%s.%N)
        "$@" < "$input" > "$output" &
        pid=$!
        RSS_KB=0
        while kill -0 "$pid" 2>/dev/null; do
            hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
            if [ -n "$hwm" ] && [ "$hwm" -gt "$RSS_KB" ]; then RSS_KB=$hwm; fi
            sleep 0.05
        done
        wait "$pid"
        t1=$(date +%s.%N)
        ELAPSED=$(python3 -c "print(round($t1 - $t0, 2))")
    fi
}

# Every timed run starts from a quiet cluster: the dead rows of the run before vacuumed and
# its WAL checkpointed, so no run pays for autovacuum or a checkpoint the previous one caused.
settle() {
    cluster_psql -q -c "VACUUM" -c "CHECKPOINT"
    sync
}

if [ -z "${LARGE_ONLY:-}" ]; then
log "generating $ROWS Singer RECORD lines and the same rows as CSV"
python3 - "$ROWS" "$WORK" <<'PY'
import sys, json
rows, work = int(sys.argv[1]), sys.argv[2]
schema = ('{"type": "SCHEMA", "stream": "public-bench", "key_properties": ["id"], "schema": {"type": "object", "properties": {'
          '"id": {"type": ["integer"]}, "name": {"type": ["null", "string"]}, '
          '"amount": {"type": ["null", "number"], "multipleOf": 0.01}, '
          '"qty": {"type": ["null", "integer"], "minimum": -2147483648, "maximum": 2147483647}, '
          '"paid": {"type": ["null", "boolean"]}, '
          '"created_at": {"type": ["null", "string"], "format": "date-time"}, '
          '"_sdc_deleted_at": {"type": ["null", "string"], "format": "date-time"}}}}\n')
with open(f"{work}/data.singer", "w") as singer, open(f"{work}/data.csv", "w") as csv:
    singer.write(schema)
    for i in range(1, rows + 1):
        name = f"customer {i % 10007}"
        amount = f"{(i % 100000) // 100}.{i % 100:02d}"
        qty = i % 1000
        paid = "true" if i % 3 == 0 else "false"
        ts = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}.{i % 1000000:06d}+00:00"
        singer.write(f'{{"type": "RECORD", "stream": "public-bench", "record": {{"id": {i}, "name": "{name}", "amount": {amount}, "qty": {qty}, "paid": {paid}, "created_at": "{ts}", "_sdc_deleted_at": null}}, "version": 1, "time_extracted": "2024-05-01T00:00:00.000000Z"}}\n')
        csv.write(f"{i},{name},{amount},{qty},{paid},{ts},\n")
        if i % 100000 == 0:
            singer.write('{"type": "STATE", "value": {"bookmarks": {"public-bench": {"lsn": %d}}}}\n' % i)
PY
ls -l "$WORK"

TABLE_DDL="CREATE TABLE public.bench (id bigint PRIMARY KEY, name character varying, amount numeric, qty integer, paid boolean, created_at timestamp with time zone, _sdc_deleted_at timestamp with time zone)"


log "psql \\copy of the CSV into a table with the same columns and primary key"
cluster_psql -c "$TABLE_DDL"
settle
measure "$WORK/copy" /dev/null /dev/null psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "\\copy public.bench FROM '$WORK/data.csv' WITH (FORMAT csv)"
COPY_S="$ELAPSED"; COPY_RSS="$RSS_KB"
cluster_psql -c "DROP TABLE public.bench"

log "pgferry target (batch_size_rows=$BATCH, copy_format=$COPY_FORMAT) into an empty table it creates"
cat > "$WORK/target.json" <<JSON
{"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "dbname": "postgres", "sslmode": "disable",
 "batch_size_rows": $BATCH, "copy_format": "$COPY_FORMAT"}
JSON
settle
measure "$WORK/target" "$WORK/data.singer" "$WORK/state.out" "$BIN" target -c "$WORK/target.json"
TARGET_S="$ELAPSED"; TARGET_RSS="$RSS_KB"
LOADED=$(cluster_psql -At -c "SELECT count(*) FROM public.bench")
[ "$LOADED" = "$ROWS" ] || die "pgferry loaded $LOADED rows, expected $ROWS"
STATES=$(wc -l < "$WORK/state.out")

log "pgferry target again over the loaded table (every row an update through ON CONFLICT)"
settle
measure "$WORK/update" "$WORK/data.singer" /dev/null "$BIN" target -c "$WORK/target.json"
UPDATE_S="$ELAPSED"; UPDATE_RSS="$RSS_KB"

log "the same rows as gdnlite documents (pgferry run FULL_TABLE), then GDN -> PostgreSQL"
start_gdnlite "$BIN" bench "$WORK/gdnlite"
cat > "$WORK/fill.json" <<JSON
{"source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "dbname": "postgres", "sslmode": "disable"},
 "destination": {"gdn_url": "$GDN_URL", "api_key": {"env": "GDN_API_KEY"}},
 "tables": [{"table": "public.bench", "collection": "bench_docs"}]}
JSON
GDN_API_KEY=bench "$BIN" run -c "$WORK/fill.json" >/dev/null
cat > "$WORK/gdn_to_pg.json" <<JSON
{"source": {"type": "gdn", "gdn_url": "$GDN_URL", "api_key": {"env": "GDN_API_KEY"}, "source_collection": "bench_docs"},
 "destination": {"type": "postgres", "host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "dbname": "postgres",
                 "sslmode": "disable", "table_name": "bench_from_gdn", "batch_size_rows": $GDN_BATCH},
 "state_file": "$WORK/gdn_to_pg.state.json"}
JSON
# PROFILE=/path/perf.data records the GDN -> PostgreSQL run with `perf record -g` (its time and
# RSS are then perf's too: for finding where the time goes, not for the table).
settle
GDN_API_KEY=bench measure "$WORK/gdn" /dev/null /dev/null ${PROFILE:+perf record -g -o "$PROFILE" --} "$BIN" run --once -c "$WORK/gdn_to_pg.json"
GDN_S="$ELAPSED"; GDN_RSS="$RSS_KB"
FROM_GDN=$(cluster_psql -At -c "SELECT count(*) FROM public.bench_from_gdn")
[ "$FROM_GDN" = "$ROWS" ] || die "GDN -> PostgreSQL loaded $FROM_GDN rows, expected $ROWS"

rate() { python3 -c "print(f'{$ROWS / $1:,.0f}')"; }
ratio() { python3 -c "print(f'{$COPY_S / $1:.2f}')"; }
printf '\n| run | seconds | rows/s | ratio to \\copy | peak RSS |\n|---|---|---|---|---|\n'
printf '| psql \\copy (CSV) | %s | %s | 1.00 | %s MiB (psql) |\n' "$COPY_S" "$(rate "$COPY_S")" "$((COPY_RSS / 1024))"
printf '| pgferry target, empty table | %s | %s | %s | %s MiB |\n' "$TARGET_S" "$(rate "$TARGET_S")" "$(ratio "$TARGET_S")" "$((TARGET_RSS / 1024))"
printf '| pgferry target, all updates | %s | %s | %s | %s MiB |\n' "$UPDATE_S" "$(rate "$UPDATE_S")" "$(ratio "$UPDATE_S")" "$((UPDATE_RSS / 1024))"
printf '| pgferry run, gdnlite collection -> new table | %s | %s | %s | %s MiB |\n' "$GDN_S" "$(rate "$GDN_S")" "$(ratio "$GDN_S")" "$((GDN_RSS / 1024))"
printf '\n%s rows, %s STATE lines written; input %s MiB Singer, %s MiB CSV\n' "$ROWS" "$STATES" \
    "$(( $(stat -c %s "$WORK/data.singer") / 1048576 ))" "$(( $(stat -c %s "$WORK/data.csv") / 1048576 ))"
fi

# POSTs documents of LARGE_SIZE bytes to collection $1 of gdnlite, keys large<N> for N in
# [$2, $3), 8 per request, tagged with version $4.
fill_large() {
    python3 - "$GDN_URL" "$1" "$2" "$3" "$4" "$LARGE_SIZE" <<'PY'
import json, sys, urllib.request
url, collection, first, end, version, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def call(method, path, body):
    request = urllib.request.Request(f"{url}/_fabric/_system/_api/{path}", data=json.dumps(body).encode(),
                                     method=method, headers={"Authorization": "apikey bench", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request).read()
    except urllib.error.HTTPError as error:
        if error.code != 409:
            raise
call("POST", "collection", {"name": collection, "type": 2})
blob = "x" * max(size - 300, 0)
for start in range(first, end, 8):
    documents = [{"_key": f"large{n:06d}", "version": version, "customer name": f"Ünïcode \"{n}\"",
                  "address": {"lines": ["1 Main St", None], "geo": {"lat": 51.5, "lon": -0.12}},
                  "items": [{"sku": "a-1", "qty": 2}, {"sku": "b-2", "qty": n}], "blob": blob}
                 for n in range(start, min(start + 8, end))]
    call("POST", f"document/{collection}?overwrite=true&waitForSync=false", documents)
PY
}

if [ "$LARGE_SCAN" -gt 0 ]; then
    log "large documents: $LARGE_SCAN x $LARGE_SIZE bytes scanned, then a backlog of $LARGE_BACKLOG"
    if [ -z "${GDN_PID:-}" ]; then start_gdnlite "$BIN" bench "$WORK/gdnlite"; fi
    fill_large large_docs 0 "$LARGE_SCAN" 1
    cat > "$WORK/large.json" <<JSON
{"source": {"type": "gdn", "gdn_url": "$GDN_URL", "api_key": {"env": "GDN_API_KEY"}, "source_collection": "large_docs"},
 "destination": {"type": "postgres", "host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "dbname": "postgres",
                 "sslmode": "disable", "table_name": "large_from_gdn"},
 "state_file": "$WORK/large.state.json"}
JSON
    settle
    GDN_API_KEY=bench measure "$WORK/large_scan" /dev/null /dev/null "$BIN" run --once -c "$WORK/large.json"
    SCAN_S="$ELAPSED"; SCAN_RSS="$RSS_KB"
    LOADED=$(cluster_psql -At -c "SELECT count(*) FROM public.large_from_gdn")
    [ "$LOADED" = "$LARGE_SCAN" ] || die "the large scan loaded $LOADED rows, expected $LARGE_SCAN"
    HALF=$((LARGE_SCAN / 2))
    fill_large large_docs "$HALF" $((HALF + LARGE_BACKLOG)) 2
    settle
    GDN_API_KEY=bench measure "$WORK/large_backlog" /dev/null /dev/null "$BIN" run --once -c "$WORK/large.json"
    BACKLOG_S="$ELAPSED"; BACKLOG_RSS="$RSS_KB"
    EXPECTED=$((HALF + LARGE_BACKLOG > LARGE_SCAN ? HALF + LARGE_BACKLOG : LARGE_SCAN))
    LOADED=$(cluster_psql -At -c "SELECT count(*) FROM public.large_from_gdn WHERE version = 2")
    [ "$LOADED" = "$LARGE_BACKLOG" ] || die "the backlog left $LOADED rows at version 2, expected $LARGE_BACKLOG"
    mbs() { python3 -c "print(f'{$1 * $LARGE_SIZE / 1e6 / $2:,.1f}')"; }
    printf '\n| GDN -> PostgreSQL, %s-byte documents | documents | seconds | MB/s | peak RSS |\n|---|---|---|---|---|\n' "$LARGE_SIZE"
    printf '| scan into a new table | %s | %s | %s | %s MiB |\n' "$LARGE_SCAN" "$SCAN_S" "$(mbs "$LARGE_SCAN" "$SCAN_S")" "$((SCAN_RSS / 1024))"
    printf '| stream backlog (%s rows after) | %s | %s | %s | %s MiB |\n' "$EXPECTED" "$LARGE_BACKLOG" "$BACKLOG_S" "$(mbs "$LARGE_BACKLOG" "$BACKLOG_S")" "$((BACKLOG_RSS / 1024))"
fi
