#!/usr/bin/env bash
# Quickstart on a fresh machine: installs PostgreSQL 15 + wal2json if missing, builds pgferry,
# starts a throwaway PostgreSQL with a demo table, and runs `pgferry check` against it.
# Usage: scripts/quickstart.sh [--keep]   (--keep leaves the cluster running and prints how to stop it)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

KEEP=0
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) die "unknown argument $arg (expected --keep)" ;;
    esac
done

ensure_postgres
log "building pgferry (release)"
cargo build --release --quiet
PGFERRY="$PWD/target/release/pgferry"

log "starting a throwaway PostgreSQL ${PG_MAJOR} with wal_level=logical"
start_cluster
if [ "$KEEP" = 0 ]; then trap stop_cluster EXIT; fi

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

WORK="$(mktemp -d /tmp/pgferry-quickstart.XXXXXX)"
CONFIG="$WORK/source.json"
cat >"$CONFIG" <<JSON
{
  "host": "127.0.0.1",
  "port": $PG_PORT,
  "user": "postgres",
  "password": "not-needed-with-trust",
  "dbname": "postgres",
  "replication_method": "LOG_BASED",
  "sslmode": "disable"
}
JSON

log "pgferry check -c $CONFIG"
"$PGFERRY" check -c "$CONFIG"

if [ "$KEEP" = 1 ]; then
    log "cluster left running on 127.0.0.1:$PG_PORT (data in $PG_DIR); config in $CONFIG"
    echo "stop it with: $( [ "$(id -u)" = 0 ] && echo 'runuser -u postgres -- ')/usr/lib/postgresql/${PG_MAJOR}/bin/pg_ctl -D $PG_DIR/data stop"
else
    rm -rf "$WORK"
fi
