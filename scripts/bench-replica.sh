#!/usr/bin/env bash
# End-to-end PostgreSQL → PostgreSQL benchmark, one cluster, database `shop` into `replica`:
#   1. snapshot: psql \copy (SELECT …) TO STDOUT | psql \copy … FROM STDIN into an empty table
#      with the same primary key (the ceiling: PostgreSQL's own COPY both ways, one stream)
#      vs pgferry run FULL_TABLE (binary COPY piped per ctid chunk, `parallelism` workers);
#   2. change data capture: a workload of inserts, updates and deletes committed while nothing
#      follows, then pgferry run --once (LOG_BASED, wal2json) applies the backlog; changes/s.
# All clients on TCP. Reports rows/s and pgferry's peak RSS.
# Usage: scripts/bench-replica.sh [rows, default 2000000] [changes, default 500000]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ROWS="${1:-2000000}"
CHANGES="${2:-500000}"
PARALLELISM="$(nproc)"
ensure_postgres
log "building pgferry (release)"
cargo build --release --quiet
PGFERRY="$PWD/target/release/pgferry"

WORK="$(mktemp -d /tmp/pgferry-bench.XXXXXX)"
trap cleanup_run EXIT
start_cluster

log "creating shop.public.bench with $ROWS rows"
cluster_psql -d postgres -c "CREATE DATABASE shop" -c "CREATE DATABASE replica" -c "CREATE DATABASE ceiling" >/dev/null
create_bench_table shop "$ROWS"
cluster_psql -d ceiling -c "$BENCH_TABLE_DDL" >/dev/null

seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }
rate() { awk -v r="$1" -v s="$2" 'BEGIN { printf "%.0f", r / s }'; }
tcp_psql() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

log "1/3 psql \\copy out | psql \\copy in (empty table with its primary key)"
start=$(seconds)
tcp_psql -d shop -c "\\copy (SELECT * FROM public.bench) TO STDOUT" \
    | tcp_psql -d ceiling -c "\\copy public.bench FROM STDIN"
PSQL_S=$(elapsed "$start" "$(seconds)")

cat >"$WORK/pipeline.json" <<JSON
{
  "source": {"host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "dbname": "shop",
             "sslmode": "disable", "replication_method": "LOG_BASED", "plugin": "wal2json"},
  "destination": {"type": "postgres", "host": "127.0.0.1", "port": $PG_PORT, "user": "postgres",
                  "dbname": "replica", "sslmode": "disable"},
  "tables": ["public.bench"],
  "parallelism": $PARALLELISM,
  "state_file": "$WORK/state.json"
}
JSON

log "2/3 pgferry run: slot + snapshot into replica"
start=$(seconds)
"$PGFERRY" run --once -c "$WORK/pipeline.json" >"$WORK/copy.out"
COPY_S=$(elapsed "$start" "$(seconds)")
COPY_RSS=$(sed -n 's/^peak RSS \(.*\) MB$/\1/p' "$WORK/copy.out")
COUNT=$(cluster_psql -d replica -At -c "SELECT count(*) FROM public.bench")
[ "$COUNT" = "$ROWS" ] || die "the replica holds $COUNT rows, expected $ROWS"

log "3/3 $CHANGES changes committed in the source, then pgferry run --once applies them"
THIRD=$((CHANGES / 3))
cluster_psql -d shop >/dev/null <<SQL
INSERT INTO public.bench SELECT g, 'new ' || g, 1, 1, now(), true, NULL, 'n'
FROM generate_series($ROWS + 1, $ROWS + $THIRD) AS g;
UPDATE public.bench SET amount = amount + 1, note = 'u' WHERE id <= $THIRD;
DELETE FROM public.bench WHERE id > $THIRD AND id <= $((2 * THIRD));
SQL
start=$(seconds)
"$PGFERRY" run --once -c "$WORK/pipeline.json" >"$WORK/cdc.out"
CDC_S=$(elapsed "$start" "$(seconds)")
CDC_RSS=$(sed -n 's/^peak RSS \(.*\) MB$/\1/p' "$WORK/cdc.out")
APPLIED=$(sed -n 's/^streamed \([0-9]*\) changes.*/\1/p' "$WORK/cdc.out")
SOURCE_SUM=$(cluster_psql -d shop -At -c "SELECT count(*) || ' ' || sum(amount) || ' ' || md5(string_agg(note, ',' ORDER BY id)) FROM public.bench")
REPLICA_SUM=$(cluster_psql -d replica -At -c "SELECT count(*) || ' ' || sum(amount) || ' ' || md5(string_agg(note, ',' ORDER BY id)) FROM public.bench")
[ "$SOURCE_SUM" = "$REPLICA_SUM" ] || die "replica differs: source $SOURCE_SUM, replica $REPLICA_SUM"

echo
echo "rows: $ROWS, changes: $APPLIED, parallelism: $PARALLELISM, cores: $(nproc)"
printf '%-52s %12s %10s %10s\n' "path" "rows/s" "seconds" "peak RSS"
printf '%-52s %12s %10.2f %10s\n' "psql \\copy out | psql \\copy in" "$(rate "$ROWS" "$PSQL_S")" "$PSQL_S" "-"
printf '%-52s %12s %10.2f %10s\n' "pgferry snapshot (slot + copy)" "$(rate "$ROWS" "$COPY_S")" "$COPY_S" "$COPY_RSS MB"
printf '%-52s %12s %10.2f %10s\n' "pgferry CDC apply (changes/s, wal2json)" "$(rate "$APPLIED" "$CDC_S")" "$CDC_S" "$CDC_RSS MB"
awk -v p="$PSQL_S" -v c="$COPY_S" 'BEGIN { printf "pgferry snapshot / psql pipe rows/s ratio: %.2f\n", p / c }'
