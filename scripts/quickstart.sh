#!/usr/bin/env bash
# Quickstart on a fresh machine: installs PostgreSQL 15 + wal2json if missing, builds pgferry,
# starts a throwaway PostgreSQL with a demo table and the embedded GDN (gdnlite), runs
# `pgferry check`, then `pgferry run` to copy the table into a gdnlite collection, and shows
# the documents with curl.
# Usage: scripts/quickstart.sh [--keep]   (--keep leaves both servers running and prints how to stop them)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

KEEP=0
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) die "unknown argument $arg (expected --keep)" ;;
    esac
done

ensure_postgres
ensure_command curl curl
log "building pgferry (release)"
cargo build --release --quiet
PGFERRY="$PWD/target/release/pgferry"

WORK="$(mktemp -d /tmp/pgferry-quickstart.XXXXXX)"
GDN_PID=""
cleanup() {
    if [ -n "$GDN_PID" ]; then kill "$GDN_PID" 2>/dev/null || true; wait "$GDN_PID" 2>/dev/null || true; fi
    stop_cluster
    rm -rf "$WORK"
}

log "starting a throwaway PostgreSQL ${PG_MAJOR} with wal_level=logical"
start_cluster
if [ "$KEEP" = 0 ]; then trap cleanup EXIT; fi

log "creating the demo table public.orders"
cluster_psql -d postgres <<'SQL'
CREATE TABLE public.orders (
    id          bigint PRIMARY KEY,
    customer    text NOT NULL,
    amount      numeric(12, 2) NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT now(),
    tags        text[]
);
INSERT INTO public.orders (id, customer, amount, tags)
SELECT g, 'customer ' || (g % 97), round((g * 7.31)::numeric % 1000, 2), ARRAY['demo', 'batch' || (g % 5)]
FROM generate_series(1, 10000) AS g;
SQL

log "starting gdnlite (the embedded local GDN) on a free port"
GDN_PORT="$(free_port)"
GDN_KEY="quickstart.$(date +%s)"
GDNLITE_API_KEY="$GDN_KEY" "$PGFERRY" gdnlite --listen "127.0.0.1:$GDN_PORT" --data-dir "$WORK/gdnlite" \
    >"$WORK/gdnlite.log" 2>&1 &
GDN_PID=$!
for _ in $(seq 1 100); do
    grep -q "listening" "$WORK/gdnlite.log" 2>/dev/null && break
    kill -0 "$GDN_PID" 2>/dev/null || { cat "$WORK/gdnlite.log" >&2; die "gdnlite did not start"; }
    sleep 0.1
done
GDN_URL="http://127.0.0.1:$GDN_PORT"

CONFIG="$WORK/pipeline.json"
cat >"$CONFIG" <<JSON
{
  "source": {
    "host": "127.0.0.1",
    "port": $PG_PORT,
    "user": "postgres",
    "password": "not-needed-with-trust",
    "dbname": "postgres",
    "replication_method": "FULL_TABLE",
    "sslmode": "disable"
  },
  "destination": {
    "gdn_url": "$GDN_URL",
    "fabric": "_system",
    "api_key": {"env": "GDN_API_KEY"}
  },
  "tables": ["public.orders"]
}
JSON

log "pgferry check -c $CONFIG"
"$PGFERRY" check -c "$CONFIG" || log "(the LOG_BASED checks above are informative for this FULL_TABLE run)"

log "pgferry run -c $CONFIG"
GDN_API_KEY="$GDN_KEY" "$PGFERRY" run -c "$CONFIG"

log "documents in gdnlite (curl)"
curl -sf -H "Authorization: apikey $GDN_KEY" "$GDN_URL/_fabric/_system/_api/collection/orders/count"; echo
curl -sf -H "Authorization: apikey $GDN_KEY" "$GDN_URL/_fabric/_system/_api/document/orders/42"; echo

if [ "$KEEP" = 1 ]; then
    log "left running: PostgreSQL on 127.0.0.1:$PG_PORT (data in $PG_DIR), gdnlite at $GDN_URL (pid $GDN_PID, api key $GDN_KEY)"
    echo "stop them with: kill $GDN_PID; $( [ "$(id -u)" = 0 ] && echo 'runuser -u postgres -- ')/usr/lib/postgresql/${PG_MAJOR}/bin/pg_ctl -D $PG_DIR/data stop"
fi
