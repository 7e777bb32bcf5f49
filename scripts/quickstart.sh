#!/usr/bin/env bash
# Quickstart on a fresh machine: installs PostgreSQL 15 + wal2json if missing, builds pgferry,
# starts a throwaway PostgreSQL with a demo table and the embedded GDN (gdnlite), runs
# `pgferry check`, then `pgferry run` (LOG_BASED): a consistent copy of the table into a gdnlite
# collection, then changes made in PostgreSQL streamed over; shows the documents with curl.
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
GDN_KEY="quickstart.$(date +%s)"
start_gdnlite "$PGFERRY" "$GDN_KEY" "$WORK/gdnlite"

CONFIG="$WORK/pipeline.json"
cat >"$CONFIG" <<JSON
{
  "source": {
    "host": "127.0.0.1",
    "port": $PG_PORT,
    "user": "postgres",
    "password": "not-needed-with-trust",
    "dbname": "postgres",
    "replication_method": "LOG_BASED",
    "sslmode": "disable"
  },
  "destination": {
    "gdn_url": "$GDN_URL",
    "fabric": "_system",
    "api_key": {"env": "GDN_API_KEY"}
  },
  "tables": ["public.orders"],
  "state_file": "$WORK/state.json"
}
JSON

log "pgferry check -c $CONFIG"
GDN_API_KEY="$GDN_KEY" "$PGFERRY" check -c "$CONFIG"

log "pgferry run --once: slot + consistent snapshot copy of public.orders into gdnlite"
GDN_API_KEY="$GDN_KEY" "$PGFERRY" run -c "$CONFIG" --once

log "changing rows in PostgreSQL, then streaming the changes (pgferry run --once again)"
cluster_psql -d postgres -c "UPDATE public.orders SET amount = 1234.56, tags = ARRAY['changed'] WHERE id = 42; DELETE FROM public.orders WHERE id = 43; INSERT INTO public.orders (id, customer, amount) VALUES (10001, 'new customer', 9.99);" >/dev/null
GDN_API_KEY="$GDN_KEY" "$PGFERRY" run -c "$CONFIG" --once

log "documents in gdnlite (curl)"
curl -sf -H "Authorization: apikey $GDN_KEY" "$GDN_URL/_fabric/_system/_api/collection/orders/count"; echo
curl -sf -H "Authorization: apikey $GDN_KEY" "$GDN_URL/_fabric/_system/_api/document/orders/42"; echo
echo "(run without --once to keep streaming; Ctrl-C stops it cleanly)"

if [ "$KEEP" = 1 ]; then
    log "left running: PostgreSQL on 127.0.0.1:$PG_PORT (data in $PG_DIR), gdnlite at $GDN_URL (pid $GDN_PID, api key $GDN_KEY)"
    echo "stop them with: kill $GDN_PID; $( [ "$(id -u)" = 0 ] && echo 'runuser -u postgres -- ')/usr/lib/postgresql/${PG_MAJOR}/bin/pg_ctl -D $PG_DIR/data stop"
fi
