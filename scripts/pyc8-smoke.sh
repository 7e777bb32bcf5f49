#!/usr/bin/env bash
# Installs the real pyC8 1.1.1 client into a venv and drives it against a fresh gdnlite
# (the calls the Macrometa target/source connectors make). Exit 0 when every check passes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${PYC8_VENV:-target/pyc8-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q 'pyC8==1.1.1'
cargo build -q --bin pgferry
data="$(mktemp -d)"
out="$(mktemp)"
cleanup() {
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$data" "$out"
}
trap cleanup EXIT
target/debug/pgferry gdnlite --listen 127.0.0.1:0 --data-dir "$data" --api-key smoke.key.secret \
    --email dev@example.com --password pw >"$out" &
pid=$!
for _ in $(seq 1 100); do
    grep -q 'listening on' "$out" && break
    sleep 0.1
done
port="$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$out")"
[ -n "$port" ] || { echo "gdnlite did not start"; exit 1; }
"$venv/bin/python" scripts/pyc8-smoke.py "$port" smoke.key.secret dev@example.com pw
